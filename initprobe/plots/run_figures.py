"""The figures of one run directory (its plots/ folder): variance, weight_grad, histograms, saturation,
correlation, spp (the signal propagation plot), and jacobian with --jacobian."""

import functools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from .. import forking, results
from .draw import (BACKWARD, COLOURS, EPS, FIGSIZE, FORWARD, JACOBIAN_COLOUR, JACOBIAN_FIGSIZE, MARKER_DEPTH,
                   NAMES, NONFINITE_COLOUR, SMALL_FIGSIZE, SPP, add_legend, constant_note, draw_quantities,
                   draw_series, empty_note, finish_log_panel, foot_note, is_model_run, mark_trouble, model_figsize,
                   module_names, new_figure, save, seed_matrix, set_correlation_axis, set_layer_axis, verdict_title,
                   why_empty, wrapped)
from .labels import (_as_float, _num, _split_config, correlation_theory_text, label, theory_lines,
                     verdict_text)

SPP_FIGSIZE = (15, 4.2)  # three panels side by side, as Brock et al.'s Figure 1
SKIPINIT = "0 at every block: alpha = 0"


def exact_zeros(run: dict) -> dict[str, str]:
    """Columns that are 0 at every residual block by construction, with the words that say why: with alpha = 0
    (SkipInit) every branch is 0 and so is its dL/dh. Not an underflow, and nothing a log axis can show."""
    cfg, _ = _split_config(run["config"])
    if cfg.get("block") == "residual" and _as_float(cfg.get("branch_scale")) == 0:
        return {"grad_preact_var": SKIPINIT, "branch_var": SKIPINIT}
    return {}


def variance_panel(ax, run: dict, columns, title: str, direction: str, shown: pd.DataFrame | None = None,
                   ylabel: str = "variance (log scale)") -> None:
    """The run's `columns` (those it has: a --model's rows have no h) per layer, log y, with their theory; `shown`:
    the rows to draw, if not the run's own (where the pass overflows is still found in the run's). Columns that are
    0 by construction (exact_zeros) say so instead of being marked as an underflow."""
    layers, n_seeds = run["layers"], run["layers"]["seed"].nunique()
    columns = [c for c in columns if c in layers]
    zeros = exact_zeros(run)
    measured, theory, has_theory = draw_quantities(ax, layers if shown is None else shown, columns, log=True,
                                                   n_seeds=n_seeds, notes=zeros)
    set_layer_axis(ax, int(layers["layer"].max()), module_names(layers))
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left", fontsize=11)
    only_zeros = [zeros[c] for c in columns if c in zeros]
    note = only_zeros[0] if only_zeros and len(only_zeros) == len(columns) else why_empty(layers, columns)
    finish_log_panel(ax, measured, theory, has_theory, note)
    mark_trouble(ax, layers, columns, direction, run["summary"], exact_zeros=tuple(zeros))
    if "weight_var" in columns:
        constant_note(ax, layers)



# ------------------------------------------------------------------------------------------ run figures


def run_figure(run: dict, ncols: int = 2, width_ratios=None) -> tuple[Figure, list]:
    """A figure of `ncols` panels, taller for a --model's module names under the axes."""
    names = module_names(run["layers"])
    return new_figure(ncols, width_ratios, model_figsize(names) if names else FIGSIZE)


def variance_figure(run: dict) -> Figure:
    fig, (fwd, bwd) = run_figure(run)
    model = is_model_run(run["layers"])
    variance_panel(fwd, run, FORWARD, "Forward: module outputs" if model else "Forward: activations", "forward")
    variance_panel(bwd, run, BACKWARD, "Backward: gradients w.r.t. them" if model else "Backward: gradients",
                   "backward")
    for ax, direction in ((fwd, "forward"), (bwd, "backward")):
        verdict_title(ax, verdict_text(run["summary"], direction), model)
    theory = run["summary"].get("theory")
    if theory:
        fig.suptitle("\n".join([label(run["config"]), *theory_lines(theory)]), fontsize=10)
    else:
        fig.suptitle(wrapped(fig, label(run["config"])))
    return fig


def weight_grad_figure(run: dict) -> Figure:
    fig, (grads, weights) = run_figure(run, width_ratios=None if is_model_run(run["layers"]) else (3, 2))
    variance_panel(grads, run, ("weight_grad_var",), "Weight gradients", "backward")
    variance_panel(weights, run, ("weight_var",), "Weights (as initialized)", "forward")
    fig.suptitle(wrapped(fig, label(run["config"])))
    return fig


def spp_figure(run: dict) -> Figure:
    """The signal propagation plot (Brock, De & Smith 2021) of a built-in network or of a --model."""
    return model_spp_figure(run) if is_model_run(run["layers"]) else network_spp_figure(run)


def network_spp_figure(run: dict) -> Figure:
    """Brock, De & Smith 2021's signal propagation plot (their Figure 1): the average channel squared mean and
    the average channel variance of x^l, and for residual networks the branch's variance, over depth."""
    layers = run["layers"]
    residual = "branch_var" in layers and (layers["branch_var"].notna().any() or bool(exact_zeros(run)))
    columns = SPP if residual else SPP[:2]
    fig, axes = new_figure(len(columns), figsize=SPP_FIGSIZE if residual else FIGSIZE)
    titles = {"chan_sq_mean": "Average channel squared mean", "chan_var": "Average channel variance",
              "branch_var": "Residual branch variance"}
    for ax, column in zip(axes, columns):
        variance_panel(ax, run, (column,), titles[column], "forward", ylabel=f"{column} (log scale)")
    where = "over the batch and positions" if _split_config(run["config"])[0].get("arch") == "cnn" else \
        "over the batch"
    fig.suptitle(f"{label(run['config'])}\nsignal propagation plot (Brock, De & Smith 2021): each channel of $x^l$ "
                 f"{where}, averaged over channels", fontsize=10)
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



def model_spp_figure(run: dict) -> Figure:
    """A --model's signal propagation plot (Brock, De & Smith 2021): each recorded output's average squared channel
    mean and average channel variance (their sum is E[y^2]); beside it, for (N, T, C) outputs, the mean cosine
    between a sequence's tokens (rank collapse drives it to 1: Dong et al. 2021, Noci et al. 2022)."""
    layers, rounding = without_rounding_means(run)
    tokens = "token_corr" in layers and np.isfinite(layers["token_corr"].to_numpy(dtype=float)).any()
    fig, axes = run_figure(run, 2 if tokens else 1, (3, 2) if tokens else None)
    variance_panel(axes[0], run, ("chan_sq_mean", "chan_var"), "Signal propagation: channel statistics", "forward",
                   shown=layers)
    axes[0].set_ylabel("channel statistic (log scale)")
    if rounding:
        foot_note(axes[0], f"squared channel means 0 up to rounding at {rounding} module{'s' * (rounding > 1)} "
                           "(a norm's output): not drawn")
    if tokens:
        token_panel(axes[1], layers)
    fig.suptitle(wrapped(fig, label(run["config"])))
    return fig


ROUNDING_UNITS = 100  # a channel mean within this many units of float rounding of its channel's spread is 0


def without_rounding_means(run: dict) -> tuple[pd.DataFrame, int]:
    """The run's rows with chan_sq_mean NaN where it is 0 up to the rounding of the float the statistics were taken
    in (a BatchNorm's output has channel means 0 by construction; computed, they come out near (eps * std)^2, which
    on a log axis would drown the rest), and how many modules that is in the first seed."""
    layers = run["layers"]
    dtype = _split_config(run["config"])[0].get("dtype")
    eps = np.finfo(np.float64 if dtype == "float64" else np.float32).eps
    noise = (layers["chan_sq_mean"] <= (ROUNDING_UNITS * eps) ** 2 * layers["chan_var"]).to_numpy()
    if not noise.any():
        return layers, 0
    first = (layers["seed"] == layers["seed"].min()).to_numpy()
    return layers.assign(chan_sq_mean=layers["chan_sq_mean"].mask(noise)), int((noise & first).sum())


def token_panel(ax, layers) -> None:
    x, values = seed_matrix(layers, "token_corr")
    marker = "o" if layers["layer"].max() <= MARKER_DEPTH else None
    drawn = draw_series(ax, x, values, COLOURS["token_corr"], NAMES["token_corr"], log=False, marker=marker)
    set_correlation_axis(ax, drawn, int(layers["layer"].max()), module_names(layers))
    ax.set_title("Rank collapse: similarity of tokens", loc="left", fontsize=11)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)


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
    which = correlation_theory_text(run["config"])
    fig.suptitle(f"{label(run['config'])}\nmean over pairs of inputs in the batch (input correlation 0)"
                 + (f"\n{which}" if which else ""), fontsize=10)
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
    """Write the run's figures (figures_of) into run_dir/plots/; returns the paths. `workers` processes draw them
    (forking.run_shared; default: one per CPU, at most 2)."""
    run = results.read_run(run_dir)
    out = Path(run_dir) / "plots"
    figures = figures_of(run)
    paths = [out / f"{name}.{fmt}" for name in figures]
    forking.run_shared([functools.partial(_draw, make, run, path, fmt) for make, path in zip(figures.values(), paths)],
                       workers)
    return paths


def figures_of(run: dict) -> dict:
    """{name: figure function} of a run: a --model's variance, spp and (where its modules have weights)
    weight_grad; the built-in network's variance, histograms, saturation, weight_grad, correlation, spp (runs
    written before the channel statistics have none), jacobian."""
    layers = run["layers"]
    if is_model_run(layers):
        figures = {"variance": variance_figure, "spp": spp_figure}
        if np.isfinite(layers["weight_var"].to_numpy(dtype=float)).any():
            figures["weight_grad"] = weight_grad_figure
        return figures
    # the processes take every other figure: in this order their shares take about equally long
    figures = {"variance": variance_figure, "histograms": histograms_figure, "saturation": saturation_figure,
               "weight_grad": weight_grad_figure}
    if "preact_corr" in layers:
        figures["correlation"] = correlation_figure
    if "chan_sq_mean" in layers:
        figures["spp"] = spp_figure
    if run["jacobian"] is not None:
        figures["jacobian"] = jacobian_figure
    return figures


def _draw(make, run: dict, path: Path, fmt: str) -> None:
    save(make(run), path, fmt)
