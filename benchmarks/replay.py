"""Sequence replay: our SequenceReplay against TorchRL's ReplayBuffer + SliceSampler.

The job of the training loop, on CartPole-v1 rows (observation 4, one-hot previous
action 2, reward, is_first, is_last, is_terminal): add one step of 16 environments,
and sample 16 windows of 64 consecutive steps of one environment's stream.

TorchRL's closest setup: ``LazyTensorStorage(capacity, ndim=2)`` written one
``[16, 1]`` step at a time (time-major storage ``[capacity / 16, 16]``) and
``SliceSampler(slice_len=64, strict_length=True)``. Its end-of-trajectory key is
never set, so, like ours, its windows run along each environment's stream across
episode boundaries, and it cuts them at the write cursor. What it cannot take is our
write pattern when an episode ends (that environment writes two rows on one step,
its final and its reset observation); the benchmark uses one row per environment
per step, which both support. Both buffers are filled with the same rows first.

Printed: median time of one add and of one sample, ours / TorchRL.

Run: ``python benchmarks/replay.py`` (``--filled 100000 --capacity 1000000``).
"""

from __future__ import annotations

import argparse
import logging

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer, SliceSampler
from value_loss import compare

from torchdreamer.training import SequenceReplay

ENVS, BATCH, LENGTH = 16, 16, 64


def step_rows(t: int) -> TensorDict:
    """One step of every environment, numbered so windows can be checked."""
    return TensorDict(
        observation=torch.randn(ENVS, 4),
        prev_action=torch.nn.functional.one_hot(torch.randint(0, 2, (ENVS,)), 2).float(),
        reward=torch.ones(ENVS),
        is_first=torch.zeros(ENVS, dtype=torch.bool),
        is_last=torch.zeros(ENVS, dtype=torch.bool),
        is_terminal=torch.zeros(ENVS, dtype=torch.bool),
        never_ends=torch.zeros(ENVS, dtype=torch.bool),
        step=torch.full((ENVS,), t),
        env=torch.arange(ENVS),
        batch_size=[ENVS],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filled", type=int, default=100_000, help="rows added before timing")
    parser.add_argument("--capacity", type=int, default=1_000_000, help="rows kept (official 1e6)")
    parser.add_argument("--min-run-time", type=float, default=5.0, help="seconds per side")
    args = parser.parse_args()
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    torch.manual_seed(0)
    ours = SequenceReplay(ENVS, args.capacity, torch.Generator().manual_seed(0))
    theirs = ReplayBuffer(
        storage=LazyTensorStorage(args.capacity, ndim=2),
        sampler=SliceSampler(slice_len=LENGTH, end_key="never_ends", strict_length=True),
        batch_size=BATCH * LENGTH,
    )
    every = torch.ones(ENVS, dtype=torch.bool)
    steps = args.filled // ENVS
    for t in range(steps):
        rows = step_rows(t)
        ours.add(rows, every)
        theirs.extend(rows.unsqueeze(1))

    # Both give windows of consecutive steps of one environment.
    for name, window in (
        ("ours", ours.sample(BATCH, LENGTH)),
        ("TorchRL", theirs.sample().reshape(BATCH, LENGTH)),
    ):
        consecutive = bool((window["step"].diff(dim=1) == 1).all())
        one_env = bool((window["env"].diff(dim=1) == 0).all())
        if not (consecutive and one_env and window.batch_size == (BATCH, LENGTH)):
            raise SystemExit(f"{name}: the windows are not {BATCH} x {LENGTH} consecutive steps")

    rows = step_rows(steps)
    add = {
        "ours": lambda: ours.add(rows, every),
        "TorchRL": lambda: theirs.extend(rows.unsqueeze(1)),
    }
    sample = {
        "ours": lambda: ours.sample(BATCH, LENGTH),
        "TorchRL": lambda: theirs.sample(),
    }
    print(
        f"{args.filled} rows filled of {args.capacity}, {ENVS} environments, windows "
        f"{BATCH} x {LENGTH}, {torch.get_num_threads()} threads"
    )
    print("| operation | ours (µs) | TorchRL (µs) | ours / TorchRL |")
    print("|---|---|---|---|")
    for name, sides in (("add one step of 16 envs", add), ("sample 16 x 64", sample)):
        t_ours, t_theirs = compare(sides["ours"], sides["TorchRL"], args.min_run_time)
        print(f"| {name} | {t_ours * 1e6:.0f} | {t_theirs * 1e6:.0f} | {t_ours / t_theirs:.2f} |")


if __name__ == "__main__":
    main()
