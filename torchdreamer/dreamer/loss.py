"""DreamerV3's loss of one update, top to bottom: world model, imagination, replay.

:func:`loss` is the official ``Agent.loss`` in three acts over the parts of
:mod:`torchdreamer.dreamer.parts`; the networks it trains are :class:`Networks`, its
hyperparameters :class:`Settings` (filled from ``Config`` by the agent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import nn

from torchdreamer import keys
from torchdreamer.dreamer.parts import (
    Step,
    actor_loss,
    continuation_loss,
    critic_loss,
    frozen,
    imagine,
    imagine_step,
    imagined_returns,
    kl_losses,
    policy,
    reconstruction_error,
    replay_returns,
    slow_value,
)
from torchdreamer.dreamer.return_scale import ReturnScale
from torchdreamer.functional.outputs import TwoHot
from torchdreamer.modules import TwoHotHead, WorldModel

__all__ = ["Networks", "Settings", "loss"]

Terms = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Networks:
    """What one update trains and reads.

    Attributes:
        world_model: Encoder, RSSM, decoder, reward and continuation heads.
        actor: The actor head (its distribution: :func:`~torchdreamer.dreamer.parts.policy`).
        critic: The critic, a two-hot head of ``(stoch, deter)``.
        slow_critic: The critic's EMA parameters, by name (read with ``functional_call``).
        retnorm: The return scale of the actor's advantages.

    Examples:
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> nets = DreamerAgent((4,), 2, discrete=True, config=Config()).networks()
        >>> type(nets.critic).__name__, type(nets.retnorm).__name__
        ('TwoHotHead', 'ReturnScale')
        >>> # the slow critic: a copy of each of the critic's tensors, under the same name
        >>> sorted(nets.slow_critic) == sorted(nets.critic.state_dict())
        True
    """

    world_model: WorldModel
    actor: nn.Module
    critic: TwoHotHead
    slow_critic: dict[str, torch.Tensor]
    retnorm: ReturnScale


@dataclass(frozen=True)
class Settings:
    """The update's hyperparameters (``Config``'s, named as there).

    Attributes:
        imagination_horizon: Imagined steps ``H``.
        horizon: Discount horizon: ``gamma = 1 - 1 / horizon``.
        lmbda: λ of the returns, imagined and replayed.
        entropy_bonus: The actor's entropy scale ``η``.
        reinforce: REINFORCE (else gradients through the dynamics).
        slow_critic_weight: Scale of the critic's term toward its slow copy.
        replay_value_scale: Scale of the replay value loss (0 leaves it out).
        free_bits: Lower clip of the KL terms (official 1).
        dynamic_scale: Scale of the dynamics KL (official 1).
        representation_scale: Scale of the representation KL (official 0.1).

    Examples:
        >>> import dataclasses
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> settings = DreamerAgent((4,), 2, discrete=True, config=Config(lmbda=0.9)).settings
        >>> settings.lmbda, settings.imagination_horizon, settings.free_bits
        (0.9, 15, 1.0)
        >>> dataclasses.replace(settings, entropy_bonus=1e-3).entropy_bonus  # one term changed
        0.001
    """

    imagination_horizon: int
    horizon: float
    lmbda: float
    entropy_bonus: float
    reinforce: bool
    slow_critic_weight: float
    replay_value_scale: float
    free_bits: float = 1.0
    dynamic_scale: float = 1.0
    representation_scale: float = 0.1


def loss(
    nets: Networks,
    batch: TensorDictBase,
    start: tuple[torch.Tensor, torch.Tensor],
    settings: Settings,
    *,
    step: Step | None = None,
    obs_steps: Step | None = None,
) -> tuple[Terms, Terms, tuple[torch.Tensor, torch.Tensor]]:
    """The loss terms of one update on a ``[B, T]`` replay batch, the detached metrics
    and the posterior ``(stoch, deter)`` latents (detached).

    ``batch`` holds :data:`~torchdreamer.keys.OBSERVATION`, ``PREV_ACTION``,
    ``IS_FIRST``, ``REWARD``, ``IS_LAST`` and ``IS_TERMINAL``; ``start`` is the latent
    before its first step. ``step`` is the imagination's step and ``obs_steps`` the
    filter of a chunk of replayed steps (compiled or not; default: the networks' own).
    The objective is the sum of the terms.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchdreamer.dreamer import loss
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config(imagination_horizon=3))
        >>> flags = torch.zeros(2, 5, dtype=torch.bool)
        >>> batch = TensorDict(observation=torch.randn(2, 5, 4), prev_action=torch.zeros(2, 5, 2),
        ...                    is_first=flags, reward=torch.zeros(2, 5), is_last=flags,
        ...                    is_terminal=flags, batch_size=[2, 5])
        >>> start = agent.world_model.rssm.initial(torch.Size([2]))
        >>> terms, metrics, (stoch, deter) = loss(agent.networks(), batch, start, agent.settings)
        >>> sorted(terms)[:3], tuple(stoch.shape[:2])
        (['loss_actor', 'loss_model_continue', 'loss_model_dynamic'], (2, 5))
    """
    # 1. World model: filter the replayed sequence; reconstruct, predict, regularise.
    model = nets.world_model
    out = model(
        batch.get(keys.OBSERVATION),
        batch.get(keys.PREV_ACTION),
        batch.get(keys.IS_FIRST),
        *(part.unsqueeze(1) for part in start),
        obs_steps=obs_steps,
    )
    posterior, prior, reward_logits, continuation_logit, reconstruction, stoch, deter = out
    terms = {
        "loss_model_reco": reconstruction_loss(model, reconstruction, batch),
        "loss_model_reward": reward_loss(model, reward_logits, batch),
    }
    dynamic, representation, kl = kl_losses(posterior, prior, settings.free_bits)
    terms["loss_model_dynamic"] = settings.dynamic_scale * dynamic.mean()
    terms["loss_model_representation"] = settings.representation_scale * representation.mean()
    terms["loss_model_continue"] = continuation_loss(
        continuation_logit.squeeze(-1), batch.get(keys.IS_TERMINAL)
    )
    metrics = {"kl": kl}

    # 2. Imagination: every posterior state, detached, starts an imagined trajectory;
    # the actor follows the λ-returns, the critic learns them.
    starts = stoch.detach().flatten(0, 1), deter.detach().flatten(0, 1)
    imagined = imagination(nets, starts, settings, step)
    actor_terms = actor_part(nets, imagined, settings)
    critic_terms = critic_part(nets, imagined, settings)

    # 3. Replay: the critic on the replayed sequence, bootstrapped by the imagined
    # returns, through the posterior features (it trains the representation too).
    bootstrap = imagined["returns"][..., 0].reshape(batch.batch_size)
    replay_terms = replay_part(nets, batch, (stoch, deter), bootstrap, settings)

    for part in (actor_terms, critic_terms, replay_terms):
        terms.update({k: v for k, v in part.items() if k.startswith("loss_")})
        metrics.update({k: v.detach() for k, v in part.items() if not k.startswith("loss_")})
    return terms, metrics, (stoch.detach(), deter.detach())


def reconstruction_loss(
    model: WorldModel, reconstruction: torch.Tensor | TensorDictBase, batch: TensorDictBase
) -> torch.Tensor:
    """The squared reconstruction error, summed over each observation's features and
    over the observation keys, averaged over the batch: vectors in symlog space (the
    decoders predict there), images as pixels in ``[0, 1]``."""
    observation = batch.get(keys.OBSERVATION)
    if model.is_dict:
        names = sorted(model.observation_shape)
        heads = [
            (reconstruction.get(k), observation.get(k), len(model.observation_shape[k]) == 1)
            for k in names
        ]
    else:
        heads = [(reconstruction, observation, not model.is_image)]
    total = 0.0
    for prediction, target, squash in heads:
        error = reconstruction_error(prediction, target, squash, symlog_prediction=True)
        total = total + error.square().reshape(*batch.batch_size, -1).sum(-1).mean()
    return total


def reward_loss(model: WorldModel, logits: torch.Tensor, batch: TensorDictBase) -> torch.Tensor:
    """The reward head's two-hot loss against the replayed rewards."""
    target = batch.get(keys.REWARD)
    target = target.squeeze(-1) if target.shape != logits.shape[:-1] else target
    return TwoHot(model.reward.bins).loss(logits, target).mean()


def imagination(
    nets: Networks,
    start: tuple[torch.Tensor, torch.Tensor],
    settings: Settings,
    step: Step | None,
) -> dict[str, torch.Tensor]:
    """Imagine ``H`` steps from each start; the critic's values and the continuations
    of ``s_0 .. s_H``, the λ-returns and their weights, and the critic's logits of
    ``s_0 .. s_H`` (with their gradient) under REINFORCE.

    With REINFORCE nothing here needs a gradient but the critic's logits: returns only
    enter the stop-gradient advantage. Otherwise the returns carry the actor's gradient
    through the frozen world model and critic.
    """
    model, critic = nets.world_model, nets.critic
    if step is None:

        def step(stoch: torch.Tensor, deter: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return imagine_step(nets.actor, model.rssm, model.reward, stoch, deter)

    grad, reinforce = torch.is_grad_enabled(), settings.reinforce
    held = [model.rssm, model.reward, model.continuation, *(() if reinforce else (critic,))]
    with frozen(*held), torch.set_grad_enabled(grad and not reinforce):
        stoch, deter, action, reward = imagine(step, *start, settings.imagination_horizon)
        with torch.set_grad_enabled(grad):
            logits, value = critic(stoch, deter)
        value = value.squeeze(-1)
        if reinforce:
            value = value.detach()
        _, continuation = model.continuation(stoch, deter)
        continuation = continuation.squeeze(-1)
        gamma = torch.tensor(1 - 1 / settings.horizon, device=value.device).to(value)
        lmbda = torch.tensor(settings.lmbda, device=value.device).to(value)
        returns, weight = imagined_returns(reward, continuation, value, gamma, lmbda)
    horizon = settings.imagination_horizon
    return {
        "stoch": stoch.narrow(1, 0, horizon).contiguous(),
        "deter": deter.narrow(1, 0, horizon).contiguous(),
        "action": action,
        "value": value,
        "logits": logits,
        "continuation": continuation,
        "returns": returns,
        "weight": weight,
    }


def actor_part(nets: Networks, imagined: dict[str, torch.Tensor], settings: Settings) -> Terms:
    """The actor loss on the imagined states (their policy re-evaluated, detached),
    with its metrics; moves the return scale in training mode."""
    returns, weight, live = imagined["returns"], imagined["weight"], imagined["continuation"]
    retnorm = nets.retnorm
    if retnorm.training:
        retnorm.update(returns)
    scale = retnorm.scale().to(returns)
    entropy, log_prob = torch.zeros_like(returns), None
    if settings.reinforce or settings.entropy_bonus:
        dist = policy(nets.actor, imagined["stoch"].detach(), imagined["deter"].detach())
        if settings.entropy_bonus > 0:
            entropy = _per_state(dist.entropy(), returns)
        if settings.reinforce:
            log_prob = _per_state(dist.log_prob(imagined["action"].detach()), returns)
    value = imagined["value"]
    return {
        "loss_actor": actor_loss(
            returns, value, weight, scale, entropy, settings.entropy_bonus, log_prob
        ),
        "actor_entropy": (weight * entropy).detach().mean(),
        "return_low": retnorm.low.detach().clone(),
        "return_high": retnorm.high.detach().clone(),
        "return_scale": scale.detach(),
        "continuation_mean": live[..., 1:].detach().mean(),
        "lambda_target_mean": returns.detach().mean(),
    }


def _per_state(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-state ``values``: summed over the action dimensions where they have them."""
    return values.sum(-1) if values.dim() > like.dim() else values


def critic_part(nets: Networks, imagined: dict[str, torch.Tensor], settings: Settings) -> Terms:
    """The critic's loss toward the imagined λ-returns (weighted as the actor's) and
    toward its slow copy's values, with its metrics."""
    stoch, deter = imagined["stoch"], imagined["deter"]
    steps = stoch.shape[1]
    if settings.reinforce:  # the imagination's critic pass, with its gradient
        logits = imagined["logits"].narrow(1, 0, steps)
        value = imagined["value"].narrow(1, 0, steps)
    else:
        logits, value = nets.critic(stoch.detach(), deter.detach())
        value = value.squeeze(-1)
    target, weight = imagined["returns"].detach(), imagined["weight"]
    head = TwoHot(nets.critic.bins)
    terms: Terms = {}
    if settings.slow_critic_weight > 0:
        slow = slow_value(nets.critic, nets.slow_critic, stoch, deter)
        loss, slow = critic_loss(head, logits, target, slow, settings.slow_critic_weight)
        loss, slow = loss * weight, slow * weight
        terms["value_slow_loss"] = slow.mean().detach()
        terms["loss_value"] = loss.mean()
    else:
        terms["loss_value"] = head.loss(logits, target, weight, "mean")
        terms["value_slow_loss"] = torch.zeros_like(terms["loss_value"]).detach()
    terms["value_mean"] = value.detach().mean()
    terms["target_mean"] = target.mean()
    return terms


def replay_part(
    nets: Networks,
    batch: TensorDictBase,
    posterior: tuple[torch.Tensor, torch.Tensor],
    bootstrap: torch.Tensor,
    settings: Settings,
) -> Terms:
    """The critic on the replayed states ``0 .. T-2`` toward the replayed λ-returns
    (episode ends masked out), scaled by ``replay_value_scale``; unscaled as
    ``replay_value``."""
    scale = settings.replay_value_scale
    if not scale:
        zero = bootstrap.new_zeros(())
        return {"loss_replay_value": scale * zero, "replay_value": zero}
    flags = [
        _float(batch.get(key).detach(), bootstrap)
        for key in (keys.REWARD, keys.IS_LAST, keys.IS_TERMINAL)
    ]
    reward, is_last, is_terminal = flags
    target = replay_returns(
        reward, is_last, is_terminal, bootstrap, 1 - 1 / settings.horizon, settings.lmbda
    )
    stoch, deter = posterior
    steps = bootstrap.shape[1] - 1
    logits, _ = nets.critic(stoch, deter)
    slow = None
    if settings.slow_critic_weight > 0:
        slow = slow_value(nets.critic, nets.slow_critic, stoch, deter).narrow(1, 0, steps)
    head = TwoHot(nets.critic.bins)
    loss, _ = critic_loss(
        head, logits.narrow(1, 0, steps), target, slow, settings.slow_critic_weight
    )
    replay = ((1 - is_last[..., :-1]) * loss).mean()
    return {
        "replay_target_mean": target.mean(),
        "loss_replay_value": scale * replay,
        "replay_value": replay,
    }


def _float(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` shaped as ``like`` (``[B, T]``), booleans as float32."""
    value = value.squeeze(-1) if value.shape != like.shape else value
    return value.to(torch.float32 if value.dtype == torch.bool else value.dtype)
