"""One whole update in float32 and in bfloat16 (``Config(precision=...)``), side by side.

For each preset, on CartPole-v1's shapes at DreamerV3's batch (16 x 64 replay steps,
15 imagined steps from each of the 1,024 states), each of ``--runs``
(``PRECISION:MODE``: ``float32`` or ``bfloat16``, ``eager`` or ``compiled``) in a fresh
process with an empty inductor cache, the processes alternating over ``--rounds``:
the median update time after ``--warmup`` updates, the first update (with its
compiling), peak resident memory, and the graphs compiled after the warm-up (0: no
recompilation in steady state). Printed: a row per run with the ratio to the first run.

bfloat16 pays off where the hardware multiplies bfloat16 natively (``avx512_bf16`` or
AMX on x86 CPUs; tensor cores on GPUs); elsewhere its casts cost more than they save.

Run (nothing else running): ``python benchmarks/precision.py --presets size1m``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from agent_throughput import replay_batch  # noqa: E402
from compiled_update import in_fresh_process, measure  # noqa: E402

from torchdreamer.training import Config, DreamerAgent  # noqa: E402
from torchdreamer.training.compiled import compile_agent  # noqa: E402
from torchdreamer.training.config import PRECISIONS  # noqa: E402

MODES = ("eager", "compiled")


def child(precision: str, mode: str, preset: str, warmup: int, updates: int) -> None:
    torch.manual_seed(0)
    config = Config(preset=preset, precision=precision)
    agent = DreamerAgent((4,), 2, discrete=True, config=config)
    if mode == "compiled":
        compile_agent(agent)
    batch = replay_batch()
    print(json.dumps(measure(lambda: agent.update(batch), warmup, updates)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["size1m"])
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["float32:eager", "bfloat16:eager", "float32:compiled", "bfloat16:compiled"],
        help="PRECISION:MODE, the first the reference of the ratios",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument(
        "--child", nargs=3, metavar=("PRECISION", "MODE", "PRESET"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.warmup, args.updates)
        return
    runs = [tuple(run.split(":")) for run in args.runs]
    for run in runs:
        if len(run) != 2 or run[0] not in PRECISIONS or run[1] not in MODES:
            parser.error(
                f"--runs {':'.join(run)}: PRECISION is one of {list(PRECISIONS)}, "
                f"MODE one of {list(MODES)}"
            )
    options = ["--warmup", str(args.warmup), "--updates", str(args.updates)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for preset in args.presets:
        results: dict[tuple[str, str], list[dict]] = {run: [] for run in runs}
        for _ in range(args.rounds):
            for precision, mode in runs:
                row = in_fresh_process(__file__, precision, mode, preset, *options)
                print(f"{preset} {precision} {mode}: {json.dumps(row)}", flush=True)
                results[precision, mode].append(row)
        medians = {
            run: statistics.median(r["update_s"] for r in rows) for run, rows in results.items()
        }
        reference = medians[runs[0]]
        print(
            f"\n{preset}, CartPole shapes "
            f"({args.rounds} rounds, median of {args.updates} updates each)"
        )
        print(
            "| run | ms per update (rounds) | / "
            + ":".join(runs[0])
            + " | first update | peak RSS | graphs after warm-up |"
        )
        print("|---|---|---|---|---|---|")
        for (precision, mode), rows in results.items():
            rounds = ", ".join(f"{r['update_s'] * 1e3:.0f}" for r in rows)
            first = statistics.median(r["first_s"] for r in rows)
            rss = statistics.median(r["peak_rss_mib"] for r in rows)
            graphs = max(r["graphs_after_warmup"] for r in rows)
            print(
                f"| {precision} {mode} | {medians[precision, mode] * 1e3:.0f} ({rounds}) "
                f"| {medians[precision, mode] / reference:.2f} | {first:.1f} s | {rss:,.0f} MiB "
                f"| {graphs} |"
            )


if __name__ == "__main__":
    main()
