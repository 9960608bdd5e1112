"""The world model as a TorchRL-style environment that the actor loss imagines in."""

from __future__ import annotations

from tensordict import TensorDict, TensorDictBase
from torch import nn

from torchdreamer import keys
from torchdreamer.modules.rssm import RSSM

__all__ = ["ImaginationEnv"]


class ImaginationEnv(nn.Module):
    """The world model as an imagination environment for :class:`DreamerV3ActorLoss`.

    ``reset(td)`` keeps the given ``state`` (flat stoch) and ``belief``
    (deter); ``step(td)`` applies ``td["action"]`` through the prior and
    writes ``("next", "state")``, ``("next", "belief")`` and the decoded
    ``("next", "reward")`` of the reward head at the new state.

    Args:
        rssm: The :class:`~torchdreamer.modules.RSSM`.
        reward_head: A module of ``(stoch, deter)`` returning ``(logits, value)``,
            e.g. :class:`~torchdreamer.modules.TwoHotHead`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchdreamer.modules import RSSM, ImaginationEnv, ModelSize, TwoHotHead
        >>> size = ModelSize(deter=16, hidden=16, categoricals=4, classes=4)
        >>> rssm = RSSM(action_dim=2, embed_dim=8, size=size)
        >>> env = ImaginationEnv(rssm, TwoHotHead(rssm.feature_size, hidden=16))
        >>> td = TensorDict(
        ...     state=torch.zeros(3, 16), belief=torch.zeros(3, 16), action=torch.ones(3, 2),
        ...     batch_size=[3],
        ... )
        >>> env.step(env.reset(td))["next", "reward"].shape
        torch.Size([3, 1])

    """

    def __init__(self, rssm: RSSM, reward_head: nn.Module) -> None:
        super().__init__()
        self.rssm = rssm
        self.reward_head = reward_head

    def reset(self, tensordict: TensorDictBase) -> TensorDictBase:
        return tensordict.clone(recurse=False)

    def step(self, tensordict: TensorDictBase) -> TensorDictBase:
        stoch, deter, _ = self.rssm.img_step(
            tensordict.get(keys.STATE), tensordict.get(keys.BELIEF), tensordict.get(keys.ACTION)
        )
        _, reward = self.reward_head(stoch, deter)
        outcome = {keys.STATE: stoch, keys.BELIEF: deter, keys.REWARD: reward}
        tensordict.set(keys.NEXT, TensorDict(outcome, batch_size=tensordict.batch_size))
        return tensordict
