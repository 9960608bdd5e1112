"""TorchRL's four DreamerV3 losses and ours, each built with its constructor's defaults,
on the same inputs: the same output keys and the same values.

The learner is the one of ``torchrl.objectives.DreamerV3Loss``'s documentation, with a
255-bin reward head (the default ``reward_two_hot=True``) and a continuation model for the
actor loss: without one, TorchRL 0.14.1's λ-returns are one-step targets (docs/torchrl.md,
"Differences from TorchRL").
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchrl.objectives as torchrl_objectives
from tensordict import TensorDict
from tensordict.nn import (
    TensorDictModule,
    TensorDictSequential,
)
from torchrl.modules import (
    MLP,
)
from torchrl_learner import learner_parts

import torchdreamer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: Diagnostics ours adds to TorchRL's outputs (docs/torchrl.md): no gradient, not ``loss_``.
EXTRA = {"kl", "lambda_target_mean", "target_mean", "value_mean", "replay_target_mean"}


def networks():
    """World model, imagination environment, actor, critic and continuation model."""
    world_model, env, actor, critic = learner_parts(reward_bins=255)
    continuation = TensorDictSequential(
        TensorDictModule(
            MLP(in_features=12, out_features=1, num_cells=8, depth=1),
            in_keys=["state", "belief"],
            out_keys=["continuation_logit"],
        ),
        TensorDictModule(torch.sigmoid, ["continuation_logit"], ["continuation"]),
    )
    return world_model, env, actor, critic, continuation


def sample():
    g = torch.Generator().manual_seed(1)
    terminated = torch.zeros(2, 3, 1, dtype=torch.bool)
    terminated[1, 2] = True
    return TensorDict(
        {
            "state": torch.zeros(2, 3, 4),
            "belief": torch.zeros(2, 3, 8),
            "action": torch.rand(2, 3, 1, generator=g) * 2 - 1,
            "is_init": torch.zeros(2, 3, 1, dtype=torch.bool),
            "next": {
                "observation": torch.randn(2, 3, 3, generator=g),
                "reward": torch.randn(2, 3, 1, generator=g),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [2, 3],
    )


def losses(ns, nets):
    """The three losses and their composition, with defaults (``detach_output=False`` is
    the one argument TorchRL's ``DreamerV3Loss`` requires of the model loss)."""
    world_model, env, actor, critic, continuation = nets
    model_loss = ns.DreamerV3ModelLoss(world_model)
    model_loss.set_keys(pixels="observation")
    attached = ns.DreamerV3ModelLoss(world_model, detach_output=False)
    attached.set_keys(pixels="observation")
    actor_loss = ns.DreamerV3ActorLoss(actor, critic, env, continuation_model=continuation)
    value_loss = ns.DreamerV3ValueLoss(critic)
    linked = ns.DreamerV3ValueLoss(critic, actor_loss=actor_loss)
    composed = ns.DreamerV3Loss(attached, actor_loss, linked)
    return model_loss, actor_loss, value_loss, composed


def both():
    nets = networks()
    return [losses(ns, copy.deepcopy(nets)) for ns in (torchrl_objectives, torchdreamer)]


def assert_same(ours: TensorDict, theirs: TensorDict) -> None:
    assert set(theirs.keys(True, True)) == set(ours.keys(True, True)) - EXTRA
    for key in theirs.keys(True, True):
        torch.testing.assert_close(ours.get(key), theirs.get(key), msg=str(key))


def test_model_loss_with_defaults_equals_torchrls():
    (theirs, *_), (ours, *_) = both()
    results = []
    for loss in (theirs, ours):
        torch.manual_seed(3)  # the posterior's draws
        results.append(loss(sample()))
    (their_td, their_out), (our_td, our_out) = results
    assert_same(our_td, their_td)
    assert "loss_model_kl" in our_td.keys() and "loss_model_continue" not in our_td.keys()
    assert not our_out["next", "posterior_logits"].requires_grad  # detach_output=True
    for key in ("posterior_logits", "prior_logits", "reward_logits", "true_reward"):
        torch.testing.assert_close(our_out["next", key], their_out["next", key])


def test_actor_and_value_losses_with_defaults_equal_torchrls():
    (_, their_actor, their_value, _), (_, our_actor, our_value, _) = both()
    start = TensorDict(state=torch.randn(6, 4), belief=torch.randn(6, 8), batch_size=[6])
    results = []
    for actor_loss, value_loss in ((their_actor, their_value), (our_actor, our_value)):
        assert float(actor_loss.value_estimator.gamma) == pytest.approx(0.99)
        torch.manual_seed(7)
        outputs = [actor_loss(start) for _ in range(2)]  # the return scale moves
        value_td, _ = value_loss(outputs[-1][1])
        results.append((outputs, value_td))
    (their_outputs, their_value_td), (our_outputs, our_value_td) = results
    for (their_td, their_imagined), (our_td, our_imagined) in zip(
        their_outputs, our_outputs, strict=True
    ):
        assert_same(our_td, their_td)
        for key in ("action", "lambda_target", "discount_weight", ("next", "continuation")):
            torch.testing.assert_close(our_imagined.get(key), their_imagined.get(key))
    assert_same(our_value_td, their_value_td)


def test_composed_loss_with_defaults_equals_torchrls():
    """Imagination discounts with the actor's 0.99, the replay returns with 1 - 1/333:
    TorchRL's defaults, taken as they are."""
    (*_, theirs), (*_, ours) = both()
    results = []
    for loss in (theirs, ours):
        torch.manual_seed(3)
        result = loss(sample())
        sum(v for k, v in result.items() if k.startswith("loss_")).backward()
        results.append(result)
    assert_same(results[1], results[0])
    grads = [[p.grad for p in loss.model_loss.world_model.parameters()] for loss in (theirs, ours)]
    torch.testing.assert_close(grads[1], grads[0])
