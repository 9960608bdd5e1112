"""Prediction heads of the DreamerV3 agent."""

from __future__ import annotations

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
    """Logits of a discrete policy with DreamerV3's uniform mixing.

    Returns normalised log-probabilities ``[..., num_actions]`` of
    ``(1 - unimix) softmax + unimix / num_actions``, for a one-hot categorical
    (e.g. ``torchrl.modules.OneHotCategorical``). The output layer starts at 1% of
    the usual scale (official policy ``outscale`` 0.01), so the first policy is close
    to uniform.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import CategoricalActorHead
        >>> logits = CategoricalActorHead(8, 3, hidden=16, layers=1)(torch.randn(4, 8))
        >>> bool((logits.exp() >= 0.01 / 3 - 1e-7).all())
        True
    """

    def __init__(
        self,
        in_features: int,
        num_actions: int,
        hidden: int = 512,
        layers: int = 3,
        unimix: float = 0.01,
        outscale: float = 0.01,
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_features, num_actions, hidden, layers, outscale=outscale)
        self.unimix = unimix

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return unimix_logits(self.mlp(*features), self.unimix)


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
