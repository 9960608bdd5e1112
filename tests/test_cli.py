"""The CLI under faults and bad input: interrupts (SIGINT inside a long update loop,
SIGTERM, kill -9) and resumes keep one row per step in the CSV and TensorBoard; a
closed output pipe does not cost the final checkpoint; every bad input is one line
on stderr with exit 2 and leaves the log directory as it was; damaged checkpoints
are detected and the previous one named; a second writer is refused by the lock."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from torchdreamer import cli
from torchdreamer.training import Config
from torchdreamer.training.checkpoint import CHECKPOINT, PREVIOUS, load_checkpoint
from torchdreamer.training.loop import train
from torchdreamer.training.run_directory import LOCK

# Eager: these runs are about the loop and the CLI (tests/training/test_compiled.py: compiled runs).
TINY = ["--num-envs", "4", "--batch-size", "4", "--batch-length", "16", "--threads", "1"]
# Train ratio 8, a quarter of the default's updates: what these runs check does not depend
# on how much they train.
TINY += ["--compile", "off", "--train-ratio", "8"]


def command(*args):
    return [sys.executable, "-m", "torchdreamer.cli", *args]


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def metric_steps(logdir):
    path = Path(logdir) / "metrics.csv"
    return [int(r["env_step"]) for r in read_csv(path)] if path.exists() else []


def counters(logdir):
    return load_checkpoint(logdir)["counters"]


def wait_for(predicate, process, what, stall=120.0):
    """Poll ``predicate`` while ``process`` runs; fail if the run's files stop growing
    for ``stall`` seconds (progress, not wall time, bounds the wait)."""
    logdir = process.logdir
    last, since = None, time.monotonic()
    while not predicate():
        if process.poll() is not None:
            pytest.fail(f"the run ended (rc {process.returncode}) before {what}")
        sizes = tuple(sorted((p.name, p.stat().st_size) for p in logdir.glob("*") if p.is_file()))
        if sizes != last:
            last, since = sizes, time.monotonic()
        elif time.monotonic() - since > stall:
            pytest.fail(f"the run made no progress for {stall} s before {what}")
        time.sleep(0.1)


class Run:
    """A ``torchdreamer train`` child process, killed at the end whatever happens."""

    def __init__(self, logdir, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE):
        self.logdir = Path(logdir)
        self.process = subprocess.Popen(command("train", *args), stdout=stdout, stderr=stderr)

    def __getattr__(self, name):
        return getattr(self.process, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def main(*args, capsys):
    """``torchdreamer ARGS`` in this process: (exit code, stdout, stderr)."""
    threads = torch.get_num_threads()
    try:
        code = cli.main(list(args))
    except SystemExit as exit:
        code = exit.code
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(path):
    """Every file under ``path`` with its bytes (what a refused command must not change)."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished run with two checkpoints (so checkpoint.prev.pt exists)."""
    logdir = tmp_path_factory.mktemp("finished") / "run"
    config = Config(
        steps=48,
        num_envs=4,
        batch_size=2,
        batch_length=8,
        imagination_horizon=3,
        train_ratio=8,
        checkpoint_every=16,
        log_every=16,
        threads=1,
    )
    threads = torch.get_num_threads()
    try:
        train(config, logdir, progress=False)
    finally:
        torch.set_num_threads(threads)
    return logdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# ------------------------------------------------------------------ fast help
def test_help_and_config_import_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "from torchdreamer.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['eval', '--help'],\n"
        "             ['train', '--suite', 'atari', '--show-config']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('torch', 'torchrl', 'tensordict') if m in sys.modules))\n"
        "import torchdreamer, torchdreamer.training as t\n"
        "print(torchdreamer.DreamerV3ValueLoss.__name__, t.DreamerAgent.__name__,\n"
        "      t.SequenceReplay.__name__, torchdreamer.functional.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    imported, names = result.stdout.splitlines()
    assert imported == "[]"
    assert names == "DreamerV3ValueLoss DreamerAgent SequenceReplay torchdreamer.functional"


def test_train_options_are_the_config_fields_with_their_docs(capsys):
    code, out, _ = main("train", "--help", capsys=capsys)
    assert code == 0
    text = " ".join(out.split())
    for field in Config.__dataclass_fields__:
        if field != "extra":
            assert f"--{field.replace('_', '-')}" in text, field
    assert "the run stops at --steps or at the next multiple of the environment count" in text
    assert "(default: 100000)" in text and "0 = automatic" in text
    code, out, _ = main("eval", "--help", capsys=capsys)
    assert code == 0 and "episodes to run (default: 10)" in " ".join(out.split())


def test_show_config_prints_each_field_beside_the_official_and_trains_nothing(capsys, tmp_path):
    logdir = tmp_path / "run"
    args = ["train", "--suite", "atari", "--lr", "1e-4", "--logdir", str(logdir)]
    code, out, _ = main(*args, "--show-config", capsys=capsys)
    assert code == 0 and not logdir.exists()
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip()}
    # configs.yaml (e3f0224): defaults + atari; lr given on the command line.
    assert rows["lr"] == ["lr", "0.0001", "4e-05", "agent.opt.lr", "given"]
    assert rows["image_size"] == ["image_size", "96", "96", "env.atari.size"]
    assert rows["replay_capacity"] == ["replay_capacity", "5,000,000", "5,000,000", "replay.size"]
    assert rows["steps"] == ["steps", "51,000,000", "51,000,000", "run.steps"]
    assert out.splitlines()[-1] == "1 difference from the official: lr"
    # Without a suite, beside the official defaults, each difference with its reason.
    code, out, _ = main("train", "--show-config", capsys=capsys)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("warmup "))
    assert line.split()[1:4] == ["200", "1,000", "agent.opt.warmup"]
    assert "docs/performance.md" in line
    code, _, err = main(
        "train", "--suite", "atari", "--env", "crafter", "--show-config", capsys=capsys
    )
    assert code == 2 and "suite 'atari' is for the env atari:<task>" in err


def test_friendly_numbers_and_preset_names(capsys, tmp_path):
    parser = cli._parser()
    args = parser.parse_args(["train", "--steps", "1e5", "--preset", "SIZE1M", "--lr", "4e-5"])
    config, _, _ = cli._config(args)
    assert config.steps == 100_000 and type(config.steps) is int
    assert config.preset == "size1m" and json.loads(config.to_json())["preset"] == "size1m"
    assert Config(preset="Small").preset == "small"


# ------------------------------------------------------------------ bad input
BAD_TRAIN_INPUT = [
    (["--train-ratio", "nan"], "argument --train-ratio: 'nan' is not a finite number"),
    (["--train-ratio", "inf"], "argument --train-ratio: 'inf' is not a finite number"),
    (["--train-ratio", "1e9"], "train_ratio must be in (0, 65536]"),
    (["--train-ratio", "0"], "train_ratio must be in (0, 65536]"),
    (["--lr", "0"], "lr must be > 0, got 0.0"),
    (["--lr=-inf"], "argument --lr: '-inf' is not a finite number"),
    (["--beta2", "1"], "beta2 must be in [0, 1), got 1.0"),
    (["--log-every", "0"], "log_every must be >= 1, got 0"),
    (["--checkpoint-every", "0"], "checkpoint_every must be >= 1, got 0"),
    (["--steps", "1.5"], "argument --steps: '1.5' is not a whole number"),
    (["--steps", "lots"], "argument --steps: 'lots' is not a whole number"),
    (["--preset", "XXL"], "unknown preset 'XXL'"),
    (["--threads", "-1"], "threads must be >= 0"),
    (["--env", "NoSuchEnv-v0"], "unknown environment id 'NoSuchEnv-v0'"),
    (["--env", "Blackjack-v1"], "Blackjack-v1: the observation space is Tuple"),
    (["--device", "gpu"], "unknown device 'gpu'; use cpu, cuda or cuda:N"),
    (["--image-size", "40"], "image_size must be a multiple of 16 pixels"),
    (["--steps", "1e13", "--replay-capacity", "1e13"], "the replay would reach 10000000000000"),
]


@pytest.mark.parametrize(("args", "message"), BAD_TRAIN_INPUT)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    logdir = tmp_path / "run"
    code, out, err = main("train", *TINY, *args, "--logdir", str(logdir), capsys=capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not logdir.exists(), "a refused start leaves nothing behind"


def test_bad_input_in_an_existing_directory_leaves_it_as_it_was(tmp_path, capsys):
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "notes.txt").write_text("mine")
    code, _, err = main("train", "--env", "NoSuchEnv-v0", "--logdir", str(logdir), capsys=capsys)
    assert code == 2 and "unknown environment id" in err
    assert snapshot(logdir) == {"notes.txt": b"mine"}


def test_logdir_of_another_run_is_refused(tmp_path, capsys):
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "config.json").write_text(Config(env="Pendulum-v1").to_json())
    code, _, err = main("train", "--logdir", str(logdir), "--no-progress", capsys=capsys)
    assert code == 2
    assert "holds another run with an incompatible config (env: 'Pendulum-v1'" in err
    code, _, err = main("train", "--resume", str(tmp_path / "nothing"), capsys=capsys)
    assert code == 2 and "no config.json" in err


def test_replay_memory_counts_only_the_rows_a_run_reaches():
    from torchdreamer.training.resources import check_replay_memory

    huge_capacity = Config(steps=1000, replay_capacity=10**13)
    # 1000 rows of 4 floats, a 2-way one-hot action, reward and flags, and the policy's
    # latent (float32; the small preset: deter 256, 32 categoricals of 4 classes).
    latent = 4 * (256 + 32 * 4)
    expected = 1000 * (16 + 8 + 7 + latent)
    assert check_replay_memory(huge_capacity, (4,), 2, available=10**7) == expected
    without = dataclasses.replace(huge_capacity, replay_context=0)
    assert check_replay_memory(without, (4,), 2, available=10**7) == 1000 * (16 + 8 + 7)
    with pytest.raises(ValueError, match="would reach 100000 rows .* in each of 2 processes"):
        check_replay_memory(Config(steps=10**5), (4,), 2, available=5 * 10**6, processes=2)


def test_replay_on_disk_is_checked_against_free_disk_space(tmp_path):
    from torchdreamer.training.resources import check_replay_memory

    on_disk = Config(steps=10**5, replay_on_disk=True)
    with pytest.raises(ValueError, match="GiB of disk space free there; pass a smaller"):
        check_replay_memory(on_disk, (64, 64, 3), 6, available=2**30)
    in_memory = Config(steps=10**5)
    with pytest.raises(ValueError, match="GiB of memory available; .* or --replay-on-disk"):
        check_replay_memory(in_memory, (64, 64, 3), 6, available=2**30)
    # Without an explicit figure the disk check reads the nearest existing folder.
    assert check_replay_memory(
        Config(steps=10, replay_on_disk=True), (4,), 2, where=tmp_path / "a" / "b"
    )


def test_replay_on_disk_checkpoints_refer_to_its_files_and_resume_from_them(tmp_path, capsys):
    logdir = tmp_path / "run"
    first = ["train", *TINY, "--replay-on-disk", "--log-every", "32", "--logdir", str(logdir)]
    code, _, err = main(*first, "--steps", "96", "--no-progress", capsys=capsys)
    assert code == 0, err
    assert json.loads((logdir / "config.json").read_text())["replay_on_disk"] is True
    files = logdir / "replay" / "rank0"
    assert any(p.suffix == ".memmap" for p in files.iterdir())
    replay = load_checkpoint(logdir)["ranks"][0]["replay"]
    assert "rows" not in replay and Path(replay["directory"]) == files
    # 96 steps over 4 envs (an episode's end adds its reset row too), all on disk.
    before = replay["written"]
    assert (before >= 24).all() and before.sum() < 96 + 16
    # An in-memory run of the same length copies its rows into the checkpoint.
    memory = tmp_path / "memory"
    in_memory = [a for a in first if a != "--replay-on-disk"][:-1] + [str(memory)]
    code, _, err = main(*in_memory, "--steps", "96", "--no-progress", capsys=capsys)
    assert code == 0, err
    assert (logdir / CHECKPOINT).stat().st_size < (memory / CHECKPOINT).stat().st_size

    code, _, err = main(
        "train", "--resume", str(logdir), "--steps", "160", "--no-progress", capsys=capsys
    )
    assert code == 0, err
    assert counters(logdir)["env_step"] == 160
    resumed = load_checkpoint(logdir)["ranks"][0]["replay"]
    assert (resumed["written"] >= before + 16).all() and Path(resumed["directory"]) == files
    # The layout is part of the run: switching it on resume is refused, naming the field.
    code, _, err = main("train", "--resume", str(logdir), "--no-replay-on-disk", capsys=capsys)
    assert code == 2 and "replay_on_disk" in err


def test_logdir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "run"
    path.write_text("not a directory")
    code, _, err = main("train", "--logdir", str(path), capsys=capsys)
    assert code == 2 and f"{path} is a file, not a directory" in err
    code, _, err = main("train", "--resume", str(path), capsys=capsys)
    assert code == 2 and f"{path} is a file, not a run directory" in err
    code, _, err = main("eval", str(path), capsys=capsys)
    assert code == 2 and f"{path} is a file, not a run directory" in err
    assert path.read_text() == "not a directory"


def test_a_log_directory_without_write_permission(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "locked"
    parent.mkdir()
    logdir = parent / "run"
    if os.geteuid() == 0:  # root writes anywhere: make the write itself fail
        real_mkdir = Path.mkdir

        def refuse(self, *args, **kwargs):
            if self == logdir:
                raise PermissionError(13, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", refuse)
    else:
        parent.chmod(0o555)
    try:
        code, _, err = main("train", *TINY, "--logdir", str(logdir), capsys=capsys)
    finally:
        parent.chmod(0o755)
    assert code == 2 and "Permission denied" in err and str(parent) in err
    assert len(err.strip().splitlines()) == 1 and not logdir.exists()


def test_eval_needs_one_episode(run_copy, capsys):
    code, _, err = main("eval", str(run_copy), "--episodes", "0", capsys=capsys)
    assert code == 2 and "episodes must be >= 1, got 0" in err


def test_eval_prints_mean_std_min_max(run_copy, capsys):
    code, out, _ = main("eval", str(run_copy), "--episodes", "3", "--threads", "1", capsys=capsys)
    assert code == 0
    assert out.startswith("score over 3 episodes: ") and "(mean ± std), min " in out


def test_resume_with_fewer_steps_than_done_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    code, _, err = main("train", "--resume", str(run_copy), "--steps", "20", capsys=capsys)
    assert code == 2
    assert "--steps 20 is below the step 48 the run" in err and "--steps 48 or more" in err
    assert snapshot(run_copy) == before, "config.json and the logs stay as they were"


def test_config_json_edited_to_another_env_is_refused(run_copy, capsys):
    saved = json.loads((run_copy / "config.json").read_text())
    saved["env"] = "Pendulum-v1"
    (run_copy / "config.json").write_text(json.dumps(saved))
    before = snapshot(run_copy)
    code, _, err = main("train", "--resume", str(run_copy), "--steps", "64", capsys=capsys)
    assert code == 2
    assert "env: 'CartPole-v1' in the checkpoint, 'Pendulum-v1' now" in err
    code, _, err = main("eval", str(run_copy), capsys=capsys)
    assert code == 2 and "env: 'CartPole-v1' in the checkpoint, 'Pendulum-v1' now" in err
    assert snapshot(run_copy) == before


def test_resume_with_a_changed_learning_field_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    code, _, err = main("train", "--resume", str(run_copy), "--lr", "1e-3", capsys=capsys)
    assert code == 2 and "cannot resume" in err and "with a different lr" in err
    assert snapshot(run_copy) == before


def test_garbage_config_json_is_named(run_copy, capsys):
    (run_copy / "config.json").write_text("{not json")
    code, _, err = main("train", "--resume", str(run_copy), capsys=capsys)
    assert code == 2 and "config.json is not a valid config" in err


# ---------------------------------------------------------------- corruption
def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "garbage":
        path.write_bytes(random.Random(0).randbytes(len(data)))
    else:  # 4 KB of random bytes in the middle
        middle = len(data) // 2
        data[middle : middle + 4096] = random.Random(1).randbytes(4096)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "is damaged (truncated: "),
        ("garbage", "is damaged (not a torchdreamer checkpoint"),
        ("middle", "is damaged (its checksum does not match its contents)"),
    ],
)
def test_a_damaged_checkpoint_is_named_with_the_previous_one(run_copy, capsys, how, message):
    assert (run_copy / PREVIOUS).exists()  # checkpoints at 16, 32 and 48
    damage(run_copy / CHECKPOINT, how)
    for args in (["train", "--resume", str(run_copy), "--steps", "64"], ["eval", str(run_copy)]):
        code, _, err = main(*args, capsys=capsys)
        assert code == 2, args
        assert message in err and len(err.strip().splitlines()) == 1
        assert f"the previous checkpoint {run_copy / PREVIOUS} (env step 32) is whole" in err
    assert not (run_copy / LOCK).exists()
    # Following the advice resumes from the previous checkpoint.
    os.replace(run_copy / PREVIOUS, run_copy / CHECKPOINT)
    code, out, err = main(
        "train", "--resume", str(run_copy), "--steps", "64", "--no-progress", capsys=capsys
    )
    assert code == 0, err
    assert metric_steps(run_copy) == [16, 32, 48, 64]


def test_a_checkpoint_from_before_checksums_resumes_the_same(run_copy, tmp_path, capsys):
    legacy = tmp_path / "legacy"
    shutil.copytree(run_copy, legacy)
    state = load_checkpoint(legacy)
    # The earlier layout: a bare torch.save file, the updates owed as a credit.
    ratio = state.pop("train_ratio")
    owed = (state["counters"]["env_step"] - ratio["previous"]) * ratio["ratio"]
    state["counters"]["update_credit"] = owed
    torch.save(state, legacy / CHECKPOINT)
    for logdir in (run_copy, legacy):
        code, _, err = main(
            "train", "--resume", str(logdir), "--steps", "80", "--no-progress", capsys=capsys
        )
        assert code == 0, err
    assert counters(legacy)["updates"] == counters(run_copy)["updates"] > 0


# ------------------------------------------------------------------------ lock
def test_a_second_writer_is_refused_naming_the_holder_and_kill_9_frees_it(run_copy, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(run_copy / LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_copy)
        code, _, err = main("train", "--resume", str(run_copy), "--steps", "64", capsys=capsys)
        assert code == 2 and f"is in use by process {holder.pid}" in err
        assert snapshot(run_copy) == before
        holder.kill()
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=60)
        holder.stdout.close()
    # The kernel dropped the dead holder's lock: its stale file does not block.
    code, _, err = main(
        "train", "--resume", str(run_copy), "--steps", "64", "--no-progress", capsys=capsys
    )
    assert code == 0, err
    assert not (run_copy / LOCK).exists()


# ------------------------------------------------------------------ interrupts
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_before_the_first_write_leaves_nothing(tmp_path, capsys, monkeypatch, signum, code):
    from torchdreamer.training import loop

    make_env = loop.make_env

    def make_env_then_signal(*args, **kwargs):  # the signal arrives while the run is checked
        made = make_env(*args, **kwargs)
        os.kill(os.getpid(), signum)
        return made

    monkeypatch.setattr(loop, "make_env", make_env_then_signal)
    logdir = tmp_path / "run"
    got, out, err = main("train", *TINY, "--logdir", str(logdir), "--no-progress", capsys=capsys)
    name = signal.Signals(signum).name
    assert got == code
    assert (
        err.strip()
        == f"torchdreamer: stopped by {name} before the run started; nothing was written"
    )
    assert not logdir.exists() and out == ""


def test_ctrl_c_before_training_starts_is_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt  # Ctrl-C while the CLI still imports and reads its options

    monkeypatch.setattr(cli, "_config", interrupted)
    code, out, err = main("train", "--logdir", str(tmp_path / "run"), capsys=capsys)
    assert code == 130 and out == "" and "Traceback" not in err
    assert err.strip() == "torchdreamer: interrupted outside training; no run state was lost"
    assert not (tmp_path / "run").exists()


def test_sigint_inside_a_long_update_loop_stops_cleanly(tmp_path, capsys):
    logdir = tmp_path / "run"
    # 65536 / 64 = 1024 updates per env step: the first update loop owes 4096 updates.
    args = ["--steps", "400", *TINY, "--train-ratio", "65536", "--log-every", "4"]
    args += ["--logdir", str(logdir), "--no-progress"]
    with Run(logdir, *args, stdout=subprocess.PIPE) as run:
        # The row at step 60 is written just before the loop of step 64 starts its updates.
        wait_for(lambda: 60 in metric_steps(logdir), run, "the last prefill row")
        time.sleep(3)  # inside the 4096 updates
        # A second writer meanwhile is refused, naming this process.
        code, _, err = main("train", "--resume", str(logdir), capsys=capsys)
        assert code == 2 and f"is in use by process {run.pid}" in err
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=300)
    out, err = out.decode(), err.decode()
    assert run.returncode == 130, err
    assert "Traceback" not in err
    assert (
        f"stopped at step 64 by SIGINT; checkpoint saved; resume with "
        f"`torchdreamer train --resume {logdir}`" in out
    )
    state = counters(logdir)
    assert state["env_step"] == 64 and 0 < state["updates"] < 4096
    assert ("learning_curve.png" in out) == (logdir / "learning_curve.png").exists()
    assert metric_steps(logdir)[-1] == 64
    assert not (logdir / LOCK).exists()


def test_a_closed_output_pipe_does_not_lose_the_final_checkpoint(tmp_path):
    logdir = tmp_path / "run"
    args = ["--steps", "4000", *TINY, "--log-every", "8", "--checkpoint-every", "100000"]
    with Run(logdir, *args, "--logdir", str(logdir), stdout=subprocess.PIPE) as run:
        wait_for(lambda: len(metric_steps(logdir)) >= 9, run, "the first updates")
        run.stdout.close()  # as `| tee` killed by the same Ctrl-C
        run.stderr.close()
        rows = len(metric_steps(logdir))
        wait_for(lambda: len(metric_steps(logdir)) >= rows + 3, run, "rows after the close")
        run.send_signal(signal.SIGINT)
        run.wait(timeout=300)
    assert run.returncode == 130
    state = counters(logdir)
    assert state["env_step"] >= metric_steps(logdir)[-1] > 8 * 9
    assert (logdir / "learning_curve.png").exists() or not (logdir / "episodes.csv").exists()


def tensorboard_steps(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_kills_and_resumes_keep_one_row_per_step_in_csv_and_tensorboard(tmp_path):
    logdir = tmp_path / "run"
    args = ["--steps", "480", *TINY, "--checkpoint-every", "80", "--log-every", "40"]
    with Run(logdir, *args, "--logdir", str(logdir), "--no-progress") as run:
        wait_for(
            lambda: (logdir / CHECKPOINT).exists() and counters(logdir)["env_step"] >= 160,
            run,
            "the second checkpoint",
        )
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
    killed_at = counters(logdir)["env_step"]
    with Run(logdir, "--resume", str(logdir), "--no-progress") as run:
        wait_for(
            lambda: max(metric_steps(logdir), default=0) >= killed_at + 120,
            run,
            "rows after resume",
        )
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=300)
    assert run.returncode == 143, err.decode()
    stopped_at = counters(logdir)["env_step"]
    assert killed_at < stopped_at < 480
    done = subprocess.run(
        command("train", "--resume", str(logdir), "--no-progress"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    steps = metric_steps(logdir)
    assert steps == sorted(set(steps)), "strictly increasing, each step once"
    assert set(range(40, 481, 40)) <= set(steps) and steps[-1] == 480
    assert set(steps) - set(range(40, 481, 40)) <= {stopped_at}
    for tag in ("updates", "env_steps_per_s"):
        assert tensorboard_steps(logdir, tag) == steps, tag
    episodes = read_csv(logdir / "episodes.csv")
    keys = [(int(e["env_step"]), int(e["env"])) for e in episodes]
    assert len(keys) == len(set(keys)) and [k[0] for k in keys] == sorted(k[0] for k in keys)


def test_the_progress_bar_labels_prefill_and_fits_80_columns(tmp_path, monkeypatch):
    import fcntl
    import pty
    import select
    import struct
    import termios

    logdir = tmp_path / "run"
    monkeypatch.setenv("COLUMNS", "80")
    # The bar is drawn on a terminal only: stderr is a pseudo-terminal's, of 24 x 80
    # characters (tqdm draws nothing on a terminal of no rows).
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with Run(logdir, "--steps", "160", *TINY, "--logdir", str(logdir), stderr=follower) as run:
        os.close(follower)
        chunks, quiet_since = [], time.monotonic()
        try:
            while True:  # until the run closes its end (EIO); it draws twice a second
                if not select.select([leader], [], [], 1.0)[0]:
                    assert time.monotonic() - quiet_since < 120, "no output for 120 s"
                    continue
                try:
                    chunk = os.read(leader, 1 << 16)
                except OSError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                quiet_since = time.monotonic()
        finally:
            os.close(leader)
        run.wait(timeout=600)
    stderr = b"".join(chunks).decode()
    assert run.returncode == 0, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    bars = [line for line in lines if "%|" in line]
    assert bars and all(len(line) <= 80 for line in bars), max(bars, key=len)
    assert bars[0].startswith("prefill")
    trained = [line for line in bars if line.startswith("train")]
    assert trained and "upd/s" in trained[-1] and "mean10 " in trained[-1]
    assert "left " in trained[-1] and trained[-1].endswith("]")
