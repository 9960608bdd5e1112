"""The whole update eager and compiled (``training/compiled.py``), side by side.

For each preset, on CartPole-v1's shapes (``--image``: Crafter's, 64 x 64 RGB and 17
actions) at DreamerV3's batch (16 x 64 replay steps,
15 imagined steps from each of the 1,024 states), each mode in a fresh process, the
processes alternating over ``--rounds``:

* compile time (the first update, less an eager update's time), with an empty
  inductor cache (a first run's; later runs on the machine reuse the cache);
* the median time of one update after ``--warmup`` updates, over ``--updates``;
* operators per update: the torch profiler's leaf ATen calls that compute (views and
  metadata reads excluded) plus the fused kernels inductor generated, each recorded by
  name: each would be a kernel launch on a GPU (compiled: counted once per preset, in a
  process of its own with inductor's kernel profiling on, which the timed compiled
  processes leave off);
* peak resident memory of the process, before the profiler runs.

It prints a table per preset with the medians over rounds and compiled / eager, and the
break-even: after how many updates the compiled run has caught up with the eager one.

Run (nothing else running): ``python benchmarks/compiled_update.py --presets small size1m``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo
from tensordict import TensorDict

sys.path.insert(0, str(Path(__file__).parent))

from agent_throughput import replay_batch  # noqa: E402
from operator_count import operators  # noqa: E402

from torchdreamer.training import Config, DreamerAgent  # noqa: E402
from torchdreamer.training.compiled import compile_agent  # noqa: E402


def measure(step, warmup: int, updates: int, count=operators) -> dict[str, float]:
    """Time ``step()`` (one whole update): the first call (with any compiling), then the
    median of ``updates`` calls after ``warmup``; the graphs dynamo compiled during those
    calls (0: no recompilation in steady state); peak RSS; ``count(step)``, by default the
    operators of one call."""
    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    for _ in range(warmup):
        step()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    times = []
    for _ in range(updates):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "first_s": first,
        "update_s": statistics.median(times),
        "graphs_after_warmup": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs,
        "peak_rss_mib": peak_rss_mib,
        "operators": count(step),
    }


def in_fresh_process(script: str, *arguments: str) -> dict[str, float]:
    """``script --child ARGUMENTS`` in a new process with an empty inductor cache (so the
    compile time measured is a first run's); the JSON object it printed last."""
    command = [sys.executable, script, "--child", *arguments]
    with tempfile.TemporaryDirectory() as cache:
        environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        out = subprocess.run(command, capture_output=True, text=True, env=environment)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def image_batch(b: int = 16, t: int = 64, actions: int = 17) -> TensorDict:
    """Crafter's shapes: 64 x 64 RGB frames, 17 actions."""
    batch = replay_batch(b, t)
    batch["observation"] = torch.randint(0, 256, (b, t, 64, 64, 3), dtype=torch.uint8)
    index = torch.randint(0, actions, (b, t))
    batch["prev_action"] = torch.nn.functional.one_hot(index, actions).float()
    return batch


def child(mode: str, preset: str, warmup: int, updates: int, image: bool) -> None:
    torch.manual_seed(0)
    shape, actions = ((64, 64, 3), 17) if image else ((4,), 2)
    agent = DreamerAgent(
        shape, actions, discrete=True, config=Config(preset=preset, precision="float32")
    )
    batch = image_batch() if image else replay_batch()
    if mode == "counted":
        # Each inductor kernel recorded by name in the profiler (a cost in every kernel).
        torch._inductor.config.cpp.enable_kernel_profile = True
    if mode in ("compiled", "counted"):
        compile_agent(agent)
    print(json.dumps(measure(lambda: agent.update(batch), warmup, updates)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "size1m"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--image", action="store_true", help="Crafter's shapes")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.warmup, args.updates, args.image)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for preset in args.presets:
        results: dict[str, list[dict[str, float]]] = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            for mode in results:
                options = ["--warmup", str(args.warmup), "--updates", str(args.updates)]
                options += ["--image"] if args.image else []
                results[mode].append(in_fresh_process(__file__, mode, preset, *options))
        median = {
            mode: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            for mode, rows in results.items()
        }
        eager, compiled = median["eager"], median["compiled"]
        options = ["--warmup", "1", "--updates", "1"] + (["--image"] if args.image else [])
        compiled["operators"] = in_fresh_process(__file__, "counted", preset, *options)["operators"]
        compile_s = compiled["first_s"] - eager["update_s"]
        saved = eager["update_s"] - compiled["update_s"]
        shapes = "Crafter shapes" if args.image else "CartPole shapes"
        print(f"\n{preset}, {shapes} ({args.rounds} rounds, median of {args.updates} updates each)")
        print("| | eager | compiled | compiled / eager |")
        print("|---|---|---|---|")
        print(
            f"| update | {eager['update_s'] * 1e3:.0f} ms | {compiled['update_s'] * 1e3:.0f} ms "
            f"| {compiled['update_s'] / eager['update_s']:.2f} |"
        )
        print(
            f"| operators per update | {eager['operators']:,.0f} | "
            f"{compiled['operators']:,.0f} | {compiled['operators'] / eager['operators']:.2f} |"
        )
        print(
            f"| peak RSS | {eager['peak_rss_mib']:,.0f} MiB | "
            f"{compiled['peak_rss_mib']:,.0f} MiB | "
            f"{compiled['peak_rss_mib'] / eager['peak_rss_mib']:.2f} |"
        )
        print(f"| first update | {eager['first_s']:.1f} s | {compiled['first_s']:.1f} s | |")
        if saved > 0:
            print(f"compile time {compile_s:.0f} s, repaid after {compile_s / saved:.0f} updates")
        else:
            print(f"compile time {compile_s:.0f} s; compiled is not faster: never repaid")


if __name__ == "__main__":
    main()
