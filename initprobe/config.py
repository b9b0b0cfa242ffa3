"""Run configuration: one dataclass whose fields are the run options, each declared once with what every view of it
needs (help text, help panel, the commands that take it, its choices and bounds). Validation (checks.py), config
files, sweep files, the command-line options of `run`, `theory`, `phase` and `train`, `initprobe list` and
docs/options.md all read these declarations. `TrainConfig` adds the options of `initprobe train` to the run options
it takes.

Precedence: command line > config file > defaults. No torch here: a device's presence is checked by the runner.
"""

import dataclasses
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Callable, Sequence

from . import activations, blocks, inits
from .errors import ConfigError


ARCHS = ("mlp", "cnn")
PADDINGS = ("zeros", "circular")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "float64", "bfloat16")
BIASES = ("zeros", "torch_default", "normal")
FORMATS = ("png", "svg", "pdf")
ARCH_DEFAULTS = {"mlp": (512, 256), "cnn": (64, 32)}  # (width, batch) when not given
MODEL_KIND = "model"  # what a run of --model is, where options say which networks they apply to (Option.scope)
NETWORKS = ARCHS  # the built-in networks
MODEL_BATCH = 8  # a --model run's batch when not given: a real model costs far more per input than a probe layer
MODEL_SEQ_LEN = 128  # token sequence length when not given
INPUT_KINDS = ("auto", "normal", "tokens")
MODEL_MODES = ("train", "eval")
RECORDS = ("params", "blocks")
JACOBIAN_MAX_DIM = 4096  # an (out x in) Jacobian per input; beyond that its SVD is no longer "moderate"
INT64_LIMIT = 2**63  # torch's integers are int64: token ids below this
SEED_LIMIT = INT64_LIMIT  # torch seeds are 64-bit; every seed s, s+1, ... of a run must stay below this
DTYPE_MAX = {"float32": 3.4028234663852886e38, "float64": sys.float_info.max, "bfloat16": 3.3895313892515355e38}
SPREAD = 3.0  # the largest number an init is given, in units of its weights' root mean square (a uniform's bound is
# sqrt(3), a truncated normal's cut 2 / 0.88 of it)
THEORY_MAX_DEPTH = 100_000  # `initprobe theory` computes a quadrature per layer: its time grows with the depth

NETWORK, MODEL, INITIALIZER, MEASUREMENT, OUTPUT = "Network", "Model", "Initializer", "Measurement", "Output"
RUN, THEORY, PHASE = "run", "theory", "phase"
ALL = (RUN, THEORY, PHASE)


@dataclass(frozen=True)
class Option:
    """Everything about one run option except its default (the dataclass field's)."""

    help: str
    panel: str
    commands: tuple[str, ...] = (RUN,)
    choices: Callable[[], Sequence[str]] | None = None  # the valid values, aliases included
    open_choices: str | None = None  # what else a value may be besides a choice ("package.module:function")
    check: Callable[[object], None] | None = None  # a last check of a value on its own; raises ConfigError
    minimum: float | None = None
    maximum: float | None = None  # exclusive
    flag: str | None = None  # the command-line flag, when not --key-with-dashes
    metavar: str | None = None  # how the command line's help shows the value, when not its type or choices
    default_text: str | None = None  # what the default means when it is None or depends on other options
    envvar: str | None = None
    kind: str | None = None  # a registry's noun for unknown-name messages ("activation"); None: "KEY must be one of"
    scope: tuple[str, ...] | None = None  # the networks the option means something for (ARCHS, MODEL_KIND); None: all
    act_flag: str | None = None  # the activation registry's flag without which it means nothing; None: every one
    block: str | None = None  # the block the option means something for (blocks.py); None: every one
    words: tuple[str, ...] = ()  # text a number option also takes ('auto')


def option(default, help: str, panel: str, **kwargs):
    return field(default=default, metadata={"option": Option(help, panel, **kwargs)})


def _names(*values):
    return lambda: values


_NET = dict(panel=NETWORK, commands=(RUN, THEORY), scope=NETWORKS)
_INIT = dict(panel=INITIALIZER, commands=(RUN, THEORY))
_MODEL = dict(panel=MODEL, commands=(RUN,), scope=(MODEL_KIND,))


def _check_init(name: str) -> None:
    """A registry name or package.module:function: the registry says what is wrong."""
    try:
        inits.get(name)
    except KeyError as e:
        raise ConfigError(e.args[0]) from None


def _check_model(spec: str) -> None:
    """The form of --model (importing it is the run's business): hf:MODEL_TYPE or package.module:callable."""
    module, colon, name = spec.partition(":")
    if not colon:
        raise ConfigError(f"model must be package.module:callable or hf:MODEL_TYPE, got '{spec}' "
                          f"(a transformers model type is written hf:{spec})")
    if module == "hf":
        if not name:
            raise ConfigError("model hf: needs a transformers model type, e.g. hf:gpt2")
        return
    dotted = module.split(".")
    if not all(part.isidentifier() for part in dotted) or not name.isidentifier():
        raise ConfigError(f"model must be package.module:callable or hf:MODEL_TYPE, got '{spec}'")


def _check_record(record: str) -> None:
    """params, blocks, or a regular expression of qualified module names."""
    if record in RECORDS:
        return
    try:
        re.compile(record)
    except re.error as e:
        raise ConfigError(f"record '{record}' is neither {' nor '.join(RECORDS)} nor a regular expression: {e}") \
            from None


@dataclass
class RunConfig:
    # the network
    arch: str = option("mlp", "Architecture: a stack of Linear (mlp) or stride-1 'same' Conv2d (cnn) blocks.",
                       **_NET, choices=_names(*ARCHS))
    depth: int = option(50, "Number of blocks (layers) l = 1..depth.", **_NET, minimum=1)
    width: int | None = option(None, "Hidden units (MLP) or channels (CNN) of every block.", **_NET, minimum=1,
                               default_text="512 MLP, 64 CNN")
    input_dim: int | None = option(None, "MLP input size.", **{**_NET, "scope": ("mlp",)}, minimum=1,
                                   default_text="width")
    in_channels: int = option(3, "CNN input channels.", **{**_NET, "scope": ("cnn",)}, minimum=1)
    image_size: int = option(32, "CNN input height and width.", **{**_NET, "scope": ("cnn",)}, minimum=1)
    kernel_size: int = option(3, "CNN kernel size (odd; stride 1, 'same' padding).", **{**_NET, "scope": ("cnn",)},
                              minimum=1)
    padding: str = option("zeros", "CNN padding (circular makes CNN theory exact for wide inputs).", NETWORK,
                          choices=_names(*PADDINGS), scope=("cnn",))
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
                      choices=activations.choices, kind="activation", scope=NETWORKS)
    slope: float = option(0.01, "leaky_relu negative slope.", NETWORK, commands=ALL, scope=NETWORKS,
                          act_flag="takes_slope")
    # a model of the user's instead of the built-in network (any_model.py, module_probe.py)
    model: str | None = option(None, "Probe a model instead of the built-in network: package.module:callable "
                               "(called with the --model-arg values, it returns an nn.Module; e.g. "
                               "torchvision.models:resnet50) or hf:MODEL_TYPE (a Hugging Face transformers model "
                               "built from its config, randomly initialized, nothing downloaded; e.g. hf:gpt2).",
                               MODEL, commands=(RUN,), check=_check_model, metavar="MODULE:CALLABLE|hf:TYPE")
    model_args: dict | None = option(None, "Keyword arguments of the callable, or of the transformers config "
                                     "(e.g. n_layer=4); values are TOML: numbers, strings, lists. Repeatable.",
                                     **_MODEL, flag="--model-arg", default_text="none", metavar="KEY=VALUE")
    input_shape: list[int] | None = option(None, "The input of one example, x ~ N(0, 1) of shape (batch, "
                                           "*input_shape): C,H,W for images, FEATURES for vectors.", **_MODEL,
                                           minimum=1, default_text="a transformers model's config (num_channels, "
                                           "image_size), else required", metavar="C,H,W|FEATURES")
    input_kind: str = option("auto", "normal: x ~ N(0, 1) of --input-shape; tokens: (batch, --seq-len) ids drawn "
                             "uniformly from the vocabulary; auto: tokens for a transformers model whose input is "
                             "input_ids, else normal.", **_MODEL, choices=_names(*INPUT_KINDS))
    seq_len: int | None = option(None, "Tokens per sequence.", **_MODEL, minimum=1, default_text=str(MODEL_SEQ_LEN))
    vocab: int | None = option(None, "Vocabulary of the token ids.", **_MODEL, minimum=1, maximum=INT64_LIMIT,
                               default_text="the model config's vocab_size")
    model_mode: str = option("train", "train: batch statistics and dropout as at the first training step; eval: "
                             "dropout off, norms on their running statistics. (--mode is the fan of he_* and "
                             "variance_scaling.)", **_MODEL, choices=_names(*MODEL_MODES))
    record: str = option("params", "Modules recorded: params (every module that owns parameters: Linear, Conv, "
                         "norms, Embedding), blocks (the items of an nn.ModuleList/nn.Sequential whose output has "
                         "their input's shape), or a regular expression the whole qualified name matches.",
                         **_MODEL, choices=_names(*RECORDS), open_choices="a regular expression",
                         check=_check_record, metavar="params|blocks|REGEX")
    # the initializer: None means "the scheme's own default" (see `initprobe list`)
    init: str | None = option(None, "Weight initializer: a registry name (`initprobe list` shows the formulas) or "
                              "package.module:function, a torch.nn.init-style in-place function of your own. With "
                              "--model, 'model' keeps the model's own initialization; any other re-initializes every "
                              "Linear and Conv weight.", **_INIT, choices=inits.choices,
                              open_choices="package.module:function", check=_check_init, kind="init",
                              default_text="glorot_uniform; model with --model")
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
    bias: str = option("zeros", "Biases: zeros, torch_default (U(+-1/sqrt(fan_in)), as nn.Linear) or normal. With "
                       "--model, the biases of the re-initialized layers (none with --init model).", **_INIT,
                       choices=_names(*BIASES))
    bias_std: float | None = option(None, "Std of the biases with --bias normal.", **_INIT, minimum=0)
    # the measurement
    batch: int | None = option(None, "Inputs per batch, x0 ~ N(0, 1).", MEASUREMENT, commands=(RUN, THEORY),
                               minimum=1, default_text=f"256 MLP, 32 CNN, {MODEL_BATCH} model")
    seeds: int = option(3, "Independent networks and batches (the bands in the plots).", MEASUREMENT, minimum=1)
    seed: int = option(0, "First seed; the same seed gives the same numbers.", MEASUREMENT, minimum=0,
                       maximum=SEED_LIMIT)
    device: str = option("auto", "auto takes CUDA, then MPS, then the CPU.", MEASUREMENT, commands=(RUN, PHASE),
                         choices=_names(*DEVICES), envvar="TORCH_DEVICE")
    dtype: str = option("float32", "Network dtype (statistics in float32 at least).", MEASUREMENT,
                        choices=_names(*DTYPES))
    jacobian: bool = option(False, "Also the singular values of the end-to-end input-output Jacobian at 4 inputs "
                            "(first seed; at most 4096 units): jacobian.csv and a spectrum plot.", MEASUREMENT,
                            scope=NETWORKS)
    checkpoint: bool | None = option(None, "Recompute layers in the backward pass, regenerating weights: memory ~ "
                                     "sqrt(depth), same numbers.", MEASUREMENT,
                                     default_text="automatic, when the plain probe would not fit", scope=NETWORKS)
    # the output
    out: str | None = option(None, "Directory to create for the results; an existing one is never overwritten.",
                             OUTPUT, commands=ALL, default_text="run: results/<arch-init-act-depth-width> or "
                             "results/<model-init>; theory: print only; phase: results/phase-<act>")
    plots: bool = option(True, "Write plots.", OUTPUT)
    plot_format: str = option("png", "Plot format.", OUTPUT, commands=ALL, choices=_names(*FORMATS), flag="--format")

    def __post_init__(self):
        if self.init is None:
            self.init = inits.MODEL_OWN if self.model is not None else "glorot_uniform"
        if self.model is not None:  # the model is its own network: no width; a batch of its own size
            if self.batch is None:
                self.batch = MODEL_BATCH
            return
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
# run's alone: the spectrum at init; checkpointing (training holds the whole network anyway); a --model and its
# options (train trains the built-in network, with a readout of its own)
# train's network is plain blocks without a norm (train.forward); residual blocks and norms are run's and theory's
NOT_TRAINED = ("jacobian", "checkpoint", "model", "block", "norm", "branch_scale") + \
    tuple(k for k, o in OPTIONS.items() if o.scope == (MODEL_KIND,))
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


def network_kind(model, arch) -> str:
    """What a run probes, as option scopes name it: MODEL_KIND for a run of --model, else its arch."""
    return MODEL_KIND if model is not None else arch


def applies(key: str, kind, act=None, block=None) -> bool:
    """Whether option `key` means anything for a network of `kind` (network_kind: an MLP has no padding, a --model
    no depth; None: not known, so every option does) with activation `act` (tanh has no slope; None or a name not
    in the registry: not held against the option) made of `block`s (a plain block has no branch scale; None: any)."""
    opt = DECLARED_OPTIONS.get(key)
    if opt is None:
        return True
    if opt.scope is not None and kind is not None and kind not in opt.scope:
        return False
    if opt.block is not None and isinstance(block, str) and block != opt.block:
        return False
    if opt.act_flag is None or not isinstance(act, str):
        return True
    try:
        return bool(getattr(activations.get(act), opt.act_flag))
    except KeyError:
        return True


def inapplicable(cfg: RunConfig) -> list[str]:
    """The options of `cfg`'s command that mean nothing for its network (what it is, --model or an arch, its
    activation and its block)."""
    kind = network_kind(cfg.model, cfg.arch)
    return [key for key in command_fields(command_of(cfg)) if not applies(key, kind, cfg.act, cfg.block)]


def not_applying(key: str, cfg: RunConfig, name: str | None = None) -> ConfigError:
    """Why option `key` (called `name` in the message) means nothing for `cfg`'s network."""
    opt, kind, name = DECLARED_OPTIONS[key], network_kind(cfg.model, cfg.arch), name or key
    if kind == MODEL_KIND:
        return ConfigError(f"{name} is an option of the built-in network; a --model run takes the model as it is")
    if opt.scope == (MODEL_KIND,):
        return ConfigError(f"{name} goes with --model")
    if not applies(key, kind):
        archs = ", ".join(f"'{a}'" for a in opt.scope)
        return ConfigError(f"{name} does not apply to arch '{cfg.arch}' (only to {archs})")
    if not applies(key, kind, block=cfg.block):
        return ConfigError(f"{name} does not apply to block '{cfg.block}' (only to '{opt.block}')")
    those = [n for n, a in activations.ACTIVATIONS.items() if getattr(a, opt.act_flag)]
    return ConfigError(f"{name} does not apply to activation '{cfg.act}' (only to {', '.join(those)})")


def asdict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def value_types(key: str) -> tuple[type, ...]:
    """The non-None types a key takes (int | None -> (int,))."""
    annotation = DECLARED[key].type
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return tuple(t for t in (typing.get_args(annotation) if union else (annotation,)) if t is not type(None))


def branch_alpha(cfg: RunConfig) -> float:
    """The residual branches' alpha: branch_scale, 'inv_sqrt_depth' resolved to 1/sqrt(depth - 1)."""
    if cfg.branch_scale == "inv_sqrt_depth":
        return 1.0 / math.sqrt(cfg.depth - 1)
    return float(cfg.branch_scale)


def init_params(cfg: RunConfig) -> dict:
    """The resolved options of the init: the scheme's defaults overridden by what the config sets.
    gain 'auto' becomes the activation's gain (PyTorch's where defined)."""
    spec = inits.get(cfg.init)
    params = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in spec.defaults.items()}
    if params.get("gain") == "auto":
        params["gain"] = activations.get(cfg.act).gain(cfg.slope)
    return params
