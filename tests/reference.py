"""Plain Python restatements of the official DreamerV3 formulas, shared by the tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def ref_lambda_return(reward, cont, boot, gamma, lmbda, last=None):
    """The official recursion, one trajectory, Python floats, walking back from R_T = b_T."""
    steps = len(reward)
    last = last or [0.0] * steps
    returns = [0.0] * (steps - 1)
    running = boot[-1]
    for t in reversed(range(steps - 1)):
        mix = lmbda * (1 - last[t + 1])
        running = reward[t + 1] + gamma * cont[t + 1] * ((1 - mix) * boot[t + 1] + mix * running)
        returns[t] = running
    return returns


def ref_weights(cont, gamma):
    """w_t = gamma^t * c_0 * ... * c_t."""
    out, running = [], 1.0
    for t, c in enumerate(cont):
        running *= c if t == 0 else gamma * c
        out.append(running)
    return out


def ref_symlog(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def ref_symexp(x: float) -> float:
    return math.copysign(math.expm1(abs(x)), x)


def ref_bins(num_bins: int) -> torch.Tensor:
    """The official construction, restated with Python floats."""
    n = (num_bins + 1) // 2 if num_bins % 2 else num_bins // 2
    half = [
        ref_symexp(-20.0 + 20.0 * i / (n - 1)) if n > 1 else ref_symexp(-20.0) for i in range(n)
    ]
    mirror = [-v for v in reversed(half[:-1] if num_bins % 2 else half)]
    return torch.tensor(half + mirror, dtype=torch.float64)


def official_reference_path() -> Path:
    """The official outputs in the nearest ``shared/`` above the tests (a clone or a worktree)."""
    name = "shared/reference/official_dreamerv3_twohot.json"
    folders = Path(__file__).resolve().parents
    return next((f / name for f in folders if (f / name).exists()), folders[2] / name)


def official_bins(num_bins: int = 255) -> torch.Tensor:
    """The grid the official code computes (float32, here widened to float64), from its outputs.

    The official float32 ``linspace`` and ``expm1`` round it: it differs from :func:`ref_bins`
    by up to 1.3e-6 relative at 255 bins. Recorded for 255 and 5 bins.
    """
    table = json.loads(official_reference_path().read_text())["bins"]
    return torch.tensor(table[str(num_bins)]["bins"], dtype=torch.float32).double()


def ref_two_hot(x: float, bins: list[float]) -> list[float]:
    """Dense two-hot of one value by a linear scan, in float64."""
    out = [0.0] * len(bins)
    if x <= bins[0]:
        out[0] = 1.0
        return out
    if x >= bins[-1]:
        out[-1] = 1.0
        return out
    for i in range(len(bins) - 1):
        if bins[i] <= x < bins[i + 1]:
            w_above = (x - bins[i]) / (bins[i + 1] - bins[i])
            out[i] += 1.0 - w_above
            out[i + 1] += w_above
            return out
    raise AssertionError("unreachable")


def ref_encode(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    b = bins.double().tolist()
    rows = [ref_two_hot(v, b) for v in x.double().reshape(-1).tolist()]
    return torch.tensor(rows, dtype=torch.float64).reshape(*x.shape, len(b))


def ref_cross_entropy(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor):
    logits = logits.double()
    return -(ref_encode(target, bins) * torch.log_softmax(logits, -1)).sum(-1)


def ref_decode(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    return (torch.softmax(logits.double(), -1) * bins.double()).sum(-1)


def ref_probs(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    return [e / sum(exps) for e in exps]


def ref_kl(p_logits: list[float], q_logits: list[float]) -> float:
    p, q = ref_probs(p_logits), ref_probs(q_logits)
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


#: Unit roundoff of each floating dtype a test may compute in.
_EPS = {
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
    torch.float32: 2.0**-24,
    torch.float64: 2.0**-53,
}


def assert_close_to_reference(actual: torch.Tensor, expected, *, scale=None, ulps: float = 64.0):
    """Compare a computed tensor with a float64 reference at the tolerance of ``actual``'s dtype.

    The allowed error is ``ulps`` unit roundoffs of the dtype that was computed, relative to
    each expected value and, in absolute terms, to ``scale``: the largest magnitude involved
    in the computation (by default the largest expected value, at least 1). A float32 result
    computed on any x86 CPU passes; a wrong formula does not.
    """
    expected = torch.as_tensor(expected, dtype=torch.float64)
    eps = _EPS[actual.dtype]
    if scale is None:
        scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.detach().double(), expected, rtol=ulps * eps, atol=ulps * eps * scale
    )
