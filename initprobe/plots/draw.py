"""The drawing every per-layer figure shares: seed lines and bands, theory dashes, log axes that survive 0 and
inf, marks where a pass overflows or underflows, and saving. See the package docstring for the conventions."""

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from ..formatting import ordinal

FIGSIZE = (11, 4.2)
NAME_INCHES = 0.05  # the length of one character of a module name under an axis (7 pt, turned upright)
TITLE_CHARS_PER_INCH = 10  # characters of a figure's title that fit in an inch of its width
VERDICT_PAD = 15  # points: a --model's panel title is lifted by this to make room for its verdict below it
MAX_NAMES = 32  # module names on an x axis at most (thinned to every k-th beyond)
SMALL_FIGSIZE = (7.5, 4.2)  # one-panel figures
JACOBIAN_FIGSIZE = (8, 5.4)  # one panel, legend below
JACOBIAN_COLOUR = "#4c72b0"
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
    "chan_sq_mean": "average squared channel mean",
    "chan_var": "average channel variance",
    "branch_var": r"$\mathrm{Var}(\alpha(W^l\phi(h^l)+b^l))$ residual branch",
    "token_corr": "token correlation: mean cosine between tokens",
}
MODEL_NAMES = {  # a --model's rows are module outputs y, not a layer's h and x
    "act_var": r"$\mathrm{Var}(y)$ module output",
    "grad_act_var": r"$\mathrm{Var}(\partial L/\partial y)$",
    "weight_var": r"$\mathrm{Var}(W)$ the module's weight",
    "weight_grad_var": r"$\mathrm{Var}(\partial L/\partial W)$",
}
COLOURS = {
    "act_var": "#1f77b4", "preact_var": "#ff7f0e", "grad_preact_var": "#d62728", "grad_act_var": "#9467bd",
    "weight_grad_var": "#2ca02c", "weight_var": "#8c564b", "saturated_frac": "#e377c2", "zero_frac": "#17becf",
    "preact_corr": "#bcbd22", "chan_sq_mean": "#e6550d", "chan_var": "#3182bd", "token_corr": "#756bb1",
    "branch_var": "#1b9e77",
}
POINTS = ("weight_var",)  # a --model's weights belong to unlike modules, not to a progression: points, no line
FORWARD = ("act_var", "preact_var")
BACKWARD = ("grad_preact_var", "grad_act_var")
SPP = ("chan_sq_mean", "chan_var", "branch_var")  # Brock, De & Smith 2021's signal propagation plot
LOG_RANGE = (-300.0, 300.0)  # decades a log axis may show (float64 denormals reach 1e-324)

# ------------------------------------------------------------------------------------------ per-layer data


def is_model_run(layers: pd.DataFrame) -> bool:
    """Rows of a --model run: one per recorded module call, named."""
    return "module" in layers


def column_name(column: str, layers: pd.DataFrame) -> str:
    return MODEL_NAMES.get(column, NAMES[column]) if is_model_run(layers) else NAMES[column]


def module_names(layers: pd.DataFrame) -> list[str] | None:
    """The name of each layer's module (a later call of a shared module: 'name #2'), from the first seed's rows, for a
    --model run; None for the built-in network."""
    if not is_model_run(layers):
        return None
    first = layers[layers["seed"] == layers["seed"].min()].sort_values("layer")
    return [m if c == 1 else f"{m} #{c}" for m, c in zip(first["module"], first["call"])]


def series_style(column: str, layers: pd.DataFrame, marker: str | None) -> tuple[str, str | None]:
    """(line style, marker) of a column: a --model's weights as points (POINTS), anything else a line."""
    return ("none", "o") if is_model_run(layers) and column in POINTS else ("-", marker)


def constant_weights(layers: pd.DataFrame) -> list[str]:
    """The modules of a --model run whose weight has variance exactly 0 in every seed: constant weights (a norm's
    gamma = 1), which a log axis cannot show and which are not an underflow."""
    if not is_model_run(layers) or "weight_var" not in layers:
        return []
    zero = layers.groupby("layer")["weight_var"].agg(lambda v: bool((v == 0).all()))
    names = module_names(layers)
    return [names[int(layer) - 1] for layer in zero.index[zero.to_numpy(dtype=bool)]]


def constant_note(ax, layers: pd.DataFrame) -> None:
    """A line at the foot of a weight panel naming how many modules have constant weights (not drawn)."""
    constant = constant_weights(layers)
    if constant:
        foot_note(ax, f"Var(W) = 0 at {len(constant)} module{'s' * (len(constant) > 1)} (constant, e.g. a norm's "
                      "gamma = 1): not drawn")


def verdict_title(ax, text: str, model: bool) -> None:
    """The end-to-end verdict in grey at the panel's top right: beside the title, or for a --model (whose verdict
    names modules, too long to share the title's line) between the title, lifted, and the axes."""
    if not model:
        ax.set_title(text, loc="right", fontsize=8, color="0.35")
        return
    ax.set_title(ax.get_title(loc="left"), loc="left", fontsize=11, pad=VERDICT_PAD)
    ax.annotate(text, (1, 1), xycoords="axes fraction", xytext=(0, 3), textcoords="offset points", ha="right",
                va="bottom", fontsize=8, color="0.35")


def foot_note(ax, text: str) -> None:
    """A small grey line in the lower left corner of the axes: what the panel leaves out, and why."""
    ax.text(0.01, 0.01, text, transform=ax.transAxes, ha="left", va="bottom", fontsize=7, color="0.35",
            bbox={"boxstyle": "square,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})


def seed_matrix(layers: pd.DataFrame, column: str, index: str = "layer") -> tuple[np.ndarray, np.ndarray]:
    """(the `index` column's values, sorted: layer numbers or training steps; values of shape (those, seeds)), nan
    where a seed has no row (a training seed that diverged earlier)."""
    table = layers.pivot_table(index=index, columns="seed", values=column, aggfunc="first", dropna=False)
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


NO_FIRST_LAYER = ("branch_var", "theory_branch_var")  # empty at layer 1 of every network: no branch there (the stem)


def start_layer(layers: pd.DataFrame, columns, test, direction: str) -> int | None:
    """The first layer the pass reaches where `test` holds for any seed in any of `columns` (not counting the
    empty first row of a NO_FIRST_LAYER column)."""
    cols = [c for c in columns if c in layers]
    if not cols:
        return None
    hit = test(layers[cols].to_numpy(dtype=float))
    hit[np.ix_(layers["layer"].to_numpy() == 1, [c in NO_FIRST_LAYER for c in cols])] = False
    hit = hit.any(axis=1)
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


def new_grid(nrows: int, ncols: int, width_ratios=None, figsize=FIGSIZE) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, width_ratios=width_ratios)


def isolated(line: np.ndarray) -> np.ndarray:
    """Finite points whose neighbours are both missing."""
    ok = np.isfinite(line)
    before = np.concatenate([[False], ok[:-1]])
    after = np.concatenate([ok[1:], [False]])
    return ok & ~before & ~after


def draw_series(ax, x, values, colour, name, log=True, band=True, style="-", marker=None) -> np.ndarray:
    """Mean line and seed band of one quantity (`style`: a line style, "none" for points); returns the finite
    (positive, if log) values drawn."""
    line = centre_line(values, log)
    if name is not None and not usable(values, log).any():
        name += ": all 0" if np.all(values[np.isfinite(values)] == 0) and np.isfinite(values).any() else ": inf/nan"
    ax.plot(x, line, ls=style, color=colour, lw=1.8, label=name, marker=marker, ms=3.5)
    lonely = isolated(line)
    if lonely.any() and marker is None:  # a point between gaps draws no line: give it a dot
        ax.plot(x[lonely], line[lonely], "o", color=colour, ms=3.5)
    drawn = [line]
    if band and values.shape[1] > 1:
        lo, hi = seed_band(values, log)
        where = np.isfinite(lo) & np.isfinite(hi)
        if style == "none":  # points: each its own range over the seeds, not a band joining unlike modules
            ax.vlines(x[where], lo[where], hi[where], color=colour, alpha=2 * BAND_ALPHA, lw=2)
        else:
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


def draw_quantities(ax, layers, columns, log=True, n_seeds=1, notes=None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Measured lines and bands, plus theory; returns (measured values, theory values, any theory column).
    `notes` ({column: text}) are added to the lines' names."""
    marker = "o" if layers["layer"].max() <= MARKER_DEPTH else None
    measured, theory = [np.array([])], [np.array([])]
    for column in columns:
        x, values = seed_matrix(layers, column)
        style, mark = series_style(column, layers, marker)
        noted = notes and column in notes and usable(values, log).any()  # else draw_series says "all 0"
        name = column_name(column, layers) + (f" ({notes[column]})" if noted else "")
        measured.append(draw_series(ax, x, values, COLOURS[column], name, log, n_seeds > 1, style=style,
                                    marker=mark))
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


def name_step(names: list[str]) -> int:
    """Every how many-th module an axis names: all up to MAX_NAMES, evenly fewer beyond."""
    return -(-len(names) // MAX_NAMES)


def model_figsize(names: list[str]) -> tuple[float, float]:
    """A --model figure's size: FIGSIZE, taller by the longest module name the x axis shows (they stand upright
    under it), so that the panels keep their height."""
    longest = max((len(n) for n in names[::name_step(names)]), default=0)
    return FIGSIZE[0], FIGSIZE[1] + NAME_INCHES * longest


def wrapped(fig: Figure, text: str) -> str:
    """`text` broken into lines that fit the figure's width (a --model's label carries its arguments): between its
    ' · '-separated pieces where it can, inside a piece longer than a line."""
    width = int(fig.get_figwidth() * TITLE_CHARS_PER_INCH)
    lines = []
    for line in text.split("\n"):
        current = ""
        for piece in line.split(" · "):
            joined = f"{current} · {piece}" if current else piece
            if len(joined) <= width or not current:
                current = joined
            else:
                lines += textwrap.wrap(current, width, break_on_hyphens=False)
                current = piece
        lines += textwrap.wrap(current, width, break_on_hyphens=False) or [""]
    return "\n".join(lines)


def set_layer_axis(ax, depth: int, names: list[str] | None = None) -> None:
    """Layers 1..depth on x, labelled by number, or by module name (a --model's `names`, every k-th where there
    are more than MAX_NAMES)."""
    pad = max(0.5, 0.01 * depth)
    ax.set_xlim(1 - pad, depth + pad)
    ax.grid(True, which="major", alpha=0.3)
    if names:
        step = name_step(names)
        ax.set_xticks(range(1, len(names) + 1, step), names[::step], rotation=90, fontsize=7)
        ax.set_xlabel("module, in forward order" + (f" (every {ordinal(step)} named)" if step > 1 else ""))
        return
    if depth <= MARKER_DEPTH:
        ax.set_xticks(range(1, depth + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer l")


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


def mark_trouble(ax, layers, columns, direction: str, summary: dict, colour=None, underflow=True,
                 exact_zeros=()) -> None:
    """Where the pass first meets inf/nan and where it first meets exact zeros, in `columns`. The summary's
    first_nonfinite_layer says whether the run overflowed at all; each panel finds where in its own data. Columns
    in `exact_zeros` are 0 by construction (SkipInit's branches), not by underflow, and so is a --model's weight
    variance of 0: a constant weight (constant_weights)."""
    if is_model_run(layers) and "weight_var" in columns:
        underflow = False
    side = "right" if direction == "forward" else "left"
    down = "" if direction == "forward" else " down"
    bad = first_nonfinite(layers, columns, direction)
    if bad is not None and (summary.get("first_nonfinite_layer") is not None or not summary):
        ax_text = f"non-finite from layer {bad}{down}"
        mark_layer(ax, bad, ax_text, colour or NONFINITE_COLOUR, side, top=True)
    zero = first_zero(layers, [c for c in columns if c not in exact_zeros], direction) if underflow else None
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



def save(fig: Figure, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=DPI)
    return path



def set_correlation_axis(ax, values: np.ndarray, depth: int, names: list[str] | None = None) -> None:
    set_layer_axis(ax, depth, names)
    low = values.min() - 0.05 if values.size else 0.0
    ax.set_ylim(max(min(low, -0.05), -1.05), 1.05)
    ax.set_ylabel("correlation")


