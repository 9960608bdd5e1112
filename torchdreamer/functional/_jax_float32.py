"""``linspace`` and ``expm1`` in float32, rounded as JAX rounds them on CPU.

The official two-hot grid is ``symexp(linspace(-20, 0, n))`` computed by JAX in
float32. Its values depend on how XLA's CPU backend evaluates those two
functions: ``linspace`` as ``start * (1 - i * fl(1 / (n - 1)))`` with the
inner product and difference fused into one rounding, and ``expm1`` as
``exp(x) - 1`` (or ``tanh(x / 2) * (exp(x) + 1)`` for ``|x| <= 1/2``), where
``exp`` and ``tanh`` are XLA's own polynomial approximations, evaluated with
fused multiply-adds. Torch's correctly rounded (or Sleef) float32 ``exp``
differs from it by an ulp on some of the 255 grid values, and a plain
``linspace`` by an ulp on others; this module reproduces both bit for bit.

A fused multiply-add of float32 numbers is evaluated in float64, where the
product is exact, and rounded once more to float32.
"""

from __future__ import annotations

import torch

__all__ = ["expm1", "linspace"]

_F32 = torch.float32


def _fma(a: torch.Tensor, b: torch.Tensor | float, c: torch.Tensor | float) -> torch.Tensor:
    """``a * b + c`` of float32 values (numbers are rounded to float32 first), rounded once."""
    b, c = (v.double() if torch.is_tensor(v) else _f32(v).double() for v in (b, c))
    return (a.double() * b + c).to(_F32)


def _f32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=_F32)


def linspace(start: float, stop: float, num: int) -> torch.Tensor:
    """``jnp.linspace(start, stop, num, dtype=float32)`` on CPU, for ``stop == 0``."""
    if stop != 0:
        raise ValueError("only linspace(start, 0, num) is reproduced.")
    if num == 1:
        return _f32(start).reshape(1)
    step = _f32(1.0) / (num - 1)
    remaining = _fma(torch.arange(num - 1, dtype=_F32), -step, 1.0)  # 1 - i * step
    return torch.cat([_f32(start) * remaining, torch.zeros(1, dtype=_F32)])


def _exp(x: torch.Tensor) -> torch.Tensor:
    """XLA's float32 ``exp``: ``2^n e^r`` with ``r = x - n log 2`` and a degree-7 polynomial."""
    x = x.clamp(-87.8, 88.8)
    n = _fma(x, 1.442695, 0.5).floor().clamp(-127, 127)  # round(x / log 2)
    r = _fma(n, -0.693359375, x)  # log 2 in two parts, so that n * log 2 is exact enough
    r = _fma(n, 2.1219444e-4, r)
    poly = _fma(r, 1.9875691e-4, 1.3981999e-3)
    for coefficient in (8.333452e-3, 4.1665796e-2, 1.6666666e-1, 0.5):
        poly = _fma(poly, r, coefficient)
    y = _fma(poly, r * r, r) + 1  # e^r = 1 + r + r^2 poly(r)
    return torch.ldexp(y, n)


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """XLA's float32 ``tanh``: a rational approximation, ``x`` itself near 0."""
    clamped = x.clamp(-7.9988117, 7.9988117)
    square = clamped * clamped
    numerator = _fma(square, -2.7607684e-16, 2.000188e-13)
    for coefficient in (-8.604672e-11, 5.1222973e-08, 1.48572235e-05, 6.3726195e-04, 4.8935246e-03):
        numerator = _fma(numerator, square, coefficient)
    denominator = _fma(square, 1.1982584e-06, 1.1853471e-04)
    for coefficient in (2.2684347e-03, 4.893525e-03):
        denominator = _fma(denominator, square, coefficient)
    return torch.where(x.abs() < 4e-4, x, clamped * numerator / denominator)


def expm1(x: torch.Tensor) -> torch.Tensor:
    """``jnp.expm1`` of a float32 tensor on CPU."""
    exp = _exp(x)
    half = x * 0.5
    small = _tanh(half) * (exp + 1)  # e^x - 1 = tanh(x / 2) (e^x + 1)
    out = torch.where(x.abs() > 0.5, exp - 1, small)
    return torch.where(half == 0, x, out)
