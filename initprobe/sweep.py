"""Sweeps: many runs from one TOML file, resumable, on one of three backends, compared in one report.

    initprobe sweep configs/sweeps/glorot_bengio_2010.toml

The file (every key of `initprobe run` may go in [base], [grid] or [[point]]):

    [sweep]                  # optional sweep options (the command line overrides them)
    name = "glorot"          # the sweep directory results/<name>  [default: the file's stem]
    backend = "process"      # local | process | ray               [default: local]
    workers = 2              # processes of the process backend    [default: 2]
    threads = 1              # torch intra-op threads of every probe, in every backend  [default: 1]
    figures = true           # comparison figures + report.html at the end  [default: true]
    plots = false            # each run's own plots (they cost more than the probe)  [default: false]
    address = "auto"         # ray: the cluster to join  [default: a local Ray]
    gpus_per_run = 0.0       # ray: num_gpus of each task, a fraction shares a GPU  [default: 0]

    [base]                   # fixed options of every run
    depth = 5
    [grid]                   # lists, crossed: 3 x 2 = 6 runs
    act = ["tanh", "softsign", "sigmoid"]
    init = ["torch_default", "glorot_uniform"]
    [[point]]                # optional explicit extra points: base + this table, NOT crossed with [grid]
    act = "selu"             # (a list inside a point is crossed within that point only)
    init = "lecun_normal"

Without [grid] and [[point]] a sweep is one run of [base]. Runs that resolve to the same configuration are run once.
`--set key=value` (TOML value) overrides the file everywhere: a single value fixes the key in every run (replacing
its axis), a list `[a, b]` makes it an axis of every run; `--set sweep.KEY=value` sets a sweep option.
Everything is validated before anything runs, and every problem is reported with its place in the file.

The sweep directory (`results/<name>/` or --out):

    sweep.json      resolved base, grid, points, options, run ids, environment, the file's header comment
    runs/<id>/      one run directory per point, the format of `initprobe run`; <id> = readable name + the first 12
                    hex digits of sha256 of the run's canonical config JSON (without `out`, `plots`)
    runs.csv        one row per finished run: run_id, label, the varying keys, status (ok | failed), summary numbers,
                    wall time, error, then every other config key
    layers.csv      layers.csv of every ok run with run_id and the varying keys prepended (tidy, for pandas/seaborn)
    figures/, report.html   comparison figures and a self-contained report (report.py)

Resume: running the same sweep again skips every run whose directory exists (the runner publishes a run directory
atomically, so one that exists is complete), removes stale `.NAME.partial-PID` staging folders, and redoes the
rest, failed runs included. runs.csv is rewritten atomically (temp file + os.replace) at most once a second while
runs finish and always at the end, Ctrl-C included, so an interrupted sweep leaves a consistent directory (after a
hard kill it may miss the last second's rows: their run directories are complete and are picked up on resume).
A sweep directory holding a different sweep is an error.

Numbers do not depend on the backend: torch's CPU kernels split reductions by the intra-op thread count, so the same
network gives bitwise different statistics with 1 and 2 threads (measured: up to ~6e-5 relative on 512-1000 wide
layers). Every probe of a sweep therefore runs with the same `threads` (default 1) in every backend: the local
backend sets it around each run and restores it, process workers and Ray tasks set it before probing.

Backends: `local` runs in sequence in this process; `process` uses a persistent pool of processes (forked where
that is safe, with torch already imported; else spawned, each importing torch) that write run directories straight
into the sweep directory (same machine; a worker that dies takes the runs in flight with it, which are retried one at
a time so that only the culprit fails); `ray` runs each point as a Ray task on a local Ray or a cluster
(`address`) — the task probes into a temporary folder on its node and returns the run's files, which the driver
writes and publishes atomically, so no shared file system is needed (the nodes need initprobe installed).
"""

import contextlib
import csv
import dataclasses
import hashlib
import importlib.util
import io
import itertools
import json
import math
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from . import __version__, activations, config, inits, results
from .config import ConfigError, RunConfig

TABLES = ("sweep", "base", "grid", "point")
BACKENDS = ("local", "process", "ray")
OPTIONS = {  # [sweep] options: (type, default)
    "name": (str, None),
    "backend": (str, "local"),
    "workers": (int, 2),
    "threads": (int, 1),
    "figures": (bool, True),
    "plots": (bool, False),
    "address": (str, None),
    "gpus_per_run": (float, 0.0),
}
NOT_IN_ID = ("out", "plots")  # where a run goes and whether it draws its own plots do not change its numbers
SUMMARY_COLUMNS = ("forward_ratio", "backward_ratio", "forward_verdict", "backward_verdict", "first_nonfinite_layer",
                   "first_nonfinite_forward", "first_nonfinite_backward", "forward_gain_per_layer",
                   "backward_gain_per_layer", "probe_seconds")
RUNS_CSV_EVERY = 1.0  # seconds between rewrites of runs.csv during a sweep (and once at the end, Ctrl-C included);
# rewriting it after each of many small runs cost more than their probes, and run directories are the truth
RAY_MISSING = "the ray backend needs `pip install initprobe[ray]`"
_CHOICES = {"arch": config.ARCHS, "padding": config.PADDINGS, "device": config.DEVICES, "dtype": config.DTYPES,
            "bias": config.BIASES, "plot_format": config.FORMATS, "mode": inits.MODES,
            "distribution": inits.DISTRIBUTIONS}
_AT_LEAST_ONE = ("depth", "width", "batch", "seeds", "in_channels", "image_size", "kernel_size", "input_dim")
_NON_NEGATIVE = ("std", "bound", "scale", "bias_std")


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


@dataclass
class SweepProgress:
    """What `on_progress` gets: after the resumed runs are counted, when a run starts (local backend) and when one
    finishes (every backend). `current` is the label of the run starting or just finished."""

    done: int  # finished runs, resumed ones included
    total: int
    current: str
    elapsed: float  # seconds since this invocation started
    failed: int = 0
    resumed: int = 0  # runs found complete on disk at the start

    @property
    def eta(self) -> float | None:
        """Seconds left, from this invocation's pace; None before its first run finished."""
        ran = self.done - self.resumed
        return self.elapsed / ran * (self.total - self.done) if ran > 0 else None


@dataclass
class SweepResult:
    path: Path
    runs: pd.DataFrame  # runs.csv
    ran: int  # runs finished by this invocation (ok or failed)
    resumed: int  # runs found complete on disk
    failed: int  # rows with status failed
    seconds: float
    report: Path | None = None
    options: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Loading and validation


def load_sweep(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read a sweep file, apply `--set key=value` overrides, validate everything, expand the grid.
    Every problem found is reported, each with its place (`configs/x.toml: grid.act[2]: ...`), in one ConfigError."""
    path = Path(path)
    sweep = parse_sweep(config.load_toml(path), name=path.stem, where=str(path), sets=sets)
    sweep.description = header_comment(path.read_text(encoding="utf-8"))
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
                config.closest(key, TABLES)
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
        value, loc = config.parse_value(raw.strip()), f"--set {key}"
        if key.startswith("sweep."):
            options[key.removeprefix("sweep.")] = (value, loc)
            continue
        key = key.removeprefix("base.").removeprefix("grid.").replace("-", "_")
        if isinstance(value, list):  # an axis of every run
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
    base = _check_table(base, bad, axes=False)
    grid = {k: (v if isinstance(v, list) else [v], loc) for k, (v, loc) in _check_table(grid, bad, True).items()}
    extra = [_check_table(p, bad, axes=True) for p in extra]
    for key, (_, loc) in grid.items():
        if key in base:
            bad(loc, f"also set in [base] ({base[key][1]}); a key is fixed in [base] or varied in [grid], not both")
    if errors:
        raise _errors(errors)

    runs = _expand(base, grid, extra)
    points, seen, problems = [], set(), {}
    for values, loc in runs:
        try:
            cfg = _resolve(values, opts["plots"])
            config.validate(cfg)
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
    keys += [f for f in config.FIELDS if len({json.dumps(getattr(p, f)) for p in points}) > 1]
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
    opts = {k: default for k, (_, default) in OPTIONS.items()}
    for key, (value, loc) in options.items():
        if key not in OPTIONS:
            bad(loc, f"unknown sweep option (valid: {', '.join(OPTIONS)}){config.closest(key, OPTIONS)}")
            continue
        kind = OPTIONS[key][0]
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            bad(loc, f"expected {kind.__name__}, got {value!r}")
            continue
        problem = _option_problem(key, value)
        if problem:
            bad(loc, problem)
            continue
        opts[key] = value
    return opts


def _option_problem(key: str, value) -> str | None:
    if key == "backend" and value not in BACKENDS:
        return f"must be one of {', '.join(BACKENDS)}, got '{value}'{config.closest(value, BACKENDS)}"
    if key in ("workers", "threads") and value < 1:
        return f"must be at least 1, got {value}"
    if key == "gpus_per_run" and value < 0:
        return f"must be non-negative, got {value}"
    if key == "name" and (not value or value.startswith(".") or re.search(r"[/\\\s]", value)):
        return f"must be a folder name (no slashes, spaces or leading dot), got '{value}'"
    return None


def _check_table(entries: dict, bad, axes: bool) -> dict:
    """Type- and value-check each (key, value); in axes tables a list is an axis (each element checked)."""
    out = {}
    for key, (value, loc) in entries.items():
        if key not in config.FIELDS or key in NOT_IN_ID:
            if key == "out":
                bad(loc, "set by the sweep (each run goes to runs/<id>); use --out for the sweep directory")
            elif key == "plots":
                bad(loc, "per-run plots are a sweep option: [sweep] plots = true (or --set sweep.plots=true)")
            else:
                bad(loc, f"unknown key{config.closest(key, config.FIELDS)}")
            continue
        if axes and isinstance(value, list):
            if not value:
                bad(loc, "empty list: an axis needs at least one value")
                continue
            checked = [_check_value(key, v, f"{loc}[{i}]", bad) for i, v in enumerate(value)]
            if all(c is not _BAD for c in checked):
                out[key] = (checked, loc)
        else:
            if isinstance(value, list):
                bad(loc, f"a list in [base] (lists of values to cross go in [grid]): {value!r}")
                continue
            checked = _check_value(key, value, loc, bad)
            if checked is not _BAD:
                out[key] = (checked, loc)
    return out


_BAD = object()


def _check_value(key: str, value, loc: str, bad):
    try:
        value = config.checked({key: value})[key]
    except ConfigError as e:
        bad(loc, str(e).removeprefix(f"{key}: "))
        return _BAD
    problem = _value_problem(key, value)
    if problem:
        bad(loc, problem)
        return _BAD
    return value


def _value_problem(key: str, value) -> str | None:
    """What is wrong with one value on its own (names, sizes, signs); combinations are config.validate's."""
    if value is None:
        return None
    try:
        if key == "act":
            activations.get(value)
        elif key == "init":
            inits.get(value)
    except KeyError as e:
        return e.args[0]
    if key in _CHOICES and value not in _CHOICES[key]:
        return f"must be one of {', '.join(_CHOICES[key])}, got '{value}'{config.closest(str(value), _CHOICES[key])}"
    if key in _AT_LEAST_ONE and value < 1:
        return f"must be at least 1, got {value}"
    if key in _NON_NEGATIVE and value < 0:
        return f"must be non-negative, got {value}"
    if key == "gain" and isinstance(value, str) and value != "auto":
        return f"must be a number or 'auto', got '{value}'"
    return None


def _expand(base: dict, grid: dict, extra: list[dict]) -> list[tuple[dict, str]]:
    """(values, where) of every run: base x product(grid), then each point (base + point, its lists crossed)."""
    fixed = {k: v for k, (v, _) in base.items()}
    runs = []
    if grid or not extra:
        runs += [({**fixed, **combo}, "grid point " + _describe(combo)) for combo in _product(grid)]
    for i, point in enumerate(extra):
        scalars = {k: v for k, (v, _) in point.items() if not isinstance(v, list)}
        lists = {k: e for k, e in point.items() if isinstance(e[0], list)}
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


def _resolve(values: dict, plots: bool) -> RunConfig:
    """A RunConfig with names canonical (aliases resolved) and float options as floats, so that the same run
    written two ways gets the same id."""
    cfg = RunConfig(**values, plots=plots)
    cfg.act = activations.canonical(cfg.act)
    if not inits.is_custom(cfg.init):
        cfg.init = inits.canonical(cfg.init)
    if isinstance(cfg.gain, int) and not isinstance(cfg.gain, bool):
        cfg.gain = float(cfg.gain)
    return cfg


def run_id(cfg: RunConfig) -> str:
    """Stable directory name: readable prefix + first 12 hex of sha256 of the canonical config JSON (sorted keys,
    without `out` and `plots`, which do not change the numbers)."""
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_ID}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.act}-{cfg.init.replace(':', '.')}-{cfg.arch}-d{cfg.depth}")
    return f"{prefix}-{digest}"


ARCH_ONLY = {"cnn": ("in_channels", "image_size", "kernel_size", "padding"), "mlp": ("input_dim",)}


def applies(key: str, arch) -> bool:
    """Whether `key` means anything for a run of `arch` (an MLP has no padding); used to keep labels short."""
    return not any(key in keys for a, keys in ARCH_ONLY.items() if a != arch)


def run_label(cfg: RunConfig, keys: list[str]) -> str:
    """`act=tanh init=glorot_uniform`: the varying keys of a run that apply to its arch (its name in tables)."""
    shown = [f"{k}={_fmt(getattr(cfg, k))}" for k in keys if getattr(cfg, k) is not None and applies(k, cfg.arch)]
    return " ".join(shown) or "run"


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------------------------
# Running


def resolve_options(sweep: Sweep, **given) -> dict:
    """Sweep options: arguments that are not None > the file's [sweep] table > defaults; checked."""
    opts = {**sweep.options, **{k: v for k, v in given.items() if v is not None}}
    for key in ("backend", "workers", "threads", "gpus_per_run"):
        problem = _option_problem(key, opts[key])
        if problem:
            raise ConfigError(f"--{key.replace('_', '-')} {problem}")
    if opts["backend"] == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(RAY_MISSING)
    return opts


def run_sweep(sweep: Sweep, out_dir: str | Path | None = None, backend: str | None = None,
              workers: int | None = None, address: str | None = None, gpus_per_run: float | None = None,
              on_progress: Callable[[SweepProgress], None] | None = None, *, threads: int | None = None,
              figures: bool | None = None, command: list[str] | None = None,
              root: Path = results.RESULTS_ROOT) -> SweepResult:
    """Run every point of `sweep` not yet complete in its directory (default root/<sweep.name>), record each in
    runs.csv as it finishes, then write layers.csv and (unless figures are off) the report.

    Options left None come from the sweep's [sweep] table, else: backend local, workers 2, threads 1, address None
    (a local Ray), gpus_per_run 0, figures on. A run that raises is recorded as failed and the sweep goes on;
    KeyboardInterrupt stops it, leaving the directory consistent (re-run to resume)."""
    t0 = time.perf_counter()
    opts = resolve_options(sweep, backend=backend, workers=workers, address=address, gpus_per_run=gpus_per_run,
                           threads=threads, figures=figures)
    target = Path(out_dir) if out_dir is not None else Path(root) / sweep.name
    ids = sweep.run_ids
    if opts["backend"] != "ray":  # a device that is not here fails before anything runs (Ray's nodes may have it)
        from . import runner

        for device in sorted({p.device for p in sweep.points}):
            runner.resolve_device(device)
    _prepare(target, sweep, ids, opts, command)
    ledger = _Ledger(target, sweep, ids)
    labels = dict(zip(ids, (run_label(p, sweep.varying) for p in sweep.points)))
    jobs = [(rid, dataclasses.replace(cfg, out=str(ledger.run_dir(rid))))
            for rid, cfg in zip(ids, sweep.points) if not ledger.run_dir(rid).is_dir()]
    if opts["backend"] != "local":  # longest first, so that no worker is left with a long run at the end
        jobs.sort(key=lambda job: work(job[1]), reverse=True)
    resumed, ran = len(ids) - len(jobs), 0

    def report(current: str):
        if on_progress:
            on_progress(SweepProgress(done=resumed + ran, total=len(ids), current=current,
                                      elapsed=time.perf_counter() - t0, failed=ledger.failed, resumed=resumed))

    report("resuming" if resumed else "starting")
    executor = {"local": _run_local, "process": _run_process, "ray": _run_ray}[opts["backend"]]
    try:
        with contextlib.closing(executor(jobs, opts, command, lambda rid: report(labels[rid]))) as outcomes:
            written = time.perf_counter()
            for rid, outcome in outcomes:
                ledger.record(rid, outcome)
                ran += 1
                if time.perf_counter() - written > RUNS_CSV_EVERY:
                    ledger.write_runs()
                    written = time.perf_counter()
                report(labels[rid])
    finally:  # also on Ctrl-C: what is on disk now, as runs.csv and layers.csv
        ledger.refresh()
        ledger.write_runs()
        ledger.write_layers()
    path = None
    if opts["figures"]:
        from . import report as report_mod

        path = report_mod.write_report(target)
    return SweepResult(path=target, runs=ledger.frame(), ran=ran, resumed=resumed, failed=ledger.failed,
                       seconds=time.perf_counter() - t0, report=path, options=opts)


def work(cfg: RunConfig) -> int:
    """Multiply-adds of a run's forward passes, every seed: what orders a parallel sweep's runs, longest first
    (a model of a run's time good enough for that; it leaves out --jacobian and checkpointing's recompute)."""
    return cfg.seeds * config.multiply_adds(cfg)


def _prepare(target: Path, sweep: Sweep, ids: list[str], opts: dict, command) -> None:
    """Create or check the sweep directory, clear what an interrupted invocation left, write sweep.json."""
    meta_path = target / "sweep.json"
    created = None
    if meta_path.is_file():
        try:
            old = results.read_json(meta_path)
            old_ids, created = old["run_ids"], old.get("created")
        except (OSError, ValueError, KeyError):
            raise ConfigError(f"{meta_path} is unreadable; not a sweep directory?") from None
        if sorted(old_ids) != sorted(ids):
            new, gone = len(set(ids) - set(old_ids)), len(set(old_ids) - set(ids))
            raise ConfigError(f"{target} holds a different sweep ({new} run(s) not in it, {gone} of its runs not in "
                              "this one); choose another --out or [sweep] name, or remove it")
    elif target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} exists and is not a sweep directory; choose another --out")
    runs_dir = target / "runs"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to {target}: {e.strerror or e}") from None
    _remove_stale(target, runs_dir)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta = {"name": sweep.name, "source": sweep.source, "base": sweep.base, "grid": sweep.grid,
            "points": sweep.extra, "varying": sweep.varying, "options": opts, "run_ids": ids,
            "created": created or now, "description": sweep.description,
            "environment": _environment(command, now)}
    _atomic_write(meta_path, json.dumps(results._jsonable(meta), indent=2) + "\n")


_PARTIAL = re.compile(r"^\..+\.partial-(\d+)$")


def _remove_stale(target: Path, runs_dir: Path) -> None:
    """Remove staging folders and temp files of interrupted invocations. One whose process is still alive (and is
    not this one) belongs to a sweep running right now: that is an error, not something to delete."""
    for entry in runs_dir.iterdir():
        m = _PARTIAL.match(entry.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _alive(pid):
            raise ConfigError(f"{entry} is being written by process {pid}: is this sweep running already? "
                              "(if not, remove that folder)")
        shutil.rmtree(entry, ignore_errors=True)
    for entry in target.glob(".*.tmp-*"):
        entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _environment(command, now: str) -> dict:
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:  # pragma: no cover
        torch_version = None
    return {"initprobe_version": __version__, "torch_version": torch_version,
            "python_version": platform.python_version(), "platform": platform.platform(),
            "command": command if command is not None else sys.argv, "started": now}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _Ledger:
    """The rows of runs.csv. Disk is the truth for completed runs (their directories); failures are remembered from
    the previous runs.csv until the run is redone."""

    def __init__(self, target: Path, sweep: Sweep, ids: list[str]):
        self.target, self.sweep, self.ids = target, sweep, ids
        self.configs = dict(zip(ids, sweep.points))
        self.rows: dict[str, dict] = {}
        self.walls: dict[str, float] = {}
        old = target / "runs.csv"
        if old.is_file():
            try:
                previous = pd.read_csv(old, keep_default_na=False)
            except (OSError, ValueError, pd.errors.EmptyDataError):
                previous = pd.DataFrame()
            for row in previous.to_dict("records"):
                rid = row.get("run_id")
                if rid in self.configs:
                    if row.get("status") == "failed":
                        self.rows[rid] = self._row(rid, "failed", row.get("error", ""), _float(row.get("wall_seconds")))
                    with contextlib.suppress(TypeError, ValueError):
                        self.walls[rid] = float(row.get("wall_seconds"))
        self.refresh()

    def run_dir(self, rid: str) -> Path:
        return self.target / "runs" / rid

    def refresh(self) -> None:
        """Rows of every run directory that exists (completed, by any process)."""
        for rid in self.ids:
            if self.run_dir(rid).is_dir() and self.rows.get(rid, {}).get("status") != "ok":
                self.rows[rid] = self._ok_row(rid, self.walls.get(rid))

    def record(self, rid: str, outcome: dict) -> None:
        self.walls[rid] = outcome["wall_seconds"]
        if outcome["status"] == "ok" and self.run_dir(rid).is_dir():
            self.rows[rid] = self._ok_row(rid, outcome["wall_seconds"])
        else:
            error = outcome.get("error") or "the run finished but its directory is missing"
            self.rows[rid] = self._row(rid, "failed", error, outcome["wall_seconds"])

    @property
    def failed(self) -> int:
        return sum(r["status"] == "failed" for r in self.rows.values())

    def _row(self, rid: str, status: str, error: str, wall: float | None, summary: dict | None = None) -> dict:
        cfg = dataclasses.asdict(self.configs[rid])
        keys = self.sweep.varying
        row = {"run_id": rid, "label": run_label(self.configs[rid], keys), **{k: cfg[k] for k in keys},
               "status": status}
        summary = summary or {}
        for col in SUMMARY_COLUMNS:
            value = summary.get("timings", {}).get(col) if col == "probe_seconds" else summary.get(col)
            row[col] = _float(value) if col.endswith(("ratio", "layer", "seconds")) and value is not None else value
        row.update(wall_seconds=wall, error=error, path=f"runs/{rid}" if status == "ok" else "")
        row.update({k: v for k, v in cfg.items() if k not in keys and k != "out"})
        return row

    def _ok_row(self, rid: str, wall: float | None) -> dict:
        try:
            summary = results.read_json(self.run_dir(rid) / "summary.json")
        except (OSError, ValueError) as e:
            return self._row(rid, "failed", f"unreadable run directory: {e}", wall)
        if wall is None:
            wall = _float(summary.get("timings", {}).get("run_seconds"))
        return self._row(rid, "ok", "", wall, summary)

    def frame(self) -> pd.DataFrame:
        rows = [self.rows[rid] for rid in self.ids if rid in self.rows]
        if not rows:
            return pd.DataFrame(columns=["run_id", "label", *self.sweep.varying, "status", *SUMMARY_COLUMNS,
                                         "wall_seconds", "error", "path"])
        frame = pd.DataFrame(rows)
        for col in ("first_nonfinite_layer", "first_nonfinite_forward", "first_nonfinite_backward"):
            frame[col] = frame[col].astype("Int64")
        return frame

    def write_runs(self) -> None:
        _atomic_write(self.target / "runs.csv", self.frame().to_csv(index=False))

    def write_layers(self) -> None:
        """layers.csv of every ok run, run_id and the varying keys prepended. Joined as text where every run's
        file has the same header (parsing and printing them again was a fifth of a small sweep's time outside
        its probes), else through pandas, which fills a column some runs lack with empty cells."""
        texts = {}
        for rid in self.ids:
            if self.rows.get(rid, {}).get("status") == "ok":
                with contextlib.suppress(OSError):
                    texts[rid] = (self.run_dir(rid) / "layers.csv").read_text()
        path = self.target / "layers.csv"
        if not texts:
            path.unlink(missing_ok=True)
            return
        # seed, if varied, is not added again: each run's rows have it already (there, each network's own seed)
        keys = ["run_id", *(k for k in self.sweep.varying if k != "seed")]
        headers = {text.partition("\n")[0] for text in texts.values()}
        if len(headers) == 1:
            lines = [_csv_cells(keys) + "," + headers.pop()]
            for rid, text in texts.items():
                prefix = _csv_cells([rid, *(getattr(self.configs[rid], k) for k in keys[1:])])
                lines += [prefix + "," + line for line in text.splitlines()[1:]]
            _atomic_write(path, "\n".join(lines) + "\n")
            return
        parts = []
        for rid, text in texts.items():
            layers = pd.read_csv(io.StringIO(text))
            for i, key in enumerate(keys):
                layers.insert(i, key, rid if key == "run_id" else getattr(self.configs[rid], key))
            parts.append(layers)
        _atomic_write(path, pd.concat(parts, ignore_index=True).to_csv(index=False))


def _csv_cells(values: list) -> str:
    """One CSV line (no line end) as pandas writes it: None is an empty cell, a comma or quote gets quoted."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def _float(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def load_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """runs.csv of a sweep directory."""
    return pd.read_csv(Path(sweep_dir) / "runs.csv")


def load_layers(sweep_dir: str | Path) -> pd.DataFrame:
    """The combined layers.csv of a sweep directory (one row per run, seed and layer)."""
    return pd.read_csv(Path(sweep_dir) / "layers.csv")


# ---------------------------------------------------------------------------------------------------------------
# Backends. Each is a generator of (run_id, outcome) as runs finish; outcome = {status, error, wall_seconds}.


def _probe(cfg: RunConfig, threads: int, command) -> dict:
    """One run with `threads` intra-op threads (restored after): what every backend executes for a point."""
    import torch

    from . import runner

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        runner.run(cfg, command=command)
        return {"status": "ok", "error": "", "wall_seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001  (out of memory, a bug, bad input found late: recorded, sweep goes on)
        return {"status": "failed", "error": _one_line(e), "wall_seconds": time.perf_counter() - t0}
    finally:
        torch.set_num_threads(previous)


def _one_line(e: BaseException, limit: int = 1000) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _run_local(jobs, opts, command, started) -> Iterator[tuple[str, dict]]:
    for rid, cfg in jobs:
        started(rid)
        outcome = _probe(cfg, opts["threads"], command)
        yield rid, outcome


def _init_process_worker(threads: int) -> None:
    import signal

    import torch

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the CLI's SIGTERM-as-Ctrl-C
    torch.set_num_threads(threads)


def start_method(threads: int, devices) -> str:
    """'fork' where it is safe, so that workers start in milliseconds with torch already imported; else 'spawn',
    whose workers import torch first (2-3 s each, longer than a sweep of small runs takes on one core).
    Safe means: Linux (macOS's system libraries are not fork-safe); no other Python thread (a lock it held would
    stay locked in the child); one intra-op thread per worker (GNU OpenMP cannot run a parallel region in a
    child forked after this process ran one); and no CUDA in the children: every run's `devices` is the CPU, or
    this torch has no CUDA (merely asking CUDA whether there is a GPU, as resolving 'auto' or 'cuda' here does,
    leaves a forked child unable to use it), and CUDA is not initialised here."""
    import threading

    import torch

    no_cuda = set(devices) <= {"cpu"} or not torch.backends.cuda.is_built()
    safe = (sys.platform.startswith("linux") and threading.active_count() == 1 and threads == 1 and no_cuda
            and not torch.cuda.is_initialized())
    return "fork" if safe else "spawn"


def _process_task(cfg_dict: dict, threads: int, command) -> dict:
    return _probe(RunConfig(**cfg_dict), threads, command)


WORKER_DIED = ("its worker process died twice, the second time running this run alone (killed for lack of memory? "
               "a crash in native code? From a script, call run_sweep under `if __name__ == '__main__':`: spawned "
               "workers import the script)")


def _run_process(jobs, opts, command, started) -> Iterator[tuple[str, dict]]:
    """A persistent pool of processes (forked with torch imported, or spawned: see start_method); each writes its
    runs straight into the sweep directory, which is on this machine.

    A worker that dies (the OOM killer, a crash in native code) breaks the whole pool, and every run in flight with
    it. Those runs are then retried one at a time in a one-process pool: the run that kills its worker again is
    recorded as failed (and the next gets a fresh pool), the others finish; the rest of the sweep goes on in a fresh
    pool of `workers`."""
    queue = list(jobs)
    while queue:
        suspects, queue = yield from _process_pool(queue, min(opts["workers"], len(queue)), opts, command)
        while suspects:
            for rid, _ in [j for j in suspects if Path(j[1].out).is_dir()]:  # it finished, then lost its worker
                yield rid, {"status": "ok", "error": "", "wall_seconds": None}
            alone = [j for j in suspects if not Path(j[1].out).is_dir()]
            dead, suspects = (yield from _process_pool(alone, 1, opts, command)) if alone else ([], [])
            for rid, _ in dead:
                yield rid, {"status": "failed", "error": WORKER_DIED, "wall_seconds": None}


def _remove_dead_staging(runs_dir: Path) -> None:
    """Remove the staging folders of processes that are gone (a killed worker's half-written run)."""
    for entry in runs_dir.iterdir():
        m = _PARTIAL.match(entry.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _process_pool(jobs, workers: int, opts, command):
    """Run `jobs` in one pool of `workers` processes (forked or spawned: see start_method), at most `workers`
    submitted at a time (so the runs in flight are known), yielding (run_id, outcome) as they finish. Returns
    (the jobs in flight when a worker died, the jobs not yet submitted); ([], []) when every job finished."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from . import runner  # noqa: F401  (imported here, a forked worker has it, and torch, from the start)

    method = start_method(opts["threads"], {cfg.device for _, cfg in jobs})
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_init_process_worker, initargs=(opts["threads"],))
    todo, running, broken = list(jobs), {}, []
    try:
        while running or (todo and not broken):
            while todo and len(running) < workers and not broken:
                rid, cfg = todo.pop(0)
                running[pool.submit(_process_task, dataclasses.asdict(cfg), opts["threads"], command)] = (rid, cfg)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    broken.append(job)
                    continue
                yield job[0], outcome
        return broken, todo
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if broken:
            _remove_dead_staging(Path(broken[0][1].out).parent)  # the dead worker's half-written run


def _ray_task(cfg_dict: dict, threads: int, command) -> dict:
    """Probe into a temporary folder on the Ray node and return the run directory's files (relative path ->
    bytes): the driver writes them, so the nodes need no shared file system."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="initprobe-ray-") as tmp:
        out = Path(tmp) / "run"
        outcome = _probe(RunConfig(**{**cfg_dict, "out": str(out)}), threads, command)
        if outcome["status"] == "ok":
            outcome["files"] = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        return outcome


def _publish_files(final: Path, files: dict[str, bytes]) -> None:
    """Write a run directory from its files' contents, atomically (staging folder + rename, like the runner)."""
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for rel, data in files.items():
            path = staging / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise ValueError(f"unexpected path in a run's files: {rel}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        info = results.read_json(staging / "config.json")
        info["config"]["out"] = str(final)  # it ran in a temporary folder on its node
        results.write_json(staging / "config.json", info)
        results.publish(staging, final)
    except BaseException:
        results.discard(staging)
        raise


def _run_ray(jobs, opts, command, started) -> Iterator[tuple[str, dict]]:
    """Each point is a Ray task (num_cpus=1, num_gpus=gpus_per_run) on the cluster at `address`, or a local Ray.
    A Ray already initialised in this process (a notebook, a test) is used as it is."""
    if not jobs:
        return
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    own = not ray.is_initialized()
    if own:
        import logging

        kwargs = {"address": opts["address"]} if opts["address"] else {"include_dashboard": False}
        try:
            ray.init(**kwargs, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot start or join Ray (address {opts['address'] or 'local'}): {e}") from None
    task = ray.remote(num_cpus=1, num_gpus=opts["gpus_per_run"])(_ray_task)
    finals, pending = {}, []
    try:
        for rid, cfg in jobs:
            ref = task.remote(dataclasses.asdict(cfg), opts["threads"], command)
            finals[ref] = (rid, Path(cfg.out))
            pending.append(ref)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            rid, final = finals[ready[0]]
            try:
                outcome = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001  (the worker died, the node was lost, ...)
                outcome = {"status": "failed", "error": _one_line(e), "wall_seconds": None}
            files = outcome.pop("files", None)
            if files is not None:
                try:
                    _publish_files(final, files)
                except (OSError, ValueError, KeyError, ConfigError) as e:
                    outcome.update(status="failed", error=f"writing the run's files: {_one_line(e)}")
            yield rid, outcome
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        if own:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Ranking


def ranking(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs ranked by how well they keep the signal in both directions:
    score = |log10 forward_ratio| + |log10 backward_ratio| (0 = both end-to-end ratios exactly 1; lower is better),
    inf for a failed run or a non-finite or zero ratio. Ties keep the grid order."""
    def numbers(col):
        return pd.to_numeric(runs[col], errors="coerce").to_numpy(dtype=float) if col in runs else \
            np.full(len(runs), np.nan)

    forward, backward = numbers("forward_ratio"), numbers("backward_ratio")
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.abs(np.log10(forward)) + np.abs(np.log10(backward))
    ok = (runs["status"] == "ok").to_numpy() if "status" in runs else np.ones(len(runs), bool)
    score = np.where(np.isfinite(score) & ok, score, math.inf)
    columns = [c for c in ("label", "forward_ratio", "backward_ratio", "forward_verdict", "backward_verdict",
                           "status", "error", "run_id") if c in runs]
    ranked = runs[columns].assign(score=score).sort_values("score", kind="stable").reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked
