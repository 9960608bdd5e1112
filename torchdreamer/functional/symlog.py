"""The symmetric log transform DreamerV3 uses to squash targets of any scale."""

from __future__ import annotations

import torch

__all__ = ["symexp", "symlog"]


def symlog(x: torch.Tensor) -> torch.Tensor:
    """Compress magnitudes: ``sign(x) * log(1 + |x|)``.

    The gradient is the exact derivative ``1 / (1 + |x|)`` everywhere,
    including ``x = 0`` where the ``sign`` formulation alone would give 0.

    Args:
        x: Tensor of any shape.

    Returns:
        A tensor of the same shape, dtype and device.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import symlog
        >>> symlog(torch.tensor([-100.0, 0.0, 1.0]))
        tensor([-4.6151,  0.0000,  0.6931])
    """
    # torch.sign has zero derivative at 0; selecting x itself there restores
    # the true slope of 1 without changing any forward value.
    return torch.where(x == 0, x, x.sign() * x.abs().log1p())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`symlog`: ``sign(x) * (exp(|x|) - 1)``.

    Args:
        x: Tensor in symlog space.

    Returns:
        A tensor of the same shape, dtype and device.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import symexp, symlog
        >>> symexp(symlog(torch.tensor([-100.0, 0.0, 5.0])))
        tensor([-100.0000,    0.0000,    5.0000])
    """
    return torch.where(x == 0, x, x.sign() * x.abs().expm1())
