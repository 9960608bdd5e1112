"""The same TorchRL-style code against ``torchrl.objectives`` and ``torchdreamer``.

Each test is parametrised over the implementation: what TorchRL 0.14.1 does, ours does
too, with the listed differences (docs/torchrl.md, "Differences from TorchRL") checked as such.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torchrl.objectives as torchrl_objectives
from reference import assert_close_to_reference, ref_lambda_return, ref_weights
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.modules import SymExpTwoHot
from torchrl.objectives.utils import ValueEstimators
from torchrl.trainers.algorithms import DreamerV3Optimizer as TorchRLOptimizer

import torchdreamer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from actor_value_update import build  # noqa: E402

IMPLEMENTATIONS = {"torchrl": torchrl_objectives, "torchdreamer": torchdreamer}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(params=list(IMPLEMENTATIONS))
def impl(request):
    return IMPLEMENTATIONS[request.param]


def networks(discrete=True, batch=4):
    env, actor, critic, start = build(
        batch=batch, categoricals=2, classes=4, belief=8, units=16, discrete=discrete
    )
    torch.manual_seed(1)
    continuation = TensorDictModule(Continuation(16), ["state", "belief"], ["continuation"])
    return env, actor, critic, continuation, start


class Continuation(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.linear = nn.Linear(features, 1)

    def forward(self, state, belief):
        return torch.sigmoid(self.linear(torch.cat([state, belief], -1)))


def scalar_critic():
    torch.manual_seed(2)
    return TensorDictModule(nn.Linear(4, 1), ["state"], ["state_value"])


def logits_critic(bins=255):
    """Logits and their decoded value, as TorchRL's two-hot critics write them."""
    torch.manual_seed(2)
    return TensorDictSequential(
        TensorDictModule(nn.Linear(4, bins), ["state"], ["state_value_logits"]),
        TensorDictModule(SymExpTwoHot(bins), ["state_value_logits"], ["state_value"]),
    )


# ------------------------------------------------------------- constructors
def test_actor_constructor_takes_torchrl_arguments(impl):
    env, actor, critic, continuation, _ = networks()
    loss = impl.DreamerV3ActorLoss(
        actor,
        critic,
        env,
        continuation_model=continuation,
        imagination_horizon=3,
        discount_loss=True,
        entropy_bonus=1e-3,
        use_reinforce=True,
        return_normalization=True,
        return_normalization_rate=0.02,
        return_normalization_quantiles=(0.1, 0.9),
        return_normalization_min_scale=2.0,
    )
    assert loss.imagination_horizon == 3 and loss.entropy_bonus == 1e-3
    assert loss.return_normalization_rate == 0.02
    assert tuple(loss.return_normalization_quantiles) == (0.1, 0.9)
    assert loss.return_normalization_min_scale == 2.0
    assert loss.return_low.shape == loss.return_high.shape == torch.Size([])
    # gamma and lmbda go through make_value_estimator in both.
    for name in ("gamma", "lmbda"):
        with pytest.raises(TypeError, match="make_value_estimator"):
            impl.DreamerV3ActorLoss(actor, critic, env, **{name: 0.9})


def test_value_constructor_takes_torchrl_arguments_by_position_and_keyword(impl):
    critic = logits_critic()
    positional = impl.DreamerV3ValueLoss(critic, "two_hot", True, 0.9, 255, None, 1.0, "sum")
    keyword = impl.DreamerV3ValueLoss(
        value_model=critic,
        value_loss="two_hot",
        discount_loss=True,
        gamma=0.9,
        num_value_bins=255,
        actor_loss=None,
        slow_critic_regularization=1.0,
        reduction="sum",
    )
    for loss in (positional, keyword):
        assert loss.reduction == "sum" and loss.slow_critic_regularization == 1.0
        assert loss.value_bins.shape == (255,) and loss.gamma == 0.9
    assert impl.DreamerV3ValueLoss(scalar_critic(), reduction=None).reduction == "mean"
    with pytest.raises(ValueError, match="slow_critic_regularization"):
        impl.DreamerV3ValueLoss(critic, slow_critic_regularization=-1.0)


# ------------------------------------------------------------- output keys
TORCHRL_ACTOR_KEYS = {
    "loss_actor",
    "actor_entropy",
    "return_low",
    "return_high",
    "return_scale",
    "continuation_mean",
}


def test_actor_outputs_and_imagined_keys(impl):
    env, actor, critic, continuation, start = networks()
    loss = impl.DreamerV3ActorLoss(
        actor, critic, env, continuation_model=continuation, imagination_horizon=3
    )
    loss_td, imagined = loss(start)
    assert TORCHRL_ACTOR_KEYS <= set(loss_td.keys())
    extra = set(loss_td.keys()) - TORCHRL_ACTOR_KEYS
    assert extra == (set() if impl is torchrl_objectives else {"lambda_target_mean"})
    assert imagined.batch_size == (4, 3)
    for key in ("lambda_target", "discount_weight", "continuation", ("next", "continuation")):
        assert imagined.get(key).shape == (4, 3, 1), key
    for key in ("state", "belief", "action", ("next", "reward"), ("next", "state")):
        assert key in imagined.keys(True), key
    # The root continuation of step t is the next continuation of step t - 1.
    torch.testing.assert_close(
        imagined["continuation"][:, 1:], imagined["next", "continuation"][:, :-1]
    )


@pytest.mark.parametrize("slow", [0.0, 1.0])
def test_value_output_keys(impl, slow):
    loss = impl.DreamerV3ValueLoss(scalar_critic(), slow_critic_regularization=slow)
    td = TensorDict(
        state=torch.randn(2, 3, 4), lambda_target=torch.randn(2, 3, 1), batch_size=[2, 3]
    )
    keys = set(loss(td)[0].keys())
    assert {"loss_value", "value_slow_loss"} <= keys
    ours = {"target_mean", "value_mean"}
    assert keys - {"loss_value", "value_slow_loss"} == (
        set() if impl is torchrl_objectives else ours
    )


# ------------------------------------------------------------------ set_keys
def test_set_keys_accepts_torchrl_names(impl):
    env, actor, critic, continuation, _ = networks()
    actor_loss = impl.DreamerV3ActorLoss(actor, critic, env)
    actor_loss.set_keys(
        state="state",
        belief="belief",
        reward="reward",
        value="state_value",
        action="action",
        action_log_prob="action_log_prob",
        done="done",
        terminated="terminated",
        continuation="continuation",
        discount_weight="discount_weight",
    )
    value_loss = impl.DreamerV3ValueLoss(scalar_critic())
    value_loss.set_keys(
        value="v",
        value_logits="logits",
        discount_weight="w",
        reward="r",
        done="d",
        terminated="t",
        bootstrap="b",
    )
    value_loss.value_model.out_keys[0] = "v"  # the critic writes the renamed key
    replay = TensorDict(
        state=torch.randn(2, 5, 4),
        b=torch.randn(2, 5),
        next=TensorDict(
            r=torch.randn(2, 5, 1),
            d=torch.zeros(2, 5, 1, dtype=torch.bool),
            t=torch.zeros(2, 5, 1, dtype=torch.bool),
            batch_size=[2, 5],
        ),
        batch_size=[2, 5],
    )
    assert value_loss.replay_value_loss(replay)["loss_replay_value"].shape == ()


# -------------------------------------------------------- value estimators
def returns_reference(reward, value, continuation, gamma, lmbda):
    """The official recursion on TorchRL's [B, H, 1] layout (next values and continuations)."""
    rows = []
    for r, v, c in zip(reward[..., 0], value[..., 0], continuation[..., 0], strict=True):
        rows.append(
            ref_lambda_return(
                [0.0, *r.tolist()], [1.0, *c.tolist()], [0.0, *v.tolist()], gamma, lmbda
            )
        )
    return torch.tensor(rows, dtype=torch.float64).unsqueeze(-1)


@pytest.mark.parametrize("kind", ["TD0", "TD1", "TDLambda"])
def test_lambda_target_of_each_estimator(impl, kind):
    env, actor, critic, _, _ = networks()
    loss = impl.DreamerV3ActorLoss(actor, critic, env)
    hyper = {"gamma": 0.9, **({"lmbda": 0.7} if kind == "TDLambda" else {})}
    loss.make_value_estimator(getattr(ValueEstimators, kind), **hyper)
    torch.manual_seed(0)
    reward, value = torch.randn(3, 5, 1), torch.randn(3, 5, 1)
    continuation = torch.rand(3, 5, 1)
    lmbda = {"TD0": 0.0, "TD1": 1.0, "TDLambda": 0.7}[kind]
    expected = returns_reference(reward, value, continuation, 0.9, lmbda)
    if impl is torchrl_objectives and kind != "TDLambda":
        # TorchRL 0.14.1 reads estimator.lmbda, which TD0/TD1 estimators lack (listed).
        with pytest.raises(AttributeError, match="lmbda"):
            loss.lambda_target(reward, value, continuation)
    else:
        assert_close_to_reference(loss.lambda_target(reward, value, continuation), expected)
    # Without continuations: the λ-return with c = 1 in ours; one-step targets
    # whatever the estimator in TorchRL 0.14.1 (listed).
    plain = loss.lambda_target(reward, value)
    if impl is torchrl_objectives:
        assert_close_to_reference(plain, reward.double() + 0.9 * value.double())
    else:
        ones = torch.ones_like(continuation)
        assert_close_to_reference(plain, returns_reference(reward, value, ones, 0.9, lmbda))


# ------------------------------------------------- numerical equality
def both_actor_losses(discrete, **kwargs):
    env, actor, critic, continuation, start = networks(discrete=discrete)
    losses = {}
    for name, module in IMPLEMENTATIONS.items():
        loss = module.DreamerV3ActorLoss(
            copy.deepcopy(actor),
            critic,
            copy.deepcopy(env),
            continuation_model=continuation,
            imagination_horizon=4,
            use_reinforce=discrete,
            **kwargs,
        )
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.99, lmbda=0.95)
        losses[name] = loss
    return losses, start


@pytest.mark.parametrize("discrete", [True, False])
def test_actor_loss_equals_torchrl_on_the_same_draws(discrete):
    losses, start = both_actor_losses(discrete, entropy_bonus=3e-4 if discrete else 0.0)
    results = {}
    for name, loss in losses.items():
        torch.manual_seed(7)
        outputs = [loss(start) for _ in range(3)]  # the return scale moves
        results[name] = outputs
        outputs[-1][0]["loss_actor"].backward()
    for (ref_td, ref_im), (our_td, our_im) in zip(*results.values(), strict=True):
        for key in TORCHRL_ACTOR_KEYS:
            torch.testing.assert_close(our_td[key], ref_td[key], msg=key)
        for key in ("action", "lambda_target", "discount_weight", ("next", "continuation")):
            torch.testing.assert_close(our_im.get(key), ref_im.get(key), msg=str(key))
    # The weights are the official w_t = γ^t Π c_k of the root continuations.
    _, imagined = results["torchdreamer"][-1]
    for row in range(imagined.shape[0]):
        expected = ref_weights(imagined["continuation"][row, :, 0].tolist(), 0.99)
        assert_close_to_reference(imagined["discount_weight"][row, :, 0], expected)
    grads = [[p.grad for p in loss.actor_model.parameters()] for loss in losses.values()]
    for ref, ours in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("mode", ["symlog_mse", "two_hot"])
@pytest.mark.parametrize("slow", [0.0, 1.0])
def test_value_loss_equals_torchrl(mode, slow):
    make = logits_critic if mode == "two_hot" else scalar_critic
    td = TensorDict(
        state=torch.randn(3, 5, 4),
        lambda_target=torch.randn(3, 5, 1) * 10,
        batch_size=[3, 5],
    )
    replay = TensorDict(
        state=td["state"],
        bootstrap=torch.randn(3, 5),
        next=TensorDict(
            reward=torch.randn(3, 5, 1),
            done=torch.tensor([[False, False, True, False, False]] * 3).unsqueeze(-1),
            terminated=torch.tensor([[False, False, True, False, False]] * 3).unsqueeze(-1),
            batch_size=[3, 5],
        ),
        batch_size=[3, 5],
    )
    results = []
    for module in IMPLEMENTATIONS.values():
        loss = module.DreamerV3ValueLoss(make(), mode, True, 0.95, 255, None, slow)
        if slow:
            with torch.no_grad():  # a slow critic that differs from the online one
                for p in loss.target_value_model_params.values(True, True):
                    p.add_(0.1)
        out = loss(td.clone())[0]
        (out["loss_value"]).backward()
        grads = [p.grad.clone() for p in loss.value_model.parameters()]
        results.append((out, loss.replay_value_loss(replay)["loss_replay_value"], grads))
    (ref, ref_replay, ref_grads), (ours, our_replay, our_grads) = results
    for key in ("loss_value", "value_slow_loss"):
        torch.testing.assert_close(ours[key], ref[key], msg=key)
    torch.testing.assert_close(our_replay, ref_replay)
    torch.testing.assert_close(our_grads, ref_grads)


# ----------------------------------------------------- state_dict round trips
def test_actor_state_dict_loads_both_ways():
    losses, start = both_actor_losses(True)
    torch.manual_seed(3)
    losses["torchrl"](start)  # moves TorchRL's return statistics
    ours = losses["torchdreamer"]
    ours.load_state_dict(losses["torchrl"].state_dict())
    assert torch.equal(ours.return_low, losses["torchrl"].return_low)
    assert torch.equal(ours.return_high, losses["torchrl"].return_high)
    torch.manual_seed(4)
    ours(start)
    ours.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=0.5)
    fresh = both_actor_losses(True)[0]["torchrl"]
    fresh.value_estimator  # noqa: B018  TorchRL makes its estimator on first use
    # TorchRL's state holds its environment, ours only what the loss owns.
    missing, unexpected = fresh.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("model_based_env.") for key in missing)
    assert torch.equal(fresh.return_low, ours.return_low)
    assert torch.equal(fresh.return_high, ours.return_high)
    assert fresh.value_estimator.gamma == 0.9 and fresh.value_estimator.lmbda == 0.5


def test_actor_loads_torchrl_environment_weights_and_legacy_statistics():
    losses, _ = both_actor_losses(True)
    state = losses["torchrl"].state_dict()
    with torch.no_grad():
        for key in state:
            if key.startswith("model_based_env."):
                state[key] = state[key] + 1
    state["return_low"] = state.pop("retnorm.low") + 2  # TorchRL's older names
    ours = losses["torchdreamer"]
    ours.load_state_dict(state)
    env_state = ours.model_based_env.state_dict()
    for key, value in env_state.items():
        torch.testing.assert_close(value, state[f"model_based_env.{key}"])
    assert ours.return_low == 2


@pytest.mark.parametrize("slow", [0.0, 1.0])
def test_value_state_dict_loads_both_ways(slow):
    torchrl_loss = torchrl_objectives.DreamerV3ValueLoss(
        logits_critic(), "two_hot", True, 0.99, 255, None, slow
    )
    with torch.no_grad():
        for p in torchrl_loss.parameters():
            p.add_(1.0)
    ours = torchdreamer.DreamerV3ValueLoss(logits_critic(), "two_hot", True, 0.99, 255, None, slow)
    assert set(ours.state_dict()) == set(torchrl_loss.state_dict())
    ours.load_state_dict(torchrl_loss.state_dict())
    for key, value in torchrl_loss.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, msg=key)
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(2.0)
    torchrl_loss.load_state_dict(ours.state_dict())
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(torchrl_loss.state_dict()[key], value, msg=key)


# ----------------------------------------------------------------- optimizer
def test_optimizer_matches_torchrl_step_for_step():
    torch.manual_seed(0)
    shapes = [(8, 5), (5,), (3, 3, 2), (1,)]
    start = [torch.randn(s) for s in shapes]
    start[1].mul_(1e-5)  # below parameter_norm_min: the clip uses the floor
    grads = [
        [torch.randn(s) * (30 if i == 0 else 1) for i, s in enumerate(shapes)] for _ in range(12)
    ]
    grads[5][2] = None  # a parameter without a gradient on one step
    params = {}
    for name, cls in (("torchrl", TorchRLOptimizer), ("ours", torchdreamer.DreamerV3Optimizer)):
        weights = [nn.Parameter(w.clone()) for w in start]
        opt = cls(
            [{"params": weights[:2]}, {"params": weights[2:], "lr": 1e-2}],
            lr=3e-3,
            agc=0.3,
            parameter_norm_min=1e-3,
            beta1=0.9,
            beta2=0.99,
            eps=1e-8,
            warmup_steps=4,
        )
        for step in grads:
            for w, g in zip(weights, step, strict=True):
                w.grad = None if g is None else g.clone()
            opt.step()
        params[name] = (weights, opt.state_dict())
    (ref, ref_state), (ours, our_state) = params.values()
    for r, o in zip(ref, ours, strict=True):
        assert_close_to_reference(o.detach(), r.detach().double(), ulps=256)
    assert ref_state["param_groups"] == our_state["param_groups"]
    for index, moments in ref_state["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(our_state["state"][index][key], value)
    # One's checkpoint resumes the other.
    torchrl_opt = TorchRLOptimizer([{"params": ours[:2]}, {"params": ours[2:]}], lr=3e-3)
    torchrl_opt.load_state_dict(our_state)
    with pytest.raises(RuntimeError, match="no parameter gradients"):
        for w in ours:
            w.grad = None
        torchdreamer.DreamerV3Optimizer(ours).step()
