"""`train(cfg)`: what `initprobe train` does, as a function a notebook can call.

The network of `initprobe run` (the same seed draws the same weights) gets a linear readout to the classes
(models.make_readout) and learns cfg.data by minibatch cross-entropy. Step t means the network after t updates.
At step 0, every record_every steps and at the last step the step is a recorded one: probe.probe runs the forward
and backward pass of the minibatch about to be trained on, with the gradient of the real loss at the top block
(dL/dx^depth) in place of run's random cotangent, so it records the statistics of `run` (the same columns, the
same code), plus the 2nd and 98th percentiles of each layer's activations; then the held-out data is evaluated.
The gradients the probe leaves are the ones the update uses. Every other step is a plain one: forward, backward,
update, with no hook and no statistic.

Everything stays on the device. A loss that is not finite ends that network's training: the losses of every step
are kept on the device and checked at each recorded step (one flag read), the record there (non-finite) is kept,
and the first non-finite step is its `diverged_at`. Records move to the host in one transfer at the end.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import (activations, analysis, checks, config, data as datasets, devices, models, predict, probe,
               results, shapes)
from .runner import histogram_frame, run_info

PERCENTILES = (0.02, 0.98)  # of each layer's activations: Glorot & Bengio 2010, figure 2
PERCENTILE_COLUMNS = ["act_p02", "act_p98"]
METRICS = ["train_loss", "train_accuracy", "test_loss", "test_accuracy"]
EVAL_CHUNK = 1024  # held-out examples per forward pass


@dataclass
class TrainResult:
    path: Path
    layers: pd.DataFrame  # layers.csv: one row per (step, seed, layer)
    metrics: pd.DataFrame  # metrics.csv: one row per (step, seed)
    summary: dict
    config: dict


@dataclass
class Network:
    """The probed blocks (models.build's (weight, bias), biases trained too) and the readout's (weight, bias)."""

    blocks: list
    readout: tuple

    def parameters(self) -> list[torch.Tensor]:
        return [t for pair in (*self.blocks, self.readout) for t in pair]


def build(cfg: config.TrainConfig, data: datasets.Data, seed: int, device) -> tuple[Network, torch.Generator]:
    """Seed `seed`'s network and the generator of its data order. The blocks are run's network of that seed: the
    seed's generator gives the layers' seeds first, as runner.measure draws them."""
    gen = torch.Generator(device=device).manual_seed(seed)
    per_layer = models.layer_seeds(cfg.depth, gen)
    readout_seed = models.layer_seeds(1, gen)[0]
    lsuv = data.x_train[Batches(len(data.x_train), cfg.batch, gen).next()] if models.needs_batch(cfg) else None
    blocks = models.build(cfg, per_layer, device, lsuv)
    for _, b in blocks:
        b.requires_grad_()
    w, b = models.make_readout(cfg, data.classes, readout_seed, device)
    return Network(blocks, (w.requires_grad_(), b.requires_grad_())), gen


class Batches:
    """Minibatch indices: the training set in a random order, epoch after epoch; an epoch's last incomplete batch is
    left out, so every batch has `batch` examples and none repeats within an epoch."""

    def __init__(self, n: int, batch: int, generator: torch.Generator):
        self.n, self.batch, self.gen = n, batch, generator
        self.order, self.pos = None, n

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.gen, device=self.gen.device), 0
        self.pos += self.batch
        return self.order[self.pos - self.batch:self.pos]


def optimizer(cfg: config.TrainConfig, net: Network, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr)
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=config.momentum(cfg))


def forward(cfg: config.TrainConfig, net: Network, phi, x) -> torch.Tensor:
    """Logits (batch, classes): the blocks (models.Net, as the probe runs them), then the readout."""
    return models.readout(cfg, models.Net.of(cfg, phi).forward(net.blocks, x), *net.readout)


def plain_step(cfg: config.TrainConfig, net: Network, phi, x, y) -> torch.Tensor:
    """Forward, cross-entropy, backward: the gradients of one step, with no hook and no statistic. The loss (0-d, on
    the device)."""
    loss = F.cross_entropy(forward(cfg, net, phi, x), y)
    loss.backward()
    return loss.detach()


def recorded_step(cfg: config.TrainConfig, net: Network, phi, saturation, x, y) -> dict:
    """The gradients of plain_step, with the probe recording the run's statistics on the way. Returns, on the device:
    "stats" (depth, len(probe.COLUMNS)), "percentiles" (depth, 2), "loss", "correct" (count), "kept" (each layer's
    activations and dL/dh, for histograms)."""
    out = {}

    def loss_gradient(top):  # dL/dx^depth: the readout's forward and backward on a detached copy of the top
        top = top.detach().requires_grad_()
        logits = models.readout(cfg, top, *net.readout)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        out.update(loss=loss.detach(), correct=(logits.argmax(1) == y).sum())
        return top.grad

    layers = range(1, cfg.depth + 1)
    out["stats"], out["kept"] = probe.probe(cfg, net.blocks, phi, x, loss_gradient, saturation, layers,
                                            keep_grads=True)
    out["percentiles"] = percentiles(out["kept"], cfg.depth)
    return out


def percentiles(kept: dict, depth: int) -> torch.Tensor:
    """(depth, len(PERCENTILES)): each layer's activation percentiles, the 'lower' ones (the order statistic at
    index floor(p (n - 1)) of the n sorted values, as torch.quantile's interpolation='lower'), found by kthvalue,
    a selection several times cheaper than quantile's sort. nan sorts above every number."""
    acts = torch.stack([kept[("act", l)].reshape(-1) for l in range(1, depth + 1)])  # (depth, n)
    n = acts.shape[1]
    return torch.stack([acts.kthvalue(int(p * (n - 1)) + 1, dim=1).values for p in PERCENTILES], dim=1)


@torch.no_grad()
def evaluate(cfg: config.TrainConfig, net: Network, phi, x, y) -> torch.Tensor:
    """(mean cross-entropy, accuracy) on (x, y), on the device, EVAL_CHUNK examples at a time."""
    loss = torch.zeros((), dtype=torch.float32, device=x.device)
    correct = torch.zeros((), dtype=torch.float32, device=x.device)
    for start in range(0, len(x), EVAL_CHUNK):
        logits = forward(cfg, net, phi, x[start:start + EVAL_CHUNK])
        labels = y[start:start + EVAL_CHUNK]
        loss += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    return torch.stack([loss, correct]) / len(x)


def recorded_steps(cfg: config.TrainConfig) -> list[int]:
    """0, K, 2K, ... and the last step."""
    return sorted(set(range(0, cfg.steps + 1, cfg.record_every)) | {cfg.steps})


class Records:
    """One seed's recorded steps, kept on the device."""

    def __init__(self):
        self.steps, self.stats, self.percentiles, self.metrics, self.hist = [], [], [], [], {}

    def add(self, t: int, step: dict, batch: int, held_out: torch.Tensor, histograms: bool) -> None:
        """Step t's record: the recorded step's statistics and minibatch metrics, the held-out (loss, accuracy) and,
        with `histograms`, the histograms of a few layers (probe.histograms)."""
        if histograms:
            shown = shapes.spread_layers(len(step["stats"]))
            self.hist = probe.histograms({k: v for k, v in step["kept"].items() if k[1] in shown})
        train = torch.stack([step["loss"].float(), step["correct"].float() / batch])
        self.metrics.append(torch.cat([train, held_out]))
        self.stats.append(step["stats"])
        self.percentiles.append(step["percentiles"])
        self.steps.append(t)

    def stacked(self) -> dict:
        return {"steps": self.steps, "stats": torch.stack(self.stats), "percentiles": torch.stack(self.percentiles),
                "metrics": torch.stack(self.metrics), "hist": self.hist}


def train_seed(cfg: config.TrainConfig, data: datasets.Data, seed: int, device, lr: float,
               on_record: Callable[[int], None] | None = None, histograms: bool = False) -> dict:
    """Train seed `seed`'s network for cfg.steps steps (or until its loss is not finite). Returns, on the device:
    "steps" (the recorded steps, a list), "stats" (records, depth, columns), "percentiles" (records, depth, 2),
    "metrics" (records, len(METRICS)), "losses" (every step's minibatch loss, nan after the last step run) and,
    with `histograms`, "hist" (probe.histograms of step 0 at a few layers)."""
    net, gen = build(cfg, data, seed, device)
    opt = optimizer(cfg, net, lr)
    batches = Batches(len(data.x_train), cfg.batch, gen)
    phi = activations.torch_fn(cfg.act, cfg.slope)
    saturation = activations.get(cfg.act).saturation(cfg.slope)
    recorded, records = set(recorded_steps(cfg)), Records()
    losses = torch.full((cfg.steps + 1,), math.nan, device=device)
    unchecked = 0  # the first step whose loss has not been checked
    for t in range(cfg.steps + 1):
        idx = batches.next()
        x, y = data.x_train[idx], data.y_train[idx]
        opt.zero_grad(set_to_none=True)
        if t not in recorded:
            losses[t] = plain_step(cfg, net, phi, x, y)
            opt.step()
            continue
        step = recorded_step(cfg, net, phi, saturation, x, y)
        losses[t] = step["loss"]
        records.add(t, step, len(y), evaluate(cfg, net, phi, data.x_test, data.y_test), histograms and t == 0)
        del step
        if on_record:
            on_record(t)
        if not bool(torch.isfinite(losses[unchecked:t + 1]).all()):  # the one flag read a recorded step makes
            break
        unchecked = t + 1
        if t < cfg.steps:
            opt.step()
    return {**records.stacked(), "losses": losses}


# ---- the run directory -------------------------------------------------------------------------------------------


def default_name(cfg: config.TrainConfig) -> str:
    return f"train-{results.default_name(cfg)}-{cfg.data}"


def layers_frame(steps: list[int], seed: int, stats: np.ndarray, pct: np.ndarray) -> pd.DataFrame:
    """Rows (step, seed, layer) of one seed's records: stats (records, depth, columns), pct (records, depth, 2)."""
    frame = results.layers_frame(np.concatenate([stats, pct], axis=2), steps, probe.COLUMNS + PERCENTILE_COLUMNS,
                                 name="step")
    frame.insert(1, "seed", seed)
    return frame


def metrics_frame(steps: list[int], seed: int, metrics: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(metrics, columns=METRICS)
    frame.insert(0, "seed", seed)
    frame.insert(0, "step", steps)
    return frame


def first_nonfinite(losses: np.ndarray, last: int) -> int | None:
    """The first step up to `last` whose loss is not finite, or None."""
    bad = np.flatnonzero(~np.isfinite(losses[:last + 1]))
    return int(bad[0]) if bad.size else None


def with_theory(layers: pd.DataFrame, cfg: config.TrainConfig, data: datasets.Data) -> pd.DataFrame:
    """layers.csv's rows with the theory_* columns of the network at step 0 (its inputs' q^0 and c^0, the backward
    scaled to the loss's gradient at the top: predict.from_top_gradient); empty at later steps, where the network is
    no longer the one the theory describes."""
    start = layers[layers["step"] == 0]
    theory = predict.from_top_gradient(predict.add_theory(start, cfg, data.input_q, data.input_corr))
    added = [c for c in theory.columns if c not in layers.columns]
    return layers.join(theory[added])


def train(cfg: config.TrainConfig, on_progress: Callable[[int], None] | None = None,
          command: list[str] | None = None, root: Path = results.RESULTS_ROOT) -> TrainResult:
    """Validate, load the data, train every seed, write the run directory, plot. Raises ConfigError for bad input
    before anything is written. on_progress(steps done, over every seed) is called at each recorded step."""
    t0 = time.perf_counter()
    checks.validate(cfg)
    device = devices.resolve(cfg.device)
    data = datasets.load(cfg, device)
    if cfg.batch > len(data.y_train):
        raise config.ConfigError(f"batch {cfg.batch} is more than the {len(data.y_train)} training examples of "
                                 f"{cfg.data}")
    lr = config.learning_rate(cfg)
    res = results.reserve(cfg.out, default_name(cfg), root)
    with results.publishing(res) as staging:  # nothing half-written is left behind (Ctrl-C, a crash)
        info = run_info(cfg, res.final, device, command,
                        training={"lr": lr, "momentum": config.momentum(cfg), "data": data.describe()})
        layers, metrics, hist, summary = _train_all(cfg, data, device, lr, on_progress)
        summary["timings"]["run_seconds"] = time.perf_counter() - t0
        results.write_run(staging, info, layers, hist, summary)
        results.write_csv(metrics, staging / "metrics.csv")
        if cfg.plots:  # drawn before publication: a run directory that exists holds everything asked of it
            from . import plots

            plots.plot_run(staging, cfg.plot_format)
    return TrainResult(res.final, layers, metrics, summary, info)


def _train_all(cfg, data, device, lr, on_progress):
    """Every seed trained, moved to the host in one transfer: (layers, metrics, histograms, summary)."""
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    start = time.perf_counter()
    runs = []
    for i, seed in enumerate(seeds):
        report = (lambda t, i=i: on_progress(i * cfg.steps + t)) if on_progress else None
        runs.append(train_seed(cfg, data, seed, device, lr, report, histograms=i == 0))
    hists = runs[0]["hist"]
    hist_tensors = [t for counts, span, _ in hists.values() for t in (counts, span)]
    per_run = ("stats", "percentiles", "metrics", "losses")
    host = probe.to_host([r[k] for r in runs for k in per_run] + hist_tensors)
    seconds = time.perf_counter() - start  # the transfer synchronises, so this holds on a GPU too
    parts, diverged = {"layers": [], "metrics": []}, {}
    for i, (seed, run) in enumerate(zip(seeds, runs)):
        stats, pct, metrics, losses = host[len(per_run) * i:len(per_run) * (i + 1)]
        parts["layers"].append(layers_frame(run["steps"], seed, stats, pct))
        parts["metrics"].append(metrics_frame(run["steps"], seed, metrics))
        diverged[seed] = first_nonfinite(losses, run["steps"][-1])
    layers = pd.concat(parts["layers"]).sort_values(["step", "seed", "layer"], kind="stable", ignore_index=True)
    metrics = pd.concat(parts["metrics"]).sort_values(["step", "seed"], kind="stable", ignore_index=True)
    layers = with_theory(layers, cfg, data)
    hist = histogram_frame(hists, host[len(per_run) * len(runs):])
    return layers, metrics, hist, summarize(cfg, data, layers, metrics, diverged, seconds)


def summarize(cfg, data, layers, metrics, diverged, seconds) -> dict:
    """summary.json: run's summary of step 0 (ratios, verdicts, theory), the trainability mean-field theory predicts,
    and the training's outcome."""
    start = layers[layers["step"] == 0].drop(columns="step")
    summary = analysis.summarize(start, {"train_seconds": seconds})
    summary["theory"] = predict.summary(start, cfg, data.input_q)
    summary["trainability"] = predict.trainability(summary["theory"], cfg.depth)
    summary.update(analysis.training_summary(metrics, diverged, data.chance))
    return summary
