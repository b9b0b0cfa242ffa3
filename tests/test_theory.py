"""initprobe.theory (mean-field signal propagation) against the project's known values, closed forms, a brute-force
integral, its own recursions run layer by layer, exact finite-width moments and Monte Carlo networks in numpy.
Deterministic (fixed seeds); every tolerance is stated where it is used."""

import functools
import math
import warnings

import numpy as np
import pytest

from initprobe import theory
from initprobe.activations import ACTIVATIONS

NAMES = sorted(ACTIVATIONS)


def square(depth, sigma_w2, width=256):
    """(weight_var, fan_in, fan_out) of `depth` square layers with fan_in * Var(W) = sigma_w2."""
    return np.full(depth, sigma_w2 / width), np.full(depth, float(width)), np.full(depth, float(width))


def preact_var(act, depth, sigma_w2, **kw):
    return theory.predict(act, *square(depth, sigma_w2), **kw)["theory_preact_var"]


def phi_of(name, slope=0.01):
    act = ACTIVATIONS[name]
    return (lambda x: act.phi(x, slope)), (lambda x: act.dphi(x, slope))


# ---- the acceptance list: x0 ~ N(0, 1), sigma_b = 0, square layers --------------------------------------------

def test_tanh_length_map_known_values():
    """q^1 = sigma_w2 E[x0^2] = 1, then q^10 = 0.0580, q^50 = 0.01043 (to 1e-3 of the printed digits)."""
    q = preact_var("tanh", 50, 1.0)
    assert q[0] == 1.0
    assert q[9] == pytest.approx(0.0580, rel=1e-3)
    assert q[49] == pytest.approx(0.01043, rel=1e-3)


def test_relu_sigma_w2_2_keeps_the_signal_and_sigma_w2_1_halves_it():
    """ReLU, sigma_w2 = 2: E[x^l^2] = q^l / 2 = 1 = E[x0^2] at every one of 100 layers (so q^l = 2 throughout);
    sigma_w2 = 1: q^l = 2^-(l-1). Exact maps, checked to 1e-9 / 1e-12."""
    out = theory.predict("relu", *square(100, 2.0))
    np.testing.assert_allclose(out["theory_act_var"] + out["theory_act_mean"] ** 2, 1.0, rtol=1e-9, atol=0)
    np.testing.assert_allclose(out["theory_preact_var"], 2.0, rtol=1e-9, atol=0)
    np.testing.assert_allclose(out["theory_grad_act_var"], 1.0, rtol=1e-9, atol=0)  # chi_1 = 1: flat gradients
    np.testing.assert_allclose(preact_var("relu", 60, 1.0), 0.5 ** np.arange(60), rtol=1e-12, atol=0)
    assert theory.chi_1("relu", 2.0, 1.0) == pytest.approx(1.0, rel=1e-12)
    assert theory.chi_1("relu", 2.0, 1e-6) == pytest.approx(1.0, rel=1e-12)  # positively homogeneous: any q


def test_tanh_fixed_point_and_chi_1():
    """tanh, sigma_w2 = 1.5: q* = 0.2869, chi_1 = 1.0406 (4 digits), and the map run for 200 layers gets there."""
    q_star = theory.fixed_point("tanh", 1.5)
    assert q_star == pytest.approx(0.2869, abs=5e-5)
    assert theory.chi_1("tanh", 1.5, q_star) == pytest.approx(1.0406, abs=5e-5)
    assert preact_var("tanh", 200, 1.5)[-1] == pytest.approx(q_star, rel=1e-10)


def test_selu_lecun_fixed_point_is_1():
    assert theory.fixed_point("selu", 1.0) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(preact_var("selu", 50, 1.0), 1.0, atol=1e-4, rtol=0)


def test_sigmoid_fixed_point():
    """Sigmoid's mean is 1/2, so q* ~ sigma_w2 E[sigmoid^2] ~ 1/4 + q*/16 - q*^2/32: 0.2647 (4 digits)."""
    q_star = theory.fixed_point("sigmoid", 1.0)
    assert q_star == pytest.approx(0.2647, abs=5e-5)
    assert preact_var("sigmoid", 30, 1.0)[-1] == pytest.approx(q_star, rel=1e-10)


def test_identity_is_constant_and_the_backward_pass_a_product():
    out = theory.predict("identity", *square(30, 1.0), input_corr=0.3)
    for key in ("theory_preact_var", "theory_grad_preact_var", "theory_grad_act_var", "theory_act_var"):
        np.testing.assert_allclose(out[key], 1.0, rtol=1e-12, atol=0)
    np.testing.assert_allclose(out["theory_corr"], 0.3, rtol=1e-12, atol=0)
    # non-square layers with unequal variances: dL/dx^0 ... dL/dx^L is a product of fan_out * Var(W) * E[phi'^2]
    rng = np.random.default_rng(0)
    widths = rng.integers(50, 500, size=11).astype(float)
    weight_var = rng.uniform(0.5, 2.0, size=10) / widths[:-1]
    fan_in, fan_out = widths[:-1], widths[1:]
    out = theory.predict("identity", weight_var, fan_in, fan_out)
    assert out["theory_grad_act_var"][0] == pytest.approx(np.prod(fan_out[1:] * weight_var[1:]), rel=1e-12)
    out = theory.predict("tanh", weight_var, fan_in, fan_out)
    _, dphi = phi_of("tanh")
    d2 = np.array([theory.expect(lambda x: dphi(x) ** 2, q) for q in out["theory_preact_var"]])
    expected = np.prod(fan_out[1:] * weight_var[1:] * d2[1:]) * d2[0]
    assert out["theory_grad_preact_var"][0] == pytest.approx(expected, rel=1e-12)


def test_critical_line_and_chi_1_known_values():
    """tanh at sigma_b2 = 0 is critical at sigma_w2 = 1; ReLU's chi_1 = sigma_w2 / 2 whatever q*, so its line is
    sigma_w2 = 2 for every sigma_b2."""
    assert theory.critical_line("tanh", [0.0])[0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(theory.critical_line("relu", [0.0, 0.1, 0.4]), 2.0, rtol=1e-9)
    assert theory.chi_1("relu", 2.0, theory.fixed_point("relu", 2.0)) == pytest.approx(1.0, rel=1e-12)


# ---- expect(): brute force, closed forms, limits --------------------------------------------------------------

@functools.cache
def _grid(h):
    """Nodes t = (k + 1/2) h on [-12, 12] and the standard normal pdf there. For h = 4e-4 and 2e-4 every possible
    kink t = 0, +-1/sqrt(q) (q = 0.01, 1, 25: t = 0.2, 1, 10) lies midway between two nodes, where a kink or a
    jump costs the trapezoid rule O(h^2) like the smooth parts: its error is c h^2 + O(h^4)."""
    n = int(round(12.0 / h))
    t = (np.arange(-n, n) + 0.5) * h
    return t, np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("q", [0.01, 1.0, 25.0])
@pytest.mark.parametrize("name", NAMES)
def test_expect_against_brute_force(name, q):
    """expect() of phi, phi^2 and phi'^2 against np.trapezoid (numpy 2's np.trapz) at h and h/2, Richardson-
    extrapolated (4 T(h/2) - T(h)) / 3 so that the h^2 term (up to 5e-7 relative: softsign' at q = 25) cancels;
    agreement to 1e-9 of E|f| (measured: <= 2e-12; 201-point Gauss-Hermite would be 0.9 off at worst)."""
    phi, dphi = phi_of(name)
    fns = {"phi": (phi, lambda p, d: p), "phi^2": (lambda x: phi(x) ** 2, lambda p, d: p * p),
           "dphi^2": (lambda x: dphi(x) ** 2, lambda p, d: d * d)}
    grids = [_grid(h) for h in (4e-4, 2e-4)]
    values = [(phi(math.sqrt(q) * t), dphi(math.sqrt(q) * t)) for t, _ in grids]
    for label, (fn, pick) in fns.items():
        coarse, fine = (np.trapezoid(pick(*v) * pdf, t) for (t, pdf), v in zip(grids, values))
        brute = (4.0 * fine - coarse) / 3.0
        scale = np.trapezoid(np.abs(pick(*values[1])) * grids[1][1], grids[1][0])
        got = theory.expect(fn, q)
        assert abs(got - brute) <= 1e-9 * scale, (label, got, brute)


def _hardtanh_m2(q):
    a = 1.0 / math.sqrt(q)
    inside = math.erf(a / math.sqrt(2))
    return q * (inside - 2 * a * math.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)) + (1.0 - inside)


@pytest.mark.parametrize("q", [1e-6, 1e-3, 1.0, 100.0, 1e4])
def test_expect_closed_forms_over_ten_decades(q):
    """Kinks (relu, leaky relu, hardtanh and its jumping derivative) and oscillation (sin, cos) to 1e-10 relative
    for q from 1e-6 to 1e4 (measured: <= 2e-14 except sin^2 at q = 1e-6, 5e-12)."""
    relu, _ = phi_of("relu")
    leaky, _ = phi_of("leaky_relu", 0.2)
    hardtanh, dhardtanh = phi_of("hardtanh")
    cases = [
        (lambda x: relu(x) ** 2, q / 2),
        (relu, math.sqrt(q / (2 * math.pi))),
        (lambda x: leaky(x) ** 2, q * (1 + 0.2**2) / 2),
        (lambda x: x**2, q),
        (lambda x: np.sin(x) ** 2, -math.expm1(-2 * q) / 2),
        (lambda x: hardtanh(x) ** 2, _hardtanh_m2(q)),
        (lambda x: dhardtanh(x) ** 2, math.erf(1.0 / math.sqrt(2 * q))),
    ]
    for fn, exact in cases:
        assert theory.expect(fn, q) == pytest.approx(exact, rel=1e-10, abs=0)
    assert theory.expect(np.cos, q) == pytest.approx(math.exp(-q / 2), rel=1e-10, abs=1e-14)


def test_expect_degenerate_q():
    relu, drelu = phi_of("relu")
    assert theory.expect(np.cos, 0.0) == 1.0  # fn(0)
    assert theory.expect(drelu, 0.0) == 0.5  # a jump at 0: the q -> 0+ limit
    assert theory.expect(lambda x: np.tanh(x) ** 2, math.inf) == 1.0  # (fn(inf) + fn(-inf)) / 2
    assert theory.expect(lambda x: relu(x) ** 2, math.inf) == math.inf
    assert math.isnan(theory.expect(np.sin, math.inf))
    assert math.isnan(theory.expect(np.tanh, math.nan))
    assert math.isnan(theory.expect(np.tanh, -1.0))


# ---- expect2() --------------------------------------------------------------------------------------------------

CORRS = [-1.0, -0.9, -0.3, 0.0, 0.2, 0.5, 0.9, 0.99, 0.9999, 1 - 1e-8, 1 - 1e-12, 1.0]
VARIANCES = [(1.0, 1.0), (0.01, 3.0), (25.0, 25.0)]


@pytest.mark.parametrize("q1,q2", VARIANCES)
def test_expect2_closed_forms(q1, q2):
    """ReLU's arc-cosine kernel sqrt(q1 q2)/(2 pi) (sqrt(1-c^2) + (pi - acos c) c), sin's exp(-(q1+q2)/2)
    sinh(c sqrt(q1 q2)) and the identity's c sqrt(q1 q2), to 1e-11 of sqrt(q1 q2) (measured <= 2e-13)."""
    relu, _ = phi_of("relu")
    s = math.sqrt(q1 * q2)
    for c in CORRS:
        arc = s / (2 * math.pi) * (math.sqrt(max(0.0, 1 - c * c)) + (math.pi - math.acos(c)) * c)
        assert theory.expect2(relu, relu, q1, q2, c) == pytest.approx(arc, abs=1e-11 * s)
        sin = math.exp(-(q1 + q2) / 2) * math.sinh(c * s)
        assert theory.expect2(np.sin, np.sin, q1, q2, c) == pytest.approx(sin, abs=1e-11 * s)
        assert theory.expect2(lambda x: x, lambda x: x, q1, q2, c) == pytest.approx(c * s, abs=1e-11 * s)


@pytest.mark.parametrize("name", NAMES)
def test_expect2_symmetry_and_the_approach_to_c_1(name):
    """For every activation: swapping (fn1, q1) with (fn2, q2) changes which function is integrated inside, so the
    two are independent computations (agree to 1e-9 of sqrt(E fn1^2 E fn2^2)); c = 1 is exactly E[phi^2]; and near
    c = 1, K(1 - e) = K(1) - e q E[phi'^2] + O(e^1.5) (Price's theorem; e^1.5 for kinks), checked at e = 1e-8
    to 1e-10."""
    phi, dphi = phi_of(name)
    cube = lambda x: phi(x) ** 3  # noqa: E731
    for q1, q2 in [(0.5, 2.0), (4.0, 0.3)]:
        scale = math.sqrt(theory.expect(lambda x: phi(x) ** 2, q1) * theory.expect(lambda x: cube(x) ** 2, q2))
        for c in (-0.7, 0.3, 0.99999):
            a = theory.expect2(phi, cube, q1, q2, c)
            b = theory.expect2(cube, phi, q2, q1, c)
            assert abs(a - b) <= 1e-9 * scale, (q1, q2, c, a, b)
    q = 1.3
    k1 = theory.expect2(phi, phi, q, q, 1.0)
    assert k1 == theory.expect(lambda x: phi(x) ** 2, q)
    slope = q * theory.expect(lambda x: dphi(x) ** 2, q)
    assert theory.expect2(phi, phi, q, q, 1 - 1e-8) == pytest.approx(k1 - 1e-8 * slope, abs=1e-10)


# ---- fixed points, depth scales, phase diagram --------------------------------------------------------------------

def test_fixed_point_degenerate_cases():
    assert theory.fixed_point("tanh", 1.0) == 0.0  # collapse (q^l ~ 1/(2l), no positive fixed point)
    assert theory.fixed_point("tanh", 0.5) == 0.0
    assert theory.fixed_point("relu", 2.0) == 1.0  # every q is fixed: the starting q (default 1)
    assert theory.fixed_point("identity", 1.0) == 1.0
    assert theory.fixed_point("relu", 2.5) == math.inf
    assert theory.fixed_point("identity", 1.0, 0.1) == math.inf
    assert theory.fixed_point("identity", 0.5, 0.1) == pytest.approx(0.2, rel=1e-12)  # sb2 / (1 - sw2)
    assert theory.fixed_point("relu", 1.9, 0.1) == pytest.approx(2.0, rel=1e-12)  # sb2 / (1 - sw2 / 2)
    # gelu: V(q)/q rises from sw2/4 to sw2/2, an unstable fixed point; from q = 1 the map collapses or diverges
    assert theory.fixed_point("gelu", 2.2) == 0.0
    assert theory.fixed_point("gelu", 2.5) == math.inf
    assert math.isnan(theory.fixed_point("tanh", math.nan))


def test_fixed_point_is_the_limit_from_the_start():
    """fixed_point iterates V from `start` (a network's q^1): where every q is a fixed point (relu sigma_w2 = 2,
    identity sigma_w2 = 1, no bias) it stays at the start; a unique stable fixed point is reached from anywhere;
    gelu's unstable fixed point (between q = 0.1 and 1 at sigma_w2 = 3) sends starts below it to 0 and above it to
    inf. start 0 stays at 0 where V(0) = 0 and else steps to V(0); start inf steps to V(inf) (tanh: sigma_w2)."""
    assert theory.fixed_point("relu", 2.0, start=2.0) == 2.0
    assert theory.fixed_point("identity", 1.0, start=0.3) == 0.3
    tanh_star = theory.fixed_point("tanh", 1.5)
    for start in (1e-6, 0.5, 50.0, math.inf):
        assert theory.fixed_point("tanh", 1.5, start=start) == pytest.approx(tanh_star, rel=1e-10), start
    assert theory.fixed_point("tanh", 1.5, start=0.0) == 0.0  # V(0) = 0: the recursion stays at 0
    assert theory.fixed_point("tanh", 1.5, 0.1, start=0.0) == pytest.approx(theory.fixed_point("tanh", 1.5, 0.1),
                                                                            rel=1e-10)
    assert theory.fixed_point("gelu", 3.0, start=0.1) == 0.0
    assert theory.fixed_point("gelu", 3.0, start=1.0) == math.inf
    assert theory.fixed_point("relu", 2.0, start=math.inf) == math.inf
    assert math.isnan(theory.fixed_point("tanh", 1.5, start=-1.0))
    assert math.isnan(theory.fixed_point("tanh", 1.5, start=math.nan))


def test_gradient_depth_scale_is_infinite_where_chi_1_is_one_up_to_rounding():
    """1 / |ln chi_1| with chi_1 = 1 + 2^-52 (identity at sigma_w2 = 1 + 2^-52) is 4.5e15 layers: rounding, not a
    depth scale. |ln chi_1| < 1e-12 counts as 0, as _depth does for xi_q and xi_c."""
    near = theory.depth_scales("identity", 1.0 + 2.0**-52)
    assert near["chi_1"] != 1.0 and near["xi_grad"] == math.inf
    assert theory.depth_scales("relu", 2.0, start=2.0)["xi_grad"] == math.inf
    assert theory.depth_scales("identity", 1.0 + 1e-9)["xi_grad"] == pytest.approx(1e9, rel=1e-6)  # still finite


@pytest.mark.parametrize("name", NAMES)
def test_fixed_point_is_fixed_and_reached(name):
    """q* solves V(q*) = q* (to 1e-12) and is where 400 steps of the map from q = 1 end up (to 1e-9; xi_q < 10
    here, so 400 layers are > 40 e-folds)."""
    sw2, sb2 = (0.5, 0.1) if name == "identity" else (1.5, 0.1)
    phi, _ = phi_of(name)
    q_star = theory.fixed_point(name, sw2, sb2)
    assert 0 < q_star < math.inf
    assert sw2 * theory.expect(lambda x: phi(x) ** 2, q_star) + sb2 == pytest.approx(q_star, rel=1e-12)
    assert theory.depth_scales(name, sw2, sb2)["xi_q"] < 10
    q = 1.0
    for _ in range(400):
        q = sw2 * theory.expect(lambda x: phi(x) ** 2, q) + sb2
    assert q == pytest.approx(q_star, rel=1e-9)


SCALE_CASES = [("tanh", 2.0, 0.05), ("tanh", 0.8, 0.1), ("elu", 1.8, 0.1), ("hardtanh", 2.5, 0.05),
               ("gelu", 1.5, 0.3), ("sin", 1.5, 0.1)]


@pytest.mark.parametrize("name,sw2,sb2", SCALE_CASES)
def test_depth_scales_match_the_maps(name, sw2, sb2):
    """Start q^1 and c^1 1e-4 away from (q*, c*) and run 12 layers: the ratios of successive deviations are
    exp(-1/xi_q) and exp(-1/xi_c). Independent code paths (xi_q by Stein's lemma, xi_c from chi_c at the solved c*,
    versus iterating the maps); the O(1e-4) nonlinearity allows 1e-3 relative."""
    ds = theory.depth_scales(name, sw2, sb2)
    q_star, c_star = ds["q_star"], ds["c_star"]
    input_q = (q_star * (1 + 1e-4) - sb2) / sw2
    c1 = c_star - 1e-4 if c_star > 0.5 else c_star + 1e-4
    input_corr = (c1 * q_star * (1 + 1e-4) - sb2) / (sw2 * input_q)
    out = theory.predict(name, *square(12, sw2), bias_var=sb2, input_q=input_q, input_corr=input_corr)
    q, c = out["theory_preact_var"], out["theory_corr"]
    assert (q[-1] - q_star) / (q[-2] - q_star) == pytest.approx(math.exp(-1 / ds["xi_q"]), rel=1e-3)
    assert (c[-1] - c_star) / (c[-2] - c_star) == pytest.approx(math.exp(-1 / ds["xi_c"]), rel=1e-3)
    assert ds["xi_grad"] == pytest.approx(1 / abs(math.log(ds["chi_1"])), rel=1e-12)
    assert ds["regime"] == ("ordered" if ds["chi_1"] < 1 else "chaotic")


def test_depth_scales_regimes_and_infinities():
    assert theory.depth_scales("tanh", 1.5)["regime"] == "chaotic"
    assert theory.depth_scales("sigmoid", 1.0)["regime"] == "ordered"
    relu = theory.depth_scales("relu", 2.0)
    assert relu["regime"] == "critical" and relu["chi_1"] == 1.0
    assert relu["xi_grad"] == math.inf and relu["xi_c"] == math.inf and relu["xi_q"] == math.inf
    odd = theory.depth_scales("tanh", 1.5)  # odd phi, sigma_b2 = 0: c* = 0, chi_c = sigma_w2 E[phi']^2
    _, dphi = phi_of("tanh")
    assert odd["c_star"] == 0.0
    assert odd["chi_c"] == pytest.approx(1.5 * theory.expect(dphi, odd["q_star"]) ** 2, rel=1e-12)


def test_phase_diagram():
    sw2, sb2 = np.linspace(0.5, 4.0, 8), np.array([0.0, 0.1, 0.3])
    relu = theory.phase_diagram("relu", sw2, sb2)
    assert relu.shape == (3, 8)
    np.testing.assert_allclose(relu, np.broadcast_to(sw2 / 2, (3, 8)), rtol=1e-12)  # q* = inf included
    tanh = theory.phase_diagram("tanh", sw2, sb2)
    line = theory.critical_line("tanh", sb2)
    for j, w in enumerate(line):  # order below the critical line, chaos above it
        assert np.all(tanh[j, sw2 < w] < 1.0) and np.all(tanh[j, sw2 > w] > 1.0)
        assert theory.chi_1("tanh", w, theory.fixed_point("tanh", w, sb2[j])) == pytest.approx(1.0, abs=1e-9)
    assert math.isnan(theory.critical_line("tanh", [0.0], bracket=(2.0, 4.0))[0])  # no crossing there


# ---- Jacobian spectrum --------------------------------------------------------------------------------------------

def test_jacobian_linear_orthogonal_is_an_isometry():
    out = theory.jacobian_prediction("linear", 1.0, 1.0, 50, weights="orthogonal")
    assert out["mean_sq_sv"] == 1.0 and out["var_sq_sv"] == 0.0
    assert theory.jacobian_prediction("linear", 1.0, 1.0, 50)["var_sq_sv"] == pytest.approx(50.0, rel=1e-12)
    with pytest.raises(ValueError):
        theory.jacobian_prediction("tanh", 1.0, 1.0, 5, weights="uniform")


def _wick_moments(n, depth):
    """Exact E[mean of squared singular values] and E[their variance] for a product of `depth` n x n Gaussian
    matrices of variance 1/n. With M = B B^T, t1 = tr M / n, t2 = tr M^2 / n, Wick's theorem for one more factor W:
    E[t1'^2] = E[t1^2] + 2 E[t2] / n^2 and E[t2'] = E[t1^2] + (1 + 1/n) E[t2]."""
    a, b = 1.0, 1.0  # E[t1^2], E[t2] of the identity
    for _ in range(depth):
        a, b = a + 2.0 * b / n**2, a + (1.0 + 1.0 / n) * b
    return 1.0, b - a


@pytest.mark.slow
def test_jacobian_gaussian_linear_monte_carlo():
    """Product of 5 Gaussian 256 x 256 matrices, variance 1/256, 8 draws. The exact finite-n expectations
    (_wick_moments: mean 1, variance 5.059) tend to the free-probability prediction (1, L = 5) as n -> inf, and the
    Monte Carlo averages agree with them within 5 standard errors; one draw's standard deviation, measured over 400
    draws offline, is 0.021 for the mean and 0.29 for the variance."""
    depth, n, draws = 5, 256, 8
    pred = theory.jacobian_prediction("linear", 1.0, 1.0, depth)
    assert _wick_moments(10**9, depth)[1] == pytest.approx(pred["var_sq_sv"], rel=1e-6)
    assert pred["mean_sq_sv"] == 1.0
    mean_n, var_n = _wick_moments(n, depth)
    rng = np.random.default_rng(0)
    stats = []
    for _ in range(draws):
        jac = np.eye(n)
        for _ in range(depth):
            jac = rng.standard_normal((n, n)) / math.sqrt(n) @ jac
        sv2 = np.linalg.eigvalsh(jac @ jac.T)
        stats.append((sv2.mean(), sv2.var()))
    mc_mean, mc_var = np.mean(stats, axis=0)
    assert abs(mc_mean - mean_n) <= 5 * 0.021 / math.sqrt(draws)
    assert abs(mc_var - var_n) <= 5 * 0.29 / math.sqrt(draws)


@pytest.mark.slow
def test_jacobian_tanh_orthogonal_monte_carlo():
    """tanh at q = 0.5, critical sigma_w2 = 1/mu1, orthogonal weights: var = L (mu2/mu1^2 - 1) = 1.496 (Gaussian
    weights would give 6.5, a linear net 0). J = prod D_l W_l with D_l = diag(phi'(h)), h ~ N(0, q) iid: 8 draws of
    n = 256, depth 5; one draw's standard deviation (offline, 200 draws) is 0.18, the finite-n bias measured there
    0.007 +- 0.013: allowed 5 standard errors + 0.05."""
    depth, n, draws, q = 5, 256, 8, 0.5
    mu1 = theory.jacobian_prediction("tanh", 1.0, q, depth)["mu1"]
    pred = theory.jacobian_prediction("tanh", 1.0 / mu1, q, depth, weights="orthogonal")
    assert pred["mean_sq_sv"] == pytest.approx(1.0, rel=1e-12)
    assert pred["var_sq_sv"] == pytest.approx(depth * (pred["mu2"] / mu1**2 - 1), rel=1e-12)
    rng = np.random.default_rng(1)
    stats = []
    for _ in range(draws):
        jac = np.eye(n)
        for _ in range(depth):
            qmat, r = np.linalg.qr(rng.standard_normal((n, n)))
            w = qmat * np.sign(np.diag(r)) / math.sqrt(mu1)  # Haar orthogonal times sigma_w
            d = 1.0 - np.tanh(math.sqrt(q) * rng.standard_normal(n)) ** 2
            jac = (d[:, None] * w) @ jac
        sv2 = np.linalg.eigvalsh(jac @ jac.T)
        stats.append((sv2.mean(), sv2.var()))
    mc_mean, mc_var = np.mean(stats, axis=0)
    assert abs(mc_mean - 1.0) <= 5 * 0.08 / math.sqrt(draws)
    assert abs(mc_var - pred["var_sq_sv"]) <= 5 * 0.18 / math.sqrt(draws) + 0.05


# ---- predict() against numpy networks -------------------------------------------------------------------------------

def _network(name, widths, weight_var, bias_var, batch, rng):
    """One random MLP h^l = W^l x^{l-1} + b^l, x^0 ~ N(0, 1), loss sum(g * x^L) with g ~ N(0, 1): per layer the
    second moment of h, mean and variance of x, E[(dL/dh)^2], E[(dL/dx)^2], E[(dL/dW)^2] and the mean cosine
    similarity of h between distinct inputs."""
    phi, dphi = phi_of(name)
    x, xs, hs, ws = rng.standard_normal((batch, widths[0])), [], [], []
    for l in range(len(widths) - 1):
        w = rng.standard_normal((widths[l + 1], widths[l])) * math.sqrt(weight_var[l])
        h = x @ w.T + rng.standard_normal(widths[l + 1]) * math.sqrt(bias_var)
        xs.append(x), hs.append(h), ws.append(w)
        x = phi(h)
    depth, g = len(hs), rng.standard_normal(x.shape)
    out = {k: np.empty(depth) for k in ("q", "mean", "var", "gh", "gx", "gw", "corr")}
    for l in range(depth - 1, -1, -1):
        gh = g * dphi(hs[l])
        out["gx"][l], out["gh"][l], out["gw"][l] = np.mean(g**2), np.mean(gh**2), np.mean((gh.T @ xs[l]) ** 2)
        g = gh @ ws[l]
    for l, h in enumerate(hs):
        x = phi(h)
        out["q"][l], out["mean"][l], out["var"][l] = np.mean(h**2), np.mean(x), np.var(x)
        unit = h / np.linalg.norm(h, axis=1, keepdims=True)
        out["corr"][l] = (np.sum(unit @ unit.T) - batch) / (batch * (batch - 1))
    return out


@pytest.mark.parametrize("name,scale,bias_var", [("tanh", 1.3, 0.05), ("relu", 2.0, 0.0)])
@pytest.mark.slow
def test_predict_matches_numpy_networks(name, scale, bias_var):
    """Non-square layers (so fan_in and fan_out enter differently), 10 networks of widths 300..600, batch 32:
    every predicted column within 6 standard errors (the spread over the 10 networks) of the networks' average.
    Finite-width bias is O(depth / width) ~ 1%, well inside (one network's spread is 2-15% here)."""
    widths, batch, runs = [300, 500, 400, 600, 400, 500, 300], 32, 10
    weight_var = np.array([scale / w for w in widths[:-1]])
    pred = theory.predict(name, weight_var, widths[:-1], widths[1:], bias_var=bias_var, n_terms=batch)
    rng = np.random.default_rng(2)
    nets = [_network(name, widths, weight_var, bias_var, batch, rng) for _ in range(runs)]
    pairs = {"q": "theory_preact_var", "mean": "theory_act_mean", "var": "theory_act_var",
             "gh": "theory_grad_preact_var", "gx": "theory_grad_act_var", "gw": "theory_weight_grad_var",
             "corr": "theory_corr"}
    for key, column in pairs.items():
        values = np.array([net[key] for net in nets])
        se = values.std(axis=0, ddof=1) / math.sqrt(runs)
        assert np.all(np.abs(values.mean(axis=0) - pred[column]) <= 6 * se + 1e-12), (key, values.mean(0), pred[column])


# ---- non-finite input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_propagation_never_raises_or_warns(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = theory.predict(name, np.full(6, np.inf), np.full(6, 10.0), np.full(6, 10.0), bias_var=0.1)
        assert all(v.shape == (6,) for v in out.values())
        assert not np.all(np.isfinite(out["theory_preact_var"]))
        huge = theory.predict(name, np.full(6, 1e200), np.full(6, 10.0), np.full(6, 10.0), input_corr=0.5)
        assert set(huge) == set(out)
        assert not np.isfinite(theory.predict(name, np.full(3, np.nan), [10.0] * 3, [10.0] * 3)["theory_preact_var"]
                               ).any()
        for sw2, sb2 in [(np.inf, 0.0), (np.nan, 0.0), (0.0, 0.0), (1e300, 0.0)]:
            theory.depth_scales(name, sw2, sb2)
        theory.jacobian_prediction(name, 1.0, math.inf, 5)
        theory.expect2(*phi_of(name), math.inf, math.inf, 0.5)


def test_exploding_relu_overflows_to_inf():
    out = theory.predict("relu", *square(12, 1e60))
    q = out["theory_preact_var"]
    assert np.all(np.diff(np.log10(q[np.isfinite(q)])) > 50) and q[-1] == math.inf
    assert out["theory_grad_act_var"][0] == math.inf


@pytest.mark.parametrize("name,slope", [("relu", 0.01), ("leaky_relu", 0.2), ("leaky_relu", -0.5),
                                        ("identity", 0.01)])
def test_piecewise_linear_kernel_closed_form_equals_the_2d_rule(name, slope):
    """The correlation map's closed form for phi = x (x > 0), a x (x < 0) against expect2, to 1e-12 of q
    (measured <= 5e-14), and predict's theory_corr with it equal to the map run layer by layer on expect2."""
    phi, _ = phi_of(name, slope)
    a = ACTIVATIONS[name].negative_slope(slope)
    for q in (1e-6, 0.3, 1.0, 7.5, 1e6):
        for c in (-1.0, -0.999999, -0.7, -0.1, 1e-9, 0.05, 0.5, 0.9, 0.99999999):
            assert theory._kernel(phi, q, c, math.nan, a) == pytest.approx(theory.expect2(phi, phi, q, q, c),
                                                                         abs=1e-12 * q)
    weight_var, fan_in, fan_out = square(20, 1.7)
    out = theory.predict(name, weight_var, fan_in, fan_out, bias_var=0.05, slope=slope, input_corr=0.3)
    c, q = out["theory_corr"], out["theory_preact_var"]
    for l in range(1, 20):
        expected = (1.7 * theory.expect2(phi, phi, q[l - 1], q[l - 1], c[l - 1]) + 0.05) / q[l]
        assert c[l] == pytest.approx(expected, rel=1e-12, abs=1e-13), l
