"""Overlays of several runs (`initprobe plot RUN RUN ...`): each run in its colour, labelled by what differs."""

import textwrap
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .. import results
from .draw import (BACKWARD, FIGSIZE, FORWARD, column_name, constant_note, draw_series, empty_note, is_model_run,
                   log_limits, mark_trouble, model_figsize, module_names, new_figure, save, seed_matrix, series_style,
                   set_layer_axis, set_log_axis, wrapped)
from .labels import distinguishing_labels

LEGEND_COLUMNS = 3
MIN_LINE = 20  # characters: a legend line is not wrapped narrower than this


def run_colours(n: int) -> list:
    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    return list(colormaps["viridis"](np.linspace(0.0, 0.9, n)))


def shared_names(runs) -> list[str] | None:
    """The module names of the x axis when every run is a --model run of the same modules, else None (numbers)."""
    names = [module_names(r["layers"]) for r in runs]
    return names[0] if names[0] is not None and all(n == names[0] for n in names) else None


def compare_panel(ax, runs, labels, colours, columns, title, direction) -> None:
    """Each run in its colour: the first column solid with its seed band, the second dotted without (a column a
    run does not have, as a --model run has no h, is left out)."""
    measured = [np.array([])]
    for run, name, colour in zip(runs, labels, colours):
        layers = run["layers"]
        for column, style in zip(columns, ("-", ":")):
            if column not in layers:
                continue
            x, values = seed_matrix(layers, column)
            first = style == "-"
            line, marker = series_style(column, layers, None) if first else (style, None)
            measured.append(draw_series(ax, x, values, colour, name if first else None, band=first, style=line,
                                        marker=marker))
        mark_trouble(ax, layers, columns, direction, run["summary"], colour=colour)
    depth = max(int(r["layers"]["layer"].max()) for r in runs)
    set_layer_axis(ax, depth, shared_names(runs))
    ax.set_ylabel("variance (log scale)")
    ax.set_title(title, loc="left", fontsize=11)
    measured = np.concatenate(measured)
    if measured.size:
        set_log_axis(ax, *log_limits(measured))
    else:
        ax.set_yticks([])
        empty_note(ax, "no finite values in any run")
    shown = [(c, s, next(r["layers"] for r in runs if c in r["layers"])) for c, s in zip(columns, ("-", ":"))
             if any(c in r["layers"] for r in runs)]
    styles = [legend_handle(c, s, layers) for c, s, layers in shown]
    ax.legend(handles=styles, fontsize=8, loc="best", framealpha=0.85)
    if "weight_var" in columns:
        constant_note(ax, runs[0]["layers"])


def legend_handle(column: str, style: str, layers) -> Line2D:
    """The grey sample of a column's line (or points) in the legend."""
    line, marker = series_style(column, layers, None) if style == "-" else (style, None)
    return Line2D([], [], color="0.3", ls=line, marker=marker, lw=1.8, ms=4,
                  label=column_name(column, layers))


def run_legend(fig: Figure, handles: list) -> None:
    """The runs' legend below the panels, in the most columns (at most LEGEND_COLUMNS) that fit the figure's width;
    labels too wide even alone are wrapped at their spaces, narrower until they fit. Measured, not guessed: a
    label's width depends on its text and the font, and a legend wider than the figure is cut off at both edges."""
    room, renderer = fig.bbox.width * 0.98, FigureCanvasAgg(fig).get_renderer()
    texts = [h.get_label() for h in handles]
    ncols, chars = min(len(handles), LEGEND_COLUMNS), max(len(t) for t in texts)
    while True:
        legend = fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=9, frameon=False)
        width = legend.get_window_extent(renderer).width
        if width <= room or (ncols == 1 and chars <= MIN_LINE):
            return
        legend.remove()
        if ncols > 1:
            ncols -= 1
            continue
        chars = max(MIN_LINE, min(chars - 1, int(chars * room / width)))
        for h, text in zip(handles, texts):
            h.set_label(textwrap.fill(text, chars, break_long_words=False))


def compare_figure(runs, labels, common, panels, width_ratios=None) -> Figure:
    names = shared_names(runs)
    fig, axes = new_figure(len(panels), width_ratios, model_figsize(names) if names else FIGSIZE)
    colours = run_colours(len(runs))
    for ax, (columns, title, direction) in zip(axes, panels):
        compare_panel(ax, runs, labels, colours, columns, title, direction)
    run_legend(fig, [Line2D([], [], color=c, lw=2.5, label=name) for c, name in zip(colours, labels)])
    fig.suptitle(wrapped(fig, f"{len(runs)} runs" + (f" · {common}" if common else "")))
    return fig


def plot_compare(run_dirs, out_dir, fmt: str = "png") -> list[Path]:
    """Overlay runs: compare_variance, and compare_weight_grad unless no run has a weight (a --model's blocks own
    none), in out_dir (created if needed)."""
    runs = [results.read_run(d) for d in run_dirs]
    labels, common = distinguishing_labels([r["config"] for r in runs], [Path(d).name for d in run_dirs])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = all(is_model_run(r["layers"]) for r in runs)
    if models:  # module outputs y: one column a direction
        panels = [(("act_var",), "Forward: module outputs", "forward"),
                  (("grad_act_var",), "Backward: gradients w.r.t. them", "backward")]
    else:
        panels = [(FORWARD, "Forward: activations", "forward"), (BACKWARD, "Backward: gradients", "backward")]
    paths = [save(compare_figure(runs, labels, common, panels), out / f"compare_variance.{fmt}", fmt)]
    if any(np.isfinite(r["layers"]["weight_var"].to_numpy(dtype=float)).any() for r in runs):
        weights = compare_figure(runs, labels, common, [(("weight_grad_var",), "Weight gradients", "backward"),
                                                        (("weight_var",), "Weights (as initialized)", "forward")],
                                 width_ratios=None if models else (3, 2))  # a model's: names under both
        paths.append(save(weights, out / f"compare_weight_grad.{fmt}", fmt))
    return paths


