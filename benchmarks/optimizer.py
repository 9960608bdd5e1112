"""torchdreamer's DreamerV3Optimizer against TorchRL's, one step on the agent's parameters.

Both optimise identical copies of the trainable parameters of a ``DreamerAgent``
(world model, actor, critic) of the chosen preset, with the same fixed random
gradients and the official settings (AGC 0.3, LaProp, warm-up). Each ``step()`` is
timed with ``torch.utils.benchmark``, ours and TorchRL's in alternating rounds so
both see the same background load. It prints the medians and the ratio ours /
TorchRL (below 1 is faster). The machine is shared: read the ratio.

Run: ``python benchmarks/optimizer.py`` (``--preset size1m``, ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torchrl
from torch.utils.benchmark import Timer
from torchrl.trainers.algorithms import DreamerV3Optimizer as TorchRLOptimizer

from torchdreamer import DreamerV3Optimizer
from torchdreamer.training import Config, DreamerAgent


def parameters(preset: str) -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    agent = DreamerAgent((8,), 4, discrete=True, config=Config(preset=preset, precision="float32"))
    params = [torch.nn.Parameter(p.detach().clone()) for p in agent.trainable_parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--min-run-time", type=float, default=20.0, help="seconds per side")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.min_run_time = 2, 0.5
    base = parameters(args.preset)
    count = sum(p.numel() for p in base)
    optimisers = {}
    for name, cls in (("torchdreamer", DreamerV3Optimizer), ("torchrl", TorchRLOptimizer)):
        params = [torch.nn.Parameter(p.detach().clone()) for p in base]
        for p, b in zip(params, base, strict=True):
            p.grad = b.grad.clone()
        optimisers[name] = cls(params)
    times: dict[str, list[float]] = {name: [] for name in optimisers}
    for _ in range(args.rounds):
        for name, opt in optimisers.items():
            timer = Timer(
                stmt="opt.step()", globals={"opt": opt}, num_threads=torch.get_num_threads()
            )
            measurement = timer.blocked_autorange(min_run_time=args.min_run_time / args.rounds)
            times[name].append(measurement.median)
    ours, theirs = (statistics.median(times[name]) for name in ("torchdreamer", "torchrl"))
    print(
        f"torch {torch.__version__}, torchrl {torchrl.__version__}, "
        f"{torch.get_num_threads()} thread(s); preset {args.preset}: "
        f"{len(base)} tensors, {count / 1e6:.2f} M parameters"
    )
    print(f"torchdreamer step: {ours * 1e3:8.3f} ms (median of {args.rounds} rounds)")
    print(f"torchrl step:      {theirs * 1e3:8.3f} ms")
    print(f"ratio ours / torchrl: {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
