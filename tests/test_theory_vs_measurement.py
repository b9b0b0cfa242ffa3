"""A run's theory_* columns (mean-field, from predict.py) against what the same run measured, on wide networks.

Width N = 1024, batch B = 32, depth 50, S = 4 seeds. Tolerances come from finite-width fluctuations, not from the
numbers seen:
- smooth activations: a network's log second moment after l layers wanders with sd at most that of a deep linear
  network, sqrt(2 (l+1) / (N B) + l (l+1) / N^2) (each layer's own sampling plus the product of l random matrices;
  a contracting map only damps it). The mean over S seeds of log(measured / predicted) must be within
  4 sd / sqrt(S): 0.04 at l = 10, 0.10 at l = 50, i.e. "a few percent". Backward, l counts layers from the top.
- ReLU, and the backward pass of a chaotic network (chi_1 > 1 amplifies fluctuations instead of damping them):
  log-variance is a random walk with sd about sqrt(5 l / N) per network (Hanin & Rolnick 2018 for ReLU; measured
  here 0.45 for ReLU and 0.23 for chaotic tanh backward at l = 50), so the seed mean must be within
  4 sqrt(5 l / N) / sqrt(S) in log space.
- correlation of h^l between inputs: a single pair's cosine has sd at most 1/sqrt(N) around its mean; the mean
  over pairs and seeds is within 5 / sqrt(N S) = 0.08 (absolute) of the C-map.
Layers where either side is 0 or non-finite (a float32 underflow) are not compared.
"""

import math

import numpy as np
import pytest

from initprobe import config, predict, runner

pytestmark = pytest.mark.slow  # every test here is wide, deep and seeded several times

N, B, DEPTH, SEEDS = 1024, 32, 50, 4
SMOOTH = {
    "tanh-critical": dict(act="tanh", init="glorot_normal"),
    "tanh-chaotic-bias": dict(act="tanh", init="variance_scaling", scale=1.5, distribution="normal", bias="normal",
                              bias_std=0.3),
    "selu-lecun": dict(act="selu", init="lecun_normal"),
}
RELU_LIKE = {"relu-he": dict(act="relu", init="he_normal")}
CHAOTIC = ("tanh-chaotic-bias",)


@pytest.fixture(scope="module")
def runs(device):
    out = {}
    for name, kw in {**SMOOTH, **RELU_LIKE}.items():
        cfg = config.RunConfig(depth=DEPTH, width=N, batch=B, seeds=SEEDS, plots=False, device=device.type, **kw)
        out[name] = predict.add_theory(runner.measure(cfg, device)[0], cfg)
    return out


def mean_log_ratio(frame, column):
    """Per layer (1..depth): the mean over seeds of log(measured / predicted), nan where not comparable."""
    measured = frame.pivot(index="seed", columns="layer", values=column).to_numpy(float)
    predicted = frame.pivot(index="seed", columns="layer", values="theory_" + column).to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(measured / predicted)
    ok = np.isfinite(ratio).all(axis=0)
    return np.where(ok, ratio.mean(axis=0), np.nan)


def linear_log_sd(l):
    return np.sqrt(2.0 * (l + 1) / (N * B) + l * (l + 1) / N**2)


def layers_from(column):
    """How many random layers a column's fluctuation has passed through: from the input forward, from the top back."""
    layer = np.arange(1, DEPTH + 1)
    return DEPTH - layer + 1 if column.startswith("grad") else layer


@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("column", ["preact_var", "act_var", "grad_preact_var", "grad_act_var"])
def test_smooth_activations_match_theory_within_a_few_percent(runs, name, column):
    dev = mean_log_ratio(runs[name], column)
    walk = name in CHAOTIC and column.startswith("grad")
    sd = np.sqrt(5.0 * layers_from(column) / N) if walk else linear_log_sd(layers_from(column))
    tol = 4 * sd / math.sqrt(SEEDS)
    ok = np.isfinite(dev)
    assert ok.sum() >= DEPTH // 2, f"{name} {column}: too few comparable layers"
    bad = np.flatnonzero(ok & (np.abs(dev) > tol)) + 1
    assert bad.size == 0, f"{name} {column}: layers {bad} deviate {dev[bad - 1]} (tolerance {tol[bad - 1]})"


@pytest.mark.parametrize("name", RELU_LIKE)
@pytest.mark.parametrize("column", ["preact_var", "act_var", "grad_preact_var"])
def test_relu_matches_theory_in_log_space(runs, name, column):
    dev = mean_log_ratio(runs[name], column)
    tol = 4 * np.sqrt(5.0 * layers_from(column) / N) / math.sqrt(SEEDS)
    assert np.isfinite(dev).all()
    assert np.all(np.abs(dev) <= tol), f"{name} {column}: {dev} (tolerance {tol})"


@pytest.mark.parametrize("name", [*SMOOTH, *RELU_LIKE])
def test_measured_correlation_follows_the_c_map(runs, name):
    frame = runs[name]
    measured = frame.groupby("layer")["preact_corr"].mean().to_numpy()
    predicted = frame.groupby("layer")["theory_preact_corr"].first().to_numpy()
    assert np.all(np.abs(measured - predicted) <= 5 / math.sqrt(N * SEEDS)), (measured, predicted)


def test_bias_correlates_inputs_and_an_odd_activation_without_bias_does_not(runs):
    """Measured: with sigma_b = 0.3 the inputs' correlation rises from 0 towards the C-map's c* (0.998 here), while
    tanh without bias keeps independent inputs uncorrelated at every depth."""
    rising = runs["tanh-chaotic-bias"].groupby("layer")["preact_corr"].mean()
    flat = runs["tanh-critical"].groupby("layer")["preact_corr"].mean()
    assert rising.iloc[-1] > 0.5 > rising.iloc[0]
    assert np.all(np.abs(flat) < 5 / math.sqrt(N * SEEDS))
