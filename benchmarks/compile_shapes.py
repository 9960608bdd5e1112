"""The compiled update with static shapes (``compile_agent``'s ``dynamic=False``) against
Dynamo's automatic dynamic shapes (``dynamic=None``, the behaviour before ``4082e10``).

Each mode compiles a float32 agent (CartPole shapes, ``replay_batch(16, 64)`` from
``agent_throughput.py``) in a fresh process, the modes alternating over ``--rounds``; each
process reports its graphs (Dynamo's ``unique_graphs`` after three updates, and any made in
steady state) and the median of ``--updates`` update times. It prints each round's medians,
the median of rounds per mode and static / automatic.

Run (nothing else running): ``python benchmarks/compile_shapes.py --rounds 5``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).parent))

from agent_throughput import replay_batch  # noqa: E402
from compiled_update import measure as time_updates  # noqa: E402

from torchdreamer.training import Config, DreamerAgent  # noqa: E402
from torchdreamer.training.compiled import _ISOLATED  # noqa: E402

MODES = {"static": False, "automatic": None}


def measure(mode: str, preset: str, updates: int) -> dict[str, float]:
    """One process's figures for ``mode``: graphs and the median update time (ms)."""
    torch.manual_seed(0)
    agent = DreamerAgent((4,), 2, discrete=True, config=Config(preset=preset, precision="float32"))
    # The same options as compile_agent but for `dynamic`.
    agent.compile_update(**_ISOLATED, dynamic=MODES[mode], options={"fallback_random": True})
    batch = replay_batch()
    # 1 + 2 untimed updates, then `updates` timed; no operator count.
    found = time_updates(lambda: agent.update(batch), 2, updates, count=lambda step: None)
    steady = found["graphs_after_warmup"]
    total = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return {"graphs": total - steady, "steady_graphs": steady, "ms": 1000 * found["update_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--preset", default="size1m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child, args.preset, args.updates)))
        return
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for round_ in range(1, args.rounds + 1):
        for mode in MODES:
            command = [sys.executable, __file__, "--child", mode, "--preset", args.preset]
            command += ["--updates", str(args.updates), "--threads", str(args.threads)]
            out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
            found = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode].append(found)
            print(f"round {round_}: {mode}: {found}", flush=True)
    medians = {m: statistics.median(r["ms"] for r in found) for m, found in results.items()}
    print("\n| mode | graphs | rounds (ms) | median of rounds (ms) | / automatic |")
    print("|---|---|---|---|---|")
    for mode, found in results.items():
        rounds = ", ".join(f"{r['ms']:.0f}" for r in found)
        graphs = "/".join(sorted({f"{r['graphs']}+{r['steady_graphs']}" for r in found}))
        ratio = medians[mode] / medians["automatic"]
        print(f"| {mode} | {graphs} | {rounds} | {medians[mode]:.0f} | {ratio:.2f} |")
    print(
        f"\n{args.preset}, float32, {args.threads} threads; graphs: after 3 updates + steady state"
    )


if __name__ == "__main__":
    main()
