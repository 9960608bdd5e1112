"""The DreamerV3 world-model loss, with TorchRL's constructor, keys and outputs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torchrl.objectives import LossModule

from torchdreamer.dreamer.parts import continuation_loss, kl_losses, reconstruction_error
from torchdreamer.functional import categorical_kl, clip_free_nats, unimix_logits
from torchdreamer.functional.outputs import SymlogMSE, TwoHot
from torchdreamer.objectives import official
from torchdreamer.objectives._call import require_tensordict_module
from torchdreamer.objectives._shapes import per_step

__all__ = ["DreamerV3ModelLoss"]


def _next(key: NestedKey) -> NestedKey:
    return unravel_key(("next", key))


def _as_list(keys: NestedKey | list[NestedKey]) -> list[NestedKey]:
    return list(keys) if isinstance(keys, list) else [keys]


class DreamerV3ModelLoss(LossModule):
    """DreamerV3 world-model loss, a drop-in for ``torchrl.objectives.DreamerV3ModelLoss``.

    The constructor (its defaults included), the accepted keys, the data layout
    and the output keys are TorchRL 0.14.1's, so switching the import changes
    nothing; :meth:`official` builds the official DreamerV3 configuration.
    ``world_model`` is any tensordict-in/tensordict-out
    module (a ``TensorDictModule``, or a module whose ``forward(tensordict)``
    returns the tensordict): it reads a ``[B, T]`` replay batch and writes its outputs under
    ``"next"``. Everything the loss reads sits under ``"next"``: the targets
    (``pixels``, ``reward``, ``terminated``/``done``) and the world model's
    outputs (``posterior_logits``, ``prior_logits``, ``reco_pixels``,
    ``reward_logits``, ``continue_pred``). Row ``t`` is the official per-step
    layout: the observation of a state, the reward received on arriving at it,
    its terminal flag. Before the world model runs, ``("next", "reward")`` is
    renamed ``("next", "true_reward")``, so the model may write its predicted
    reward there.

    Terms, each a mean over the ``[B, T]`` batch and multiplied by its scale:

    * ``loss_model_kl`` (``kl_mode="balanced"``, TorchRL's default):
      ``kl_alpha`` times the prior-training KL plus ``1 - kl_alpha`` times the
      posterior-training KL, each clipped per categorical and averaged over
      the categoricals. ``loss_model_dynamic`` / ``loss_model_representation``
      (``kl_mode="separate"``, official) instead:
      :func:`~torchdreamer.functional.kl_balance`, the KL summed over the
      categoricals of a state and clipped below at ``free_bits``; scales
      ``lambda_kl * lambda_dynamic`` and ``lambda_kl * lambda_representation``.
    * ``loss_model_reco``: squared (``"l2"``) or absolute (``"l1"``) error of
      each ``reco_pixels`` against its ``pixels`` target, summed over the
      features of a step (``global_average=False``) and over the heads. With
      ``reco_symlog`` both target and prediction are symlog'ed (the prediction
      is in observation space, as TorchRL's decoders write it); with
      ``symlog_predictions=True`` the prediction is taken as already in
      symlog space (the official decoder's output, and torchdreamer's
      :class:`~torchdreamer.modules.WorldModel`). Without ``reco_symlog``,
      ``uint8`` targets are scaled to ``[0, 1]``.
    * ``loss_model_reward``: two-hot cross-entropy of ``reward_logits`` over
      ``num_reward_bins`` bins, or with ``reward_two_hot=False`` the symlog MSE
      of the scalar ``("next", "reward")`` prediction. Logits written under
      ``("next", "reward")`` with no ``reward_logits`` entry are read there,
      with TorchRL's ``DeprecationWarning``.
    * ``loss_model_continue`` (when ``lambda_continue > 0`` and both the
      ``continue_pred`` logit and a ``terminated``/``done`` flag are present,
      as in TorchRL): Bernoulli cross-entropy of the logit against
      ``continue_target_scale * (1 - terminated)``.

    ``kl`` (detached) is the mean KL of the states before the free-bits clip.

    Args:
        world_model: Tensordict module that writes the entries above.

    Keyword Args:
        lambda_kl: Scale of the KL terms (1.0).
        lambda_reco: Scale of the reconstruction term (1.0).
        lambda_reward: Scale of the reward term (1.0).
        lambda_continue: Scale of the continuation term (TorchRL's 0.0 leaves it
            out; official 1.0).
        kl_mode: ``"balanced"`` (TorchRL's) or ``"separate"`` (official).
        lambda_dynamic: Dynamics-KL scale in separate mode (1.0).
        lambda_representation: Representation-KL scale in separate mode (0.1).
        unimix: Uniform mixture put into both categoricals before the KL of
            separate mode (TorchRL's 0.0; official 0.01); balanced mode, as in
            TorchRL, takes none. Keep 0.0 when the world model writes
            logits that include it already, as torchdreamer's RSSM does.
        continue_target_scale: Factor on the non-terminal continuation
            targets, in ``(0, 1]`` (1.0).
        kl_alpha: Balance of ``kl_mode="balanced"`` (0.8).
        free_bits: Lower clip of the KL terms in nats (1.0).
        reco_loss: ``"l2"`` or ``"l1"``.
        reco_symlog: Symlog the reconstruction targets, one bool for all heads
            or one per head (``True``).
        reward_two_hot: Two-hot reward logits (``True``) or a scalar reward
            prediction with symlog MSE.
        num_reward_bins: Bins of the reward head (255).
        global_average: Average the reconstruction error over every element
            instead of summing it over the features of a step.
        detach_output: Detach the returned world-model output (TorchRL's
            ``True``). The official update trains the representation through
            the replay value loss, so it is ``False`` there.
        symlog_predictions: (torchdreamer) The reconstructions of the
            ``reco_symlog`` heads are in symlog space already; only their
            targets are symlog'ed.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchdreamer import DreamerV3ModelLoss
        >>> class ToyWorldModel(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(3, 2 * 4 * 4 + 255 + 1 + 3)
        ...     def forward(self, obs):
        ...         out = self.net(obs)
        ...         post, prior = out[..., :16], out[..., 16:32]
        ...         shape = (*obs.shape[:-1], 4, 4)
        ...         return (post.reshape(shape), prior.reshape(shape), out[..., 32:287],
        ...                 out[..., 287:288], out[..., 288:])
        >>> world_model = TensorDictModule(
        ...     ToyWorldModel(),
        ...     in_keys=[("next", "observation")],
        ...     out_keys=[("next", k) for k in ("posterior_logits", "prior_logits",
        ...               "reward_logits", "continue_pred", "reco_observation")],
        ... )
        >>> loss = DreamerV3ModelLoss.official(world_model)
        >>> loss.set_keys(pixels="observation", reco_pixels="reco_observation")
        >>> replay = TensorDict({"next": {
        ...     "observation": torch.randn(2, 5, 3),
        ...     "reward": torch.randn(2, 5, 1),
        ...     "terminated": torch.zeros(2, 5, 1, dtype=torch.bool),
        ... }}, [2, 5])
        >>> loss_td, out = loss(replay)
        >>> sorted(k for k in loss_td.keys() if k.startswith("loss_"))
        ['loss_model_continue', 'loss_model_dynamic', 'loss_model_reco',
         'loss_model_representation', 'loss_model_reward']
        >>> sum(loss_td[k] for k in loss_td.keys() if k.startswith("loss_")).backward()

        With TorchRL's defaults, one balanced KL term and no continuation term:

        >>> torchrl_loss = DreamerV3ModelLoss(world_model)
        >>> torchrl_loss.set_keys(pixels="observation", reco_pixels="reco_observation")
        >>> sorted(torchrl_loss(replay)[0].keys())
        ['kl', 'loss_model_kl', 'loss_model_reco', 'loss_model_reward']
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys, all read under ``"next"``; change them with ``set_keys``.

        Attributes:
            reward: Target reward; the world model may write its decoded
                prediction here. Defaults to ``"reward"``.
            reward_logits: Reward logits. Defaults to ``"reward_logits"``.
            true_reward: Where the target reward is moved before the world
                model runs. Defaults to ``"true_reward"``.
            prior_logits: Defaults to ``"prior_logits"``.
            posterior_logits: Defaults to ``"posterior_logits"``.
            pixels: Observation key, or a list of them, one per reconstruction
                head. Defaults to ``"pixels"``.
            reco_pixels: Prediction key(s), paired in order with ``pixels``.
                Defaults to ``"reco_pixels"``.
            continue_pred: Continuation logit. Defaults to ``"continue_pred"``.
            done: Episode-end flag, read when ``terminated`` is absent.
                Defaults to ``"done"``.
            terminated: Terminal flag. Defaults to ``"terminated"``.
        """

        reward: NestedKey = "reward"
        reward_logits: NestedKey = "reward_logits"
        true_reward: NestedKey = "true_reward"
        prior_logits: NestedKey = "prior_logits"
        posterior_logits: NestedKey = "posterior_logits"
        pixels: NestedKey | list[NestedKey] = "pixels"
        reco_pixels: NestedKey | list[NestedKey] = "reco_pixels"
        continue_pred: NestedKey = "continue_pred"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    world_model: TensorDictModuleBase
    reward_bins: torch.Tensor

    def __init__(
        self,
        world_model: TensorDictModuleBase,
        *,
        lambda_kl: float = 1.0,
        lambda_reco: float = 1.0,
        lambda_reward: float = 1.0,
        lambda_continue: float = 0.0,
        kl_mode: Literal["balanced", "separate"] = "balanced",
        lambda_dynamic: float = 1.0,
        lambda_representation: float = 0.1,
        unimix: float = 0.0,
        continue_target_scale: float = 1.0,
        kl_alpha: float = 0.8,
        free_bits: float = 1.0,
        reco_loss: Literal["l1", "l2"] = "l2",
        reco_symlog: bool | list[bool] = True,
        reward_two_hot: bool = True,
        num_reward_bins: int = 255,
        global_average: bool = False,
        detach_output: bool = True,
        symlog_predictions: bool = False,
    ) -> None:
        super().__init__()
        if not (hasattr(world_model, "in_keys") or isinstance(world_model, torch.nn.Module)):
            require_tensordict_module(world_model, "world_model")
        if kl_mode not in ("balanced", "separate"):
            raise ValueError(f"kl_mode must be 'balanced' or 'separate', got {kl_mode!r}.")
        if reco_loss not in ("l1", "l2"):
            raise ValueError(f"reco_loss must be 'l1' or 'l2', got {reco_loss!r}.")
        if not 0 < continue_target_scale <= 1:
            raise ValueError(
                f"continue_target_scale must lie in (0, 1], got {continue_target_scale}."
            )
        if not 0 <= unimix < 1:
            raise ValueError(f"unimix must lie in [0, 1), got {unimix}.")
        if not free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits}.")
        if not lambda_continue >= 0:
            raise ValueError(f"lambda_continue must be >= 0, got {lambda_continue}.")
        self.world_model = world_model
        self.lambda_kl = lambda_kl
        self.lambda_reco = lambda_reco
        self.lambda_reward = lambda_reward
        self.lambda_continue = lambda_continue
        self.kl_mode = kl_mode
        self.lambda_dynamic = lambda_dynamic
        self.lambda_representation = lambda_representation
        self.unimix = unimix
        self.continue_target_scale = continue_target_scale
        self.kl_alpha = kl_alpha
        self.free_bits = free_bits
        self.reco_loss = reco_loss
        self.reco_symlog = reco_symlog
        self.reward_two_hot = reward_two_hot
        self.num_reward_bins = num_reward_bins
        self.global_average = global_average
        self.detach_output = detach_output
        self.symlog_predictions = bool(symlog_predictions)
        self.register_buffer("reward_bins", TwoHot(num_reward_bins).bins)

    @classmethod
    def official(cls, world_model: TensorDictModuleBase, **overrides: Any) -> DreamerV3ModelLoss:
        """The loss in the official DreamerV3 configuration.

        TorchRL's defaults with :data:`torchdreamer.objectives.official.MODEL_LOSS`
        (``kl_mode="separate"``, ``lambda_continue=1.0``, ``unimix=0.01``,
        ``detach_output=False``); ``overrides`` are any constructor arguments.

        Examples:
            >>> import torch
            >>> from tensordict.nn import TensorDictModule
            >>> from torchdreamer import DreamerV3ModelLoss
            >>> world_model = TensorDictModule(torch.nn.Identity(), ["x"], ["y"])
            >>> loss = DreamerV3ModelLoss.official(world_model, unimix=0.0)
            >>> loss.kl_mode, loss.lambda_continue, loss.unimix, loss.detach_output
            ('separate', 1.0, 0.0, False)
        """
        return cls(world_model, **{**official.MODEL_LOSS, **overrides})

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def _run_world_model(self, tensordict: TensorDictBase) -> TensorDictBase:
        hint = (
            "world_model must read the replay tensordict and return it with its outputs, "
            "e.g. TensorDictModule(net, in_keys=[...], out_keys=[...]) or a module whose "
            f"forward(tensordict) returns a tensordict; got {type(self.world_model).__name__}"
        )
        try:
            output = self.world_model(tensordict)
        except TypeError as error:
            if hasattr(self.world_model, "in_keys"):
                raise
            raise TypeError(f"{hint}, which failed on a tensordict: {error}") from error
        if not isinstance(output, TensorDictBase):
            raise TypeError(f"{hint}, which returned {type(output).__name__}.")
        return output

    @staticmethod
    def _get(output: TensorDictBase, key: NestedKey, what: str) -> torch.Tensor:
        value = output.get(_next(key), None)
        if value is None:
            raise KeyError(
                f"DreamerV3ModelLoss reads {what} from {_next(key)!r}, which neither the "
                "replay batch nor the world model's output holds; write it there or point "
                "set_keys(...) at the key used."
            )
        return value

    def _kl_terms(self, output: TensorDictBase) -> dict[str, torch.Tensor]:
        keys = self.tensor_keys
        posterior = self._get(output, keys.posterior_logits, "the posterior logits")
        prior = self._get(output, keys.prior_logits, "the prior logits")
        if self.kl_mode == "balanced":
            # Per categorical: KL(sg(post) || prior) trains the prior, KL(post || sg(prior))
            # the posterior; each clipped, then averaged over categoricals and batch.
            prior_side = categorical_kl(posterior.detach(), prior)
            posterior_side = categorical_kl(posterior, prior.detach())
            kl = prior_side.detach().sum(-1).mean()
            balanced = (
                self.kl_alpha * clip_free_nats(prior_side, self.free_bits).mean()
                + (1 - self.kl_alpha) * clip_free_nats(posterior_side, self.free_bits).mean()
            )
            return {"loss_model_kl": self.lambda_kl * balanced, "kl": kl}
        if self.unimix:  # separate mode only, as in TorchRL
            posterior = unimix_logits(posterior, self.unimix)
            prior = unimix_logits(prior, self.unimix)
        dynamic, representation, kl = kl_losses(posterior, prior, self.free_bits)
        return {
            "loss_model_dynamic": self.lambda_kl * self.lambda_dynamic * dynamic.mean(),
            "loss_model_representation": (
                self.lambda_kl * self.lambda_representation * representation.mean()
            ),
            "kl": kl,
        }

    def _reconstruction(self, output: TensorDictBase, batch: torch.Size) -> torch.Tensor:
        targets = _as_list(self.tensor_keys.pixels)
        predictions = _as_list(self.tensor_keys.reco_pixels)
        squash = self.reco_symlog
        squash = [squash] * len(targets) if isinstance(squash, bool) else list(squash)
        if not targets or not len(targets) == len(predictions) == len(squash):
            raise ValueError(
                f"pixels {targets}, reco_pixels {predictions} and reco_symlog {squash} must "
                "describe the same nonzero number of reconstruction heads."
            )
        total = 0.0
        for target_key, prediction_key, use_symlog in zip(
            targets, predictions, squash, strict=True
        ):
            target = self._get(output, target_key, "an observation")
            prediction = self._get(output, prediction_key, f"the reconstruction of {target_key!r}")
            if prediction.shape != target.shape:
                raise ValueError(
                    f"The reconstruction {_next(prediction_key)!r} has shape "
                    f"{tuple(prediction.shape)}, its target {_next(target_key)!r} "
                    f"{tuple(target.shape)}."
                )
            error = reconstruction_error(prediction, target, use_symlog, self.symlog_predictions)
            error = error.square() if self.reco_loss == "l2" else error.abs()
            if not self.global_average:
                error = error.reshape(*batch, -1).sum(-1)
            total = total + error.mean()
        return self.lambda_reco * total

    def _reward(self, output: TensorDictBase, batch: torch.Size) -> torch.Tensor:
        keys = self.tensor_keys
        target = per_step(
            self._get(output, keys.true_reward, "the target reward"),
            batch,
            f"The reward {_next(keys.reward)!r}",
        )
        if self.reward_two_hot:
            logits = output.get(_next(keys.reward_logits), None)
            if logits is None:
                logits = self._get(output, keys.reward, "the reward logits")
                warnings.warn(
                    f"Reward logits read from {_next(keys.reward)!r} as no "
                    f"{_next(keys.reward_logits)!r} is written: TorchRL deprecates this "
                    "and it will be removed in v0.16. Write the logits to the "
                    "reward_logits key.",
                    DeprecationWarning,
                    stacklevel=3,
                )
            if logits.shape != (*batch, self.num_reward_bins):
                raise ValueError(
                    f"The reward logits {_next(keys.reward_logits)!r} have shape "
                    f"{tuple(logits.shape)}, expected {(*batch, self.num_reward_bins)} "
                    f"(num_reward_bins={self.num_reward_bins})."
                )
            loss = TwoHot(self.reward_bins).loss(logits, target)
        else:
            prediction = per_step(
                self._get(output, keys.reward, "the predicted reward"),
                batch,
                f"The predicted reward {_next(keys.reward)!r}",
            )
            loss = SymlogMSE().loss(prediction, target)
        return self.lambda_reward * loss.mean()

    def _continuation(self, output: TensorDictBase, batch: torch.Size) -> torch.Tensor | None:
        """The continuation term, or ``None`` (as TorchRL) when its logit or flag is absent."""
        keys = self.tensor_keys
        logit = output.get(_next(keys.continue_pred), None)
        terminated = output.get(_next(keys.terminated), None)
        if terminated is None:
            terminated = output.get(_next(keys.done), None)
        if logit is None or terminated is None:
            return None
        logit = per_step(logit, batch, f"The continuation logit {_next(keys.continue_pred)!r}")
        terminated = per_step(terminated, batch, "The terminal flag")
        return self.lambda_continue * continuation_loss(
            logit, terminated, self.continue_target_scale
        )

    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDict, TensorDictBase]:
        """Run the world model on the replay batch and compute its loss.

        Args:
            tensordict: ``[B, T]`` replay batch; not modified.

        Returns:
            ``(loss_td, output)``: ``loss_td`` holds the scaled ``loss_model_*``
            terms, each of shape ``[1]`` as in TorchRL (their sum is the
            world-model loss), and the detached ``kl``. ``output`` is the world
            model's output tensordict (the input's entries included, the target
            reward under ``true_reward``), detached if ``detach_output``.
        """
        keys = self.tensor_keys
        batch = tensordict.batch_size
        # New containers at every level, sharing the tensors: nothing the world
        # model writes, nor the reward's renaming, reaches the caller's tensordict.
        output = tensordict.select(*tensordict.keys(True, True))
        reward = output.get(_next(keys.reward), None)
        if reward is None:
            raise KeyError(
                f"The replay batch has no target reward at {_next(keys.reward)!r}; "
                "set_keys(reward=...) to the key used."
            )
        output.rename_key_(_next(keys.reward), _next(keys.true_reward))
        output = self._run_world_model(output)

        losses = {
            "loss_model_reco": self._reconstruction(output, batch),
            "loss_model_reward": self._reward(output, batch),
            **self._kl_terms(output),
        }
        continuation = self._continuation(output, batch) if self.lambda_continue > 0 else None
        if continuation is not None:
            losses["loss_model_continue"] = continuation
        losses = {k: v.reshape(1) if k.startswith("loss_") else v for k, v in losses.items()}
        return TensorDict(losses, batch_size=[]), output.data if self.detach_output else output
