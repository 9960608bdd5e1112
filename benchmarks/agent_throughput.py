"""Throughput of the whole agent: updates per second and acting speed, per preset.

For each preset, on CartPole-v1's shapes (4 observations, 2 actions) at DreamerV3's
batch (16 sequences x 64 steps, 15 imagined steps from each of the 1,024 states):

* the median time of one whole update (world-model loss, imagination, actor, critic
  on imagined and replayed states, one LaProp step, the slow-critic EMA), as
  updates per second;
* acting alone: env steps per second of 16 CartPole-v1 environments driven by
  the agent's policy (RSSM filtering and a sampled action each step);
* what the train ratio 32 then gives: env steps per second of training, from
  ``1 / (16 / acting + 32 / 1024 * update)`` per step of the 16 environments.

The official DreamerV3 took 452 ms per update at its size1m on a 2-core CPU
(``shared/anchors/agent_cartpole_cpu.md``). Side by side with TorchRL's losses on the
same networks, for the actor + critic part: ``benchmarks/actor_value_update.py``.

Run: ``python benchmarks/agent_throughput.py`` (``--presets small size1m size12m``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from tensordict import TensorDict
from torch.utils.benchmark import Timer

from torchdreamer.envs import make_env
from torchdreamer.training import Config, DreamerAgent
from torchdreamer.training.runner import EnvRunner


def replay_batch(b: int = 16, t: int = 64) -> TensorDict:
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return TensorDict(
        observation=torch.randn(b, t, 4),
        prev_action=torch.nn.functional.one_hot(torch.randint(0, 2, (b, t)), 2).float(),
        is_first=first,
        reward=torch.ones(b, t),
        is_last=torch.zeros(b, t, dtype=torch.bool),
        is_terminal=torch.rand(b, t) < 0.02,
        batch_size=[b, t],
    )


def measure(preset: str, min_run_time: float) -> dict[str, float]:
    torch.manual_seed(0)
    config = Config(preset=preset, precision="float32")
    agent = DreamerAgent((4,), 2, discrete=True, config=config)
    batch = replay_batch()
    agent.update(batch)
    timer = Timer(
        "agent.update(batch)",
        globals={"agent": agent, "batch": batch},
        num_threads=torch.get_num_threads(),  # Timer would use 1 thread
    )
    update = timer.blocked_autorange(min_run_time=min_run_time).median

    env, spec = make_env("CartPole-v1", 16, seed=0)
    runner = EnvRunner(env, spec, agent)
    for _ in range(10):
        runner.step(0)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            runner.step(0)
        samples.append((time.perf_counter() - start) / 20)
    env.close()
    act = statistics.median(samples)  # seconds per step of the 16 environments
    per_step = act + config.num_envs * config.train_ratio / 1024 * update
    return {
        "params": sum(p.numel() for p in agent.trainable_parameters()) / 1e6,
        "update_ms": update * 1e3,
        "updates_per_s": 1 / update,
        "acting_steps_per_s": config.num_envs / act,
        "training_steps_per_s": config.num_envs / per_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "size1m", "size12m"])
    parser.add_argument("--min-run-time", type=float, default=5.0)
    args = parser.parse_args()
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| preset | parameters | ms per update | updates/s | acting env steps/s "
        "| training env steps/s (ratio 32) |"
    )
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        r = measure(preset, args.min_run_time)
        print(
            f"| {preset} | {r['params']:.2f} M | {r['update_ms']:.0f} | "
            f"{r['updates_per_s']:.2f} | {r['acting_steps_per_s']:.0f} | "
            f"{r['training_steps_per_s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
