"""Two-hot categorical regression over the DreamerV3 symexp bin grid.

DreamerV3 predicts rewards and values as a categorical distribution over a
fixed, exponentially spaced grid of raw values. A scalar target is spread over
its two neighbouring bins by linear interpolation in *raw* space, so the
expectation of the target distribution equals the target exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "two_hot_bins",
    "two_hot_cross_entropies",
    "two_hot_cross_entropy",
    "two_hot_decode",
    "two_hot_encode",
]

#: Half-width, in symlog space, of the official DreamerV3 grid.
DEFAULT_LIMIT = 20.0


def two_hot_bins(
    num_bins: int = 255,
    *,
    limit: float = DEFAULT_LIMIT,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The official DreamerV3 bin grid, in raw space, ascending.

    Built as the official ``symexp_twohot`` head builds it: the negative half
    ``symexp(linspace(-limit, 0, n))`` is mirrored, so the grid is exactly
    antisymmetric (``bins == -bins.flip(0)`` bit for bit).

    * odd ``num_bins``: ``n = (num_bins + 1) // 2`` and the shared 0 appears
      once, giving ``symexp(linspace(-limit, limit, num_bins))``;
    * even ``num_bins``: ``n = num_bins // 2`` and the mirror is taken whole,
      so 0 appears twice (as ``+0`` and ``-0``). This is the official grid and
      differs from a plain ``symexp(linspace(-limit, limit, num_bins))``.

    The grid is computed in float64 and rounded once to ``dtype``.

    Args:
        num_bins: Number of bins, at least 2. DreamerV3 uses 255.
        limit: Half-width of the grid in symlog space.
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        A 1-D tensor of ``num_bins`` ascending raw values.

    Examples:
        >>> from torchdreamer.functional import two_hot_bins
        >>> two_hot_bins(5, limit=2.0)
        tensor([-6.3891, -1.7183,  0.0000,  1.7183,  6.3891])
        >>> two_hot_bins(4, limit=2.0)
        tensor([-6.3891,  0.0000, -0.0000,  6.3891])
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}.")
    if not limit > 0:
        raise ValueError(f"limit must be positive, got {limit!r}.")
    half_len = (num_bins + 1) // 2 if num_bins % 2 else num_bins // 2
    half = torch.linspace(-limit, 0.0, half_len, dtype=torch.float64)
    half = torch.sign(half) * torch.expm1(half.abs())
    mirror = -half[:-1].flip(0) if num_bins % 2 else -half.flip(0)
    return torch.cat([half, mirror]).to(dtype=dtype, device=device)


def _check_bins(bins: torch.Tensor, num_classes: int | None = None) -> None:
    if bins.ndim != 1 or bins.numel() < 2:
        raise ValueError(
            f"bins must be a 1-D tensor of at least 2 ascending values, "
            f"got shape {tuple(bins.shape)}."
        )
    if num_classes is not None and num_classes != bins.numel():
        raise ValueError(
            f"logits have {num_classes} classes in their last dimension but "
            f"there are {bins.numel()} bins; they must be equal."
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # The official code evaluates two-hot in float32 even for bf16 networks.
    return torch.promote_types(dtype, torch.float32)


def _neighbours(target: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and weights, each ``[..., 2]``, of the two bins that share ``target``.

    Mirrors the official rule: ``below`` is the last bin ``<= target`` and
    ``above`` the first bin ``> target``, both clipped to the grid. When they
    coincide (target beyond either end) the whole weight lands on that bin;
    a target exactly on a bin also gets weight 1 there. Weights are formed as
    ``|other bin - target| / total distance`` like the official code, which
    matters for float32 rounding at the huge outer bins. Callers pass a
    detached target, so nothing here is recorded by autograd.
    """
    target = target.to(bins.dtype).contiguous()
    above = torch.searchsorted(bins, target, right=True)
    index = torch.stack([above - 1, above], dim=-1).clamp_(0, bins.numel() - 1)
    distance = (bins.take(index) - target.unsqueeze(-1)).abs_()
    distance.masked_fill_(index[..., :1] == index[..., 1:], 1.0)
    return index, distance.flip(-1).div_(distance.sum(-1, keepdim=True))


def two_hot_encode(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Dense two-hot encoding of raw scalars ``x`` on ``bins``.

    Each value gives weight to its two neighbouring bins, linearly in raw
    space; values beyond the grid saturate on the end bin. Meant for users and
    tests: the loss itself never builds this ``[..., K]`` tensor.

    Args:
        x: Raw targets, any shape.
        bins: 1-D ascending grid of ``K`` raw values.

    Returns:
        A tensor of shape ``(*x.shape, K)`` whose rows sum to 1.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import two_hot_encode
        >>> bins = torch.tensor([-1.0, 0.0, 1.0, 3.0])
        >>> two_hot_encode(torch.tensor([0.25, 2.0, 9.0]), bins)
        tensor([[0.0000, 0.7500, 0.2500, 0.0000],
                [0.0000, 0.0000, 0.5000, 0.5000],
                [0.0000, 0.0000, 0.0000, 1.0000]])
    """
    _check_bins(bins)
    bins = bins.to(device=x.device, dtype=_compute_dtype(x.dtype))
    index, weight = _neighbours(x.detach(), bins)
    out = torch.zeros(*x.shape, bins.numel(), dtype=bins.dtype, device=x.device)
    return out.scatter_add_(-1, index, weight)


def two_hot_decode(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Expected raw value of the categorical ``softmax(logits)`` over ``bins``.

    Bins are summed in mirrored pairs, from the centre outwards: with an
    antisymmetric grid, uniform (e.g. zero-initialised) logits decode to
    exactly 0 instead of the rounding residue of a left-to-right sum over
    values as large as 4.8e8. The pair term is written as
    ``(p_hi - p_lo) * b_hi + p_lo * (b_hi + b_lo)`` so that it stays exactly
    zero even when a compiler fuses the products into FMAs.

    Args:
        logits: Unnormalised log-probabilities, shape ``[..., K]``.
        bins: 1-D ascending grid of ``K`` raw values.

    Returns:
        Decoded values of shape ``logits.shape[:-1]``, at least float32.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import two_hot_bins, two_hot_decode
        >>> two_hot_decode(torch.zeros(2, 255), two_hot_bins(255))
        tensor([0., 0.])
        >>> bins = torch.tensor([-1.0, 0.0, 2.0])
        >>> two_hot_decode(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 30.0]]), bins)
        tensor([0.3333, 2.0000])
    """
    num_bins = logits.shape[-1]
    _check_bins(bins, num_bins)
    probs = torch.softmax(logits.to(_compute_dtype(logits.dtype)), dim=-1)
    bins = bins.to(device=probs.device, dtype=probs.dtype)
    half = num_bins // 2
    upper_bins = bins[num_bins - half :]
    lower = probs[..., :half].flip(-1)
    upper = probs[..., num_bins - half :]
    pairs = (upper - lower) * upper_bins + lower * (upper_bins + bins[:half].flip(0))
    value = pairs.sum(-1)
    if num_bins % 2:
        value = value + probs[..., half] * bins[half]
    return value


class _TwoHotCrossEntropy(torch.autograd.Function):
    """Cross-entropies of one set of logits against ``J`` two-hot targets.

    The targets come as neighbour indices and weights of shape ``[N, J, 2]``;
    the output is ``[N, J]``, one loss column per target. Only small tensors
    outlive the forward. Backward recomputes the softmax once into one
    ``[N, K]`` buffer and turns it into ``sum_j g_j (softmax - two_hot_j)`` in
    place, so extra targets (e.g. a slow critic's) cost no extra pass over
    ``[N, K]``. The fused (log-)softmax kernels are used on purpose: on CPU
    they are about twice as fast as ``logsumexp`` or a pointwise ``exp``.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        flat_index = index.flatten(1)
        picked = torch.log_softmax(logits, dim=-1).gather(-1, flat_index).view_as(weight)
        ctx.save_for_backward(logits, flat_index, weight)
        # The official -sum(two_hot * log_softmax) adds exact zeros to the two
        # nonzero products; a sum of those two is the same single rounding.
        return weight.mul(picked).sum(-1).neg_()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, flat_index, weight = ctx.saved_tensors
        grad = torch.softmax(logits, dim=-1).mul_(grad_loss.sum(-1, keepdim=True))
        two_hot = (weight * -grad_loss.unsqueeze(-1)).flatten(1)
        return grad.scatter_add_(-1, flat_index, two_hot), None, None


def two_hot_cross_entropies(
    logits: torch.Tensor, targets: torch.Tensor, bins: torch.Tensor
) -> torch.Tensor:
    """:func:`two_hot_cross_entropy` of the same logits against several targets at once.

    One softmax pass forward and one backward serve all targets, instead of
    one each: DreamerV3 trains its critic toward the λ-return and toward the
    slow critic's prediction from the same logits.

    Args:
        logits: Shape ``[..., K]``.
        targets: Raw targets of shape ``[..., J]``: ``J`` targets per logits row.
        bins: 1-D ascending grid of ``K`` raw values.

    Returns:
        Losses of shape ``[..., J]``; column ``j`` equals
        ``two_hot_cross_entropy(logits, targets[..., j], bins)``.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import two_hot_cross_entropies
        >>> bins = torch.tensor([-1.0, 0.0, 1.0])
        >>> logits = torch.tensor([[0.0, 0.0, 2.0]])
        >>> two_hot_cross_entropies(logits, torch.tensor([[1.0, -1.0]]), bins)
        tensor([[0.2395, 2.2395]])
    """
    num_bins = logits.shape[-1]
    _check_bins(bins, num_bins)
    batch_shape = logits.shape[:-1]
    if targets.ndim != logits.ndim or targets.shape[:-1] != batch_shape:
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but logits of shape "
            f"{tuple(logits.shape)} need targets of shape {(*batch_shape, 'J')}."
        )
    logits = logits.to(_compute_dtype(logits.dtype)).reshape(-1, num_bins)
    if bins.dtype != logits.dtype or bins.device != logits.device:
        bins = bins.to(device=logits.device, dtype=logits.dtype)
    index, weight = _neighbours(targets.detach().reshape(logits.shape[0], -1), bins)
    loss = _TwoHotCrossEntropy.apply(logits, index, weight)
    return loss.reshape(targets.shape)


def two_hot_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor
) -> torch.Tensor:
    """``-sum(two_hot(target) * log_softmax(logits))``, without the dense target.

    Equal to ``-(two_hot_encode(target, bins) * logits.log_softmax(-1)).sum(-1)``
    but it gathers the two neighbouring logits instead of building the
    ``[..., K]`` target, and its backward is the closed form
    ``softmax(logits) - two_hot(target)``. The target is treated as a constant
    (stop-gradient), as in DreamerV3; it is interpolated in raw space, not
    squashed. For several targets of the same logits use
    :func:`two_hot_cross_entropies`.

    Args:
        logits: Shape ``[..., K]``; float16/bfloat16 are evaluated in float32.
        target: Raw targets of shape ``logits.shape[:-1]``, or that shape with
            a trailing singleton.
        bins: 1-D ascending grid of ``K`` raw values.

    Returns:
        The per-element loss, shape ``logits.shape[:-1]``.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import two_hot_cross_entropy
        >>> bins = torch.tensor([-1.0, 0.0, 1.0])
        >>> two_hot_cross_entropy(torch.zeros(2, 3), torch.tensor([-0.5, 1.0]), bins)
        tensor([1.0986, 1.0986])
    """
    batch_shape = logits.shape[:-1]
    if target.shape == batch_shape:
        target = target.unsqueeze(-1)
    elif target.shape != (*batch_shape, 1):
        raise ValueError(
            f"target has shape {tuple(target.shape)} but logits of shape "
            f"{tuple(logits.shape)} need a target of shape "
            f"{tuple(batch_shape)} (or {(*batch_shape, 1)})."
        )
    return two_hot_cross_entropies(logits, target, bins).squeeze(-1)
