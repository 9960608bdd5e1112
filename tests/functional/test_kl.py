"""Unimix and KL balancing against plain Python references."""

from __future__ import annotations

import pytest
import torch
from reference import ref_kl, ref_probs

from torchdreamer.functional import categorical_kl, clip_free_nats, kl_balance, unimix_logits


@pytest.fixture
def latents():
    generator = torch.Generator().manual_seed(0)
    shape = (3, 4, 6, 5)  # batch, time, categoricals, classes
    post = torch.randn(shape, generator=generator, dtype=torch.float64) * 2
    prior = torch.randn(shape, generator=generator, dtype=torch.float64) * 2
    return post, prior


def test_unimix_matches_the_mixture():
    logits = torch.tensor([[3.0, 0.0, -50.0]], dtype=torch.float64)
    mixed = unimix_logits(logits, mix=0.01).exp()[0].tolist()
    expected = [0.99 * p + 0.01 / 3 for p in ref_probs(logits[0].tolist())]
    assert mixed == pytest.approx(expected, rel=1e-12)
    assert min(mixed) >= 0.01 / 3
    with pytest.raises(ValueError, match="mix"):
        unimix_logits(logits, mix=1.0)


def test_categorical_kl_matches_reference(latents):
    post, prior = latents
    got = categorical_kl(post, prior)
    for index in [(0, 0, 0), (1, 2, 3), (2, 3, 5)]:
        expected = ref_kl(post[index].tolist(), prior[index].tolist())
        assert got[index].item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("free", [0.0, 1.0, 8.0])
def test_kl_balance_sums_categoricals_then_clips(latents, free):
    post, prior = latents
    dyn, rep = kl_balance(post, prior, free_nats=free)
    assert dyn.shape == rep.shape == (3, 4)
    for b, t in [(0, 0), (2, 3)]:
        total = sum(ref_kl(post[b, t, c].tolist(), prior[b, t, c].tolist()) for c in range(6))
        assert dyn[b, t].item() == pytest.approx(max(free, total), rel=1e-12)
        assert rep[b, t].item() == pytest.approx(max(free, total), rel=1e-12)


def test_dynamics_trains_the_prior_and_representation_the_posterior(latents):
    post, prior = (x.clone().requires_grad_() for x in latents)
    dyn, rep = kl_balance(post, prior, free_nats=0.0)
    grad_post, grad_prior = torch.autograd.grad(dyn.sum(), (post, prior), allow_unused=True)
    assert grad_post is None and grad_prior.abs().sum() > 0
    grad_post, grad_prior = torch.autograd.grad(rep.sum(), (post, prior), allow_unused=True)
    assert grad_prior is None and grad_post.abs().sum() > 0


def test_free_nats_stop_the_gradient_below_the_clip(latents):
    post, prior = (x.clone().requires_grad_() for x in latents)
    dyn, _ = kl_balance(post, prior, free_nats=1e6)
    (grad_prior,) = torch.autograd.grad(dyn.sum(), prior)
    assert torch.equal(grad_prior, torch.zeros_like(grad_prior))


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="share one shape"):
        kl_balance(torch.zeros(2, 4, 5), torch.zeros(2, 4, 6))


def test_clip_free_nats_is_the_clip_kl_balance_applies(latents):
    post, prior = latents
    free = 10.0  # the fixture's summed KLs lie between 6 and 17
    raw_dyn, raw_rep = kl_balance(post, prior, free_nats=0.0)
    assert bool((raw_dyn < free).any()) and bool((raw_dyn > free).any())  # both sides occur
    dyn, rep = kl_balance(post, prior, free_nats=free)
    assert torch.equal(dyn, clip_free_nats(raw_dyn, free))
    assert torch.equal(rep, clip_free_nats(raw_rep, free))
    assert torch.equal(clip_free_nats(raw_dyn, free), torch.maximum(raw_dyn, torch.tensor(free)))
    assert clip_free_nats(raw_dyn, 0.0) is raw_dyn


def test_clip_free_nats_passes_gradient_only_above_the_clip():
    kl = torch.tensor([0.5, 2.0, 3.0], requires_grad=True)
    clip_free_nats(kl, 1.0).sum().backward()
    assert kl.grad.tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_clip_free_nats_refuses_a_negative_clip(bad):
    with pytest.raises(ValueError, match="free_nats must be >= 0"):
        clip_free_nats(torch.zeros(3), bad)
