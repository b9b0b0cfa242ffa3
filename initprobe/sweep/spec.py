"""The sweep file: its tables, options and `--set` overrides, validated with the run options' own checks
(checks.check_value, checks.validate) and expanded into the runs, each with a stable id. See the package docstring
for the file's format."""

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import activations, checks, config, config_files, formatting, inits
from ..config import ConfigError, RunConfig
from ..names import did_you_mean

TABLES = ("sweep", "base", "grid", "point")
BACKENDS = ("local", "process", "ray")
COMMANDS = tuple(config.CONFIGS)  # what each point runs: `initprobe run` or `initprobe train`
NOT_IN_ID = ("out", "plots")  # where a run goes and whether it draws its own plots do not change its numbers


@dataclass(frozen=True)
class SweepOption:
    """A [sweep] option, declared once: the file's table, `--set sweep.KEY=...` and the command line read it."""

    kind: type
    default: object
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    cli: bool = True  # also an option of `initprobe sweep` (name and plots are the file's or --set's)


SWEEP_OPTIONS = {
    "name": SweepOption(str, None, "The sweep directory, results/<name> (default: the file's stem).", cli=False),
    "command": SweepOption(str, "run", "What every point runs: run (probe at initialization) or train (train it, "
                           "recording the same statistics; the report adds a trainability heatmap). The file's "
                           "keys are that command's options.", choices=COMMANDS, cli=False),
    "backend": SweepOption(str, "local", "Where the runs run: local (one after another, here), process (worker "
                           "processes), ray (Ray tasks on a local Ray or a cluster).", choices=BACKENDS),
    "workers": SweepOption(int, 2, "Processes of the process backend.", minimum=1),
    "threads": SweepOption(int, 1, "torch threads of every probe, in every backend (so the numbers do not depend "
                           "on the backend).", minimum=1),
    "figures": SweepOption(bool, True, "Comparison figures and report.html at the end."),
    "plots": SweepOption(bool, False, "Each run's own plots (they cost more than its probe).", cli=False),
    "address": SweepOption(str, None, "Ray cluster to join with the ray backend (e.g. auto, ray://head:10001)."),
    "gpus_per_run": SweepOption(float, 0.0, "Ray: GPUs of each task; a fraction shares one.", minimum=0),
}
_FOLDER_NAME = re.compile(r"[/\\\s\x00]")


def check_option(key: str, value):
    """A [sweep] option's value, type- and range-checked (ints of float options become floats)."""
    opt = SWEEP_OPTIONS[key]
    ok = isinstance(value, opt.kind) and (opt.kind is bool or not isinstance(value, bool))
    if opt.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"expected {opt.kind.__name__}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value}")
    if opt.choices and value not in opt.choices:
        raise ConfigError(f"must be one of {', '.join(opt.choices)}, got '{value}'{did_you_mean(value, opt.choices)}")
    if opt.minimum is not None and value < opt.minimum:
        raise ConfigError(f"must be {'at least 1' if opt.minimum == 1 else 'non-negative'}, got {value}")
    if key == "name" and (not value or value.startswith(".") or _FOLDER_NAME.search(value)):
        raise ConfigError(f"must be a folder name (no slashes, spaces or leading dot), got {value!r}")
    return value


@dataclass
class Sweep:
    """A parsed, validated sweep: `points` are the runs, in order, without duplicates."""

    name: str
    base: dict
    grid: dict[str, list]
    extra: list[dict]  # the [[point]] tables
    points: list[RunConfig]
    options: dict
    varying: list[str]  # config keys whose value is not the same in every run (the columns that tell runs apart)
    source: str | None = None
    description: str = ""  # the file's header comment

    @property
    def run_ids(self) -> list[str]:
        return [run_id(p) for p in self.points]


# ---------------------------------------------------------------------------------------------------------------
# Loading and validation


def load_sweep(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read a sweep file, apply `--set key=value` overrides, validate everything, expand the grid.
    Every problem found is reported, each with its place (`configs/x.toml: grid.act[2]: ...`), in one ConfigError."""
    path = Path(path)
    text = config_files.read_text(path)
    sweep = parse_sweep(config_files.parse_toml(text, path), name=path.stem, where=str(path), sets=sets)
    sweep.description = header_comment(text)
    return sweep


def header_comment(text: str) -> str:
    """The comment block at the top of a sweep file (what it reproduces, what its figures should show), without
    the `#`s: sweep.json keeps it and report.html shows it."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        lines.append(stripped[2:] if stripped.startswith("# ") else stripped[1:])
    return "\n".join(lines).strip()


def parse_sweep(data: dict, name: str = "sweep", where: str = "sweep", sets: list[str] | tuple[str, ...] = ()
                ) -> Sweep:
    """`load_sweep` on an already-parsed TOML document (a dict); `name` is the default sweep name."""
    errors: list[str] = []

    def bad(loc: str, msg: str):
        errors.append(f"{where}: {loc}: {msg}")

    for key in data:
        if key not in TABLES:
            hint = "; run options go in [base] or [grid]" if key.replace("-", "_") in config.FIELDS else \
                did_you_mean(key, TABLES)
            bad(key, f"unknown table (valid: {', '.join(TABLES)}){hint}")
    options_raw = _table(data, "sweep", bad)
    base = _entries(_table(data, "base", bad), "base")
    grid = _entries(_table(data, "grid", bad), "grid")
    extra_raw = data.get("point", [])
    if not isinstance(extra_raw, list) or not all(isinstance(p, dict) for p in extra_raw):
        bad("point", "expected an array of tables ([[point]])")
        extra_raw = []
    extra = [_entries(p, f"point[{i}]") for i, p in enumerate(extra_raw)]
    options = {k: (v, f"sweep.{k}") for k, v in options_raw.items()}

    for text in sets:  # command line > file
        key, eq, raw = text.partition("=")
        key = key.strip()
        if not eq or not key:
            bad(f"--set {text}", "expected key=value")
            continue
        value, loc = checks.parse_value(raw.strip()), f"--set {key}"
        if key.startswith("sweep."):
            options[key.removeprefix("sweep.")] = (value, loc)
            continue
        key = key.removeprefix("base.").removeprefix("grid.").replace("-", "_")
        if checks.is_axis(key, value):  # an axis of every run
            base.pop(key, None)
            grid[key] = (value, loc)
            for point in extra:
                point[key] = (value, loc)
        else:  # the same value in every run
            base[key] = (value, loc)
            grid.pop(key, None)
            for point in extra:
                point.pop(key, None)

    opts = _check_options(options, bad)
    keys = config.command_fields(opts["command"])
    base = _check_table(base, bad, keys, axes=False)
    grid = {k: (v if checks.is_axis(k, v) else [v], loc)
            for k, (v, loc) in _check_table(grid, bad, keys, True).items()}
    extra = [_check_table(p, bad, keys, axes=True) for p in extra]
    for key, (_, loc) in grid.items():
        if key in base:
            bad(loc, f"also set in [base] ({base[key][1]}); a key is fixed in [base] or varied in [grid], not both")
    if errors:
        raise _errors(errors)

    runs = _expand(base, grid, extra)
    points, seen, problems = [], set(), {}
    for values, loc in runs:
        try:
            cfg = _resolve(values, opts["plots"], opts["command"])
            checks.validate(cfg)
        except ConfigError as e:
            problems.setdefault(str(e), []).append(loc)
            continue
        rid = run_id(cfg)
        if rid not in seen:
            seen.add(rid)
            points.append(cfg)
    for msg, locs in problems.items():
        more = f" (and {len(locs) - 1} more run(s))" if len(locs) > 1 else ""
        bad(locs[0] + more, msg)
    if errors:
        raise _errors(errors)

    name = opts["name"] or name
    keys = [*grid, *(k for p in extra for k in p)]
    keys += [f for f in config.command_fields(opts["command"]) if len({json.dumps(getattr(p, f)) for p in points}) > 1]
    varying = [k for k in dict.fromkeys(keys) if k not in NOT_IN_ID]
    return Sweep(name=name, base={k: v for k, (v, _) in base.items()},
                 grid={k: v for k, (v, _) in grid.items()},
                 extra=[{k: v for k, (v, _) in p.items()} for p in extra],
                 points=points, options=opts, varying=varying, source=where)


def _errors(errors: list[str]) -> ConfigError:
    """All problems in one ConfigError, one per line."""
    head = f"{len(errors)} problems:\n" if len(errors) > 1 else ""
    return ConfigError(head + "\n".join(errors))


def _table(data: dict, name: str, bad) -> dict:
    table = data.get(name, {})
    if not isinstance(table, dict):
        bad(name, f"expected a table [{name}], got {table!r}")
        return {}
    return table


def _entries(table: dict, prefix: str) -> dict:
    """{key: (value, where)} with keys normalised (dashes allowed, as in `run` config files)."""
    return {k.replace("-", "_"): (v, f"{prefix}.{k}") for k, v in table.items()}


def _check_options(options: dict, bad) -> dict:
    opts = {k: opt.default for k, opt in SWEEP_OPTIONS.items()}
    for key, (value, loc) in options.items():
        if key not in SWEEP_OPTIONS:
            bad(loc, f"unknown sweep option (valid: {', '.join(SWEEP_OPTIONS)}){did_you_mean(key, SWEEP_OPTIONS)}")
            continue
        try:
            opts[key] = check_option(key, value)
        except ConfigError as e:
            bad(loc, str(e))
    return opts


def _check_table(entries: dict, bad, keys: dict, axes: bool) -> dict:
    """Type- and value-check each (key, value) against the options `keys` of the sweep's command; in axes tables a
    list is an axis (each element checked)."""
    out = {}
    for key, (value, loc) in entries.items():
        if key not in keys or key in NOT_IN_ID:
            if key == "out":
                bad(loc, "set by the sweep (each run goes to runs/<id>); use --out for the sweep directory")
            elif key == "plots":
                bad(loc, "per-run plots are a sweep option: [sweep] plots = true (or --set sweep.plots=true)")
            else:
                bad(loc, f"unknown key{did_you_mean(key, keys)}")
            continue
        if axes and checks.is_axis(key, value):
            if not value:
                bad(loc, "empty list: an axis needs at least one value")
                continue
            checked = [_check_value(key, v, f"{loc}[{i}]", bad) for i, v in enumerate(value)]
            if all(c is not _BAD for c in checked):
                out[key] = (checked, loc)
        else:
            if checks.is_axis(key, value):
                bad(loc, f"a list in [base] (lists of values to cross go in [grid]): {value!r}")
                continue
            checked = _check_value(key, value, loc, bad)
            if checked is not _BAD:
                out[key] = (checked, loc)
    return out


_BAD = object()


def _check_value(key: str, value, loc: str, bad):
    try:
        return checks.check_value(key, value)
    except ConfigError as e:  # the place names the key already
        bad(loc, str(e).removeprefix(f"{key}: ").removeprefix(f"{key} "))
        return _BAD


def _expand(base: dict, grid: dict, extra: list[dict]) -> list[tuple[dict, str]]:
    """(values, where) of every run: base x product(grid), then each point (base + point, its lists crossed)."""
    fixed = {k: v for k, (v, _) in base.items()}
    runs = []
    if grid or not extra:
        runs += [({**fixed, **combo}, "grid point " + _describe(combo)) for combo in _product(grid)]
    for i, point in enumerate(extra):
        scalars = {k: v for k, (v, _) in point.items() if not checks.is_axis(k, v)}
        lists = {k: e for k, e in point.items() if checks.is_axis(k, e[0])}
        for combo in _product(lists):
            values = {**scalars, **combo}
            runs.append(({**fixed, **values}, f"point[{i}] " + _describe(values)))
    return runs


def _product(axes: dict) -> Iterator[dict]:
    keys = list(axes)
    for combo in itertools.product(*(axes[k][0] for k in keys)):
        yield dict(zip(keys, combo))


def _describe(values: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in values.items()) + ")"


def _resolve(values: dict, plots: bool, command: str = config.RUN) -> RunConfig:
    """The config of `command` with names canonical (aliases resolved), float options as floats, and the options
    its network ignores (kernel_size of an MLP, slope of tanh) at their defaults, so that the same run written two
    ways gets the same id."""
    cfg = config.CONFIGS[command](**values, plots=plots)
    cfg.act = activations.canonical(cfg.act)
    if not inits.is_custom(cfg.init):
        cfg.init = inits.canonical(cfg.init)
    if isinstance(cfg.gain, int) and not isinstance(cfg.gain, bool):
        cfg.gain = float(cfg.gain)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for key in config.inapplicable(cfg):
        setattr(cfg, key, defaults[key])
    return cfg


def run_id(cfg: RunConfig) -> str:
    """Stable directory name: readable prefix + first 12 hex of sha256 of the canonical config JSON (sorted keys,
    without `out` and `plots`, which do not change the numbers; for a built-in network, without the --model
    options: its id does not depend on options it never reads; the init's options as they resolve: see
    _init_options)."""
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_ID and not _unused_model_key(cfg, k)}
    key.update(_init_options(cfg))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    command = "" if config.command_of(cfg) == config.RUN else config.command_of(cfg) + "-"  # train-tanh-...
    if cfg.model is None:
        readable = f"{command}{cfg.act}-{cfg.init}-{cfg.arch}-d{cfg.depth}"
    else:
        readable = f"{cfg.model}-{cfg.init}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", readable.replace(":", ".")) + f"-{digest}"


def _unused_model_key(cfg: RunConfig, key: str) -> bool:
    return cfg.model is None and (key == "model" or config.DECLARED_OPTIONS[key].scope == (config.MODEL_KIND,))


def shown(cfg: RunConfig, key: str) -> bool:
    """Whether runs.csv gives a run's value of `key`: every option but those across the built-in/--model line from
    the run (a --model run's depth and act, a built-in run's record), which it never reads."""
    kind = config.network_kind(cfg.model, cfg.arch)
    across = kind == config.MODEL_KIND or (key in config.OPTIONS and config.OPTIONS[key].scope == (config.MODEL_KIND,))
    return config.applies(key, kind) or not across


def _init_options(cfg: RunConfig) -> dict:
    """The init's options as they make the weights: None where one resolves to the scheme's own default (gain
    'auto' with sigmoid is 1, Glorot's own gain; scale 1.0 is variance_scaling's own), else its resolved value
    (gain 'auto' with tanh is 5/3). Two configs that differ only in how they name the same weights get one id."""
    given = config.init_params(cfg)
    own = config.init_params(dataclasses.replace(cfg, **{k: None for k in config.INIT_OPTIONS}))
    return {k: None if given.get(k) == own.get(k) else given.get(k) for k in config.INIT_OPTIONS}


def run_label(cfg: RunConfig, keys: list[str]) -> str:
    """`act=tanh init=glorot_uniform`: the varying keys of a run that apply to its network (its name in tables)."""
    shown = [f"{k}={formatting.value(getattr(cfg, k))}" for k in keys
             if getattr(cfg, k) is not None
             and config.applies(k, config.network_kind(cfg.model, cfg.arch), cfg.act, cfg.block)]
    return " ".join(shown) or "run"
