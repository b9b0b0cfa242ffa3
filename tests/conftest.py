"""Shared fixtures. Tensors go to the device named by TORCH_DEVICE (default cpu), so the same suite runs on a GPU:

    TORCH_DEVICE=cuda .venv/bin/python -m pytest
"""

import math
import os
import warnings

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


# ------------------------------------------------------------------------------------------------ slow tests
# `pytest -m "not slow"` (make test-fast) leaves out what takes over about a second: wide networks, the process
# and Ray backends, subprocesses, drawing every figure of a run. Tests mostly carry @pytest.mark.slow themselves;
# these modules' slow tests are named here instead (None: the whole module).
SLOW_BY_NAME = {
    "test_theory_vs_measurement.py": None,  # width 1024, depth 50, 4 seeds, several configurations
    "test_signal.py": {
        "test_linear_glorot_keeps_variance_forward_and_backward", "test_relu_glorot_halves_preact_var_each_layer",
        "test_relu_he_keeps_preact_var_and_zero_frac_is_half", "test_relu_he_fan_out_keeps_gradients",
        "test_tanh_glorot_decays_like_one_over_2l", "test_selu_lecun_normal_fixed_point_one",
        "test_weight_var_matches_the_formula", "test_tanh_saturated_frac_matches_mean_field",
        "test_cnn_he_relu_circular_keeps_preact_var",
        "test_cnn_delta_orthogonal_identity_circular_is_exactly_norm_preserving",
    },
    "test_theory.py": {"test_jacobian_gaussian_linear_monte_carlo", "test_jacobian_tanh_orthogonal_monte_carlo",
                       "test_predict_matches_numpy_networks"},
    "test_run.py": {"test_run_csv_files_are_the_bytes_pandas_writes", "test_float64_agrees_with_float32_statistically",
                    "test_lsuv_gives_unit_preact_var_on_a_fresh_batch"},
    "test_theory_bugs.py": {"test_layer_one_theory_uses_the_second_moment_of_the_weights",
                            "test_constant_init_run_agrees_with_theory_command",
                            "test_cnn_with_circular_padding_and_many_input_channels_follows_theory"},
}


def pytest_collection_modifyitems(config, items):
    missing = set()
    for item in items:
        names = SLOW_BY_NAME.get(item.path.name, ())
        if names is None or getattr(item, "originalname", item.name) in names:
            item.add_marker(pytest.mark.slow)
        module = getattr(item, "module", None)
        missing |= {(item.path.name, n) for n in names or () if module is not None and not hasattr(module, n)}
    for module, name in sorted(missing):  # renamed or removed: a slow test may have joined the fast set
        warnings.warn(f"conftest.SLOW_BY_NAME names {module}::{name}, which is not there", pytest.PytestWarning,
                      stacklevel=1)
