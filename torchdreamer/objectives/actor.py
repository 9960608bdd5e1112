"""The DreamerV3 actor loss: imagination, λ-returns and the policy gradient."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp
from torchrl.objectives import LossModule
from torchrl.objectives.utils import ValueEstimators, default_value_kwargs
from torchrl.objectives.value import TD0Estimator, TD1Estimator, TDLambdaEstimator

from torchdreamer.dreamer.parts import actor_loss, imagined_returns
from torchdreamer.dreamer.return_scale import ReturnScale
from torchdreamer.functional import lambda_return
from torchdreamer.functional.outputs import TwoHot
from torchdreamer.objectives import official
from torchdreamer.objectives._call import call_module, require_tensordict_module
from torchdreamer.objectives._links import Borrowed, frozen
from torchdreamer.objectives._shapes import per_step

__all__ = ["DreamerV3ActorLoss"]

#: The estimators this loss supports: each is a λ-return, with λ = 0 (TD0),
#: λ = 1 (TD1) or the estimator's ``lmbda`` (TDLambda).
_ESTIMATORS = {
    ValueEstimators.TD0: TD0Estimator,
    ValueEstimators.TD1: TD1Estimator,
    ValueEstimators.TDLambda: TDLambdaEstimator,
}


class DreamerV3ActorLoss(LossModule):
    """DreamerV3 actor loss, computed on trajectories imagined in the world model.

    From the given (replay posterior) start states, the actor is rolled out for
    ``imagination_horizon`` steps inside ``model_based_env`` with the world
    model frozen. Along the ``H + 1`` states ``s_0 .. s_H`` it computes the
    λ-returns of DreamerV3, ``R_t = r_{t+1} + γ c_{t+1} ((1 - λ) v_{t+1} + λ R_{t+1})``
    bootstrapped from the online critic, ``R_H = v_H``, and the weights
    ``w_t = γ^t Π_{k<=t} c_k`` (the start state's continuation included), where
    ``c`` comes from ``continuation_model`` or is 1.

    The loss, averaged over ``t < H``, is

    * REINFORCE (``use_reinforce=True``, discrete actions):
      ``-w_t (log π(a_t|s_t) sg((R_t - v_t) / S) + η H[π(·|s_t)])``;
    * reparameterised (continuous actions, gradients through the dynamics):
      ``-w_t (R_t / S + η H[π(·|s_t)])``,

    where ``S = max(1, EMA(P95(R)) - EMA(P5(R)))`` (see :class:`ReturnScale`,
    held as ``retnorm``), updated in training mode only and applied to the
    actor only.

    ``forward`` returns ``(loss_td, imagined)``: ``imagined`` is the detached
    ``[*batch, H]`` trajectory with ``lambda_target`` and ``discount_weight``
    written in (and, with a continuation model, ``continuation`` of each
    step's state and ``("next", "continuation")`` of the state it reaches, as
    TorchRL writes them), ready for :class:`~torchdreamer.DreamerV3ValueLoss`.
    Link that loss with ``actor_loss=`` so both use the same gamma.

    Args:
        actor_model: The policy, a probabilistic tensordict module with
            ``get_dist`` (e.g. ``ProbabilisticTensorDictSequential``), writing
            ``action``.
        value_model: The critic. Writes the decoded value to ``state_value``, or
            only logits over the two-hot bins to ``state_value_logits``.
        model_based_env: The imagination environment: TorchRL's ``DreamerEnv``
            (any ``ModelBasedEnvBase``), or any module with ``reset(td)`` and
            ``step(td)`` writing ``("next", state keys)`` and ``("next", "reward")``.

    Keyword Args:
        continuation_model: Writes ``continuation`` probabilities for a state.
        imagination_horizon: Imagined steps ``H`` (official 15).
        discount_loss: Weight steps by ``w_t``; otherwise all weights are 1.
        entropy_bonus: ``η`` (official 3e-4).
        use_reinforce: REINFORCE (discrete) instead of reparameterised gradients.
        return_normalization: Divide by ``S``; otherwise ``S = 1``.
        return_normalization_rate: EMA rate of the percentiles (official 0.01).
        return_normalization_quantiles: Percentiles (official 5th and 95th).
        return_normalization_min_scale: Lower bound of ``S`` (official 1).
        gamma: Refused, as in TorchRL: set it with :meth:`make_value_estimator`.
        lmbda: Refused, as in TorchRL: set it with :meth:`make_value_estimator`.
        return_normalization_reduce: (torchdreamer) ``reduce=`` of
            :class:`ReturnScale`: maps the local returns to those the
            percentiles are taken over (a gather over ranks in data-parallel
            training); ``None`` keeps them local.

    Only the actor is owned by this loss (its parameters, ``state_dict`` and
    device); the critic, world model and continuation model are used, frozen,
    and stay with their owners. ``gamma`` and ``λ`` live in
    ``value_estimator`` (TorchRL's defaults ``0.99`` and ``0.95``; the official
    ``1 - 1/333`` and ``0.95`` with :meth:`official`); change them with
    :meth:`make_value_estimator`.

    The ``state_dict`` uses TorchRL's names (``retnorm.low``, ``retnorm.high``,
    ``_value_estimator.*``), so TorchRL's checkpoints load into this loss and
    this loss's into TorchRL's. TorchRL also saves its imagination
    environment's parameters under ``model_based_env.``; loading such a
    checkpoint here loads them into the (borrowed) environment.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from tensordict.nn import ProbabilisticTensorDictModule as Prob
        >>> from tensordict.nn import ProbabilisticTensorDictSequential as Seq
        >>> from torchrl.modules import OneHotCategorical
        >>> from torchdreamer import DreamerV3ActorLoss, DreamerV3ValueLoss
        >>> class Walk(torch.nn.Module):  # an exact 1-D world model
        ...     def reset(self, td):
        ...         return td.clone()
        ...     def step(self, td):
        ...         move = td["action"].argmax(-1, keepdim=True).float() * 2 - 1
        ...         state = td["state"] + move
        ...         td["next"] = TensorDict(state=state, reward=-state.abs(), batch_size=td.shape)
        ...         return td
        >>> actor = Seq(
        ...     TensorDictModule(torch.nn.Linear(1, 2), ["state"], ["logits"]),
        ...     Prob(in_keys=["logits"], out_keys=["action"], distribution_class=OneHotCategorical),
        ... )
        >>> critic = TensorDictModule(torch.nn.Linear(1, 1), ["state"], ["state_value"])
        >>> actor_loss = DreamerV3ActorLoss(actor, critic, Walk(), use_reinforce=True)
        >>> value_loss = DreamerV3ValueLoss(critic, actor_loss=actor_loss)
        >>> start = TensorDict(state=torch.randn(4, 1), batch_size=[4])
        >>> loss_td, imagined = actor_loss(start)
        >>> imagined.batch_size, imagined["lambda_target"].shape
        (torch.Size([4, 15]), torch.Size([4, 15, 1]))
        >>> (loss_td["loss_actor"] + value_loss(imagined)[0]["loss_value"]).backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys; change them with ``set_keys``.

        Attributes:
            state: Latent state the imagination starts from. Defaults to ``"state"``.
            belief: Deterministic (recurrent) state, used when present.
                Defaults to ``"belief"``.
            action: Action written by the actor. Defaults to ``"action"``.
            reward: Imagined reward, read under ``"next"``. Defaults to ``"reward"``.
            value: Decoded value written by the critic. Defaults to ``"state_value"``.
            value_logits: Critic logits, decoded when ``value`` is absent.
                Defaults to ``"state_value_logits"``.
            continuation: Continuation probability written by the continuation
                model. Defaults to ``"continuation"``.
            lambda_target: Where the λ-returns are written. Defaults to ``"lambda_target"``.
            discount_weight: Where the weights ``w_t`` are written.
                Defaults to ``"discount_weight"``.
            action_log_prob: TorchRL's name for the rollout's action
                log-probability. Not read: REINFORCE re-scores the stopped
                action under the policy. Defaults to ``"action_log_prob"``.
            done: TorchRL's done flag of the imagination environment. Not
                read: imagined episodes end only through the continuation
                model. Defaults to ``"done"``.
            terminated: TorchRL's terminated flag, not read (as ``done``).
                Defaults to ``"terminated"``.
        """

        state: NestedKey = "state"
        belief: NestedKey = "belief"
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        value: NestedKey = "state_value"
        value_logits: NestedKey = "state_value_logits"
        continuation: NestedKey = "continuation"
        lambda_target: NestedKey = "lambda_target"
        discount_weight: NestedKey = "discount_weight"
        action_log_prob: NestedKey = "action_log_prob"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    default_value_estimator = ValueEstimators.TDLambda

    actor_model: TensorDictModuleBase
    retnorm: ReturnScale

    def __init__(
        self,
        actor_model: TensorDictModuleBase,
        value_model: TensorDictModuleBase,
        model_based_env: Any,
        *,
        continuation_model: TensorDictModuleBase | None = None,
        imagination_horizon: int = 15,
        discount_loss: bool = True,
        entropy_bonus: float = 3e-4,
        use_reinforce: bool = False,
        return_normalization: bool = True,
        return_normalization_rate: float = 0.01,
        return_normalization_quantiles: tuple[float, float] = (0.05, 0.95),
        return_normalization_min_scale: float = 1.0,
        gamma: float | None = None,
        lmbda: float | None = None,
        return_normalization_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if gamma is not None or lmbda is not None:
            raise TypeError(
                "DreamerV3ActorLoss takes no gamma or lmbda (as in TorchRL): call "
                "loss.make_value_estimator(ValueEstimators.TDLambda, gamma=..., lmbda=...)."
            )
        if not hasattr(actor_model, "get_dist"):
            raise TypeError(
                "actor_model must be a probabilistic tensordict module with get_dist(), "
                "e.g. ProbabilisticTensorDictSequential(net, ProbabilisticTensorDictModule"
                f"(...)); got {type(actor_model).__name__}."
            )
        require_tensordict_module(value_model, "value_model")
        if continuation_model is not None:
            require_tensordict_module(continuation_model, "continuation_model")
        for name in ("reset", "step"):
            if not callable(getattr(model_based_env, name, None)):
                raise TypeError(
                    f"model_based_env must have a {name}(tensordict) method (a TorchRL "
                    f"DreamerEnv or the same contract); {type(model_based_env).__name__} "
                    "has none."
                )
        if isinstance(imagination_horizon, bool) or not isinstance(imagination_horizon, int):
            raise TypeError(f"imagination_horizon must be an int, got {imagination_horizon!r}.")
        if imagination_horizon < 1:
            raise ValueError(f"imagination_horizon must be >= 1, got {imagination_horizon}.")
        if not entropy_bonus >= 0:
            raise ValueError(f"entropy_bonus must be >= 0, got {entropy_bonus}.")
        self.actor_model = actor_model
        self._borrowed = Borrowed(
            {"value": value_model, "env": model_based_env, "continuation": continuation_model}
        )
        self.__dict__["value_model"] = value_model  # where TorchRL keeps it, unregistered
        self._grids: dict[tuple[int, torch.device], TwoHot] = {}
        self.imagination_horizon = imagination_horizon
        self.discount_loss = bool(discount_loss)
        self.entropy_bonus = float(entropy_bonus)
        self.use_reinforce = bool(use_reinforce)
        self.return_normalization = bool(return_normalization)
        self.retnorm = ReturnScale(
            return_normalization_rate,
            tuple(return_normalization_quantiles),
            return_normalization_min_scale,
            reduce=return_normalization_reduce,
        )
        # Eagerly, so gamma and lmbda are always in the state_dict.
        self.make_value_estimator()
        self.register_state_dict_post_hook(_as_torchrl_state)
        self.register_load_state_dict_pre_hook(_from_torchrl_state)

    @classmethod
    def official(
        cls,
        actor_model: TensorDictModuleBase,
        value_model: TensorDictModuleBase,
        model_based_env: Any,
        **overrides: Any,
    ) -> DreamerV3ActorLoss:
        """The loss in the official DreamerV3 configuration.

        TorchRL's defaults with :data:`torchdreamer.objectives.official.ACTOR_LOSS`
        (``use_reinforce=True``), then ``make_value_estimator(TDLambda)`` with
        :data:`~torchdreamer.objectives.official.ACTOR_VALUE_ESTIMATOR`
        (gamma ``1 - 1/333``, λ 0.95). ``overrides`` are constructor arguments.

        Examples:
            >>> import torch
            >>> from tensordict.nn import TensorDictModule
            >>> from tensordict.nn import ProbabilisticTensorDictModule as Prob
            >>> from tensordict.nn import ProbabilisticTensorDictSequential as Seq
            >>> from torchrl.modules import OneHotCategorical
            >>> from torchdreamer import DreamerV3ActorLoss
            >>> class WorldModel(torch.nn.Module):
            ...     def reset(self, td): ...
            ...     def step(self, td): ...
            >>> head = Prob(["logits"], ["action"], distribution_class=OneHotCategorical)
            >>> actor = Seq(TensorDictModule(torch.nn.Linear(3, 2), ["state"], ["logits"]), head)
            >>> critic = TensorDictModule(torch.nn.Linear(3, 1), ["state"], ["state_value"])
            >>> loss = DreamerV3ActorLoss.official(actor, critic, WorldModel())
            >>> loss.use_reinforce, round(loss.value_estimator.gamma.item(), 4)
            (True, 0.997)
        """
        loss = cls(
            actor_model, value_model, model_based_env, **{**official.ACTOR_LOSS, **overrides}
        )
        loss.make_value_estimator(ValueEstimators.TDLambda, **official.ACTOR_VALUE_ESTIMATOR)
        return loss

    # ---------------------------------------------------------- borrowed modules
    @property
    def value_model(self) -> TensorDictModuleBase:
        """The critic (used frozen, not owned)."""
        return self._borrowed.module["value"]

    @property
    def model_based_env(self) -> Any:
        """The imagination environment (used frozen, not owned)."""
        return self._borrowed.module["env"]

    @property
    def continuation_model(self) -> TensorDictModuleBase | None:
        """The continuation model, if any (used frozen, not owned)."""
        return self._borrowed.module["continuation"]

    # ------------------------------------------------- return normalisation
    @property
    def return_low(self) -> torch.Tensor:
        """EMA of the low return percentile, 0-dim."""
        return self.retnorm.low

    @property
    def return_high(self) -> torch.Tensor:
        """EMA of the high return percentile, 0-dim."""
        return self.retnorm.high

    @property
    def return_normalization_rate(self) -> float:
        """EMA rate of the return percentiles."""
        return self.retnorm.rate

    @property
    def return_normalization_quantiles(self) -> tuple[float, float]:
        """The low and high return quantiles."""
        return self.retnorm.quantiles

    @property
    def return_normalization_min_scale(self) -> float:
        """Lower bound of the return scale."""
        return self.retnorm.min_scale

    def _return_scale(self, returns: torch.Tensor) -> torch.Tensor:
        """The 0-dim divisor of the advantages; in training mode, first moves the EMA."""
        if not self.return_normalization:
            return torch.ones((), dtype=returns.dtype, device=returns.device)
        if self.training:
            self.retnorm.update(returns)
        return self.retnorm.scale().to(returns)

    # ----------------------------------------------------------- value estimator
    def make_value_estimator(
        self, value_type: ValueEstimators | None = None, **hyperparams: Any
    ) -> None:
        """Set the estimator that holds ``gamma`` (and, for TD(λ), ``lmbda``).

        Each supported estimator is a λ-return of the imagined trajectory:
        ``ValueEstimators.TDLambda`` with its ``lmbda`` (the default),
        ``ValueEstimators.TD0`` with λ = 0 (one-step targets) and
        ``ValueEstimators.TD1`` with λ = 1 (rewards to the horizon, bootstrapped
        from its last value). Defaults are TorchRL's, ``gamma = 0.99`` and
        ``lmbda = 0.95`` (the official ``1 - 1/333`` and ``0.95`` are
        :data:`torchdreamer.objectives.official.ACTOR_VALUE_ESTIMATOR`).

        Examples:
            >>> import torch
            >>> from tensordict.nn import TensorDictModule
            >>> from tensordict.nn import ProbabilisticTensorDictModule as Prob
            >>> from tensordict.nn import ProbabilisticTensorDictSequential as Seq
            >>> from torchrl.modules import OneHotCategorical
            >>> from torchrl.objectives.utils import ValueEstimators
            >>> from torchdreamer import DreamerV3ActorLoss
            >>> class WorldModel(torch.nn.Module):
            ...     def reset(self, td): ...
            ...     def step(self, td): ...
            >>> head = Prob(["logits"], ["action"], distribution_class=OneHotCategorical)
            >>> actor = Seq(TensorDictModule(torch.nn.Linear(3, 2), ["state"], ["logits"]), head)
            >>> critic = TensorDictModule(torch.nn.Linear(3, 1), ["state"], ["state_value"])
            >>> loss = DreamerV3ActorLoss(actor, critic, WorldModel())
            >>> round(loss.value_estimator.gamma.item(), 4), loss.value_estimator.lmbda.item()
            (0.99, 0.949999988079071)
            >>> loss.make_value_estimator(ValueEstimators.TDLambda, gamma=1 - 1 / 333, lmbda=0.9)
            >>> round(loss.value_estimator.gamma.item(), 4)
            0.997
        """
        value_type = self.default_value_estimator if value_type is None else value_type
        if value_type not in _ESTIMATORS:
            raise NotImplementedError(
                "DreamerV3ActorLoss computes λ-returns of imagined trajectories: use "
                f"ValueEstimators.TD0, TD1 or TDLambda, not {value_type}."
            )
        torchrl_defaults = default_value_kwargs(value_type)
        hyperparams.setdefault("gamma", torchrl_defaults["gamma"])
        gamma = float(hyperparams["gamma"])
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma}.")
        if value_type == ValueEstimators.TDLambda:
            hyperparams.setdefault("lmbda", torchrl_defaults["lmbda"])
            lmbda = float(hyperparams["lmbda"])
            if not 0 <= lmbda <= 1:
                raise ValueError(f"lmbda must lie in [0, 1], got {lmbda}.")
        elif "lmbda" in hyperparams:
            raise TypeError(
                f"{value_type} has a fixed λ ({0 if value_type == ValueEstimators.TD0 else 1}); "
                "pass lmbda only with ValueEstimators.TDLambda."
            )
        # The estimator only holds the hyperparameters; returns are computed by
        # torchdreamer.functional.lambda_return.
        hyperparams.setdefault("value_network", None)
        self._value_estimator = _ESTIMATORS[value_type](**hyperparams)
        self.value_type = value_type

    def _lmbda(self, like: torch.Tensor) -> torch.Tensor | float:
        """The estimator's λ: 0 for TD0, 1 for TD1, its ``lmbda`` for TD(λ)."""
        if self.value_type == ValueEstimators.TD0:
            return 0.0
        if self.value_type == ValueEstimators.TD1:
            return 1.0
        return self.value_estimator.lmbda.to(like)

    def lambda_target(
        self,
        reward: torch.Tensor,
        value: torch.Tensor,
        continuation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The estimator's λ-returns of one trajectory, TorchRL's signature and layout.

        ``R_t = r_t + γ c_t ((1 - λ) v_t + λ R_{t+1})`` with ``R_{H-1} = r + γ c v``
        at the last step, where, along the time dimension ``-2``, ``reward[t]``
        is the reward of step ``t``, ``value[t]`` the value of the state it
        reaches and ``continuation[t]`` that state's continuation (1 when
        ``None``). λ is the estimator's (0 for TD0, 1 for TD1).

        Args:
            reward: ``[*batch, H, 1]`` rewards.
            value: ``[*batch, H, 1]`` values of the next states.
            continuation: ``[*batch, H, 1]`` continuations of the next states, or ``None``.

        Returns:
            ``[*batch, H, 1]`` returns.

        Examples:
            >>> import torch
            >>> from tensordict.nn import TensorDictModule
            >>> from tensordict.nn import ProbabilisticTensorDictModule as Prob
            >>> from tensordict.nn import ProbabilisticTensorDictSequential as Seq
            >>> from torchrl.modules import OneHotCategorical
            >>> from torchrl.objectives.utils import ValueEstimators
            >>> from torchdreamer import DreamerV3ActorLoss
            >>> class WorldModel(torch.nn.Module):
            ...     def reset(self, td): ...
            ...     def step(self, td): ...
            >>> head = Prob(["logits"], ["action"], distribution_class=OneHotCategorical)
            >>> actor = Seq(TensorDictModule(torch.nn.Linear(3, 2), ["state"], ["logits"]), head)
            >>> critic = TensorDictModule(torch.nn.Linear(3, 1), ["state"], ["state_value"])
            >>> loss = DreamerV3ActorLoss(actor, critic, WorldModel())
            >>> loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.5, lmbda=0.5)
            >>> ones = torch.ones(1, 3, 1)
            >>> loss.lambda_target(ones, ones)[0, :, 0]
            tensor([1.6562, 1.6250, 1.5000])
            >>> loss.make_value_estimator(ValueEstimators.TD0, gamma=0.5)
            >>> loss.lambda_target(ones, ones, torch.zeros(1, 3, 1))[0, :, 0]
            tensor([1., 1., 1.])
        """
        if reward.shape != value.shape or (
            continuation is not None and continuation.shape != reward.shape
        ):
            shapes = [tuple(t.shape) for t in (reward, value, continuation) if t is not None]
            raise ValueError(
                f"reward, value and continuation must have the same [*batch, H, 1] shape, "
                f"got {shapes}."
            )
        # lambda_return reads states 0 .. H and never the first state's reward,
        # continuation or value: pad them in front.
        pad = torch.zeros_like(reward[..., :1, 0])
        live = torch.ones_like(reward[..., 0]) if continuation is None else continuation[..., 0]
        returns = lambda_return(
            torch.cat([pad, reward[..., 0]], dim=-1),
            torch.cat([pad + 1, live], dim=-1),
            torch.cat([pad, value[..., 0]], dim=-1),
            self.value_estimator.gamma.to(reward),
            self._lmbda(reward),
        )
        return returns.unsqueeze(-1)

    def _forward_value_estimator_keys(self, **kwargs: Any) -> None:
        # The estimator is never called on tensordicts: nothing to forward.
        pass

    # ---------------------------------------------------------------- helpers
    def _imagine(self, start: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        """Roll the actor out for H steps: the ``[*batch, H]`` trajectory, and its
        states ``s_0 .. s_H`` (``[*batch, H + 1]``: the H roots and the last next state)."""
        env = self.model_based_env
        tensordict = env.reset(start)
        steps = []
        for _ in range(self.imagination_horizon):
            tensordict = env.step(self.actor_model(tensordict))
            steps.append(tensordict)
            tensordict = step_mdp(
                tensordict,
                exclude_action=True,
                reward_keys=self.tensor_keys.reward,
                action_keys=self.tensor_keys.action,
            )
        imagined = torch.stack(steps, dim=start.ndim)
        last = imagined[..., -1].get("next").select(*imagined.keys(), strict=False)
        states = torch.cat([imagined.select(*last.keys(True)), last.unsqueeze(-1)], dim=-1)
        return imagined, states

    def _grid(self, num_bins: int, device: torch.device) -> TwoHot:
        """The official two-hot output for a logits-only critic, made once per size and device."""
        key = (num_bins, device)
        if key not in self._grids:
            self._grids[key] = TwoHot(num_bins, device=device)
        return self._grids[key]

    def _values(self, output: Mapping[NestedKey, torch.Tensor], batch: torch.Size) -> torch.Tensor:
        """The decoded value in the critic's ``output``, ``batch`` shaped."""
        value = output.get(unravel_key(self.tensor_keys.value), None)
        if value is None:
            logits = output.get(unravel_key(self.tensor_keys.value_logits), None)
            if logits is None:
                raise KeyError(
                    f"The value model wrote neither {self.tensor_keys.value!r} nor "
                    f"{self.tensor_keys.value_logits!r}; the actor loss needs one of them."
                )
            return per_step(
                self._grid(logits.shape[-1], logits.device).decode(logits),
                batch,
                "The decoded value",
            )
        return per_step(value, batch, f"The value {self.tensor_keys.value!r}")

    def _continuations(self, states: TensorDictBase, batch: torch.Size) -> torch.Tensor | None:
        model = self.continuation_model
        if model is None:
            return None
        output = call_module(model, states)
        key = unravel_key(self.tensor_keys.continuation)
        continuation = output.get(key, None)
        if continuation is None:
            raise KeyError(f"The continuation model wrote no {key!r}.")
        return per_step(continuation, batch, f"The continuation {key!r}")

    def _entropy_and_log_prob(
        self, imagined: TensorDictBase, batch: torch.Size
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The policy's entropy (``None`` without an entropy bonus) and, for
        REINFORCE, the log-probability of the stopped actions."""
        if not self.use_reinforce and self.entropy_bonus == 0:
            return None, None
        inputs = imagined.select(*self.actor_model.in_keys, strict=False).detach()
        dist = self.actor_model.get_dist(inputs)
        entropy = None
        if self.entropy_bonus > 0:
            try:
                entropy = dist.entropy()
            except NotImplementedError:  # e.g. tanh-squashed normals: a one-sample estimate
                entropy = -dist.log_prob(dist.rsample())
            entropy = entropy.sum(-1) if entropy.dim() > len(batch) else entropy
        log_prob = None
        if self.use_reinforce:
            log_prob = dist.log_prob(imagined.get(self.tensor_keys.action).detach())
            log_prob = log_prob.sum(-1) if log_prob.dim() > len(batch) else log_prob
        return entropy, log_prob

    # ---------------------------------------------------------------- forward
    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDict, TensorDictBase]:
        """Imagine from ``tensordict``'s states and compute the actor loss.

        Args:
            tensordict: Start states (``state`` and, if used, ``belief``), any
                batch shape. Gradients do not flow into them.

        Returns:
            ``(loss_td, imagined)``: ``loss_td`` holds ``loss_actor`` and the
            detached metrics of TorchRL, ``actor_entropy`` (the mean of
            ``w_t H[π(·|s_t)]``, 0 without an entropy bonus), ``return_low``,
            ``return_high``, ``return_scale`` and ``continuation_mean`` (over the
            states reached, 1 without a continuation model), and this loss's
            ``lambda_target_mean``; ``imagined`` is the detached ``[*batch, H]``
            trajectory with ``lambda_target`` and ``discount_weight`` (and the
            continuations, see the class docstring).
        """
        loss_td, imagined, _ = self._forward(tensordict)
        return loss_td, imagined

    def _forward(
        self, tensordict: TensorDictBase, keep_value_output: bool = False
    ) -> tuple[TensorDict, TensorDictBase, Mapping[NestedKey, torch.Tensor] | None]:
        """:meth:`forward`, and with ``keep_value_output`` (REINFORCE only) also the
        critic's output on ``s_0 .. s_{H-1}`` with its parameter gradient, for
        :class:`~torchdreamer.DreamerV3ValueLoss` to train on: one critic pass over
        the imagined states instead of two. The critic is then not frozen; the
        actor reads its values detached. Otherwise the third item is ``None``.
        """
        if keep_value_output and not self.use_reinforce:
            raise ValueError(
                "keep_value_output needs use_reinforce=True: with reparameterised "
                "gradients the actor loss differentiates through the critic's values."
            )
        keys = self.tensor_keys
        start = tensordict.select(keys.state, keys.belief, strict=False).detach()
        if unravel_key(keys.state) not in start.keys(True):
            raise KeyError(
                f"The input has no {keys.state!r} to imagine from; pass the posterior "
                "states or set_keys(state=...)."
            )
        estimator = self.value_estimator
        borrowed = [self.model_based_env, self.continuation_model]
        if not keep_value_output:
            borrowed.append(self.value_model)
        grad = torch.is_grad_enabled()
        # With REINFORCE nothing below needs a gradient: returns only enter the
        # stop-gradient advantage and the policy is re-evaluated on detached
        # states (the official sg(imagined features)). Building no graph through
        # H world-model steps saves its time and memory.
        track = grad and not self.use_reinforce
        with (
            frozen(*borrowed),
            set_exploration_type(ExplorationType.RANDOM),
            torch.set_grad_enabled(track),
        ):
            imagined, states = self._imagine(start)
            batch = imagined.batch_size
            states_batch = states.batch_size
            # A kept output carries the critic's parameter gradient for the value loss.
            with torch.set_grad_enabled(track or (grad and keep_value_output)):
                output = call_module(self.value_model, states)
            value = self._values(output, states_batch)
            if keep_value_output:
                value = value.detach()
            continuation = self._continuations(states, states_batch)
            reward = per_step(imagined.get(("next", keys.reward)), batch, "The imagined reward")
            live = torch.ones_like(value) if continuation is None else continuation
            gamma = estimator.gamma.to(value)
            returns, weight = imagined_returns(reward, live, value, gamma, self._lmbda(value))
        if not self.discount_loss:
            weight = torch.ones_like(returns)

        scale = self._return_scale(returns)
        entropy, log_prob = self._entropy_and_log_prob(imagined, batch)
        if entropy is None:
            entropy = torch.zeros_like(returns)
        loss = actor_loss(returns, value, weight, scale, entropy, self.entropy_bonus, log_prob)

        imagined = imagined.detach()
        imagined.set(keys.lambda_target, returns.detach().unsqueeze(-1))
        imagined.set(keys.discount_weight, weight.unsqueeze(-1))
        if continuation is not None:
            continuation = continuation.detach().unsqueeze(-1)
            imagined.set(keys.continuation, continuation[..., :-1, :])
            imagined.set(("next", keys.continuation), continuation[..., 1:, :])
        metrics = {
            "loss_actor": loss,
            # As TorchRL logs them: the weighted entropy, the continuation of
            # the states reached.
            "actor_entropy": (weight * entropy).detach().mean(),
            "return_low": self.retnorm.low.detach().clone(),
            "return_high": self.retnorm.high.detach().clone(),
            "return_scale": scale.detach(),
            "continuation_mean": live[..., 1:].detach().mean(),
            "lambda_target_mean": returns.detach().mean(),
        }
        kept = _first_steps(output, len(batch) - 1, batch[-1]) if keep_value_output else None
        return TensorDict(metrics, batch_size=[]), imagined, kept


def _first_steps(
    output: Mapping[NestedKey, torch.Tensor], dim: int, steps: int
) -> Mapping[NestedKey, torch.Tensor]:
    """The first ``steps`` entries of every output along the time dimension ``dim``."""
    if isinstance(output, TensorDictBase):
        return output[(slice(None),) * dim + (slice(0, steps),)]
    return {key: tensor.narrow(dim, 0, steps) for key, tensor in output.items()}


def _as_torchrl_state(
    module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata: Any
) -> None:
    # TorchRL's PercentileValueNorm keeps its statistics with shape [1].
    for name in ("low", "high"):
        key = f"{prefix}retnorm.{name}"
        if key in state_dict:
            state_dict[key] = state_dict[key].reshape(1)


def _from_torchrl_state(
    module: DreamerV3ActorLoss,
    state_dict: dict,
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list,
    unexpected_keys: list,
    error_msgs: list,
) -> None:
    for name in ("low", "high"):
        key = f"{prefix}retnorm.{name}"
        legacy = f"{prefix}return_{name}"  # TorchRL's checkpoints before PercentileValueNorm
        if legacy in state_dict and key not in state_dict:
            state_dict[key] = state_dict.pop(legacy)
        if key in state_dict and state_dict[key].numel() == 1:
            state_dict[key] = state_dict[key].reshape(())
    # TorchRL creates its estimator on first use: a checkpoint saved before
    # holds none, and the estimator keeps its settings.
    for name, tensor in module._value_estimator.state_dict().items():
        state_dict.setdefault(f"{prefix}_value_estimator.{name}", tensor)
    # TorchRL owns its imagination environment, so its checkpoints hold the
    # world model's parameters; they go to the borrowed environment.
    env_prefix = f"{prefix}model_based_env."
    env_state = {
        key[len(env_prefix) :]: state_dict.pop(key)
        for key in [key for key in state_dict if key.startswith(env_prefix)]
    }
    if env_state:
        env = module.model_based_env
        if not isinstance(env, torch.nn.Module):
            error_msgs.append(
                f"The checkpoint holds model_based_env parameters but the environment "
                f"({type(env).__name__}) is not a torch module to load them into."
            )
            return
        result = env.load_state_dict(env_state, strict=False)
        missing_keys.extend(env_prefix + key for key in result.missing_keys)
        unexpected_keys.extend(env_prefix + key for key in result.unexpected_keys)
