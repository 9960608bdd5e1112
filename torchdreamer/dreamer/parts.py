"""The parts of one DreamerV3 update: plain functions over tensors and heads.

Each part owns one piece of the official ``Agent.loss``; :func:`torchdreamer.dreamer.loss`
composes them, and the TorchRL adapters (:mod:`torchdreamer.objectives`) compute their
terms through them. The latent is ``stoch`` (the flat stochastic sample) and ``deter``
(the GRU state) throughout; time is the dimension after the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from torchdreamer.functional import (
    clip_free_nats,
    discount_weights,
    kl_balance,
    lambda_return,
    symlog,
)
from torchdreamer.functional.outputs import Bernoulli
from torchdreamer.modules import (
    CategoricalActorHead,
    MultiCategoricalActorHead,
    MultiOneHotCategorical,
    OneHotCategorical,
)
from torchdreamer.modules.rssm import RSSM

__all__ = [
    "actor_loss",
    "continuation_loss",
    "critic_loss",
    "frozen",
    "imagined_returns",
    "imagine",
    "imagine_step",
    "kl_losses",
    "policy",
    "reconstruction_error",
    "replay_returns",
    "sample",
    "slow_value",
]

#: A step of the imagination: ``(stoch, deter) -> (action, stoch', deter', reward')``.
Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


# ------------------------------------------------------------------- world model
def kl_losses(
    posterior_logits: torch.Tensor, prior_logits: torch.Tensor, free_bits: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dynamics and representation KL of each state, clipped below at ``free_bits``,
    and the mean unclipped KL (detached, for logging).

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer.parts import kl_losses
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> dynamic, representation, kl = kl_losses(logits, logits, free_bits=1.0)
        >>> dynamic.shape, float(kl), float(representation.max())
        (torch.Size([2, 3]), 0.0, 1.0)
    """
    dynamic, representation = kl_balance(posterior_logits, prior_logits, free_nats=0.0)
    kl = dynamic.detach().mean()
    return clip_free_nats(dynamic, free_bits), clip_free_nats(representation, free_bits), kl


def reconstruction_error(
    prediction: torch.Tensor, target: torch.Tensor, squash: bool, symlog_prediction: bool
) -> torch.Tensor:
    """``prediction - target`` in the space the loss compares them: symlog space with
    ``squash`` (the prediction taken as symlog'ed already with ``symlog_prediction``),
    else ``[0, 1]`` pixels for ``uint8`` targets.

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer.parts import reconstruction_error
        >>> pixels = torch.full((2,), 255, dtype=torch.uint8)
        >>> reconstruction_error(torch.ones(2), pixels, squash=False, symlog_prediction=False)
        tensor([0., 0.])
    """
    if squash:
        target = symlog(target.float() if not target.is_floating_point() else target)
        if not symlog_prediction:
            prediction = symlog(prediction)
    elif not target.is_floating_point():
        target = target.float() / 255.0
    return prediction - target.detach()


def continuation_loss(
    logit: torch.Tensor, is_terminal: torch.Tensor, target_scale: float = 1.0
) -> torch.Tensor:
    """The mean Bernoulli loss of the continuation ``logit`` against
    ``target_scale * (1 - is_terminal)``.

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer.parts import continuation_loss
        >>> round(float(continuation_loss(torch.zeros(3), torch.zeros(3, dtype=torch.bool))), 4)
        0.6931
    """
    target = (1 - is_terminal.to(logit.dtype)) * target_scale
    return Bernoulli().loss(logit, target).mean()


# ------------------------------------------------------------------- imagination
def policy(actor: nn.Module, stoch: torch.Tensor, deter: torch.Tensor) -> Any:
    """The actor head's distribution over actions at ``(stoch, deter)``: one-hot
    categorical(s) for discrete heads, a normal for the bounded-normal head.

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer import policy
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config())
        >>> stoch, deter = agent.world_model.rssm.initial(torch.Size([3]))
        >>> dist = policy(agent.actor, stoch, deter)
        >>> type(dist).__name__, tuple(dist.sample().shape), dist.sample().sum(-1).tolist()
        ('OneHotCategorical', (3, 2), [1.0, 1.0, 1.0])
        >>> continuous = DreamerAgent((3,), 1, discrete=False, config=Config())
        >>> type(policy(continuous.actor, stoch, deter)).__name__
        'Normal'
    """
    out = actor(stoch, deter)
    if isinstance(actor, MultiCategoricalActorHead):
        return MultiOneHotCategorical(logits=out, nvec=actor.nvec)
    if isinstance(actor, CategoricalActorHead):
        return OneHotCategorical(logits=out)
    loc, scale = out
    return torch.distributions.Normal(loc=loc, scale=scale)


def sample(dist: Any) -> torch.Tensor:
    """A draw of ``dist``, reparameterised where it can be (as TorchRL's random
    interaction draws).

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer.parts import sample
        >>> loc = torch.zeros(2, requires_grad=True)
        >>> sample(torch.distributions.Normal(loc, 1.0)).requires_grad  # rsample: a gradient
        True
        >>> sample(torch.distributions.Bernoulli(probs=torch.full((2,), 0.5))).requires_grad
        False
    """
    return dist.rsample() if dist.has_rsample else dist.sample()


def imagine_step(
    actor: nn.Module, rssm: RSSM, reward: nn.Module, stoch: torch.Tensor, deter: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One imagined step: the policy's action at ``(stoch, deter)``, the prior's next
    state and the reward head's decoded reward ``[..., 1]`` there.

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer import imagine_step
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config())
        >>> model = agent.world_model
        >>> stoch, deter = model.rssm.initial(torch.Size([3]))
        >>> action, stoch2, deter2, reward = imagine_step(
        ...     agent.actor, model.rssm, model.reward, stoch, deter)
        >>> tuple(action.shape), stoch2.shape == stoch.shape, tuple(reward.shape)
        ((3, 2), True, (3, 1))
    """
    action = sample(policy(actor, stoch, deter))
    stoch, deter, _ = rssm.img_step(stoch, deter, action)
    _, value = reward(stoch, deter)
    return action, stoch, deter, value


def imagine(
    step: Step, stoch: torch.Tensor, deter: torch.Tensor, horizon: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one imagination rollout: ``horizon`` steps of ``step`` from ``(stoch, deter)``
    ``[N, ...]``. Returns the states ``s_0 .. s_H`` (``stoch``, ``deter``, ``[N, H + 1,
    ...]``), the actions ``[N, H, ...]`` and the rewards of the states reached ``[N, H]``.

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer.parts import imagine
        >>> def step(stoch, deter):  # action, next stoch, next deter, reward there
        ...     return stoch, stoch + 1, deter, (stoch + 1).sum(-1, keepdim=True)
        >>> stoch, deter, action, reward = imagine(step, torch.zeros(2, 3), torch.zeros(2, 4), 5)
        >>> stoch.shape, action.shape, reward[0].tolist()
        (torch.Size([2, 6, 3]), torch.Size([2, 5, 3]), [3.0, 6.0, 9.0, 12.0, 15.0])
    """
    stochs, deters, actions, rewards = [stoch], [deter], [], []
    for _ in range(horizon):
        action, stoch, deter, reward = step(stoch, deter)
        stochs.append(stoch)
        deters.append(deter)
        actions.append(action)
        rewards.append(reward)
    dim = stoch.ndim - 1
    stacked = (torch.stack(part, dim) for part in (stochs, deters, actions, rewards))
    stoch, deter, action, reward = stacked
    return stoch, deter, action, reward.squeeze(-1)


@contextmanager
def frozen(*modules: Any) -> Iterator[None]:
    """Stop parameter gradients of ``modules`` inside the block; inputs still get them.

    Each parameter's own ``requires_grad`` is restored on exit, so parameters the user
    froze stay frozen. Objects that are not ``nn.Module`` are ignored.

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer.parts import frozen
        >>> layer = torch.nn.Linear(2, 2)
        >>> with frozen(layer):
        ...     layer.weight.requires_grad
        False
        >>> layer.weight.requires_grad
        True
    """
    params = [
        p
        for module in modules
        if isinstance(module, nn.Module)
        for p in module.parameters()
        if p.requires_grad
    ]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def actor_loss(
    returns: torch.Tensor,
    value: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    entropy: torch.Tensor,
    entropy_bonus: float,
    log_prob: torch.Tensor | None,
) -> torch.Tensor:
    """The actor's loss over ``[N, H]`` imagined states: REINFORCE,
    ``-w (log π(a|s) sg((R - v) / S) + η H)``, when ``log_prob`` is given, else the
    returns' own gradient through the dynamics, ``-w (R / S + η H)``. ``value`` holds
    the values of ``s_0 .. s_H`` (``[N, H + 1]``), ``scale`` is ``S``.

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer.parts import actor_loss
        >>> ones, values = torch.ones(2, 3), torch.ones(2, 4)
        >>> float(actor_loss(2 * ones, values, ones, torch.tensor(1.0), 0 * ones, 0.0, ones))
        -1.0
    """
    if log_prob is not None:
        advantage = ((returns - value[..., :-1]) / scale).detach()
        objective = log_prob * advantage
    else:
        objective = returns / scale
    return -(weight * (objective + entropy_bonus * entropy)).mean()


def imagined_returns(
    reward: torch.Tensor,
    continuation: torch.Tensor,
    value: torch.Tensor,
    gamma: torch.Tensor,
    lmbda: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The λ-returns of states ``0 .. H-1`` and their loss weights ``γ^t Π c``, from
    the rewards of the states reached ``[N, H]`` and the continuations and values of
    ``s_0 .. s_H`` ``[N, H + 1]``.

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer.parts import imagined_returns
        >>> returns, weight = imagined_returns(
        ...     torch.ones(1, 2), torch.ones(1, 3), torch.zeros(1, 3), torch.tensor(0.5), 1.0)
        >>> returns.tolist(), weight.tolist()
        ([[1.5, 1.0]], [[1.0, 0.5]])
    """
    reward = torch.cat([torch.zeros_like(reward[..., :1]), reward], dim=-1)
    returns = lambda_return(reward, continuation, value, gamma, lmbda)
    return returns, discount_weights(continuation[..., :-1], gamma).detach()


# ------------------------------------------------------------------------- critic
def slow_value(
    critic: nn.Module, params: dict[str, torch.Tensor], stoch: torch.Tensor, deter: torch.Tensor
) -> torch.Tensor:
    """The slow critic's decoded value ``[...]``: ``critic`` run on its EMA ``params``.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import TwoHotHead
        >>> from torchdreamer.dreamer.parts import slow_value
        >>> critic = TwoHotHead(4, hidden=8)
        >>> params = {k: v.detach().clone() for k, v in critic.state_dict().items()}
        >>> slow_value(critic, params, torch.zeros(2, 2), torch.zeros(2, 2)).shape
        torch.Size([2])
    """
    with torch.no_grad():
        _, value = torch.func.functional_call(critic, params, (stoch, deter))
    return value.reshape(value.shape[:-1])


def critic_loss(
    head: Any,
    prediction: torch.Tensor,
    target: torch.Tensor,
    slow_target: torch.Tensor | None,
    slow_weight: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-step critic loss toward ``target`` plus ``slow_weight`` times the term toward
    the slow critic's ``slow_target``, and that term alone (``None`` without one). Both
    targets share the head's work (one softmax pass for two-hot).

    Examples:
        >>> import torch
        >>> from torchdreamer.functional.outputs import TwoHot
        >>> from torchdreamer.dreamer.parts import critic_loss
        >>> logits, zeros = torch.zeros(2, 255), torch.zeros(2)
        >>> loss, slow = critic_loss(TwoHot(255), logits, zeros, zeros, 1.0)
        >>> bool(torch.allclose(loss, 2 * slow))
        True
    """
    if slow_target is None:
        (loss,) = head.losses(prediction, target)
        return loss, None
    loss, slow = head.losses(prediction, target, slow_target)
    return loss + slow_weight * slow, slow


def replay_returns(
    reward: torch.Tensor,
    is_last: torch.Tensor,
    is_terminal: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float,
    lmbda: float,
) -> torch.Tensor:
    """λ-returns along replayed ``[B, T]`` sequences (float flags), bootstrapped from
    each state's first imagined return, cut at episode ends: targets of states
    ``0 .. T-2``.

    Examples:
        >>> import torch
        >>> from torchdreamer.dreamer.parts import replay_returns
        >>> flags = torch.zeros(1, 3)
        >>> replay_returns(torch.ones(1, 3), flags, flags, torch.zeros(1, 3), 0.5, 1.0)
        tensor([[1.5000, 1.0000]])
    """
    return lambda_return(reward, 1 - is_terminal, bootstrap, gamma, lmbda, is_last=is_last)
