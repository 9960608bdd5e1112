"""Loss modules: they wire tensordict keys and networks around ``torchdreamer.functional``.

TorchRL 0.14.1's DreamerV3 losses, defaults included; ``official`` holds the official
DreamerV3 configuration that each loss's ``official(...)`` classmethod applies.
"""

from torchdreamer.objectives import official
from torchdreamer.objectives.actor import DreamerV3ActorLoss
from torchdreamer.objectives.dreamer import DreamerV3Loss
from torchdreamer.objectives.model import DreamerV3ModelLoss
from torchdreamer.objectives.return_scale import ReturnScale
from torchdreamer.objectives.value import DreamerV3ValueLoss

__all__ = [
    "DreamerV3ActorLoss",
    "DreamerV3Loss",
    "DreamerV3ModelLoss",
    "DreamerV3ValueLoss",
    "ReturnScale",
    "official",
]
