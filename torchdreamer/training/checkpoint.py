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
