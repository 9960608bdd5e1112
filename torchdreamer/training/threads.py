"""How many CPU threads torch computes with during a run."""

from __future__ import annotations

import os

import torch

__all__ = ["available_cpus", "configure_threads"]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(requested: int = 0) -> int:
    """Set torch's intra-op thread count and return it.

    ``requested > 0`` is taken as given; ``0`` chooses from the CPUs this process
    may use.

    Examples:
        >>> import torch
        >>> from torchdreamer.training.threads import configure_threads
        >>> before = torch.get_num_threads()
        >>> configure_threads(1), torch.get_num_threads()
        (1, 1)
        >>> _ = configure_threads(before)
    """
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0 chooses automatically), got {requested}.")
    threads = requested or available_cpus()
    torch.set_num_threads(threads)
    return threads
