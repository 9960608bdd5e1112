"""DreamerV3's building blocks: its initialisation and RMS-normalised MLPs."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLP", "dreamer_init_"]

#: 1 / std of a standard normal truncated at ±2: keeps the intended variance.
TRUNCATION_CORRECTION = 1.1368


@torch.no_grad()
def dreamer_init_(module: nn.Module, scale: float = 1.0) -> nn.Module:
    """Initialise ``Linear`` and ``Conv`` weights as DreamerV3 does; zero the biases.

    Weights follow a normal distribution truncated at ±2 standard deviations,
    with standard deviation ``1.1368 * scale / sqrt(fan_in)``. ``scale=0`` gives
    the zero-initialised output layers of the reward and critic heads.

    Args:
        module: A module; every ``Linear``/``Conv*`` inside it is initialised.
        scale: Multiplier of the standard deviation.

    Returns:
        ``module``, initialised in place.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import dreamer_init_
        >>> layer = dreamer_init_(torch.nn.Linear(1000, 1000))
        >>> round(layer.weight.std().item() * 1000**0.5, 1), layer.bias.abs().max().item()
        (1.0, 0.0)
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            # Input units feeding one output: in_features, or in_channels * kernel area
            # (a transposed conv stores its weight as [in, out, *kernel]).
            if isinstance(layer, nn.ConvTranspose2d):
                fan_in = layer.weight.shape[0] * layer.weight[0, 0].numel()
            else:
                fan_in = layer.weight[0].numel()
            std = TRUNCATION_CORRECTION * scale / math.sqrt(fan_in)
            if std == 0:
                layer.weight.zero_()
            else:
                nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            if layer.bias is not None:
                layer.bias.zero_()
    return module


class MLP(nn.Sequential):
    """``layers`` x (Linear -> RMSNorm -> SiLU), then an optional output Linear.

    Args:
        in_features: Input size.
        out_features: Output size, or ``None`` to end on the last hidden layer.
        hidden: Hidden size (DreamerV3 uses 512 to 1024 depending on the model size).
        layers: Number of hidden layers.
        outscale: Initialisation scale of the output layer (0 for the reward and
            critic heads, so they start predicting exactly 0).
        eps: RMSNorm epsilon.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import MLP
        >>> MLP(6, 4, hidden=32, layers=2)(torch.randn(3, 6)).shape
        torch.Size([3, 4])
        >>> MLP(6, 4, hidden=32, layers=2, outscale=0.0)(torch.randn(3, 6)).abs().max().item()
        0.0
    """

    def __init__(
        self,
        in_features: int,
        out_features: int | None,
        hidden: int = 512,
        layers: int = 2,
        outscale: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.RMSNorm(hidden, eps=eps), nn.SiLU()]
            width = hidden
        super().__init__(*blocks)
        dreamer_init_(self)
        if out_features is not None:
            self.append(dreamer_init_(nn.Linear(width, out_features), scale=outscale))
        self.out_features = out_features if out_features is not None else width
