"""plots: what the figures show (each line the mean over seeds of its CSV column, theory dashed beside it, log axes
for variances, labelled axes, legends, no empty panel; the overlays, theory and phase figures likewise); every
figure of a real (small) run written as a valid image, also for runs that overflow to inf/nan or underflow to 0,
for old run directories without theory columns or histograms, and as SVG; the correlation and Jacobian figures
exactly when their data exists; the theory and phase figures also where the predictions are inf, nan or 0.
Small runs (width 32, batch 16) on TORCH_DEVICE (default cpu)."""

import ast
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from initprobe import RunConfig, config, plots, predict, results, run, theory
from initprobe.plots import compare_figures, run_figures, theory_figures
from initprobe.plots import labels as labels_mod
from initprobe.plots.draw import NAMES

DEVICE = os.environ.get("TORCH_DEVICE", "cpu")
BASE_PLOTS = {"variance", "weight_grad", "histograms", "saturation"}
RUN_PLOTS = BASE_PLOTS | {"correlation", "spp"}  # every run measures preact_corr and the channel statistics
SIZES = {"correlation": (1125, 630), "jacobian": (1200, 810)}  # (7.5, 4.2) and (8, 5.4) inches at 150 dpi
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_run(out, **kwargs):
    """A real run, small enough to take well under a second."""
    settings = {"depth": 6, "width": 32, "batch": 16, "seeds": 2, "device": DEVICE, "plots": False, **kwargs}
    return run(RunConfig(out=str(out), **settings)).path


@pytest.fixture(scope="module")
def tanh_run(tmp_path_factory):
    return small_run(tmp_path_factory.mktemp("runs") / "tanh")


@pytest.fixture(scope="module")
def exploding_run(tmp_path_factory):
    """Var grows by width * std^2 = 32 per layer: float32 overflows long before layer 50."""
    return small_run(tmp_path_factory.mktemp("runs") / "explode", init="normal", std=1.0, act="identity", depth=50)


@pytest.fixture(scope="module")
def vanishing_run(tmp_path_factory):
    """Var shrinks by width * std^2 / 2 = 1.6e-3 per layer: activations reach exactly 0 within 40 layers."""
    return small_run(tmp_path_factory.mktemp("runs") / "vanish", init="normal", std=0.01, act="relu", depth=40)


@pytest.fixture(scope="module")
def residual_run(tmp_path_factory):
    return small_run(tmp_path_factory.mktemp("runs") / "residual", block="residual", norm="batch", act="relu",
                     init="he_normal")


@pytest.fixture(scope="module")
def jacobian_run(tmp_path_factory):
    return small_run(tmp_path_factory.mktemp("runs") / "jacobian", jacobian=True)


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_pngs(paths, names):
    assert {p.stem for p in paths} == names
    for path in paths:
        assert path.is_file() and path.suffix == ".png"
        assert path.stat().st_size > 20_000, f"{path} is suspiciously small"
        assert png_size(path) == SIZES.get(path.stem, (1650, 630))  # figsize (11, 4.2) at 150 dpi


@pytest.mark.slow
def test_exploding_run_still_plots(exploding_run):
    layers = pd.read_csv(exploding_run / "layers.csv")
    assert np.isinf(layers["act_var"]).any(), "the run was meant to overflow"
    assert not np.isfinite(layers["grad_preact_var"]).all()  # inf, or nan where inf - inf
    assert pd.read_json(exploding_run / "summary.json", typ="series")["first_nonfinite_layer"] is not None
    assert_pngs(plots.plot_run(exploding_run), RUN_PLOTS)


@pytest.mark.slow
def test_vanishing_run_still_plots(vanishing_run):
    layers = pd.read_csv(vanishing_run / "layers.csv")
    assert (layers["act_var"] == 0).any(), "the run was meant to underflow to exactly 0"
    assert_pngs(plots.plot_run(vanishing_run), RUN_PLOTS)


@pytest.mark.slow
def test_old_run_plots_as_svg(tanh_run, tmp_path):
    """fmt='svg' writes SVG files; and a run written before theory_* columns existed, without histograms.csv
    or summary.json, still gets every figure (the correlation figure without its theory line)."""
    old = shutil.copytree(tanh_run, tmp_path / "old-run", ignore=shutil.ignore_patterns("plots"))
    layers = pd.read_csv(old / "layers.csv")
    layers.drop(columns=[c for c in layers if c.startswith("theory_")]).to_csv(old / "layers.csv", index=False)
    (old / "histograms.csv").unlink()
    (old / "summary.json").unlink()
    paths = plots.plot_run(old, fmt="svg")
    assert {p.name for p in paths} == {f"{name}.svg" for name in RUN_PLOTS}
    for path in paths:
        text = path.read_text()
        assert "<svg" in text[:2000] and text.rstrip().endswith("</svg>")
        assert len(text) > 20_000, f"{path} is suspiciously small"


@pytest.mark.slow
def test_plot_compare_creates_out_dir(tanh_run, exploding_run, tmp_path):
    out = tmp_path / "nested" / "compare"
    paths = plots.plot_compare([tanh_run, exploding_run], out)
    assert {p.name for p in paths} == {"compare_variance.png", "compare_weight_grad.png"}
    assert all(p.parent == out for p in paths)
    assert_pngs(paths, {"compare_variance", "compare_weight_grad"})


def test_label_from_run_config(tanh_run):
    cfg = results.read_run(tanh_run)["config"]
    assert plots.label(cfg) == "glorot_uniform (gain 1) · tanh · MLP depth 6 × width 32 · 2 seeds"


def test_label_from_flat_config():
    flat = {"init": "he_normal", "gain": 2**0.5, "act": "leaky_relu", "slope": 0.2, "arch": "cnn", "depth": 10,
            "width": 16, "image_size": 32, "seeds": 1}
    assert plots.label(flat) == ("he_normal (gain 1.414) · leaky_relu (slope 0.2) · "
                                 "CNN depth 10 × 16 channels (32² images) · 1 seed")


def test_overlay_labels_keep_only_what_differs():
    a = {"config": {"init": "glorot_uniform", "act": "tanh", "arch": "mlp", "depth": 50, "width": 512, "seeds": 3},
         "init_params": {"gain": 1.0, "distribution": "uniform"}}
    b = {"config": {**a["config"], "act": "relu", "depth": 100}, "init_params": a["init_params"]}
    labels, common = labels_mod.distinguishing_labels([a, b], ["run-a", "run-b"])
    assert labels == ["tanh · depth 50", "relu · depth 100"]
    assert common == "glorot_uniform (gain 1) · MLP width 512 · 3 seeds"
    same, _ = labels_mod.distinguishing_labels([a, a], ["run-a", "run-b"])
    assert same == ["run-a", "run-b"]
    reseeded = {"config": {**a["config"], "seed": 7}, "init_params": a["init_params"]}
    first = {**a, "config": {**a["config"], "seed": 0}}
    by_seed, common = labels_mod.distinguishing_labels([first, reseeded], ["x", "y"])
    assert by_seed == ["seed 0", "seed 7"] and "seed" not in common.replace("seeds", "")


@pytest.mark.parametrize("module", sorted(Path(plots.__file__).parent.glob("*.py")), ids=lambda p: p.stem)
def test_no_pyplot_and_no_torch(module):
    """No module of the plots package imports pyplot (global state) or torch (slow to import, and not needed to
    redraw a run from its files)."""
    tree = ast.parse(module.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {f"{node.module}.{alias.name}" if node.module else alias.name
                 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not [m for m in imported if "pyplot" in m or m.split(".")[0] == "torch"]


# ------------------------------------------------------------------------ what the figures show


def seed_means(layers: pd.DataFrame, column: str, geometric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(layers, the mean over seeds of `column` at each): geometric for variances, arithmetic for fractions and
    correlations; nan at a layer where a seed is not finite (or not positive, for a geometric mean)."""
    table = layers.pivot(index="layer", columns="seed", values=column).sort_index().to_numpy(dtype=float)
    with np.errstate(all="ignore"):
        if geometric:
            ok = np.isfinite(table) & (table > 0)
            mean = np.exp(np.log(np.where(ok, table, 1.0)).mean(axis=1))
        else:
            ok = np.isfinite(table)
            mean = np.where(ok, table, 0.0).mean(axis=1)
    return np.sort(layers["layer"].unique()).astype(float), np.where(ok.all(axis=1), mean, np.nan)


def line_labelled(ax, label: str):
    """The line labelled `label`, or `label: inf/nan` / `label: all 0` where none of its values can be drawn."""
    lines = [line for line in ax.get_lines() if line.get_label() in (label, f"{label}: inf/nan", f"{label}: all 0")]
    assert len(lines) == 1, (label, [line.get_label() for line in ax.get_lines()])
    return lines[0]


def dashed_line_coloured(ax, colour):
    """The theory line drawn beside a measured one: dashed, in its colour."""
    lines = [line for line in ax.get_lines() if line.get_linestyle() == "--" and line.get_color() == colour]
    assert len(lines) == 1, colour
    return lines[0]


def assert_line(line, x, y, rtol=1e-12):
    np.testing.assert_array_equal(line.get_xdata(), x)
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), y, rtol=rtol, equal_nan=True)


def legend_texts(ax) -> list[str]:
    assert ax.get_legend() is not None, ax.get_title(loc="left")
    return [t.get_text() for t in ax.get_legend().get_texts()]


def assert_not_empty(ax):
    """Something drawn: a line with a finite point, or a histogram's bars."""
    finite = any(np.isfinite(np.asarray(line.get_ydata(), dtype=float)).any() for line in ax.get_lines())
    assert finite or ax.patches, ax.get_title(loc="left")


PER_LAYER = {  # figure: the columns of each panel, and whether they are variances (geometric mean, log y)
    "variance": ([("act_var", "preact_var"), ("grad_preact_var", "grad_act_var")], True),
    "weight_grad": ([("weight_grad_var",), ("weight_var",)], True),
    "saturation": ([("saturated_frac",), ("zero_frac",)], False),
    "correlation": ([("preact_corr",)], False),
    "spp": ([("chan_sq_mean",), ("chan_var",)], True),  # a plain network: no branch
}


@pytest.mark.parametrize("name", list(PER_LAYER))
def test_per_layer_figures_draw_the_mean_over_seeds_of_the_csv(tanh_run, name):
    """Each line is the mean over seeds of its layers.csv column (geometric for variances, on a log y axis), its
    theory_ column beside it dashed in its colour where the run has one; every panel has labelled axes, a legend
    naming its lines (and the theory's dashes) and something drawn."""
    run = results.read_run(tanh_run)
    layers = pd.read_csv(tanh_run / "layers.csv")
    fig = getattr(run_figures, f"{name}_figure")(run)
    panels, variances = PER_LAYER[name]
    assert len(fig.axes) == len(panels)
    assert fig.get_suptitle().startswith(plots.label(run["config"]))
    for ax, columns in zip(fig.axes, panels):
        assert ax.get_yscale() == ("log" if variances else "linear")
        assert ax.get_xlabel() == "layer l" and ax.get_ylabel()
        theory = [c for c in columns if f"theory_{c}" in layers]
        assert legend_texts(ax) == [NAMES[c] for c in columns] + (["mean-field theory"] if theory else [])
        for column in columns:
            measured = line_labelled(ax, NAMES[column])
            assert measured.get_linestyle() == "-"
            assert_line(measured, *seed_means(layers, column, variances))
            if column in theory:
                assert_line(dashed_line_coloured(ax, measured.get_color()),
                            *seed_means(layers, f"theory_{column}", variances))
        assert_not_empty(ax)
    if not variances:  # fractions and correlations: the whole of [0, 1] shows
        assert all(ax.get_ylim()[0] <= 0 and ax.get_ylim()[1] >= 1 for ax in fig.axes)


def test_spp_figure_of_a_residual_run_has_the_branch_panel(residual_run):
    """Brock et al.'s three panels for a residual network: channel squared mean, channel variance and branch
    variance of layers.csv, each the geometric mean over seeds on a log axis with its theory dashed beside it; the
    stem (layer 1) has no branch, and no mark calls that an overflow."""
    run = results.read_run(residual_run)
    layers = pd.read_csv(residual_run / "layers.csv")
    fig = run_figures.spp_figure(run)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["Average channel squared mean",
                                                             "Average channel variance", "Residual branch variance"]
    for ax, column in zip(fig.axes, ("chan_sq_mean", "chan_var", "branch_var")):
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "layer l" and column in ax.get_ylabel()
        assert legend_texts(ax) == [NAMES[column], "mean-field theory"]
        measured = line_labelled(ax, NAMES[column])
        assert_line(measured, *seed_means(layers, column, geometric=True))
        assert_line(dashed_line_coloured(ax, measured.get_color()),
                    *seed_means(layers, f"theory_{column}", geometric=True))
        assert not [t for t in ax.texts if "non-finite" in t.get_text() or "underflow" in t.get_text()]
    assert np.isnan(line_labelled(fig.axes[2], NAMES["branch_var"]).get_ydata()[0])


def test_the_branch_panel_of_an_overflowing_residual_run_marks_where_its_branches_overflow(tmp_path):
    """Branch variance doubles per ReLU/He block without a norm, so float32 overflows after about 128 blocks. The
    stem's empty branch_var (layer 1) is no overflow: the mark names the first block whose branch is inf/nan."""
    path = small_run(tmp_path / "overflow", block="residual", act="relu", init="he_normal", depth=200, seeds=1)
    layers = pd.read_csv(path / "layers.csv")
    blocks = layers[layers["layer"] > 1]
    first = int(blocks["layer"][~np.isfinite(blocks["branch_var"])].min())
    assert 100 < first < 200
    branch = run_figures.spp_figure(results.read_run(path)).axes[2]
    assert [t.get_text().strip() for t in branch.texts if "non-finite" in t.get_text()] == \
        [f"non-finite from layer {first}"]


def test_a_residual_run_gets_every_figure(residual_run, monkeypatch):
    assert figures_made(residual_run, monkeypatch) == RUN_PLOTS


def test_skipinit_branches_are_named_zero_by_construction(tmp_path):
    """alpha = 0: the branch panel says every branch is 0 because alpha is, instead of drawing nothing or marking
    an underflow; dL/dh likewise in the variance figure."""
    run = results.read_run(small_run(tmp_path / "skipinit", block="residual", branch_scale=0.0, act="relu"))
    spp = run_figures.spp_figure(run).axes[2]
    texts = [t.get_text() for t in spp.texts]
    assert "0 at every block: alpha = 0" in texts and not [t for t in texts if "underflow" in t]
    backward = run_figures.variance_figure(run).axes[1]
    assert any("alpha = 0" in label for label in legend_texts(backward))
    assert not [t for t in backward.texts if "underflow" in t.get_text()]


def test_theory_figure_of_a_residual_network_adds_the_spp_row():
    """`initprobe theory --block residual`: under forward, backward and the correlation map, the predicted
    channel squared mean, channel variance and branch variance (from layer 2: the stem has no branch); a plain
    network with a norm gets the two channel panels."""
    frame, scales, cfg = theory_inputs(act="relu", init="he_normal", block="residual", norm="batch")
    fig = theory_figures.theory_figure(frame, scales, cfg)
    assert len(fig.axes) == 6
    for ax, column in zip(fig.axes[3:], ("chan_sq_mean", "chan_var", "branch_var")):
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "layer l" and ax.get_ylabel()
        assert legend_texts(ax) == [NAMES[column]]
        rows = frame[frame["layer"] > 1] if column == "branch_var" else frame
        assert_line(line_labelled(ax, NAMES[column]), rows["layer"].to_numpy(dtype=float),
                    rows[f"theory_{column}"].to_numpy(dtype=float))
        assert not ax.texts  # no overflow mark
    frame, scales, cfg = theory_inputs(act="tanh", norm="layer")
    assert len(theory_figures.theory_figure(frame, scales, cfg).axes) == 5


def test_theory_columns_are_drawn_where_the_run_has_them(tanh_run):
    """The theory lines of variance_figure: act_var, preact_var and both gradients all have theory_ columns here,
    so each panel has two dashed lines; weight_var has none, so its panel has no dashes."""
    run = results.read_run(tanh_run)
    fwd, bwd = run_figures.variance_figure(run).axes
    for ax in (fwd, bwd):
        assert sum(line.get_linestyle() == "--" for line in ax.get_lines()) == 2
    weights = run_figures.weight_grad_figure(run).axes[1]
    assert not any(line.get_linestyle() == "--" for line in weights.get_lines())


def test_histograms_show_each_recorded_layers_distribution(tanh_run):
    """One outline a recorded layer, over the CSV's bins, with the fraction of the layer's values in each bin (so
    they add up to 1), labelled with its layer."""
    run = results.read_run(tanh_run)
    hist = pd.read_csv(tanh_run / "histograms.csv")
    fig = run_figures.histograms_figure(run)
    assert len(fig.axes) == 2
    for ax, quantity in zip(fig.axes, ("act", "grad_preact")):
        rows = hist[hist["quantity"] == quantity]
        recorded = sorted(rows["layer"].unique())
        assert legend_texts(ax) == [f"layer {layer}" for layer in recorded]
        assert len(ax.patches) == len(recorded) and ax.get_xlabel() and ax.get_ylabel()
        for patch, layer in zip(ax.patches, recorded):
            bins = rows[rows["layer"] == layer].sort_values("bin_left")
            values, edges, _ = patch.get_data()
            np.testing.assert_allclose(values, bins["count"] / bins["count"].sum(), rtol=1e-12)
            np.testing.assert_allclose(edges, [*bins["bin_left"], bins["bin_right"].iloc[-1]], rtol=1e-12)


@pytest.mark.parametrize("which", ["exploding", "vanishing"])
def test_variance_figure_marks_where_the_signal_leaves_the_float_range(exploding_run, vanishing_run, which):
    """Overflow: the lines stop at the first layer a seed is inf/nan, and a mark names that layer; underflow to 0:
    the same, with its own mark. The drawn points are still the geometric means of the finite ones."""
    path = {"exploding": exploding_run, "vanishing": vanishing_run}[which]
    layers = pd.read_csv(path / "layers.csv")
    fwd = run_figures.variance_figure(results.read_run(path)).axes[0]
    values = layers[["act_var", "preact_var"]].to_numpy(dtype=float)
    if which == "exploding":
        first = int(layers["layer"][~np.isfinite(values).all(axis=1)].min())
        mark = f"non-finite from layer {first}"
    else:
        first = int(layers["layer"][(values == 0).any(axis=1)].min())
        mark = f"underflow to 0 from layer {first}"
    assert mark in [t.get_text().strip() for t in fwd.texts]
    line = line_labelled(fwd, NAMES["act_var"])
    x, want = seed_means(layers, "act_var", geometric=True)
    assert_line(line, x, want)
    y = np.asarray(line.get_ydata(), dtype=float)
    assert np.isfinite(y[: first - 1]).all() and not np.isfinite(y[first - 1:]).any()
    assert_not_empty(fwd)


def test_compare_figures_draw_each_run_in_its_colour_with_its_label(tanh_run, exploding_run, tmp_path, monkeypatch):
    """plot_compare's overlays (drawn, not saved): per panel, each run's first column is a solid line labelled by
    what tells the runs apart, the second dotted in the same colour, both the geometric mean over its seeds; the
    figure's legend names the runs."""
    drawn = {}
    monkeypatch.setattr(compare_figures, "save", lambda fig, path, fmt: drawn.setdefault(path.stem, fig) and path)
    plots.plot_compare([tanh_run, exploding_run], tmp_path / "compare")
    labels, _ = labels_mod.distinguishing_labels([results.read_run(r)["config"] for r in (tanh_run, exploding_run)],
                                                 [tanh_run.name, exploding_run.name])
    assert [t.get_text() for t in drawn["compare_variance"].legends[0].get_texts()] == labels
    panels = {"compare_variance": [("act_var", "preact_var"), ("grad_preact_var", "grad_act_var")],
              "compare_weight_grad": [("weight_grad_var",), ("weight_var",)]}
    for name, fig in drawn.items():
        for ax, columns in zip(fig.axes, panels[name]):
            assert ax.get_yscale() == "log" and ax.get_xlabel() == "layer l" and ax.get_ylabel()
            assert legend_texts(ax) == [NAMES[c] for c in columns]  # which line style is which quantity
            for run_dir, label in zip((tanh_run, exploding_run), labels):
                layers = pd.read_csv(run_dir / "layers.csv")
                solid = line_labelled(ax, label)
                assert_line(solid, *seed_means(layers, columns[0], geometric=True))
                for column in columns[1:]:
                    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"  # not a mark's axvline:
                              and line.get_color() == solid.get_color() and np.ptp(line.get_xdata()) > 0]
                    assert len(dotted) == 1
                    assert_line(dotted[0], *seed_means(layers, column, geometric=True))
            assert_not_empty(ax)


# ------------------------------------------------------------------------ a --model's figures


@pytest.fixture(scope="module")
def model_runs(tmp_path_factory):
    """Runs of test_models' modules: the residual net (BatchNorm, LayerNorms, an image made tokens) with its own
    init and with glorot_uniform, 2 seeds each, and an MLP of 40 Linear layers (more modules than an axis names)."""
    root = tmp_path_factory.mktemp("model_runs")

    def model_run(name, **kwargs):
        return run(RunConfig(out=str(root / name), device=DEVICE, plots=False, **kwargs)).path

    net = dict(model="test_models:make_net", input_shape=[3, 4, 4], seeds=2)
    return {"own": model_run("own", **net), "glorot": model_run("glorot", **net, init="glorot_uniform"),
            "mlp": model_run("mlp", model="test_models:make_mlp", input_shape=[16], seeds=1)}


def module_labels(layers: pd.DataFrame) -> list[str]:
    first = layers[layers["seed"] == layers["seed"].min()].sort_values("layer")
    return [m if c == 1 else f"{m} #{c}" for m, c in zip(first["module"], first["call"])]


def tick_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def test_model_variance_figure_names_its_modules_every_kth_beyond_the_limit(model_runs):
    """40 Linear layers, at most MAX_NAMES (32) names an axis: every 2nd named, in forward order; log y, the lines
    the seed means of act_var and grad_act_var; the verdicts name the modules they compare."""
    from initprobe.plots.draw import MAX_NAMES, MODEL_NAMES

    run_ = results.read_run(model_runs["mlp"])
    layers, names = run_["layers"], module_labels(run_["layers"])
    assert len(names) == 40 and MAX_NAMES == 32
    fig = run_figures.variance_figure(run_)
    for ax, column in zip(fig.axes, ("act_var", "grad_act_var")):
        assert ax.get_yscale() == "log" and ax.get_ylabel()
        assert tick_labels(ax) == names[::2] and list(ax.get_xticks()) == list(range(1, 41, 2))
        assert ax.get_xlabel() == "module, in forward order (every 2nd named)"
        assert legend_texts(ax) == [MODEL_NAMES[column]]
        assert_line(line_labelled(ax, MODEL_NAMES[column]), *seed_means(layers, column, geometric=True))
    verdicts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(v.startswith("0 → 78 ×") for v in verdicts) and any(v.startswith("78 → 0 ×") for v in verdicts)


def test_model_spp_figure_leaves_out_channel_means_that_are_rounding(model_runs):
    """BatchNorm's output has channel means 0 by construction; computed in float32 their squares are ~1e-15 of the
    variance: not drawn, and a note says so. Everything else is the seed mean of its column; the token panel draws
    the (N, T, C) outputs' token_corr on a linear axis, module names under both panels."""
    run_ = results.read_run(model_runs["own"])
    layers = run_["layers"]
    fig = run_figures.spp_figure(run_)
    channels, tokens = fig.axes
    assert channels.get_yscale() == "log" and tokens.get_yscale() == "linear"
    for ax in fig.axes:
        assert tick_labels(ax) == module_labels(layers)
    x, want = seed_means(layers, "chan_sq_mean", geometric=True)
    bn = module_labels(layers).index("bn")
    assert want[bn] < 1e-10 * seed_means(layers, "chan_var", geometric=True)[1][bn]  # rounding, not a signal
    want[bn] = np.nan
    assert_line(line_labelled(channels, NAMES["chan_sq_mean"]), x, want)
    assert_line(line_labelled(channels, NAMES["chan_var"]), *seed_means(layers, "chan_var", geometric=True))
    assert any("0 up to rounding at 1 module" in t.get_text() for t in channels.texts)
    assert_line(line_labelled(tokens, NAMES["token_corr"]), *seed_means(layers, "token_corr", geometric=False))
    assert np.isfinite(seed_means(layers, "token_corr", geometric=False)[1]).sum() == 11  # every row after bn


def weight_panel_checks(ax, layers) -> None:
    """A --model's weight panel: points (unlike modules are no progression), no 'underflow' for the norms'
    constant gamma = 1 (variance 0), which a note counts instead."""
    constant = int((layers[layers["seed"] == layers["seed"].min()]["weight_var"] == 0).sum())
    assert constant == 3  # bn and the two blocks' LayerNorms
    assert not any("underflow" in t.get_text() for t in ax.texts)
    assert any(f"Var(W) = 0 at {constant} modules" in t.get_text() for t in ax.texts)
    assert all(line.get_linestyle() == "None" and line.get_marker() == "o" for line in ax.get_lines())


def test_model_weight_figure_draws_weights_as_points_and_counts_constant_ones(model_runs):
    run_ = results.read_run(model_runs["own"])
    layers = run_["layers"]
    grads, weights = run_figures.weight_grad_figure(run_).axes
    weight_panel_checks(weights, layers)
    x, want = seed_means(layers, "weight_var", geometric=True)
    assert_line(weights.get_lines()[0], x, np.where(want > 0, want, np.nan))
    assert_line(line_labelled(grads, "$\\mathrm{Var}(\\partial L/\\partial W)$"),
                *seed_means(layers, "weight_grad_var", geometric=True))
    for ax in (grads, weights):
        assert ax.get_yscale() == "log" and tick_labels(ax) == module_labels(layers)


def test_overlay_of_two_inits_of_one_model(model_runs, tmp_path, monkeypatch):
    """plot RUN RUN of one model's own init and glorot_uniform: module names on x, each run its label and the seed
    means of its columns, the weights as points with the constant ones counted."""
    drawn = {}
    monkeypatch.setattr(compare_figures, "save", lambda fig, path, fmt: drawn.setdefault(path.stem, fig) and path)
    dirs = [model_runs["own"], model_runs["glorot"]]
    plots.plot_compare(dirs, tmp_path / "both")
    assert set(drawn) == {"compare_variance", "compare_weight_grad"}
    fig = drawn["compare_variance"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["the model's own init", "glorot_uniform (gain 1)"]
    for ax, column in zip(fig.axes, ("act_var", "grad_act_var")):
        assert ax.get_yscale() == "log"
        for run_dir, label in zip(dirs, ["the model's own init", "glorot_uniform (gain 1)"]):
            layers = pd.read_csv(run_dir / "layers.csv")
            assert tick_labels(ax) == module_labels(layers)
            assert_line(line_labelled(ax, label), *seed_means(layers, column, geometric=True))
    weight_panel_checks(drawn["compare_weight_grad"].axes[1], pd.read_csv(dirs[0] / "layers.csv"))


def test_a_model_figure_makes_room_for_its_names_and_its_title():
    """Module names stand upright under the axes: the figure grows by the longest one shown (BERT's run to 42
    characters), so the panels keep their height. A title longer than the figure is wide (a model's arguments)
    breaks between its ' · ' pieces, and inside a piece only if that alone is too long; nothing is lost."""
    from matplotlib.figure import Figure

    from initprobe.plots.draw import FIGSIZE, NAME_INCHES, TITLE_CHARS_PER_INCH, model_figsize, wrapped

    assert model_figsize(["wte", "encoder.layer.0.attention.output.LayerNorm"]) == (FIGSIZE[0],
                                                                                  FIGSIZE[1] + 42 * NAME_INCHES)
    fig = Figure(figsize=FIGSIZE)
    width = int(FIGSIZE[0] * TITLE_CHARS_PER_INCH)
    args = ", ".join(f"argument_{i}={i}" for i in range(12))
    title = f"hf:bert ({args}) · the model's own init · record params · 2 seeds"
    lines = wrapped(fig, title).split("\n")
    assert len(lines) == 3 and all(len(line) <= width for line in lines)
    assert lines[-1] == "the model's own init · record params · 2 seeds"
    assert " ".join(lines[:2]) == f"hf:bert ({args})"
    assert wrapped(fig, "a · b\nc") == "a · b\nc"


# ------------------------------------------------------------------------ correlation and Jacobian figures


def copy_run(run_dir, dest):
    return shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("plots"))


def figures_made(run_dir, monkeypatch) -> set[str]:
    """The figures plot_run makes for `run_dir` (made, not rendered or saved)."""
    made = []
    monkeypatch.setattr(run_figures, "save", lambda fig, path, fmt: made.append(path.stem))
    paths = plots.plot_run(run_dir, workers=1)
    assert [p.stem for p in paths] == made
    return set(made)


def test_run_without_correlation_column_has_no_correlation_figure(tanh_run, tmp_path, monkeypatch):
    old = copy_run(tanh_run, tmp_path / "old-run")
    layers = pd.read_csv(old / "layers.csv")
    layers.drop(columns=["preact_corr", "theory_preact_corr"]).to_csv(old / "layers.csv", index=False)
    assert figures_made(old, monkeypatch) == RUN_PLOTS - {"correlation"}


def test_run_without_channel_statistics_has_no_spp_figure(tanh_run, tmp_path, monkeypatch):
    """A run directory written before the channel statistics existed gets every other figure."""
    old = copy_run(tanh_run, tmp_path / "old-run")
    layers = pd.read_csv(old / "layers.csv")
    layers.drop(columns=[c for c in layers if "chan_" in c or "branch_" in c]).to_csv(old / "layers.csv", index=False)
    assert figures_made(old, monkeypatch) == RUN_PLOTS - {"spp"}


def test_jacobian_figure_only_with_jacobian_csv(jacobian_run, tmp_path, monkeypatch):
    assert figures_made(jacobian_run, monkeypatch) == RUN_PLOTS | {"jacobian"}
    without = copy_run(jacobian_run, tmp_path / "no-jacobian")
    (without / "jacobian.csv").unlink()
    assert figures_made(without, monkeypatch) == RUN_PLOTS


@pytest.mark.parametrize("values", [
    pytest.param([np.inf, np.nan, 0.0, 1e-30, 0.5, 2.0, 1e30], id="mixed"),  # some not drawable
    pytest.param([np.nan, np.inf, 0.0], id="none-drawable", marks=pytest.mark.slow),
    pytest.param([0.7, 0.7, 0.7], id="all-equal", marks=pytest.mark.slow),
])
def test_jacobian_figure_with_non_finite_values(jacobian_run, tmp_path, values):
    """Singular values and predictions that are inf, nan or 0 (as summary.json writes them: strings) render."""
    bad = copy_run(jacobian_run, tmp_path / "bad")
    pd.DataFrame({"seed": 0, "input": 0, "index": range(len(values)), "singular_value": values}).to_csv(
        bad / "jacobian.csv", index=False)
    summary = pd.read_json(bad / "summary.json", typ="series").to_dict()
    summary["jacobian"].update(mean_sq_sv="inf", var_sq_sv="nan", theory_mean_sq_sv=0.0)
    summary["jacobian"]["free_probability"].update(mean_sq_sv="nan", at_q="inf")
    (bad / "summary.json").write_text(json.dumps(summary))
    path = run_figures.save(run_figures.jacobian_figure(results.read_run(bad)), bad / "plots" / "jacobian.png", "png")
    assert png_size(path) == SIZES["jacobian"] and path.stat().st_size > 20_000


# ------------------------------------------------------------------------------------ theory and phase


def theory_inputs(**kwargs):
    cfg = RunConfig(**{"depth": 12, "width": 32, **kwargs})
    frame, scales = predict.for_config(cfg)
    return frame, scales, config.asdict(cfg)


def assert_image(path, fmt):
    assert path.is_file() and path.suffix == f".{fmt}"
    data = path.read_bytes()
    assert len(data) > 10_000, f"{path} is suspiciously small"
    assert {"png": data[:8] == PNG_SIGNATURE, "svg": b"<svg" in data[:2000], "pdf": data[:5] == b"%PDF-"}[fmt]


@pytest.mark.parametrize("fmt", ["png", pytest.param("svg", marks=pytest.mark.slow),
                                 pytest.param("pdf", marks=pytest.mark.slow)])
def test_plot_theory_writes_theory_file(tmp_path, fmt):
    frame, scales, cfg = theory_inputs(act="tanh", init="glorot_normal")
    paths = plots.plot_theory(frame, scales, cfg, tmp_path / "out", fmt)
    assert [p.name for p in paths] == [f"theory.{fmt}"]
    assert paths[0].parent == tmp_path / "out"
    assert_image(paths[0], fmt)


@pytest.mark.parametrize("kwargs", [
    # the theory overflows to inf at layer ~114; underflows to 0; is exactly 0 everywhere
    pytest.param({"act": "linear", "init": "normal", "std": 1.0, "depth": 200}, id="overflow"),
    pytest.param({"act": "relu", "init": "normal", "std": 0.01, "depth": 300}, id="underflow", marks=pytest.mark.slow),
    pytest.param({"act": "tanh", "init": "zeros"}, id="zeros", marks=pytest.mark.slow),
])
def test_plot_theory_with_inf_nan_and_zero(tmp_path, kwargs):
    frame, scales, cfg = theory_inputs(**kwargs)
    values = frame.filter(like="theory_").to_numpy()
    assert (~np.isfinite(values)).any() or (values == 0).any(), "meant to reach inf/nan or 0"
    assert_image(plots.plot_theory(frame, scales, cfg, tmp_path, "png")[0], "png")


def test_plot_theory_with_nothing_finite(tmp_path):
    frame, scales, cfg = theory_inputs(act="tanh", init="glorot_normal")
    columns = [c for c in frame if c.startswith("theory_")]
    frame[columns] = np.nan
    scales = {k: float("nan") if isinstance(v, float) else v for k, v in scales.items()}
    assert_image(plots.plot_theory(frame, scales, cfg, tmp_path, "png")[0], "png")


@pytest.fixture(scope="module")
def phase_inputs():
    sw2, sb2 = np.linspace(0.5, 3.0, 6), np.linspace(0.0, 0.3, 4)
    return predict.phase_grid("tanh", sw2, sb2), sb2, theory.critical_line("tanh", sb2)


@pytest.mark.parametrize("fmt", ["png", pytest.param("pdf", marks=pytest.mark.slow)])
def test_plot_phase_writes_phase_file(tmp_path, phase_inputs, fmt):
    grid, sb2, critical = phase_inputs
    paths = plots.plot_phase(grid, sb2, critical, None, "tanh", tmp_path, fmt)
    assert [p.name for p in paths] == [f"phase.{fmt}"]
    assert_image(paths[0], fmt)


def test_plot_phase_with_measured_and_bad_values(tmp_path, phase_inputs):
    """Measured points, some inf/nan/0; chi_1 of the grid partly inf/nan/0; no critical line anywhere."""
    grid, sb2, critical = phase_inputs
    grid = grid.copy()
    grid.loc[:2, "chi_1"] = [np.inf, np.nan, 0.0]
    measured = pd.DataFrame({"sigma_w2": [0.5, 1.0, 2.0, 3.0, 3.0], "sigma_b2": [0.0, 0.1, 0.2, 0.0, 0.3],
                             "measured_chi_1": [0.5, np.inf, np.nan, 0.0, 1.3]})
    path = plots.plot_phase(grid, sb2, np.full_like(critical, np.nan), measured, "tanh", tmp_path, "png")[0]
    assert_image(path, "png")
    assert_image(plots.plot_phase(grid, sb2, critical, measured, "tanh", tmp_path / "b", "png")[0], "png")


def test_theory_figure_draws_the_predictions(tmp_path):
    """`initprobe theory`'s figure: each predicted column of the frame as a dashed line, variances on log y axes,
    the correlation map on [0, 1]; axes labelled, legends naming the lines."""
    frame, scales, cfg = theory_inputs(act="tanh", init="glorot_normal")
    fig = theory_figures.theory_figure(frame, scales, cfg)
    assert len(fig.axes) == 3
    panels = [("act_var", "preact_var"), ("grad_preact_var", "grad_act_var"), ("preact_corr",)]
    for ax, columns in zip(fig.axes, panels):
        assert ax.get_yscale() == ("log" if columns != ("preact_corr",) else "linear")
        assert ax.get_xlabel() == "layer l" and ax.get_ylabel()
        assert legend_texts(ax) == [NAMES[c] for c in columns]
        for column in columns:
            line = line_labelled(ax, NAMES[column])
            assert line.get_linestyle() == "--"
            assert_line(line, frame["layer"].to_numpy(dtype=float), frame[f"theory_{column}"].to_numpy(dtype=float))
        assert_not_empty(ax)


def test_phase_figure_colours_chi_1_and_draws_the_critical_line(phase_inputs):
    """The heatmap's cells are log10(chi_1) of the grid (sigma_b^2 rows, sigma_w^2 columns), the critical line goes
    through the given points, measured points sit where they were measured; axes and colour bar labelled."""
    grid, sb2, critical = phase_inputs
    measured = pd.DataFrame({"sigma_w2": [0.5, 2.0], "sigma_b2": [0.0, 0.2], "measured_chi_1": [0.6, 1.4]})
    fig = theory_figures.phase_figure(grid, sb2, critical, measured, "tanh")
    ax, bar = fig.axes  # the diagram and its colour bar
    mesh = next(c for c in ax.collections if type(c).__name__ == "QuadMesh")
    chi = grid.pivot(index="sigma_b2", columns="sigma_w2", values="chi_1").sort_index().sort_index(axis=1)
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(chi.shape), np.log10(chi.to_numpy()), rtol=1e-12)
    line = line_labelled(ax, r"critical line $\chi_1 = 1$")
    np.testing.assert_allclose(line.get_xdata(), critical)
    np.testing.assert_allclose(line.get_ydata(), sb2)
    points = next(c for c in ax.collections if type(c).__name__ == "PathCollection")
    np.testing.assert_allclose(points.get_offsets(), measured[["sigma_w2", "sigma_b2"]].to_numpy())
    assert "sigma_w" in ax.get_xlabel() and "sigma_b" in ax.get_ylabel() and "chi_1" in bar.get_ylabel()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [r"critical line $\chi_1 = 1$",
                                                                   "measured: gradient gain per layer"]


@pytest.mark.slow
def test_plot_run_writes_every_figure_alike_in_one_process_or_two(tanh_run, tmp_path):
    """Every figure of a run, a PNG of its size, in the run's plots/; drawn with a forked second process taking half
    the figures, the same files byte for byte."""
    one, two = copy_run(tanh_run, tmp_path / "one"), copy_run(tanh_run, tmp_path / "two")
    paths_one = plots.plot_run(one, workers=1)
    assert all(p.parent == one / "plots" for p in paths_one)
    assert_pngs(paths_one, RUN_PLOTS)
    paths_two = plots.plot_run(two, workers=2)
    assert [p.name for p in paths_one] == [p.name for p in paths_two]
    for a, b in zip(paths_one, paths_two):
        assert a.read_bytes() == b.read_bytes(), a.name
