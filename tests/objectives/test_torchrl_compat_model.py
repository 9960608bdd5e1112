"""TorchRL-style code for the world-model loss and the composed DreamerV3Loss, run
unchanged against ``torchrl.objectives`` and ``torchdreamer``.

The defaults are the same on both sides; the official configuration is passed
explicitly to both, and every number must agree.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torchrl.objectives as torchrl_objectives
from tensordict import TensorDict
from torch import nn
from torchrl.objectives.utils import ValueEstimators
from torchrl_learner import learner_parts

import torchdreamer

IMPLEMENTATIONS = {"torchrl": torchrl_objectives, "torchdreamer": torchdreamer}
impl = pytest.mark.parametrize("ns", list(IMPLEMENTATIONS.values()), ids=list(IMPLEMENTATIONS))

#: The official configuration where it differs from TorchRL's defaults, passed to both sides.
SAME = dict(lambda_continue=1.0, kl_mode="separate", unimix=0.01, detach_output=False)


class StubWorldModel(nn.Module):
    """TorchRL's docstring world model: tensordict in, outputs under "next"."""

    def __init__(self, bins=15):
        super().__init__()
        torch.manual_seed(0)
        self.post = nn.Linear(24, 16)
        self.prior = nn.Linear(24, 16)
        self.reward_head = nn.Linear(24, bins)
        self.decoder = nn.Linear(24, 3 * 8 * 8)
        self.vector = nn.Linear(24, 5)
        self.cont = nn.Linear(24, 1)

    def forward(self, td):
        b, t = td.shape
        x = torch.cat([td["state"], td["belief"]], dim=-1)
        td.set(("next", "posterior_logits"), self.post(x).view(b, t, 4, 4))
        td.set(("next", "prior_logits"), self.prior(x).view(b, t, 4, 4))
        td.set(("next", "reco_pixels"), self.decoder(x).view(b, t, 3, 8, 8))
        td.set(("next", "reco_vector"), self.vector(x))
        td.set(("next", "reward_logits"), self.reward_head(x))
        td.set(("next", "reward"), self.reward_head(x)[..., :1])
        td.set(("next", "continue_pred"), self.cont(x))
        return td


def stub_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(2, 3, 1, dtype=torch.bool)
    terminated[1, 2] = True
    return TensorDict(
        {
            "state": torch.randn(2, 3, 16, generator=g),
            "belief": torch.randn(2, 3, 8, generator=g),
            "action": torch.randn(2, 3, 2, generator=g),
            "next": {
                "pixels": torch.randint(0, 256, (2, 3, 3, 8, 8), generator=g, dtype=torch.uint8),
                "vector": 10 * torch.randn(2, 3, 5, generator=g),
                "reward": 3 * torch.randn(2, 3, 1, generator=g),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [2, 3],
    )


def both(**kwargs):
    """The same TorchRL-style construction on both sides, one world model each (equal)."""
    model = StubWorldModel()
    return [
        ns.DreamerV3ModelLoss(copy.deepcopy(model), **kwargs) for ns in IMPLEMENTATIONS.values()
    ]


# ------------------------------------------------------------------- the API
def test_model_loss_signature_is_torchrls():
    theirs = inspect.signature(torchrl_objectives.DreamerV3ModelLoss.__init__).parameters
    ours = inspect.signature(torchdreamer.DreamerV3ModelLoss.__init__).parameters
    assert [(n, p.kind) for n, p in theirs.items()] == [
        (n, p.kind) for n, p in list(ours.items())[: len(theirs)]
    ]
    extras = list(ours.values())[len(theirs) :]
    assert [p.name for p in extras] == ["symlog_predictions"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extras)
    assert all(theirs[n].default == ours[n].default for n in theirs)
    assert dict(torchdreamer.objectives.official.MODEL_LOSS) == SAME


def test_composed_loss_signature_and_keys_are_torchrls():
    for cls in ("DreamerV3Loss", "DreamerV3ModelLoss"):
        theirs, ours = (getattr(ns, cls) for ns in IMPLEMENTATIONS.values())
        assert vars(theirs._AcceptedKeys()) == vars(ours._AcceptedKeys()), cls
    theirs = inspect.signature(torchrl_objectives.DreamerV3Loss.__init__)
    ours = inspect.signature(torchdreamer.DreamerV3Loss.__init__)
    assert [(p.name, p.kind, p.default) for p in theirs.parameters.values()] == [
        (p.name, p.kind, p.default) for p in ours.parameters.values()
    ]


@impl
def test_model_loss_attributes_and_set_keys(ns):
    loss = ns.DreamerV3ModelLoss(StubWorldModel(), lambda_kl=0.5, free_bits=0.3, kl_alpha=0.7)
    assert (loss.lambda_kl, loss.free_bits, loss.kl_alpha, loss.num_reward_bins) == (
        0.5,
        0.3,
        0.7,
        255,
    )
    loss.set_keys(pixels=["vector", "pixels"], reco_pixels=["reco_vector", "reco_pixels"])
    assert loss.tensor_keys.pixels == ["vector", "pixels"]
    loss.set_keys(continue_pred="cont", terminated="term")
    assert (loss.tensor_keys.continue_pred, loss.tensor_keys.terminated) == ("cont", "term")
    with pytest.raises(ValueError):
        loss.set_keys(not_a_key="x")


# ------------------------------------------------------------- the numbers
CASES = {
    # An odd number of bins: for an even one TorchRL's grid is not the official one.
    "official": dict(SAME, num_reward_bins=15),
    "balanced": dict(SAME, kl_mode="balanced", unimix=0.0, num_reward_bins=15, free_bits=0.2),
    "torchrl-defaults-scalar-reward": dict(
        lambda_continue=0.0,
        kl_mode="balanced",
        unimix=0.0,
        detach_output=True,
        reward_two_hot=False,
        reco_loss="l1",
        global_average=True,
    ),
    "scales-contdisc": dict(
        SAME,
        num_reward_bins=15,
        lambda_kl=2.0,
        lambda_reco=0.5,
        lambda_reward=3.0,
        lambda_dynamic=0.7,
        lambda_representation=0.2,
        continue_target_scale=1 - 1 / 333,
        free_bits=0.0,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_model_loss_numbers_equal_torchrls(case):
    theirs, ours = both(**CASES[case])
    for loss in (theirs, ours):
        loss.set_keys(pixels=["vector", "pixels"], reco_pixels=["reco_vector", "reco_pixels"])
        loss.reco_symlog = [True, False]
    data = stub_data()
    out_theirs, td_theirs = theirs(data.clone())
    out_ours, td_ours = ours(data.clone())
    keys = {k for k in out_theirs.keys() if k.startswith("loss_")}
    assert keys == {k for k in out_ours.keys() if k.startswith("loss_")}
    for key in keys:
        assert out_ours[key].shape == out_theirs[key].shape == (1,), key
        torch.testing.assert_close(out_ours[key], out_theirs[key], msg=key)
    grads = []
    for out, loss in ((out_theirs, theirs), (out_ours, ours)):
        total = sum(out[k] for k in keys)
        params = list(loss.world_model.parameters())
        grads.append(torch.autograd.grad(total, params, allow_unused=True))
    for g_theirs, g_ours in zip(*grads, strict=True):
        assert (g_ours is None) == (g_theirs is None)
        if g_ours is not None:
            torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-6)
    posterior = ("next", "posterior_logits")
    assert td_ours[posterior].requires_grad == td_theirs[posterior].requires_grad
    assert set(td_ours.keys(True)) == set(td_theirs.keys(True))


@pytest.mark.parametrize("direction", ["torchrl->torchdreamer", "torchdreamer->torchrl"])
def test_model_loss_state_dict_round_trip(direction):
    theirs, ours = both(**SAME)
    source, target = (theirs, ours) if direction.startswith("torchrl") else (ours, theirs)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    assert set(source.state_dict()) == set(target.state_dict())
    target.load_state_dict(source.state_dict())
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, msg=key)


# --------------------------------------------------- the composed objective
def learner(ns, *, replay_value_loss_weight=0.3):
    """TorchRL's DreamerV3Loss docstring learner: a small real RSSM, shared dynamics."""
    world_model, env, actor, value = learner_parts()
    model_loss = ns.DreamerV3ModelLoss(
        world_model,
        reward_two_hot=False,
        detach_output=False,
        lambda_continue=0.0,
        unimix=0.0,
        kl_mode="separate",
    )
    model_loss.set_keys(pixels="observation")
    actor_loss = ns.DreamerV3ActorLoss(actor, value, env, imagination_horizon=3)
    actor_loss.make_value_estimator(ValueEstimators.TDLambda, gamma=1 - 1 / 333, lmbda=0.95)
    value_loss = ns.DreamerV3ValueLoss(value, actor_loss=actor_loss, slow_critic_regularization=1.0)
    torchrl_objectives.SoftUpdate(value_loss, tau=0.02)
    loss = ns.DreamerV3Loss(
        model_loss, actor_loss, value_loss, replay_value_loss_weight=replay_value_loss_weight
    )
    return loss, world_model


def rssm_sample():
    torch.manual_seed(1)
    return TensorDict(
        {
            "state": torch.zeros(2, 3, 4),
            "belief": torch.zeros(2, 3, 8),
            "action": torch.zeros(2, 3, 1),
            "is_init": torch.zeros(2, 3, 1, dtype=torch.bool),
            "next": {
                "observation": torch.randn(2, 3, 3),
                "reward": torch.randn(2, 3, 1),
                "done": torch.zeros(2, 3, 1, dtype=torch.bool),
                "terminated": torch.zeros(2, 3, 1, dtype=torch.bool),
            },
        },
        [2, 3],
    )


@impl
def test_composed_loss_runs_torchrls_example(ns):
    loss, world_model = learner(ns)
    sample = rssm_sample()
    assert set(loss.in_keys) >= {("next", "observation"), ("next", "reward"), "is_init"}
    losses = loss(sample)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    total.backward()
    assert {
        "loss_model_reco",
        "loss_model_reward",
        "loss_model_dynamic",
        "loss_model_representation",
        "loss_actor",
        "loss_value",
        "loss_replay_value",
        "replay_value",
    } <= set(losses.keys())
    assert all(losses[k].shape == () for k in losses.keys() if k.startswith("loss_"))
    context = losses["replay_context"]
    assert context.batch_size == sample.batch_size and not context["state"].requires_grad
    assert set(context.keys()) == {"state", "belief"}
    assert all(p.grad is not None for p in world_model.parameters())


def test_composed_loss_numbers_equal_torchrls():
    """Same learner, same seed. With each side's own three losses the world-model
    terms and the replay context agree (the actor and critic are compared in
    test_torchrl_compat_value.py). TorchRL's DreamerV3Loss composing torchdreamer's
    three losses gives every term ours gives: the composition is TorchRL's."""
    results = []
    for ns in IMPLEMENTATIONS.values():
        loss, _ = learner(ns)
        torch.manual_seed(2)
        results.append(loss(rssm_sample()))
    theirs, ours = results
    for key in ("loss_model_reco", "loss_model_reward", "loss_model_dynamic"):
        torch.testing.assert_close(ours[key], theirs[key], msg=key)
    torch.testing.assert_close(ours["replay_context"], theirs["replay_context"])

    loss, _ = learner(torchdreamer)
    composed = torchrl_objectives.DreamerV3Loss(loss.model_loss, loss.actor_loss, loss.value_loss)
    results = []
    for module in (composed, copy.deepcopy(loss)):
        torch.manual_seed(2)
        results.append(module(rssm_sample()))
    theirs, ours = results
    keys = {k for k in theirs.keys() if k.startswith("loss_")} | {"replay_value"}
    assert keys <= set(ours.keys())
    for key in keys:
        torch.testing.assert_close(ours[key], theirs[key], msg=key)
    torch.testing.assert_close(ours["replay_context"], theirs["replay_context"])


@impl
def test_composed_loss_requires_an_attached_model_output(ns):
    loss, _ = learner(ns)
    with pytest.raises(ValueError, match="detach_output=False"):
        ns.DreamerV3Loss(
            type(loss.model_loss)(loss.model_loss.world_model, detach_output=True),
            loss.actor_loss,
            loss.value_loss,
        )
