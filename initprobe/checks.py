"""What a config may hold: each value against its option's declaration in config.py (type, finiteness, bounds,
choices, the option's own check; text from the command line parsed into the value it stands for), and the whole
config's combinations (validate). Config files, sweep files and the command line all check through here.
"""

import importlib.util
import math
import sys
import typing
from dataclasses import fields
from typing import Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import blocks, inits, shapes
from .config import (DECLARED, DECLARED_OPTIONS, DTYPE_MAX, FIELDS, INIT_OPTIONS, JACOBIAN_MAX_DIM, NOT_TRAINED,
                     SEED_LIMIT, SPREAD, TEACHER_OPTIONS, RunConfig, TrainConfig, data_shape, inapplicable,
                     init_params, not_applying, value_types)
from .errors import ConfigError
from .names import did_you_mean, unknown

# ---- one value -------------------------------------------------------------------------------------------------

_IS = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    dict: lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),  # a TOML table
}


def _is(kind, value) -> bool:
    """Whether `value` is of `kind`: a plain type of _IS, or list[T] (a list of T, not empty)."""
    if typing.get_origin(kind) is list:
        item, = typing.get_args(kind)
        return isinstance(value, list) and bool(value) and all(_is(item, v) for v in value)
    return _IS[kind](value)


def type_name(kind) -> str:
    """'int', 'list of int', 'table' (a dict: a TOML table in files, KEY=VALUE flags on the command line)."""
    if typing.get_origin(kind) is list:
        return "list of " + type_name(typing.get_args(kind)[0])
    return "table (KEY=VALUE)" if kind is dict else kind.__name__


def check_value(key: str, value, name: str | None = None):
    """`value` for `key`, checked on its own (type, finite, bounds, choices, the option's own check) and normalised
    (ints of float keys become floats, a number in text becomes a number where the key takes one, command-line text
    becomes a list or a table: see from_text); ConfigError names the key as `name` (default: the key itself; the
    command line passes its flag). Combinations of keys are validate()'s."""
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
    value = from_text(key, types, value)
    if not any(_is(t, value) for t in types):
        want = " or ".join(type_name(t) for t in types)
        raise ConfigError(f"{key}: expected {want}, got {value!r}")
    if isinstance(value, str) and "\x00" in value:  # no name, path or choice holds one (the OS refuses it in a path)
        raise ConfigError(f"{key} holds a NUL byte: {value!r}")
    if float in types and _IS[float](value):
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    for item in value if isinstance(value, list) else (value,):
        _check_bounds(key, item)
    _check_choice(key, value)
    if DECLARED_OPTIONS[key].check is not None and isinstance(value, str) and value not in _choices(key):
        DECLARED_OPTIONS[key].check(value)
    return value


def from_text(key: str, types: tuple, value):
    """The value a key takes, from the text the command line (or `--set`) gives: a number or 'auto' (gain, lr), a
    list of ints from "3,32,32", a table from KEY=VALUE items (each VALUE TOML, else a string). Anything else as it
    is."""
    if str in types and float in types and isinstance(value, str):  # gain, lr: a number or 'auto', also as text
        return _number_or_text(value)
    if list[int] in types and isinstance(value, str):
        return _int_list(key, value)
    if dict in types and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return _table_of_items(key, value)
    return value


def _int_list(key: str, text: str) -> list[int]:
    parts = [p.strip() for p in text.strip().strip("()[]").split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{key}: expected integers separated by commas (e.g. 3,32,32), got '{text}'") from None


def _table_of_items(key: str, items) -> dict:
    table = {}
    for item in items:
        name, eq, text = item.partition("=")
        if not eq or not name.strip():
            raise ConfigError(f"{key}: expected KEY=VALUE, got '{item}'")
        table[name.strip()] = parse_value(text.strip())
    return table


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


def _choices(key: str) -> list:
    choices = DECLARED_OPTIONS[key].choices
    return [] if choices is None else list(choices())


def _check_choice(key: str, value) -> None:
    opt = DECLARED_OPTIONS[key]
    if opt.words and isinstance(value, str) and value not in opt.words:
        words = " or ".join(f"'{w}'" for w in opt.words)
        raise ConfigError(f"{key} must be a number or {words}, got '{value}'")
    if opt.choices is None or opt.open_choices is not None or not isinstance(value, str):
        return  # an open value (a registry name or package.module:function, a regex): the option's check says
    valid = _choices(key)
    if value not in valid:
        if opt.kind is not None:
            raise ConfigError(unknown(opt.kind, value, valid))
        raise ConfigError(f"{key} must be one of {', '.join(valid)}, got '{value}'{did_you_mean(value, valid)}")


def is_axis(key: str, value) -> bool:
    """Whether a sweep's `value` for `key` is a list of values to cross rather than one value: any list, except
    that a list-valued key's one value is a list too (input_shape = [3, 32, 32]; an axis is a list of lists)."""
    if not isinstance(value, list):
        return False
    takes_list = any(typing.get_origin(t) is list for t in value_types(key)) if key in DECLARED else False
    return not takes_list or all(isinstance(v, list) for v in value)


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


def parse_value(text: str):
    """A `--set key=value` value: TOML syntax where it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# ---- the whole config ------------------------------------------------------------------------------------------

def validate(cfg: RunConfig) -> None:
    """Raise ConfigError with one clear line for anything that cannot run, or that sets an option the network
    ignores (away from its default)."""
    for f in fields(cfg):
        check_value(f.name, getattr(cfg, f.name))
    if cfg.seed + cfg.seeds > SEED_LIMIT:
        raise ConfigError(f"seed + seeds must stay below 2^63, got seed {cfg.seed} with {cfg.seeds} seeds")
    _check_scope(cfg)
    if cfg.model is not None:
        _check_model_run(cfg)
    elif inits.get(cfg.init).model_only:
        raise ConfigError(f"init '{cfg.init}' keeps a --model's own initialization; the built-in network needs a "
                          "scheme (`initprobe list`)")
    if cfg.arch == "cnn" and cfg.model is None:
        if cfg.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd for 'same' padding, got {cfg.kernel_size}")
        if cfg.image_size < cfg.kernel_size:
            raise ConfigError(f"image_size {cfg.image_size} is too small for kernel_size {cfg.kernel_size}")
    _check_architecture(cfg)
    if cfg.jacobian:
        _check_jacobian(cfg)
    spec = inits.get(cfg.init)
    if spec.cnn_only and cfg.arch != "cnn" and cfg.model is None:
        raise ConfigError(f"init '{cfg.init}' needs a convolution weight; use --arch cnn")
    for key in INIT_OPTIONS:
        if getattr(cfg, key) is not None and key not in spec.defaults:
            takes = ", ".join(spec.defaults) or "no options"
            raise ConfigError(f"{key} does not apply to init '{cfg.init}' (it takes {takes})")
    if (cfg.bias == "normal") != (cfg.bias_std is not None):
        raise ConfigError("bias_std goes with bias = normal, and bias = normal needs bias_std")
    _check_range(cfg, spec)
    if isinstance(cfg, TrainConfig):
        _check_training(cfg)


def _check_range(cfg: RunConfig, spec) -> None:
    """torch takes the options it is given as numbers of the network's dtype: one beyond the dtype's range, or a
    scheme whose weights' scale would be beyond it (at the smallest fan, 1, where E[W^2] is largest), cannot run.
    Within the range, draws that overflow are data (inf), as any overflow is."""
    top = DTYPE_MAX[cfg.dtype]
    for key in (f.name for f in fields(cfg) if float in value_types(f.name)):
        value = getattr(cfg, key)
        if isinstance(value, float) and abs(value) > top:
            raise ConfigError(f"{key} {value:g} is beyond the range of {cfg.dtype} (at most {top:.4g})")
    try:
        second_moment = spec.expected_second_moment((1, 1, 1, 1), init_params(cfg))
    except OverflowError:
        second_moment = math.inf
    if second_moment is not None and not SPREAD * math.sqrt(second_moment) <= top:
        given = ", ".join(f"{k} {v:g}" for k, v in init_params(cfg).items() if isinstance(v, float))
        raise ConfigError(f"init '{cfg.init}' ({given}) draws weights beyond the range of {cfg.dtype} "
                          f"(at most {top:.4g})")


def _check_training(cfg: TrainConfig) -> None:
    for key in NOT_TRAINED:
        if getattr(cfg, key) != FIELDS[key].default:
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


def _check_architecture(cfg: RunConfig) -> None:
    """The block, the norm and the branch scale together with the sizes (a --model run has none of them)."""
    if cfg.model is not None:
        return
    block, norm = blocks.block(cfg.block), blocks.norm(cfg.norm)
    if block.stem and cfg.depth < 2:
        raise ConfigError(f"--block {cfg.block} needs depth >= 2: layer 1 is its linear stem, the blocks are layers "
                          f"2..depth, got depth {cfg.depth}")
    if norm.standardizes and norm.group_size(cfg.width, cfg.batch, shapes.positions(cfg)) < 2:
        over, flag_, got = ("the batch", "--batch", cfg.batch) if norm.over == "batch" else \
            ("its units", "--width", cfg.width)
        where = " and positions" if cfg.arch == "cnn" else ""
        raise ConfigError(f"--norm {cfg.norm} standardizes over {over}{where}, and one value has no variance: got "
                          f"{flag_} {got}")


def _check_scope(cfg: RunConfig) -> None:
    """An option set (a value other than its default) for a network it means nothing for is refused: it would be
    silently ignored. The built-in network's options with --model, the model's without it, the CNN's for an MLP
    (and the other way round), slope for an activation it does not shape."""
    defaults = {f.name: f.default for f in fields(cfg)}
    for key in inapplicable(cfg):
        if getattr(cfg, key) != defaults[key]:
            raise not_applying(key, cfg)


def _check_model_run(cfg: RunConfig) -> None:
    spec = inits.get(cfg.init)
    if spec.data_dependent:
        raise ConfigError(f"init '{cfg.init}' rescales the built-in network layer by layer; it cannot re-initialize "
                          "a --model")
    if cfg.gain == "auto":
        raise ConfigError("gain 'auto' is the gain of --act, which a --model run does not have; give a number")
    if spec.model_only and cfg.bias != FIELDS["bias"].default:
        raise ConfigError(f"bias sets the biases of the layers --init re-initializes; init '{cfg.init}' keeps the "
                          "model's own")
    if cfg.input_kind == "tokens" and cfg.input_shape is not None:
        raise ConfigError("input_shape does not apply to input_kind tokens: the input is (batch, seq_len) token ids")
    if cfg.input_kind == "normal":
        for key in ("seq_len", "vocab"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"{key} goes with input_kind tokens, not normal")


def _check_jacobian(cfg: RunConfig) -> None:
    spatial = shapes.positions(cfg)
    n_in, n_out = shapes.input_size(cfg) * spatial, cfg.width * spatial
    if max(n_in, n_out) > JACOBIAN_MAX_DIM:
        raise ConfigError(f"--jacobian needs at most {JACOBIAN_MAX_DIM} inputs and outputs per example, got "
                          f"{n_in} -> {n_out}; use a smaller --width or --image-size")
    if cfg.checkpoint:
        raise ConfigError("--jacobian needs the whole network in memory; drop --checkpoint")
    if blocks.norm(cfg.norm).over == "batch":
        raise ConfigError("--jacobian takes each input's own Jacobian; with --norm batch every output depends on the "
                          "whole batch, so there is none: use --norm layer or none")
