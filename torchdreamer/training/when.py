"""When to act in a loop counted in steps: updates due at a ratio, events every N steps.

:class:`Ratio` and :class:`Every` follow the schedules of the official DreamerV3
training loop (``elements.when``); :class:`DreamerV3UpdateRatio` is the same
ratio under TorchRL's name and interface
(``torchrl.trainers.algorithms.DreamerV3UpdateRatio``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DreamerV3UpdateRatio", "Every", "Ratio"]


class Ratio:
    """How many updates are due for ``ratio`` updates per step.

    Called with the cumulative step count, it returns the number of updates
    owed since the previous call, keeping the fractional remainder for the
    next one, so that over a run the updates add up to ``ratio`` times the
    steps. The first call returns 1 and starts the count. ``ratio == 0``
    never updates; ``ratio < 0`` updates once per call.

    Args:
        ratio: Updates per step (e.g. ``train_ratio / (batch_size * batch_length)``).

    Examples:
        >>> from torchdreamer.training.when import Ratio
        >>> ratio = Ratio(0.5)
        >>> [ratio(step) for step in (64, 68, 69, 70, 71)]
        [1, 2, 0, 1, 0]
        >>> saved = ratio.state_dict()
        >>> ratio(81), ratio.state_dict()  # half an update stays owed
        (5, {'ratio': 0.5, 'previous': 80.0})
        >>> ratio.load_state_dict(saved)
        >>> ratio(81)
        5
        >>> ratio.reset(100)  # owe nothing for the steps up to 100
        >>> ratio(104)
        2

    """

    def __init__(self, ratio: float) -> None:
        self.ratio = float(ratio)
        self.previous: float | None = None

    def __call__(self, step: int) -> int:
        if self.ratio == 0:
            return 0
        if self.ratio < 0:
            return 1
        return self._due(step)

    def _due(self, step: float) -> int:
        """The positive-ratio schedule: 1 at the first call, then the whole updates owed."""
        if self.previous is None:
            self.previous = float(step)
            return 1
        repeats = int((step - self.previous) * self.ratio)
        self.previous += repeats / self.ratio
        return repeats

    def reset(self, step: float) -> None:
        """Forget what is owed: count from ``step`` on (the next call owes only later steps)."""
        self.previous = float(step)

    def defer(self, updates: int) -> None:
        """Owe again ``updates`` that a call returned but were not done (a stop cut them).

        Examples:
            >>> from torchdreamer.training.when import Ratio
            >>> ratio = Ratio(0.5)
            >>> ratio(0), ratio(8)
            (1, 4)
            >>> ratio.defer(3)
            >>> ratio(8)
            3

        """
        if self.previous is not None and self.ratio > 0:
            self.previous -= updates / self.ratio

    def state_dict(self) -> dict[str, Any]:
        """The ratio and the step the count has reached (fractional remainder included)."""
        return {"ratio": self.ratio, "previous": self.previous}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ratio = float(state["ratio"])
        self.previous = None if state["previous"] is None else float(state["previous"])


class Every:
    """True once every ``every`` steps, at the first step of each new interval.

    The first call starts the count at the interval holding ``step`` and
    returns ``initial``; later calls return True when ``step`` has reached the
    next multiple of ``every`` (one interval per call). ``every == 0`` never
    triggers; ``every < 0`` triggers at every call.

    Args:
        every: Steps between two triggers.
        initial: What the first call returns.

    Examples:
        >>> from torchdreamer.training.when import Every
        >>> log = Every(40, initial=False)
        >>> [step for step in range(0, 130, 16) if log(step)]
        [48, 80, 128]
        >>> log.state_dict()
        {'every': 40, 'initial': False, 'previous': 120}

    """

    def __init__(self, every: int, initial: bool = True) -> None:
        self.every = int(every)
        self.initial = initial
        self.previous: int | None = None

    def __call__(self, step: int) -> bool:
        step = int(step)
        if self.every < 0:
            return True
        if self.every == 0:
            return False
        if self.previous is None:
            self.previous = step // self.every * self.every
            return self.initial
        if step >= self.previous + self.every:
            self.previous += self.every
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "initial": self.initial, "previous": self.previous}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.every = int(state["every"])
        self.initial = bool(state["initial"])
        self.previous = state["previous"]


class DreamerV3UpdateRatio(Ratio):
    """TorchRL's ``DreamerV3UpdateRatio`` interface on :class:`Ratio`.

    Learner updates per driver record: called with the cumulative record
    count, returns the updates due, 1 at the first call, keeping the
    remainder. Unlike :class:`Ratio`, a non-positive ``ratio`` disables
    updates (TorchRL's rule).

    Args:
        ratio: Learner updates for each driver record.

    Examples:
        >>> from torchdreamer.training.when import DreamerV3UpdateRatio
        >>> schedule = DreamerV3UpdateRatio(0.25)
        >>> schedule(4), schedule(6), schedule(9)
        (1, 0, 1)
        >>> schedule.state_dict()
        {'ratio': 0.25, 'previous': 8.0}
        >>> DreamerV3UpdateRatio(-1.0)(10)
        0

    """

    def __call__(self, record_count: int) -> int:
        if self.ratio <= 0:
            return 0
        return self._due(record_count)

    def reset(self, record_count: int) -> None:
        """Discard owed updates and count the records after ``record_count``."""
        super().reset(record_count)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
