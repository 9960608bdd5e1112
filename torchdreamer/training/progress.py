"""What the person watching a run sees of its progress, on stderr.

On a terminal, a bar redrawn in place. Anywhere else (a file, a pipe: ``nohup``, a
batch scheduler, ``| tee``) redraws would pile up in the log, about 1 MB an hour, so
:class:`Progress` writes plain lines there instead: one when the updates start, one
every :data:`LINE_EVERY` seconds and a last one when the run ends, with no carriage
returns and no escape codes (about 100 bytes a line: a few KB an hour).

When the run ends, :class:`Summary` is how it went, and :meth:`Summary.line` the line
``torchdreamer train`` prints of it.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm

from torchdreamer.training.evaluation import policy_name
from torchdreamer.training.logs import plot_curve, read_evaluation_policies, read_evaluations

if TYPE_CHECKING:
    from torchdreamer.training.checkpoint import RunState
    from torchdreamer.training.config import Config

__all__ = ["LINE_EVERY", "Progress", "Summary", "is_terminal"]

#: Seconds between two plain progress lines (output that is not a terminal).
LINE_EVERY = 60.0


class _Counters(Protocol):
    """What :meth:`Progress.show` reads of a run's state."""

    env_step: int
    updates: int


class _Config(Protocol):
    steps: int
    batch_size: int
    batch_length: int
    train_ratio: float


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` writes to a terminal (a closed or odd stream is not one).

    Examples:
        >>> import io
        >>> from torchdreamer.training.progress import is_terminal
        >>> is_terminal(io.StringIO())
        False
    """
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def clock(seconds: float) -> str:
    """``seconds`` as ``MM:SS``, or ``H:MM:SS`` from an hour on.

    Examples:
        >>> from torchdreamer.training.progress import clock
        >>> clock(75), clock(3725)
        ('01:15', '1:02:05')
    """
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def _mean(scores: Sequence[float]) -> float:
    return sum(scores) / len(scores) if scores else math.nan


class Progress:
    """The run's progress on ``stream`` (stderr): ``prefill`` until the first update,
    then ``train``.

    Its fields come from the live counters: the env steps done of ``config.steps``,
    the updates per second, the time left (estimated from the update rate once
    updates run), the latest episode's score and the mean of the last 10.

    On a terminal it is a bar that fits the terminal's width, redrawn at most twice a
    second. Elsewhere it is plain lines (``terminal=False`` forces them): one every
    ``interval`` seconds (:data:`LINE_EVERY`, one a minute: a few KB an hour) as the
    run goes on, one when the first update is done, and a last one at :meth:`close`;
    the rate is the one since the previous line. An error writing either (a closed
    pipe) turns it off instead of stopping the run.
    ``enabled=False`` shows nothing (``--no-progress``); :meth:`note` still writes.

    Examples:
        >>> import io
        >>> from types import SimpleNamespace
        >>> from torchdreamer.training import Config
        >>> from torchdreamer.training.progress import Progress
        >>> config = Config(steps=1000, batch_size=2, batch_length=8, train_ratio=16)
        >>> stream = io.StringIO()
        >>> progress = Progress(config, 0, True, 1, stream=stream, interval=60)
        >>> progress.show(SimpleNamespace(env_step=100, updates=0), [])
        >>> progress.show(SimpleNamespace(env_step=200, updates=50), [3.0, 5.0])
        >>> progress.show(SimpleNamespace(env_step=300, updates=90), [3.0, 5.0])
        >>> progress.close()
        >>> lines = stream.getvalue().splitlines()
        >>> len(lines), lines[0].startswith("train 200/1,000 env steps (20%), ")
        (2, True)
        >>> lines[0].endswith("score 5, mean10 4"), lines[1].split(" env steps")[0]
        (True, 'train 300/1,000')
        >>> "\\r" in stream.getvalue()
        False
    """

    def __init__(
        self,
        config: _Config,
        initial: int,
        enabled: bool,
        world_size: int,
        *,
        stream: Any = None,
        terminal: bool | None = None,
        interval: float = LINE_EVERY,
    ) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._terminal = is_terminal(self._stream) if terminal is None else terminal
        self._enabled = enabled
        self._total = config.steps
        batch_steps = config.batch_size * config.batch_length
        self._updates_per_step = config.train_ratio / batch_steps / world_size
        self._interval = interval
        self._bar: tqdm | None = None
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=16)
        self._shown = 0.0
        self._started = time.perf_counter()
        self._line: tuple[float, int] | None = None  # the last plain line: when, updates
        self._last: tuple[int, int, list[float]] | None = None  # the last show()'s values
        self._printed = False  # whether the last show() was written as a line
        if enabled and self._terminal:
            self._guard(self._open, initial)

    # ------------------------------------------------------------------ terminal
    def _open(self, initial: int) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        self._bar = tqdm(
            total=self._total,
            initial=initial,
            desc="prefill",
            unit="step",
            unit_scale=True,
            ncols=max(min(width, 120), 40),
            bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
            mininterval=0.5,
            file=self._stream,
        )

    def _guard(self, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except (OSError, ValueError):  # the terminal or pipe is gone: no more progress
            if self._bar is not None:
                self._bar.disable = True
            self._bar = None
            self._enabled = False

    def show(self, state: _Counters, scores: Sequence[float]) -> None:
        """Advance to ``state.env_step``; ``scores``: the recent episodes' scores, last last."""
        if not self._enabled:
            return
        if self._bar is not None:
            self._guard(self._draw, state, scores)
        elif not self._terminal:
            self._guard(self._plain, state.env_step, state.updates, list(scores))

    def _left(self, step: int, rate: float) -> float:
        return (self._total - step) * self._updates_per_step / rate

    def _scores(self, scores: Sequence[float]) -> str:
        recent = list(scores)[-10:]
        score = f"{recent[-1]:.4g}" if recent else "-"
        return f"score {score}, mean10 {_mean(recent):.4g}"

    def _draw(self, state: _Counters, scores: Sequence[float]) -> None:
        bar = self._bar
        assert bar is not None
        now = time.perf_counter()
        self._samples.append((now, state.env_step, state.updates))
        bar.update(state.env_step - bar.n)
        if now - self._shown < 0.5:
            return
        self._shown = now
        first, _, first_updates = self._samples[0]
        rate = (state.updates - first_updates) / max(now - first, 1e-9)
        fields = []
        if state.updates:
            bar.set_description_str("train", refresh=False)
            if rate > 0:
                fields.append(f"left {clock(self._left(state.env_step, rate))}")
            fields.append(f"{rate:.2f} upd/s")
        fields.append(self._scores(scores).replace(",", ""))
        bar.set_postfix_str(", ".join(fields), refresh=True)

    # --------------------------------------------------------------------- plain
    def _plain(self, step: int, updates: int, scores: list[float]) -> None:
        now = time.perf_counter()
        self._last, self._printed = (step, updates, scores), False
        since = self._line[0] if self._line is not None else self._started
        training = self._line is not None and self._line[1] > 0
        if now - since >= self._interval or (updates and not training):
            self._write_line(now, step, updates, scores)

    def _write_line(self, now: float, step: int, updates: int, scores: list[float]) -> None:
        since, before = self._line if self._line is not None else (self._started, 0)
        rate = (updates - before) / max(now - since, 1e-9)
        fields = [
            f"{'train' if updates else 'prefill'} {step:,}/{self._total:,} env steps "
            f"({100 * step / max(self._total, 1):.0f}%)",
            f"{clock(now - self._started)} elapsed",
        ]
        if updates:
            if rate > 0:
                fields.append(f"left {clock(self._left(step, rate))}")
            fields.append(f"{rate:.2f} upd/s")
        fields.append(self._scores(scores))
        self._line = (now, updates)
        self._printed = True
        print(", ".join(fields), file=self._stream, flush=True)

    # -------------------------------------------------------------------- common
    def note(self, text: str) -> None:
        """A line on the stream, above the bar."""
        if self._bar is not None:
            self._guard(tqdm.write, text, self._stream)
        else:
            self._guard(self._print, text)

    def _print(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def close(self) -> None:
        """Take the bar down, or write the last plain line (the run's final counters)."""
        if self._bar is not None:
            self._guard(self._bar.close)
            self._bar = None
        elif self._enabled and not self._terminal and self._last and not self._printed:
            step, updates, scores = self._last
            self._guard(self._write_line, time.perf_counter(), step, updates, scores)
        self._enabled = False


@dataclass
class Summary:
    """How a run went."""

    env_step: int
    updates: int
    wall_time: float
    mean_score: float
    """Mean score of the last 10 training episodes (NaN before any ended)."""
    stopped_by: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped the run early, or None."""
    curve: Path | None = None
    """The learning curve written at the end (None before any episode ended)."""
    update: str = ""
    """How the update ran, and why: e.g. ``compiled (auto: 3125 updates planned, >= 1000),
    float32 (--precision float32)``."""
    evaluation: tuple[int, list[float]] | None = None
    """The run's last evaluation (``eval.csv``): its env step and its episodes' scores;
    None if it made none."""
    evaluation_policy: str | None = None
    """How the last evaluation chose its actions, ``greedy`` or ``sampled``; None if
    ``eval.csv`` does not say (logged before it did: the line takes the config's)."""

    @classmethod
    def of_run(
        cls,
        logdir: Path,
        config: Config,
        state: RunState,
        stopped_by: int | None,
        update: str,
        main: bool = True,
    ) -> Summary:
        """The summary of the run in ``logdir`` at ``state``; rank 0 (``main``) plots its
        learning curve and reads its last evaluation, the other ranks leave them None."""
        curve, evaluation, evaluation_policy = None, None, None
        if main:
            title = f"{config.env}, seed {config.seed}, preset {config.preset}"
            curve = plot_curve(logdir, title)
            evaluations = read_evaluations(logdir)
            if evaluations:
                evaluation = max(evaluations.items())
                evaluation_policy = read_evaluation_policies(logdir).get(evaluation[0])
        return cls(
            state.env_step,
            state.updates,
            state.wall_time,
            state.mean_score,
            stopped_by,
            curve,
            update,
            evaluation,
            evaluation_policy,
        )

    def line(self, config: Config) -> str:
        speed = self.env_step / max(self.wall_time, 1e-9)
        rate = self.updates / max(self.wall_time, 1e-9)
        evaluated = ""
        if self.evaluation is not None:
            # Training episodes sample their actions; evaluations take the likeliest
            # unless config.eval_sample: each score names its policy.
            step, scores = self.evaluation
            policy = self.evaluation_policy or policy_name(config.eval_sample)
            evaluated = (
                f"; {policy} evaluation at {step} env steps {sum(scores) / len(scores):.1f} "
                f"(mean of {len(scores)} episodes)"
            )
        return (
            f"{config.env} seed {config.seed}, preset {config.preset}: {self.env_step} env "
            f"steps and {self.updates} updates in {self.wall_time:.0f} s ({speed:.1f} env "
            f"steps/s, {rate:.2f} updates/s); mean score of the last 10 training episodes "
            f"(sampled) {self.mean_score:.1f}{evaluated}; update {self.update}"
        )
