"""Theory next to measurement: from a RunConfig (and, for a run, its measured weights) to the mean-field
predictions of `theory.py`, as `theory_*` columns and summary numbers. numpy only, no torch.

Conventions (Poole et al. 2016; Schoenholz et al. 2017; docs/theory.md): sigma_w^2 = fan_in * E[(W^l)^2] of each
layer as initialized. It is the second moment, not the variance: h = W x sums fan_in products W_i x_i, and for
inputs x_i independent with mean 0 its square has mean fan_in E[W^2] E[x^2] whatever the mean of W, so layer 1
of an init with non-zero mean (constant, U(0, 1)) is predicted from Var(W) + E[W]^2. (Beyond layer 1 such weights
give the units a common part, the cross terms E[W]^2 x_i x_j, which mean-field theory leaves out: it describes
zero-mean weights.) A run takes E[W^2] from its measured weights (layers.csv's weight_sq_mean), `initprobe theory`
from the scheme's formula. sigma_b^2 = Var(b) (the biases have mean 0). The input x0 ~ N(0, 1) has E[x0^2] = 1
and, between two inputs, correlation 0 in expectation.

Two sets of scales (q*, chi_1, depth scales, regime) describe a run: the nominal ones of the scheme's formula (what
`initprobe theory` prints; none for a data-dependent init or a user's function) and the realized ones of the
weights this run drew, whose sigma_w^2 differs from the formula's by O(1/sqrt(weights)). Near criticality that
difference decides q* and the regime (tanh + Glorot: 1.001 gives q* = 0.0005, 0.999 gives q* = 0 and "ordered"),
so the summary gives both, labelled.

CNNs use the same recursions with fan_in = k^2 C per position. Circular padding gives every position a full patch;
zero padding lowers the variance at the border (a measured deviation, not hidden). Even with circular padding the
recursions assume Gaussian pre-activations, and with few input channels layer 1's are not: a unit's h is Gaussian
only given its weights, with variance ||W_c||^2 over a patch of k^2 C_in inputs, which spreads over the channels
by sqrt(2 / (k^2 C_in)) for Gaussian weights (0.27 for a 3x3 kernel on 3 channels). Over the channels h is then a
Gaussian scale mixture, and E[phi(h)^2] falls below its value at the mean scale where phi^2 is concave in the
scale (tanh: 1.5 % at q = 1 for that spread). Later layers inherit the deficit, damped as q^l approaches q*.
Measured (tanh + LeCun normal, so q^1 = 1; 8x8 images, batch 32, 12 seeds, float64): with 3 input channels act_var
is 1.8 % below theory at layer 1 and preact_var 2.1 % below at layer 2, within 1 % from layer 6 on; with 64 input
channels within 0.9 % at every layer (tests/test_theory_bugs.py holds the wide case to its finite-width error).
"""

import math

import numpy as np
import pandas as pd

from . import activations, analysis, block_theory, blocks, config, inits, memory, shapes, theory

COMPARED = ("preact_var", "act_var", "grad_preact_var")  # measured vs predicted in the summary's deviation
THEORY_COLUMNS = ("theory_preact_var", "theory_act_mean", "theory_act_var", "theory_grad_preact_var",
                  "theory_grad_act_var", "theory_weight_grad_var", "theory_preact_corr", "theory_chan_sq_mean",
                  "theory_chan_var", "theory_branch_var")
GRADIENT_COLUMNS = ("theory_grad_preact_var", "theory_grad_act_var", "theory_weight_grad_var")
NO_PREDICTION = "no prediction"  # the verdict of a ratio that theory does not predict (no_prediction says why)
WEIGHT_MOMENT = "weight_sq_mean"  # the measured column theory reads: E[W^2], averaged over the seeds
INPUT_Q = 1.0  # E[x0^2] of the input x0 ~ N(0, 1)


def per_layer(cfg: config.RunConfig, f) -> np.ndarray:
    """f(weight shape) of every layer, as an array: layer 1's shape and the others' (all alike) are asked once."""
    first = f(shapes.weight_shape(cfg, *shapes.layer_size(cfg, 0)))
    rest = f(shapes.weight_shape(cfg, *shapes.layer_size(cfg, 1))) if cfg.depth > 1 else first
    values = np.empty(cfg.depth, dtype=object if first is None or rest is None else float)
    values[0], values[1:] = first, rest
    return values


def fans(cfg: config.RunConfig) -> tuple[np.ndarray, np.ndarray]:
    return per_layer(cfg, lambda s: inits.fans(s)[0]), per_layer(cfg, lambda s: inits.fans(s)[1])


def bias_variance(cfg: config.RunConfig) -> np.ndarray:
    fan_in, _ = fans(cfg)
    if cfg.bias == "torch_default":
        return 1.0 / (3.0 * fan_in)  # U(+-1/sqrt(fan_in))
    return np.full_like(fan_in, 0.0 if cfg.bias == "zeros" else cfg.bias_std**2)


def expected_second_moment(cfg: config.RunConfig) -> np.ndarray | None:
    """E[(W^l)^2] of each layer from the scheme's formula; None where there is none (nominal_note says why)."""
    spec = inits.get(cfg.init)
    params = config.init_params(cfg)
    values = per_layer(cfg, lambda s: spec.expected_second_moment(s, params))
    return None if values.dtype == object else values


def nominal_note(cfg: config.RunConfig) -> str | None:
    """Why the scheme has no nominal prediction (no formula for E[W^2] before the weights exist), or None."""
    if expected_second_moment(cfg) is not None:
        return None
    return _no_formula(cfg) + "; only the realized network is predicted, from the weights it drew"


def _no_formula(cfg: config.RunConfig) -> str:
    if inits.get(cfg.init).data_dependent:
        return (f"init '{cfg.init}' is data-dependent (it rescales the weights on a batch): there is no formula "
                "for E[W^2] before a network exists")
    return f"init '{cfg.init}' is a function of your own: there is no formula for E[W^2] before it has run"


def is_plain(cfg: config.RunConfig) -> bool:
    """A plain block without a norm: the network of Poole et al. 2016, with its fixed points and depth scales."""
    return not blocks.block(cfg.block).stem and not blocks.norm(cfg.norm).standardizes


def samples(cfg: config.RunConfig) -> int:
    """The values each unit's (MLP) or channel's (CNN) statistics are over: batch x positions."""
    return cfg.batch * shapes.positions(cfg)


def columns(cfg: config.RunConfig, weight_sq_mean: np.ndarray, input_q: float = INPUT_Q,
            input_corr: float = 0.0) -> dict[str, np.ndarray]:
    """theory_* columns (THEORY_COLUMNS), one value per layer, for these second moments E[(W^l)^2], and inputs with
    E[x0^2] = input_q and mean correlation input_corr between two of them (a run's x0 ~ N(0, 1): 1 and 0): the
    recursion of the config's architecture (theory.predict, block_theory.residual, block_theory.normalized); nan where
    no_prediction() names a reason."""
    fan_in, fan_out = fans(cfg)
    n = samples(cfg)
    common = dict(bias_var=bias_variance(cfg), input_q=input_q, input_corr=input_corr, slope=cfg.slope, n_terms=n)
    norm = blocks.norm(cfg.norm)
    if blocks.block(cfg.block).stem:
        out = block_theory.residual(cfg.act, weight_sq_mean, fan_in, fan_out, config.branch_alpha(cfg), norm, samples=n,
                              **common)
    elif norm.standardizes:
        out = block_theory.normalized(cfg.act, weight_sq_mean, fan_in, fan_out, norm, samples=n, **common)
    else:
        out = theory.predict(cfg.act, weight_sq_mean, fan_in, fan_out, samples=n, **common)
        out["theory_preact_corr"] = out.pop("theory_corr")
    depth = len(weight_sq_mean)
    out = {k: out.get(k, np.full(depth, np.nan)) for k in THEORY_COLUMNS}
    for column in no_prediction(cfg):
        out[column] = np.full(depth, np.nan)
    return out


def no_prediction(cfg: config.RunConfig) -> dict[str, str]:
    """theory_* columns without a prediction for this config, each with the reason (summary.json says it)."""
    if blocks.norm(cfg.norm).over != "batch":
        return {}
    n = samples(cfg)
    if n < block_theory.SPHERE_MIN and activations.get(cfg.act).negative_slope is None:
        why = (f"batch norm over {n} values with {cfg.act}: its moments on the batch's sphere have no closed form "
               f"(piecewise-linear phi only) and the quadrature needs at least {block_theory.SPHERE_MIN} values")
        return dict.fromkeys(THEORY_COLUMNS, why)
    if n <= 3:
        why = (f"batch norm over {n} values: its backward pass divides by the batch variance, whose inverse has no "
               "mean over 3 or fewer values (E[1/s^2] diverges)")
        return dict.fromkeys(GRADIENT_COLUMNS, why)
    return {}


def notes(cfg: config.RunConfig) -> list[str]:
    """What the prediction of a residual or normalized network rests on and what it leaves out, in words
    (summary.json); the columns it does not predict at all are no_prediction()'s."""
    out = []
    block, norm = blocks.block(cfg.block), blocks.norm(cfg.norm)
    missing = no_prediction(cfg)
    if norm.over == "batch" and "theory_act_var" not in missing:
        how = "in closed form (piecewise-linear phi)" if activations.get(cfg.act).negative_slope else \
            f"by quadrature ({cfg.act} has no closed form there)"
        out.append(f"batch norm: phi's moments on the batch's sphere, exact at infinite width, {how}")
    if norm.over == "batch" and not block.stem and "theory_grad_preact_var" not in missing:
        out.append("plain batch norm (Yang et al. 2019): the gradient grows going down whatever the init, by the "
                   f"per-layer factor of an infinitely wide network at batch {samples(cfg)} (pi/(pi-1) = 1.467 for "
                   "ReLU only as the batch grows without bound). Not predicted: the drift of a finite-width network "
                   "from that state with depth, the larger the more batch/width is (here "
                   f"{cfg.batch / cfg.width:.2g}); the measured gradients then fall below the prediction by a "
                   "factor that grows with depth")
    if block.stem and norm.over is None and activations.get(cfg.act).negative_slope is None:
        out.append("residual without a norm: the stream's units are Gaussian only in the wide limit; a smooth "
                   "phi's branch variance is off by O(1/width) per block")
    if cfg.arch == "cnn" and cfg.padding == "zeros" and not is_plain(cfg):
        out.append("CNN with zero padding: border positions see fewer inputs than theory assumes")
    return out


def measured_second_moment(frame: pd.DataFrame) -> pd.Series:
    """E[(W^l)^2] per layer (index: layer, ascending), averaged over the frame's seeds."""
    return frame.groupby("layer")[WEIGHT_MOMENT].mean().sort_index()


def add_theory(frame: pd.DataFrame, cfg: config.RunConfig, input_q: float = INPUT_Q,
               input_corr: float = 0.0) -> pd.DataFrame:
    """The run's layers with theory_* columns, predicted from each layer's measured E[W^2] averaged over the seeds
    (so lsuv, orthogonal or a user's init are predicted from the weights they actually produced). One prediction
    serves every seed: seeds' second moments differ by O(1/width), far below what the statistics resolve, and the
    quadrature is the costly part of a small run. Inputs as in columns()."""
    moment = measured_second_moment(frame)
    theory_cols = pd.DataFrame(columns(cfg, moment.to_numpy(), input_q, input_corr), index=moment.index)
    return frame.join(theory_cols, on="layer")


def joined_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The theory_* columns add_theory joined to `frame`, one value per layer, as columns() returned them."""
    first = frame[frame["seed"] == frame["seed"].min()].sort_values("layer")
    return {c: first[c].to_numpy() for c in THEORY_COLUMNS if c in first}


def scales(cfg: config.RunConfig, weight_sq_mean: np.ndarray, input_q: float = INPUT_Q, cols: dict | None = None
           ) -> dict:
    """q*, chi_1, depth scales and regime of the square layers (layer 2 onwards, or the only one), for these
    second moments E[(W^l)^2]. q* is the fixed point the recursion reaches from the network's own q^1 (layer 1's
    sigma_w^2 E[x0^2] + sigma_b^2), which decides it where every q is a fixed point (relu, sigma_w^2 = 2).
    Residual and normalized networks have no fixed point: architecture_scales (from `cols`, these moments'
    columns(), where the caller has them already)."""
    if not is_plain(cfg):
        return architecture_scales(cfg, weight_sq_mean, input_q, cols)
    fan_in, _ = fans(cfg)
    sigma_w2, sigma_b2 = square_layer(cfg, weight_sq_mean)
    q1 = float(fan_in[0] * weight_sq_mean[0] * input_q + bias_variance(cfg)[0])
    out = theory.depth_scales(cfg.act, sigma_w2, sigma_b2, cfg.slope, start=q1)
    return {"sigma_w2": sigma_w2, "sigma_b2": sigma_b2, **out}


def square_layer(cfg: config.RunConfig, weight_sq_mean: np.ndarray) -> tuple[float, float]:
    """(sigma_w^2, sigma_b^2) of the square layers (layer 2 onwards, or the only one), for these E[(W^l)^2]."""
    fan_in, _ = fans(cfg)
    l = 1 if cfg.depth > 1 else 0
    return float(fan_in[l] * weight_sq_mean[l]), float(bias_variance(cfg)[l])


def architecture(cfg: config.RunConfig) -> dict:
    """What summary.json's theory says of a residual or normalized network beside its scales: "architecture"
    (describe), "notes" (what the prediction leaves out), "no_prediction" (theory_* columns without one, and
    why); nothing for a plain network."""
    if is_plain(cfg):
        return {}
    return {"architecture": describe(cfg), "notes": notes(cfg), "no_prediction": no_prediction(cfg)}


def architecture_scales(cfg: config.RunConfig, weight_sq_mean: np.ndarray, input_q: float = INPUT_Q,
                        cols: dict | None = None) -> dict:
    """What the prediction of a residual or normalized network says end to end, for these E[(W^l)^2]: the square
    layers' sigma_w^2 and sigma_b^2, the predicted forward ratio act_var[depth]/act_var[1] and backward ratio of
    the gradient that carries the signal down (blocks.Block.stream_gradient), their per-layer gains and verdicts
    (analysis.verdict, as the measured ones); alpha for residual blocks; for plain normalized blocks the per-layer
    gradient factor of block_theory.gradient_factor (and, for batch norm, its large-batch limit E[phi'^2]/Var phi)."""
    sigma_w2, sigma_b2 = square_layer(cfg, weight_sq_mean)
    cols = columns(cfg, weight_sq_mean, input_q) if cols is None else cols
    stream = "theory_" + blocks.block(cfg.block).stream_gradient
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = float(cols["theory_act_var"][-1] / cols["theory_act_var"][0])
        backward = float(cols[stream][0] / cols[stream][-1])
    per_layer = 1.0 / max(cfg.depth - 1, 1)
    missing = no_prediction(cfg)

    def verdict(ratio, column):  # a ratio without a prediction is no verdict, not an overflow
        return NO_PREDICTION if column in missing else analysis.verdict(ratio, not np.isfinite(ratio))

    out = {"sigma_w2": sigma_w2, "sigma_b2": sigma_b2, "forward_ratio": forward, "backward_ratio": backward,
           "forward_gain_per_layer": forward**per_layer, "backward_gain_per_layer": backward**per_layer,
           "forward_verdict": verdict(forward, "theory_act_var"), "backward_verdict": verdict(backward, stream)}
    norm = blocks.norm(cfg.norm)
    if blocks.block(cfg.block).stem:
        out["alpha"] = config.branch_alpha(cfg)
    elif stream not in missing:
        n = samples(cfg)
        out["gradient_factor"] = block_theory.gradient_factor(cfg.act, norm, sigma_w2, sigma_b2, n, cfg.slope)
        if norm.over == "batch":
            out["gradient_factor_large_batch"] = block_theory.gradient_factor(cfg.act, norm, sigma_w2, sigma_b2,
                                                                              math.inf, cfg.slope)
    return out


def describe(cfg: config.RunConfig) -> str:
    """'residual blocks, batch norm, alpha = 0.1429': the architecture in words."""
    parts = [f"{cfg.block} blocks", "no norm" if cfg.norm == "none" else f"{cfg.norm} norm"]
    if blocks.block(cfg.block).stem:
        parts.append(f"alpha = {config.branch_alpha(cfg):.4g}")
    return ", ".join(parts)


def deviation(frame: pd.DataFrame) -> dict:
    """Largest relative deviation |measured - theory| / theory per compared column, over finite rows."""
    out = {}
    for col in COMPARED:
        measured, predicted = frame[col].to_numpy(float), frame["theory_" + col].to_numpy(float)
        ok = np.isfinite(measured) & np.isfinite(predicted) & (predicted != 0)
        out[col] = float(np.max(np.abs(measured[ok] - predicted[ok]) / np.abs(predicted[ok]))) if ok.any() else math.nan
    return out


def summary(frame: pd.DataFrame, cfg: config.RunConfig, input_q: float = INPUT_Q, cols: dict | None = None) -> dict:
    """summary.json's "theory": {"nominal": the scheme's scales (None, with "nominal_note", where it has no
    formula), "realized": the scales of the weights this run drew (their E[W^2] averaged over the seeds),
    "max_relative_deviation": of the measurement from the realized network's theory_* columns}; for residual or
    normalized networks also "architecture" (describe), "notes" (what the prediction leaves out) and
    "no_prediction" (theory_* columns without one, and why). `cols`: the realized network's columns() for input_q
    where the caller has them (joined_columns), so that they are not computed again."""
    nominal = expected_second_moment(cfg)
    out = {"nominal": None if nominal is None else scales(cfg, nominal, input_q)}
    if nominal is None:
        out["nominal_note"] = nominal_note(cfg)
    out["realized"] = scales(cfg, measured_second_moment(frame).to_numpy(), input_q, cols)
    out["max_relative_deviation"] = deviation(frame)
    return {**out, **architecture(cfg)}


def from_top_gradient(frame: pd.DataFrame) -> pd.DataFrame:
    """The backward predictions of `frame` (made for a unit-variance cotangent at the top) for the gradient that
    reached the top of this network, a loss's: the backward recursion is linear in E[(dL/dx^depth)^2], so each
    is scaled by the measured grad_act_var at the top layer over its prediction (means over the seeds)."""
    top = frame[frame["layer"] == frame["layer"].max()]
    ratio = top["grad_act_var"].mean() / top["theory_grad_act_var"].mean()
    return frame.assign(**{c: frame[c] * ratio for c in GRADIENT_COLUMNS if c in frame})


TRAINABLE_DEPTHS = 6.0  # Schoenholz et al. 2017: a network trains while its depth is below about 6 xi_c


def trainability(theory_summary: dict, depth: int) -> dict:
    """Whether mean-field theory expects a network of `depth` layers to train (Schoenholz et al. 2017): depth
    below TRAINABLE_DEPTHS xi_c, the depth over which the correlation of two inputs relaxes to its fixed point, so
    that the last layer can still tell inputs apart (and gradients neither vanish nor explode). From the scheme's
    nominal scales (summary()'s "nominal"), else the realized network's; "unknown" where xi_c is not a number."""
    source = "nominal" if theory_summary.get("nominal") else "realized"
    found = theory_summary[source]
    six = TRAINABLE_DEPTHS * found["xi_c"]
    predicted = "unknown" if math.isnan(six) else "trainable" if depth < six else "untrainable"
    return {"from": source, "sigma_w2": found["sigma_w2"], "sigma_b2": found["sigma_b2"], "xi_q": found["xi_q"],
            "xi_c": found["xi_c"], "six_xi_c": six, "depth": depth, "predicted": predicted}


def trainability_curves(act: str, sigma_w2: np.ndarray, sigma_b2: float, slope: float = 0.01) -> pd.DataFrame:
    """xi_q, xi_c and TRAINABLE_DEPTHS xi_c along sigma_w2 at one sigma_b2: the curves a trainability heatmap draws
    over its cells."""
    rows = [theory.depth_scales(act, w, sigma_b2, slope) for w in sigma_w2]
    return pd.DataFrame({"sigma_w2": sigma_w2, "xi_q": [r["xi_q"] for r in rows], "xi_c": [r["xi_c"] for r in rows],
                         "six_xi_c": [TRAINABLE_DEPTHS * r["xi_c"] for r in rows]})


def for_config(cfg: config.RunConfig) -> tuple[pd.DataFrame, dict]:
    """A-priori predictions (no network): per-layer theory_* columns from the scheme's formula, and scales (for a
    residual or normalized network with its "architecture", "notes" and "no_prediction", as summary()).
    ConfigError, before any per-layer array is made, for a depth beyond config.THEORY_MAX_DEPTH or whose
    predictions would not fit in memory."""
    if cfg.depth > config.THEORY_MAX_DEPTH:
        raise config.ConfigError(f"initprobe theory predicts at most {config.THEORY_MAX_DEPTH} layers (one quadrature "
                                 f"each), got --depth {cfg.depth}; `initprobe run` predicts beside any depth it runs")
    memory.check_theory(cfg, memory.host_available())
    moment = expected_second_moment(cfg)
    if moment is None:
        raise config.ConfigError(_no_formula(cfg) + "; `initprobe run` predicts from the weights it produced")
    cols = columns(cfg, moment)
    frame = pd.DataFrame({"layer": np.arange(1, cfg.depth + 1), WEIGHT_MOMENT: moment, **cols})
    return frame, {**scales(cfg, moment, cols=cols), **architecture(cfg)}


def phase_grid(act: str, sigma_w2: np.ndarray, sigma_b2: np.ndarray, slope: float = 0.01) -> pd.DataFrame:
    """chi_1 and q* over a (sigma_w^2, sigma_b^2) grid, tidy."""
    chi = theory.phase_diagram(act, sigma_w2, sigma_b2, slope)  # (len(sigma_b2), len(sigma_w2))
    rows = [(w, b, chi[j, i], theory.fixed_point(act, w, b, slope))
            for j, b in enumerate(sigma_b2) for i, w in enumerate(sigma_w2)]
    return pd.DataFrame(rows, columns=["sigma_w2", "sigma_b2", "chi_1", "q_star"])


def jacobian(frame: pd.DataFrame, cfg: config.RunConfig) -> dict:
    """Predictions for the first seed's end-to-end Jacobian: the mean squared singular value from this
    network's own layers (prod over l of fan_out E[(W^l)^2] E[phi'(h^l)^2]), and the free-probability mean and
    variance at the fixed point (Pennington et al. 2017), for orthogonal or Gaussian weights."""
    first = frame[frame["seed"] == frame["seed"].min()].sort_values("layer")
    _, fan_out = fans(cfg)
    moment = first[WEIGHT_MOMENT].to_numpy()
    if not is_plain(cfg):
        return residual_jacobian(cfg, moment)
    with np.errstate(divide="ignore", invalid="ignore"):
        dphi2 = first["theory_grad_preact_var"].to_numpy() / first["theory_grad_act_var"].to_numpy()
        layerwise = float(np.prod(fan_out * moment * dphi2))
    sc = scales(cfg, moment)
    weights = "orthogonal" if inits.get(cfg.init).orthogonal else "gaussian"
    free = theory.jacobian_prediction(cfg.act, sc["sigma_w2"], sc["q_star"], cfg.depth, weights, cfg.slope)
    return {"theory_mean_sq_sv": layerwise, "free_probability": {"weights": weights, "at_q": sc["q_star"], **free}}


def residual_jacobian(cfg: config.RunConfig, moment: np.ndarray) -> dict:
    """The mean squared singular value of a residual or layer-normalized network's Jacobian dx^depth/dx^0 for
    these E[(W^l)^2]: the gradient reaching the input from a unit-variance cotangent, E[(dL/dx^0)^2] =
    fan_out^1 E[(W^1)^2] times the second moment of dL/d(W^1 x^0 + b^1) (the stem's dL/dx^1; behind a layer norm
    grad_act / q_a of layer 1), times in/min(in, out) for a layer that is not square. Free probability's
    prediction is for plain networks at a fixed point: none here."""
    fan_in, fan_out = fans(cfg)
    cols = columns(cfg, moment)
    first = cols["theory_grad_act_var"][0] if blocks.block(cfg.block).stem else \
        cols["theory_weight_grad_var"][0] / (samples(cfg) * INPUT_Q)
    n_in, n_out = shapes.layer_size(cfg, 0)
    mean_sq = float(fan_out[0] * moment[0] * first * n_in / min(n_in, n_out))
    return {"theory_mean_sq_sv": mean_sq, "free_probability": {
        "note": "free probability's spectrum is for plain networks at a fixed point: no prediction for "
                f"{describe(cfg)}"}}
