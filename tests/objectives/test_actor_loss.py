"""DreamerV3ActorLoss: imagination, targets, normalisation, the gamma link, learning."""

from __future__ import annotations

import pytest
import torch
from reference import assert_close_to_reference, ref_lambda_return, ref_symlog, ref_weights
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from tensordict.nn import ProbabilisticTensorDictModule as Prob
from tensordict.nn import ProbabilisticTensorDictSequential as Seq
from torch import nn
from torchrl.modules import OneHotCategorical, TanhNormal
from torchrl.objectives.utils import ValueEstimators

from torchdreamer import DreamerV3ActorLoss, DreamerV3ValueLoss

N = 7  # positions of the chain


# ---------------------------------------------------------- exact world models
class Chain(nn.Module):
    """Positions 0..N-1 (one-hot); actions (left, right); reward 1 at the right end."""

    def reset(self, td):
        return td.clone()

    def step(self, td):
        position = td["state"].argmax(-1)
        move = td["action"].argmax(-1) * 2 - 1
        position = (position + move).clamp(0, N - 1)
        reward = (position == N - 1).float().unsqueeze(-1)
        state = nn.functional.one_hot(position, N).float()
        td["next"] = TensorDict(state=state, reward=reward, batch_size=td.shape)
        return td


class Line(nn.Module):
    """A point on a line: x' = x + a / 2, reward -|x'|. Differentiable in the action."""

    def __init__(self):
        super().__init__()
        self.speed = nn.Parameter(torch.tensor(0.5))  # part of the "world model"

    def reset(self, td):
        return td.clone()

    def step(self, td):
        state = td["state"] + self.speed * td["action"]
        td["next"] = TensorDict(state=state, reward=-state.abs(), batch_size=td.shape)
        return td


def chain_actor(seed=0):
    torch.manual_seed(seed)
    head = Prob(["logits"], ["action"], distribution_class=OneHotCategorical)
    return Seq(TensorDictModule(nn.Linear(N, 2), ["state"], ["logits"]), head)


def line_actor(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 2), NormalParamExtractor())
    head = Prob(
        ["loc", "scale"],
        ["action"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0},
    )
    return Seq(TensorDictModule(net, ["state"], ["loc", "scale"]), head)


def critic(width=N, seed=1):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(width, 32), nn.Tanh(), nn.Linear(32, 1))
    return TensorDictModule(net, ["state"], ["state_value"])


def continuation(seed=2):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(N, 1), nn.Sigmoid())  # strictly inside (0, 1)
    return TensorDictModule(net, ["state"], ["continuation"])


def chain_starts(batch=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    position = torch.randint(0, N, (batch,), generator=generator)
    return TensorDict(state=nn.functional.one_hot(position, N).float(), batch_size=[batch])


# ------------------------------------------------------------------ the targets
def test_imagined_targets_and_weights_match_the_official_formula():
    cont_model, value_model = continuation(), critic()
    loss = DreamerV3ActorLoss(
        chain_actor(), value_model, Chain(), continuation_model=cont_model, imagination_horizon=6
    )
    loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=0.8)
    _, imagined = loss(chain_starts(5))
    assert imagined.batch_size == (5, 6)
    states = torch.cat([imagined["state"], imagined["next", "state"][:, -1:]], dim=1)
    with torch.no_grad():
        value = value_model.module(states).squeeze(-1).double()
        cont = cont_model.module(states).squeeze(-1).double()
    reward = imagined["next", "reward"].squeeze(-1).double()
    for row in range(5):
        rewards = [0.0, *reward[row].tolist()]
        expected = ref_lambda_return(rewards, cont[row].tolist(), value[row].tolist(), 0.9, 0.8)
        scale = max(1.0, *map(abs, expected), *value[row].abs().tolist())
        assert_close_to_reference(imagined["lambda_target"][row, :, 0], expected, scale=scale)
        expected = ref_weights(cont[row, :-1].tolist(), 0.9)
        assert_close_to_reference(imagined["discount_weight"][row, :, 0], expected)
    assert not imagined["lambda_target"].requires_grad


def test_reinforce_loss_matches_reference():
    loss = DreamerV3ActorLoss(
        chain_actor(), critic(), Chain(), use_reinforce=True, imagination_horizon=5
    ).eval()  # eval: the return scale stays at its initial 1
    loss_td, imagined = loss(chain_starts(8))
    with torch.no_grad():
        log_probs = loss.actor_model.module[0].module(imagined["state"]).log_softmax(-1)
        value = loss.value_model.module(imagined["state"]).squeeze(-1)
    log_prob = (imagined["action"] * log_probs).sum(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    advantage = imagined["lambda_target"].squeeze(-1) - value
    weight = imagined["discount_weight"].squeeze(-1)
    expected = -(weight * (log_prob * advantage + 3e-4 * entropy)).mean()
    torch.testing.assert_close(loss_td["loss_actor"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_td["actor_entropy"], (weight * entropy).mean())
    assert loss_td["return_scale"] == 1.0


def test_only_the_actor_is_owned_and_borrowed_modules_are_frozen_exactly():
    value_model, world = critic(width=1), Line()
    world.speed.requires_grad_(False)  # frozen by its owner: must stay frozen
    loss = DreamerV3ActorLoss(line_actor(), value_model, world)
    assert {id(p) for p in loss.parameters()} == {id(p) for p in loss.actor_model.parameters()}
    owned = ("actor_model.", "retnorm.", "_value_estimator.")
    assert all(key.startswith(owned) for key in loss.state_dict())
    loss_td, _ = loss(TensorDict(state=torch.randn(16, 1), batch_size=[16]))
    loss_td["loss_actor"].backward()
    assert all(p.grad is None for p in value_model.parameters())
    assert all(p.requires_grad for p in value_model.parameters())
    assert world.speed.grad is None and not world.speed.requires_grad
    # Reparameterised: the returns' gradient reaches the actor through the dynamics.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.actor_model.parameters())


# ------------------------------------------------------- return normalisation
def test_return_normalisation_moves_in_training_and_stays_in_eval():
    def make(**kwargs):
        torch.manual_seed(0)
        return DreamerV3ActorLoss(chain_actor(), critic(), Chain(), use_reinforce=True, **kwargs)

    loss = make()
    start = chain_starts(64)
    for _ in range(3):
        loss_td, imagined = loss(start)
    low, high = loss.retnorm.low.clone(), loss.retnorm.high.clone()
    assert high > 0 and high != low  # moved from their initial 0
    torch.testing.assert_close(loss_td["return_high"], high)

    loss.eval()
    loss(start)
    assert torch.equal(loss.retnorm.low, low) and torch.equal(loss.retnorm.high, high)

    restored = make()
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.retnorm.high, high)

    # The scale divides the actor's advantages only, never the critic's targets.
    torch.manual_seed(5)
    _, normalised = make(return_normalization_min_scale=1e-3)(start)
    torch.manual_seed(5)
    _, raw = make(return_normalization=False)(start)
    torch.testing.assert_close(normalised["lambda_target"], raw["lambda_target"])


def test_return_normalisation_updates_the_ema_of_the_percentiles():
    loss = DreamerV3ActorLoss(
        chain_actor(), critic(), Chain(), use_reinforce=True, return_normalization_rate=0.5
    )
    _, imagined = loss(chain_starts(64))
    returns = imagined["lambda_target"].flatten().double()
    scale = float(returns.abs().max())
    assert_close_to_reference(loss.retnorm.low, 0.5 * returns.quantile(0.05), scale=scale)
    assert_close_to_reference(loss.retnorm.high, 0.5 * returns.quantile(0.95), scale=scale)


# ---------------------------------------------------------------- gamma link
def test_value_loss_follows_the_actors_gamma_after_construction():
    actor_loss = DreamerV3ActorLoss(chain_actor(), critic(), Chain(), imagination_horizon=4)
    linked = DreamerV3ValueLoss(critic(), actor_loss=actor_loss, reduction="none")
    legacy = DreamerV3ValueLoss(critic(), reduction="none")
    legacy.sync_gamma_with_actor_loss(actor_loss)
    unweighted = DreamerV3ValueLoss(critic(), discount_loss=False, reduction="none")
    td = TensorDict(
        state=chain_starts(12)["state"].reshape(3, 4, N),
        lambda_target=torch.randn(3, 4, 1),
        batch_size=[3, 4],
    )
    base = unweighted(td)[0]["loss_value"]
    gamma_t = torch.arange(4.0)
    default = 0.99  # TorchRL's default gamma
    for loss in (linked, legacy):
        torch.testing.assert_close(loss(td)[0]["loss_value"], base * default**gamma_t)

    actor_loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.8)
    torch.testing.assert_close(linked(td)[0]["loss_value"], base * 0.8**gamma_t)
    torch.testing.assert_close(legacy(td)[0]["loss_value"], base * default**gamma_t)
    legacy.sync_gamma_with_actor_loss(actor_loss)
    torch.testing.assert_close(legacy(td)[0]["loss_value"], base * 0.8**gamma_t)

    # and the imagined weights come from the same gamma
    _, imagined = actor_loss(chain_starts(2))
    torch.testing.assert_close(imagined["discount_weight"][0, :, 0], 0.8**gamma_t)


# ---------------------------------------------------------------- learning
def test_discrete_agent_learns_the_optimal_policy():
    actor, value_model = chain_actor(), critic()
    actor_loss = DreamerV3ActorLoss(actor, value_model, Chain(), use_reinforce=True)
    actor_loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9)
    value_loss = DreamerV3ValueLoss(value_model, actor_loss=actor_loss)
    optimiser = torch.optim.Adam(
        [
            {"params": actor.parameters(), "lr": 3e-2},
            {"params": value_model.parameters(), "lr": 1e-2},
        ]
    )
    for step in range(250):
        loss_td, imagined = actor_loss(chain_starts(64, seed=step))
        total = loss_td["loss_actor"] + value_loss(imagined)[0]["loss_value"]
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    with torch.no_grad():
        p_right = actor.module[0].module(torch.eye(N)).softmax(-1)[:, 1]
    assert bool((p_right > 0.9).all()), p_right
    # The critic's values approach the optimal ones, sum of 0.9^k once at the end.
    distance = torch.arange(N - 1, -1, -1.0)
    optimal = 0.9 ** (distance - 1).clamp(min=0) * (1 / (1 - 0.9))
    optimal[-1] = 1 / (1 - 0.9)
    with torch.no_grad():
        learned = value_model.module(torch.eye(N)).squeeze(-1)
    assert bool(((learned - optimal).abs() / optimal < 0.25).all()), (learned, optimal)


def test_continuous_agent_learns_the_optimal_policy():
    actor, value_model = line_actor(), critic(width=1)
    actor_loss = DreamerV3ActorLoss(actor, value_model, Line(), imagination_horizon=10)
    actor_loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9)
    value_loss = DreamerV3ValueLoss(value_model, actor_loss=actor_loss)
    optimiser = torch.optim.Adam([*actor.parameters(), *value_model.parameters()], lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(250):
        start = TensorDict(
            state=torch.empty(64, 1).uniform_(-3, 3, generator=generator), batch_size=[64]
        )
        loss_td, imagined = actor_loss(start)
        total = loss_td["loss_actor"] + value_loss(imagined)[0]["loss_value"]
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    with torch.no_grad():
        loc, _ = actor.module[0].module(torch.tensor([[-2.0], [2.0]]))
    mean_action = torch.tanh(loc).squeeze(-1)  # the policy's mode
    assert mean_action[0] > 0.8 and mean_action[1] < -0.8, mean_action


# ------------------------------------------------------------------ errors
def test_errors():
    with pytest.raises(TypeError, match="get_dist"):
        DreamerV3ActorLoss(critic(), critic(), Chain())
    with pytest.raises(TypeError, match=r"reset\(tensordict\)"):
        DreamerV3ActorLoss(chain_actor(), critic(), object())
    with pytest.raises(ValueError, match="imagination_horizon"):
        DreamerV3ActorLoss(chain_actor(), critic(), Chain(), imagination_horizon=0)
    loss = DreamerV3ActorLoss(chain_actor(), critic(), Chain())
    with pytest.raises(KeyError, match="'state' to imagine from"):
        loss(TensorDict(obs=torch.zeros(3, N), batch_size=[3]))
    with pytest.raises(ValueError, match=r"gamma must lie in \(0, 1\]"):
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=1.5)
    with pytest.raises(NotImplementedError, match="TDLambda"):
        loss.make_value_estimator(ValueEstimators.GAE)


# ------------------------------------------------------------ replay values
def test_replay_value_loss_matches_reference_and_trains_the_features():
    generator = torch.Generator().manual_seed(0)
    batch, steps, horizon, lmbda = 3, 9, 50.0, 0.9
    features = torch.randn(batch, steps, 4, generator=generator, requires_grad=True)
    reward = torch.randn(batch, steps, generator=generator)
    is_last = torch.zeros(batch, steps, dtype=torch.bool)
    is_terminal = torch.zeros(batch, steps, dtype=torch.bool)
    is_last[0, 3] = is_terminal[0, 3] = True  # a termination
    is_last[1, 5] = True  # a truncation
    bootstrap = torch.randn(batch, steps, generator=generator) * 5
    replay = TensorDict(
        state=features,
        reward=reward,
        is_last=is_last,
        is_terminal=is_terminal,
        bootstrap=bootstrap,
        batch_size=[batch, steps],
    )
    value_model = TensorDictModule(nn.Linear(4, 1), ["state"], ["state_value"])
    loss = DreamerV3ValueLoss(value_model, reduction="none")
    out = loss.replay_value_loss(replay, horizon=horizon, lmbda=lmbda)["loss_replay_value"]
    assert out.shape == (batch, steps - 1)
    with torch.no_grad():
        prediction = value_model.module(features).squeeze(-1)
    gamma = 1 - 1 / horizon
    for row in range(batch):
        target = ref_lambda_return(
            reward[row].tolist(),
            (1 - is_terminal[row].double()).tolist(),
            bootstrap[row].tolist(),
            gamma,
            lmbda,
            is_last[row].double().tolist(),
        )
        expected = [
            0.0
            if is_last[row, t]
            else (ref_symlog(prediction[row, t].item()) - ref_symlog(target[t])) ** 2
            for t in range(steps - 1)
        ]
        assert_close_to_reference(out[row], expected)
    assert out[0, 3] == 0 and out[1, 5] == 0
    out.sum().backward()
    assert features.grad[:, :-1].abs().sum() > 0
    with pytest.raises(KeyError, match="bootstrap"):
        loss.replay_value_loss(replay.exclude("bootstrap"))


def test_set_keys_renames_inputs_and_outputs():
    class Renamed(Chain):
        def step(self, td):
            td["state"] = td["obs"]
            td = super().step(td)
            td["next", "obs"] = td["next", "state"]
            td["next", "gain"] = td["next", "reward"]
            del td["next", "state"], td["next", "reward"], td["state"]
            return td

    head = Prob(["logits"], ["action"], distribution_class=OneHotCategorical)
    actor = Seq(TensorDictModule(nn.Linear(N, 2), ["obs"], ["logits"]), head)
    value_model = TensorDictModule(nn.Linear(N, 1), ["obs"], ["v"])
    loss = DreamerV3ActorLoss(actor, value_model, Renamed(), imagination_horizon=3)
    loss.set_keys(state="obs", reward="gain", value="v", lambda_target="ret", discount_weight="w")
    start = TensorDict(obs=chain_starts(4)["state"], batch_size=[4])
    _, imagined = loss(start)
    assert {"ret", "w"} <= set(imagined.keys())
    assert "lambda_target" not in imagined.keys()
    with pytest.raises(ValueError, match="not an accepted tensordict key"):
        loss.set_keys(observation="o")


@pytest.mark.parametrize("discrete", [False, True])
def test_works_with_torchrl_dreamer_env(discrete):
    """TorchRL's own imagination environment (DreamerEnv around RSSMPriorV3)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from actor_value_update import build

    env, actor, critic_model, start = build(
        batch=6, categoricals=4, classes=4, belief=8, units=16, discrete=discrete
    )
    actor_loss = DreamerV3ActorLoss(
        actor, critic_model, env, imagination_horizon=4, use_reinforce=discrete
    )
    value_loss = DreamerV3ValueLoss(critic_model, value_loss="two_hot", actor_loss=actor_loss)
    loss_td, imagined = actor_loss(start)
    assert imagined.batch_size == (6, 4)
    (loss_td["loss_actor"] + value_loss(imagined)[0]["loss_value"]).backward()
    assert all(p.grad is not None for p in actor.parameters())
    assert all(p.grad is None for p in env.parameters())

    states = torch.cat(
        [imagined.select("state", "belief"), imagined["next"][:, -1:].select("state", "belief")], 1
    )
    with torch.no_grad():
        value = critic_model(states.clone())["state_value"].squeeze(-1).double()
    reward = imagined["next", "reward"].squeeze(-1).double()
    gamma, lmbda = 0.99, 0.95  # TorchRL's defaults
    for row in range(6):
        expected = ref_lambda_return(
            [0.0, *reward[row].tolist()], [1.0] * 5, value[row].tolist(), gamma, lmbda
        )
        magnitudes = [*map(abs, expected), *value[row].abs().tolist(), *reward[row].abs().tolist()]
        scale = max(1.0, *magnitudes)
        assert_close_to_reference(imagined["lambda_target"][row, :, 0], expected, scale=scale)


def test_a_logits_only_critic_is_decoded_on_the_official_grid():
    from torchdreamer.modules import TwoHotHead

    head = TwoHotHead(N, hidden=16)
    with torch.no_grad():
        head.mlp[-1].weight.normal_()  # leave the zero start: decoded values must differ

    class LogitsOnly(nn.Module):
        def forward(self, state):
            return head(state)[0]

    both = TensorDictModule(head, ["state"], ["state_value_logits", "state_value"])
    logits_only = TensorDictModule(LogitsOnly(), ["state"], ["state_value_logits"])
    results = []
    for critic_model in (both, logits_only):
        torch.manual_seed(3)
        loss = DreamerV3ActorLoss(chain_actor(), critic_model, Chain(), use_reinforce=True)
        results.append(loss(chain_starts(8))[1]["lambda_target"])
    assert results[0].abs().max() > 0
    torch.testing.assert_close(results[1], results[0])
