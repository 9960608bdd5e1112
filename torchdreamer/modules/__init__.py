"""DreamerV3's networks: MLP blocks, prediction heads and the RSSM world model.

Initialisation and structure follow DreamerV3 (truncated-normal fan-in weights, RMSNorm
and SiLU, zero-initialised reward and critic outputs, 1% unimix on categoricals).
"""

from torchdreamer.modules.heads import CategoricalActorHead, ContinuationHead, TwoHotHead
from torchdreamer.modules.layers import MLP, dreamer_init_
from torchdreamer.modules.rssm import RSSM, ImaginationEnv, NormGRUCell

__all__ = [
    "MLP",
    "RSSM",
    "CategoricalActorHead",
    "ContinuationHead",
    "ImaginationEnv",
    "NormGRUCell",
    "TwoHotHead",
    "dreamer_init_",
]
