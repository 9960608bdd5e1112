"""The two-hot cross-entropy as one custom autograd node.

It computes the numbers of the plain form in :mod:`torchdreamer.functional.two_hot`
(the same neighbour rule and rounding per element) with fewer operator calls
and one ``[M, K]`` buffer: the forward's (log-)softmax buffer becomes the
gradient in backward. What it keeps across calls is a small table per grid
tensor. docs/performance.md ("The value loss") gives the measurements.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch.autograd.function import once_differentiable
from torch.utils.weak import WeakTensorKeyDictionary

#: From this many logits on, the forward keeps the softmax instead of the
#: log-softmax (see _TwoHotCrossEntropy); below it the few extra small
#: operations of that form cost more than the softmax pass it saves.
SAVED_SOFTMAX_MIN_ELEMENTS = 1 << 16


#: Whether ``two_hot``'s cross-entropies run this node (eager and compiled);
#: False runs their plain form, which the tests also check.
ENABLED = True


class _GridParts(NamedTuple):
    """What the neighbour search reads off a grid, made once per grid tensor."""

    low: torch.Tensor  # bins[0]
    high: torch.Tensor  # bins[-1]
    inner: torch.Tensor  # bins[1:-1]
    signed_pairs: torch.Tensor  # [K - 1, 2]: (-bins[i], bins[i + 1])
    signs: torch.Tensor  # (1, -1)
    offsets: torch.Tensor  # (1, 0): a pair listed as (above, below)
    stamp: tuple[int, int]  # (data_ptr, version) of the grid they were made from


# Per grid tensor, its parts, keyed weakly by the tensor and rebuilt when its
# storage or version changes. The parts are copies, not views: a view keeps its
# base alive, so the entry of a temporary grid would never be dropped.
_GRID_PARTS: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def _grid_parts(bins: torch.Tensor) -> _GridParts:
    # Not cached under torch.compile (it traces the parts), nor for inference
    # tensors, which keep no version counter to tell an in-place change.
    cached = not torch.compiler.is_compiling() and not bins.is_inference()
    stamp = (bins.data_ptr(), bins._version) if cached else (0, 0)
    parts = _GRID_PARTS.get(bins) if cached else None
    if parts is None or parts.stamp != stamp:
        last = bins.numel() - 1
        parts = _GridParts(
            low=bins[0].clone(),
            high=bins[last].clone(),
            inner=bins[1:last].clone(),
            signed_pairs=torch.stack((-bins[:last], bins[1:]), dim=-1),
            signs=torch.tensor([1, -1], dtype=bins.dtype, device=bins.device),
            offsets=torch.arange(1, -1, -1, device=bins.device),
            stamp=stamp,
        )
        if cached:
            _GRID_PARTS[bins] = parts
    return parts


def _pair_sum(pairs: torch.Tensor) -> torch.Tensor:
    """``pairs.sum(-1)`` for a last dimension of 2, as one pointwise addition."""
    return torch.add(*pairs.unbind(-1))


def neighbours(target: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``two_hot._neighbours`` with the pair listed as (above, below), in fewer calls.

    The distances are formed as ``-bin + target * sign`` (``target - below``
    and ``above - target``, one rounding each) from one lookup of the pair,
    each in the slot of the weight it becomes.
    """
    grid = _grid_parts(bins)
    if target.dtype != bins.dtype:
        target = target.to(bins.dtype)
    target = target.clamp(grid.low, grid.high).contiguous()
    below = torch.searchsorted(grid.inner, target, right=True)
    index = below.unsqueeze(-1) + grid.offsets
    pairs = torch.nn.functional.embedding(below, grid.signed_pairs)
    distance = torch.addcmul(pairs, target.unsqueeze(-1), grid.signs)
    return index, distance.div_(_pair_sum(distance).unsqueeze(-1))


class _TwoHotCrossEntropy(torch.autograd.Function):
    """Two-hot cross-entropies of one set of logits, as one autograd node.

    Inputs, for ``M`` rows of logits and ``J`` targets per row:

    * ``logits`` in their own shape ``[..., K]``;
    * ``index`` ``[M, 2 J]``, the two bins of each target;
    * ``coefficient`` ``[M, J, 2]``, the two-hot weights negated and times each
      loss element's factor (its weight, ``1 / count`` for a mean);
    * ``shape``, the shape of the per-element losses, or ``None`` for their
      (weighted) sum, in which case ``row_factor`` (``[M, 1]`` or a number) is
      the sum of each row's factors.

    The gradient is ``sum_j g_j (softmax - two_hot_j)``, formed in place in the
    one ``[M, K]`` buffer the forward made, so extra targets cost no extra pass
    over ``[M, K]``:

    * small inputs: the buffer holds ``log_softmax`` (whose two picked entries
      are the loss); backward recomputes the softmax into it;
    * large inputs: the buffer holds the softmax itself and the two
      log-probabilities come from the logits: ``(x - max) - log(sum)``, the
      official formula, with ``log(sum) = -log(max softmax)`` since the largest
      entry is ``exp(0) / sum``.

    Under ``torch.compile`` the small-input form is traced and the buffers are
    the compiler's.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        index: torch.Tensor,
        coefficient: torch.Tensor,
        row_factor: torch.Tensor | float,
        shape: torch.Size | None,
    ) -> torch.Tensor:
        rows = logits.reshape(-1, logits.shape[-1])
        compiling = torch.compiler.is_compiling()
        ctx.holds_softmax = not compiling and rows.numel() >= SAVED_SOFTMAX_MIN_ELEMENTS
        if ctx.holds_softmax:
            buffer = torch.softmax(rows, dim=-1)
            picked = rows.gather(-1, index).sub_(rows.amax(-1, keepdim=True))
            picked.add_(buffer.amax(-1, keepdim=True).log_())
        else:
            buffer = torch.log_softmax(rows, dim=-1)
            picked = buffer.gather(-1, index)
        ctx.buffer = None if compiling else buffer
        ctx.reduced = shape is None
        if torch.is_tensor(row_factor):
            ctx.save_for_backward(logits, index, coefficient, row_factor)
        else:
            ctx.save_for_backward(logits, index, coefficient)
            ctx.row_factor = row_factor
        if shape is None:
            return torch.dot(coefficient.view(-1), picked.view(-1))
        # Per element, the official -sum(two_hot * log_softmax) adds exact zeros
        # to the two nonzero products; a sum of those two is the same rounding.
        return _pair_sum(coefficient.mul(picked.view_as(coefficient))).view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, index, coefficient, *saved_factor = ctx.saved_tensors
        if ctx.reduced:
            scale = grad_out * (saved_factor[0] if saved_factor else ctx.row_factor)
            two_hot = coefficient * grad_out
        else:
            grad_out = grad_out.reshape(coefficient.shape[:-1])
            scale = grad_out if grad_out.shape[-1] == 1 else grad_out.sum(-1, keepdim=True)
            two_hot = coefficient * grad_out.unsqueeze(-1)
        buffer, ctx.buffer = ctx.buffer, None  # a second backward (retain_graph) makes its own
        if buffer is not None and ctx.holds_softmax:
            grad = buffer
        else:
            # The logits as rows only here: for strided logits (a narrowed view) the
            # reshape is a copy.
            rows = logits.reshape(-1, logits.shape[-1])
            if buffer is None:
                grad = torch.softmax(rows, dim=-1)
            else:
                grad = torch.ops.aten._softmax.out(rows, -1, False, out=buffer)
        grad = grad.mul_(scale)
        grad = grad.scatter_add_(-1, index, two_hot.flatten(1)).view(logits.shape)
        return grad, None, None, None, None


def cross_entropies(
    logits: torch.Tensor,
    targets: torch.Tensor,
    bins: torch.Tensor,
    shape: torch.Size,
    weight: torch.Tensor | None,
    reduction: str,
) -> torch.Tensor:
    """``two_hot._cross_entropies`` after its checks: ``targets`` is ``[M, J]`` and detached."""
    num_targets = targets.shape[-1]
    index, two_hot_weight = neighbours(targets, bins)
    index = index.flatten(1)
    count = math.prod(shape)
    if reduction == "none" or count == 0 or (weight is not None and weight.requires_grad):
        # Per-element losses; a weight that wants its gradient (or the mean of
        # nothing, NaN as in torch) is left to autograd.
        loss = _TwoHotCrossEntropy.apply(logits, index, two_hot_weight.neg(), 1.0, shape)
        if weight is not None:
            loss = loss * weight
        return loss if reduction == "none" else loss.mean() if reduction == "mean" else loss.sum()
    scale = 1.0 / count if reduction == "mean" else 1.0
    if weight is None:
        coefficient, row_factor = two_hot_weight.mul(-scale), num_targets * scale
    else:
        factor = weight if scale == 1.0 else weight.mul(scale)
        factor = factor.expand(shape).reshape(-1, num_targets)
        coefficient = two_hot_weight.mul(factor.unsqueeze(-1)).neg_()
        row_factor = factor if num_targets == 1 else factor.sum(-1, keepdim=True)
    return _TwoHotCrossEntropy.apply(logits, index, coefficient, row_factor, None)
