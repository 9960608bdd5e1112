"""DreamerV3's building blocks: its initialisation, RMS-normalised MLPs, block-diagonal
linear layers and the Gumbel-max one-hot sampler."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLP", "BlockLinear", "RMSNorm", "dreamer_init_", "sample_one_hot"]

#: 1 / std of a standard normal truncated at ±2: keeps the intended variance.
TRUNCATION_CORRECTION = 1.1368


class BlockLinear(nn.Module):
    """A block-diagonal linear layer: ``blocks`` independent maps of equal slices.

    The input ``[..., in_features]`` is cut into ``blocks`` consecutive slices; slice
    ``k`` is mapped by its own ``[in / blocks, out / blocks]`` matrix to output slice
    ``k``; a bias over the whole output is added. The weight is stored as
    ``[blocks, in / blocks, out / blocks]`` (the official ``BlockLinear`` kernel).

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import BlockLinear
        >>> layer = BlockLinear(8, 6, blocks=2)
        >>> layer.weight.shape, layer(torch.randn(3, 8)).shape
        (torch.Size([2, 4, 3]), torch.Size([3, 6]))
        >>> x = torch.zeros(1, 8); x[0, :4] = 1.0  # only the first block's input
        >>> bool((layer(x)[0, 3:] == 0).all())  # leaves the second block's output at the bias
        True

    """

    def __init__(self, in_features: int, out_features: int, blocks: int, bias: bool = True):
        super().__init__()
        if in_features % blocks or out_features % blocks:
            raise ValueError(
                f"in_features ({in_features}) and out_features ({out_features}) must be "
                f"multiples of blocks ({blocks})."
            )
        self.in_features, self.out_features, self.blocks = in_features, out_features, blocks
        shape = (blocks, in_features // blocks, out_features // blocks)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        dreamer_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("...gi,gio->...go", x.unflatten(-1, (self.blocks, -1)), self.weight)
        x = x.flatten(-2)
        return x if self.bias is None else x + self.bias


def sample_one_hot(logits: torch.Tensor) -> torch.Tensor:
    """One-hot samples of categoricals over the last dimension, by the Gumbel-max trick.

    ``argmax(logits + Gumbel noise)`` draws from ``softmax(logits)`` with pointwise
    operators only (``torch.multinomial`` is slow for many small categoricals). The
    result has ``logits``' shape and dtype and carries no gradient.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import sample_one_hot
        >>> _ = torch.manual_seed(0)
        >>> samples = sample_one_hot(torch.tensor([0.0, 2.0]).expand(20000, 2))
        >>> samples.sum(-1).unique().tolist(), samples.mean(0).round(decimals=2)
        ([1.0], tensor([0.1200, 0.8800]))

    """
    logits = logits.detach()
    # Gumbel noise -log(-log(u)), u in [tiny, 1): from uniforms, which torch draws on CPU
    # at a fraction of exponential_()'s cost; in place, as it is made at every step.
    uniform = torch.rand_like(logits).clamp_(min=torch.finfo(logits.dtype).tiny)
    gumbel = uniform.log_().neg_().log_().neg_()
    index = (logits + gumbel).argmax(-1, keepdim=True)
    # Compared with the classes rather than ``one_hot``, which checks the indices' range
    # and so reads them back from the device at every step.
    classes = torch.arange(logits.shape[-1], device=logits.device)
    return (index == classes).to(logits.dtype)


@torch.no_grad()
def dreamer_init_(module: nn.Module, scale: float = 1.0) -> nn.Module:
    """Initialise ``Linear`` and ``Conv`` weights as DreamerV3 does; zero the biases.

    Weights follow a normal distribution truncated at ±2 standard deviations,
    with standard deviation ``1.1368 * scale / sqrt(fan_in)`` (official ``trunc_normal_in``
    times ``outscale``). ``scale=0`` gives the zero-initialised output layers of the reward
    and critic heads. A :class:`BlockLinear`'s fan-in is its whole input width, all blocks
    together, as the official initialiser counts it.

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
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, BlockLinear)):
            # Input units feeding one output: in_features, or in_channels * kernel area
            # (a transposed conv stores its weight as [in, out, *kernel]); a block layer
            # ([blocks, in / blocks, out / blocks]) counts all its inputs.
            if isinstance(layer, BlockLinear):
                fan_in = layer.in_features
            elif isinstance(layer, nn.ConvTranspose2d):
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


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` computed in its weight's dtype and returned in its input's dtype.

    Under ``torch.autocast`` to bfloat16 (``Config(precision="bfloat16")``) a layer's
    activations arrive in bfloat16; their mean square, its reciprocal root and the scale
    are then taken in float32, as the official ``Norm`` does, and the result goes on in
    bfloat16. Without autocast both casts are no-ops.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import RMSNorm
        >>> x = torch.randn(3, 8)
        >>> norm = RMSNorm(8)
        >>> norm(x.bfloat16()).dtype, torch.equal(norm(x), torch.nn.RMSNorm(8)(x))
        (torch.bfloat16, True)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if self.weight is None else self.weight.dtype
        return super().forward(x.to(dtype)).to(x.dtype)


class MLP(nn.Sequential):
    """``layers`` x (Linear -> RMSNorm -> SiLU), then an optional output Linear.

    The input may come in parts along the last dimension, ``mlp(stoch, deter)`` for
    ``mlp(torch.cat([stoch, deter], -1))``: the first layer then maps each part with its
    own columns of the weight and sums, so the concatenation is never made (over the
    16 x 1,024 imagined states of a ``size1m`` update it is a 42 MB copy per head call).

    An output layer's result is returned in the parameters' dtype: under bfloat16
    autocast the layers compute in bfloat16 and the predictions, logits and
    distribution parameters the heads make of it are float32, as the official heads
    cast their outputs. An MLP that ends on a hidden layer returns what it computed in.

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
        >>> mlp, a, b = MLP(6, 4, hidden=32, layers=2), torch.randn(3, 2), torch.randn(3, 4)
        >>> torch.allclose(mlp(a, b), mlp(torch.cat([a, b], -1)), atol=1e-6)
        True
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
            blocks += [nn.Linear(width, hidden), RMSNorm(hidden, eps=eps), nn.SiLU()]
            width = hidden
        super().__init__(*blocks)
        dreamer_init_(self)
        if out_features is not None:
            self.append(dreamer_init_(nn.Linear(width, out_features), scale=outscale))
        self.out_features = out_features if out_features is not None else width
        self.has_output = out_features is not None

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        x = self._layers(*parts)
        return x.to(self[-1].weight.dtype) if self.has_output else x

    def _layers(self, *parts: torch.Tensor) -> torch.Tensor:
        if len(parts) == 1 or not len(self):
            x = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
            return super().forward(x)
        first, sizes = self[0], [part.shape[-1] for part in parts]
        if sum(sizes) != first.in_features:
            raise ValueError(
                f"The input parts have sizes {sizes}, {sum(sizes)} in all; the MLP takes "
                f"{first.in_features} features."
            )
        weights = first.weight.split(sizes, dim=1)
        x = nn.functional.linear(parts[0], weights[0], first.bias)
        for part, weight in zip(parts[1:], weights[1:], strict=True):
            x = x + nn.functional.linear(part, weight)
        for layer in list(self)[1:]:
            x = layer(x)
        return x
