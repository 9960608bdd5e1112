"""The environments' old import path: they live in :mod:`torchdreamer.envs` now.

``from torchdreamer.training.envs import EnvSpec, make_env`` keeps working (the
:class:`~torchdreamer.training.policy.Policy` of a run takes an :class:`EnvSpec`);
new code imports them from :mod:`torchdreamer.envs`.

Examples:
    >>> import torchdreamer.envs
    >>> from torchdreamer.training.envs import EnvSpec
    >>> EnvSpec is torchdreamer.envs.EnvSpec
    True
"""

from __future__ import annotations

from torchdreamer.envs import (
    EnvSource,
    EnvSpec,
    RecordFrames,
    ResizeImage,
    env_workers_for,
    make_env,
    recorder,
)

__all__ = [
    "EnvSource",
    "EnvSpec",
    "RecordFrames",
    "ResizeImage",
    "env_workers_for",
    "make_env",
    "recorder",
]
