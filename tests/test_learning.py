"""The value loss trains a critic to the true discounted values of a known Markov chain."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from torchdreamer import DreamerV3ValueLoss
from torchdreamer.functional import symexp, two_hot_bins, two_hot_decode

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
