"""`run(cfg)`: what `initprobe run` does, as a function a notebook can call.

config -> models (+ inits, activations) -> probe -> results (CSV/JSON) -> plots.
"""

import dataclasses
import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import __version__, activations, config, models, predict, probe, results


@dataclass
class RunResult:
    path: Path
    layers: pd.DataFrame
    summary: dict
    config: dict


def resolve_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu. Asking for a device that is not there is a ConfigError."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise config.ConfigError(f"--device cuda: no CUDA GPU is available (torch {torch.__version__})")
    if name == "mps" and not has_mps:
        raise config.ConfigError("--device mps: no Apple MPS device is available")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() if device.type == "cpu" else device.type


def environment(device: torch.device, command: list[str] | None) -> dict:
    return {
        "initprobe_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "command": command if command is not None else sys.argv,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def available_memory(device: torch.device) -> int:
    """Bytes free for the probe: CUDA's free memory, else the host's MemAvailable (Linux) or physical memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimated_bytes(cfg: config.RunConfig) -> int:
    """Memory of the plain probe: every weight, plus the pre-activation and output autograd keeps per layer."""
    weights = sum(config.weight_sizes(cfg))
    per_input = cfg.width * (cfg.image_size**2 if cfg.arch == "cnn" else 1)
    element = torch.finfo(models.DTYPES[cfg.dtype]).bits // 8
    return (weights + 2 * cfg.depth * cfg.batch * per_input) * element


def use_checkpoint(cfg: config.RunConfig, device: torch.device) -> tuple[bool, str]:
    """(checkpoint?, why): as asked, or automatically when the plain probe would take over half the free memory."""
    if cfg.checkpoint is not None:
        if cfg.checkpoint and cfg.init == "lsuv":
            raise config.ConfigError("lsuv rescales stored weights, so it cannot run with --checkpoint")
        return cfg.checkpoint, "asked for"
    need, free = estimated_bytes(cfg), available_memory(device)
    if need > free // 2 and cfg.init != "lsuv":
        return True, f"automatic: the plain probe needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is free"
    return False, "not needed"


def measure(cfg: config.RunConfig, device: torch.device, on_seed: Callable[[int], None] | None = None,
            checkpointed: bool = False):
    """Probe `cfg.seeds` independent networks; returns (layers frame, histogram frame, probe seconds).
    Everything stays on the device until the one transfer at the end."""
    act = activations.get(cfg.act)
    phi = activations.torch_fn(cfg.act, cfg.slope)
    saturation = act.saturation(cfg.slope)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    wanted = probe.hist_layers(cfg.depth)
    stats, hists, extra = [], {}, []
    start = time.perf_counter()
    for i, seed in enumerate(seeds):
        gen = torch.Generator(device=device).manual_seed(seed)
        per_layer = models.layer_seeds(cfg.depth, gen)
        x0 = models.make_input(cfg, cfg.batch, device, gen)
        cotangent = torch.randn(x0.shape[:1] + (cfg.width,) + x0.shape[2:], device=device,
                                dtype=x0.dtype, generator=gen)
        hist_at = wanted if i == 0 else ()  # histograms of the first seed's network (ranges differ by seed)
        if checkpointed:
            rows, kept = probe.probe_checkpointed(cfg, per_layer, phi, x0, cotangent, saturation, hist_at)
        else:
            lsuv_batch = models.make_input(cfg, cfg.batch, device, gen) if cfg.init == "lsuv" else None
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


def peak_memory(device: torch.device) -> int:
    """Peak bytes: CUDA's max_memory_allocated, else the process's peak resident set size. On Linux from
    /proc (VmHWM, this program's own): getrusage's maxrss survives exec, so a process started by a larger one
    (a bench, a spawned sweep worker) would report its parent's peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


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


def run(cfg: config.RunConfig, on_seed: Callable[[int], None] | None = None,
        command: list[str] | None = None, root: Path = results.RESULTS_ROOT) -> RunResult:
    """Validate, probe, write the run directory, plot. Raises ConfigError for bad input before any work."""
    t0 = time.perf_counter()
    config.validate(cfg)
    device = resolve_device(cfg.device)
    final, staging = results.reserve(cfg.out, results.default_name(cfg), root)
    try:
        resolved = {**dataclasses.asdict(cfg), "out": str(final), "device": str(device)}
        info = {"config": resolved, "init_params": config.init_params(cfg),
                "environment": environment(device, command)}
        checkpointed, why = use_checkpoint(cfg, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        frame, hist, probe_seconds, jac = measure(cfg, device, on_seed, checkpointed)
        summary = results.summarize(frame, {"probe_seconds": probe_seconds})
        frame = predict.add_theory(frame, cfg)
        summary["theory"] = predict.summary(frame, cfg)
        if jac is not None:
            summary["jacobian"] = {**results.jacobian_summary(jac), **predict.jacobian(frame, cfg)}
        summary["timings"]["run_seconds"] = time.perf_counter() - t0
        summary["peak_memory_bytes"] = peak_memory(device)
        summary["checkpoint"] = {"used": checkpointed, "why": why}
        results.write_run(staging, info, frame, hist, summary, jac)
    except BaseException:  # bad input found late, Ctrl-C, a crash: leave nothing half-written behind
        results.discard(staging)
        raise
    results.publish(staging, final)
    if cfg.plots:
        from . import plots

        plots.plot_run(final, cfg.plot_format)
    return RunResult(final, frame, summary, info)
