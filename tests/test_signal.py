"""The signal-propagation facts of docs/theory.md, measured with runner.measure and held to theory with stated
tolerances.

Finite-width wander (used throughout). For a square linear layer with N(0, 1/N) weights acting on a batch X
(N units x B inputs), the batch second moment S = |WX|^2 / (N B) has E[S] = S_prev and relative variance
2 tr(G^2) / (N tr(G)^2), G = X^T X. After k random layers tr(G^2)/tr(G)^2 ~ 1/B + (k + 1)/N (the product of k
Ginibre matrices has E tr(P^2) / N = k + 1), so after l layers, counting the input's own sample variance,

    Var(log S_l) ~ 2 (l + 1) / (N B) + l (l + 1) / N^2                                        (linear)

The second term (the product's spectrum spreading) does not average out over the batch. For ReLU the worst case
(all inputs of the batch perfectly correlated, i.e. a single input) is Var(log S_l) ~ 5 l / N (Hanin 2018). Uniform
weights (kurtosis 9/5 < 3) only lower these. Tests allow 4-5 such standard deviations (stated at each test).
"""

import math

import numpy as np
import pytest

from initprobe import checks, runner
from initprobe.config import RunConfig

GH_Z, GH_W = np.polynomial.hermite_e.hermegauss(201)  # E[f(z)], z ~ N(0, 1) = sum(GH_W * f(GH_Z))
GH_W = GH_W / math.sqrt(2.0 * math.pi)
TANH_SAT = math.atanh(math.sqrt(0.95))  # |tanh'(h)| = 1 - tanh(h)^2 < 0.05 * max|tanh'| = 0.05  <=>  |h| > 2.178
SELU_LAMBDA, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def measure(device, **kw):
    """The layers frame of runner.measure for RunConfig(**kw) on the test device."""
    cfg = RunConfig(plots=False, device=device.type, **kw)
    checks.validate(cfg)
    return runner.measure(cfg, device)[0]


def per_seed(frame, column):
    """(seeds x layers) matrix of `column`, columns indexed by layer 1..depth."""
    return frame.pivot(index="seed", columns="layer", values=column)


def linear_log_sd(l, n, b):
    """Std of log S_l for a deep linear net (module docstring): l products, width n, batch b."""
    return math.sqrt(2.0 * (l + 1) / (n * b) + l * (l + 1) / n**2)


def gauss(f):
    return float(np.sum(GH_W * f(GH_Z)))


# ------------------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("init", ["glorot_uniform", "glorot_normal"])
@pytest.mark.slow
def test_linear_glorot_keeps_variance_forward_and_backward(device, init):
    """identity + Glorot on square layers: Var(W) = 2/(N+N) = 1/N, so act_var stays at the input's 1 and, with a
    unit cotangent on top, grad_preact_var stays at 1 at every layer.
    Tolerance: the mean over S seeds of log act_var[l] within 5 * linear_log_sd(l) / sqrt(S). At l = 20 (N = 512,
    B = 128, S = 4) that is 0.12: a 0.6% per-layer bias would already fail. Backward the same, with the number
    of products counted from the top (depth - l)."""
    depth, n, b, seeds = 20, 512, 128, 4
    frame = measure(device, act="identity", init=init, depth=depth, width=n, batch=b, seeds=seeds)
    fwd, bwd = np.log(per_seed(frame, "act_var")), np.log(per_seed(frame, "grad_preact_var"))
    for l in range(1, depth + 1):
        tol_f = 5 * linear_log_sd(l, n, b) / math.sqrt(seeds)
        tol_b = 5 * linear_log_sd(depth - l, n, b) / math.sqrt(seeds)
        assert abs(fwd[l].mean()) < tol_f, f"layer {l}: mean log act_var {fwd[l].mean():.4f}, tol {tol_f:.4f}"
        assert abs(bwd[l].mean()) < tol_b, f"layer {l}: mean log grad_preact_var {bwd[l].mean():.4f}"
    # identity: h and x are the same tensor (their variances differ only by float32 rounding: one-pass
    # E[h^2] - E[h]^2 against a two-pass sum, ~1e-6 relative here), and nothing is on a flat part of phi
    np.testing.assert_allclose(frame["preact_var"], frame["act_var"], rtol=1e-5)
    assert (frame["saturated_frac"] == 0).all()
    assert (frame["zero_frac"] == 0).all()


RELU = dict(act="relu", depth=20, width=256, batch=64, seeds=16)


def relu_bounds(depth, n, seeds, k=4.0):
    """Interval for the seed mean of log(S_depth / S_1) when E[S_depth / S_1] = 1 (the variance is kept in
    expectation): per network the log wanders with variance at most s^2 = 5 (depth-1) / N (single-input worst
    case), and Jensen puts its mean at -Var/2, between -s^2/2 and 0. Allowed: k standard errors either side."""
    s2 = 5.0 * (depth - 1) / n
    se = math.sqrt(s2 / seeds)
    return -s2 / 2 - k * se, k * se


@pytest.mark.slow
def test_relu_glorot_halves_preact_var_each_layer(device):
    """ReLU + Glorot (Var = 1/N): E[h_{l+1}^2] = N * (1/N) * E[relu(h_l)^2] = q_l / 2.
    Geometric per-layer gain over layers 1 -> 20 and 16 seeds; by relu_bounds divided by (depth - 1) in log
    space: [log 0.5 - 0.042, log 0.5 + 0.032], i.e. the gain within [0.479, 0.516]."""
    frame = measure(device, init="glorot_normal", **RELU)
    pv = per_seed(frame, "preact_var")
    depth = RELU["depth"]
    log_gain = np.log(pv[depth] / pv[1]).mean() / (depth - 1)
    lo, hi = relu_bounds(depth, RELU["width"], RELU["seeds"])
    assert math.log(0.5) + lo / (depth - 1) < log_gain < math.log(0.5) + hi / (depth - 1), math.exp(log_gain)
    # and layer by layer, not just end to end: every step's seed-averaged log ratio near log 0.5
    # (one step: s^2 = 5/N, se = sqrt(5/(N S)) = 0.035; allow 5 se)
    steps = np.log(pv.iloc[:, 1:].to_numpy() / pv.iloc[:, :-1].to_numpy()).mean(axis=0)
    assert np.all(np.abs(steps - math.log(0.5)) < 5 * math.sqrt(5.0 / (RELU["width"] * RELU["seeds"]))), steps


@pytest.mark.slow
def test_relu_he_keeps_preact_var_and_zero_frac_is_half(device):
    """ReLU + He (Var = 2/N): E[h_{l+1}^2] = N * (2/N) * q_l / 2 = q_l. The seed mean of log(pv[20]/pv[1]) must lie
    in relu_bounds: about [-0.8, 0.61] for N = 256, 16 seeds (Glorot's halving would give -13, a 5% per-layer
    bias +-0.93)."""
    frame = measure(device, init="he_normal", mode="fan_in", **RELU)
    pv = per_seed(frame, "preact_var")
    depth = RELU["depth"]
    mean_log = np.log(pv[depth] / pv[1]).mean()
    lo, hi = relu_bounds(depth, RELU["width"], RELU["seeds"])
    assert lo < mean_log < hi, (mean_log, lo, hi)
    # Zero biases, zero-mean symmetric weights: h -> -h is a symmetry of every layer given the one below, so
    # E[zero_frac] = 1/2 exactly. One value: at worst a Binomial(N, 1/2)/N over units (inputs fully correlated),
    # sd 0.5/sqrt(N) = 0.031; allow 5 sd. The values are martingale differences across layers (independent
    # sign symmetry per layer) and independent across seeds, so their mean has sd 0.5/sqrt(N L S) = 0.0017.
    zf = frame["zero_frac"].to_numpy()
    sd = 0.5 / math.sqrt(RELU["width"])
    assert np.all(np.abs(zf - 0.5) < 5 * sd), zf
    assert abs(zf.mean() - 0.5) < 5 * sd / math.sqrt(zf.size), zf.mean()


@pytest.mark.slow
def test_relu_he_fan_out_keeps_gradients(device):
    """Backward, ReLU + He mode fan_out (on square layers the same Var = 2/N as fan_in): dL/dh^l =
    relu'(h^l) * W^T dL/dh^{l+1} keeps its variance in expectation (the mask halves it, the weights double it).
    Same interval as the forward (relu_bounds: the single-cotangent worst case) for log(grad[1] / grad[20])."""
    frame = measure(device, init="he_normal", mode="fan_out", **RELU)
    gv = per_seed(frame, "grad_preact_var")
    depth = RELU["depth"]
    mean_log = np.log(gv[1] / gv[depth]).mean()
    lo, hi = relu_bounds(depth, RELU["width"], RELU["seeds"])
    assert lo < mean_log < hi, (mean_log, lo, hi)
    # at the top, dL/dh = relu'(h) * g: half the unit-variance cotangent survives the mask
    # (sd of the fraction of live units: 0.5/sqrt(N) worst case, the cotangent's own sample variance is tiny)
    top = gv[depth].to_numpy()
    assert np.all(np.abs(top - 0.5) < 5 * 0.5 / math.sqrt(RELU["width"])), top


def tanh_mean_field(depth, q1=1.0, sigma_w2=1.0):
    """q_l of the mean-field recursion q_{l+1} = sigma_w^2 E[tanh(sqrt(q_l) z)^2], q_1 = sigma_w^2 * E[x0^2]."""
    q = [q1]
    for _ in range(depth - 1):
        q.append(sigma_w2 * gauss(lambda z, q=q[-1]: np.tanh(math.sqrt(q) * z) ** 2))
    return np.array(q)


@pytest.mark.slow
def test_tanh_glorot_decays_like_one_over_2l(device):
    """tanh + Glorot on square layers (sigma_w^2 = 1, at the edge of chaos): E tanh(sqrt(q) z)^2 = q - 2 q^2 + ...,
    so 1/q grows by 2 per layer and q_l ~ 1/(2l). The exact recursion (computed here by Gauss-Hermite) gives
    q_50 = 0.01043, 50 q_50 = 0.52.
    Tolerance: a relative perturbation at layer k reaches layer L damped by k/L (1/q_l ~ 2l carries perturbations
    unchanged), so Var(log q_L) ~ sum_k (k/L)^2 * 2/N * (1/B + k/N) ~ (2/N)(L/(3B) + L^2/(4N)) = 0.0067 for
    N = 512, B = 32, L = 50: sd 0.082 per network. The mean over 8 seeds must be within 4 * 0.082/sqrt(8) = 0.12
    (log space) of the exact mean-field q_50. An exponential decay (ordered phase) or 1/l would be far off."""
    depth, n, b, seeds = 50, 512, 32, 8
    q = tanh_mean_field(depth)
    assert q[49] == pytest.approx(0.01043, abs=5e-5)  # the mean-field value itself, and 50 q_50 ~ 1/2
    assert 0.45 < 50 * q[49] < 0.55
    frame = measure(device, act="tanh", init="glorot_uniform", depth=depth, width=n, batch=b, seeds=seeds)
    pv = per_seed(frame, "preact_var")
    for l in (25, 50):
        per_net_sd = math.sqrt(2.0 / n * (l / (3 * b) + l**2 / (4 * n)))  # 0.047 at l = 25, 0.082 at l = 50
        dev = np.log(pv[l] / q[l - 1]).mean()
        assert abs(dev) < 4 * per_net_sd / math.sqrt(seeds), f"layer {l}: l*q measured {l * pv[l].mean():.4f}, " \
                                                             f"mean field {l * q[l - 1]:.4f}"


@pytest.mark.slow
def test_selu_lecun_normal_fixed_point_one(device):
    """SELU + LeCun normal (Var = 1/fan_in): E[selu(z)^2] = 1 and E[selu(z)] = 0 for z ~ N(0, 1), so q* = 1 is a
    fixed point of the variance map, attracting with slope s = dF/dq(1) = 0.78 (computed here).
    Tolerance: per layer the batch second moment gets relative noise of variance v = (2/N)(1/B + D/N) (the linear
    estimate of the module docstring, with D = depth as an upper bound of the product length that matters); at
    an attracting fixed point this stays stationary at v/(1 - s^2): sd 0.034 for N = 512, B = 64, D = 50. Each
    value must be within 5 sd (log space) of 1, the mean of the last 25 layers within 5 sd/sqrt(seeds)."""
    depth, n, b, seeds = 50, 512, 64, 4

    def selu(x):
        return SELU_LAMBDA * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))

    def second(q):
        return gauss(lambda z: selu(math.sqrt(q) * z) ** 2)

    assert second(1.0) == pytest.approx(1.0, abs=1e-3)  # Gauss-Hermite on the kink at 0: ~2e-5 off
    s = (second(1.01) - second(0.99)) / 0.02
    assert 0.0 < s < 0.9
    sd = math.sqrt(2.0 / n * (1.0 / b + depth / n) / (1.0 - s**2))
    frame = measure(device, act="selu", init="lecun_normal", depth=depth, width=n, batch=b, seeds=seeds)
    for column in ("preact_var", "act_var"):
        logs = np.log(per_seed(frame, column))
        assert np.all(np.abs(logs.to_numpy()) < 5 * sd), (column, logs.min().min(), logs.max().max())
        assert abs(logs.loc[:, depth // 2 + 1:].to_numpy().mean()) < 5 * sd / math.sqrt(seeds), column


# ------------------------------------------------------------------------------------------------ columns


@pytest.mark.slow
def test_weight_var_matches_the_formula(device):
    """weight_var against each init's formula on a non-square first layer (input 128 -> 256, then 256 -> 256), so
    fan_in, fan_out and their mean differ. Standard error of the (biased) sample variance of n iid zero-mean
    draws of variance v and kurtosis k: v sqrt((k - 1)/n) (the squared sample mean is O(v/n), negligible);
    allow 6 of them (n = 32768 or 65536: at most 4.7% for a normal, 3.1% for a uniform)."""
    n_in, width = 128, 256
    cases = {  # init: (expected Var of layer 1, of the others, kurtosis)
        "glorot_uniform": (2.0 / (n_in + width), 2.0 / (2 * width), 9.0 / 5.0),
        "glorot_normal": (2.0 / (n_in + width), 2.0 / (2 * width), 3.0),
        "he_normal": (2.0 / n_in, 2.0 / width, 3.0),  # fan_in
        "he_uniform": (2.0 / n_in, 2.0 / width, 9.0 / 5.0),
        "lecun_normal": (1.0 / n_in, 1.0 / width, 3.0),
    }
    for init, (first, rest, kurtosis) in cases.items():
        frame = measure(device, act="relu", init=init, depth=3, width=width, input_dim=n_in, batch=8, seeds=2)
        for _, row in frame.iterrows():
            layer = int(row["layer"])
            want = first if layer == 1 else rest
            n = width * (n_in if layer == 1 else width)
            tol = 6 * want * math.sqrt((kurtosis - 1) / n)
            assert abs(row["weight_var"] - want) < tol, (init, layer, row["weight_var"], want)
    # He with mode fan_out: Var = 2/fan_out = 2/256 on every layer, the first included
    frame = measure(device, act="relu", init="he_normal", mode="fan_out", depth=3, width=width, input_dim=n_in,
                    batch=8, seeds=2)
    assert np.all(np.abs(frame["weight_var"] - 2.0 / width) < 6 * (2.0 / width) * math.sqrt(2.0 / (n_in * width)))


@pytest.mark.parametrize("std, atol", [(1.0, 0.03), (0.15, 0.025)])
@pytest.mark.slow
def test_tanh_saturated_frac_matches_mean_field(device, std, atol):
    """tanh + N(0, std^2) weights at width 256: sigma_w^2 = 256 std^2, h ~ N(0, q_l) with q_1 = sigma_w^2 and
    q_{l+1} = sigma_w^2 E[tanh(sqrt(q_l) z)^2]. Saturated means tanh' = 1 - tanh^2 < 0.05, i.e.
    |h| > atanh(sqrt(0.95)) = 2.18, so saturated_frac_l = P(|z| > 2.18/sqrt(q_l)).
    std = 1 (huge weights, deep in saturation): q ~ 240, fraction 0.89 (> 0.5 everywhere). One value moves with the
    layer's empirical q by d frac/d log q = phi(t/sqrt(q)) t/sqrt(q) = 0.055 times a log-q wander of at most
    sqrt(2/N) = 0.09 (single-input worst case), plus counting noise sqrt(0.1/16384): sd <= 0.006, atol 0.03.
    std = 0.15 (sigma_w^2 = 5.76): fractions 0.36 -> 0.25, where the 5% threshold matters (10% would move them
    by ~0.08). Slope 0.24 times the batch-averaged log-q wander (uncorrelated inputs in tanh's chaotic phase:
    sqrt(2/(NB) + 2 l/N^2) ~ 0.016) plus counting noise 0.004: sd ~ 0.006, atol 0.025 (~4 sd)."""
    depth, n = 5, 256
    frame = measure(device, act="tanh", init="normal", std=std, depth=depth, width=n, batch=64, seeds=2)
    q = tanh_mean_field(depth, q1=n * std**2, sigma_w2=n * std**2)
    expected = np.array([math.erfc(TANH_SAT / math.sqrt(2 * ql)) for ql in q])
    sat = per_seed(frame, "saturated_frac").to_numpy()  # (seeds, depth)
    if std == 1.0:
        assert np.all(sat[:, 1:] > 0.5)
    np.testing.assert_allclose(sat, np.broadcast_to(expected, sat.shape), atol=atol)
    assert (frame["zero_frac"] == 0).all()  # tanh(h) = 0 only at h = 0 exactly: never, for continuous h


def test_identity_is_never_saturated(device):
    """identity: phi' = 1 everywhere, nothing is flat, even with the huge weights above."""
    frame = measure(device, act="identity", init="normal", std=1.0, depth=5, width=64, batch=16, seeds=1)
    assert (frame["saturated_frac"] == 0).all()


# ------------------------------------------------------------------------------------------------ CNN


@pytest.mark.slow
def test_cnn_he_relu_circular_keeps_preact_var(device):
    """CNN, He normal (fan_in = C k^2) + ReLU, circular padding (every position sees a full k x k patch, so the
    MLP recursion is exact per position): q_1 = fan_in * (2/fan_in) * E[x0^2] = 2, and then q_{l+1} = q_l.
    Layer 1 (iid input, fan_in 27): relative sd ~ sqrt(2/C_out * (1/27 + 1/positions)) = 0.05 per network, so the
    geometric mean over S = 16 seeds within 5 * 0.05/4 = 0.06 (log) of 2.
    Deeper: the band of relu_bounds with N = C = 32 channels (worst case, all positions and inputs correlated):
    mean log(pv[l]/2) over seeds in [-s^2/2 - 4 s/4, 4 s/4], s^2 = 5 (l - 1)/32 - at l = 10 about [-1.9, 1.2];
    Glorot's 0.5 per layer (-6.2 at l = 10) or a gain off by sqrt(2) (+-3.1) cannot pass. (The global mean that
    preact_var subtracts costs ~c/32 ~ 3% at most: inside.)"""
    c, depth, seeds = 32, 10, 16
    frame = measure(device, arch="cnn", act="relu", init="he_normal", padding="circular", depth=depth, width=c,
                    image_size=16, batch=8, seeds=seeds)
    logs = np.log(per_seed(frame, "preact_var") / 2.0)
    assert abs(logs[1].mean()) < 5 * math.sqrt(2.0 / c * (1 / 27 + 1 / 256)) / math.sqrt(seeds), logs[1].mean()
    for l in range(2, depth + 1):
        lo, hi = relu_bounds(l, c, seeds)
        assert lo < logs[l].mean() < hi, (l, logs[l].mean(), lo, hi)
    deep_w = frame.loc[frame["layer"] > 1, "weight_var"].to_numpy()  # fan_in 288, 9216 normal draws: 6 se = 8.8%
    assert np.all(np.abs(deep_w - 2.0 / (c * 9)) < 6 * (2.0 / (c * 9)) * math.sqrt(2.0 / (c * c * 9))), deep_w


@pytest.mark.slow
def test_cnn_delta_orthogonal_identity_circular_is_exactly_norm_preserving(device):
    """delta_orthogonal puts an orthogonal (C x C) matrix Q in the centre tap and zeros elsewhere; with circular
    padding each layer maps x[:, :, i, j] -> Q x[:, :, i, j] at every position, so sum(x^2) is the same at every
    layer up to float32 rounding. The stored act_var is centred: E[x^2] = act_var + act_mean^2 is the invariant.
    Rounding: 65,536-element dot products and 32-term matvecs in float32 (u = 6e-8) give ~sqrt(n) u ~ 1.5e-5
    in the worst case; rtol 1e-5 (observed ~1e-6). Layer 1 (in_channels = width, so also square) carries the
    input's sample second moment: 1 within 5 sqrt(2/65536) = 0.028."""
    c = 32
    frame = measure(device, arch="cnn", act="identity", init="delta_orthogonal", padding="circular", depth=10,
                    width=c, in_channels=c, image_size=16, batch=8, seeds=2)
    m2 = per_seed(frame, "act_var") + per_seed(frame, "act_mean") ** 2
    np.testing.assert_allclose(m2.to_numpy(), np.repeat(m2[[1]].to_numpy(), 10, axis=1), rtol=1e-5, atol=0)
    assert np.all(np.abs(m2[1] - 1.0) < 5 * math.sqrt(2.0 / (c * 256 * 8)))
    np.testing.assert_allclose(frame["preact_var"], frame["act_var"], rtol=1e-5)  # identity: h is x


# ------------------------------------------------------------------------------------------------ non-finite


def test_exploding_identity_network_reports_non_finite_layers(device, tmp_path):
    """identity + N(0, 1) weights at width 64: the variance grows 64x per layer, 64^l. The float32 statistics
    (sums of squares of batch * width = 1024 elements) overflow FLT_MAX = 3.4e38 once 1024 * 64^l > 3.4e38,
    i.e. from l = 20 on (log10: 3.01 + 1.806 l > 38.53 at l > 19.7). The log-variance wanders by ~0.4 at
    l = 20 (linear_log_sd), small against the 4.2 per layer, so the first non-finite forward layer is within
    +-2 of 20. The run must finish, write the inf/nan into layers.csv and name that layer in summary.json."""
    import pandas as pd

    from initprobe import results

    out = tmp_path / "explode"
    cfg = RunConfig(act="identity", init="normal", std=1.0, depth=50, width=64, batch=16, seeds=1, plots=False,
                    device=device.type, out=str(out))
    runner.run(cfg, root=tmp_path)
    layers = pd.read_csv(out / "layers.csv")
    summary = results.read_json(out / "summary.json")
    first = summary["first_nonfinite_forward"]
    assert isinstance(first, int) and 18 <= first <= 22, first
    finite = np.isfinite(layers["act_var"].to_numpy())
    assert finite[: first - 1].all() and not finite[first - 1:].any(), layers["act_var"].tolist()
    overflowed = ~np.isfinite(layers["preact_var"].to_numpy())
    assert overflowed.any() and layers["preact_corr"][overflowed].isna().all()  # not -1/(B-1) from unit rows of 0
    assert summary["forward_verdict"] == "exploding"
    assert isinstance(summary["first_nonfinite_layer"], int) and summary["first_nonfinite_layer"] <= first


def test_vanishing_relu_network_reaches_exact_zero(device, tmp_path):
    """ReLU + N(0, 0.01^2) weights at width 64: each layer multiplies the variance by 64 * 1e-4 / 2 = 3.2e-3, so
    by layer 40 activations are ~1e-50, below float32's smallest subnormal (1.4e-45): exactly 0 (zero_frac 1).
    The run finishes with act_var == 0 at the deep layers and a 'vanishing' forward verdict (ratio 0)."""
    import pandas as pd

    from initprobe import results

    out = tmp_path / "vanish"
    cfg = RunConfig(act="relu", init="normal", std=0.01, depth=200, width=64, batch=16, seeds=1, plots=False,
                    device=device.type, out=str(out))
    runner.run(cfg, root=tmp_path)
    layers = pd.read_csv(out / "layers.csv")
    deep = layers[layers["layer"] >= 50]
    assert (deep["act_var"] == 0).all() and (deep["zero_frac"] == 1).all()
    summary = results.read_json(out / "summary.json")
    assert summary["forward_verdict"] == "vanishing"
    assert summary["forward_ratio"] == 0
    assert summary["first_nonfinite_forward"] is None
