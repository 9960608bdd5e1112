"""DreamerV3's update and training on a GPU: ours (eager, compiled, CUDA-graphed, float32
and bfloat16), TorchRL 0.14.1's and the official JAX one's, and training throughput.

The one prepared script for a lent GPU machine (the ``run`` tool), sized to its minutes: it
goes through ``--plan`` (most wanted first) until ``--budget-s`` (450 s: the whole script,
under 8 minutes) is spent, no update entry longer than ``--entry-s``, each entry in a
fresh process (with an empty inductor cache) on one device (``--device``). Entries:

- ``PRESET:PRECISION:MODE``: ``DreamerAgent.update`` on CartPole-v1's shapes at
  DreamerV3's batch (``--batch``: 16 x 64 replay steps, 15 imagined steps from each of the
  1,024 states). Modes: ``eager``; ``compiled`` (``compile_agent``: the hot regions under
  inductor); ``cudagraphs`` (the same, with inductor's CUDA graph trees, what
  ``torch.compile(mode="reduce-overhead")`` turns on: each compiled region replayed as a
  graph); and the training loop's device path (``training/prefetch.py``,
  ``training/static_update.py``: the functions a run on CUDA calls), each batch drawn from
  a replay of CartPole-v1's rows by a ``Prefetcher`` (on CUDA: sampled, pinned and copied
  while the update before it runs), copied into a ``StaticUpdate``'s input tensors and
  updated: ``static`` (eager, what ``torchdreamer train`` does on CUDA), ``graph`` (the
  whole step captured as one CUDA graph after 3 eager updates, then replayed) and
  ``compiled_graph`` (the same, of the compiled agent).
- ``torchrl:PRESET:float32:MODE``: TorchRL 0.14.1's own DreamerV3 update at the same
  widths and batch, built by ``torchrl_update.py`` (its ``DreamerV3OptimizationStepper``:
  ``eager``, or ``compiled`` with ``compile_train_step=True``; no CUDA graph).
- ``official:PRESET:PRECISION``: the official JAX update, timed by
  ``time_official.py`` (``--official-script``, by default the project's
  ``shared/bench/official_dreamerv3/time_official.py`` beside the checkout) with the
  official source ``--official-src DIR`` (its ``dreamerv3/`` and ``embodied/``; its
  pure-Python requirements importable by ``--official-python``). Run only when
  ``--official-src`` is given and ``import jax`` works; else the row says why not. That
  script pins JAX to the CPU (``JAX_PLATFORMS=cpu``): on a GPU machine the row is the
  official update on that machine's CPU cores, not on the GPU.
- ``throughput:PRESET:ENV``: ``torchdreamer.training.train`` on ``ENV`` (CartPole-v1 with
  the default run's settings; ``dmc:...`` with the ``dmc_vision`` suite's: 64 x 64
  images, 16 copies, train ratio 256), at ``PRESET`` and ``--batch``, on ``--device``
  (``--compile auto``: eager on CUDA; off on CPU, for a quick dry run),
  stopped after its share of ``--throughput`` seconds (the throughput entries share them
  evenly), counted from the run's start (its environments made and checked), by a SIGTERM
  it sends itself (the clean stop of ``training/stop.py``). From its ``metrics.csv``: env
  steps and updates, per second over the whole run and after the first update; on CUDA,
  the GPU's busy fraction (the mean of ``torch.cuda.utilization()`` sampled every 0.5 s,
  when pynvml imports).

Per update entry: the first update (compiling included; TorchRL's compiling warm-up and
the official ahead-of-time compile added), the median update after the warm-up, kernels
launched per update (the profiler's CUDA kernels, memcpys and memsets; on CPU, the ATen
operators that compute; not counted for JAX), peak memory (GPU memory on CUDA; else peak
RSS), graphs compiled after the warm-up (0: no recompilation), or the error or time-out
that ended it. Rows are printed as JSON as they come, then two tables; ``--out FILE`` also
writes the rows.

On the GPU machine (the image has no tensordict, torchrl, gymnasium or dm_control: carry
them as wheels, see docs/performance.md), nothing else running::

    python benchmarks/gpu_update.py --out $OUT/gpu.json

A dry run on CPU (seconds per entry)::

    python benchmarks/gpu_update.py --device cpu --batch 2 8 --warmup 0 --updates 1 \\
        --throughput 6 --plan small:float32:eager torchrl:small:float32:eager \\
        official:small:float32 throughput:small:CartPole-v1
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
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
#: TorchRL's modes: its stepper eager, or with ``compile_train_step=True``.
TORCHRL_MODES = ("eager", "compiled")
PRECISIONS = ("float32", "bfloat16")
PLAN = [
    "size1m:float32:eager",
    "torchrl:size1m:float32:eager",
    "throughput:small:CartPole-v1",
    "throughput:size200m:dmc:walker_walk",
    "official:size1m:float32",
    "size1m:float32:compiled",
    "torchrl:size1m:float32:compiled",
    "size12m:float32:eager",
    "torchrl:size12m:float32:eager",
    "size200m:float32:eager",
    "torchrl:size200m:float32:eager",
    "size1m:float32:static",
    "size1m:float32:graph",
    "size1m:float32:compiled_graph",
    "size1m:float32:cudagraphs",
    "size1m:bfloat16:eager",
    "official:size1m:bfloat16",
    "size1m:bfloat16:compiled",
    "size12m:bfloat16:eager",
    "size200m:bfloat16:eager",
    "size12m:float32:compiled",
    "torchrl:size12m:float32:compiled",
    "size12m:float32:cudagraphs",
    "size1m:bfloat16:cudagraphs",
    "size200m:bfloat16:compiled",
    "torchrl:size200m:float32:compiled",
]
#: Where ``time_official.py`` lies, from this checkout (``shared/`` beside it).
OFFICIAL_SCRIPT = (
    Path(__file__).resolve().parents[2] / "shared/bench/official_dreamerv3/time_official.py"
)


def parse(entry: str) -> tuple[str, list[str]]:
    """``entry``'s kind (``ours``, ``torchrl``, ``official``, ``throughput``) and fields;
    raises ValueError saying what a well-formed one is."""
    kind, _, rest = entry.partition(":")
    if kind == "throughput":
        preset, _, env = rest.partition(":")
        if not preset or not env:
            raise ValueError(f"{entry}: throughput:PRESET:ENV, e.g. throughput:small:CartPole-v1")
        return kind, [preset, env]
    parts = rest.split(":")
    if kind == "torchrl":
        if len(parts) != 3 or parts[1] != "float32" or parts[2] not in TORCHRL_MODES:
            raise ValueError(
                f"{entry}: torchrl:PRESET:float32:MODE, MODE one of {list(TORCHRL_MODES)}"
            )
        return kind, parts
    if kind == "official":
        if len(parts) != 2 or parts[1] not in PRECISIONS:
            raise ValueError(f"{entry}: official:PRESET:PRECISION, PRECISION one of {PRECISIONS}")
        return kind, parts
    parts = entry.split(":")
    if len(parts) != 3 or parts[1] not in PRECISIONS or parts[2] not in MODES:
        raise ValueError(f"{entry}: PRESET:PRECISION:MODE, MODE one of {list(MODES)}")
    return "ours", parts


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


def update_row(step, setup_s: float, device: torch.device, warmup: int, updates: int) -> dict:
    """``measure`` of one update ``step()`` on ``device``, in the script's row fields."""
    row = measure(step, warmup, updates, count=lambda step: kernels(step, device))
    row["first_s"] += setup_s
    row["kernels"] = row.pop("operators")
    row["update_ms"] = row.pop("update_s") * 1e3
    if device.type == "cuda":
        row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        row["peak_mib"] = row["peak_rss_mib"]
    return row


def child(entry: str, device_name: str, batch: list[int], warmup: int, updates: int) -> dict:
    """The row of one update entry (ours or TorchRL's), measured in this process."""
    kind, parts = parse(entry)
    device = torch.device(device_name)
    torch.manual_seed(0)
    if kind == "torchrl":
        from torchrl_update import torchrl_step

        preset, _, mode = parts
        step, _, setup_s = torchrl_step(preset, mode == "compiled", device, *batch)
        if device.type == "cuda":  # TorchRL's step leaves its metrics on the device

            def synced() -> None:
                step()
                torch.cuda.synchronize(device)

            return update_row(synced, setup_s, device, warmup, updates)
        return update_row(step, setup_s, device, warmup, updates)

    preset, precision, mode = parts
    if mode in CUDA_ONLY and device.type != "cuda":
        raise SystemExit(f"{mode} needs a CUDA device")
    if mode == "cudagraphs":
        torch._inductor.config.triton.cudagraphs = True
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

    row = update_row(step, 0.0, device, warmup, updates)
    if mode in LOOP_MODES:
        batches.close()
    return row


def stop_after(seconds: float, started: Path, done: threading.Event) -> None:
    """Send this process a SIGTERM ``seconds`` after ``started`` appears (a run's
    ``config.json``: its environments made and checked), with the training loop
    listening for it (its handler installed, not the one in place now); never after
    ``done``."""
    before = signal.getsignal(signal.SIGTERM)

    def stop() -> None:
        while not started.exists() or signal.getsignal(signal.SIGTERM) is before:
            if done.wait(0.05):
                return
        if not done.wait(seconds) and signal.getsignal(signal.SIGTERM) is not before:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop, daemon=True).start()


def gpu_busy(device: torch.device, done: threading.Event) -> list[float]:
    """Samples of the GPU's busy fraction (``torch.cuda.utilization``), every 0.5 s until
    ``done``, appended to the list returned."""
    samples: list[float] = []

    def sample() -> None:
        while not done.wait(0.5):
            samples.append(torch.cuda.utilization(device) / 100)

    threading.Thread(target=sample, daemon=True).start()
    return samples


def rates(rows: list[dict[str, str]]) -> dict:
    """Env steps and updates, and per second, of a run's ``metrics.csv`` rows: over the
    whole run (start-up and the steps before the first update included) and after the
    first row with updates (None with fewer than two such rows)."""
    last = rows[-1]
    steps, updates, wall = int(last["env_step"]), int(last["updates"]), float(last["wall_time"])
    row = {
        "env_steps": steps,
        "updates": updates,
        "wall_s": wall,
        "env_steps_per_s": steps / wall,
        "updates_per_s": updates / wall,
        "steady_env_steps_per_s": None,
        "steady_updates_per_s": None,
    }
    updating = [r for r in rows if int(r["updates"]) > 0]
    if len(updating) >= 2:
        first = updating[0]
        elapsed = wall - float(first["wall_time"])
        row["steady_env_steps_per_s"] = (steps - int(first["env_step"])) / elapsed
        row["steady_updates_per_s"] = (updates - int(first["updates"])) / elapsed
    return row


def throughput(entry: str, device_name: str, batch: list[int], seconds: float) -> dict:
    """The row of a throughput entry: a training run stopped after ``seconds``."""
    from torchdreamer.training.loop import train
    from torchdreamer.training.run_directory import CONFIG

    _, (preset, env) = parse(entry)
    device = torch.device(device_name)
    if env.startswith("dmc:"):  # images: MuJoCo renders headless through EGL
        os.environ.setdefault("MUJOCO_GL", "egl")
        settings = {"suite": "dmc_vision"}
    else:
        settings = {}
    config = Config(
        env=env,
        preset=preset,
        device=device_name,
        compile="off" if device.type == "cpu" else "auto",  # a CPU dry run stays quick
        steps=10**9,
        batch_size=batch[0],
        batch_length=batch[1],
        replay_capacity=100_000,
        log_every=64,
        eval_every=0,
        checkpoint_every=10**9,
        logger="csv",
        **settings,
    )
    done = threading.Event()
    if device.type != "cuda":
        samples, busy = None, "unavailable: not a CUDA device"
    elif importlib.util.find_spec("pynvml") is None:
        samples, busy = None, "unavailable: pynvml does not import"
    else:
        samples, busy = gpu_busy(device, done), None
    with tempfile.TemporaryDirectory() as directory:
        logdir = Path(directory) / "run"
        stop_after(seconds, logdir / CONFIG, done)
        try:
            summary = train(config, logdir, progress=False)
        finally:
            done.set()
        with open(logdir / "metrics.csv", newline="") as file:
            row = rates(list(csv.DictReader(file)))
    if samples:
        busy = sum(samples) / len(samples)
    row.update(gpu_busy=busy, update=summary.update, stopped_by_sigterm=summary.stopped_by)
    row["num_envs"], row["train_ratio"] = config.num_envs, config.train_ratio
    if device.type == "cuda":
        row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def official(entry: str, args: argparse.Namespace, left: float) -> dict:
    """The row of an official entry: ``time_official.py`` run, or why it was not."""
    _, (preset, precision) = parse(entry)
    why = []
    if args.official_src is None:
        why.append("no --official-src")
    elif not (args.official_src / "dreamerv3").is_dir():
        why.append(f"no dreamerv3/ in --official-src {args.official_src}")
    if not args.official_script.is_file():
        why.append(f"no {args.official_script}")
    try:
        probe = subprocess.run(
            [args.official_python, "-c", "import jax"],
            capture_output=True,
            text=True,
            timeout=min(60.0, left),
        )
        failed = probe.returncode != 0
    except (OSError, subprocess.TimeoutExpired):
        failed = True
    if failed:
        why.append(f"jax not importable by {args.official_python}")
    if why:
        return {"error": "not run: " + "; ".join(why)}
    command = [args.official_python, str(args.official_script), "--size", preset]
    command += ["--dtype", precision, "--src", str(args.official_src)]
    command += ["--batch", str(args.batch[0]), "--length", str(args.batch[1])]
    command += ["--warmup", str(max(args.warmup, 1)), "--n", str(max(args.updates, 1))]
    environment = {**os.environ, "DV3_SRC": str(args.official_src)}
    out = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=left)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "update_ms": result["median_ms"],
        "first_s": result["train_compile_s"] + result["first_update_ms"] / 1e3,
        "kernels": None,
        "peak_mib": result["peak_rss_mib"],
        "graphs_after_warmup": None,
        "jax_platform": "cpu (time_official.py pins JAX_PLATFORMS=cpu)",
        "trainable_params": result["trainable_params"],
        "losses_finite": result["losses_finite"],
        "jax": result["jax"],
    }


def run_entry(entry: str, args: argparse.Namespace, options: list[str], left: float) -> dict:
    """One entry's row, measured in a fresh process that ends within ``left`` seconds."""
    kind, _ = parse(entry)
    if kind == "official":
        try:
            return official(entry, args, left)
        except subprocess.TimeoutExpired:  # run() has killed the child
            return {"error": f"timed out after {left:.0f} s"}
    command = [sys.executable, __file__, "--child", entry, *options]
    try:
        with tempfile.TemporaryDirectory() as cache:  # compiling from scratch, as a run does
            environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            out = subprocess.run(
                command, capture_output=True, text=True, env=environment, timeout=left
            )
    except subprocess.TimeoutExpired:  # run() has killed the child
        return {"error": f"timed out after {left:.0f} s"}
    if out.returncode:
        lines = out.stderr.strip().splitlines() or [f"exit {out.returncode}"]
        return {"error": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", nargs="+", default=PLAN, help="entries, as the module says")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", nargs=2, type=int, default=[16, 64], metavar=("B", "T"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=450.0, help="all entries together")
    parser.add_argument("--entry-s", type=float, default=150.0, help="one update entry at most")
    parser.add_argument(
        "--throughput",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="wall time of the throughput runs together, shared evenly",
    )
    parser.add_argument("--official-src", type=Path, help="the official dreamerv3 source")
    parser.add_argument("--official-script", type=Path, default=OFFICIAL_SCRIPT)
    parser.add_argument("--official-python", default=sys.executable)
    parser.add_argument("--out", type=Path, help="also write the rows here (JSON)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = ["--device", args.device, "--batch", *map(str, args.batch)]
    options += ["--warmup", str(args.warmup), "--updates", str(args.updates)]
    if args.child:
        if parse(args.child)[0] == "throughput":
            row = throughput(args.child, args.device, args.batch, args.throughput)
        else:
            row = child(args.child, args.device, args.batch, args.warmup, args.updates)
        print(json.dumps(row))
        return
    try:
        kinds = [parse(entry)[0] for entry in args.plan]
    except ValueError as error:
        parser.error(f"--plan {error}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; --device cpu for a dry run")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, batch {args.batch[0]} x {args.batch[1]}")
    run_s = args.throughput / max(kinds.count("throughput"), 1)
    deadline = time.monotonic() + args.budget_s
    rows = []
    for entry, kind in zip(args.plan, kinds, strict=True):
        left = deadline - time.monotonic()
        row: dict = {"entry": entry}
        if kind == "throughput":
            # Its start (the environments), its seconds, the stop (the final checkpoint
            # and logs) and the exit.
            needed = run_s + 60
            if left < needed:
                row["error"] = f"not run: budget spent ({needed:.0f} s needed)"
            else:
                more = [*options, "--throughput", str(run_s)]
                row.update(run_entry(entry, args, more, min(left, run_s + 180)))
        elif left < 5:
            row["error"] = "not run: budget spent"
        else:
            row.update(run_entry(entry, args, options, min(left, args.entry_s)))
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print_tables(rows)


SIDES = {"ours": "torchdreamer", "torchrl": "TorchRL", "official": "official (JAX)"}


UPDATE_COLUMNS = ["side", "preset", "precision", "mode", "ms per update", "first update"]
UPDATE_COLUMNS += ["kernels per update", "peak MiB", "graphs after warm-up"]
THROUGHPUT_COLUMNS = ["env", "preset", "wall s", "env steps", "updates", "env steps/s"]
THROUGHPUT_COLUMNS += ["updates/s", "after the first update: env steps/s", "updates/s"]
THROUGHPUT_COLUMNS += ["GPU busy"]


def number(value: float | None, form: str) -> str:
    """``value`` in ``form``, or a dash where it was not measured."""
    return "—" if value is None else format(value, form)


def print_tables(rows: list[dict]) -> None:
    """The update entries' table, then the throughput entries' (each if any)."""
    updates, throughputs = [], []
    for row in rows:
        kind, parts = parse(row["entry"])
        if kind == "throughput":
            preset, env = parts
            cells = [env, preset]
            if "error" not in row:
                busy = row["gpu_busy"]
                cells += [
                    f"{row['wall_s']:.0f}",
                    f"{row['env_steps']:,}",
                    f"{row['updates']:,}",
                    f"{row['env_steps_per_s']:.1f}",
                    f"{row['updates_per_s']:.2f}",
                    number(row["steady_env_steps_per_s"], ".1f"),
                    number(row["steady_updates_per_s"], ".2f"),
                    f"{busy:.0%}" if isinstance(busy, float) else busy,
                ]
            throughputs.append(cells + ([row["error"]] if "error" in row else []))
            continue
        cells = [SIDES[kind], *parts] + (["jit"] if kind == "official" else [])
        if "error" not in row:
            cells += [
                f"{row['update_ms']:.1f}",
                f"{row['first_s']:.1f} s",
                number(row["kernels"], ","),
                f"{row['peak_mib']:,.0f}",
                number(row["graphs_after_warmup"], "d"),
            ]
        updates.append(cells + ([row["error"]] if "error" in row else []))
    for columns, lines in ((UPDATE_COLUMNS, updates), (THROUGHPUT_COLUMNS, throughputs)):
        if lines:
            print("\n| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
            for cells in lines:
                cells += [""] * (len(columns) - len(cells))
                print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
