"""The score of a uniformly random policy, measured as the agent's episodes are.

The baseline that suite learning curves are read against: the same environment id and
preprocessing as ``torchdreamer train --env ID`` (``make_env``), the same episode ends
(``terminated`` or ``truncated``), actions drawn uniformly from the action space (one-hot
for discrete actions, ``[-1, 1]`` per dimension for continuous ones, mapped as the agent's
are). Prints the mean ± std, min and max of the episode scores and the env steps/s.

Run: ``python benchmarks/random_policy.py --env dmc:cartpole_balance --episodes 20``
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from torchdreamer.envs import make_env


@dataclass
class RandomScores:
    env: str
    scores: list[float]
    steps_per_s: float

    @property
    def mean(self) -> float:
        return statistics.mean(self.scores)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.scores) if len(self.scores) > 1 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.env} random policy, {len(self.scores)} episodes: {self.mean:.1f} ± "
            f"{self.std:.1f} (mean ± std), min {min(self.scores):.1f}, "
            f"max {max(self.scores):.1f}; {self.steps_per_s:.0f} env steps/s"
        )


def random_scores(
    env_id: str, episodes: int = 20, obs: str = "auto", num_envs: int = 1, seed: int = 0
) -> RandomScores:
    """The first ``episodes`` episode scores of a uniformly random policy on ``env_id``."""
    env, spec = make_env(env_id, num_envs, seed, obs=obs)
    generator = torch.Generator().manual_seed(seed)
    returns = torch.zeros(num_envs, dtype=torch.float64)
    scores: list[float] = []
    steps = 0
    started = time.perf_counter()
    td = env.reset()
    try:
        while len(scores) < episodes:
            if spec.discrete:
                index = torch.randint(spec.action_dim, (num_envs,), generator=generator)
                action = torch.nn.functional.one_hot(index, spec.action_dim)
            else:
                action = torch.rand(num_envs, spec.action_dim, generator=generator) * 2 - 1
            td.set("action", spec.to_env_action(action))
            out, td = env.step_and_maybe_reset(td)
            returns += out.get(("next", "reward")).reshape(-1).double()
            done = out.get(("next", "done")).reshape(-1)
            steps += num_envs
            for e in done.nonzero().squeeze(-1).tolist():
                scores.append(float(returns[e]))
                returns[e] = 0
    finally:
        env.close()
    return RandomScores(env_id, scores[:episodes], steps / (time.perf_counter() - started))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--obs", default="auto")
    parser.add_argument("--episodes", type=int, default=20)
    # One environment by default: the first N episodes of several would favour short ones.
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(random_scores(args.env, args.episodes, args.obs, args.num_envs, args.seed))


if __name__ == "__main__":
    main()
