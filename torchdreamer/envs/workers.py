"""Environment copies stepped in worker processes: :class:`WorkerVectorEnv`.

``Config.env_workers`` (``--env-workers``) splits a run's ``num_envs`` training copies
over worker processes, so that an expensive simulator or renderer steps beside the
update instead of before it. Each worker runs a contiguous group of copies in a gymnasium
``SyncVectorEnv``; the training process sends every step's actions to all workers at
once and joins their answers in the copies' order, so that observations, rewards and
infos are those of one ``SyncVectorEnv`` of all the copies, seed for seed.

Workers are started with ``spawn`` (a fresh interpreter: no torch threads or locks
inherited) and receive the functions that make their copies pickled: functions,
classes and ``functools.partial`` objects defined at a module's top level pickle;
lambdas and functions defined inside others do not. Workers ignore SIGINT and SIGTERM
(a Ctrl-C in a terminal reaches the whole process group): the training process stops
the run and closes them. :meth:`WorkerVectorEnv.close` ends them (after 10 s of
waiting, by force); a worker whose training process died exits on its own when its pipe
closes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import signal
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

__all__ = ["WorkerVectorEnv", "groups"]

_SAME_STEP = gym.vector.AutoresetMode.SAME_STEP
#: Seconds :meth:`WorkerVectorEnv.close` waits for the workers before it ends them by force.
_CLOSE_WAIT = 10.0
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def groups(copies: int, workers: int) -> list[range]:
    """The copies each of ``workers`` workers runs: contiguous, the first ones larger by
    one where ``copies`` does not divide evenly.

    Examples:
        >>> from torchdreamer.envs.workers import groups
        >>> [list(group) for group in groups(5, 2)]
        [[0, 1, 2], [3, 4]]
        >>> groups(2, 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: 3 env workers for 2 environment copies: use 1 to 2 workers (at most one ...
    """
    if not 1 <= workers <= copies:
        raise ValueError(
            f"{workers} env workers for {copies} environment copies: use 1 to {copies} "
            "workers (at most one per copy)."
        )
    sizes = [copies // workers + (i < copies % workers) for i in range(workers)]
    starts = np.cumsum([0, *sizes]).tolist()
    return [range(start, start + size) for start, size in zip(starts, sizes, strict=False)]


class _Group(gym.vector.SyncVectorEnv):
    """A worker's copies: a ``SyncVectorEnv`` that keeps each copy's info, in the order it
    would merge them, for the training process to merge at the copies' global indices."""

    def __init__(self, makers: Sequence[Callable[[], gym.Env]]) -> None:
        self.added: list[tuple[int, dict]] = []
        super().__init__(makers, copy=False, autoreset_mode=_SAME_STEP)

    def _add_info(self, vector_infos: dict, env_info: dict, env_num: int) -> dict:
        self.added.append((env_num, env_info))
        return vector_infos

    def taken(self) -> list[tuple[int, dict]]:
        added, self.added = self.added, []
        return added


def _portable(error: BaseException) -> BaseException:
    """``error`` with the worker's traceback as a note, or a RuntimeError that names it
    when it would not survive pickling."""
    error.add_note(
        "in an environment worker process:\n"
        + "".join(traceback.format_exception(type(error), error, error.__traceback__))
    )
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        text = f"{type(error).__name__}: {error}"
        return RuntimeError(f"an environment worker process failed ({text}).")
    return error


def _serve(pipe: Connection, makers: Sequence[Callable[[], gym.Env]]) -> None:
    """A worker: make the copies, then answer ``reset``, ``step`` and ``close``."""
    for number in _SIGNALS:  # the training process stops the run and closes the workers
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    envs = None
    try:
        try:
            envs = _Group(makers)
        except Exception as error:
            pipe.send((False, _portable(error)))
            return
        spaces = (envs.single_observation_space, envs.single_action_space)
        pipe.send((True, (*spaces, envs.metadata, envs.render_mode)))
        while True:
            try:
                command, data = pipe.recv()
            except (EOFError, OSError):
                return  # the training process is gone
            if command == "close":
                break
            try:
                if command == "reset":
                    observation, _ = envs.reset(seed=data[0], options=data[1])
                    answer: tuple = (observation, envs.taken())
                else:
                    observation, reward, terminated, truncated, _ = envs.step(data)
                    answer = (observation, reward, terminated, truncated, envs.taken())
            except Exception as error:
                envs.taken()
                pipe.send((False, _portable(error)))
            else:
                pipe.send((True, answer))
    finally:
        if envs is not None:
            envs.close()
        pipe.close()


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back while workers start: a started process inherits the
    mask, so that no signal ends a worker before it ignores them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class WorkerVectorEnv(gym.vector.VectorEnv):
    """``len(makers)`` environment copies split over ``workers`` processes, stepped as one
    gymnasium vector env.

    Copies reset on the step their episode ends (``AutoresetMode.SAME_STEP``, the ended
    episode's last observation in ``info["final_obs"]``), and every answer is that of
    ``SyncVectorEnv(makers, autoreset_mode=SAME_STEP)``: the same observations, rewards,
    flags and infos for the same seeds and actions. ``reset(seed=s)`` seeds copy ``i``
    with ``s + i``, as that one does. The group each worker runs is :func:`groups`'s.

    Raises :class:`ValueError` when ``makers`` cannot be pickled (see the module's
    docstring); an error in a worker is raised here with the worker's traceback as a
    note, and a worker that died raises :class:`RuntimeError`.

    Examples:
        >>> import functools
        >>> import gymnasium as gym
        >>> from torchdreamer.envs.workers import WorkerVectorEnv
        >>> makers = [functools.partial(gym.make, "CartPole-v1")] * 3
        >>> env = WorkerVectorEnv(makers, workers=2)
        >>> observation, info = env.reset(seed=0)
        >>> observation.shape, [len(group) for group in env.groups]
        ((3, 4), [2, 1])
        >>> env.close()
        >>> WorkerVectorEnv([lambda: gym.make("CartPole-v1")], 1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: env workers receive the functions that make their environments \
pickled, and these cannot be (...): ...
    """

    def __init__(self, makers: Sequence[Callable[[], gym.Env]], workers: int) -> None:
        self.closed = True  # until there are workers to close
        self.groups = groups(len(makers), workers)
        try:
            pickle.dumps(list(makers))
        except Exception as error:
            raise ValueError(
                "env workers receive the functions that make their environments pickled, and "
                f"these cannot be ({type(error).__name__}: {error}): define the function at "
                "a module's top level (a function, a class or a functools.partial of one; "
                "not a lambda or a nested function), or run the environments in this "
                "process (env_workers 0)."
            ) from None
        self.num_envs = len(makers)
        self.autoreset_mode = _SAME_STEP  # read by TorchRL
        self._pipes: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._waiting: list[bool] = []
        context = multiprocessing.get_context("spawn")
        self.closed = False
        try:
            with _signals_blocked():
                for number, group in enumerate(self.groups):
                    mine, theirs = context.Pipe()
                    process = context.Process(
                        target=_serve,
                        args=(theirs, [makers[i] for i in group]),
                        name=f"torchdreamer env worker {number}",
                        daemon=True,
                    )
                    process.start()
                    theirs.close()
                    self._pipes.append(mine)
                    self._processes.append(process)
                    self._waiting.append(True)
            answers = self._gather()
        except BaseException:
            self.close()
            raise
        observation_space, action_space, metadata, render_mode = answers[0]
        for number, (other_observation, other_action, *_) in enumerate(answers):
            if (other_observation, other_action) != (observation_space, action_space):
                self.close()
                raise RuntimeError(
                    f"the copies of env worker {number} have the spaces {other_observation}, "
                    f"{other_action}; those of worker 0 have {observation_space}, "
                    f"{action_space}: every copy must have the same spaces."
                )
        self.single_observation_space = observation_space
        self.single_action_space = action_space
        self.observation_space = batch_space(observation_space, self.num_envs)
        self.action_space = batch_space(action_space, self.num_envs)
        self.metadata = {**metadata, "autoreset_mode": _SAME_STEP}
        self.render_mode = render_mode
        self._group_spaces = [batch_space(observation_space, len(g)) for g in self.groups]

    @property
    def processes(self) -> list[multiprocessing.process.BaseProcess]:
        """The worker processes, one per group."""
        return list(self._processes)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict | None = None
    ) -> tuple[Any, dict]:
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(
                f"reset got {len(seeds)} seeds for {self.num_envs} environment copies."
            )
        if options is not None and "reset_mask" in options:
            raise ValueError(
                "options['reset_mask'] resets some copies only (gymnasium's DISABLED "
                "autoreset mode); these copies reset themselves (SAME_STEP)."
            )
        self._send("reset", [([seeds[i] for i in group], options) for group in self.groups])
        answers = self._gather()
        observation = self._joined([answer[0] for answer in answers])
        return observation, self._infos([answer[-1] for answer in answers])

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        each = list(iterate(self.action_space, actions))
        self._send("step", [[each[i] for i in group] for group in self.groups])
        answers = self._gather()
        observation = self._joined([answer[0] for answer in answers])
        reward, terminated, truncated = (
            np.concatenate([answer[k] for answer in answers]) for k in (1, 2, 3)
        )
        return observation, reward, terminated, truncated, self._infos([a[-1] for a in answers])

    def _joined(self, parts: list[Any]) -> Any:
        """The groups' batched observations as one batch, in the copies' order."""
        items = [
            item
            for part, space in zip(parts, self._group_spaces, strict=True)
            for item in iterate(space, part)
        ]
        space = self.single_observation_space
        return concatenate(space, items, create_empty_array(space, self.num_envs))

    def _infos(self, added: list[list[tuple[int, dict]]]) -> dict:
        """Each copy's info merged at its index, in the order one SyncVectorEnv merges them."""
        infos: dict = {}
        for group, entries in zip(self.groups, added, strict=True):
            for number, info in entries:
                infos = self._add_info(infos, info, group[number])
        return infos

    def _send(self, command: str, data: list[Any]) -> None:
        if self.closed:
            raise RuntimeError("this environment's workers are closed.")
        self._gather(discard=True)  # answers to a step that was interrupted
        for number, (pipe, payload) in enumerate(zip(self._pipes, data, strict=True)):
            try:
                pipe.send((command, payload))
            except (BrokenPipeError, OSError):
                raise self._died(number) from None
            self._waiting[number] = True

    def _gather(self, discard: bool = False) -> list[Any]:
        """Every waiting worker's answer; the first failure raised once all have answered."""
        answers, failure = [], None
        for number, pipe in enumerate(self._pipes):
            if not self._waiting[number]:
                continue
            try:
                ok, value = pipe.recv()
            except (EOFError, OSError):
                ok, value = False, self._died(number)
            self._waiting[number] = False
            if not ok and failure is None:
                failure = value
            answers.append(value)
        if failure is not None and not discard:
            raise failure
        return answers

    def _died(self, number: int) -> RuntimeError:
        process = self._processes[number]
        process.join(timeout=1)
        return RuntimeError(
            f"env worker {number} (process {process.pid}) ended unexpectedly (exit code "
            f"{process.exitcode}); its environments are lost. Run with env_workers 0 to "
            "see the environment's own error in this process."
        )

    def close_extras(self, **kwargs: Any) -> None:
        """Ask the workers to close their copies and end; after 10 s, end them by force."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("close", None))
        deadline = time.monotonic() + _CLOSE_WAIT
        for process in self._processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(timeout=1)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in self._pipes:
            pipe.close()
