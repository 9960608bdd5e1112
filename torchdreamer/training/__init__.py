"""Training DreamerV3 agents: configuration, replay, the agent's update, the loop and CLI.

The configuration is imported at once (the CLI builds its options from it
without torch); the rest when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from torchdreamer.training.config import PRESETS, Config, ModelSize

if TYPE_CHECKING:
    from torchdreamer.training.agent import DreamerAgent
    from torchdreamer.training.evaluation import evaluate
    from torchdreamer.training.loop import train
    from torchdreamer.training.policy import Policy, load_agent
    from torchdreamer.training.replay import SequenceReplay

__all__ = [
    "PRESETS",
    "Config",
    "DreamerAgent",
    "ModelSize",
    "Policy",
    "SequenceReplay",
    "evaluate",
    "load_agent",
    "train",
]

_LAZY = {
    "DreamerAgent": "torchdreamer.training.agent",
    "Policy": "torchdreamer.training.policy",
    "load_agent": "torchdreamer.training.policy",
    "SequenceReplay": "torchdreamer.training.replay",
    "evaluate": "torchdreamer.training.evaluation",
    "train": "torchdreamer.training.loop",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
