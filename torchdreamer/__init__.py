"""torchdreamer: DreamerV3's learning objectives for TorchRL and tensordict.

``torchdreamer.functional`` holds the math as pure tensor functions;
``torchdreamer.objectives`` the TorchRL loss modules built on it.
"""

from torchdreamer import functional
from torchdreamer.objectives import (
    DreamerV3ActorLoss,
    DreamerV3Loss,
    DreamerV3ModelLoss,
    DreamerV3ValueLoss,
    ReturnScale,
)
from torchdreamer.training.optim import DreamerV3Optimizer

__all__ = [
    "DreamerV3ActorLoss",
    "DreamerV3Loss",
    "DreamerV3ModelLoss",
    "DreamerV3Optimizer",
    "DreamerV3ValueLoss",
    "ReturnScale",
    "functional",
]
__version__ = "0.1.0"
