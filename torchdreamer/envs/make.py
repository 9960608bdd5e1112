"""Gymnasium environments for training: batched through TorchRL, validated up front."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec as EnvSpecOfGym

from torchdreamer.envs.suites import is_suite_id, make_suite_env
from torchdreamer.envs.workers import WorkerVectorEnv

if TYPE_CHECKING:
    from tensordict import TensorDictBase
    from torchrl.envs import GymWrapper

    from torchdreamer.envs.own import EnvSource

# TorchRL is imported where an environment is wrapped, not here: env worker processes
# import this module to make their copies, and need gymnasium and torch only.

__all__ = ["EnvSpec", "RecordFrames", "ResizeImage", "env_workers_for", "make_env", "recorder"]


@dataclass(frozen=True)
class EnvSpec:
    """What the agent needs to know of an environment.

    Examples:
        >>> from torchdreamer.envs import make_env
        >>> env, spec = make_env("Pendulum-v1", num_envs=1, seed=0)  # continuous actions
        >>> spec.discrete, spec.action_dim, spec.action_low, spec.action_high
        (False, 1, (-2.0,), (2.0,))
        >>> env.close()
    """

    observation_shape: tuple[int, ...] | dict[str, tuple[int, ...]]
    """``(D,)`` for vectors, ``(H, W, C)`` for ``uint8`` images, or a dict of them by key
    (a ``Dict`` observation space)."""
    discrete: bool
    action_dim: int
    """Number of actions (discrete), the action vector's size (continuous), or the sum of
    the components' sizes (multi-discrete)."""
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    action_nvec: tuple[int, ...] = ()
    """Multi-discrete actions (a ``MultiDiscrete`` space): the number of actions of each
    component; the agent acts with their one-hot vectors concatenated. Empty otherwise."""

    def observation_of(self, td: TensorDictBase) -> torch.Tensor | TensorDictBase:
        """The observation in a TorchRL step: ``observation``, or a tensordict of the
        ``Dict`` space's keys (TorchRL writes each at the root)."""
        if isinstance(self.observation_shape, dict):
            return td.select(*self.observation_shape)
        return td.get("observation")

    def to_env_action(self, action: torch.Tensor) -> torch.Tensor:
        """Agent action (one-hot, or in ``[-1, 1]``) to what the environment takes.

        Discrete: the one-hot as integers (TorchRL's encoding); multi-discrete: the index
        of each component's one-hot, ``[..., len(action_nvec)]`` integers; continuous: the
        action scaled from ``[-1, 1]`` to the bounds.

        Examples:
            >>> import torch
            >>> from torchdreamer.envs.make import EnvSpec
            >>> spec = EnvSpec((4,), discrete=True, action_dim=5, action_nvec=(3, 2))
            >>> spec.to_env_action(torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]]))
            tensor([[2, 0]])
        """
        if self.action_nvec:
            parts = action.split(self.action_nvec, dim=-1)
            return torch.stack([part.argmax(-1) for part in parts], dim=-1)
        if self.discrete:
            return action.long()
        low = torch.tensor(self.action_low, dtype=action.dtype, device=action.device)
        high = torch.tensor(self.action_high, dtype=action.dtype, device=action.device)
        return low + (action + 1) * (high - low) / 2


class ResizeImage(gym.ObservationWrapper):
    """Resizes a channel-last ``uint8`` image observation to ``side x side`` pixels.

    Bilinear with antialiasing (like the official DreamerV3's PIL resize), rounded
    back to ``uint8``.

    Examples:
        >>> import gymnasium as gym
        >>> import numpy as np
        >>> from torchdreamer.envs.make import ResizeImage
        >>> class Grey(gym.Env):
        ...     observation_space = gym.spaces.Box(0, 255, (96, 80, 3), np.uint8)
        ...     action_space = gym.spaces.Discrete(2)
        ...     def reset(self, *, seed=None, options=None):
        ...         return np.full((96, 80, 3), 128, np.uint8), {}
        >>> env = ResizeImage(Grey(), 64)
        >>> image, _ = env.reset()
        >>> env.observation_space.shape, image.shape, image.dtype
        ((64, 64, 3), (64, 64, 3), dtype('uint8'))
        >>> int(image.min()), int(image.max())  # a uniform image stays uniform
        (128, 128)
    """

    def __init__(self, env: gym.Env, side: int) -> None:
        super().__init__(env)
        self.side = side
        channels = env.observation_space.shape[-1]
        self.observation_space = gym.spaces.Box(0, 255, (side, side, channels), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return self.resize(observation, self.side)

    @staticmethod
    def resize(image: np.ndarray, side: int) -> np.ndarray:
        """One ``[H, W, C]`` ``uint8`` image resized to ``[side, side, C]``, as the wrapper
        resizes each observation (a trained policy resizes raw observations so too)."""
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        resized = torch.nn.functional.interpolate(
            pixels.unsqueeze(0).float(),
            size=(side, side),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


class RecordFrames(gym.Wrapper):
    """Keeps the frames of the first episode it runs, for a video.

    A frame is the observation itself when the environment gives images, else
    ``env.render()`` (the environment must be made with ``render_mode="rgb_array"``).
    Recording stops at the end of the first episode or after ``limit`` frames. When
    the environment cannot render (``render()`` returns nothing, or the package it
    renders with is missing), no frames are kept and :attr:`unavailable` says why.

    Examples:
        >>> import gymnasium as gym
        >>> from torchdreamer.envs.make import RecordFrames
        >>> env = RecordFrames(gym.make("CartPole-v1"))  # made without render_mode
        >>> _ = env.reset(seed=0)
        >>> len(env.frames), env.unavailable  # doctest: +ELLIPSIS
        (0, 'CartPole-v1 renders no frames (render() returned None)...')
    """

    def __init__(self, env: gym.Env, limit: int = 500) -> None:
        super().__init__(env)
        self.frames: list[np.ndarray] = []
        self.limit = limit
        self.unavailable: str | None = None
        self._image = _is_image(env.observation_space)
        self._recording = True

    def restart(self) -> None:
        """Forget the frames kept so far and record the next episode (from its reset)."""
        self.frames.clear()
        self.unavailable = None
        self._recording = True

    def reset(self, **kwargs: object) -> tuple[object, dict]:
        observation, info = self.env.reset(**kwargs)
        self._keep(observation)
        return observation, info

    def step(self, action: object) -> tuple[object, float, bool, bool, dict]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._keep(observation)
        if terminated or truncated:
            self._recording = False
        return observation, reward, terminated, truncated, info

    def _keep(self, observation: object) -> None:
        if not self._recording or len(self.frames) >= self.limit:
            return
        if self._image:
            self.frames.append(np.array(observation))
            return
        try:
            frame = self.env.render()
        except NotImplementedError as error:  # gymnasium.Env's own render()
            why = _one_line(error) if str(error).strip() else "it defines no render()"
            self.unavailable = f"{self._name()} cannot render ({why})"
        except Exception as error:  # a video is optional: the run goes on, told why
            self.unavailable = f"{self._name()} cannot render ({_one_line(error)})"
        else:
            if isinstance(frame, np.ndarray) and frame.ndim == 3:
                self.frames.append(frame)
                return
            self.unavailable = (
                f"{self._name()} renders no frames (render() returned "
                f"{type(frame).__name__ if frame is not None else None}); its observations "
                "are not images"
            )
        self._recording = False

    def _name(self) -> str:
        spec = self.env.spec
        return spec.id if spec is not None else type(self.env.unwrapped).__name__


def _is_image(space: gym.Space) -> bool:
    return (
        isinstance(space, gym.spaces.Box)
        and len(space.shape) == 3
        and space.dtype == np.uint8
        and space.shape[-1] in (1, 3)
    )


#: Keys TorchRL writes beside a ``Dict`` observation's own, which those may not take.
_RESERVED = ("action", "reward", "done", "terminated", "truncated", "next")


def _shape_of(env_id: str, space: gym.Space, where: str = "") -> tuple[int, ...]:
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(
            f"{env_id}: the observation space{where} is {space}; torchdreamer supports "
            "a Box of a vector (D,) or of a channel-last image (H, W, C), or a Dict of them."
        )
    shape = tuple(space.shape)
    if not (len(shape) == 1 or _is_image(space)):
        raise ValueError(
            f"{env_id}: the observation space{where} is a Box of shape {shape} and dtype "
            f"{space.dtype}; torchdreamer supports vectors (D,) and uint8 "
            "channel-last images (H, W, 1 or 3)."
        )
    return shape


def _observation_shape(
    env_id: str, space: gym.Space
) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    if not isinstance(space, gym.spaces.Dict):
        return _shape_of(env_id, space)
    if not space.spaces:
        raise ValueError(f"{env_id}: the observation space is an empty Dict.")
    taken = sorted(set(space.spaces) & set(_RESERVED))
    if taken:
        raise ValueError(
            f"{env_id}: the Dict observation's keys {taken} are names TorchRL uses for its "
            "own entries; rename them in the environment."
        )
    return {
        key: _shape_of(env_id, value, f" of key {key!r}") for key, value in space.spaces.items()
    }


def _spec_of(env_id: str, observation_space: gym.Space, action_space: gym.Space) -> EnvSpec:
    shape = _observation_shape(env_id, observation_space)
    if isinstance(action_space, gym.spaces.Discrete):
        return EnvSpec(shape, discrete=True, action_dim=int(action_space.n))
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        nvec, start = action_space.nvec, action_space.start
        if nvec.ndim != 1:
            raise ValueError(
                f"{env_id}: the action space {action_space} has nvec of shape {nvec.shape}; "
                "torchdreamer supports MultiDiscrete actions with a one-dimensional nvec "
                "(flatten the components into one vector)."
            )
        if (start != 0).any():
            raise ValueError(
                f"{env_id}: the action space {action_space} starts at {start.tolist()}; "
                "torchdreamer supports MultiDiscrete actions starting at 0 (shift them in "
                "the environment, e.g. with a gymnasium ActionWrapper)."
            )
        sizes = tuple(int(n) for n in nvec)
        return EnvSpec(shape, discrete=True, action_dim=sum(sizes), action_nvec=sizes)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        low, high = action_space.low, action_space.high
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError(
                f"{env_id}: the action space {action_space} is unbounded; torchdreamer's "
                "continuous actor needs finite bounds."
            )
        return EnvSpec(
            shape,
            discrete=False,
            action_dim=int(action_space.shape[0]),
            action_low=tuple(float(x) for x in low),
            action_high=tuple(float(x) for x in high),
        )
    raise ValueError(
        f"{env_id}: the action space is {action_space}; torchdreamer supports Discrete, "
        "MultiDiscrete (a one-dimensional nvec) and one-dimensional Box actions."
    )


#: Environment families whose simulator is an optional package, by where their
#: classes live: the package and how to install it.
_OPTIONAL = {
    "gymnasium.envs.mujoco": ("mujoco", 'pip install "gymnasium[mujoco]"'),
    "gymnasium.envs.box2d": ("box2d", 'pip install swig, then pip install "gymnasium[box2d]"'),
    "gymnasium.envs.phys2d": ("jax", 'pip install "gymnasium[jax]"'),
    "gymnasium.envs.tabular": ("jax", 'pip install "gymnasium[jax]"'),
}
#: Namespaces that a package registers when imported: its module, the package and
#: how to install it.
_NAMESPACES = {"ALE": ("ale_py", "ale-py", 'pip install "gymnasium[atari]"')}


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split()).rstrip('.')}"


def _close_matches(name: str) -> str:
    matches = difflib.get_close_matches(name, list(gym.registry), n=3, cutoff=0.8)
    return f"; close matches: {', '.join(matches)}" if matches else ""


def _import_registering(module: str, env_id: str) -> list[str]:
    """Import the module named in ``module:EnvId``; the ids that importing it registered."""
    before = set(gym.registry)
    try:
        importlib.import_module(module)
    except Exception as error:
        raise ValueError(
            f"environment id {env_id!r}: module {module!r} could not be imported "
            f"({_one_line(error)}); it must be importable (on sys.path / PYTHONPATH) and "
            "register the environment with gymnasium.register."
        ) from error
    return sorted(set(gym.registry) - before)


def _registered(env_id: str) -> EnvSpecOfGym:
    """The gymnasium spec of ``env_id`` (``EnvId`` or ``module:EnvId``)."""
    module, _, name = env_id.rpartition(":")
    added = _import_registering(module, env_id) if module else []
    namespace = name.split("/")[0] if "/" in name else None
    if namespace in _NAMESPACES and not any(k.startswith(f"{namespace}/") for k in gym.registry):
        registrar, package, command = _NAMESPACES[namespace]
        try:
            importlib.import_module(registrar)
        except ImportError as error:
            raise ValueError(
                f"environment {env_id!r} needs the {package} package, which is not installed: "
                f"{command} ({_one_line(error)})."
            ) from error
    try:
        return gym.spec(name)
    except gym.error.Error as error:
        found = ""
        if module:
            listed = ", ".join(added) if added else "nothing new"
            found = f" module {module!r} was imported (it registered {listed}) but"
        hint = "" if "Did you mean" in str(error) else _close_matches(name)
        raise ValueError(
            f"unknown environment id {env_id!r}:{found} {_one_line(error)}{hint} (pass a "
            "registered gymnasium id such as CartPole-v1, or module:EnvId for an environment "
            "that importing module registers)."
        ) from None


def _missing_dependency(env_id: str, spec: EnvSpecOfGym, error: BaseException) -> ValueError:
    entry = spec.entry_point
    where = entry if isinstance(entry, str) else getattr(entry, "__module__", "") or ""
    for prefix, (package, command) in _OPTIONAL.items():
        if where.startswith(prefix):
            return ValueError(
                f"environment {env_id!r} needs the {package} package, which is not installed: "
                f"{command} ({_one_line(error)})."
            )
    missing = getattr(error, "name", None)  # the module a ModuleNotFoundError looked for
    if isinstance(error, ModuleNotFoundError) and missing:
        return ValueError(
            f"environment {env_id!r} needs the module {missing!r}, which is not installed: "
            f"install the package that provides it ({_one_line(error)})."
        )
    if isinstance(error, gym.error.DependencyNotInstalled):
        return ValueError(
            f"environment {env_id!r} needs a package that is not installed ({_one_line(error)})."
        )
    return ValueError(f"environment {env_id!r} could not be imported ({_one_line(error)}).")


def _fit(image_size: int) -> Callable[[gym.Env], gym.Env]:
    """A wrapper that resizes image observations of another size to ``image_size``."""

    def fit(env: gym.Env) -> gym.Env:
        space = env.observation_space
        if _is_image(space) and tuple(space.shape[:2]) != (image_size, image_size):
            return ResizeImage(env, image_size)
        return env

    return fit


def _gym_copy(gym_spec: EnvSpecOfGym, image_size: int, record: bool) -> gym.Env:
    """One copy of a registered environment; ``record``: rendering, with its frames kept."""
    env = gym.make(gym_spec)
    renders = "rgb_array" in env.metadata.get("render_modes", ())
    if record and renders and not _is_image(env.observation_space):
        env.close()
        # Off-screen frames need no display; without this SDL (pygame, classic control)
        # complains on stderr that it has none.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        env = gym.make(gym_spec, render_mode="rgb_array")
    env = _fit(image_size)(env)
    return RecordFrames(env) if record else env


def _suite_copy(env_id: str, seed: int, image_size: int, obs: str, record: bool) -> gym.Env:
    env = make_suite_env(env_id, seed, image_size, obs)
    return RecordFrames(env) if record else env


def _vector(makers: list[Callable[[], gym.Env]], workers: int = 0) -> gym.vector.VectorEnv:
    """The copies stepped in this process (``workers`` 0) or over ``workers`` processes,
    reset on the step an episode ends either way."""
    if workers:
        return WorkerVectorEnv(makers, workers)
    return gym.vector.SyncVectorEnv(makers, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def _gym_vector(
    env_id: str, num_envs: int, image_size: int, record: bool, workers: int = 0
) -> gym.vector.VectorEnv:
    gym_spec = _registered(env_id)
    makers = [partial(_gym_copy, gym_spec, image_size, record and i == 0) for i in range(num_envs)]
    try:
        return _vector(makers, workers)
    except (gym.error.DependencyNotInstalled, ImportError) as error:
        raise _missing_dependency(env_id, gym_spec, error) from error


def _suite_vector(
    env_id: str,
    num_envs: int,
    seed: int,
    image_size: int,
    obs: str,
    record: bool,
    workers: int = 0,
) -> gym.vector.VectorEnv:
    makers = [
        partial(_suite_copy, env_id, seed + i, image_size, obs, record and i == 0)
        for i in range(num_envs)
    ]
    try:
        return _vector(makers, workers)
    except ImportError as error:  # the suite's package: the message names its extra
        raise ValueError(str(error)) from error


#: The worker processes ``env_workers="auto"`` gives each suite's pixel environments, at
#: most one per copy; every other environment steps in the training process. Measured
#: with ``benchmarks/env_workers.py`` (docs/performance.md, 2-core AMD EPYC, 4 copies):
#: 2 workers made a training run on DMC images 1.25x faster (its rendering runs beside
#: the other copies'), while Atari (0.94x) and Crafter (0.96x) lost what the pickling
#: costs, and vector observations lose more (CartPole stepped at 0.39x with 2 workers).
AUTO_WORKERS = {"dmc": 2}


def _pixel_family(env_id: str, obs: str) -> str | None:
    """The suite family of ``env_id`` where it renders or emulates images, else None."""
    family = env_id.partition(":")[0]
    if not is_suite_id(env_id) or (family == "dmc" and obs not in ("image", "both")):
        return None
    return family


def env_workers_for(env_id: EnvSource, setting: int | str, num_envs: int, obs: str = "auto") -> int:
    """The worker processes that ``Config.env_workers`` (``setting``) steps ``num_envs``
    copies of ``env_id`` in: the number given, or for ``"auto"``
    :data:`AUTO_WORKERS` of its suite (at most ``num_envs``) for a suite's pixel
    environment and 0 (in this process) for any other.

    Examples:
        >>> from torchdreamer.envs.make import env_workers_for
        >>> env_workers_for("CartPole-v1", "auto", num_envs=16)
        0
        >>> env_workers_for("dmc:walker_walk", "auto", num_envs=16, obs="image")
        2
        >>> env_workers_for("dmc:walker_walk", "auto", num_envs=1, obs="image")
        1
        >>> env_workers_for("dmc:walker_walk", "auto", num_envs=16, obs="proprio")
        0
        >>> env_workers_for("crafter", "auto", num_envs=1)
        0
        >>> env_workers_for("CartPole-v1", 2, num_envs=16)
        2
    """
    if setting != "auto":
        return int(setting)
    family = _pixel_family(env_id, obs) if isinstance(env_id, str) else None
    return min(AUTO_WORKERS.get(family, 0), num_envs)


def recorder(env: GymWrapper) -> RecordFrames:
    """The :class:`RecordFrames` of the first copy of an env made with ``record=True``.

    Examples:
        >>> from torchdreamer.envs import make_env, recorder
        >>> env, _ = make_env("CartPole-v1", num_envs=2, seed=0, record=True)
        >>> frames = recorder(env).frames  # the first copy's first episode, once it has run
        >>> env.close()
        >>> plain, _ = make_env("CartPole-v1", num_envs=1, seed=0)
        >>> recorder(plain)
        Traceback (most recent call last):
        ...
        ValueError: this environment was not made with make_env(..., record=True).
        >>> plain.close()
    """
    first = env.envs[0]  # GymWrapper forwards to the gymnasium vector env's copies
    if not isinstance(first, RecordFrames):
        raise ValueError("this environment was not made with make_env(..., record=True).")
    return first


def make_env(
    env_id: EnvSource,
    num_envs: int,
    seed: int,
    image_size: int = 64,
    obs: str = "auto",
    *,
    record: bool = False,
    workers: int = 0,
) -> tuple[GymWrapper, EnvSpec]:
    """``num_envs`` copies of ``env_id`` stepped together, and their :class:`EnvSpec`.

    ``env_id`` is a registered gymnasium id (``CartPole-v1``, ``ALE/Pong-v5``
    once ale-py is installed), a benchmark-suite id with the official
    preprocessing (``atari100k:pong``, ``atari:pong``, ``dmc:walker_walk``,
    ``crafter``: :mod:`torchdreamer.envs.suites`; ``obs`` picks DMC's
    ``"proprio"`` or ``"image"`` observations), or ``module:EnvId``: ``module`` is imported
    first, so that it registers ``EnvId`` (an environment of your own). An id
    that is unknown, or whose simulator package is not installed, raises a
    one-line :class:`ValueError` that says which and what to install.

    ``env_id`` may also be an environment given from Python
    (:mod:`torchdreamer.envs.own`): a function that makes one
    ``gymnasium.Env``, called once per copy, or a ``gymnasium.vector.VectorEnv``
    of ``num_envs`` copies that reset on the step an episode ends (it stays the
    caller's: closing the TorchRL env leaves it open).

    The copies run in this process (gymnasium's synchronous vector env, which
    is fastest for cheap simulators on a 2-core machine), or, with ``workers``
    N >= 1, split over N worker processes
    (:class:`~torchdreamer.envs.workers.WorkerVectorEnv`: the same episodes
    for the same seed; a factory given from Python must pickle; closing the
    TorchRL env ends the workers). They reset themselves
    when an episode ends, and are wrapped as one TorchRL environment with
    batch size ``[num_envs]``. Image observations of another size than
    ``image_size x image_size`` are resized to it (:class:`ResizeImage`).
    ``record=True`` keeps the frames of the first copy's first episode
    (:class:`RecordFrames`, reached through :func:`recorder`), for a video;
    such copies run in this process.
    TorchRL's INFO lines about the wrapping (its check of the terminal-observation
    reader) are not printed; its warnings are.

    Examples:
        >>> from torchdreamer.envs.make import make_env
        >>> env, spec = make_env("CartPole-v1", num_envs=3, seed=0)
        >>> env.batch_size, spec.observation_shape, spec.discrete, spec.action_dim
        (torch.Size([3]), (4,), True, 2)
        >>> env.close()
        >>> make_env("CartPol-v1", num_envs=1, seed=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown environment id 'CartPol-v1': ... Did you mean: `CartPole`? (pass ...

    """
    from torchrl.envs import GymWrapper

    if workers and record:
        raise ValueError(
            "record=True keeps the frames of a copy in this process: make recorded "
            "environments with workers=0."
        )
    if not isinstance(env_id, str):
        from torchdreamer.envs.own import describe, python_vector

        name = describe(env_id)
        if obs != "auto":
            raise ValueError(
                f"obs={obs!r} picks a DMC suite's observations; an environment given from "
                "Python has its own: leave obs 'auto'."
            )
        vector = python_vector(env_id, num_envs, image_size, record, workers)
    elif env_id.startswith("python:"):
        raise ValueError(
            f"environment {env_id!r} was given from Python (a function or a vector env); no "
            "id makes it again: pass it again as env=, e.g. train(config, logdir, "
            "resume=True, env=...) or evaluate(logdir, env=...)."
        )
    elif is_suite_id(env_id):
        name = env_id
        vector = _suite_vector(env_id, num_envs, seed, image_size, obs, record, workers)
    else:
        name = env_id
        vector = _gym_vector(env_id, num_envs, image_size, record, workers)
    try:
        spec = _spec_of(name, vector.single_observation_space, vector.single_action_space)
    except ValueError:
        vector.close()
        raise
    try:
        with _torchrl_quiet():
            env = GymWrapper(vector, device="cpu")
        env.set_seed(seed)
    except BaseException:
        vector.close()
        raise
    return env, spec


@contextlib.contextmanager
def _torchrl_quiet() -> Iterator[None]:
    """TorchRL's logger at WARNING at least, for the block. Wrapping a vector env, TorchRL
    checks the terminal-observation reader with a rollout and logs two INFO lines about
    it, one of which asks to provide specs that this wrapping cannot pass: at every
    evaluation they would interleave with the progress bar."""
    logger = logging.getLogger("torchrl")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
