"""Figures of mean-field theory without a run: `initprobe theory --out` (predicted variances and correlations per
layer) and `initprobe phase` (chi_1 over (sigma_w^2, sigma_b^2) with the critical line)."""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from .draw import (BACKWARD, COLOURS, FORWARD, MARKER_DEPTH, NAMES, SPP, add_legend, draw_series, empty_note,
                   finish_log_panel, mark_trouble, new_figure, new_grid, save, seed_matrix, set_correlation_axis,
                   set_layer_axis)
from .labels import _num, join_parts, label_parts, residual_or_normalized, scales_text

PHASE_FIGSIZE = (8, 5.6)
PHASE_CMAP = "RdBu_r"  # blue: ordered (chi_1 < 1), red: chaotic
THEORY_FIGSIZE = (13, 4.4)
THEORY_SPP_FIGSIZE = (13, 8.4)  # a second row: the signal propagation plot's quantities
SPP_TITLES = {"chan_sq_mean": "SPP: average channel squared mean", "chan_var": "SPP: average channel variance",
              "branch_var": "SPP: residual branch variance"}

def spp_columns(cfg_dict: dict) -> tuple[str, ...]:
    """The signal propagation plot's quantities the theory figure of a residual or normalized network adds (the
    branch's for residual blocks); none for plain blocks without a norm."""
    found = residual_or_normalized(cfg_dict)
    if found is None:
        return ()
    return SPP if found[0].stem else SPP[:2]


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
    spp = spp_columns(cfg_dict)
    if spp:  # residual or normalized: the SPP quantities in a row underneath
        fig, grid = new_grid(2, 3, width_ratios=(3, 3, 2.2), figsize=THEORY_SPP_FIGSIZE)
        (fwd, bwd, corr), below = grid
        for ax, column in zip(below, spp):  # a residual network's stem (layer 1) has no branch: no point there
            rows = frame[frame["layer"] > 1] if column == "branch_var" else frame
            theory_panel(ax, rows, (column,), SPP_TITLES[column], "forward")
        for ax in below[len(spp):]:
            ax.remove()
    else:
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

