"""Output distributions of DreamerV3's heads: each owns its decoding and its loss.

One object per output kind, after the official ``embodied/jax/outs.py``
(``TwoHot``, ``MSE``, ``Binary``) and TorchRL's ``SymExpTwoHot``:

* :class:`TwoHot`: a scalar as a categorical over a grid of raw values (reward
  and critic heads); it holds the grid.
* :class:`SymlogMSE`: a scalar regressed in symlog space.
* :class:`Bernoulli`: a binary event from one logit (the continuation head).

Each has ``decode(prediction)`` (the point prediction: the expected value,
or the probability) and ``loss(prediction, target, weight=None,
reduction="none")``; ``losses(prediction, *targets)`` gives the per-element
losses of one prediction against several targets, sharing the work (one
softmax pass for two-hot). ``event_size`` is what the head writes per scalar:
the number of logits, or ``None`` for one value.

Examples:
    >>> import torch
    >>> from torchdreamer.functional.outputs import Bernoulli, SymlogMSE, TwoHot
    >>> head = TwoHot(255)
    >>> logits = torch.zeros(4, 255, requires_grad=True)
    >>> head.decode(logits)
    tensor([0., 0., 0., 0.], grad_fn=<AddBackward0>)
    >>> head.loss(logits, torch.tensor([0.0, 1.0, -3.0, 1e4]), reduction="mean").backward()
    >>> SymlogMSE().loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    tensor([0., 0.])
    >>> Bernoulli().decode(torch.tensor([0.0]))
    tensor([0.5000])

"""

from __future__ import annotations

from typing import get_args

import torch

from torchdreamer.functional.symlog import symexp, symlog
from torchdreamer.functional.two_hot import (
    DEFAULT_LIMIT,
    Reduction,
    two_hot_bins,
    two_hot_cross_entropies,
    two_hot_cross_entropy,
    two_hot_decode,
    two_hot_encode,
)

__all__ = ["Bernoulli", "Output", "SymlogMSE", "TwoHot"]


def _reduced(loss: torch.Tensor, weight: torch.Tensor | None, reduction: Reduction) -> torch.Tensor:
    if reduction not in get_args(Reduction):
        raise ValueError(f"reduction must be one of {get_args(Reduction)}, got {reduction!r}.")
    if weight is not None:
        loss = loss * weight
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class Output:
    """What every output kind provides; see the module docstring."""

    #: Values the head writes per predicted scalar: logits per scalar, or ``None`` for one.
    event_size: int | None = None

    def decode(self, prediction: torch.Tensor) -> torch.Tensor:
        """The point prediction, with the event dimension (if any) removed."""
        raise NotImplementedError

    def losses(self, prediction: torch.Tensor, *targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-element losses of ``prediction`` against each target, in the targets' shape."""
        raise NotImplementedError

    def loss(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        reduction: Reduction = "none",
    ) -> torch.Tensor:
        """The loss against ``target``, times ``weight`` if given, then reduced."""
        (loss,) = self.losses(prediction, target)
        return _reduced(loss, weight, reduction)


class TwoHot(Output):
    """A scalar as a categorical over a grid of raw values, trained on two-hot targets.

    Args:
        bins: The grid: a 1-D ascending tensor of raw values, or a number of
            bins for the official ``symexp`` grid (:func:`two_hot_bins`; DreamerV3
            uses 255).

    Keyword Args:
        limit: Half-width of the official grid in symlog space (with a number
            of bins only).
        dtype: Dtype of the official grid (with a number of bins only).
        device: Device of the official grid (with a number of bins only).

    The loss is the fused :func:`two_hot_cross_entropy`: the weight and the
    reduction are applied inside its autograd node.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional.outputs import TwoHot
        >>> head = TwoHot(torch.tensor([-1.0, 0.0, 2.0]))
        >>> head.event_size, head.encode(torch.tensor([1.0]))
        (3, tensor([[0.0000, 0.5000, 0.5000]]))
        >>> head.decode(torch.tensor([[0.0, 0.0, 30.0]]))
        tensor([2.])
        >>> logits = torch.zeros(2, 3)
        >>> head.loss(logits, torch.tensor([0.0, 2.0]), weight=torch.tensor([1.0, 0.5]))
        tensor([1.0986, 0.5493])
        >>> torch.stack(head.losses(logits, torch.zeros(2), torch.ones(2)))
        tensor([[1.0986, 1.0986],
                [1.0986, 1.0986]])
        >>> TwoHot(255).bins[-1]
        tensor(4.8517e+08)

    """

    def __init__(
        self,
        bins: torch.Tensor | int = 255,
        *,
        limit: float = DEFAULT_LIMIT,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if not torch.is_tensor(bins):
            bins = two_hot_bins(bins, limit=limit, dtype=dtype, device=device)
        elif bins.ndim != 1 or bins.numel() < 2:
            raise ValueError(
                f"bins must be a 1-D tensor of at least 2 ascending values, "
                f"got shape {tuple(bins.shape)}."
            )
        self.bins = bins
        self.event_size = bins.numel()

    def encode(self, target: torch.Tensor) -> torch.Tensor:
        """The dense two-hot encoding ``[*target.shape, K]`` (the loss never builds it)."""
        return two_hot_encode(target, self.bins)

    def decode(self, prediction: torch.Tensor) -> torch.Tensor:
        """The expected raw value of ``softmax(logits)`` over the grid, ``logits.shape[:-1]``."""
        return two_hot_decode(prediction, self.bins)

    def losses(self, prediction: torch.Tensor, *targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(targets) == 1:
            return (two_hot_cross_entropy(prediction, targets[0], self.bins),)
        stacked = torch.stack(targets, dim=-1)
        return two_hot_cross_entropies(prediction, stacked, self.bins).unbind(-1)

    def loss(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        reduction: Reduction = "none",
    ) -> torch.Tensor:
        return two_hot_cross_entropy(
            prediction, target, self.bins, weight=weight, reduction=reduction
        )

    def __repr__(self) -> str:
        return f"TwoHot(num_bins={self.event_size})"


class SymlogMSE(Output):
    """A scalar regressed by the squared error of symlogs.

    ``loss = (symlog(prediction) - symlog(target))**2`` for a head that
    predicts raw values (TorchRL's ``"symlog_mse"`` critic), or, with
    ``symlog_prediction=True``, ``(prediction - symlog(target))**2`` for a
    head that predicts in symlog space (the official ``MSE(squash=symlog)``
    decoder), whose ``decode`` then applies ``symexp``. The target never
    receives a gradient.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional.outputs import SymlogMSE
        >>> target = torch.tensor([0.0, 9.0])
        >>> SymlogMSE().loss(torch.tensor([1.0, 9.0]), target)
        tensor([0.4805, 0.0000])
        >>> symlog_head = SymlogMSE(symlog_prediction=True)
        >>> symlog_head.loss(torch.tensor([1.0, 9.0]).log1p(), target)
        tensor([0.4805, 0.0000])
        >>> symlog_head.decode(torch.tensor([0.0, 2.302585]))
        tensor([0.0000, 9.0000])

    """

    def __init__(self, *, symlog_prediction: bool = False) -> None:
        self.symlog_prediction = bool(symlog_prediction)

    def decode(self, prediction: torch.Tensor) -> torch.Tensor:
        return symexp(prediction) if self.symlog_prediction else prediction

    def losses(self, prediction: torch.Tensor, *targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        squashed = prediction if self.symlog_prediction else symlog(prediction)
        return tuple((squashed - symlog(target.detach())).square() for target in targets)

    def __repr__(self) -> str:
        return f"SymlogMSE(symlog_prediction={self.symlog_prediction})"


class Bernoulli(Output):
    """A binary event from one logit: ``decode`` is its probability, the loss ``-log p(target)``.

    The loss is ``binary_cross_entropy_with_logits`` (the official
    ``Binary.logp`` negated), for targets in ``[0, 1]``; boolean targets are
    converted.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional.outputs import Bernoulli
        >>> logit = torch.tensor([0.0, 4.0])
        >>> Bernoulli().decode(logit)
        tensor([0.5000, 0.9820])
        >>> Bernoulli().loss(logit, torch.tensor([True, True]))
        tensor([0.6931, 0.0181])

    """

    def decode(self, prediction: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(prediction)

    def losses(self, prediction: torch.Tensor, *targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(
            torch.nn.functional.binary_cross_entropy_with_logits(
                prediction, target.detach().to(prediction.dtype), reduction="none"
            )
            for target in targets
        )

    def __repr__(self) -> str:
        return "Bernoulli()"
