"""λ-returns, imagination weights and return percentiles, as in DreamerV3.

Time is the last dimension throughout: a trajectory of ``T + 1`` states is
indexed ``0 .. T``; entry ``t`` of ``reward`` and ``continuation`` belongs to
state ``t`` (the reward received on entering it, and the probability that the
episode goes on from it).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["discount_weights", "lambda_return", "return_percentiles"]


def lambda_return(
    reward: torch.Tensor,
    continuation: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float | torch.Tensor,
    lmbda: float | torch.Tensor,
    is_last: torch.Tensor | None = None,
) -> torch.Tensor:
    """DreamerV3's λ-return for states ``0 .. T-1`` of a ``T + 1``-state trajectory.

    ``R_t = r_{t+1} + γ c_{t+1} ((1 - λ_{t+1}) b_{t+1} + λ_{t+1} R_{t+1})`` with
    ``R_T = b_T`` and ``λ_{t+1} = λ (1 - is_last_{t+1})``. The reward and
    continuation of step ``t + 1`` belong to return ``t``: the classic porting
    bug is to pair ``R_t`` with ``r_t``.

    In imagination ``b`` is the critic's value ``v`` and ``is_last`` is unused;
    on replay sequences ``b`` is each state's first imagined return and
    ``is_last`` cuts the recursion at episode boundaries.

    Args:
        reward: ``[..., T + 1]``; ``reward[..., 0]`` is not used.
        continuation: ``[..., T + 1]``, 1 - terminal or a probability in [0, 1];
            entry 0 is not used.
        bootstrap: ``[..., T + 1]``, the value to bootstrap from at each state.
        gamma: Discount.
        lmbda: λ.
        is_last: Optional ``[..., T + 1]`` episode-end flags.

    Returns:
        ``[..., T]`` returns, differentiable in all inputs.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import lambda_return
        >>> reward = torch.tensor([0.0, 1.0, 1.0, 1.0])
        >>> cont = torch.ones(4)
        >>> value = torch.zeros(4)
        >>> lambda_return(reward, cont, value, gamma=0.5, lmbda=1.0)
        tensor([1.7500, 1.5000, 1.0000])
        >>> lambda_return(reward, torch.tensor([1.0, 1.0, 0.0, 1.0]), value, 0.5, 1.0)
        tensor([1.5000, 1.0000, 1.0000])
    """
    shape = reward.shape
    if continuation.shape != shape or bootstrap.shape != shape:
        raise ValueError(
            f"reward, continuation and bootstrap must share one shape [..., T + 1]; got "
            f"{tuple(shape)}, {tuple(continuation.shape)} and {tuple(bootstrap.shape)}."
        )
    if is_last is not None and is_last.shape != shape:
        raise ValueError(f"is_last has shape {tuple(is_last.shape)}, expected {tuple(shape)}.")
    if shape[-1] < 2:
        raise ValueError(f"need at least 2 states along the last dimension, got {shape[-1]}.")
    live = gamma * continuation[..., 1:]
    mix = lmbda if is_last is None else lmbda * (1 - is_last[..., 1:].to(reward.dtype))
    # Everything but the recursive term, for all steps at once; then one
    # fused multiply-add per step walking back from the bootstrap. unbind
    # splits time in one op (and one op in backward): indexing step by step
    # would record a select per step, whose backward allocates a zero [..., T]
    # tensor each time.
    partial = reward[..., 1:] + live * (1 - mix) * bootstrap[..., 1:]
    carry = live * mix
    if not torch.is_tensor(carry) or carry.shape != partial.shape:
        carry = torch.as_tensor(carry, dtype=partial.dtype, device=partial.device)
        carry = carry.expand_as(partial)
    partial, carry = partial.unbind(-1), carry.unbind(-1)
    running = bootstrap[..., -1]
    returns = [running] * len(partial)
    for t in reversed(range(len(partial))):
        running = torch.addcmul(partial[t], carry[t], running)
        returns[t] = running
    return torch.stack(returns, dim=-1)


def discount_weights(continuation: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
    """Per-state loss weights ``w_t = γ^t Π_{k<=t} c_k`` of an imagined trajectory.

    The start state's continuation ``c_0`` is included: a start state that was
    itself terminal contributes nothing. Equal to the official
    ``cumprod(γ c) / γ``, without dividing by γ.

    Args:
        continuation: ``[..., T]`` continuation probabilities of states ``0 .. T-1``.
        gamma: Discount.

    Returns:
        ``[..., T]`` weights (not detached: detach where a stop-gradient is meant).

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import discount_weights
        >>> discount_weights(torch.tensor([1.0, 1.0, 0.5, 1.0]), gamma=0.5)
        tensor([1.0000, 0.5000, 0.1250, 0.0625])
    """
    factors = torch.cat([continuation[..., :1], gamma * continuation[..., 1:]], dim=-1)
    return factors.cumprod(dim=-1)


def return_percentiles(
    returns: torch.Tensor, quantiles: tuple[float, float] = (0.05, 0.95)
) -> torch.Tensor:
    """The low and high percentiles of a batch of returns (linear interpolation).

    The ``q`` percentile lies at rank ``q (n - 1)`` of the ``n`` sorted returns, between
    the two entries around it, as ``torch.quantile`` (and NumPy's default) computes it,
    to the last bit. Unlike ``torch.quantile``, nothing is read back from the device (it
    checks ``q`` and looks for NaNs on the host): the ranks come from the shape alone.
    A NaN among the returns makes both percentiles NaN.

    Args:
        returns: Any shape, at least one entry; all entries are pooled.
        quantiles: Fractions in [0, 1], low then high.

    Returns:
        A tensor ``[low, high]`` in float32 or wider.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import return_percentiles
        >>> return_percentiles(torch.arange(101.0))
        tensor([ 5., 95.])
        >>> return_percentiles(torch.tensor([0.0, 10.0]), (0.25, 0.5))
        tensor([2.5000, 5.0000])
    """
    flat = returns.detach().reshape(-1)
    if flat.numel() == 0:
        raise ValueError("return_percentiles needs at least one return; got an empty tensor.")
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
    ordered = flat.sort().values
    points = []
    for q in quantiles:
        below, above, weight = _rank(float(q), flat.numel(), flat.dtype)
        points.append(torch.lerp(ordered[below], ordered[above], weight))
    # Sorting puts NaNs last, past the ranks read above: they are brought back here.
    return torch.stack(points).masked_fill(flat.isnan().any(), float("nan"))


@functools.lru_cache(maxsize=64)
def _rank(q: float, n: int, dtype: torch.dtype) -> tuple[int, int, float]:
    """The entries below and above rank ``q (n - 1)`` and the weight between them,
    computed on the host in ``dtype`` as ``torch.quantile`` computes them."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantiles must lie in [0, 1], got {q}.")
    rank = torch.tensor(q, dtype=dtype) * (n - 1)
    below = int(rank.floor())
    return below, int(rank.ceil()), float(rank - below)
