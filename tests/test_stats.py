"""The shared tensor statistics (initprobe/stats.py) against direct float64 computations."""

import math

import pytest
import torch

from initprobe import stats


@pytest.mark.parametrize("shape, channel_dim", [((64, 16), 1), ((8, 6, 5, 5), 1), ((4, 10, 12), -1)])
def test_channel_moments_equal_a_direct_computation(shape, channel_dim, device, generator):
    t = 3.0 + 2.0 * torch.randn(shape, device=device, generator=generator)  # a mean that dominates
    sq_mean, var = stats.channel_moments(t, channel_dim)
    per_channel = t.double().movedim(channel_dim, -1).reshape(-1, t.shape[channel_dim])
    want_var, want_mean = torch.var_mean(per_channel, dim=0, correction=0)
    assert sq_mean.item() == pytest.approx(want_mean.square().mean().item(), rel=1e-6)
    assert var.item() == pytest.approx(want_var.mean().item(), rel=1e-5)
    # the identity the signal propagation plots rely on: channel variance + squared channel mean = E[t^2]
    total_var, total_mean = torch.var_mean(t.double(), correction=0)
    assert (sq_mean + var).item() == pytest.approx((total_var + total_mean**2).item(), rel=1e-6)


def test_channel_moments_keep_float64(device, generator):
    t = torch.randn(32, 8, device=device, dtype=torch.float64, generator=generator)
    sq_mean, var = stats.channel_moments(t)
    assert sq_mean.dtype == var.dtype == torch.float64
    assert sq_mean.device.type == t.device.type


def test_token_corr_equals_the_mean_off_diagonal_cosine(device, generator):
    t = torch.randn(5, 9, 16, device=device, generator=generator) + torch.randn(16, device=device, generator=generator)
    unit = torch.nn.functional.normalize(t.double(), dim=-1)
    gram = unit @ unit.transpose(1, 2)  # (N, T, T)
    n_tokens = t.shape[1]
    want = ((gram.sum((1, 2)) - n_tokens) / (n_tokens * (n_tokens - 1))).mean()
    assert stats.token_corr(t).item() == pytest.approx(want.item(), abs=1e-6)


def test_token_corr_limits(device):
    same = torch.ones(2, 7, 4, device=device)
    assert stats.token_corr(same).item() == pytest.approx(1.0, abs=1e-6)
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], device=device)
    assert stats.token_corr(opposite).item() == pytest.approx(-1.0, abs=1e-6)
    assert math.isnan(stats.token_corr(torch.ones(3, 1, 4, device=device)).item())


@pytest.mark.parametrize("shape, channel_dim", [((64, 16), 1), ((8, 6, 5, 5), 1), ((4, 10, 12), -1)])
def test_all_moments_pool_the_channels_into_the_whole_tensors_mean_and_variance(shape, channel_dim, device,
                                                                                generator):
    """The law of total variance over equal-sized channels gives the tensor's own (biased) variance; float32 sums
    of at most 1000 terms: 1e-6 relative."""
    t = 3.0 + 2.0 * torch.randn(shape, device=device, generator=generator)
    mean, var, sq_mean, chan_var = stats.all_moments(t, channel_dim)
    want_var, want_mean = torch.var_mean(t.double(), correction=0)
    assert mean.item() == pytest.approx(want_mean.item(), rel=1e-6)
    assert var.item() == pytest.approx(want_var.item(), rel=1e-5)
    assert (sq_mean, chan_var) == stats.channel_moments(t, channel_dim)


def test_two_pass_moments_keep_a_small_variance_under_a_large_mean(device, generator):
    """mean 1000, std 0.01: E[t^2] - E[t]^2 in float32 would cancel to noise of order 1000^2 * 2^-24 = 0.06, 600
    times the variance. The two-pass variance is off by the square of the mean's rounding error only,
    (c * 2^-24 * 1000)^2 = 4e-9 c^2 for a sum accurate to c units in the last place: under 1e-3 of the 1e-4 for
    c < 5."""
    t = 1000.0 + 0.01 * torch.randn(4096, device=device, generator=generator)
    mean, var = stats.moments(t)
    want_var, want_mean = torch.var_mean(t.double(), correction=0)
    assert mean.item() == pytest.approx(want_mean.item(), rel=1e-6)
    assert var.item() == pytest.approx(want_var.item(), rel=1e-3)


def test_raw_moments_of_a_norms_gamma_give_variance_exactly_0(device):
    mean, sq_mean = stats.raw_moments(torch.ones(768, device=device))
    assert (sq_mean - mean.square()).item() == 0.0 and sq_mean.item() == 1.0
