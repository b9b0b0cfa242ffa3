"""Overlays of several runs (`initprobe plot RUN RUN ...`): each run in its colour, labelled by what differs."""

import textwrap
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .. import results
from .draw import (BACKWARD, FORWARD, NAMES, draw_series, empty_note, log_limits, mark_trouble, new_figure, save,
                   seed_matrix, set_layer_axis, set_log_axis)
from .labels import distinguishing_labels

LEGEND_COLUMNS = 3
MIN_LINE = 20  # characters: a legend line is not wrapped narrower than this


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
    fig, axes = new_figure(len(panels), width_ratios)
    colours = run_colours(len(runs))
    for ax, (columns, title, direction) in zip(axes, panels):
        compare_panel(ax, runs, labels, colours, columns, title, direction)
    run_legend(fig, [Line2D([], [], color=c, lw=2.5, label=name) for c, name in zip(colours, labels)])
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


