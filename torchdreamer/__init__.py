"""torchdreamer: DreamerV3's learning objectives for TorchRL and tensordict.

``torchdreamer.functional`` holds the math as pure tensor functions;
``torchdreamer.objectives`` the TorchRL loss modules built on it. Both are
imported when first used, so ``torchdreamer --help`` starts without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchdreamer import functional
    from torchdreamer.objectives import (
        DreamerV3ActorLoss,
        DreamerV3Loss,
        DreamerV3ModelLoss,
        DreamerV3ValueLoss,
        ReturnScale,
    )
    from torchdreamer.training.optim import DreamerV3Optimizer
    from torchdreamer.training.policy import load_agent
    from torchdreamer.training.when import DreamerV3UpdateRatio

__all__ = [
    "DreamerV3ActorLoss",
    "DreamerV3Loss",
    "DreamerV3ModelLoss",
    "DreamerV3Optimizer",
    "DreamerV3UpdateRatio",
    "DreamerV3ValueLoss",
    "ReturnScale",
    "functional",
    "load_agent",
]
__version__ = "0.1.0"

#: Where each public name lives; imported on first use.
_HOMES = {
    "DreamerV3ActorLoss": "torchdreamer.objectives",
    "DreamerV3Loss": "torchdreamer.objectives",
    "DreamerV3UpdateRatio": "torchdreamer.training.when",
    "DreamerV3ModelLoss": "torchdreamer.objectives",
    "DreamerV3Optimizer": "torchdreamer.training.optim",
    "DreamerV3ValueLoss": "torchdreamer.objectives",
    "ReturnScale": "torchdreamer.objectives",
    "load_agent": "torchdreamer.training.policy",
}


def __getattr__(name: str) -> Any:
    if name == "functional":
        value = importlib.import_module("torchdreamer.functional")
    elif name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
