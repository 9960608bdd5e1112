"""Stepping the environments with the agent, and turning steps into replay rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from torchdreamer.training.agent import LATENT, DreamerAgent
from torchdreamer.training.envs import EnvSpec

__all__ = ["EnvRunner", "Episode"]


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
        >>> from torchdreamer.training.envs import make_env
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
            latent = self.state.select("state", "belief").apply(lambda x: x.float().cpu())
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
