"""The `initprobe` command: parse, build the config, call the library, render. No experiment logic lives here.

Options come from their declarations (cli/options.py); precedence: command line > --config FILE > defaults. Bad
input of any kind is one line on stderr and exit code 2. Heavy imports (torch, pandas, matplotlib) happen inside
the commands, so `initprobe --help` and `initprobe list` stay instant.
"""

import contextlib
import gc
import os
import signal
import sys
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.console import Console

from .. import __version__, config
from . import tables
from .options import argument, choice_error, load, option, run_options, sweep_options, text, with_options

app = typer.Typer(
    help="Signal propagation at initialization: per-layer activation and gradient statistics of deep "
    "MLPs and CNNs, with mean-field theory beside them, written as CSV/JSON and plots.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)
# emoji off: text such as "host:1234: refused" or a path would otherwise lose ":1234:" to an emoji
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)


def _version(value: bool):
    if value:
        out.print(f"initprobe {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Signal propagation at initialization."""


QUIET = option("quiet", bool, False, "--quiet", help="Print only the run directory (for scripts).",
               rich_help_panel=config.OUTPUT)


@app.command(help=text("Probe one network: forward and backward a random batch, record per-layer statistics, write "
                       "results/<run>/ (config.json, layers.csv, summary.json, plots/).\n\n"
                       "Example: initprobe run --init glorot_uniform --act tanh --depth 50"))
@with_options(*run_options(config.RUN), QUIET)
def run(ctx: typer.Context, **values):
    cfg = load(ctx, values)
    with importing():
        from .. import runner

        if cfg.plots:
            from .. import plots  # noqa: F401  (runner.run draws with it)

    if values["quiet"]:
        print_path(runner.run(cfg, command=_command()).path)
        return
    with progress_bar() as progress:
        task = progress.add_task(f"probing {cfg.seeds} network(s)", total=cfg.seeds)
        result = runner.run(cfg, on_seed=lambda i: progress.update(task, completed=i, refresh=True),
                            command=_command())
    out.print(tables.summary(result.summary, result.path))
    if result.summary["theory"] is not None:  # a --model has none: the summary's caption says why
        out.print(tables.run_theory(result.summary["theory"], f"{cfg.init} · {cfg.act} · {cfg.arch.upper()} depth "
                                                              f"{cfg.depth}"))
    if result.summary["checkpoint"]["used"]:
        out.print(f"checkpointed ({result.summary['checkpoint']['why']})", markup=False)


@app.command("train", help=text(
    "Train the probed network briefly: the network of run plus a linear readout to the classes, minibatch SGD or "
    "Adam on real data (scikit-learn's digits, or a teacher network's labels), recording run's per-layer statistics "
    "on the batch being trained on every K steps. Writes results/train-<run>/ (config.json, layers.csv with a step "
    "column, metrics.csv, summary.json with the trainability mean-field theory predicts, plots/). On the CPU it "
    "uses one thread unless OMP_NUM_THREADS says otherwise: a training step of these sizes is a chain of small "
    "operations that a second thread does not speed up.\n\n"
    "Example: initprobe train --act tanh --init variance_scaling --scale 1.76 --bias normal --bias-std 0.2236 "
    "--depth 50"))
@with_options(*run_options(config.TRAIN), QUIET)
def train_cmd(ctx: typer.Context, **values):
    cfg = load(ctx, values, config.TRAIN)
    with importing():
        from .. import train

        if cfg.plots:
            from .. import plots  # noqa: F401  (train.train draws with it)
    if values["quiet"]:
        with one_thread():
            print_path(train.train(cfg, command=_command()).path)
        return
    with progress_bar(*_progress_columns()) as progress, one_thread():
        task = progress.add_task(f"training {cfg.seeds} network(s)", total=cfg.seeds * cfg.steps)
        result = train.train(cfg, on_progress=lambda done: progress.update(task, completed=done, refresh=True),
                             command=_command())
    out.print(tables.training(result.summary, result.path))


@contextlib.contextmanager
def one_thread():
    """torch's intra-op threads set to one inside the block (and restored after), unless OMP_NUM_THREADS names a
    number of its own."""
    from .. import devices

    with devices.torch_threads(None if "OMP_NUM_THREADS" in os.environ else 1):
        yield


def _progress_columns():
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), \
        TimeRemainingColumn()


def progress_bar(*columns):
    """A transient bar on stderr, shown only on a terminal (in a pipe it would leave a blank line before an error),
    redrawn on each update rather than by rich's refresh thread: with no second thread, the process may fork (the
    figures' drawing processes, the sweep's workers) without copying a lock that thread holds."""
    from rich.progress import Progress

    return Progress(*columns, console=err, transient=True, auto_refresh=False, disable=not err.is_terminal)


def print_path(path) -> None:
    """A path on one line, as is (no wrapping, no markup): scripts read it."""
    out.print(str(path), soft_wrap=True, markup=False, highlight=False)


@app.command("theory", help=text(
    f"Mean-field predictions per layer without running a network (no torch; up to {config.THEORY_MAX_DEPTH:,} "
    "layers): q^l, activation and gradient variances, the fixed point q*, chi_1, depth scales and the regime "
    "(ordered / critical / chaotic).\n\n"
    "Example: initprobe theory --act tanh --init glorot_normal --depth 100"))
@with_options(*run_options(config.THEORY))
def theory_cmd(ctx: typer.Context, **values):
    cfg = load(ctx, values)
    with importing():
        from .. import predict, results

    frame, scales = predict.for_config(cfg)
    if cfg.out is not None:  # validated and reserved before anything is printed or drawn
        res = results.reserve(cfg.out, "theory")
    out.print(tables.scales({"nominal": scales}, f"{cfg.init} · {cfg.act} · {cfg.arch.upper()} depth {cfg.depth}"))
    out.print(tables.layers(frame, tables.layer_columns(cfg.block, cfg.norm)))
    if cfg.out is None:
        return
    with importing():
        from .. import plots

    with results.publishing(res) as staging:
        results.write_csv(frame, staging / "theory.csv")
        results.write_json(staging / "theory.json", {"config": config.asdict(cfg), "scales": scales})
        names = [p.name for p in plots.plot_theory(frame, scales, config.asdict(cfg), staging, cfg.plot_format)]
    for name in ("theory.csv", "theory.json", *names):
        print_path(res.final / name)


@app.command(help=text(
    "The (sigma_w^2, sigma_b^2) phase diagram of an activation: chi_1 at the fixed point, with the critical line "
    "chi_1 = 1 between order (gradients vanish) and chaos (they explode). Writes phase.csv and a heatmap."))
@with_options(*run_options(config.PHASE), option(
    "measure", bool, False, "--measure/--no-measure", help="Also measure chi_1 (the per-layer gradient gain) on "
    "small networks over a coarse grid, drawn as points.", rich_help_panel=config.MEASUREMENT))
def phase(ctx: typer.Context, **values):
    cfg = load(ctx, values)
    with importing():
        from .. import phase as phase_mod, plots, results

        device = _measuring_device(cfg.device) if values["measure"] else None
    res = results.reserve(cfg.out, f"phase-{cfg.act}")
    with results.publishing(res) as staging:
        grid, sb2, critical = phase_mod.predicted(cfg.act, cfg.slope)
        results.write_csv(grid, staging / "phase.csv")
        measured = phase_mod.measured(cfg.act, cfg.slope, device) if device is not None else None
        if measured is not None:
            results.write_csv(measured, staging / "phase_measured.csv")
        files = [p.name for p in plots.plot_phase(grid, sb2, critical, measured, cfg.act, staging, cfg.plot_format)]
    for name in ("phase.csv", *(["phase_measured.csv"] if measured is not None else []), *files):
        print_path(res.final / name)


def _measuring_device(name: str):
    from .. import devices

    return devices.resolve(name)


@app.command("sweep", help=text(
    "Run a grid of configurations (resumable: completed runs are skipped), write runs.csv, a tidy layers.csv, "
    "comparison figures and report.html, and rank the schemes.\n\n"
    "Example: initprobe sweep configs/sweeps/glorot_bengio_2010.toml"))
@with_options(
    argument("file", Path, "Sweep file: optional [sweep] options, [base] run options, [grid] lists (crossed), "
                           "optional [[point]] tables."),
    option("sets", Optional[list[str]], None, "--set", help="Override a key everywhere: key=value (a TOML value; a "
           "list makes it an axis), or sweep.KEY=value for a sweep option. Repeatable."),
    option("out_dir", Optional[Path], None, "--out", help="Sweep directory, created or resumed (the one output that "
           "is written into again: a second invocation resumes it) [default: results/<name>].", show_default=False),
    *sweep_options(),
    option("quiet", bool, False, "--quiet", help="Print only the sweep directory."))
def sweep_cmd(ctx: typer.Context, **values):
    with importing():
        from .. import sweep

        spec = sweep.load_sweep(values["file"], values["sets"] or ())
        options = {k: values[k] for k in sweep.SWEEP_OPTIONS if k in values}
        if sweep.resolve_options(spec, **options)["backend"] != "ray":
            from .. import runner  # noqa: F401  (torch: local runs probe here, process workers are forks of here)
    kwargs = dict(options, command=_command())
    if values["quiet"]:
        result = sweep.run_sweep(spec, values["out_dir"], **kwargs)
        print_path(result.path)
        return _every_run_failed(result)
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[current]}", markup=False))
    with progress_bar(*columns) as progress:
        task = progress.add_task(f"sweep {spec.name}", total=len(spec.points), eta="-", current="")

        def on_progress(p):
            eta = "-" if p.eta is None else f"{p.eta:.0f} s"
            progress.update(task, completed=p.done, eta=eta, current=p.current[:60], refresh=True)

        result = sweep.run_sweep(spec, values["out_dir"], on_progress=on_progress, **kwargs)
    from .. import analysis

    out.print(tables.ranking(analysis.ranking(result.runs), spec.name))
    failed = f", {result.failed} failed (see runs.csv)" if result.failed else ""
    out.print(f"{result.ran} run(s) in {result.seconds:.1f} s, {result.resumed} resumed{failed}", markup=False)
    for f in (result.path / "runs.csv", result.path / "layers.csv", result.report):
        if f is not None and f.exists():  # no layers.csv when no run is ok
            print_path(f)
    return _every_run_failed(result)


def _every_run_failed(result) -> int:
    """The exit code of a finished sweep: 1, said in one line, when no run of it is ok (nothing to compare)."""
    runs = result.runs
    if len(runs) and not (runs["status"] == "ok").any():
        _error(f"every run of the sweep failed ({len(runs)} of {len(runs)}); their errors are in "
               f"{result.path / 'runs.csv'}")
        return 1
    return 0


@app.command(help=text(
    "Measure the speed and scale targets in one process run (ratios, so a noisy machine still compares like with "
    "like): instrumentation overhead, 10,000-layer memory, start-up, sweep efficiency; one table and a JSON file."))
@with_options(
    option("quick", bool, False, "--quick", help="A smoke test in a minute: smaller depths, grid and repetitions "
           "than the targets name, so its verdicts are not theirs."),
    option("device", Literal.__getitem__(config.DEVICES), "auto", "--device", envvar="TORCH_DEVICE",
           help="auto takes CUDA, then MPS, then the CPU."),
    option("json_file", Path, Path("results/bench.json"), "--json", help="The JSON file to write (replaced if it "
           "exists)."))
def bench(ctx: typer.Context, **values):
    with importing():
        from .. import bench as bench_mod, devices, results

    target = results.writable_file(values["json_file"])
    result = bench_mod.run_all(devices.resolve(values["device"]), quick=values["quick"])
    wide = Console(width=150, emoji=False)  # a log gets the notes unfolded
    (out if out.is_terminal else wide).print(tables.bench(result))
    print_path(bench_mod.write(result, target))


LIST_WHAT = ("all", "inits", "activations", "blocks", "options")


@app.command("list", help=text("The initializers (formulas, options and default gains), the activations (gains), the "
                               "blocks and norms, and the run options."))
@with_options(argument("what", Optional[Literal.__getitem__(LIST_WHAT)], "What to list [default: all].", None))
def list_registry(ctx: typer.Context, **values):
    what = values.get("what") or "all"
    shown = {"inits": tables.initializers, "activations": tables.activation_table, "blocks": tables.block_table,
             "options": tables.option_table}
    for name, make in shown.items():
        if what in ("all", name):
            out.print(make())


@app.command(help=text("Re-plot runs from their CSVs: one run's plots/ is drawn again in place; several runs are "
                       "drawn over each other into a new directory."))
@with_options(
    argument("runs", list[Path], "Run directories."),
    option("out_dir", Optional[Path], None, "--out", help="Directory to create for an overlay, never overwritten "
           "[default: results/compare-<runs>].", show_default=False),
    option("plot_format", Literal.__getitem__(config.FORMATS), "png", "--format", help="Plot format."))
def plot(ctx: typer.Context, **values):
    with importing():
        from .. import plots, results

    runs, fmt = values["runs"], values["plot_format"]
    for run_dir in runs:
        results.read_run(run_dir)  # a clear error for anything that is not a run directory
    if len(runs) == 1:
        files = plots.plot_run(runs[0], fmt)
    else:
        name = ("compare-" + "-vs-".join(p.name for p in runs))[:120]
        res = results.reserve(None if values["out_dir"] is None else str(values["out_dir"]), name)
        with results.publishing(res) as staging:
            names = [p.name for p in plots.plot_compare(runs, staging, fmt)]
        files = [res.final / n for n in names]
    for f in files:
        print_path(f)


@contextlib.contextmanager
def importing():
    """Heavy imports (torch, pandas, matplotlib) with the cyclic GC off, and what they made frozen out of later
    collections: a million long-lived objects, which the GC otherwise scans again each time the heap grows by a
    quarter and at every full collection after. Frozen only when something was imported, so a long-lived caller of
    main() does not freeze its garbage on every call."""
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


INTERRUPTED = "interrupted; nothing half-written was left behind (run a sweep again to resume it)"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _error(message: str) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


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
        _error(str(e))
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage errors: bad option, missing argument, a value not among the choices
        _error(choice_error(e) or e.format_message())
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):  # click turns Ctrl-C into Abort
        err.print(INTERRUPTED, markup=False, highlight=False, soft_wrap=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code if isinstance(code, int) else 0


def console() -> int:
    """The `initprobe` command: main(), then gc.freeze() so that the interpreter's shutdown does not walk every
    object torch, pandas and matplotlib made. Only here: main() called in a long-lived process (tests, a notebook)
    keeps collecting as usual."""
    code = main()
    gc.freeze()
    return code
