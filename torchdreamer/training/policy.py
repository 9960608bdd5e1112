"""A trained agent, loaded from its run directory, acting on raw observations.

:func:`load_agent` reads a run (``config.json`` and ``checkpoint.pt``, checked
against each other) and returns a :class:`Policy`, which needs no training loop
and no environment: it takes observations as the run's environment returns them
and gives back actions the environment takes, carrying its recurrent state from
one step to the next. ``torchdreamer eval`` acts through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from torchdreamer.envs import EnvSpec, ResizeImage, make_env
from torchdreamer.training import distributed
from torchdreamer.training.agent import DreamerAgent
from torchdreamer.training.checkpoint import CHECKPOINT
from torchdreamer.training.config import Config
from torchdreamer.training.run_directory import read_run

__all__ = ["Policy", "load_agent"]

Observation = np.ndarray | torch.Tensor | Mapping[str, Any] | TensorDictBase


def _restored(value: Any) -> Any:
    """A value of ``dataclasses.asdict(spec)`` with its sequences as tuples again."""
    if isinstance(value, dict):
        return {key: _restored(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_restored(item) for item in value)
    return value


def _spec_of_run(checkpoint: dict[str, Any], config: Config, path: Path) -> EnvSpec:
    """The checkpoint's :class:`EnvSpec`; a checkpoint written before it was stored there
    (an older run) gets it from an environment made as the run made its own."""
    stored = checkpoint.get("env_spec")
    if stored is None:
        probe, spec = make_env(config.env, 1, config.seed, config.image_size, config.obs)
        probe.close()
        return spec
    try:
        return EnvSpec(**_restored(stored))
    except TypeError as error:
        raise ValueError(
            f"{path} holds an environment spec this torchdreamer cannot read ({error}); "
            "load it with the torchdreamer version that trained it."
        ) from None


def load_agent(logdir: str | Path, device: str | torch.device = "cpu") -> Policy:
    """The trained policy of the run in ``logdir``, on ``device``, ready to act.

    The checkpoint's checksum is verified and its config must agree with
    ``config.json`` (:func:`~torchdreamer.training.run_directory.read_run`). The
    environment's spec is read from the checkpoint, so no environment is made (a
    checkpoint of an older run, which lacks it, makes one to learn it). The agent is in
    eval mode.

    Examples:
        >>> import tempfile
        >>> import gymnasium as gym
        >>> from pathlib import Path
        >>> from torchdreamer.training import Config
        >>> from torchdreamer.training.loop import train
        >>> from torchdreamer.training.policy import load_agent
        >>> logdir = Path(tempfile.mkdtemp()) / "run"
        >>> config = Config(steps=32, num_envs=2, batch_size=2, batch_length=8,
        ...                 train_ratio=4, imagination_horizon=3, threads=1)
        >>> _ = train(config, logdir, progress=False)
        >>> policy = load_agent(logdir)
        >>> env = gym.make("CartPole-v1")
        >>> observation, _ = env.reset(seed=0)
        >>> action, state = policy.act(observation)  # state=None: the episode's start
        >>> action in (0, 1), env.action_space.contains(action)
        (True, True)
        >>> observation, reward, terminated, truncated, _ = env.step(action)
        >>> action, state = policy.act(observation, state)
    """
    config, checkpoint = read_run(logdir, map_location="cpu")
    resolved = distributed.device_for(str(device), distributed.Ranks())
    config.device = str(resolved)
    spec = _spec_of_run(checkpoint, config, Path(logdir) / CHECKPOINT)
    agent = DreamerAgent.from_spec(spec, config)
    agent.load_state_dict(checkpoint["agent"])
    agent.to(resolved).eval()
    return Policy(agent, spec, config)


class Policy:
    """A DreamerV3 agent's policy, acting on raw observations, one step at a time.

    :meth:`act` takes observations as the environment returns them and gives
    actions as it takes them; ``state`` carries what the policy remembers between
    two steps: the world model's latent state, the previous action and whether the
    next step starts an episode. Make one with :func:`load_agent`, or from an agent
    of your own with the :class:`~torchdreamer.envs.EnvSpec` of its
    environment and its config.

    **One observation or a batch.** An observation with as many dimensions as the
    run's observation shape (:attr:`spec`'s ``observation_shape``, e.g. ``(4,)`` or
    ``(64, 64, 3)``) is one observation, and the action comes back alone (an ``int``
    for ``Discrete``, a float array of the ``Box``'s shape); with one dimension more,
    the leading one counts environments stepped together, and the actions come back
    as arrays with that leading dimension. A dict observation (``Dict`` space) is one
    or a batch by its entries, which must agree. Images (``uint8``, channel last) of
    another height and width are resized as training resized them
    (:class:`~torchdreamer.envs.ResizeImage`; not the entries of a dict
    observation, which training took as they were). Any other shape, dtype of image
    or set of keys raises a :class:`ValueError` naming what was expected.

    **Episodes.** ``state=None`` starts new episodes; so does :meth:`initial_state`.
    With a batch, :meth:`reset` starts new episodes where some ended.

    Examples:
        >>> import numpy as np
        >>> from torchdreamer.training import Config, DreamerAgent
        >>> from torchdreamer.envs import EnvSpec
        >>> from torchdreamer.training.policy import Policy
        >>> config = Config(imagination_horizon=3)
        >>> agent = DreamerAgent((4,), 2, discrete=True, config=config).eval()
        >>> policy = Policy(agent, EnvSpec((4,), discrete=True, action_dim=2), config)
        >>> action, state = policy.act(np.zeros(4, np.float32))  # one observation
        >>> type(action).__name__
        'int'
        >>> actions, state = policy.act(np.zeros((3, 4), np.float32))  # three at once
        >>> actions.shape, actions.dtype, state.batch_size
        ((3,), dtype('int64'), torch.Size([3]))
        >>> state = policy.reset(state, np.array([False, True, False]))  # the second ended
        >>> actions, state = policy.act(np.zeros((3, 4), np.float32), state, explore=True)
        >>> policy.act(np.zeros(5, np.float32))
        Traceback (most recent call last):
        ...
        ValueError: the observation has shape (5,); this policy takes (4,) (one observation) \
or (N, 4) (N of them).
    """

    def __init__(self, agent: DreamerAgent, spec: EnvSpec, config: Config) -> None:
        if agent.action_dim != spec.action_dim or agent.discrete != spec.discrete:
            raise ValueError(
                f"the agent acts with {agent.action_dim} {_kind(agent.discrete)} actions, the "
                f"spec's environment with {spec.action_dim} {_kind(spec.discrete)} ones."
            )
        self.agent = agent
        """The :class:`~torchdreamer.training.DreamerAgent` that acts."""
        self.spec = spec
        """The environment's :class:`~torchdreamer.envs.EnvSpec`."""
        self.config = config
        """The run's :class:`~torchdreamer.training.Config`."""

    def __repr__(self) -> str:
        return (
            f"Policy({self.config.env}: observations {self.spec.observation_shape}, "
            f"{self.spec.action_dim} {_kind(self.spec.discrete)} actions, on {self.device})"
        )

    @property
    def device(self) -> torch.device:
        """Where the agent computes."""
        return next(self.agent.parameters()).device

    # --------------------------------------------------------------------- state
    def initial_state(self, batch: int = 1) -> TensorDict:
        """The state of ``batch`` environments at an episode's start: ``stoch`` and
        ``deter`` (the latent), ``action`` (the previous one) and ``is_first``."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}.")
        state = self.agent.initial_state(batch)
        state.set("is_first", torch.ones(batch, dtype=torch.bool, device=self.device))
        return state

    def reset(self, state: TensorDictBase, done: Any = None) -> TensorDictBase:
        """``state`` with a new episode starting at the next step where ``done`` is true
        (a bool per environment; None: everywhere)."""
        self._check_state(state)
        n = state.batch_size[0]
        if done is None:
            ended = torch.ones(n, dtype=torch.bool, device=self.device)
        else:
            ended = torch.as_tensor(done, device=self.device)
            if ended.dtype != torch.bool or ended.shape not in ((n,), ()):
                raise ValueError(
                    f"done must be a bool or {n} bools (one per environment of the state), "
                    f"got {ended.dtype} of shape {tuple(ended.shape)}."
                )
            ended = ended.expand(n)
        fresh = state.clone()
        fresh.set("is_first", state["is_first"] | ended)
        keep = (~ended).unsqueeze(-1).to(state["action"].dtype)
        fresh.set("action", state["action"] * keep)
        return fresh

    def _check_state(self, state: Any, n: int | None = None) -> None:
        keys = ("stoch", "deter", "action", "is_first")
        if not isinstance(state, TensorDictBase) or any(k not in state.keys() for k in keys):
            raise ValueError(
                f"state must be what act() or initial_state() returned (a TensorDict of "
                f"{', '.join(keys)}), or None to start new episodes; got {type(state).__name__}."
            )
        if state.batch_dims != 1:
            raise ValueError(
                f"the state has batch size {tuple(state.batch_size)}; a policy's state has one "
                "dimension, its environments (see initial_state())."
            )
        if n is not None and state.batch_size[0] != n:
            raise ValueError(
                f"the state is for {state.batch_size[0]} environments and the observation for "
                f"{n}: pass state=None (or initial_state({n})) to start new episodes."
            )

    # -------------------------------------------------------------- observations
    def _image_side(self, shape: tuple[int, ...]) -> int | None:
        """The side raw images are resized to, None when they are taken as they are."""
        if len(shape) == 3 and shape[0] == shape[1]:
            return shape[0]
        return None

    def _one(
        self, value: Any, shape: tuple[int, ...], what: str, side: int | None
    ) -> tuple[torch.Tensor, bool]:
        """One entry as a ``[N, *shape]`` tensor, and whether it was a batch."""
        tensor = value if isinstance(value, torch.Tensor) else _tensor(value, what)
        given, image = tuple(tensor.shape), len(shape) == 3
        if tensor.dim() == len(shape):
            batched, tensor = False, tensor.unsqueeze(0)
        elif tensor.dim() == len(shape) + 1:
            batched = True
        else:
            batched = None
        fits = batched is not None and (
            tensor.shape[-1] == shape[-1]
            and (tensor.shape[1:] == shape or (image and side is not None))
        )
        if not fits:
            if image and side is not None:
                one = f"(H, W, {shape[-1]}) (any height and width: resized to {side} x {side})"
                many = f"(N, H, W, {shape[-1]})"
            else:
                one, many = str(tuple(shape)), str((-1, *shape)).replace("-1", "N")
            raise ValueError(
                f"{what} has shape {given}; this policy takes {one} (one observation) or "
                f"{many} (N of them)."
            )
        if image and tensor.dtype != torch.uint8:
            raise ValueError(
                f"{what} is an image of {tensor.dtype}; this policy takes uint8 images "
                "(0 to 255, channel last), as the environment gives them."
            )
        if image and tuple(tensor.shape[1:3]) != tuple(shape[:2]):
            frames = tensor.cpu().numpy()
            resized = [ResizeImage.resize(frame, side) for frame in frames]
            tensor = torch.from_numpy(np.stack(resized))
        return tensor.to(self.device), batched

    def _prepared(self, observation: Observation) -> tuple[torch.Tensor | TensorDict, bool]:
        """The observation as the agent reads it (``[N, ...]`` on its device), and whether
        it was a batch."""
        shape = self.spec.observation_shape
        is_dict = isinstance(observation, Mapping | TensorDictBase)
        if not isinstance(shape, dict):
            if is_dict:
                raise ValueError(
                    f"this policy takes an array of shape {shape} (or a batch of them), "
                    f"not a dict of {sorted(observation.keys())}."
                )
            return self._one(observation, shape, "the observation", self._image_side(shape))
        if not is_dict:
            raise ValueError(
                f"this policy takes a dict of {', '.join(f'{k!r}: {v}' for k, v in shape.items())}"
                f" (its environment's Dict observation), not {type(observation).__name__}."
            )
        given = set(observation.keys())
        missing, unknown = sorted(set(shape) - given), sorted(given - set(shape))
        if missing or unknown:
            wrong = [f"missing {missing}"] if missing else []
            wrong += [f"unknown {unknown}"] if unknown else []
            raise ValueError(
                f"the observation's keys do not match the run's: {'; '.join(wrong)} "
                f"(expected {sorted(shape)})."
            )
        entries = {
            key: self._one(observation[key], shape[key], f"the observation's {key!r}", None)
            for key in shape
        }
        layouts = {(batched, value.shape[0]) for value, batched in entries.values()}
        if len(layouts) > 1:
            raise ValueError(
                "the observation's entries disagree on the batch: each is one observation "
                "(its key's shape) or N of them (one more leading dimension, the same N)."
            )
        [(batched, n)] = layouts
        values = {key: value for key, (value, _) in entries.items()}
        return TensorDict(values, batch_size=[n], device=self.device), batched

    # -------------------------------------------------------------------- acting
    def act_torchrl(
        self,
        observation: Observation,
        state: TensorDictBase | None = None,
        *,
        explore: bool = False,
    ) -> tuple[torch.Tensor, TensorDictBase]:
        """:meth:`act`, with the action as a TorchRL wrapper of the environment takes it
        (:meth:`EnvSpec.to_env_action <torchdreamer.envs.EnvSpec.to_env_action>`:
        one-hot for ``Discrete``, in the bounds for ``Box``), a CPU tensor."""
        prepared, batched = self._prepared(observation)
        n = prepared.shape[0]
        if state is None:
            state = self.initial_state(n)
        else:
            self._check_state(state, n)
        action, after = self.agent.act(prepared, state["is_first"], state, explore)
        state = after.select("stoch", "deter", "action")
        state.set("is_first", torch.zeros(n, dtype=torch.bool, device=self.device))
        env_action = self.spec.to_env_action(action.cpu())
        return (env_action if batched else env_action[0]), state

    def act(
        self,
        observation: Observation,
        state: TensorDictBase | None = None,
        *,
        explore: bool = False,
    ) -> tuple[Any, TensorDictBase]:
        """The action for ``observation`` and the state for the next step.

        Args:
            observation: What the environment returned (one, or a batch: see the class).
            state: What the previous call returned; None at an episode's start.
            explore: Sample the action, as in training; by default take the most
                likely one, as evaluation does.

        Returns:
            ``(action, state)``: an ``int`` (``Discrete``) or a float array within
            the ``Box``'s bounds, or arrays of them for a batch; and the new state.
        """
        env_action, state = self.act_torchrl(observation, state, explore=explore)
        return self._gymnasium(env_action), state

    def _gymnasium(self, env_action: torch.Tensor) -> Any:
        """The action in the form a gymnasium environment takes."""
        spec = self.spec
        if spec.action_nvec:  # the components' indices already
            return env_action.numpy()
        if spec.discrete:  # TorchRL's one-hot: gymnasium takes the index
            index = env_action.argmax(-1).numpy()
            return int(index) if index.ndim == 0 else index
        values = env_action.to(torch.float32).numpy()  # a bfloat16 run's too
        # The bounds hold already; clipped against the last float's rounding.
        low = np.asarray(spec.action_low, values.dtype)
        high = np.asarray(spec.action_high, values.dtype)
        return np.clip(values, low, high)


def _tensor(value: Any, what: str) -> torch.Tensor:
    array = np.asarray(value)
    if not array.flags.writeable:  # torch warns of (and would share) a read-only array
        array = array.copy()
    try:
        return torch.as_tensor(array)
    except TypeError:
        raise ValueError(f"{what} is not an array of numbers (got {array.dtype}).") from None


def _kind(discrete: bool) -> str:
    return "discrete" if discrete else "continuous"
