"""Updates per second with 1 and 2 torch threads, on an idle CPU and beside a busy process.

The agent of ``torchdreamer train``'s defaults (``Config()`` on CartPole-v1's shapes,
a random replay-shaped batch of 16 x 64 steps as in ``agent_throughput.py``) is
updated with each thread count: 1, 2 and what ``configure_threads(0)`` chooses
(looked up again once the competitor runs). Each count is measured idle, then
beside one competing process that spins on a CPU (a child, killed after each
measurement). Settings alternate within every round, so a drift of the machine's
speed shows in all of them alike; each measurement runs updates for at least
``--min-time`` seconds (and at least one), and the medians over ``--rounds`` are
reported with their ratios.

Run it where nothing else computes (here: ``flock /tmp/heavy.lock python
benchmarks/contention.py --rounds 3``); the child is then the only competitor.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time

import torch
from agent_throughput import replay_batch

from torchdreamer.training import Config, DreamerAgent
from torchdreamer.training.resources import available_cpus, configure_threads

SETTINGS = ("1", "2", "auto")


def updates_per_second(agent: DreamerAgent, batch, min_time: float) -> float:
    updates, start = 0, time.perf_counter()
    while True:
        agent.update(batch)
        updates += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return updates / elapsed


def spinner() -> subprocess.Popen:
    """A child process that keeps one CPU busy until it is killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)


def threads_for(setting: str) -> int:
    return configure_threads(0 if setting == "auto" else int(setting))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--preset", default=Config().preset)
    args = parser.parse_args()
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    if "OMP_NUM_THREADS" in os.environ:
        parser.error("unset OMP_NUM_THREADS: the benchmark sets the thread counts itself.")
    torch.manual_seed(0)
    agent = DreamerAgent(
        (4,), 2, discrete=True, config=Config(preset=args.preset, precision="float32")
    )
    batch = replay_batch()
    rates: dict[tuple[str, bool], list[float]] = {}
    chosen: dict[tuple[str, bool], list[int]] = {}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            for busy in (False, True):
                child = spinner() if busy else None
                try:
                    if child is not None:
                        time.sleep(0.5)  # running, and seen as runnable by the kernel
                    threads = threads_for(setting)
                    if not busy:
                        agent.update(batch)  # a warm-up at this thread count
                    rate = updates_per_second(agent, batch, args.min_time)
                finally:
                    if child is not None:
                        child.kill()
                        child.wait()
                rates.setdefault((setting, busy), []).append(rate)
                chosen.setdefault((setting, busy), []).append(threads)
                print(f"  {setting} threads, busy={busy}: {threads} threads, {rate:.3f} updates/s")
    print(
        f"torch {torch.__version__}, {available_cpus()} CPUs, preset {args.preset}, "
        f"16 x 64 steps per update, {args.rounds} rounds, >= {args.min_time} s each"
    )
    print("| threads | idle: updates/s | 1 busy process: updates/s | busy / idle |")
    print("|---|---|---|---|")
    base = statistics.median(rates[("1", False)])
    for setting in SETTINGS:
        idle = statistics.median(rates[(setting, False)])
        busy = statistics.median(rates[(setting, True)])
        label = setting
        if setting == "auto":
            counts = sorted(set(chosen[(setting, False)])), sorted(set(chosen[(setting, True)]))
            label = f"configure_threads(0): {counts[0]} idle, {counts[1]} busy"
        print(f"| {label} | {idle:.2f} | {busy:.3f} | {busy / idle:.2f}x |")
    print(f"(ratios to 1 thread idle, {base:.2f} updates/s: ", end="")
    print(
        ", ".join(
            f"{s} {'busy' if b else 'idle'} {statistics.median(rates[(s, b)]) / base:.2f}x"
            for s in SETTINGS
            for b in (False, True)
        )
        + ")"
    )


if __name__ == "__main__":
    main()
