"""Config files: a TOML file of run options read (bounded, UTF-8), checked (flat or under one [run] table, no other
table) and merged with the command line's options into a validated config (`load`). The options themselves are
config.py's, their checks and validation checks.py's.
"""

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .checks import checked, validate
from .config import CONFIGS, DECLARED, RUN, RunConfig, command_fields, inapplicable, not_applying, value_types
from .errors import ConfigError

CONFIG_FILE_LIMIT = 1 << 20  # bytes: a config or sweep file is text of a few KB


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
        name = str(key).replace("-", "_")
        if isinstance(value, dict) and not (name in DECLARED and dict in value_types(name)):
            raise ConfigError(f"{where}unknown table [{key}]; a config file holds run options, flat or under [run]")
    return checked(data, where, keys=keys)


def load(path: str | Path | None = None, overrides: dict | None = None, override_name=None,
         command: str = RUN) -> RunConfig:
    """Defaults, then the file's keys (a flat table, or a [run] table), then `overrides` (their keys named in
    messages as override_name(key): the command line's flags); validated. A RunConfig, or the config of `command`
    (CONFIGS) with the options it takes. An option given that does not apply to the network (kernel_size for an
    MLP, slope for tanh) is refused, even at its default value."""
    keys = command_fields(command)
    given = file_options(read_toml(path), f"{path}: ", keys) if path is not None else {}
    overridden = checked(overrides or {}, name=override_name, keys=keys)
    cfg = CONFIGS.get(command, RunConfig)(**{**given, **overridden})
    for key in inapplicable(cfg):  # given, even at its default: the user expects it to do something
        if key in overridden:
            raise not_applying(key, cfg, override_name(key) if override_name else None)
        if key in given:
            raise ConfigError(f"{path}: {not_applying(key, cfg)}")
    validate(cfg)
    return cfg
