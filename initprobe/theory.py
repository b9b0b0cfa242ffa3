"""Mean-field signal propagation at initialization: what an infinitely wide network does, layer by layer.

Poole et al. 2016 (length and correlation maps), Schoenholz et al. 2017 (depth scales, order/chaos),
Pennington, Schoenholz & Ganguli 2017 (Jacobian spectrum), Xiao et al. 2018 (the CNN uses the same maps with
fan_in = k^2 C). numpy only, no torch, so `initprobe theory` stays instant.

Conventions: sigma_w2 = fan_in * Var(W) as initialized (layer 1 with its own fan-in), sigma_b2 = Var(b),
q^l = E[(h^l)^2] (the pre-activations have mean 0, so this is also their variance), x^0 ~ N(0, input_q).
`act` is a registry name (aliases allowed) or an `activations.Activation`.

Gaussian expectations. 201-point Gauss-Hermite converges slowly where phi has a kink (relu
at 0, hardtanh at +-1; phi'' jumps for elu, selu and softsign at 0): it is up to 0.9 off for hardtanh'^2. So
every expectation here is a composite Gauss-Legendre rule in t = x / sqrt(q) on [-10, 10] (Gaussian mass
outside: 1.5e-23), 10 nodes per panel, with panel edges at
  - a fixed grid in t (the Gaussian's own scale),
  - the possible kinks x = -1, 0, 1 (piecewise smooth functions are then integrated to full order),
  - x = +-2^j, j = -3..12, where 2^j < 2 sqrt(q) (the O(1) features of phi, sharp in t when q is large),
  - for q > 1, a uniform grid in x of spacing 4 while it needs at most 500 panels (oscillating phi: sin to q ~ 1e4).
About 200 evaluations of fn at q ~ 1. Measured: <= 2e-12 of E|fn| against a brute-force integral for phi, phi^2
and phi'^2 of every registry activation (q = 0.01, 1, 25), <= 1e-13 against closed forms for q in [1e-6, 1e4].
expect2 nests the same rule (8 nodes per panel) and agrees with closed forms to ~1e-13.
"""

import functools
import math
from typing import Callable

import numpy as np

from .activations import Activation, get

_Z = 10.0  # |t| cut-off
_T_GRID = np.array([-10.0, -7.0, -5.0, -3.5, -2.0, -1.0, 0.0, 1.0, 2.0, 3.5, 5.0, 7.0, 10.0])
_KINKS = np.array([-1.0, 0.0, 1.0])
_GRADED = 2.0 ** np.arange(-3, 13)  # 1/8 .. 4096
_X_STEP = 4.0
_GL = {n: np.polynomial.legendre.leggauss(n) for n in (8, 10)}  # 10 nodes per panel in 1-D, 8 in 2-D
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_HUGE = (1e150, 1e200)  # stand-ins for +-inf where fn(+-inf) is nan (gelu': x * pdf(x) = inf * 0)
_ZERO = 5e-324  # one-sided values at 0 for functions with a jump there (relu')
CRITICAL_TOL = 1e-3  # |chi_1 - 1| below this is called critical
_Q_MIN, _Q_MAX = 1e-300, 1e300


def _act(act) -> Activation:
    return act if isinstance(act, Activation) else get(act)


def _phi_fns(act, slope):
    a = _act(act)
    return (lambda x: a.phi(x, slope)), (lambda x: a.dphi(x, slope))


# ---- quadrature -------------------------------------------------------------------------------------------------

def _rule(mu: np.ndarray, sigma: float, points: np.ndarray, max_x_panels: int = 500, order: int = 10):
    """Nodes x (rows, n) and weights w (rows, n) with sum(w * f(x), axis=1) = E[f(mu + sigma t)], t ~ N(0, 1),
    for each row's mean mu (sigma > 0 shared). `points` are extra panel edges in x (kinks)."""
    rows = mu.size
    reach = float(np.max(np.abs(mu))) + _Z * sigma  # the largest |x| any row reaches
    graded = _GRADED[(_GRADED < reach) & (_GRADED < 2.0 * sigma)]  # beyond 2 sigma the t-grid is fine enough
    uniform = np.zeros(0)
    n_uniform = int(reach / _X_STEP)
    if sigma > 1.0 and 2 * n_uniform <= max_x_panels:  # sigma <= 1: a t-panel (width <= 3) spans < 3 units of x;
        uniform = _X_STEP * np.arange(-n_uniform, n_uniform + 1)  # too many panels: oscillations are lost anyway
    xs = np.concatenate([points, graded, -graded, uniform])
    edges = np.concatenate([np.broadcast_to(_T_GRID, (rows, _T_GRID.size)),
                            (xs[None, :] - mu[:, None]) / sigma], axis=1)
    np.clip(edges, -_Z, _Z, out=edges)
    edges.sort(axis=1)
    lo, width = edges[:, :-1], np.diff(edges, axis=1)
    empty = width <= 0.0
    if rows == 1:
        lo, width = lo[~empty][None, :], width[~empty][None, :]
    else:  # move the empty panels (edges clipped to +-Z, duplicates) to the end of each row and drop them
        perm = np.argsort(empty, axis=1, kind="stable")
        keep = int(np.max(np.sum(~empty, axis=1)))
        lo = np.take_along_axis(lo, perm, axis=1)[:, :keep]
        width = np.take_along_axis(width, perm, axis=1)[:, :keep]
    gl_x, gl_w = _GL[order]
    t = lo[:, :, None] + 0.5 * width[:, :, None] * (gl_x + 1.0)
    w = 0.5 * width[:, :, None] * gl_w * np.exp(-0.5 * t * t) * _INV_SQRT_2PI
    return (mu[:, None, None] + sigma * t).reshape(rows, -1), w.reshape(rows, -1)


_T_LIST = _T_GRID.tolist()
_GRADED_LIST = _GRADED.tolist()
_GL01 = {n: (0.5 * (x + 1.0), 0.5 * w * _INV_SQRT_2PI) for n, (x, w) in _GL.items()}  # on [0, 1], pdf's constant in


def _rule1(sigma: float, points, max_x_panels: int = 500, order: int = 10):
    """`_rule` for one row with mean 0, the panel edges assembled in plain Python: the same nodes, without numpy's
    per-call overhead on small arrays, which dominates the many small calls of a fixed-point search."""
    reach = _Z * sigma
    xs = [p for p in points]
    xs += [g for g in _GRADED_LIST if g < reach and g < 2.0 * sigma]
    n_uniform = int(reach / _X_STEP)
    if sigma > 1.0 and 2 * n_uniform <= max_x_panels:
        xs += [_X_STEP * k for k in range(1, n_uniform + 1)]
    ts = [x / sigma for x in xs]
    edges = np.array(sorted(set(_T_LIST + [t for t in ts if -_Z < t < _Z] + [-t for t in ts if -_Z < -t < _Z])))
    width = np.diff(edges)[:, None]
    unit_x, unit_w = _GL01[order]
    t = edges[:-1, None] + width * unit_x
    return (sigma * t).ravel(), (width * unit_w * np.exp(-0.5 * t * t)).ravel()


def _at_zero(fn: Callable) -> float:
    """fn(0), or for fn with a jump at 0 (relu') the mean of the one-sided values: the q -> 0+ limit."""
    return float(0.5 * (fn(np.array([_ZERO]))[0] + fn(np.array([-_ZERO]))[0]))


def _at_inf(fn: Callable) -> tuple[float, float]:
    """(fn(+inf), fn(-inf)). Where fn is nan at +-inf (gelu': inf * pdf(inf) = inf * 0), its value at +-1e150 if
    that agrees with +-1e200 (a limit exists; beyond 1e100 it stands for +-inf), else nan (sin)."""
    out = []
    for sign in (1.0, -1.0):
        v = float(fn(np.array([sign * math.inf]))[0])
        if math.isnan(v):
            a, b = (float(fn(np.array([sign * x]))[0]) for x in _HUGE)
            if abs(a) > 1e100 and abs(b) > 1e100 and a * b > 0:
                v = math.copysign(math.inf, a)
            elif abs(a - b) <= 1e-9 * max(1.0, abs(a)):
                v = a
        out.append(v)
    return out[0], out[1]


def expect(fn: Callable, q: float, kinks=(-1.0, 0.0, 1.0)) -> float:
    """E[fn(sqrt(q) z)], z ~ N(0, 1), by the composite Gauss-Legendre rule of the module docstring.

    q == 0 gives fn(0) (for fn with a jump at 0, e.g. relu', the mean of the one-sided values, i.e. the limit
    q -> 0+, so that chi_1 is continuous there); q == inf gives the limit (fn(inf) + fn(-inf)) / 2, which is inf
    or nan where fn grows or oscillates; q < 0 or nan gives nan. Never raises, no warnings."""
    return expect_all((fn,), q, kinks)[0]


def expect_all(fns, q: float, kinks=(-1.0, 0.0, 1.0)) -> list[float]:
    """[expect(fn, q) for fn in fns], sharing one quadrature rule (building it is most of the cost)."""
    q = float(q)
    with np.errstate(all="ignore"):
        if math.isnan(q) or q < 0:
            return [math.nan for _ in fns]
        if q == 0:
            return [_at_zero(fn) for fn in fns]
        if math.isinf(q):
            return [0.5 * sum(_at_inf(fn)) for fn in fns]
        x, w = _rule1(math.sqrt(q), kinks)
        return [float(np.dot(w, fn(x))) for fn in fns]


def expect2(fn1: Callable, fn2: Callable, q1: float, q2: float, c: float) -> float:
    """E[fn1(u1) fn2(u2)] for (u1, u2) jointly Gaussian, mean 0, Var u1 = q1, Var u2 = q2, correlation c.

    Conditioning on u1: E_u1[fn1(u1) E[fn2(u2) | u1]], u2 | u1 ~ N(c sqrt(q2/q1) u1, q2 (1 - c^2)), both levels
    with the 1-D rule. The inner expectation is a smoothed copy of fn2 whose kinks sit at u1 = k / (c sqrt(q2/q1))
    with width sqrt(q1 (1 - c^2)) / |c|: the outer rule gets panel edges there, graded by factors of 4. |c| = 1
    (or 1 - |c| < 5e-13) is the 1-D E[fn1(u) fn2(c sqrt(q2/q1) u)], c = 0 the product of two 1-D expectations.
    q1 = q2 = inf uses the quadrant probabilities 1/4 +- asin(c)/(2 pi); other non-finite input gives nan."""
    q1, q2, c = float(q1), float(q2), float(c)
    with np.errstate(all="ignore"):
        if math.isnan(q1) or math.isnan(q2) or math.isnan(c) or q1 < 0 or q2 < 0:
            return math.nan
        c = min(1.0, max(-1.0, c))
        if q1 == 0:
            return _at_zero(fn1) * expect(fn2, q2)
        if q2 == 0:
            return expect(fn1, q1) * _at_zero(fn2)
        if math.isinf(q1) or math.isinf(q2):
            if not (math.isinf(q1) and math.isinf(q2)):
                return math.nan
            (a_hi, a_lo), (b_hi, b_lo) = _at_inf(fn1), _at_inf(fn2)
            same = 0.25 + math.asin(c) / (2.0 * math.pi)
            return same * (a_hi * b_hi + a_lo * b_lo) + (0.5 - same) * (a_hi * b_lo + a_lo * b_hi)
        if abs(c) < 1e-12:  # independent up to O(c sqrt(q1 q2)) terms, below float rounding (an odd phi's c^l ~ 1e-30)
            return expect(fn1, q1) * expect(fn2, q2)
        r = math.sqrt(q2 / q1)
        s = math.sqrt((1.0 - c) * (1.0 + c))
        if s < 1e-6:  # 1 - |c| < 5e-13: the O(1 - |c|) error of c = +-1 is below the quadrature's
            cr = math.copysign(r, c)  # fn2's kinks and O(1) features sit at x / |cr| in fn1's argument
            return expect(lambda x: fn1(x) * fn2(cr * x), q1,
                          np.concatenate([_KINKS, _KINKS / cr, _GRADED / cr, -_GRADED / cr]))
        sig1 = math.sqrt(q1)
        centres = _KINKS / (c * r)
        width = sig1 * s / abs(c)
        grades = width * 4.0 ** np.arange(0, 12)
        grades = grades[grades < _Z * sig1]
        extra = (centres[:, None] + np.concatenate([[0.0], grades, -grades])[None, :]).ravel()
        x, w = _rule(np.zeros(1), sig1, np.concatenate([_KINKS, extra]), max_x_panels=100, order=8)
        x, w = x[0], w[0]
        y, v = _rule(c * r * x, math.sqrt(q2) * s, _KINKS, max_x_panels=100, order=8)
        inner = np.sum(v * fn2(y), axis=1)
        return float(np.sum(w * fn1(x) * inner))


# ---- per-layer predictions -----------------------------------------------------------------------------------------

def _layer_array(values, depth: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, dtype=float), (depth,)).astype(float)


def layer_setup(weight_sq, fan_in, fan_out, bias_var):
    """(depth, E[(W^l)^2], sigma_w^2 = fan_in E[W^2], fan_out E[W^2], sigma_b^2), arrays over the layers."""
    w2 = np.asarray(weight_sq, dtype=float).ravel()
    depth = w2.size
    fan_in, fan_out = _layer_array(fan_in, depth), _layer_array(fan_out, depth)
    return depth, w2, fan_in * w2, fan_out * w2, _layer_array(bias_var, depth)


class Gaussian:
    """One activation's Gaussian expectations at variance q (cached): E[phi], E[phi^2], E[phi'^2], and the cross
    moment E[phi(u1) phi(u2)] at correlation c (the arc-cosine closed form for piecewise-linear phi)."""

    def __init__(self, act, slope):
        self.phi, dphi = _phi_fns(act, slope)
        fns = (self.phi, lambda x: self.phi(x) ** 2, lambda x: dphi(x) ** 2)
        self.moments = functools.lru_cache(maxsize=None)(lambda q: tuple(expect_all(fns, q)))
        piecewise_linear = _act(act).negative_slope
        self.negative_slope = piecewise_linear(slope) if piecewise_linear else None

    def cross(self, q: float, c: float) -> float:
        return _kernel(self.phi, q, c, self.moments(q)[1], self.negative_slope)


def predict(act, weight_var, fan_in, fan_out, bias_var=0.0, input_q=1.0, slope=0.01, input_corr=0.0,
            n_terms=1, samples=None) -> dict[str, np.ndarray]:
    """Per-layer mean-field predictions (arrays of length depth) of a plain network without a norm, for the weight
    variances actually initialized.

    Forward: q^1 = sigma_w2[1] input_q + sigma_b2[1], q^l = sigma_w2[l] E[phi(h^{l-1})^2] + sigma_b2[l].
    Backward from a unit-variance cotangent on the last block's output, E[(dL/dx^depth)^2] = 1:
    E[(dL/dh^l)^2] = E[phi'(h^l)^2] E[(dL/dx^l)^2], E[(dL/dx^{l-1})^2] = fan_out[l] Var(W^l) E[(dL/dh^l)^2].
    dL/dW^l sums n_terms (batch x positions) products dL/dh^l x^{l-1}: variance n_terms E[(dL/dh)^2] E[(x^{l-1})^2].
    Correlation of two inputs' h^l: c^1 = (sigma_w2 input_corr input_q + sigma_b2) / q^1, then the C-map.
    bias_var may be one number or one per layer. Overflow or collapse gives inf / 0 / nan entries, never an error.
    With `samples` (the values each unit's or channel's statistics are over: batch x positions), also the channel
    statistics of x^l (channel_stats) from q = E[phi(h^l)^2] and k = E[phi(u1) phi(u2)] at the C-map's c^l.
    """
    gauss = Gaussian(act, slope)
    depth, _, sw2, sw2_out, sb2 = layer_setup(weight_var, fan_in, fan_out, bias_var)
    q, mean, m2, d2, corr, cross = (np.empty(depth) for _ in range(6))
    with np.errstate(all="ignore"):
        for l in range(depth):
            if l == 0:
                q[0] = sw2[0] * input_q + sb2[0]
                corr[0] = (sw2[0] * input_corr * input_q + sb2[0]) / q[0]
            else:
                q[l] = sw2[l] * m2[l - 1] + sb2[l]
                cross[l - 1] = gauss.cross(q[l - 1], corr[l - 1])
                corr[l] = (sw2[l] * cross[l - 1] + sb2[l]) / q[l]
            mean[l], m2[l], d2[l] = gauss.moments(float(q[l]))
        channels = {}
        if samples is not None:  # x^depth's cross moment too: x^l's are the C-map's kernels
            cross[-1] = gauss.cross(q[-1], corr[-1])
            channels = channel_stats(m2, cross, samples)
        corr = np.clip(corr, -1.0, 1.0)
        grad_x = np.empty(depth)
        grad_x[-1] = 1.0
        for l in range(depth - 1, 0, -1):
            grad_x[l - 1] = sw2_out[l] * d2[l] * grad_x[l]
        grad_h = d2 * grad_x
        x_prev = np.concatenate([[float(input_q)], m2[:-1]])
        return {
            "theory_preact_var": q,
            "theory_act_mean": mean,
            "theory_act_var": np.maximum(m2 - mean**2, 0.0),  # (nan stays nan)
            "theory_grad_preact_var": grad_h,
            "theory_grad_act_var": grad_x,
            "theory_weight_grad_var": n_terms * grad_h * x_prev,
            "theory_corr": corr,
            **channels,
        }


def _kernel(phi, q: float, c: float, m2: float, negative_slope: float | None = None) -> float:
    """E[phi(u1) phi(u2)], Var u = q, correlation c; at c = 1 exactly E[phi^2] (= m2), so c = 1 stays 1.
    For phi(x) = x (x > 0), a x (x < 0) (identity, relu, leaky_relu; a = `negative_slope`) the arc-cosine closed
    form (Cho & Saul 2009), as relu = r(x), phi = r(x) - a r(-x): q ((1 + a^2) J(c) - 2 a J(-c)),
    J(c) = (sqrt(1 - c^2) + (pi - acos c) c) / (2 pi). It agrees with expect2 to ~1e-13 and needs no nested
    quadrature: the correlation map calls it at every layer of every run."""
    if math.isnan(q) or math.isnan(c):
        return math.nan
    if c == 1.0:
        return m2
    if negative_slope is not None and 0.0 < q < math.inf:
        a = negative_slope
        return q * ((1.0 + a * a) * _arc_cosine(c) - 2.0 * a * _arc_cosine(-c))
    return expect2(phi, phi, q, q, c)


def _arc_cosine(c: float) -> float:
    """E[relu(z1) relu(z2)] for unit Gaussians with correlation c (rounding may take c past +-1 in a deep network's
    correlation map: it is clamped)."""
    c = min(1.0, max(-1.0, c))
    return (math.sqrt(max(0.0, (1.0 - c) * (1.0 + c))) + (math.pi - math.acos(c)) * c) / (2.0 * math.pi)



# ---- channel statistics ---------------------------------------------------------------------------------------------


def channel_stats(q, k, samples) -> dict[str, np.ndarray]:
    """The channel statistics of a tensor whose elements have second moment q and, between two different samples of
    one unit, cross moment k: E[squared channel mean] = q/N + (1 - 1/N) k and E[channel variance] =
    (1 - 1/N)(q - k), N = samples."""
    q, k = np.asarray(q, dtype=float), np.asarray(k, dtype=float)
    return {"theory_chan_sq_mean": q / samples + (1.0 - 1.0 / samples) * k,
            "theory_chan_var": (1.0 - 1.0 / samples) * (q - k)}


# ---- fixed points, depth scales, phase diagram ------------------------------------------------------------------

def fixed_point(act, sigma_w2, sigma_b2=0.0, slope=0.01, start=1.0) -> float:
    """q* of the length map V(q) = sigma_w2 E[phi(sqrt(q) z)^2] + sigma_b2: the limit of iterating V from q = start.
    A network's recursion starts at its first layer's q^1 = sigma_w2^1 E[x0^2] + sigma_b2^1 (predict passes it);
    the default 1 is the q^1 of a unit-variance input through a layer with sigma_w2 = 1.

    V is increasing, so from `start` the iteration moves monotonically to the nearest fixed point in the direction
    of V(start) - start: found by stepping log q outwards (doubling steps) until V(q)/q - 1 changes sign, then
    Illinois regula falsi on log q. Special cases: `start` itself a fixed point (|V(q)/q - 1| < 1e-12 there; in
    particular where every q is one: relu sigma_w2 = 2, identity sigma_w2 = 1, sigma_b2 = 0) returns `start`, where
    the recursion stays;
    collapse to 0 (tanh sigma_w2 <= 1, sigma_b2 = 0; no sign change down to q = 1e-30 when V(0) = 0, else 1e-300)
    returns 0.0; divergence (no sign change up to 1e300: relu sigma_w2 > 2, identity sigma_w2 > 1) returns inf;
    nan input or a negative start returns nan. start = 0 stays at 0 if V(0) = 0 and else starts from V(0);
    start = inf starts from V(inf) (inf where phi grows)."""
    return _fixed_point(_act(act), float(sigma_w2), float(sigma_b2), float(slope), float(start))


@functools.lru_cache(maxsize=65536)  # the phase diagram asks for the same (sigma_w2, sigma_b2) twice
def _fixed_point(act: Activation, sw2: float, sb2: float, slope: float, start: float = 1.0) -> float:
    if math.isnan(sw2) or math.isnan(sb2) or math.isnan(start) or start < 0:
        return math.nan
    phi, _ = _phi_fns(act, slope)
    if math.isinf(sw2) or math.isinf(sb2):
        return math.inf
    v0 = sw2 * _at_zero(lambda x: phi(x) ** 2) + sb2
    q_min = 1e-30 if v0 == 0.0 else _Q_MIN
    if start == 0.0:  # V(0) = 0: the recursion stays at 0; else its next step is V(0) > 0
        if v0 == 0.0:
            return 0.0
        start = v0
    if math.isinf(start):  # the next step is V(inf): finite for a bounded phi
        with np.errstate(all="ignore"):
            start = sw2 * expect(lambda x: phi(x) ** 2, math.inf) + sb2
        if not 0.0 < start < math.inf:
            return start
    start = min(max(start, q_min), _Q_MAX)
    y0 = math.log(start)

    def resid(y):  # V(q)/q - 1 at q = e^y: scale-free, so its sign is reliable from 1e-300 to 1e300
        qq = math.exp(y)
        with np.errstate(all="ignore"):
            return (sw2 * expect(lambda x: phi(x) ** 2, qq) + sb2) / qq - 1.0

    r0 = resid(y0)
    if abs(r0) < 1e-12:
        return start
    direction = 1.0 if r0 > 0 else -1.0
    y_prev, r_prev, step = y0, r0, math.log(4.0)
    while True:
        y = y_prev + direction * step
        if y > math.log(_Q_MAX):
            return math.inf
        if y < math.log(q_min):
            return 0.0
        r = resid(y)
        if math.isnan(r):
            return math.nan
        if r * direction < -1e-12:  # a significant sign change: the fixed point lies in (y_prev, y)
            break
        y_prev, r_prev, step = y, r, 2.0 * step
    if r_prev * direction <= 0.0:  # V(q)/q = 1 to rounding at y_prev already
        return math.exp(y_prev)
    return math.exp(_illinois(resid, y_prev, y, r_prev, r))


def _illinois(f, a: float, b: float, fa: float, fb: float, xtol: float = 1e-13, maxiter: int = 200) -> float:
    """Root of f in [a, b] (fa, fb of opposite signs) by the Illinois variant of regula falsi: superlinear, and
    the bracket always shrinks (the retained end's value is halved when it is kept twice)."""
    side = 0
    for _ in range(maxiter):
        x = b - fb * (b - a) / (fb - fa)
        if not (min(a, b) < x < max(a, b)):
            x = 0.5 * (a + b)
        fx = f(x)
        if fx == 0.0 or abs(b - a) <= xtol * max(1.0, abs(x)):
            return x
        if (fx > 0) == (fb > 0):
            b, fb = x, fx
            if side == -1:
                fa *= 0.5
            side = -1
        else:
            a, fa = x, fx
            if side == 1:
                fb *= 0.5
            side = 1
    return x


def chi_1(act, sigma_w2, q, slope=0.01) -> float:
    """sigma_w2 E[phi'(sqrt(q) z)^2]: the mean squared singular value of one layer's Jacobian, the per-layer gain
    of gradients and of the distance between two nearby inputs (Poole et al. 2016; Schoenholz et al. 2017)."""
    _, dphi = _phi_fns(act, slope)
    with np.errstate(all="ignore"):
        return float(np.float64(sigma_w2) * expect(lambda x: dphi(x) ** 2, q))


def _q_slope(act, sigma_w2, q, slope) -> float:
    """dV/dq at q: chi_1 + sigma_w2 E[phi'' phi] (Schoenholz et al. 2017, eq. for xi_q), computed by Stein's lemma
    as sigma_w2 E[u phi(u) phi'(u)] / q: no phi'' needed, and the delta functions of phi'' at kinks (hardtanh) are
    included exactly. At q = 0 it is the q -> 0+ limit chi_1(0) (phi(0) = 0 there, so E[phi'' phi] = 0)."""
    phi, dphi = _phi_fns(act, slope)
    if q == 0:
        return chi_1(act, sigma_w2, 0.0, slope)
    with np.errstate(all="ignore"):
        return float(sigma_w2) * expect(lambda x: x * phi(x) * dphi(x), q) / q


def _depth(rate: float) -> float:
    """-1 / ln(rate): the number of layers over which a deviation decaying like rate^l shrinks by e. inf where
    nothing decays (rate >= 1 - 1e-12: ln = 0 at rate 1 up to rounding), 0 at rate 0, nan for nan."""
    if math.isnan(rate):
        return math.nan
    if rate >= 1.0 - 1e-12:
        return math.inf
    if rate <= 0.0:
        return 0.0
    return -1.0 / math.log(rate)


def _grad_depth(chi: float) -> float:
    """1 / |ln chi_1|: the number of layers over which gradients grow or shrink by e. inf where nothing grows or
    shrinks (|ln chi_1| < 1e-12: chi_1 = 1 up to rounding, as relu with sigma_w2 = 2 gives 1 + 2e-16), 0 at
    chi_1 = 0 or inf, nan for nan."""
    if math.isnan(chi):
        return math.nan
    if chi <= 0.0 or math.isinf(chi):
        return 0.0
    rate = abs(math.log(chi))
    return math.inf if rate < 1e-12 else 1.0 / rate


def _corr_fixed_point(act, sw2: float, sb2: float, q: float, slope) -> float:
    """c* < 1 of the C-map at q* in the chaotic phase. C is convex on [0, 1] (a power series in c with
    non-negative coefficients), C(0) >= 0 and C(1) = 1 with slope chi_1 > 1, so c* in [0, 1) is unique."""
    phi, _ = _phi_fns(act, slope)

    def resid(c):
        return (sw2 * expect2(phi, phi, q, q, c) + sb2) / q - c

    r_lo = resid(0.0)
    if r_lo <= 1e-14:
        return 0.0
    for delta in (1e-2, 1e-4, 1e-6, 1e-8):
        hi = 1.0 - delta
        r_hi = resid(hi)
        if r_hi < 0:
            return _illinois(resid, 0.0, hi, r_lo, r_hi, xtol=1e-12)
    return 1.0


def depth_scales(act, sigma_w2, sigma_b2=0.0, slope=0.01, start=1.0) -> dict:
    """q*, chi_1 and the depth scales of Schoenholz et al. 2017 for square layers with these variances.

    xi_q = -1/ln(chi_1 + sigma_w2 E[phi'' phi]) (how fast q^l reaches q*), xi_c = -1/ln(chi_c) with
    chi_c = sigma_w2 E[phi'(u1) phi'(u2)] at the correlation fixed point c* (c* = 1 and chi_c = chi_1 unless
    chi_1 > 1), xi_grad = 1/|ln chi_1| (gradients scale like chi_1^-l). Depth scales are inf where the log is 0 up
    to rounding (|ln| < 1e-12) or the rate exceeds 1 (nothing decays). q* is the fixed point reached from `start`
    (see fixed_point: a network passes its q^1; it matters where every q is a fixed point, relu at sigma_w2 = 2).
    regime: 'critical' when |chi_1 - 1| < 1e-3 (CRITICAL_TOL), else 'ordered' (chi_1 < 1) or 'chaotic';
    'undefined' only for nan chi_1."""
    sw2, sb2 = float(sigma_w2), float(sigma_b2)
    q = fixed_point(act, sw2, sb2, slope, start)
    chi = chi_1(act, sw2, q, slope)
    q_ok = math.isfinite(q)
    xi_q = _depth(_q_slope(act, sw2, q, slope)) if q_ok else math.nan
    if not q_ok:
        c_star, chi_c = math.nan, math.nan
    elif chi > 1.0 and q > 0:
        c_star = _corr_fixed_point(act, sw2, sb2, q, slope)
        _, dphi = _phi_fns(act, slope)
        chi_c = chi if c_star == 1.0 else sw2 * expect2(dphi, dphi, q, q, c_star)
    else:
        c_star, chi_c = 1.0, chi
    xi_grad = _grad_depth(chi)
    if math.isnan(chi):
        regime = "undefined"
    elif abs(chi - 1.0) < CRITICAL_TOL:
        regime = "critical"
    else:
        regime = "ordered" if chi < 1.0 else "chaotic"
    return {"q_star": q, "chi_1": chi, "xi_q": xi_q, "xi_c": _depth(chi_c), "xi_grad": xi_grad,
            "regime": regime, "c_star": c_star, "chi_c": chi_c}


def phase_diagram(act, sigma_w2_grid, sigma_b2_grid, slope=0.01) -> np.ndarray:
    """chi_1 at q*(sigma_w2, sigma_b2), shape (len(sigma_b2_grid), len(sigma_w2_grid)): < 1 ordered, > 1 chaotic.
    Where q* = inf the limit q -> inf is used (relu: sigma_w2 / 2)."""
    sw2, sb2 = np.asarray(sigma_w2_grid, float).ravel(), np.asarray(sigma_b2_grid, float).ravel()
    out = np.empty((sb2.size, sw2.size))
    for j, b in enumerate(sb2):
        for i, w in enumerate(sw2):
            out[j, i] = chi_1(act, w, fixed_point(act, w, b, slope), slope)
    return out


def critical_line(act, sigma_b2_grid, slope=0.01, bracket=(0.1, 10.0)) -> np.ndarray:
    """sigma_w2 with chi_1(q*) = 1 for each sigma_b2: the first crossing from order (< 1) to chaos along 25
    log-spaced sigma_w2 in `bracket`, refined by Illinois to ~1e-10; nan where chi_1 - 1 never turns positive."""
    grid = np.geomspace(bracket[0], bracket[1], 25)
    out = np.full(np.size(sigma_b2_grid), math.nan)
    for j, b in enumerate(np.asarray(sigma_b2_grid, float).ravel()):
        def excess(log_w, b=b):
            w = math.exp(log_w)
            return chi_1(act, w, fixed_point(act, w, b, slope), slope) - 1.0

        values = [excess(math.log(w)) for w in grid]
        for k in range(len(grid) - 1):
            if values[k] == 0.0:
                out[j] = grid[k]
                break
            if values[k] < 0.0 < values[k + 1]:
                out[j] = math.exp(_illinois(excess, math.log(grid[k]), math.log(grid[k + 1]), values[k],
                                            values[k + 1], xtol=1e-11))
                break
    return out


# ---- Jacobian spectrum ------------------------------------------------------------------------------------------

def jacobian_prediction(act, sigma_w2, q, depth, weights="gaussian", slope=0.01) -> dict:
    """Mean and variance of the squared singular values of J = D_L W_L ... D_1 W_1 (D = diag phi'(h), all layers at
    the same q), in the large-width limit of free probability (Pennington, Schoenholz & Ganguli 2017,
    "Resurrecting the sigmoid ...", section on the moments of the Jacobian spectrum):

        m1 = (sigma_w2 mu1)^L,  mu_k = E[phi'(h)^(2k)],
        var = m1^2 L (mu2/mu1^2 - 1 - s1),  s1 = -1 for Gaussian W, s1 = 0 for orthogonal W.

    The paper states var = L (mu2/mu1^2 - 1 - s1) at criticality (m1 = 1). Derivation of the m1^2 factor: an
    S-transform S(z) = (1/m1)(1 - v z + O(z^2)) has v = (m2 - m1^2)/m1^2; free multiplicative convolution
    multiplies S-transforms, so m1 multiplies and v adds over the L factors D^2 (v = mu2/mu1^2 - 1) and W W^T
    (v = 1 Gaussian Wishart, 0 orthogonal). Linear phi with orthogonal W: var = 0 (exact isometry)."""
    if weights not in ("gaussian", "orthogonal"):
        raise ValueError(f"weights must be 'gaussian' or 'orthogonal', not {weights!r}")
    _, dphi = _phi_fns(act, slope)
    with np.errstate(all="ignore"):
        mu1 = np.float64(expect(lambda x: dphi(x) ** 2, q))
        mu2 = np.float64(expect(lambda x: dphi(x) ** 4, q))
        s1 = -1.0 if weights == "gaussian" else 0.0
        m1 = (np.float64(sigma_w2) * mu1) ** depth
        var = m1**2 * depth * (mu2 / mu1**2 - 1.0 - s1)
    return {"mean_sq_sv": float(m1), "var_sq_sv": float(var), "mu1": float(mu1), "mu2": float(mu2), "s1": s1}
