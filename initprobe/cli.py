"""The `initprobe` command: thin — parse, build the config, call the library, render.

Config precedence: command-line options > --config FILE > defaults. Bad input of any kind is one line on
stderr and exit code 2. Heavy imports (torch, pandas, matplotlib) happen inside the commands.
"""

import contextlib
import gc
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import activations, config, inits

app = typer.Typer(
    help="Signal propagation at initialization: per-layer activation and gradient statistics of deep "
    "MLPs and CNNs, written as CSV/JSON and plots.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)


def _complete(names):
    return lambda incomplete: [n for n in names if n.startswith(incomplete)]


NET, INIT, MEASURE, OUTPUT = "Network", "Initializer", "Measurement", "Output"
D = config.RunConfig()  # defaults shown in --help

Arch = Annotated[str, typer.Option(help=f"Architecture: {' | '.join(config.ARCHS)}.", rich_help_panel=NET,
                                   autocompletion=_complete(config.ARCHS))]
Act = Annotated[str, typer.Option(help=f"Activation: {', '.join(activations.choices())}.", rich_help_panel=NET,
                                  autocompletion=_complete(activations.choices()))]
Init = Annotated[str, typer.Option(
    help=f"Weight initializer: {', '.join(inits.choices())}, or package.module:function (a torch.nn.init-style "
    "in-place function). `initprobe list` shows the formulas.", rich_help_panel=INIT,
    autocompletion=_complete(inits.choices()))]


def _opt(help_text: str, panel: str, **kw):
    return typer.Option(help=help_text, rich_help_panel=panel, **kw)


def _explicit(ctx: typer.Context, params: dict) -> dict:
    """The options given on the command line (or by environment), so a config file's values survive."""
    keep = ("COMMANDLINE", "ENVIRONMENT")
    return {k: v for k, v in params.items() if getattr(ctx.get_parameter_source(k), "name", None) in keep}


def _gain(text: str | None):
    if text is None or text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise config.ConfigError(f"--gain takes a number or 'auto', got '{text}'") from None


ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", help="TOML file of run options (keys as below, with _ or -); command-line options override it.",
    rich_help_panel=OUTPUT)]
Depth = Annotated[int, _opt("Number of blocks (layers) l = 1..depth.", NET)]
Width = Annotated[Optional[int], _opt("Hidden units (MLP) or channels (CNN) of every block "
                                      "\\[default: 512 MLP, 64 CNN].", NET)]
InputDim = Annotated[Optional[int], _opt("MLP input size \\[default: width].", NET)]
InChannels = Annotated[int, _opt("CNN input channels.", NET)]
ImageSize = Annotated[int, _opt("CNN input height and width.", NET)]
KernelSize = Annotated[int, _opt("CNN kernel size (odd; stride 1, 'same' padding).", NET)]
Padding = Annotated[str, _opt("CNN padding: zeros | circular.", NET)]
Slope = Annotated[float, _opt("leaky_relu negative slope.", NET)]
Gain = Annotated[Optional[str], _opt(
    "Gain: a number, or 'auto' (PyTorch's calculate_gain for the activation; otherwise 1/sqrt(E[phi(z)^2])) "
    "\\[default: the scheme's own: 1, sqrt(2) for he_*].", INIT)]
Scale = Annotated[Optional[float], _opt("variance_scaling scale \\[default: 1].", INIT)]
Mode = Annotated[Optional[str], _opt(f"Fan mode: {' | '.join(inits.MODES)} (he_*, variance_scaling).", INIT,
                                     autocompletion=_complete(inits.MODES))]
Distribution = Annotated[Optional[str], _opt(
    "uniform | normal | truncated_normal (Keras' std-corrected); also overrides the Glorot/He/LeCun "
    "presets' own.", INIT, autocompletion=_complete(inits.DISTRIBUTIONS))]
Std = Annotated[Optional[float], _opt("Std of 'normal' and 'truncated_normal' \\[default: 0.05].", INIT)]
Bound = Annotated[Optional[float], _opt("Bound of 'uniform' \\[default: 0.05].", INIT)]
Value = Annotated[Optional[float], _opt("Value of 'constant' \\[default: 0.1].", INIT)]
Bias = Annotated[str, _opt("Biases: zeros | torch_default | normal.", INIT)]
BiasStd = Annotated[Optional[float], _opt("Std of the biases with --bias normal.", INIT)]
Format = Annotated[str, typer.Option("--format", help="Plot format: png | svg | pdf.", rich_help_panel=OUTPUT)]


def _load(ctx: typer.Context, config_file, values: dict) -> config.RunConfig:
    """Defaults < config file < the options given on the command line."""
    given = _explicit(ctx, {k: v for k, v in values.items() if k in config.FIELDS or k == "out_dir"})
    if "gain" in given:
        given["gain"] = _gain(given["gain"])
    if "out_dir" in given:
        given["out"] = given.pop("out_dir")
    return config.load(config_file, given)


@app.command()
def run(
    ctx: typer.Context,
    config_file: ConfigFile = None,
    arch: Arch = D.arch,
    depth: Depth = D.depth,
    width: Width = None,
    input_dim: InputDim = None,
    in_channels: InChannels = D.in_channels,
    image_size: ImageSize = D.image_size,
    kernel_size: KernelSize = D.kernel_size,
    padding: Padding = D.padding,
    act: Act = D.act,
    slope: Slope = D.slope,
    init: Init = D.init,
    gain: Gain = None,
    scale: Scale = None,
    mode: Mode = None,
    distribution: Distribution = None,
    std: Std = None,
    bound: Bound = None,
    value: Value = None,
    bias: Bias = D.bias,
    bias_std: BiasStd = None,
    batch: Annotated[Optional[int], _opt("Inputs per batch, x0 ~ N(0, 1) \\[default: 256 MLP, 32 CNN].",
                                         MEASURE)] = None,
    seeds: Annotated[int, _opt("Independent networks and batches (bands in the plots).", MEASURE)] = D.seeds,
    seed: Annotated[int, _opt("First seed; the same seed gives the same numbers.", MEASURE)] = D.seed,
    device: Annotated[str, _opt("auto | cpu | cuda | mps.", MEASURE, envvar="TORCH_DEVICE")] = D.device,
    dtype: Annotated[str, _opt("Network dtype: float32 | float64 | bfloat16 (statistics in >= float32).",
                               MEASURE)] = D.dtype,
    jacobian: Annotated[bool, _opt("Also the singular values of the end-to-end input-output Jacobian at 4 inputs "
                                   "(first seed; at most 4096 units): jacobian.csv, a spectrum plot.",
                                   MEASURE)] = D.jacobian,
    checkpoint: Annotated[Optional[bool], _opt(
        "Recompute layers in the backward pass, regenerating weights: memory ~ sqrt(depth), same numbers "
        "\\[default: automatic, when the plain probe would not fit].", MEASURE)] = None,
    out_dir: Annotated[Optional[str], typer.Option(
        "--out", help="Run directory to create \\[default: results/<arch-init-act-depth-width>].",
        rich_help_panel=OUTPUT)] = None,
    plots: Annotated[bool, _opt("Write plots.", OUTPUT)] = D.plots,
    plot_format: Format = D.plot_format,
    quiet: Annotated[bool, _opt("Print only the run directory (for scripts).", OUTPUT)] = False,
):
    """Probe one network: forward and backward a random batch, record per-layer statistics, write
    results/<run>/ (config.json, layers.csv, summary.json, plots/).

    Example: initprobe run --init glorot_uniform --act tanh --depth 50
    """
    cfg = _load(ctx, config_file, locals())
    with importing():
        from . import runner

        if cfg.plots:
            from . import plots  # noqa: F401  (runner.run draws with it)

    if quiet:
        result = runner.run(cfg, command=_command())
        print_path(result.path)
        return
    with progress_bar() as progress:
        task = progress.add_task(f"probing {cfg.seeds} network(s)", total=cfg.seeds)
        result = runner.run(cfg, on_seed=lambda i: progress.update(task, completed=i, refresh=True),
                            command=_command())
    out.print(summary_table(result.summary, result.path))
    if result.summary["checkpoint"]["used"]:
        out.print(f"checkpointed ({result.summary['checkpoint']['why']})")


def progress_bar(*columns):
    """A transient bar on stderr, shown only on a terminal (in a pipe it would leave a blank line before an error),
    redrawn on each update rather than by rich's refresh thread: with no second thread, the process may fork (the
    figures' drawing processes, the sweep's workers) without copying a lock that thread holds."""
    from rich.progress import Progress

    return Progress(*columns, console=err, transient=True, auto_refresh=False, disable=not err.is_terminal)


def print_path(path) -> None:
    """A path on one line, as is (no wrapping, no markup): scripts read it."""
    out.print(str(path), soft_wrap=True, markup=False, highlight=False)


def _num(x) -> str:
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def summary_table(summary: dict, path) -> Table:
    table = Table(title=f"initprobe — {path}", show_header=True)
    for col in ("direction", "end-to-end ratio", "gain per layer", "verdict"):
        table.add_column(col, overflow="fold")
    colours = {"stable": "green", "vanishing": "yellow", "exploding": "red"}
    for direction, key in (("forward (act_var)", "forward"), ("backward (grad_preact_var)", "backward")):
        v = summary[f"{key}_verdict"]
        table.add_row(direction, _num(summary[f"{key}_ratio"]), _num(summary[f"{key}_gain_per_layer"]),
                      f"[{colours.get(v, 'white')}]{v}[/]")
    first = [f"{d} at layer {summary[f'first_nonfinite_{d}']}" for d in ("forward", "backward")
             if summary.get(f"first_nonfinite_{d}") is not None]
    table.caption = (f"first non-finite: {', '.join(first) or 'none'} · "
                     f"probe {summary['timings']['probe_seconds']:.2f} s · stable band "
                     f"[{_num(summary['stable_band'][0])}, {_num(summary['stable_band'][1])}]")
    return table


@app.command("theory")
def theory_cmd(
    ctx: typer.Context,
    config_file: ConfigFile = None,
    arch: Arch = D.arch,
    depth: Depth = D.depth,
    width: Width = None,
    input_dim: InputDim = None,
    in_channels: InChannels = D.in_channels,
    kernel_size: KernelSize = D.kernel_size,
    act: Act = D.act,
    slope: Slope = D.slope,
    init: Init = D.init,
    gain: Gain = None,
    scale: Scale = None,
    mode: Mode = None,
    distribution: Distribution = None,
    std: Std = None,
    bound: Bound = None,
    value: Value = None,
    bias: Bias = D.bias,
    bias_std: BiasStd = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="Also write theory.csv, theory.json and a plot here.", rich_help_panel=OUTPUT)] = None,
    plot_format: Format = D.plot_format,
):
    """Mean-field predictions per layer without running a network (instant; no torch): q^l, activation and
    gradient variances, fixed point q*, chi_1, depth scales and the regime (ordered / critical / chaotic).

    Example: initprobe theory --act tanh --init glorot_normal --depth 100
    """
    with importing():
        from . import predict

    cfg = _load(ctx, config_file, {k: v for k, v in locals().items() if k != "out_dir"})  # --out: files, not a run
    frame, scales = predict.for_config(cfg)
    out.print(scales_table(scales, f"{cfg.init} · {cfg.act} · {cfg.arch.upper()} depth {cfg.depth}"))
    out.print(layers_table(frame))
    if out_dir is not None:
        with importing():
            from . import plots, results

        out_dir.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out_dir / "theory.csv", index=False)
        results.write_json(out_dir / "theory.json", {"config": config.asdict(cfg), "scales": scales})
        for f in [out_dir / "theory.csv", out_dir / "theory.json",
                  *plots.plot_theory(frame, scales, config.asdict(cfg), out_dir, plot_format)]:
            print_path(f)


def scales_table(scales: dict, title: str) -> Table:
    table = Table(title=f"Mean-field theory — {title}")
    for col in ("sigma_w^2", "sigma_b^2", "q*", "chi_1", "xi_q", "xi_c", "gradient scale", "regime"):
        table.add_column(col, overflow="fold")
    keys = ("sigma_w2", "sigma_b2", "q_star", "chi_1", "xi_q", "xi_c", "xi_grad")
    table.add_row(*[_num(scales.get(k)) for k in keys], str(scales.get("regime")))
    return table


def layers_table(frame, columns=("theory_preact_var", "theory_act_var", "theory_grad_preact_var",
                                 "theory_preact_corr")) -> Table:
    depth = int(frame["layer"].max())
    shown = sorted({l for l in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, depth) if l <= depth})
    table = Table(title="Per layer (dL/dh: backward from a unit-variance cotangent at the top)")
    table.add_column("layer")
    for col in columns:
        table.add_column(col.removeprefix("theory_"))
    for _, r in frame[frame["layer"].isin(shown)].iterrows():
        table.add_row(str(int(r["layer"])), *[_num(r[c]) for c in columns])
    return table


@app.command()
def phase(
    act: Act = D.act,
    slope: Slope = D.slope,
    measure: Annotated[bool, typer.Option(help="Also measure chi_1 (the per-layer gradient gain) on small "
                                               "networks over a coarse grid, drawn as points.")] = False,
    device: Annotated[str, typer.Option(help="Device for --measure.", envvar="TORCH_DEVICE")] = D.device,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="\\[default: results/phase-<act>]")] = None,
    plot_format: Format = D.plot_format,
):
    """The (sigma_w^2, sigma_b^2) phase diagram: chi_1 at the fixed point, with the critical line chi_1 = 1
    between order (gradients vanish) and chaos (they explode). Writes phase.csv and a heatmap."""
    with importing():
        import numpy as np

        from . import plots, predict, theory

    config.validate(config.RunConfig(act=act, slope=slope, device=device))
    target = out_dir or Path("results") / f"phase-{act}"
    target.mkdir(parents=True, exist_ok=True)
    sw2, sb2 = np.linspace(0.25, 4.0, 61), np.linspace(0.0, 0.5, 41)
    grid = predict.phase_grid(act, sw2, sb2, slope)
    critical = theory.critical_line(act, sb2, slope)
    grid.to_csv(target / "phase.csv", index=False)
    measured = None
    if measure:
        from . import runner

        measured = measure_phase(act, slope, runner.resolve_device(device))
        measured.to_csv(target / "phase_measured.csv", index=False)
    files = plots.plot_phase(grid, sb2, critical, measured, act, target, plot_format)
    for f in [target / "phase.csv", *files]:
        print_path(f)


def measure_phase(act, slope, device, width=256, depth=30):
    """Per-layer gradient gain of small networks (variance_scaling with scale sigma_w^2, normal biases):
    the measured counterpart of chi_1."""
    import pandas as pd

    from . import runner

    rows = []
    for sw2 in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0):
        for sb2 in (0.0, 0.05, 0.2, 0.4):
            cfg = config.RunConfig(act=act, slope=slope, init="variance_scaling", scale=sw2, distribution="normal",
                                   bias="normal" if sb2 else "zeros", bias_std=sb2**0.5 if sb2 else None,
                                   depth=depth, width=width, batch=64, seeds=2, device=str(device), plots=False)
            frame = runner.measure(cfg, device)[0]
            gain = gradient_gain(frame)
            rows.append((sw2, sb2, gain))
    return pd.DataFrame(rows, columns=["sigma_w2", "sigma_b2", "measured_chi_1"])


def gradient_gain(frame) -> float:
    """Geometric per-layer gain of grad_preact_var from the top to layer 2, averaged over seeds in log space."""
    import numpy as np

    depth = int(frame["layer"].max())
    top = frame[frame["layer"] == depth].set_index("seed")["grad_preact_var"]
    low = frame[frame["layer"] == 2].set_index("seed")["grad_preact_var"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.exp(np.mean(np.log(low / top)) / (depth - 2)))


@app.command("sweep")
def sweep_cmd(
    file: Annotated[Path, typer.Argument(help="Sweep file: [sweep] options, [base] run options, [grid] lists "
                                              "(crossed), optional [[point]] tables.")],
    sets: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a key everywhere: key=value (a TOML value; a list makes it an axis), "
        "or sweep.KEY=value for a sweep option. Repeatable.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Sweep directory \\[default: results/<name>].")
                       ] = None,
    backend: Annotated[Optional[str], typer.Option(help="local | process | ray \\[default: the file's, else local].",
                                                   autocompletion=_complete(("local", "process", "ray")))] = None,
    workers: Annotated[Optional[int], typer.Option(help="Processes of the process backend \\[default: 2].")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join (ray backend) "
                                                        "\\[default: a local Ray].")] = None,
    gpus_per_run: Annotated[Optional[float], typer.Option(help="Ray: GPUs per task; a fraction shares one.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads of every probe, in every backend "
                                                        "(same numbers whichever backend) \\[default: 1].")] = None,
    figures: Annotated[Optional[bool], typer.Option(help="Comparison figures and report.html at the end.")] = None,
    quiet: Annotated[bool, typer.Option(help="Print only the sweep directory.")] = False,
):
    """Run a grid of configurations (resumable: completed runs are skipped), write runs.csv, a tidy
    layers.csv, comparison figures and report.html, and rank the schemes.

    Example: initprobe sweep configs/sweeps/glorot_bengio_2010.toml
    """
    with importing():
        from . import sweep

        spec = sweep.load_sweep(file, sets or ())
        if sweep.resolve_options(spec, backend=backend)["backend"] != "ray":
            from . import runner  # noqa: F401  (torch: local runs probe here, process workers are forks of here)
    kwargs = dict(backend=backend, workers=workers, address=address, gpus_per_run=gpus_per_run, threads=threads,
                  figures=figures, command=_command())
    if quiet:
        result = sweep.run_sweep(spec, out_dir, **kwargs)
        print_path(result.path)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[current]}", markup=False))
    with progress_bar(*columns) as progress:
        task = progress.add_task(f"sweep {spec.name}", total=len(spec.points), eta="-", current="")

        def on_progress(p):
            eta = "-" if p.eta is None else f"{p.eta:.0f} s"
            progress.update(task, completed=p.done, eta=eta, current=p.current[:60], refresh=True)

        result = sweep.run_sweep(spec, out_dir, on_progress=on_progress, **kwargs)
    out.print(ranking_table(sweep.ranking(result.runs), spec.name))
    failed = f", {result.failed} failed (see runs.csv)" if result.failed else ""
    out.print(f"{result.ran} run(s) in {result.seconds:.1f} s, {result.resumed} resumed{failed}")
    for f in (result.path / "runs.csv", result.path / "layers.csv", result.report):
        if f is not None:
            print_path(f)


def ranking_table(ranked, name: str) -> Table:
    table = Table(title=f"Sweep {name} — ranked by |log10 forward ratio| + |log10 backward ratio| (0 is ideal)")
    for col in ("rank", "run", "forward ratio", "backward ratio", "score"):
        table.add_column(col, overflow="fold")
    for _, r in ranked.iterrows():
        label = escape(str(r.get("label", r.get("run_id"))))
        if r.get("status") == "failed":
            table.add_row(str(r["rank"]), label, "-", "-", escape(f"failed: {r.get('error', '')}"[:80]))
            continue
        table.add_row(str(r["rank"]), label, _num(r["forward_ratio"]), _num(r["backward_ratio"]), _num(r["score"]))
    return table


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="A smoke test in a minute: smaller depths, grid and repetitions than "
                                             "the targets name, so its verdicts are not theirs.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps.", envvar="TORCH_DEVICE")] = D.device,
    out_file: Annotated[Path, typer.Option("--out", help="JSON written here.")] = Path("results/bench.json"),
):
    """Measure the speed and scale targets in one process run (ratios, so a noisy machine still compares like
    with like): instrumentation overhead, 10,000-layer memory, start-up, sweep efficiency; one table + JSON."""
    config.validate(config.RunConfig(device=device))
    with importing():
        from . import bench as bench_mod, runner

    result = bench_mod.run_all(runner.resolve_device(device), quick=quick)
    table = Table(title=f"initprobe bench — {result['device']}, torch {result['torch']}, "
                        f"{result['cpu_count']} CPU(s), matmul {result['matmul_gflops']} GFLOP/s, "
                        f"bare MLP pass at {result['bare_fraction_of_matmul']:.0%} of it")
    for col in ("target", "measured", "goal", "pass", "note"):
        table.add_column(col, overflow="fold")
    for r in result["rows"]:
        verdict = "info" if r["pass"] is None else "[green]pass[/]" if r["pass"] else "[red]FAIL[/]"
        table.add_row(r["target"], f"{r['value']} {r['unit']}".strip(), r["goal"], verdict, r["note"])
    (out if out.is_terminal else Console(width=150)).print(table)  # a log or file gets the notes unfolded
    print_path(bench_mod.write(result, out_file))


@app.command("list")
def list_registry():
    """The initializers (formulas, options and default gains) and activations (gains)."""
    table = Table(title="Initializers (Var = variance of the weights; fan_avg = (fan_in+fan_out)/2)")
    for col in ("name", "aliases", "formula", "options \\[defaults]"):
        table.add_column(col, overflow="fold")
    for name, spec in inits.INITS.items():
        aliases = ", ".join(a for a, c in inits.ALIASES.items() if c == name)
        options = ", ".join(f"{k}={_num(v)}" for k, v in spec.defaults.items()) or "-"
        table.add_row(name + (" (cnn)" if spec.cnn_only else ""), aliases, spec.formula, options)
    out.print(table)
    out.print("Also: package.module:function, a torch.nn.init-style in-place function of your own.\n")
    table = Table(title="Activations (gain: PyTorch's calculate_gain; * = not in PyTorch, 1/sqrt(E[phi(z)^2]))")
    for col in ("name", "aliases", "phi", "gain (--gain auto)"):
        table.add_column(col, overflow="fold")
    for name, act in activations.ACTIVATIONS.items():
        aliases = ", ".join(a for a, c in activations.ALIASES.items() if c == name)
        gain = "sqrt(2/(1+slope^2))" if name == "leaky_relu" else _num(act.gain())
        table.add_row(name, aliases, act.formula, gain + ("" if act.torch_gain else " *"))
    out.print(table)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run directories: one is re-plotted in place, several are "
                                                    "overlaid for comparison.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where an overlay goes "
                                                    "\\[default: results/compare-<runs>].")] = None,
    plot_format: Annotated[str, typer.Option("--format", help="png | svg | pdf.")] = "png",
):
    """Re-plot runs from their CSVs; several runs are drawn over each other."""
    if plot_format not in config.FORMATS:
        raise config.ConfigError(f"--format must be one of {', '.join(config.FORMATS)}, got '{plot_format}'")
    with importing():
        from . import plots, results

    for run_dir in runs:
        results.read_run(run_dir)  # a clear error for anything that is not a run directory
    if len(runs) == 1:
        files = plots.plot_run(runs[0], plot_format)
    else:
        target = out_dir or results.RESULTS_ROOT / ("compare-" + "-vs-".join(p.name for p in runs))[:120]
        files = plots.plot_compare(runs, target, plot_format)
    for f in files:
        print_path(f)


@contextlib.contextmanager
def importing():
    """Heavy imports (torch, pandas, matplotlib) with the cyclic GC off, and what they made frozen out of later
    collections: a million long-lived objects, which the GC otherwise scans again each time the heap grows by a
    quarter (0.4 s of a 2 s import) and at every full collection after. Frozen only when something was imported,
    so a long-lived caller of main() does not freeze its garbage on every call."""
    before, enabled = len(sys.modules), gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > before:
            gc.freeze()
        if enabled:
            gc.enable()


_ARGV: list[str] | None = None  # main(argv)'s arguments


def _command() -> list[str]:
    """The command line as given, for config.json / sweep.json (main() may be called with argv, as tests do)."""
    return ["initprobe", *(sys.argv[1:] if _ARGV is None else _ARGV)]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input becomes one line on stderr and exit code 2, never a traceback."""
    global _ARGV
    _ARGV = argv
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a killed run cleans up like Ctrl-C
    try:
        code = app(args=argv, standalone_mode=False, prog_name="initprobe")
        if code == 130:  # typer turns Ctrl-C into exit code 130 and returns it
            raise KeyboardInterrupt
    except config.ConfigError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except typer.TyperException as e:  # usage errors: bad option, missing argument
        err.print(f"error: {e.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):  # click turns Ctrl-C into Abort
        err.print("interrupted; nothing half-written was left behind (run a sweep again to resume it)")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code if isinstance(code, int) else 0


def console() -> int:
    """The `initprobe` command: main(), then gc.freeze() so that the interpreter's shutdown does not walk every
    object torch, pandas and matplotlib made (a full collection there took 0.6-0.8 s of a 5 s run). Only here:
    main() called in a long-lived process (tests, a notebook) keeps collecting as usual."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console())
