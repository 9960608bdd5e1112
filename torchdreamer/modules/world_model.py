"""The DreamerV3 world model: encoder, RSSM, decoder, reward and continuation heads."""

from __future__ import annotations

import torch
from torch import nn

from torchdreamer.functional import symlog
from torchdreamer.modules.conv import ConvDecoder, ConvEncoder
from torchdreamer.modules.heads import ContinuationHead, TwoHotHead
from torchdreamer.modules.layers import MLP
from torchdreamer.modules.rssm import RSSM

__all__ = ["WORLD_MODEL_OUTPUTS", "WorldModel"]

#: What :meth:`WorldModel.forward` returns, in order: the out_keys to give it in a
#: ``TensorDictModule`` read by :class:`~torchdreamer.DreamerV3ModelLoss`.
WORLD_MODEL_OUTPUTS = [
    "posterior_logits",
    "prior_logits",
    "reward_logits",
    "continuation_logits",
    ("reconstruction", "observation"),
    "state",
    "belief",
]


class WorldModel(nn.Module):
    """Encoder, :class:`RSSM`, decoder and the reward and continuation heads.

    Vector observations are symlog'ed and encoded by an MLP, and the decoder
    predicts them in symlog space; channel-last ``uint8`` images use
    :class:`ConvEncoder`/:class:`ConvDecoder`.

    Args:
        observation_shape: ``(D,)`` for vectors, ``(H, W, C)`` for images.
        action_dim: Size of the action vector (one-hot for discrete actions).
        deter: GRU state size.
        hidden: Hidden size of the RSSM layers.
        categoricals: Number of categorical latents.
        classes: Classes per categorical.
        units: Width of the encoder, decoder and head MLPs.
        layers: Depth of the encoder, decoder and head MLPs.
        cnn_depth: Channels of the first conv stage, for images.
        num_bins: Two-hot bins of the reward head.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import WorldModel
        >>> model = WorldModel((4,), 2, deter=16, hidden=16, categoricals=4, classes=4, units=16)
        >>> outputs = model(torch.randn(3, 5, 4), torch.zeros(3, 5, 2), torch.ones(3, 5).bool())
        >>> [tuple(x.shape) for x in outputs[:5]]
        [(3, 5, 4, 4), (3, 5, 4, 4), (3, 5, 255), (3, 5, 1), (3, 5, 4)]
    """

    def __init__(
        self,
        observation_shape: tuple[int, ...],
        action_dim: int,
        *,
        deter: int = 512,
        hidden: int = 512,
        categoricals: int = 32,
        classes: int = 32,
        units: int = 512,
        layers: int = 2,
        cnn_depth: int = 32,
        num_bins: int = 255,
    ) -> None:
        super().__init__()
        self.observation_shape = tuple(observation_shape)
        self.is_image = len(self.observation_shape) == 3
        if self.is_image:
            self.encoder: nn.Module = ConvEncoder(self.observation_shape, cnn_depth)
            embed = self.encoder.out_features
        elif len(self.observation_shape) == 1:
            self.encoder = MLP(self.observation_shape[0], None, units, layers)
            embed = units
        else:
            raise ValueError(
                f"observations must be vectors (D,) or channel-last images (H, W, C), got "
                f"shape {self.observation_shape}."
            )
        self.rssm = RSSM(action_dim, embed, deter, hidden, categoricals, classes)
        feat = self.rssm.feature_size
        if self.is_image:
            self.decoder: nn.Module = ConvDecoder(feat, self.observation_shape, cnn_depth)
        else:
            self.decoder = MLP(feat, self.observation_shape[0], units, layers)
        self.reward = TwoHotHead(feat, units, layers, num_bins)
        self.continuation = ContinuationHead(feat, units, layers)

    def embed(self, observation: torch.Tensor) -> torch.Tensor:
        """Encode observations (vectors are symlog'ed first)."""
        return self.encoder(observation if self.is_image else symlog(observation.float()))

    def forward(
        self, observation: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Filter a ``[B, T]`` replay sequence; returns :data:`WORLD_MODEL_OUTPUTS`."""
        if is_first.dim() == observation.dim() - len(self.observation_shape) + 1:
            is_first = is_first.squeeze(-1)
        out = self.rssm.observe(self.embed(observation), prev_action, is_first)
        features = torch.cat([out["stoch"], out["deter"]], -1)
        reward_logits, _ = self.reward(features)
        continuation_logit, _ = self.continuation(features)
        return (
            out["posterior_logits"],
            out["prior_logits"],
            reward_logits,
            continuation_logit,
            self.decoder(features),
            out["stoch"],
            out["deter"],
        )
