"""The figures of a training run (`initprobe train`): training (loss and accuracy over the steps),
layers_over_training (Glorot & Bengio 2010, figure 2: each layer's activations over the steps), and run's own
figures of the network at step 0 (variance with its theory, histograms, saturation)."""

import functools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from .. import forking, results, shapes
from ..formatting import number, value
from .draw import (BAND_ALPHA, NONFINITE_COLOUR, add_legend, draw_series, empty_note, log_limits, new_figure, save,
                   seed_matrix, set_log_axis)
from .labels import label
from .run_figures import histograms_figure, saturation_figure, variance_figure

LOSS = (("train_loss", "train (its minibatch)", "#9467bd"), ("test_loss", "held out", "#1f77b4"))
ACCURACY = (("train_accuracy", "train (its minibatch)", "#9467bd"), ("test_accuracy", "held out", "#1f77b4"))
CHANCE_COLOUR = "0.45"


def training_text(run: dict) -> str:
    """'digits · sgd, lr 0.005, momentum 0.9, batch 64 · 500 steps' from config.json."""
    cfg, trained = run["config"].get("config", {}), run["config"].get("training", {})
    optimizer = f"{cfg.get('optimizer')}, lr {number(trained.get('lr'))}"
    if cfg.get("optimizer") == "sgd":
        optimizer += f", momentum {value(trained.get('momentum'))}"
    return f"{cfg.get('data')} · {optimizer}, batch {cfg.get('batch')} · {cfg.get('steps')} steps"


def trainability_text(summary: dict) -> str:
    """'mean field: 6 ξ_c = 41 (σ_w² = 1.25, σ_b² = 0.05) vs depth 20: predicted trainable'."""
    t = summary.get("trainability")
    if not t:
        return ""
    return (rf"mean field: 6$\xi_c$ = {number(t['six_xi_c'])} ($\sigma_w^2$ = {number(t['sigma_w2'])}, "
            rf"$\sigma_b^2$ = {number(t['sigma_b2'])}) vs depth {t['depth']}: predicted {t['predicted']}")


def mark_divergence(ax, summary: dict) -> None:
    """A dotted line at each seed's first non-finite step."""
    for s in summary.get("seeds", []):
        if s.get("diverged_at") is not None:
            ax.axvline(s["diverged_at"], ls=":", lw=1.5, color=NONFINITE_COLOUR)
            ax.text(s["diverged_at"], 0.97, f" seed {s['seed']}: loss non-finite at step {s['diverged_at']} ",
                    transform=ax.get_xaxis_transform(), rotation=90, ha="right", va="top", fontsize=7.5,
                    color=NONFINITE_COLOUR)


def metric_panel(ax, metrics: pd.DataFrame, series, log: bool) -> np.ndarray:
    """Each metric's mean over seeds (only at steps where every seed has a usable value) and its min..max band."""
    drawn = [np.array([])]
    for column, name, colour in series:
        steps, values = seed_matrix(metrics, column, "step")
        drawn.append(draw_series(ax, steps, values, colour, name, log=log, band=values.shape[1] > 1))
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    return np.concatenate(drawn)


def training_figure(run: dict) -> Figure:
    fig, (loss_ax, acc_ax) = new_figure()
    metrics, summary = run["metrics"], run["summary"]
    losses = metric_panel(loss_ax, metrics, LOSS, log=True)
    if losses.size:
        set_log_axis(loss_ax, *log_limits(losses))
    else:
        empty_note(loss_ax, "no finite loss recorded")
    loss_ax.set_ylabel("cross-entropy (log scale)")
    loss_ax.set_title("Loss", loc="left", fontsize=11)
    metric_panel(acc_ax, metrics, ACCURACY, log=False)
    chance = summary.get("chance_accuracy")
    if chance is not None:
        acc_ax.axhline(chance, ls="--", lw=1.2, color=CHANCE_COLOUR, label=f"chance ({number(chance)})")
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_title("Accuracy", loc="left", fontsize=11)
    for ax in (loss_ax, acc_ax):
        mark_divergence(ax, summary)
        add_legend(ax)
    seeds = metrics["seed"].nunique()
    fig.suptitle("\n".join([label(run["config"]), f"{training_text(run)} · line: mean over {seeds} seed(s), band: "
                            "min..max", trainability_text(summary)]), fontsize=10)
    return fig


def layer_lines(ax, layers: pd.DataFrame, shown: list[int], line: str, edges: tuple[str, str] | None) -> None:
    """Per shown layer, `line` over the steps (mean over seeds), and thin dashed lines at the seed means of the two
    `edges` columns, or a band min..max of `line` over the seeds."""
    colours = colormaps["viridis"](np.linspace(0.0, 0.85, len(shown)))
    marker = "o" if layers["step"].nunique() <= 30 else None
    for colour, layer in zip(colours, shown):
        rows = layers[layers["layer"] == layer]
        steps, values = seed_matrix(rows, line, "step")
        ax.plot(steps, np.nanmean(values, axis=1), color=colour, lw=1.8, label=f"layer {layer}", marker=marker, ms=3)
        if edges is None:
            ax.fill_between(steps, np.nanmin(values, axis=1), np.nanmax(values, axis=1), color=colour,
                            alpha=BAND_ALPHA, lw=0)
            continue
        for column in edges:
            ax.plot(steps, np.nanmean(seed_matrix(rows, column, "step")[1], axis=1), color=colour, lw=0.9, ls="--")
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)


def layers_over_training_figure(run: dict) -> Figure:
    layers = run["layers"]
    shown = shapes.spread_layers(int(layers["layer"].max()))
    fig, (acts, sat) = new_figure()
    with np.errstate(all="ignore"):  # a diverged seed's records are nan
        layer_lines(acts, layers, shown, "act_mean", ("act_p02", "act_p98"))
        layer_lines(sat, layers, shown, "saturated_frac", None)
    acts.set_ylabel(r"activation value $x^l$")
    acts.set_title("Activations: mean (solid), 2nd and 98th percentiles (dashed)", loc="left", fontsize=11)
    sat.set_ylabel(r"fraction saturated: $|\phi'(h)|$ < 5% of its max")
    sat.set_ylim(-0.03, 1.03)
    sat.set_title("Saturated units: mean, band min..max over seeds", loc="left", fontsize=11)
    for ax in (acts, sat):
        mark_divergence(ax, run["summary"])
    handles, names = acts.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(f"{label(run['config'])}\n{training_text(run)} · each recorded step's training minibatch, means "
                 "over the seeds (Glorot & Bengio 2010, figure 2)", fontsize=10)
    return fig


def at_step_zero(run: dict) -> dict:
    """The run as `initprobe run` would have written it for the network at step 0: its layers.csv rows there."""
    layers = run["layers"]
    return {**run, "layers": layers[layers["step"] == 0].drop(columns="step").reset_index(drop=True)}


def plot_train(run_dir, fmt: str = "png", workers: int | None = None) -> list[Path]:
    """training and layers_over_training, then variance, histograms and saturation at step 0, into run_dir/plots/;
    returns the paths (drawn by `workers` processes: forking.run_shared)."""
    run = results.read_run(run_dir)
    start = at_step_zero(run)
    figures = {"training": (training_figure, run), "layers_over_training": (layers_over_training_figure, run),
               "variance": (variance_figure, start), "histograms": (histograms_figure, start),
               "saturation": (saturation_figure, start)}
    out = Path(run_dir) / "plots"
    paths = [out / f"{name}.{fmt}" for name in figures]
    forking.run_shared([functools.partial(_draw, make, data, path, fmt)
                        for (make, data), path in zip(figures.values(), paths)], workers)
    return paths


def _draw(make, run: dict, path: Path, fmt: str) -> None:
    save(make(run), path, fmt)
