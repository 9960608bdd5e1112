"""DreamerV3ModelLoss: every term against plain references, scales, gradient routing, errors.

The loss reads TorchRL's layout: targets and world-model outputs under ``"next"``.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import official_bins, ref_cross_entropy, ref_kl, ref_probs, ref_symlog
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


OUTPUTS = ["posterior_logits", "prior_logits", "reward_logits", "continue_pred", "reco_observation"]


def world_model():
    return TensorDictModule(
        ToyWorldModel(),
        in_keys=[("next", "observation")],
        out_keys=[("next", key) for key in OUTPUTS],
    )


def model_loss(model=None, **kwargs):
    """The official loss of the toy world model: symlog-space reconstructions, raw logits."""
    kwargs = {"unimix": 0.0, "symlog_predictions": True, **kwargs}
    loss = DreamerV3ModelLoss.official(model or world_model(), **kwargs)
    loss.set_keys(pixels="observation", reco_pixels="reco_observation")
    return loss


def replay(seed=0):
    generator = torch.Generator().manual_seed(seed)
    terminal = torch.zeros(2, 6, 1, dtype=torch.bool)
    terminal[0, 4] = True
    return TensorDict(
        {
            "next": {
                "observation": torch.randn(2, 6, OBS, generator=generator) * 30,
                "reward": torch.randn(2, 6, 1, generator=generator) * 10,
                "terminated": terminal,
            }
        },
        batch_size=[2, 6],
    )


def test_every_term_matches_a_plain_reference():
    model = world_model()
    loss = model_loss(model, free_bits=1.0)
    data = replay()
    loss_td, output = loss(data)
    with torch.no_grad():
        post, prior, reward_logits, cont_logit, reco = model.module(data["next", "observation"])
    obs = data["next", "observation"].double()

    rec = [
        sum((reco[b, t, i].item() - ref_symlog(obs[b, t, i].item())) ** 2 for i in range(OBS))
        for b in range(2)
        for t in range(6)
    ]
    reward = ref_cross_entropy(reward_logits, data["next", "reward"][..., 0], official_bins(255))
    bce = []
    for b in range(2):
        for t in range(6):
            p = 1 / (1 + math.exp(-cont_logit[b, t].item()))
            y = 0.0 if data["next", "terminated"][b, t] else 1.0
            bce.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    kls = [
        sum(ref_kl(post[b, t, c].tolist(), prior[b, t, c].tolist()) for c in range(CATEGORICALS))
        for b in range(2)
        for t in range(6)
    ]
    clipped = [max(1.0, kl) for kl in kls]
    expected = {
        "loss_model_reco": sum(rec) / 12,
        "loss_model_reward": reward.mean().item(),
        "loss_model_continue": sum(bce) / 12,
        "loss_model_dynamic": sum(clipped) / 12,
        "loss_model_representation": 0.1 * sum(clipped) / 12,
        "kl": sum(kls) / 12,
    }
    assert set(loss_td.keys()) == set(expected)
    for key, value in expected.items():
        assert loss_td[key].item() == pytest.approx(value, rel=1e-5), key
        assert loss_td[key].shape == ((1,) if key.startswith("loss_") else ()), key
    posterior = output["next", "posterior_logits"]
    assert posterior.requires_grad  # official: detach_output=False
    # The input is not modified: no outputs written, the reward not renamed.
    assert set(data["next"].keys()) == {"observation", "reward", "terminated"}
    assert "true_reward" in output["next"].keys()


def test_unimix_and_observation_space_predictions():
    """unimix mixes both categoricals before the KL; without symlog_predictions the
    reconstruction is symlog'ed too (TorchRL's decoders write observation space)."""
    model = world_model()
    data = replay()
    loss_td, _ = model_loss(model, unimix=0.01, symlog_predictions=False, free_bits=0.0)(data)
    with torch.no_grad():
        post, prior, _, _, reco = model.module(data["next", "observation"])
    obs = data["next", "observation"].double()

    def mixed(logits):
        return [math.log(0.99 * p + 0.01 / CLASSES) for p in ref_probs(logits)]

    kls = [
        sum(
            ref_kl(mixed(post[b, t, c].tolist()), mixed(prior[b, t, c].tolist()))
            for c in range(CATEGORICALS)
        )
        for b in range(2)
        for t in range(6)
    ]
    rec = [
        sum(
            (ref_symlog(reco[b, t, i].item()) - ref_symlog(obs[b, t, i].item())) ** 2
            for i in range(OBS)
        )
        for b in range(2)
        for t in range(6)
    ]
    assert loss_td["loss_model_dynamic"].item() == pytest.approx(sum(kls) / 12, rel=1e-5)
    assert loss_td["loss_model_reco"].item() == pytest.approx(sum(rec) / 12, rel=1e-5)


def test_balanced_kl_mode():
    """TorchRL's kl_mode="balanced": 0.8 * prior-side + 0.2 * posterior-side KL, each
    clipped per categorical at free_bits and averaged over categoricals and states."""
    model = world_model()
    data = replay()
    loss_td, _ = model_loss(model, kl_mode="balanced", free_bits=0.3)(data)
    assert "loss_model_dynamic" not in loss_td.keys()
    with torch.no_grad():
        post, prior, *_ = model.module(data["next", "observation"])
    kls = [
        max(0.3, ref_kl(post[b, t, c].tolist(), prior[b, t, c].tolist()))
        for b in range(2)
        for t in range(6)
        for c in range(CATEGORICALS)
    ]
    # Both sides have the same value (they differ in their gradients).
    expected = (0.8 + 0.2) * sum(kls) / len(kls)
    assert loss_td["loss_model_kl"].item() == pytest.approx(expected, rel=1e-5)


def test_scales_multiply_their_term():
    data = replay()
    base, _ = model_loss()(data)
    scaled, _ = model_loss(lambda_reward=3.0, lambda_dynamic=0.5, lambda_kl=2.0)(data)
    torch.testing.assert_close(scaled["loss_model_reward"], 3 * base["loss_model_reward"])
    torch.testing.assert_close(scaled["loss_model_dynamic"], base["loss_model_dynamic"])
    torch.testing.assert_close(
        scaled["loss_model_representation"], 2 * base["loss_model_representation"]
    )
    torch.testing.assert_close(scaled["loss_model_continue"], base["loss_model_continue"])
    without, _ = model_loss(lambda_continue=0.0)(data)
    assert "loss_model_continue" not in without.keys()


def test_dynamics_trains_the_prior_and_representation_the_posterior():
    model = world_model()
    loss = model_loss(model, free_bits=0.0)
    loss_td, _ = loss(replay())
    net = model.module
    weights = [net.posterior.weight, net.prior.weight]
    dyn = torch.autograd.grad(loss_td["loss_model_dynamic"], weights, allow_unused=True)
    rep = torch.autograd.grad(loss_td["loss_model_representation"], weights, allow_unused=True)
    assert dyn[0] is None and dyn[1].abs().sum() > 0
    assert rep[1] is None and rep[0].abs().sum() > 0


def test_images_use_plain_mse_on_unit_scale():
    class Pixels(nn.Module):
        def forward(self, observation, pixels):
            out = world_model().module(observation)
            return (*out[:4], torch.full(pixels.shape, 0.5))

    model = TensorDictModule(
        Pixels(),
        in_keys=[("next", "observation"), ("next", "pixels")],
        out_keys=[("next", key) for key in [*OUTPUTS[:4], "reco_pixels"]],
    )
    data = replay().set(("next", "pixels"), torch.full((2, 6, 3, 2, 2), 255, dtype=torch.uint8))
    loss_td, _ = DreamerV3ModelLoss(model, reco_symlog=False)(data)
    assert loss_td["loss_model_reco"].item() == pytest.approx(12 * 0.25)  # 12 pixels each


def test_errors():
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        DreamerV3ModelLoss(world_model(), reco_loss="huber")
    with pytest.raises(ValueError, match="'balanced' or 'separate'"):
        DreamerV3ModelLoss(world_model(), kl_mode="mixed")
    with pytest.raises(KeyError, match="the reconstruction of 'pixels'"):
        data = replay().set(("next", "pixels"), torch.zeros(2, 6, 3))
        DreamerV3ModelLoss(world_model())(data)
    with pytest.raises(ValueError, match="same nonzero number of reconstruction heads"):
        loss = model_loss()
        loss.set_keys(pixels=["observation", "pixels"])
        loss(replay())
    # As in TorchRL, a continuation term whose flag is missing is left out.
    loss_td, _ = model_loss()(replay().exclude(("next", "terminated")))
    assert "loss_model_continue" not in loss_td.keys()
    with pytest.raises(ValueError, match="num_reward_bins=16"):
        model_loss(num_reward_bins=16)(replay())


def test_runs_in_float64():
    model = world_model().double()
    data = replay()
    data["next", "observation"] = data["next", "observation"].double()
    data["next", "reward"] = data["next", "reward"].double()
    loss_td, _ = model_loss(model)(data)
    assert loss_td["loss_model_continue"].dtype == torch.float64
    sum(v for k, v in loss_td.items() if k.startswith("loss_")).backward()
