"""plots: every figure of a real (small) run is written and is a valid image, also for runs that overflow to
inf/nan or underflow to 0, for old run directories without theory columns or histograms, and as SVG; the
correlation and Jacobian figures exactly when their data exists; the theory and phase figures of
`initprobe theory` / `initprobe phase`, also where the predictions are inf, nan or 0.
Small runs (width 32, batch 16) on TORCH_DEVICE (default cpu); drawing, not probing, is most of the time."""

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
from initprobe.plots import labels as labels_mod
from initprobe.plots import run_figures

DEVICE = os.environ.get("TORCH_DEVICE", "cpu")
BASE_PLOTS = {"variance", "weight_grad", "histograms", "saturation"}
RUN_PLOTS = BASE_PLOTS | {"correlation"}  # every run measures preact_corr
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


def test_plot_run_writes_every_figure(tanh_run):
    paths = plots.plot_run(tanh_run)
    assert all(p.parent == tanh_run / "plots" for p in paths)
    assert_pngs(paths, RUN_PLOTS)


def test_exploding_run_still_plots(exploding_run):
    layers = pd.read_csv(exploding_run / "layers.csv")
    assert np.isinf(layers["act_var"]).any(), "the run was meant to overflow"
    assert not np.isfinite(layers["grad_preact_var"]).all()  # inf, or nan where inf - inf
    assert pd.read_json(exploding_run / "summary.json", typ="series")["first_nonfinite_layer"] is not None
    assert_pngs(plots.plot_run(exploding_run), RUN_PLOTS)


def test_vanishing_run_still_plots(vanishing_run):
    layers = pd.read_csv(vanishing_run / "layers.csv")
    assert (layers["act_var"] == 0).any(), "the run was meant to underflow to exactly 0"
    assert_pngs(plots.plot_run(vanishing_run), RUN_PLOTS)


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


# ------------------------------------------------------------------------ correlation and Jacobian figures


def copy_run(run_dir, dest):
    return shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("plots"))


def test_run_without_correlation_column_has_no_correlation_figure(tanh_run, tmp_path):
    old = copy_run(tanh_run, tmp_path / "old-run")
    layers = pd.read_csv(old / "layers.csv")
    layers.drop(columns=["preact_corr", "theory_preact_corr"]).to_csv(old / "layers.csv", index=False)
    assert_pngs(plots.plot_run(old), BASE_PLOTS)


def test_jacobian_figure_only_with_jacobian_csv(jacobian_run, tmp_path):
    assert_pngs(plots.plot_run(jacobian_run), RUN_PLOTS | {"jacobian"})
    without = copy_run(jacobian_run, tmp_path / "no-jacobian")
    (without / "jacobian.csv").unlink()
    assert_pngs(plots.plot_run(without), RUN_PLOTS)


@pytest.mark.parametrize("values", [
    [np.inf, np.nan, 0.0, 1e-30, 0.5, 2.0, 1e30],  # some not drawable
    [np.nan, np.inf, 0.0],                          # none drawable
    [0.7, 0.7, 0.7],                                # all equal
], ids=["mixed", "none-drawable", "all-equal"])
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


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_plot_theory_writes_theory_file(tmp_path, fmt):
    frame, scales, cfg = theory_inputs(act="tanh", init="glorot_normal")
    paths = plots.plot_theory(frame, scales, cfg, tmp_path / "out", fmt)
    assert [p.name for p in paths] == [f"theory.{fmt}"]
    assert paths[0].parent == tmp_path / "out"
    assert_image(paths[0], fmt)


@pytest.mark.parametrize("kwargs", [
    {"act": "linear", "init": "normal", "std": 1.0, "depth": 200},  # theory overflows to inf at layer ~114
    {"act": "relu", "init": "normal", "std": 0.01, "depth": 300},   # ... and underflows to 0
    {"act": "tanh", "init": "zeros"},                               # all exactly 0
], ids=["overflow", "underflow", "zeros"])
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


@pytest.mark.parametrize("fmt", ["png", "pdf"])
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


def test_figures_drawn_by_two_processes_equal_those_drawn_by_one(tanh_run, tmp_path):
    """plot_run forks a second process to draw half the figures: same files, byte for byte."""
    one, two = copy_run(tanh_run, tmp_path / "one"), copy_run(tanh_run, tmp_path / "two")
    paths_one = plots.plot_run(one, workers=1)
    paths_two = plots.plot_run(two, workers=2)
    assert [p.name for p in paths_one] == [p.name for p in paths_two] and len(paths_one) >= 5
    for a, b in zip(paths_one, paths_two):
        assert a.read_bytes() == b.read_bytes(), a.name
