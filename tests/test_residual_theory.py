"""Mean-field theory of residual and normalized networks (block_theory: residual, normalized, batch_moments,
gradient_factor): the facts it must reproduce, its batch-norm moments against sampling, each recursion against an
independent Monte Carlo written here (numpy in float64, the backward pass by hand: not torch, not initprobe's
models or probe), and a run end to end (runner.measure + predict) against its own theory_* columns.

Monte Carlo tolerances: conftest.finite_width_tolerance, with a and b per family of network (family, crossed)."""

import math

import numpy as np
import pytest

from conftest import N_SE, finite_width_tolerance
from initprobe import activations, block_theory, checks, config, predict, runner, theory

BACKWARD = ("grad_preact_var", "grad_act_var", "weight_grad_var")


def he(depth: int, width: int = 512) -> np.ndarray:
    """E[W^2] of square He layers: sigma_w^2 = 2."""
    return np.full(depth, 2.0 / width)


# ---------------------------------------------------------------------------------------------------------------
# Facts


def test_residual_relu_he_doubles_the_variance_per_block_in_both_directions():
    """sigma_w^2 E[phi(x)^2] = q and sigma_w^2 E[phi'^2] = 1 for ReLU + He: each block adds the stream's own q
    (x^l = 2^l forward) and dL/dx doubles per block going down; the branch carries q^{l-1}."""
    depth, n = 30, 512
    out = block_theory.residual("relu", he(depth, n), n, n, alpha=1.0)
    l = np.arange(1, depth + 1)
    np.testing.assert_allclose(out["theory_act_var"], 2.0**l, rtol=1e-12)
    np.testing.assert_allclose(out["theory_grad_act_var"], 2.0 ** (depth - l), rtol=1e-12)
    np.testing.assert_allclose(out["theory_branch_var"][1:], 2.0 ** (l[1:] - 1), rtol=1e-12)
    np.testing.assert_allclose(out["theory_grad_preact_var"][1:], 2.0 ** (depth - l[1:]), rtol=1e-12)


def test_inverse_sqrt_depth_branches_keep_relu_bounded_by_e():
    """alpha^2 = 1/(depth - 1): both directions grow by (1 + 1/(depth - 1)) per block, e over the network at most."""
    for depth in (10, 50, 1000):
        out = block_theory.residual("relu", he(depth), 512, 512, alpha=1 / math.sqrt(depth - 1))
        growth = (1 + 1 / (depth - 1)) ** (depth - 1)
        assert out["theory_act_var"][-1] == pytest.approx(2 * growth, rel=1e-12)
        assert out["theory_grad_act_var"][0] == pytest.approx(growth, rel=1e-12)
        assert growth < math.e


@pytest.mark.parametrize("norm", ["batch", "layer"])
@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_a_norm_makes_residual_relu_grow_linearly(norm, alpha):
    """Behind a norm the branch sees unit variance: q^l = q^{l-1} + alpha^2 sigma_w^2 / 2 for ReLU (De & Smith 2020),
    whatever the stream's size."""
    depth = 40
    out = block_theory.residual("relu", he(depth), 512, 512, alpha=alpha, norm=norm)
    np.testing.assert_allclose(np.diff(out["theory_act_var"]), alpha**2, rtol=1e-12)
    np.testing.assert_allclose(out["theory_branch_var"][1:], alpha**2, rtol=1e-12)


def test_layer_norm_residual_gradients_mirror_the_forward_growth():
    """Layer norm divides dL/dh by the stream's std: p^{l-1} = p^l (1 + 1/q^{l-1}) with q^{l-1} = l for ReLU + He,
    so dL/dx^1 = prod_{l=2}^{D} (l + 1)/l = (D + 1)/2 (eps 1e-5 against q >= 2: 1e-5 relative)."""
    depth = 50
    out = block_theory.residual("relu", he(depth), 512, 512, alpha=1.0, norm="layer")
    assert out["theory_grad_act_var"][0] == pytest.approx((depth + 1) / 2, rel=1e-4)


def test_plain_batch_norm_relu_factor_is_pi_over_pi_minus_1_only_as_the_batch_grows():
    """Yang et al. 2019: per layer E[phi'^2] / Var phi = pi/(pi - 1) for ReLU as the batch grows without bound; a
    finite batch explodes faster, lambda_B decreasing towards it (1.522 at batch 32, 3.7% above)."""
    limit = block_theory.gradient_factor("relu", "batch", 2.0, samples=math.inf)
    assert limit == pytest.approx(math.pi / (math.pi - 1), rel=1e-12)
    factors = [block_theory.gradient_factor("relu", "batch", 2.0, samples=n) for n in (16, 32, 256, 4096, 10**6)]
    assert all(a > b > limit for a, b in zip(factors, factors[1:]))
    assert factors[1] / limit - 1 > 0.03 and factors[-1] == pytest.approx(limit, rel=1e-5)


def test_plain_batch_norm_explodes_whatever_the_init():
    """sigma_w and sigma_b drop out of lambda_B; linear phi still explodes at (n - 2)/(n - 3); and the large-batch
    factor E[phi'^2] / Var phi >= 1 for every activation (the Gaussian Poincare inequality)."""
    assert block_theory.gradient_factor("relu", "batch", 0.3, 0.5, samples=64) == pytest.approx(
        block_theory.gradient_factor("relu", "batch", 7.0, 0.0, samples=64), rel=1e-12)
    for n in (8, 32, 256):
        linear = block_theory.gradient_factor("identity", "batch", 1.0, samples=n)
        assert linear == pytest.approx((n - 2) / (n - 3), rel=1e-12)
    for name in activations.ACTIVATIONS:
        assert block_theory.gradient_factor(name, "batch", 1.0, samples=math.inf) >= 1 - 1e-9, name


def test_plain_layer_norm_factor():
    """sigma_w^2 E[phi'^2] / (sigma_w^2 E[phi^2] + sigma_b^2): 1 for ReLU without bias at any sigma_w; tanh without
    bias explodes (E[tanh'^2] > E[tanh^2]); a bias of variance sigma_w^2 (E[phi'^2] - E[phi^2]) makes it critical."""
    for sw2 in (0.5, 2.0, 9.0):
        assert block_theory.gradient_factor("relu", "layer", sw2) == pytest.approx(1.0, rel=1e-12)
    assert block_theory.gradient_factor("tanh", "layer", 1.0) > 1.15
    _, sq, dsq = theory.expect_all((np.tanh, lambda x: np.tanh(x) ** 2, lambda x: np.cosh(x) ** -4), 1.0)
    assert block_theory.gradient_factor("tanh", "layer", 1.0, dsq - sq) == pytest.approx(1.0, rel=1e-10)


def test_skipinit_is_the_identity_after_the_stem():
    out = block_theory.residual("tanh", np.full(8, 1 / 256), 256, 256, alpha=0.0, norm="batch")
    assert np.all(out["theory_act_var"] == out["theory_act_var"][0])
    assert np.all(out["theory_grad_act_var"] == 1.0)
    assert np.all(out["theory_grad_preact_var"][1:] == 0) and np.all(out["theory_branch_var"][1:] == 0)


# ---------------------------------------------------------------------------------------------------------------
# Batch norm's moments on the sphere


@pytest.mark.parametrize("act, n", [("relu", 6), ("relu", 32), ("leaky_relu", 16), ("tanh", 8), ("tanh", 32),
                                    ("gelu", 12)])
def test_batch_moments_equal_sampling_on_the_sphere(act, n):
    """A batch norm's output per unit, sqrt(n) (g - mean g)/|g - mean g| for Gaussian g, sampled here: every moment
    within N_SE standard errors of batch_moments (closed forms for piecewise-linear phi, quadrature otherwise)."""
    g = np.random.default_rng(1).standard_normal((200_000, n))
    centred = g - g.mean(1, keepdims=True)
    y = centred * math.sqrt(n) / np.linalg.norm(centred, axis=1, keepdims=True)
    spec = activations.get(act)
    phi, dphi = spec.phi(y, 0.01), spec.dphi(y, 0.01)
    half = n // 2 * 2
    pa, pb, da, db = phi[:, 0:half:2], phi[:, 1:half:2], dphi[:, 0:half:2], dphi[:, 1:half:2]
    ya, yb = y[:, 0:half:2], y[:, 1:half:2]
    per_draw = {"d": phi**2, "o": pa * pb, "m": phi, "A0": dphi**2, "A1": da * db, "A2": (y * dphi) ** 2,
                "A3": ya * da * yb * db}
    want = block_theory.batch_moments(act, n)
    for key, values in per_draw.items():
        draws = values.mean(axis=1)  # one number per draw: draws are independent, a draw's coordinates are not
        se = draws.std() / math.sqrt(draws.size)
        assert abs(draws.mean() - want[key]) <= N_SE * se, (key, draws.mean(), want[key], se)


def test_piecewise_linear_closed_forms_equal_the_sphere_quadrature():
    """The closed forms and the quadrature are two computations of the same integrals: they agree to the quadrature's
    accuracy (1e-10 and better from 12 values up, where the densities are smooth to their third derivative)."""
    for act, n in (("relu", 12), ("relu", 64), ("leaky_relu", 24), ("identity", 16), ("relu", 32768)):
        closed = block_theory.batch_moments(act, n, 0.2)
        quadrature = block_theory._sphere_quadrature(act, n, 0.2, -1 / (n - 1))
        for key in closed:
            assert closed[key] == pytest.approx(quadrature[key], abs=1e-9), (act, n, key)


# ---------------------------------------------------------------------------------------------------------------
# Each recursion against a Monte Carlo written here

PHI = {"relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
       "tanh": (np.tanh, lambda x: np.cosh(x) ** -2.0)}
NORM_AXIS = {"none": None, "batch": 0, "layer": 1}  # batch norm: each unit over the batch; layer: each example
EPS = 1e-5
STATS = ("preact_var", "act_var", "grad_preact_var", "grad_act_var", "weight_grad_var", "branch_var", "chan_sq_mean",
         "chan_var", "preact_corr")


def normalize(a: np.ndarray, axis):
    """(y, s): y = (a - mean) / s, s = sqrt(biased variance + EPS), along `axis` (None: y = a)."""
    if axis is None:
        return a.copy(), None
    centred = a - a.mean(axis, keepdims=True)
    s = np.sqrt(np.square(centred).mean(axis, keepdims=True) + EPS)
    return centred / s, s


def normalize_backward(g: np.ndarray, y: np.ndarray, s, axis) -> np.ndarray:
    """dL/da from dL/dy for y = normalize(a): dy_i/da_j = (delta_ij - 1/N - y_i y_j / N) / s, so dL/da =
    (g - mean(g) - y mean(g y)) / s along `axis` (exact with EPS: s already holds it)."""
    if axis is None:
        return g
    return (g - g.mean(axis, keepdims=True) - y * (g * y).mean(axis, keepdims=True)) / s


def simulate(block, norm, act, depth, width, batch, sigma_w2, alpha=1.0, sigma_b2=0.0, seed=0) -> dict:
    """One network's statistics per layer: the MLP of blocks.py written out in numpy, its backward pass by hand
    (no autograd, no torch norm). Gaussian weights of variance sigma_w2/width, biases of variance sigma_b2, x0 and
    the cotangent N(0, 1)."""
    rng = np.random.default_rng(seed)
    phi, dphi = PHI[act]
    axis = NORM_AXIS[norm]
    x = rng.standard_normal((batch, width))
    layers = []
    for l in range(depth):
        w = rng.standard_normal((width, width)) * math.sqrt(sigma_w2 / width)
        b = rng.standard_normal(width) * math.sqrt(sigma_b2)
        layer = {"w": w, "x_in": x}
        if block == "plain":  # a = W x + b, h = N(a), x = phi(h)
            layer["h"], layer["s"] = normalize(x @ w.T + b, axis)
            x = phi(layer["h"])
        elif l == 0:  # the stem: x = h = W x0 + b
            x = layer["h"] = x @ w.T + b
        else:  # h = N(x), x = x + alpha (W phi(h) + b)
            layer["h"], layer["s"] = normalize(x, axis)
            layer["branch"] = alpha * (phi(layer["h"]) @ w.T + b)
            x = x + layer["branch"]
        layer["x"] = x
        layers.append(layer)
    g = rng.standard_normal(x.shape)  # dL/dx^depth for L = sum(cotangent * x^depth)
    for l in range(depth - 1, -1, -1):
        layer = layers[l]
        layer["gx"], h, w = g, layer["h"], layer["w"]
        if block == "plain":
            layer["gh"] = dphi(h) * g
            ga = normalize_backward(layer["gh"], h, layer["s"], axis)
            layer["gw"], g = ga.T @ layer["x_in"], ga @ w
        elif l == 0:
            layer["gh"], layer["gw"] = g, g.T @ layer["x_in"]
        else:
            g_branch = alpha * g  # dL/d(W phi(h) + b)
            layer["gh"] = dphi(h) * (g_branch @ w)
            layer["gw"] = g_branch.T @ phi(h)
            g = g + normalize_backward(layer["gh"], h, layer["s"], axis)
    out = {k: np.empty(depth) for k in STATS}
    for l, layer in enumerate(layers):
        h, x = layer["h"], layer["x"]
        unit = h / np.linalg.norm(h, axis=1, keepdims=True)
        gram = unit @ unit.T
        values = {"preact_var": h.var(), "act_var": x.var(), "grad_preact_var": layer["gh"].var(),
                  "grad_act_var": layer["gx"].var(), "weight_grad_var": layer["gw"].var(),
                  "branch_var": layer["branch"].var() if "branch" in layer else math.nan,
                  "chan_sq_mean": np.square(x.mean(0)).mean(), "chan_var": x.var(0).mean(),
                  "preact_corr": (gram.sum() - np.trace(gram)) / (batch * (batch - 1))}
        for k, v in values.items():
            out[k][l] = v
    return out


def predicted(block, norm, act, depth, width, batch, sigma_w2, alpha=1.0, sigma_b2=0.0) -> dict:
    common = dict(bias_var=sigma_b2, samples=batch, n_terms=batch)
    weight_sq = np.full(depth, sigma_w2 / width)
    if block == "residual":
        out = block_theory.residual(act, weight_sq, width, width, alpha, norm, **common)
    else:
        out = block_theory.normalized(act, weight_sq, width, width, norm, **common)
    out = {k.removeprefix("theory_"): v for k, v in out.items()}
    return {k: out.get(k, np.full(depth, np.nan)) for k in STATS}  # plain blocks have no branch


DEPTH, WIDTH, SEEDS = 20, 512, 8
# name: the network (batch 64, or 32 for plain batch norm, where a batch/width beyond 1/16 drifts: docs/theory.md)
CASES = {
    "residual-relu": dict(block="residual", norm="none", act="relu", sigma_w2=2.0),
    "residual-relu-inv-sqrt-depth": dict(block="residual", norm="none", act="relu", sigma_w2=2.0,
                                         alpha=1 / math.sqrt(DEPTH - 1)),
    "residual-tanh-bias": dict(block="residual", norm="none", act="tanh", sigma_w2=1.0, sigma_b2=0.05),
    "residual-batch-relu": dict(block="residual", norm="batch", act="relu", sigma_w2=2.0),
    "residual-batch-tanh": dict(block="residual", norm="batch", act="tanh", sigma_w2=1.0, alpha=0.5),
    "residual-layer-tanh": dict(block="residual", norm="layer", act="tanh", sigma_w2=1.0),
    "plain-layer-relu": dict(block="plain", norm="layer", act="relu", sigma_w2=2.0),
    "plain-layer-tanh-bias": dict(block="plain", norm="layer", act="tanh", sigma_w2=1.0, sigma_b2=0.1),
    "plain-batch-relu": dict(block="plain", norm="batch", act="relu", sigma_w2=2.0, batch=32),
    "plain-batch-tanh": dict(block="plain", norm="batch", act="tanh", sigma_w2=1.0, batch=32),
}


def family(case: dict, stat: str) -> tuple[float, float]:
    """(a, b) of the tolerance: the seed variance of a log statistic per layer crossed and the bias per layer, both
    times the width, bounded from measurements at widths 512-2048 (docs/theory.md, "How close")."""
    backward = stat in BACKWARD
    if stat == "preact_corr":  # absolute: a cosine's spread over pairs and the C-map's O(1/n) error
        return 0.05, 0.5
    if case["block"] == "residual":
        unnormalized_relu = case["norm"] == "none" and case["act"] == "relu" and case.get("alpha", 1.0) ** 2 * (
            DEPTH - 1) > 1.5
        if unnormalized_relu:  # each block adds as much as the stream holds: the full random walk of plain ReLU
            return (1.5, 3.0) if backward else (4.0, 3.0)
        return 0.1, 1.0  # each block changes q by a fraction: its fluctuations add only that fraction's
    if case["norm"] == "layer":  # the forward is pinned; gradients and channel statistics walk as a plain net's
        return (3.0, 2.0) if backward or stat.startswith("chan") else (0.1, 1.0)
    return (0.3, 4.0) if backward else (0.1, 1.0)  # batch norm pins the forward and decorrelates the examples


def crossed(case: dict, stat: str, l: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum of a l_eff, sum of b l_eff) over the directions `stat` at layers l depends on (conftest): forward
    statistics cross l layers, gradients depth - l + 1; dL/dW^l sums products of dL/dh^l and x^{l-1}, so its log
    deviation is theirs added: x^{l-1}'s spread over the batch (act_var; the centred chan_var behind batch norm,
    whose dL/dh sums to 0 over the batch) over l - 1 layers and the gradient's over depth - l + 1."""
    down = depth - l + 1
    if stat == "weight_grad_var":
        spread = "chan_var" if case["block"] == "plain" and case["norm"] == "batch" else "act_var"
        (a_f, b_f), (a_b, b_b) = family(case, spread), family(case, "grad_act_var")
        return a_f * (l - 1) + a_b * down, b_f * (l - 1) + b_b * down
    a, b = family(case, stat)
    l_eff = down if stat in BACKWARD else l
    return a * l_eff, b * l_eff


def assert_within_finite_width_error(measured: dict, theory_: dict, case: dict, width: int, batch: int, seeds: int,
                                     stats=STATS, layers=None):
    """Every statistic of `stats` at every layer where theory predicts a value: T(l) within the tolerance."""
    depth = len(theory_["act_var"])
    l = np.arange(1, depth + 1)
    for stat in stats:
        want = np.asarray(theory_[stat], dtype=float)
        got = np.asarray(measured[stat], dtype=float)  # (seeds, depth)
        ok = np.isfinite(want) & (want != 0) if stat != "preact_corr" else np.isfinite(want)
        if layers is not None:
            ok &= np.isin(l, layers)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (got - want).mean(0) if stat == "preact_corr" else np.log(got / want).mean(0)
        floor = 1 / width if stat == "preact_corr" else 2 / width if stat == "chan_sq_mean" else 2 / (width * batch)
        walk, bias = crossed(case, stat, l, depth)
        tol = finite_width_tolerance(walk, bias, width, seeds, floor)
        bad = ok & ~(np.abs(t) <= tol)
        assert not bad.any(), f"{stat}: layers {l[bad]}: T {t[bad]}, tolerance {tol[bad]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_recursion_matches_an_independent_monte_carlo(name):
    case = dict(CASES[name])
    batch = case.pop("batch", 64)
    runs = [simulate(depth=DEPTH, width=WIDTH, batch=batch, seed=s, **case) for s in range(SEEDS)]
    measured = {k: np.stack([r[k] for r in runs]) for k in STATS}
    want = predicted(depth=DEPTH, width=WIDTH, batch=batch, **case)
    assert_within_finite_width_error(measured, want, CASES[name], WIDTH, batch, SEEDS)


@pytest.mark.slow
def test_plain_batch_norm_gradient_grows_by_the_finite_batch_factor_not_pi_over_pi_minus_1():
    """The gradient's per-layer factor in the Monte Carlo's interior layers (geometric mean over seeds) against
    lambda_32 = 1.522 and pi/(pi - 1) = 1.467: the measurement resolves the 3.7% between them. Its standard error
    comes from the seeds; the finite-width bias per layer is b/n (b = 4, as above)."""
    depth, width, batch, seeds = 30, 512, 32, 8
    runs = [simulate("plain", "batch", "relu", depth, width, batch, 2.0, seed=s) for s in range(seeds)]
    grads = np.log(np.stack([r["grad_preact_var"] for r in runs]))  # (seeds, depth)
    per_layer = (grads[:, 1] - grads[:, -2]) / (depth - 3)  # layers 2 .. depth - 1
    se = per_layer.std(ddof=1) / math.sqrt(seeds)
    measured = math.exp(per_layer.mean())
    finite = block_theory.gradient_factor("relu", "batch", 2.0, samples=batch)
    assert abs(math.log(measured / finite)) <= N_SE * se + 4 / width, (measured, finite, se)
    assert abs(math.log(measured * (math.pi - 1) / math.pi)) > N_SE * se + 4 / width


# ---------------------------------------------------------------------------------------------------------------
# A run end to end: initprobe's own networks and theory_* columns

RUNS = {
    "residual-relu": (dict(block="residual", act="relu", init="he_normal"), CASES["residual-relu"]),  # doubling
    "residual-batch-relu": (dict(block="residual", norm="batch", act="relu", init="he_normal"),
                            CASES["residual-batch-relu"]),
    "residual-relu-inv-sqrt-depth": (dict(block="residual", act="relu", init="he_normal",
                                          branch_scale="inv_sqrt_depth"), CASES["residual-relu-inv-sqrt-depth"]),
    "plain-layer-tanh": (dict(norm="layer", act="tanh", init="glorot_normal"), CASES["plain-layer-relu"]),
    "plain-batch-relu": (dict(norm="batch", act="relu", init="he_normal", batch=32), CASES["plain-batch-relu"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_a_runs_measurement_matches_its_theory_columns(name, device):
    options, case = RUNS[name]
    options = {"depth": DEPTH, "width": WIDTH, "batch": 64, **options}
    cfg = config.RunConfig(seeds=SEEDS, dtype="float64", plots=False, device=device.type, **options)
    checks.validate(cfg)
    frame = predict.add_theory(runner.measure(cfg, device)[0], cfg)
    measured = {s: frame.pivot(index="seed", columns="layer", values=s).to_numpy(float) for s in STATS}
    want = {s: frame.groupby("layer")["theory_" + s].first().to_numpy(float) for s in STATS}
    assert_within_finite_width_error(measured, want, case, cfg.width, cfg.batch, cfg.seeds)


def test_skipinit_run_is_the_stem_and_exact_zeros(device):
    """alpha = 0: every block passes its input on unchanged; dL/dh and the branch are exactly 0, as predicted."""
    cfg = config.RunConfig(block="residual", norm="batch", branch_scale=0, act="relu", init="he_normal", depth=6,
                           width=64, batch=16, seeds=2, plots=False, device=device.type)
    frame = predict.add_theory(runner.measure(cfg, device)[0], cfg)
    blocks_ = frame[frame["layer"] > 1]
    assert (blocks_["grad_preact_var"] == 0).all() and (blocks_["branch_var"] == 0).all()
    assert (blocks_["theory_grad_preact_var"] == 0).all() and (blocks_["theory_branch_var"] == 0).all()
    for _, seed in frame.groupby("seed"):
        assert np.all(seed["act_var"].to_numpy() == seed["act_var"].iloc[0])
        assert np.all(seed["grad_act_var"].to_numpy() == seed["grad_act_var"].iloc[-1])


# ---------------------------------------------------------------------------------------------------------------
# Where no prediction is made, the summary says so and why


def test_batch_norm_over_too_few_values_has_no_prediction_and_says_why():
    """tanh behind batch norm over 4 values: the sphere's moments have no closed form and the quadrature needs 6
    values, so no column is predicted, every one named with that reason, and the verdicts are 'no prediction', not
    an overflow. ReLU over 3 values: the forward has closed forms, but E[1/s^2] diverges, so the gradients have
    none."""
    frame, scales = predict.for_config(config.RunConfig(act="tanh", norm="batch", batch=4, depth=5, width=32))
    assert frame.filter(like="theory_").isna().all().all()
    assert set(scales["no_prediction"]) == set(predict.THEORY_COLUMNS)
    assert all("quadrature" in why for why in scales["no_prediction"].values())
    assert scales["forward_verdict"] == scales["backward_verdict"] == predict.NO_PREDICTION

    frame, scales = predict.for_config(config.RunConfig(act="relu", init="he_normal", norm="batch", batch=3,
                                                        depth=5, width=32))
    assert set(scales["no_prediction"]) == set(predict.GRADIENT_COLUMNS)
    assert all("E[1/s^2]" in why for why in scales["no_prediction"].values())
    assert frame["theory_act_var"].notna().all() and frame["theory_grad_preact_var"].isna().all()
    assert scales["forward_verdict"] == "stable" and scales["backward_verdict"] == predict.NO_PREDICTION


def test_plain_batch_norm_summary_names_the_drift_it_does_not_predict():
    """The summary of a plain batch-norm network gives the per-layer factor at its batch and as the batch grows,
    and says in words that a finite-width network's drift with depth is not predicted."""
    cfg = config.RunConfig(act="relu", init="he_normal", norm="batch", batch=256, depth=50, width=512)
    _, scales = predict.for_config(cfg)
    assert scales["gradient_factor"] == pytest.approx(block_theory.gradient_factor("relu", "batch", 2.0, samples=256))
    assert scales["gradient_factor_large_batch"] == pytest.approx(math.pi / (math.pi - 1))
    assert any("Not predicted: the drift" in note and "batch/width" in note for note in scales["notes"])
    assert scales["no_prediction"] == {}
