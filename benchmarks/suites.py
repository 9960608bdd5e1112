"""Speed and learning on the benchmark suites on this machine, in one script.

``speeds``: ``torchdreamer train --suite S`` (the official run settings: model size, env
count, train ratio) for a few minutes per suite; env steps/s and updates/s measured over
the metric rows logged after the first update (the replay's prefill excluded), and the
env steps that 30 minutes at that pace would reach.

``learn``: ``torchdreamer train --env ID`` for a wall-time budget per environment, at the
general defaults (preset ``small``, 16 envs, train ratio 32: settings a CPU can run; the
official suite presets are GPU-sized) except where :data:`LEARN` says, one run after
another, each with the whole machine; then a uniformly random policy on the same env,
measured as the agent's episodes are (``random_policy.py``). Prints env steps reached,
env steps/s, updates/s, the training mean-10 (best and at the end), every evaluation's
mean and the random policy's mean ± std, and draws every run's curve against the random
policy in one PNG.

Run (one heavy job at a time):
``python benchmarks/suites.py speeds --minutes 4 --outdir runs/suite_speeds``
``python benchmarks/suites.py learn --minutes 30 --outdir runs/suites --png docs/suites_curves.png``
(``--envs`` picks the environments; ``--summarize`` only reads finished runs; arguments
after ``--`` go to every ``torchdreamer train``).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from learning import read, run  # noqa: E402
from random_policy import random_scores  # noqa: E402

from torchdreamer.training.config import SUITE_PRESETS  # noqa: E402
from torchdreamer.training.logs import (  # noqa: E402
    read_episodes,
    read_evaluations,
    running_mean,
)

#: Environments ``learn`` runs by default: the random-policy episodes for each (Crafter's
#: resets build a world in about a second) and the arguments that differ from the
#: general defaults. A Boxing episode is 1,800 agent steps: with 16 envs not one would
#: end in 30 CPU minutes, so it runs 4 envs (same train ratio) and evaluates every 5,000.
LEARN: dict[str, tuple[int, list[str]]] = {
    "dmc:cartpole_balance": (20, []),
    "atari100k:boxing": (20, ["--num-envs", "4", "--eval-every", "5000"]),
    "crafter": (10, []),
}
SPEED_SUITES = ("dmc_proprio", "atari100k", "crafter", "dmc_vision")


def _name(env: str) -> str:
    return env.replace(":", "_")


def speed(logdir: Path) -> dict[str, float] | None:
    """Env steps/s and updates/s between the first metric row after an update and the
    last row; None when fewer than two such rows were logged."""
    rows = [r for r in read(logdir / "metrics.csv") if int(r["updates"]) > 0]
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    elapsed = float(last["wall_time"]) - float(first["wall_time"])
    return {
        "env_steps_per_s": (int(last["env_step"]) - int(first["env_step"])) / elapsed,
        "updates_per_s": (int(last["updates"]) - int(first["updates"])) / elapsed,
        "updates": int(last["updates"]),
        "seconds": elapsed,
    }


def speeds(args: argparse.Namespace, extra: list[str]) -> None:
    results = {}
    for suite in args.suites:
        logdir = args.outdir / suite
        if not args.summarize:
            num_envs = SUITE_PRESETS[suite]["num_envs"]
            run(
                0,
                args.minutes,
                logdir,
                [
                    "--suite",
                    suite,
                    "--eval-every",
                    "0",
                    "--log-every",
                    str(num_envs),
                    "--checkpoint-every",
                    "1000000000",
                    *extra,
                ],
            )
        results[suite] = speed(logdir) if (logdir / "metrics.csv").exists() else None
    print(
        "| suite | preset | envs | train ratio | env steps/s | updates/s | updates timed "
        "| env steps in 30 min at this pace |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for suite, result in results.items():
        preset = SUITE_PRESETS[suite]
        head = f"| {suite} | {preset['preset']} | {preset['num_envs']} | {preset['train_ratio']:g}"
        if result is None:
            print(f"{head} | no update finished (a killed run says so where it ran) | | | |")
            continue
        print(
            f"{head} | {result['env_steps_per_s']:.2f} | {result['updates_per_s']:.3f} | "
            f"{result['updates']} in {result['seconds']:.0f} s | "
            f"{result['env_steps_per_s'] * 1800:,.0f} |"
        )


def summarize(logdir: Path) -> dict[str, object]:
    metrics = read(logdir / "metrics.csv")
    episodes = read_episodes(logdir)
    scores = [e.score for e in episodes]
    steps = [e.env_step for e in episodes]
    mean10 = running_mean(scores)
    last = metrics[-1]
    evaluations = {s: statistics.mean(v) for s, v in sorted(read_evaluations(logdir).items())}
    return {
        "env_step": int(last["env_step"]),
        "wall": float(last["wall_time"]),
        "env_steps_per_s": int(last["env_step"]) / float(last["wall_time"]),
        "updates_per_s": int(last["updates"]) / float(last["wall_time"]),
        "episodes": len(scores),
        "best": max(mean10[9:], default=float("nan")),
        "final": mean10[-1] if len(mean10) >= 10 else float("nan"),
        "curve": (steps[9:], mean10[9:]),
        "evaluations": evaluations,
    }


def learn(args: argparse.Namespace, extra: list[str]) -> None:
    results = {}
    for env in args.envs:
        logdir = args.outdir / _name(env)
        if not args.summarize:
            episodes, arguments = LEARN.get(env, (20, []))
            run(0, args.minutes, logdir, ["--env", env, *arguments, *extra])
            baseline = random_scores(env, episodes)
            print(baseline, flush=True)
            with open(logdir / "random_policy.csv", "w", newline="") as file:
                csv.writer(file).writerows([["score"], *[[s] for s in baseline.scores]])
        randoms = [float(r["score"]) for r in read(logdir / "random_policy.csv")]
        results[env] = (summarize(logdir), randoms)
    print(
        "| env | env steps (wall) | env steps/s | updates/s | episodes | training mean-10 "
        "best / end | evaluation means (env step) | random policy mean ± std (episodes) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for env, (s, randoms) in results.items():
        evaluations = ", ".join(f"{v:.1f} ({k // 1000}k)" for k, v in s["evaluations"].items())
        print(
            f"| {env} | {s['env_step']:,} ({s['wall'] / 60:.0f} min) | "
            f"{s['env_steps_per_s']:.1f} | {s['updates_per_s']:.2f} | {s['episodes']} | "
            f"{s['best']:.1f} / {s['final']:.1f} | {evaluations or '-'} | "
            f"{statistics.mean(randoms):.1f} ± {statistics.pstdev(randoms):.1f} "
            f"({len(randoms)}) |"
        )
    if args.png is not None:
        plot(results, args.png)


def plot(results: dict[str, tuple[dict[str, object], list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6))
    axes = [axes] if len(results) == 1 else list(axes)
    for axis, (env, (s, randoms)) in zip(axes, results.items(), strict=True):
        steps, mean10 = s["curve"]
        axis.plot(steps, mean10, label="training mean-10")
        if s["evaluations"]:
            axis.plot(
                list(s["evaluations"]),
                list(s["evaluations"].values()),
                "o-",
                label="evaluation mean",
            )
        mean, std = statistics.mean(randoms), statistics.pstdev(randoms)
        axis.axhline(mean, color="grey", linestyle=":", label="random policy")
        axis.axhspan(mean - std, mean + std, color="grey", alpha=0.15)
        axis.set_title(f"{env}, {s['wall'] / 60:.0f} CPU min")
        axis.set_xlabel("env steps")
        axis.set_ylabel("episode score")
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    print(f"curves: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name, default in (("speeds", 4.0), ("learn", 30.0)):
        command = sub.add_parser(name)
        command.add_argument("--minutes", type=float, default=default)
        command.add_argument("--outdir", type=Path, default=Path(f"runs/suite_{name}"))
        command.add_argument("--summarize", action="store_true", help="only read the runs")
    sub.choices["speeds"].add_argument("--suites", nargs="+", default=list(SPEED_SUITES))
    sub.choices["learn"].add_argument("--envs", nargs="+", default=list(LEARN))
    sub.choices["learn"].add_argument("--png", type=Path)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    started = time.time()
    (speeds if args.what == "speeds" else learn)(args, extra)
    print(f"total: {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
