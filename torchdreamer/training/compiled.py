"""The agent's hot regions under ``torch.compile``: a fast path beside the eager code.

An update runs the RSSM's filtering step 64 times (the replay sequence) and its prior
step 15 times (imagination), each a few small matmuls and many pointwise operators,
then every head on the results. :func:`compile_agent` compiles those regions with
inductor, through the agent's :meth:`~DreamerAgent.compile_update`: :meth:`RSSM.obs_steps`
(8 filtering steps as one graph: their matmuls, norms, gates, unimix and Gumbel
sampling, and in the backward one gradient per parameter instead of 8), passed to
:func:`torchdreamer.dreamer.loss`; :meth:`RSSM.obs_step` (one step, for acting); the
forward of every network outside the RSSM (encoder, decoder, reward, continuation,
actor, critic; of a two-hot head its logits, so that a value read detached costs no
backward); the optimiser's arithmetic (:meth:`DreamerV3Optimizer.laprop`, given to the
optimiser as its ``laprop``) and, for discrete actions, the imagination's step
(:func:`torchdreamer.dreamer.imagine_step`: actor, sample, prior step, reward as one
graph), which the one rollout (:func:`torchdreamer.dreamer.imagine`) runs. What is
compiled is the same code as the eager path: nothing is rewritten or rebound here.

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

import torch
import torch._inductor.config

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
    # Inductor would otherwise draw its own random numbers in place of torch's; passed as
    # each region's option, so nothing global changes.
    # Static shapes: a region called with a new shape gets a graph of its own instead of
    # one graph with symbolic sizes; inductor 2.13 failed to compile a symbolic-width MLP
    # backward (``dmc:cartpole_swingup`` at ``size1m``: "Exponent must be non-negative").
    agent.compile_update(**_ISOLATED, dynamic=False, options={"fallback_random": True})
    return agent
