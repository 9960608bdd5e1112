"""Prediction heads of the DreamerV3 agent."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrl.modules import OneHotCategorical as _TorchRLOneHotCategorical

from torchdreamer.functional import unimix_logits
from torchdreamer.functional.outputs import TwoHot
from torchdreamer.modules.layers import MLP, sample_one_hot

__all__ = [
    "BoundedNormalActorHead",
    "CategoricalActorHead",
    "ContinuationHead",
    "MultiCategoricalActorHead",
    "MultiOneHotCategorical",
    "OneHotCategorical",
    "TwoHotHead",
]


class TwoHotHead(nn.Module):
    """A scalar predicted as a categorical over the two-hot bins (reward, critic).

    The output layer starts at zero, so every prediction starts at exactly 0.
    ``forward`` returns ``(logits, value)``: logits ``[..., num_bins]`` for
    the two-hot loss and the decoded value ``[..., 1]``.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import TwoHotHead
        >>> logits, value = TwoHotHead(8, hidden=16, layers=1)(torch.randn(4, 8))
        >>> logits.shape, value.abs().max().item()
        (torch.Size([4, 255]), 0.0)
    """

    bins: torch.Tensor

    def __init__(
        self, in_features: int, hidden: int = 512, layers: int = 1, num_bins: int = 255
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_features, num_bins, hidden, layers, outscale=0.0)
        # A buffer, so that the grid follows the module's device and dtype moves.
        self.register_buffer("bins", TwoHot(num_bins).bins)

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.mlp(*features)
        return logits, self.decode(logits)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """The value ``[..., 1]`` that ``logits`` predict (the bins' expectation).

        Examples:
            >>> import torch
            >>> from torchdreamer.modules import TwoHotHead
            >>> head = TwoHotHead(8, hidden=16, layers=1)
            >>> logits = torch.full((2, 255), -100.0)
            >>> logits[0, 127], logits[1, 128] = 0.0, 0.0  # the bins 0 and symexp(20 / 127)
            >>> head.decode(logits).squeeze(-1)
            tensor([0.0000, 0.1706])
        """
        return TwoHot(self.bins).decode(logits).unsqueeze(-1)


class ContinuationHead(nn.Module):
    """The probability that the episode goes on: ``(logit, probability)``, each ``[..., 1]``.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import ContinuationHead
        >>> logit, prob = ContinuationHead(8, hidden=16, layers=1)(torch.randn(4, 8))
        >>> bool(((prob > 0) & (prob < 1)).all())
        True
    """

    def __init__(self, in_features: int, hidden: int = 512, layers: int = 1) -> None:
        super().__init__()
        self.mlp = MLP(in_features, 1, hidden, layers)

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.mlp(*features)
        return logit, torch.sigmoid(logit)


class CategoricalActorHead(nn.Module):
    """Logits of a discrete policy.

    Returns normalised log-probabilities ``[..., num_actions]`` of
    ``(1 - unimix) softmax + unimix / num_actions``, for a one-hot categorical
    (e.g. ``torchrl.modules.OneHotCategorical``). ``unimix`` is 0 by default: the
    official policy head (``policy_dist_disc: categorical``) mixes in no uniform
    distribution (its ``unimix`` setting reaches only one-hot outputs). The output
    layer starts at 1% of the usual scale (official policy ``outscale`` 0.01), so the
    first policy is close to uniform.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import CategoricalActorHead
        >>> features = torch.randn(4, 8)
        >>> head = CategoricalActorHead(8, 3, hidden=16, layers=1)
        >>> torch.allclose(head(features), head.mlp(features).log_softmax(-1))
        True
        >>> mixed = CategoricalActorHead(8, 3, hidden=16, layers=1, unimix=0.01)
        >>> bool((mixed(features).exp() >= 0.01 / 3 - 1e-7).all())
        True
    """

    def __init__(
        self,
        in_features: int,
        num_actions: int,
        hidden: int = 512,
        layers: int = 3,
        unimix: float = 0.0,
        outscale: float = 0.01,
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_features, num_actions, hidden, layers, outscale=outscale)
        self.unimix = unimix

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return _mixed(self.mlp(*features), self.unimix)


def _mixed(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Normalised log-probabilities of ``logits`` with ``unimix`` of a uniform mixed in;
    without any, ``log_softmax`` (finite wherever the logits are)."""
    return unimix_logits(logits, unimix) if unimix else logits.log_softmax(-1)


def _sizes(nvec: Sequence[int]) -> tuple[int, ...]:
    """``nvec`` as a tuple of ints, each at least 1."""
    sizes = tuple(int(n) for n in nvec)
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"nvec must be a non-empty sequence of sizes >= 1, got {list(nvec)}.")
    return sizes


class MultiCategoricalActorHead(nn.Module):
    """Logits of a multi-discrete policy: one categorical per component, each mixed as
    :class:`CategoricalActorHead` mixes its one (by default not at all, as the official).

    For components of ``nvec = (n_1, ..., n_k)`` actions it returns ``[..., sum(nvec)]``
    values: component ``i``'s ``n_i`` normalised log-probabilities of
    ``(1 - unimix) softmax + unimix / n_i``, one component after the other, for
    :class:`MultiOneHotCategorical`. The output layer starts at 1% of the usual scale.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import MultiCategoricalActorHead
        >>> logits = MultiCategoricalActorHead(8, (3, 2), hidden=16, layers=1)(torch.randn(4, 8))
        >>> logits.shape
        torch.Size([4, 5])
        >>> [round(p, 4) for p in logits.exp().split((3, 2), -1)[1].sum(-1).tolist()]
        [1.0, 1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        in_features: int,
        nvec: Sequence[int],
        hidden: int = 512,
        layers: int = 3,
        unimix: float = 0.0,
        outscale: float = 0.01,
    ) -> None:
        super().__init__()
        self.nvec = _sizes(nvec)
        self.mlp = MLP(in_features, sum(self.nvec), hidden, layers, outscale=outscale)
        self.unimix = unimix

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        parts = self.mlp(*features).split(self.nvec, dim=-1)
        return torch.cat([_mixed(part, self.unimix) for part in parts], dim=-1)


class BoundedNormalActorHead(nn.Module):
    """A continuous policy: a normal with mean in ``[-1, 1]`` and bounded spread.

    Returns ``(loc, scale)`` with ``loc = tanh(m)`` and
    ``scale = (max_std - min_std) * sigmoid(s + 2) + min_std`` (DreamerV3's
    ``bounded_normal``, official ``min_std = 0.1``, ``max_std = 1``), for
    ``torch.distributions.Normal``. Actions are clipped to ``[-1, 1]`` before
    they are scaled to the environment's bounds. The output layer starts at
    1% of the usual scale (official policy ``outscale`` 0.01).

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import BoundedNormalActorHead
        >>> loc, scale = BoundedNormalActorHead(8, 2, hidden=16, layers=1)(torch.randn(4, 8))
        >>> loc.shape, bool(((scale >= 0.1) & (scale <= 1.0)).all())
        (torch.Size([4, 2]), True)
    """

    def __init__(
        self,
        in_features: int,
        action_dim: int,
        hidden: int = 512,
        layers: int = 3,
        min_std: float = 0.1,
        max_std: float = 1.0,
        outscale: float = 0.01,
    ) -> None:
        super().__init__()
        if not 0 < min_std <= max_std:
            raise ValueError(f"need 0 < min_std <= max_std, got {min_std} and {max_std}.")
        self.mlp = MLP(in_features, 2 * action_dim, hidden, layers, outscale=outscale)
        self.min_std, self.max_std = min_std, max_std

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, spread = self.mlp(*features).chunk(2, dim=-1)
        scale = (self.max_std - self.min_std) * torch.sigmoid(spread + 2.0) + self.min_std
        return torch.tanh(mean), scale


class OneHotCategorical(_TorchRLOneHotCategorical):
    """TorchRL's one-hot categorical, sampled with the Gumbel-max trick.

    ``torch.multinomial`` is slow for many small categoricals (it dominated
    other DreamerV3 ports' imagination profiles); :func:`~torchdreamer.modules.sample_one_hot`
    (``argmax(logits + Gumbel noise)``) draws from the same distribution with
    pointwise operators.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import OneHotCategorical
        >>> _ = torch.manual_seed(0)
        >>> dist = OneHotCategorical(logits=torch.tensor([0.0, 2.0]).log_softmax(-1))
        >>> dist.sample((20000,)).mean(0).round(decimals=2)
        tensor([0.1200, 0.8800])
    """

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        return sample_one_hot(self.logits.expand(*sample_shape, *self.logits.shape))


class MultiOneHotCategorical(torch.distributions.Distribution):
    """Independent categoricals, one per component of a multi-discrete action.

    ``logits`` ``[..., sum(nvec)]`` hold component ``i``'s ``nvec[i]`` logits one
    component after the other (each normalised here, as ``torch.distributions.Categorical``
    does). Values are the components' one-hot vectors concatenated, ``[..., sum(nvec)]``.
    :meth:`log_prob` and :meth:`entropy` are sums over the components (the product
    distribution's), :attr:`mode` takes each component's most likely action (the first
    on a tie), and :meth:`sample` draws each component by the Gumbel-max trick
    (:func:`~torchdreamer.modules.sample_one_hot`). Nothing is reparameterised: the
    actor learns by REINFORCE, as with one categorical.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import MultiOneHotCategorical
        >>> logits = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0])  # 3 actions, then 2
        >>> dist = MultiOneHotCategorical(logits=logits, nvec=(3, 2))
        >>> dist.mode  # the likeliest of each (the first of a tie)
        tensor([0., 0., 1., 1., 0.])
        >>> action = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])  # action 1 of 3, action 1 of 2
        >>> round(dist.log_prob(action).item(), 4)  # log softmax(0, 1, 2)[1] + log(1 / 2)
        -2.1008
        >>> _ = torch.manual_seed(0)
        >>> dist.sample((3,)).shape
        torch.Size([3, 5])
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        logits: torch.Tensor,
        nvec: Sequence[int],
        validate_args: bool | None = None,
    ) -> None:
        self.nvec = _sizes(nvec)
        if logits.shape[-1] != sum(self.nvec):
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} for components of sizes {self.nvec}: "
                f"the last dimension must be their sum, {sum(self.nvec)}."
            )
        parts = logits.split(self.nvec, dim=-1)
        self.logits = torch.cat([part.log_softmax(-1) for part in parts], dim=-1)
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    def _parts(self, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return values.split(self.nvec, dim=-1)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        shape = (*sample_shape, *self.logits.shape)
        parts = self._parts(self.logits.expand(shape))
        return torch.cat([sample_one_hot(part) for part in parts], dim=-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over components of the log-probability of each one's chosen action."""
        chosen = value.to(torch.bool)
        logits = self.logits.expand(torch.broadcast_shapes(value.shape, self.logits.shape))
        return torch.where(chosen, logits, torch.zeros_like(logits)).sum(-1)

    def entropy(self) -> torch.Tensor:
        """The sum of the components' entropies."""
        logits = self.logits.clamp(min=torch.finfo(self.logits.dtype).min)
        return -(self.probs * logits).sum(-1)

    @property
    def mode(self) -> torch.Tensor:
        parts = []
        for part in self._parts(self.logits):
            index = part.argmax(-1, keepdim=True)
            classes = torch.arange(part.shape[-1], device=part.device)
            parts.append((index == classes).to(part.dtype))
        return torch.cat(parts, dim=-1)

    @property
    def deterministic_sample(self) -> torch.Tensor:
        return self.mode
