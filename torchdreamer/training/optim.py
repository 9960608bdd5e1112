"""DreamerV3's optimiser: adaptive gradient clipping, then LaProp, with warm-up."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["LaProp"]


class LaProp(torch.optim.Optimizer):
    """LaProp (RMS-normalise each gradient, then momentum) with per-tensor AGC.

    Per parameter tensor ``w`` with gradient ``g``, as in the official code:

    1. adaptive clipping: ``g *= min(1, agc * max(‖w‖, 1e-3) / ‖g‖)``;
    2. ``ν = β₂ ν + (1 - β₂) g²`` and ``u = g / (sqrt(ν / (1 - β₂ᵗ)) + ε)``;
    3. ``μ = β₁ μ + (1 - β₁) u`` and ``w -= lr_t μ / (1 - β₁ᵗ)``,

    with ``lr_t`` rising linearly from 0 to ``lr`` over ``warmup`` steps.
    Unlike Adam, the momentum averages normalised gradients, so one step
    moves each weight by at most about ``lr``.

    Examples:
        >>> import torch
        >>> from torchdreamer.training.optim import LaProp
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = LaProp([w], lr=0.1, warmup=0)
        >>> (w ** 2).sum().backward()
        >>> opt.step()
        >>> w.detach()
        tensor([0.9000, 0.9000, 0.9000])
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 4e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-20,
        agc: float = 0.3,
        warmup: int = 1000,
    ) -> None:
        if lr <= 0 or eps < 0 or agc < 0 or warmup < 0:
            raise ValueError("need lr > 0, eps >= 0, agc >= 0 and warmup >= 0.")
        defaults = dict(lr=lr, betas=betas, eps=eps, agc=agc, warmup=warmup)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            beta1, beta2 = group["betas"]
            if group["agc"]:
                # Clip each tensor's gradient norm relative to its weight norm.
                weight_norms = torch._foreach_norm(params)
                grad_norms = torch._foreach_norm(grads)
                limits = torch._foreach_clamp_min(weight_norms, 1e-3)
                torch._foreach_mul_(limits, group["agc"])
                torch._foreach_div_(limits, torch._foreach_clamp_min(grad_norms, 1e-30))
                torch._foreach_clamp_max_(limits, 1.0)
                grads = torch._foreach_mul(grads, limits)
            states = [self.state[p] for p in params]
            for state, p in zip(states, params, strict=True):
                if not state:
                    state["step"] = 0
                    state["nu"] = torch.zeros_like(p)
                    state["mu"] = torch.zeros_like(p)
                state["step"] += 1
            step = states[0]["step"]
            nus = [s["nu"] for s in states]
            mus = [s["mu"] for s in states]
            torch._foreach_mul_(nus, beta2)
            torch._foreach_addcmul_(nus, grads, grads, value=1 - beta2)
            denom = torch._foreach_div(nus, 1 - beta2**step)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            updates = torch._foreach_div(grads, denom)
            torch._foreach_mul_(mus, beta1)
            torch._foreach_add_(mus, updates, alpha=1 - beta1)
            warm = min(1.0, step / group["warmup"]) if group["warmup"] else 1.0
            torch._foreach_add_(params, mus, alpha=-group["lr"] * warm / (1 - beta1**step))
