"""Data-parallel training over ``torch.distributed`` processes, as ``torchrun`` starts them.

Each rank runs its own environments and replay buffer and computes the losses
on its own batch; :class:`~torch.nn.parallel.DistributedDataParallel` averages
the gradients, so every rank takes the same optimiser step and all state that
follows from it (parameters, slow critic, optimiser moments) stays identical.
The return-normalisation percentiles are pooled over ranks by
:class:`~torchdreamer.objectives.ReturnScale` itself. Rank 0 alone writes logs
and checkpoints; what it needs from the other ranks (their replay buffers,
random generators, finished episodes) is gathered to it.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is the
identity of a single process, and nothing is initialised.

Examples:
    What the training loop does, here in a single process:

    >>> import torch
    >>> from torchdreamer.training import Config, DreamerAgent, distributed
    >>> ranks = distributed.init_from_env()  # under torchrun: joins the job
    >>> ranks
    Ranks(rank=0, world_size=1, local_rank=0)
    >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config(imagination_horizon=3))
    >>> parallel = distributed.wrap(agent, ranks)  # DistributedDataParallel under torchrun
    >>> parallel is agent
    True
    >>> distributed.run_on_main(lambda: "rank 0 reads the run directory")
    'rank 0 reads the run directory'
    >>> distributed.check_in_sync(agent)  # raises if the replicas drifted apart
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "Ranks",
    "all_gather_objects",
    "any_rank",
    "broadcast_object",
    "check_in_sync",
    "concat_over_ranks",
    "current",
    "device_for",
    "gather_objects",
    "init_from_env",
    "mean_over_ranks",
    "run_on_main",
    "scatter_objects",
    "shutdown",
    "wrap",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current() -> Ranks:
    """This process's ranks (a single process when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Ranks(dist.get_rank(), dist.get_world_size(), local)


def init_from_env() -> Ranks:
    """Join the process group that ``torchrun`` describes in the environment.

    Does nothing in a single process (``WORLD_SIZE`` unset or 1). Otherwise
    initialises ``gloo`` for CPU tensors and, when CUDA is available, ``nccl``
    for CUDA tensors (each rank then uses GPU ``LOCAL_RANK``).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return current()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    return current()


def shutdown() -> None:
    """Leave the process group, if one was joined.

    Wrappers still holding the group (a DistributedDataParallel left in a
    reference cycle) are collected first: destroyed after the group, gloo's
    can block the process forever at exit.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def device_for(name: str, ranks: Ranks) -> torch.device:
    """The device of this rank: ``cuda`` means GPU ``LOCAL_RANK`` under torchrun.

    Raises ``ValueError`` for a device this machine does not have.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r}: CUDA is not available here (torch {torch.__version__}, "
            f"{torch.cuda.device_count()} GPUs); use --device cpu."
        )
    if device.type == "cuda" and device.index is None and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return device


def wrap(module: nn.Module, ranks: Ranks) -> nn.Module:
    """``module`` itself in one process; wrapped in DistributedDataParallel otherwise.

    Buffers are not broadcast from rank 0 before each forward: they must stay
    equal by construction (see :func:`check_in_sync`), not be overwritten.
    """
    if not ranks.distributed:
        return module
    device = next(module.parameters()).device
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``values`` over ranks (``values`` in one process)."""
    if not current().distributed:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def concat_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Every rank's ``values`` (same shape on each), concatenated along dim 0 in rank order.

    Outside ``torchrun`` (one process) it returns ``values`` itself; it is the
    ``reduce=`` the trainer gives :class:`~torchdreamer.objectives.ReturnScale`.

    Examples:
        >>> import torch
        >>> from torchdreamer.training.distributed import concat_over_ranks
        >>> concat_over_ranks(torch.tensor([1.0, 2.0]))  # a single process
        tensor([1., 2.])
    """
    if not current().distributed:
        return values
    gathered = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, values.contiguous())
    return torch.cat(gathered)


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Whether each flag is set on at least one rank, in one collective."""
    if not current().distributed:
        return tuple(flags)
    values = torch.tensor([float(f) for f in flags])
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in values)


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    ranks = current()
    if not ranks.distributed:
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: T) -> list[T] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (``None`` elsewhere)."""
    ranks = current()
    if not ranks.distributed:
        return [obj]
    out: list[Any] | None = [None] * ranks.world_size if ranks.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def scatter_objects(objs: list[T] | None) -> T:
    """Rank 0's ``objs[r]`` on rank ``r`` (``objs`` is ignored on other ranks)."""
    ranks = current()
    if not ranks.distributed:
        assert objs is not None
        return objs[0]
    out: list[Any] = [None]
    dist.scatter_object_list(out, objs if ranks.is_main else None, src=0)
    return out[0]


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result, or its exception, to every rank.

    For work that touches the run directory (which only rank 0 needs to
    see): a refusal there stops every rank with the same message instead of
    leaving the others waiting in the next collective.
    """
    ranks = current()
    if not ranks.distributed:
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    if ranks.is_main:
        try:
            outcome = (True, fn())
        except Exception as error:  # handed to every rank, raised there
            outcome = (False, error)
    ok, value = broadcast_object(outcome)
    if not ok:
        raise value
    return value


def _fingerprint(tensor: torch.Tensor) -> int:
    """An integer that changes with any bit of ``tensor`` (exact, order-free).

    Sums the tensor's bytes times odd position weights in int64, which wraps
    modulo 2**64: flipping one bit changes the sum by an odd multiple of a
    power of two below 2**8, never a multiple of 2**64.
    """
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).long()
    weights = torch.arange(data.numel(), dtype=torch.long) * 2 + 1
    return int((data * weights).sum()) ^ data.numel()


def check_in_sync(module: nn.Module, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Raise if any parameter or buffer of ``module`` differs between ranks.

    Compares a bit-exact fingerprint of every tensor (parameters, slow critic,
    return-normalisation statistics, and ``extra``, e.g. optimiser moments)
    over all ranks; the error names the tensors that drifted.
    """
    if not current().distributed:
        return
    tensors = dict(module.state_dict(keep_vars=False))
    tensors.update(extra or {})
    mine = [_fingerprint(t) for t in tensors.values()]
    everyone = all_gather_objects(mine)
    drifted = [
        name for i, name in enumerate(tensors) if any(prints[i] != mine[i] for prints in everyone)
    ]
    if drifted:
        shown = ", ".join(drifted[:5]) + (" …" if len(drifted) > 5 else "")
        raise RuntimeError(
            f"{len(drifted)} tensors differ between ranks ({shown}): the data-parallel "
            "replicas drifted apart."
        )
