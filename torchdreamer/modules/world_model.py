"""The DreamerV3 world model: encoder, RSSM, decoder, reward and continuation heads."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from torchdreamer import keys
from torchdreamer.functional import symlog
from torchdreamer.modules.conv import ConvDecoder, ConvEncoder
from torchdreamer.modules.heads import ContinuationHead, TwoHotHead
from torchdreamer.modules.layers import MLP
from torchdreamer.modules.rssm import RSSM
from torchdreamer.modules.size import ModelSize

__all__ = ["WORLD_MODEL_OUTPUTS", "MultiDecoder", "MultiEncoder", "WorldModel"]

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


def _split_keys(shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
    """The vector keys and the image keys of ``shapes``, each sorted; others refused."""
    vectors = sorted(k for k, shape in shapes.items() if len(shape) == 1)
    images = sorted(k for k, shape in shapes.items() if len(shape) == 3)
    other = {k: shape for k, shape in shapes.items() if len(shape) not in (1, 3)}
    if other or not shapes:
        raise ValueError(
            f"dict observations must be vectors (D,) or channel-last images (H, W, C), got "
            f"{other or 'no keys'}."
        )
    sides = {tuple(shapes[k][:2]) for k in images}
    if len(sides) > 1:
        raise ValueError(
            f"the image keys of a dict observation are stacked along their channels for one "
            f"CNN, so they must share height and width; got { ({k: shapes[k] for k in images}) }."
        )
    return vectors, images


class MultiEncoder(nn.Module):
    """Dict observations to one embedding, as the official multi-key encoder.

    The vector keys (sorted) are symlog'ed, concatenated and read by one MLP
    (``size.encoder_layers`` x ``size.units``); the image keys are stacked along their
    channels and read by one :class:`ConvEncoder`; the two embeddings are concatenated.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchdreamer.modules import ModelSize, MultiEncoder
        >>> encoder = MultiEncoder({"joints": (5,), "image": (32, 32, 3)}, ModelSize())
        >>> observation = TensorDict(
        ...     joints=torch.randn(2, 5),
        ...     image=torch.zeros(2, 32, 32, 3, dtype=torch.uint8),
        ...     batch_size=[2],
        ... )
        >>> encoder(observation).shape, encoder.out_features  # MLP 64 + CNN 16 x 2 x 2
        (torch.Size([2, 128]), 128)
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], size: ModelSize) -> None:
        super().__init__()
        self.vector_keys, self.image_keys = _split_keys(shapes)
        self.out_features = 0
        if self.vector_keys:
            width = sum(shapes[k][0] for k in self.vector_keys)
            self.mlp = MLP(width, None, size.units, size.encoder_layers)
            self.out_features += self.mlp.out_features
        if self.image_keys:
            height, width_, _ = shapes[self.image_keys[0]]
            channels = sum(shapes[k][2] for k in self.image_keys)
            self.cnn = ConvEncoder((height, width_, channels), size)
            self.out_features += self.cnn.out_features

    def forward(self, observation: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.vector_keys:
            vector = torch.cat([observation[k].float() for k in self.vector_keys], -1)
            parts.append(self.mlp(symlog(vector)))
        if self.image_keys:
            parts.append(self.cnn(torch.cat([observation[k] for k in self.image_keys], -1)))
        return torch.cat(parts, -1)


class MultiDecoder(nn.Module):
    """The latent state to a reconstruction of each key of a dict observation.

    One MLP (``size.decoder_layers``) predicts the vector keys together, in symlog
    space, and one :class:`ConvDecoder` the image keys stacked along their channels,
    in ``[0, 1]``; the outputs are split back into the keys.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import ModelSize, MultiDecoder
        >>> decoder = MultiDecoder({"joints": (5,), "image": (32, 32, 3)}, 10, 16,
        ...                        ModelSize(deter=16))
        >>> out = decoder(torch.randn(2, 10), torch.randn(2, 16))
        >>> out["joints"].shape, out["image"].shape
        (torch.Size([2, 5]), torch.Size([2, 32, 32, 3]))
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        stoch_size: int,
        deter_size: int,
        size: ModelSize,
    ) -> None:
        super().__init__()
        self.vector_keys, self.image_keys = _split_keys(shapes)
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        if self.vector_keys:
            width = sum(shapes[k][0] for k in self.vector_keys)
            self.mlp = MLP(stoch_size + deter_size, width, size.units, size.decoder_layers)
        if self.image_keys:
            height, width_, _ = shapes[self.image_keys[0]]
            channels = sum(shapes[k][2] for k in self.image_keys)
            self.cnn = ConvDecoder((height, width_, channels), stoch_size, deter_size, size)

    def forward(self, stoch: torch.Tensor, deter: torch.Tensor) -> TensorDict:
        batch = stoch.shape[:-1]
        out = {}
        if self.vector_keys:
            vector = self.mlp(stoch, deter)
            sizes = [self.shapes[k][0] for k in self.vector_keys]
            out.update(zip(self.vector_keys, vector.split(sizes, -1), strict=True))
        if self.image_keys:
            image = self.cnn(stoch, deter)
            sizes = [self.shapes[k][2] for k in self.image_keys]
            out.update(zip(self.image_keys, image.split(sizes, -1), strict=True))
        return TensorDict(out, batch_size=batch)


class WorldModel(nn.Module):
    """Encoder, :class:`RSSM`, decoder and the reward and continuation heads.

    Vector observations are symlog'ed and encoded by an MLP
    (``size.encoder_layers`` x ``size.units``), and the decoder MLP
    (``size.decoder_layers``) predicts them in symlog space; channel-last ``uint8``
    images use :class:`ConvEncoder`/:class:`ConvDecoder`. The reward
    (``size.reward_layers``, zero-initialised output) and continuation
    (``size.continuation_layers``) heads read ``cat([stoch, deter])``.

    A dict of such shapes (a dict observation, e.g. DMC's readings and its camera)
    uses :class:`MultiEncoder` and :class:`MultiDecoder`; observations and
    reconstructions are then tensordicts of those keys.

    Args:
        observation_shape: ``(D,)`` for vectors, ``(H, W, C)`` for images, or a dict
            of them by key.
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
        observation_shape: tuple[int, ...] | Mapping[str, tuple[int, ...]],
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
        self.is_dict = isinstance(observation_shape, Mapping)
        if self.is_dict:
            self.observation_shape: tuple | dict = {
                k: tuple(v) for k, v in observation_shape.items()
            }
        else:
            self.observation_shape = tuple(observation_shape)
        self.is_image = not self.is_dict and len(self.observation_shape) == 3
        if self.is_dict:
            self.encoder = MultiEncoder(self.observation_shape, size)
            embed = self.encoder.out_features
        elif self.is_image:
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
        if self.is_dict:
            self.decoder: nn.Module = MultiDecoder(
                self.observation_shape, self.rssm.stoch_size, self.rssm.deter_size, size
            )
        elif self.is_image:
            self.decoder = ConvDecoder(
                self.observation_shape, self.rssm.stoch_size, self.rssm.deter_size, size
            )
        else:
            self.decoder = MLP(feat, self.observation_shape[0], size.units, size.decoder_layers)
        self.reward = TwoHotHead(feat, size.units, size.reward_layers, num_bins)
        self.continuation = ContinuationHead(feat, size.units, size.continuation_layers)

    def embed(self, observation: torch.Tensor | TensorDictBase) -> torch.Tensor:
        """Encode observations (vectors are symlog'ed first)."""
        if self.is_dict or self.is_image:
            return self.encoder(observation)
        return self.encoder(symlog(observation.float()))

    def decode(self, stoch: torch.Tensor, deter: torch.Tensor) -> torch.Tensor | TensorDict:
        """The reconstruction of the observation from the latent state."""
        return self.decoder(stoch, deter)

    def forward(
        self,
        observation: torch.Tensor | TensorDictBase,
        prev_action: torch.Tensor,
        is_first: torch.Tensor,
        prev_stoch: torch.Tensor | None = None,
        prev_deter: torch.Tensor | None = None,
        *,
        obs_steps: Callable[..., tuple[torch.Tensor, ...]] | None = None,
    ) -> tuple[torch.Tensor | TensorDict, ...]:
        """Filter a ``[B, T]`` replay sequence; returns :data:`WORLD_MODEL_OUTPUTS`.

        ``prev_stoch`` and ``prev_deter`` (``[B, T, ...]``, together or not at all): the
        latent state before each step; the filter starts from the first step's
        (``[:, 0]``), the zero state if they are not given. A replay window whose
        first step's latent was stored while acting passes it here, shifted one step.
        ``obs_steps``: what filters each chunk of steps (see :meth:`RSSM.observe`).

        Examples:
            >>> import torch
            >>> from torchdreamer.modules import ModelSize, WorldModel
            >>> size = ModelSize(deter=16, hidden=16, categoricals=4, classes=4, units=16)
            >>> model = WorldModel((4,), 2, size)
            >>> obs, act = torch.randn(3, 5, 4), torch.zeros(3, 5, 2)
            >>> first = torch.zeros(3, 5, dtype=torch.bool)
            >>> stoch, deter = torch.zeros(3, 5, 16), torch.randn(3, 5, 16)
            >>> model(obs, act, first, stoch, deter)[6].shape  # the posterior deter
            torch.Size([3, 5, 16])
        """
        if is_first.dim() == prev_action.dim():  # [B, T, 1]
            is_first = is_first.squeeze(-1)
        if (prev_stoch is None) != (prev_deter is None):
            raise ValueError("pass both prev_stoch and prev_deter, or neither.")
        start = None
        if prev_stoch is not None:  # contiguous: the compiled filter sees one layout
            start = (prev_stoch[:, 0].contiguous(), prev_deter[:, 0].contiguous())
        out = self.rssm.observe(self.embed(observation), prev_action, is_first, start, obs_steps)
        reward_logits, _ = self.reward(out["stoch"], out["deter"])
        continuation_logit, _ = self.continuation(out["stoch"], out["deter"])
        return (
            out["posterior_logits"],
            out["prior_logits"],
            reward_logits,
            continuation_logit,
            self.decode(out["stoch"], out["deter"]),
            out["stoch"],
            out["deter"],
        )
