"""Run logs: metrics, episodes and evaluations as CSV and JSON lines, the loggers
(TensorBoard, W&B, MLflow, CSV: :mod:`torchdreamer.training.loggers`), the learning-curve PNG."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from torchdreamer.training.loggers import check_loggers, open_loggers
from torchdreamer.training.runner import Episode

__all__ = [
    "RunLog",
    "plot_curve",
    "read_episodes",
    "read_evaluation_policies",
    "read_evaluations",
    "read_rows",
    "running_mean",
    "write_gif",
]

EPISODES = "episodes.csv"
METRICS = "metrics.csv"
#: The rows of ``metrics.csv`` as the official DreamerV3 writes them: a JSON object a line.
METRICS_JSONL = "metrics.jsonl"
EVALUATIONS = "eval.csv"
#: Folder of the evaluation GIFs: ``eval_<env step>.gif``, ``dream_<env step>.gif``.
VIDEOS = "videos"


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


def _truncate_jsonl(path: Path, env_step: int) -> None:
    """Drop the lines of ``metrics.jsonl`` whose step is after ``env_step``."""
    if not path.exists():
        return
    with open(path) as file:
        lines = [line for line in file if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= env_step]
    partial = path.with_suffix(".jsonl.partial")
    partial.write_text("".join(kept))
    os.replace(partial, path)


def _rewrite(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    """Replace the CSV at ``path`` atomically: a kill meanwhile leaves the old file."""
    partial = path.with_suffix(".csv.partial")
    with open(partial, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def _append(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """Append ``rows`` to the CSV at ``path``, writing ``header`` first if it is new."""
    new = not path.exists()
    with open(path, "a", newline="") as file:
        writer = csv.writer(file)
        if new:
            writer.writerow(header)
        writer.writerows(rows)


class RunLog:
    """The run's logs: its own files, and the loggers ``loggers`` names.

    Its own files, the run directory's record whatever the loggers: ``metrics.csv``
    and ``metrics.jsonl`` (the same rows; one JSON object a line, ``{"step": ...,
    name: value, ...}``, as the official DreamerV3 writes it), ``episodes.csv``,
    ``eval.csv`` and ``videos/``. The same metrics, episode scores and lengths,
    evaluation scores and videos go to each logger of ``loggers``
    (``tensorboard``, ``wandb``, ``mlflow``, ``csv``: TorchRL's loggers, see
    :mod:`torchdreamer.training.loggers`).

    Args:
        logdir: The run's directory.
        resume_step: When resuming, the checkpoint's env step: rows after it
            (written by the interrupted run after its last checkpoint) are
            removed, from the files and from TensorBoard and TorchRL's CSV files,
            so no step appears twice there; the rows at ``resume_step`` itself
            stay. W&B and MLflow runs are continued (their history keeps what
            they were sent).
        loggers: Comma-separated logger names (``Config.logger``).
        config: The run's config, logged as the W&B run's config and the MLflow
            run's parameters.

    Examples:
        >>> import tempfile
        >>> from torchdreamer.training.logs import RunLog, read_episodes, read_rows
        >>> from torchdreamer.training.runner import Episode
        >>> logdir = tempfile.mkdtemp()
        >>> log = RunLog(logdir, loggers="tensorboard,csv")
        >>> log.episode(Episode(env_step=16, score=21.0, length=21, env=3))
        >>> log.metrics(16, {"updates": 2, "loss": 3.5})
        >>> log.close()
        >>> read_episodes(logdir)
        [Episode(env_step=16, score=21.0, length=21, env=3)]
        >>> read_rows(f"{logdir}/metrics.csv")
        [{'env_step': '16', 'updates': '2', 'loss': '3.5'}]
        >>> print(open(f"{logdir}/metrics.jsonl").read(), end="")
        {"step": 16, "updates": 2.0, "loss": 3.5}
        >>> print(open(f"{logdir}/csv/scalars/loss.csv").read(), end="")
        16,3.5
    """

    check = staticmethod(check_loggers)

    def __init__(
        self,
        logdir: Path,
        resume_step: int | None = None,
        loggers: str = "tensorboard",
        config: Any = None,
    ) -> None:
        self.logdir = Path(logdir)
        if resume_step is not None:
            _truncate(self.logdir / METRICS, resume_step)
            _truncate(self.logdir / EPISODES, resume_step, columns=("env",))
            _truncate(self.logdir / EVALUATIONS, resume_step, columns=("policy",))
            _truncate_jsonl(self.logdir / METRICS_JSONL, resume_step)
        hparams = dataclasses.asdict(config) if config is not None else {}
        self.loggers = open_loggers(loggers, self.logdir, resume_step, hparams)
        self._metric_fields: list[str] | None = None

    def _log(self, step: int, values: dict[str, float]) -> None:
        """``values``, those that are finite numbers, to every logger at ``step``."""
        finite = {
            key: value
            for key, value in values.items()
            if isinstance(value, (int, float)) and math.isfinite(value)
        }
        if finite:
            for logger in self.loggers:
                logger.metrics(step, finite)

    def episode(self, episode: Episode) -> None:
        row = [episode.env_step, f"{episode.score:.6g}", episode.length, episode.env]
        _append(self.logdir / EPISODES, ["env_step", "score", "length", "env"], [row])
        values = {"episode/score": episode.score, "episode/length": episode.length}
        self._log(episode.env_step, values)

    def evaluation(
        self, env_step: int, episodes: list[Episode], frames: list, policy: str
    ) -> Path | None:
        """An evaluation at ``env_step``: a row per episode (its ``policy`` column says how
        the actions were chosen: ``greedy`` or ``sampled``), the mean score and length to
        the loggers, and the GIF of ``frames`` (if any) in ``videos/`` and the loggers."""
        rows = [
            [env_step, index, f"{episode.score:.6g}", episode.length, policy]
            for index, episode in enumerate(episodes)
        ]
        _append(
            self.logdir / EVALUATIONS, ["env_step", "episode", "score", "length", "policy"], rows
        )
        scores = [episode.score for episode in episodes]
        lengths = [episode.length for episode in episodes]
        means = {
            "eval/score": sum(scores) / len(scores),
            "eval/length": sum(lengths) / len(lengths),
        }
        self._log(env_step, means)
        return self.video("eval", frames, env_step, tag="eval/video") if frames else None

    def video(self, name: str, frames: list, env_step: int, *, tag: str) -> Path:
        """``videos/<name>_<env_step>.gif`` of ``frames``, and to the loggers under ``tag``."""
        gif = write_gif(self.logdir / VIDEOS / f"{name}_{env_step}.gif", frames)
        for logger in self.loggers:
            logger.video(tag, gif, env_step)
        return gif

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
        # The official logger's line: the step, then each scalar as a float.
        scalars = {key: float(value) for key, value in values.items()}
        with open(self.logdir / METRICS_JSONL, "a") as file:
            file.write(json.dumps({"step": env_step, **scalars}) + "\n")
        self._log(env_step, values)

    def flush(self) -> None:
        """Put what the loggers hold on disk (before a checkpoint, so a kill loses none)."""
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        """Flush and close every logger (each is closed even if another one fails)."""
        with contextlib.ExitStack() as stack:
            for logger in self.loggers:
                stack.callback(logger.close)


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


def read_evaluations(logdir: Path) -> dict[int, list[float]]:
    """The scores of each evaluation in ``eval.csv``, by env step."""
    evaluations: dict[int, list[float]] = {}
    for row in read_rows(Path(logdir) / EVALUATIONS):
        evaluations.setdefault(int(row["env_step"]), []).append(float(row["score"]))
    return evaluations


def read_evaluation_policies(logdir: Path) -> dict[int, str]:
    """How each evaluation in ``eval.csv`` chose its actions (``greedy`` or ``sampled``),
    by env step; evaluations logged before the ``policy`` column existed are absent."""
    return {
        int(row["env_step"]): row["policy"]
        for row in read_rows(Path(logdir) / EVALUATIONS)
        if row.get("policy")
    }


def running_mean(scores: list[float], window: int = 10) -> list[float]:
    """Each score's mean with the ``window - 1`` before it (fewer at the start).

    Examples:
        >>> from torchdreamer.training.logs import running_mean
        >>> running_mean([1.0, 2.0, 3.0, 4.0], window=2)
        [1.0, 1.5, 2.5, 3.5]
    """
    return [
        sum(scores[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(scores))
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
    mean10 = running_mean(scores)
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(steps, scores, ".", alpha=0.3, label="training episode score (sampled)")
    axes.plot(steps, mean10, label="mean of the last 10")
    evaluations = read_evaluations(logdir)
    if evaluations:
        # Training episodes sample their actions; name how the evaluations chose theirs.
        policies = set(read_evaluation_policies(logdir).values())
        kind = f"{policies.pop()} " if len(policies) == 1 else ""
        axes.plot(
            list(evaluations),
            [sum(s) / len(s) for s in evaluations.values()],
            "o-",
            label=f"{kind}evaluation (mean of {len(next(iter(evaluations.values())))})",
        )
    axes.set_xlabel("environment steps")
    axes.set_ylabel("score")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    path = Path(logdir) / "learning_curve.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_gif(
    path: Path, frames: list[np.ndarray], fps: float = 30.0, largest: int = 256, least: int = 128
) -> Path:
    """Write ``frames`` (``[H, W, C]`` uint8, C = 1 or 3) as a looping GIF at ``path``.

    Frames whose longer side exceeds ``largest`` pixels are shrunk to it (Pillow's box
    filter); frames whose longer side is below ``least`` are enlarged by a whole factor,
    pixels kept sharp. Identical consecutive frames are stored once, for longer.

    Examples:
        >>> import tempfile, imageio.v3 as iio, numpy as np
        >>> from pathlib import Path
        >>> from torchdreamer.training.logs import write_gif
        >>> frames = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(5)]
        >>> path = write_gif(Path(tempfile.mkdtemp()) / "video.gif", frames)
        >>> iio.imread(path).shape  # five frames, enlarged twice
        (5, 128, 128, 3)
    """
    import imageio.v3 as iio
    from PIL import Image

    if not frames:
        raise ValueError("a video needs at least one frame.")
    height, width = frames[0].shape[:2]
    longest = max(height, width)
    if longest > largest:
        size = (round(width * largest / longest), round(height * largest / longest))
        resample = Image.Resampling.BOX
    else:
        factor = max(1, least // longest)
        size, resample = (width * factor, height * factor), Image.Resampling.NEAREST
    images = [
        np.asarray(
            Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame).resize(
                size, resample
            )
        )
        for frame in frames
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(images), duration=1000 / fps, loop=0)
    return path
