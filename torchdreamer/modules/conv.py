"""Convolutional encoder and decoder for image observations (the official CNNs)."""

from __future__ import annotations

import torch
from torch import nn

from torchdreamer.modules.layers import MLP, BlockLinear, RMSNorm, dreamer_init_
from torchdreamer.modules.size import ModelSize

__all__ = ["ConvDecoder", "ConvEncoder"]


class _ChannelRMSNorm(RMSNorm):
    """RMSNorm over the channels of a ``[N, C, H, W]`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _smallest(image_shape: tuple[int, int, int], stages: int) -> tuple[int, int]:
    # The map's sides after ``stages`` halvings.
    height, width, _ = image_shape
    factor = 2**stages
    if height % factor or width % factor:
        raise ValueError(
            f"image sides must be multiples of 2**{stages} = {factor} (one halving per CNN "
            f"stage, cnn_mults), got {height} x {width}; e.g. 64 x 64 or 96 x 96."
        )
    return height // factor, width // factor


def _conv(width_in: int, width_out: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(width_in, width_out, kernel, padding="same")


class ConvEncoder(nn.Module):
    """Channel-last ``uint8`` images ``[..., H, W, C]`` to flat features.

    Each stage is a stride-1 ``same`` convolution (kernel ``size.kernel``), a 2 x 2
    max-pool, channel RMSNorm and SiLU, with ``size.cnn_channels`` channels
    (official ``depth * (2, 3, 4, 4)``, ``strided: False``): each stage halves the sides,
    so a 64 x 64 image ends as a 4 x 4 map and the official Atari's 96 x 96 as 6 x 6.
    Pixels are scaled to ``[-0.5, 0.5]`` first; the last map is flattened channel-last.

    Args:
        image_shape: ``(H, W, C)``; sides multiples of ``2 ** len(size.cnn_mults)``.
        size: ``cnn_depth``, ``cnn_mults`` and ``kernel``.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import ConvEncoder, ModelSize
        >>> encoder = ConvEncoder((64, 64, 3), ModelSize(cnn_depth=4))
        >>> encoder(torch.zeros(2, 5, 64, 64, 3, dtype=torch.uint8)).shape, encoder.out_features
        (torch.Size([2, 5, 256]), 256)
        >>> ConvEncoder((96, 96, 1), ModelSize(cnn_depth=4)).out_features  # 6 x 6 x 16
        576
        >>> ConvEncoder((72, 72, 1), ModelSize(cnn_depth=4))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: image sides must be multiples of 2**4 = 16 (one halving per CNN stage, ...

    """

    def __init__(self, image_shape: tuple[int, int, int], size: ModelSize | None = None):
        super().__init__()
        size = ModelSize() if size is None else size
        height, width = _smallest(image_shape, len(size.cnn_mults))
        layers: list[nn.Module] = []
        width_in = image_shape[2]
        for width_out in size.cnn_channels:
            layers += [
                _conv(width_in, width_out, size.kernel),
                nn.MaxPool2d(2),
                _ChannelRMSNorm(width_out, eps=1e-4),
                nn.SiLU(),
            ]
            width_in = width_out
        self.net = dreamer_init_(nn.Sequential(*layers))
        self.out_features = width_in * height * width

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:]).movedim(-1, 1).float() / 255.0 - 0.5
        return self.net(x).movedim(1, -1).reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """The latent state ``(stoch, deter)`` to channel-last images ``[..., H, W, C]`` in ``[0, 1]``.

    The official decoder: ``deter`` goes through a block-diagonal linear map
    (``size.decoder_blocks`` blocks, each filling its own slice of channels of the
    smallest map) and ``stoch`` through ``Linear -> RMSNorm -> SiLU`` (width
    ``2 * units``) and a linear map to the same map; their sum is normalised over
    channels. Stages of 2x nearest upsampling, ``same`` convolution, RMSNorm and SiLU
    then mirror the encoder from the smallest map (6 x 6 for a 96 x 96 image), and a last
    upsampled convolution gives the image
    through a sigmoid, compared with ``pixels / 255``. Zero inputs predict mid-grey.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import ConvDecoder, ModelSize
        >>> decoder = ConvDecoder((32, 32, 1), stoch_size=10, deter_size=16,
        ...                       size=ModelSize(deter=16, cnn_depth=4))
        >>> decoder(torch.randn(2, 10), torch.randn(2, 16)).shape
        torch.Size([2, 32, 32, 1])

    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        stoch_size: int,
        deter_size: int,
        size: ModelSize | None = None,
    ) -> None:
        super().__init__()
        size = ModelSize() if size is None else size
        channels = size.cnn_channels
        height, width = _smallest(image_shape, len(channels))
        self.image_shape = tuple(image_shape)
        self.map_shape = (height, width, channels[-1])
        self.blocks = size.decoder_blocks
        area = height * width * channels[-1]
        self.from_deter = BlockLinear(deter_size, area, self.blocks)
        self.from_stoch = MLP(stoch_size, area, 2 * size.units, layers=1)
        self.norm = RMSNorm(channels[-1], eps=1e-4)
        layers: list[nn.Module] = []
        width_in = channels[-1]
        for width_out in reversed(channels[:-1]):
            layers += [
                nn.Upsample(scale_factor=2),
                _conv(width_in, width_out, size.kernel),
                _ChannelRMSNorm(width_out, eps=1e-4),
                nn.SiLU(),
            ]
            width_in = width_out
        layers += [nn.Upsample(scale_factor=2), _conv(width_in, image_shape[2], size.kernel)]
        self.net = dreamer_init_(nn.Sequential(*layers))

    def forward(self, stoch: torch.Tensor, deter: torch.Tensor) -> torch.Tensor:
        batch = deter.shape[:-1]
        height, width, channels = self.map_shape
        # Block k of the deter map fills channels [k * C / blocks, (k + 1) * C / blocks).
        x0 = self.from_deter(deter.reshape(-1, deter.shape[-1]))
        x0 = x0.view(-1, self.blocks, height, width, channels // self.blocks)
        x0 = x0.permute(0, 2, 3, 1, 4).reshape(-1, height, width, channels)
        x1 = self.from_stoch(stoch.reshape(-1, stoch.shape[-1])).view(-1, height, width, channels)
        x = nn.functional.silu(self.norm(x0 + x1)).movedim(-1, 1)
        # In the parameters' dtype, as the MLP heads return theirs (bfloat16 autocast).
        image = torch.sigmoid(self.net(x).to(self.norm.weight.dtype)).movedim(1, -1)
        return image.reshape(*batch, *self.image_shape)
