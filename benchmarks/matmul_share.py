"""How much of one whole update is matrix multiplication, and how fast those products can go.

One process, CartPole-v1's shapes at DreamerV3's batch (16 x 64 replay steps, 15 imagined
steps from each of the 1,024 states). After ``--warmup`` updates (the first compiles, with
``--compile``), ``--updates`` updates are timed unprofiled (the update's own time), then
as many are recorded by the torch profiler with their input shapes; every ``mm``,
``addmm`` and ``bmm`` is grouped by shape, with its time and FLOPs per update. Then each
shape is timed alone (the same product on random tensors of that shape, median of 30
calls after 5): the throughput this machine reaches on the update's own products when
nothing else runs between them. Printed: the table by shape, and per update the matmul
FLOPs, the matmul time inside the update, the same products alone, and everything else
(pointwise work, copies, random draws, dispatch).

The products alone are a floor for the update on these cores: whatever an implementation
does around them, it runs these FLOPs (the official JAX update runs the same networks and
batch). The totals are for shares and floors (the products' times inside the update are
the profiled ones, a little inflated), not for side-by-side ratios (``compiled_update.py``,
``torchrl_update.py`` and the official harness give those).

Run (nothing else running): ``python benchmarks/matmul_share.py --preset size1m --compile``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))

from agent_throughput import replay_batch  # noqa: E402
from compiled_update import measure  # noqa: E402

from torchdreamer.training import Config, DreamerAgent  # noqa: E402
from torchdreamer.training.compiled import compile_agent  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def flops(name: str, shapes: list[list[int]]) -> int:
    """FLOPs of one product from the profiler's input shapes."""
    if name == "aten::bmm":
        (batch, m, k), (_, _, n) = shapes[0], shapes[1]
        return 2 * batch * m * k * n
    # mm(a, b); addmm(bias, a, b)
    a, b = (shapes[0], shapes[1]) if name == "aten::mm" else (shapes[1], shapes[2])
    return 2 * a[0] * a[1] * b[1]


def alone(name: str, shapes: list[list[int]], calls: int = 30) -> float:
    """Median seconds of one product of these shapes on random tensors."""
    if name == "aten::bmm":
        args = [torch.randn(shapes[0]), torch.randn(shapes[1])]
        product = torch.bmm
    elif name == "aten::mm":
        args = [torch.randn(shapes[0]), torch.randn(shapes[1])]
        product = torch.mm
    else:
        args = [torch.randn(shapes[0]), torch.randn(shapes[1]), torch.randn(shapes[2])]
        product = torch.addmm
    for _ in range(5):
        product(*args)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        product(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="size1m")
    parser.add_argument("--compile", action="store_true", help="compile_agent() first")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--rows", type=int, default=15, help="shapes listed, by time")
    args = parser.parse_args()

    torch.manual_seed(0)
    agent = DreamerAgent(
        (4,), 2, discrete=True, config=Config(preset=args.preset, precision="float32")
    )
    if args.compile:
        compile_agent(agent)
    batch = replay_batch()
    # The update's own time, unprofiled (the profiler slows every operator down); the
    # first of the warm-up updates compiles.
    update = measure(lambda: agent.update(batch), args.warmup - 1, args.updates)["update_s"]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.updates):
            agent.update(batch)

    groups: dict[tuple[str, str], dict] = defaultdict(lambda: {"time": 0.0, "calls": 0})
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key in MATMULS:
            shapes = [s for s in event.input_shapes if s][:3]
            group = groups[(event.key, str(shapes))]
            group["time"] += event.self_cpu_time_total / 1e6 / args.updates
            group["calls"] += event.count / args.updates
            group["shapes"] = shapes
    rows = []
    for (name, _), group in groups.items():
        work = flops(name, group["shapes"]) * group["calls"]
        rows.append((name, group, work, alone(name, group["shapes"]) * group["calls"]))
    rows.sort(key=lambda row: -row[1]["time"])

    mode = "compiled" if args.compile else "eager"
    print(f"{args.preset}, {mode}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| product | input shapes | calls per update | ms in the update | GFLOP/s there "
          "| ms alone | GFLOP/s alone |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, group, work, by_itself in rows[: args.rows]:
        print(
            f"| {name[6:]} | {group['shapes']} | {group['calls']:.0f} "
            f"| {group['time'] * 1e3:.1f} | {work / group['time'] / 1e9:.0f} "
            f"| {by_itself * 1e3:.1f} | {work / by_itself / 1e9:.0f} |"
        )
    total_flops = sum(row[2] for row in rows)
    inside = sum(row[1]["time"] for row in rows)
    by_themselves = sum(row[3] for row in rows)
    print(f"shapes: {len(rows)}; one update (median, unprofiled): {update * 1e3:.0f} ms")
    print(
        f"matmuls: {total_flops / 1e9:.1f} GFLOP, {inside * 1e3:.0f} ms in the update "
        f"({total_flops / inside / 1e9:.0f} GFLOP/s, {inside / update:.0%} of it), "
        f"{by_themselves * 1e3:.0f} ms alone ({total_flops / by_themselves / 1e9:.0f} GFLOP/s)"
    )
    print(f"everything else: {(update - inside) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
