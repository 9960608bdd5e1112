"""Does the default ``torchdreamer train`` learn, and how fast in wall time?

Runs ``torchdreamer train`` once per seed, one run after another (each has the
whole machine), stops each after a wall-time budget (SIGTERM: the run writes its
checkpoint, logs and curve), then reads the runs' ``episodes.csv`` and prints,
per seed: env steps per second, when the mean score of the last 10 episodes
first reached each threshold, its best value and its value at the end. Also
writes ``learning_curves.png`` with every seed's mean-10 curve against wall time and
against env steps; the table's last columns: the env step of the first 450, and the share
of the episodes after it whose mean-10 stayed at least 400.

Compare with ``shared/anchors/agent_cartpole_cpu.md`` (official DreamerV3 and
sheeprl on CartPole-v1, 2-core CPU, 30 minutes).

Run: ``python benchmarks/learning.py --seeds 0 1 2 --minutes 30 --outdir runs/bench``
(``--summarize DIR ...`` only reads finished runs; ``--stop-at 450`` also stops a seed
once its mean-10 first reaches 450, to answer "does it get there" in less time; extra
arguments after ``--`` go to ``torchdreamer train``, e.g. ``-- --env Pendulum-v1``).
"""

from __future__ import annotations

import argparse
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

from torchdreamer.training.logs import running_mean

THRESHOLDS = (100, 300, 400, 450)


def reached(logdir: Path, threshold: float) -> bool:
    """Whether the mean score of the last 10 episodes in ``logdir`` reached ``threshold``."""
    path = logdir / "episodes.csv"
    if not path.exists():
        return False
    scores = [float(e["score"]) for e in read(path) if e.get("score")]
    return any(m >= threshold for m in running_mean(scores)[9:])


def run(
    seed: int, minutes: float, logdir: Path, extra: list[str], stop_at: float | None = None
) -> Path:
    """``torchdreamer train`` into ``logdir``, stopped by SIGTERM after ``minutes`` (or
    once its mean-10 reaches ``stop_at``, checked every 10 s)."""
    command = [
        sys.executable,
        "-m",
        "torchdreamer.cli",
        "train",
        "--seed",
        str(seed),
        "--steps",
        "100000000",
        "--logdir",
        str(logdir),
        "--no-progress",
        *extra,
    ]
    print("running:", " ".join(command), flush=True)
    process = subprocess.Popen(command)
    deadline = time.monotonic() + minutes * 60
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                process.wait(timeout=min(10.0, max(deadline - time.monotonic(), 0.01)))
            except subprocess.TimeoutExpired:
                if stop_at is not None and reached(logdir, stop_at):
                    print(f"seed {seed}: mean-10 reached {stop_at:g}; stopping", flush=True)
                    break
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # clean stop: checkpoint, logs, curve
            try:
                process.wait(timeout=300)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if process.returncode < 0 and -process.returncode != signal.SIGTERM:
        name = signal.Signals(-process.returncode).name
        why = " (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else ""
        print(f"torchdreamer train was killed by {name}{why}", flush=True)
    return logdir


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def summarize(logdir: Path) -> dict[str, object]:
    """Mean-10 over wall time, from the episode log and the metric rows' clock."""
    metrics = read(logdir / "metrics.csv")
    episodes = read(logdir / "episodes.csv")
    # Wall time of each episode's end, interpolated from the metric rows.
    clock = [(int(r["env_step"]), float(r["wall_time"])) for r in metrics]

    def wall(step: int) -> float:
        for (s0, t0), (s1, t1) in zip(clock, clock[1:], strict=False):
            if s0 <= step <= s1:
                return t0 + (t1 - t0) * (step - s0) / max(s1 - s0, 1)
        return clock[-1][1] if step > clock[-1][0] else clock[0][1] * step / max(clock[0][0], 1)

    means = running_mean([float(e["score"]) for e in episodes])
    # Full windows only: from the 10th episode on.
    points = [(wall(int(e["env_step"])), m) for e, m in zip(episodes, means, strict=True)][9:]
    steps = [(int(e["env_step"]), m) for e, m in zip(episodes, means, strict=True)][9:]
    # The "stays solved": of the episodes after mean-10 first reached 450, the share
    # whose mean-10 is at least 400.
    reached = next((i for i, (_, m) in enumerate(steps) if m >= 450), None)
    after = [m for _, m in steps[reached + 1 :]] if reached is not None else []
    stays = sum(m >= 400 for m in after) / len(after) if after else None
    first = {}
    for threshold in THRESHOLDS:
        first[threshold] = next((t for t, m in points if m >= threshold), None)
    last_step, last_time = clock[-1]
    best = max(points, key=lambda p: p[1]) if points else (None, float("nan"))
    return {
        "logdir": logdir,
        "env_steps_per_s": last_step / last_time,
        "updates_per_s": int(metrics[-1]["updates"]) / last_time,
        "first": first,
        "best": best,
        "final": points[-1][1] if points else float("nan"),
        "wall": last_time,
        "points": points,
        "steps": steps,
        "first_450_step": steps[reached][0] if reached is not None else None,
        "stays": stays,
    }


def report(summaries: list[dict[str, object]], outdir: Path) -> None:
    header = ["run", "env steps/s", "updates/s"] + [f"mean-10 >= {t}" for t in THRESHOLDS]
    header += ["best mean-10 (at)", "mean-10 at end", "wall", "450 at env step", ">= 400 after"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for s in summaries:
        firsts = [
            f"{s['first'][t]:.0f} s" if s["first"][t] is not None else "not reached"
            for t in THRESHOLDS
        ]
        best_time, best = s["best"]
        cells = [
            str(Path(s["logdir"]).name),
            f"{s['env_steps_per_s']:.1f}",
            f"{s['updates_per_s']:.2f}",
            *firsts,
            f"{best:.0f} ({best_time:.0f} s)" if best_time is not None else "-",
            f"{s['final']:.0f}",
            f"{s['wall']:.0f} s",
            f"{s['first_450_step']:,}" if s["first_450_step"] is not None else "-",
            f"{s['stays']:.0%}" if s["stays"] is not None else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_step) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for s in summaries:
        times, means = zip(*s["points"], strict=True) if s["points"] else ((), ())
        by_time.plot([t / 60 for t in times], means, label=Path(s["logdir"]).name)
        steps, means = zip(*s["steps"], strict=True) if s["steps"] else ((), ())
        by_step.plot(steps, means, label=Path(s["logdir"]).name)
    for axes in (by_time, by_step):
        axes.axhline(450, color="grey", linestyle=":")
    by_time.set_xlabel("wall time (minutes)")
    by_step.set_xlabel("env steps")
    by_time.set_ylabel("mean score of the last 10 episodes")
    by_step.legend()
    figure.tight_layout()
    figure.savefig(outdir / "learning_curves.png", dpi=100)
    print(f"curves: {outdir / 'learning_curves.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--outdir", type=Path, default=Path("runs/learning"))
    parser.add_argument("--summarize", type=Path, nargs="+", help="only read these runs")
    parser.add_argument(
        "--stop-at", type=float, help="also stop a seed once its mean-10 first reaches this"
    )
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.summarize:
        logdirs = args.summarize
        outdir = Path(logdirs[0]).parent
    else:
        args.outdir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        logdirs = [
            run(seed, args.minutes, args.outdir / f"seed{seed}", extra, args.stop_at)
            for seed in args.seeds
        ]
        print(f"all runs: {time.time() - started:.0f} s")
        outdir = args.outdir
    report([summarize(Path(d)) for d in logdirs], outdir)


if __name__ == "__main__":
    main()
