"""The sizes and depths of every DreamerV3 network, in one record."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelSize"]


@dataclass(frozen=True)
class ModelSize:
    """Widths and depths of the world model, actor and critic.

    The defaults are the official ``size1m``; the depths are the official ones at every
    size (``dreamerv3/configs.yaml``: ``imglayers`` 2, ``obslayers`` 1, ``dynlayers`` 1,
    8 GRU blocks, 3-layer encoder, decoder, actor and critic, 1-layer reward and
    continuation heads, CNN channels ``cnn_depth * (2, 3, 4, 4)`` with 5 x 5 kernels).

    Examples:
        >>> from torchdreamer.modules import ModelSize
        >>> size = ModelSize(deter=2048, hidden=256, classes=16, units=256, cnn_depth=16)
        >>> size.stoch_size, size.cnn_channels
        (512, (32, 48, 64, 64))
        >>> ModelSize(deter=100)
        Traceback (most recent call last):
        ...
        ValueError: deter (100) must be a multiple of blocks (8).

    """

    deter: int = 512
    """Deterministic (GRU) state size; split into ``blocks`` blocks."""
    hidden: int = 64
    """Width of the RSSM's input embeddings, prior and posterior layers."""
    categoricals: int = 32
    """Categorical latents (official ``stoch``)."""
    classes: int = 4
    """Classes per categorical latent."""
    units: int = 64
    """Width of the encoder, decoder, reward, continuation, actor and critic MLPs."""
    cnn_depth: int = 4
    """CNN channel multiplier (official ``depth``), for image observations."""
    blocks: int = 8
    """Blocks of the block-diagonal GRU."""
    dyn_layers: int = 1
    """Block-diagonal hidden layers of the GRU core before its gates."""
    img_layers: int = 2
    """Hidden layers of the prior."""
    obs_layers: int = 1
    """Hidden layers of the posterior."""
    encoder_layers: int = 3
    """Hidden layers of the vector encoder."""
    decoder_layers: int = 3
    """Hidden layers of the vector decoder."""
    reward_layers: int = 1
    """Hidden layers of the reward head."""
    continuation_layers: int = 1
    """Hidden layers of the continuation head."""
    actor_layers: int = 3
    """Hidden layers of the actor."""
    critic_layers: int = 3
    """Hidden layers of the critic."""
    cnn_mults: tuple[int, ...] = (2, 3, 4, 4)
    """Channels of the CNN stages, as multiples of ``cnn_depth``; each stage halves the image."""
    kernel: int = 5
    """CNN kernel size."""
    decoder_blocks: int = 8
    """Blocks of the image decoder's linear map from ``deter`` (official ``bspace``)."""

    def __post_init__(self) -> None:
        if self.dyn_layers < 1:
            raise ValueError(f"dyn_layers must be >= 1, got {self.dyn_layers}.")
        if self.deter % self.blocks:
            raise ValueError(f"deter ({self.deter}) must be a multiple of blocks ({self.blocks}).")
        if not self.cnn_mults:
            raise ValueError("cnn_mults needs at least one stage.")
        top = self.cnn_depth * self.cnn_mults[-1]
        if top % self.decoder_blocks or self.deter % self.decoder_blocks:
            raise ValueError(
                f"the last CNN stage's channels ({top}) and deter ({self.deter}) must be "
                f"multiples of decoder_blocks ({self.decoder_blocks})."
            )

    @property
    def stoch_size(self) -> int:
        """Size of the flat stochastic state, ``categoricals * classes``."""
        return self.categoricals * self.classes

    @property
    def cnn_channels(self) -> tuple[int, ...]:
        """Channels of each CNN stage."""
        return tuple(self.cnn_depth * mult for mult in self.cnn_mults)
