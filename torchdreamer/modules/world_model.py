"""The DreamerV3 world model: encoder, RSSM, decoder, reward and continuation heads."""

from __future__ import annotations

import torch
from torch import nn

from torchdreamer import keys
from torchdreamer.functional import symlog
from torchdreamer.modules.conv import ConvDecoder, ConvEncoder
from torchdreamer.modules.heads import ContinuationHead, TwoHotHead
from torchdreamer.modules.layers import MLP
from torchdreamer.modules.rssm import RSSM
from torchdreamer.modules.size import ModelSize

__all__ = ["WORLD_MODEL_OUTPUTS", "WorldModel"]

#: What :meth:`WorldModel.forward` returns, in order: the out_keys to give it in a
#: ``TensorDictModule`` read by :class:`~torchdreamer.DreamerV3ModelLoss`.
WORLD_MODEL_OUTPUTS = [
    keys.POSTERIOR_LOGITS,
    keys.PRIOR_LOGITS,
    keys.REWARD_LOGITS,
    keys.CONTINUATION_LOGITS,
    (keys.RECONSTRUCTION, keys.OBSERVATION),
    keys.STATE,
    keys.BELIEF,
]


class WorldModel(nn.Module):
    """Encoder, :class:`RSSM`, decoder and the reward and continuation heads.

    Vector observations are symlog'ed and encoded by an MLP
    (``size.encoder_layers`` x ``size.units``), and the decoder MLP
    (``size.decoder_layers``) predicts them in symlog space; channel-last ``uint8``
    images use :class:`ConvEncoder`/:class:`ConvDecoder`. The reward
    (``size.reward_layers``, zero-initialised output) and continuation
    (``size.continuation_layers``) heads read ``cat([stoch, deter])``.

    Args:
        observation_shape: ``(D,)`` for vectors, ``(H, W, C)`` for images.
        action_dim: Size of the action vector (one-hot for discrete actions).
        size: Every width and depth (:class:`~torchdreamer.modules.ModelSize`;
            default: the official ``size1m``).
        num_bins: Two-hot bins of the reward head.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import ModelSize, WorldModel
        >>> size = ModelSize(deter=16, hidden=16, categoricals=4, classes=4, units=16)
        >>> model = WorldModel((4,), 2, size)
        >>> outputs = model(torch.randn(3, 5, 4), torch.zeros(3, 5, 2), torch.ones(3, 5).bool())
        >>> [tuple(x.shape) for x in outputs[:5]]
        [(3, 5, 4, 4), (3, 5, 4, 4), (3, 5, 255), (3, 5, 1), (3, 5, 4)]

    """

    def __init__(
        self,
        observation_shape: tuple[int, ...],
        action_dim: int,
        size: ModelSize | None = None,
        *,
        num_bins: int = 255,
    ) -> None:
        super().__init__()
        size = ModelSize() if size is None else size
        if not isinstance(size, ModelSize):
            raise TypeError(f"size must be a ModelSize, got {type(size).__name__}.")
        self.size = size
        self.observation_shape = tuple(observation_shape)
        self.is_image = len(self.observation_shape) == 3
        if self.is_image:
            self.encoder: nn.Module = ConvEncoder(self.observation_shape, size)
            embed = self.encoder.out_features
        elif len(self.observation_shape) == 1:
            self.encoder = MLP(self.observation_shape[0], None, size.units, size.encoder_layers)
            embed = self.encoder.out_features
        else:
            raise ValueError(
                f"observations must be vectors (D,) or channel-last images (H, W, C), got "
                f"shape {self.observation_shape}."
            )
        self.rssm = RSSM(action_dim, embed, size)
        feat = self.rssm.feature_size
        if self.is_image:
            self.decoder: nn.Module = ConvDecoder(
                self.observation_shape, self.rssm.stoch_size, self.rssm.deter_size, size
            )
        else:
            self.decoder = MLP(feat, self.observation_shape[0], size.units, size.decoder_layers)
        self.reward = TwoHotHead(feat, size.units, size.reward_layers, num_bins)
        self.continuation = ContinuationHead(feat, size.units, size.continuation_layers)

    def embed(self, observation: torch.Tensor) -> torch.Tensor:
        """Encode observations (vectors are symlog'ed first)."""
        return self.encoder(observation if self.is_image else symlog(observation.float()))

    def decode(self, stoch: torch.Tensor, deter: torch.Tensor) -> torch.Tensor:
        """The reconstruction of the observation from the latent state."""
        if self.is_image:
            return self.decoder(stoch, deter)
        return self.decoder(torch.cat([stoch, deter], -1))

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
            self.decode(out["stoch"], out["deter"]),
            out["stoch"],
            out["deter"],
        )
