"""Run configuration: one dataclass, loaded with precedence CLI > config file > defaults, then validated.

No torch here: validation that needs a device (is CUDA there?) lives in the runner.
"""

import dataclasses
import difflib
import math
import sys
import typing
from dataclasses import dataclass, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import activations, inits


class ConfigError(ValueError):
    """Bad user input: reported as one line with exit code 2."""


ARCHS = ("mlp", "cnn")
PADDINGS = ("zeros", "circular")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "float64", "bfloat16")
BIASES = ("zeros", "torch_default", "normal")
FORMATS = ("png", "svg", "pdf")
JACOBIAN_MAX_DIM = 4096  # an (out x in) Jacobian per input; beyond that its SVD is no longer "moderate"
INIT_OPTIONS = ("gain", "scale", "mode", "distribution", "std", "bound", "value")


@dataclass
class RunConfig:
    # network (DESIGN section 1)
    arch: str = "mlp"  # mlp | cnn
    depth: int = 50  # number of blocks, layers l = 1..depth
    width: int | None = None  # hidden units (MLP) or channels (CNN) of every block; None: 512 MLP, 64 CNN
    input_dim: int | None = None  # MLP input size; None: width, so every layer is square
    in_channels: int = 3  # CNN input channels
    image_size: int = 32  # CNN input is image_size x image_size
    kernel_size: int = 3  # odd, stride 1, "same" padding
    padding: str = "zeros"  # zeros | circular (circular makes CNN theory exact)
    act: str = "tanh"
    slope: float = 0.01  # leaky_relu negative slope
    # initializer; None means "the scheme's own default" (see `initprobe list`)
    init: str = "glorot_uniform"  # a registry name or package.module:function
    gain: float | str | None = None  # a number, or "auto": PyTorch's gain for the activation
    scale: float | None = None  # variance_scaling
    mode: str | None = None  # fan_in | fan_out | fan_avg | fan_geo_avg (he_*, variance_scaling)
    distribution: str | None = None  # uniform | normal | truncated_normal (presets and variance_scaling)
    std: float | None = None  # normal, truncated_normal
    bound: float | None = None  # uniform
    value: float | None = None  # constant
    bias: str = "zeros"  # zeros | torch_default | normal
    bias_std: float | None = None  # with bias = normal
    # measurement
    batch: int | None = None  # None: 256 for the MLP, 32 for the CNN (a 32x32 CNN costs far more per input)
    seeds: int = 3  # independent networks and batches; plots show a band over them
    seed: int = 0  # seed s, s+1, ... for the networks; same seed, same numbers
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "float32"  # network dtype; statistics are computed in at least float32
    jacobian: bool = False  # also the singular values of the end-to-end Jacobian at a few inputs (seed 0)
    checkpoint: bool | None = None  # recompute layers in the backward (O(sqrt(depth)) memory); None: when needed
    # output
    out: str | None = None  # run directory; None: results/<generated name>
    plots: bool = True
    plot_format: str = "png"

    def __post_init__(self):
        if self.width is None:
            self.width = ARCH_DEFAULTS[self.arch][0] if self.arch in ARCH_DEFAULTS else 512
        if self.batch is None:
            self.batch = ARCH_DEFAULTS[self.arch][1] if self.arch in ARCH_DEFAULTS else 256


ARCH_DEFAULTS = {"mlp": (512, 256), "cnn": (64, 32)}  # (width, batch) when not given


FIELDS = {f.name: f for f in fields(RunConfig)}


def asdict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def closest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _check_type(key: str, value, where: str):
    default = FIELDS[key].default
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    allowed = tuple(t for t in typing.get_args(FIELDS[key].type) or (FIELDS[key].type,) if t is not type(None))
    if value is None and default is None:
        return value
    if not any(ok[k](value) for k in allowed):
        want = " or ".join(k.__name__ for k in allowed)
        raise ConfigError(f"{where}{key}: expected {want}, got {value!r}")
    return float(value) if allowed == (float,) else value


def checked(data: dict, where: str = "") -> dict:
    """`data` with keys normalised (dashes allowed) and type-checked; unknown keys and wrong types are named.
    Kept as a dict of what was given, so that defaults which depend on other keys (width, batch) resolve last."""
    values = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in FIELDS:
            raise ConfigError(f"{where}unknown key '{raw_key}'{closest(key, FIELDS)}")
        values[key] = _check_type(key, value, where)
    return values


def load_toml(path: str | Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"malformed config file {path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None


def load(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults, then the file's keys (a flat table, or a [run] table), then `overrides`; validated."""
    given = {}
    if path is not None:
        data = load_toml(path)
        given = checked(data.get("run", data), f"{path}: ")
    cfg = RunConfig(**{**given, **checked(overrides or {})})
    validate(cfg)
    return cfg


def parse_value(text: str):
    """A `--set key=value` value: TOML syntax where it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _one_of(key: str, value, valid):
    if value not in valid:
        raise ConfigError(f"{key} must be one of {', '.join(valid)}, got '{value}'{closest(str(value), valid)}")


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError with one clear line for anything that cannot run."""
    _one_of("arch", cfg.arch, ARCHS)
    _one_of("padding", cfg.padding, PADDINGS)
    _one_of("device", cfg.device, DEVICES)
    _one_of("dtype", cfg.dtype, DTYPES)
    _one_of("bias", cfg.bias, BIASES)
    _one_of("plot_format", cfg.plot_format, FORMATS)
    for key in ("depth", "width", "batch", "seeds", "in_channels", "image_size", "kernel_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.input_dim is not None and cfg.input_dim < 1:
        raise ConfigError(f"input_dim must be at least 1, got {cfg.input_dim}")
    if cfg.arch == "cnn":
        if cfg.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd for 'same' padding, got {cfg.kernel_size}")
        if cfg.image_size < cfg.kernel_size:
            raise ConfigError(f"image_size {cfg.image_size} is too small for kernel_size {cfg.kernel_size}")
    if cfg.jacobian:
        spatial = cfg.image_size**2 if cfg.arch == "cnn" else 1
        n_in = (cfg.in_channels * spatial) if cfg.arch == "cnn" else (cfg.input_dim or cfg.width)
        if max(n_in, cfg.width * spatial) > JACOBIAN_MAX_DIM:
            raise ConfigError(f"--jacobian needs at most {JACOBIAN_MAX_DIM} inputs and outputs per example, got "
                              f"{n_in} -> {cfg.width * spatial}; use a smaller --width or --image-size")
        if cfg.checkpoint:
            raise ConfigError("--jacobian needs the whole network in memory; drop --checkpoint")
    try:
        activations.get(cfg.act)
        spec = inits.get(cfg.init)
    except KeyError as e:
        raise ConfigError(e.args[0]) from None
    if spec.cnn_only and cfg.arch != "cnn":
        raise ConfigError(f"init '{cfg.init}' needs a convolution weight; use --arch cnn")
    for key in INIT_OPTIONS:
        value = getattr(cfg, key)
        if value is not None and key not in spec.defaults:
            takes = ", ".join(spec.defaults) or "no options"
            raise ConfigError(f"{key} does not apply to init '{cfg.init}' (it takes {takes})")
    if isinstance(cfg.gain, str) and cfg.gain != "auto":
        raise ConfigError(f"gain must be a number or 'auto', got '{cfg.gain}'")
    if cfg.mode is not None:
        _one_of("mode", cfg.mode, inits.MODES)
    if cfg.distribution is not None:
        _one_of("distribution", cfg.distribution, inits.DISTRIBUTIONS)
    for key in ("std", "bound", "scale", "bias_std"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be non-negative, got {getattr(cfg, key)}")
    if (cfg.bias == "normal") != (cfg.bias_std is not None):
        raise ConfigError("bias_std goes with bias = normal, and bias = normal needs bias_std")


def layer_sizes(cfg: RunConfig) -> list[tuple[int, int]]:
    """(in, out) features or channels of each layer; the first maps the input to `width`."""
    first = cfg.in_channels if cfg.arch == "cnn" else (cfg.input_dim or cfg.width)
    return [(first if l == 0 else cfg.width, cfg.width) for l in range(cfg.depth)]


def weight_shape(cfg: RunConfig, n_in: int, n_out: int) -> tuple[int, ...]:
    """As nn.Linear (out, in) / nn.Conv2d (out, in, k, k), so fans are PyTorch's."""
    return (n_out, n_in) if cfg.arch == "mlp" else (n_out, n_in, cfg.kernel_size, cfg.kernel_size)


def weight_sizes(cfg: RunConfig) -> list[int]:
    """Elements of each layer's weight."""
    return [math.prod(weight_shape(cfg, *io)) for io in layer_sizes(cfg)]


def multiply_adds(cfg: RunConfig) -> int:
    """Multiply-adds of one forward pass of a batch (the backward pass costs twice that)."""
    positions = cfg.image_size**2 if cfg.arch == "cnn" else 1
    return cfg.batch * positions * sum(weight_sizes(cfg))


def init_params(cfg: RunConfig) -> dict:
    """The resolved options of the init: the scheme's defaults overridden by what the config sets.
    gain 'auto' becomes the activation's gain (PyTorch's where defined)."""
    spec = inits.get(cfg.init)
    params = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in spec.defaults.items()}
    if params.get("gain") == "auto":
        params["gain"] = activations.get(cfg.act).gain(cfg.slope)
    return params
