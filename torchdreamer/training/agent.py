"""The DreamerV3 agent: networks, the three losses, one update, and acting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictModule as Prob
from tensordict.nn import ProbabilisticTensorDictSequential as ProbSeq
from tensordict.nn import TensorDictModule
from tensordict.utils import unravel_key
from torch import nn
from torchrl.objectives import SoftUpdate
from torchrl.objectives.utils import ValueEstimators

from torchdreamer.modules import (
    WORLD_MODEL_OUTPUTS,
    BoundedNormalActorHead,
    CategoricalActorHead,
    ImaginationEnv,
    MultiCategoricalActorHead,
    MultiOneHotCategorical,
    OneHotCategorical,
    TwoHotHead,
    WorldModel,
)
from torchdreamer.objectives import (
    DreamerV3ActorLoss,
    DreamerV3Loss,
    DreamerV3ModelLoss,
    DreamerV3ValueLoss,
)
from torchdreamer.training.config import Config, resolve_precision
from torchdreamer.training.distributed import concat_over_ranks, mean_over_ranks
from torchdreamer.training.optim import DreamerV3Optimizer

if TYPE_CHECKING:
    from torchdreamer.envs import EnvSpec

__all__ = ["DreamerAgent"]

_STATE = ["state", "belief"]
#: The replay column of the posterior latent (``state``, ``belief``) stored with each
#: step the policy acted on (the official ``replay_context`` entries).
LATENT = "latent"
#: The world model's input of the latent before each trained step (see :meth:`losses`).
_PREV_LATENT = "prev_latent"
#: Where a replay batch says where its rows are kept (``replay.INDEX``).
_INDEX = "index"


class DreamerAgent(nn.Module):
    """World model, actor and critic, trained together by :meth:`update`.

    One update follows the official order on a ``[B, T]`` replay batch: the
    world-model loss filters the batch; every posterior state (detached)
    starts an imagined trajectory, on which the actor and critic losses are
    computed; the critic is also trained on the replayed sequence itself
    (scale 0.3). All terms are summed and taken by one optimiser step, then
    the slow critic moves toward the critic (EMA 0.02).

    Args:
        observation_shape: ``(D,)``, ``(H, W, C)``, or a dict of them by key (a dict
            observation: a reconstruction head per key).
        action_dim: Number of discrete actions, or the continuous action size
            (multi-discrete: ``sum(action_nvec)``).
        discrete: Discrete (one-hot) or continuous (bounded normal) actions. The actor
            learns by REINFORCE, or for continuous actions under
            ``Config(actor_grad="dynamics")`` by gradients through the world model.
        config: Sizes and hyperparameters.
        action_nvec: Multi-discrete actions (``discrete=True``): the number of actions
            of each component. The actor is one categorical per component
            (:class:`~torchdreamer.modules.MultiOneHotCategorical`); actions are their
            one-hot vectors concatenated, which the world model takes as its input.

    Examples:
        >>> import torch
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config(imagination_horizon=3))
        >>> state = agent.initial_state(5)
        >>> action, state = agent.act(torch.randn(5, 4), torch.ones(5, dtype=torch.bool), state)
        >>> action.shape, bool((action.sum(-1) == 1).all())
        (torch.Size([5, 2]), True)
    """

    def __init__(
        self,
        observation_shape: tuple[int, ...] | dict[str, tuple[int, ...]],
        action_dim: int,
        *,
        discrete: bool,
        config: Config,
        action_nvec: Sequence[int] = (),
    ) -> None:
        super().__init__()
        size = config.size
        self.action_nvec = tuple(int(n) for n in action_nvec)
        if self.action_nvec and (not discrete or sum(self.action_nvec) != action_dim):
            raise ValueError(
                f"multi-discrete actions of sizes {self.action_nvec} need discrete=True and "
                f"action_dim={sum(self.action_nvec)} (their sum); got discrete={discrete}, "
                f"action_dim={action_dim}."
            )
        self.discrete, self.action_dim = discrete, action_dim
        self.world_model = WorldModel(observation_shape, action_dim, size)
        features = self.world_model.rssm.feature_size
        if self.action_nvec:
            head = MultiCategoricalActorHead(
                features, self.action_nvec, size.units, size.actor_layers
            )
            self.actor = ProbSeq(
                TensorDictModule(head, _STATE, ["logits"]),
                Prob(
                    ["logits"],
                    ["action"],
                    distribution_class=MultiOneHotCategorical,
                    distribution_kwargs={"nvec": self.action_nvec},
                ),
            )
        elif discrete:
            head = CategoricalActorHead(features, action_dim, size.units, size.actor_layers)
            self.actor = ProbSeq(
                TensorDictModule(head, _STATE, ["logits"]),
                Prob(["logits"], ["action"], distribution_class=OneHotCategorical),
            )
        else:
            head = BoundedNormalActorHead(features, action_dim, size.units, size.actor_layers)
            self.actor = ProbSeq(
                TensorDictModule(head, _STATE, ["loc", "scale"]),
                Prob(
                    ["loc", "scale"],
                    ["action"],
                    distribution_class=torch.distributions.Normal,
                    default_interaction_type="random",
                ),
            )
        self.critic = TensorDictModule(
            TwoHotHead(features, size.units, size.critic_layers),
            _STATE,
            ["state_value_logits", "state_value"],
        )
        shapes = self.world_model.observation_shape
        if self.world_model.is_dict:  # one reconstruction head per key
            names = sorted(shapes)
            targets: object = [("observation", k) for k in names]
            predictions: object = [("reconstruction", "observation", k) for k in names]
            squash: object = [len(shapes[k]) == 1 for k in names]
        else:
            targets, predictions = "observation", ("reconstruction", "observation")
            squash = not self.world_model.is_image
        # The replay batch (official per-step layout) goes under "next", where
        # the TorchRL-style model loss reads targets and world-model outputs.
        self.model_loss = DreamerV3ModelLoss.official(
            TensorDictModule(
                self.world_model,
                [
                    *(("next", key) for key in ("observation", "prev_action", "is_first")),
                    *(("next", _PREV_LATENT, key) for key in _STATE),
                ],
                [unravel_key(("next", key)) for key in WORLD_MODEL_OUTPUTS],
            ),
            unimix=0.0,  # the RSSM's logits include its unimix already
            reco_symlog=squash,  # vectors: symlog MSE; images: MSE of pixels / 255
            symlog_predictions=True,  # the vector decoders predict in symlog space
        )
        self.model_loss.set_keys(
            pixels=targets,
            reco_pixels=predictions,
            continue_pred="continuation_logits",
            done="is_last",
            terminated="is_terminal",
        )
        self.actor_loss = DreamerV3ActorLoss(
            self.actor,
            self.critic,
            ImaginationEnv(self.world_model.rssm, self.world_model.reward),
            continuation_model=TensorDictModule(
                self.world_model.continuation, _STATE, ["continuation_logit", "continuation"]
            ),
            imagination_horizon=config.imagination_horizon,
            entropy_bonus=config.entropy_bonus,
            # Discrete samples carry no gradient: REINFORCE under either actor_grad.
            use_reinforce=discrete or config.actor_grad == "reinforce",
            return_normalization_reduce=concat_over_ranks,
        )
        self.actor_loss.make_value_estimator(
            ValueEstimators.TDLambda, gamma=1 - 1 / config.horizon, lmbda=config.lmbda
        )
        self.value_loss = DreamerV3ValueLoss(
            self.critic,
            value_loss="two_hot",
            actor_loss=self.actor_loss,
            slow_critic_regularization=config.slow_critic_weight,
        )
        self.value_loss.set_keys(done="is_last", terminated="is_terminal")
        self.slow_critic = SoftUpdate(self.value_loss, tau=config.slow_critic_tau)
        # Composes the three losses above, which stay registered here (their
        # state_dict keys); it owns no state of its own, so it is not registered.
        object.__setattr__(
            self,
            "dreamer_loss",
            DreamerV3Loss(
                self.model_loss,
                self.actor_loss,
                self.value_loss,
                replay_value_loss_weight=config.replay_value_scale,
                continuation_horizon=config.horizon,
                lmbda=config.lmbda,
            ),
        )
        self.config = config
        self.latents: TensorDict | None = None
        """The posterior latents of the steps the last :meth:`losses` trained on (``state``,
        ``belief``, ``[B, T]``, float32, detached, on the agent's device): what training
        writes back into the replay (:meth:`SequenceReplay.update`). Under a CUDA graph
        (:class:`~torchdreamer.training.static_update.StaticUpdate`), the graph's output,
        refreshed by every replay of it."""
        self.optimizer = DreamerV3Optimizer(
            self.trainable_parameters(),
            lr=config.lr,
            agc=config.agc,
            beta1=config.beta1,
            beta2=config.beta2,
            eps=config.eps,
            warmup_steps=config.warmup,
        )

    @classmethod
    def from_spec(cls, spec: EnvSpec, config: Config) -> DreamerAgent:
        """The agent for an environment of :class:`~torchdreamer.envs.EnvSpec`
        ``spec``: its observations and actions (discrete, multi-discrete or continuous).

        Examples:
            >>> from torchdreamer.training import Config, DreamerAgent
            >>> from torchdreamer.envs import EnvSpec
            >>> spec = EnvSpec((4,), discrete=True, action_dim=5, action_nvec=(3, 2))
            >>> agent = DreamerAgent.from_spec(spec, Config(imagination_horizon=3))
            >>> agent.action_dim, agent.action_nvec
            (5, (3, 2))
        """
        return cls(
            spec.observation_shape,
            spec.action_dim,
            discrete=spec.discrete,
            config=config,
            action_nvec=spec.action_nvec,
        )

    def autocast(self) -> torch.autocast:
        """The context the networks compute in: ``torch.autocast`` to bfloat16 on the
        agent's device under ``Config(precision="bfloat16")`` (or ``"auto"`` where
        :func:`~torchdreamer.training.config.resolve_precision` picks it), a disabled one
        otherwise.

        Examples:
            >>> import torch
            >>> from torchdreamer.training import Config, DreamerAgent
            >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config(precision="bfloat16"))
            >>> with agent.autocast():
            ...     torch.randn(2, 3) @ torch.randn(3, 4)  # doctest: +ELLIPSIS
            tensor(..., dtype=torch.bfloat16)
        """
        device = next(self.parameters()).device.type
        bfloat16 = resolve_precision(self.config.precision, device)[0] == "bfloat16"
        return torch.autocast(device, dtype=torch.bfloat16, enabled=bfloat16)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """World model, actor and critic parameters (the slow critic is a buffer)."""
        modules = (self.world_model, self.actor, self.critic)
        return [p for module in modules for p in module.parameters()]

    # ------------------------------------------------------------------ learning
    def losses(self, batch: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss of one update and its detached terms, by name.

        ``batch`` is a replay batch in the official per-step layout (``observation``,
        ``prev_action``, ``is_first``, ``reward``, ``is_last``, ``is_terminal``);
        :class:`~torchdreamer.DreamerV3Loss` computes the terms. With a :data:`LATENT`
        column (``Config.replay_context`` 1), the batch is ``[B, T + 1]``: the latent
        stored with step 0 of each window starts the world model, and steps 1 to
        ``T`` are trained (step 1's ``prev_action`` is the action taken at step 0);
        without one, the ``[B, T]`` steps are trained from the zero state, the first
        flagged ``is_first`` (the official replay's first step of every window). The
        trained steps' posterior latents are left in :attr:`latents`.
        """
        batch = self._trained(batch)
        with self.autocast():
            result = self.dreamer_loss(TensorDict({"next": batch}, batch_size=batch.batch_size))
        terms = {k: v for k, v in result.items() if k.startswith("loss_")}
        total = sum(terms.values())
        context = self.dreamer_loss.tensor_keys.replay_context
        self.latents = result.get(context).apply(lambda x: x.float())
        metrics = {k: v.detach() for k, v in result.exclude(context).items()}
        return total, metrics

    def _trained(self, batch: TensorDictBase) -> TensorDictBase:
        """The steps :meth:`losses` trains on, with the latent before each (the first's
        starts the world model)."""
        keys = batch.keys()
        if LATENT in keys:
            trained = batch[:, 1:].exclude(LATENT, _INDEX)
            return trained.set(_PREV_LATENT, batch.get(LATENT)[:, :-1])
        trained = batch.exclude(_INDEX)
        first = trained.get("is_first").clone()
        first[:, 0] = True
        trained.set("is_first", first)
        rssm, (b, t) = self.world_model.rssm, batch.batch_size
        device = first.device
        zeros = {
            "state": torch.zeros(b, 1, rssm.stoch_size, device=device).expand(b, t, -1),
            "belief": torch.zeros(b, 1, rssm.deter_size, device=device).expand(b, t, -1),
        }
        return trained.set(_PREV_LATENT, TensorDict(zeros, batch_size=[b, t]))

    def forward(self, batch: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`losses`: the forward a DistributedDataParallel wrapper calls."""
        return self.losses(batch)

    def update(self, batch: TensorDictBase, parallel: nn.Module | None = None) -> dict[str, float]:
        """One optimiser step on a ``[B, T]`` replay batch; returns the metrics.

        :meth:`train_step`, then :meth:`read_metrics`: the metrics are read back to the
        host once, after the step.

        Args:
            batch: This process's replay batch.
            parallel: A :class:`~torch.nn.parallel.DistributedDataParallel`
                wrapping this agent (see :func:`torchdreamer.training.distributed.wrap`):
                the losses go through it, so the gradients are averaged over
                ranks before the step, and the metrics are averaged too.
        """
        return self.read_metrics(*self.train_step(batch, parallel))

    def train_step(
        self, batch: TensorDictBase, parallel: nn.Module | None = None
    ) -> tuple[list[str], torch.Tensor]:
        """One optimiser step on ``batch`` that reads nothing back to the host.

        The losses, the backward, the optimiser step and the slow critic's EMA; returns
        the metrics' names and their values, one float32 tensor on the agent's device
        (unread: on a GPU, the step's kernels may still be running). ``parallel``: as in
        :meth:`update`. A step that reads no value back is what a CUDA graph can capture
        (:class:`~torchdreamer.training.static_update.StaticUpdate`).

        Examples:
            >>> import torch
            >>> from torchdreamer.training import Config, DreamerAgent
            >>> from tensordict import TensorDict
            >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config(imagination_horizon=3))
            >>> flags, zeros = torch.zeros(2, 8, dtype=torch.bool), torch.zeros(2, 8)
            >>> batch = TensorDict(observation=torch.randn(2, 8, 4), reward=zeros, is_first=flags,
            ...                    is_last=flags, is_terminal=flags,
            ...                    prev_action=torch.zeros(2, 8, 2), batch_size=[2, 8])
            >>> names, values = agent.train_step(batch)
            >>> names[-1], values.shape == (len(names),), values.dtype
            ('loss', True, torch.float32)
        """
        total, metrics = (parallel or self)(batch)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.slow_critic.step()
        metrics["loss"] = total.detach()
        return list(metrics), torch.stack([v.reshape(()).float() for v in metrics.values()])

    @staticmethod
    def read_metrics(names: list[str], values: torch.Tensor) -> dict[str, float]:
        """:meth:`train_step`'s metrics as numbers, averaged over ranks under ``torchrun``:
        the one read back to the host (on a GPU, it waits for the step)."""
        return dict(zip(names, mean_over_ranks(values).tolist(), strict=True))

    # -------------------------------------------------------------------- acting
    def initial_state(self, batch: int) -> TensorDict:
        """Zero latent state and previous action of ``batch`` environments."""
        device = next(self.parameters()).device
        stoch, deter = self.world_model.rssm.initial(torch.Size([batch]), device)
        action = torch.zeros(batch, self.action_dim, device=device)
        return TensorDict(state=stoch, belief=deter, action=action, batch_size=[batch])

    @torch.no_grad()
    def act(
        self,
        observation: torch.Tensor,
        is_first: torch.Tensor,
        state: TensorDict,
        explore: bool = True,
    ) -> tuple[torch.Tensor, TensorDict]:
        """Filter one observation per environment and choose actions.

        Returns the action (one-hot; multi-discrete: the components' one-hots
        concatenated; or continuous in ``[-1, 1]``) and the new state, which remembers
        the action as the next step's previous action. ``explore=False`` takes the most
        likely action (of each component).
        """
        rssm = self.world_model.rssm
        with self.autocast():
            stoch, deter, _ = rssm.obs_step(
                state["state"],
                state["belief"],
                state["action"],
                self.world_model.embed(observation),
                is_first,
            )
            td = TensorDict(state=stoch, belief=deter, batch_size=state.batch_size)
            dist = self.actor.get_dist(td)
        if explore:
            action = dist.sample()
        elif self.action_nvec:
            action = dist.mode
        elif self.discrete:
            action = torch.nn.functional.one_hot(dist.logits.argmax(-1), self.action_dim)
        else:
            action = dist.mean
        if not self.discrete:
            action = action.clamp(-1.0, 1.0)
        td.set("action", action.to(stoch.dtype))
        return td["action"], td
