"""Kernels per update, counted with the torch profiler: on a CPU the closest proxy for the
launches the same code makes on a GPU.

A call counts when it computes: a leaf ``aten::`` call (no ``aten::`` call inside it) that
is not a view or a metadata read, or a kernel inductor generated (``cpp_fused_...``, named
in the profile when inductor's ``cpp.enable_kernel_profile`` is on).

Nothing here needs more than torch: the GPU script imports it on a machine that may have
only the package installed (no test extras; TorchRL's test helpers import pytest).
"""

from __future__ import annotations

from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile

__all__ = ["VIEW_OPS", "count_operators", "is_kernel", "operators"]

#: Ops that only make views or read metadata: no kernel of their own on a GPU.
VIEW_OPS = frozenset(
    "aten::" + name
    for name in (
        "view as_strided select slice unsqueeze squeeze transpose t narrow expand permute "
        "detach alias unbind split split_with_sizes chunk reshape _reshape_alias flatten "
        "unflatten _unsafe_view view_as expand_as movedim lift_fresh empty empty_like "
        "empty_strided result_type is_nonzero item _local_scalar_dense to contiguous "
        "squeeze_ unsqueeze_ as_strided_ detach_ resolve_conj resolve_neg"
    ).split()
)


def is_kernel(event) -> bool:
    """Whether a profiler event is a kernel: a leaf ATen call that computes, or inductor's."""
    if "cpp_fused" in event.name:  # e.g. graph_1_cpp_fused_add_mean_mul_pow_rsqrt_silu_1
        return True
    if not event.name.startswith("aten::") or event.name in VIEW_OPS:
        return False
    return not any(child.name.startswith("aten::") for child in event.cpu_children)


def _events(step: Callable[[], object]) -> list:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return list(prof.events())


def operators(step: Callable[[], object]) -> int:
    """Kernels of one ``step()``."""
    return sum(is_kernel(event) for event in _events(step))


def count_operators(step: Callable[[], object]) -> tuple[int, int]:
    """(every ``aten::`` call, nested ones included; kernels) of one ``step()``, after one
    unrecorded call."""
    step()
    events = _events(step)
    return sum(event.name.startswith("aten::") for event in events), sum(map(is_kernel, events))
