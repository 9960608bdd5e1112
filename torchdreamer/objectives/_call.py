"""Running a tensordict module inside a loss without touching the caller's data."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from tensordict.utils import NestedKey


def _is_plain(module: TensorDictModuleBase) -> bool:
    # Exactly TensorDictModule(nn_module, in_keys=[...], out_keys=[...]) with no
    # kwargs mapping, method, get_kwargs or hooks: its forward reduces to
    # "read in_keys, call the module, name the outputs".
    return (
        type(module) is TensorDictModule
        and module._kwargs is None
        and module.method is None
        and not module.method_kwargs
        and not module._get_kwargs
        and not module._forward_hooks
        and not module._forward_pre_hooks
    )


def call_module(
    module: TensorDictModuleBase, tensordict: TensorDictBase
) -> Mapping[NestedKey, torch.Tensor] | TensorDictBase:
    """Run ``module`` on the entries it reads and return its outputs by key.

    Read the result with ``.get(unravel_key(key), None)``: it is a plain dict
    keyed by the module's (unravelled) out_keys, or a tensordict.

    ``tensordict`` itself is never written to. For a plain ``TensorDictModule``
    the wrapped network is called directly, skipping tensordict's per-call
    dispatch (which converts every output with ``TensorDict.from_any``); any
    other module runs through its own forward on a shallow copy of its inputs.
    """
    if not _is_plain(module):
        return module(tensordict.select(*module.in_keys, strict=False).copy())
    # _modules["module"] is what `module.module` resolves to, minus a slow
    # __getattr__ chain; the network's own hooks still run through its __call__.
    outputs = module._modules["module"](*[tensordict.get(key) for key in module.in_keys])
    out_keys = module.out_keys
    if not isinstance(outputs, tuple):
        outputs = (outputs,)
    if len(outputs) != len(out_keys):
        raise RuntimeError(
            f"The module returned {len(outputs)} tensor(s) but its out_keys are {out_keys}."
        )
    return dict(zip(out_keys, outputs, strict=True))


def require_tensordict_module(module: object, role: str) -> None:
    """Raise a clear ``TypeError`` unless ``module`` reads and writes tensordict keys."""
    if not (hasattr(module, "in_keys") and hasattr(module, "out_keys") and callable(module)):
        raise TypeError(
            f"{role} must be a tensordict module with in_keys and out_keys, e.g. "
            f"TensorDictModule(net, in_keys=[...], out_keys=[...]); got "
            f"{type(module).__name__}."
        )
