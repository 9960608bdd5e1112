"""Atomic, checksummed checkpoints of a whole run: models, optimiser, replay, RNG states,
counters; the previous one is kept as ``checkpoint.prev.pt``. :class:`RunState` is what a
run carries from one loop to the next and its checkpoint restores."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torchdreamer.training import distributed
from torchdreamer.training.replay import SequenceReplay
from torchdreamer.training.when import DreamerV3UpdateRatio

if TYPE_CHECKING:
    from torch import nn

    from torchdreamer.training.config import Config

__all__ = [
    "CHECKPOINT",
    "PREVIOUS",
    "CheckpointError",
    "RunState",
    "load_checkpoint",
    "rng_states",
    "save_checkpoint",
    "save_run",
    "seed_all",
    "set_rng_states",
]

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
#: The zip comment of a checkpoint file starts so; the payload's sha256 follows.
_MARK = b"torchdreamer-sha256 "
#: A zip file's end record: its signature, 16 bytes, then the comment's 2-byte length.
_END, _END_SIZE = b"PK\x05\x06", 22


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, truncated or not a checkpoint)."""


def rng_states() -> dict[str, Any]:
    """The states of every random generator a run draws from."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def seed_all(seed: int) -> None:
    """Seed the global generators: Python's, NumPy's and torch's.

    Examples:
        >>> import torch
        >>> from torchdreamer.training.checkpoint import seed_all
        >>> seed_all(7)
        >>> first = torch.rand(3)
        >>> seed_all(7)
        >>> torch.equal(first, torch.rand(3))
        True
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def save_checkpoint(logdir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``logdir/checkpoint.pt`` atomically, with its checksum.

    The file is what ``torch.save`` writes (``torch.load`` reads it), with
    the sha256 of those bytes as its zip comment, which :func:`load_checkpoint`
    verifies. It is written beside the
    old one and flushed to disk; the old one is then linked to
    ``checkpoint.prev.pt`` and the new one renamed over it: a run killed at
    any moment leaves a whole ``checkpoint.pt``, and the one before it.

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from torchdreamer.training.checkpoint import load_checkpoint, save_checkpoint
        >>> logdir = tempfile.mkdtemp()
        >>> path = save_checkpoint(logdir, {"counters": {"env_step": 64}, "w": torch.ones(2)})
        >>> path = save_checkpoint(logdir, {"counters": {"env_step": 128}, "w": torch.ones(2)})
        >>> path.name, load_checkpoint(logdir)["counters"]
        ('checkpoint.pt', {'env_step': 128})
        >>> load_checkpoint(logdir, name="checkpoint.prev.pt")["counters"]
        {'env_step': 64}

    """
    logdir = Path(logdir)
    path, previous = logdir / CHECKPOINT, logdir / PREVIOUS
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    # torch.save writes a zip without a comment: the sha256 goes into the comment, so
    # torch.load still reads the file as it is.
    comment = _MARK + hashlib.sha256(payload).hexdigest().encode()
    partial = path.with_suffix(".pt.partial")
    with open(partial, "wb") as file:
        file.write(payload[:-2])
        file.write(len(comment).to_bytes(2, "little"))
        file.write(comment)
        file.flush()
        os.fsync(file.fileno())
    if path.exists():
        # checkpoint.pt stays in place while the previous one is renamed in.
        kept = previous.with_suffix(".pt.partial")
        kept.unlink(missing_ok=True)
        try:
            os.link(path, kept)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(path, kept)
        os.replace(kept, previous)
    os.replace(partial, path)
    _fsync_directory(logdir)
    return path


def _damage(path: Path, what: str) -> CheckpointError:
    previous = path.parent / PREVIOUS
    advice = ""
    if path.name == CHECKPOINT and previous.exists():
        try:
            step = load_checkpoint(path.parent, name=PREVIOUS)["counters"]["env_step"]
            advice = (
                f"; the previous checkpoint {previous} (env step {step}) is whole: "
                f"`mv {previous} {path}` continues from it"
            )
        except (CheckpointError, KeyError, TypeError):
            advice = f"; the previous checkpoint {previous} is damaged too"
    return CheckpointError(f"{path} is damaged ({what}){advice}.")


def load_checkpoint(
    logdir: Path, map_location: str | torch.device = "cpu", name: str = CHECKPOINT
) -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint`, its checksum verified.

    A damaged file raises :class:`CheckpointError` naming it and, when it is
    whole, ``checkpoint.prev.pt``. Checkpoints written before checksums
    existed (no zip comment) load unverified; ``torch.load`` reads either.
    """
    path = Path(logdir) / name
    if not path.exists():
        raise FileNotFoundError(f"{logdir} holds no {name}; nothing to resume or evaluate.")
    data = path.read_bytes()
    size = len(_MARK) + 64
    end = len(data) - size - _END_SIZE
    if data.endswith(b"\x00\x00") and data[-_END_SIZE : -_END_SIZE + 4] == _END:
        pass  # no comment: written by torch.save before checksums existed
    elif end >= 0 and data[end : end + 4] == _END and data[-size:].startswith(_MARK):
        digest = hashlib.sha256()
        digest.update(memoryview(data)[: len(data) - size - 2])
        digest.update(b"\x00\x00")
        if digest.hexdigest().encode() != data[-64:]:
            raise _damage(path, "its checksum does not match its contents")
    elif data.startswith(b"PK\x03\x04"):
        raise _damage(path, f"truncated: its end is missing after {len(data)} bytes")
    else:
        raise _damage(path, "not a torchdreamer checkpoint")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for unreadable files
        raise _damage(path, f"unreadable: {type(error).__name__}") from None


class RunState:
    """What a run carries from one loop to the next, and what its checkpoint restores.

    The counters, the recent scores and the train-ratio schedule are the same
    on every rank (:meth:`state_dict`); the replay, its sampling generator and
    the global generators are each rank's own (:meth:`rank_state_dict`).
    :meth:`load_state_dict` takes back exactly what the two return.

    Examples:
        >>> import torch
        >>> from torchdreamer.training import Config, SequenceReplay
        >>> from torchdreamer.training.checkpoint import RunState
        >>> config = Config(num_envs=2, batch_size=2, batch_length=8)
        >>> def fresh():
        ...     generator = torch.Generator().manual_seed(0)
        ...     return RunState(config, SequenceReplay(2, 64, generator), generator)
        >>> state = fresh()
        >>> state.env_step, state.updates = 32, 5
        >>> state.recent.append(21.0)
        >>> restored = fresh()
        >>> restored.load_state_dict(state.state_dict(), state.rank_state_dict())
        >>> restored.env_step, restored.updates, list(restored.recent)
        (32, 5, [21.0])

    """

    def __init__(self, config: Config, replay: SequenceReplay, generator: torch.Generator):
        self.env_step = 0
        self.updates = 0
        self.wall_time = 0.0
        self.recent: deque[float] = deque(maxlen=10)
        batch_steps = config.batch_size * config.batch_length
        self.train_ratio = DreamerV3UpdateRatio(config.train_ratio / batch_steps)
        """Updates due per env step of this rank (TorchRL's schedule; the ratio is positive)."""
        self.replay = replay
        self.generator = generator

    @classmethod
    def start(cls, config: Config, rank: int = 0, replay_files: Path | None = None) -> RunState:
        """The state of a run at its start on rank ``rank``: its generators (seeded apart
        from the other ranks') and an empty replay (memory-mapped in ``replay_files``)."""
        rank_seed = config.seed + 1_000_003 * rank
        if rank:
            seed_all(rank_seed)  # each rank explores and imagines with its own draws
        generator = torch.Generator().manual_seed(rank_seed)
        online = config.window if config.replay_online else None
        replay = SequenceReplay(
            config.num_envs,
            config.replay_capacity,
            generator,
            directory=replay_files,
            online=online,
        )
        return cls(config, replay, generator)

    @property
    def mean_score(self) -> float:
        """Mean of the recent episode scores (NaN before any episode ended)."""
        return float(np.mean(self.recent)) if self.recent else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {
            "counters": {
                "env_step": self.env_step,
                "updates": self.updates,
                "wall_time": self.wall_time,
            },
            "recent_scores": list(self.recent),
            "train_ratio": self.train_ratio.state_dict(),
        }

    def rank_state_dict(self) -> dict[str, Any]:
        return {
            "replay": self.replay.state_dict(),
            "replay_generator": self.generator.get_state(),
            "rng": rng_states(),
        }

    def load_state_dict(
        self, state: dict[str, Any], rank_state: dict[str, Any], world_size: int = 1
    ) -> None:
        counters = state["counters"]
        self.env_step = counters["env_step"]
        self.updates = counters["updates"]
        self.wall_time = counters["wall_time"]
        self.recent.clear()
        self.recent.extend(state["recent_scores"])
        if "train_ratio" in state:
            self.train_ratio.load_state_dict(state["train_ratio"])
        elif counters.get("update_credit") or counters["updates"]:
            # A checkpoint that stored the updates owed as a credit: the same count.
            owed = counters["update_credit"] / self.train_ratio.ratio
            self.train_ratio.reset(self.env_step // world_size - owed)
        self.replay.load_state_dict(rank_state["replay"])
        self.generator.set_state(rank_state["replay_generator"])
        set_rng_states(rank_state["rng"])


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's state tensors by name, to check that ranks agree on them."""
    return {
        f"optimizer.{index}.{key}": value
        for index, state in optimizer.state_dict()["state"].items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


def save_run(
    logdir: Path,
    agent: nn.Module,
    state: RunState,
    entries: dict[str, Any],
    rank_entries: dict[str, Any],
    main: bool = True,
) -> None:
    """The checkpoint of a run in ``logdir``: ``agent``'s networks and optimiser, the
    counters of ``state`` and ``entries`` from rank 0 (``main``), and every rank's replay,
    generators and ``rank_entries``; under torchrun every rank calls it together."""
    parts = distributed.gather_objects({**state.rank_state_dict(), **rank_entries})
    distributed.check_in_sync(agent, _optimizer_tensors(agent.optimizer))
    if main:
        save_checkpoint(
            logdir,
            {
                "agent": agent.state_dict(),
                "optimizer": agent.optimizer.state_dict(),
                **entries,
                **state.state_dict(),
                "ranks": parts,
            },
        )
