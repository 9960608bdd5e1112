"""DreamerV3's recipe: one update's loss as plain functions over tensors and heads.

:func:`loss` reads top to bottom like the official ``Agent.loss``: the world model on
the replayed sequence, the actor and critic on imagined trajectories, the critic on the
replayed sequence. Its parts (:mod:`torchdreamer.dreamer.parts`) own their math, and
the TorchRL-compatible losses (:mod:`torchdreamer.objectives`) compute through them.
Layering: ``functional`` -> ``modules`` -> ``dreamer`` -> ``objectives`` / ``training``.
"""

from torchdreamer.dreamer.loss import Networks, Settings, loss
from torchdreamer.dreamer.parts import imagine, imagine_step, policy
from torchdreamer.dreamer.return_scale import ReturnScale

__all__ = ["Networks", "ReturnScale", "Settings", "imagine", "imagine_step", "loss", "policy"]
