"""Atomic checkpoints of a whole run: models, optimiser, replay, RNG states, counters."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CHECKPOINT", "load_checkpoint", "rng_states", "save_checkpoint", "set_rng_states"]

CHECKPOINT = "checkpoint.pt"


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


def save_checkpoint(logdir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``logdir/checkpoint.pt`` atomically.

    The file is written beside the old one, flushed to disk, then renamed
    over it: a run killed at any moment leaves either the previous checkpoint
    or the new one, never a partial file.

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from torchdreamer.training.checkpoint import load_checkpoint, save_checkpoint
        >>> logdir = tempfile.mkdtemp()
        >>> path = save_checkpoint(logdir, {"counters": {"env_step": 64}, "w": torch.ones(2)})
        >>> path.name, load_checkpoint(logdir)["counters"]
        ('checkpoint.pt', {'env_step': 64})
    """
    path = Path(logdir) / CHECKPOINT
    partial = path.with_suffix(".pt.partial")
    with open(partial, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def load_checkpoint(logdir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(logdir) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{logdir} holds no {CHECKPOINT}; nothing to resume or evaluate.")
    return torch.load(path, map_location=map_location, weights_only=False)
