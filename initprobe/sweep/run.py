"""Running a sweep: its directory (created, checked, resumed), its runs on a backend, runs.csv as they finish,
then layers.csv and the report."""

import contextlib
import dataclasses
import importlib.util
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from .. import config, environment, results, shapes
from ..config import ConfigError, RunConfig
from . import backends, ledger as ledger_mod, lock
from .ledger import Ledger
from .spec import Sweep, check_option, run_label


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
# Running


def resolve_options(sweep: Sweep, **given) -> dict:
    """Sweep options: arguments that are not None > the file's [sweep] table > defaults; checked."""
    opts = {**sweep.options, **{k: v for k, v in given.items() if v is not None}}
    for key, value in given.items():
        if value is not None:
            try:
                check_option(key, value)
            except ConfigError as e:
                raise ConfigError(f"--{key.replace('_', '-')} {e}") from None
    if opts["backend"] == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(backends.RAY_MISSING)
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
        from .. import devices

        for device in sorted({p.device for p in sweep.points}):
            devices.resolve(device)
    _check_target(target, ids)
    pending = opts["backend"] == "ray" and any(  # only Ray, which starts a session, needs to know
        not (target / "runs" / rid).is_dir() or results.incomplete(target / "runs" / rid) for rid in ids)
    with backends.ray_session(opts["address"]) if pending else contextlib.nullcontext(), \
            lock.held(target):
        _check_target(target, ids)  # again: another invocation may have written it before this one took the lock
        _prepare(target, sweep, ids, opts, command)
        ledger_mod.remove_incomplete(target, ids)  # a run whose files were deleted or cut short since: run it again
        ledger, ran, resumed = _run_points(target, sweep, ids, opts, on_progress, command, t0)
    path = None
    if opts["figures"]:
        from . import report as report_mod

        path = report_mod.write_report(target)
    return SweepResult(path=target, runs=ledger.frame(), ran=ran, resumed=resumed, failed=ledger.failed,
                       seconds=time.perf_counter() - t0, report=path, options=opts)


def _run_points(target: Path, sweep: Sweep, ids: list[str], opts: dict, on_progress, command, t0: float
                ) -> tuple[Ledger, int, int]:
    """Run the points whose directories are missing on the backend, recording each in the ledger as it finishes;
    returns (the ledger, runs finished here, runs found complete)."""
    ledger = Ledger(target, sweep, ids)
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
    executor = backends.BACKENDS[opts["backend"]]
    try:
        with contextlib.closing(executor(jobs, opts, command, lambda rid: report(labels[rid]))) as outcomes:
            written = time.perf_counter()
            for rid, outcome in outcomes:
                ledger.record(rid, outcome)
                ran += 1
                if time.perf_counter() - written > ledger_mod.RUNS_CSV_EVERY:
                    ledger.write_runs()
                    written = time.perf_counter()
                report(labels[rid])
    finally:  # also on Ctrl-C: what is on disk now, as runs.csv and layers.csv
        ledger.refresh()
        ledger.write_runs()
        ledger.write_layers()
    return ledger, ran, resumed


def work(cfg: RunConfig) -> int:
    """Multiply-adds of a run's forward passes, every seed (and step, training): what orders a parallel sweep's runs,
    longest first (a model of a run's time good enough for that; it leaves out --jacobian and checkpointing's
    recompute). A --model's size is known only once it is built: its input's elements, every seed, stand in for
    it. A closed form: every layer after the first costs the same, so the driver builds nothing per layer and a
    billion-layer point (refused later by its run) cannot exhaust the driver's memory."""
    if cfg.model is not None:
        per_input = math.prod(cfg.input_shape) if cfg.input_shape else cfg.seq_len or config.MODEL_SEQ_LEN
        return cfg.seeds * (cfg.batch or config.MODEL_BATCH) * per_input
    first = shapes.multiply_adds(dataclasses.replace(cfg, depth=1))
    each_next = shapes.multiply_adds(dataclasses.replace(cfg, depth=2)) - first
    return cfg.seeds * getattr(cfg, "steps", 1) * (first + (cfg.depth - 1) * each_next)


def _check_target(target: Path, ids: list[str]) -> None:
    """Refuse, before anything is written, a target that is not this sweep's directory: another sweep's (its
    sweep.json lists other runs), something that is not a sweep directory, or an unreadable sweep.json."""
    meta_path = target / "sweep.json"
    if meta_path.is_file():
        old_ids = _read_meta(meta_path)["run_ids"]
        if sorted(old_ids) != sorted(ids):
            new, gone = len(set(ids) - set(old_ids)), len(set(old_ids) - set(ids))
            raise ConfigError(f"{target} holds a different sweep ({new} run(s) not in it, {gone} of its runs not in "
                              "this one); choose another --out or [sweep] name, or remove it")
    elif target.exists() and (not target.is_dir() or any(p.name != lock.LOCK_NAME for p in target.iterdir())):
        raise ConfigError(f"{target} exists and is not a sweep directory; choose another --out")


def _read_meta(meta_path: Path) -> dict:
    try:
        meta = results.read_json(meta_path)
        if not isinstance(meta.get("run_ids"), list):
            raise ValueError("no run ids")
        return meta
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"{meta_path} is unreadable; not a sweep directory?") from None


def _prepare(target: Path, sweep: Sweep, ids: list[str], opts: dict, command) -> None:
    """Create the sweep directory (checked by _check_target), clear what an interrupted invocation left, write
    sweep.json."""
    meta_path = target / "sweep.json"
    created = _read_meta(meta_path).get("created") if meta_path.is_file() else None
    runs_dir = target / "runs"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to {target}: {e.strerror or e}") from None
    _remove_stale(target, runs_dir)
    now = environment.now()
    meta = {"name": sweep.name, "source": sweep.source, "base": sweep.base, "grid": sweep.grid,
            "points": sweep.extra, "varying": sweep.varying, "options": opts, "run_ids": ids,
            "created": created or now, "description": sweep.description,
            "environment": environment.environment(command)}
    results.atomic_write(meta_path, json.dumps(results.jsonable(meta), indent=2) + "\n")


def _remove_stale(target: Path, runs_dir: Path) -> None:
    """Remove the staging folders and temp files of interrupted invocations: with the directory's lock held, no
    other sweep is writing into it, so each is stale (its process was killed, or its worker died with it)."""
    for entry in runs_dir.iterdir():
        if results.staging_pid(entry) is not None:
            shutil.rmtree(entry, ignore_errors=True)
    for entry in target.glob(".*.tmp-*"):
        entry.unlink(missing_ok=True)
