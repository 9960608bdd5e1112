"""Stopping a run: SIGINT (Ctrl-C) and SIGTERM become a request that the training loop
honours between two env steps or two updates, so that the run ends with its final
checkpoint, logs and learning curve.

In a compiled run, the first env step compiles the policy (up to a minute in an empty
inductor cache) and the first update compiles the update (minutes: about 150 s on two
cores). While they may compile (:class:`CompileGuard`), the first signal says at once
on stderr that the run stops after the step or update in progress. During an update,
a second Ctrl-C abandons it: :class:`UpdateInterrupted` is raised inside the update,
and what the update had already changed (networks, optimiser state, the replay's
generator, the global generators) is put back as it was before it began. The final
checkpoint is then the state of a run that never started that update; a resumed run
makes it. The same holds when such an update fails after a stop request: in a
terminal, Ctrl-C also reaches the C++ compiler that inductor runs, and the compile
fails.

- SIGTERM (a scheduler's preemption, ``kill``) always lets the update in progress
  finish: only a SIGINT after a first stop request abandons one.
- Under ``torchrun`` updates are collective (every rank takes part in every gradient
  average), so no rank abandons one: a stop waits for the update in progress on every
  rank, as :func:`~torchdreamer.training.loop.train` always did.
- A signal while a run is checked, before its first write, ends it there with
  :class:`StoppedBeforeStart`: nothing is written.
- Env steps and updates that cannot compile any more (after the first one that
  compiled nothing new) and eager ones are not guarded: they take a fraction of a
  second, and a stop request is honoured after them.
- After an abandoned update, the compile jobs inductor had queued are cancelled, so
  that the exit does not wait for them.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import torch

from torchdreamer.training import distributed
from torchdreamer.training.checkpoint import rng_states, set_rng_states
from torchdreamer.training.console import say

__all__ = [
    "COMPILING",
    "COMPILING_POLICY",
    "CompileGuard",
    "Stop",
    "StoppedBeforeStart",
    "UpdateInterrupted",
]

#: The line :class:`CompileGuard` notes when the first env step of a compiled run starts.
COMPILING_POLICY = (
    "torchdreamer: compiling the policy (the first env step; up to a minute in an empty "
    "inductor cache)"
)
#: The line :class:`CompileGuard` notes when the first update of a compiled run starts.
COMPILING = (
    "torchdreamer: compiling the update (the first update; minutes in an empty inductor "
    "cache): Ctrl-C stops the run after it, a second Ctrl-C at once"
)
#: What the first signal says during an update that may compile ({signal}: its name).
STOPS_AFTER_UPDATE = (
    "torchdreamer: {signal}: the run stops after the update in progress (it may be "
    "compiling: minutes in an empty inductor cache); {again} stops it now, nothing lost"
)
#: The same under torchrun, where updates are collective.
STOPS_AFTER_COLLECTIVE_UPDATE = (
    "torchdreamer: {signal}: the run stops after the update in progress (it may be "
    "compiling: minutes in an empty inductor cache; under torchrun every rank finishes it)"
)
#: What the first signal says during an env step whose policy may compile.
STOPS_AFTER_STEP = (
    "torchdreamer: {signal}: the run stops after this env step (the policy may be "
    "compiling: up to a minute in an empty inductor cache)"
)


class UpdateInterrupted(KeyboardInterrupt):
    """A second Ctrl-C abandoned the update in progress (raised inside it), or the
    update failed after a stop request (raised from its error).

    A :class:`KeyboardInterrupt`, so that code catching :class:`Exception` (the
    compiler's among others) lets it through.
    """


class StoppedBeforeStart(Exception):
    """SIGINT or SIGTERM came before the run's first write: nothing was written.

    The CLI prints it as one line and exits with ``128 + signum`` (130, 143).

    Examples:
        >>> import signal
        >>> from torchdreamer.training.stop import StoppedBeforeStart
        >>> stopped = StoppedBeforeStart(signal.SIGTERM)
        >>> str(stopped), 128 + stopped.signum
        ('stopped by SIGTERM before the run started; nothing was written', 143)
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} before the run started; nothing was written")


@dataclass
class _Region:
    line: str  # what the first signal says ({signal}: its name, {again}: how to stop now)
    interruptible: bool


def _line(line: str, signum: int) -> str:
    again = "a second Ctrl-C" if signum == signal.SIGINT else "Ctrl-C (SIGINT)"
    return line.format(signal=signal.Signals(signum).name, again=again)


class Stop:
    """Turns SIGINT (Ctrl-C) and SIGTERM into a stop request the loop honours (see the
    module); ``tell``: whether this process writes the lines (rank 0 only).

    Outside :meth:`during`, a signal only sets :attr:`signal`. Inside it, the first
    signal also writes the region's line on stderr at once and silences warnings (logged
    and Python's) until the region ends, and, in an interruptible region, a SIGINT after
    it raises :class:`UpdateInterrupted`.

    Examples:
        >>> import os
        >>> import signal
        >>> from torchdreamer.training.stop import Stop, UpdateInterrupted
        >>> with Stop(tell=False) as stop:
        ...     os.kill(os.getpid(), signal.SIGTERM)
        ...     stop.requested, stop.signal == signal.SIGTERM
        (True, True)
        >>> with Stop(tell=False) as stop:
        ...     try:
        ...         with stop.during("{signal}: {again} stops now", interruptible=True):
        ...             os.kill(os.getpid(), signal.SIGINT)  # stop after it
        ...             os.kill(os.getpid(), signal.SIGINT)  # stop now
        ...     except UpdateInterrupted:
        ...         print("abandoned")
        abandoned
    """

    def __init__(self, tell: bool = True) -> None:
        self.signal: int | None = None
        """The first signal received, or None."""
        self.tell = tell
        self._previous: dict[signal.Signals, Any] = {}
        self._region: _Region | None = None
        self._logging: int | None = None  # the logging level disabled before a region
        self._warnings: warnings.catch_warnings | None = None  # Python's, silenced

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> Stop:
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: signals stay as they are
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
        except ValueError:
            pass

    @contextmanager
    def during(self, line: str, interruptible: bool) -> Iterator[None]:
        """A region (an update) where the first signal writes ``line`` (``{signal}``
        names it, ``{again}`` says how to stop now) and, if ``interruptible``, a later
        SIGINT raises :class:`UpdateInterrupted` inside the region."""
        self._region = _Region(line, interruptible)
        self._logging = None
        self._warnings = None
        try:
            yield
        finally:
            self._region = None
            if self._logging is not None:
                logging.disable(self._logging)
            if self._warnings is not None:
                self._warnings.__exit__(None, None, None)
                self._warnings = None

    def _handle(self, signum: int, frame: object) -> None:
        first = self.signal is None
        if first:
            self.signal = signum
        region = self._region
        if region is None:
            return
        if first:
            if self.tell:
                _write_now(_line(region.line, signum))
            # The rest of the region logs no warnings: in a terminal, Ctrl-C also kills
            # the C++ compiler, and torch logs each failed compile with its traceback.
            self._logging = logging.root.manager.disable
            logging.disable(logging.WARNING)
            # Nor warns: a second Ctrl-C inside a backward under anomaly mode (which AOT
            # autograd turns on while it traces the joint graph) makes autograd warn
            # "Error detected in ...Backward0. Traceback of forward call ...".
            # Entered here, only once a signal came: a catch_warnings around every
            # region would reset the "once" registries after each update.
            self._warnings = warnings.catch_warnings()
            self._warnings.__enter__()
            warnings.simplefilter("ignore")
        elif signum == signal.SIGINT and region.interruptible:
            self._region = None  # one interruption per region
            raise UpdateInterrupted(signum)

    def agreed(self) -> int | None:
        """The signal of the first rank that got one (every rank calls this together)."""
        return next((s for s in distributed.all_gather_objects(self.signal) if s), None)


def _write_now(text: str) -> None:
    """``text`` on stderr from a signal handler: one ``write`` to its file descriptor
    (the handler may run while the interrupted code is inside a write to ``sys.stderr``,
    which Python's buffered streams refuse to reenter). On a terminal it starts on a
    line of its own (after the bar, or after the ``^C`` the terminal echoed)."""
    stream = sys.stderr
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a stream in memory (tests)
        try:
            say(text, stream)
        except RuntimeError:  # reentrant call: the line is lost, not the run
            pass
        return
    try:
        newline = "\n" if os.isatty(fd) else ""
        os.write(fd, f"{newline}{text}\n".encode(errors="replace"))
    except OSError:
        pass


def _compiled_graphs() -> int:
    """How many graphs dynamo made so far in this process (forward graphs; their
    backward compiles in the same update)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # a torch without dynamo
        return 0
    return int(counters["stats"]["unique_graphs"])


def _cancel_compiles() -> None:
    """Cancel the compile jobs inductor queued and stop its compile workers: on CPU its
    C++ builds run in a thread pool of this process, and Python's exit would wait for
    every queued one. The builds under way finish (seconds). Best effort: a torch
    without these pools, or with others, is left as it is."""
    try:
        from torch._inductor.async_compile import AsyncCompile, shutdown_compile_workers
    except ImportError:
        return
    try:
        if AsyncCompile.pool.cache_info().currsize:
            AsyncCompile.pool().shutdown(wait=False, cancel_futures=True)
            AsyncCompile.pool.cache_clear()  # a later compile makes a new pool
        shutdown_compile_workers()
    except Exception:  # noqa: BLE001 - private API: cleaning up must not fail the stop
        pass


@dataclass
class _Saved:
    networks: dict[str, Any]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    rng: dict[str, Any]


class CompileGuard:
    """The loop's env steps (:meth:`acting`) and updates (:meth:`updating`) while they
    may compile: the first signal says so at once, and a second Ctrl-C abandons an
    update, leaving the run as before it (see the module).

    ``compiled``: whether the agent is compiled (an eager one is never guarded). An
    update or env step may compile until the first one that makes no new graph.
    A guarded update first saves the checkpoint's part of the state it can change:
    ``agent.state_dict()`` (networks, slow critic, return scales),
    ``agent.optimizer``'s state, ``generator`` (the replay's draws) and the global
    generators (Python, NumPy, torch, CUDA), about three copies of the parameters.
    Interrupted, or failing after a stop request, it puts them back, cancels the
    queued compile jobs and raises :class:`UpdateInterrupted`; failing otherwise, it
    puts them back and re-raises the error. ``collective`` (``torchrun``): nothing is
    saved and nothing interrupts; the first signal still says the run stops after
    the update. ``note`` writes :data:`COMPILING_POLICY` when the first env step starts
    and :data:`COMPILING` when the first update starts.

    Examples:
        >>> import os
        >>> import signal
        >>> import torch
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> from torchdreamer.training.stop import CompileGuard, Stop, UpdateInterrupted
        >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config())
        >>> generator = torch.Generator().manual_seed(0)
        >>> before = {k: v.clone() for k, v in agent.state_dict().items()}
        >>> with Stop(tell=False) as stop:
        ...     guard = CompileGuard(stop, agent, generator, compiled=True)
        ...     try:
        ...         with guard.updating():
        ...             for p in agent.parameters():  # an update under way ...
        ...                 _ = p.data.add_(1.0)
        ...             draws = torch.rand(3, generator=generator)
        ...             os.kill(os.getpid(), signal.SIGINT)
        ...             os.kill(os.getpid(), signal.SIGINT)  # ... abandoned
        ...     except UpdateInterrupted:
        ...         pass
        >>> all(torch.equal(before[k], v) for k, v in agent.state_dict().items())
        True
        >>> torch.equal(torch.rand(3, generator=generator),
        ...             torch.rand(3, generator=torch.Generator().manual_seed(0)))
        True
    """

    def __init__(
        self,
        stop: Stop,
        agent: Any,
        generator: torch.Generator,
        *,
        compiled: bool,
        collective: bool = False,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.stop, self.agent, self.generator = stop, agent, generator
        self.collective = collective
        self.updates_compile = compiled
        """Whether updates may still compile (and are guarded)."""
        self.steps_compile = compiled
        """Whether env steps (the policy) may still compile."""
        self._note = note
        self._noted_policy = self._noted_update = False

    @contextmanager
    def acting(self, state: Any = None) -> Iterator[None]:
        """An env step: while the policy may compile, the first signal says the run
        stops after it. Nothing interrupts an env step; one that fails after a stop
        request (the terminal's Ctrl-C killed the C++ compiler) is abandoned: the
        global generators and ``state.env_step`` (the loop's count, raised before
        the step) are put back and :class:`UpdateInterrupted` is raised."""
        if not self.steps_compile:
            yield
            return
        if self._note is not None and not self._noted_policy:
            self._note(COMPILING_POLICY)
            self._noted_policy = True
        graphs = _compiled_graphs()
        step = None if state is None else state.env_step
        rng = rng_states()
        try:
            with self.stop.during(STOPS_AFTER_STEP, interruptible=False):
                yield
        except Exception as error:
            if self.collective or state is None or not self.stop.requested:
                raise
            state.env_step = step
            set_rng_states(rng)
            self._abandoned("env step", error)
        if _compiled_graphs() == graphs:
            self.steps_compile = False

    def _abandoned(self, what: str, error: BaseException) -> NoReturn:
        _cancel_compiles()
        if self.stop.tell:
            name = signal.Signals(self.stop.signal or signal.SIGINT).name
            say(
                f"torchdreamer: the {what} failed after {name} ({type(error).__name__}); "
                "it is abandoned, nothing lost",
                sys.stderr,
            )
        raise UpdateInterrupted(self.stop.signal) from error

    @contextmanager
    def updating(self) -> Iterator[None]:
        """An update (see the class)."""
        if not self.updates_compile:
            yield
            return
        if self._note is not None and not self._noted_update:
            self._note(COMPILING)
            self._noted_update = True
        graphs = _compiled_graphs()
        if self.collective:
            with self.stop.during(STOPS_AFTER_COLLECTIVE_UPDATE, interruptible=False):
                yield
        else:
            saved = self.save()
            try:
                with self.stop.during(STOPS_AFTER_UPDATE, interruptible=True):
                    yield
            except BaseException as error:
                self.restore(saved)
                if not (isinstance(error, UpdateInterrupted) or self.stop.requested):
                    raise
                if isinstance(error, UpdateInterrupted):
                    _cancel_compiles()
                    raise
                self._abandoned("update", error)  # e.g. Ctrl-C killed the C++ compiler
        if _compiled_graphs() == graphs:
            self.updates_compile = False

    def save(self) -> _Saved:
        """Copies of the state an update may change."""
        networks = {
            key: value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
            for key, value in self.agent.state_dict().items()
        }
        return _Saved(
            networks,
            copy.deepcopy(self.agent.optimizer.state_dict()),
            self.generator.get_state(),
            rng_states(),
        )

    def restore(self, saved: _Saved) -> None:
        """Put back what :meth:`save` copied."""
        with torch.no_grad():
            self.agent.load_state_dict(saved.networks)
        self.agent.optimizer.load_state_dict(saved.optimizer)
        self.generator.set_state(saved.generator)
        set_rng_states(saved.rng)
