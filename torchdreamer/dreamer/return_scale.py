"""DreamerV3's return normalisation: an EMA of the return percentile range."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from torchdreamer.functional import return_percentiles

__all__ = ["ReturnScale"]


class ReturnScale(nn.Module):
    """EMA of the low and high return percentiles, and the scale they give.

    ``scale = max(min_scale, high - low)``: advantages are divided by it, so a
    fixed entropy bonus stays meaningful whatever the reward scale, while small
    returns are not blown up. ``low`` and ``high`` start at 0 and move by
    ``rate`` towards each batch's percentiles, as in the official code.

    Args:
        rate: EMA rate (official 0.01).
        quantiles: Low and high quantiles (official 5th and 95th percentiles).
        min_scale: Lower bound of the scale (official 1.0).
        reduce: Maps the flattened local returns to the returns the
            percentiles are taken over. ``None`` keeps them local; data-parallel
            training passes a gather over ranks (the trainer uses
            ``torchdreamer.training.distributed.concat_over_ranks``), so every
            rank keeps identical statistics.

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer import ReturnScale
        >>> norm = ReturnScale(rate=0.5)
        >>> norm.update(torch.arange(101.0))
        >>> norm.low, norm.high, norm.scale()
        (tensor(2.5000), tensor(47.5000), tensor(45.))

        ``reduce=`` pools returns first (here a stand-in that appends a copy
        shifted by 100, as a gather over two ranks would):

        >>> pooled = ReturnScale(rate=1.0, reduce=lambda r: torch.cat([r, r + 100]))
        >>> pooled.update(torch.arange(101.0))
        >>> pooled.low, pooled.high
        (tensor(10.0500), tensor(189.9500))
    """

    low: torch.Tensor
    high: torch.Tensor

    def __init__(
        self,
        rate: float = 0.01,
        quantiles: tuple[float, float] = (0.05, 0.95),
        min_scale: float = 1.0,
        *,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not 0 < rate <= 1:
            raise ValueError(f"rate must lie in (0, 1], got {rate}.")
        low_q, high_q = quantiles
        if not 0 <= low_q < high_q <= 1:
            raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}.")
        if not min_scale > 0:
            raise ValueError(f"min_scale must be positive, got {min_scale}.")
        self.rate = float(rate)
        self.quantiles = (float(low_q), float(high_q))
        self.min_scale = float(min_scale)
        self.reduce = reduce
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> None:
        """Move the EMA towards the percentiles of ``reduce(returns)``."""
        returns = returns.detach().reshape(-1)
        if self.reduce is not None:
            returns = self.reduce(returns)
        low, high = return_percentiles(returns, self.quantiles).to(self.low.dtype)
        self.low.lerp_(low, self.rate)
        self.high.lerp_(high, self.rate)

    def scale(self) -> torch.Tensor:
        """``max(min_scale, high - low)``, a 0-dim tensor."""
        return (self.high - self.low).clamp(min=self.min_scale)

    def extra_repr(self) -> str:
        return f"rate={self.rate}, quantiles={self.quantiles}, min_scale={self.min_scale}"
