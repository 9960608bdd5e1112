"""Non-owning references between losses and the modules they use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchdreamer.dreamer.parts import frozen

__all__ = ["Borrowed", "frozen"]


@dataclass(frozen=True)
class Borrowed:
    """A module a loss uses but does not own.

    Holding it in this wrapper keeps ``nn.Module`` from registering it: its
    parameters are not listed by the loss, not saved in its ``state_dict`` and
    not moved by its ``.to()``. Its owner (another loss, the world model) does
    all of that.
    """

    module: Any
