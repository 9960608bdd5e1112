"""Prediction heads of the DreamerV3 agent."""

from __future__ import annotations

import torch
from torch import nn

from torchdreamer.functional import two_hot_bins, two_hot_decode, unimix_logits
from torchdreamer.modules.layers import MLP

__all__ = ["CategoricalActorHead", "ContinuationHead", "TwoHotHead"]


def _joined(features: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return features[0] if len(features) == 1 else torch.cat(features, dim=-1)


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
        self.register_buffer("bins", two_hot_bins(num_bins))

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.mlp(_joined(features))
        return logits, two_hot_decode(logits, self.bins).unsqueeze(-1)


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
        logit = self.mlp(_joined(features))
        return logit, torch.sigmoid(logit)


class CategoricalActorHead(nn.Module):
    """Logits of a discrete policy with DreamerV3's uniform mixing.

    Returns normalised log-probabilities ``[..., num_actions]`` of
    ``(1 - unimix) softmax + unimix / num_actions``, for a one-hot categorical
    (e.g. ``torchrl.modules.OneHotCategorical``).

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
        layers: int = 2,
        unimix: float = 0.01,
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_features, num_actions, hidden, layers)
        self.unimix = unimix

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return unimix_logits(self.mlp(_joined(features)), self.unimix)
