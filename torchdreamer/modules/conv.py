"""Convolutional encoder and decoder for image observations."""

from __future__ import annotations

import torch
from torch import nn

from torchdreamer.modules.layers import dreamer_init_

__all__ = ["ConvDecoder", "ConvEncoder"]


class _ChannelRMSNorm(nn.RMSNorm):
    """RMSNorm over the channels of a ``[N, C, H, W]`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _stages(size: int) -> int:
    # Stride-2 stages that take an image side down to 4 pixels.
    stages = 0
    while size > 4:
        if size % 2:
            raise ValueError(f"image sides must be 4 * 2**k pixels (e.g. 64), got {size}.")
        size //= 2
        stages += 1
    if size != 4:
        raise ValueError(f"image sides must be 4 * 2**k pixels (e.g. 64), got {size * 2}.")
    return stages


class ConvEncoder(nn.Module):
    """Channel-last ``uint8`` images ``[..., H, W, C]`` to flat features.

    Stride-2 convolutions (kernel 4) with channel RMSNorm and SiLU halve the
    image down to ``4 x 4``, doubling the channels from ``depth`` at each
    stage, as in DreamerV3. Pixels are scaled to ``[-0.5, 0.5]`` first.

    Args:
        image_shape: ``(H, W, C)``; sides ``4 * 2**k``.
        depth: Channels of the first stage (the paper's CNN multiplier).

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import ConvEncoder
        >>> encoder = ConvEncoder((64, 64, 3), depth=4)
        >>> encoder(torch.zeros(2, 5, 64, 64, 3, dtype=torch.uint8)).shape, encoder.out_features
        (torch.Size([2, 5, 512]), 512)
    """

    def __init__(self, image_shape: tuple[int, int, int], depth: int = 32) -> None:
        super().__init__()
        height, width, channels = image_shape
        stages = _stages(height)
        if _stages(width) != stages:
            raise ValueError(f"images must be square, got {height} x {width}.")
        layers: list[nn.Module] = []
        width_in = channels
        for stage in range(stages):
            width_out = depth * 2**stage
            layers += [
                nn.Conv2d(width_in, width_out, 4, stride=2, padding=1),
                _ChannelRMSNorm(width_out, eps=1e-4),
                nn.SiLU(),
            ]
            width_in = width_out
        self.net = dreamer_init_(nn.Sequential(*layers, nn.Flatten()))
        self.out_features = width_in * 16

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:]).movedim(-1, 1).float() / 255.0 - 0.5
        return self.net(x).reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """Features to channel-last images ``[..., H, W, C]`` in ``[0, 1]`` units.

    The mirror of :class:`ConvEncoder`: a linear layer to a ``4 x 4`` map,
    then stride-2 transposed convolutions; the output is offset by 0.5 so a
    zero output predicts mid-grey, and is compared with ``pixels / 255``.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import ConvDecoder
        >>> ConvDecoder(10, (32, 32, 1), depth=4)(torch.randn(2, 10)).shape
        torch.Size([2, 32, 32, 1])
    """

    def __init__(self, in_features: int, image_shape: tuple[int, int, int], depth: int = 32):
        super().__init__()
        height, width, channels = image_shape
        stages = _stages(height)
        if _stages(width) != stages:
            raise ValueError(f"images must be square, got {height} x {width}.")
        self.image_shape = image_shape
        self.top = depth * 2 ** (stages - 1)
        self.linear = dreamer_init_(nn.Linear(in_features, self.top * 16))
        layers: list[nn.Module] = []
        width_in = self.top
        for stage in reversed(range(stages)):
            last = stage == 0
            width_out = channels if last else depth * 2 ** (stage - 1)
            layers.append(nn.ConvTranspose2d(width_in, width_out, 4, stride=2, padding=1))
            if not last:
                layers += [_ChannelRMSNorm(width_out, eps=1e-4), nn.SiLU()]
            width_in = width_out
        self.net = dreamer_init_(nn.Sequential(*layers))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch = features.shape[:-1]
        x = self.linear(features.reshape(-1, features.shape[-1])).view(-1, self.top, 4, 4)
        image = self.net(x).movedim(1, -1) + 0.5
        return image.reshape(*batch, *self.image_shape)
