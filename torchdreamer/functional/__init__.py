"""DreamerV3's math as pure tensor functions, usable without any module.

Examples:
    >>> import torch
    >>> from torchdreamer import functional as F
    >>> bins = F.two_hot_bins(255)
    >>> logits = torch.zeros(3, 255, requires_grad=True)
    >>> F.two_hot_cross_entropy(logits, torch.tensor([0.0, 1.0, 1e3]), bins).shape
    torch.Size([3])
"""

from torchdreamer.functional.kl import categorical_kl, clip_free_nats, kl_balance, unimix_logits
from torchdreamer.functional.returns import discount_weights, lambda_return, return_percentiles
from torchdreamer.functional.symlog import symexp, symlog
from torchdreamer.functional.two_hot import (
    two_hot_bins,
    two_hot_cross_entropies,
    two_hot_cross_entropy,
    two_hot_decode,
    two_hot_encode,
)

__all__ = [
    "categorical_kl",
    "clip_free_nats",
    "discount_weights",
    "kl_balance",
    "lambda_return",
    "return_percentiles",
    "symexp",
    "symlog",
    "two_hot_bins",
    "two_hot_cross_entropies",
    "two_hot_cross_entropy",
    "two_hot_decode",
    "two_hot_encode",
    "unimix_logits",
]
