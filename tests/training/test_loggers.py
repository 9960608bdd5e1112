"""``--logger``: TensorBoard, W&B (offline), MLflow (a local file store) and TorchRL's CSV
files each receive the rows of ``metrics.csv``; a resumed run continues the same W&B and
MLflow run; ``metrics.jsonl`` holds the rows of ``metrics.csv``; bad values are refused
before anything is written. No network: W&B runs offline, MLflow on files.

Each resume here continues from ``checkpoint.prev.pt``, as after a kill between two
checkpoints: the run reached step 64, its checkpoint says 32, so the rows at 48 and 64
are logged twice, once by each process."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import sys
from pathlib import Path

import pytest
from tiny import TINY_RUN

from torchdreamer.cli import main
from torchdreamer.training import Config
from torchdreamer.training.checkpoint import CHECKPOINT, PREVIOUS, load_checkpoint
from torchdreamer.training.loop import train

TINY = dict(
    steps=64,
    **TINY_RUN,
    log_every=16,
    checkpoint_every=32,
    eval_every=0,
)
RESUME_STEP = 32


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def numbers(row):
    """A ``metrics.csv`` row's finite values as floats, by name (the step left out)."""
    values = {key: float(value) for key, value in row.items() if key != "env_step" and value}
    return {key: value for key, value in values.items() if math.isfinite(value)}


def steps_and_numbers(rows):
    return [(int(row["env_step"]), numbers(row)) for row in rows]


def column(rows, name):
    """``(env_step, value)`` of the rows of ``metrics.csv`` that hold ``name``."""
    return [(step, values[name]) for step, values in steps_and_numbers(rows) if name in values]


def interrupted_and_resumed(config, logdir):
    """Train ``config`` to its end, go back to its previous checkpoint (step 32) as a kill
    after it would, and resume; the ``metrics.csv`` rows of the first process."""
    train(config, logdir, progress=False)
    first = read_csv(logdir / "metrics.csv")
    os.replace(logdir / PREVIOUS, logdir / CHECKPOINT)
    assert load_checkpoint(logdir)["counters"]["env_step"] == RESUME_STEP
    train(config, logdir, resume=True, progress=False)
    return first


def expected_segments(first, final):
    """What an append-only logger holds: every row the first process sent, then the rows
    the resumed one sent (those after the checkpoint)."""
    resumed = [row for row in final if int(row["env_step"]) > RESUME_STEP]
    return steps_and_numbers(first), steps_and_numbers(resumed)


def test_metrics_go_to_tensorboard_jsonl_and_torchrl_csv_once_per_step_after_a_resume(
    tmp_path,
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "run"
    config = Config(**{**TINY, "eval_every": 32}, eval_episodes=1, logger="tensorboard,csv")
    first = interrupted_and_resumed(config, logdir)
    rows = read_csv(logdir / "metrics.csv")
    steps = [int(row["env_step"]) for row in rows]
    assert steps == [16, 32, 48, 64] and [int(r["env_step"]) for r in first] == steps
    assert rows[:2] == first[:2] and rows[2:] != first[2:]  # 48 and 64 were logged again

    # metrics.jsonl: the same rows, one JSON object a line, as the official logger writes.
    lines = (logdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows, strict=True):
        record = json.loads(line)
        assert list(record)[0] == "step" and record["step"] == int(row["env_step"])
        assert set(record) - {"step"} == {key for key in row if key != "env_step" and row[key]}
        assert {key: value for key, value in record.items() if key != "step"} == pytest.approx(
            {key: float(value) for key, value in row.items() if key != "env_step" and value},
            nan_ok=True,
        )

    events = EventAccumulator(str(logdir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = set(events.Tags()["scalars"])
    names = {name for _, values in steps_and_numbers(rows) for name in values}
    assert names <= logged
    for name in names:
        expected = column(rows, name)
        scalars = [(event.step, event.value) for event in events.Scalars(name)]
        assert [step for step, _ in scalars] == [step for step, _ in expected], name
        assert [value for _, value in scalars] == pytest.approx(
            [value for _, value in expected], rel=1e-6
        ), name
    episodes = read_csv(logdir / "episodes.csv")
    scores = [(event.step, event.value) for event in events.Scalars("episode/score")]
    assert scores == [(int(e["env_step"]), float(e["score"])) for e in episodes]

    # The evaluation GIFs, in a folder of their own: the one at 64 once, the resumed run's.
    videos = EventAccumulator(str(logdir / "tensorboard" / "videos"), size_guidance={"images": 0})
    videos.Reload()
    (image,) = [image for image in videos.Images("eval/video") if image.step == 64]
    assert [image.step for image in videos.Images("eval/video")] == [32, 64]
    assert image.encoded_image_string == (logdir / "videos" / "eval_64.gif").read_bytes()

    # TorchRL's CSVLogger: a file per metric, "step,value" lines, cut back on resume too.
    for name in names:
        lines = (logdir / "csv" / "scalars" / f"{name}.csv").read_text().splitlines()
        expected = column(rows, name)
        got = [(int(step), float(value)) for step, value in (line.split(",") for line in lines)]
        assert got == pytest.approx(expected), name


# ------------------------------------------------------------------------------ W&B
BLOCK = 32 * 1024  # the record log's block size (LevelDB's log format)


def wandb_records(path):
    """The records of an offline W&B run's ``run-ID.wandb`` file, decoded.

    The file is W&B's header (``:W&B``, a 2-byte magic, a version byte), then LevelDB's
    log format: 32 KiB blocks of chunks, each with a 7-byte header (checksum, length,
    type: 1 whole, 2 first, 3 middle, 4 last); each record is a ``Record`` protobuf.
    """
    from wandb.proto.wandb_internal_pb2 import Record

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    position, pending = 7, b""
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a header: padding
            position += BLOCK - position % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:  # zeros: the rest of the block is empty
            position += -position % BLOCK
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            yield record


def wandb_run(folder):
    """The run id and the history rows of one offline run folder."""
    (path,) = folder.glob("run-*.wandb")
    run_id, rows = None, []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return run_id, rows


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, its files in tmp_path, no telemetry, no console capture; its
    service process stopped at the end."""
    import wandb

    folder = tmp_path / "wandb_home"
    for variable, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": folder,
        "WANDB_CACHE_DIR": folder / "cache",
        "WANDB_CONFIG_DIR": folder / "config",
        "WANDB_DATA_DIR": folder / "data",
        "WANDB_ARTIFACT_DIR": folder / "artifacts",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_MACHINE_INFO": "true",
    }.items():
        Path(folder).mkdir(exist_ok=True)
        monkeypatch.setenv(variable, str(value))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    try:
        yield folder
    finally:
        wandb.teardown()


def test_wandb_offline_gets_the_csv_rows_and_a_resume_continues_its_run(
    tmp_path, offline_wandb, monkeypatch
):
    logdir = tmp_path / "run"
    config = Config(**{**TINY, "eval_every": 32}, eval_episodes=1, logger="wandb")
    first = interrupted_and_resumed(config, logdir)
    final = read_csv(logdir / "metrics.csv")
    state = json.loads((logdir / "wandb.json").read_text())
    assert state["project"] == "torchdreamer"

    folders = sorted((offline_wandb / "wandb").glob(f"offline-run-*-{state['id']}"))
    assert len(folders) == 2, "one folder per process, both of the same run"
    runs = [wandb_run(folder) for folder in folders]
    assert [run_id for run_id, _ in runs] == [state["id"], state["id"]]

    def metric_rows(rows):
        return [
            (row["step"], {k: v for k, v in row.items() if not k.startswith("_") and k != "step"})
            for row in rows
            if "step" in row
        ]

    before, after = expected_segments(first, final)
    for (_, rows), expected in zip(runs, (before, after), strict=True):
        got = metric_rows(rows)
        assert [step for step, _ in got] == [step for step, _ in expected]
        for (_, values), (_, reference) in zip(got, expected, strict=True):
            assert values == pytest.approx(reference, rel=1e-12)
    # The evaluations' scores and GIFs (W&B keeps its own copy of each file).
    for (_, rows), steps in zip(runs, ([32, 64], [64]), strict=True):
        assert [row["eval/step"] for row in rows if "eval/score" in row] == steps
        videos = [row for row in rows if row.get("eval/video/_type") == "video-file"]
        assert [row["eval/step"] for row in videos] == steps
    for folder, (_, rows) in zip(folders, runs, strict=True):
        for row in rows:
            if "eval/video/path" in row:
                assert (folder / "files" / row["eval/video/path"]).stat().st_size > 0

    # A resume that would log to another project is refused before it writes.
    monkeypatch.setenv("WANDB_PROJECT", "another")
    with pytest.raises(ValueError, match="logs to W&B project 'torchdreamer'.*WANDB_PROJECT"):
        train(config, logdir, resume=True, progress=False)


# --------------------------------------------------------------------------- MLflow
def test_mlflow_file_store_gets_the_csv_rows_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    for variable in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_RUN_ID",
        "MLFLOW_ALLOW_FILE_STORE",
    ):
        monkeypatch.delenv(variable, raising=False)  # restored after the test
    logdir = tmp_path / "run"
    config = Config(**{**TINY, "eval_every": 32}, eval_episodes=1, logger="tensorboard,mlflow")
    first = interrupted_and_resumed(config, logdir)
    final = read_csv(logdir / "metrics.csv")
    state = json.loads((logdir / "mlflow.json").read_text())
    assert state["experiment"] == "torchdreamer" and state["tracking_uri"] is None

    uri = (logdir / "mlruns").resolve().as_uri()  # the file store in the run directory
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("torchdreamer")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == state["run_id"]
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["logger"] == "tensorboard,mlflow"

    before, after = expected_segments(first, final)
    names = {name for _, values in before + after for name in values}
    groups = {"episode/score", "episode/length", "eval/score", "eval/length"}
    assert set(run.data.metrics) == names | groups
    for name in names:
        history = client.get_metric_history(run.info.run_id, name)
        got = [(m.step, m.value) for m in sorted(history, key=lambda m: (m.timestamp, m.step))]
        expected = [(step, values[name]) for step, values in before + after if name in values]
        assert [step for step, _ in got] == [step for step, _ in expected], name
        assert [value for _, value in got] == pytest.approx(
            [value for _, value in expected], rel=1e-12
        ), name
    evaluations = client.get_metric_history(run.info.run_id, "eval/score")
    assert sorted(m.step for m in evaluations) == [32, 64, 64]
    videos = [item.path for item in client.list_artifacts(run.info.run_id, "videos")]
    assert videos == ["videos/eval_32.gif", "videos/eval_64.gif"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "elsewhere").as_uri())
    with pytest.raises(ValueError, match="MLflow tracking URI .*MLFLOW_TRACKING_URI"):
        train(config, logdir, resume=True, progress=False)


# ----------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "tensorbord",
            "logger: unknown name 'tensorbord' in 'tensorbord'; it must be a "
            "comma-separated list of ['tensorboard', 'wandb', 'mlflow', 'csv']",
        ),
        ("csv,tensorboard,csv", "logger: 'csv' is named twice in 'csv,tensorboard,csv'"),
        ("tensorboard,", "logger: unknown name '' in 'tensorboard,'"),
        ("", "logger must be a comma-separated list of"),
    ],
)
def test_a_bad_logger_value_is_named_and_nothing_is_written(tmp_path, capsys, value, message):
    logdir = tmp_path / "run"
    code = main(["train", "--logger", value, "--logdir", str(logdir), "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not logdir.exists()


def test_a_logger_whose_package_is_missing_names_the_pip_command(tmp_path, monkeypatch):
    # None in sys.modules is how Python marks a module that cannot be imported.
    monkeypatch.setitem(sys.modules, "wandb", None)
    logdir = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        train(Config(**TINY, logger="tensorboard,wandb"), logdir, progress=False)
    assert str(error.value) == (
        "--logger wandb needs the wandb package, which is not installed: "
        "pip install 'torchdreamer[wandb]'"
    )
    assert not logdir.exists()


def test_a_logger_that_cannot_start_is_named_and_the_run_resumes_once_it_can(tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")  # MLflow refuses its file store
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    logdir = tmp_path / "run"
    config = Config(**{**TINY, "steps": 32}, logger="mlflow")
    with pytest.raises(ValueError) as error:
        train(config, logdir, progress=False)
    message = str(error.value)
    assert message.startswith("--logger mlflow could not start (MlflowException: ")
    assert message.endswith(
        f"once that is fixed, `torchdreamer train --resume {logdir}` continues the run."
    )
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    train(config, logdir, resume=True, progress=False)
    run_id = json.loads((logdir / "mlflow.json").read_text())["run_id"]
    from mlflow import MlflowClient

    history = MlflowClient(store.as_uri()).get_metric_history(run_id, "updates")
    assert [m.step for m in history] == [
        int(r["env_step"]) for r in read_csv(logdir / "metrics.csv")
    ]


def test_the_logger_may_change_when_a_run_is_resumed(tmp_path):
    logdir = tmp_path / "run"
    train(Config(**{**TINY, "steps": 32}), logdir, progress=False)
    train(Config(**TINY, logger="csv"), logdir, resume=True, progress=False)
    assert json.loads((logdir / "config.json").read_text())["logger"] == "csv"
    lines = (logdir / "csv" / "scalars" / "updates.csv").read_text().split()
    assert [line.split(",")[0] for line in lines] == ["48", "64"]
