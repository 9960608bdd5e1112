"""The agent's actor as the official DreamerV3 (``e3f0224``) builds and trains it:
REINFORCE for every kind of action by default (``Config.actor_grad``, the official
``ac_grads: False``), gradients through the imagined dynamics as an option, and discrete
policies without uniform mixing (``policy_dist_disc: categorical``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from reference import assert_close_to_reference
from tensordict import TensorDict

from torchdreamer.dreamer.loss import actor_part, imagination
from torchdreamer.modules import ModelSize
from torchdreamer.training import PRESETS, Config, DreamerAgent
from torchdreamer.training.run_directory import _stored_config

SMALL = ModelSize(deter=16, hidden=16, categoricals=4, classes=4, units=16, cnn_depth=4)
ETA = 3e-4  # Config's entropy_bonus, the official actent


@pytest.fixture(autouse=True)
def _small_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "test", SMALL)


def continuous_agent(**fields) -> DreamerAgent:
    """A continuous-action agent whose reward, critic and actor output layers are
    perturbed from their zero / 1% starts, so returns, advantages and the policy's
    mean all vary."""
    torch.manual_seed(0)
    config = Config(preset="test", imagination_horizon=4, **fields)
    agent = DreamerAgent((3,), 2, discrete=False, config=config)
    with torch.no_grad():
        for module in (agent.world_model.reward, agent.critic, agent.actor):
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return agent


def start_states(agent: DreamerAgent, batch: int = 6) -> TensorDict:
    """Posterior-like start states: one-hot categoricals and a normal deterministic part."""
    generator = torch.Generator().manual_seed(1)
    index = torch.randint(0, SMALL.classes, (batch, SMALL.categoricals), generator=generator)
    state = torch.nn.functional.one_hot(index, SMALL.classes).float().flatten(1)
    belief = torch.randn(batch, agent.world_model.rssm.deter_size, generator=generator)
    return TensorDict(stoch=state, deter=belief, batch_size=[batch])


def actor_loss(agent: DreamerAgent, start: TensorDict) -> tuple[dict, dict]:
    """The recipe's actor terms and imagination from ``start``, on ``agent``'s networks."""
    nets = agent.networks()
    imagined = imagination(nets, (start["stoch"], start["deter"]), agent.settings, None)
    return actor_part(nets, imagined, agent.settings), imagined


def reference_reinforce_loss(loc, scale, action, returns, value, weight, return_scale):
    """The official policy loss in float64, written out: ``-w (log N(a; μ, σ) sg((R - v) /
    S) + η H[N(μ, σ)])``, averaged; the log-density and entropy summed over the action's
    dimensions. The sample ``a`` is not clipped (the official clips only what the
    environment receives), so its density is the plain normal's."""
    loc, scale = loc.double(), scale.double()
    action = action.double()
    log_density = (
        -((action - loc) ** 2) / (2 * scale**2) - scale.log() - 0.5 * math.log(2 * math.pi)
    )
    entropy = 0.5 + 0.5 * torch.log(2 * math.pi * scale**2)
    advantage = (returns.double() - value.double()) / return_scale
    terms = log_density.sum(-1) * advantage + ETA * entropy.sum(-1)
    return -(weight.double() * terms).mean()


def test_a_default_agent_trains_continuous_actions_by_reinforce():
    assert Config().actor_grad == "reinforce"
    agent = continuous_agent()
    assert agent.settings.reinforce
    loss_td, imagined = actor_loss(agent, start_states(agent))
    loss = loss_td["loss_actor"]
    loss.backward()
    # The world model is only read: no gradient reaches it.
    assert all(p.grad is None for p in agent.world_model.parameters())
    actor = [p for p in agent.actor.parameters()]
    grads = [p.grad.clone() for p in actor]
    assert any(g.abs().sum() > 0 for g in grads)

    # The same loss and actor gradient from the official formula on the stopped
    # trajectory: the policy re-scores its own (stopped) imagined actions.
    head = agent.actor
    loc, scale = head(imagined["stoch"], imagined["deter"])
    with torch.no_grad():
        _, value = agent.critic(imagined["stoch"], imagined["deter"])
    reference = reference_reinforce_loss(
        loc,
        scale,
        imagined["action"],
        imagined["returns"],
        value[..., 0],
        imagined["weight"],
        float(loss_td["return_scale"]),
    )
    assert float(loss_td["return_scale"]) > 1  # the returns' spread is normalised
    assert_close_to_reference(loss, reference.detach(), scale=1.0)
    expected = torch.autograd.grad(reference, actor)
    for grad, want in zip(grads, expected, strict=True):
        assert_close_to_reference(grad, want, scale=float(want.abs().max()) + 1e-12, ulps=512)


def _imagined_reward_carries_a_gradient(agent: DreamerAgent) -> bool:
    seen = []
    hook = agent.world_model.reward.register_forward_hook(
        lambda module, inputs, output: seen.append(output[1].requires_grad)
    )
    try:
        actor_loss(agent, start_states(agent))
    finally:
        hook.remove()
    assert seen
    return any(seen)


def test_actor_grad_dynamics_backpropagates_through_the_imagined_dynamics():
    dynamics = continuous_agent(actor_grad="dynamics")
    assert not dynamics.settings.reinforce
    assert _imagined_reward_carries_a_gradient(dynamics)
    # REINFORCE imagines without a graph: the rewards never reach the actor's gradient.
    assert not _imagined_reward_carries_a_gradient(continuous_agent())

    # With gradients through the dynamics, the loss is the returns themselves.
    loss_td, imagined = actor_loss(dynamics, start_states(dynamics))
    _, scale = dynamics.actor(imagined["stoch"], imagined["deter"])
    entropy = (0.5 + 0.5 * torch.log(2 * math.pi * scale.double() ** 2)).sum(-1)
    returns = imagined["returns"].double() / float(loss_td["return_scale"])
    weight = imagined["weight"].double()
    expected = -(weight * (returns + ETA * entropy)).mean()
    assert_close_to_reference(loss_td["loss_actor"], expected.detach())
    loss_td["loss_actor"].backward()
    assert any(p.grad.abs().sum() > 0 for p in dynamics.actor.parameters())


@pytest.mark.parametrize("actor_grad", ["reinforce", "dynamics"])
@pytest.mark.parametrize("nvec", [(), (3, 2)], ids=["discrete", "multi-discrete"])
def test_discrete_actions_learn_by_reinforce_under_either_actor_grad(actor_grad, nvec):
    config = Config(preset="test", imagination_horizon=3, actor_grad=actor_grad)
    agent = DreamerAgent((4,), sum(nvec) or 2, discrete=True, config=config, action_nvec=nvec)
    assert agent.settings.reinforce


def test_actor_grad_takes_reinforce_or_dynamics():
    with pytest.raises(ValueError, match=r"actor_grad must be one of \['reinforce', 'dynamics'\]"):
        Config(actor_grad="backprop")


def test_a_run_saved_before_actor_grad_resumes_with_what_it_trained_with(tmp_path):
    """A config.json (and a checkpoint's config) written before the field existed: the
    continuous runs of that time backpropagated through the dynamics and the discrete
    ones used REINFORCE, which ``dynamics`` reproduces for both; a resumed run goes on
    as it began, and both copies of its config agree."""
    saved = json.loads(Config(env="Pendulum-v1").to_json())
    del saved["actor_grad"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = Config.load(tmp_path / "config.json")
    assert loaded.actor_grad == "dynamics"
    stored = _stored_config({"config": json.dumps(saved)}, tmp_path / "checkpoint.pt")
    assert stored.actor_grad == "dynamics" and stored.differences(loaded) == {}
    # A run saved with the field keeps its value; a new run takes the official one.
    (tmp_path / "config.json").write_text(Config(env="Pendulum-v1").to_json())
    assert Config.load(tmp_path / "config.json").actor_grad == "reinforce"
    # It is what the run learns with: a resume cannot change it.
    assert "actor_grad" not in Config.RESUMABLE
    assert loaded.differences(Config(env="Pendulum-v1")) == {
        "actor_grad": ("dynamics", "reinforce")
    }


def reference_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits - log Σ exp(logits)`` over the last dimension, in float64."""
    logits = logits.double()
    top = logits.max(-1, keepdim=True).values
    return logits - top - (logits - top).exp().sum(-1, keepdim=True).log()


@pytest.mark.parametrize("nvec", [(), (3, 2)], ids=["discrete", "multi-discrete"])
def test_the_discrete_policy_mixes_in_no_uniform_distribution(nvec):
    """The official policy head is a plain categorical of its logits (``unimix`` reaches
    only its one-hot outputs): the agent's head gives log-softmax, and probabilities
    below 1% / K, which a 1% mix would forbid, are reached."""
    torch.manual_seed(0)
    config = Config(preset="test", imagination_horizon=3)
    agent = DreamerAgent((4,), sum(nvec) or 3, discrete=True, config=config, action_nvec=nvec)
    head = agent.actor
    assert head.unimix == 0
    with torch.no_grad():
        for parameter in head.mlp.parameters():
            parameter.mul_(200)  # a confident policy
        features = (torch.randn(64, SMALL.stoch_size), torch.randn(64, SMALL.deter))
        logits = head(*features)
        raw = head.mlp(*features)
    sizes = nvec or (3,)
    for got, part in zip(logits.split(sizes, -1), raw.split(sizes, -1), strict=True):
        expected = reference_log_softmax(part)
        assert_close_to_reference(got, expected, scale=float(expected.abs().max()))
        assert float(got.exp().min()) < 0.01 / part.shape[-1]
