"""Figures of hostile runs: an overlay whose runs differ in many ways keeps its whole legend inside the figure;
sweep figures write numbers as numbers, also those read back from a runs.csv column that mixes text and numbers;
a run whose variances are all exactly 0 is not said to be inf/nan."""

import io

import pandas as pd
import pytest

from initprobe import RunConfig, analysis, results, run
from initprobe.plots import compare_figures, labels, run_figures, sweep_figures

TINY = {"depth": 4, "width": 8, "batch": 4, "seeds": 1, "plots": False, "device": "cpu"}


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three runs that differ in init, its options, activation, architecture, size, bias, dtype and seeds: the
    overlay's labels are long."""
    tmp = tmp_path_factory.mktemp("runs")
    configs = [dict(act="leaky_relu", slope=0.2, init="variance_scaling", scale=2.0, mode="fan_avg",
                    distribution="truncated_normal", bias="normal", bias_std=0.1, dtype="float64", seeds=2),
               dict(act="tanh", init="he_uniform", gain=1.5, mode="fan_out", depth=6, width=12, seeds=3),
               dict(arch="cnn", act="gelu", init="orthogonal", gain=1.2, bias="torch_default", image_size=6)]
    return [run(RunConfig(out=str(tmp / f"r{i}"), **{**TINY, **c})).path for i, c in enumerate(configs)]


def test_the_overlay_legend_lies_inside_the_figure(three_runs):
    runs = [results.read_run(d) for d in three_runs]
    names, common = labels.distinguishing_labels([r["config"] for r in runs], [d.name for d in three_runs])
    assert min(len(n) for n in names) > 60  # long enough that three in a row cannot fit
    fig = compare_figures.compare_figure(runs, names, common, [(("act_var",), "forward", "forward"),
                                                               (("grad_preact_var",), "backward", "backward")])
    fig.savefig(io.BytesIO(), format="png")  # lays the figure out
    (legend,) = fig.legends
    box, page = legend.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, (box, page)
    shown = [t.get_text().replace("\n", " ") for t in legend.get_texts()]
    assert shown == names  # every label whole (wrapped, if at all, at its spaces)
    for text in legend.get_texts():
        extent = text.get_window_extent()
        assert page.x0 <= extent.x0 and extent.x1 <= page.x1


def test_sweep_figure_labels_write_numbers_as_numbers(tmp_path):
    """A column that holds 'auto' beside numbers is text when runs.csv is read back: its numbers are still written
    as numbers (not 123456789012.5 or 1e+20 as they happen to be in the file)."""
    written = pd.DataFrame({"run_id": list("abcd"), "act": ["tanh"] * 4, "init": ["glorot_uniform"] * 4,
                            "gain": ["auto", 123456789012.5, 1e20, 0.5]})
    written.to_csv(tmp_path / "runs.csv", index=False)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert not pd.api.types.is_numeric_dtype(runs["gain"])
    groups = sweep_figures.assign_groups(runs, ["gain"])
    assert list(groups["line"]) == ["gain=auto", "gain=1.23457e+11", "gain=1e+20", "gain=0.5"]


def test_a_run_whose_variances_are_all_zero_is_not_called_inf_or_nan(tmp_path):
    """init zeros: every activation variance is exactly 0, so the forward ratio is 0/0 (nan) with every statistic
    finite; the title says that, and keeps '(inf/nan)' for a run that overflows."""
    zeros = results.read_run(run(RunConfig(out=str(tmp_path / "zeros"), init="zeros", **TINY)).path)
    assert (zeros["layers"]["act_var"] == 0).all() and zeros["summary"]["first_nonfinite_forward"] is None
    fig = run_figures.variance_figure(zeros)
    forward = fig.axes[0].get_title(loc="right")
    assert forward == "end to end: vanishing (0/0: variances of exactly 0)"
    frame = zeros["layers"].assign(act_var=[1.0, 2.0, float("inf"), float("inf")])
    overflow = analysis.summarize(frame, {})
    assert labels.verdict_text(overflow, "forward") == "end to end: exploding (inf/nan from layer 3)"


def test_labels_wider_than_the_figure_alone_are_wrapped_at_their_spaces():
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(11, 4.2), dpi=150, layout="constrained")
    fig.subplots(1, 2)
    long = " · ".join(f"a long piece of a label, number {i}" for i in range(10))
    compare_figures.run_legend(fig, [Line2D([], [], label=long), Line2D([], [], label="short")])
    fig.savefig(io.BytesIO(), format="png")
    (legend,) = fig.legends
    box, page = legend.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1
    texts = [t.get_text() for t in legend.get_texts()]
    assert "\n" in texts[0] and texts[0].replace("\n", " ") == long and texts[1] == "short"
