"""Shape checks shared by the losses."""

from __future__ import annotations

import torch


def per_step(tensor: torch.Tensor, batch: torch.Size, what: str, hint: str = "") -> torch.Tensor:
    """``tensor`` as one scalar per batch element, accepting ``batch`` or ``batch + [1]``.

    ``what`` names the entry (its key included) in the error, ``hint`` says how to fix it.
    """
    if tensor.shape == batch:
        return tensor
    if tensor.shape == (*batch, 1):
        return tensor.squeeze(-1)
    raise ValueError(
        f"{what} has shape {tuple(tensor.shape)}, expected {tuple(batch)} or "
        f"{(*batch, 1)} to match the batch. {hint}".rstrip()
    )
