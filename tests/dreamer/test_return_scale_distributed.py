"""ReturnScale's reduce= pools the percentiles over every rank (2 CPU processes, gloo)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from processes import free_port

from torchdreamer import ReturnScale
from torchdreamer.training.distributed import concat_over_ranks


def _rank_main(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pooled = ReturnScale(rate=1.0, reduce=concat_over_ranks)
        local = ReturnScale(rate=1.0)
        # Very different returns per rank: a rank-local statistic would differ.
        returns = torch.arange(100.0) + 1000.0 * rank
        pooled.update(returns)
        local.update(returns)
        torch.save(
            {
                "pooled": (pooled.low.item(), pooled.high.item()),
                "local": (local.low.item(), local.high.item()),
            },
            results / f"{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_percentiles_are_computed_over_all_ranks(processes, tmp_path):
    context = processes.spawn(_rank_main, (2, free_port(), tmp_path), nprocs=2)
    processes.join(context, "the 2 ranks")
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    pooled = torch.cat([torch.arange(100.0), torch.arange(100.0) + 1000.0])
    expected = (pooled.quantile(0.05).item(), pooled.quantile(0.95).item())
    assert results[0]["pooled"] == results[1]["pooled"] == expected
    # Without reduce= each rank keeps its own statistics (nothing is gathered).
    for rank in range(2):
        own = torch.arange(100.0) + 1000.0 * rank
        assert results[rank]["local"] == (own.quantile(0.05).item(), own.quantile(0.95).item())
