"""The recurrent state-space model of DreamerV3, and imagination inside it."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from torchdreamer.functional import unimix_logits
from torchdreamer.modules.layers import MLP, dreamer_init_

__all__ = ["RSSM", "ImaginationEnv", "NormGRUCell"]


class NormGRUCell(nn.Module):
    """GRU cell with RMS-normalised gates, as in DreamerV2/V3.

    ``reset, cand, update = split(norm(W [x, h]))``;
    ``h' = σ(update - 1) tanh(σ(reset) cand) + (1 - σ(update - 1)) h``. The -1
    makes a new cell keep most of its state at first.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import NormGRUCell
        >>> NormGRUCell(4, 8)(torch.randn(2, 4), torch.zeros(2, 8)).shape
        torch.Size([2, 8])
    """

    def __init__(self, in_features: int, hidden: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.linear = dreamer_init_(nn.Linear(in_features + hidden, 3 * hidden, bias=False))
        self.norm = nn.RMSNorm(3 * hidden, eps=eps)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        reset, cand, update = self.norm(self.linear(torch.cat([x, h], -1))).chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1)
        return update * cand + (1 - update) * h


class RSSM(nn.Module):
    """Deterministic GRU state ``deter`` plus categorical latents ``stoch``.

    ``stoch`` is a flat ``[..., categoricals * classes]`` vector of one-hot
    samples with straight-through gradients; every categorical mixes in 1% of
    a uniform distribution. Samples are drawn with the Gumbel-max trick, with
    no ``multinomial`` in the loop.

    Args:
        action_dim: Size of the (one-hot or continuous) action vector.
        embed_dim: Size of the observation embedding.
        deter: GRU state size.
        hidden: Hidden size of the input and output layers.
        categoricals: Number of categorical latents.
        classes: Classes per categorical.
        unimix: Uniform mixing of the latents.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import RSSM
        >>> rssm = RSSM(action_dim=2, embed_dim=8, deter=16, hidden=16, categoricals=4, classes=4)
        >>> starts = torch.zeros(3, 5, dtype=torch.bool)
        >>> out = rssm.observe(torch.randn(3, 5, 8), torch.randn(3, 5, 2), starts)
        >>> out["stoch"].shape, out["deter"].shape, out["posterior_logits"].shape
        (torch.Size([3, 5, 16]), torch.Size([3, 5, 16]), torch.Size([3, 5, 4, 4]))
    """

    def __init__(
        self,
        action_dim: int,
        embed_dim: int,
        deter: int = 512,
        hidden: int = 512,
        categoricals: int = 32,
        classes: int = 32,
        unimix: float = 0.01,
    ) -> None:
        super().__init__()
        self.deter_size, self.categoricals, self.classes = deter, categoricals, classes
        self.stoch_size = categoricals * classes
        self.unimix = unimix
        self.img_in = MLP(self.stoch_size + action_dim, None, hidden, layers=1)
        self.gru = NormGRUCell(hidden, deter)
        self.prior_net = MLP(deter, self.stoch_size, hidden, layers=1)
        self.posterior_net = MLP(deter + embed_dim, self.stoch_size, hidden, layers=1)

    @property
    def feature_size(self) -> int:
        """Size of ``cat([stoch, deter])``, the input of the heads."""
        return self.stoch_size + self.deter_size

    def initial(self, batch_shape: torch.Size, device: torch.device | None = None):
        """The all-zero state ``(stoch, deter)`` that episodes start from."""
        return (
            torch.zeros(*batch_shape, self.stoch_size, device=device),
            torch.zeros(*batch_shape, self.deter_size, device=device),
        )

    def _logits(self, raw: torch.Tensor) -> torch.Tensor:
        shape = (*raw.shape[:-1], self.categoricals, self.classes)
        return unimix_logits(raw.view(shape), self.unimix)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One-hot samples, flattened, with straight-through gradients to ``logits``."""
        uniform = torch.rand_like(logits).clamp_(min=1e-20)
        index = (logits - (-uniform.log()).log()).argmax(-1)
        one_hot = nn.functional.one_hot(index, self.classes).to(logits.dtype)
        if not (torch.is_grad_enabled() and logits.requires_grad):
            return one_hot.flatten(-2)
        probs = logits.exp()
        return (one_hot + probs - probs.detach()).flatten(-2)

    def img_step(
        self, stoch: torch.Tensor, deter: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of the prior: ``(stoch', deter', prior_logits)``."""
        deter = self.gru(self.img_in(torch.cat([stoch, action.to(stoch.dtype)], -1)), deter)
        prior_logits = self._logits(self.prior_net(deter))
        return self.sample(prior_logits), deter, prior_logits

    def obs_step(
        self,
        stoch: torch.Tensor,
        deter: torch.Tensor,
        prev_action: torch.Tensor,
        embed: torch.Tensor,
        is_first: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One filtering step: ``(stoch', deter', posterior_logits, prior_logits)``.

        Where ``is_first``, the previous state and action are reset to zero first.
        """
        keep = (~is_first).unsqueeze(-1).to(stoch.dtype)
        stoch, deter, prev_action = stoch * keep, deter * keep, prev_action * keep
        _, deter, prior_logits = self.img_step(stoch, deter, prev_action)
        posterior_logits = self._logits(self.posterior_net(torch.cat([deter, embed], -1)))
        return self.sample(posterior_logits), deter, posterior_logits, prior_logits

    def observe(
        self,
        embed: torch.Tensor,
        prev_action: torch.Tensor,
        is_first: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Filter a ``[B, T]`` sequence.

        Args:
            embed: ``[B, T, embed_dim]`` observation embeddings.
            prev_action: ``[B, T, action_dim]``, the action that led to each observation.
            is_first: ``[B, T]`` episode starts.
            state: ``(stoch, deter)`` before the first step; zeros if ``None``.

        Returns:
            ``stoch``, ``deter`` ``[B, T, ...]`` and ``posterior_logits``,
            ``prior_logits`` ``[B, T, categoricals, classes]``.
        """
        batch = embed.shape[:1]
        stoch, deter = self.initial(batch, embed.device) if state is None else state
        steps = []
        for t in range(embed.shape[1]):
            stoch, deter, post, prior = self.obs_step(
                stoch, deter, prev_action[:, t], embed[:, t], is_first[:, t]
            )
            steps.append((stoch, deter, post, prior))
        names = ("stoch", "deter", "posterior_logits", "prior_logits")
        columns = zip(*steps, strict=True)
        return {name: torch.stack(parts, 1) for name, parts in zip(names, columns, strict=True)}


class ImaginationEnv(nn.Module):
    """The world model as an imagination environment for :class:`DreamerV3ActorLoss`.

    ``reset(td)`` keeps the given ``state`` (flat stoch) and ``belief``
    (deter); ``step(td)`` applies ``td["action"]`` through the prior and
    writes ``("next", "state")``, ``("next", "belief")`` and the decoded
    ``("next", "reward")`` of the reward head at the new state.

    Args:
        rssm: The :class:`RSSM`.
        reward_head: A module of ``(stoch, deter)`` returning ``(logits, value)``,
            e.g. :class:`~torchdreamer.modules.TwoHotHead`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchdreamer.modules import RSSM, ImaginationEnv, TwoHotHead
        >>> rssm = RSSM(action_dim=2, embed_dim=8, deter=16, hidden=16, categoricals=4, classes=4)
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
            tensordict.get("state"), tensordict.get("belief"), tensordict.get("action")
        )
        _, reward = self.reward_head(stoch, deter)
        tensordict.set(
            "next",
            TensorDict(state=stoch, belief=deter, reward=reward, batch_size=tensordict.batch_size),
        )
        return tensordict
