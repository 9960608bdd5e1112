"""Training DreamerV3 agents: configuration, replay, the agent's update, the loop and CLI."""

from torchdreamer.training.agent import DreamerAgent
from torchdreamer.training.config import PRESETS, Config, ModelSize
from torchdreamer.training.replay import SequenceReplay

__all__ = ["PRESETS", "Config", "DreamerAgent", "ModelSize", "SequenceReplay"]
