"""Where one whole update's time goes, eager or compiled, part by part.

One process, one agent: CartPole-v1's shapes at DreamerV3's batch (16 x 64 replay steps,
15 imagined steps from each of the 1,024 states). Each part of ``DreamerAgent.update`` is
wrapped in a wall-clock timer (torch on a CPU is synchronous, so a part's wall time is
its work); after ``--warmup`` updates (the first compiles), it prints the median of
``--updates`` updates per part. Parts nest: the observe loop is inside the world-model
loss, imagination inside the actor loss; eager, the critic network counts every call
(online and slow, imagined and replayed states), inside the losses (compiled, it is left
out: a timer inside its compiled graph would break the graph). "Backward and the rest" is
the update less the losses, the optimiser step and the slow-critic EMA: the backward,
``zero_grad`` and reading the metrics.

This tells where to look, not how we compare with a peer: for that, the side-by-side
benchmarks (``compiled_update.py``, ``torchrl_update.py``, the official harness).

Run (nothing else running): ``python benchmarks/update_parts.py --preset size1m --compile``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from agent_throughput import replay_batch  # noqa: E402

import torchdreamer.dreamer.loss as recipe  # noqa: E402
from torchdreamer.training import Config, DreamerAgent  # noqa: E402
from torchdreamer.training.compiled import compile_agent  # noqa: E402


def timed(owner: object, name: str, label: str, times: dict[str, list[float]]) -> None:
    """Replace ``owner.name`` on the instance by the same call, timed into ``times[label]``."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times[label].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="size1m")
    parser.add_argument("--compile", action="store_true", help="compile_agent() first")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    agent = DreamerAgent(
        (4,), 2, discrete=True, config=Config(preset=args.preset, precision="float32")
    )
    if args.compile:
        compile_agent(agent)
    times: dict[str, list[float]] = defaultdict(list)
    parts = [
        (agent, "update", "update"),
        (agent, "losses", "losses (forward)"),
        (agent.world_model, "forward", "world model"),
        (agent.world_model.rssm, "observe", "observe loop"),
        (recipe, "imagination", "imagination (rollout, critic, returns)"),
        (recipe, "imagine", "imagination rollout"),
        (recipe, "actor_part", "actor loss"),
        (agent.critic, "forward", "critic network (all calls)"),
        (recipe, "critic_part", "value loss"),
        (recipe, "replay_part", "replay value loss"),
        (agent.optimizer, "step", "optimiser step"),
        (agent, "update_slow_critic", "slow-critic EMA"),
    ]
    if args.compile:
        # Compiled, the critic's forward runs inside its compiled graph, where a timer
        # would break the graph (dynamo cannot trace time.perf_counter).
        parts = [part for part in parts if part[0] is not agent.critic]
    for owner, name, label in parts:
        timed(owner, name, label, times)
    batch = replay_batch()
    for _ in range(args.warmup):
        agent.update(batch)
    times.clear()
    for _ in range(args.updates):
        agent.update(batch)

    def per_update(label: str) -> float:
        # A part called k times per update (the critic) counts k calls per update.
        calls = times[label]
        k = len(calls) // args.updates
        return statistics.median(sum(calls[i * k : (i + 1) * k]) for i in range(args.updates))

    medians = {label: per_update(label) for _, _, label in parts}
    rest = medians["update"] - sum(
        medians[k] for k in ("losses (forward)", "optimiser step", "slow-critic EMA")
    )
    medians["backward and the rest"] = rest
    mode = "compiled" if args.compile else "eager"
    print(f"{args.preset}, {mode}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"median of {args.updates} updates after {args.warmup}")
    print("| part | ms per update | share of the update |")
    print("|---|---|---|")
    for label, seconds in medians.items():
        share = seconds / medians["update"]
        print(f"| {label} | {seconds * 1e3:.0f} | {share:.0%} |")


if __name__ == "__main__":
    main()
