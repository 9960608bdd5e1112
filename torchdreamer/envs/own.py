"""Environments given from Python: a factory of gymnasium envs, or a gymnasium vector env.

:func:`~torchdreamer.training.loop.train` and :func:`~torchdreamer.training.evaluation.evaluate`
take ``env=`` as well as ``config.env``'s id:

* a **factory**, any zero-argument callable returning a :class:`gymnasium.Env` (a
  function, a lambda, a ``gymnasium.Env`` subclass, a ``functools.partial``): it is
  called once per copy, for training's ``config.num_envs`` copies and for each
  evaluation's;
* a :class:`gymnasium.vector.VectorEnv` of ``config.num_envs`` copies that reset
  themselves on the step an episode ends (``autoreset_mode=AutoresetMode.SAME_STEP``):
  training steps it (it stays the caller's: the run does not close it), and
  evaluations make their copies with its ``env_fns``.

Either is checked and prepared as an id's environments are (the spaces, images resized
to ``config.image_size``, seeding, TorchRL's wrapping). The run records
``python:<qualified name>`` as ``config.env`` (``config.json``), e.g.
``python:mypackage.envs.make_corridor`` or ``python:SyncVectorEnv[mypackage.envs.Corridor]``:
there is no id to make the environment again, so resuming or evaluating the run
takes ``env=`` again.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from torchdreamer.envs.make import EnvSpec, RecordFrames, _fit, _is_image, _vector

__all__ = [
    "PYTHON",
    "EnvFactory",
    "EnvSource",
    "check_spaces",
    "copies_of",
    "describe",
    "describe_spaces",
    "is_python_env",
]

#: How ``config.env`` starts for an environment given from Python.
PYTHON = "python:"

EnvFactory = Callable[[], gym.Env]
#: What ``env=`` takes, and ``make_env`` too: an id, a factory or a vector env.
EnvSource = Union[str, EnvFactory, gym.vector.VectorEnv]  # noqa: UP007 (a runtime alias)

_KINDS = (
    "a gymnasium id (str), a function that makes a gymnasium.Env (a factory, called once "
    "per copy: env=lambda: MyEnv()), or a gymnasium.vector.VectorEnv"
)


def is_python_env(env_id: str) -> bool:
    """Whether ``config.env`` records an environment given from Python (``python:...``)."""
    return env_id.startswith(PYTHON)


def _qualified(maker: object) -> str:
    """``module.qualname`` of a function, class or callable object (a partial's function)."""
    if isinstance(maker, functools.partial):
        return _qualified(maker.func)
    named = maker if hasattr(maker, "__qualname__") else type(maker)
    module = getattr(named, "__module__", None)
    return f"{module}.{named.__qualname__}" if module else named.__qualname__


def _check_type(env: object) -> None:
    if isinstance(env, str | gym.vector.VectorEnv):
        return
    if isinstance(env, gym.Env):
        raise TypeError(
            f"env is a gymnasium.Env instance ({type(env).__name__}); pass a function that "
            f"makes one instead (env=lambda: {type(env).__name__}(...)): training runs "
            "config.num_envs copies and every evaluation copies of its own."
        )
    if not callable(env):
        raise TypeError(f"env must be {_KINDS}; got {type(env).__name__} {env!r}.")


def describe(env: EnvSource) -> str:
    """What ``config.env`` records for ``env``: an id as it is; ``python:`` and the factory's
    qualified name, or the vector env's class and what makes its copies.

    Examples:
        >>> import gymnasium as gym
        >>> from torchdreamer.envs.own import describe
        >>> describe("CartPole-v1")
        'CartPole-v1'
        >>> def make_cartpole():
        ...     return gym.make("CartPole-v1")
        >>> describe(make_cartpole).removeprefix("python:").endswith("make_cartpole")
        True
        >>> vector = gym.vector.SyncVectorEnv([make_cartpole] * 2)
        >>> describe(vector).startswith("python:SyncVectorEnv[")
        True
        >>> vector.close()
    """
    _check_type(env)
    if isinstance(env, str):
        return env
    if isinstance(env, gym.vector.VectorEnv):
        spec = getattr(env, "spec", None)
        fns = getattr(env, "env_fns", None)
        if spec is not None and getattr(spec, "id", None):
            inner = f"[{spec.id}]"
        elif isinstance(fns, list | tuple) and fns and callable(fns[0]):
            inner = f"[{_qualified(fns[0])}]"
        else:
            return PYTHON + _qualified(type(env))
        return f"{PYTHON}{type(env).__name__}{inner}"
    return PYTHON + _qualified(env)


def _env_fns(vector: gym.vector.VectorEnv) -> tuple[list[EnvFactory] | None, str]:
    """The factories of a vector env's copies, or None and why there are none."""
    if isinstance(vector, gym.vector.VectorWrapper):
        return None, (
            f"it is wrapped ({type(vector).__name__}), and copies made with its env_fns "
            "would lack the wrapper"
        )
    fns = getattr(vector, "env_fns", None)
    if not isinstance(fns, list | tuple) or not fns or not all(callable(f) for f in fns):
        return None, f"it ({type(vector).__name__}) has no env_fns to make copies with"
    return list(fns), ""


class _Cycle:
    """A factory that calls a vector env's ``env_fns`` in turn, one per copy."""

    def __init__(self, fns: list[EnvFactory]) -> None:
        self.fns, self.made = fns, 0
        self.__qualname__ = f"env_fns of {_qualified(fns[0])}"
        self.__module__ = ""

    def __call__(self) -> gym.Env:
        maker = self.fns[self.made % len(self.fns)]
        self.made += 1
        return maker()


def copies_of(env: EnvSource) -> str | EnvFactory:
    """What makes fresh copies of ``env`` for an evaluation: an id or a factory as they
    are, a vector env's ``env_fns`` in turn; a vector env without them is refused."""
    _check_type(env)
    if not isinstance(env, gym.vector.VectorEnv):
        return env
    fns, why = _env_fns(env)
    if fns is None:
        raise ValueError(
            f"evaluations play on environments of their own, and this vector env cannot make "
            f"them: {why}. Pass env= a function that makes one environment (it is called "
            "once per copy), or a gymnasium.vector.SyncVectorEnv / AsyncVectorEnv made from "
            "env_fns; or turn evaluations off (Config(eval_every=0))."
        )
    return _Cycle(fns)


# ------------------------------------------------------------------- making
def _made_by(factory: EnvFactory, image_size: int, record: bool) -> gym.Env:
    """One copy from ``factory``: checked, its images fitted, its frames kept if ``record``."""
    env = factory()
    if isinstance(env, gym.vector.VectorEnv):
        raise TypeError(
            f"the env factory {_qualified(factory)} returned a vector env "
            f"({type(env).__name__}); a factory makes one environment: pass the vector env "
            "itself as env=, or a function that makes one copy."
        )
    if not isinstance(env, gym.Env):
        raise TypeError(
            f"the env factory {_qualified(factory)} returned {type(env).__name__} {env!r}, "
            "not a gymnasium.Env."
        )
    env = _fit(image_size)(env)
    return RecordFrames(env) if record else env


def python_vector(
    env: EnvFactory | gym.vector.VectorEnv,
    num_envs: int,
    image_size: int,
    record: bool,
    workers: int = 0,
) -> gym.vector.VectorEnv:
    """``num_envs`` copies from a factory (over ``workers`` processes, if any; the factory
    must pickle), or a vector env of as many, ready to wrap."""
    _check_type(env)
    if not isinstance(env, gym.vector.VectorEnv):
        makers = [
            functools.partial(_made_by, env, image_size, record and i == 0) for i in range(num_envs)
        ]
        return _vector(makers, workers)
    if workers:
        raise ValueError(
            f"env_workers {workers} runs copies that torchdreamer makes in worker processes; "
            f"a vector env given from Python ({type(env).__name__}) steps its copies "
            "itself: set env_workers 0 (or make it a gymnasium.vector.AsyncVectorEnv), or "
            "pass a function that makes one copy."
        )
    if env.num_envs != num_envs:
        raise ValueError(
            f"the vector env has {env.num_envs} copies where {num_envs} are asked for; "
            f"make them equal (Config(num_envs={env.num_envs}, ...))."
        )
    if record:
        raise ValueError(
            "a vector env's copies cannot be recorded; pass the function that makes one "
            "copy (its frames are kept), or make_env(copies_of(vector), ...)."
        )
    mode = getattr(env, "autoreset_mode", None) or env.metadata.get("autoreset_mode")
    if mode != gym.vector.AutoresetMode.SAME_STEP:
        raise ValueError(
            f"the vector env resets its copies in autoreset mode {mode}; torchdreamer needs "
            "them reset on the step an episode ends: make it with "
            "autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP, or pass a function "
            "that makes one copy."
        )
    return _Borrowed(env, image_size)


def _resized(batch: np.ndarray, side: int) -> np.ndarray:
    """Channel-last ``uint8`` images ``[N, H, W, C]`` resized as ResizeImage does one."""
    images = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    resized = nn.functional.interpolate(
        images, size=(side, side), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


class _Borrowed(gym.vector.VectorWrapper):
    """A caller's vector env as the run steps it: image observations of another size
    resized (the final observations of ended episodes too), and closing it left to the
    caller."""

    def __init__(self, env: gym.vector.VectorEnv, image_size: int) -> None:
        super().__init__(env)
        self.autoreset_mode = gym.vector.AutoresetMode.SAME_STEP  # read by TorchRL
        space = env.single_observation_space
        self.side = None
        if _is_image(space) and tuple(space.shape[:2]) != (image_size, image_size):
            self.side = image_size
            shape = (image_size, image_size, space.shape[-1])
            self.single_observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
            self.observation_space = gym.vector.utils.batch_space(
                self.single_observation_space, env.num_envs
            )

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        observation, info = self.env.reset(**kwargs)
        return self._fit(observation), info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict]:
        observation, reward, terminated, truncated, info = self.env.step(actions)
        if self.side is not None and "final_obs" in info:
            final = np.array(info["final_obs"], dtype=object)
            for i in np.flatnonzero(info.get("_final_obs", np.ones(len(final), bool))):
                final[i] = _resized(final[i][None], self.side)[0]
            info = {**info, "final_obs": final}
        return self._fit(observation), reward, terminated, truncated, info

    def _fit(self, observation: Any) -> Any:
        return observation if self.side is None else _resized(observation, self.side)

    def close(self) -> None:
        """Leaves the vector env open: it is the caller's."""


# ----------------------------------------------------------------- checking
def describe_spaces(spec: EnvSpec) -> str:
    """The observations and actions of ``spec`` in words."""
    shape = spec.observation_shape
    if isinstance(shape, dict):
        seen = "{" + ", ".join(f"{k}: {tuple(v)}" for k, v in shape.items()) + "}"
    else:
        seen = str(tuple(shape))
    if spec.action_nvec:
        acts = f"multi-discrete actions {list(spec.action_nvec)}"
    elif spec.discrete:
        acts = f"{spec.action_dim} discrete actions"
    else:
        acts = (
            f"continuous actions of size {spec.action_dim} in "
            f"[{list(spec.action_low)}, {list(spec.action_high)}]"
        )
    return f"observations {seen}, {acts}"


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: a spec as JSON would store it."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def check_spaces(trained: EnvSpec, spec: EnvSpec, path: Path | str) -> None:
    """Refuse an environment of ``spec`` for the run at ``path``, trained on ``trained``'s
    spaces, when the two differ.

    Examples:
        >>> from torchdreamer.envs.make import EnvSpec
        >>> from torchdreamer.envs.own import check_spaces
        >>> check_spaces(EnvSpec((4,), True, 2), EnvSpec((4,), True, 2), "run")
        >>> check_spaces(EnvSpec((4,), True, 2), EnvSpec((3,), True, 2), "run")
        Traceback (most recent call last):
        ...
        ValueError: run was trained on an environment of observations (4,), 2 discrete \
actions; this one has observations (3,), 2 discrete actions. Pass the environment it was \
trained on.
    """
    if _plain(dataclasses.asdict(trained)) != _plain(dataclasses.asdict(spec)):
        raise ValueError(
            f"{path} was trained on an environment of {describe_spaces(trained)}; this one has "
            f"{describe_spaces(spec)}. Pass the environment it was trained on."
        )
