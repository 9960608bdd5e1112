"""The whole update on a GPU: eager, compiled and CUDA-graphed, in float32 and bfloat16.

The one prepared script for a lent GPU machine (the ``device`` tool), sized to its
minutes: it goes through ``--plan`` (``PRESET:PRECISION:MODE``, most wanted first) until
``--budget-s`` is spent, each entry in a fresh process on CartPole-v1's shapes at
DreamerV3's batch (16 x 64 replay steps, 15 imagined steps from each of the 1,024
states). Modes: ``eager``; ``compiled`` (``compile_agent``: the hot regions under
inductor); ``cudagraphs`` (the same, with inductor's CUDA graph trees, what
``torch.compile(mode="reduce-overhead")`` turns on: each compiled region replayed as a
graph); and the training loop's device path (``training/prefetch.py``,
``training/static_update.py``: the functions a run on CUDA calls), each batch drawn from
a replay of CartPole-v1's rows by a ``Prefetcher`` (on CUDA: sampled, pinned and copied
while the update before it runs), copied into a ``StaticUpdate``'s input tensors and
updated: ``static`` (eager, what ``torchdreamer train`` does on CUDA), ``graph`` (the
whole step captured as one CUDA graph after 3 eager updates, then replayed) and
``compiled_graph`` (the same, of the compiled agent). Per entry: the first update
(compiling included), the median update after the
warm-up, kernels launched per update (the profiler's CUDA kernels, memcpys and memsets;
on CPU, the ATen operators that compute), peak memory, graphs compiled after the warm-up
(0: no recompilation), or the error or time-out that ended it. Rows are printed as JSON as
they come, then a table; ``--out FILE`` also writes the rows.

Run on the GPU machine, nothing else running: ``python benchmarks/gpu_update.py --out
$OUT/gpu.json``. A dry run on CPU: ``python benchmarks/gpu_update.py --device cpu --plan
small:float32:eager --batch 2 8``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).parent))

from agent_throughput import replay_batch  # noqa: E402
from compiled_update import measure  # noqa: E402
from operator_count import operators  # noqa: E402

from torchdreamer.training import Config, DreamerAgent  # noqa: E402
from torchdreamer.training.compiled import compile_agent  # noqa: E402
from torchdreamer.training.prefetch import Prefetcher  # noqa: E402
from torchdreamer.training.replay import SequenceReplay  # noqa: E402
from torchdreamer.training.static_update import StaticUpdate  # noqa: E402

MODES = ("eager", "compiled", "cudagraphs", "static", "graph", "compiled_graph")
#: The modes that need a CUDA device.
CUDA_ONLY = ("cudagraphs", "graph", "compiled_graph")
#: The modes that take their batches from a replay, as the training loop does.
LOOP_MODES = ("static", "graph", "compiled_graph")
PLAN = [
    "size1m:float32:eager",
    "size1m:float32:compiled",
    "size1m:float32:cudagraphs",
    "size1m:float32:static",
    "size1m:float32:graph",
    "size1m:float32:compiled_graph",
    "size1m:bfloat16:eager",
    "size1m:bfloat16:compiled",
    "size12m:float32:eager",
    "size12m:bfloat16:eager",
    "size200m:float32:eager",
    "size200m:bfloat16:eager",
    "size12m:float32:compiled",
    "size12m:float32:cudagraphs",
    "size1m:bfloat16:cudagraphs",
    "size200m:bfloat16:compiled",
]


def kernels(step, device: torch.device) -> int:
    """Kernels one ``step()`` launches on ``device`` (CPU: the ATen operators that compute)."""
    if device.type != "cuda":
        return operators(step)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize(device)
    return sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())


def filled_replay(b: int, t: int) -> SequenceReplay:
    """A replay of ``b`` streams of ``4 * t`` steps of CartPole-v1's rows (random)."""
    replay = SequenceReplay(b, 4 * b * t, torch.Generator().manual_seed(0))
    every = torch.ones(b, dtype=torch.bool)
    for row in replay_batch(b, 4 * t).unbind(1):
        replay.add(row, every)
    return replay


def child(entry: str, device_name: str, batch: list[int], warmup: int, updates: int) -> None:
    preset, precision, mode = entry.split(":")
    device = torch.device(device_name)
    if mode in CUDA_ONLY and device.type != "cuda":
        raise SystemExit(f"{mode} needs a CUDA device")
    if mode == "cudagraphs":
        torch._inductor.config.triton.cudagraphs = True
    torch.manual_seed(0)
    config = Config(preset=preset, precision=precision)
    agent = DreamerAgent((4,), 2, discrete=True, config=config).to(device)
    if mode in ("compiled", "cudagraphs", "compiled_graph"):
        compile_agent(agent)
    if mode in LOOP_MODES:
        # The loop's burst, never ending: the next batch is drawn while this update runs.
        replay = filled_replay(*batch)
        batches = Prefetcher(replay, batch[0], batch[1], 10**9, device)
        update = StaticUpdate(agent, graph=mode != "static", warmup=3)

        def step() -> None:  # the metrics are read to the host: the step has ended
            update(next(batches))

    else:
        data = replay_batch(*batch).to(device)

        def step() -> None:  # update() reads its metrics to the host: the step has ended
            agent.update(data)

    row = measure(step, warmup, updates, count=lambda step: kernels(step, device))
    if mode in LOOP_MODES:
        batches.close()
    row["kernels"] = row.pop("operators")
    row["update_ms"] = row.pop("update_s") * 1e3
    if device.type == "cuda":
        row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        row["peak_mib"] = row["peak_rss_mib"]
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", nargs="+", default=PLAN, help="PRESET:PRECISION:MODE ...")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", nargs=2, type=int, default=[16, 64], metavar=("B", "T"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=270.0, help="all entries together")
    parser.add_argument("--out", type=Path, help="also write the rows here (JSON)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = ["--device", args.device, "--batch", *map(str, args.batch)]
    options += ["--warmup", str(args.warmup), "--updates", str(args.updates)]
    if args.child:
        child(args.child, args.device, args.batch, args.warmup, args.updates)
        return
    for entry in args.plan:
        parts = entry.split(":")
        if len(parts) != 3 or parts[1] not in ("float32", "bfloat16") or parts[2] not in MODES:
            parser.error(f"--plan {entry}: PRESET:PRECISION:MODE, MODE one of {list(MODES)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; --device cpu for a dry run")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, batch {args.batch[0]} x {args.batch[1]}")
    deadline = time.monotonic() + args.budget_s
    rows = []
    for entry in args.plan:
        left = deadline - time.monotonic()
        row: dict = {"entry": entry}
        if left < 5:
            row["error"] = "not run: budget spent"
        else:
            command = [sys.executable, __file__, "--child", entry, *options]
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=left)
            except subprocess.TimeoutExpired:  # run() has killed the child
                row["error"] = f"timed out after {left:.0f} s (the budget's end)"
            else:
                if out.returncode:
                    lines = out.stderr.strip().splitlines() or [f"exit {out.returncode}"]
                    row["error"] = lines[-1]
                else:
                    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(
        "\n| preset | precision | mode | ms per update | first update | kernels per update "
        "| peak MiB | graphs after warm-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = row["entry"].split(":")
        if "error" in row:
            cells += [row["error"], "", "", "", ""]
        else:
            cells += [
                f"{row['update_ms']:.1f}",
                f"{row['first_s']:.1f} s",
                f"{row['kernels']:,}",
                f"{row['peak_mib']:,.0f}",
                str(row["graphs_after_warmup"]),
            ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
