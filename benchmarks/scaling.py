"""Data-parallel scaling on one CPU machine: one whole update with 1 and 2 processes.

Each configuration starts its processes (gloo, like ``torchrun``), builds the agent
at ``--preset`` on CartPole-v1's shapes, and times ``agent.update`` on a replay batch
of 16 x 64 steps per process (``DistributedDataParallel`` averaging the gradients
when there are 2). Every process runs the same fixed number of timed updates,
since each is a collective. Reported: median ms per update, updates per second,
and replayed steps per second (processes x 16 x 64 per update), with the speed-up
of the latter over the single process that uses all the threads.

On a 2-core machine the fair comparison is 1 process x 2 threads against
2 processes x 1 thread; 1 process x 1 thread shows what one core does alone.

Run: ``python benchmarks/scaling.py`` (``--preset small --updates 10``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics

import torch
import torch.multiprocessing as mp
from agent_throughput import replay_batch
from torch.utils.benchmark import Timer

from torchdreamer.training import Config, DreamerAgent, distributed

BATCH, LENGTH = 16, 64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, threads: int, args, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    ranks = distributed.init_from_env()
    try:
        torch.manual_seed(0)
        agent = DreamerAgent(
            (4,), 2, discrete=True, config=Config(preset=args.preset, precision="float32")
        )
        parallel = distributed.wrap(agent, ranks)
        torch.manual_seed(rank)
        batch = replay_batch(BATCH, LENGTH)
        for _ in range(2):
            agent.update(batch, parallel)
        timer = Timer(
            "agent.update(batch, parallel)",
            globals={"agent": agent, "batch": batch, "parallel": parallel},
            num_threads=threads,
        )
        times = [timer.timeit(1).median for _ in range(args.updates)]
        if ranks.is_main:
            results[(world, threads)] = times
    finally:
        distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--updates", type=int, default=10, help="timed updates per setting")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    settings = [(1, cores), (2, max(cores // 2, 1)), (1, max(cores // 2, 1))]
    results = mp.Manager().dict()
    for world, threads in settings:
        mp.spawn(_rank, args=(world, _free_port(), threads, args, results), nprocs=world)
    base = statistics.median(results[settings[0]])
    print(
        f"preset {args.preset}, {BATCH} x {LENGTH} steps per process, "
        f"{args.updates} timed updates, {cores} cores, torch {torch.__version__}"
    )
    header = "processes x threads | ms/update | updates/s | replayed steps/s | speed-up"
    print(header)
    print("-" * len(header))
    for world, threads in settings:
        median = statistics.median(results[(world, threads)])
        steps = world * BATCH * LENGTH / median
        speedup = steps / (BATCH * LENGTH / base)
        print(
            f"{world} x {threads:<15d} | {median * 1e3:9.0f} | {1 / median:9.2f} | "
            f"{steps:16.0f} | {speedup:7.2f}x"
        )


if __name__ == "__main__":
    main()
