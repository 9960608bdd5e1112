"""Replay of fixed-length sequences from per-environment streams, as DreamerV3 samples them."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict

__all__ = ["SequenceReplay"]


class SequenceReplay:
    """One ring buffer per environment; samples windows of consecutive steps.

    DreamerV3 trains on fixed-length chunks of each environment's stream that
    may cross episode boundaries (``is_first`` resets the RSSM inside a
    window), so every sampled window has exactly ``length`` steps, however
    short the episodes. TorchRL's ``SliceSampler`` slices within
    trajectories instead, and its storages share one write cursor, whereas
    environments here add rows at different rates (an episode's last step and
    the next episode's first step arrive together). Storage is a tensordict
    ``[num_envs, capacity // num_envs]``, allocated on the first ``add``.

    Args:
        num_envs: Parallel environment streams.
        capacity: Rows kept in all; each stream keeps ``capacity // num_envs``.
        generator: Random generator for sampling (its state is checkpointed
            with the run's).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchdreamer.training import SequenceReplay
        >>> replay = SequenceReplay(num_envs=2, capacity=20)
        >>> both = torch.tensor([True, True])
        >>> for t in range(6):
        ...     replay.add(TensorDict(step=torch.full((2,), t), batch_size=[2]), both)
        >>> window = replay.sample(batch_size=3, length=4)
        >>> window.batch_size, bool((window["step"].diff(dim=1) == 1).all())
        (torch.Size([3, 4]), True)
    """

    def __init__(
        self, num_envs: int, capacity: int, generator: torch.Generator | None = None
    ) -> None:
        self.num_envs = num_envs
        self.per_env = capacity // num_envs
        if self.per_env < 2:
            raise ValueError(f"capacity {capacity} is too small for {num_envs} environments.")
        self.generator = generator
        self.storage: TensorDict | None = None
        self.written = torch.zeros(num_envs, dtype=torch.long)  # rows ever added, per env

    def __len__(self) -> int:
        return int(self.written.clamp(max=self.per_env).sum())

    def add(self, rows: TensorDict, mask: torch.Tensor) -> None:
        """Append ``rows[e]`` to stream ``e`` wherever ``mask[e]``.

        Args:
            rows: ``[num_envs]`` tensordict of one step per environment.
            mask: ``[num_envs]`` bool, which environments add a row.
        """
        if rows.batch_size != torch.Size([self.num_envs]):
            raise ValueError(
                f"rows must have batch size [{self.num_envs}], got {list(rows.batch_size)}."
            )
        if self.storage is None:
            self.storage = rows.unsqueeze(1).expand(self.num_envs, self.per_env).clone().zero_()
        envs = mask.nonzero().squeeze(-1).cpu()
        slots = self.written[envs] % self.per_env
        self.storage[envs, slots] = rows[envs.to(rows.device)]
        self.written[envs] += 1

    def can_sample(self, length: int) -> bool:
        return bool((self.written >= length).any())

    def sample(self, batch_size: int, length: int) -> TensorDict:
        """``[batch_size, length]`` windows, uniform over every start in every stream."""
        if self.storage is None or not self.can_sample(length):
            raise RuntimeError(f"no stream holds {length} steps yet; add more before sampling.")
        kept = self.written.clamp(max=self.per_env)
        starts_per_env = (kept - length + 1).clamp(min=0)
        # Uniform over all valid (env, start) pairs: env weighted by its start count.
        env = torch.multinomial(
            starts_per_env.double(), batch_size, replacement=True, generator=self.generator
        )
        offset = (
            torch.rand(batch_size, generator=self.generator, dtype=torch.float64)
            * starts_per_env[env]
        ).long()
        oldest = self.written[env] - kept[env]
        steps = oldest.unsqueeze(1) + offset.unsqueeze(1) + torch.arange(length)
        return self.storage[env.unsqueeze(1), steps % self.per_env]

    def state_dict(self) -> dict[str, Any]:
        return {"storage": self.storage, "written": self.written.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.storage = state["storage"]
        self.written = state["written"].clone()
