"""DreamerV3's return normalisation: an EMA of the return percentile range."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from torchdreamer.functional import return_percentiles

__all__ = ["ReturnScale"]


class ReturnScale(nn.Module):
    """EMA of the low and high return percentiles, and the scale they give.

    ``scale = max(min_scale, high - low)``: advantages are divided by it, so a
    fixed entropy bonus stays meaningful whatever the reward scale, while small
    returns are not blown up. ``low`` and ``high`` start at 0 and move by
    ``rate`` towards each batch's percentiles, as in the official code. When
    ``torch.distributed`` is initialised, the percentiles are taken over every
    rank's returns, so all ranks keep identical statistics.

    Args:
        rate: EMA rate (official 0.01).
        quantiles: Low and high quantiles (official 5th and 95th percentiles).
        min_scale: Lower bound of the scale (official 1.0).

    Examples:
        >>> import torch
        >>> from torchdreamer.objectives import ReturnScale
        >>> norm = ReturnScale(rate=0.5)
        >>> norm.update(torch.arange(101.0))
        >>> norm.low, norm.high, norm.scale()
        (tensor(2.5000), tensor(47.5000), tensor(45.))
    """

    low: torch.Tensor
    high: torch.Tensor

    def __init__(
        self,
        rate: float = 0.01,
        quantiles: tuple[float, float] = (0.05, 0.95),
        min_scale: float = 1.0,
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
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> None:
        """Move the EMA towards the percentiles of ``returns`` (pooled over ranks)."""
        returns = returns.detach().reshape(-1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [torch.empty_like(returns) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, returns)
            returns = torch.cat(gathered)
        low, high = return_percentiles(returns, self.quantiles).to(self.low.dtype)
        self.low.lerp_(low, self.rate)
        self.high.lerp_(high, self.rate)

    def scale(self) -> torch.Tensor:
        """``max(min_scale, high - low)``, a 0-dim tensor."""
        return (self.high - self.low).clamp(min=self.min_scale)

    def extra_repr(self) -> str:
        return f"rate={self.rate}, quantiles={self.quantiles}, min_scale={self.min_scale}"
