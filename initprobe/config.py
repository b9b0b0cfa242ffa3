"""Run configuration: one dataclass whose fields are the run options, each declared once with what every view of it
needs (help text, help panel, the commands that take it, its choices and bounds). Validation, config files, sweep
files, the command-line options of `run`, `theory`, `phase` and `train`, `initprobe list` and docs/options.md all
read these declarations. `TrainConfig` adds the options of `initprobe train` to the run options it takes.

Precedence: command line > config file > defaults. No torch here: a device's presence is checked by the runner.
"""

import dataclasses
import importlib.util
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

from . import activations, inits
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
    words: tuple[str, ...] = ()  # text a number option also takes ('auto')


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
    image_size: int = option(32, "CNN input height and width.", NETWORK, minimum=1, arch="cnn")
    kernel_size: int = option(3, "CNN kernel size (odd; stride 1, 'same' padding).", **_NET, minimum=1, arch="cnn")
    padding: str = option("zeros", "CNN padding (circular makes CNN theory exact for wide inputs).", NETWORK,
                          choices=_names(*PADDINGS), arch="cnn")
    act: str = option("tanh", "Activation (`initprobe list` shows each with its gain).", NETWORK, commands=ALL,
                      choices=activations.choices, kind="activation")
    slope: float = option(0.01, "leaky_relu negative slope.", NETWORK, commands=ALL)
    # the initializer: None means "the scheme's own default" (see `initprobe list`)
    init: str = option("glorot_uniform", "Weight initializer: a registry name (`initprobe list` shows the formulas) "
                       "or package.module:function, a torch.nn.init-style in-place function of your own.", **_INIT,
                       choices=inits.choices, open_choices=True, kind="init")
    gain: float | str | None = option(None, "Gain: a number, or 'auto' (PyTorch's calculate_gain for the activation; "
                                      "where PyTorch has none, 1/sqrt(E[phi(z)^2])).", **_INIT,
                                      default_text="the scheme's own: 1, sqrt(2) for he_*", words=("auto",))
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
    batch: int | None = option(None, "Inputs per batch, x0 ~ N(0, 1).", MEASUREMENT, minimum=1,
                               default_text="256 MLP, 32 CNN")
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


# ---- training: `initprobe train` --------------------------------------------------------------------------------

TRAIN = "train"
DATA, TRAINING = "Data", "Training"
DATASETS = ("digits", "teacher")
OPTIMIZERS = ("sgd", "adam")
NOT_TRAINED = ("jacobian", "checkpoint")  # run's alone: the spectrum at init; training holds the whole network anyway
FROM_DATA = ("input_dim", "in_channels", "image_size")  # the data's shape sets them
TRAIN_ARCH_DEFAULTS = {"mlp": (128, 64), "cnn": (16, 64)}  # (width, batch): a default train in well under a minute
DIGITS_SHAPE = (1, 8, 8)  # scikit-learn's digits: 8x8 grey images (an MLP reads them as 64 numbers)
TEACHER_DEFAULTS = {"teacher_dim": 16, "teacher_depth": 3, "teacher_width": 64, "classes": 10,
                    "teacher_examples": 16384}
TEACHER_OPTIONS = tuple(TEACHER_DEFAULTS)
SGD_MOMENTUM = 0.9


def _for_training(key: str, default, **changes):
    """Run option `key` as `train` declares it: the run option's own declaration, with another default (and the
    help or default text that changes with it)."""
    return field(default=default, metadata={"option": dataclasses.replace(OPTIONS[key], **changes)})


_TRAIN = dict(commands=(TRAIN,))


@dataclass
class TrainConfig(RunConfig):
    """`initprobe train`: the network of a run, a linear readout to the classes, minibatch training, and the run's
    statistics recorded every `record_every` steps on the batch being trained on. Every run option but NOT_TRAINED
    is also a train option, except FROM_DATA, which the data sets."""

    depth: int = _for_training("depth", 20)
    width: int | None = _for_training("width", None, default_text="128 MLP, 16 CNN")
    in_channels: int | None = _for_training("in_channels", None)
    image_size: int | None = _for_training("image_size", None)
    batch: int | None = _for_training("batch", None, help="Examples per training minibatch (each recorded step's "
                                      "statistics are taken on one).", default_text="64")
    seeds: int = _for_training("seeds", 3, help="Independent networks and orders of the training data (the bands "
                               "in the plots).")
    out: str | None = _for_training("out", None, default_text="results/train-<arch-init-act-depth-width-data>")
    # the data
    data: str = option("digits", "digits: scikit-learn's bundled 8x8 handwritten digits (needs the train extra), "
                       "standardized, a fixed fifth of each class held out; teacher: Gaussian inputs labelled by a "
                       "random deep tanh network (MLP only).", DATA, **_TRAIN, choices=_names(*DATASETS))
    classes: int | None = option(None, "Classes of the teacher's labels (digits have 10).", DATA, **_TRAIN, minimum=2,
                                 default_text="10")
    teacher_dim: int | None = option(None, "Teacher: input size.", DATA, **_TRAIN, minimum=1, default_text="16")
    teacher_depth: int | None = option(None, "Teacher: tanh layers.", DATA, **_TRAIN, minimum=1, default_text="3")
    teacher_width: int | None = option(None, "Teacher: units per layer.", DATA, **_TRAIN, minimum=1,
                                       default_text="64")
    teacher_examples: int | None = option(None, "Teacher: training examples (a quarter as many are held out).",
                                          DATA, **_TRAIN, minimum=4, default_text="16384")
    # the training
    optimizer: str = option("sgd", "sgd (with momentum) or adam.", TRAINING, **_TRAIN, choices=_names(*OPTIMIZERS))
    lr: float | str = option("auto", "Learning rate: a number, or auto, which falls with depth: sgd "
                             "0.1 (1 - momentum) min(1, 10/depth, 300/depth^2), adam 0.001 min(1, 10/depth, "
                             "300/depth^2).", TRAINING, **_TRAIN, minimum=0, words=("auto",))
    momentum: float | None = option(None, "SGD momentum (adam has its own).", TRAINING, **_TRAIN, minimum=0, maximum=1,
                                    default_text="0.9 with sgd")
    steps: int = option(500, "Optimizer steps.", TRAINING, **_TRAIN, minimum=1)
    record_every: int = option(25, "Record the per-layer statistics and evaluate on the held-out data every K steps "
                               "(and at step 0, before any update, and at the last step).", TRAINING, **_TRAIN,
                               minimum=1)

    def __post_init__(self):
        width, batch = TRAIN_ARCH_DEFAULTS.get(self.arch, TRAIN_ARCH_DEFAULTS["mlp"])
        self.width = width if self.width is None else self.width
        self.batch = batch if self.batch is None else self.batch
        shape = data_shape(self)
        for key in FROM_DATA:  # the data's, or (keys of the other arch) the run option's default
            if getattr(self, key) is None:
                setattr(self, key, shape.get(key, FIELDS[key].default))
        super().__post_init__()


def data_shape(cfg: TrainConfig) -> dict:
    """The network options the data sets (FROM_DATA): what one example looks like."""
    if cfg.data == "teacher":
        return {"input_dim": teacher(cfg)["teacher_dim"]}
    channels, size, _ = DIGITS_SHAPE
    return {"in_channels": channels, "image_size": size} if cfg.arch == "cnn" else {"input_dim": channels * size**2}


def teacher(cfg: TrainConfig) -> dict:
    """The teacher's sizes, its defaults filled in."""
    return {k: TEACHER_DEFAULTS[k] if getattr(cfg, k) is None else getattr(cfg, k) for k in TEACHER_OPTIONS}


def momentum(cfg: TrainConfig) -> float:
    """SGD's momentum (0.9 unless set); 0 for adam, which has its own moments."""
    if cfg.optimizer != "sgd":
        return 0.0
    return SGD_MOMENTUM if cfg.momentum is None else cfg.momentum


def learning_rate(cfg: TrainConfig) -> float:
    """cfg.lr, or for 'auto' a step that falls with depth. The largest stable step of deep tanh and ReLU networks
    (width 128, digits) shrinks like 1/depth (the neural tangent kernel grows like depth at criticality) and, beyond
    about 30 layers, faster, like 1/depth^2 (depth nears the width: finite-width effects). SGD's step is written
    for its effective size lr / (1 - momentum), which is what the stability bound limits; adam's is a hundredth of
    SGD's effective step (docs/training.md, "The learning rate")."""
    if cfg.lr != "auto":
        return float(cfg.lr)
    by_depth = min(1.0, 10.0 / cfg.depth, 300.0 / cfg.depth**2)
    if cfg.optimizer == "adam":
        return 1e-3 * by_depth
    return 0.1 * (1.0 - momentum(cfg)) * by_depth


TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig) if f.name not in NOT_TRAINED + FROM_DATA}
# every declared option, for what does not depend on the command (flag, type, bounds, choices); a key both commands
# take is the run option's declaration
DECLARED = {**FIELDS, **{k: f for k, f in TRAIN_FIELDS.items() if k not in FIELDS}}
DECLARED_OPTIONS: dict[str, Option] = {name: f.metadata["option"] for name, f in DECLARED.items()}
CONFIGS = {RUN: RunConfig, TRAIN: TrainConfig}  # the config of each command that runs networks


def command_fields(command: str) -> dict:
    """The options `command` takes, in declaration order (train: its own declarations of the keys it changes)."""
    if command == TRAIN:
        return TRAIN_FIELDS
    return {k: f for k, f in FIELDS.items() if command in OPTIONS[k].commands}


def commands(key: str) -> tuple[str, ...]:
    """The commands that take option `key`."""
    return DECLARED_OPTIONS[key].commands + ((TRAIN,) if key in TRAIN_FIELDS and key in FIELDS else ())


def command_of(cfg: RunConfig) -> str:
    return TRAIN if isinstance(cfg, TrainConfig) else RUN


def flag(key: str) -> str:
    return DECLARED_OPTIONS[key].flag or "--" + key.replace("_", "-")


def applies(key: str, arch) -> bool:
    """Whether option `key` means anything for a network of `arch` (an MLP has no padding)."""
    return key not in DECLARED_OPTIONS or DECLARED_OPTIONS[key].arch in (None, arch)


def asdict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def value_types(key: str) -> tuple[type, ...]:
    """The non-None types a key takes (int | None -> (int,))."""
    annotation = DECLARED[key].type
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
    if key not in DECLARED:
        raise ConfigError(f"unknown key '{key}'{did_you_mean(key, DECLARED)}")
    if value is None and DECLARED[key].default is None:
        return None
    types = value_types(key)
    if str in types and float in types and isinstance(value, str):  # gain, lr: a number or 'auto', also as text
        value = _number_or_text(value)
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
    opt = DECLARED_OPTIONS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if opt.minimum is not None and value < opt.minimum:
        word = "at least 1" if opt.minimum == 1 else "non-negative" if opt.minimum == 0 else f">= {opt.minimum}"
        raise ConfigError(f"{key} must be {word}, got {value}")
    if opt.maximum is not None and value >= opt.maximum:
        raise ConfigError(f"{key} must be below {opt.maximum}, got {value}")


def _check_choice(key: str, value) -> None:
    opt = DECLARED_OPTIONS[key]
    if opt.words and isinstance(value, str) and value not in opt.words:
        words = " or ".join(f"'{w}'" for w in opt.words)
        raise ConfigError(f"{key} must be a number or {words}, got '{value}'")
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


def checked(data: dict, where: str = "", name: Callable[[str], str] | None = None, keys: dict | None = None) -> dict:
    """`data` with keys normalised (dashes allowed) and each value checked; keys not in `keys` (default: the run
    options) and bad values are named (as name(key), default the key), prefixed with `where`. Kept as a dict of what
    was given, so that defaults which depend on other keys (width, batch) resolve last."""
    keys = FIELDS if keys is None else keys
    values = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        try:
            if key not in keys:
                raise ConfigError(f"unknown key '{raw_key}'{did_you_mean(key, keys)}")
            values[key] = check_value(key, value, name(key) if name else None)
        except ConfigError as e:
            raise ConfigError(where + str(e)) from None
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


def file_options(data: dict, where: str, keys: dict | None = None) -> dict:
    """The options of a config file (`keys`, default the run options): its keys, either all at the top level or all
    under one [run] table."""
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
    return checked(data, where, keys=keys)


def load(path: str | Path | None = None, overrides: dict | None = None, override_name=None,
         command: str = RUN) -> RunConfig:
    """Defaults, then the file's keys (a flat table, or a [run] table), then `overrides` (their keys named in
    messages as override_name(key): the command line's flags); validated. A RunConfig, or the config of `command`
    (CONFIGS) with the options it takes."""
    keys = command_fields(command)
    given = file_options(read_toml(path), f"{path}: ", keys) if path is not None else {}
    cfg = CONFIGS.get(command, RunConfig)(**{**given, **checked(overrides or {}, name=override_name, keys=keys)})
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
    for f in fields(cfg):
        check_value(f.name, getattr(cfg, f.name))
    if cfg.seed + cfg.seeds > SEED_LIMIT:
        raise ConfigError(f"seed + seeds must stay below 2^63, got seed {cfg.seed} with {cfg.seeds} seeds")
    if cfg.arch == "cnn":
        if cfg.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd for 'same' padding, got {cfg.kernel_size}")
        if cfg.image_size < cfg.kernel_size:
            raise ConfigError(f"image_size {cfg.image_size} is too small for kernel_size {cfg.kernel_size}")
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
    if isinstance(cfg, TrainConfig):
        _check_training(cfg)


def _check_training(cfg: TrainConfig) -> None:
    for key in NOT_TRAINED:
        if getattr(cfg, key) not in (None, False):
            raise ConfigError(f"{key} is an option of run, not of train")
    for key, value in data_shape(cfg).items():
        if getattr(cfg, key) != value:
            raise ConfigError(f"{key} is the data's: {value} for {cfg.data}, got {getattr(cfg, key)}")
    if cfg.data != "teacher":
        given = [k for k in TEACHER_OPTIONS if getattr(cfg, k) is not None]
        if given:
            raise ConfigError(f"{given[0]} goes with data = teacher, not {cfg.data}")
    elif cfg.arch == "cnn":
        raise ConfigError("data = teacher is for an MLP (its inputs are vectors); arch = cnn learns data = digits "
                          "(1x8x8 images)")
    if cfg.optimizer != "sgd" and cfg.momentum is not None:
        raise ConfigError(f"momentum is sgd's; {cfg.optimizer} has its own moments")
    if cfg.data == "digits" and importlib.util.find_spec("sklearn") is None:
        raise ConfigError("the digits data needs `pip install initprobe[train]` (scikit-learn, which ships them)")


def _check_jacobian(cfg: RunConfig) -> None:
    spatial = cfg.image_size**2 if cfg.arch == "cnn" else 1
    n_in = cfg.in_channels * spatial if cfg.arch == "cnn" else (cfg.input_dim or cfg.width)
    if max(n_in, cfg.width * spatial) > JACOBIAN_MAX_DIM:
        raise ConfigError(f"--jacobian needs at most {JACOBIAN_MAX_DIM} inputs and outputs per example, got "
                          f"{n_in} -> {cfg.width * spatial}; use a smaller --width or --image-size")
    if cfg.checkpoint:
        raise ConfigError("--jacobian needs the whole network in memory; drop --checkpoint")


def init_params(cfg: RunConfig) -> dict:
    """The resolved options of the init: the scheme's defaults overridden by what the config sets.
    gain 'auto' becomes the activation's gain (PyTorch's where defined)."""
    spec = inits.get(cfg.init)
    params = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in spec.defaults.items()}
    if params.get("gain") == "auto":
        params["gain"] = activations.get(cfg.act).gain(cfg.slope)
    return params


# ---- describing the options --------------------------------------------------------------------------------------

def default_text(key: str, command: str = RUN) -> str:
    """The default of option `key` as `command` declares it, in words where it is None or depends on other options."""
    declared = command_fields(command).get(key, DECLARED[key])
    opt, default = declared.metadata["option"], declared.default
    if opt.default_text is not None:
        return opt.default_text
    return "-" if default is None else str(default).lower() if isinstance(default, bool) else str(default)


def type_text(key: str) -> str:
    """'tanh | relu | ...' for choices, else the type ('int', 'float or auto')."""
    opt = DECLARED_OPTIONS[key]
    if opt.choices is not None:
        names = " | ".join(opt.choices()) if len(opt.choices()) <= 6 else f"an {opt.kind}" if opt.kind[0] in "aeiou" \
            else f"a {opt.kind}"
        return names + (" or package.module:function" if opt.open_choices else "")
    types = [t.__name__ for t in value_types(key) if not (opt.words and t is str)]
    return " or ".join(types + list(opt.words))


def described(key: str) -> tuple[str, str]:
    """(default, meaning) of option `key` for every command that takes it: the run option's, and train's where its
    declaration differs."""
    default, meaning = default_text(key), DECLARED_OPTIONS[key].help
    if key in FIELDS and key in TRAIN_FIELDS:
        if default_text(key, TRAIN) != default:
            default += f"; train: {default_text(key, TRAIN)}"
        if TRAIN_FIELDS[key].metadata["option"].help != meaning:
            meaning += f" Train: {TRAIN_FIELDS[key].metadata['option'].help}"
    return default, meaning


def options_markdown() -> str:
    """docs/options.md: every option of run, theory, phase and train, from the declarations above (a test keeps the
    file equal to this)."""
    lines = ["# Options", "",
             "Generated from `initprobe/config.py` (the one place each option is declared): the same keys go in "
             "config files (flat or under `[run]`, dashes or underscores) and in a sweep's `[base]`, `[grid]` and "
             "`[[point]]` tables; on the command line each is a flag. `initprobe list options` prints this table. "
             f"`train` takes every run option except {', '.join(NOT_TRAINED)} and {', '.join(FROM_DATA)} (the data "
             "sets these), and adds its own (the Data and Training panels of `initprobe train --help`).",
             "", "| key | flag | commands | takes | default | meaning |", "|---|---|---|---|---|---|"]
    for key in DECLARED:
        flags = flag(key) if value_types(key) != (bool,) else f"{flag(key)} / --no-{flag(key)[2:]}"
        default, meaning = described(key)
        cells = [f"`{key}`", f"`{flags}`", ", ".join(commands(key)), type_text(key), default, meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
