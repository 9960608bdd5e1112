"""The multi-discrete policy: one categorical per component (MultiOneHotCategorical) and its
head's per-component uniform mix, against plain float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, set_interaction_type
from tensordict.nn import ProbabilisticTensorDictModule as Prob

from torchdreamer.modules import MultiCategoricalActorHead, MultiOneHotCategorical

NVEC = (3, 1, 4, 2)


def reference_log_softmax(row: list[float]) -> list[float]:
    """Plain Python float64 log-softmax of one component's logits."""
    top = max(row)
    total = math.log(sum(math.exp(x - top) for x in row)) + top
    return [x - total for x in row]


def components(values: torch.Tensor) -> list[list[float]]:
    """One ``[sum(NVEC)]`` row split into its components, as Python floats."""
    flat, out, start = values.tolist(), [], 0
    for n in NVEC:
        out.append(flat[start : start + n])
        start += n
    return out


def test_log_prob_and_entropy_are_sums_over_components():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, sum(NVEC), generator=generator, dtype=torch.float64) * 3
    dist = MultiOneHotCategorical(logits=logits, nvec=NVEC)
    # Random one-hot actions of each component.
    chosen = [torch.randint(0, n, (5, 7), generator=generator) for n in NVEC]
    value = torch.cat(
        [torch.nn.functional.one_hot(c, n) for c, n in zip(chosen, NVEC, strict=True)], -1
    ).double()
    log_prob, entropy = dist.log_prob(value), dist.entropy()
    assert log_prob.shape == entropy.shape == (5, 7)
    for b in range(5):
        for t in range(7):
            parts = [reference_log_softmax(row) for row in components(logits[b, t])]
            expected_log_prob = sum(
                part[int(c[b, t])] for part, c in zip(parts, chosen, strict=True)
            )
            expected_entropy = sum(-sum(math.exp(x) * x for x in part) for part in parts)
            assert log_prob[b, t].item() == pytest.approx(expected_log_prob, rel=1e-12, abs=1e-12)
            assert entropy[b, t].item() == pytest.approx(expected_entropy, rel=1e-12, abs=1e-12)
    # A batch of values over the distribution's batch: broadcast as torch's distributions do.
    stacked = torch.stack([value, value.flip(0)])
    assert dist.log_prob(stacked).shape == (2, 5, 7)
    assert torch.equal(dist.log_prob(stacked)[0], log_prob)


def test_sampling_frequencies_match_each_components_probabilities():
    torch.manual_seed(0)
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0, 2.0, 0.0, -0.5, 1.0, -2.0, 0.3])
    dist = MultiOneHotCategorical(logits=logits, nvec=NVEC)
    samples = 40_000
    drawn = dist.sample((samples,))
    assert drawn.shape == (samples, sum(NVEC))
    for part, row in zip(drawn.split(NVEC, -1), components(logits), strict=True):
        assert torch.equal(part.sum(-1), torch.ones(samples))  # one action per component
        probabilities = [math.exp(x) for x in reference_log_softmax(row)]
        for frequency, p in zip(part.mean(0).tolist(), probabilities, strict=True):
            # Five standard errors of a frequency over `samples` draws.
            assert abs(frequency - p) <= 5 * math.sqrt(p * (1 - p) / samples) + 1e-9


def test_mode_is_each_components_likeliest_action_the_first_on_a_tie():
    logits = torch.tensor([[0.0, 2.0, 1.0, 5.0, 1.0, 1.0, 0.0, 1.0, 3.0, 3.0]])
    dist = MultiOneHotCategorical(logits=logits, nvec=NVEC)
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    assert torch.equal(dist.mode, expected)
    assert torch.equal(dist.deterministic_sample, expected)
    # TensorDict's deterministic interaction takes it.
    module = Prob(
        ["logits"],
        ["action"],
        distribution_class=MultiOneHotCategorical,
        distribution_kwargs={"nvec": NVEC},
    )
    with set_interaction_type(InteractionType.DETERMINISTIC):
        action = module(TensorDict(logits=logits, batch_size=[1]))["action"]
    assert torch.equal(action, expected)


def test_head_mixes_a_given_one_percent_uniform_into_each_component():
    # The default mixes none, as the official policy (tests/training/test_official_actor.py).
    torch.manual_seed(0)
    head = MultiCategoricalActorHead(6, NVEC, hidden=8, layers=1, unimix=0.01)
    features = torch.randn(4, 6)
    out = head(features)
    raw = head.mlp(features).double()
    for b in range(4):
        start = 0
        for n, row in zip(NVEC, components(raw[b]), strict=True):
            probabilities = [math.exp(x) for x in reference_log_softmax(row)]
            mixed = [math.log(0.99 * p + 0.01 / n) for p in probabilities]
            got = out[b, start : start + n].tolist()
            assert got == pytest.approx(mixed, rel=1e-5, abs=1e-6)
            start += n


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match=r"the last dimension must be their sum, 5"):
        MultiOneHotCategorical(logits=torch.zeros(2, 4), nvec=(3, 2))
    with pytest.raises(ValueError, match=r"nvec must be a non-empty sequence of sizes >= 1"):
        MultiOneHotCategorical(logits=torch.zeros(2, 3), nvec=(3, 0))
    with pytest.raises(ValueError, match=r"nvec must be a non-empty sequence"):
        MultiCategoricalActorHead(4, ())
