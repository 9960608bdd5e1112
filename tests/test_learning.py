"""Learning: the value loss trains a critic to the true discounted values of a known Markov
chain, and the whole agent (world model, imagination, actor, critic, replay, loop) learns
to walk a corridor whose best return is known."""

from __future__ import annotations

import csv

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from torchdreamer import DreamerV3ValueLoss
from torchdreamer.functional import symexp, two_hot_bins, two_hot_decode
from torchdreamer.training import Config, train

GAMMA = 0.9
# Two closed groups of states, so the true values span 0.9 to 4.6e3.
REWARDS = torch.tensor([0.01, 0.03, 0.1, 0.3, 3.0, 30.0, 300.0, 1000.0], dtype=torch.float64)


def markov_chain() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    transitions = torch.zeros(8, 8, dtype=torch.float64)
    for group in (slice(0, 4), slice(4, 8)):
        transitions[group, group] = torch.rand(4, 4, generator=generator, dtype=torch.float64)
    transitions /= transitions.sum(1, keepdim=True)
    # V = r + gamma P V, solved exactly.
    values = torch.linalg.solve(torch.eye(8, dtype=torch.float64) - GAMMA * transitions, REWARDS)
    return transitions, values


class Symexp(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return symexp(x)


@pytest.mark.parametrize("mode", ["symlog_mse", "two_hot"])
def test_critic_learns_true_values_of_a_markov_chain(mode):
    transitions, true_values = markov_chain()
    assert true_values.min() < 1 and true_values.max() > 1e3
    width = 255 if mode == "two_hot" else 1
    layer = torch.nn.Linear(8, width, bias=False)
    torch.nn.init.zeros_(layer.weight)  # as DreamerV3's critic output layer
    net = layer if mode == "two_hot" else torch.nn.Sequential(layer, Symexp())
    key = "state_value_logits" if mode == "two_hot" else "state_value"
    loss = DreamerV3ValueLoss(
        TensorDictModule(net, ["state"], [key]), value_loss=mode, discount_loss=False
    )
    optimiser = torch.optim.Adam(loss.parameters(), lr=0.05)
    states, bins = torch.eye(8), two_hot_bins(255)

    def predicted() -> torch.Tensor:
        with torch.no_grad():
            out = net(states)
            return (two_hot_decode(out, bins) if mode == "two_hot" else out.squeeze(-1)).double()

    for _ in range(1500):
        # Fitted value iteration: the target bootstraps from the critic itself.
        target = (REWARDS + GAMMA * transitions @ predicted()).float()
        td = TensorDict(state=states, lambda_target=target, batch_size=[8])
        optimiser.zero_grad()
        loss(td)[0]["loss_value"].backward()
        optimiser.step()
    relative_error = (predicted() - true_values).abs() / true_values
    assert relative_error.max() < 0.02, relative_error


# ------------------------------------------------------------------ the whole agent
LENGTH, START, LIMIT, NEAR = 9, 2, 12, 0.3
"""The corridor's cells, the start cell, the steps an episode may take before it times
out, and what its near (left) end pays."""


class Corridor(gym.Env):
    """Cells ``0 .. LENGTH - 1`` in a row, the agent's cell shown one-hot; every episode
    starts at cell ``START``. Action 1 steps right, 0 left. Either end ends the episode:
    the near (left) one, ``START`` steps away, pays ``NEAR``; the far (right) one pays 1.
    An episode times out after ``LIMIT`` steps.

    The best return is 1 (``LENGTH - 1 - START <= LIMIT`` steps right). The agent imagines
    3 steps: from the start, imagination sees only the near end's reward, and only the
    critic's values tell the actor that the far end pays more. An agent whose critic does
    not learn settles for ``NEAR``; one that does not learn at all gets what the random
    policy does (:func:`random_return`)."""

    observation_space = gym.spaces.Box(0.0, 1.0, (LENGTH,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def _observation(self) -> np.ndarray:
        return np.eye(LENGTH, dtype=np.float32)[self.cell]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cell, self.steps = START, 0
        return self._observation(), {}

    def step(self, action):
        self.cell += 1 if action == 1 else -1
        self.steps += 1
        reward = {0: NEAR, LENGTH - 1: 1.0}.get(self.cell, 0.0)
        ended = self.cell in (0, LENGTH - 1)
        return self._observation(), reward, ended, self.steps >= LIMIT and not ended, {}


def random_return() -> float:
    """The expected return of uniformly random actions, by propagating the chance of each
    cell step by step (the ends absorb)."""
    cells = [0.0] * LENGTH
    cells[START] = 1.0
    expected = 0.0
    for _ in range(LIMIT):
        after = [0.0] * LENGTH
        for cell in range(1, LENGTH - 1):
            after[cell - 1] += cells[cell] / 2
            after[cell + 1] += cells[cell] / 2
        expected += NEAR * after[0] + after[-1]
        cells = [0.0, *after[1:-1], 0.0]  # the episodes that reached an end are over
    return expected


def test_the_agent_learns_to_walk_past_a_near_reward_to_a_far_one(tmp_path):
    """``train`` as users call it, with an env from Python: 800 env steps of 4 copies, 370
    updates of 4 x 16 replayed steps (25 s on two idle Zen 4 cores, 2 minutes on busy
    ones). The training episodes (sampled actions) of its end reach 90 % of the best
    return, far above the near end's ``NEAR`` and the random policy's return. Learning
    rate 1e-3 without warm-up and 3 imagined steps keep the run short; the rest is the
    default agent."""
    best, chance = 1.0, random_return()
    assert chance < NEAR < 0.9 * best
    config = Config(
        preset="small",
        num_envs=4,
        batch_size=4,
        batch_length=16,
        train_ratio=32,
        imagination_horizon=3,
        lr=1e-3,
        warmup=0,
        steps=800,
        seed=0,
        threads=1,
        compile="off",
        precision="float32",
        eval_every=0,
        logger="csv",
    )
    summary = train(config, tmp_path / "run", progress=False, env=Corridor)
    assert summary.env_step == 800 and summary.updates > 300
    with open(tmp_path / "run" / "episodes.csv", newline="") as file:
        scores = [float(row["score"]) for row in csv.DictReader(file)]
    last = sum(scores[-40:]) / 40
    assert last >= 0.9 * best, f"mean of the last 40 episodes {last:.2f} (random: {chance:.2f})"
