"""DreamerV3's networks, as the official implementation builds them.

MLP blocks, a block-diagonal GRU RSSM, the official CNN encoder and decoder, the
prediction heads and the world model, sized by one :class:`ModelSize`.
Initialisation follows DreamerV3 (truncated-normal fan-in weights, RMSNorm and SiLU,
zero-initialised reward and critic outputs, policy outputs at 1% scale, 1% unimix on
the latents).
"""

from torchdreamer.modules.conv import ConvDecoder, ConvEncoder
from torchdreamer.modules.heads import (
    BoundedNormalActorHead,
    CategoricalActorHead,
    ContinuationHead,
    OneHotCategorical,
    TwoHotHead,
)
from torchdreamer.modules.imagination import ImaginationEnv
from torchdreamer.modules.layers import MLP, BlockLinear, dreamer_init_, sample_one_hot
from torchdreamer.modules.rssm import RSSM, BlockGRU
from torchdreamer.modules.size import ModelSize
from torchdreamer.modules.world_model import WORLD_MODEL_OUTPUTS, WorldModel

__all__ = [
    "MLP",
    "RSSM",
    "WORLD_MODEL_OUTPUTS",
    "BlockGRU",
    "BlockLinear",
    "BoundedNormalActorHead",
    "CategoricalActorHead",
    "ContinuationHead",
    "ConvDecoder",
    "ConvEncoder",
    "ImaginationEnv",
    "ModelSize",
    "OneHotCategorical",
    "TwoHotHead",
    "WorldModel",
    "dreamer_init_",
    "sample_one_hot",
]
