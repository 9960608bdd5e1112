"""Atomic, checksummed checkpoints of a whole run: models, optimiser, replay, RNG states,
counters; the previous one is kept as ``checkpoint.prev.pt``."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT",
    "PREVIOUS",
    "CheckpointError",
    "load_checkpoint",
    "rng_states",
    "save_checkpoint",
    "set_rng_states",
]

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
#: First line of a checkpoint file: the format, then the payload's size and sha256.
_MAGIC = b"torchdreamer-checkpoint 1"


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

    The file starts with a header line holding the payload's size and
    sha256, which :func:`load_checkpoint` verifies. It is written beside the
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
    header = b"%s %d %s\n" % (_MAGIC, len(payload), hashlib.sha256(payload).hexdigest().encode())
    partial = path.with_suffix(".pt.partial")
    with open(partial, "wb") as file:
        file.write(header)
        file.write(payload)
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
    existed (a bare ``torch.save`` file) load unverified.
    """
    path = Path(logdir) / name
    if not path.exists():
        raise FileNotFoundError(f"{logdir} holds no {name}; nothing to resume or evaluate.")
    data = path.read_bytes()
    if data.startswith(b"PK"):  # an unchecksummed zip written by torch.save
        payload = memoryview(data)
    else:
        end = data.find(b"\n", 0, 200)
        fields = data[:end].split(b" ") if end > 0 else []
        if len(fields) != 4 or b" ".join(fields[:2]) != _MAGIC or not fields[2].isdigit():
            raise _damage(path, "not a torchdreamer checkpoint: its header is missing")
        payload = memoryview(data)[end + 1 :]
        if len(payload) != int(fields[2]):
            raise _damage(path, f"truncated: {len(payload)} of {int(fields[2])} bytes")
        if hashlib.sha256(payload).hexdigest().encode() != fields[3]:
            raise _damage(path, "its checksum does not match its contents")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for unreadable files
        raise _damage(path, f"unreadable: {type(error).__name__}") from None
