"""Replay of fixed-length sequences from per-environment streams, as DreamerV3 samples them."""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import torch
from tensordict import MemoryMappedTensor, TensorDict

from torchdreamer import keys

__all__ = ["SequenceReplay"]

#: Version of the layout written by :meth:`SequenceReplay.state_dict` (2: without the
#: online queue, read as an empty queue).
STATE_VERSION = 3
#: Versions :meth:`SequenceReplay.load_state_dict` reads.
READABLE_VERSIONS = (2, 3)
#: Where :meth:`SequenceReplay.sample` writes each window's place: ``(INDEX, "env")``
#: and ``(INDEX, "step")``, ``[batch, length]``, what :meth:`SequenceReplay.update` reads.
INDEX = "index"
#: Columns renamed since checkpoints were first written, old name to new: the policy's
#: latent (``agent.LATENT``) was ``state``/``belief`` before it became ``stoch``/``deter``.
RENAMED = {("latent", old): ("latent", new) for old, new in keys.RENAMED_LATENT.items()}
#: Description of a memory-mapped replay, in its directory.
METADATA = "replay.json"
#: Per stream, the highest step ever written to the files (plus one).
HIGH_WATER = "written.memmap"


def _exact_storage(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous ``tensor`` whose storage holds its own elements only, sharing memory.

    ``torch.save`` writes a view's whole storage; this lets a prefix of a
    larger buffer be saved without copying it and without the rest.
    """
    tensor = tensor.contiguous()
    first = tensor.storage_offset() * tensor.element_size()
    storage = tensor.untyped_storage()[first : first + tensor.numel() * tensor.element_size()]
    return torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(
        storage, 0, tensor.shape, tensor.stride()
    )


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in a replay's {METADATA}.")
    return dtype


class SequenceReplay:
    """One ring buffer per environment; samples windows of consecutive steps.

    DreamerV3 trains on fixed-length chunks of each environment's stream that
    may cross episode boundaries (``is_first`` resets the RSSM inside a
    window), so every sampled window has exactly ``length`` steps, however
    short the episodes. TorchRL's ``SliceSampler`` slices within
    trajectories instead, and its storages share one write cursor, whereas
    environments here add rows at different rates (an episode's last step and
    the next episode's first step arrive together).

    Storage is a tensordict ``[num_envs, rows]``. In memory, ``rows`` starts at
    :attr:`first_allocation` and doubles whenever a stream needs more, up to
    ``capacity // num_envs``; from then on each stream is a ring that
    overwrites its oldest rows, and nothing is reallocated. Memory thus follows
    the data (at most twice it, and, during one doubling, the old buffer
    besides). :meth:`state_dict` holds each stream's filled rows only.

    With ``directory``, the storage is memory-mapped files there instead
    (tensordict's :class:`~tensordict.MemoryMappedTensor`), of full size from
    the first ``add`` but sparse on disk: the data lives in the page cache,
    which the kernel writes back and evicts as it needs, so the process's own
    memory stays small. :meth:`state_dict` then flushes the files to disk and
    holds only the cursors and the directory, never the data. The directory
    is one run's: a new replay created there replaces the files of an older
    one (and checkpoints of that one are then refused).

    Resuming a memory-mapped replay (:meth:`load_state_dict`) reopens the
    files. A missing directory or file, files of another replay (each is
    tagged with a random id that the checkpoint repeats), of another shape or
    size, or files behind the checkpoint raise an error that says which;
    the run can then only start over. Rows written after the checkpoint
    that was resumed are ignored (and overwritten as the run goes on); where
    they already overwrote a stream's oldest checkpointed rows, those rows
    are dropped with a warning, so a window never mixes in rows of the
    abandoned future. A process that is killed loses nothing the kernel has
    been handed; after a crash of the machine itself, only what the last
    checkpoint flushed is certain, so resume from a run that shut down
    cleanly or delete the run.

    Sampling follows the official replay: a window is uniform over every start
    in every stream, and with ``online`` each stream's fresh windows of
    ``online`` steps (those ending at its steps ``online``, ``2 * online``,
    ... counted from 0) are queued as they are written; every batch takes
    queued windows first, in the order they were written, and uniform draws
    for the rest, so each fresh window is trained on once soon after it
    arrives. Within a window, a row followed by an ``is_first`` row is marked
    ``is_last`` (an episode abandoned in the stream, e.g. cut by a resume, is
    closed), and :attr:`INDEX` says where each row is kept, so training can
    write values back into the windows it sampled (:meth:`update`).

    Args:
        num_envs: Parallel environment streams.
        capacity: Rows kept in all; each stream keeps ``capacity // num_envs``.
        generator: Random generator for sampling (its state is checkpointed
            with the run's).
        directory: Where to keep the rows as memory-mapped files; ``None``
            keeps them in memory.
        online: Length of the windows of the online queue; ``None``: no queue.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchdreamer.training import SequenceReplay
        >>> replay = SequenceReplay(num_envs=2, capacity=20)
        >>> both = torch.tensor([True, True])
        >>> for t in range(6):
        ...     replay.add(TensorDict(step=torch.full((2,), t), batch_size=[2]), both)
        >>> window = replay.sample(batch_size=3, length=4)
        >>> window.batch_size, bool((window["step"].diff(dim=1) == 1).all())
        (torch.Size([3, 4]), True)

        On disk, a checkpoint refers to the files:

        >>> import tempfile
        >>> disk = SequenceReplay(2, 20, directory=tempfile.mkdtemp())
        >>> for t in range(6):
        ...     disk.add(TensorDict(step=torch.full((2,), t), batch_size=[2]), both)
        >>> state = disk.state_dict()
        >>> "rows" in state, state["directory"] == str(disk.directory)
        (False, True)
        >>> resumed = SequenceReplay(2, 20)
        >>> resumed.load_state_dict(state)
        >>> len(resumed), resumed.sample(1, 6)["step"].tolist()
        (12, [[0, 1, 2, 3, 4, 5]])

    """

    #: Rows per stream of the first in-memory allocation.
    first_allocation = 64

    def __init__(
        self,
        num_envs: int,
        capacity: int,
        generator: torch.Generator | None = None,
        *,
        directory: str | os.PathLike | None = None,
        online: int | None = None,
    ) -> None:
        self.num_envs = num_envs
        self.per_env = capacity // num_envs
        if self.per_env < 2:
            raise ValueError(f"capacity {capacity} is too small for {num_envs} environments.")
        if online is not None and not 1 <= online <= self.per_env:
            raise ValueError(
                f"online windows of {online} steps do not fit streams of {self.per_env} rows; "
                "pass a length from 1 to capacity // num_envs, or None for no queue."
            )
        self.online = online
        #: The online queue: ``(env, first step)`` of fresh windows not yet sampled.
        self.queue: deque[tuple[int, int]] = deque()
        self.generator = generator
        self.directory = None if directory is None else Path(directory).absolute()
        self.storage: TensorDict | None = None
        self.written = torch.zeros(num_envs, dtype=torch.long)  # rows ever added, per env
        self.oldest = torch.zeros(num_envs, dtype=torch.long)  # first step still kept, per env
        self._run_id: str | None = None
        self._high_water: torch.Tensor | None = None  # memory-mapped, per env

    # ------------------------------------------------------------------ filling
    @property
    def allocated(self) -> int:
        """Rows per stream the storage holds room for."""
        return 0 if self.storage is None else self.storage.batch_size[1]

    def __len__(self) -> int:
        return int((self.written - self.oldest).sum())

    def add(self, rows: TensorDict, mask: torch.Tensor) -> None:
        """Append ``rows[e]`` to stream ``e`` wherever ``mask[e]``.

        Args:
            rows: ``[num_envs]`` tensordict of one step per environment.
            mask: ``[num_envs]`` bool, which environments add a row.
        """
        if rows.batch_size != torch.Size([self.num_envs]):
            raise ValueError(
                f"rows must have batch size [{self.num_envs}], got {list(rows.batch_size)}."
            )
        if self.directory is not None:
            rows = rows.cpu()
        if self.storage is None:
            self._create(rows, self._growth(1))
        envs = mask.nonzero().squeeze(-1).cpu()
        if not len(envs):
            return
        written = self.written[envs]
        if self.allocated < self.per_env:
            needed = min(int(written.max()) + 1, self.per_env)
            if needed > self.allocated:
                self._grow(needed)
        if self._high_water is not None:  # raised before the rows land, for resuming
            self._high_water[envs] = torch.maximum(self._high_water[envs], written + 1)
        self.storage[envs, written % self.per_env] = rows[envs.to(rows.device)]
        self.written[envs] = written + 1
        if self.allocated == self.per_env:  # a ring drops its oldest row once full
            self.oldest[envs] = torch.maximum(self.oldest[envs], written + 1 - self.per_env)
        if self.online is not None:  # step n ends a fresh window when n % length == 0
            length = self.online
            for env, step in zip(envs.tolist(), written.tolist(), strict=True):
                if step + 1 >= length and step % length == 0:
                    self.queue.append((env, step + 1 - length))

    def _growth(self, needed: int) -> int:
        return min(self.per_env, max(needed, 2 * self.allocated, self.first_allocation))

    def _grow(self, needed: int) -> None:
        old, size = self.storage, self._growth(needed)
        self.storage = self._empty_like(old, size)
        self.storage[:, : old.batch_size[1]] = old

    def _empty_like(self, template: TensorDict, size: int) -> TensorDict:
        """Uninitialised ``[num_envs, size]`` storage for rows like ``template``'s."""
        out = TensorDict(batch_size=[self.num_envs, size], device=template.device)
        for key, value in template.items(include_nested=True, leaves_only=True):
            start = template.batch_dims
            shape = (self.num_envs, size, *value.shape[start:])
            out.set(key, torch.empty(shape, dtype=value.dtype, device=value.device))
        return out

    def _create(self, template: TensorDict, size: int) -> None:
        """The storage for rows like ``template``'s: in memory, or new files in the directory."""
        if self.directory is None:
            self.storage = self._empty_like(template, size)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / METADATA).unlink(missing_ok=True)  # the old replay's, if any
        entries, storage = [], TensorDict(batch_size=[self.num_envs, self.per_env])
        for index, (key, value) in enumerate(template.items(include_nested=True, leaves_only=True)):
            entry = {
                "key": list(key) if isinstance(key, tuple) else [key],
                "dtype": str(value.dtype).removeprefix("torch."),
                "shape": [self.num_envs, self.per_env, *value.shape[template.batch_dims :]],
                "file": f"{index}.memmap",
            }
            (self.directory / entry["file"]).unlink(missing_ok=True)
            mapped = MemoryMappedTensor.empty(
                entry["shape"], dtype=value.dtype, filename=self.directory / entry["file"]
            )
            storage.set(key, mapped.as_subclass(torch.Tensor))
            entries.append(entry)
        (self.directory / HIGH_WATER).unlink(missing_ok=True)
        high_water = MemoryMappedTensor.zeros(
            self.num_envs, dtype=torch.long, filename=self.directory / HIGH_WATER
        )
        self._high_water = high_water.as_subclass(torch.Tensor)
        self._run_id = uuid.uuid4().hex
        metadata = {
            "format": "torchdreamer.SequenceReplay",
            "version": STATE_VERSION,
            "run_id": self._run_id,
            "num_envs": self.num_envs,
            "per_env": self.per_env,
            "entries": entries,
        }
        partial = self.directory / (METADATA + ".partial")
        partial.write_text(json.dumps(metadata, indent=1))
        os.replace(partial, self.directory / METADATA)
        self.storage = storage

    # ----------------------------------------------------------------- sampling
    def can_sample(self, length: int) -> bool:
        return bool((self.written - self.oldest >= length).any())

    def sample(
        self, batch_size: int, length: int, *, generator: torch.Generator | None = None
    ) -> TensorDict:
        """``[batch_size, length]`` windows: queued fresh ones first (``online``), then
        uniform over every start in every stream (see the class).

        The draws come from the replay's generator, or from ``generator`` when given
        (a look at the data that must leave training's draws, and the online queue,
        as they are). Each window's rows come with their place, under :data:`INDEX`.
        """
        own = generator is None
        generator = self.generator if own else generator
        if self.storage is None or not self.can_sample(length):
            raise RuntimeError(f"no stream holds {length} steps yet; add more before sampling.")
        queued = self._pop_online(batch_size) if own and length == self.online else []
        env = torch.tensor([e for e, _ in queued], dtype=torch.long)
        start = torch.tensor([s for _, s in queued], dtype=torch.long)
        uniform = batch_size - len(queued)
        if uniform:
            kept = self.written - self.oldest
            starts_per_env = (kept - length + 1).clamp(min=0)
            # Uniform over all valid (env, start) pairs: env weighted by its start count.
            drawn = torch.multinomial(
                starts_per_env.double(), uniform, replacement=True, generator=generator
            )
            offset = (
                torch.rand(uniform, generator=generator, dtype=torch.float64)
                * starts_per_env[drawn]
            ).long()
            env = torch.cat([env, drawn])
            start = torch.cat([start, self.oldest[drawn] + offset])
        steps = start.unsqueeze(1) + torch.arange(length)
        envs = env.unsqueeze(1).expand_as(steps)
        window = self.storage[envs, steps % self.per_env]
        keys = window.keys()
        if "is_first" in keys and "is_last" in keys:
            # The official sampler's mark: every row before an is_first ends an episode.
            first, last = window.get("is_first"), window.get("is_last").clone()
            last[:, :-1] |= first[:, 1:]
            window.set("is_last", last)
        window.set(INDEX, TensorDict(env=envs.clone(), step=steps, batch_size=steps.shape))
        return window

    def _pop_online(self, count: int) -> list[tuple[int, int]]:
        """Up to ``count`` queued windows whose rows are all still kept, first in first out."""
        taken = []
        while self.queue and len(taken) < count:
            env, start = self.queue.popleft()
            if start >= int(self.oldest[env]):  # else the ring has overwritten it: skipped
                taken.append((env, start))
        return taken

    def update(self, index: TensorDict, values: TensorDict) -> None:
        """Write ``values`` into the rows ``index`` names (the official ``replay.update``).

        ``index`` is a sampled window's :data:`INDEX` (or its last ``T`` steps) and
        ``values`` a ``[batch, T]`` tensordict of columns the replay holds, for the
        window's last ``T`` rows. Rows dropped since they were sampled are left out;
        a row named twice takes the value of its last window, as the official
        replay, which updates the windows one after another.

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> replay = SequenceReplay(num_envs=1, capacity=10)
            >>> for t in range(4):
            ...     replay.add(TensorDict(x=torch.zeros(1), batch_size=[1]), torch.ones(1).bool())
            >>> window = replay.sample(2, 3)
            >>> replay.update(window["index"], TensorDict(x=torch.ones(2, 2), batch_size=[2, 2]))
            >>> replay.sample(1, 4)["x"].sum().item() >= 2
            True
        """
        steps = values.batch_size[1]
        env = index.get("env")[:, -steps:].reshape(-1).cpu()
        step = index.get("step")[:, -steps:].reshape(-1).cpu()
        flat = values.reshape(-1)
        held = (step >= self.oldest[env]) & (step < self.written[env])
        slot = env * self.per_env + step % self.per_env
        order = torch.arange(len(slot))[held]
        slot = slot[held]
        if not len(slot):
            return
        unique, inverse = torch.unique(slot, return_inverse=True)
        last = torch.full_like(unique, -1).scatter_reduce_(0, inverse, order, "amax")
        chosen = flat[last.to(flat.device)]
        if self.directory is not None or chosen.device != self.storage.device:
            chosen = chosen.to(self.storage.device)
        self.storage[unique // self.per_env, unique % self.per_env] = chosen

    def close_streams(self) -> int:
        """Flag each stream's last row ``is_last``, unless it is already: the streams'
        episodes end there (a resumed run restarts its environments, so no row of those
        episodes follows). Returns the number of episodes closed.

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> replay = SequenceReplay(num_envs=2, capacity=10)
            >>> flags = torch.zeros(2, dtype=torch.bool)
            >>> replay.add(TensorDict(is_last=flags, batch_size=[2]), torch.ones(2).bool())
            >>> replay.close_streams(), replay.storage["is_last"][:, 0].tolist()
            (2, [True, True])
        """
        if self.storage is None or "is_last" not in self.storage.keys():
            return 0
        envs = (self.written > self.oldest).nonzero().squeeze(-1)
        slots = (self.written[envs] - 1) % self.per_env
        last = self.storage.get("is_last")
        open_ = ~last[envs, slots].reshape(len(envs), -1).all(-1)
        envs, slots = envs[open_], slots[open_]
        if len(envs):
            last[envs, slots] = True
        return len(envs)

    def sampling_state(self) -> tuple[torch.Tensor | None, list[tuple[int, int]]]:
        """What sampling changes: the generator's state and the online queue."""
        generator = None if self.generator is None else self.generator.get_state()
        return generator, list(self.queue)

    def set_sampling_state(self, state: tuple[torch.Tensor | None, list[tuple[int, int]]]):
        """Put back :meth:`sampling_state`'s state."""
        generator, queue = state
        if generator is not None:
            self.generator.set_state(generator)
        self.queue = deque(queue)

    # -------------------------------------------------------------- checkpoints
    def flush(self) -> None:
        """Write the memory-mapped rows through to disk (nothing to do in memory)."""
        if self.directory is None or self.storage is None:
            return
        files = [entry["file"] for entry in self._metadata()["entries"]] + [HIGH_WATER]
        for name in files:
            descriptor = os.open(self.directory / name, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def state_dict(self) -> dict[str, Any]:
        """The cursors, and each stream's filled rows in memory or the flushed files' place.

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> replay = SequenceReplay(num_envs=2, capacity=1000)
            >>> replay.add(TensorDict(x=torch.zeros(2, 3), batch_size=[2]), torch.ones(2).bool())
            >>> [rows["x"].shape for rows in replay.state_dict()["rows"]]
            [torch.Size([1, 3]), torch.Size([1, 3])]

        """
        state = {
            "version": STATE_VERSION,
            "num_envs": self.num_envs,
            "per_env": self.per_env,
            "written": self.written.clone(),
            "oldest": self.oldest.clone(),
            "queue": [(e, t) for e, t in self.queue if t >= int(self.oldest[e])],
        }
        if self.directory is not None and self.storage is not None:
            self.flush()
            return {**state, "directory": str(self.directory), "run_id": self._run_id}
        state["rows"] = None
        if self.storage is not None:
            filled = self.written.clamp(max=self.per_env).tolist()
            state["rows"] = [
                self.storage[e, :n].apply(_exact_storage) for e, n in enumerate(filled)
            ]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state, or a replay checkpointed with the full storage.

        A memory-mapped state reopens its files in this replay's ``directory``
        if it was given one, else in the directory the state names.
        """
        if "storage" in state and "version" not in state:
            state = self._from_full_storage(state)
        if state.get("version") not in READABLE_VERSIONS:
            raise ValueError(
                f"replay state version {state.get('version')!r} is not one this version reads "
                f"{READABLE_VERSIONS}; resume with the torchdreamer that wrote it, or start over."
            )
        if (state["num_envs"], state["per_env"]) != (self.num_envs, self.per_env):
            raise ValueError(
                f"the checkpointed replay has {state['num_envs']} streams of "
                f"{state['per_env']} rows, this one {self.num_envs} of {self.per_env}; resume "
                "with the same num_envs and replay_capacity."
            )
        written, oldest = state["written"].clone(), state["oldest"].clone()
        if "directory" in state:
            if self.directory is None:
                self.directory = Path(state["directory"])
            self._open(state["run_id"], written, oldest)
        else:
            self._restore_rows(state["rows"], written)
        self.written, self.oldest = written, oldest
        self.queue = deque((int(e), int(t)) for e, t in state.get("queue", ()))
        if self.storage is not None:
            stored = self.storage.keys(include_nested=True)
            for old, new in RENAMED.items():
                if old in stored:
                    self.storage.rename_key_(old, new)

    def _from_full_storage(self, state: dict[str, Any]) -> dict[str, Any]:
        """The state of a replay saved with its whole ``[num_envs, capacity // num_envs]``."""
        storage, written = state["storage"], state["written"]
        if storage is not None and storage.batch_size != torch.Size([self.num_envs, self.per_env]):
            raise ValueError(
                f"the checkpointed replay storage is {list(storage.batch_size)}, this replay "
                f"[{self.num_envs}, {self.per_env}]; resume with the same num_envs and "
                "replay_capacity."
            )
        filled = written.clamp(max=self.per_env).tolist()
        return {
            "version": STATE_VERSION,
            "num_envs": len(written),
            "per_env": self.per_env,
            "written": written,
            "oldest": (written - self.per_env).clamp(min=0),
            "rows": None if storage is None else [storage[e, :n] for e, n in enumerate(filled)],
        }

    def _restore_rows(self, rows: list[TensorDict] | None, written: torch.Tensor) -> None:
        self.storage = self._high_water = None
        if rows is None:
            return
        longest = max(len(stream) for stream in rows)
        size = self.per_env if self.directory is not None else self._growth(longest)
        self._create(rows[0], size)  # a [rows] stream: its leaves' shapes after the batch
        for e, stream in enumerate(rows):
            self.storage[e, : len(stream)] = stream
        if self._high_water is not None:
            self._high_water.copy_(written)

    def _metadata(self) -> dict[str, Any]:
        path = self.directory / METADATA
        if not path.exists():
            raise FileNotFoundError(
                f"the checkpoint's replay files are missing: {path} does not exist. Restore the "
                "directory, or start the run over."
            )
        return json.loads(path.read_text())

    def _open(self, run_id: str, written: torch.Tensor, oldest: torch.Tensor) -> None:
        """Reopen the checkpoint's files; drops rows overwritten since, in ``oldest``."""
        metadata, where = self._metadata(), self.directory
        if metadata.get("run_id") != run_id:
            raise ValueError(
                f"the replay files in {where} belong to another replay than the checkpoint's "
                f"(id {metadata.get('run_id')!r}, not {run_id!r}); start the run over."
            )
        storage = TensorDict(batch_size=[self.num_envs, self.per_env])
        for entry in metadata["entries"]:
            shape, dtype, path = entry["shape"], _dtype(entry["dtype"]), where / entry["file"]
            expected = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            if not path.exists() or path.stat().st_size != expected:
                raise ValueError(
                    f"the replay file {path} of entry {entry['key']} ({shape}, {entry['dtype']}) "
                    f"is missing or not {expected} bytes; start the run over."
                )
            mapped = MemoryMappedTensor.from_filename(path, dtype, torch.Size(shape))
            storage.set(tuple(entry["key"]), mapped.as_subclass(torch.Tensor))
        path = where / HIGH_WATER
        if not path.exists() or path.stat().st_size != 8 * self.num_envs:
            raise ValueError(f"the replay file {path} is missing or damaged; start the run over.")
        high_water = MemoryMappedTensor.from_filename(path, torch.long, torch.Size([self.num_envs]))
        high_water = high_water.as_subclass(torch.Tensor)
        if (high_water < written).any():
            raise ValueError(
                f"the replay files in {where} hold fewer rows ({high_water.tolist()}) than the "
                f"checkpoint counted ({written.tolist()}); start the run over."
            )
        intact = (high_water - self.per_env).clamp(min=0)
        lost = int((intact - oldest).clamp(min=0).clamp(max=written - oldest).sum())
        if lost:
            warnings.warn(
                f"{lost} replay rows of the checkpoint in {where} were overwritten after it was "
                "written; resuming without them.",
                stacklevel=3,
            )
        oldest.copy_(torch.maximum(oldest, intact.clamp(max=written)))
        self.storage, self._high_water, self._run_id = storage, high_water, run_id
