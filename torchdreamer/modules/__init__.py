"""DreamerV3's networks, as the official implementation builds them.

MLP blocks, a block-diagonal GRU RSSM, the official CNN encoder and decoder, the
prediction heads and the world model, sized by one :class:`ModelSize`.
Initialisation follows DreamerV3 (truncated-normal fan-in weights, RMSNorm and SiLU,
zero-initialised reward and critic outputs, policy outputs at 1% scale, 1% unimix on
the latents and none on the policy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchdreamer.modules.conv import ConvDecoder, ConvEncoder
    from torchdreamer.modules.heads import (
        BoundedNormalActorHead,
        CategoricalActorHead,
        ContinuationHead,
        MultiCategoricalActorHead,
        MultiOneHotCategorical,
        OneHotCategorical,
        TwoHotHead,
    )
    from torchdreamer.modules.imagination import ImaginationEnv
    from torchdreamer.modules.layers import (
        MLP,
        BlockLinear,
        RMSNorm,
        dreamer_init_,
        sample_one_hot,
    )
    from torchdreamer.modules.rssm import RSSM, BlockGRU
    from torchdreamer.modules.size import ModelSize
    from torchdreamer.modules.world_model import (
        WORLD_MODEL_OUTPUTS,
        MultiDecoder,
        MultiEncoder,
        WorldModel,
    )

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
    "MultiCategoricalActorHead",
    "MultiDecoder",
    "MultiEncoder",
    "MultiOneHotCategorical",
    "OneHotCategorical",
    "RMSNorm",
    "TwoHotHead",
    "WorldModel",
    "dreamer_init_",
    "sample_one_hot",
]

#: Where each public name lives; imported on first use, so that the configuration
#: (``ModelSize``) can be read without importing torch.
_HOMES = {
    "BlockGRU": "torchdreamer.modules.rssm",
    "BlockLinear": "torchdreamer.modules.layers",
    "BoundedNormalActorHead": "torchdreamer.modules.heads",
    "CategoricalActorHead": "torchdreamer.modules.heads",
    "ContinuationHead": "torchdreamer.modules.heads",
    "ConvDecoder": "torchdreamer.modules.conv",
    "ConvEncoder": "torchdreamer.modules.conv",
    "ImaginationEnv": "torchdreamer.modules.imagination",
    "MLP": "torchdreamer.modules.layers",
    "ModelSize": "torchdreamer.modules.size",
    "MultiCategoricalActorHead": "torchdreamer.modules.heads",
    "MultiDecoder": "torchdreamer.modules.world_model",
    "MultiEncoder": "torchdreamer.modules.world_model",
    "MultiOneHotCategorical": "torchdreamer.modules.heads",
    "OneHotCategorical": "torchdreamer.modules.heads",
    "RMSNorm": "torchdreamer.modules.layers",
    "RSSM": "torchdreamer.modules.rssm",
    "TwoHotHead": "torchdreamer.modules.heads",
    "WORLD_MODEL_OUTPUTS": "torchdreamer.modules.world_model",
    "WorldModel": "torchdreamer.modules.world_model",
    "dreamer_init_": "torchdreamer.modules.layers",
    "sample_one_hot": "torchdreamer.modules.layers",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
