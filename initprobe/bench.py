"""`initprobe bench`: the speed and memory targets, each measured as a ratio within one run (these machines
are shared and noisy, so absolute times mean little; tests never assert on time).

Each target returns a row: name, measured value, the target, pass/fail, and a note.
"""

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import activations, config, devices, models, probe, shapes

MLP = dict(arch="mlp", depth=50, width=512, batch=256, act="tanh")
RESIDUAL_BN = dict(arch="mlp", depth=50, width=512, batch=256, act="relu", init="he_normal", block="residual",
                   norm="batch")
CNN = dict(arch="cnn", depth=20, width=64, image_size=32, batch=32, act="tanh")


def row(name, value, target, ok, note="", unit=""):
    """One target; ok None for a row that informs and has no goal ("pass": null in the JSON)."""
    return {"target": name, "value": value, "unit": unit, "goal": target, "pass": None if ok is None else bool(ok),
            "note": note}


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (blocks up to 32 MiB from the heap, not mmap; no trimming), so
    that no timed pass page-faults in memory the pass before it gave back: the bare pass, which holds every layer's
    dL/dW until its end, would otherwise fault pages back in on some passes and be slowed, flattering the overhead
    ratio (docs/performance.md). glibc only (True when applied); elsewhere nothing changes."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):
        return False


def _setup(cfg, device):
    gen = torch.Generator(device=device).manual_seed(0)
    params = models.build(cfg, models.layer_seeds(cfg.depth, gen), device)
    x0 = models.make_input(cfg, cfg.batch, device, gen)
    cotangent = torch.randn(x0.shape[:1] + (cfg.width,) + x0.shape[2:], device=device, generator=gen)
    return params, x0, cotangent


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_pass(cfg, params, phi, x0, cotangent):
    x = models.Net.of(cfg, phi).forward(params, x0)
    probe.backward(x, cotangent)
    for w, _ in params:
        w.grad = None
    return x


def naive_pass(cfg, params, phi, x0, cotangent):
    """The common approach, for reference: a .item() per layer and statistic (a host sync each on a GPU)."""
    net, x, outs = models.Net.of(cfg, phi), x0, []
    for l, (w, b) in enumerate(params):
        step = net.layer(l, x, w, b)
        h, x = step.h, step.x
        h.retain_grad()
        outs.append((h, x))
        vals = [h.mean().item(), h.var().item(), x.mean().item(), x.var().item(), w.var().item()]
        with torch.no_grad():
            dphi = torch.func.jvp(phi, (h.detach(),), (torch.ones_like(h),))[1]
            vals += [(dphi.abs() < 0.05).float().mean().item(), (x == 0).float().mean().item()]
    probe.backward(x, cotangent)
    for (h, _), (w, _) in zip(outs, params):
        _ = h.grad.var().item(), w.grad.var().item()
        w.grad = None


def timed(fn, device, reps):
    """Seconds of each of `reps` calls, after a warm-up call; on CUDA between two events on the stream."""
    fn()
    times = []
    for _ in range(reps):
        _sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)  # milliseconds
            continue
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def overhead(name, options, goal, device, reps=21):
    """Instrumented / bare forward+backward on the same weights: the median over `reps` pairs of the two run back
    to back, each pair's own ratio, so that drift between pairs (this machine's speed wanders by tens of percent
    within a minute) cancels."""
    cfg = config.RunConfig(**options, device=str(device))
    params, x0, cotangent = _setup(cfg, device)
    phi = activations.torch_fn(cfg.act)
    sat = activations.get(cfg.act).saturation()

    def bare():
        bare_pass(cfg, params, phi, x0, cotangent)

    def instrumented():
        stats, _ = probe.probe(cfg, params, phi, x0, cotangent, sat)
        probe.to_host([stats])

    def naive():
        naive_pass(cfg, params, phi, x0, cotangent)

    ratio, quartiles, bare_t = paired_ratio(bare, instrumented, device, reps)
    # the reference afterwards, not interleaved: its retained tensors (100s of MB) perturb the passes after it
    naive_ratio = statistics.median(timed(naive, device, 3)) / statistics.median(timed(bare, device, 3))
    bare_s = statistics.median(bare_t)
    flops = 2 * 3 * shapes.multiply_adds(cfg)  # forward and backward, two flops a multiply-add
    note = (f"pairs' quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}; bare {bare_s * 1e3:.0f} ms "
            f"({flops / bare_s / 1e9:.1f} GFLOP/s); .item()-per-statistic approach: {naive_ratio:.2f}x")
    return row(f"overhead {name}", ratio, f"<= {goal:.2f}", ratio <= goal, note, "x bare"), flops / bare_s


def paired_ratio(bare, instrumented, device, reps):
    """(median, quartiles) of instrumented / bare over `reps` pairs run back to back, and the bare times. The
    median is rounded to the 3 decimals a row shows, so that it is judged as shown."""
    bare_t, inst_t = [], []
    for _ in range(reps):
        bare_t += timed(bare, device, 1)
        inst_t += timed(instrumented, device, 1)
    ratios = [i / b for i, b in zip(inst_t, bare_t)]
    quartiles = statistics.quantiles(ratios, n=4) if reps > 1 else ratios * 3
    return round(statistics.median(ratios), 3), quartiles, bare_t


GPT2 = dict(model="hf:gpt2", model_args={"n_layer": 12, "n_embd": 256, "n_head": 4}, seq_len=128, batch=8)


def model_overhead(name, options, goal, device, reps=11):
    """A --model's instrumented pass (module_probe.probe_model: every recorded module's statistics, the one
    transfer) over the bare forward and backward of the same model, input and cotangent, paired as in overhead()."""
    from . import any_model, module_probe

    cfg = config.RunConfig(**options, device=str(device), seeds=1)
    try:
        make = any_model.factory(cfg)
    except config.ConfigError as e:  # transformers not installed
        return row(f"overhead {name}", None, f"<= {goal:.2f}", None, str(e), "x bare")
    generator = torch.Generator(device=device).manual_seed(0)
    seeds = any_model.Seeds.draw(generator)
    model = any_model.build(cfg, make, seeds, device)
    inp = any_model.make_input(cfg, model, device, generator)

    def bare():
        out = any_model.primary(any_model.forward(model, inp))[0]
        probe.backward(out, torch.ones_like(out))
        model.zero_grad(set_to_none=True)

    def instrumented():
        probed = module_probe.probe_model(model, inp, cfg.record, torch.Generator(device=device).manual_seed(1),
                                          seeds.forward)
        probe.to_host([probed.table])

    ratio, quartiles, bare_t = paired_ratio(bare, instrumented, device, reps)
    params = sum(p.numel() for p in model.parameters())
    note = (f"pairs' quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}; bare {statistics.median(bare_t) * 1e3:.0f} ms; "
            f"{len(module_probe.select(model, cfg.record))} modules recorded, {params / 1e6:.1f} M parameters, "
            f"{cfg.model_mode} mode")
    return row(f"overhead {name}", ratio, f"<= {goal:.2f}", ratio <= goal, note, "x bare")


def matmul_throughput(device, n=1024, reps=10):
    a = torch.randn(n, n, device=device)
    best = min(timed(lambda: a @ a, device, reps))
    return 2 * n**3 / best


DEPTH_SCRIPT = """
import json, sys, time, torch
from initprobe import config, devices, runner
cfg = config.RunConfig(depth={depth}, width=256, batch=128, seeds=1, checkpoint=True, device="cpu", **{options})
base = devices.peak_memory(torch.device("cpu"))
t = time.perf_counter()
frame, _, seconds, _ = runner.measure(cfg, torch.device("cpu"), checkpointed=True)
peak = devices.peak_memory(torch.device("cpu"))
finite = bool(frame[["act_var", "grad_act_var"]].notna().all().all())
print(json.dumps({{"peak": peak, "base": base, "seconds": seconds, "finite": finite}}))
"""
DEEP_NETWORKS = {  # name: (what its depth counts, options) of the checkpointed networks measured over depth
    "MLP": ("layer", dict(act="tanh")),
    # 1/sqrt(depth - 1) branches keep 10,000 blocks finite; batch norm's small tensors fragment the heap most
    "residual BN-ReLU MLP": ("block", dict(act="relu", init="he_normal", block="residual", norm="batch",
                                           branch_scale="inv_sqrt_depth")),
}


def depth_memory(depths=(1000, 4000, 10000), name="MLP"):
    """Peak RSS of checkpointed MLPs (width 256, batch 128, DEEP_NETWORKS[name]), each in a fresh process."""
    out = {}
    for depth in depths:
        script = DEPTH_SCRIPT.format(depth=depth, options=repr(DEEP_NETWORKS[name][1]))
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        out[depth] = json.loads(res.stdout.strip().splitlines()[-1])
    deep = out[max(depths)]
    growth = {d: v["peak"] - v["base"] for d, v in out.items()}
    lo, hi = min(depths), max(depths)
    ok = growth[lo] > 0 and growth[hi] > 0  # no growth above the imports' peak: nothing to fit
    exponent = round(math.log(growth[hi] / growth[lo]) / math.log(hi / lo), 2) if ok else math.nan
    peak_gib = round(deep["peak"] / 2**30, 3)  # each value judged as shown
    unit = DEEP_NETWORKS[name][0]
    return [
        row(f"{hi}-{unit} {name} peak memory", peak_gib, "< 1", peak_gib < 1,
            f"checkpointed, {deep['seconds']:.0f} s probe, finite: {deep['finite']}", "GiB"),
        row(f"  {name}: memory growth exponent", exponent, "~0.5 (sqrt), < 0.75", exponent < 0.75,
            ", ".join(f"depth {d}: +{g / 2**20:.0f} MiB" for d, g in growth.items()), "log-log slope"),
    ]


def wall(cmd, cwd, reps=3):
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, capture_output=True, check=True)
        best = min(best, time.perf_counter() - t)
    return best


def startup():
    exe = [sys.executable, "-m", "initprobe.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        help_s = round(wall(exe + ["--help"], tmp), 3)  # each value judged as shown
        list_s = round(wall(exe + ["list"], tmp), 3)
        run_s = round(wall(exe + ["run", "--quiet", "--device", "cpu"], tmp), 2)
    return [
        row("initprobe --help", help_s, "< 0.5", help_s < 0.5, "", "s"),
        row("initprobe list", list_s, "< 0.5", list_s < 0.5, "", "s"),
        row("default run incl. plots", run_s, "< 5", run_s < 5, "depth 50, width 512, 3 seeds, best of 3",
            "s"),
    ]


SWEEP_GRID = {"depth": [10, 20, 30, 40, 50], "act": ["tanh", "relu"],
              "init": ["glorot_uniform", "glorot_normal", "he_normal", "lecun_normal", "orthogonal"]}


def timed_sweep(backend: str, quick: bool) -> dict:
    """A fresh sweep of ~50 small runs (width 128) on `backend`: wall seconds of its runs phase (start-up included)
    and of its report (figures, report.html), and the probes' summed seconds."""
    from . import sweep
    from .sweep import backends, report

    grid = {**SWEEP_GRID, "init": SWEEP_GRID["init"][:2]} if quick else SWEEP_GRID
    spec = sweep.parse_sweep({"base": {"width": 128, "device": "cpu"}, "grid": grid}, name=f"bench-{backend}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = sweep.run_sweep(spec, Path(tmp) / "sweep", backend=backend, workers=2, threads=1, figures=False)
        runs_s = time.perf_counter() - t
        report.write_report(result.path)
        report_s = time.perf_counter() - t - runs_s
    return {"runs": runs_s, "report": report_s, "wall": runs_s + report_s, "n": len(result.runs),
            "probes": float(result.runs["probe_seconds"].sum()), "start": backends.start_method(1, {"cpu"})}


def sweep_rows(quick: bool = False):
    """The share of a local sweep's runs phase spent inside probes (outside them, per run: theory, CSV/JSON files,
    bookkeeping), and the process backend's speed-up over local on the runs (2 workers).

    The target is about per-run overhead (its examples: process start, imports, file writes, plotting per run).
    The report's figures are drawn once per sweep, whatever its size, like the interpreter's start and imports;
    they get a row of their own that informs, with no pass/fail: for this grid of fast probes they cost about as
    much as the probes, and such a share would fall the faster the probes got."""
    # twice each, alternated, the faster kept: a shared machine's speed drifts within a minute
    local, process = timed_sweep("local", quick), timed_sweep("process", quick)
    again_local, again_process = timed_sweep("local", quick), timed_sweep("process", quick)
    local = min(local, again_local, key=lambda t: t["runs"])
    process = min(process, again_process, key=lambda t: t["runs"])
    share, whole = round(local["probes"] / local["runs"], 3), local["probes"] / local["wall"]  # judged as shown
    speedup = round(local["runs"] / process["runs"], 2)
    return [
        row(f"sweep of {local['n']} small runs: time in probes", share, ">= 0.8", share >= 0.8,
            f"local, 1 thread: {local['probes']:.1f} s in probes of {local['runs']:.1f} s "
            f"({(local['runs'] - local['probes']) / local['n'] * 1e3:.0f} ms a run outside them)", "of runs"),
        row("  once per sweep: its report", round(local["report"], 2), "-", None,
            f"two figures and report.html; with it counted in, {whole:.2f} of the wall time is in probes", "s"),
        row("sweep process (2 workers) vs local", speedup, ">= 1.7", speedup >= 1.7,
            f"runs {process['runs']:.1f} s vs {local['runs']:.1f} s ({process['start']}ed workers); with the "
            f"report {local['wall'] / process['wall']:.2f}x", "x faster"),
    ]


def training_rows(device, reps: int = 21) -> list[dict]:
    """What a recorded training step costs beside a plain one (train.recorded_step: the probe's statistics and the
    activation percentiles; then the held-out evaluation, which comes with every record), on train's default
    network and digits-sized random data, timed in interleaved pairs as `overhead` does. On the CPU with one
    thread, as `initprobe train` runs there."""
    from . import data as datasets, train

    cfg = config.TrainConfig(device=str(device))  # train's default network
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1438, cfg.input_dim, device=device, generator=gen)
    y = torch.randint(10, (1438,), device=device, generator=gen)
    data = datasets.Data("random", x, y, x[:359], y[:359], 10, 1.0, 0.0, 0.1)
    net, _ = train.build(cfg, data, 0, device)
    phi, sat = activations.torch_fn(cfg.act), activations.get(cfg.act).saturation()
    batch, labels = x[:cfg.batch], y[:cfg.batch]
    plain_t, recorded_t, eval_t = [], [], []
    with devices.torch_threads(1 if device.type == "cpu" else None):
        for _ in range(reps):
            plain_t += timed(lambda: train.plain_step(cfg, net, phi, batch, labels), device, 1)
            recorded_t += timed(lambda: train.recorded_step(cfg, net, phi, sat, batch, labels), device, 1)
            eval_t += timed(lambda: train.evaluate(cfg, net, phi, data.x_test, data.y_test), device, 1)
    ratio = statistics.median(r / p for r, p in zip(recorded_t, plain_t))
    with_eval = statistics.median((r + e) / p for r, e, p in zip(recorded_t, eval_t, plain_t))
    every = config.TRAIN_FIELDS["record_every"].default
    plain_ms = statistics.median(plain_t) * 1e3
    return [
        row("train: recorded step vs plain step", round(ratio, 2), "-", None,
            f"depth {cfg.depth}, width {cfg.width}, batch {cfg.batch}: plain {plain_ms:.1f} ms (forward, backward, no "
            "hook); recorded: run's statistics and the activation percentiles", "x plain"),
        row("  with the held-out evaluation", round(with_eval, 2), "-", None,
            f"{len(data.y_test)} examples; recorded every {every} steps, training costs "
            f"{(with_eval - 1) / every:.1%} more than plain steps alone", "x plain"),
    ]


def run_all(device: torch.device, quick: bool = False) -> dict:
    kept = keep_freed_memory()  # for every measurement in this process, the sweeps' forked workers included
    rows = []
    mlp_row, mlp_flops = overhead("MLP 50x512, batch 256", MLP, 1.10, device)
    residual_row, _ = overhead("residual BN-ReLU MLP 50x512, batch 256", RESIDUAL_BN, 1.15, device,
                               reps=5 if quick else 21)
    cnn_row, _ = overhead("CNN 20x64ch 32x32, batch 32", CNN, 1.15, device, reps=3 if quick else 11)
    rows += [mlp_row, residual_row, cnn_row]
    rows.append(model_overhead("hf:gpt2 12x256, 128 tokens, batch 8", GPT2, 1.20, device, reps=3 if quick else 11))
    for name in DEEP_NETWORKS:
        rows += depth_memory((500, 2000) if quick else (1000, 4000, 10000), name)
    rows += startup()
    rows += sweep_rows(quick)
    rows += training_rows(device, reps=5 if quick else 21)
    peak = matmul_throughput(device)
    return {"device": str(device), "torch": torch.__version__, "cpu_count": os.cpu_count(), "freed_memory_kept": kept,
            "matmul_gflops": round(peak / 1e9, 1), "bare_fraction_of_matmul": round(mlp_flops / peak, 3),
            "rows": rows}


def write(result: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
