"""Gymnasium environments for training: batched through TorchRL, validated up front."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torchrl.envs import GymWrapper

__all__ = ["EnvSpec", "ResizeImage", "make_env"]


@dataclass(frozen=True)
class EnvSpec:
    """What the agent needs to know of an environment."""

    observation_shape: tuple[int, ...]
    """``(D,)`` for vectors, ``(H, W, C)`` for ``uint8`` images."""
    discrete: bool
    action_dim: int
    """Number of actions (discrete) or the action vector's size (continuous)."""
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()

    def to_env_action(self, action: torch.Tensor) -> torch.Tensor:
        """Agent action (one-hot, or in ``[-1, 1]``) to what the environment takes."""
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
        >>> from torchdreamer.training.envs import ResizeImage
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
        image = torch.from_numpy(np.ascontiguousarray(observation)).permute(2, 0, 1)
        resized = torch.nn.functional.interpolate(
            image.unsqueeze(0).float(),
            size=(self.side, self.side),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _is_image(space: gym.Space) -> bool:
    return (
        isinstance(space, gym.spaces.Box)
        and len(space.shape) == 3
        and space.dtype == np.uint8
        and space.shape[-1] in (1, 3)
    )


def _spec_of(env_id: str, observation_space: gym.Space, action_space: gym.Space) -> EnvSpec:
    if not isinstance(observation_space, gym.spaces.Box):
        raise ValueError(
            f"{env_id}: the observation space is {observation_space}; torchdreamer supports "
            "a Box of a vector (D,) or of a channel-last image (H, W, C)."
        )
    shape = tuple(observation_space.shape)
    if not (len(shape) == 1 or _is_image(observation_space)):
        raise ValueError(
            f"{env_id}: the observation space is a Box of shape {shape} and dtype "
            f"{observation_space.dtype}; torchdreamer supports vectors (D,) and uint8 "
            "channel-last images (H, W, 1 or 3)."
        )
    if isinstance(action_space, gym.spaces.Discrete):
        return EnvSpec(shape, discrete=True, action_dim=int(action_space.n))
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
        f"{env_id}: the action space is {action_space}; torchdreamer supports Discrete "
        "and one-dimensional Box actions."
    )


def make_env(
    env_id: str, num_envs: int, seed: int, image_size: int = 64
) -> tuple[GymWrapper, EnvSpec]:
    """``num_envs`` copies of ``env_id`` stepped together, and their :class:`EnvSpec`.

    The copies run in this process (gymnasium's synchronous vector env, which
    is fastest for cheap simulators on a 2-core machine), reset themselves
    when an episode ends, and are wrapped as one TorchRL environment with
    batch size ``[num_envs]``. Image observations of another size than
    ``image_size x image_size`` are resized to it (:class:`ResizeImage`).

    Examples:
        >>> from torchdreamer.training.envs import make_env
        >>> env, spec = make_env("CartPole-v1", num_envs=3, seed=0)
        >>> env.batch_size, spec.observation_shape, spec.discrete, spec.action_dim
        (torch.Size([3]), (4,), True, 2)
        >>> env.close()
    """
    try:
        gym.spec(env_id)
    except gym.error.Error as error:
        raise ValueError(
            f"unknown environment id {env_id!r} ({error}); pass a registered gymnasium id "
            "such as CartPole-v1 or Pendulum-v1."
        ) from None

    def fit(env: gym.Env) -> gym.Env:
        space = env.observation_space
        if _is_image(space) and tuple(space.shape[:2]) != (image_size, image_size):
            return ResizeImage(env, image_size)
        return env

    vector = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        wrappers=[fit],
    )
    spec = _spec_of(env_id, vector.single_observation_space, vector.single_action_space)
    env = GymWrapper(vector, device="cpu")
    env.set_seed(seed)
    return env, spec
