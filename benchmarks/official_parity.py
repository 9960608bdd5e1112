"""Learning parity with the official DreamerV3, side by side: training-episode scores
(sampled actions, as the official reports them) against env steps and wall-clock minutes.

Both agents run with the same environment, model size (``size1m``), env count (16),
train ratio (32), batch (16 x 64) and dtype (float32), to the same env-step budget, one
run after another (each has the whole machine). The official agent runs from its own
source through ``../shared/bench/official_dreamerv3/run_official.py`` (its venv is built
by ``setup_envs.sh`` there); ours is ``torchdreamer train`` at its defaults otherwise.
Steps are counted alike: transitions over all environments, reset transitions included.

Run (each side, each seed; ``--side official`` needs ``/tmp/dv3-venv``)::

    python benchmarks/official_parity.py run --task CartPole-v1 --side ours --seeds 0 1
    python benchmarks/official_parity.py run --task CartPole-v1 --side official --seeds 0 1
    python benchmarks/official_parity.py report --task CartPole-v1 \\
        --ours runs/parity/CartPole-v1/ours-s* --official runs/parity/CartPole-v1/official-s*

``report`` prints a markdown table (per run: env steps and minutes to mean-10 >= each
threshold, best and final mean-10; then, on a grid of env steps, the fraction of points
where our curve lies within or above the official seeds' range) and writes a plot with
the two views. Extra arguments after ``--`` go to the agent's command line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESS = HERE.parent.parent / "shared" / "bench" / "official_dreamerv3"
OFFICIAL_PYTHON = Path("/tmp/dv3-venv/bin/python")

#: Per task: our env id, the official task name and its extra flags, the mean-10
#: thresholds reported, and the env-step budget.
TASKS = {
    "CartPole-v1": {
        "ours": "CartPole-v1",
        "official": "gymnasium_CartPole-v1",
        "official_flags": [],
        "thresholds": (100, 300, 400, 450),
        "steps": 100_000,
    },
    "cartpole_swingup": {
        "ours": "dmc:cartpole_swingup",
        "official": "dmc_cartpole_swingup",
        "official_flags": ["--env.dmc.image", "False"],
        "thresholds": (50, 100, 150, 200),
        "steps": 100_000,
    },
}

#: What both sides share, as each one's flags.
OURS = ["--preset", "size1m", "--precision", "float32", "--num-envs", "16"]
OURS += ["--train-ratio", "32", "--batch-size", "16", "--batch-length", "64"]
OURS += ["--eval-every", "0", "--no-progress"]
OFFICIAL = ["--configs", "size1m", "--jax.platform", "cpu", "--jax.compute_dtype", "float32"]
OFFICIAL += ["--run.envs", "16", "--run.train_ratio", "32", "--batch_size", "16"]
OFFICIAL += ["--batch_length", "64", "--run.usage.nvsmi", "False", "--logger.outputs", "jsonl"]
OFFICIAL += ["--run.log_every", "10"]


def running_mean(scores: list[float], window: int = 10) -> list[float]:
    return [
        sum(scores[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(scores))
    ]


def run(task: str, side: str, seed: int, outdir: Path, extra: list[str], limit: float) -> Path:
    """One run of ``side`` on ``task``; returns its log directory."""
    spec = TASKS[task]
    logdir = outdir / task / f"{side}-s{seed}"
    if logdir.exists():
        raise SystemExit(f"{logdir} exists: move it away (both sides resume from it).")
    logdir.mkdir(parents=True)
    if side == "ours":
        command = [sys.executable, "-m", "torchdreamer.cli", "train", "--env", spec["ours"]]
        command += ["--seed", str(seed), "--steps", str(spec["steps"]), "--logdir", str(logdir)]
        command += [*OURS, *extra]
    else:
        command = [str(OFFICIAL_PYTHON), str(HARNESS / "run_official.py"), *OFFICIAL]
        command += ["--task", spec["official"], "--seed", str(seed), "--logdir", str(logdir)]
        command += ["--run.steps", str(spec["steps"]), *spec["official_flags"], *extra]
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    started = time.time()
    (logdir / "parity_run.json").write_text(json.dumps({"command": command, "start": started}))
    clock = open(logdir / "clock.csv", "w")  # noqa: SIM115  (closed below)
    clock.write("wall_s,env_step\n")
    with open(logdir / "stdout.log", "w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=HARNESS,
            start_new_session=True,
        )
        try:
            while process.poll() is None:
                time.sleep(10)
                step = last_step(logdir, side)
                if step is not None:
                    clock.write(f"{time.time() - started:.1f},{step}\n")
                    clock.flush()
                if time.time() - started > limit:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            clock.close()
    print(f"{logdir}: exit {process.returncode} after {time.time() - started:.0f} s")
    return logdir


def last_step(logdir: Path, side: str) -> int | None:
    """The env step the run has logged last (read while it runs)."""
    if side == "ours":
        rows = read(logdir / "metrics.csv")
        return int(rows[-1]["env_step"]) if rows else None
    path = logdir / "scores.jsonl"
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return None


def read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def episodes(logdir: Path) -> list[tuple[int, float, float]]:
    """``(env_step, wall_s, score)`` of every training episode, in order of their end."""
    rows = read(logdir / "episodes.csv")
    start = started(logdir)
    if rows and "time" in rows[0]:  # the official adapter's log (gymnasium tasks)
        found = [(int(r["step"]), float(r["time"]) - start, float(r["score"])) for r in rows]
        return sorted(found, key=lambda e: (e[1], e[0]))
    if not rows:  # the official logger's (other tasks): steps only; wall time from clock
        rows = [json.loads(line) for line in (logdir / "scores.jsonl").read_text().splitlines()]
        rows = [{"env_step": r["step"], "score": r["episode/score"]} for r in rows]
    clock = [(int(r["env_step"]), float(r["wall_s"])) for r in read(logdir / "clock.csv")]
    return [(int(r["env_step"]), wall(clock, int(r["env_step"])), float(r["score"])) for r in rows]


def started(logdir: Path) -> float:
    """The run's launch time: this script's record, else the official launcher's."""
    for name, key in (("parity_run.json", "start"), ("run_info.json", "launch_time")):
        if (logdir / name).exists():
            return float(json.loads((logdir / name).read_text())[key])
    raise SystemExit(f"{logdir}: no parity_run.json or run_info.json to time it from.")


def wall(clock: list[tuple[int, float]], step: int) -> float:
    """Wall seconds at ``step``, interpolated between the polled ``(step, seconds)``."""
    if not clock:
        return float("nan")
    for (s0, t0), (s1, t1) in zip(clock, clock[1:], strict=False):
        if s0 <= step <= s1:
            return t0 + (t1 - t0) * (step - s0) / max(s1 - s0, 1)
    return clock[-1][1] if step > clock[-1][0] else clock[0][1]


def curve(logdir: Path) -> list[tuple[int, float, float]]:
    """``(env_step, wall_s, mean10)`` from the 10th episode on (full windows only)."""
    found = episodes(logdir)
    means = running_mean([score for _, _, score in found])
    return [(step, seconds, mean) for (step, seconds, _), mean in zip(found, means, strict=True)][
        9:
    ]


def at(points: list[tuple[int, float, float]], step: int) -> float | None:
    """The mean-10 last logged at or before ``step`` (none past the run's last episode)."""
    if not points or step > points[-1][0]:
        return None
    before = [mean for s, _, mean in points if s <= step]
    return before[-1] if before else None


def compare(ours: list[list], official: list[list], steps: int, grid: int = 50) -> dict:
    """On ``grid`` env steps: the official seeds' range and whether each of ours lies in
    or above it."""
    rows = []
    for k in range(1, grid + 1):
        step = steps * k // grid
        theirs = [v for v in (at(p, step) for p in official) if v is not None]
        mine = [at(p, step) for p in ours]
        if not theirs or any(v is None for v in mine):
            continue
        rows.append((step, min(theirs), max(theirs), mine))
    inside = [all(v >= low for v in mine) for _, low, _, mine in rows]
    return {"points": rows, "within_or_above": sum(inside) / max(len(inside), 1)}


def report(task: str, ours: list[Path], official: list[Path], plot: Path) -> str:
    spec = TASKS[task]
    runs = [("ours", d, curve(d)) for d in ours] + [("official", d, curve(d)) for d in official]
    thresholds = spec["thresholds"]
    header = ["run", "episodes"]
    header += [f"mean-10 >= {t}: env steps / min" for t in thresholds]
    header += ["best mean-10 (env step)", "mean-10 at end (env step)", "env steps/min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for side, logdir, points in runs:
        cells = [f"{side} {logdir.name}", str(len(points) + 9 if points else 0)]
        for threshold in thresholds:
            hit = next(((s, t) for s, t, m in points if m >= threshold), None)
            cells.append(f"{hit[0]:,} / {hit[1] / 60:.1f}" if hit else "not reached")
        best = max(points, key=lambda p: p[2]) if points else None
        cells.append(f"{best[2]:.0f} ({best[0]:,})" if best else "-")
        cells.append(f"{points[-1][2]:.0f} ({points[-1][0]:,})" if points else "-")
        rate = points[-1][0] / (points[-1][1] / 60) if points and points[-1][1] > 0 else None
        cells.append(f"{rate:,.0f}" if rate else "-")
        lines.append("| " + " | ".join(cells) + " |")
    result = compare(
        [p for s, _, p in runs if s == "ours"],
        [p for s, _, p in runs if s != "ours"],
        spec["steps"],
    )
    lines.append("")
    lines.append(
        f"Per env step: our curves lie within or above the official seeds' range at "
        f"{result['within_or_above']:.0%} of {len(result['points'])} grid points "
        f"(every {spec['steps'] // 50:,} env steps)."
    )
    draw(task, runs, plot)
    lines.append(f"Plot: {plot}")
    return "\n".join(lines)


def draw(task: str, runs: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = {"ours": "tab:blue", "official": "tab:grey"}
    for side, logdir, points in runs:
        if not points:
            continue
        steps, seconds, means = zip(*points, strict=True)
        style = {"color": colours[side], "alpha": 0.9 if side == "ours" else 0.7}
        axes[0].plot(steps, means, label=f"{side} {logdir.name}", **style)
        axes[1].plot([s / 60 for s in seconds], means, **style)
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel("wall-clock minutes")
    axes[0].set_ylabel("mean-10 training-episode score (sampled actions)")
    axes[0].legend(fontsize=7)
    figure.suptitle(
        f"{task}: torchdreamer vs official DreamerV3 (size1m, float32, 16 envs, ratio 32)"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("run")
    start.add_argument("--task", choices=sorted(TASKS), required=True)
    start.add_argument("--side", choices=("ours", "official"), required=True)
    start.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    start.add_argument("--outdir", type=Path, default=Path("runs/parity"))
    start.add_argument("--limit", type=float, default=3600, help="seconds per run at most")
    show = commands.add_parser("report")
    show.add_argument("--task", choices=sorted(TASKS), required=True)
    show.add_argument("--ours", type=Path, nargs="+", required=True)
    show.add_argument("--official", type=Path, nargs="+", required=True)
    show.add_argument("--plot", type=Path, help="default: docs/parity_<task>.png")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.command == "run":
        if args.side == "official" and not OFFICIAL_PYTHON.exists():
            raise SystemExit(f"{OFFICIAL_PYTHON} missing: run {HARNESS / 'setup_envs.sh'} first.")
        for seed in args.seeds:
            run(args.task, args.side, seed, args.outdir.resolve(), extra, args.limit)
    else:
        plot = args.plot or HERE.parent / "docs" / f"parity_{args.task}.png"
        print(report(args.task, args.ours, args.official, plot))


if __name__ == "__main__":
    main()
