"""ReturnScale pools the percentiles over every rank (2 CPU processes, gloo)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchdreamer import ReturnScale


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        scale = ReturnScale(rate=1.0)
        # Very different returns per rank: a rank-local statistic would differ.
        scale.update(torch.arange(100.0) + 1000.0 * rank)
        results[rank] = (scale.low.item(), scale.high.item())
    finally:
        dist.destroy_process_group()


def test_percentiles_are_computed_over_all_ranks():
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(2, _free_port(), results), nprocs=2, join=True)
    pooled = torch.cat([torch.arange(100.0), torch.arange(100.0) + 1000.0])
    expected = (pooled.quantile(0.05).item(), pooled.quantile(0.95).item())
    assert results[0] == results[1]
    assert results[0] == expected
