"""torchdreamer.functional against the official DreamerV3 outputs and plain float64 references."""

from __future__ import annotations

import gc
import json
import math

import pytest
import torch
from reference import (
    assert_close_to_reference,
    official_reference_path,
    ref_bins,
    ref_cross_entropy,
    ref_decode,
    ref_encode,
)

import torchdreamer.functional._fused as fused_module
from torchdreamer.functional import (
    symexp,
    symlog,
    two_hot_bins,
    two_hot_cross_entropies,
    two_hot_cross_entropy,
    two_hot_decode,
    two_hot_encode,
)

REFERENCE = official_reference_path()


@pytest.fixture(scope="module")
def official() -> dict:
    if not REFERENCE.exists():
        pytest.fail(f"official reference outputs not found at {REFERENCE}")
    return json.loads(REFERENCE.read_text())


# ---------------------------------------------------------------- references
def random_targets(n: int, generator: torch.Generator) -> torch.Tensor:
    magnitude = torch.empty(n).uniform_(-4, 10, generator=generator).exp()
    sign = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    return magnitude * sign


@pytest.fixture(params=["plain", "fused_log_softmax", "fused_softmax"])
def forward_form(request, monkeypatch):
    """Runs a test with each form of the cross-entropy, whatever the input size.

    The plain form of ``two_hot.py`` and the two forward forms of the fused node
    the losses run: small inputs keep the log-softmax, large ones the softmax
    (``_fused.SAVED_SOFTMAX_MIN_ELEMENTS``). All must give the same numbers.
    """
    if request.param == "plain":
        monkeypatch.setattr(fused_module, "ENABLED", False)
    else:
        threshold = 0 if request.param == "fused_softmax" else 1 << 62
        monkeypatch.setattr(fused_module, "SAVED_SOFTMAX_MIN_ELEMENTS", threshold)
    return request.param


# ------------------------------------------------------------ symlog, symexp
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_symlog_symexp_match_official(official, dtype):
    table = official["symlog_symexp"][dtype]
    torch_dtype = getattr(torch, dtype)
    rtol = 1e-6 if dtype == "float32" else 1e-13
    for fn, name in ((symlog, "symlog"), (symexp, "symexp")):
        x = torch.tensor(table[f"{name}_in"], dtype=torch_dtype)
        expected = torch.tensor(table[f"{name}_out"], dtype=torch_dtype)
        torch.testing.assert_close(fn(x), expected, rtol=rtol, atol=0.0)


def test_symlog_symexp_are_inverse():
    x = torch.linspace(-50, 50, 1001, dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-12, atol=1e-12)


def test_symlog_symexp_gradients_are_exact_including_zero():
    x = torch.tensor([-3.0, -1e-6, -0.0, 0.0, 1e-6, 2.0], dtype=torch.float64, requires_grad=True)
    (grad_symlog,) = torch.autograd.grad(symlog(x).sum(), x)
    (grad_symexp,) = torch.autograd.grad(symexp(x).sum(), x)
    plain = [abs(v) for v in x.tolist()]
    torch.testing.assert_close(grad_symlog, torch.tensor([1 / (1 + a) for a in plain]).double())
    torch.testing.assert_close(grad_symexp, torch.tensor([math.exp(a) for a in plain]).double())


# ---------------------------------------------------------------------- bins
@pytest.mark.parametrize("num_bins", ["255", "5"])
def test_bins_are_the_official_float32_grid_bit_for_bit(official, num_bins):
    expected = torch.tensor(official["bins"][num_bins]["bins"], dtype=torch.float32)
    bins = two_hot_bins(int(num_bins))
    assert bins.dtype == torch.float32
    assert torch.equal(bins.view(torch.int32), expected.view(torch.int32))  # signed zeros too
    wide = two_hot_bins(int(num_bins), dtype=torch.float64)
    assert torch.equal(wide, expected.double())  # every dtype holds the official values


@pytest.mark.parametrize("num_bins", [2, 3, 4, 5, 64, 254, 255, 256])
def test_bins_follow_official_construction_and_are_antisymmetric(num_bins):
    bins = two_hot_bins(num_bins)
    # symexp of a linspace over [-20, 20]: compared in symlog space, at float32's
    # rounding of numbers of that size (the official linspace rounds 1 - i / (n - 1)).
    expected = ref_bins(num_bins).double()
    assert_close_to_reference(symlog(bins), expected.sign() * expected.abs().log1p(), scale=20.0)
    assert torch.equal(bins, -bins.flip(0))
    assert bool((bins[1:] >= bins[:-1]).all())
    zeros = int((bins == 0).sum())
    assert zeros == (1 if num_bins % 2 else (2 if num_bins >= 4 else 0))


def test_even_bins_differ_from_torchrl_grid():
    from torchrl.modules.models.model_based import _default_bins

    ours = two_hot_bins(256, dtype=torch.float64)
    theirs = _default_bins(256, dtype=torch.float64)
    assert not torch.allclose(ours, theirs)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, True])
def test_bins_reject_bad_counts(bad):
    with pytest.raises(ValueError, match="num_bins"):
        two_hot_bins(bad)


# -------------------------------------------------------- official two-hot
def official_cases(official):
    table = official["twohot_255"]
    encoding = torch.tensor(table["encoding_dense"], dtype=torch.float32)
    return table, {
        "zero_logits": torch.zeros_like(encoding),
        "logits_rand": torch.tensor(table["logits_rand"]),
        "logits_wide": torch.tensor(table["logits_wide"]),
        "logits_from_encoding": encoding.clamp_min(1e-30).log(),
    }


def test_encode_matches_official(official):
    table, _ = official_cases(official)
    bins = torch.tensor(official["bins"]["255"]["bins"])
    targets = torch.tensor(table["targets"])
    expected = torch.tensor(table["encoding_dense"])
    assert torch.equal(two_hot_encode(targets, bins), expected)
    for row, sparse in zip(two_hot_encode(targets, bins), table["encoding_sparse"], strict=True):
        assert sorted(row.nonzero().flatten().tolist()) == sorted(
            i for i, w in zip(sparse["index"], sparse["weight"], strict=True) if w > 0
        )


def test_cross_entropy_and_decode_match_official(official, forward_form):
    table, cases = official_cases(official)
    bins = torch.tensor(official["bins"]["255"]["bins"])
    targets = torch.tensor(table["targets"])
    for name, logits in cases.items():
        loss = two_hot_cross_entropy(logits, targets, bins)
        expected = torch.tensor(table[f"loss_{name}"])
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=2e-6, msg=name)

        pred = two_hot_decode(logits, bins)
        expected = torch.tensor(table[f"pred_{name}"])
        probs = torch.softmax(logits.double(), -1)
        tolerance = 1e-6 * (probs * bins.double()).abs().sum(-1)
        error = (pred.double() - expected.double()).abs()
        assert bool((error <= tolerance).all()), f"{name}: {error.max()} > {tolerance.max()}"


@pytest.mark.parametrize("num_bins", [5, 255, 256])
def test_zero_logits_decode_to_exactly_zero(official, num_bins):
    bins = two_hot_bins(num_bins)
    assert torch.equal(two_hot_decode(torch.zeros(3, num_bins), bins), torch.zeros(3))
    compiled = torch.compile(two_hot_decode, fullgraph=True)
    assert torch.equal(compiled(torch.zeros(3, num_bins), bins), torch.zeros(3))
    if str(num_bins) in official["bins"]:
        assert official["bins"][str(num_bins)]["zero_init_pred"] == [0.0, 0.0, 0.0]


# ------------------------------------------------- plain float64 reference
@pytest.fixture
def grid_and_data():
    generator = torch.Generator().manual_seed(1)
    bins = two_hot_bins(255)
    targets = torch.cat(
        [
            random_targets(40, generator),
            bins[[0, 1, 126, 127, 128, 200, 254]],  # exactly on bins
            torch.tensor([-1e12, 1e12, 0.0, -0.0]),  # beyond the grid, zero
        ]
    )
    logits = torch.randn(targets.numel(), 255, generator=generator) * 4
    return bins, logits, targets


def test_encode_matches_plain_reference(grid_and_data):
    bins, _, targets = grid_and_data
    encoded = two_hot_encode(targets, bins)
    torch.testing.assert_close(encoded.double(), ref_encode(targets, bins), rtol=0, atol=2e-6)
    torch.testing.assert_close(encoded.sum(-1), torch.ones(len(targets)))


def test_cross_entropy_matches_plain_reference(grid_and_data, forward_form):
    bins, logits, targets = grid_and_data
    loss = two_hot_cross_entropy(logits, targets, bins)
    expected = ref_cross_entropy(logits, targets, bins)
    assert_close_to_reference(loss, expected, scale=float(logits.abs().max()))


def test_cross_entropy_gradient_is_softmax_minus_two_hot(grid_and_data, forward_form):
    bins, logits, targets = grid_and_data
    logits = logits.double().requires_grad_()
    upstream = torch.linspace(-2, 3, len(targets), dtype=torch.float64)
    (grad,) = torch.autograd.grad(
        (two_hot_cross_entropy(logits, targets, bins.double()) * upstream).sum(), logits
    )
    expected = upstream[:, None] * (torch.softmax(logits.detach(), -1) - ref_encode(targets, bins))
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_cross_entropy_of_narrowed_logits(grid_and_data, forward_form):
    """Logits that are a view of the first steps of a longer output (the value loss
    reads the critic's ``s_0 .. s_{H-1}`` from its pass over ``s_0 .. s_H``): the
    gradient of the whole output is softmax minus two-hot on those steps, 0 on the last."""
    bins, logits, targets = grid_and_data
    output = logits[:48].double().reshape(4, 12, 255).requires_grad_()
    narrowed, targets = output[:, :11], targets[:44].reshape(4, 11)
    assert not narrowed.is_contiguous()
    upstream = torch.linspace(-2, 3, 44, dtype=torch.float64).reshape(4, 11)
    loss = two_hot_cross_entropy(narrowed, targets, bins.double())
    (grad,) = torch.autograd.grad((loss * upstream).sum(), output)
    expected_loss = ref_cross_entropy(narrowed.detach(), targets, bins)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-12)
    expected = torch.zeros_like(grad)
    expected[:, :11] = upstream[..., None] * (
        torch.softmax(narrowed.detach(), -1) - ref_encode(targets, bins)
    )
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_cross_entropy_batched_shapes_and_trailing_singleton(grid_and_data):
    bins, logits, targets = grid_and_data
    logits = logits[:48].reshape(4, 12, 255)
    targets = targets[:48].reshape(4, 12)
    flat = two_hot_cross_entropy(logits, targets, bins)
    assert flat.shape == (4, 12)
    torch.testing.assert_close(two_hot_cross_entropy(logits, targets[..., None], bins), flat)
    expected = ref_cross_entropy(logits, targets, bins)
    assert_close_to_reference(flat, expected, scale=float(logits.abs().max()))


def test_cross_entropy_is_minimised_at_the_targets_two_hot(grid_and_data):
    bins, logits, targets = grid_and_data
    encoding = ref_encode(targets, bins)
    at_target = encoding.clamp_min(1e-300).log()
    entropy = -(encoding * at_target).sum(-1)
    best = two_hot_cross_entropy(at_target, targets, bins.double())
    torch.testing.assert_close(best, entropy, rtol=1e-9, atol=1e-9)
    spread = entropy > 1e-3  # two bins share the weight
    assert int(spread.sum()) > 20
    for scale in (0.1, 1.0, 10.0):
        other = two_hot_cross_entropy(at_target + scale * logits.double(), targets, bins.double())
        # CE - H is KL(two_hot || softmax) >= 0, and > 0 when they differ.
        assert bool((other >= best - 1e-12).all())
        assert bool((other[spread] > best[spread]).all())


def test_decode_inverts_encode_inside_the_grid(grid_and_data):
    bins, _, targets = grid_and_data
    bins = bins.double()
    inside = targets.double().clamp(bins[0], bins[-1])
    logits = two_hot_encode(inside, bins).clamp_min(1e-300).log()
    torch.testing.assert_close(two_hot_decode(logits, bins), inside, rtol=1e-9, atol=1e-9)


def test_decode_matches_plain_expectation(grid_and_data):
    bins, logits, _ = grid_and_data
    decoded, expected = two_hot_decode(logits, bins), ref_decode(logits, bins)
    # Each value is a sum of terms up to sum_i |p_i b_i|: that is its scale.
    magnitudes = (torch.softmax(logits.double(), -1) * bins.double().abs()).sum(-1)
    for value, reference, scale in zip(decoded, expected, magnitudes.tolist(), strict=True):
        assert_close_to_reference(value, reference, scale=scale)


def test_half_precision_logits_are_evaluated_in_float32(grid_and_data, forward_form):
    bins, logits, targets = grid_and_data
    low = logits.bfloat16().requires_grad_()
    loss = two_hot_cross_entropy(low, targets, bins)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert low.grad.dtype == torch.bfloat16
    expected = ref_cross_entropy(low.detach().float(), targets, bins)
    assert_close_to_reference(loss, expected, scale=float(logits.abs().max()))


def test_cross_entropy_compiles_fullgraph_and_matches_eager(grid_and_data):
    bins, logits, targets = grid_and_data
    eager_logits = logits.clone().requires_grad_()
    compiled_logits = logits.clone().requires_grad_()
    eager = two_hot_cross_entropy(eager_logits, targets, bins)
    compiled = torch.compile(two_hot_cross_entropy, fullgraph=True)(compiled_logits, targets, bins)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    eager.sum().backward()
    compiled.sum().backward()
    torch.testing.assert_close(compiled_logits.grad, eager_logits.grad, rtol=1e-5, atol=1e-6)


def test_errors_name_the_shapes():
    bins = two_hot_bins(255)
    with pytest.raises(ValueError, match="254 classes .* 255 bins"):
        two_hot_cross_entropy(torch.zeros(3, 254), torch.zeros(3), bins)
    with pytest.raises(ValueError, match=r"target has shape \(4,\)"):
        two_hot_cross_entropy(torch.zeros(3, 255), torch.zeros(4), bins)
    with pytest.raises(ValueError, match="1-D"):
        two_hot_encode(torch.zeros(3), bins[None])
    with pytest.raises(ValueError, match="254 classes"):
        two_hot_decode(torch.zeros(3, 254), bins)


def test_several_targets_share_one_pass_and_match_one_at_a_time(grid_and_data, forward_form):
    bins, logits, targets = grid_and_data
    second = targets.flip(0)
    logits = logits.double()
    together = logits.clone().requires_grad_()
    apart = logits.clone().requires_grad_()
    losses = two_hot_cross_entropies(together, torch.stack([targets, second], -1), bins.double())
    assert losses.shape == (len(targets), 2)
    one = two_hot_cross_entropy(apart, targets, bins.double())
    two = two_hot_cross_entropy(apart, second, bins.double())
    torch.testing.assert_close(losses, torch.stack([one, two], -1))
    torch.testing.assert_close(losses[:, 1].double(), ref_cross_entropy(logits, second, bins))
    upstream = torch.rand(len(targets), 2, dtype=torch.float64)
    (losses * upstream).sum().backward()
    (one * upstream[:, 0] + two * upstream[:, 1]).sum().backward()
    torch.testing.assert_close(together.grad, apart.grad)
    # Weighted and reduced in the node, against the same done by autograd.
    weight = torch.tensor([1.0, 0.25], dtype=torch.float64)
    fused = logits.clone().requires_grad_()
    stacked = torch.stack([targets, second], -1)
    total = two_hot_cross_entropies(fused, stacked, bins.double(), weight=weight, reduction="mean")
    torch.testing.assert_close(total, (losses * weight).mean(), rtol=1e-12, atol=1e-12)
    total.backward()
    composed = logits.clone().requires_grad_()
    (two_hot_cross_entropies(composed, stacked, bins.double()) * weight).mean().backward()
    torch.testing.assert_close(fused.grad, composed.grad, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="need targets of shape"):
        two_hot_cross_entropies(logits, targets, bins)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weighted_reduction_in_one_node_matches_plain_reference(
    grid_and_data, forward_form, reduction
):
    bins, logits, targets = grid_and_data
    logits = logits[:48].reshape(4, 12, 255).double().requires_grad_()
    targets = targets[:48].reshape(4, 12)
    weight = 0.97 ** torch.arange(12, dtype=torch.float64)  # one per step, broadcast over rows
    loss = two_hot_cross_entropy(logits, targets, bins.double(), weight=weight, reduction=reduction)
    assert loss.shape == ()
    (grad,) = torch.autograd.grad(loss, logits)

    per_element = ref_cross_entropy(logits.detach(), targets, bins) * weight
    expected = per_element.mean() if reduction == "mean" else per_element.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    factor = weight / (48 if reduction == "mean" else 1)
    dense = torch.softmax(logits.detach(), -1) - ref_encode(targets, bins)
    torch.testing.assert_close(grad, factor[:, None] * dense, rtol=1e-10, atol=1e-12)


def test_reduction_without_weight_and_a_weight_that_wants_its_gradient(grid_and_data, forward_form):
    bins, logits, targets = grid_and_data
    logits = logits.double()
    per_element = ref_cross_entropy(logits, targets, bins)
    mean = two_hot_cross_entropy(logits, targets, bins.double(), reduction="mean")
    torch.testing.assert_close(mean, per_element.mean(), rtol=1e-12, atol=1e-12)
    weight = torch.rand(len(targets), dtype=torch.float64, requires_grad=True)
    total = two_hot_cross_entropy(logits, targets, bins.double(), weight=weight, reduction="sum")
    (grad_weight,) = torch.autograd.grad(total, weight)
    torch.testing.assert_close(grad_weight, per_element, rtol=1e-12, atol=1e-12)


def test_reductions_of_an_empty_batch_follow_torch():
    bins = two_hot_bins(255)
    for reduction, reduce in (("sum", torch.sum), ("mean", torch.mean)):
        logits = torch.zeros(0, 255, requires_grad=True)
        loss = two_hot_cross_entropy(logits, torch.zeros(0), bins, reduction=reduction)
        expected = reduce(torch.zeros(0))
        torch.testing.assert_close(loss.detach(), expected, equal_nan=True)  # 0 and NaN
        loss.backward()
        assert logits.grad.shape == (0, 255)


def test_bad_weight_or_reduction_is_refused(grid_and_data):
    bins, logits, targets = grid_and_data
    with pytest.raises(ValueError, match=r"weight has shape \(3,\).*loss's shape \(51,\)"):
        two_hot_cross_entropy(logits, targets, bins, weight=torch.ones(3), reduction="mean")
    with pytest.raises(ValueError, match="reduction must be one of"):
        two_hot_cross_entropy(logits, targets, bins, reduction="average")


def test_a_second_backward_through_a_retained_graph_gets_the_same_gradient(
    grid_and_data, forward_form
):
    # The first backward writes its gradient into the forward's own buffer; a
    # second one (retain_graph) must not find that buffer already used.
    bins, logits, targets = grid_and_data
    dense = torch.softmax(logits.double(), -1) - ref_encode(targets, bins)
    for reduction, factor in (("none", 1.0), ("mean", 1.0 / len(targets))):
        leaf = logits.clone().requires_grad_()
        loss = two_hot_cross_entropy(leaf, targets, bins, reduction=reduction).sum()
        (first,) = torch.autograd.grad(loss, leaf, retain_graph=True)
        (second,) = torch.autograd.grad(loss, leaf)
        assert second.data_ptr() != first.data_ptr(), reduction
        for grad in (first, second):  # both read after the second backward
            assert_close_to_reference(grad, factor * dense, scale=factor)  # |dense| <= 1


def test_a_grid_changed_in_place_is_read_afresh(forward_form):
    bins = two_hot_bins(255)
    logits = torch.randn(6, 255, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([-50.0, -1.0, 0.0, 0.5, 7.0, 3e3])
    two_hot_cross_entropy(logits, targets, bins)  # caches the grid's parts
    bins.mul_(0.5)
    assert_close_to_reference(
        two_hot_cross_entropy(logits, targets, bins),
        ref_cross_entropy(logits, targets, bins),
        scale=float(logits.abs().max()),
    )


def test_temporary_grids_leave_nothing_behind():
    # The per-grid cache is keyed weakly: a grid made per call (or converted to
    # the logits' dtype per call) must not pile up.
    before = len(fused_module._GRID_PARTS)
    logits = torch.randn(4, 255, dtype=torch.float64)
    for _ in range(20):
        two_hot_cross_entropy(logits.float(), torch.randn(4), two_hot_bins(255))
        two_hot_cross_entropy(logits, torch.randn(4), two_hot_bins(255))  # float32 grid
    gc.collect()
    assert len(fused_module._GRID_PARTS) <= before + 1


def test_a_grid_made_in_inference_mode_works_in_and_out_of_it():
    targets = torch.tensor([-3.0, 0.25, 9e9])
    expected = two_hot_encode(targets, two_hot_bins(255))
    with torch.inference_mode():
        bins = two_hot_bins(255)
        assert torch.equal(two_hot_encode(targets, bins), expected)
    logits = torch.randn(3, 255, requires_grad=True)
    loss = two_hot_cross_entropy(logits, targets, bins, reduction="sum")
    loss.backward()
    expected = ref_cross_entropy(logits.detach(), targets, bins).sum()
    assert_close_to_reference(loss, expected, scale=float(logits.detach().abs().max()))


def test_a_critic_sized_batch_takes_the_softmax_form_and_matches_the_reference():
    generator = torch.Generator().manual_seed(5)
    bins = two_hot_bins(255)
    targets = random_targets(300, generator)
    logits = (torch.randn(300, 255, generator=generator) * 6).requires_grad_()
    assert logits.numel() >= fused_module.SAVED_SOFTMAX_MIN_ELEMENTS
    upstream = torch.rand(300, generator=generator)
    loss = two_hot_cross_entropy(logits, targets, bins)
    (loss * upstream).sum().backward()
    reference = logits.detach().double().requires_grad_()
    expected = ref_cross_entropy(reference, targets, bins)
    (expected * upstream.double()).sum().backward()
    assert_close_to_reference(loss, expected, scale=float(logits.detach().abs().max()))
    assert_close_to_reference(logits.grad, reference.grad, scale=1.0)  # |softmax - two_hot| <= 1
