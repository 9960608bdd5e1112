"""Replay memory of a pixel run: peak RSS and checkpoint size, by storage layout.

Each measurement is a fresh process that fills a ``SequenceReplay`` the way the
training loop does, one step of 16 environments at a time, with rows of the
runner's layout for a 64x64x3 ``uint8`` image task (observation, a 3-dim
``prev_action``, ``reward``, ``is_first``, ``is_last``, ``is_terminal``; random
frames), samples a 16 x 64 batch every 16 steps (train ratio 1: memory, not
learning, is measured, so no network is trained), then writes the replay into a
checkpoint with ``save_checkpoint`` as the loop does. Reported per layout and
env step count:

- ``peak RSS``: the process's ``VmHWM`` (``/proc/self/status``), which counts
  the pages of memory-mapped files the process touched too;
- ``peak anon``: the largest ``RssAnon`` seen (sampled every 64 steps and after
  the checkpoint): the memory the process itself needs; file pages belong to
  the page cache, which the kernel writes back and evicts under pressure;
- ``checkpoint``: the size of ``checkpoint.pt``; ``files``: the disk blocks of
  the memory-mapped replay files (sparse: only what was written).

Layouts: ``full`` is the replay that allocates ``[num_envs, capacity // num_envs]``
at the first add and checkpoints it whole, imported from another checkout
(``--full-src``, the code before growing storage); ``growing`` and ``memmap``
are this checkout's in-memory and on-disk (``directory=``) storage.

Run: ``python benchmarks/replay_memory.py --full-src /work/main``
(``--steps 10000 100000 --capacity 1000000 --full-capacity 200000``). The full
layout's footprint does not depend on the steps taken, only on its capacity:
it is measured at ``--full-capacity`` (its RSS at the official 1M capacity is
that figure scaled by ``capacity / full_capacity``, printed as well).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENVS, BATCH, LENGTH, ACTIONS = 16, 16, 64, 3
ROW_BYTES = 64 * 64 * 3 + 4 * ACTIONS + 4 + 3  # observation, prev_action, reward, 3 flags


def status_kib(field: str) -> int:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def child(layout: str, steps: int, capacity: int) -> dict:
    """Fill one replay, checkpoint it; the figures of this process."""
    import torch
    from tensordict import TensorDict

    from torchdreamer.training import SequenceReplay
    from torchdreamer.training.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="replay_memory_"))
    generator = torch.Generator().manual_seed(0)
    if layout == "memmap":
        replay = SequenceReplay(ENVS, capacity, generator, directory=work / "replay")
    else:
        replay = SequenceReplay(ENVS, capacity, generator)
    every = torch.ones(ENVS, dtype=torch.bool)
    flags = torch.zeros(ENVS, dtype=torch.bool)
    peak_anon, started = 0, time.perf_counter()
    for t in range(steps // ENVS):
        rows = TensorDict(
            observation=torch.randint(0, 256, (ENVS, 64, 64, 3), dtype=torch.uint8),
            prev_action=torch.randn(ENVS, ACTIONS),
            reward=torch.randn(ENVS),
            is_first=flags,
            is_last=flags,
            is_terminal=flags,
            batch_size=[ENVS],
        )
        replay.add(rows, every)
        if t % 16 == 15 and replay.can_sample(LENGTH):
            replay.sample(BATCH, LENGTH)
        if t % 64 == 0:
            peak_anon = max(peak_anon, status_kib("RssAnon"))
    state = {"replay": replay.state_dict(), "replay_generator": generator.get_state()}
    if layout == "full" and "storage" not in state["replay"]:
        raise SystemExit("--full-src does not hold the full-storage replay layout.")
    path = save_checkpoint(work, state)
    peak_anon = max(peak_anon, status_kib("RssAnon"))
    files = sum(p.stat().st_blocks * 512 for p in (work / "replay").glob("*"))
    return {
        "layout": layout,
        "steps": steps,
        "capacity": capacity,
        "rows": len(replay),
        "peak_rss_mib": status_kib("VmHWM") / 1024,
        "peak_anon_mib": peak_anon / 1024,
        "checkpoint_mib": path.stat().st_size / 2**20,
        "files_mib": files / 2**20,
        "seconds": time.perf_counter() - started,
        "workdir": str(work),
    }


def measure(layout: str, steps: int, capacity: int, source: str) -> dict:
    env = {**os.environ, "PYTHONPATH": source, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", layout, str(steps), str(capacity)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{layout} at {steps} steps failed:\n{out.stderr}")
    result = json.loads(out.stdout.splitlines()[-1])
    subprocess.run(["rm", "-rf", result.pop("workdir")], check=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--capacity", type=int, default=1_000_000, help="rows (official 1e6)")
    parser.add_argument("--full-capacity", type=int, default=200_000)
    parser.add_argument("--full-src", help="checkout with the full-storage layout")
    parser.add_argument("--layouts", nargs="+", default=["full", "growing", "memmap"])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        layout, steps, capacity = args.child
        print(json.dumps(child(layout, int(steps), int(capacity))))
        return
    here = str(Path(__file__).resolve().parents[1])
    print(
        f"| layout | env steps | capacity | rows | peak RSS (MiB) | peak anon (MiB) "
        f"| checkpoint (MiB) | replay files on disk (MiB) | s |\n|{'---|' * 9}"
    )
    for steps in args.steps:
        for layout in args.layouts:
            if layout == "full" and not args.full_src:
                continue
            full = layout == "full"
            capacity = args.full_capacity if full else args.capacity
            r = measure(layout, steps, capacity, args.full_src if full else here)
            print(
                f"| {layout} | {steps} | {capacity} | {r['rows']} | {r['peak_rss_mib']:.0f} "
                f"| {r['peak_anon_mib']:.0f} | {r['checkpoint_mib']:.2f} | {r['files_mib']:.0f} "
                f"| {r['seconds']:.0f} |",
                flush=True,
            )
    if args.full_src and "full" in args.layouts:
        per_env = args.capacity // ENVS
        print(
            f"\nfull layout at capacity {args.capacity}: allocates {ENVS} x {per_env} rows of "
            f"{ROW_BYTES} bytes = {ENVS * per_env * ROW_BYTES / 2**20:.0f} MiB at the first add, "
            "and checkpoints as much, whatever the steps taken."
        )


if __name__ == "__main__":
    main()
