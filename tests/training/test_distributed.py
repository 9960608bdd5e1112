"""Data-parallel training on 2 CPU processes with gloo: the replicas stay bit-identical,
and ``torchrun -m torchdreamer train`` runs, logs once, checkpoints every rank and resumes."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
from processes import Finished, Processes, free_port
from test_agent import SMALL, batch_for
from test_training import read_csv

from torchdreamer.training import PRESETS, Config, DreamerAgent, distributed

UPDATES = 3
AGENTS = {  # observation shape, action size, discrete, image
    "vector-discrete": ((4,), 2, True, False),
    "vector-continuous": ((3,), 1, False, False),
    "image-discrete": ((16, 16, 3), 2, True, True),
}


def _everywhere(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, {k: v.detach().clone() for k, v in tensors.items()})
    return out


def _check_agent(name: str, ranks: distributed.Ranks) -> None:
    shape, actions, discrete, image = AGENTS[name]
    rank = ranks.rank
    torch.manual_seed(0)  # the same initial networks on both ranks
    config = Config(preset="test", imagination_horizon=3, warmup=1)
    agent = DreamerAgent(shape, actions, discrete=discrete, config=config)
    parallel = distributed.wrap(agent, ranks)
    initial = {k: v.clone() for k, v in agent.state_dict().items()}
    torch.manual_seed(100 + rank)  # each rank: its own data and its own draws
    batches = [batch_for(shape, actions, b=2, t=8, image=image) for _ in range(UPDATES)]
    for batch in batches:
        agent.update(batch, parallel)
    state = dict(agent.state_dict())
    for index, moments in agent.optimizer.state_dict()["state"].items():
        named = {f"optimizer.{index}.{k}": v for k, v in moments.items()}
        state.update({k: torch.as_tensor(v) for k, v in named.items()})
    gathered = _everywhere(state)
    data = _everywhere({"observation": batches[0]["observation"]})
    if rank == 0:
        assert not torch.equal(data[0]["observation"], data[1]["observation"]), name
        slow = [k for k in state if k.startswith("slow_critic.")]
        scale = ["retnorm.low", "retnorm.high"]
        moved = [k for k in [*slow, *scale] if not torch.equal(state[k], initial[k])]
        assert any(k in moved for k in slow), f"{name}: the slow critic never moved"
        assert all(k in moved for k in scale), f"{name}: the return scale never moved"
        for key, value in state.items():
            assert torch.equal(value, gathered[1][key]), f"{name}: {key} differs"
    distributed.check_in_sync(agent)  # the library's own check agrees
    # Without the gradient averaging the replicas drift apart at once, and the
    # library's check names what drifted.
    with parallel.no_sync():
        agent.update(batches[0], parallel)
    try:
        distributed.check_in_sync(agent)
    except RuntimeError as error:
        assert "differ between ranks" in str(error) and "world_model" in str(error)
    else:
        raise AssertionError(f"{name}: unsynchronised updates went unnoticed")


def _rank_main(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    ranks = distributed.init_from_env()
    assert ranks == distributed.Ranks(rank, world, rank)
    PRESETS["test"] = SMALL
    try:
        for name in AGENTS:
            _check_agent(name, ranks)  # its DistributedDataParallel dies with it
    finally:
        distributed.shutdown()


def test_two_ranks_stay_bit_identical_for_every_kind_of_agent(processes):
    context = processes.spawn(_rank_main, (2, free_port()), nprocs=2)
    processes.join(context, "the 2 ranks")  # fails on a hung collective


# ------------------------------------------------------------------- torchrun
TINY = ["--num-envs", "4", "--batch-size", "4", "--batch-length", "16", "--no-progress"]


def torchrun(processes: Processes, logdir, *args: str) -> Finished:
    """``torchrun`` of 2 processes on ``torchdreamer``, waited for while it works."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*launcher, "--nproc-per-node=2", "-m", "torchdreamer", *args]
    return processes.run(command, logdir.parent / "output", watch=[logdir])


def test_torchrun_trains_logs_once_and_resumes(processes, tmp_path):
    logdir = tmp_path / "run"
    train = ["train", "--steps", "240", "--log-every", "40", "--logdir", str(logdir), *TINY]
    first = torchrun(processes, logdir, *train)
    assert first.returncode == 0, first.stderr
    # One summary (rank 0's), counting the env steps of both ranks.
    assert first.stdout.count("env steps and") == 1
    assert "CartPole-v1 seed 0, preset small: 240 env steps and 30 updates" in first.stdout
    assert sorted(p.name for p in logdir.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "episodes.csv",
        "learning_curve.png",
        "metrics.csv",
        "metrics.jsonl",
        "tensorboard",
    ]
    checkpoint = torch.load(logdir / "checkpoint.pt", weights_only=False)
    replays = [part["replay"]["rows"][0]["observation"] for part in checkpoint["ranks"]]
    assert len(replays) == 2 and not torch.equal(replays[0], replays[1])

    refused = processes.run(
        [sys.executable, "-m", "torchdreamer", "train", "--resume", str(logdir)],
        tmp_path / "output",
    )
    assert refused.returncode == 2
    assert "checkpointed by 2 processes; resume it with as many" in refused.stderr

    resume = ["train", "--resume", str(logdir), "--steps", "400", "--no-progress"]
    second = torchrun(processes, logdir, *resume)
    assert second.returncode == 0, second.stderr
    counters = torch.load(logdir / "checkpoint.pt", weights_only=False)["counters"]
    # Updates start once each rank holds 4 x 16 steps (128 in all), 2 per loop of 8 steps.
    assert counters["env_step"] == 400 and counters["updates"] == 70
    rows = read_csv(logdir / "metrics.csv")
    assert [int(r["env_step"]) for r in rows] == list(range(40, 401, 40))
    assert [int(r["updates"]) for r in rows] == sorted(int(r["updates"]) for r in rows)


@pytest.mark.parametrize("name", ["mean_over_ranks", "any_rank", "broadcast_object"])
def test_single_process_helpers_are_the_identity(name):
    value = torch.tensor([1.0, 2.0])
    if name == "mean_over_ranks":
        assert distributed.mean_over_ranks(value) is value
    elif name == "any_rank":
        assert distributed.any_rank(True, False) == (True, False)
    else:
        assert distributed.broadcast_object(value) is value
    assert distributed.current() == distributed.Ranks()


def test_a_missing_gpu_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available here"):
        distributed.device_for("cuda", distributed.Ranks())
    assert distributed.device_for("cpu", distributed.Ranks(1, 2, 1)) == torch.device("cpu")


def test_under_torchrun_cuda_means_the_local_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    device = distributed.device_for("cuda", distributed.Ranks(rank=3, world_size=4, local_rank=1))
    assert device == torch.device("cuda", 1)
    assert distributed.device_for("cuda:0", distributed.Ranks(3, 4, 1)) == torch.device("cuda", 0)
