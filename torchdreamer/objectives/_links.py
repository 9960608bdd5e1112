"""Non-owning references between losses and the modules they use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Borrowed:
    """A module a loss uses but does not own.

    Holding it in this wrapper keeps ``nn.Module`` from registering it: its
    parameters are not listed by the loss, not saved in its ``state_dict`` and
    not moved by its ``.to()``. Its owner (another loss, the world model) does
    all of that.
    """

    module: Any


@contextmanager
def frozen(*modules: Any) -> Iterator[None]:
    """Stop parameter gradients of ``modules`` inside the block; inputs still get them.

    Each parameter's own ``requires_grad`` is restored on exit, so parameters
    the user froze stay frozen (TorchRL's ``hold_out_net`` sets them all back to
    ``True``). Objects that are not ``nn.Module`` are ignored.
    """
    params = [
        p
        for module in modules
        if isinstance(module, nn.Module)
        for p in module.parameters()
        if p.requires_grad
    ]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
