"""DreamerV3's optimiser: adaptive gradient clipping, then LaProp, with warm-up."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["DreamerV3Optimizer"]


class DreamerV3Optimizer(torch.optim.Optimizer):
    """DreamerV3's optimiser, with TorchRL's signature, parameter groups and state names.

    Per parameter tensor ``w`` with gradient ``g``, as the official chain
    ``clip_by_agc, scale_by_rms, scale_by_momentum, scale_by_learning_rate``
    (``embodied/jax/opt.py``, ``dreamerv3/agent.py``):

    1. adaptive clipping: ``g *= u / max(‖g‖, u)`` with
       ``u = agc * max(‖w‖, parameter_norm_min)``;
    2. ``ν = β₂ ν + (1 - β₂) g²`` and ``g / (sqrt(ν / (1 - β₂ᵗ)) + ε)`` (the
       "RMS" state);
    3. ``μ = β₁ μ + (1 - β₁) u`` (the "momentum" state) and
       ``w -= lr_t μ / (1 - β₁ᵗ)``,

    with ``lr_t = lr * min(1, (t - 1) / warmup_steps)``: optax's linear
    warm-up reads the update count before it is incremented, so the first
    update has learning rate 0. Unlike Adam, the momentum averages normalised
    gradients, so one step moves each weight by at most about ``lr``.

    The moments are float32 whatever the parameters' dtype (the official
    ``zeros_like(t, f32)``), each parameter group counts its own updates
    (``group["step"]``), parameters without a gradient are skipped, and an
    update where no parameter has a gradient raises ``RuntimeError``. The
    parameter groups and the state (``"rms"``, ``"momentum"``) are named as in
    ``torchrl.trainers.algorithms.DreamerV3Optimizer``, so state_dicts move
    between the two.

    Args:
        parameters: Parameters, or parameter-group dicts whose options
            override the defaults below.

    Keyword Args:
        lr: Learning rate after warm-up (official 4e-5).
        agc: Clip each gradient's norm to this fraction of its parameter's norm
            (official 0.3); 0 disables clipping.
        parameter_norm_min: Lower bound of the parameter norm in the clip
            (official 1e-3).
        beta1: Momentum decay (official 0.9).
        beta2: Decay of the squared-gradient average (official 0.999).
        eps: Added to the RMS (official 1e-20).
        warmup_steps: Updates of the linear learning-rate warm-up (official
            1000); 0 disables it.
        laprop: (torchdreamer) The arithmetic of one step, :meth:`laprop` if ``None``;
            a compiled update passes ``torch.compile(DreamerV3Optimizer.laprop)``, which
            then receives the per-step scalars as 0-dim tensors (see
            :attr:`scalars_as_tensors`).

    Examples:
        >>> import torch
        >>> from torchdreamer import DreamerV3Optimizer
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = DreamerV3Optimizer([w], lr=0.1, warmup_steps=0)
        >>> (w ** 2).sum().backward()
        >>> opt.step()
        >>> w.detach()
        tensor([0.9000, 0.9000, 0.9000])
        >>> sorted(opt.state[w]), opt.param_groups[0]["step"]
        (['momentum', 'rms'], 1)

    """

    def __init__(
        self,
        parameters: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float = 4e-5,
        agc: float = 0.3,
        parameter_norm_min: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-20,
        warmup_steps: int = 1000,
        laprop: Callable[..., None] | None = None,
    ) -> None:
        if not (lr > 0 and eps >= 0 and agc >= 0 and parameter_norm_min > 0 and warmup_steps >= 0):
            raise ValueError(
                "need lr > 0, eps >= 0, agc >= 0, parameter_norm_min > 0 and warmup_steps >= 0; "
                f"got lr={lr}, eps={eps}, agc={agc}, parameter_norm_min={parameter_norm_min}, "
                f"warmup_steps={warmup_steps}."
            )
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"need 0 <= beta1, beta2 < 1; got {beta1} and {beta2}.")
        defaults = dict(
            lr=lr,
            agc=agc,
            parameter_norm_min=parameter_norm_min,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            warmup_steps=warmup_steps,
            step=0,
        )
        super().__init__(parameters, defaults)
        self._arithmetic = type(self).laprop if laprop is None else laprop
        if laprop is not None:
            self.scalars_as_tensors = True
        self._scalar_tensors: dict[tuple[int, torch.device], tuple[torch.Tensor, ...]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copy or unpickled optimiser (torch keeps only defaults, state and groups)
        # makes its own scalar tensors.
        super().__setstate__(state)
        self._scalar_tensors = {}
        self.__dict__.setdefault("_arithmetic", type(self).laprop)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """Update the parameters that have gradients; return the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not any(p.grad is not None for group in self.param_groups for p in group["params"]):
            raise RuntimeError(
                "DreamerV3Optimizer.step() found no parameter gradients: call backward() first."
            )
        for index, group in enumerate(self.param_groups):
            if not self.captured:
                group["step"] += 1
            step = group["step"]
            # The multi-tensor kernels take one device and dtype per call.
            buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    buckets.setdefault((p.device, p.dtype), []).append(p)
            for params in buckets.values():
                self._update(index, group, params, step)
        return loss

    @staticmethod
    def _scalars(group: dict[str, Any], step: int) -> tuple[float, float, float]:
        """Step ``step``'s learning rate and the two bias corrections."""
        warmup = group["warmup_steps"]
        lr = group["lr"] * (min(1.0, (step - 1) / warmup) if warmup else 1.0)
        return lr, 1 - group["beta2"] ** step, 1 - group["beta1"] ** step

    def _filled(
        self, index: int, device: torch.device, scalars: tuple[float, ...]
    ) -> tuple[torch.Tensor, ...]:
        """Group ``index``'s scalar tensors on ``device``, filled with ``scalars``."""
        if (index, device) not in self._scalar_tensors:
            zeros = tuple(torch.zeros((), device=device) for _ in scalars)
            self._scalar_tensors[index, device] = zeros
        # Filled in place: a fill is a kernel launch that carries the number, where a
        # new tensor from a host value is a copy (on a GPU, one that waits for it).
        tensors = self._scalar_tensors[index, device]
        return tuple(t.fill_(x) for t, x in zip(tensors, scalars, strict=True))

    #: A step captured in a CUDA graph
    #: (:class:`~torchdreamer.training.static_update.StaticUpdate`): :meth:`step` then
    #: neither counts the step nor fills its scalars, which a graph would replay as the
    #: numbers of the captured step; it reads the scalar tensors that :meth:`advance`
    #: filled before it.
    captured = False

    def advance(self) -> None:
        """The host's part of one :meth:`step` when :attr:`captured`: count the step in
        every group and fill its scalars (learning rate, bias corrections) into the
        tensors the captured step reads. Call it before each replay of the graph.

        Examples:
            >>> import torch
            >>> from torchdreamer import DreamerV3Optimizer
            >>> w = torch.nn.Parameter(torch.ones(3))
            >>> opt = DreamerV3Optimizer([w], lr=0.1, warmup_steps=0)
            >>> opt.captured = True
            >>> opt.advance()  # the host's part ...
            >>> (w ** 2).sum().backward()
            >>> opt.step()  # ... and the device's, as a graph would replay it
            >>> w.detach(), opt.param_groups[0]["step"]
            (tensor([0.9000, 0.9000, 0.9000]), 1)
        """
        for index, group in enumerate(self.param_groups):
            group["step"] += 1
            scalars = self._scalars(group, group["step"])
            for device in dict.fromkeys(p.device for p in group["params"]):
                self._filled(index, device, scalars)

    #: Pass the per-step scalars (learning rate, bias corrections) to :meth:`laprop` as
    #: 0-dim tensors: a compiled ``laprop`` (the ``laprop`` argument) then stays one
    #: graph instead of recompiling for every new step count.
    scalars_as_tensors = False

    def _update(
        self, index: int, group: dict[str, Any], params: list[torch.Tensor], step: int
    ) -> None:
        states = [self.state[p] for p in params]
        for state, p in zip(states, params, strict=True):
            if not state:
                state["rms"] = torch.zeros_like(p, dtype=torch.float32)
                state["momentum"] = torch.zeros_like(p, dtype=torch.float32)
        device = params[0].device
        scalars: tuple[Any, ...]
        if self.captured:
            if (index, device) not in self._scalar_tensors:
                raise RuntimeError(
                    "DreamerV3Optimizer.captured is set but advance() has not filled the "
                    f"scalars of parameter group {index} on {device}: call advance() first."
                )
            scalars = self._scalar_tensors[index, device]
        elif self.scalars_as_tensors:
            scalars = self._filled(index, device, self._scalars(group, step))
        else:
            scalars = self._scalars(group, step)
        self._arithmetic(
            params,
            [p.grad for p in params],
            [s["rms"] for s in states],
            [s["momentum"] for s in states],
            group["agc"],
            group["parameter_norm_min"],
            group["beta1"],
            group["beta2"],
            group["eps"],
            *scalars,
        )

    @staticmethod
    def laprop(
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        rms: list[torch.Tensor],
        momentum: list[torch.Tensor],
        agc: float,
        parameter_norm_min: float,
        beta1: float,
        beta2: float,
        eps: float,
        lr: float | torch.Tensor,
        rms_correction: float | torch.Tensor,
        momentum_correction: float | torch.Tensor,
    ) -> None:
        """Steps 1-3 of the class docstring on same-device, same-dtype tensors, in place."""
        grads = [g.float() for g in grads]
        if agc:
            # u / max(|g|, u): 1 below the limit, the clip above it.
            limits = torch._foreach_norm([p.float() for p in params])
            torch._foreach_clamp_min_(limits, parameter_norm_min)
            torch._foreach_mul_(limits, agc)
            scales = torch._foreach_div(
                limits, torch._foreach_maximum(torch._foreach_norm(grads), limits)
            )
            grads = torch._foreach_mul(grads, scales)
        torch._foreach_mul_(rms, beta2)
        torch._foreach_addcmul_(rms, grads, grads, value=1 - beta2)
        denom = torch._foreach_div(rms, rms_correction)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        torch._foreach_mul_(momentum, beta1)
        torch._foreach_add_(momentum, torch._foreach_div(grads, denom), alpha=1 - beta1)
        updates = torch._foreach_div(momentum, momentum_correction)
        if params[0].dtype != torch.float32:
            updates = [u.to(p.dtype) for u, p in zip(updates, params, strict=True)]
        if isinstance(lr, torch.Tensor):
            torch._foreach_add_(params, torch._foreach_mul(updates, -lr))
        else:
            torch._foreach_add_(params, updates, alpha=-lr)
