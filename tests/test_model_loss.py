"""DreamerV3ModelLoss: every term against plain references, scales, gradient routing, errors."""

from __future__ import annotations

import math

import pytest
import torch
from reference import (
    assert_close_to_reference,
    official_bins,
    ref_cross_entropy,
    ref_kl,
    ref_symlog,
)
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from torchdreamer import DreamerV3ModelLoss

CATEGORICALS, CLASSES, OBS = 3, 4, 5


class ToyWorldModel(nn.Module):
    """Separate posterior, prior and head networks, so gradients can be traced."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.posterior = nn.Linear(OBS, CATEGORICALS * CLASSES)
        self.prior = nn.Linear(OBS, CATEGORICALS * CLASSES)
        self.heads = nn.Linear(CATEGORICALS * CLASSES, 255 + 1 + OBS)

    def forward(self, observation):
        shape = (*observation.shape[:-1], CATEGORICALS, CLASSES)
        posterior = self.posterior(observation)
        prior = self.prior(observation.roll(1, dims=-2))  # any function of the past
        out = self.heads(torch.softmax(posterior.view(shape), -1).flatten(-2))
        return (
            posterior.view(shape),
            prior.view(shape),
            out[..., :255],
            out[..., 255],
            out[..., 256:],
        )


def world_model():
    return TensorDictModule(
        ToyWorldModel(),
        in_keys=["observation"],
        out_keys=[
            "posterior_logits",
            "prior_logits",
            "reward_logits",
            "continuation_logits",
            ("reconstruction", "observation"),
        ],
    )


def replay(seed=0):
    generator = torch.Generator().manual_seed(seed)
    terminal = torch.zeros(2, 6, dtype=torch.bool)
    terminal[0, 4] = True
    return TensorDict(
        observation=torch.randn(2, 6, OBS, generator=generator) * 30,
        reward=torch.randn(2, 6, generator=generator) * 10,
        is_terminal=terminal,
        batch_size=[2, 6],
    )


def test_every_term_matches_a_plain_reference():
    model = world_model()
    loss = DreamerV3ModelLoss(model, free_nats=1.0)
    data = replay()
    loss_td, output = loss(data)
    with torch.no_grad():
        post, prior, reward_logits, cont_logit, reco = model.module(data["observation"])
    obs = data["observation"].double()

    rec = [
        sum((reco[b, t, i].item() - ref_symlog(obs[b, t, i].item())) ** 2 for i in range(OBS))
        for b in range(2)
        for t in range(6)
    ]
    reward = ref_cross_entropy(reward_logits, data["reward"], official_bins(255))
    bce = []
    for b in range(2):
        for t in range(6):
            p = 1 / (1 + math.exp(-cont_logit[b, t].item()))
            y = 0.0 if data["is_terminal"][b, t] else 1.0
            bce.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    kls = [
        sum(ref_kl(post[b, t, c].tolist(), prior[b, t, c].tolist()) for c in range(CATEGORICALS))
        for b in range(2)
        for t in range(6)
    ]
    clipped = [max(1.0, kl) for kl in kls]
    expected = {
        "loss_reconstruction": sum(rec) / 12,
        "loss_reward": reward.mean().item(),
        "loss_continuation": sum(bce) / 12,
        "loss_dynamics": sum(clipped) / 12,
        "loss_representation": 0.1 * sum(clipped) / 12,
        "kl": sum(kls) / 12,
    }
    # Float32 rounding of the largest magnitude in each term's computation.
    largest = max(reco.abs().max().item(), *(abs(ref_symlog(v)) for v in obs.flatten().tolist()))
    log_probs = torch.cat([post.log_softmax(-1), prior.log_softmax(-1)]).abs().max().item()
    scales = {
        "loss_reconstruction": OBS * largest**2,
        "loss_reward": torch.logsumexp(reward_logits.double(), -1).abs().max().item(),
        "loss_continuation": 1 + cont_logit.abs().max().item(),
        "loss_dynamics": CATEGORICALS * log_probs,
        "loss_representation": 0.1 * CATEGORICALS * log_probs,
        "kl": CATEGORICALS * log_probs,
    }
    for key, value in expected.items():
        assert_close_to_reference(loss_td[key], value, scale=scales[key])
    assert "posterior_logits" in output.keys() and output["posterior_logits"].requires_grad
    assert "posterior_logits" not in data.keys()  # the input is not modified


def test_scales_multiply_their_term():
    data = replay()
    base, _ = DreamerV3ModelLoss(world_model())(data)
    scaled, _ = DreamerV3ModelLoss(world_model(), scales={"reward": 3.0, "dynamics": 0.5})(data)
    torch.testing.assert_close(scaled["loss_reward"], 3 * base["loss_reward"])
    torch.testing.assert_close(scaled["loss_dynamics"], 0.5 * base["loss_dynamics"])
    torch.testing.assert_close(scaled["loss_continuation"], base["loss_continuation"])


def test_dynamics_trains_the_prior_and_representation_the_posterior():
    model = world_model()
    loss = DreamerV3ModelLoss(model, free_nats=0.0)
    loss_td, _ = loss(replay())
    net = model.module
    dyn = torch.autograd.grad(
        loss_td["loss_dynamics"], [net.posterior.weight, net.prior.weight], allow_unused=True
    )
    rep = torch.autograd.grad(
        loss_td["loss_representation"], [net.posterior.weight, net.prior.weight], allow_unused=True
    )
    assert dyn[0] is None and dyn[1].abs().sum() > 0
    assert rep[1] is None and rep[0].abs().sum() > 0


def test_images_use_plain_mse_on_unit_scale():
    class Pixels(nn.Module):
        def forward(self, observation, pixels):
            out = world_model().module(observation)
            return (*out[:4], torch.full(pixels.shape, 0.5))

    model = TensorDictModule(
        Pixels(),
        in_keys=["observation", "pixels"],
        out_keys=[
            "posterior_logits",
            "prior_logits",
            "reward_logits",
            "continuation_logits",
            ("reconstruction", "pixels"),
        ],
    )
    data = replay().set("pixels", torch.full((2, 6, 3, 2, 2), 255, dtype=torch.uint8))
    loss_td, _ = DreamerV3ModelLoss(model, observations={"pixels": "mse"})(data)
    assert loss_td["loss_reconstruction"].item() == pytest.approx(12 * 0.25)  # 12 pixels each


def test_errors():
    with pytest.raises(ValueError, match="'symlog_mse' or 'mse'"):
        DreamerV3ModelLoss(world_model(), observations={"observation": "l1"})
    with pytest.raises(ValueError, match="unknown loss scale"):
        DreamerV3ModelLoss(world_model(), scales={"kl": 1.0})
    with pytest.raises(KeyError, match="no reconstruction of 'pixels'"):
        data = replay().set("pixels", torch.zeros(2, 6, 3))
        DreamerV3ModelLoss(world_model(), observations={"pixels": "mse"})(data)


def test_runs_in_float64():
    model = world_model().double()
    data = replay()
    data["observation"] = data["observation"].double()
    data["reward"] = data["reward"].double()
    loss_td, _ = DreamerV3ModelLoss(model)(data)
    assert loss_td["loss_continuation"].dtype == torch.float64
    sum(v for k, v in loss_td.items() if k.startswith("loss_")).backward()
