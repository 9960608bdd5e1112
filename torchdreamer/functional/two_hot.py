"""Two-hot categorical regression over the DreamerV3 symexp bin grid.

DreamerV3 predicts rewards and values as a categorical distribution over a
fixed, exponentially spaced grid of raw values. A scalar target is spread over
its two neighbouring bins by linear interpolation in *raw* space, so the
expectation of the target distribution equals the target exactly.

The functions here state that math as the official code does. The cross-entropy
runs as one fused autograd node (``_fused``) that computes the same per-element
numbers with fewer operator calls and one ``[N, K]`` buffer; the plain form below
is what it is tested against (``_fused.ENABLED = False`` runs it instead).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from torchdreamer.functional import _fused, _jax_float32

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

    The half is computed in float32 as JAX computes it on CPU, so the 255-bin
    grid equals the official one bit for bit; every ``dtype`` gets those
    float32 values (float64 holds them exactly).

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
    half = _jax_float32.linspace(-limit, 0.0, half_len)
    half = half.sign() * _jax_float32.expm1(half.abs())  # symexp
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
    """Indices and weights, each ``[..., 2]``, of the bins below and above ``target``.

    The official rule: ``below`` is the last bin ``<= target`` and ``above``
    the next one; each weighs the distance to the *other* one over their sum
    (that form, not ``1 - w``, decides the float32 rounding at the huge outer
    bins). Targets beyond the grid are first clamped onto its end bins:
    officially both neighbours of such a target are the end bin with weight
    1/2 each; here they are the end bin with weight 1 and its inner neighbour
    with weight 0, the same two-hot vector. Callers pass a detached target.
    """
    target = target.to(bins.dtype).clamp(bins[0], bins[-1]).contiguous()
    below = torch.searchsorted(bins[1:-1], target, right=True)  # in [0, K - 2]
    to_below = target - bins[below]
    to_above = bins[below + 1] - target
    total = to_below + to_above
    index = torch.stack([below, below + 1], dim=-1)
    return index, torch.stack([to_above / total, to_below / total], dim=-1)


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


#: How a loss's per-element values are reduced, as in ``torch.nn.functional``.
Reduction = Literal["mean", "sum", "none"]


def _check_weight(weight: torch.Tensor, shape: torch.Size) -> None:
    trailing = shape[len(shape) - weight.ndim :]
    if weight.ndim > len(shape) or any(
        w not in (1, n) for w, n in zip(weight.shape, trailing, strict=True)
    ):
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}, which does not broadcast to "
            f"the loss's shape {tuple(shape)}; give one weight per loss element "
            "(or a shape that broadcasts to it, e.g. one per time step)."
        )


def _cross_entropies(
    logits: torch.Tensor,
    targets: torch.Tensor,
    bins: torch.Tensor,
    num_targets: int,
    shape: torch.Size,
    weight: torch.Tensor | None,
    reduction: Reduction,
) -> torch.Tensor:
    """Losses of ``logits [..., K]`` against ``num_targets`` targets per row, in ``shape``."""
    _check_bins(bins, logits.shape[-1])
    if reduction not in get_args(Reduction):
        raise ValueError(f"reduction must be one of {get_args(Reduction)}, got {reduction!r}.")
    if logits.dtype != torch.float32 and logits.dtype != torch.float64:
        logits = logits.to(_compute_dtype(logits.dtype))
    if bins.dtype != logits.dtype or bins.device != logits.device:
        bins = bins.to(device=logits.device, dtype=logits.dtype)
    if weight is not None:
        _check_weight(weight, shape)
        if weight.dtype != logits.dtype:
            weight = weight.to(logits.dtype)
    targets = targets.detach().reshape(-1, num_targets)
    if _fused.ENABLED:
        return _fused.cross_entropies(logits, targets, bins, shape, weight, reduction)

    index, two_hot = _neighbours(targets, bins)  # [M, J, 2] each
    log_probs = torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
    picked = log_probs.gather(-1, index.flatten(1)).view_as(two_hot)
    # The other K - 2 terms of the official sum over all bins are exact zeros.
    loss = -(two_hot * picked).sum(-1).view(shape)
    if weight is not None:
        loss = loss * weight
    return loss if reduction == "none" else loss.mean() if reduction == "mean" else loss.sum()


def two_hot_cross_entropies(
    logits: torch.Tensor,
    targets: torch.Tensor,
    bins: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "none",
) -> torch.Tensor:
    """:func:`two_hot_cross_entropy` of the same logits against several targets at once.

    One softmax pass forward (and one backward for small inputs) serves all
    targets, instead of one set each: DreamerV3 trains its critic
    toward the λ-return and toward the slow critic's prediction from the same
    logits.

    Args:
        logits: Shape ``[..., K]``.
        targets: Raw targets of shape ``[..., J]``: ``J`` targets per logits row.
        bins: 1-D ascending grid of ``K`` raw values.
        weight: Optional factors broadcastable to ``[..., J]``, as in
            :func:`two_hot_cross_entropy`.
        reduction: ``"none"``, ``"mean"`` or ``"sum"`` of the (weighted) losses.

    Returns:
        Losses of shape ``[..., J]`` (or their mean or sum); column ``j`` equals
        ``two_hot_cross_entropy(logits, targets[..., j], bins)``.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import two_hot_cross_entropies
        >>> bins = torch.tensor([-1.0, 0.0, 1.0])
        >>> logits = torch.tensor([[0.0, 0.0, 2.0]])
        >>> two_hot_cross_entropies(logits, torch.tensor([[1.0, -1.0]]), bins)
        tensor([[0.2395, 2.2395]])
    """
    batch_shape = logits.shape[:-1]
    if targets.ndim != logits.ndim or targets.shape[:-1] != batch_shape:
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but logits of shape "
            f"{tuple(logits.shape)} need targets of shape {(*batch_shape, 'J')}."
        )
    return _cross_entropies(
        logits, targets, bins, targets.shape[-1], targets.shape, weight, reduction
    )


def two_hot_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    bins: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "none",
) -> torch.Tensor:
    """``-sum(two_hot(target) * log_softmax(logits))``, without the dense target.

    Equal to ``-(two_hot_encode(target, bins) * logits.log_softmax(-1)).sum(-1)``
    but it gathers the two neighbouring logits instead of building the
    ``[..., K]`` target, and its backward is the closed form
    ``softmax(logits) - two_hot(target)``. The target is treated as a constant
    (stop-gradient), as in DreamerV3; it is interpolated in raw space, not
    squashed. For several targets of the same logits use
    :func:`two_hot_cross_entropies`.

    ``weight`` and ``reduction`` give ``(loss * weight).mean()`` (or ``.sum()``)
    inside the loss's one autograd node, which sums the weighted terms in
    another order than the composed form: the result equals it up to float
    rounding.

    Args:
        logits: Shape ``[..., K]``; float16/bfloat16 are evaluated in float32.
        target: Raw targets of shape ``logits.shape[:-1]``, or that shape with
            a trailing singleton.
        bins: 1-D ascending grid of ``K`` raw values.
        weight: Optional factors that multiply the per-element losses,
            broadcastable to ``logits.shape[:-1]`` (e.g. DreamerV3's cumulative
            discount, one per time step). A weight that requires grad gets its
            gradient.
        reduction: ``"none"`` (per-element losses), ``"mean"`` or ``"sum"``.

    Returns:
        The per-element loss of shape ``logits.shape[:-1]``, or its mean or sum.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import two_hot_cross_entropy
        >>> bins = torch.tensor([-1.0, 0.0, 1.0])
        >>> two_hot_cross_entropy(torch.zeros(2, 3), torch.tensor([-0.5, 1.0]), bins)
        tensor([1.0986, 1.0986])
        >>> logits = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
        >>> weight = torch.tensor([1.0, 0.5])
        >>> two_hot_cross_entropy(
        ...     logits, torch.tensor([1.0, 0.0]), bins, weight=weight, reduction="sum"
        ... )
        tensor(0.7889)
    """
    batch_shape = logits.shape[:-1]
    if target.shape != batch_shape and target.shape != (*batch_shape, 1):
        raise ValueError(
            f"target has shape {tuple(target.shape)} but logits of shape "
            f"{tuple(logits.shape)} need a target of shape "
            f"{tuple(batch_shape)} (or {(*batch_shape, 1)})."
        )
    return _cross_entropies(logits, target, bins, 1, batch_shape, weight, reduction)
