"""Shared fixtures. Tensors go to the device named by TORCH_DEVICE (default cpu), so the same suite runs on a GPU:

    TORCH_DEVICE=cuda .venv/bin/python -m pytest
"""

import math
import os

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
