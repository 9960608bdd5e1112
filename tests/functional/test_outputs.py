"""The output kinds of torchdreamer.functional.outputs against plain float64 restatements."""

from __future__ import annotations

import math

import pytest
import torch
from reference import (
    assert_close_to_reference,
    ref_bins,
    ref_cross_entropy,
    ref_decode,
    ref_encode,
    ref_symexp,
    ref_symlog,
)

from torchdreamer.functional.outputs import Bernoulli, SymlogMSE, TwoHot


def test_two_hot_builds_the_official_grid_or_keeps_the_given_one():
    assert_close_to_reference(TwoHot(255).bins, ref_bins(255))
    assert_close_to_reference(TwoHot(8).bins, ref_bins(8))
    assert TwoHot(255).event_size == 255
    grid = torch.tensor([-1.0, 0.0, 3.0])
    assert TwoHot(grid).bins is grid
    assert TwoHot(5, dtype=torch.float64).bins.dtype == torch.float64
    with pytest.raises(ValueError, match="1-D tensor"):
        TwoHot(torch.zeros(2, 3))


def test_two_hot_decode_encode_and_losses_match_the_reference():
    torch.manual_seed(0)
    head = TwoHot(255)
    logits = torch.randn(6, 255) * 3
    target = torch.tensor([0.0, 1.5, -20.0, 300.0, 1e9, -7e-4])
    assert_close_to_reference(head.decode(logits), ref_decode(logits, head.bins), scale=4.9e8)
    assert_close_to_reference(head.encode(target), ref_encode(target, head.bins))
    expected = ref_cross_entropy(logits, target, head.bins)
    assert_close_to_reference(head.loss(logits, target), expected, scale=50)
    weight = torch.rand(6)
    assert_close_to_reference(
        head.loss(logits, target, weight, reduction="mean"),
        (expected * weight.double()).mean(),
        scale=50,
    )
    assert_close_to_reference(head.loss(logits, target, reduction="sum"), expected.sum(), scale=300)
    other = target.flip(0)
    first, second = head.losses(logits, target, other)
    assert_close_to_reference(first, expected, scale=50)
    assert_close_to_reference(second, ref_cross_entropy(logits, other, head.bins), scale=50)


def test_two_hot_gradient_is_softmax_minus_two_hot():
    torch.manual_seed(1)
    head = TwoHot(15)
    logits = torch.randn(4, 15, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.0, 2.0, -30.0, 1e3], dtype=torch.float64)
    head.loss(logits, target, reduction="sum").backward()
    expected = torch.softmax(logits.detach(), -1) - ref_encode(target, head.bins.double())
    assert_close_to_reference(logits.grad, expected)


def test_symlog_mse_in_raw_and_symlog_prediction_space():
    prediction = torch.tensor([0.0, 2.0, -5.0, 100.0], requires_grad=True)
    target = torch.tensor([1.0, 2.0, 3.0, -4.0])
    pred, tgt = prediction.detach().tolist(), target.tolist()
    raw = [(ref_symlog(p) - ref_symlog(t)) ** 2 for p, t in zip(pred, tgt, strict=True)]
    in_symlog = [(p - ref_symlog(t)) ** 2 for p, t in zip(pred, tgt, strict=True)]
    assert_close_to_reference(SymlogMSE().loss(prediction, target), raw, scale=20)
    assert_close_to_reference(
        SymlogMSE(symlog_prediction=True).loss(prediction, target), in_symlog, scale=1e4
    )
    assert_close_to_reference(SymlogMSE().decode(prediction), pred, scale=100)
    assert_close_to_reference(
        SymlogMSE(symlog_prediction=True).decode(prediction[:3]),
        [ref_symexp(p) for p in pred[:3]],
        scale=150,
    )
    weight = torch.tensor([1.0, 0.0, 0.5, 2.0])
    out = SymlogMSE().loss(prediction, target, weight, reduction="mean")
    assert_close_to_reference(
        out, sum(r * w for r, w in zip(raw, weight.tolist(), strict=True)) / 4, scale=20
    )
    # The target gets no gradient, the prediction does.
    target.requires_grad_(True)
    SymlogMSE().loss(prediction, target, reduction="sum").backward()
    assert target.grad is None and prediction.grad is not None
    assert SymlogMSE().event_size is None


def test_bernoulli_probability_and_negative_log_likelihood():
    logit = torch.tensor([-3.0, 0.0, 2.0, 30.0])
    target = torch.tensor([False, True, True, False])
    sigmoid = [1 / (1 + math.exp(-v)) for v in logit.tolist()]
    assert_close_to_reference(Bernoulli().decode(logit), sigmoid)
    # -log p(target) = softplus(logit) - target * logit, stable for large logits.
    nll = [
        math.log1p(math.exp(-abs(v))) + max(v, 0.0) - t * v
        for v, t in zip(logit.tolist(), target.float().tolist(), strict=True)
    ]
    assert_close_to_reference(Bernoulli().loss(logit, target), nll, scale=30)
    assert_close_to_reference(Bernoulli().loss(logit, target, reduction="sum"), sum(nll), scale=30)


def test_an_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        SymlogMSE().loss(torch.zeros(2), torch.zeros(2), reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        Bernoulli().loss(torch.zeros(2), torch.zeros(2), reduction="avg")
