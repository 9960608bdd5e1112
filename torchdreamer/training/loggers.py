"""The loggers a run writes to, chosen by ``Config.logger``: TorchRL's loggers
(``torchrl.record.loggers``) for TensorBoard, W&B, MLflow and CSV, used through their
public methods, with what continuing a run needs around each. Videos are the GIFs of
``LOGDIR/videos``, logged as they are (each ``video`` method says why and how).

* ``tensorboard``: ``LOGDIR/tensorboard`` (evaluation GIFs in ``LOGDIR/tensorboard/videos``).
  A resumed run drops the events the interrupted run wrote after its checkpoint.
* ``wandb``: a W&B run in project ``$WANDB_PROJECT`` (else ``torchdreamer``), named after
  the run directory; its files go to ``$WANDB_DIR`` (else ``LOGDIR``). Its id is kept in
  ``LOGDIR/wandb.json``: a resumed run continues it (``resume="allow"``).
* ``mlflow``: an MLflow run named after the run directory, in experiment
  ``$MLFLOW_EXPERIMENT_NAME`` (else ``torchdreamer``), tracked at ``$MLFLOW_TRACKING_URI``
  (else a file store in ``LOGDIR/mlruns``). Its id is kept in ``LOGDIR/mlflow.json``: a
  resumed run continues it.
* ``csv``: TorchRL's CSV files, one per metric, in ``LOGDIR/csv/scalars``; a resumed run
  drops their rows after its checkpoint.

W&B and MLflow keep every row they were sent: rows that the interrupted run logged after
its checkpoint stay there, and the resumed run logs those steps again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchdreamer.training.config import LOGGERS, _word_list

__all__ = ["MLFLOW_STATE", "PACKAGES", "WANDB_STATE", "check_loggers", "open_loggers"]

#: For each logger: the module it needs, and the command that installs it.
PACKAGES: dict[str, tuple[str | None, str | None]] = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install 'torchdreamer[wandb]'"),
    "mlflow": ("mlflow", "pip install 'torchdreamer[mlflow]'"),
    "csv": (None, None),
}

#: The W&B run of a run directory: ``{"id": ..., "project": ...}``.
WANDB_STATE = "wandb.json"
#: The MLflow run of a run directory: ``{"run_id": ..., "experiment": ...,
#: "tracking_uri": ...}`` (``null``: the file store in the run directory).
MLFLOW_STATE = "mlflow.json"

TENSORBOARD = "tensorboard"
CSV = "csv"
MLRUNS = "mlruns"


def check_loggers(loggers: str, logdir: Path | None = None, resume: bool = False) -> list[str]:
    """The logger names in ``loggers``; raises ``ValueError`` for an unknown or repeated
    name, a missing package (naming the pip command), or, when resuming ``logdir``, an
    environment variable naming another W&B project or MLflow store than the run's.

    Nothing is written: a run checks this before its first write.

    Examples:
        >>> from torchdreamer.training.loggers import check_loggers
        >>> check_loggers("tensorboard, csv")
        ['tensorboard', 'csv']
        >>> check_loggers("tensorboard,tensorboard")
        Traceback (most recent call last):
        ...
        ValueError: logger: 'tensorboard' is named twice in 'tensorboard,tensorboard'; name it once.
    """
    names = _word_list("logger", loggers, LOGGERS).split(",")
    for name in names:
        module, command = PACKAGES[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise ValueError(
                f"--logger {name} needs the {module} package, which is not installed: {command}"
            )
    if resume and logdir is not None:
        if "wandb" in names:
            state = _load(Path(logdir) / WANDB_STATE)
            if state is not None:
                _same(state["project"], "WANDB_PROJECT", "W&B project", logdir)
        if "mlflow" in names:
            state = _load(Path(logdir) / MLFLOW_STATE)
            if state is not None:
                _same(state["experiment"], "MLFLOW_EXPERIMENT_NAME", "MLflow experiment", logdir)
                uri = state["tracking_uri"] or _local_store(Path(logdir))
                _same(uri, "MLFLOW_TRACKING_URI", "MLflow tracking URI", logdir)
    return names


def _same(stored: str, variable: str, what: str, logdir: Path) -> None:
    """Refuse a set environment ``variable`` that names another value than the run's."""
    given = os.environ.get(variable)
    if given and given != stored:
        raise ValueError(
            f"the run in {logdir} logs to {what} {stored!r}, but {variable} is {given!r}: "
            f"unset {variable} (or set it to {stored!r}) to continue that run."
        )


def _load(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); remove it to log to a new run there."
        ) from None


def _store(path: Path, state: dict[str, Any]) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, path)


def _local_store(logdir: Path) -> str:
    return (Path(logdir) / MLRUNS).resolve().as_uri()


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored afterwards."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _step_key(tag: str) -> str:
    """The step metric TorchRL's W&B logger gives ``tag``: ``eval/video`` -> ``eval/step``."""
    group, slash, _ = tag.rpartition("/")
    return f"{group}{slash}step"


class _Backend:
    """One TorchRL logger (:attr:`logger`) and what a run needs around it."""

    logger: Any

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.logger.log_metrics(values, step=step)

    def video(self, tag: str, gif: Path, step: int) -> None:
        """The GIF at ``gif`` (already in ``LOGDIR/videos``) under ``tag`` at ``step``."""

    def flush(self) -> None:
        self.logger.flush()

    def close(self) -> None:
        self.logger.close()


class _TensorBoard(_Backend):
    def __init__(self, logdir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torchrl.record.loggers import TensorboardLogger

        self.logger = TensorboardLogger(exp_name=TENSORBOARD, log_dir=str(logdir))
        self.purge_step = None if resume_step is None else resume_step + 1
        if self.purge_step is not None:
            # TensorBoard drops the events at or after a writer's purge_step: those the
            # interrupted run wrote after its checkpoint. TensorboardLogger takes no
            # purge_step, and its experiment is a SummaryWriter: one that has it takes
            # the place of the first, whose event file stays, empty.
            self.logger.experiment.close()
            self.logger.experiment = SummaryWriter(self.logger.log_dir, purge_step=self.purge_step)
        self.videos = Path(self.logger.log_dir) / "videos"
        self._video_writer = None
        if self.purge_step is not None and self.videos.exists():
            self._videos()  # its purge event, even if this run writes no video

    def _videos(self) -> Any:
        """The event writer of ``tensorboard/videos``, made on first use."""
        if self._video_writer is None:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog
            from torch.utils.tensorboard.writer import FileWriter

            self._video_writer = FileWriter(str(self.videos))
            if self.purge_step is not None:
                start = SessionLog(status=SessionLog.START)
                self._video_writer.add_event(Event(step=self.purge_step, session_log=start))
        return self._video_writer

    def video(self, tag: str, gif: Path, step: int) -> None:
        # TensorboardLogger.log_video calls SummaryWriter.add_video, which encodes the
        # frames with moviepy's old 1.x API (moviepy.editor; 2.x fails there), and 1.x
        # pins decorator<5 and imports pygame, IPython and matplotlib. TensorBoard shows
        # a GIF image summary as a video: the GIF already written is logged as one, by
        # TensorBoard's public event writer, in a folder of its own (TensorBoard shows it
        # as the run ".../tensorboard/videos"), so that the two writers' purges on resume
        # never meet in one folder.
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        with Image.open(gif) as image:
            width, height = image.size
        encoded = Summary.Image(
            height=height, width=width, colorspace=3, encoded_image_string=gif.read_bytes()
        )
        summary = Summary(value=[Summary.Value(tag=tag, image=encoded)])
        self._videos().add_summary(summary, step)

    def flush(self) -> None:
        super().flush()
        if self._video_writer is not None:
            self._video_writer.flush()

    def close(self) -> None:
        super().close()
        if self._video_writer is not None:
            self._video_writer.close()


class _WandB(_Backend):
    def __init__(self, logdir: Path, resume_step: int | None, hparams: dict[str, Any]) -> None:
        from torchrl.record.loggers import WandbLogger

        path = logdir / WANDB_STATE
        state = _load(path) if resume_step is not None else None
        if state is None:
            project = os.environ.get("WANDB_PROJECT") or "torchdreamer"
            state = {"id": uuid.uuid4().hex[:12], "project": project}
            _store(path, state)
        self.logger = WandbLogger(
            exp_name=logdir.resolve().name,
            save_dir=None if os.environ.get("WANDB_DIR") else str(logdir),
            id=state["id"],
            project=state["project"],
            resume="allow",
            log_env_packages=False,
        )
        self.logger.log_hparams(hparams)

    def video(self, tag: str, gif: Path, step: int) -> None:
        # TorchRL's WandbLogger.log_video needs moviepy (see _TensorBoard.video); W&B
        # takes the GIF file as it is. Its step goes with it as TorchRL's logger does
        # for the scalars of the same group (``eval/step``).
        import wandb

        run = self.logger.experiment
        run.define_metric(tag, step_metric=_step_key(tag))
        run.log({tag: wandb.Video(str(gif)), _step_key(tag): step})


class _MLflow(_Backend):
    def __init__(self, logdir: Path, resume_step: int | None, hparams: dict[str, Any]) -> None:
        import mlflow
        from mlflow import MlflowClient
        from torchrl.record.loggers import MLFlowLogger

        path = logdir / MLFLOW_STATE
        state = _load(path) if resume_step is not None else None
        new = state is None
        if new:
            state = {
                "run_id": None,
                "experiment": os.environ.get("MLFLOW_EXPERIMENT_NAME") or "torchdreamer",
                "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI") or None,
            }
        uri = state["tracking_uri"] or _local_store(logdir)
        if state["tracking_uri"] is None:
            # MLflow 3.10+ refuses its file store unless this opts in (it recommends a
            # database, which mlflow-skinny cannot open); set MLFLOW_TRACKING_URI to use one.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # MLFLOW_RUN_ID makes mlflow.start_run, which MLFlowLogger calls, continue that run.
        again = {"MLFLOW_RUN_ID": state["run_id"]} if state["run_id"] else {}
        with _environ(again):
            self.logger = MLFlowLogger(exp_name=state["experiment"], tracking_uri=uri)
        self.run_id = self.logger.experiment.info.run_id
        self.client = MlflowClient(uri)
        if new:
            state["run_id"] = self.run_id
            _store(path, state)
            self.client.set_tag(self.run_id, "mlflow.runName", logdir.resolve().name)
            # Parameters cannot change in MLflow: the first start logs them (config.json
            # keeps what a resume changed).
            params = {
                key: value if isinstance(value, str) else json.dumps(value)
                for key, value in hparams.items()
            }
            mlflow.log_params(params, run_id=self.run_id)

    def video(self, tag: str, gif: Path, step: int) -> None:
        # TorchRL's MLFlowLogger.log_video encodes MP4 with torchcodec, which needs FFmpeg's
        # libraries from outside PyPI: the GIF is logged as an artifact as it is.
        self.client.log_artifact(self.run_id, str(gif), artifact_path="videos")

    def close(self) -> None:
        import mlflow

        super().close()
        mlflow.end_run()  # the run MLFlowLogger started: FINISHED, until a resume


class _CSV(_Backend):
    def __init__(self, logdir: Path, resume_step: int | None) -> None:
        from torchrl.record.loggers import CSVLogger

        scalars = logdir / CSV / "scalars"
        if resume_step is not None and scalars.exists():
            for path in sorted(scalars.rglob("*.csv")):
                _truncate_steps(path, resume_step)
        self.logger = CSVLogger(exp_name=CSV, log_dir=str(logdir))

    # No video: CSVLogger saves one as a raw tensor file (tens of MB per evaluation) or as
    # MP4 through torchcodec; LOGDIR/videos holds each GIF beside these files.


def _truncate_steps(path: Path, step: int) -> None:
    """Keep the ``step,value`` lines of a TorchRL CSV file at or before ``step``."""
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and int(line.split(",")[0]) <= step]
    if len(kept) < len(lines):
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(kept))
        os.replace(partial, path)


def open_loggers(
    loggers: str,
    logdir: Path,
    resume_step: int | None = None,
    hparams: dict[str, Any] | None = None,
) -> list[_Backend]:
    """The loggers named in ``loggers`` for the run in ``logdir``; ``resume_step`` (the
    checkpoint's env step, when resuming) continues their runs, ``hparams`` (the config)
    goes to W&B and MLflow."""
    logdir = Path(logdir)
    names = check_loggers(loggers)
    backends: list[_Backend] = []
    try:
        for name in names:
            try:
                if name == "tensorboard":
                    backends.append(_TensorBoard(logdir, resume_step))
                elif name == "wandb":
                    backends.append(_WandB(logdir, resume_step, hparams or {}))
                elif name == "mlflow":
                    backends.append(_MLflow(logdir, resume_step, hparams or {}))
                else:
                    backends.append(_CSV(logdir, resume_step))
            except Exception as error:  # e.g. W&B not logged in, an MLflow server down
                raise ValueError(
                    f"--logger {name} could not start ({type(error).__name__}: {error}); once "
                    f"that is fixed, `torchdreamer train --resume {logdir}` continues the run."
                ) from error
    except BaseException:
        for backend in backends:
            backend.close()
        raise
    return backends
