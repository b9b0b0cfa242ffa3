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
