"""Run logs: metrics and episodes as CSV, TensorBoard scalars, the learning-curve PNG."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from torchdreamer.training.runner import Episode

__all__ = ["RunLog", "plot_curve", "read_episodes", "read_rows"]

EPISODES = "episodes.csv"
METRICS = "metrics.csv"


def _truncate(path: Path, env_step: int, columns: tuple[str, ...] = ()) -> None:
    """Drop rows logged after ``env_step``: a resumed run re-does those steps.

    ``columns`` missing from the header (a log written by an older version) are
    added, empty in the old rows.
    """
    if not path.exists():
        return
    with open(path, newline="") as file:
        fields = next(csv.reader(file), None)
    if not fields:
        return
    fields += [column for column in columns if column not in fields]
    rows = read_rows(path)
    _rewrite(path, fields, [row for row in rows if int(row["env_step"]) <= env_step])


def _rewrite(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    """Replace the CSV at ``path`` atomically: a kill meanwhile leaves the old file."""
    partial = path.with_suffix(".csv.partial")
    with open(partial, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


class RunLog:
    """Appends to ``metrics.csv`` and ``episodes.csv`` and writes TensorBoard events.

    Args:
        logdir: The run's directory.
        resume_step: When resuming, the checkpoint's env step: rows after it
            (written by the interrupted run after its last checkpoint) are
            removed, from the CSVs and from TensorBoard, so no step appears twice;
            the rows at ``resume_step`` itself stay in both.

    Examples:
        >>> import tempfile
        >>> from torchdreamer.training.logs import RunLog, read_episodes, read_rows
        >>> from torchdreamer.training.runner import Episode
        >>> logdir = tempfile.mkdtemp()
        >>> log = RunLog(logdir)
        >>> log.episode(Episode(env_step=16, score=21.0, length=21, env=3))
        >>> log.metrics(16, {"updates": 2, "loss": 3.5})
        >>> log.close()
        >>> read_episodes(logdir)
        [Episode(env_step=16, score=21.0, length=21, env=3)]
        >>> read_rows(f"{logdir}/metrics.csv")
        [{'env_step': '16', 'updates': '2', 'loss': '3.5'}]
    """

    def __init__(self, logdir: Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        if resume_step is not None:
            _truncate(self.logdir / METRICS, resume_step)
            _truncate(self.logdir / EPISODES, resume_step, columns=("env",))
        # TensorBoard drops the events at or after purge_step: those after resume_step.
        self.writer = SummaryWriter(
            str(self.logdir / "tensorboard"),
            purge_step=resume_step + 1 if resume_step is not None else None,
        )
        self._metric_fields: list[str] | None = None

    def episode(self, episode: Episode) -> None:
        path = self.logdir / EPISODES
        new = not path.exists()
        with open(path, "a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(["env_step", "score", "length", "env"])
            writer.writerow([episode.env_step, f"{episode.score:.6g}", episode.length, episode.env])
        self.writer.add_scalar("episode/score", episode.score, episode.env_step)
        self.writer.add_scalar("episode/length", episode.length, episode.env_step)

    def metrics(self, env_step: int, values: dict[str, float]) -> None:
        path = self.logdir / METRICS
        row = {"env_step": env_step, **values}
        if self._metric_fields is None and path.exists():
            with open(path, newline="") as file:
                self._metric_fields = next(csv.reader(file), None)
        fields = self._metric_fields or []
        if set(row) - set(fields):
            # New columns (the loss terms appear with the first update): rewrite
            # the file once with the wider header; earlier rows leave them empty.
            fields = fields + [key for key in row if key not in fields]
            _rewrite(path, fields, read_rows(path))
            self._metric_fields = fields
        with open(path, "a", newline="") as file:
            csv.DictWriter(file, fieldnames=fields, restval="").writerow(row)
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, env_step)

    def flush(self) -> None:
        """Put every TensorBoard event on disk (before a checkpoint, so a kill loses none)."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV log (none if it does not exist)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def read_episodes(logdir: Path) -> list[Episode]:
    path = Path(logdir) / EPISODES
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return [
            Episode(
                int(row["env_step"]),
                float(row["score"]),
                int(row["length"]),
                int(row.get("env") or 0),  # logs written before the column existed
            )
            for row in csv.DictReader(file)
        ]


def plot_curve(logdir: Path, title: str) -> Path | None:
    """``learning_curve.png``: each episode's score and the mean of the last 10."""
    episodes = read_episodes(logdir)
    if not episodes:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e.env_step for e in episodes]
    scores = [e.score for e in episodes]
    mean10 = [
        sum(scores[max(0, i - 9) : i + 1]) / len(scores[max(0, i - 9) : i + 1])
        for i in range(len(scores))
    ]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(steps, scores, ".", alpha=0.3, label="episode score")
    axes.plot(steps, mean10, label="mean of the last 10")
    axes.set_xlabel("environment steps")
    axes.set_ylabel("score")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    path = Path(logdir) / "learning_curve.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
