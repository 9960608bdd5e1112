"""One whole agent update at two git commits of this repository, in alternating processes.

For a refactor that must leave speed as it was: each commit is checked out into
a temporary worktree, and a fresh process per round imports ``torchdreamer``
from it (``PYTHONPATH``), builds ``DreamerAgent((4,), 2, discrete=True,
config=Config(preset=...))`` (CartPole shapes) with seed 0, and times ``--n``
calls of ``agent.update(batch)`` on one random 16 x 64 replay batch (this
checkout's ``agent_throughput.replay_batch``, the same at both commits) after 3
warm-up updates. With ``--compile``, ``compile_agent`` first (the compile falls
in the warm-up: each commit's graphs come from the shared inductor cache once
made). The two commits alternate round by round, so both see the same
background load. Printed: each round's median and the process's peak RSS, the
median over rounds per commit, and the ratio new / old (below 1 is faster).

The preset must build the same networks at both commits for the ratio to
measure the code rather than the model.

Run: ``python benchmarks/commits.py OLD NEW --preset small --rounds 5 --n 10 [--compile]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, statistics, sys, time
import torch
from torchdreamer.training import Config, DreamerAgent

preset, n, benchmarks, compiled = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
sys.path.insert(0, benchmarks)
from agent_throughput import replay_batch  # this checkout's batch, at either commit

torch.manual_seed(0)
# float32 at every commit (older trees have no precision field; newer default to auto)
extra = {"precision": "float32"} if "precision" in Config.__dataclass_fields__ else {}
agent = DreamerAgent((4,), 2, discrete=True, config=Config(preset=preset, **extra))
if compiled:
    from torchdreamer.training.compiled import compile_agent

    compile_agent(agent)
batch = replay_batch()
for _ in range(3):
    agent.update(batch)
times = []
for _ in range(n):
    start = time.perf_counter()
    agent.update(batch)
    times.append(time.perf_counter() - start)
params = sum(p.numel() for p in agent.trainable_parameters())
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"median": statistics.median(times), "params": params, "rss": rss}))
"""


def worktree(repo: Path, ref: str, folder: Path) -> Path:
    path = folder / ref.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", "-q", str(path), ref], check=True
    )
    return path


def time_once(tree: Path, preset: str, n: int, compiled: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    benchmarks = str(Path(__file__).resolve().parent)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, preset, str(n), benchmarks, str(int(compiled))],
        env=env, cwd=tree, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=10, help="timed updates per process")
    parser.add_argument("--compile", action="store_true", help="compile_agent() at both commits")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    threads = os.environ.get("OMP_NUM_THREADS", "torch's default")
    mode = "compiled" if args.compile else "eager"
    print(f"preset {args.preset}, {mode}, {args.n} updates per process, threads: {threads}")
    with tempfile.TemporaryDirectory() as folder:
        trees = {ref: worktree(repo, ref, Path(folder)) for ref in (args.old, args.new)}
        try:
            medians: dict[str, list[float]] = {ref: [] for ref in trees}
            for round_ in range(args.rounds):
                for ref, tree in trees.items():
                    result = time_once(tree, args.preset, args.n, args.compile)
                    medians[ref].append(result["median"])
                    print(
                        f"round {round_}: {ref:>10s} {result['median'] * 1e3:8.1f} ms "
                        f"({result['params']:,} parameters, peak RSS {result['rss']:,.0f} MiB)",
                        flush=True,
                    )
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )
    old, new = (statistics.median(medians[ref]) for ref in (args.old, args.new))
    print(f"| preset | {args.old} (ms) | {args.new} (ms) | new / old |")
    print("|---|---|---|---|")
    print(f"| {args.preset} | {old * 1e3:.1f} | {new * 1e3:.1f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
