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

import torch

from torchdreamer.training.envs import make_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--obs", default="auto")
    parser.add_argument("--episodes", type=int, default=20)
    # One environment by default: the first N episodes of several would favour short ones.
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    env, spec = make_env(args.env, args.num_envs, args.seed, obs=args.obs)
    generator = torch.Generator().manual_seed(args.seed)
    returns = torch.zeros(args.num_envs, dtype=torch.float64)
    scores: list[float] = []
    steps = 0
    started = time.perf_counter()
    td = env.reset()
    try:
        while len(scores) < args.episodes:
            if spec.discrete:
                index = torch.randint(spec.action_dim, (args.num_envs,), generator=generator)
                action = torch.nn.functional.one_hot(index, spec.action_dim)
            else:
                action = torch.rand(args.num_envs, spec.action_dim, generator=generator) * 2 - 1
            td.set("action", spec.to_env_action(action))
            out, td = env.step_and_maybe_reset(td)
            returns += out.get(("next", "reward")).reshape(-1).double()
            done = out.get(("next", "done")).reshape(-1)
            steps += args.num_envs
            for e in done.nonzero().squeeze(-1).tolist():
                scores.append(float(returns[e]))
                returns[e] = 0
    finally:
        env.close()
    elapsed = time.perf_counter() - started
    scores = scores[: args.episodes]
    spread = statistics.pstdev(scores) if len(scores) > 1 else 0.0
    print(
        f"{args.env} random policy, {len(scores)} episodes: {statistics.mean(scores):.1f} ± "
        f"{spread:.1f} (mean ± std), min {min(scores):.1f}, max {max(scores):.1f}; "
        f"{steps / elapsed:.0f} env steps/s"
    )


if __name__ == "__main__":
    main()
