"""Stepping the environments with the agent, and turning steps into replay rows."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from torchdreamer import keys
from torchdreamer.envs import EnvSpec
from torchdreamer.training.agent import LATENT, DreamerAgent

__all__ = ["EnvRunner", "Episode"]

#: The runner's attributes that it is made with rather than accumulates by stepping.
_MADE_WITH = frozenset({"env", "spec", "agent", "device", "num_envs"})


@dataclass
class Episode:
    """A finished episode: its return, length, the env step it ended at and its environment."""

    env_step: int
    score: float
    length: int
    env: int = 0
    """Index of the environment that ran it (episodes ending on one step differ by it)."""


@dataclass
class _Streams:
    """Per-environment running values between two steps."""

    returns: torch.Tensor
    lengths: torch.Tensor


class EnvRunner:
    """Steps ``num_envs`` environments with the agent's policy.

    Each environment's stream follows the official per-step layout: a row
    holds an observation, the reward received on arriving at it, the action
    that led to it (``prev_action``, zero at an episode's first step) and its
    ``is_first``, ``is_last`` and ``is_terminal`` flags. When an episode ends,
    its last row and the next episode's first row are both written, so
    episodes are complete in the replay. ``step`` returns the rows to add:
    ``(rows, mask)`` pairs for :meth:`SequenceReplay.add`. With
    ``Config.replay_context``, each row the policy acted on also holds the
    posterior latent after observing it (:data:`~torchdreamer.training.agent.LATENT`,
    float32), as the official policy writes it; an episode's last row, never
    acted on, holds zeros (a window that starts there starts the next episode).

    Examples:
        >>> import torch
        >>> from torchdreamer.training import Config, DreamerAgent, SequenceReplay
        >>> from torchdreamer.envs import make_env
        >>> from torchdreamer.training.runner import EnvRunner
        >>> env, spec = make_env("CartPole-v1", num_envs=2, seed=0)
        >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config(imagination_horizon=3))
        >>> runner, replay = EnvRunner(env, spec, agent), SequenceReplay(2, 100)
        >>> for step in range(1, 11):
        ...     additions, episodes = runner.step(env_step=2 * step)
        ...     for rows, mask in additions:
        ...         replay.add(rows, mask)
        >>> sorted(replay.sample(batch_size=3, length=4).keys())  # doctest: +NORMALIZE_WHITESPACE
        ['index', 'is_first', 'is_last', 'is_terminal', 'latent', 'observation',
         'prev_action', 'reward']
        >>> env.close()
    """

    def __init__(self, env: EnvBase, spec: EnvSpec, agent: DreamerAgent) -> None:
        self.env, self.spec, self.agent = env, spec, agent
        self.num_envs = env.batch_size[0]
        self.device = next(agent.parameters()).device
        self.latents = bool(agent.config.replay_context)
        """Whether rows hold the policy's latents."""
        self.reset()

    def reset(self) -> None:
        """Start fresh episodes everywhere (the beginning of a run or a resume)."""
        self.td = self.env.reset()
        n = self.num_envs
        self.state = self.agent.initial_state(n)
        self.is_first = torch.ones(n, dtype=torch.bool)
        self.reward = torch.zeros(n)
        self.streams = _Streams(
            torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.long)
        )

    def state_dict(self) -> dict[str, Any]:
        """Where every environment is between two steps: its copies, pickled, and the
        runner's own values (the current observations, the acting state, the running
        scores), for :meth:`load_state_dict` to continue the very same episodes.

        ``"copies"`` is None where the copies cannot be saved faithfully: copies stepped
        in worker processes or by a vector env given from Python, a simulator that does
        not pickle, or one that pickles by being made again
        (:class:`gymnasium.utils.EzPickle`: MuJoCo, Box2D).

        Examples:
            >>> from torchdreamer.training import Config, DreamerAgent
            >>> from torchdreamer.envs import make_env
            >>> from torchdreamer.training.runner import EnvRunner
            >>> agent = DreamerAgent((4,), 2, discrete=True, config=Config())
            >>> def runner(seed):
            ...     env, spec = make_env("CartPole-v1", num_envs=2, seed=seed)
            ...     return EnvRunner(env, spec, agent)
            >>> first, second = runner(0), runner(1)
            >>> _ = first.step(env_step=2)
            >>> second.load_state_dict(first.state_dict())
            True
            >>> rows = [runner.step(env_step=4)[0][0][0] for runner in (first, second)]
            >>> bool((rows[0]["observation"] == rows[1]["observation"]).all())
            True
            >>> first.env.close(), second.env.close()
            (None, None)
        """
        own = {key: value for key, value in vars(self).items() if key not in _MADE_WITH}
        return {"copies": _pickled_copies(self.env), "runner": own}

    def load_state_dict(self, state: dict[str, Any] | None) -> bool:
        """Continue where :meth:`state_dict` was taken, if it saved the copies: True then;
        False (nothing changed: the episodes start afresh) otherwise."""
        copies = _copies(self.env)
        if not state or state.get("copies") is None or copies is None:
            return False
        restored = pickle.loads(state["copies"])
        if len(restored) != len(copies):
            return False
        for index, copy in enumerate(restored):
            copies[index].close()
            copies[index] = copy
        for key, value in state["runner"].items():
            current = getattr(self, key, None)
            if isinstance(current, torch.Tensor | TensorDictBase):
                value = value.to(current.device)
            setattr(self, key, value)
        return True

    def _rows(
        self,
        observation: torch.Tensor,
        prev_action: torch.Tensor,
        reward: torch.Tensor,
        is_first: torch.Tensor,
        is_last: torch.Tensor,
        is_terminal: torch.Tensor,
    ) -> TensorDict:
        return TensorDict(
            observation=observation,
            prev_action=prev_action.cpu(),
            reward=reward.float(),
            is_first=is_first,
            is_last=is_last,
            is_terminal=is_terminal,
            batch_size=[self.num_envs],
        )

    def step(
        self, env_step: int, explore: bool = True
    ) -> tuple[list[tuple[TensorDictBase, torch.Tensor]], list[Episode]]:
        """One step of every environment.

        Args:
            env_step: The run's environment-step count once this step is
                done: the date of the episodes that end on it.
            explore: Sample actions (training) or take the most likely one.

        Returns:
            ``(additions, episodes)``: rows for the replay and the episodes
            that ended on this step.
        """
        n = self.num_envs
        observation = self.spec.observation_of(self.td)
        none = torch.zeros(n, dtype=torch.bool)
        every = torch.ones(n, dtype=torch.bool)
        # The row of the current observation; prev_action is the state's action.
        current = self._rows(
            observation, self.state["action"], self.reward, self.is_first, none, none
        )
        action, self.state = self.agent.act(
            observation.to(self.device), self.is_first.to(self.device), self.state, explore
        )
        if self.latents:
            latent = self.state.select(keys.STOCH, keys.DETER).apply(lambda x: x.float().cpu())
            current.set(LATENT, latent.to("cpu"))
        self.td.set("action", self.spec.to_env_action(action.cpu()))
        out, self.td = self.env.step_and_maybe_reset(self.td)
        nxt = out.get("next")
        reward = nxt.get("reward").reshape(n)
        done = nxt.get("done").reshape(n)
        terminated = nxt.get("terminated").reshape(n)
        self.streams.returns += reward.double()
        self.streams.lengths += 1
        additions = [(current, every)]
        episodes = []
        if done.any():
            # The final observation of each ended episode, flagged last (and
            # terminal if the task ended rather than timed out).
            final = self._rows(
                self.spec.observation_of(nxt), action, reward, none, done, terminated
            )
            if self.latents:
                final.set(LATENT, torch.zeros_like(current.get(LATENT)))
            additions.append((final, done))
            for e in done.nonzero().squeeze(-1).tolist():
                episodes.append(
                    Episode(
                        env_step, float(self.streams.returns[e]), int(self.streams.lengths[e]), e
                    )
                )
            self.streams.returns[done] = 0
            self.streams.lengths[done] = 0
        # Next row: the new observation (a reset one where an episode ended).
        self.is_first = done.clone()
        self.reward = torch.where(done, torch.zeros_like(reward), reward)
        keep = (~done).to(self.device).unsqueeze(-1).to(self.state["action"].dtype)
        self.state.set("action", self.state["action"] * keep)
        return additions, episodes


def _copies(env: EnvBase) -> list[gym.Env] | None:
    """The gymnasium copies that ``env`` steps in this process, or None."""
    vector = getattr(env, "_env", None)  # GymWrapper's gymnasium vector env
    return vector.envs if type(vector) is gym.vector.SyncVectorEnv else None


def _pickled_copies(env: EnvBase) -> bytes | None:
    """The copies pickled, or None where that would not keep where they are."""
    copies = _copies(env)
    if copies is None:
        return None
    for copy in copies:
        layer = copy
        while layer is not None:
            if isinstance(layer, gym.utils.EzPickle):
                return None  # pickled as its constructor's arguments: made afresh
            layer = getattr(layer, "env", None) if isinstance(layer, gym.Wrapper) else None
    try:
        return pickle.dumps(copies)
    except Exception:  # a simulator without pickling (a C handle): started afresh
        return None
