"""The DreamerV3 agent: networks, the three losses, one update, and acting."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from torch import nn

from torchdreamer import keys
from torchdreamer.dreamer import Networks, ReturnScale, Settings, loss, policy
from torchdreamer.dreamer.parts import imagine_step
from torchdreamer.modules import (
    BoundedNormalActorHead,
    CategoricalActorHead,
    MultiCategoricalActorHead,
    MultiDecoder,
    MultiEncoder,
    TwoHotHead,
    WorldModel,
)
from torchdreamer.training.config import Config, resolve_precision
from torchdreamer.training.distributed import concat_over_ranks, mean_over_ranks
from torchdreamer.training.optim import DreamerV3Optimizer

if TYPE_CHECKING:
    from torchdreamer.envs import EnvSpec

__all__ = ["DreamerAgent"]

#: The replay column of the posterior latent (``stoch``, ``deter``) stored with each
#: step the policy acted on (the official ``replay_context`` entries).
LATENT = "latent"
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
        self.action_nvec = tuple(int(n) for n in action_nvec)
        if self.action_nvec and (not discrete or sum(self.action_nvec) != action_dim):
            raise ValueError(
                f"multi-discrete actions of sizes {self.action_nvec} need discrete=True and "
                f"action_dim={sum(self.action_nvec)} (their sum); got discrete={discrete}, "
                f"action_dim={action_dim}."
            )
        self.discrete, self.action_dim = discrete, action_dim
        size = config.size
        self.world_model = WorldModel(observation_shape, action_dim, size)
        features = self.world_model.rssm.feature_size
        self.actor = _actor_head(features, action_dim, discrete, self.action_nvec, size)
        self.critic = TwoHotHead(features, size.units, size.critic_layers)
        # The critic's EMA: plain tensors held as buffers, which only update() moves.
        slow = TensorDict.from_module(self.critic).detach().clone()
        self.slow_critic = TensorDictParams(slow, no_convert=True)
        self.retnorm = ReturnScale(reduce=concat_over_ranks)
        self.config = config
        self.settings = Settings(
            imagination_horizon=config.imagination_horizon,
            horizon=config.horizon,
            lmbda=config.lmbda,
            entropy_bonus=config.entropy_bonus,
            # Discrete samples carry no gradient: REINFORCE under either actor_grad.
            reinforce=discrete or config.actor_grad == "reinforce",
            slow_critic_weight=config.slow_critic_weight,
            replay_value_scale=config.replay_value_scale,
        )
        """The update's hyperparameters, from ``config``."""
        self.latents: TensorDict | None = None
        """The posterior latents of the steps the last :meth:`losses` trained on (``stoch``,
        ``deter``, ``[B, T]``, float32, detached, on the agent's device): what training
        writes back into the replay (:meth:`SequenceReplay.update`). Under a CUDA graph
        (:class:`~torchdreamer.training.static_update.StaticUpdate`), the graph's output,
        refreshed by every replay of it."""
        self._steps: dict[str, Any] = {}
        self.optimizer = self._optimizer()
        self.register_load_state_dict_pre_hook(_from_old_names)

    def _optimizer(self, laprop: Any = None) -> DreamerV3Optimizer:
        """The optimiser of :meth:`trainable_parameters` under ``config``: the critic's
        at ``critic_lr``, the others at ``lr``; ``laprop``: its arithmetic, compiled or
        not."""
        config = self.config
        groups: list[dict] = [{"params": self.trainable_parameters()}]
        if config.critic_lr != config.lr:  # one group where the rates agree, as before
            others = (self.world_model, self.actor)
            groups = [
                {"params": [p for module in others for p in module.parameters()]},
                {"params": list(self.critic.parameters()), "lr": config.critic_lr},
            ]
        return DreamerV3Optimizer(
            groups,
            lr=config.lr,
            agc=config.agc,
            beta1=config.beta1,
            beta2=config.beta2,
            eps=config.eps,
            warmup_steps=config.warmup,
            laprop=laprop,
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
    def networks(self) -> Networks:
        """The networks :func:`torchdreamer.dreamer.loss` trains."""
        slow = dict(self.slow_critic.flatten_keys(".").items())
        return Networks(self.world_model, self.actor, self.critic, slow, self.retnorm)

    def losses(self, batch: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss of one update and its detached terms, by name.

        ``batch`` is a replay batch in the official per-step layout (``observation``,
        ``prev_action``, ``is_first``, ``reward``, ``is_last``, ``is_terminal``);
        :func:`torchdreamer.dreamer.loss` computes the terms. With a :data:`LATENT`
        column (``Config.replay_context`` 1), the batch is ``[B, T + 1]``: the latent
        stored with step 0 of each window starts the world model, and steps 1 to
        ``T`` are trained (step 1's ``prev_action`` is the action taken at step 0);
        without one, the ``[B, T]`` steps are trained from the zero state, the first
        flagged ``is_first`` (the official replay's first step of every window). The
        trained steps' posterior latents are left in :attr:`latents`.
        """
        trained, start = self._trained(batch)
        with self.autocast():
            terms, metrics, (stoch, deter) = loss(
                self.networks(),
                trained,
                start,
                self.settings,
                step=self._steps.get("imagine"),
                obs_steps=self._steps.get("obs_steps"),
            )
        total = sum(terms.values())
        latents = {keys.STOCH: stoch.float(), keys.DETER: deter.float()}
        self.latents = TensorDict(latents, batch_size=stoch.shape[:2])
        metrics = {**{k: v.detach() for k, v in terms.items()}, **metrics}
        return total, metrics

    def _trained(
        self, batch: TensorDictBase
    ) -> tuple[TensorDictBase, tuple[torch.Tensor, torch.Tensor]]:
        """The steps :meth:`losses` trains on and the latent before the first."""
        if LATENT in batch.keys():
            # The replay renames an older checkpoint's latent columns when it loads them.
            latent = batch.get(LATENT)
            start = latent.get(keys.STOCH)[:, 0], latent.get(keys.DETER)[:, 0]
            return batch[:, 1:].exclude(LATENT, _INDEX), start
        trained = batch.exclude(_INDEX)
        first = trained.get(keys.IS_FIRST).clone()
        first[:, 0] = True
        trained.set(keys.IS_FIRST, first)
        return trained, self.world_model.rssm.initial(batch.batch_size[:1], first.device)

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
        self.update_slow_critic()
        metrics["loss"] = total.detach()
        return list(metrics), torch.stack([v.reshape(()).float() for v in metrics.values()])

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        """Move the slow critic toward the critic by ``Config.slow_critic_tau`` (an EMA)."""
        weight = 1 - (1 - self.config.slow_critic_tau)  # as TorchRL's SoftUpdate computes it
        self.slow_critic.data.lerp_(TensorDict.from_module(self.critic).data, weight)

    @staticmethod
    def read_metrics(names: list[str], values: torch.Tensor) -> dict[str, float]:
        """:meth:`train_step`'s metrics as numbers, averaged over ranks under ``torchrun``:
        the one read back to the host (on a GPU, it waits for the step)."""
        return dict(zip(names, mean_over_ranks(values).tolist(), strict=True))

    # -------------------------------------------------------------------- acting
    def initial_state(self, batch: int) -> TensorDict:
        """Zero latent (``stoch``, ``deter``) and previous action of ``batch`` environments."""
        device = next(self.parameters()).device
        stoch, deter = self.world_model.rssm.initial(torch.Size([batch]), device)
        action = torch.zeros(batch, self.action_dim, device=device)
        return TensorDict(
            {keys.STOCH: stoch, keys.DETER: deter, keys.ACTION: action}, batch_size=[batch]
        )

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
        concatenated; or continuous in ``[-1, 1]``) and the new state (``stoch``,
        ``deter``, ``action``), which remembers the action as the next step's previous
        action. ``explore=False`` takes the most likely action (of each component).
        """
        state = _renamed_latent(state)
        obs_step = self._steps.get("obs_step", self.world_model.rssm.obs_step)
        with self.autocast():
            stoch, deter, _ = obs_step(
                state[keys.STOCH],
                state[keys.DETER],
                state[keys.ACTION],
                self.world_model.embed(observation),
                is_first,
            )
            dist = policy(self.actor, stoch, deter)
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
        action = action.to(stoch.dtype)
        latent = {keys.STOCH: stoch, keys.DETER: deter, keys.ACTION: action}
        return action, TensorDict(latent, batch_size=state.batch_size)

    # ------------------------------------------------------------------ compiling
    def compile_update(self, **options: Any) -> None:
        """Compile the update's and acting's hot regions with ``torch.compile(**options)``
        (see :func:`~torchdreamer.training.compiled.compile_agent`).

        The RSSM's filtering (a chunk of steps, and one step for acting), every network
        outside the RSSM, the optimiser's arithmetic and, for discrete actions, the
        imagination's step (actor, sample, prior step, reward: one graph) are passed to
        :func:`~torchdreamer.dreamer.loss` and to the optimiser compiled. Parameters,
        buffers and ``state_dict`` are untouched.
        """
        model = self.world_model
        # The compiled obs_steps traces through obs_step: a chunk of steps is one graph.
        self._steps["obs_steps"] = torch.compile(model.rssm.obs_steps, **options)
        self._steps["obs_step"] = torch.compile(model.rssm.obs_step, **options)
        for network in self._networks():
            # A two-hot head's logits only: the losses read its decoded values detached
            # (or not at all), and in one graph every update would differentiate the
            # decoding (a softmax over every bin of every state) to get zeros.
            (network.mlp if isinstance(network, TwoHotHead) else network).compile(**options)
        if self.discrete:
            step = partial(imagine_step, self.actor, model.rssm, model.reward)
            self._steps["imagine"] = torch.compile(step, **options)
        state = self.optimizer.state_dict()
        laprop = torch.compile(DreamerV3Optimizer.laprop, **options)
        self.optimizer = self._optimizer(laprop=laprop)
        self.optimizer.load_state_dict(state)

    def _networks(self) -> list[nn.Module]:
        """The networks outside the RSSM (a dict observation's encoder and decoder build
        tensordicts: their MLP and CNN parts)."""
        model = self.world_model
        networks = []
        for coder in (model.encoder, model.decoder):
            if isinstance(coder, MultiEncoder | MultiDecoder):
                parts = [getattr(coder, part) for part in ("mlp", "cnn") if hasattr(coder, part)]
                networks += parts
            else:
                networks.append(coder)
        return [*networks, model.reward, model.continuation, self.actor, self.critic]


def _actor_head(
    features: int, action_dim: int, discrete: bool, nvec: tuple[int, ...], size: Any
) -> nn.Module:
    """The actor head: one categorical per component, one categorical, or a bounded normal."""
    if nvec:
        return MultiCategoricalActorHead(features, nvec, size.units, size.actor_layers)
    if discrete:
        return CategoricalActorHead(features, action_dim, size.units, size.actor_layers)
    return BoundedNormalActorHead(features, action_dim, size.units, size.actor_layers)


def _renamed_latent(latent: TensorDictBase) -> TensorDictBase:
    """``latent`` with the names before the rename (``state``, ``belief``) read as
    ``stoch``, ``deter``: an acting state from an older checkpoint."""
    old = [key for key in keys.RENAMED_LATENT if key in latent.keys()]
    if not old:
        return latent
    latent = latent.copy()
    for key in old:
        latent.rename_key_(key, keys.RENAMED_LATENT[key])
    return latent


#: Where the agent's ``state_dict`` kept its entries before the recipe
#: (``torchdreamer.dreamer``): its TorchRL-style losses held the critic's EMA and the
#: return scale, and the actor and critic were tensordict modules.
_OLD_PREFIXES = {
    "actor.module.0.module.": "actor.",
    "critic.module.": "critic.",
    "value_loss.target_value_model_params.module.": "slow_critic.",
    "actor_loss.retnorm.": "retnorm.",
}
#: The old losses' other entries: copies of the networks and constants.
_OLD_COPIES = ("model_loss.", "actor_loss.", "value_loss.")


def _from_old_names(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load a checkpoint saved before the recipe: rename its entries (see
    :data:`_OLD_PREFIXES`) and drop the old losses' copies, in place."""
    if not any(key.startswith(prefix + old) for key in state_dict for old in _OLD_COPIES):
        return
    for key in list(state_dict):
        name = key[len(prefix) :]
        if not key.startswith(prefix):
            continue
        for old, new in _OLD_PREFIXES.items():
            if name.startswith(old):
                value = state_dict.pop(key)
                value = value.reshape(()) if new == "retnorm." else value
                state_dict[prefix + new + name[len(old) :]] = value
                break
        else:
            if name.startswith(_OLD_COPIES):
                del state_dict[key]
