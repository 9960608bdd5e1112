"""The agent's hot regions under ``torch.compile``: a fast path beside the eager code.

An update runs the RSSM's filtering step 64 times (the replay sequence) and its prior
step 15 times (imagination), each a few small matmuls and many pointwise operators,
then every head on the results. :func:`compile_agent` compiles those regions with
inductor, in place: :meth:`RSSM.obs_steps` (8 filtering steps as one graph: their
matmuls, norms, gates, unimix and Gumbel sampling, and in the backward one gradient per
parameter instead of 8), :meth:`RSSM.img_step` and :meth:`RSSM.obs_step` (one step, for
imagination and acting), the forward of every network outside the RSSM (encoder,
decoder, reward, continuation, actor, critic; a two-hot head's logits and decoded
value as two graphs, so that a value read detached costs no backward), the optimiser's
arithmetic (:meth:`DreamerV3Optimizer._laprop`) and, for discrete actions, the actor loss's
imagination: one graph per imagined step (actor, sample, prior step, reward) in place of
the generic rollout's tensordict modules (:class:`_Imagination`, tested equal to it).
What is compiled is the same code as the eager path: nothing else is rewritten here.

Random draws stay eager (inductor's ``fallback_random``), so a compiled update draws
exactly what an eager one draws; the two then agree to float32 rounding
(``tests/test_compiled.py``). Graphs are made per shape and grad mode on first use
(update, acting, evaluation) and reused after: no graph breaks, no recompilation in
steady state (tested with ``torch._dynamo`` counters).

:func:`compiles` decides ``Config.compile``'s ``auto`` from measurements
(``benchmarks/compiled_update.py``): on CPU with vector observations, compiled when the
run makes enough updates to repay the compile time; eager for image observations (the
convolutions dominate: compiled is no faster), on CUDA and under ``torchrun`` until they
have been measured (``--compile on`` tries them).
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch._inductor.config
from tensordict import TensorDict, TensorDictBase
from torch import nn

from torchdreamer.modules import MultiDecoder, MultiEncoder, TwoHotHead
from torchdreamer.training.agent import DreamerAgent
from torchdreamer.training.config import Config

__all__ = ["BREAK_EVEN_UPDATES", "compile_agent", "compiles", "has_images"]

#: ``auto`` compiles CPU runs planned to make at least this many updates: a line between
#: the compile's break-even (its time over the time it saves per update) in an empty
#: inductor cache and the one with the cache a previous run left (docs/performance.md,
#: "Compiled update", has the figures).
BREAK_EVEN_UPDATES = 1000

# For every region compiled here. Dynamo keeps the graphs of a function in one cache
# shared by all its callers and runs it eager past 8 graphs: every MLP of the agent
# (encoder, decoder, heads) runs ``MLP.forward``, compiled per grad mode and batch shape
# (update, acting, evaluation), more than 8 graphs in all. Isolated, each network's
# region keeps its own graphs and its own limit (a torch without `isolate_recompiles`:
# the shared cache).
_ISOLATED = (
    {"isolate_recompiles": True}
    if "isolate_recompiles" in inspect.signature(torch.compile).parameters
    else {}
)


def compiles(
    config: Config, device: torch.device, images: bool, distributed: bool = False
) -> tuple[bool, str]:
    """Whether ``config.compile`` compiles the update on ``device``, and why; ``images``:
    whether the observations hold images, ``distributed``: whether ``torchrun`` started
    the run.

    Examples:
        >>> import torch
        >>> from torchdreamer.training import Config
        >>> from torchdreamer.training.compiled import compiles
        >>> compiles(Config(compile="on"), torch.device("cpu"), images=True)
        (True, '--compile on')
        >>> compiles(Config(), torch.device("cpu"), images=True)
        (False, 'auto, image observations: compiled is no faster on CPU')
        >>> compiles(Config(steps=1000), torch.device("cuda"), images=False)[1]
        'auto, on cuda: compiled is not measured there yet'
    """
    if config.compile == "on":
        return True, "--compile on"
    if config.compile == "off":
        return False, "--compile off"
    if distributed:
        return False, "auto, under torchrun: compiled is not measured there yet"
    if device.type != "cpu":
        return False, f"auto, on {device.type}: compiled is not measured there yet"
    if images:
        # Measured (benchmarks/compiled_update.py --image): the convolutions dominate,
        # and the compiled update is no faster.
        return False, "auto, image observations: compiled is no faster on CPU"
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return False, "auto: inductor needs a C++ compiler; install g++ to compile"
    updates = config.steps * config.train_ratio / (config.batch_size * config.batch_length)
    if updates < BREAK_EVEN_UPDATES:
        return False, f"auto: {updates:.0f} updates planned, < {BREAK_EVEN_UPDATES}"
    return True, f"auto: {updates:.0f} updates planned, >= {BREAK_EVEN_UPDATES}"


def has_images(agent: DreamerAgent) -> bool:
    """Whether ``agent`` sees images (alone or as keys of a dict observation).

    Examples:
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> from torchdreamer.training.compiled import has_images
        >>> has_images(DreamerAgent({"joints": (3,), "camera": (16, 16, 3)}, 2,
        ...                         discrete=True, config=Config()))
        True
    """
    model = agent.world_model
    return model.is_image or (model.is_dict and bool(model.encoder.image_keys))


def _compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` compiled with a cache of graphs of its own (see ``_ISOLATED``)."""
    return torch.compile(function, **_ISOLATED)


def _networks(agent: DreamerAgent) -> list[nn.Module]:
    """The networks outside the RSSM whose forward is compiled (a dict observation's
    encoder and decoder build tensordicts: their MLP and CNN parts are compiled)."""
    model = agent.world_model
    networks = []
    for coder in (model.encoder, model.decoder):
        if isinstance(coder, MultiEncoder | MultiDecoder):
            networks += [getattr(coder, part) for part in ("mlp", "cnn") if hasattr(coder, part)]
        else:
            networks.append(coder)
    heads = [agent.actor.module[0].module, agent.critic.module]
    return [*networks, model.reward, model.continuation, *heads]


class _Imagination:
    """The actor loss's imagination for a discrete agent, one compiled graph per step.

    The generic rollout (``DreamerV3ActorLoss._imagine``) runs the actor's tensordict
    modules, the imagination environment and ``step_mdp`` at every step: several
    tensordicts per step around a few small matmuls. Here one step (the actor head,
    its one-hot sample, the prior step and the reward head) is a function of tensors,
    compiled as one graph, and the steps are stacked into the same ``[*batch, H]``
    trajectory and ``[*batch, H + 1]`` states with the same draws. The states are
    stacked once: the trajectory's next states are views of them, its roots a copy.
    """

    def __init__(self, agent: DreamerAgent) -> None:
        logits_module, sampler = agent.actor.module
        self.head = logits_module.module
        (self.logits_key,) = logits_module.out_keys
        self.distribution = partial(sampler.distribution_class, **sampler.distribution_kwargs)
        self.rssm, self.reward = agent.world_model.rssm, agent.world_model.reward
        self.loss = agent.actor_loss
        self.step = _compiled(self._step)

    def _step(self, stoch: torch.Tensor, deter: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.head(stoch, deter)
        action = self.distribution(logits=logits, validate_args=False).sample()
        next_stoch, next_deter, _ = self.rssm.img_step(stoch, deter, action)
        _, reward = self.reward(next_stoch, next_deter)
        return logits, action, next_stoch, next_deter, reward

    def __call__(self, start: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        keys = self.loss.tensor_keys
        horizon = self.loss.imagination_horizon
        stoch, deter = start.get(keys.state), start.get(keys.belief)
        stochs, deters, steps = [stoch], [deter], []
        for _ in range(horizon):
            logits, action, stoch, deter, reward = self.step(stoch, deter)
            stochs.append(stoch)
            deters.append(deter)
            steps.append((logits, action, reward))
        dim = start.ndim
        # s_0 .. s_H stacked once; the states reached are views of them. The roots are
        # a contiguous copy: the actor reads them again, and on a strided input inductor
        # makes its first layer a batched product, slower than the copy.
        stoch, deter = torch.stack(stochs, dim), torch.stack(deters, dim)
        logits, action, reward = (torch.stack(tensors, dim) for tensors in zip(*steps, strict=True))
        batch = (*start.batch_size, horizon)
        states = TensorDict(
            {keys.state: stoch, keys.belief: deter}, batch_size=(*start.batch_size, horizon + 1)
        )
        reached = {
            keys.state: stoch.narrow(dim, 1, horizon),
            keys.belief: deter.narrow(dim, 1, horizon),
            keys.reward: reward,
        }
        imagined = TensorDict(
            {
                keys.state: stoch.narrow(dim, 0, horizon).contiguous(),
                keys.belief: deter.narrow(dim, 0, horizon).contiguous(),
                self.logits_key: logits,
                keys.action: action,
                "next": TensorDict(reached, batch_size=batch),
            },
            batch_size=batch,
        )
        return imagined, states


def compile_agent(agent: DreamerAgent) -> DreamerAgent:
    """Compile ``agent``'s hot regions in place (see the module); returns ``agent``.

    Parameters, buffers and ``state_dict`` are untouched: a checkpoint of a compiled
    agent loads into an eager one and back.

    Examples:
        >>> import torch
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> from torchdreamer.training.compiled import compile_agent
        >>> agent = compile_agent(DreamerAgent((4,), 2, discrete=True, config=Config()))
        >>> state = agent.initial_state(3)
        >>> action, state = agent.act(torch.randn(3, 4), torch.ones(3, dtype=torch.bool), state)
        >>> action.shape
        torch.Size([3, 2])
    """
    # Inductor would otherwise draw its own random numbers in place of torch's.
    torch._inductor.config.fallback_random = True
    rssm = agent.world_model.rssm
    # Bound methods replaced on the instance: observe(), act() and the imagination
    # environment call self.obs_steps / rssm.obs_step / rssm.img_step, and now reach
    # the compiled ones. The compiled obs_steps calls the compiled obs_step, which
    # dynamo traces through: a chunk of steps is still one graph.
    rssm.obs_steps = _compiled(rssm.obs_steps)
    rssm.obs_step = _compiled(rssm.obs_step)
    rssm.img_step = _compiled(rssm.img_step)
    for network in _networks(agent):
        if isinstance(network, TwoHotHead):
            # Logits and decoded value as two graphs: the losses read the reward's and
            # the critic's values detached (or not at all), and autograd runs a
            # backward for every output of a graph it reaches, filling a missing
            # gradient with zeros. In one graph each update would differentiate the
            # decoding (a softmax over every bin of every state) to get zeros.
            network.mlp.compile(**_ISOLATED)
            network.decode = _compiled(network.decode)
        else:
            network.compile(**_ISOLATED)
    # The optimiser's multi-tensor arithmetic: one fused graph instead of a dozen
    # operators per parameter tensor.
    agent.optimizer.scalars_as_tensors = True
    agent.optimizer._laprop = _compiled(agent.optimizer._laprop)
    if agent.discrete:
        agent.actor_loss._imagine = _Imagination(agent)
    return agent
