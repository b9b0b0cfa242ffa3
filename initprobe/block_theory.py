"""Mean-field theory of residual blocks and normalized layers (blocks.py's networks): the residual recursions of
q^l and of the gradients, plain and residual networks behind a batch or layer norm, the moments of phi at a batch
norm's output for a finite batch, and the per-layer gradient factor of plain normalized networks. The Gaussian
expectations, kernels and conventions are theory.py's; this module adds what a block and a norm change.
"""

import math

import numpy as np

from .blocks import EPS as NORM_EPS, Norm, norm as get_norm
from .theory import _GL, _KINKS, _Z, Gaussian, _act, _arc_cosine, _phi_fns, channel_stats, layer_setup

# ---- residual and normalized networks -----------------------------------------------------------------------------
#
# Notation of the recursions below (docs/theory.md): q^l = E[(x^l)^2] and k^l = E[x^l_a x^l_b] (one unit, two samples
# a != b: two examples, or two positions of a CNN channel) of a residual stream; p^l = E[(dL/dx^l)^2] and
# P^l = E[dL/dx^l_a dL/dx^l_b] backward, from p^depth = 1, P^depth = 0 (the cotangent is i.i.d.). "samples" is how
# many values a unit's (MLP) or a channel's (CNN) statistics are over: batch x positions. A norm hands phi a unit
# variance: layer norm as N(0, 1) with the examples' correlation kept (infinite width), batch norm as a point uniform
# on the sphere {sum_a y_a = 0, sum_a y_a^2 = samples} per unit (infinite width, finite batch; batch_moments).


SPHERE_MIN = 6  # batch_moments' quadrature needs a sphere of dimension >= 4 (samples >= 6) for its density


def batch_moments(act, samples: int, slope=0.01) -> dict[str, float]:
    """Moments of phi at a batch norm's output: per unit, y uniform on the sphere {sum_a y_a = 0, |y|^2 = n},
    n = samples, infinitely wide. d = E phi(y_a)^2, o = E phi(y_a) phi(y_b) (a != b), m = E phi(y_a),
    A0 = E phi'(y_a)^2, A1 = E phi'(y_a) phi'(y_b), A2 = E y_a^2 phi'(y_a)^2, A3 = E y_a phi'(y_a) y_b phi'(y_b).

    Piecewise-linear phi (x > 0: x, x < 0: a x): closed forms. phi is homogeneous of degree 1, so y can be replaced
    by the projected Gaussian g - mean(g), whose pairs have correlation rho = -1/(n - 1), independent of its norm:
    d = A0 = A2 = (1 + a^2)/2, o = A3 = the arc-cosine kernel at rho, A1 = (1 + a^2) P(rho) + 2 a (1/2 - P(rho)) with
    P(rho) = 1/4 + asin(rho)/(2 pi), m = (1 - a) E|y_a| / 2, E|y_a| = sqrt(n - 1) Gamma(m'/2) / (sqrt(pi)
    Gamma((m' + 1)/2)), m' = n - 1 (y_a is sqrt(n - 1) times a coordinate of a point on the unit sphere of R^m').
    Other phi: no closed form; quadrature against the exact marginals, y_a with density (1 - y^2/m')^((m' - 3)/2)
    on |y| < sqrt(m') and (y_a, y_b) = (s1, rho s1 + sqrt(1 - rho^2) s2) with (s1, s2) of density
    (1 - (s1^2 + s2^2)/m')^((m' - 4)/2) on the disk; nan for n < SPHERE_MIN."""
    a_fn = _act(act).negative_slope
    rho = -1.0 / (samples - 1)
    if a_fn is not None:
        a = a_fn(slope)
        half = 0.5 * (1.0 + a * a)
        same = 0.25 + math.asin(rho) / (2.0 * math.pi)
        dims = samples - 1
        abs_mean = math.sqrt(dims) * math.exp(math.lgamma(dims / 2) - math.lgamma((dims + 1) / 2)) / math.sqrt(math.pi)
        o = (1.0 + a * a) * _arc_cosine(rho) - 2.0 * a * _arc_cosine(-rho)
        return {"d": half, "o": o, "m": 0.5 * (1.0 - a) * abs_mean, "A0": half,
                "A1": (1.0 + a * a) * same + 2.0 * a * (0.5 - same), "A2": half, "A3": o}
    if samples < SPHERE_MIN:
        return dict.fromkeys(("d", "o", "m", "A0", "A1", "A2", "A3"), math.nan)
    return _sphere_quadrature(act, samples, slope, rho)


def _panels(edges, order: int):
    """Gauss-Legendre nodes and weights on the panels between `edges` (sorted)."""
    gl_x, gl_w = _GL[order]
    width = np.diff(edges)[:, None]
    return (edges[:-1, None] + 0.5 * width * (gl_x + 1.0)).ravel(), (0.5 * width * gl_w).ravel()


def _sphere_quadrature(act, samples: int, slope, rho: float) -> dict[str, float]:
    """batch_moments by quadrature. 1-D: y on [-R, R], R = min(14, sqrt(m')) (beyond 14 the density is below
    e^-98 of its peak), panels of width <= 1 with edges at phi's possible kinks -1, 0, 1. 2-D: polar coordinates on
    the disk of radius R, so that its edge, where the density's derivatives jump, is a panel edge; angular panels
    edges where y_a or y_b is 0 (the kinks of ReLU-like phi lie on those rays)."""
    phi, dphi = _phi_fns(act, slope)
    dims = samples - 1
    reach = min(_Z + 4.0, math.sqrt(dims))
    with np.errstate(all="ignore"):
        grid = np.linspace(-reach, reach, 2 * int(math.ceil(reach)) + 1)
        y, w = _panels(np.unique(np.concatenate([grid, _KINKS[np.abs(_KINKS) < reach]])), 10)
        w = w * np.exp(0.5 * (dims - 3) * np.log1p(-np.minimum(y * y / dims, 1.0)))
        w /= w.sum()
        r, wr = _panels(np.linspace(0.0, reach, int(math.ceil(reach)) + 1), 10)
        zero_b = math.atan2(-rho, math.sqrt(1.0 - rho * rho))  # y_b = 0 on this ray and the opposite one
        rays = np.array([0.5 * math.pi, 1.5 * math.pi, zero_b % (2 * math.pi), (zero_b + math.pi) % (2 * math.pi)])
        theta, wt = _panels(np.unique(np.concatenate([np.linspace(0.0, 2 * math.pi, 17), rays])), 10)
        radial = wr * r * np.exp(0.5 * (dims - 4) * np.log1p(-np.minimum(r * r / dims, 1.0)))
        w2 = radial[:, None] * wt[None, :]
        w2 /= w2.sum()
        ya = r[:, None] * np.cos(theta)[None, :]
        yb = rho * ya + math.sqrt(1.0 - rho * rho) * r[:, None] * np.sin(theta)[None, :]
        fa, fb, ga, gb = phi(ya), phi(yb), dphi(ya), dphi(yb)
        return {"d": float(w @ phi(y) ** 2), "o": float(np.sum(w2 * fa * fb)), "m": float(w @ phi(y)),
                "A0": float(w @ dphi(y) ** 2), "A1": float(np.sum(w2 * ga * gb)), "A2": float(w @ (y * dphi(y)) ** 2),
                "A3": float(np.sum(w2 * (ya * ga) * (yb * gb)))}


def _batch_norm_backward(mo: dict, samples: int, cross_ratio: float) -> float:
    """E|dL/da|^2 / (E[1/s^2] E[u^2]) per element for a batch norm's input a (each unit over `samples` values), its
    output y and dL/dy = phi'(y) u, with u the incoming gradient of cross-sample correlation `cross_ratio`:
    dL/da = (1/s) (I - 11^T/n - y y^T/n) phi'(y) u removes the mean and the component along y."""
    n = samples
    return mo["A0"] - (mo["A0"] + (n - 1) * cross_ratio * mo["A1"] + mo["A2"] + (n - 1) * cross_ratio * mo["A3"]) / n


def _inverse_variance(v: float, samples: int) -> float:
    """E[1/s^2] for a batch norm's s^2 = v chi^2_{n-1}/n (the biased variance of n Gaussian samples of variance v):
    n / ((n - 3) v); inf for n <= 3 (1/s^2 has no mean there)."""
    return samples / ((samples - 3) * v) if samples > 3 else math.inf


def residual(act, weight_sq, fan_in, fan_out, alpha, norm="none", bias_var=0.0, input_q=1.0, samples=256,
             slope=0.01, n_terms=1, input_corr=0.0) -> dict[str, np.ndarray]:
    """Per-layer predictions of a residual network: x^1 = W^1 x^0 + b^1 (the stem), then
    x^l = x^{l-1} + alpha (W^l phi(h^l) + b^l) with h^l = N(x^{l-1}), N = `norm` ("none", "batch", "layer").

    Forward: the branch W phi(h) + b is fresh and zero-mean, so it adds its second moments to the stream's:
    q^l = q^{l-1} + alpha^2 (sigma_w2 E[phi(h)^2] + sigma_b2), k^l = k^{l-1} + alpha^2 (sigma_w2 E[phi(h_a) phi(h_b)]
    + sigma_b2). Without a norm h = x^{l-1} (Gaussian of variance q^{l-1}, correlation c^{l-1} = k^{l-1}/q^{l-1}: the
    correlation map of Yang & Schoenholz 2017); with layer norm h ~ N(0, 1) at correlation c^{l-1}; with batch norm
    the sphere's moments (batch_moments): linear growth either way (De & Smith 2020).
    Backward: dL/dx^{l-1} = dL/dx^l + J^T dL/dh^l, dL/dh^l = alpha phi'(h) W^T dL/dx^l (the branch's share),
    r^l = E[(dL/dh^l)^2] = alpha^2 fan_out E[W^2] E[phi'(h)^2] p^l, p^{l-1} = p^l + t^l with t^l = r^l / s^2 and s^2
    the variance the norm divides by: 1 without a norm, q^{l-1} for layer norm; batch norm divides by the centred
    batch variance (q^{l-1} - k^{l-1}) chi^2/n and projects (_batch_norm_backward), which also gives the gradient a
    cross-sample covariance P^{l-1} = P^l - t^l/(n - 1). The gradient's independence of the forward pass is exact in
    the wide limit (the cotangent is independent of the weights).
    dL/dW^l = alpha sum over the n_terms samples of dL/dx^l phi(h^l): n_terms alpha^2 (p^l E[phi^2] + (n - 1) P^l
    E[phi_a phi_b]). theory_branch_var = alpha^2 (sigma_w2 E[phi(h)^2] + sigma_b2); theory_preact_corr: c^{l-1}
    without a norm and with layer norm, -1/(n - 1) with batch norm."""
    depth, w2, sw2, sw2_out, sb2 = layer_setup(weight_sq, fan_in, fan_out, bias_var)
    branch, mo = _branch_inputs(act, norm, samples, slope)
    q, k, inc, preact, corr, d, a0, o = (np.full(depth, math.nan) for _ in range(8))
    q[0], k[0] = sw2[0] * input_q + sb2[0], sw2[0] * input_q * input_corr + sb2[0]
    preact[0], corr[0] = q[0], k[0] / q[0]
    with np.errstate(all="ignore"):
        for l in range(1, depth):
            d[l], a0[l], o[l], preact[l], corr[l] = branch(q[l - 1], k[l - 1])
            inc[l] = alpha**2 * (sw2[l] * d[l] + sb2[l])
            q[l] = q[l - 1] + inc[l]
            k[l] = k[l - 1] + alpha**2 * (sw2[l] * o[l] + sb2[l])
        p, cross, r = _residual_backward(_norm(norm).over, q, k, a0, alpha**2 * sw2_out, samples, mo)
        weight_grad = n_terms * np.concatenate([[p[0] * input_q],
                                                alpha**2 * (p[1:] * d[1:] + (samples - 1) * cross[1:] * o[1:])])
        return {"theory_preact_var": preact, "theory_act_mean": np.zeros(depth), "theory_act_var": q,
                "theory_grad_preact_var": r, "theory_grad_act_var": p, "theory_weight_grad_var": weight_grad,
                "theory_preact_corr": np.clip(corr, -1.0, 1.0), **channel_stats(q, k, samples),
                "theory_branch_var": inc}


def _branch_inputs(act, norm, samples, slope):
    """(f, batch moments or None): f(q, k) -> (E[phi(h)^2], E[phi'(h)^2], E[phi(h_a) phi(h_b)], Var(h), correlation
    of h) for h = N(x), x of second moment q and cross moment k."""
    gauss = Gaussian(act, slope)
    over = _norm(norm).over
    if over is None:
        def branch(q, k):
            _, sq, dsq = gauss.moments(q)
            return sq, dsq, gauss.cross(q, k / q), q, k / q
        return branch, None
    if over == "example":
        def branch(q, k):
            _, sq, dsq = gauss.moments(1.0)
            return sq, dsq, gauss.cross(1.0, k / q), q / (q + NORM_EPS), k / q
        return branch, None
    mo = batch_moments(act, samples, slope)

    def branch(q, k):
        v = (1.0 - 1.0 / samples) * (q - k)
        return mo["d"], mo["A0"], mo["o"], v / (v + NORM_EPS), -1.0 / (samples - 1)
    return branch, mo


def _residual_backward(over, q, k, a0, scale, samples, mo):
    """(p, P, r) of residual()'s backward pass; scale = alpha^2 fan_out E[W^2] per layer."""
    depth = q.size
    p, cross, r = np.empty(depth), np.zeros(depth), np.full(depth, math.nan)
    p[-1] = 1.0
    for l in range(depth - 1, 0, -1):
        u2 = scale[l] * p[l]  # E[(alpha W^T dL/dx^l)^2]
        r[l] = a0[l] * u2
        if over is None:
            t = r[l]
        elif over == "example":
            t = r[l] / (q[l - 1] + NORM_EPS)
        else:
            t = _inverse_variance(q[l - 1] - k[l - 1], samples) * u2 * _batch_norm_backward(mo, samples,
                                                                                             cross[l] / p[l])
        cross[l - 1] = cross[l] - (t / (samples - 1) if over == "batch" else 0.0)
        p[l - 1] = p[l] + t
    r[0] = p[0]  # the stem has no phi: its h is its x
    return p, cross, r


def normalized(act, weight_sq, fan_in, fan_out, norm, bias_var=0.0, input_q=1.0, samples=256, slope=0.01,
               n_terms=1, input_corr=0.0) -> dict[str, np.ndarray]:
    """Per-layer predictions of a plain network with a norm: a^l = W^l x^{l-1} + b^l, h^l = N(a^l), x^l = phi(h^l).

    The forward pass is pinned: h has unit variance at every layer (up to eps). Layer norm: h ~ N(0, 1); the
    examples' correlation follows the C-map at q = 1, c^l = (sigma_w2 E[phi(u_a) phi(u_b)] + sigma_b2) / q_a with
    q_a = sigma_w2 E[phi(z)^2] + sigma_b2 the variance of a. Batch norm: the sphere's moments (batch_moments), the
    examples' correlation -1/(n - 1).
    Backward: dL/dh = phi'(h) dL/dx, dL/da = J^T dL/dh, dL/dx^{l-1} = W^T dL/da: p^{l-1} = fan_out E[W^2] E[(dL/da)^2]
    with E[(dL/da)^2] = E[phi'(z)^2] p^l / q_a for layer norm (per layer sigma_w2 E[phi'^2] / (sigma_w2 E[phi^2] +
    sigma_b2): 1 for ReLU without bias), and E[1/s^2] p^l _batch_norm_backward(...) for batch norm, whose projection
    makes the gradient's batch mean 0 below the top layer (cross-sample correlation -1/(n - 1)). Per layer that is
    lambda_B = n/(n - 3) (A0 - (A0 - A1 + A2 - A3)/n) / (d - o), -> E[phi'(z)^2] / Var phi(z) as n -> infinity
    (pi/(pi - 1) for ReLU, Yang et al. 2019), >= 1 for every phi (Gaussian Poincare inequality): gradients explode
    whatever the init. dL/dW sums n_terms products dL/da x: n_terms E[(dL/da)^2] E[x^2] for layer norm,
    n_terms E[(dL/da)^2] (E[x^2] - E[x_a x_b]) for batch norm (dL/da sums to 0 over the batch)."""
    depth, w2, sw2, sw2_out, sb2 = layer_setup(weight_sq, fan_in, fan_out, bias_var)
    per_example = _norm(norm).over == "example"
    gauss = Gaussian(act, slope)
    mean1, sq1, dsq1 = gauss.moments(1.0)
    mo = None if per_example else batch_moments(act, samples, slope)
    x_sq = np.concatenate([[input_q], np.full(depth - 1, sq1 if per_example else mo["d"])])  # E[(x^{l-1})^2]
    x_cross = np.zeros(depth)  # E[x^{l-1}_a x^{l-1}_b]: the input's, then the layers'
    x_cross[0] = input_q * input_corr
    a_var, a_corr = np.empty(depth), np.empty(depth)
    with np.errstate(all="ignore"):
        for l in range(depth):
            a_var[l] = sw2[l] * x_sq[l] + sb2[l]
            a_corr[l] = (sw2[l] * x_cross[l] + sb2[l]) / a_var[l]
            if l + 1 < depth:
                x_cross[l + 1] = gauss.cross(1.0, a_corr[l]) if per_example else mo["o"]
        if per_example:
            out_cross = np.append(x_cross[1:], gauss.cross(1.0, a_corr[-1]))  # x^l's, the next layer's input's
            v, d, a0, act_mean, corr = a_var, sq1, dsq1, mean1, np.clip(a_corr, -1.0, 1.0)
        else:
            out_cross = np.full(depth, mo["o"])
            v = (1.0 - 1.0 / samples) * sw2 * (x_sq - x_cross)  # the centred batch variance of a (b drops out)
            d, a0, act_mean, corr = mo["d"], mo["A0"], mo["m"], np.full(depth, -1.0 / (samples - 1))
        p, grad_a = np.empty(depth), np.empty(depth)
        p[-1] = 1.0
        for l in range(depth - 1, -1, -1):
            if per_example:
                grad_a[l] = a0 * p[l] / (v[l] + NORM_EPS)
            else:
                cross_ratio = 0.0 if l == depth - 1 else -1.0 / (samples - 1)
                grad_a[l] = _inverse_variance(v[l] * samples / (samples - 1), samples) * p[l] * \
                    _batch_norm_backward(mo, samples, cross_ratio)
            if l > 0:
                p[l - 1] = sw2_out[l] * grad_a[l]
        spread = x_sq if per_example else x_sq - x_cross
        return {"theory_preact_var": v / (v + NORM_EPS), "theory_act_mean": np.full(depth, act_mean),
                "theory_act_var": np.full(depth, d - act_mean**2), "theory_grad_preact_var": a0 * p,
                "theory_grad_act_var": p, "theory_weight_grad_var": n_terms * grad_a * spread,
                "theory_preact_corr": corr, **channel_stats(np.full(depth, d), out_cross, samples)}


def gradient_factor(act, norm, sigma_w2, sigma_b2=0.0, samples=256, slope=0.01) -> float:
    """The per-layer factor of the gradient's second moment going down a plain normalized network, between its
    square layers below the top: layer norm sigma_w2 E[phi'^2] / (sigma_w2 E[phi^2] + sigma_b2); batch norm
    lambda_B (normalized()'s docstring), or as samples -> inf, E[phi'(z)^2] / Var phi(z) (samples=math.inf)."""
    gauss = Gaussian(act, slope)
    mean1, sq1, dsq1 = gauss.moments(1.0)
    if _norm(norm).over == "example":
        return sigma_w2 * dsq1 / (sigma_w2 * sq1 + sigma_b2)
    if math.isinf(samples):
        return dsq1 / (sq1 - mean1**2)
    mo = batch_moments(act, samples, slope)
    return samples / (samples - 3) * _batch_norm_backward(mo, samples, -1.0 / (samples - 1)) / (mo["d"] - mo["o"])


def _norm(norm) -> Norm:
    return norm if isinstance(norm, Norm) else get_norm(norm)
