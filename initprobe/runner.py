"""`run(cfg)`: what `initprobe run` does, as a function a notebook can call.

config -> models (+ inits, activations) -> probe -> results (CSV/JSON) -> plots.
"""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import (activations, analysis, any_model, blocks, checks, config, devices, environment, memory, models,
               module_probe, predict, probe, results, shapes)


@dataclass
class RunResult:
    path: Path
    layers: pd.DataFrame
    summary: dict
    config: dict


def measure(cfg: config.RunConfig, device: torch.device, on_seed: Callable[[int], None] | None = None,
            checkpointed: bool = False):
    """Probe `cfg.seeds` independent networks; returns (layers frame, histogram frame, probe seconds).
    Everything stays on the device until the one transfer at the end."""
    act = activations.get(cfg.act)
    phi = activations.torch_fn(cfg.act, cfg.slope)
    saturation = act.saturation(cfg.slope)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    wanted = shapes.spread_layers(cfg.depth)
    stats, hists, extra = [], {}, []
    start = time.perf_counter()
    for i, seed in enumerate(seeds):
        if i:  # the last seed's freed blocks, kept by the allocator (devices.release_free_memory)
            devices.release_free_memory(device)
        gen = torch.Generator(device=device).manual_seed(seed)
        per_layer = models.layer_seeds(cfg.depth, gen)
        x0 = models.make_input(cfg, cfg.batch, device, gen)
        cotangent = torch.randn(x0.shape[:1] + (cfg.width,) + x0.shape[2:], device=device,
                                dtype=x0.dtype, generator=gen)
        hist_at = wanted if i == 0 else ()  # histograms of the first seed's network (ranges differ by seed)
        if checkpointed:
            rows, kept = probe.probe_checkpointed(cfg, per_layer, phi, x0, cotangent, saturation, hist_at)
        else:
            lsuv_batch = models.make_input(cfg, cfg.batch, device, gen) if models.needs_batch(cfg) else None
            params = models.build(cfg, per_layer, device, lsuv_batch)
            rows, kept = probe.probe(cfg, params, phi, x0, cotangent, saturation, hist_at)
            if cfg.jacobian and i == 0:
                extra.append(probe.jacobian_singular_values(cfg, params, phi, x0))
            del params
        stats.append(rows)
        if i == 0:
            hists = probe.histograms(kept)
        del kept
        if on_seed:
            on_seed(i + 1)
    hist_tensors = [t for c, r, _ in hists.values() for t in (c, r)]
    host = probe.to_host([torch.stack(stats)] + hist_tensors + extra)
    seconds = time.perf_counter() - start  # the transfer synchronises, so this holds on a GPU too
    frame = results.layers_frame(host[0], seeds, probe.COLUMNS)
    hist = histogram_frame(hists, host[1:1 + len(hist_tensors)])
    jac = jacobian_frame(host[-1], seeds[0]) if extra else None
    return frame, hist, seconds, jac


def jacobian_frame(svals, seed: int) -> pd.DataFrame:
    n, k = svals.shape
    return pd.DataFrame({"seed": seed, "input": np.repeat(np.arange(n), k), "index": np.tile(np.arange(k), n),
                         "singular_value": svals.reshape(-1)})


def histogram_frame(hists: dict, host: list) -> pd.DataFrame:
    """Rows (quantity, layer, bin_left, bin_right, count): each quantity's layers, each over the same bins."""
    parts = []
    for n, (quantity, (_, _, layers)) in enumerate(hists.items()):
        counts, (lo, hi) = host[2 * n], host[2 * n + 1]
        bins = counts.shape[1]
        edges = lo + (hi - lo) * (np.arange(bins + 1) / bins)
        parts.append(pd.DataFrame({"quantity": quantity, "layer": np.repeat(layers, bins),
                                   "bin_left": np.tile(edges[:-1], len(layers)),
                                   "bin_right": np.tile(edges[1:], len(layers)), "count": counts.reshape(-1)}))
    if not parts:
        return pd.DataFrame(columns=["quantity", "layer", "bin_left", "bin_right", "count"])
    return pd.concat(parts, ignore_index=True)


def run_info(cfg: config.RunConfig, final: Path, device: torch.device, command: list[str] | None,
             **sections) -> dict:
    """config.json: the resolved config (its out the run's final directory, its device the one used), the init's
    resolved options, any `sections` of the command's own (train's "training"), and the environment."""
    resolved = {**dataclasses.asdict(cfg), "out": str(final), "device": str(device)}
    return {"config": resolved, "init_params": config.init_params(cfg), **sections,
            "environment": environment.environment(command, str(device), devices.name(device))}


def run(cfg: config.RunConfig, on_seed: Callable[[int], None] | None = None,
        command: list[str] | None = None, root: Path = results.RESULTS_ROOT) -> RunResult:
    """Validate, choose the probe that fits in memory, probe, write the run directory and its plots, publish it.
    Raises ConfigError for bad input, a size that cannot fit included, before anything is written."""
    t0 = time.perf_counter()
    checks.validate(cfg)
    device = devices.resolve(cfg.device)
    make = any_model.factory(cfg) if cfg.model is not None else None  # an import that fails: before any directory
    free, plan = devices.free_memory(device), None
    if make is None:
        plan = memory.plan(cfg, free)  # what cannot fit is refused now, with what would
    else:
        memory.check_model_input(cfg, free)
    res = results.reserve(cfg.out, results.default_name(cfg), root)
    with results.publishing(res):  # bad input found late, Ctrl-C, a crash: nothing half-written is left behind
        info = run_info(cfg, res.final, device, command)
        devices.reset_peak_memory(device)
        if make is None:
            frame, hist, summary, jac = probe_network(cfg, device, on_seed, plan)
        else:
            frame, hist, summary, jac = probe_any_model(cfg, make, device, on_seed)
        summary["timings"]["run_seconds"] = time.perf_counter() - t0
        summary["peak_memory_bytes"] = devices.peak_memory(device)
        results.write_run(res.staging, info, frame, hist, summary, jac)
        if cfg.plots:  # drawn before publication: a run directory that exists holds everything asked of it
            from . import plots

            plots.plot_run(res.staging, cfg.plot_format)
    return RunResult(res.final, frame, summary, info)


def probe_network(cfg: config.RunConfig, device: torch.device, on_seed, plan: tuple[bool, str]):
    """The built-in network, probed plainly or checkpointed as `plan` (memory.plan) says: (layers with theory
    columns, histograms, summary, Jacobian spectrum or None)."""
    checkpointed, why = plan
    frame, hist, probe_seconds, jac = measure(cfg, device, on_seed, checkpointed)
    summary = analysis.summarize(frame, {"probe_seconds": probe_seconds},
                                 gradient=blocks.block(cfg.block).stream_gradient)
    frame = predict.add_theory(frame, cfg)
    summary["theory"] = predict.summary(frame, cfg, cols=predict.joined_columns(frame))
    if jac is not None:
        summary["jacobian"] = {**analysis.jacobian_summary(jac), **predict.jacobian(frame, cfg)}
    summary["checkpoint"] = {"used": checkpointed, "why": why}
    return frame, hist, summary, jac


NO_THEORY = ("no mean-field prediction for a model of your choosing: the theory here is that of the built-in "
             "networks (i.i.d. weights, one activation, square layers), which attention, norms and branches break")


def probe_any_model(cfg: config.RunConfig, make, device: torch.device, on_seed):
    """A --model: (one row per recorded module call, no histograms, summary, None). The end-to-end ratios compare the
    first and last call of the model's most repeated module (analysis.compared_layers), from dL/d(output)."""
    frame, applies, probe_seconds, model_info = module_probe.measure(cfg, make, device, on_seed)
    summary = analysis.summarize(frame, {"probe_seconds": probe_seconds}, gradient="grad_act_var",
                                 compared=analysis.compared_layers(frame), applies=applies)
    first_seed = frame[frame["seed"] == cfg.seed].set_index("layer")["module"]
    summary["compared_modules"] = [first_seed.get(layer) for layer in summary["compared_layers"]]
    summary["model"] = {"spec": cfg.model, "args": cfg.model_args or {}, "record": cfg.record,
                        "mode": cfg.model_mode, **model_info}
    summary["theory"], summary["theory_note"] = None, NO_THEORY
    summary["checkpoint"] = {"used": False, "why": "a --model is probed whole"}
    return frame, histogram_frame({}, []), summary, None
