"""The DreamerV3 critic loss."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey, unravel_key
from torchrl.objectives import LossModule

from torchdreamer.dreamer.parts import critic_loss, replay_returns
from torchdreamer.functional.outputs import Output, SymlogMSE, TwoHot
from torchdreamer.functional.two_hot import Reduction
from torchdreamer.objectives import official
from torchdreamer.objectives._call import call_module, require_tensordict_module
from torchdreamer.objectives._links import Borrowed
from torchdreamer.objectives._shapes import per_step

__all__ = ["DreamerV3ValueLoss"]

ValueLossType = Literal["symlog_mse", "two_hot"]

#: Each ``value_loss`` option's output kind, made from the loss's bin grid.
_VALUE_OUTPUTS: dict[str, Callable[[torch.Tensor], Output]] = {
    "symlog_mse": lambda bins: SymlogMSE(),
    "two_hot": TwoHot,
}
_VALUE_LOSSES = tuple(_VALUE_OUTPUTS)


def _as_float_gamma(gamma: Any, source: str) -> float:
    if torch.is_tensor(gamma):
        if gamma.numel() != 1:
            raise ValueError(f"{source} must be a scalar, got shape {tuple(gamma.shape)}.")
        gamma = gamma.item()
    gamma = float(gamma)
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"{source} must lie in (0, 1], got {gamma}.")
    return gamma


def _actor_estimator_gamma(actor_loss: Any) -> float | torch.Tensor:
    try:
        return actor_loss.value_estimator.gamma
    except AttributeError as err:
        raise TypeError(
            "actor_loss must expose `value_estimator.gamma` (a DreamerV3ActorLoss "
            f"or another TorchRL loss with a value estimator); got "
            f"{type(actor_loss).__name__}, which does not: {err}"
        ) from err


class DreamerV3ValueLoss(LossModule):
    """DreamerV3 value (critic) loss.

    Trains the value network to predict the ``lambda_target`` computed by the
    actor loss. Two loss modes:

    * ``"symlog_mse"`` (default): ``(symlog(v_pred) - symlog(target))**2``.
    * ``"two_hot"``: cross-entropy between the critic's logits over
      ``num_value_bins`` symexp-spaced bins and the two-hot encoding of the
      target, as in the full DreamerV3 distribution-valued critic.

    The gamma used to weight the loss must equal the one the actor used to
    compute ``lambda_target``. Pass the actor loss as ``actor_loss=`` and
    gamma is read from ``actor_loss.value_estimator.gamma`` on every forward,
    so a later change to the actor's estimator needs no re-sync. The legacy
    ``gamma=`` plus :meth:`sync_gamma_with_actor_loss` pattern also works.

    Weighting, when ``discount_loss=True``: if the input holds
    ``discount_weight`` (the actor loss writes the cumulative product of
    continuation probabilities and gamma there), the per-step loss is
    multiplied by it; otherwise step ``t`` of the time dimension (the last
    batch dimension of a ``[B, T]`` input) is weighted by ``gamma ** t``.
    Flat ``[N]`` inputs without ``discount_weight`` have no time dimension and
    are not weighted. With ``discount_loss=False`` nothing is weighted and
    ``discount_weight`` is not read.

    Reference: Hafner et al., "Mastering Diverse Domains through World
    Models", https://arxiv.org/abs/2301.04104.

    Args:
        value_model: The value network. In ``"symlog_mse"`` mode it writes
            the raw value to the ``value`` key. In ``"two_hot"`` mode it writes
            ``num_value_bins`` logits to the ``value_logits`` key, or to the
            ``value`` key when that key's last dimension is ``num_value_bins``.
        value_loss: ``"symlog_mse"`` or ``"two_hot"``.
        discount_loss: Weight the loss by the cumulative discount.
        gamma: Discount used for weighting when neither ``discount_weight`` nor
            ``actor_loss`` is given. Must lie in ``(0, 1]``.
        num_value_bins: Number of bins of the ``"two_hot"`` grid (the official
            grid ``symexp(linspace(-20, 20))``, see
            :func:`~torchdreamer.functional.two_hot_bins`).
        actor_loss: The actor loss whose ``value_estimator.gamma`` is read on
            every forward. It is linked, not owned: its parameters are not
            part of this module.
        slow_critic_regularization: Weight of an extra loss term toward the
            decoded prediction of a slow (EMA) copy of the critic (its
            written ``value`` when a head of logits writes one, as TorchRL
            reads it, else its logits decoded on the loss's grid); the
            official DreamerV3 uses 1.0. When positive, the slow copy is held
            as ``target_value_model_params``; step a
            ``torchrl.objectives.SoftUpdate(loss, tau=0.02)`` after each
            optimiser step to update it.
        reduction: ``"mean"`` (``None``, the default, means the same, as in
            TorchRL), ``"sum"`` or ``"none"`` (per-step weighted loss with the
            batch shape).

    Keyword Args:
        validate_inputs: Check that targets, predictions and weights are
            finite. Off by default, since the check synchronises with the
            device.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP
        >>> from torchdreamer import DreamerV3ValueLoss
        >>> value_model = TensorDictModule(
        ...     MLP(out_features=1, depth=1, num_cells=8),
        ...     in_keys=["state"],
        ...     out_keys=["state_value"],
        ... )
        >>> td = TensorDict({
        ...     "state": torch.randn(8, 4),
        ...     "lambda_target": torch.randn(8, 1),
        ... }, [8])
        >>> loss = DreamerV3ValueLoss(value_model)
        >>> loss_td, _ = loss(td)
        >>> "loss_value" in loss_td.keys()
        True

        A distributional critic over 255 bins, on ``[B, T]`` imagined data:

        >>> critic = TensorDictModule(
        ...     torch.nn.Linear(4, 255), in_keys=["state"], out_keys=["state_value_logits"]
        ... )
        >>> loss = DreamerV3ValueLoss(critic, value_loss="two_hot", gamma=0.997)
        >>> td = TensorDict(
        ...     {"state": torch.randn(2, 15, 4), "lambda_target": torch.randn(2, 15, 1)},
        ...     [2, 15],
        ... )
        >>> loss_td, _ = loss(td)
        >>> loss_td["loss_value"].backward()
        >>> sorted(loss_td.keys())  # value_mean needs a decoded value from the head
        ['loss_value', 'target_mean', 'value_slow_loss']

    The official DreamerV3 critic (two-hot, slow-critic regularised) is
    :meth:`official`.

    The state_dict uses TorchRL's names (the critic under
    ``value_model_params``), so checkpoints load both ways.
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read by the loss; change them with ``set_keys``.

        Attributes:
            value: Raw predicted value written by the value model.
                Defaults to ``"state_value"``.
            value_logits: Logits over the bins written by a distributional
                value model (``"two_hot"`` mode). Defaults to
                ``"state_value_logits"``.
            lambda_target: The λ-return to regress on, shape ``batch`` or
                ``batch + [1]``. Defaults to ``"lambda_target"``.
            discount_weight: Optional per-step loss weight written by the actor
                loss, shape ``batch`` or ``batch + [1]``. Defaults to
                ``"discount_weight"``.
            reward: Replay reward received on arriving at each state
                (:meth:`replay_value_loss`), at the root or, in TorchRL's
                layout, under ``"next"``. Defaults to ``"reward"``.
            done: TorchRL layout: the replay state ends its episode, read under
                ``"next"``. Defaults to ``"done"``.
            terminated: TorchRL layout: the replay state is terminal, read
                under ``"next"``. Defaults to ``"terminated"``.
            is_last: Official layout: the state ends its episode (terminal or
                truncated). Defaults to ``"is_last"``.
            is_terminal: Official layout: the state is terminal. Defaults to ``"is_terminal"``.
            bootstrap: The first imagined λ-return of each replay state.
                Defaults to ``"bootstrap"``.
        """

        value: NestedKey = "state_value"
        value_logits: NestedKey = "state_value_logits"
        lambda_target: NestedKey = "lambda_target"
        discount_weight: NestedKey = "discount_weight"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        is_last: NestedKey = "is_last"
        is_terminal: NestedKey = "is_terminal"
        bootstrap: NestedKey = "bootstrap"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    value_model: TensorDictModule
    target_value_model_params: TensorDictParams
    value_bins: torch.Tensor

    def __init__(
        self,
        value_model: TensorDictModule,
        value_loss: ValueLossType = "symlog_mse",
        discount_loss: bool = True,
        gamma: float = 0.99,
        num_value_bins: int = 255,
        actor_loss: Any | None = None,
        slow_critic_regularization: float = 0.0,
        reduction: Reduction | None = None,
        *,
        validate_inputs: bool = False,
    ) -> None:
        super().__init__()
        require_tensordict_module(value_model, "value_model")
        reduction = "mean" if reduction is None else reduction
        if value_loss not in _VALUE_LOSSES:
            raise ValueError(f"value_loss must be one of {_VALUE_LOSSES}, got {value_loss!r}.")
        if reduction not in get_args(Reduction):
            raise ValueError(f"reduction must be one of {get_args(Reduction)}, got {reduction!r}.")
        if (
            isinstance(num_value_bins, bool)
            or not isinstance(num_value_bins, int)
            or num_value_bins < 2
        ):
            raise ValueError(
                "num_value_bins must be an integer >= 2 (DreamerV3 uses 255), "
                f"got {num_value_bins!r}."
            )
        if not slow_critic_regularization >= 0:
            raise ValueError(
                "slow_critic_regularization must be >= 0 (the official DreamerV3 "
                f"uses 1.0), got {slow_critic_regularization!r}."
            )
        self.value_model = value_model
        self.value_loss = value_loss
        self.discount_loss = bool(discount_loss)
        self.gamma = _as_float_gamma(gamma, "gamma")
        self.num_value_bins = num_value_bins
        self.slow_critic_regularization = float(slow_critic_regularization)
        self.reduction = reduction
        self.validate_inputs = bool(validate_inputs)
        # (key, gamma ** t over the batch, the same over the batch size): see _step_weight.
        self._gamma_powers: tuple = ((), None, None)
        self._actor_link = None
        if actor_loss is not None:
            _as_float_gamma(_actor_estimator_gamma(actor_loss), "actor_loss.value_estimator.gamma")
            self._actor_link = Borrowed(actor_loss)
        self.register_buffer("value_bins", TwoHot(num_value_bins).bins)
        if self.slow_critic_regularization > 0:
            lazy = [
                name
                for name, p in value_model.named_parameters()
                if isinstance(p, torch.nn.parameter.UninitializedParameter)
            ]
            if lazy:
                raise ValueError(
                    "slow_critic_regularization needs the value model's parameters to copy "
                    f"them into the slow critic, but {lazy} are uninitialised (lazy "
                    "layers). Run the value model once on a sample batch before building "
                    "the loss."
                )
            # Plain tensors held as buffers: the optimiser never sees the slow
            # critic; it only moves by SoftUpdate.
            slow = TensorDict.from_module(value_model).detach().clone()
            self.target_value_model_params = TensorDictParams(slow, no_convert=True)
            # Lets TorchRL warn when no SoftUpdate has been attached.
            self._has_update_associated["value_model"] = False
        self.register_state_dict_post_hook(_critic_as_torchrl_names)
        self.register_load_state_dict_pre_hook(_critic_from_torchrl_names)

    @classmethod
    def official(cls, value_model: TensorDictModule, **overrides: Any) -> DreamerV3ValueLoss:
        """The loss in the official DreamerV3 configuration.

        TorchRL's defaults with :data:`torchdreamer.objectives.official.VALUE_LOSS`
        (``value_loss="two_hot"``, ``slow_critic_regularization=1.0``);
        ``overrides`` are any constructor arguments (link the actor loss with
        ``actor_loss=`` for its gamma).

        Examples:
            >>> import torch
            >>> from tensordict.nn import TensorDictModule
            >>> from torchdreamer import DreamerV3ValueLoss
            >>> critic = TensorDictModule(
            ...     torch.nn.Linear(4, 255), ["state"], ["state_value_logits"]
            ... )
            >>> loss = DreamerV3ValueLoss.official(critic)
            >>> loss.value_loss, loss.slow_critic_regularization
            ('two_hot', 1.0)
        """
        return cls(value_model, **{**official.VALUE_LOSS, **overrides})

    @property
    def value_model_params(self) -> TensorDictBase:
        """The online critic's parameters, as the source of ``SoftUpdate``."""
        return TensorDict.from_module(self.value_model)

    @property
    def in_keys(self) -> list[NestedKey]:
        """Keys read from the input: the value model's, the target and weight."""
        keys = [*self.value_model.in_keys, self.tensor_keys.lambda_target]
        if self.discount_loss:
            keys.append(self.tensor_keys.discount_weight)
        return keys

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        # No value estimator of its own: gamma comes from the actor loss.
        pass

    def sync_gamma_with_actor_loss(self, actor_loss: Any) -> None:
        """Copy gamma from ``actor_loss.value_estimator`` once.

        Prefer ``actor_loss=`` in the constructor, which reads it on every
        forward. Calling this also drops any link made that way, so the
        copied value is the one used from now on.

        Examples:
            >>> import torch
            >>> from types import SimpleNamespace
            >>> from tensordict.nn import TensorDictModule
            >>> from torchdreamer import DreamerV3ValueLoss
            >>> estimator = SimpleNamespace(gamma=torch.tensor(0.997))
            >>> actor = SimpleNamespace(value_estimator=estimator)
            >>> critic = TensorDictModule(torch.nn.Linear(3, 1), ["s"], ["state_value"])
            >>> loss = DreamerV3ValueLoss(critic)
            >>> loss.sync_gamma_with_actor_loss(actor)
            >>> round(loss.gamma, 3)
            0.997
        """
        self.gamma = _as_float_gamma(
            _actor_estimator_gamma(actor_loss), "actor_loss.value_estimator.gamma"
        )
        self._actor_link = None

    def current_gamma(self) -> float | torch.Tensor:
        """The gamma the next forward will use (the actor's when linked)."""
        if self._actor_link is None:
            return self.gamma
        gamma = self._actor_link.module.value_estimator.gamma
        # Range-check when it costs nothing; a device tensor is checked only
        # under validate_inputs since reading it synchronises.
        if not torch.compiler.is_compiling() and (
            not torch.is_tensor(gamma) or gamma.device.type == "cpu" or self.validate_inputs
        ):
            _as_float_gamma(gamma, "actor_loss.value_estimator.gamma")
        return gamma

    # ------------------------------------------------------------------ shapes
    def _batch_shape(self, tensordict: TensorDictBase, target: torch.Tensor) -> torch.Size:
        if tensordict.batch_dims:
            return tensordict.batch_size
        # No batch size set on the input: the target's own shape is the batch.
        return target.shape[:-1] if target.ndim and target.shape[-1] == 1 else target.shape

    def _check_finite(self, tensor: torch.Tensor, key: NestedKey) -> None:
        if self.validate_inputs and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{key!r} holds {bad} non-finite value(s) (NaN or inf); "
                "the critic cannot be trained on them."
            )

    # ------------------------------------------------------------ predictions
    def _output(self) -> Output:
        """The output kind of ``value_loss``, on the loss's (current) bin grid."""
        return _VALUE_OUTPUTS[self.value_loss](self.value_bins)

    def _prediction(
        self, head: Output, output: Mapping[NestedKey, torch.Tensor], batch: torch.Size
    ) -> torch.Tensor:
        """The online or slow critic's output: logits ``[*batch, K]`` or values ``[*batch]``.

        A one-value head is read from ``value``; a head of ``K`` logits from
        ``value_logits``, or from ``value`` when only that holds ``K`` entries.
        """
        keys = self.tensor_keys
        size = head.event_size
        if size is None:
            value = output.get(unravel_key(keys.value), None)
            if value is None:
                raise KeyError(
                    f"The value model wrote no {keys.value!r} (its out_keys are "
                    f"{self.value_model.out_keys}); make it write the predicted "
                    "value there or call set_keys(value=...)."
                )
            return per_step(
                value,
                batch,
                f"The predicted value {keys.value!r}",
                f"The {self.value_loss} critic outputs one value per step.",
            )
        logits = output.get(unravel_key(keys.value_logits), None)
        key = keys.value_logits
        if logits is None:
            logits, key = output.get(unravel_key(keys.value), None), keys.value
            if logits is not None and logits.shape[-1] == size:
                warnings.warn(
                    f"Value logits read from {keys.value!r} as no {keys.value_logits!r} "
                    "is written: TorchRL deprecates this and it will be removed in v0.16. "
                    "Write the logits to the value_logits key.",
                    DeprecationWarning,
                    stacklevel=4,
                )
        if logits is None or logits.shape[-1] != size:
            found = (
                "neither key"
                if logits is None
                else f"{keys.value!r} with shape {tuple(logits.shape)}"
            )
            raise ValueError(
                f"value_loss={self.value_loss!r} needs {size} logits per step "
                f"under {keys.value_logits!r} (or under {keys.value!r}); the value "
                f"model wrote {found}. Give the value head {size} "
                "outputs, or set num_value_bins to its output size."
            )
        if logits.shape[:-1] != batch:
            raise ValueError(
                f"The value logits {key!r} have shape {tuple(logits.shape)}, expected "
                f"{(*batch, size)} to match the batch {tuple(batch)}."
            )
        return logits

    def _critic_losses(
        self,
        head: Output,
        prediction: torch.Tensor,
        target: torch.Tensor,
        slow_target: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-step loss toward ``target`` plus the slow-critic term, and that term alone.

        Without a slow critic (``slow_target`` is ``None``) the second item is
        ``None``. Both targets share the head's work (one softmax pass for two-hot).
        """
        return critic_loss(head, prediction, target, slow_target, self.slow_critic_regularization)

    def _decoded_value(
        self,
        head: Output,
        output: Mapping[NestedKey, torch.Tensor],
        prediction: torch.Tensor,
        batch: torch.Size,
    ) -> torch.Tensor | None:
        """The predicted value for the ``value_mean`` diagnostic, if it is free.

        For a head of logits it is read from the ``value`` key when the value
        head writes its decoded value beside the logits; decoding here would
        cost a softmax over ``[N, K]`` on every call just for a log line.
        """
        if head.event_size is None:
            return head.decode(prediction).detach()
        value = self._written_value(output, batch)
        return None if value is None else value.detach()

    def _written_value(
        self, output: Mapping[NestedKey, torch.Tensor], batch: torch.Size
    ) -> torch.Tensor | None:
        """The decoded value a head of logits writes beside them under ``value``, if any."""
        value = output.get(unravel_key(self.tensor_keys.value), None)
        if value is None or value.shape not in (batch, (*batch, 1)):
            return None
        return value.reshape(batch)

    def _slow_prediction(
        self, head: Output, tensordict: TensorDictBase, batch: torch.Size
    ) -> torch.Tensor:
        # functional_call swaps the slow tensors in and back out untouched
        # (TensorDictParams.to_module would hand them back as Parameters).
        slow = dict(self.target_value_model_params.flatten_keys(".").items())
        inputs = tensordict.select(*self.value_model.in_keys, strict=False).copy()
        with torch.no_grad():
            output = torch.func.functional_call(self.value_model, slow, (inputs,))
        # A head of logits that also writes its decoded value is read as TorchRL
        # reads it (the head's own decoding); otherwise its logits are decoded here.
        value = self._written_value(output, batch) if head.event_size is not None else None
        return head.decode(self._prediction(head, output, batch)) if value is None else value

    # ---------------------------------------------------------------- weights
    def _step_weight(
        self, tensordict: TensorDictBase, target: torch.Tensor, batch: torch.Size
    ) -> torch.Tensor | None:
        if not self.discount_loss:
            return None
        key = self.tensor_keys.discount_weight
        weight = tensordict.get(key, None)
        if weight is not None:
            weight = per_step(
                weight.detach(),
                batch,
                f"The discount weight {key!r}",
                "It should hold one weight per imagined step.",
            )
            self._check_finite(weight, key)
            return weight
        if len(batch) < 2:
            return None
        gamma = self.current_gamma()
        if torch.is_tensor(gamma):
            gamma = gamma.to(device=target.device, dtype=target.dtype)
        elif not torch.compiler.is_compiling():
            # A float gamma gives the same weights call after call: keep the last
            # ones (two small ops are a tenth of a small batch's loss).
            # Kept expanded to the whole batch: the loss then reads them as one
            # factor per row without a copy.
            key = (gamma, batch, target.device, target.dtype)
            if self._gamma_powers[0] != key:
                steps = torch.arange(batch[-1], device=target.device, dtype=target.dtype)
                powers = torch.pow(gamma, steps).expand(batch).contiguous()
                self._gamma_powers = (key, powers, powers / powers.numel())
            return self._gamma_powers[1]
        steps = torch.arange(batch[-1], device=target.device, dtype=target.dtype)
        return torch.pow(gamma, steps)

    def _reduce(self, loss: torch.Tensor) -> torch.Tensor:
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    # ---------------------------------------------------------------- forward
    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDict, TensorDictBase]:
        """Compute the critic loss on imagined (or replayed) states.

        Args:
            tensordict: Holds the value model's input keys, ``lambda_target``
                and, optionally, ``discount_weight``. It is not modified.

        Returns:
            ``(loss_td, tensordict)``: ``loss_td`` holds ``loss_value`` (the
            only key that carries gradient), the detached diagnostics
            ``target_mean`` and ``value_mean`` (the mean predicted value; in
            two-hot mode only when the head also writes its decoded value), and
            ``value_slow_loss`` (the weighted slow-critic term, zero without a
            slow critic, as in TorchRL). The second item is the input, unchanged.
        """
        return self._forward(tensordict)

    def _forward(
        self,
        tensordict: TensorDictBase,
        output: Mapping[NestedKey, torch.Tensor] | None = None,
    ) -> tuple[TensorDict, TensorDictBase]:
        """:meth:`forward`, on the value model's ``output`` for ``tensordict`` when
        given (the actor loss's, see ``DreamerV3ActorLoss._forward``), else its own."""
        keys = self.tensor_keys
        target = tensordict.get(keys.lambda_target, None)
        if target is None:
            raise KeyError(
                f"The input has no {keys.lambda_target!r} entry: run the actor loss "
                "first (it writes the λ-returns there), or point set_keys("
                "lambda_target=...) at your own targets."
            )
        batch = self._batch_shape(tensordict, target)
        target = per_step(
            target.detach() if target.requires_grad else target,
            batch,
            f"The target {keys.lambda_target!r}",
            "It should hold one λ-return per step.",
        )
        self._check_finite(target, keys.lambda_target)

        head = self._output()
        if output is None:
            output = call_module(self.value_model, tensordict)
        prediction = self._prediction(head, output, batch)
        self._check_finite(prediction, keys.value)

        weight = self._step_weight(tensordict, target, batch)
        slow_target = (
            self._slow_prediction(head, tensordict, batch)
            if self.slow_critic_regularization > 0
            else None
        )
        out = {}
        if slow_target is None:
            # Weighting and reduction inside the head's loss (for two-hot, its own
            # autograd node); a mean over cached gamma powers is their sum over the
            # cached powers / N.
            reduction = self.reduction
            if reduction == "mean" and weight is not None and weight is self._gamma_powers[1]:
                weight, reduction = self._gamma_powers[2], "sum"
            out["loss_value"] = head.loss(prediction, target, weight, reduction)
            out["value_slow_loss"] = torch.zeros_like(out["loss_value"]).detach()
        else:
            loss, slow = self._critic_losses(head, prediction, target, slow_target)
            if weight is not None:
                loss, slow = loss * weight, slow * weight
            out["value_slow_loss"] = self._reduce(slow).detach()
            out["loss_value"] = self._reduce(loss)
        # Both are detached already, so their means record nothing.
        value = self._decoded_value(head, output, prediction, batch)
        if value is not None:
            out["value_mean"] = value.mean()
        out["target_mean"] = target.mean()
        return TensorDict(out, batch_size=[]), tensordict

    # ----------------------------------------------------------- replay values
    def _replay_entries(
        self, tensordict: TensorDictBase, batch: torch.Size
    ) -> dict[str, torch.Tensor]:
        """``reward``, ``is_last``, ``is_terminal`` and ``bootstrap`` in the official layout.

        TorchRL's layout (``("next", reward / done / terminated)``) is read when
        ``("next", reward)`` is present: its ``done`` is the official ``is_last``
        and its ``terminated`` the official ``is_terminal``.
        """
        keys = self.tensor_keys
        if unravel_key(("next", keys.reward)) in tensordict.keys(True):
            sources = {
                "reward": ("next", keys.reward),
                "is_last": ("next", keys.done),
                "is_terminal": ("next", keys.terminated),
            }
        else:
            sources = {
                "reward": keys.reward,
                "is_last": keys.is_last,
                "is_terminal": keys.is_terminal,
            }
        sources["bootstrap"] = keys.bootstrap
        entries = {}
        for name, key in sources.items():
            value = tensordict.get(unravel_key(key), None)
            if value is None:
                raise KeyError(
                    f"replay_value_loss needs {unravel_key(key)!r} in the replay batch "
                    "(see the layouts in its docstring)."
                )
            entries[name] = per_step(value.detach(), batch, f"The replay entry {key!r}").to(
                torch.float32 if value.dtype == torch.bool else value.dtype
            )
        return entries

    def replay_value_loss(
        self, tensordict: TensorDictBase, horizon: float = 333.0, lmbda: float = 0.95
    ) -> TensorDict:
        """The official "repval" loss: the critic on real replay sequences.

        Returns are λ-returns along each ``[B, T]`` replay sequence, from its real
        rewards and episode flags, bootstrapped from every state's first
        imagined return ``bootstrap`` (what the actor loss computed from that
        state), with discount ``1 - 1/horizon``. The critic is trained on
        states ``0 .. T-2``; states that end an episode are masked out. The
        gradient reaches the value model's input features, so this loss can
        train the representation. The caller scales it (officially by 0.3).

        Two per-step layouts are read; in both, a state's entries describe
        arriving at it:

        * official: ``reward`` (received on arriving at the state),
          ``is_last`` and ``is_terminal`` (the state's own flags), at the root;
        * TorchRL's: ``("next", "reward")``, ``("next", "done")`` and
          ``("next", "terminated")`` beside root states that are the posterior
          of ``"next"`` (as ``torchrl.objectives.DreamerV3Loss`` builds them),
          used whenever ``("next", "reward")`` is present.

        ``bootstrap`` is at the root in both. The slow-critic regulariser
        applies here too when enabled.

        Args:
            tensordict: ``[B, T]`` (``T >= 2``) with the value model's inputs and
                the entries of one layout, each of shape ``[B, T]`` or ``[B, T, 1]``.
            horizon: Discount horizon (official 333).
            lmbda: λ (official 0.95).

        Returns:
            A tensordict with ``loss_replay_value`` (reduced like the main loss)
            and the detached ``replay_target_mean``.

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> from tensordict.nn import TensorDictModule
            >>> from torchdreamer import DreamerV3ValueLoss
            >>> critic = TensorDictModule(torch.nn.Linear(4, 1), ["state"], ["state_value"])
            >>> loss = DreamerV3ValueLoss(critic)
            >>> replay = TensorDict({
            ...     "state": torch.randn(2, 8, 4),
            ...     "reward": torch.randn(2, 8),
            ...     "is_last": torch.zeros(2, 8, dtype=torch.bool),
            ...     "is_terminal": torch.zeros(2, 8, dtype=torch.bool),
            ...     "bootstrap": torch.randn(2, 8),
            ... }, [2, 8])
            >>> loss.replay_value_loss(replay)["loss_replay_value"].shape
            torch.Size([])
            >>> torchrl_layout = TensorDict({
            ...     "state": replay["state"],
            ...     "bootstrap": replay["bootstrap"],
            ...     "next": {
            ...         "reward": replay["reward"].unsqueeze(-1),
            ...         "done": replay["is_last"].unsqueeze(-1),
            ...         "terminated": replay["is_terminal"].unsqueeze(-1),
            ...     },
            ... }, [2, 8])
            >>> bool(
            ...     loss.replay_value_loss(torchrl_layout)["loss_replay_value"]
            ...     == loss.replay_value_loss(replay)["loss_replay_value"]
            ... )
            True
        """
        if not horizon >= 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}.")
        if not 0 <= lmbda <= 1:
            raise ValueError(f"lmbda must lie in [0, 1], got {lmbda}.")
        batch = tensordict.batch_size
        if len(batch) < 1 or batch[-1] < 2:
            raise ValueError(
                f"replay_value_loss needs a [B, T] batch with T >= 2 (time last), got "
                f"batch size {tuple(batch)}."
            )
        entries = self._replay_entries(tensordict, batch)
        target = replay_returns(
            entries["reward"],
            entries["is_last"],
            entries["is_terminal"],
            entries["bootstrap"],
            1 - 1 / horizon,
            lmbda,
        )
        head = self._output()
        time = len(batch) - 1
        prediction = self._prediction(head, call_module(self.value_model, tensordict), batch)
        prediction = prediction.narrow(time, 0, batch[-1] - 1)
        slow_target = (
            self._slow_prediction(head, tensordict, batch).narrow(time, 0, batch[-1] - 1)
            if self.slow_critic_regularization > 0
            else None
        )
        loss, _ = self._critic_losses(head, prediction, target, slow_target)
        keep = 1 - entries["is_last"][..., :-1]
        return TensorDict(
            {
                "loss_replay_value": self._reduce(keep * loss),
                "replay_target_mean": target.mean(),
            },
            batch_size=[],
        )


def _renamed(state_dict: dict, prefix: str, old: str, new: str) -> None:
    """Rename, in place and in order, the entries under ``prefix + old`` to ``prefix + new``."""
    old, new = prefix + old, prefix + new
    if not any(key.startswith(old) for key in state_dict):
        return
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        state_dict[new + key[len(old) :] if key.startswith(old) else key] = value


# TorchRL holds the online critic as `value_model_params` (its functional
# parameters); this loss holds the module itself as `value_model`.
def _critic_as_torchrl_names(
    module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata: Any
) -> None:
    _renamed(state_dict, prefix, "value_model.", "value_model_params.")


def _critic_from_torchrl_names(
    module: torch.nn.Module, state_dict: dict, prefix: str, *args: Any
) -> None:
    _renamed(state_dict, prefix, "value_model_params.", "value_model.")
