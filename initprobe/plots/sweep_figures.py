"""A sweep's comparison figures (its figures/ folder; sweep/report.py embeds them in report.html).

- profiles: small multiples, rows = forward activation variance (act_var) and backward gradient variance
  (grad_preact_var; a --model's grad_act_var) per layer; columns = the values of model / arch / act / depth that the
  sweep varies (one column if it varies none); one line per remaining varying keys (the init, usually): geometric
  mean over seeds, band min..max over seeds, log y; colours and dash patterns both cycle, so lines that coincide
  stay visible. Runs that differ only in `seed` are pooled. The title names what every run shares (arch, act,
  init, depth, width, seeds). A sweep with residual or normalized runs gets the signal propagation plot's rows too
  (chan_sq_mean, chan_var, and branch_var with residual runs), its backward row each run's stream gradient
  (grad_act_var for residual blocks); with a single column, forward and backward side by side with the legend, the
  SPP panels underneath.
- ratios: heatmaps of the end-to-end forward ratio act_var[depth]/act_var[1] and backward ratio
  grad_preact_var[1]/grad_preact_var[depth] (rows = lines above, columns = columns above), log10 colour scale
  diverging around 0 (ratio 1), every cell annotated. A sparse table (most cells without a run: [[point]] pairs
  such as Glorot + tanh, He + ReLU) is drawn as one column, a row per run.

Non-finite and non-positive values (overflow, exact zeros) cannot be drawn on a log scale: they are masked, and the
figures say where they are. matplotlib's object API only (no pyplot state).
"""

import functools
import io
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator

from .. import config, formatting, inits, results

COLUMN_KEYS = ("model", "arch", "act", "depth")  # the columns of the small multiples / heatmaps, when varied
POOLED_KEYS = ("seed",)  # runs differing only in these are pooled (their seeds are seeds of one line)
CONTEXT_KEYS = ("model", "arch", "act", "init", "depth", "width", "seeds")  # in the titles when the same in every run
ONE_COLUMN = "all runs"  # the column label when the sweep varies none of COLUMN_KEYS
DASHES = ("-", "--", "-.", ":")
GRADIENT = "gradient"  # the backward row's values: gradient_of(layers)
SPP_ROWS = (("chan_sq_mean", "SPP: average channel\nsquared mean chan_sq_mean"),
            ("chan_var", "SPP: average channel\nvariance chan_var"),
            ("branch_var", "SPP: residual branch\nvariance branch_var"))
WRAPPED_COLUMNS = 3  # a one-column sweep's rows beyond the first two: side by side, as Brock et al.'s Figure 1
DPI = 110


def draw(layers: pd.DataFrame | None, runs: pd.DataFrame, varying: list[str], title: str, fig_dir: Path,
         curves: pd.DataFrame | None = None) -> dict:
    """profiles.png and ratios.png into fig_dir (two processes where there are two cores, forking.run_shared), and
    for a sweep of train runs trainability.png first (with the mean-field `curves`, if given); returns {name: PNG
    bytes}, empty where no run is ok. A train sweep's profiles and ratios are those of step 0."""
    from .. import forking

    ok = runs[runs["status"] == "ok"]
    if layers is None or not len(ok):
        return {}
    if "step" in layers:
        layers = layers[layers["step"] == 0]
    layers = mark_residual(layers, ok)
    groups, context = assign_groups(ok, varying), describe_fixed(ok, varying)
    every = runs[runs["status"].isin(["ok", "failed"])]  # failed runs get a cell that says so
    every_groups = one_column_if_sparse(assign_groups(every, varying))
    fig_dir.mkdir(exist_ok=True)
    spp = spp_rows(layers, ok)
    figures = {"profiles": lambda: profiles_figure(layers, groups, title, context, spp),
               "ratios": lambda: ratios_figure(every, every_groups, title, context)}
    if "final_test_accuracy" in runs:
        figures = {"trainability": lambda: trainability_figure(every, varying, title, curves, context), **figures}
    paths = {name: fig_dir / f"{name}.png" for name in figures}
    forking.run_shared([functools.partial(_save_made, make, paths[name]) for name, make in figures.items()])
    return {name: path.read_bytes() for name, path in paths.items()}


def _save_made(make, path: Path) -> None:
    _save_png(make(), path)


def residual_ids(runs: pd.DataFrame) -> set:
    return set(runs.loc[runs["block"] == "residual", "run_id"]) if "block" in runs else set()


def mark_residual(layers: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """layers with `residual` (the row is a residual network's: its backward ratio is of dL/dx, dL/dh being one
    branch's share) and `has_branch` (a residual block's row, not the stem's) where the sweep has residual runs."""
    residual = residual_ids(runs)
    if not residual:
        return layers
    is_residual = layers["run_id"].isin(residual)
    return layers.assign(residual=is_residual, has_branch=is_residual & (layers["layer"] > 1))


def spp_rows(layers: pd.DataFrame, runs: pd.DataFrame) -> tuple:
    """The signal propagation plot's rows of the small multiples: with residual or normalized runs (branch_var with
    residual runs), none otherwise."""
    residual = bool(residual_ids(runs))
    normalized = "norm" in runs and (runs["norm"].dropna() != "none").any()
    if not (residual or normalized) or "chan_sq_mean" not in layers:
        return ()
    return tuple(r for r in SPP_ROWS if r[0] != "branch_var" or residual)


def _save_png(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    results.atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# Grouping runs into columns and lines


def _present(value) -> bool:
    return not (value is None or (isinstance(value, float) and math.isnan(value)))


def _block(row):
    block = row.get("block")
    return block if _present(block) else None


def _network_kind(row) -> str:
    model = row.get("model")
    return config.network_kind(model if _present(model) else None, row.get("arch"))


def assign_groups(runs: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """run_id -> (column, line) labels. Columns: the varied keys among arch/act/depth; lines: the other varied
    keys (init first, shown by value; the rest as key=value), `seed` pooled."""
    col_keys = [k for k in COLUMN_KEYS if k in varying and k in runs]
    rest = [k for k in varying if k not in col_keys and k not in POOLED_KEYS and k in runs]
    if col_keys:  # keys fixed within every column (an MLP's width beside a CNN's) describe the column, not a line
        per_column = runs.groupby(col_keys, dropna=False)
        col_keys += [k for k in rest if k != "init" and (per_column[k].nunique(dropna=False) <= 1).all()]
    line_keys = sorted((k for k in rest if k not in col_keys), key=lambda k: k != "init")

    def label(row, keys, named):  # init by value, but init=model (a model's own) says what it is
        parts = [(formatting.value(row[k]) if k in named and row[k] != inits.MODEL_OWN else
                  f"{k}={formatting.value(row[k])}") for k in keys
                 if _present(row[k]) and config.applies(k, _network_kind(row), row.get("act"), _block(row))]
        return ", ".join(parts)

    rows = [(r["run_id"], label(r, col_keys, ()) or ONE_COLUMN, label(r, line_keys, ("init",)) or "all runs")
            for _, r in runs.iterrows()]
    groups = pd.DataFrame(rows, columns=["run_id", "column", "line"])
    groups.attrs["column_keys"], groups.attrs["line_keys"] = col_keys, line_keys
    return groups


def describe_fixed(runs: pd.DataFrame, varying: list[str]) -> str:
    """`arch=mlp, act=tanh, depth=100, width=512, 3 seeds`: the CONTEXT_KEYS with one value in every run."""
    parts = []
    kinds = {_network_kind(row) for _, row in runs.iterrows()}
    for key in CONTEXT_KEYS:
        if key in varying or key not in runs or not all(config.applies(key, kind) for kind in kinds):
            continue
        values = runs[key].dropna().unique()
        if len(values) == 1:
            shown = formatting.value(values[0])
            parts.append(f"{shown} seed{'s' * (shown != '1')}" if key == "seeds" else f"{key}={shown}")
    return ", ".join(parts)


def one_column_if_sparse(groups: pd.DataFrame) -> pd.DataFrame:
    """Groups for the heatmaps: as they are, unless most (line, column) cells would have no run; then one column
    and a row per (column, line) pair, labelled `line, column` (`he_normal, act=relu`)."""
    columns, lines = _order(groups["column"]), _order(groups["line"])
    filled = len(groups[["column", "line"]].drop_duplicates())
    if len(columns) < 2 or filled > len(columns) * len(lines) / 2:
        return groups
    out = groups.assign(line=groups["line"] + ", " + groups["column"], column=ONE_COLUMN)
    out.attrs.update(groups.attrs)
    return out


def _order(values) -> list:
    return list(dict.fromkeys(values))


def _colours(lines: list[str]) -> dict:
    cmap = colormaps["tab10" if len(lines) <= 10 else "tab20"]
    return {line: cmap(i % cmap.N) for i, line in enumerate(lines)}


# ---------------------------------------------------------------------------------------------------------------
# Small multiples


def profiles(data: pd.DataFrame, quantity: str) -> dict:
    """{(column, line): per-layer frame} of geometric mean, min and max over seeds of the positive finite values of
    `quantity`, and how many values were masked (non-finite or <= 0). One groupby for every panel and line. Rows
    of branch_var without a branch (plain blocks, stems: mark_residual's has_branch) are left out, not masked."""
    if quantity == "branch_var":
        data = data[data["has_branch"]] if "has_branch" in data else data.iloc[:0]
    values = data[["column", "line", "layer", quantity]].copy()
    v = values[quantity].to_numpy(dtype=float)
    good = np.isfinite(v) & (v > 0)
    values["log"] = np.where(good, np.log(np.where(good, v, 1.0)), np.nan)
    values["good"] = np.where(good, v, np.nan)
    values["masked"] = ~good
    per = values.groupby(["column", "line", "layer"]).agg(log=("log", "mean"), lo=("good", "min"),
                                                          hi=("good", "max"), masked=("masked", "sum"))
    per["geomean"] = np.exp(per["log"])
    return {key: frame.reset_index() for key, frame in per.reset_index(["layer"]).groupby(level=[0, 1])}


def gradient_of(layers: pd.DataFrame) -> tuple[pd.Series, str]:
    """The gradient variance each row's backward ratio reads, and its column name(s): grad_preact_var for the
    built-in network's plain layers, grad_act_var for its residual ones (mark_residual: dL/dh is one branch's share)
    and for a --model's modules (which have no h)."""
    nan = pd.Series(np.nan, index=layers.index)
    built_in = layers["grad_preact_var"] if "grad_preact_var" in layers else nan
    model = layers["module"].notna() if "module" in layers else pd.Series(False, index=layers.index)
    residual = layers["residual"].fillna(False).astype(bool) if "residual" in layers else \
        pd.Series(False, index=layers.index)
    stream = model | residual
    if not stream.any():
        return built_in, "grad_preact_var"
    if stream.all():
        return layers["grad_act_var"], "grad_act_var"
    kinds = ", ".join(k for k, present in (("residual", residual.any()), ("models", model.any())) if present)
    names = ["grad_preact_var (plain)", f"grad_act_var ({kinds})"]
    return built_in.where(~stream, layers["grad_act_var"]), " or ".join(names)


def lines_low_on_the_left(ax) -> bool:
    """Whether every line drawn in the left 40% of the panel stays in its lower half (log y), so that a note fits in
    the upper left corner without hiding them."""
    x0, x1 = ax.get_xlim()
    y0, y1 = np.log10(ax.get_ylim()) if ax.get_yscale() == "log" else (None, None)
    if y0 is None or not y1 > y0:
        return False
    heights = []
    for line in ax.get_lines():
        x, y = np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)
        left = (x <= x0 + 0.4 * (x1 - x0)) & np.isfinite(y) & (y > 0)
        heights.extend((np.log10(y[left]) - y0) / (y1 - y0))
    return bool(heights) and max(heights) < 0.5


def legend_columns(labels: list[str], width_inches: float) -> int:
    """As many legend columns (at most 4) as labels of this length fit across the figure: at font size 9 a character
    is about 0.075 inch, and a line sample and the gaps about 5 characters more."""
    fit = int(width_inches / (0.075 * (max(len(label) for label in labels) + 5)))
    return max(1, min(len(labels), 4, fit))


def profile_axes(fig: Figure, rows, columns) -> tuple[dict, object]:
    """({(row, column): axes}, a spare axes for the legend or None). A sweep with one column and more than two rows
    (the SPP rows) puts forward and backward side by side with the legend beside them, and the SPP rows in a row of
    their own underneath; otherwise a row per quantity and a column per column, y shared along a row."""
    if len(columns) > 1 or len(rows) <= 2:
        axes = fig.subplots(len(rows), len(columns), squeeze=False, sharey="row")
        return {(r, c): axes[r, c] for r in range(len(rows)) for c in range(len(columns))}, None
    grid = fig.subplots(2, WRAPPED_COLUMNS, squeeze=False)
    slots = [grid[0, 0], grid[0, 1], *grid[1, :]]
    for extra in slots[len(rows):]:
        extra.remove()
    return {(r, 0): slots[r] for r in range(len(rows))}, grid[0, 2]


def profiles_figure(layers: pd.DataFrame, groups: pd.DataFrame, title: str, context: str = "",
                    spp=()) -> Figure:
    """The small multiples: forward and backward rows, and the `spp` rows (spp_rows) under them."""
    data = layers.merge(groups, on="run_id")
    data[GRADIENT], gradient = gradient_of(data)
    rows = (("act_var", "forward\nactivation variance act_var"),
            (GRADIENT, "backward\ngradient variance\n" + gradient.replace(" or ", " or\n")), *spp)
    columns, lines = _order(groups["column"]), _order(groups["line"])
    colours = _colours(lines)
    dashes = {line: DASHES[i % len(DASHES)] for i, line in enumerate(lines)}
    wrapped = len(columns) == 1 and len(rows) > 2
    if wrapped:
        figsize = (4.3 * WRAPPED_COLUMNS, 7.6)
    else:
        figsize = (max(6.4, 0.6 + 3.3 * len(columns)), 3.1 * len(rows) + 0.2 * (len(lines) // 4))
    fig = Figure(layout="constrained", figsize=figsize)
    axes, spare = profile_axes(fig, rows, columns)
    for r, (quantity, name) in enumerate(rows):
        panels = profiles(data, quantity)
        for c, column in enumerate(columns):
            ax = axes[r, c]
            drawn, notes = 0, []
            for line in lines:
                if (column, line) not in panels:
                    continue
                per = panels[column, line]
                colour = colours[line]
                if per["geomean"].notna().any():
                    ax.plot(per["layer"], per["geomean"], color=colour, ls=dashes[line], lw=1.8, label=line)
                    ax.fill_between(per["layer"], per["lo"], per["hi"], color=colour, alpha=0.2, lw=0)
                    drawn += 1
                masked = per.loc[per["masked"] > 0, "layer"]
                if len(masked):
                    where = f"layer {masked.min()}" if len(masked) == 1 else \
                        f"{len(masked)} layers in {masked.min()}..{masked.max()}"
                    notes.append(textwrap.fill(f"{line}: inf/nan/0 masked at {where}", 42))
            if drawn:
                ax.set_yscale("log")
            else:
                ax.text(0.5, 0.5, "no finite positive values", ha="center", va="center", transform=ax.transAxes)
            if notes:
                low = lines_low_on_the_left(ax)
                ax.text(0.02, 0.98 if low else 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7,
                        va="top" if low else "bottom", color="0.3",
                        bbox={"boxstyle": "square,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
            ax.grid(True, which="major", alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if r == 0 and columns != [ONE_COLUMN]:
                ax.set_title(textwrap.fill(column, 40), fontsize=9)
            if r == len(rows) - 1 or wrapped:
                ax.set_xlabel("layer l")
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    handles = [Line2D([], [], color=colours[line], ls=dashes[line], lw=2) for line in lines]
    if spare is not None:
        spare.axis("off")
        spare.legend(handles, [textwrap.fill(line, 34) for line in lines], loc="center", fontsize=9, frameon=False)
    else:
        fig.legend(handles, lines, loc="outside lower center", ncols=legend_columns(lines, fig.get_figwidth()),
                   fontsize=9, frameon=False)
    fig.suptitle(_title(fig, f"{title}: per-layer variance", context,
                        "geometric mean over seeds, band min..max over seeds"), fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Heatmaps of end-to-end ratios


def ratio_table(runs: pd.DataFrame, groups: pd.DataFrame, key: str) -> pd.DataFrame:
    """(line x column) geometric mean of `key` over the ok runs in each cell; inf/nan/0 kept as they are (so they
    can be annotated); nan where a cell has no ok run."""
    if "status" in runs:
        runs = runs[runs["status"] == "ok"]
    data = runs[["run_id", key]].merge(groups, on="run_id")
    data[key] = pd.to_numeric(data[key], errors="coerce")

    def cell(values):
        v = values.to_numpy(dtype=float)
        good = v[np.isfinite(v) & (v > 0)]
        if len(good) == len(v):
            return float(np.exp(np.mean(np.log(good))))
        bad = v[~(np.isfinite(v) & (v > 0))]
        return float(bad[0])  # a masked cell: say why (inf, nan or 0)

    table = data.groupby(["line", "column"], sort=False)[key].apply(cell).unstack("column")
    return table.reindex(index=_order(groups["line"]), columns=_order(groups["column"]))


def _annotation(value: float) -> str:
    if np.isnan(value):
        return "nan"
    if value == 0:
        return "0"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.2g}"


def ratio_names(runs: pd.DataFrame) -> tuple[str, str]:
    """What the heatmaps show: the built-in network's first and last layer, or, where a run probed a --model, the
    layers its summary compared (the first and last call of its most repeated module)."""
    if "model" in runs and runs["model"].map(_present).any():
        return ("forward ratio\nact_var, last / first compared layer",
                "backward ratio\ngradient variance, first / last compared layer")
    if residual_ids(runs):  # the summary's backward ratio is of each run's stream gradient
        return ("forward ratio\nact_var[depth] / act_var[1]", "backward ratio, gradient[1] / gradient[depth]\n"
                "(grad_act_var residual, grad_preact_var plain)")
    return "forward ratio\nact_var[depth] / act_var[1]", "backward ratio\ngrad_preact_var[1] / grad_preact_var[depth]"


def ratios_figure(runs: pd.DataFrame, groups: pd.DataFrame, title: str, context: str = "") -> Figure:
    forward, backward = ratio_names(runs)
    tables = {forward: ratio_table(runs, groups, "forward_ratio"),
              backward: ratio_table(runs, groups, "backward_ratio")}
    logs = {}
    for name, table in tables.items():
        v = table.to_numpy(dtype=float)
        ok = np.isfinite(v) & (v > 0)
        logs[name] = np.ma.masked_array(np.log10(np.where(ok, v, 1.0)), mask=~ok)
    finite = np.concatenate([m.compressed() for m in logs.values()])
    limit = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    first = tables[next(iter(tables))]  # both tables have the same rows and columns
    n_rows, n_cols = first.shape
    cell_runs = [[_cell_runs(runs, groups, first, i, j) for j in range(n_cols)] for i in range(n_rows)]
    row_labels = [textwrap.fill(str(r), 44) for r in first.index]
    label_width = max(len(part) for r in row_labels for part in r.splitlines())
    fig = Figure(layout="constrained", figsize=(1.2 + 0.06 * label_width + 2 * (1.6 + 1.1 * n_cols),
                                                1.9 + 0.45 * n_rows))
    axes = fig.subplots(1, 2, squeeze=False)[0]
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.85")
    image = None
    for ax, (name, table) in zip(axes, tables.items()):
        image = ax.imshow(logs[name], cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
        values = table.to_numpy(dtype=float)
        for i in range(n_rows):
            for j in range(n_cols):
                value = values[i, j]
                runs_here = cell_runs[i][j]
                if logs[name].mask[i, j] and table.isna().iloc[i, j] and not len(runs_here):
                    text, colour = "-", "0.4"  # no run in this cell
                elif table.isna().iloc[i, j] and "status" in runs_here and runs_here["status"].eq("failed").all():
                    text, colour = "failed", "#cf222e"
                else:
                    text = _annotation(value)
                    strong = not logs[name].mask[i, j] and abs(logs[name][i, j]) > 0.6 * limit
                    colour = "white" if strong else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
        if list(table.columns) == [ONE_COLUMN]:
            ax.set_xticks([])
        else:
            ax.set_xticks(range(n_cols), [textwrap.fill(str(c), 24) for c in table.columns],
                          rotation=30 if n_cols > 3 else 0, ha="right" if n_cols > 3 else "center", fontsize=8)
        ax.set_yticks(range(n_rows), row_labels, fontsize=8)
        ax.set_title(name, fontsize=9)
    for ax in axes[1:]:
        ax.tick_params(labelleft=False)
    bar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    bar.set_label("log10 ratio (0: ratio 1)", fontsize=8)
    fig.suptitle(_title(fig, f"{title}: end-to-end ratios", context,
                        "geometric mean over seeds; grey: inf/nan/0 or failed, '-': no run"), fontsize=10)
    return fig


def _title(fig: Figure, head: str, context: str, note: str) -> str:
    """head, then `context; note` wrapped to the figure's width (about 12 characters per inch at 10 pt)."""
    width = max(40, int(fig.get_figwidth() * 12))
    tail = f"{context}; {note}" if context else note
    return head + "\n" + textwrap.fill(tail, width)


def _cell_runs(runs: pd.DataFrame, groups: pd.DataFrame, table: pd.DataFrame, i: int, j: int) -> pd.DataFrame:
    """The rows of `runs` in heatmap cell (i, j)."""
    ids = groups.loc[(groups["line"] == table.index[i]) & (groups["column"] == table.columns[j]), "run_id"]
    return runs[runs["run_id"].isin(ids)]




# ---------------------------------------------------------------------------------------------------------------
# Trainability (a sweep of `initprobe train` runs)


HEATMAP_Y = "depth"
HEATMAP_X = "sigma_w2"  # the init's nominal sigma_w^2 (runs.csv, from each run's summary.json), when it varies
CURVE_STYLES = {"six_xi_c": ("--", r"$6\,\xi_c$: trainable below (Schoenholz et al. 2017)"),
                "xi_q": (":", r"$\xi_q$")}


def heatmap_axes(runs: pd.DataFrame, varying: list[str]) -> tuple[str | None, str | None]:
    """(x key, y key) of the trainability heatmap: sigma_w2 across and depth up where both vary (Schoenholz et al.'s
    axes), else the keys the sweep varies, in its order (None where there is no second)."""
    def varies(key):
        return key in runs and runs[key].nunique(dropna=True) > 1

    y = HEATMAP_Y if varies(HEATMAP_Y) else None
    x = HEATMAP_X if y and varies(HEATMAP_X) else None
    others = [k for k in varying if k not in (x, y) and k not in POOLED_KEYS and varies(k)]
    if y is None and others:
        y = others.pop(0)
    if x is None and others:
        x = others.pop(0)
    return x, y


def _edges(centres: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted cell centres: midpoints (geometric on a log axis), the ends half a step out."""
    c = np.log(centres) if log else centres.astype(float)
    if len(c) == 1:
        mid, ends = np.array([]), (c[0] - 0.5, c[0] + 0.5)
    else:
        mid = (c[1:] + c[:-1]) / 2
        ends = (c[0] - (c[1] - c[0]) / 2, c[-1] + (c[-1] - c[-2]) / 2)
    edges = np.concatenate([[ends[0]], mid, [ends[1]]])
    return np.exp(edges) if log else edges


def _axis_values(runs: pd.DataFrame, key: str | None) -> tuple[list, np.ndarray, bool]:
    """(the key's values in order, their coordinates, whether numeric). A missing key: one cell at 0."""
    if key is None:
        return [None], np.array([0.0]), True
    values = _order(runs[key].dropna())
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)
    if numeric:
        values = sorted(values)
        return values, np.asarray(values, dtype=float), True
    return values, np.arange(len(values), dtype=float), False


def accuracy_table(runs: pd.DataFrame, x: str | None, y: str | None, xs: list, ys: list) -> np.ndarray:
    """(len(ys), len(xs)) mean final test accuracy of the ok runs in each cell; nan where none is."""
    ok = runs[runs["status"] == "ok"]
    table = np.full((len(ys), len(xs)), np.nan)
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            here = ok[((ok[x] == xv) if x else True) & ((ok[y] == yv) if y else True)]
            if len(here):
                table[i, j] = pd.to_numeric(here["final_test_accuracy"], errors="coerce").mean()
    return table


def trainability_figure(runs: pd.DataFrame, varying: list[str], title: str, curves: pd.DataFrame | None = None,
                        context: str = "") -> Figure:
    """Final test accuracy over the two heatmap axes, each cell annotated, with the mean-field depth scales
    (`curves`: sigma_w2 against six_xi_c and xi_q, predict.trainability_curves) drawn over it when the axes are
    sigma_w2 and depth. Depth is drawn on a log axis."""
    x, y = heatmap_axes(runs, varying)
    xs, xc, x_numeric = _axis_values(runs, x)
    ys, yc, y_numeric = _axis_values(runs, y)
    y_log = y == HEATMAP_Y and yc.min() > 0
    table = accuracy_table(runs, x, y, xs, ys)
    fig = Figure(layout="constrained", figsize=(max(6.4, 1.6 + 0.75 * len(xs)), max(4.2, 1.8 + 0.4 * len(ys))))
    ax = fig.subplots()
    x_edges = _edges(xc, False) if x_numeric else np.arange(len(xs) + 1) - 0.5
    y_edges = _edges(yc, y_log) if y_numeric else np.arange(len(ys) + 1) - 0.5
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    image = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(table), cmap=cmap, vmin=0.0, vmax=1.0)
    for i, yv in enumerate(yc):
        for j, xv in enumerate(xc):
            text = "-" if np.isnan(table[i, j]) else f"{table[i, j]:.2f}"
            ax.text(xv, yv, text, ha="center", va="center", fontsize=7.5,
                    color="white" if not np.isnan(table[i, j]) and table[i, j] < 0.6 else "black")
    if y_log:
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(NullLocator())
    ax.set_yticks(yc if y else [], [formatting.value(v) for v in ys] if y else [])
    ax.set_xticks(xc if x else [], [formatting.value(v) for v in xs] if x else [],
                  rotation=0 if len(xs) <= 10 else 45)
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_ylim(y_edges[0], y_edges[-1])
    if curves is not None and x == HEATMAP_X and y == HEATMAP_Y:
        for column, (style, name) in CURVE_STYLES.items():
            values = curves[column].to_numpy(dtype=float)
            if not (values > y_edges[0]).any():
                name += f" (under {formatting.value(round(y_edges[0], 1))} everywhere: below the axis)"
            ax.plot(curves["sigma_w2"], values, style, color="white", lw=2.2, label=name)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.85, facecolor="0.3", labelcolor="white")
    ax.set_xlabel(r"$\sigma_w^2$ = fan_in $E[W^2]$ (the init's formula)" if x == HEATMAP_X else (x or ""))
    ax.set_ylabel(f"{y} (log scale)" if y_log else (y or ""))
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label("final test accuracy (mean over the cell's runs)", fontsize=8)
    fig.suptitle(_title(fig, f"{title}: trainability", context, "final held-out accuracy of each cell's runs; '-': "
                        "no finished run"), fontsize=10)
    return fig
