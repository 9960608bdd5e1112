"""The prepared GPU script runs end to end (on CPU, at a tiny batch and a few seconds of
training, without the test extras): a row per plan entry, with its figures, or the reason
it was not measured."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_gpu_script_dry_runs_on_cpu_and_names_what_it_could_not_run(
    processes, tmp_path, monkeypatch
):
    # A GPU machine may have the package installed alone: neither the script nor the
    # processes it starts may import pytest (TorchRL's test helpers do). JAX is made
    # unimportable too, so that the official entry says so wherever this runs.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for module in ("pytest", "jax"):
        (blocked / f"{module}.py").write_text(f'raise ImportError("{module} is not installed")\n')
    paths = [str(blocked), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path for path in paths if path))
    out = tmp_path / "rows.json"
    plan = ["small:float32:eager", "small:bfloat16:eager", "small:float32:static"]
    plan += ["small:float32:cudagraphs", "small:float32:graph", "torchrl:small:float32:eager"]
    plan += ["official:small:float32", "throughput:small:CartPole-v1"]
    command = [sys.executable, str(BENCHMARKS / "gpu_update.py"), "--device", "cpu"]
    command += ["--plan", *plan, "--batch", "2", "8", "--warmup", "0", "--updates", "1"]
    command += ["--throughput", "5"]
    finished = processes.run([*command, "--out", str(out)], tmp_path / "logs")
    assert finished.returncode == 0, finished.stderr
    rows = json.loads(out.read_text())
    assert [row["entry"] for row in rows] == plan
    for row in rows[:3] + rows[5:6]:
        assert row["update_ms"] > 0 and row["first_s"] > 0 and row["peak_mib"] > 0, row
        assert row["kernels"] > 100 and row["graphs_after_warmup"] == 0, row
    # The loop's path (a replay, the prefetcher, the static inputs): the same operators
    # as the plain update, give or take the batch's sampling and copy.
    assert abs(rows[2]["kernels"] - rows[0]["kernels"]) < 100, rows
    assert rows[3]["error"] == "cudagraphs needs a CUDA device"
    assert rows[4]["error"] == "graph needs a CUDA device"
    # TorchRL's update at the same widths: the same order of operators as ours.
    assert 0.5 < rows[5]["kernels"] / rows[0]["kernels"] < 2, rows
    assert rows[6] == {
        "entry": "official:small:float32",
        "error": f"not run: no --official-src; jax not importable by {sys.executable}",
    }
    run = rows[7]
    assert run["stopped_by_sigterm"] == signal.SIGTERM, run
    assert 0 < run["wall_s"] < 60 and run["env_steps"] > 0 and run["updates"] > 0, run
    assert run["env_steps_per_s"] == run["env_steps"] / run["wall_s"], run
    assert run["updates_per_s"] == run["updates"] / run["wall_s"], run
    assert run["num_envs"] == 16 and run["gpu_busy"] == "unavailable: not a CUDA device", run
    assert "| torchdreamer | small | bfloat16 | eager |" in finished.stdout
    assert "| TorchRL | small | float32 | eager |" in finished.stdout
    assert "| CartPole-v1 | small |" in finished.stdout


def test_the_env_workers_script_dry_runs_on_cartpole(processes, tmp_path):
    out = tmp_path / "rows.json"
    command = [sys.executable, str(BENCHMARKS / "env_workers.py"), "--envs", "CartPole-v1"]
    command += ["--num-envs", "2", "--workers", "0", "2", "--train-workers", "2"]
    command += ["--rounds", "1", "--seconds", "0.3", "--train-steps", "96", "--out", str(out)]
    finished = processes.run(command, tmp_path / "logs")
    assert finished.returncode == 0, finished.stderr
    rows = json.loads(out.read_text())
    assert [(row["kind"], row["workers"]) for row in rows] == [
        ("random", 0),
        ("random", 2),
        ("train", 2),
    ]
    assert all(row["env_steps_per_s"] > 0 for row in rows)
    assert rows[2]["updates_per_s"] > 0
    assert "| CartPole-v1 | random | 2 |" in finished.stdout


def test_the_parity_report_reads_both_sides_logs(processes, tmp_path):
    # Official side: the harness adapter's episodes.csv (absolute times) and the launcher's
    # run_info.json. Ours: episodes.csv by env step, timed by the polled clock.csv.
    official, ours = tmp_path / "official-s0", tmp_path / "ours-s0"
    official.mkdir()
    ours.mkdir()
    (official / "run_info.json").write_text(json.dumps({"launch_time": 1000.0}))
    lines = ["time,step,score,length,env"]
    lines += [f"{1000 + 6 * k},{100 * k},{10 * k},{10 * k},0" for k in range(1, 41)]
    (official / "episodes.csv").write_text("\n".join(lines) + "\n")
    (ours / "parity_run.json").write_text(json.dumps({"command": [], "start": 0.0}))
    lines = ["env_step,score,length,env"]
    lines += [f"{100 * k},{20 * k},{20 * k},0" for k in range(1, 41)]
    (ours / "episodes.csv").write_text("\n".join(lines) + "\n")
    (ours / "clock.csv").write_text("wall_s,env_step\n0,0\n120,4000\n")
    plot = tmp_path / "parity.png"
    command = [sys.executable, str(BENCHMARKS / "official_parity.py"), "report"]
    command += ["--task", "CartPole-v1", "--ours", str(ours), "--official", str(official)]
    finished = processes.run([*command, "--plot", str(plot)], tmp_path / "logs")
    assert finished.returncode == 0, finished.stderr
    rows = {line.split(" | ")[0]: line for line in finished.stdout.splitlines() if "-s0" in line}
    # Ours: scores 20k, so mean-10 at episode k >= 10 is 20 * (k - 4.5); 100 first at
    # k = 10 (mean 110), env step 1,000, wall 1000 / 4000 * 120 s = 0.5 min.
    assert "| 1,000 / 0.5 |" in rows["| ours ours-s0"]
    # Official: scores 10k, mean-10 10 * (k - 4.5); 100 first at k = 15 (105): step
    # 1,500, 90 s after launch = 1.5 min; the best is the last, 355 at 4,000.
    assert "| 1,500 / 1.5 |" in rows["| official official-s0"]
    assert "| 355 (4,000) | 355 (4,000) |" in rows["| official official-s0"]
    # One official seed is its own range; ours (twice its scores) lies above it at
    # every grid point both runs reach (2,000 ... 4,000 by 2,000: two points).
    assert "within or above the official seeds' range at 100% of 2 grid points" in finished.stdout
    assert plot.stat().st_size > 0


def test_the_parity_report_reads_the_official_loggers_scores_for_dmc(processes, tmp_path):
    # DMC: the official logger's scores.jsonl (env steps only) timed by the polled clock.csv;
    # 16 environments end their 1,000-step episodes together.
    official, ours = tmp_path / "official-s0", tmp_path / "ours-s0"
    for side in (official, ours):
        side.mkdir()
        (side / "parity_run.json").write_text(json.dumps({"command": [], "start": 0.0}))
        (side / "clock.csv").write_text("wall_s,env_step\n0,0\n600,16016\n1200,32032\n")
    rows = [{"step": 16_000 * r + e, "episode/score": 50.0 * r} for r in (1, 2) for e in range(16)]
    (official / "scores.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    lines = ["env_step,score,length,env"]
    lines += [f"{16_000 * r + e},{100.0 * r},1000,{e}" for r in (1, 2) for e in range(16)]
    (ours / "episodes.csv").write_text("\n".join(lines) + "\n")
    command = [sys.executable, str(BENCHMARKS / "official_parity.py"), "report"]
    command += ["--task", "cartpole_swingup", "--ours", str(ours), "--official", str(official)]
    finished = processes.run([*command, "--plot", str(tmp_path / "p.png")], tmp_path / "logs")
    assert finished.returncode == 0, finished.stderr
    rows = {line.split(" | ")[0]: line for line in finished.stdout.splitlines() if "-s0" in line}
    # Official: mean-10 is 50 through the first 16 episodes, 100 from the 26th (step
    # 32,009): best 100, at end 100 (32,015); 16,015 steps in 600 s by the clock.
    assert "| 100 (32,009) | 100 (32,015) |" in rows["| official official-s0"]
    # Ours, twice its scores: mean-10 200 first at the 26th episode, step 32,009, timed
    # between the clock's 16,016 (600 s) and 32,032 (1,200 s): 1,199 s = 20.0 min.
    assert "| 32,009 / 20.0 |" in rows["| ours ours-s0"]
