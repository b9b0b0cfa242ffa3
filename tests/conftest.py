"""Shared fixtures. Tensors go to the device named by TORCH_DEVICE (default cpu), so the same suite runs on a GPU:

    TORCH_DEVICE=cuda .venv/bin/python -m pytest
"""

import math
import os

import numpy as np
import pytest
import torch


def _available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return True


@pytest.fixture(scope="session")
def device() -> torch.device:
    """torch.device(TORCH_DEVICE), default cpu. A device that is not there fails loudly rather than
    silently testing the CPU instead."""
    name = os.environ.get("TORCH_DEVICE", "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        pytest.fail(f"TORCH_DEVICE={name!r} is not a torch device: {e}")
    if not _available(dev):
        pytest.fail(f"TORCH_DEVICE={name!r} is not available on this machine")
    return dev


@pytest.fixture
def make_generator(device):
    """make_generator(seed) -> a torch.Generator on the test device, seeded with `seed`."""

    def make(seed: int = 0) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed)

    return make


@pytest.fixture
def generator(make_generator) -> torch.Generator:
    """A torch.Generator on the test device, seeded with 0."""
    return make_generator(0)


# Statistical tolerances. The second moment m2 = mean(w^2) of n iid zero-mean draws with variance v and
# kurtosis k = E[w^4]/v^2 has standard error v*sqrt((k-1)/n): v*sqrt(2/n) for a normal (k = 3), v*sqrt(0.8/n) for
# a uniform (k = 9/5). Tests allow N_SE standard errors: a correct implementation fails about once in 5e8 runs.
N_SE = 6.0
KURTOSIS_NORMAL = 3.0
KURTOSIS_UNIFORM = 9.0 / 5.0


def truncated_normal_moments(c: float) -> tuple[float, float]:
    """(variance, kurtosis) of a unit normal truncated to [-c, c] (c = 2: variance 0.87962566103423978^2)."""
    pdf = math.exp(-0.5 * c * c) / math.sqrt(2.0 * math.pi)
    p = math.erf(c / math.sqrt(2.0))  # P(|z| < c)
    m2 = 1.0 - 2.0 * c * pdf / p
    m4 = 3.0 * m2 - 2.0 * c**3 * pdf / p  # integrate z^3 * z * pdf by parts
    return m2, m4 / m2**2


def se_second_moment(var: float, kurtosis: float, n: int) -> float:
    """Standard error of mean(w^2) over n iid zero-mean draws of variance `var` and kurtosis `kurtosis`."""
    return var * math.sqrt((kurtosis - 1.0) / n)


# Mean-field theory against a finite network (tests/test_residual_theory.py). T(l), the mean over S seeds of
# log(measured / predicted) at layer l, is compared with
#     Z sqrt(walk / n + f) / sqrt(S) + bias / n,     Z = 4,
# n the width, walk = sum of a l_eff and bias = sum of b l_eff over the directions the statistic depends on, l_eff
# the layers the signal has crossed in that direction (forward: l; backward: depth - l + 1; dL/dW^l, a product of
# x^{l-1} and dL/dh^l: l - 1 forward plus depth - l + 1 backward). The first term is Z standard errors of that
# mean: a network's log statistic is a random walk whose variance grows by a/n per layer crossed (each layer's fresh
# weights multiply a second moment over the batch by a factor of relative variance (2/n)(1/B + c^2) for Gaussian
# weights, plus up to 3/n from ReLU's masks; Hanin & Rolnick 2018), on top of the sampling floor f of one statistic
# over its n B (variances) or n (a squared channel mean) values. The second is the finite-width bias, O(1/n) per
# layer, and at least a l_eff/(2n): the mean of logs sits that far below the log of the mean the recursions predict.
# a and b per family bound the seed variance and bias measured at widths 512 to 2048 (batch 32 to 256, 4 to 96
# seeds) by a factor 2 to 5.
FINITE_WIDTH_Z = 4.0


def finite_width_tolerance(walk, bias, width: int, seeds: int, floor):
    """The tolerance above for T(l), walk and bias the sums of a l_eff and b l_eff (arrays over layers)."""
    return FINITE_WIDTH_Z * np.sqrt(np.asarray(walk) / width + floor) / math.sqrt(seeds) + np.asarray(bias) / width


def snapshot(root) -> dict:
    """Every path under root (hidden ones included) with its bytes (None for directories): equal before and after
    a command that must change nothing."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = tmp_path, holding a results/ with an earlier run in it: what a command must leave untouched. Test
    modules that need other files beside it define their own workdir."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "earlier").mkdir(parents=True)
    (tmp_path / "results" / "earlier" / "layers.csv").write_text("seed,layer\n0,1\n")
    return tmp_path
