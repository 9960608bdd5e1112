"""The update on replay batches copied into preallocated tensors, optionally a CUDA graph.

A CUDA graph replays the kernels it captured on the memory it captured them on, so the
step's inputs must stay at the same addresses from one update to the next, and the
step must read nothing back to the host. :class:`StaticUpdate` gives both: every
replay batch is copied into tensors made once (the same shapes every update), and the
step is :meth:`DreamerAgent.train_step`, which leaves its metrics on the device;
:meth:`DreamerAgent.read_metrics` reads them once, after the step. Without a graph (on
CPU always) the same copies and the same step run eagerly: the numbers are the plain
:meth:`DreamerAgent.update`'s, bit for bit.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn

from torchdreamer.training.agent import DreamerAgent

__all__ = ["StaticUpdate"]


class StaticUpdate:
    """:meth:`DreamerAgent.update` on batches copied into static input tensors.

    With ``graph`` (CUDA only), the first ``warmup`` updates run eagerly on a side
    stream (they fill the optimiser's state, the caches made once and, for a compiled
    agent, its graphs); the next one is captured as a :class:`torch.cuda.CUDAGraph`
    and every update after it replays that graph. The optimiser's step count and
    learning rate stay on the host (:meth:`DreamerV3Optimizer.advance` fills them in
    before each replay); the random draws come from the CUDA generator's graph-safe
    offsets. A graph cannot go through ``torchrun``'s gradient averaging (``parallel``).

    Args:
        agent: The agent to update.
        graph: Capture the update as a CUDA graph.
        warmup: Eager updates before the capture.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> from torchdreamer.training.static_update import StaticUpdate
        >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config(imagination_horizon=3))
        >>> update = StaticUpdate(agent)
        >>> flags, zeros = torch.zeros(2, 8, dtype=torch.bool), torch.zeros(2, 8)
        >>> batch = TensorDict(observation=torch.randn(2, 8, 4), reward=zeros, is_first=flags,
        ...                    is_last=flags, is_terminal=flags, prev_action=torch.zeros(2, 8, 2),
        ...                    batch_size=[2, 8])
        >>> metrics = update(batch)
        >>> update.inputs["observation"] is not batch["observation"], "loss" in metrics
        (True, True)
    """

    def __init__(self, agent: DreamerAgent, *, graph: bool = False, warmup: int = 3) -> None:
        self.device = next(agent.parameters()).device
        if graph and self.device.type != "cuda":
            raise ValueError(
                f"StaticUpdate(graph=True) captures a CUDA graph, and the agent is on "
                f"{self.device}; move it to a CUDA device, or pass graph=False."
            )
        if warmup < 1 and graph:
            raise ValueError(f"warmup must be at least 1 before a capture, got {warmup}.")
        self.agent, self.graph, self.warmup = agent, graph, warmup
        self.inputs: TensorDictBase | None = None
        """The static input tensors, made from the first batch."""
        self.updates = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._outputs: tuple[list[str], torch.Tensor] | None = None

    def __call__(
        self, batch: TensorDictBase, parallel: nn.Module | None = None
    ) -> dict[str, float]:
        """One update on ``batch``; returns the metrics, as :meth:`DreamerAgent.update`."""
        if parallel is not None and self.graph:
            raise ValueError(
                "StaticUpdate(graph=True) cannot capture torchrun's gradient averaging; "
                "pass graph=False under torchrun."
            )
        self._copy_in(batch)
        names, values = self._step(parallel)
        self.updates += 1
        return self.agent.read_metrics(names, values)

    def _copy_in(self, batch: TensorDictBase) -> None:
        if self.inputs is None:
            self.inputs = batch.to(self.device).clone()
            return
        mine = dict(self.inputs.items(include_nested=True, leaves_only=True))
        theirs = dict(batch.items(include_nested=True, leaves_only=True))
        if mine.keys() != theirs.keys():
            raise ValueError(
                f"the batch's keys {sorted(map(str, theirs))} are not the first batch's "
                f"{sorted(map(str, mine))}: a StaticUpdate takes batches of one layout."
            )
        for key, buffer in mine.items():
            value = theirs[key]
            if value.shape != buffer.shape or value.dtype != buffer.dtype:
                raise ValueError(
                    f"the batch's {key!r} is {list(value.shape)} {value.dtype}, the first "
                    f"batch's {list(buffer.shape)} {buffer.dtype}: a StaticUpdate takes "
                    "batches of one shape (make a new one for another)."
                )
            buffer.copy_(value, non_blocking=True)

    def _step(self, parallel: nn.Module | None) -> tuple[list[str], torch.Tensor]:
        assert self.inputs is not None
        if not self.graph:
            return self.agent.train_step(self.inputs, parallel)
        current = torch.cuda.current_stream(self.device)
        if self.updates < self.warmup:  # eager, on a side stream, as a capture needs
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                outputs = self.agent.train_step(self.inputs)
            current.wait_stream(side)
            return outputs
        optimizer = self.agent.optimizer
        if self._graph is None:
            counts = [group["step"] for group in optimizer.param_groups]
            optimizer.advance()
            graph = torch.cuda.CUDAGraph()
            optimizer.captured = True
            try:
                # thread_local: a Prefetcher's worker may pin and copy meanwhile.
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self._outputs = self.agent.train_step(self.inputs)
            except BaseException:
                for group, count in zip(optimizer.param_groups, counts, strict=True):
                    group["step"] = count
                raise
            finally:
                optimizer.captured = False
            self._graph = graph
        else:
            optimizer.advance()
        self._graph.replay()  # the capture ran nothing: this is the update
        assert self._outputs is not None
        return self._outputs
