"""DreamerV3's categorical latents: uniform mixing and the balanced KL terms."""

from __future__ import annotations

import torch

__all__ = ["categorical_kl", "clip_free_nats", "kl_balance", "unimix_logits"]


def unimix_logits(logits: torch.Tensor, mix: float = 0.01) -> torch.Tensor:
    """Logits of ``(1 - mix) * softmax(logits) + mix / K`` over the last dimension.

    DreamerV3 mixes 1% of a uniform distribution into the latents' categoricals so
    that no probability reaches 0 and KL terms stay finite (its policy mixes in none).

    Args:
        logits: ``[..., K]``.
        mix: Fraction of the uniform distribution, in ``[0, 1)``.

    Returns:
        Normalised log-probabilities ``[..., K]``.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import unimix_logits
        >>> unimix_logits(torch.tensor([0.0, -1e9]), mix=0.02).exp()
        tensor([0.9900, 0.0100])
    """
    if not 0 <= mix < 1:
        raise ValueError(f"mix must lie in [0, 1), got {mix}.")
    if logits.shape[-1] <= 16:
        # The same max-shifted softmax in pointwise operators, which suit many
        # tiny rows better than ATen's per-row softmax kernel.
        exp = (logits - logits.amax(-1, keepdim=True)).exp()
        probs = exp / exp.sum(-1, keepdim=True)
    else:
        probs = torch.softmax(logits, dim=-1)
    if mix:
        probs = (1 - mix) * probs + mix / logits.shape[-1]
    return probs.log()


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` of categoricals over the last dimension.

    Args:
        p_logits: ``[..., K]`` logits of ``p``.
        q_logits: ``[..., K]`` logits of ``q``.

    Returns:
        ``[...]`` divergences.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import categorical_kl
        >>> p = torch.tensor([1.0, 1.0]).log()
        >>> q = torch.tensor([3.0, 1.0]).log()
        >>> round(categorical_kl(p, q).item(), 4)  # 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25)
        0.1438
    """
    log_p = torch.log_softmax(p_logits, dim=-1)
    log_q = torch.log_softmax(q_logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def clip_free_nats(kl: torch.Tensor, free_nats: float) -> torch.Tensor:
    """DreamerV3's free-nats clip of a KL term: ``max(free_nats, kl)``.

    Below the clip the term is constant, so it passes no gradient: the
    latents are not pushed below ``free_nats`` of divergence.

    Args:
        kl: KL values of any shape.
        free_nats: The clip, ``>= 0``; 0 returns ``kl`` itself.

    Returns:
        The clipped values, same shape.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import clip_free_nats
        >>> clip_free_nats(torch.tensor([0.25, 3.0]), 1.0)
        tensor([1., 3.])
    """
    if not free_nats >= 0:
        raise ValueError(f"free_nats must be >= 0, got {free_nats}.")
    return kl.clamp(min=free_nats) if free_nats else kl


def kl_balance(
    posterior_logits: torch.Tensor, prior_logits: torch.Tensor, free_nats: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV3's dynamics and representation KL terms, per state.

    ``dyn = max(free, KL(sg(posterior) || prior))`` trains the prior only;
    ``rep = max(free, KL(posterior || sg(prior)))`` trains the posterior only.
    Each KL is summed over all categoricals of a state *before* the free-nats
    clip, as the official code does with its aggregated one-hot distribution.
    Pass logits that already include the unimix (see :func:`unimix_logits`);
    the loss scales are the caller's.

    Args:
        posterior_logits: ``[..., num_categoricals, num_classes]``.
        prior_logits: Same shape.
        free_nats: Lower clip of each term (official 1.0, see
            :func:`clip_free_nats`); 0 disables it.

    Returns:
        ``(dyn, rep)``, each ``[...]``.

    Examples:
        >>> import torch
        >>> from torchdreamer.functional import kl_balance
        >>> post = torch.zeros(2, 32, 32)
        >>> prior = torch.zeros(2, 32, 32)
        >>> dyn, rep = kl_balance(post, prior)
        >>> dyn.tolist(), rep.tolist()  # identical distributions: clipped at 1 nat
        ([1.0, 1.0], [1.0, 1.0])
    """
    if posterior_logits.shape != prior_logits.shape or posterior_logits.ndim < 2:
        raise ValueError(
            "posterior and prior logits must share one shape [..., num_categoricals, "
            f"num_classes]; got {tuple(posterior_logits.shape)} and "
            f"{tuple(prior_logits.shape)}."
        )
    # One log-softmax per side serves both terms; they differ only in which
    # side is held constant (same values, different gradients).
    log_post = torch.log_softmax(posterior_logits, dim=-1)
    log_prior = torch.log_softmax(prior_logits, dim=-1)
    post = log_post.exp()
    dyn = (post.detach() * (log_post.detach() - log_prior)).sum((-2, -1))
    rep = (post * (log_post - log_prior.detach())).sum((-2, -1))
    return clip_free_nats(dyn, free_nats), clip_free_nats(rep, free_nats)
