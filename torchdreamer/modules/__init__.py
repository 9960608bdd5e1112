"""DreamerV3's networks: MLP blocks, prediction heads and the RSSM world model.

Initialisation and structure follow DreamerV3 (truncated-normal fan-in weights, RMSNorm
and SiLU, zero-initialised reward and critic outputs, 1% unimix on categoricals).
"""

from torchdreamer.modules.conv import ConvDecoder, ConvEncoder
from torchdreamer.modules.heads import (
    BoundedNormalActorHead,
    CategoricalActorHead,
    ContinuationHead,
    OneHotCategorical,
    TwoHotHead,
)
from torchdreamer.modules.layers import MLP, dreamer_init_
from torchdreamer.modules.rssm import RSSM, ImaginationEnv, NormGRUCell
from torchdreamer.modules.world_model import WORLD_MODEL_OUTPUTS, WorldModel

__all__ = [
    "MLP",
    "RSSM",
    "WORLD_MODEL_OUTPUTS",
    "BoundedNormalActorHead",
    "CategoricalActorHead",
    "ContinuationHead",
    "ConvDecoder",
    "ConvEncoder",
    "ImaginationEnv",
    "NormGRUCell",
    "OneHotCategorical",
    "TwoHotHead",
    "WorldModel",
    "dreamer_init_",
]
