"""Replay batches sampled one update ahead, and moved to the training device.

A run's updates come in bursts: after each env step of every environment, the updates
the train ratio has earned, each on a batch :meth:`SequenceReplay.sample` draws. Nothing
is added to the replay during a burst, so batch ``k + 1`` of a burst can be sampled
while update ``k`` runs; on a GPU it is also pinned and copied to the device meanwhile,
and the update finds it there. Batches are never drawn across an env step: the next
burst's first batch depends on the rows that step adds.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import torch
from tensordict import TensorDictBase

from torchdreamer.training.replay import INDEX, SequenceReplay

#: The replay column training writes back between batches (the agent's ``LATENT``).
_REFRESHED = "latent"

__all__ = ["Prefetcher"]


class Prefetcher:
    """``count`` replay batches ``[batch_size, length]`` on ``device``: the batches, and
    the draws of the replay's generator, of ``count`` calls of ``replay.sample``.

    With ``background`` (the default on CUDA), one worker thread samples the next batch
    while the caller uses the current one; only the worker samples, one batch after
    another, so the draws come in the same order. On CUDA the worker pins each batch
    and copies it to the device on a stream of its own; a batch handed out is ordered
    after its copy on the current stream. Without ``background`` (the default
    elsewhere), each batch is sampled when asked for, ``replay.sample(...).to(device)``.

    Closing early (:meth:`close`, or the end of a ``with`` block) puts back the draws of
    a batch sampled ahead but never handed out: the replay's generator and online queue
    are then where as many calls of ``replay.sample`` as batches handed out leave them.
    The replay must not change while the prefetcher is open, except for the latents
    training writes back (:meth:`SequenceReplay.update`): a batch sampled ahead reads
    its ``latent`` column again when handed out, so it holds what the updates before
    it wrote, as one sampled then would. A background prefetcher needs the replay's
    own generator (the global one is the update's).

    Args:
        replay: The replay to sample.
        batch_size: Sequences per batch.
        length: Steps per sequence.
        count: Batches to hand out.
        device: Where the batches go.
        background: Sample ahead in a worker thread; ``None``: on CUDA devices.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchdreamer.training import SequenceReplay
        >>> from torchdreamer.training.prefetch import Prefetcher
        >>> replay = SequenceReplay(2, 40, torch.Generator().manual_seed(0))
        >>> for t in range(10):
        ...     replay.add(TensorDict(step=torch.full((2,), t), batch_size=[2]),
        ...                torch.ones(2, dtype=torch.bool))
        >>> with Prefetcher(replay, 3, 4, count=2, device="cpu", background=True) as batches:
        ...     ahead = [batch["step"] for batch in batches]
        >>> _ = replay.generator.manual_seed(0)  # the same draws, one batch at a time:
        >>> direct = [replay.sample(3, 4)["step"] for _ in range(2)]
        >>> all(torch.equal(a, d) for a, d in zip(ahead, direct))
        True
    """

    def __init__(
        self,
        replay: SequenceReplay,
        batch_size: int,
        length: int,
        count: int,
        device: torch.device | str,
        *,
        background: bool | None = None,
    ) -> None:
        self.replay, self.batch_size, self.length = replay, batch_size, length
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.background = cuda if background is None else background
        if self.background and replay.generator is None:
            raise ValueError(
                "a background Prefetcher needs a replay with its own generator "
                "(SequenceReplay(..., generator=torch.Generator())): the global one also "
                "draws the update's random numbers, in another thread."
            )
        self._left = count  # batches still to hand out
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None  # the batch sampled ahead
        self._before: tuple | None = None  # the replay's sampling state before it
        self._stream = torch.cuda.Stream(self.device) if cuda and self.background else None
        if self.background:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="torchdreamer-prefetch")
            self._ahead()

    def _ahead(self) -> None:
        """Start sampling the next batch, if one is left to hand out."""
        if self._left > 0 and self._pool is not None:
            # The worker is idle here: the generator holds the state before the next draw.
            self._before = self.replay.sampling_state()
            self._pending = self._pool.submit(self._fetch)

    def _fetch(self) -> tuple[TensorDictBase, torch.cuda.Event | None]:
        batch = self.replay.sample(self.batch_size, self.length)
        if self._stream is None:
            return batch.to(self.device), None
        batch = batch.pin_memory()
        with torch.cuda.stream(self._stream):
            moved = batch.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._stream)
        return moved, copied

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> TensorDictBase:
        if self._left <= 0:
            raise StopIteration
        if self._pool is None:  # sampled when asked for
            self._left -= 1
            return self.replay.sample(self.batch_size, self.length).to(self.device)
        pending, self._pending = self._pending, None
        assert pending is not None  # a background prefetcher samples one ahead
        batch, copied = pending.result()
        self._left -= 1
        if _REFRESHED in batch.keys():  # written back since it was sampled, maybe
            batch = self._refreshed(batch)
        self._ahead()  # the next one while the caller uses this one
        if copied is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(copied)
            for tensor in batch.values(include_nested=True, leaves_only=True):
                tensor.record_stream(stream)  # its memory is used there now
        return batch

    def _refreshed(self, batch: TensorDictBase) -> TensorDictBase:
        """``batch`` with its latents read from the replay now."""
        index = batch.get(INDEX)
        env, step = index.get("env").cpu(), index.get("step").cpu()
        latent = self.replay.storage.get(_REFRESHED)[env, step % self.replay.per_env]
        return batch.set(_REFRESHED, latent.to(self.device, non_blocking=True))

    def close(self) -> None:
        """Stop; put back the draws of a batch sampled ahead and not handed out."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.exception()  # waits for the worker; a failed draw is not needed
            self.replay.set_sampling_state(self._before)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._left = 0

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
