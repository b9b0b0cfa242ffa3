"""Run configuration: one dataclass whose fields are the run options, each declared once with what every view of it
needs (help text, help panel, the commands that take it, its choices and bounds). Validation, config files, sweep
files, the command-line options of `run`, `theory` and `phase`, `initprobe list` and docs/options.md all read these
declarations.

Precedence: command line > config file > defaults. No torch here: a device's presence is checked by the runner.
"""

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import activations, blocks, inits
from .names import did_you_mean, unknown


class ConfigError(ValueError):
    """Bad user input: reported as one line with exit code 2."""


ARCHS = ("mlp", "cnn")
PADDINGS = ("zeros", "circular")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "float64", "bfloat16")
BIASES = ("zeros", "torch_default", "normal")
FORMATS = ("png", "svg", "pdf")
ARCH_DEFAULTS = {"mlp": (512, 256), "cnn": (64, 32)}  # (width, batch) when not given
JACOBIAN_MAX_DIM = 4096  # an (out x in) Jacobian per input; beyond that its SVD is no longer "moderate"
SEED_LIMIT = 2**63  # torch seeds are 64-bit; every seed s, s+1, ... of a run must stay below this
CONFIG_FILE_LIMIT = 1 << 20  # bytes: a config or sweep file is text of a few KB

NETWORK, INITIALIZER, MEASUREMENT, OUTPUT = "Network", "Initializer", "Measurement", "Output"
RUN, THEORY, PHASE = "run", "theory", "phase"
ALL = (RUN, THEORY, PHASE)


@dataclass(frozen=True)
class Option:
    """Everything about one run option except its default (the dataclass field's)."""

    help: str
    panel: str
    commands: tuple[str, ...] = (RUN,)
    choices: Callable[[], Sequence[str]] | None = None  # the valid values, aliases included
    open_choices: bool = False  # init: a registry name, or package.module:function
    minimum: float | None = None
    maximum: float | None = None  # exclusive
    flag: str | None = None  # the command-line flag, when not --key-with-dashes
    default_text: str | None = None  # what the default means when it is None or depends on other options
    envvar: str | None = None
    kind: str | None = None  # a registry's noun for unknown-name messages ("activation"); None: "KEY must be one of"
    arch: str | None = None  # the architecture the option means something for; None: every one
    block: str | None = None  # the block the option means something for; None: every one
    words: tuple[str, ...] = ()  # a number-or-text option: the texts it takes besides a number (gain: 'auto')


def option(default, help: str, panel: str, **kwargs):
    return field(default=default, metadata={"option": Option(help, panel, **kwargs)})


def _names(*values):
    return lambda: values


_NET = dict(panel=NETWORK, commands=(RUN, THEORY))
_INIT = dict(panel=INITIALIZER, commands=(RUN, THEORY))


@dataclass
class RunConfig:
    # the network
    arch: str = option("mlp", "Architecture: a stack of Linear (mlp) or stride-1 'same' Conv2d (cnn) blocks.",
                       **_NET, choices=_names(*ARCHS))
    depth: int = option(50, "Number of blocks (layers) l = 1..depth.", **_NET, minimum=1)
    width: int | None = option(None, "Hidden units (MLP) or channels (CNN) of every block.", **_NET, minimum=1,
                               default_text="512 MLP, 64 CNN")
    input_dim: int | None = option(None, "MLP input size.", **_NET, minimum=1, default_text="width", arch="mlp")
    in_channels: int = option(3, "CNN input channels.", **_NET, minimum=1, arch="cnn")
    image_size: int = option(32, "CNN input height and width.", **_NET, minimum=1, arch="cnn")
    kernel_size: int = option(3, "CNN kernel size (odd; stride 1, 'same' padding).", **_NET, minimum=1, arch="cnn")
    padding: str = option("zeros", "CNN padding (circular makes CNN theory exact for wide inputs).", NETWORK,
                          choices=_names(*PADDINGS), arch="cnn")
    block: str = option("plain", "Block: plain (h = N(W x + b), x = phi(h)) or residual (layer 1 a linear stem, then "
                        "x = x + alpha (W phi(N(x)) + b): pre-activation ResNet blocks).", **_NET,
                        choices=blocks.block_choices, kind="block")
    norm: str = option("none", "Normalization N: none, batch (each unit or channel over the batch, train mode) or "
                       "layer (each example over its units; CNN: over C, H, W); gamma 1, beta 0, eps 1e-5.", **_NET,
                       choices=blocks.norm_choices, kind="norm")
    branch_scale: float | str = option(1.0, "Residual branch scale alpha: a number (0 is SkipInit: the identity "
                                       "after the stem), or 'inv_sqrt_depth' for 1/sqrt(depth - 1).", **_NET,
                                       minimum=0, words=("inv_sqrt_depth",), block="residual",
                                       default_text="1")
    act: str = option("tanh", "Activation (`initprobe list` shows each with its gain).", NETWORK, commands=ALL,
                      choices=activations.choices, kind="activation")
    slope: float = option(0.01, "leaky_relu negative slope.", NETWORK, commands=ALL)
    # the initializer: None means "the scheme's own default" (see `initprobe list`)
    init: str = option("glorot_uniform", "Weight initializer: a registry name (`initprobe list` shows the formulas) "
                       "or package.module:function, a torch.nn.init-style in-place function of your own.", **_INIT,
                       choices=inits.choices, open_choices=True, kind="init")
    gain: float | str | None = option(None, "Gain: a number, or 'auto' (PyTorch's calculate_gain for the activation; "
                                      "where PyTorch has none, 1/sqrt(E[phi(z)^2])).", **_INIT, words=("auto",),
                                      default_text="the scheme's own: 1, sqrt(2) for he_*")
    scale: float | None = option(None, "variance_scaling's scale.", **_INIT, minimum=0, default_text="1")
    mode: str | None = option(None, "Fan of he_* and variance_scaling.", **_INIT, choices=lambda: inits.MODES,
                              default_text="fan_in")
    distribution: str | None = option(None, "Distribution; also overrides the Glorot/He/LeCun presets' own. "
                                      "truncated_normal is Keras' (std-corrected); untruncated_normal is Keras' name "
                                      "for normal.", **_INIT, choices=lambda: inits.DISTRIBUTIONS,
                                      default_text="the scheme's own")
    std: float | None = option(None, "Std of 'normal' and 'truncated_normal'.", **_INIT, minimum=0,
                               default_text="0.05")
    bound: float | None = option(None, "Bound of 'uniform'.", **_INIT, minimum=0, default_text="0.05")
    value: float | None = option(None, "Value of 'constant'.", **_INIT, default_text="0.1")
    bias: str = option("zeros", "Biases: zeros, torch_default (U(+-1/sqrt(fan_in)), as nn.Linear) or normal.",
                       **_INIT, choices=_names(*BIASES))
    bias_std: float | None = option(None, "Std of the biases with --bias normal.", **_INIT, minimum=0)
    # the measurement
    batch: int | None = option(None, "Inputs per batch, x0 ~ N(0, 1).", MEASUREMENT, commands=(RUN, THEORY),
                               minimum=1, default_text="256 MLP, 32 CNN")
    seeds: int = option(3, "Independent networks and batches (the bands in the plots).", MEASUREMENT, minimum=1)
    seed: int = option(0, "First seed; the same seed gives the same numbers.", MEASUREMENT, minimum=0,
                       maximum=SEED_LIMIT)
    device: str = option("auto", "auto takes CUDA, then MPS, then the CPU.", MEASUREMENT, commands=(RUN, PHASE),
                         choices=_names(*DEVICES), envvar="TORCH_DEVICE")
    dtype: str = option("float32", "Network dtype (statistics in float32 at least).", MEASUREMENT,
                        choices=_names(*DTYPES))
    jacobian: bool = option(False, "Also the singular values of the end-to-end input-output Jacobian at 4 inputs "
                            "(first seed; at most 4096 units): jacobian.csv and a spectrum plot.", MEASUREMENT)
    checkpoint: bool | None = option(None, "Recompute layers in the backward pass, regenerating weights: memory ~ "
                                     "sqrt(depth), same numbers.", MEASUREMENT,
                                     default_text="automatic, when the plain probe would not fit")
    # the output
    out: str | None = option(None, "Directory to create for the results; an existing one is never overwritten.",
                             OUTPUT, commands=ALL, default_text="run: results/<arch-init-act-depth-width>; "
                             "theory: print only; phase: results/phase-<act>")
    plots: bool = option(True, "Write plots.", OUTPUT)
    plot_format: str = option("png", "Plot format.", OUTPUT, commands=ALL, choices=_names(*FORMATS), flag="--format")

    def __post_init__(self):
        defaults = ARCH_DEFAULTS.get(self.arch, ARCH_DEFAULTS["mlp"])
        if self.width is None:
            self.width = defaults[0]
        if self.batch is None:
            self.batch = defaults[1]


FIELDS = {f.name: f for f in fields(RunConfig)}
OPTIONS: dict[str, Option] = {name: f.metadata["option"] for name, f in FIELDS.items()}
INIT_OPTIONS = ("gain", "scale", "mode", "distribution", "std", "bound", "value")


def flag(key: str) -> str:
    return OPTIONS[key].flag or "--" + key.replace("_", "-")


def applies(key: str, arch, block=None) -> bool:
    """Whether option `key` means anything for a network of `arch` and `block` (an MLP has no padding, a plain
    block no branch scale); block None: any block."""
    if key not in OPTIONS:
        return True
    opt = OPTIONS[key]
    return opt.arch in (None, arch) and opt.block in (None, block or opt.block)


def asdict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def value_types(key: str) -> tuple[type, ...]:
    """The non-None types a key takes (int | None -> (int,))."""
    annotation = FIELDS[key].type
    return tuple(t for t in typing.get_args(annotation) or (annotation,) if t is not type(None))


# ---- one value -------------------------------------------------------------------------------------------------

_IS = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def check_value(key: str, value, name: str | None = None):
    """`value` for `key`, checked on its own (type, finite, bounds, choices) and normalised (ints of float keys
    become floats, a number in text becomes a number where the key takes one); ConfigError names the key as `name`
    (default: the key itself; the command line passes its flag). Combinations of keys are validate()'s."""
    try:
        return _check_value(key, value)
    except ConfigError as e:
        message = str(e)
        if name is not None and message.startswith(key):
            message = name + message[len(key):]
        raise ConfigError(message) from None


def _check_value(key: str, value):
    if key not in OPTIONS:
        raise ConfigError(f"unknown key '{key}'{did_you_mean(key, OPTIONS)}")
    if value is None and FIELDS[key].default is None:
        return None
    types = value_types(key)
    words = OPTIONS[key].words
    if words and isinstance(value, str):  # a number or one of its words (gain: 'auto'), the number also as text
        value = _number_or_text(value)
        if isinstance(value, str) and value not in words:
            raise ConfigError(f"{key} must be a number or {' or '.join(repr(w) for w in words)}, got '{value}'"
                              f"{did_you_mean(value, words)}")
    if not any(_IS[t](value) for t in types):
        want = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{key}: expected {want}, got {value!r}")
    if float in types and _IS[float](value):
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    _check_bounds(key, value)
    _check_choice(key, value)
    return value


def _number_or_text(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _check_bounds(key: str, value) -> None:
    opt = OPTIONS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if opt.minimum is not None and value < opt.minimum:
        word = "at least 1" if opt.minimum == 1 else "non-negative" if opt.minimum == 0 else f">= {opt.minimum}"
        raise ConfigError(f"{key} must be {word}, got {value}")
    if opt.maximum is not None and value >= opt.maximum:
        raise ConfigError(f"{key} must be below {opt.maximum}, got {value}")


def _check_choice(key: str, value) -> None:
    opt = OPTIONS[key]
    if opt.choices is None or not isinstance(value, str):
        return
    if opt.open_choices:  # a registry name or module:function: the registry says what is wrong
        try:
            inits.get(value)
        except KeyError as e:
            raise ConfigError(e.args[0]) from None
        return
    valid = list(opt.choices())
    if value not in valid:
        if opt.kind is not None:
            raise ConfigError(unknown(opt.kind, value, valid))
        raise ConfigError(f"{key} must be one of {', '.join(valid)}, got '{value}'{did_you_mean(value, valid)}")


def checked(data: dict, where: str = "", name: Callable[[str], str] | None = None) -> dict:
    """`data` with keys normalised (dashes allowed) and each value checked; unknown keys and bad values are named
    (as name(key), default the key), prefixed with `where`. Kept as a dict of what was given, so that defaults which
    depend on other keys (width, batch) resolve last."""
    values = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        try:
            values[key] = check_value(key, value, name(key) if name and key in OPTIONS else None)
        except ConfigError as e:
            message = str(e) if key in OPTIONS else f"unknown key '{raw_key}'{did_you_mean(key, OPTIONS)}"
            raise ConfigError(where + message) from None
    return values


# ---- files -----------------------------------------------------------------------------------------------------

def read_text(path: str | Path) -> str:
    """A config or sweep file's text; ConfigError (one line) for a missing, unreadable, binary or huge file (reads at
    most CONFIG_FILE_LIMIT bytes, so /dev/zero is refused, not read forever)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(CONFIG_FILE_LIMIT + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    if len(raw) > CONFIG_FILE_LIMIT:
        raise ConfigError(f"config file {path} is over {CONFIG_FILE_LIMIT >> 10} KiB; a config file is short text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (UTF-8)") from None


def parse_toml(text: str, path: str | Path) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"malformed config file {path}: {e}") from None


def read_toml(path: str | Path) -> dict:
    return parse_toml(read_text(path), path)


def file_options(data: dict, where: str) -> dict:
    """The run options of a config file: its keys, either all at the top level or all under one [run] table."""
    if "run" in data:
        run = data["run"]
        if not isinstance(run, dict):
            raise ConfigError(f"{where}run: expected a table [run], got {run!r}")
        others = [k for k in data if k != "run"]
        if others:
            raise ConfigError(f"{where}'{others[0]}' is outside [run]; put every key under [run] or use no table")
        data = run
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(f"{where}unknown table [{key}]; a config file holds run options, flat or under [run]")
    return checked(data, where)


def load(path: str | Path | None = None, overrides: dict | None = None, override_name=None) -> RunConfig:
    """Defaults, then the file's keys (a flat table, or a [run] table), then `overrides` (their keys named in
    messages as override_name(key): the command line's flags); validated."""
    given = file_options(read_toml(path), f"{path}: ") if path is not None else {}
    cfg = RunConfig(**{**given, **checked(overrides or {}, name=override_name)})
    validate(cfg)
    return cfg


def parse_value(text: str):
    """A `--set key=value` value: TOML syntax where it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# ---- the whole config ------------------------------------------------------------------------------------------

def validate(cfg: RunConfig) -> None:
    """Raise ConfigError with one clear line for anything that cannot run."""
    for key in FIELDS:
        check_value(key, getattr(cfg, key))
    if cfg.seed + cfg.seeds > SEED_LIMIT:
        raise ConfigError(f"seed + seeds must stay below 2^63, got seed {cfg.seed} with {cfg.seeds} seeds")
    if cfg.arch == "cnn":
        if cfg.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd for 'same' padding, got {cfg.kernel_size}")
        if cfg.image_size < cfg.kernel_size:
            raise ConfigError(f"image_size {cfg.image_size} is too small for kernel_size {cfg.kernel_size}")
    _check_architecture(cfg)
    if cfg.jacobian:
        _check_jacobian(cfg)
    spec = inits.get(cfg.init)
    if spec.cnn_only and cfg.arch != "cnn":
        raise ConfigError(f"init '{cfg.init}' needs a convolution weight; use --arch cnn")
    for key in INIT_OPTIONS:
        if getattr(cfg, key) is not None and key not in spec.defaults:
            takes = ", ".join(spec.defaults) or "no options"
            raise ConfigError(f"{key} does not apply to init '{cfg.init}' (it takes {takes})")
    if (cfg.bias == "normal") != (cfg.bias_std is not None):
        raise ConfigError("bias_std goes with bias = normal, and bias = normal needs bias_std")


def _check_architecture(cfg: RunConfig) -> None:
    """The block, the norm and the branch scale together with the sizes."""
    block, norm = blocks.block(cfg.block), blocks.norm(cfg.norm)
    if block.stem and cfg.depth < 2:
        raise ConfigError(f"--block {cfg.block} needs depth >= 2: layer 1 is its linear stem, the blocks are layers "
                          f"2..depth, got depth {cfg.depth}")
    if not block.stem and cfg.branch_scale != FIELDS["branch_scale"].default:
        raise ConfigError(f"branch_scale applies to residual blocks, not to --block {cfg.block}; add --block residual")
    positions = cfg.image_size**2 if cfg.arch == "cnn" else 1
    if norm.standardizes and norm.group_size(cfg.width, cfg.batch, positions) < 2:
        over, flag_, got = ("the batch", "--batch", cfg.batch) if norm.over == "batch" else \
            ("its units", "--width", cfg.width)
        where = " and positions" if cfg.arch == "cnn" else ""
        raise ConfigError(f"--norm {cfg.norm} standardizes over {over}{where}, and one value has no variance: got "
                          f"{flag_} {got}")


def branch_alpha(cfg: RunConfig) -> float:
    """The residual branches' alpha: branch_scale, 'inv_sqrt_depth' resolved to 1/sqrt(depth - 1)."""
    if cfg.branch_scale == "inv_sqrt_depth":
        return 1.0 / math.sqrt(cfg.depth - 1)
    return float(cfg.branch_scale)


def _check_jacobian(cfg: RunConfig) -> None:
    spatial = cfg.image_size**2 if cfg.arch == "cnn" else 1
    n_in = cfg.in_channels * spatial if cfg.arch == "cnn" else (cfg.input_dim or cfg.width)
    if max(n_in, cfg.width * spatial) > JACOBIAN_MAX_DIM:
        raise ConfigError(f"--jacobian needs at most {JACOBIAN_MAX_DIM} inputs and outputs per example, got "
                          f"{n_in} -> {cfg.width * spatial}; use a smaller --width or --image-size")
    if cfg.checkpoint:
        raise ConfigError("--jacobian needs the whole network in memory; drop --checkpoint")
    if blocks.norm(cfg.norm).over == "batch":
        raise ConfigError("--jacobian takes each input's own Jacobian; with --norm batch every output depends on the "
                          "whole batch, so there is none: use --norm layer or none")


def init_params(cfg: RunConfig) -> dict:
    """The resolved options of the init: the scheme's defaults overridden by what the config sets.
    gain 'auto' becomes the activation's gain (PyTorch's where defined)."""
    spec = inits.get(cfg.init)
    params = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in spec.defaults.items()}
    if params.get("gain") == "auto":
        params["gain"] = activations.get(cfg.act).gain(cfg.slope)
    return params


# ---- describing the options --------------------------------------------------------------------------------------

def default_text(key: str) -> str:
    opt, default = OPTIONS[key], FIELDS[key].default
    if opt.default_text is not None:
        return opt.default_text
    return "-" if default is None else str(default).lower() if isinstance(default, bool) else str(default)


def type_text(key: str) -> str:
    """'tanh | relu | ...' for choices, else the type ('int', 'float or str')."""
    opt = OPTIONS[key]
    if opt.words:
        return "a number or " + " or ".join(opt.words)
    if opt.choices is not None:
        names = " | ".join(opt.choices()) if len(opt.choices()) <= 6 else f"an {opt.kind}" if opt.kind[0] in "aeiou" \
            else f"a {opt.kind}"
        return names + (" or package.module:function" if opt.open_choices else "")
    return " or ".join(t.__name__ for t in value_types(key))


def options_markdown() -> str:
    """docs/options.md: every run option, from the declarations above (a test keeps the file equal to this)."""
    lines = ["# Run options", "",
             "Generated from `initprobe/config.py` (the one place each option is declared): the same keys go in "
             "config files (flat or under `[run]`, dashes or underscores) and in a sweep's `[base]`, `[grid]` and "
             "`[[point]]` tables; on the command line each is a flag. `initprobe list options` prints this table.",
             "", "| key | flag | commands | takes | default | meaning |", "|---|---|---|---|---|---|"]
    for key, opt in OPTIONS.items():
        flags = flag(key) if value_types(key) != (bool,) else f"{flag(key)} / --no-{flag(key)[2:]}"
        cells = [f"`{key}`", f"`{flags}`", ", ".join(opt.commands), type_text(key), default_text(key), opt.help]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
