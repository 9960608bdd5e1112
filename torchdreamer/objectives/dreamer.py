"""The composed DreamerV3 objective: world model, imagination, critic and replay critic."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey, unravel_key
from torchrl.objectives import LossModule

from torchdreamer.objectives.actor import DreamerV3ActorLoss
from torchdreamer.objectives.value import DreamerV3ValueLoss

__all__ = ["DreamerV3Loss"]


class DreamerV3Loss(LossModule):
    """One DreamerV3 update's losses, a drop-in for ``torchrl.objectives.DreamerV3Loss``.

    The official composition, on a ``[B, T]`` replay batch (TorchRL's layout,
    targets under ``"next"``):

    1. ``model_loss`` runs the world model and gives the ``loss_model_*`` terms;
    2. every posterior state ``("next", "state")``/``("next", "belief")``,
       detached, starts an imagined trajectory, on which ``actor_loss`` gives
       ``loss_actor`` and the λ-returns;
    3. ``value_loss`` trains the critic on those returns (``loss_value``); with
       REINFORCE and this package's two losses of one critic, on the critic
       output the actor loss computed for its returns (the same states, one
       critic pass instead of two), otherwise by calling the critic again;
    4. the replay value loss trains the critic on the replayed sequence itself,
       bootstrapped by each state's first imagined return, through the
       posterior features with their gradient (the official ``repval_grad``),
       so ``model_loss`` must keep its output attached
       (``detach_output=False``); scaled by ``replay_value_loss_weight``.

    As in TorchRL, the replay returns take their discount ``1 - 1 /
    continuation_horizon`` and their ``lmbda`` from this loss's arguments, the
    imagined ones from the actor loss's value estimator. The defaults here are
    the official ones (333 and 0.95); build the actor loss with
    :meth:`DreamerV3ActorLoss.official <torchdreamer.DreamerV3ActorLoss.official>`
    (or its ``make_value_estimator``) for the same discount in imagination:
    TorchRL's actor default, gamma 0.99, differs.

    Args:
        model_loss: A :class:`~torchdreamer.DreamerV3ModelLoss`.
        actor_loss: A :class:`~torchdreamer.DreamerV3ActorLoss` sharing the world
            model's dynamics and the critic.
        value_loss: A :class:`~torchdreamer.DreamerV3ValueLoss` of that critic.

    Keyword Args:
        replay_value_loss_weight: Scale of the replay value loss (official
            0.3); 0 leaves it out.
        continuation_horizon: Discount horizon of the replay returns (official
            333).
        lmbda: λ of the replay returns (official 0.95).

    Returns (forward): a tensordict of the ``loss_*`` terms (their sum is the
    objective), the detached metrics of the three losses, the unweighted
    detached ``replay_value`` and, under ``replay_context``, the detached
    posterior ``state`` and ``belief`` ``[B, T, ...]``.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from tensordict.nn import ProbabilisticTensorDictModule as Prob
        >>> from tensordict.nn import ProbabilisticTensorDictSequential as Seq
        >>> from torchrl.modules import OneHotCategorical
        >>> from torchdreamer import (
        ...     DreamerV3ActorLoss, DreamerV3Loss, DreamerV3ModelLoss, DreamerV3ValueLoss)
        >>> class Env(torch.nn.Module):  # the imagination environment's contract
        ...     def reset(self, td): ...
        ...     def step(self, td): ...
        >>> head = Prob(["logits"], ["action"], distribution_class=OneHotCategorical)
        >>> actor = Seq(TensorDictModule(torch.nn.Linear(3, 2), ["state"], ["logits"]), head)
        >>> critic = TensorDictModule(torch.nn.Linear(3, 255), ["state"], ["state_value_logits"])
        >>> world_model = TensorDictModule(torch.nn.Identity(), ["x"], ["y"])
        >>> loss = DreamerV3Loss(
        ...     DreamerV3ModelLoss.official(world_model),
        ...     DreamerV3ActorLoss.official(actor, critic, Env()),
        ...     DreamerV3ValueLoss.official(critic),
        ... )
        >>> loss.replay_value_loss_weight, loss.continuation_horizon
        (0.3, 333.0)

    """

    @dataclass
    class _AcceptedKeys:
        """Posterior feature, reset and returned replay-context keys.

        Attributes:
            state: Stochastic posterior state, under ``"next"``. Defaults to ``"state"``.
            belief: Deterministic posterior state, under ``"next"``. Defaults to ``"belief"``.
            is_init: Reset marker at the input root. Defaults to ``"is_init"``.
            replay_context: Where the detached posterior features are returned.
                Defaults to ``"replay_context"``.
        """

        state: NestedKey = "state"
        belief: NestedKey = "belief"
        is_init: NestedKey = "is_init"
        replay_context: NestedKey = "replay_context"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        model_loss: LossModule,
        actor_loss: LossModule,
        value_loss: LossModule,
        *,
        replay_value_loss_weight: float = 0.3,
        continuation_horizon: float = 333.0,
        lmbda: float = 0.95,
    ) -> None:
        super().__init__()
        if not replay_value_loss_weight >= 0:
            raise ValueError(
                f"replay_value_loss_weight must be >= 0, got {replay_value_loss_weight}."
            )
        if replay_value_loss_weight and model_loss.detach_output:
            raise ValueError(
                "The replay value loss trains the representation through the posterior "
                "features: build the model loss with detach_output=False, or pass "
                "replay_value_loss_weight=0.0."
            )
        if not continuation_horizon >= 1:
            raise ValueError(f"continuation_horizon must be >= 1, got {continuation_horizon}.")
        self.model_loss = model_loss
        self.actor_loss = actor_loss
        self.value_loss = value_loss
        self.replay_value_loss_weight = float(replay_value_loss_weight)
        self.continuation_horizon = float(continuation_horizon)
        self.lmbda = float(lmbda)

    @property
    def in_keys(self) -> list[NestedKey]:
        """World-model inputs, reset marker and the real targets."""
        model_keys = self.model_loss.tensor_keys
        observations = model_keys.pixels
        observations = observations if isinstance(observations, list) else [observations]
        value_keys = self.value_loss.tensor_keys
        return list(
            dict.fromkeys(
                [
                    *self.model_loss.world_model.in_keys,
                    unravel_key(self.tensor_keys.is_init),
                    *(unravel_key(("next", key)) for key in observations),
                    unravel_key(("next", model_keys.reward)),
                    unravel_key(("next", value_keys.reward)),
                    unravel_key(("next", model_keys.done)),
                    unravel_key(("next", model_keys.terminated)),
                ]
            )
        )

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def _shares_critic(self) -> bool:
        """Whether the value loss can train on the actor loss's critic output (item 3)."""
        return (
            isinstance(self.actor_loss, DreamerV3ActorLoss)
            and isinstance(self.value_loss, DreamerV3ValueLoss)
            and self.actor_loss.use_reinforce
            and self.actor_loss.value_model is self.value_loss.value_model
        )

    def _replay_value(
        self,
        sample: TensorDictBase,
        posterior: TensorDictBase,
        imagined: TensorDictBase,
    ) -> TensorDict:
        """The critic on the replayed sequence, bootstrapped by the imagined returns."""
        value_loss = self.value_loss
        value_keys = value_loss.tensor_keys
        features = posterior.get("next").select(*value_loss.value_model.in_keys, strict=False)
        bootstrap = imagined.get(self.actor_loss.tensor_keys.lambda_target)[..., 0, 0]
        features.set(value_keys.bootstrap, bootstrap.reshape(sample.batch_size))
        targets = [value_keys.reward, value_keys.done, value_keys.terminated]
        missing = [k for k in targets if unravel_key(k) not in sample.get("next").keys(True)]
        if missing:
            raise KeyError(
                f"The replay value loss reads {[('next', k) for k in missing]} from the "
                "replay batch; add them or set_keys(...) on the value loss."
            )
        features.set("next", sample.get("next").select(*targets))
        return value_loss.replay_value_loss(
            features, horizon=self.continuation_horizon, lmbda=self.lmbda
        )

    def forward(self, sample: TensorDictBase) -> TensorDict:
        """The losses of one update on a ``[B, T]`` replay batch (see the class)."""
        keys = self.tensor_keys
        model_td, posterior = self.model_loss(sample)
        features = posterior.get("next").select(keys.state, keys.belief, strict=False)
        if unravel_key(keys.state) not in features.keys(True):
            raise KeyError(
                f"The world model wrote no posterior state at ('next', {keys.state!r}); "
                "DreamerV3Loss starts imagination from it (set_keys(state=...))."
            )
        starts = features.detach().reshape(-1)
        if self._shares_critic():
            actor_td, imagined, output = self.actor_loss._forward(starts, keep_value_output=True)
            value_td, _ = self.value_loss._forward(imagined, output)
        else:
            actor_td, imagined = self.actor_loss(starts)
            value_td, _ = self.value_loss(imagined.detach())
        result = model_td.apply(torch.squeeze)
        result.update(actor_td).update(value_td)
        if self.replay_value_loss_weight:
            replay_td = self._replay_value(sample, posterior, imagined)
            replay = replay_td.get("loss_replay_value")
            result.update({k: v for k, v in replay_td.items() if k != "loss_replay_value"})
        else:
            replay = model_td.get(next(iter(model_td.keys()))).new_zeros(())
        result.set("loss_replay_value", self.replay_value_loss_weight * replay)
        result.set("replay_value", replay.detach())
        result.set(keys.replay_context, features.detach())
        return result
