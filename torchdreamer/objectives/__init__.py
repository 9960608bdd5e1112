"""Loss modules: they wire tensordict keys and networks around ``torchdreamer.functional``."""

from torchdreamer.objectives.value import DreamerV3ValueLoss

__all__ = ["DreamerV3ValueLoss"]
