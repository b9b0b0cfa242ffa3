"""Figures of a run directory (its plots/ folder) and overlays of several runs.

matplotlib's object API only (`Figure`, `fig.savefig`): no pyplot, so no global state and no GUI backend.
No torch here: plots are drawn from the CSV/JSON of a run, so `initprobe plot` can redraw any finished run.

Conventions of every per-layer figure:
- a line is the geometric mean over seeds (arithmetic for fractions), drawn only at layers where every seed
  is finite (and positive, on a log axis); the shaded band is min..max over the seeds that are;
- a `theory_<column>` column, when the run has one, is a dashed line of the same colour;
- overflow and underflow are marked where they start, in the direction the signal travels: the forward pass
  meets layers bottom-up, the backward pass top-down.

Theory-only figures (`plot_theory`, `plot_phase`) take the frames of `predict`, not a run directory.
"""

import functools
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from . import results

FIGSIZE = (11, 4.2)
SMALL_FIGSIZE = (7.5, 4.2)  # one-panel figures
JACOBIAN_FIGSIZE = (8, 5.4)  # one panel, legend below
THEORY_FIGSIZE = (13, 4.4)
PHASE_FIGSIZE = (8, 5.6)
JACOBIAN_COLOUR = "#4c72b0"
PHASE_CMAP = "RdBu_r"  # blue: ordered (chi_1 < 1), red: chaotic
EPS = {"float32": 2.0**-23, "float64": 2.0**-52, "bfloat16": 2.0**-7}  # machine epsilon of each --dtype
DPI = 150
MARKER_DEPTH = 20  # runs this shallow get a marker per layer
BAND_ALPHA = 0.2
NONFINITE_COLOUR = "#b2182b"
UNDERFLOW_COLOUR = "#2166ac"

NAMES = {
    "act_var": r"$\mathrm{Var}(x^l)$ activations",
    "preact_var": r"$\mathrm{Var}(h^l)$ pre-activations",
    "grad_preact_var": r"$\mathrm{Var}(\partial L/\partial h^l)$",
    "grad_act_var": r"$\mathrm{Var}(\partial L/\partial x^l)$",
    "weight_grad_var": r"$\mathrm{Var}(\partial L/\partial W^l)$",
    "weight_var": r"$\mathrm{Var}(W^l)$",
    "saturated_frac": r"saturated: $|\phi'(h)|$ < 5% of its max",
    "zero_frac": r"exactly zero: $x = 0$",
    "preact_corr": r"$c^l$: correlation of $h^l$ between two inputs",
}
COLOURS = {
    "act_var": "#1f77b4", "preact_var": "#ff7f0e", "grad_preact_var": "#d62728", "grad_act_var": "#9467bd",
    "weight_grad_var": "#2ca02c", "weight_var": "#8c564b", "saturated_frac": "#e377c2", "zero_frac": "#17becf",
    "preact_corr": "#bcbd22",
}
FORWARD = ("act_var", "preact_var")
BACKWARD = ("grad_preact_var", "grad_act_var")
NUMERIC_PARAMS = ("gain", "scale", "std", "bound", "value")
LOG_RANGE = (-300.0, 300.0)  # decades a log axis may show (float64 denormals reach 1e-324)


# ----------------------------------------------------------------------------------------------- labels


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _split_config(config_dict: dict) -> tuple[dict, dict]:
    """(run config, init params) from a config.json dict or from a flat RunConfig dict."""
    if isinstance(config_dict.get("config"), dict):
        return config_dict["config"], config_dict.get("init_params") or {}
    params = {k: config_dict[k] for k in NUMERIC_PARAMS + ("mode", "distribution") if config_dict.get(k) is not None}
    return config_dict, params


def init_text(cfg: dict, params: dict) -> str:
    """'he_normal (gain 1.414, fan_in)': the numbers, and the words the scheme's name does not already say."""
    name = str(cfg.get("init", "?"))
    shown = [f"{k} {_num(v)}" for k, v in params.items() if k in NUMERIC_PARAMS and v is not None]
    shown += [str(v) for k, v in params.items() if k not in NUMERIC_PARAMS and v is not None and str(v) not in name]
    return f"{name} ({', '.join(shown)})" if shown else name


def width_text(cfg: dict) -> str:
    if cfg.get("arch") == "cnn":
        return f"{cfg.get('width', '?')} channels ({cfg.get('image_size', '?')}² images)"
    return f"width {cfg.get('width', '?')}"


def label_parts(config_dict: dict) -> dict[str, str]:
    """The pieces of a run's label, by key, so that an overlay can keep only those that differ. The first
    seed is a piece too, though `label` leaves it out: two runs may differ only in it."""
    cfg, params = _split_config(config_dict)
    act = str(cfg.get("act", "?"))
    if act == "leaky_relu" and cfg.get("slope") is not None:
        act += f" (slope {_num(cfg['slope'])})"
    parts = {"init": init_text(cfg, params), "act": act, "arch": str(cfg.get("arch", "mlp")).upper(),
             "depth": f"depth {cfg.get('depth', '?')}", "width": width_text(cfg)}
    if cfg.get("bias") not in (None, "zeros"):
        parts["bias"] = f"bias std {_num(cfg['bias_std'])}" if cfg.get("bias_std") else f"bias {cfg['bias']}"
    if cfg.get("dtype") not in (None, "float32"):
        parts["dtype"] = str(cfg["dtype"])
    if cfg.get("seeds") is not None:
        parts["seeds"] = f"{cfg['seeds']} seed{'s' if cfg['seeds'] != 1 else ''}"
    if cfg.get("seed") is not None:
        parts["seed"] = f"seed {cfg['seed']}"  # only shown to tell overlaid runs apart
    return parts


def join_parts(parts: dict[str, str]) -> str:
    """'init · act · ARCH depth D × width W · extras · seeds', leaving out what `parts` does not hold."""
    net = " × ".join(parts[k] for k in ("depth", "width") if k in parts)
    net = " ".join(p for p in (parts.get("arch"), net) if p)
    pieces = [parts.get("init"), parts.get("act"), net, parts.get("bias"), parts.get("dtype"), parts.get("seeds")]
    return " · ".join(p for p in pieces if p)


def label(config_dict: dict) -> str:
    """e.g. 'glorot_uniform (gain 1) · tanh · MLP depth 50 × width 512 · 3 seeds'. Takes a config.json dict
    ({'config': ..., 'init_params': ...}) or a flat RunConfig dict."""
    return join_parts(label_parts(config_dict))


def distinguishing_labels(configs: list[dict], names: list[str]) -> tuple[list[str], str]:
    """(per-run labels holding only the parts that differ between runs, the common rest as a title)."""
    parts = [label_parts(c) for c in configs]
    keys = list(dict.fromkeys(k for p in parts for k in p))
    differ = [k for k in keys if len({p.get(k) for p in parts}) > 1]
    common = {k: v for k, v in parts[0].items() if k not in differ and k != "seed"}
    if not differ:
        return list(names), join_parts(common)
    labels = [" · ".join(filter(None, [join_parts({k: p[k] for k in differ if k in p}),
                                       p.get("seed") if "seed" in differ else None])) for p in parts]
    if len(set(labels)) < len(labels):  # e.g. same config, different --seed
        labels = [f"{lab} ({name})" for lab, name in zip(labels, names)]
    return labels, join_parts(common)


# ------------------------------------------------------------------------------------------ per-layer data


def seed_matrix(layers: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(layer numbers, values of shape (layers, seeds))."""
    table = layers.pivot_table(index="layer", columns="seed", values=column, aggfunc="first", dropna=False)
    table = table.sort_index()
    return table.index.to_numpy(dtype=float), table.to_numpy(dtype=float)


def usable(values: np.ndarray, log: bool) -> np.ndarray:
    """Drawable values: finite, and on a log axis inside the decades it shows (theory can reach 1e-318)."""
    if not log:
        return np.isfinite(values)
    return np.isfinite(values) & (values >= 10.0 ** LOG_RANGE[0]) & (values <= 10.0 ** LOG_RANGE[1])


def centre_line(values: np.ndarray, log: bool) -> np.ndarray:
    """Geometric (log) or arithmetic mean over seeds, NaN at layers where any seed is unusable."""
    ok = usable(values, log)
    safe = np.where(ok, values, 1.0)
    mean = np.exp(np.mean(np.log(safe), axis=1)) if log else np.mean(safe, axis=1)
    return np.where(ok.all(axis=1), mean, np.nan)


def seed_band(values: np.ndarray, log: bool) -> tuple[np.ndarray, np.ndarray]:
    """min..max over the usable seeds of each layer (NaN where none is)."""
    ok = usable(values, log)
    lo = np.min(np.where(ok, values, np.inf), axis=1)
    hi = np.max(np.where(ok, values, -np.inf), axis=1)
    none = ~ok.any(axis=1)
    return np.where(none, np.nan, lo), np.where(none, np.nan, hi)


def start_layer(layers: pd.DataFrame, columns, test, direction: str) -> int | None:
    """The first layer the pass reaches where `test` holds for any seed in any of `columns`."""
    cols = [c for c in columns if c in layers]
    if not cols:
        return None
    hit = test(layers[cols].to_numpy(dtype=float)).any(axis=1)
    found = layers["layer"].to_numpy()[hit]
    if found.size == 0:
        return None
    return int(found.min() if direction == "forward" else found.max())


def first_nonfinite(layers: pd.DataFrame, columns, direction: str) -> int | None:
    return start_layer(layers, columns, lambda v: ~np.isfinite(v), direction)


def first_zero(layers: pd.DataFrame, columns, direction: str) -> int | None:
    return start_layer(layers, columns, lambda v: v == 0, direction)


# ----------------------------------------------------------------------------------------------- drawing


def new_figure(ncols: int = 2, width_ratios=None, figsize=FIGSIZE) -> tuple[Figure, list]:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False, width_ratios=width_ratios)[0]
    return fig, list(axes)


def isolated(line: np.ndarray) -> np.ndarray:
    """Finite points whose neighbours are both missing."""
    ok = np.isfinite(line)
    before = np.concatenate([[False], ok[:-1]])
    after = np.concatenate([ok[1:], [False]])
    return ok & ~before & ~after


def draw_series(ax, x, values, colour, name, log=True, band=True, style="-", marker=None) -> np.ndarray:
    """Mean line and seed band of one quantity; returns the finite (positive, if log) values drawn."""
    line = centre_line(values, log)
    if name is not None and not usable(values, log).any():
        name += ": all 0" if np.all(values[np.isfinite(values)] == 0) and np.isfinite(values).any() else ": inf/nan"
    ax.plot(x, line, style, color=colour, lw=1.8, label=name, marker=marker, ms=3.5)
    lonely = isolated(line)
    if lonely.any() and marker is None:  # a point between gaps draws no line: give it a dot
        ax.plot(x[lonely], line[lonely], "o", color=colour, ms=3.5)
    drawn = [line]
    if band and values.shape[1] > 1:
        lo, hi = seed_band(values, log)
        where = np.isfinite(lo) & np.isfinite(hi)
        ax.fill_between(x, np.where(where, lo, 1.0), np.where(where, hi, 1.0), where=where, color=colour,
                        alpha=BAND_ALPHA, lw=0)
        drawn += [lo, hi]
    everything = np.concatenate(drawn)
    return everything[usable(everything, log)]


def draw_theory(ax, layers, column, colour, log=True) -> np.ndarray:
    """The dashed theory line of `column`, if the run has one; returns its drawable values."""
    if "theory_" + column not in layers:
        return np.array([])
    x, values = seed_matrix(layers, "theory_" + column)
    line = centre_line(values, log)
    ax.plot(x, line, "--", color=colour, lw=1.3, alpha=0.9)
    return line[usable(line, log)]


def draw_quantities(ax, layers, columns, log=True, n_seeds=1) -> tuple[np.ndarray, np.ndarray, bool]:
    """Measured lines and bands, plus theory; returns (measured values, theory values, any theory column)."""
    marker = "o" if layers["layer"].max() <= MARKER_DEPTH else None
    measured, theory = [np.array([])], [np.array([])]
    for column in columns:
        x, values = seed_matrix(layers, column)
        measured.append(draw_series(ax, x, values, COLOURS[column], NAMES[column], log, n_seeds > 1,
                                    marker=marker))
        theory.append(draw_theory(ax, layers, column, COLOURS[column], log))
    has_theory = any("theory_" + c in layers for c in columns)
    return np.concatenate(measured), np.concatenate(theory), has_theory


def log_limits(values: np.ndarray) -> tuple[float, float]:
    """y limits around positive values: their range plus a margin of at least 0.3 decades."""
    lo, hi = np.log10([values.min(), values.max()])
    pad = max(0.3, 0.05 * (hi - lo))
    return 10 ** max(lo - pad, LOG_RANGE[0]), 10 ** min(hi + pad, LOG_RANGE[1])


def set_log_axis(ax, lo: float, hi: float) -> None:
    """Log y from lo to hi, labelled at every 1, 2, 5, 10, 20, ... decades so that at most 8 labels show."""
    ax.set_ylim(lo, hi)  # first: autoscaling a log axis near 1e300 would overflow
    ax.set_yscale("log")
    first, last = np.log10(lo), np.log10(hi)
    stride = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200) if (last - first) / s <= 8)
    if stride > 1:
        ticks = 10.0 ** (stride * np.arange(np.ceil(first / stride), np.floor(last / stride) + 1))
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())


def set_layer_axis(ax, depth: int) -> None:
    pad = max(0.5, 0.01 * depth)
    ax.set_xlim(1 - pad, depth + pad)
    if depth <= MARKER_DEPTH:
        ax.set_xticks(range(1, depth + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer l")
    ax.grid(True, which="major", alpha=0.3)


def empty_note(ax, text: str) -> None:
    """A centred note where a panel has nothing to draw."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.3",
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})


def why_empty(layers: pd.DataFrame, columns) -> str:
    cols = [c for c in columns if c in layers]
    values = layers[cols].to_numpy(dtype=float) if cols else np.array([])
    if values.size and np.all(values[np.isfinite(values)] == 0) and np.isfinite(values).any():
        rest = ", the rest inf/nan" if not np.isfinite(values).all() else ""
        return f"no finite values > 0 measured\n(every finite one is exactly 0: underflow{rest})"
    return "no finite values measured\n(inf/nan at every layer: overflow)"


def mark_layer(ax, layer: int, text: str, colour: str, side: str, top: bool) -> None:
    """A dotted vertical line at `layer`, labelled on `side` ('left'/'right') unless that is off the axes."""
    ax.axvline(layer, ls=":", lw=1.5, color=colour)
    lo, hi = ax.get_xlim()
    where = (layer - lo) / (hi - lo)
    if side == "right" and where > 0.85:
        side = "left"
    if side == "left" and where < 0.15:
        side = "right"
    ax.text(layer, 0.97 if top else 0.03, f" {text} ", transform=ax.get_xaxis_transform(), rotation=90,
            ha="left" if side == "right" else "right", va="top" if top else "bottom", fontsize=7.5, color=colour,
            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})


def mark_trouble(ax, layers, columns, direction: str, summary: dict, colour=None, underflow=True) -> None:
    """Where the pass first meets inf/nan and where it first meets exact zeros, in `columns`. The summary's
    first_nonfinite_layer says whether the run overflowed at all; each panel finds where in its own data."""
    side = "right" if direction == "forward" else "left"
    down = "" if direction == "forward" else " down"
    bad = first_nonfinite(layers, columns, direction)
    if bad is not None and (summary.get("first_nonfinite_layer") is not None or not summary):
        ax_text = f"non-finite from layer {bad}{down}"
        mark_layer(ax, bad, ax_text, colour or NONFINITE_COLOUR, side, top=True)
    zero = first_zero(layers, columns, direction) if underflow else None
    if zero is not None:
        mark_layer(ax, zero, f"underflow to 0 from layer {zero}{down}", colour or UNDERFLOW_COLOUR, side, top=False)


def theory_handle() -> Line2D:
    return Line2D([], [], color="0.35", ls="--", lw=1.3, label="mean-field theory")


def finish_log_panel(ax, measured, theory, has_theory, note) -> None:
    """Log y limits around the measured and theory values, or the note where nothing was measured."""
    if measured.size or theory.size:
        set_log_axis(ax, *log_limits(np.concatenate([measured, theory])))
    if not measured.size:
        empty_note(ax, note)
    if not (measured.size or theory.size):
        ax.set_yticks([])
    add_legend(ax, has_theory and theory.size > 0)


def add_legend(ax, theory: bool = False) -> None:
    """The axes' labelled lines, plus a grey dashed 'mean-field theory' entry if `theory`."""
    handles, _ = ax.get_legend_handles_labels()
    if theory:
        handles.append(theory_handle())
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)


def variance_panel(ax, run: dict, columns, title: str, direction: str) -> None:
    layers, n_seeds = run["layers"], run["layers"]["seed"].nunique()
    measured, theory, has_theory = draw_quantities(ax, layers, columns, log=True, n_seeds=n_seeds)
    set_layer_axis(ax, int(layers["layer"].max()))
    ax.set_ylabel("variance (log scale)")
    ax.set_title(title, loc="left", fontsize=11)
    finish_log_panel(ax, measured, theory, has_theory, why_empty(layers, columns))
    mark_trouble(ax, layers, columns, direction, run["summary"])


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def verdict_text(summary: dict, direction: str) -> str:
    """'end to end ×0.48: stable' from the summary, or '' for a run without one."""
    verdict = summary.get(f"{direction}_verdict")
    if verdict is None:
        return ""
    ratio = _as_float(summary.get(f"{direction}_ratio"))
    if not np.isfinite(ratio):
        return f"end to end: {verdict} (inf/nan)"
    return f"end to end ×{ratio:.3g}: {verdict}"


def save(fig: Figure, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=DPI)
    return path


# ------------------------------------------------------------------------------------------ run figures


def variance_figure(run: dict) -> Figure:
    fig, (fwd, bwd) = new_figure()
    variance_panel(fwd, run, FORWARD, "Forward: activations", "forward")
    variance_panel(bwd, run, BACKWARD, "Backward: gradients", "backward")
    for ax, direction in ((fwd, "forward"), (bwd, "backward")):
        ax.set_title(verdict_text(run["summary"], direction), loc="right", fontsize=8, color="0.35")
    scales = run["summary"].get("theory")
    if scales:
        fig.suptitle(f"{label(run['config'])}\nmean-field: {scales_text(scales)}", fontsize=11)
    else:
        fig.suptitle(label(run["config"]))
    return fig


def weight_grad_figure(run: dict) -> Figure:
    fig, (grads, weights) = new_figure(width_ratios=(3, 2))
    variance_panel(grads, run, ("weight_grad_var",), "Weight gradients", "backward")
    variance_panel(weights, run, ("weight_var",), "Weights (as initialized)", "forward")
    fig.suptitle(label(run["config"]))
    return fig


def saturation_panel(ax, run: dict, column: str, title: str) -> None:
    layers = run["layers"]
    x, values = seed_matrix(layers, column)
    marker = "o" if layers["layer"].max() <= MARKER_DEPTH else None
    drawn = draw_series(ax, x, values, COLOURS[column], NAMES[column], log=False, band=True, marker=marker)
    set_layer_axis(ax, int(layers["layer"].max()))
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("fraction of units")
    ax.set_title(title, loc="left", fontsize=11)
    if drawn.size:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    else:
        empty_note(ax, "no finite values")
    mark_trouble(ax, layers, FORWARD, "forward", run["summary"], underflow=False)


def saturation_figure(run: dict) -> Figure:
    fig, (sat, zero) = new_figure()
    saturation_panel(sat, run, "saturated_frac", "Saturated units")
    saturation_panel(zero, run, "zero_frac", "Exact zeros")
    fig.suptitle(label(run["config"]))
    return fig


def histogram_layers(hist: pd.DataFrame, quantity: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """[(layer, bin edges, fraction per bin)] with finite edges; a layer with no finite values gets 0 bins."""
    rows = hist[hist["quantity"] == quantity]
    out = []
    for layer, part in rows.groupby("layer", sort=True):
        part = part[np.isfinite(part["bin_left"]) & np.isfinite(part["bin_right"])].sort_values("bin_left")
        counts = np.nan_to_num(part["count"].to_numpy(dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
        total = counts.sum()
        if total <= 0:
            out.append((int(layer), np.array([]), np.array([])))
            continue
        edges = np.append(part["bin_left"].to_numpy(dtype=float), part["bin_right"].to_numpy(dtype=float)[-1])
        out.append((int(layer), edges, counts / total))
    return out


def histogram_panel(ax, hist: pd.DataFrame | None, quantity: str, title: str, xlabel: str) -> None:
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of values per bin")
    per_layer = histogram_layers(hist, quantity) if hist is not None else []
    drawable = [(l, e, f) for l, e, f in per_layer if f.size and e[-1] > e[0]]
    if not drawable:
        ax.set_yticks([])
        ax.set_xticks([])
        return empty_note(ax, histogram_note(per_layer, hist))
    colours = colormaps["viridis"](np.linspace(0.0, 0.85, len(per_layer)))
    peak = max(f.max() for _, _, f in drawable)
    for colour, (layer, edges, frac) in zip(colours, per_layer):
        if frac.size and edges[-1] > edges[0]:
            ax.stairs(frac, edges, color=colour, lw=1.6, label=f"layer {layer}")
        else:
            why = "no finite values" if not frac.size else "all values equal"
            ax.plot([], [], color=colour, lw=1.6, ls=":", label=f"layer {layer}: {why}")
    spiky = peak > 0.3  # one bin holds most of the mass (ReLU zeros, a vanished layer): show the tails too
    if spiky:
        ax.set_yscale("log")
        ax.set_ylabel("fraction of values per bin (log scale)")
    else:
        ax.set_ylim(0, peak * 1.08)
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    ax.legend(fontsize=8, loc="best", framealpha=0.85)


def histogram_note(per_layer, hist) -> str:
    if hist is None:
        return "no histograms recorded for this run"
    if not per_layer:
        return "no histogram for this quantity"
    if all(f.size == 0 for _, _, f in per_layer):
        return "no finite values at any recorded layer"
    value = next(e[0] for _, e, f in per_layer if f.size)
    return f"every recorded value is {value:.3g}" + ("\n(it underflowed to 0)" if value == 0 else "")


def histograms_figure(run: dict) -> Figure:
    fig, (acts, grads) = new_figure()
    hist = run["histograms"]
    histogram_panel(acts, hist, "act", r"Activation values $x^l$", "activation value")
    histogram_panel(grads, hist, "grad_preact", r"Back-propagated gradients $\partial L/\partial h^l$",
                    r"gradient $\partial L/\partial h$")
    seed = run["config"].get("config", {}).get("seed", 0)
    fig.suptitle(f"{label(run['config'])}\nfirst seed's network (seed {seed}), common bins per panel", fontsize=11)
    return fig


def scales_text(scales: dict) -> str:
    """'σ_w² = 1 · σ_b² = 0 · q* = 0.0015 · χ₁ = 1: critical · ξ_c = 6.8e+05' from predict.scales (or a
    summary's "theory"); keys it lacks are left out."""
    names = {"sigma_w2": r"$\sigma_w^2$", "sigma_b2": r"$\sigma_b^2$", "q_star": r"$q^*$", "chi_1": r"$\chi_1$"}
    parts = [f"{tex} = {_num(_as_float(scales[k]))}" for k, tex in names.items() if k in scales]
    if parts and "regime" in scales:
        parts[-1] += f": {scales['regime']}"
    if not np.isnan(_as_float(scales.get("xi_c"))):
        parts.append(rf"depth scale $\xi_c$ = {_num(_as_float(scales['xi_c']))}")
    return " · ".join(parts)


def set_correlation_axis(ax, values: np.ndarray, depth: int) -> None:
    set_layer_axis(ax, depth)
    low = values.min() - 0.05 if values.size else 0.0
    ax.set_ylim(max(min(low, -0.05), -1.05), 1.05)
    ax.set_ylabel("correlation")


def correlation_figure(run: dict) -> Figure:
    fig, (ax,) = new_figure(1, figsize=SMALL_FIGSIZE)
    layers = run["layers"]
    measured, theory, has_theory = draw_quantities(ax, layers, ("preact_corr",), log=False,
                                                   n_seeds=layers["seed"].nunique())
    set_correlation_axis(ax, np.concatenate([measured, theory]), int(layers["layer"].max()))
    ax.set_title("Correlation between inputs", loc="left", fontsize=11)
    if not measured.size:
        empty_note(ax, "no finite correlations measured")
    add_legend(ax, has_theory and theory.size > 0)
    mark_trouble(ax, layers, FORWARD, "forward", run["summary"], underflow=False)
    fig.suptitle(f"{label(run['config'])}\nmean over pairs of inputs in the batch (input correlation 0)",
                 fontsize=10)
    return fig


def singular_value_histogram(ax, sv: np.ndarray) -> np.ndarray:
    """Fraction of all singular values per log-spaced bin; returns the edges (empty if none is drawable)."""
    ok = sv[np.isfinite(sv) & (sv > 0)]
    if not ok.size:
        return np.array([])
    lo, hi = ok.min(), ok.max()
    if hi <= 1.01 * lo:
        lo, hi = lo / 1.1, hi * 1.1
    edges = np.geomspace(lo, hi, int(np.clip(10 * np.log10(hi / lo), 20, 60)) + 1)
    frac = np.histogram(ok, edges)[0] / sv.size
    ax.stairs(frac, edges, fill=True, color=JACOBIAN_COLOUR, alpha=0.3)
    ax.stairs(frac, edges, color=JACOBIAN_COLOUR, lw=1.2, label=f"{sv.size} singular values")
    return edges


def mark_singular_value(ax, name: str, mean_sq, var_sq, colour: str, style: str) -> list[float]:
    """A vertical line at sqrt(mean s²) labelled with mean (and var) of s²; only a legend entry if not drawable."""
    mean_sq = _as_float(mean_sq)
    text = f"{name}: mean $s^2$ = {_num(mean_sq)}"
    if var_sq is not None:
        text += f", var {_num(_as_float(var_sq))}"
    at = np.sqrt(mean_sq) if mean_sq > 0 else np.nan
    if not 0 < at < np.inf:
        ax.plot([], [], color=colour, ls=style, lw=1.6, label=text + " (not drawn)")
        return []
    ax.axvline(at, color=colour, ls=style, lw=1.6, label=text)
    return [at]


def shade_rounding_noise(ax, sv: np.ndarray, config_dict: dict) -> None:
    """Grey below s_max * eps of the run's dtype: singular values there are rounding noise, not signal."""
    dtype = _split_config(config_dict)[0].get("dtype") or "float32"
    ok = sv[np.isfinite(sv) & (sv > 0)]
    lo, _ = ax.get_xlim()
    if dtype in EPS and ok.size and ok.max() * EPS[dtype] > lo:
        ax.axvspan(lo, ok.max() * EPS[dtype], color="0.5", alpha=0.15, lw=0,
                   label=f"below $s_{{max}} \\cdot \\epsilon$({dtype}): rounding noise")
        ax.set_xlim(left=lo)


def jacobian_figure(run: dict) -> Figure:
    fig, (ax,) = new_figure(1, figsize=JACOBIAN_FIGSIZE)
    sv = run["jacobian"]["singular_value"].to_numpy(dtype=float)
    info = run["summary"].get("jacobian", {})
    free = info.get("free_probability", {})
    with np.errstate(all="ignore"):
        measured = info.get("mean_sq_sv", np.mean(sv**2))
    xs = list(singular_value_histogram(ax, sv))
    xs += mark_singular_value(ax, "measured", measured, info.get("var_sq_sv"), "0.15", "-")
    if "theory_mean_sq_sv" in info:
        xs += mark_singular_value(ax, "this network's layers", info["theory_mean_sq_sv"], None, "#d62728", "--")
    if "mean_sq_sv" in free:
        at_q = f" (every layer at $q$ = {_num(_as_float(free.get('at_q')))})" if "at_q" in free else ""
        xs += mark_singular_value(ax, "free probability" + at_q, free["mean_sq_sv"], free.get("var_sq_sv"),
                                  "#2ca02c", ":")
    hidden = int(np.sum(~(np.isfinite(sv) & (sv > 0))))
    if xs:
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
        shade_rounding_noise(ax, sv, run["config"])
    if hidden:
        ax.text(0.01, 0.98, f"{hidden} singular values are 0 or inf/nan (not drawn)", transform=ax.transAxes,
                va="top", fontsize=8, color=NONFINITE_COLOUR,
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    if not xs:
        ax.set_xticks([])
        ax.set_yticks([])
        empty_note(ax, "no finite singular value > 0")
    ax.set_xlabel("singular value $s$ (log scale); lines at $\\sqrt{\\mathrm{mean}\\ s^2}$")
    ax.set_ylabel("fraction of singular values per bin")
    ax.set_title("Input-output Jacobian spectrum", loc="left", fontsize=11)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", ncols=1, fontsize=8, frameon=False)
    inputs = run["jacobian"]["input"].nunique()
    fig.suptitle(f"{label(run['config'])}\n$\\partial x^L / \\partial x^0$ of the first seed's network at "
                 f"{inputs} input{'s' if inputs != 1 else ''}", fontsize=10)
    return fig


def plot_run(run_dir, fmt: str = "png", workers: int | None = None) -> list[Path]:
    """Write variance, weight_grad, histograms and saturation figures into run_dir/plots/, plus correlation
    (if layers.csv has preact_corr) and jacobian (if the run has jacobian.csv); returns the paths.
    `workers` processes draw them (default: one per CPU, at most 2)."""
    run = results.read_run(run_dir)
    out = Path(run_dir) / "plots"
    # workers take every other one: ordered so that the shares take about as long (measured: variance 0.5 s,
    # histograms 0.45, weight_grad 0.4, saturation 0.3, correlation 0.2)
    figures = {"variance": variance_figure, "histograms": histograms_figure, "saturation": saturation_figure,
               "weight_grad": weight_grad_figure}
    if "preact_corr" in run["layers"]:
        figures["correlation"] = correlation_figure
    if run["jacobian"] is not None:
        figures["jacobian"] = jacobian_figure
    jobs = [(functools.partial(make, run), out / f"{name}.{fmt}") for name, make in figures.items()]
    draw_all(jobs, functools.partial(save, fmt=fmt), workers)
    return [path for _, path in jobs]


def draw_all(jobs: list, save_to, workers: int | None = None) -> None:
    """save_to(make(), path) for each (make, path) of `jobs`. Drawing is pure Python (it holds the GIL), so a
    second core needs a second process: forked children draw every `workers`-th figure (default: one process per
    CPU, at most 2) while this process draws its share. A child that fails leaves its figures to this process,
    which then raises any error with a normal traceback. In sequence without fork (Windows) or when other Python
    threads run (a Ray worker, say): forking then could copy a lock another thread holds."""
    def draw(share):
        for make, path in share:
            save_to(make(), path)

    workers = min(os.cpu_count() or 1, 2) if workers is None else workers
    can_fork = hasattr(os, "fork") and threading.active_count() == 1
    workers = max(1, min(workers, len(jobs))) if can_fork else 1
    children = {}
    for k in range(1, workers):
        pid = os.fork()
        if pid == 0:  # child: draw, and leave without running the parent's cleanup (atexit, buffers)
            code = 1
            try:
                draw(jobs[k::workers])
                code = 0
            finally:
                os._exit(code)
        children[pid] = jobs[k::workers]
    draw(jobs[0::workers])
    for pid, share in children.items():
        if os.waitpid(pid, 0)[1] != 0:
            draw(share)


# ------------------------------------------------------------------------------------------------ overlays


def run_colours(n: int) -> list:
    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    return list(colormaps["viridis"](np.linspace(0.0, 0.9, n)))


def compare_panel(ax, runs, labels, colours, columns, title, direction) -> None:
    """Each run in its colour: the first column solid with its seed band, the second dotted without."""
    measured = [np.array([])]
    for run, name, colour in zip(runs, labels, colours):
        layers = run["layers"]
        for column, style in zip(columns, ("-", ":")):
            x, values = seed_matrix(layers, column)
            first = style == "-"
            measured.append(draw_series(ax, x, values, colour, name if first else None, band=first, style=style))
        mark_trouble(ax, layers, columns, direction, run["summary"], colour=colour)
    depth = max(int(r["layers"]["layer"].max()) for r in runs)
    set_layer_axis(ax, depth)
    ax.set_ylabel("variance (log scale)")
    ax.set_title(title, loc="left", fontsize=11)
    measured = np.concatenate(measured)
    if measured.size:
        set_log_axis(ax, *log_limits(measured))
    else:
        ax.set_yticks([])
        empty_note(ax, "no finite values in any run")
    styles = [Line2D([], [], color="0.3", ls=s, lw=1.8, label=NAMES[c]) for c, s in zip(columns, ("-", ":"))]
    ax.legend(handles=styles, fontsize=8, loc="best", framealpha=0.85)


def compare_figure(runs, labels, common, panels, width_ratios=None) -> Figure:
    fig, axes = new_figure(len(panels), width_ratios)
    colours = run_colours(len(runs))
    for ax, (columns, title, direction) in zip(axes, panels):
        compare_panel(ax, runs, labels, colours, columns, title, direction)
    handles = [Line2D([], [], color=c, lw=2.5, label=name) for c, name in zip(colours, labels)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(runs), 3), fontsize=9, frameon=False)
    fig.suptitle(f"{len(runs)} runs" + (f" · {common}" if common else ""))
    return fig


def plot_compare(run_dirs, out_dir, fmt: str = "png") -> list[Path]:
    """Overlay runs: compare_variance and compare_weight_grad in out_dir (created if needed)."""
    runs = [results.read_run(d) for d in run_dirs]
    labels, common = distinguishing_labels([r["config"] for r in runs], [Path(d).name for d in run_dirs])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variance = compare_figure(runs, labels, common, [(FORWARD, "Forward: activations", "forward"),
                                                     (BACKWARD, "Backward: gradients", "backward")])
    weights = compare_figure(runs, labels, common, [(("weight_grad_var",), "Weight gradients", "backward"),
                                                    (("weight_var",), "Weights (as initialized)", "forward")],
                             width_ratios=(3, 2))
    return [save(variance, out / f"compare_variance.{fmt}", fmt),
            save(weights, out / f"compare_weight_grad.{fmt}", fmt)]


# ------------------------------------------------------------------------------------ theory without a run


def theory_panel(ax, frame: pd.DataFrame, columns, title: str, direction: str) -> None:
    """Predicted variances, dashed like the theory lines of a run's figures."""
    marker = "o" if frame["layer"].max() <= MARKER_DEPTH else None
    drawn = [np.array([])]
    for column in columns:
        x, values = seed_matrix(frame, "theory_" + column)
        drawn.append(draw_series(ax, x, values, COLOURS[column], NAMES[column], band=False, style="--",
                                 marker=marker))
    set_layer_axis(ax, int(frame["layer"].max()))
    ax.set_ylabel("predicted variance (log scale)")
    ax.set_title(title, loc="left", fontsize=11)
    finish_log_panel(ax, np.concatenate(drawn), np.array([]), False, "no finite prediction > 0\n(0 or inf/nan)")
    mark_trouble(ax, frame, ["theory_" + c for c in columns], direction, {})


def theory_correlation_panel(ax, frame: pd.DataFrame) -> None:
    x, values = seed_matrix(frame, "theory_preact_corr")
    drawn = draw_series(ax, x, values, COLOURS["preact_corr"], NAMES["preact_corr"], log=False, band=False,
                        style="--")
    set_correlation_axis(ax, drawn, int(frame["layer"].max()))
    ax.set_title("Correlation map", loc="left", fontsize=11)
    if not drawn.size:
        empty_note(ax, "no finite prediction")
    add_legend(ax)
    mark_trouble(ax, frame, ("theory_preact_corr",), "forward", {}, underflow=False)


def theory_figure(frame: pd.DataFrame, scales: dict, cfg_dict: dict) -> Figure:
    frame = frame if "seed" in frame else frame.assign(seed=0)
    fig, (fwd, bwd, corr) = new_figure(3, width_ratios=(3, 3, 2.2), figsize=THEORY_FIGSIZE)
    theory_panel(fwd, frame, FORWARD, "Forward: activations", "forward")
    theory_panel(bwd, frame, BACKWARD, "Backward: gradients", "backward")
    theory_correlation_panel(corr, frame)
    parts = {k: v for k, v in label_parts(cfg_dict).items() if k not in ("seeds", "seed")}
    fig.suptitle(f"Mean-field theory (no network run) · {join_parts(parts)}\n{scales_text(scales)}", fontsize=11)
    return fig


def plot_theory(frame: pd.DataFrame, scales: dict, cfg_dict: dict, out_dir, fmt: str = "png") -> list[Path]:
    """`initprobe theory --out DIR`: out_dir/theory.<fmt> from predict.for_config's (frame, scales)."""
    return [save(theory_figure(frame, scales, cfg_dict), Path(out_dir) / f"theory.{fmt}", fmt)]


def phase_matrix(grid: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sigma_w2 values, sigma_b2 values, `column` of shape (len(sigma_b2), len(sigma_w2)))."""
    table = grid.pivot_table(index="sigma_b2", columns="sigma_w2", values=column, aggfunc="first", dropna=False)
    table = table.sort_index().sort_index(axis=1)
    return table.columns.to_numpy(dtype=float), table.index.to_numpy(dtype=float), table.to_numpy(dtype=float)


def chi_norm(log_chi: np.ndarray) -> TwoSlopeNorm:
    """Colours of log10(chi_1): white at chi_1 = 1, each side stretched to its own extreme (at least x1.25)."""
    ok = log_chi[np.isfinite(log_chi)]
    lo, hi = (ok.min(), ok.max()) if ok.size else (0.0, 0.0)
    return TwoSlopeNorm(0.0, min(lo, -np.log10(1.25)), max(hi, np.log10(1.25)))


def chi_ticks(norm: TwoSlopeNorm) -> list[float]:
    """chi_1 values to label the colour bar with."""
    candidates = [1e-3, 0.01, 0.1, 0.25, 0.5, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 10.0, 100.0, 1e3]
    inside = [t for t in candidates if norm.vmin <= np.log10(t) <= norm.vmax]
    return inside if len(inside) <= 9 else [t for t in inside if np.log10(t) % 1 == 0]


def log_chi(values) -> np.ndarray:
    """log10(chi_1), nan where chi_1 is 0, inf or nan: those get the colour map's 'bad' grey."""
    values = np.asarray(values, dtype=float)
    with np.errstate(all="ignore"):
        return np.where(np.isfinite(values) & (values > 0), np.log10(values), np.nan)


def label_height(sb2: np.ndarray, measured: pd.DataFrame | None) -> float:
    """sigma_b2 at which to write the region names: mid-range, or mid-way across the widest gap between
    the rows of measured points."""
    rows = np.unique(np.concatenate([[sb2.min(), sb2.max()], [] if measured is None else measured["sigma_b2"]]))
    k = int(np.argmax(np.diff(rows))) if rows.size > 1 else 0
    return float(rows[k:k + 2].mean())


def region_labels(ax, sw2: np.ndarray, sb2: np.ndarray, chi: np.ndarray, height: float) -> None:
    """'ordered' / 'chaotic' at `height`, centred on the cells of that row on each side of chi_1 = 1."""
    row = int(np.argmin(np.abs(sb2 - height)))
    for name, where in (("ordered\n$\\chi_1 < 1$: gradients vanish", chi < 1),
                        ("chaotic\n$\\chi_1 > 1$: gradients explode", chi > 1)):
        if where[row].any():
            ax.text(sw2[where[row]].mean(), sb2[row], name, ha="center", va="center", fontsize=10,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "0.6", "alpha": 0.85})


def draw_measured_chi(ax, measured: pd.DataFrame, cmap, norm) -> None:
    """Measured gains as points on the same colour scale, each with its value written beside it."""
    values = measured["measured_chi_1"].to_numpy(dtype=float)
    w, b = measured["sigma_w2"].to_numpy(dtype=float), measured["sigma_b2"].to_numpy(dtype=float)
    ax.scatter(w, b, c=log_chi(values), cmap=cmap, norm=norm, s=60, edgecolors="k", linewidths=1.2,
               plotnonfinite=True, zorder=3, clip_on=False, label="measured: gradient gain per layer")
    for x, y, v in zip(w, b, values):
        ax.annotate(_num(float(f"{v:.2g}")) if np.isfinite(v) else str(v), (x, y), xytext=(0, 7),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7, zorder=4,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})


def phase_figure(grid, sb2, critical, measured, act: str) -> Figure:
    fig, (ax,) = new_figure(1, figsize=PHASE_FIGSIZE)
    sw2_axis, sb2_axis, chi = phase_matrix(grid, "chi_1")
    shown = [chi.ravel()] + ([measured["measured_chi_1"].to_numpy(dtype=float)] if measured is not None else [])
    norm = chi_norm(log_chi(np.concatenate(shown)))
    cmap = colormaps[PHASE_CMAP].with_extremes(bad="0.75")
    mesh = ax.pcolormesh(sw2_axis, sb2_axis, log_chi(chi), cmap=cmap, norm=norm, shading="nearest")
    bar = fig.colorbar(mesh, ax=ax, label=r"$\chi_1$ at the fixed point (log colour scale; 1 = critical)")
    ticks = chi_ticks(norm)
    bar.set_ticks(np.log10(ticks), labels=[_num(t) for t in ticks])
    bar.ax.yaxis.set_minor_locator(NullLocator())
    region_labels(ax, sw2_axis, sb2_axis, chi, label_height(sb2_axis, measured))
    critical = np.asarray(critical, dtype=float)
    found = np.isfinite(critical).any()
    ax.plot(critical, np.asarray(sb2, dtype=float), "k-", lw=2.2,
            label=r"critical line $\chi_1 = 1$" + ("" if found else ": not in this range"))
    if measured is not None:
        draw_measured_chi(ax, measured, cmap, norm)
    if np.isnan(log_chi(np.concatenate(shown))).any():
        ax.text(0.01, 0.01, r"grey: $\chi_1$ = 0 or inf/nan", transform=ax.transAxes, fontsize=8)
    ax.set_xlim(left=max(ax.get_xlim()[0], 0.0))  # the cells at sigma^2 = 0 would reach below it
    ax.set_ylim(bottom=max(ax.get_ylim()[0], 0.0))
    ax.set_xlabel(r"$\sigma_w^2$ = fan_in $\cdot$ Var(W)")
    ax.set_ylabel(r"$\sigma_b^2$ = Var(b)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _num(v)))
    fig.legend(loc="outside lower center", ncols=2, fontsize=8.5, frameon=False)
    fig.suptitle(f"Order-to-chaos phase diagram · {act}\n"
                 r"$\chi_1 = \sigma_w^2\, E[\phi'(h)^2]$ at $q^*$: the per-layer gain of gradients", fontsize=11)
    return fig


def plot_phase(grid: pd.DataFrame, sb2, critical, measured: pd.DataFrame | None, act: str, target,
               fmt: str = "png") -> list[Path]:
    """`initprobe phase`: target/phase.<fmt>, the chi_1 heatmap of `grid` (predict.phase_grid), the critical
    line (sigma_w2 per value of `sb2`, nan where there is none) and, if given, the measured points."""
    return [save(phase_figure(grid, sb2, critical, measured, act), Path(target) / f"phase.{fmt}", fmt)]
