"""λ-returns, discount weights and percentiles against plain Python references."""

from __future__ import annotations

import pytest
import torch
from reference import ref_lambda_return, ref_weights

from torchdreamer.functional import discount_weights, lambda_return, return_percentiles


def ref_percentile(values, q):
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


@pytest.fixture
def trajectories():
    generator = torch.Generator().manual_seed(3)
    batch, steps = 6, 16
    reward = torch.randn(batch, steps, generator=generator, dtype=torch.float64) * 10
    cont = torch.rand(batch, steps, generator=generator, dtype=torch.float64)  # in (0, 1)
    cont[0, 5] = 0.0  # a termination inside the horizon
    cont[1] = 1.0
    boot = torch.randn(batch, steps, generator=generator, dtype=torch.float64) * 100
    last = (torch.rand(batch, steps, generator=generator) < 0.15).double()
    return reward, cont, boot, last


@pytest.mark.parametrize("gamma, lmbda", [(0.997, 0.95), (0.9, 0.0), (0.5, 1.0)])
def test_lambda_return_matches_the_official_recursion(trajectories, gamma, lmbda):
    reward, cont, boot, _ = trajectories
    got = lambda_return(reward, cont, boot, gamma, lmbda)
    assert got.shape == (6, 15)
    for row in range(6):
        expected = ref_lambda_return(
            reward[row].tolist(), cont[row].tolist(), boot[row].tolist(), gamma, lmbda
        )
        torch.testing.assert_close(got[row], torch.tensor(expected, dtype=torch.float64))


def test_lambda_return_with_episode_ends_and_tensor_hyperparameters(trajectories):
    reward, cont, boot, last = trajectories
    gamma, lmbda = torch.tensor(0.99, dtype=torch.float64), torch.tensor(0.95, dtype=torch.float64)
    got = lambda_return(reward, cont, boot, gamma, lmbda, is_last=last)
    for row in range(6):
        expected = ref_lambda_return(
            reward[row].tolist(),
            cont[row].tolist(),
            boot[row].tolist(),
            0.99,
            0.95,
            last[row].tolist(),
        )
        torch.testing.assert_close(got[row], torch.tensor(expected, dtype=torch.float64))


def test_lambda_return_time_alignment():
    # One reward, on entering state 2: it belongs to the return of state 1, then
    # is discounted once for state 0. Pairing R_t with r_t would put it at state 2.
    reward = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    got = lambda_return(reward, torch.ones(5), torch.zeros(5), gamma=0.5, lmbda=1.0)
    torch.testing.assert_close(got, torch.tensor([0.5, 1.0, 0.0, 0.0]))
    # A termination at state 2 keeps its reward but stops everything after it.
    reward = torch.tensor([0.0, 0.0, 1.0, 5.0, 5.0])
    cont = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    got = lambda_return(reward, cont, torch.full((5,), 9.0), gamma=0.5, lmbda=1.0)
    torch.testing.assert_close(got[:2], torch.tensor([0.5, 1.0]))


def test_lambda_return_is_differentiable_in_rewards_and_values(trajectories):
    reward, cont, boot, _ = trajectories
    reward = reward.clone().requires_grad_()
    boot = boot.clone().requires_grad_()
    lambda_return(reward, cont, boot, 0.9, 0.95).sum().backward()
    assert reward.grad.abs().sum() > 0 and boot.grad.abs().sum() > 0
    assert torch.equal(reward.grad[:, 0], torch.zeros(6))  # r_0 belongs to no return


def test_lambda_return_shape_errors():
    with pytest.raises(ValueError, match="share one shape"):
        lambda_return(torch.zeros(3, 5), torch.zeros(3, 4), torch.zeros(3, 5), 0.9, 0.9)
    with pytest.raises(ValueError, match="at least 2 states"):
        lambda_return(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1), 0.9, 0.9)


def test_discount_weights_include_the_start_continuation(trajectories):
    _, cont, _, _ = trajectories
    got = discount_weights(cont, 0.97)
    for row in range(6):
        torch.testing.assert_close(
            got[row], torch.tensor(ref_weights(cont[row].tolist(), 0.97), dtype=torch.float64)
        )
    assert torch.equal(got[0, 5:], torch.zeros(11, dtype=torch.float64))


def test_return_percentiles_interpolate_linearly():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(7, 13, generator=generator, dtype=torch.float64) * 50
    got = return_percentiles(values, (0.05, 0.95))
    flat = values.flatten().tolist()
    expected = torch.tensor([ref_percentile(flat, 0.05), ref_percentile(flat, 0.95)])
    torch.testing.assert_close(got, expected.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 101, 15360])
def test_return_percentiles_equal_torch_quantile_bit_for_bit(n, dtype):
    # torch.quantile is an independent reference here: the same ranks and interpolation,
    # computed with a read back from the device that return_percentiles avoids.
    generator = torch.Generator().manual_seed(n)
    values = torch.randn(n, generator=generator, dtype=dtype) * 30
    for quantiles in [(0.05, 0.95), (0.0, 1.0), (0.1, 0.9), (0.37, 0.5)]:
        expected = torch.quantile(values, torch.tensor(quantiles, dtype=dtype))
        assert torch.equal(return_percentiles(values, quantiles), expected), quantiles


def test_return_percentiles_are_nan_when_a_return_is():
    values = torch.arange(100.0)
    values[40] = float("nan")
    assert return_percentiles(values).isnan().all()


def test_return_percentiles_refuse_empty_returns_and_quantiles_outside_0_1():
    with pytest.raises(ValueError, match="at least one return"):
        return_percentiles(torch.zeros(0))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got 1.5"):
        return_percentiles(torch.arange(5.0), (0.05, 1.5))
