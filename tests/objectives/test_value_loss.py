"""DreamerV3ValueLoss: values against plain float64 references, wiring, errors, compile."""

from __future__ import annotations

import copy

import pytest
import torch
from reference import (
    assert_close_to_reference,
    official_bins,
    ref_cross_entropy,
    ref_decode,
    ref_symlog,
)
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.objectives import SoftUpdate
from torchrl.objectives.value import TDLambdaEstimator

from torchdreamer import DreamerV3ValueLoss

K = 255


# ---------------------------------------------------------------- references
BINS = official_bins(K)


def ref_symlog_tensor(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([ref_symlog(v) for v in x.double().flatten().tolist()]).view(x.shape)


def gamma_weights(gamma: float, shape: tuple[int, int]) -> torch.Tensor:
    return torch.tensor([[gamma**t for t in range(shape[1])]] * shape[0], dtype=torch.float64)


# ------------------------------------------------------------------ fixtures
def critic(out_features: int = 1, out_key: str = "state_value", seed: int = 0) -> TensorDictModule:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, out_features)
    )
    return TensorDictModule(net, in_keys=["state"], out_keys=[out_key])


def data(shape: tuple[int, ...], seed: int = 0, **extra: torch.Tensor) -> TensorDict:
    generator = torch.Generator().manual_seed(seed)
    target = (
        torch.randn(*shape, 1, generator=generator).mul(3).exp()
        * torch.randn(*shape, 1, generator=generator).sign()
    )
    return TensorDict(
        {"state": torch.randn(*shape, 4, generator=generator), "lambda_target": target, **extra},
        batch_size=shape,
    )


class ActorStandIn(torch.nn.Module):
    """Anything with a TorchRL value estimator, like DreamerV3ActorLoss."""

    def __init__(self, gamma: float):
        super().__init__()
        self.value_estimator = TDLambdaEstimator(gamma=gamma, lmbda=0.95, value_network=None)


# --------------------------------------------------------------- the values
def test_symlog_mse_on_time_batches_matches_reference():
    loss = DreamerV3ValueLoss(critic(), gamma=0.9)
    td = data((3, 7))
    out, _ = loss(td)
    with torch.no_grad():
        pred = loss.value_model(td.clone())["state_value"]
    per_step = (
        ref_symlog_tensor(pred.squeeze(-1)) - ref_symlog_tensor(td["lambda_target"].squeeze(-1))
    ) ** 2
    expected = (per_step * gamma_weights(0.9, (3, 7))).mean()
    assert_close_to_reference(out["loss_value"], expected, scale=float(per_step.max()))
    assert_close_to_reference(
        out["value_mean"], pred.double().mean(), scale=float(pred.abs().max())
    )
    target = td["lambda_target"].double()
    assert_close_to_reference(out["target_mean"], target.mean(), scale=float(target.abs().max()))


def test_two_hot_on_time_batches_matches_reference():
    loss = DreamerV3ValueLoss(critic(K, "state_value_logits"), value_loss="two_hot", gamma=0.95)
    td = data((2, 6))
    out, _ = loss(td)
    with torch.no_grad():
        logits = loss.value_model(td.clone())["state_value_logits"]
    per_step = ref_cross_entropy(logits, td["lambda_target"].squeeze(-1), BINS)
    expected = (per_step * gamma_weights(0.95, (2, 6))).mean()
    scale = float(torch.logsumexp(logits.double(), -1).abs().max())  # the largest term
    assert_close_to_reference(out["loss_value"], expected, scale=scale)
    assert "value_mean" not in out.keys()  # logits only: no free decoded value to report


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight_source", ["gamma", "discount_weight"])
def test_two_hot_gradient_matches_reference(reduction, weight_source):
    # The weighting and reduction run inside the cross-entropy's autograd node
    # (from cached gamma powers, or from the actor's discount_weight).
    logits = torch.randn(3, 5, K, generator=torch.Generator().manual_seed(4)).requires_grad_()
    td = data((3, 5)).set("logits", logits)
    weight = gamma_weights(0.9, (3, 5))
    if weight_source == "discount_weight":
        weight = torch.rand(3, 5, dtype=torch.float64)
        td.set("discount_weight", weight.float().unsqueeze(-1))
    head = TensorDictModule(torch.nn.Identity(), ["logits"], ["state_value_logits"])
    loss = DreamerV3ValueLoss(head, value_loss="two_hot", gamma=0.9, reduction=reduction)
    out, _ = loss(td)
    reference = logits.detach().double().requires_grad_()
    per_step = ref_cross_entropy(reference, td["lambda_target"].squeeze(-1), BINS) * weight
    expected = {"mean": per_step.mean(), "sum": per_step.sum(), "none": per_step}[reduction]
    terms = torch.logsumexp(reference.detach(), -1).abs() * weight  # bounds each weighted term
    scale = float(terms.sum() if reduction == "sum" else terms.max())
    assert_close_to_reference(out["loss_value"], expected, scale=scale)
    upstream = torch.rand(expected.shape, dtype=torch.float64)
    (out["loss_value"] * upstream.float()).sum().backward()
    (expected * upstream).sum().backward()
    # Each logit's gradient is upstream * weight * (softmax - two-hot), / 15 for the mean.
    scale = float((upstream * weight).abs().max()) / (15 if reduction == "mean" else 1)
    assert_close_to_reference(logits.grad, reference.grad, scale=scale)


def test_two_hot_reads_logits_from_value_key_and_reports_decoded_value():
    net = critic(K, "state_value_logits")

    class LogitsAndValue(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net.module

        def forward(self, state):
            logits = self.net(state)
            return logits, ref_decode(logits, BINS).float().unsqueeze(-1)

    both = TensorDictModule(LogitsAndValue(), ["state"], ["state_value_logits", "state_value"])
    only_value_key = TensorDictModule(net.module, ["state"], ["state_value"])
    td = data((2, 5))
    out_both, _ = DreamerV3ValueLoss(both, value_loss="two_hot")(td)
    out_value_key, _ = DreamerV3ValueLoss(only_value_key, value_loss="two_hot")(td)
    torch.testing.assert_close(out_both["loss_value"], out_value_key["loss_value"])
    with torch.no_grad():
        values = ref_decode(net.module(td["state"]), BINS)
    assert_close_to_reference(
        out_both["value_mean"], values.mean(), scale=float(values.abs().max())
    )


def test_flat_batches_are_not_weighted_and_discount_weight_is_used():
    td = data((12,))
    plain, _ = DreamerV3ValueLoss(critic(), gamma=0.5)(td)
    unweighted, _ = DreamerV3ValueLoss(critic(), discount_loss=False)(td)
    torch.testing.assert_close(plain["loss_value"], unweighted["loss_value"])

    weight = torch.linspace(0.1, 1.0, 12)
    for w in (weight, weight[:, None]):
        weighted, _ = DreamerV3ValueLoss(critic(), reduction="none")(
            td.clone().set("discount_weight", w)
        )
        per_step, _ = DreamerV3ValueLoss(critic(), reduction="none", discount_loss=False)(td)
        torch.testing.assert_close(weighted["loss_value"], per_step["loss_value"] * weight)


def test_discount_weight_takes_precedence_over_gamma_and_discount_loss_false_ignores_both():
    td = data((3, 4))
    weight = torch.rand(3, 4, 1)
    with_weight, _ = DreamerV3ValueLoss(critic(), gamma=0.5, reduction="none")(
        td.clone().set("discount_weight", weight)
    )
    raw, _ = DreamerV3ValueLoss(critic(), reduction="none", discount_loss=False)(
        td.clone().set("discount_weight", weight)
    )
    torch.testing.assert_close(with_weight["loss_value"], raw["loss_value"] * weight.squeeze(-1))


def test_reductions():
    td = data((3, 4))
    none, _ = DreamerV3ValueLoss(critic(), reduction="none")(td)
    total, _ = DreamerV3ValueLoss(critic(), reduction="sum")(td)
    mean, _ = DreamerV3ValueLoss(critic())(td)
    assert none["loss_value"].shape == (3, 4)
    torch.testing.assert_close(total["loss_value"], none["loss_value"].sum())
    torch.testing.assert_close(mean["loss_value"], none["loss_value"].mean())


def test_nested_keys_and_set_keys():
    net = TensorDictModule(critic().module, in_keys=[("obs", "state")], out_keys=[("critic", "v")])
    td = data((2, 3))
    nested = TensorDict(
        {"obs": {"state": td["state"]}, "targets": {"ret": td["lambda_target"]}}, batch_size=[2, 3]
    )
    loss = DreamerV3ValueLoss(net)
    loss.set_keys(value=("critic", "v"), lambda_target=("targets", "ret"))
    assert loss.tensor_keys.lambda_target == ("targets", "ret")
    reference, _ = DreamerV3ValueLoss(TensorDictModule(net.module, ["state"], ["state_value"]))(td)
    torch.testing.assert_close(loss(nested)[0]["loss_value"], reference["loss_value"])
    assert set(DreamerV3ValueLoss.default_keys.__dataclass_fields__) == {
        "value",
        "value_logits",
        "lambda_target",
        "discount_weight",
        "reward",
        "done",
        "terminated",
        "is_last",
        "is_terminal",
        "bootstrap",
    }
    with pytest.raises(ValueError, match="not an accepted tensordict key"):
        loss.set_keys(observation="obs")


def test_general_tensordict_modules_give_the_same_loss_as_the_plain_fast_path():
    plain = critic()
    hooked = TensorDictModule(plain.module, ["state"], ["state_value"])
    hooked.register_forward_hook(lambda module, args, out: out)
    sequential = TensorDictSequential(TensorDictModule(plain.module, ["state"], ["state_value"]))
    td = data((2, 5))
    expected = DreamerV3ValueLoss(plain)(td)[0]["loss_value"]
    for model in (hooked, sequential):
        torch.testing.assert_close(DreamerV3ValueLoss(model)(td)[0]["loss_value"], expected)


def test_forward_leaves_the_input_untouched_and_returns_it():
    td = data((2, 5))
    before = {key: value for key, value in td.items(True, True)}
    out, returned = DreamerV3ValueLoss(critic(K, "state_value_logits"), value_loss="two_hot")(td)
    assert returned is td
    assert set(td.keys(True, True)) == set(before)
    assert all(td.get(key) is value for key, value in before.items())
    assert out.batch_size == torch.Size([])
    assert all(not v.requires_grad for k, v in out.items() if k != "loss_value")


# ------------------------------------------------------------ slow critic
@pytest.mark.parametrize("mode", ["symlog_mse", "two_hot"])
def test_slow_critic_regularisation_and_soft_update(mode):
    model = critic(
        K if mode == "two_hot" else 1, "state_value_logits" if mode == "two_hot" else "state_value"
    )
    loss = DreamerV3ValueLoss(model, value_loss=mode, gamma=0.9, slow_critic_regularization=1.0)
    updater = SoftUpdate(loss, tau=0.02)
    slow_net = copy.deepcopy(model.module)
    optimiser = torch.optim.SGD(loss.parameters(), lr=0.1)
    td = data((2, 5))
    for _ in range(3):
        out, _ = loss(td)
        optimiser.zero_grad()
        out["loss_value"].backward()
        optimiser.step()
        updater.step()
        with torch.no_grad():
            for slow, online in zip(slow_net.parameters(), model.module.parameters(), strict=True):
                slow.mul_(0.98).add_(0.02 * online)
    for slow, target in zip(
        slow_net.parameters(), loss.target_value_model_params.values(True, True), strict=True
    ):
        torch.testing.assert_close(target, slow)

    out, _ = loss(td)
    with torch.no_grad():
        pred = model.module(td["state"])
        slow_pred = slow_net(td["state"])
    weights = gamma_weights(0.9, (2, 5))
    target = td["lambda_target"].squeeze(-1)
    if mode == "two_hot":
        main = ref_cross_entropy(pred, target, BINS)
        reg = ref_cross_entropy(pred, ref_decode(slow_pred, BINS), BINS)
    else:
        main = (ref_symlog_tensor(pred.squeeze(-1)) - ref_symlog_tensor(target)) ** 2
        reg = (ref_symlog_tensor(pred.squeeze(-1)) - ref_symlog_tensor(slow_pred.squeeze(-1))) ** 2
    scale = float((main + reg).max())  # the largest per-step term
    assert_close_to_reference(out["loss_value"], ((main + reg) * weights).mean(), scale=scale)
    assert_close_to_reference(out["value_slow_loss"], (reg * weights).mean(), scale=scale)
    assert not any(p.requires_grad for p in loss.target_value_model_params.values(True, True))
    assert {id(p) for p in loss.parameters()} == {id(p) for p in model.module.parameters()}


def test_state_dict_round_trip_includes_slow_critic():
    loss = DreamerV3ValueLoss(
        critic(K, "state_value_logits"), value_loss="two_hot", slow_critic_regularization=1.0
    )
    SoftUpdate(loss, tau=0.02)
    with torch.no_grad():
        for target in loss.target_value_model_params.values(True, True):
            target.add_(1.0)
    state = loss.state_dict()
    assert any(key.startswith("target_value_model_params.") for key in state)
    fresh = DreamerV3ValueLoss(
        critic(K, "state_value_logits", seed=5),
        value_loss="two_hot",
        slow_critic_regularization=1.0,
    )
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, state[key])
    td = data((2, 3))
    torch.testing.assert_close(fresh(td)[0]["loss_value"], loss(td)[0]["loss_value"])


def test_no_slow_critic_by_default():
    loss = DreamerV3ValueLoss(critic())
    assert not any("target_" in key for key in loss.state_dict())
    with pytest.raises(RuntimeError, match="target parameters"):
        SoftUpdate(loss, tau=0.02)


# -------------------------------------------------------------- the gamma link
def test_gamma_is_read_from_the_actor_loss_on_every_forward():
    actor = ActorStandIn(gamma=0.9)
    loss = DreamerV3ValueLoss(critic(), gamma=0.5, actor_loss=actor, reduction="none")
    unweighted = DreamerV3ValueLoss(critic(), discount_loss=False, reduction="none")
    td = data((2, 6))
    base = unweighted(td)[0]["loss_value"].double()
    for gamma in (0.9, 0.7):
        if gamma != 0.9:
            actor.value_estimator = TDLambdaEstimator(gamma=gamma, lmbda=0.95, value_network=None)
        assert_close_to_reference(loss(td)[0]["loss_value"], base * gamma_weights(gamma, (2, 6)))
    actor.value_estimator.gamma.fill_(0.6)  # an in-place change is seen too
    assert_close_to_reference(loss(td)[0]["loss_value"], base * gamma_weights(0.6, (2, 6)))
    assert loss.current_gamma() == pytest.approx(0.6)
    assert not any(p is q for p in loss.parameters() for q in actor.parameters())
    assert not any("value_estimator" in key for key in loss.state_dict())


def test_legacy_sync_copies_gamma_once():
    actor = ActorStandIn(gamma=0.8)
    loss = DreamerV3ValueLoss(critic(), gamma=0.5, reduction="none")
    unweighted = DreamerV3ValueLoss(critic(), discount_loss=False, reduction="none")
    td = data((2, 6))
    base = unweighted(td)[0]["loss_value"].double()
    assert_close_to_reference(loss(td)[0]["loss_value"], base * gamma_weights(0.5, (2, 6)))
    loss.sync_gamma_with_actor_loss(actor)
    assert loss.gamma == pytest.approx(0.8)
    assert_close_to_reference(loss(td)[0]["loss_value"], base * gamma_weights(0.8, (2, 6)))
    actor.value_estimator.gamma.fill_(0.3)  # a copy, not a link: unchanged until the next sync
    assert_close_to_reference(loss(td)[0]["loss_value"], base * gamma_weights(0.8, (2, 6)))
    loss.sync_gamma_with_actor_loss(actor)
    assert_close_to_reference(loss(td)[0]["loss_value"], base * gamma_weights(0.3, (2, 6)))


# ------------------------------------------------------------------ errors
def test_missing_target_names_the_key():
    td = data((4,)).exclude("lambda_target")
    with pytest.raises(KeyError, match="lambda_target.*actor loss"):
        DreamerV3ValueLoss(critic())(td)


def test_wrong_number_of_bins_names_the_sizes():
    with pytest.raises(ValueError, match="needs 255 logits.*shape \\(2, 3, 100\\)"):
        DreamerV3ValueLoss(critic(100), value_loss="two_hot")(data((2, 3)))


def test_mismatched_shapes_name_key_and_shapes():
    td = data((2, 3)).set("discount_weight", torch.ones(2, 3, 2))
    with pytest.raises(ValueError, match=r"discount_weight.*\(2, 3, 2\).*\(2, 3\)"):
        DreamerV3ValueLoss(critic())(td)
    td = TensorDict({"state": torch.randn(2, 3, 4), "lambda_target": torch.randn(2, 4, 1)}, [2])
    with pytest.raises(ValueError, match=r"lambda_target.*\(2, 4, 1\).*\(2,\)"):
        DreamerV3ValueLoss(critic())(td)
    with pytest.raises(ValueError, match=r"state_value.*\(2, 3, 2\)"):
        DreamerV3ValueLoss(critic(2))(data((2, 3)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"value_loss": "mse"}, "value_loss must be one of"),
        ({"gamma": 1.5}, r"gamma must lie in \(0, 1\]"),
        ({"gamma": 0.0}, r"gamma must lie in \(0, 1\]"),
        ({"slow_critic_regularization": -0.1}, "slow_critic_regularization must be >= 0"),
        ({"reduction": "max"}, "reduction must be one of"),
        ({"num_value_bins": 1}, "num_value_bins"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DreamerV3ValueLoss(critic(), **kwargs)


def test_bad_actor_loss_and_bad_actor_gamma():
    with pytest.raises(TypeError, match="value_estimator.gamma"):
        DreamerV3ValueLoss(critic(), actor_loss=object())
    with pytest.raises(ValueError, match=r"actor_loss.value_estimator.gamma must lie in \(0, 1\]"):
        DreamerV3ValueLoss(critic(), actor_loss=ActorStandIn(gamma=1.2))
    actor = ActorStandIn(gamma=0.9)
    loss = DreamerV3ValueLoss(critic(), actor_loss=actor)
    actor.value_estimator.gamma.fill_(-1.0)
    with pytest.raises(ValueError, match="must lie in"):
        loss(data((2, 3)))


def test_non_finite_values_are_caught_only_when_validating():
    td = data((2, 3))
    td["lambda_target"][0, 0] = float("nan")
    out, _ = DreamerV3ValueLoss(critic())(td)
    assert out["loss_value"].isnan()
    with pytest.raises(ValueError, match="'lambda_target' holds 1 non-finite"):
        DreamerV3ValueLoss(critic(), validate_inputs=True)(td)


# ----------------------------------------------------------------- compile
@pytest.mark.parametrize("mode", ["symlog_mse", "two_hot"])
@pytest.mark.parametrize("slow", [0.0, 1.0])
def test_compiled_forward_and_backward_match_eager(mode, slow):
    width, key = (K, "state_value_logits") if mode == "two_hot" else (1, "state_value")
    eager = DreamerV3ValueLoss(critic(width, key), value_loss=mode, slow_critic_regularization=slow)
    compiled_loss = DreamerV3ValueLoss(
        critic(width, key), value_loss=mode, slow_critic_regularization=slow
    )
    if slow:
        with torch.no_grad():
            for a, b in zip(
                eager.target_value_model_params.values(True, True),
                compiled_loss.target_value_model_params.values(True, True),
                strict=True,
            ):
                a.mul_(0.5)
                b.mul_(0.5)
    compiled = torch.compile(compiled_loss, fullgraph=True)
    td = data((3, 5))
    out_eager, _ = eager(td)
    out_compiled, _ = compiled(td)
    for name in out_eager.keys():
        torch.testing.assert_close(out_compiled[name], out_eager[name], rtol=1e-5, atol=1e-5)
    out_eager["loss_value"].backward()
    out_compiled["loss_value"].backward()
    for p, q in zip(eager.parameters(), compiled_loss.parameters(), strict=True):
        # Inductor fuses the softmax differently: float32 rounding, not logic.
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5)


def test_lazy_value_model_with_slow_critic_asks_for_a_first_forward():
    from torchrl.modules import MLP

    lazy = TensorDictModule(MLP(out_features=1, depth=1, num_cells=8), ["state"], ["state_value"])
    with pytest.raises(ValueError, match="Run the value model once on a sample batch"):
        DreamerV3ValueLoss(lazy, slow_critic_regularization=1.0)
    td = data((4,))
    lazy(td.clone())
    loss = DreamerV3ValueLoss(lazy, slow_critic_regularization=1.0)
    SoftUpdate(loss, tau=0.02)
    loss(td)[0]["loss_value"].backward()


def test_plain_modules_are_refused_with_the_fix():
    from torchdreamer import DreamerV3ModelLoss

    with pytest.raises(TypeError, match="value_model must be a tensordict module"):
        DreamerV3ValueLoss(torch.nn.Linear(4, 1))
    with pytest.raises(TypeError, match="world_model must read the replay tensordict"):
        DreamerV3ModelLoss(torch.nn.Linear(4, 1))(TensorDict({"next": {"reward": 0.0}}))
