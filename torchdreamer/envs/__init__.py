"""Environments for DreamerV3 agents: gymnasium ids, the benchmark suites and
environments given from Python, checked and batched through TorchRL.

- :mod:`~torchdreamer.envs.make`: :func:`make_env` (any source as a TorchRL env and its
  :class:`EnvSpec`), the image wrappers and :func:`env_workers_for`;
- :mod:`~torchdreamer.envs.suites`: Atari, DMC and Crafter as the official adapters
  make them (``atari:``, ``dmc:``, ``crafter`` ids);
- :mod:`~torchdreamer.envs.workers`: copies stepped in worker processes;
- :mod:`~torchdreamer.envs.own`: environments given from Python (``env=``).

Nothing here imports :mod:`torchdreamer.training`: the training loop uses these
environments, not the other way round.

Examples:
    >>> from torchdreamer.envs import make_env
    >>> env, spec = make_env("CartPole-v1", num_envs=2, seed=0)
    >>> spec.observation_shape, spec.discrete, spec.action_dim
    ((4,), True, 2)
    >>> env.close()
"""

from __future__ import annotations

from torchdreamer.envs.make import (
    EnvSpec,
    RecordFrames,
    ResizeImage,
    env_workers_for,
    make_env,
    recorder,
)
from torchdreamer.envs.own import EnvSource

__all__ = [
    "EnvSource",
    "EnvSpec",
    "RecordFrames",
    "ResizeImage",
    "env_workers_for",
    "make_env",
    "recorder",
]
