"""Environments in worker processes (``--env-workers``): env steps/s with a random policy,
and env steps/s and updates/s of a short training run, per environment and worker count.

Every measurement runs in a process of its own (this script with ``--one``), the settings
alternating round by round; the table gives the median over rounds and its ratio to the
in-process setting (0 workers) of the same environment.

- ``random``: ``make_env(ENV, num_envs, workers=W)`` stepped through TorchRL with uniformly
  random actions, as training steps it; steps/s over ``--seconds`` after 20 warm-up steps.
- ``train``: ``train(Config(env=ENV, env_workers=W, ...))`` for ``--train-steps`` env
  steps, at a small cost per env step (preset small, compile off, batch 4 x 16,
  train_ratio 8: an update every 8 env steps, far fewer than at the official ratios of
  32 to 1024, so the environments' share of the time is as large as training makes
  it); env steps/s and updates/s between the first metrics row with updates and the
  last (the prefill, start-up and process starts excluded).

Run (about 15 minutes on 2 cores)::

    python benchmarks/env_workers.py --rounds 3

A tiny dry run: ``--envs CartPole-v1 --workers 0 2 --rounds 1 --seconds 0.5
--train-steps 96``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The environments measured, with their ``obs``.
ENVS = {
    "CartPole-v1": "auto",
    "dmc:walker_walk": "image",
    "crafter": "auto",
    "atari100k:pong": "auto",
}


def random_rate(env_id: str, obs: str, num_envs: int, workers: int, seconds: float) -> dict:
    import torch

    from torchdreamer.envs import make_env

    env, spec = make_env(env_id, num_envs, seed=0, obs=obs, workers=workers)
    try:
        td = env.reset()
        generator = torch.Generator().manual_seed(0)

        def act() -> None:
            nonlocal td
            if spec.discrete:
                index = torch.randint(spec.action_dim, (num_envs,), generator=generator)
                action = torch.nn.functional.one_hot(index, spec.action_dim).float()
            else:
                action = torch.rand(num_envs, spec.action_dim, generator=generator) * 2 - 1
            td.set("action", spec.to_env_action(action))
            td = env.step_and_maybe_reset(td)[1]

        for _ in range(20):
            act()
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            act()
            steps += num_envs
        return {"env_steps_per_s": steps / (time.perf_counter() - started)}
    finally:
        env.close()


def train_rate(env_id: str, obs: str, num_envs: int, workers: int, steps: int) -> dict:
    from torchdreamer.training import Config
    from torchdreamer.training.loop import train

    with tempfile.TemporaryDirectory() as directory:
        logdir = Path(directory) / "run"
        config = Config(
            env=env_id,
            obs=obs,
            steps=steps,
            num_envs=num_envs,
            train_ratio=8.0,
            batch_size=4,
            batch_length=16,
            preset="small",
            compile="off",
            env_workers=workers,
            eval_every=0,
            log_every=max(num_envs, steps // 8),
            checkpoint_every=10 * steps,
            logger="csv",
            replay_capacity=max(10_000, num_envs * 64),
        )
        train(config, logdir, progress=False)
        rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if row.get("updates", 0) > 0]
    first, last = rows[0], rows[-1]
    elapsed = last["wall_time"] - first["wall_time"]
    return {
        "env_steps_per_s": (last["step"] - first["step"]) / elapsed,
        "updates_per_s": (last["updates"] - first["updates"]) / elapsed,
    }


def _one(args: argparse.Namespace) -> None:
    env_id, kind, workers = args.one[0], args.one[1], int(args.one[2])
    obs = ENVS.get(env_id, "auto")
    if kind == "random":
        result = random_rate(env_id, obs, args.num_envs, workers, args.seconds)
    else:
        result = train_rate(env_id, obs, args.num_envs, workers, args.train_steps)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--train-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--train-steps", type=int, default=320)
    parser.add_argument("--kinds", nargs="+", default=["random", "train"])
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--one", nargs=3, metavar=("ENV", "KIND", "WORKERS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.one:
        _one(args)
        return
    plan = [
        (env_id, kind, workers)
        for env_id in args.envs
        for kind in args.kinds
        for workers in (args.workers if kind == "random" else args.train_workers)
        if workers <= args.num_envs
    ]
    results: dict[tuple, list[dict]] = {entry: [] for entry in plan}
    passed = [
        f"--num-envs={args.num_envs}",
        f"--seconds={args.seconds}",
        f"--train-steps={args.train_steps}",
    ]
    for _ in range(args.rounds):
        for entry in plan:
            command = [sys.executable, __file__, "--one", entry[0], entry[1], str(entry[2])]
            done = subprocess.run([*command, *passed], capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{entry} failed:\n{done.stderr[-3000:]}")
            results[entry].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for (env_id, kind, workers), measured in results.items():
        row = {"env": env_id, "kind": kind, "workers": workers}
        for key in measured[0]:
            row[key] = statistics.median(m[key] for m in measured)
        rows.append(row)
    print(f"num_envs {args.num_envs}, medians of {args.rounds} rounds; ratio: to 0 workers")
    print("| env | measure | workers | env steps/s | ratio | updates/s | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        same = [r for r in rows if (r["env"], r["kind"]) == (row["env"], row["kind"])]
        base = next((r for r in same if r["workers"] == 0), same[0])
        cells = []
        for key in ("env_steps_per_s", "updates_per_s"):
            if key in row:
                cells += [f"{row[key]:.1f}", f"{row[key] / base[key]:.2f}"]
            else:
                cells += ["", ""]
        print(f"| {row['env']} | {row['kind']} | {row['workers']} | {' | '.join(cells)} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
