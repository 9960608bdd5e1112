"""The recurrent state-space model of DreamerV3 and its block-diagonal GRU core."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from torchdreamer.functional import unimix_logits
from torchdreamer.modules.layers import MLP, BlockLinear, RMSNorm, sample_one_hot
from torchdreamer.modules.size import ModelSize

__all__ = ["RSSM", "BlockGRU"]


class BlockGRU(nn.Module):
    """DreamerV3's recurrent core: ``(deter, stoch, action) -> deter'``.

    The deterministic state, the flat stochastic sample and the action are each embedded
    by their own ``Linear -> RMSNorm -> SiLU`` of width ``hidden``. ``deter`` is cut into
    ``blocks`` slices; every block sees its own slice of ``deter`` and all three
    embeddings, through ``dyn_layers`` block-diagonal ``Linear -> RMSNorm -> SiLU``
    layers and a block-diagonal gate layer. Block ``k``'s gate outputs are its
    ``(reset, candidate, update)`` slices, and

    ``deter' = σ(u - 1) tanh(σ(r) c) + (1 - σ(u - 1)) deter``

    (the -1 makes a new cell keep most of its state at first). Continuous actions are
    divided by ``max(1, |a|)`` first, as in the official core.

    Args:
        stoch_size: Size of the flat stochastic sample.
        action_dim: Size of the action vector.
        size: ``deter``, ``hidden``, ``blocks`` and ``dyn_layers``.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import BlockGRU, ModelSize
        >>> core = BlockGRU(stoch_size=8, action_dim=2, size=ModelSize(deter=16, hidden=4))
        >>> core(torch.zeros(3, 16), torch.zeros(3, 8), torch.ones(3, 2)).shape
        torch.Size([3, 16])

    """

    def __init__(self, stoch_size: int, action_dim: int, size: ModelSize) -> None:
        super().__init__()
        deter, hidden, blocks = size.deter, size.hidden, size.blocks
        self.deter_size, self.blocks = deter, blocks
        self.deter_in = MLP(deter, None, hidden, layers=1)
        self.stoch_in = MLP(stoch_size, None, hidden, layers=1)
        self.action_in = MLP(action_dim, None, hidden, layers=1)
        # Block k of the first layer reads [deter slice k, the three embeddings].
        width = deter + blocks * 3 * hidden
        self.hidden_layers = nn.ModuleList()
        for _ in range(size.dyn_layers):
            self.hidden_layers.append(BlockLinear(width, deter, blocks))
            self.hidden_layers.append(RMSNorm(deter, eps=1e-4))
            width = deter
        self.gates = BlockLinear(width, 3 * deter, blocks)

    def forward(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor):
        action = action / action.abs().clamp(min=1.0).detach()
        embeds = [self.deter_in(deter), self.stoch_in(stoch), self.action_in(action)]
        embeds = torch.cat(embeds, -1)
        blocks = self.blocks
        x = deter.unflatten(-1, (blocks, -1))
        first, norm = self.hidden_layers[0], self.hidden_layers[1]
        # The embeddings are the same for every block: their part of each block's
        # matrix is applied once, as one dense map to all blocks' outputs, instead of
        # repeating them ``blocks`` times.
        own, shared = first.weight.split([x.shape[-1], embeds.shape[-1]], dim=1)
        x = torch.einsum("...gi,gio->...go", x, own)
        x = x + torch.einsum("...e,geo->...go", embeds, shared)
        x = nn.functional.silu(norm(x.flatten(-2) + first.bias))
        for index in range(2, len(self.hidden_layers), 2):
            layer, norm = self.hidden_layers[index], self.hidden_layers[index + 1]
            x = nn.functional.silu(norm(layer(x)))
        gates = self.gates(x).unflatten(-1, (blocks, -1))
        reset, cand, update = (part.flatten(-2) for part in gates.chunk(3, -1))
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1)
        return update * cand + (1 - update) * deter


class RSSM(nn.Module):
    """Deterministic GRU state ``deter`` plus categorical latents ``stoch``.

    ``stoch`` is a flat ``[..., categoricals * classes]`` vector of one-hot
    samples with straight-through gradients; every categorical mixes in 1% of
    a uniform distribution. The core is :class:`BlockGRU`; the prior reads
    ``deter`` through ``img_layers`` hidden layers, the posterior reads
    ``[deter, embed]`` through ``obs_layers``. Samples are drawn with
    :func:`~torchdreamer.modules.sample_one_hot` (no ``multinomial`` in the loop).

    Args:
        action_dim: Size of the (one-hot or continuous) action vector.
        embed_dim: Size of the observation embedding.
        size: The :class:`~torchdreamer.modules.ModelSize` (``deter``, ``hidden``,
            ``categoricals``, ``classes``, ``blocks`` and the layer counts).
        unimix: Uniform mixing of the latents.

    Examples:
        >>> import torch
        >>> from torchdreamer.modules import RSSM, ModelSize
        >>> size = ModelSize(deter=16, hidden=16, categoricals=4, classes=4)
        >>> rssm = RSSM(action_dim=2, embed_dim=8, size=size)
        >>> starts = torch.zeros(3, 5, dtype=torch.bool)
        >>> out = rssm.observe(torch.randn(3, 5, 8), torch.randn(3, 5, 2), starts)
        >>> out["stoch"].shape, out["deter"].shape, out["posterior_logits"].shape
        (torch.Size([3, 5, 16]), torch.Size([3, 5, 16]), torch.Size([3, 5, 4, 4]))

    """

    def __init__(
        self, action_dim: int, embed_dim: int, size: ModelSize | None = None, unimix: float = 0.01
    ) -> None:
        super().__init__()
        size = ModelSize() if size is None else size
        self.deter_size, self.classes = size.deter, size.classes
        self.categoricals = size.categoricals
        self.stoch_size = size.stoch_size
        self.unimix = unimix
        #: Steps per :meth:`obs_steps` call in :meth:`observe` (see there).
        self.chunk = 8
        self.core = BlockGRU(self.stoch_size, action_dim, size)
        self.prior_net = MLP(size.deter, self.stoch_size, size.hidden, size.img_layers)
        self.posterior_net = MLP(
            size.deter + embed_dim, self.stoch_size, size.hidden, size.obs_layers
        )

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
        one_hot = sample_one_hot(logits)
        if not (torch.is_grad_enabled() and logits.requires_grad):
            return one_hot.flatten(-2)
        probs = logits.exp()
        # (probs - probs.detach()) is exactly 0: the values stay exact one-hots.
        return (one_hot + (probs - probs.detach())).flatten(-2)

    def prior(self, deter: torch.Tensor) -> torch.Tensor:
        """The prior's logits ``[..., categoricals, classes]`` at ``deter``.

        Examples:
            >>> import torch
            >>> from torchdreamer.modules import RSSM, ModelSize
            >>> size = ModelSize(deter=16, hidden=16, categoricals=4, classes=4)
            >>> RSSM(action_dim=2, embed_dim=8, size=size).prior(torch.zeros(3, 5, 16)).shape
            torch.Size([3, 5, 4, 4])
        """
        return self._logits(self.prior_net(deter))

    def img_step(
        self, stoch: torch.Tensor, deter: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of the prior: ``(stoch', deter', prior_logits)``."""
        deter = self.core(deter, stoch, action.to(stoch.dtype))
        prior_logits = self.prior(deter)
        return self.sample(prior_logits), deter, prior_logits

    def obs_step(
        self,
        stoch: torch.Tensor,
        deter: torch.Tensor,
        prev_action: torch.Tensor,
        embed: torch.Tensor,
        is_first: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One filtering step: ``(stoch', deter', posterior_logits)``.

        Where ``is_first``, the previous state and action are reset to zero first. The
        prior at ``deter'`` is not computed (acting needs none; :meth:`observe` computes
        it for the whole sequence at once, as :meth:`prior`).
        """
        keep = (~is_first).unsqueeze(-1).to(stoch.dtype)
        stoch, deter, prev_action = stoch * keep, deter * keep, prev_action * keep
        deter = self.core(deter, stoch, prev_action.to(stoch.dtype))
        posterior_logits = self._logits(self.posterior_net(deter, embed))
        return self.sample(posterior_logits), deter, posterior_logits

    def obs_steps(
        self,
        stoch: torch.Tensor,
        deter: torch.Tensor,
        prev_action: torch.Tensor,
        embed: torch.Tensor,
        is_first: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`obs_step` along a ``[B, K]`` chunk: ``stoch``, ``deter`` and
        ``posterior_logits``, each ``[B, K, ...]``.

        Examples:
            >>> import torch
            >>> from torchdreamer.modules import RSSM, ModelSize
            >>> size = ModelSize(deter=16, hidden=16, categoricals=4, classes=4)
            >>> rssm = RSSM(action_dim=2, embed_dim=8, size=size)
            >>> stoch, deter = rssm.initial(torch.Size([3]))
            >>> action, embed = torch.randn(3, 5, 2), torch.randn(3, 5, 8)
            >>> first = torch.zeros(3, 5, dtype=torch.bool)
            >>> out = rssm.obs_steps(stoch, deter, action, embed, first)
            >>> [part.shape for part in out]
            [torch.Size([3, 5, 16]), torch.Size([3, 5, 16]), torch.Size([3, 5, 4, 4])]
        """
        steps = []
        for t in range(embed.shape[1]):
            stoch, deter, post = self.obs_step(
                stoch, deter, prev_action[:, t], embed[:, t], is_first[:, t]
            )
            steps.append((stoch, deter, post))
        stochs, deters, posts = (torch.stack(column, 1) for column in zip(*steps, strict=True))
        return stochs, deters, posts

    def observe(
        self,
        embed: torch.Tensor,
        prev_action: torch.Tensor,
        is_first: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        obs_steps: Callable[..., tuple[torch.Tensor, ...]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Filter a ``[B, T]`` sequence.

        The steps run as :meth:`obs_steps` over chunks of :attr:`chunk` steps: one
        compiled graph per chunk (``training/compiled.py``), so that a compiled update
        makes few calls and accumulates each parameter's gradient once per chunk
        rather than once per step, without unrolling all ``T`` steps into one graph.
        The prior is computed once, on all the ``deter`` states.

        Args:
            embed: ``[B, T, embed_dim]`` observation embeddings.
            prev_action: ``[B, T, action_dim]``, the action that led to each observation.
            is_first: ``[B, T]`` episode starts.
            state: ``(stoch, deter)`` before the first step; zeros if ``None``.
            obs_steps: What filters a chunk, :meth:`obs_steps` if ``None`` (a compiled
                update passes it compiled: ``torch.compile(rssm.obs_steps)``).

        Returns:
            ``stoch``, ``deter`` ``[B, T, ...]`` and ``posterior_logits``,
            ``prior_logits`` ``[B, T, categoricals, classes]``.
        """
        batch = embed.shape[:1]
        stoch, deter = self.initial(batch, embed.device) if state is None else state
        obs_steps = self.obs_steps if obs_steps is None else obs_steps
        chunks = []
        for start in range(0, embed.shape[1], self.chunk):
            part = slice(start, start + self.chunk)
            inputs = prev_action[:, part], embed[:, part], is_first[:, part]
            chunk = obs_steps(stoch, deter, *inputs)
            stoch, deter = chunk[0][:, -1], chunk[1][:, -1]
            chunks.append(chunk)
        stochs, deters, posts = (torch.cat(column, 1) for column in zip(*chunks, strict=True))
        return {
            "stoch": stochs,
            "deter": deters,
            "posterior_logits": posts,
            "prior_logits": self.prior(deters),
        }
