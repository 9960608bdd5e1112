"""Benchmark suites as gymnasium environments, preprocessed as in the official DreamerV3.

Three adapters, each on its suite's own package (installed with the extras of the same
name, ``pip install "torchdreamer[atari,dmc,crafter]"``):

- :class:`AtariEnv` (``ale-py``): ``atari100k:<game>`` and ``atari:<game>``;
- :class:`DMCEnv` (``dm-control``): ``dmc:<domain>_<task>``, proprioceptive or vision;
- :class:`CrafterEnv` (``crafter``): ``crafter``.

:func:`make_suite_env` turns such an id into one environment (``None`` for any other id, e.g.
a registered gymnasium id). Observations are a float32 vector or a channel-last uint8 image;
actions are ``Discrete`` or a ``Box`` in ``[-1, 1]``. ``terminated`` marks the end of the
task (game over, death, a DMC discount of 0), ``truncated`` a time limit. Rewards are the
suite's own, unclipped, summed over the repeated steps.

Each suite's env takes the official settings of its suite (:data:`ENV_SETTINGS`); the
official per-suite run settings are :data:`torchdreamer.training.config.OFFICIAL`
(``torchdreamer train --suite atari100k``; ``--show-config`` prints them).
"""

from __future__ import annotations

import collections
import importlib
import os
import types

import gymnasium as gym
import numpy as np

__all__ = [
    "ENV_SETTINGS",
    "AtariEnv",
    "CrafterEnv",
    "DMCEnv",
    "is_suite_id",
    "make_suite_env",
]


def _require(module: str, extra: str) -> types.ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this environment needs the Python package {module!r} ({error}); install it with "
            f'pip install "torchdreamer[{extra}]"'
        ) from None


def _image_space(size: tuple[int, int], channels: int) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255, (size[0], size[1], channels), np.uint8)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"size must be a positive int or (height, width); got {size!r}")
    return pair


class AtariEnv(gym.Env):
    """An Atari 2600 game on the Arcade Learning Environment, preprocessed as in DreamerV3.

    Each step repeats the action ``repeat`` times, sums the rewards (unclipped), takes the
    elementwise maximum of the screens of the last ``pooling`` repeats, resizes it to ``size``
    with Pillow's bilinear filter and, with ``gray``, weighs the channels 0.299/0.587/0.114
    (truncated to uint8). An episode that ends inside the repeats stops there (then the pooled
    screens are those last rendered, as in the official code). Reset starts a new game and
    plays a seeded uniform number of no-ops in ``[0, noops]`` (a new game on a game over).
    ``terminated`` is the game over; ``truncated`` is reaching ``length`` emulator frames.
    Lives are not used. ``sticky`` sets ALE's repeat-action probability to 0.25 (else 0).

    The defaults are the official ``atari100k`` settings; the official ``atari`` ones are
    ``size=(96, 96), gray=True, sticky=True, actions="all"``. ``actions="needed"`` is the
    game's minimal action set, ``"all"`` the 18 actions. Seeding (``seed`` or
    ``reset(seed=...)``): a numpy generator from the seed draws ALE's seed, then the no-op
    count of each reset.

    Examples:
        >>> from torchdreamer.envs.suites import AtariEnv
        >>> env = AtariEnv("pong", seed=0)
        >>> env.observation_space.shape, env.observation_space.dtype, env.action_space
        ((64, 64, 3), dtype('uint8'), Discrete(6))
        >>> image, info = env.reset(seed=0)
        >>> image.shape, image.dtype
        ((64, 64, 3), dtype('uint8'))
        >>> image, reward, terminated, truncated, info = env.step(0)
        >>> reward, terminated, truncated
        (0.0, False, False)
        >>> AtariEnv("pong", size=(96, 96), gray=True, sticky=True, actions="all").action_space
        Discrete(18)

    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        game: str,
        *,
        repeat: int = 4,
        size: int | tuple[int, int] = (64, 64),
        gray: bool = False,
        noops: int = 30,
        sticky: bool = False,
        actions: str = "needed",
        length: int = 108_000,
        pooling: int = 2,
        seed: int | None = None,
    ) -> None:
        ale_py = _require("ale_py", "atari")
        roms = _require("ale_py.roms", "atari")
        if actions not in ("needed", "all"):
            raise ValueError(f"actions must be 'needed' or 'all'; got {actions!r}")
        for name, value, least in (
            ("repeat", repeat, 1),
            ("pooling", pooling, 1),
            ("noops", noops, 0),
            ("length", length, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}; got {value!r}")
        if pooling > repeat:
            raise ValueError(f"pooling ({pooling}) cannot exceed repeat ({repeat})")
        game = {"james_bond": "jamesbond"}.get(game, game)
        self._rom = roms.get_rom_path(game) if game in roms.get_all_rom_ids() else None
        if self._rom is None:
            raise ValueError(
                f"unknown Atari game {game!r}; ale-py ships e.g. pong, breakout, "
                "ms_pacman, montezuma_revenge (all: ale_py.roms.get_all_rom_ids())"
            )
        self.game = game
        self.repeat, self.size, self.gray, self.noops = repeat, _pair(size), gray, noops
        self.sticky, self.length, self.pooling = sticky, length, pooling
        self._noop = ale_py.Action.NOOP
        self.ale = ale_py.ALEInterface()
        self.ale.setLoggerMode(ale_py.LoggerMode.Error)
        self._load(seed)
        self.action_set = list(
            self.ale.getMinimalActionSet() if actions == "needed" else self.ale.getLegalActionSet()
        )
        self.action_space = gym.spaces.Discrete(len(self.action_set))
        self.observation_space = _image_space(self.size, 1 if gray else 3)
        height, width = self.ale.getScreenDims()
        self._screens = collections.deque(
            [np.zeros((height, width, 3), np.uint8) for _ in range(pooling)], maxlen=pooling
        )
        self._frames = 0

    def _load(self, seed: int | None) -> None:
        # ALE reads its seed and the repeat-action probability when the ROM is loaded; set
        # after loading (as the official code does) the probability stays ALE's 0.25.
        self._rng = np.random.default_rng(seed)
        self.ale.setInt("random_seed", int(self._rng.integers(0, 2**31)))
        self.ale.setFloat("repeat_action_probability", 0.25 if self.sticky else 0.0)
        self.ale.loadROM(str(self._rom))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._load(seed)
        self.ale.reset_game()
        for _ in range(int(self._rng.integers(self.noops + 1))):
            self.ale.act(self._noop)
            if self.ale.game_over():
                self.ale.reset_game()
        self._render()
        for screen in list(self._screens)[1:]:
            np.copyto(screen, self._screens[0])
        self._frames = 0
        return self._observation(), {}

    def step(self, action: object):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        act = self.action_set[int(action)]
        reward, terminated, truncated = 0.0, False, False
        for repeat in range(self.repeat):
            reward += self.ale.act(act)
            self._frames += 1
            if repeat >= self.repeat - self.pooling:
                self._render()
            terminated = self.ale.game_over()
            truncated = not terminated and self._frames >= self.length
            if terminated or truncated:
                break
        return self._observation(), float(reward), terminated, truncated, {}

    def _render(self) -> None:
        self._screens.rotate(1)
        self.ale.getScreenRGB(self._screens[0])

    def _observation(self) -> np.ndarray:
        from PIL import Image

        pooled = np.max(np.stack(self._screens), axis=0)
        height, width = self.size
        image = np.asarray(Image.fromarray(pooled).resize((width, height), Image.BILINEAR))
        if self.gray:
            weights = np.array([0.299, 0.587, 1 - (0.299 + 0.587)])
            image = (image * weights).sum(-1).astype(np.uint8)[:, :, None]
        return image


_DMC_CAMERAS = {"quadruped": 2}
_DMC_ALIASES = {"cup": "ball_in_cup"}
_MUJOCO_GL_VALUES = ("egl", "osmesa", "glfw", "disable")


def _import_dm_control_suite() -> types.ModuleType:
    """``dm_control.suite``, with a headless OpenGL backend chosen and failures explained."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    backend = os.environ["MUJOCO_GL"]
    if backend not in _MUJOCO_GL_VALUES:
        raise ValueError(
            f"MUJOCO_GL={backend!r} is not a MuJoCo rendering backend; set it to egl (GPU or "
            "Mesa EGL), osmesa (software), or glfw (a display)"
        )
    _require("dm_control", "dmc")
    try:
        return importlib.import_module("dm_control.suite")
    except (AttributeError, ImportError, RuntimeError, OSError) as error:
        raise RuntimeError(_render_help(backend, error)) from error


def _render_help(backend: str, error: BaseException) -> str:
    return (
        f"MuJoCo could not set up rendering with MUJOCO_GL={backend!r} "
        f"({type(error).__name__}: {error}). Headless machines need MUJOCO_GL=egl with the "
        "EGL library (Debian: apt-get install libegl1) or MUJOCO_GL=osmesa with OSMesa "
        "(apt-get install libosmesa6); set MUJOCO_GL before Python imports dm_control."
    )


class DMCEnv(gym.Env):
    """A DeepMind Control Suite task, as the official DreamerV3 sees it.

    ``task`` is ``<domain>_<task>`` (``walker_walk``, ``cartpole_swingup``, ``cup_catch`` or
    ``ball_in_cup_catch``, ...). ``obs="proprio"`` gives all the task's readings as one
    float32 vector: each reading flattened (C order), concatenated in the sorted order of
    their names (the official encoder's order); ``obs="image"`` gives a ``size`` RGB render
    from camera ``camera`` (-1: the official choice, 2 for quadruped, else 0);
    ``obs="both"`` gives the two as a ``Dict`` observation with keys ``proprio`` and
    ``image``.

    Actions are in ``[-1, 1]`` per dimension, mapped linearly onto the task's bounds
    (clipped there first; a non-finite action raises). Each step repeats the action
    ``repeat`` times (the official default is 1) and sums the rewards; ``terminated`` is a
    discount of 0, ``truncated`` the task's time limit. Seeding: the task's random state is
    ``numpy.random.RandomState(seed)``.

    Rendering needs an OpenGL backend: ``MUJOCO_GL`` defaults to ``egl`` as in the official
    code; a backend that fails raises an error that says what to set or install.

    Examples:
        >>> from torchdreamer.envs.suites import DMCEnv
        >>> env = DMCEnv("cartpole_swingup", seed=0)
        >>> env.observation_space.shape, env.action_space.shape, env.keys
        ((5,), (1,), ('position', 'velocity'))
        >>> obs, info = env.reset(seed=0)
        >>> obs.dtype, obs.shape
        (dtype('float32'), (5,))
        >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        >>> 0.0 <= reward <= 1.0, terminated, truncated
        (True, False, False)

    """

    metadata = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def __init__(
        self,
        task: str,
        *,
        obs: str = "proprio",
        repeat: int = 1,
        size: int | tuple[int, int] = (64, 64),
        camera: int = -1,
        seed: int | None = None,
    ) -> None:
        if obs not in ("proprio", "image", "both"):
            raise ValueError(f"obs must be 'proprio', 'image' or 'both' for DMC; got {obs!r}")
        if not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"repeat must be an int >= 1; got {repeat!r}")
        self._suite = _import_dm_control_suite()
        self.domain, self.task = self._split(task)
        self.obs, self.repeat, self.size = obs, repeat, _pair(size)
        self.camera = _DMC_CAMERAS.get(self.domain, 0) if camera == -1 else camera
        self._load(seed)
        spec = self._env.action_spec()
        self._low = np.asarray(spec.minimum, np.float64)
        self._high = np.asarray(spec.maximum, np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        readings = self._env.observation_spec()
        self.keys = tuple(sorted(readings, key=lambda k: k.replace("/", "_")))
        size_ = sum(int(np.prod(readings[k].shape)) for k in self.keys)
        proprio = gym.spaces.Box(-np.inf, np.inf, (size_,), np.float32)
        if obs == "proprio":
            self.observation_space = proprio
        else:
            image = _image_space(self.size, 3)
            self.observation_space = (
                image if obs == "image" else gym.spaces.Dict(proprio=proprio, image=image)
            )
            try:
                self.render()
            except Exception as error:  # the GL backend fails only when first used
                raise RuntimeError(_render_help(os.environ["MUJOCO_GL"], error)) from error

    def _split(self, name: str) -> tuple[str, str]:
        tasks = set(self._suite.ALL_TASKS)
        for domain in sorted({d for d, _ in tasks} | set(_DMC_ALIASES), key=len, reverse=True):
            if name.startswith(domain + "_"):
                pair = (_DMC_ALIASES.get(domain, domain), name[len(domain) + 1 :])
                if pair in tasks:
                    return pair
        raise ValueError(
            f"unknown DMC task {name!r}; pass <domain>_<task> such as walker_walk, "
            "cartpole_swingup or cheetah_run (all: dm_control.suite.ALL_TASKS)"
        )

    def _load(self, seed: int | None) -> None:
        self._env = self._suite.load(self.domain, self.task, task_kwargs={"random": seed})

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._load(seed)
        return self._observation(self._env.reset()), {}

    def step(self, action: object):
        action = np.asarray(action, np.float64)
        if action.shape != self.action_space.shape or not np.isfinite(action).all():
            raise ValueError(
                f"action must be a finite array of shape {self.action_space.shape}; got {action!r}"
            )
        action = np.clip(action, -1.0, 1.0)
        action = self._low + (action + 1.0) / 2.0 * (self._high - self._low)
        reward = 0.0
        for _ in range(self.repeat):
            step = self._env.step(action)
            reward += step.reward or 0.0
            if step.last():
                break
        terminated = bool(step.last() and step.discount == 0)
        truncated = bool(step.last() and not terminated)
        return self._observation(step), float(reward), terminated, truncated, {}

    def render(self) -> np.ndarray:
        """The current ``size`` RGB view from the official camera (the image observation)."""
        height, width = self.size
        return self._env.physics.render(height, width, camera_id=self.camera)

    def _observation(self, step: object) -> np.ndarray | dict[str, np.ndarray]:
        if self.obs == "image":
            return self.render()
        readings = step.observation
        proprio = np.concatenate([np.ravel(readings[k]) for k in self.keys]).astype(np.float32)
        return proprio if self.obs == "proprio" else {"proprio": proprio, "image": self.render()}


class CrafterEnv(gym.Env):
    """Crafter (Hafner, 2021) with its own reward and episode length, as in DreamerV3.

    Observations are the ``size`` RGB view (64x64 officially), actions the 17 discrete ones.
    The reward is Crafter's: +1 per achievement unlocked for the first time in the episode,
    and +-0.1 per health point gained or lost. An episode ends on death (``terminated``) or
    after ``length`` steps (10000, ``truncated``). Seeding: ``crafter.Env(seed=seed)``, whose
    worlds follow from the seed and the episode count.

    Examples:
        >>> from torchdreamer.envs.suites import CrafterEnv
        >>> env = CrafterEnv(seed=0)
        >>> env.observation_space.shape, env.action_space
        ((64, 64, 3), Discrete(17))
        >>> image, info = env.reset(seed=0)
        >>> image.shape, image.dtype
        ((64, 64, 3), dtype('uint8'))
        >>> image, reward, terminated, truncated, info = env.step(0)
        >>> terminated, truncated
        (False, False)

    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        *,
        size: int | tuple[int, int] = (64, 64),
        length: int = 10_000,
        seed: int | None = None,
    ) -> None:
        self._crafter = _require("crafter", "crafter")
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1; got {length!r}")
        self.size, self.length = _pair(size), length
        self._load(seed)
        self.observation_space = _image_space(self.size, 3)
        self.action_space = gym.spaces.Discrete(int(self._env.action_space.n))

    def _load(self, seed: int | None) -> None:
        height, width = self.size
        self._env = self._crafter.Env(
            size=(width, height), reward=True, length=self.length, seed=seed
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._load(seed)
        return self._env.reset(), {}

    def step(self, action: object):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        image, reward, done, info = self._env.step(int(action))
        terminated = bool(done and info["discount"] == 0)
        return image, float(reward), terminated, bool(done and not terminated), {}


#: The official settings of each suite's env (``dreamerv3/configs.yaml``, ``env.<suite>``),
#: as our adapters' arguments; :func:`make_suite_env` builds each suite's env with them.
#: Left out, as the official: Atari ``lives: unused``, ``autostart: False``, ``pooling: 2``,
#: ``aggregate: max``, ``resize: pillow``, ``clip_reward: False``, ``length`` 108,000
#: frames; DMC ``camera: -1`` (2 for quadruped, else 0); Crafter ``logs: False``. The DMC
#: ``proprio`` and ``image`` flags are ``obs``; the image side is ``Config.image_size``.
ENV_SETTINGS: dict[str, dict[str, object]] = {
    "atari100k": dict(size=64, repeat=4, sticky=False, gray=False, actions="needed", noops=30),
    "atari": dict(size=96, repeat=4, sticky=True, gray=True, actions="all", noops=30),
    "dmc": dict(size=64, repeat=1),
    "crafter": dict(size=64),
}

_SUITES = tuple(ENV_SETTINGS)


def is_suite_id(env_id: str) -> bool:
    """Whether :func:`make_suite_env` builds ``env_id`` (its prefix names a suite).

    Examples:
        >>> from torchdreamer.envs.suites import is_suite_id
        >>> is_suite_id("atari100k:pong"), is_suite_id("crafter"), is_suite_id("CartPole-v1")
        (True, True, False)

    """
    return env_id.partition(":")[0] in _SUITES


def make_suite_env(
    env_id: str, seed: int | None = None, image_size: int | None = None, obs: str = "auto"
) -> gym.Env | None:
    """The benchmark-suite environment named ``env_id``, or ``None`` for any other id.

    ``atari100k:<game>`` and ``atari:<game>`` (:class:`AtariEnv`), ``dmc:<domain>_<task>``
    (:class:`DMCEnv`) and ``crafter`` (:class:`CrafterEnv`), each with the official settings
    of its suite (:data:`ENV_SETTINGS`). ``image_size`` overrides the official image side
    (64; 96 for ``atari``), ``obs`` picks the DMC observation (``"auto"``: proprio;
    ``"proprio"``, ``"image"`` or ``"both"``); the other suites only have images. A missing
    suite package raises an ImportError naming the extra.

    Examples:
        >>> from torchdreamer.envs.suites import make_suite_env
        >>> make_suite_env("CartPole-v1", seed=0) is None
        True
        >>> make_suite_env("atari100k:pong", seed=0).observation_space.shape
        (64, 64, 3)
        >>> make_suite_env("atari:pong", seed=0).observation_space.shape
        (96, 96, 1)
        >>> make_suite_env("dmc:walker_walk", seed=0).observation_space.shape
        (24,)

    """
    if not is_suite_id(env_id):
        return None
    suite, _, name = env_id.partition(":")
    if obs not in ("auto", "proprio", "image", "both"):
        raise ValueError(f"obs must be 'auto', 'proprio', 'image' or 'both'; got {obs!r}")
    if suite != "dmc" and obs not in ("auto", "image"):
        raise ValueError(f"{env_id}: only image observations exist; got obs={obs!r}")
    settings = dict(ENV_SETTINGS[suite], seed=seed)
    if image_size:
        settings["size"] = image_size
    if suite == "crafter":
        if name:
            raise ValueError(f"{env_id!r}: Crafter has one task; pass 'crafter'")
        return CrafterEnv(**settings)
    if not name:
        example = "pong" if suite.startswith("atari") else "walker_walk"
        raise ValueError(f"{env_id!r} names no task; pass e.g. '{suite}:{example}'")
    if suite == "dmc":
        return DMCEnv(name, obs="proprio" if obs == "auto" else obs, **settings)
    return AtariEnv(name, **settings)
