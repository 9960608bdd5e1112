"""The DreamerV3 world-model loss."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torchrl.objectives import LossModule

from torchdreamer.functional import (
    kl_balance,
    symlog,
    two_hot_bins,
    two_hot_cross_entropy,
)
from torchdreamer.objectives._call import require_tensordict_module
from torchdreamer.objectives._shapes import per_step

__all__ = ["DreamerV3ModelLoss"]

ReconstructionLoss = Literal["symlog_mse", "mse"]

#: Loss scales of the official configuration (``loss_scales``), for terms that are
#: each averaged over the ``[B, T]`` batch. (The paper's first version gives 0.5
#: for the dynamics term; the released code uses 1.0.)
DEFAULT_SCALES = {
    "reconstruction": 1.0,
    "reward": 1.0,
    "continuation": 1.0,
    "dynamics": 1.0,
    "representation": 0.1,
}


class DreamerV3ModelLoss(LossModule):
    """DreamerV3 world-model loss on replayed sequences.

    Runs ``world_model`` on a ``[B, T]`` replay batch and combines, per state,

    * reconstruction of each observation: ``symlog_mse``
      ``sum((pred - symlog(obs))**2)`` over features for vectors (the decoder
      predicts in symlog space), or plain ``mse`` for images (``uint8`` images
      are scaled to ``[0, 1]``);
    * reward: two-hot cross-entropy of the reward logits against the raw reward
      (255 bins by default, :func:`~torchdreamer.functional.two_hot_bins`);
    * continuation: Bernoulli cross-entropy of the continuation logit against
      ``1 - is_terminal``;
    * dynamics and representation: :func:`~torchdreamer.functional.kl_balance`
      with ``free_nats`` (the first trains the prior, the second the
      posterior).

    Each term is averaged over the batch, multiplied by its scale and returned
    as its own ``loss_*`` key, so that a TorchRL trainer summing the ``loss_*``
    keys gets the total. The per-step layout is the official one: ``reward`` is
    the reward received on arriving at a state, ``is_terminal`` that state's
    flag. The categorical logits the world model writes are expected to
    include its 1% unimix already (see
    :func:`~torchdreamer.functional.unimix_logits`).

    Args:
        world_model: Reads the replay batch and writes ``posterior_logits`` and
            ``prior_logits`` ``[B, T, num_categoricals, num_classes]``,
            ``reward_logits`` ``[B, T, num_reward_bins]``, ``continuation_logits``
            ``[B, T]`` or ``[B, T, 1]``, and under ``("reconstruction", key)`` a
            prediction for each observation ``key``.

    Keyword Args:
        observations: Observation keys and the loss of each, e.g.
            ``{"observation": "symlog_mse", "pixels": "mse"}``.
        num_reward_bins: Bins of the reward head (official 255).
        free_nats: Lower clip of each KL term (official 1.0).
        scales: Overrides of :data:`DEFAULT_SCALES`, by term name.

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
        ...     in_keys=["observation"],
        ...     out_keys=["posterior_logits", "prior_logits", "reward_logits",
        ...               "continuation_logits", ("reconstruction", "observation")],
        ... )
        >>> loss = DreamerV3ModelLoss(world_model)
        >>> replay = TensorDict({
        ...     "observation": torch.randn(2, 5, 3),
        ...     "reward": torch.randn(2, 5),
        ...     "is_terminal": torch.zeros(2, 5, dtype=torch.bool),
        ... }, [2, 5])
        >>> loss_td, out = loss(replay)
        >>> sorted(k for k in loss_td.keys() if k.startswith("loss_"))
        ['loss_continuation', 'loss_dynamics', 'loss_reconstruction',
         'loss_representation', 'loss_reward']
        >>> sum(loss_td[k] for k in loss_td.keys() if k.startswith("loss_")).backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys; change them with ``set_keys``.

        Attributes:
            reward: Replay reward received on arriving at a state. Defaults to ``"reward"``.
            is_terminal: Replay terminal flag of a state. Defaults to ``"is_terminal"``.
            posterior_logits: Defaults to ``"posterior_logits"``.
            prior_logits: Defaults to ``"prior_logits"``.
            reward_logits: Defaults to ``"reward_logits"``.
            continuation_logits: Defaults to ``"continuation_logits"``.
            reconstruction: Prefix under which the prediction of observation
                ``key`` is read, as ``(reconstruction, key)``. Defaults to
                ``"reconstruction"``.
        """

        reward: NestedKey = "reward"
        is_terminal: NestedKey = "is_terminal"
        posterior_logits: NestedKey = "posterior_logits"
        prior_logits: NestedKey = "prior_logits"
        reward_logits: NestedKey = "reward_logits"
        continuation_logits: NestedKey = "continuation_logits"
        reconstruction: NestedKey = "reconstruction"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    world_model: TensorDictModuleBase
    reward_bins: torch.Tensor

    def __init__(
        self,
        world_model: TensorDictModuleBase,
        *,
        observations: Mapping[NestedKey, ReconstructionLoss] | None = None,
        num_reward_bins: int = 255,
        free_nats: float = 1.0,
        scales: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        require_tensordict_module(world_model, "world_model")
        observations = {"observation": "symlog_mse"} if observations is None else observations
        if not observations:
            raise ValueError("observations must name at least one observation key.")
        for key, kind in observations.items():
            if kind not in ("symlog_mse", "mse"):
                raise ValueError(
                    f"observation {key!r}: the loss must be 'symlog_mse' or 'mse', got {kind!r}."
                )
        unknown = set(scales or {}) - set(DEFAULT_SCALES)
        if unknown:
            raise ValueError(
                f"unknown loss scale(s) {sorted(unknown)}; known: {sorted(DEFAULT_SCALES)}."
            )
        if not free_nats >= 0:
            raise ValueError(f"free_nats must be >= 0, got {free_nats}.")
        self.world_model = world_model
        self.observations = {unravel_key(k): v for k, v in observations.items()}
        self.free_nats = float(free_nats)
        self.scales = {**DEFAULT_SCALES, **(scales or {})}
        self.register_buffer("reward_bins", two_hot_bins(num_reward_bins))

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def _reconstruction(self, output: TensorDictBase, batch: torch.Size) -> torch.Tensor:
        prefix = unravel_key(self.tensor_keys.reconstruction)
        prefix = prefix if isinstance(prefix, tuple) else (prefix,)
        total = 0.0
        for key, kind in self.observations.items():
            target = output.get(key)
            name = key if isinstance(key, tuple) else (key,)
            prediction = output.get((*prefix, *name), None)
            if prediction is None:
                raise KeyError(
                    f"The world model wrote no reconstruction of {key!r} under "
                    f"{(*prefix, *name)!r}."
                )
            if prediction.shape != target.shape:
                raise ValueError(
                    f"The reconstruction of {key!r} has shape {tuple(prediction.shape)}, "
                    f"the observation {tuple(target.shape)}."
                )
            if kind == "symlog_mse":
                target = symlog(target.float())
            elif not target.is_floating_point():
                target = target.float() / 255.0
            error = (prediction - target.detach()).square()
            total = total + error.reshape(*batch, -1).sum(-1)
        return total

    def forward(self, tensordict: TensorDictBase) -> tuple[TensorDict, TensorDictBase]:
        """Run the world model on the replay batch and compute its loss.

        Args:
            tensordict: ``[B, T]`` replay batch (observations, ``reward``,
                ``is_terminal``, and what the world model reads). Not modified.

        Returns:
            ``(loss_td, output)``: ``loss_td`` holds the scaled terms
            ``loss_reconstruction``, ``loss_reward``, ``loss_continuation``,
            ``loss_dynamics`` and ``loss_representation`` (their sum is the
            world-model loss) and the detached ``kl`` (mean KL before the free
            nats clip). ``output`` is a copy of the input with the world
            model's outputs (posterior states included), with gradients, for
            imagination starts and the replay value loss.
        """
        keys = self.tensor_keys
        batch = tensordict.batch_size
        output = self.world_model(tensordict.copy())

        posterior = output.get(keys.posterior_logits)
        prior = output.get(keys.prior_logits)
        dynamics, representation = kl_balance(posterior, prior, free_nats=0.0)
        kl = dynamics.detach().mean()  # before the free-nats clip, for logging
        if self.free_nats:
            dynamics = dynamics.clamp(min=self.free_nats)
            representation = representation.clamp(min=self.free_nats)

        reward = per_step(output.get(keys.reward), batch, f"The replay {keys.reward!r}")
        reward_loss = two_hot_cross_entropy(
            output.get(keys.reward_logits), reward, self.reward_bins
        )

        logit = per_step(
            output.get(keys.continuation_logits), batch, f"The {keys.continuation_logits!r}"
        )
        terminal = per_step(output.get(keys.is_terminal), batch, f"The replay {keys.is_terminal!r}")
        live = 1 - terminal.to(logit.dtype)
        continuation = torch.nn.functional.binary_cross_entropy_with_logits(
            logit, live, reduction="none"
        )

        terms = {
            "reconstruction": self._reconstruction(output, batch),
            "reward": reward_loss,
            "continuation": continuation,
            "dynamics": dynamics,
            "representation": representation,
        }
        losses = {f"loss_{name}": self.scales[name] * term.mean() for name, term in terms.items()}
        losses["kl"] = kl
        return TensorDict(losses, batch_size=[]), output
