"""An inductor option for the compiled update: two compiled agents in one process, alternating.

Two agents of one preset (CartPole shapes, seed 0) are compiled with ``compile_agent``:
the first with inductor's configuration as it is, the second with ``--option NAME=VALUE``
set (``cpp_wrapper=True``, ``max_autotune=True``, ...). Inductor reads its configuration
when it compiles, so each agent makes its graphs in its first ``--warmup`` updates under
its own setting (timed; the inductor cache is used as it is: an empty one makes the first
update the cold compile time). Then the two agents alternate update by update, ``--n``
each, on one 16 x 64 replay batch (``agent_throughput.replay_batch``): both see the same
background load. Printed: the first updates' time, each agent's median update and the
ratio option / default (below 1 is faster).

Run: ``python benchmarks/inductor_options.py --preset size1m --option cpp_wrapper=True``.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import time

import torch
import torch._inductor.config as inductor_config
from agent_throughput import replay_batch

from torchdreamer.training import Config, DreamerAgent
from torchdreamer.training.compiled import compile_agent


def option(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` as an inductor option and its Python value (``True``, ``"CPP,ATEN"``)."""
    name, _, value = text.partition("=")
    if not hasattr(inductor_config, name) or not value:
        raise argparse.ArgumentTypeError(f"not an inductor option NAME=VALUE: {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def compiled_agent(preset: str, settings: dict[str, object], batch, warmup: int):
    """An agent compiled under ``settings``, after its first ``warmup`` updates, and their time."""
    torch.manual_seed(0)
    agent = compile_agent(
        DreamerAgent((4,), 2, discrete=True, config=Config(preset=preset, precision="float32"))
    )
    with inductor_config.patch(settings):
        start = time.perf_counter()
        for _ in range(warmup):
            agent.update(batch)
    return agent, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="size1m")
    parser.add_argument("--option", type=option, action="append", required=True)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--n", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(2)
    batch = replay_batch()
    settings = {"default": {}, "option": dict(args.option)}
    agents, times = {}, {}
    for name, setting in settings.items():
        agents[name], first = compiled_agent(args.preset, setting, batch, args.warmup)
        times[name] = []
        print(f"{name} {setting}: first {args.warmup} updates {first:.1f} s", flush=True)
    for _ in range(args.n):
        for name, agent in agents.items():
            start = time.perf_counter()
            agent.update(batch)
            times[name].append(time.perf_counter() - start)
    default, chosen = (1e3 * statistics.median(times[name]) for name in settings)
    print(
        f"{args.preset}: default {default:.1f} ms, option {chosen:.1f} ms per update "
        f"(medians of {args.n}), option / default {chosen / default:.3f}"
    )


if __name__ == "__main__":
    main()
