"""The `initprobe` command: thin — parse, build the config, call the library, render.

Config precedence: command-line options > --config FILE > defaults. Bad input of any kind is one line on
stderr and exit code 2. Heavy imports (torch, pandas, matplotlib) happen inside the commands.
"""

import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer._click.core import ParameterSource
from typer._click.exceptions import ClickException

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
    keep = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {k: v for k, v in params.items() if ctx.get_parameter_source(k) in keep}


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
                                      "[default: 512 MLP, 64 CNN].", NET)]
InputDim = Annotated[Optional[int], _opt("MLP input size [default: width].", NET)]
InChannels = Annotated[int, _opt("CNN input channels.", NET)]
ImageSize = Annotated[int, _opt("CNN input height and width.", NET)]
KernelSize = Annotated[int, _opt("CNN kernel size (odd; stride 1, 'same' padding).", NET)]
Padding = Annotated[str, _opt("CNN padding: zeros | circular.", NET)]
Slope = Annotated[float, _opt("leaky_relu negative slope.", NET)]
Gain = Annotated[Optional[str], _opt(
    "Gain: a number, or 'auto' (PyTorch's calculate_gain for the activation; otherwise 1/sqrt(E[phi(z)^2])) "
    "[default: the scheme's own: 1, sqrt(2) for he_*].", INIT)]
Scale = Annotated[Optional[float], _opt("variance_scaling scale [default: 1].", INIT)]
Mode = Annotated[Optional[str], _opt(f"Fan mode: {' | '.join(inits.MODES)} (he_*, variance_scaling).", INIT,
                                     autocompletion=_complete(inits.MODES))]
Distribution = Annotated[Optional[str], _opt(
    "uniform | normal | truncated_normal (Keras' std-corrected); also overrides the Glorot/He/LeCun "
    "presets' own.", INIT, autocompletion=_complete(inits.DISTRIBUTIONS))]
Std = Annotated[Optional[float], _opt("Std of 'normal' and 'truncated_normal' [default: 0.05].", INIT)]
Bound = Annotated[Optional[float], _opt("Bound of 'uniform' [default: 0.05].", INIT)]
Value = Annotated[Optional[float], _opt("Value of 'constant' [default: 0.1].", INIT)]
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
    batch: Annotated[Optional[int], _opt("Inputs per batch, x0 ~ N(0, 1) [default: 256 MLP, 32 CNN].",
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
        "[default: automatic, when the plain probe would not fit].", MEASURE)] = None,
    out_dir: Annotated[Optional[str], typer.Option(
        "--out", help="Run directory to create [default: results/<arch-init-act-depth-width>].",
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

    from . import runner

    if quiet:
        result = runner.run(cfg, command=["initprobe", *sys.argv[1:]])
        out.print(str(result.path))
        return
    from rich.progress import Progress

    with Progress(transient=True, console=err) as progress:
        task = progress.add_task(f"probing {cfg.seeds} network(s)", total=cfg.seeds)
        result = runner.run(cfg, on_seed=lambda i: progress.update(task, completed=i),
                            command=["initprobe", *sys.argv[1:]])
    out.print(summary_table(result.summary, result.path))
    if result.summary["checkpoint"]["used"]:
        out.print(f"checkpointed ({result.summary['checkpoint']['why']})")


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


@app.command("list")
def list_registry():
    """The initializers (formulas, options and default gains) and activations (gains)."""
    table = Table(title="Initializers (Var = variance of the weights; fan_avg = (fan_in+fan_out)/2)")
    for col in ("name", "aliases", "formula", "options [defaults]"):
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
                                                    "[default: results/compare-<runs>].")] = None,
    plot_format: Annotated[str, typer.Option("--format", help="png | svg | pdf.")] = "png",
):
    """Re-plot runs from their CSVs; several runs are drawn over each other."""
    if plot_format not in config.FORMATS:
        raise config.ConfigError(f"--format must be one of {', '.join(config.FORMATS)}, got '{plot_format}'")
    from . import plots, results

    for run_dir in runs:
        results.read_run(run_dir)  # a clear error for anything that is not a run directory
    if len(runs) == 1:
        files = plots.plot_run(runs[0], plot_format)
    else:
        target = out_dir or results.RESULTS_ROOT / ("compare-" + "-vs-".join(p.name for p in runs))[:120]
        files = plots.plot_compare(runs, target, plot_format)
    for f in files:
        out.print(str(f))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input becomes one line on stderr and exit code 2, never a traceback."""
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a killed run cleans up like Ctrl-C
    try:
        code = app(args=argv, standalone_mode=False, prog_name="initprobe")
    except config.ConfigError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except ClickException as e:
        err.print(f"error: {e.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted; nothing half-written was left in results/")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
