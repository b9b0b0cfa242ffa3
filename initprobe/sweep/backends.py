"""Where a sweep's runs run. Each backend is a generator of (run_id, outcome) as runs finish, outcome = {status,
error, wall_seconds}; every backend probes with the same number of torch threads, so the numbers do not depend on it.

- local: one after another in this process.
- process: a persistent pool of processes (forked where that is safe, with torch already imported; else spawned,
  each importing torch) that write run directories straight into the sweep directory. A worker that dies takes the
  runs in flight with it; those are retried one at a time, so that only the culprit fails. A driver that dies takes
  its workers with it (forking.die_with_parent), SIGKILL included.
- ray: each point a Ray task on a local Ray or a cluster; the task probes into a temporary folder on its node and
  returns the run's files, which the driver writes and publishes atomically (no shared file system needed). A
  cluster address is checked before Ray is asked (check_address): Ray itself retries one for many minutes.
"""

import contextlib
import dataclasses
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

from .. import config, forking, results
from ..config import ConfigError, RunConfig

RAY_MISSING = "the ray backend needs `pip install initprobe[ray]`"
RAY_CONNECT_SECONDS = 5.0  # to resolve a cluster's name and open a connection to it (docs/output-format.md)
RAY_JOIN_ATTEMPTS = "1"  # Ray's attempts to reach the GCS of an address that answers (each ends within a minute)
RAY_ADDRESS_FORMS = "expected host:port, ray://host:port, auto or local"

_started_here: list[bool] = []  # per open ray_session, outermost first: did it init Ray (and will it shut it down)?


def _probe(cfg: RunConfig, threads: int, command) -> dict:
    """One run (a train run for a TrainConfig) with `threads` intra-op threads (restored after): what every backend
    executes for a point."""
    from .. import devices, runner, train

    t0 = time.perf_counter()
    try:
        with devices.torch_threads(threads):
            (train.train if isinstance(cfg, config.TrainConfig) else runner.run)(cfg, command=command)
        return {"status": "ok", "error": "", "wall_seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001  (out of memory, a bug, bad input found late: recorded, sweep goes on)
        return {"status": "failed", "error": _one_line(e), "wall_seconds": time.perf_counter() - t0}


def _one_line(e: BaseException, limit: int = 1000) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _run_local(jobs, opts, command, started) -> Iterator[tuple[str, dict]]:
    for rid, cfg in jobs:
        started(rid)
        outcome = _probe(cfg, opts["threads"], command)
        yield rid, outcome


def _init_process_worker(threads: int, driver: int) -> None:
    """A worker stops on its driver's word alone: Ctrl-C in a terminal (SIGINT to the whole process group) is
    ignored here (from the start: the driver starts its workers with interrupts held), and the driver, stopping,
    sends each worker one SIGTERM (_stop_workers), which interrupts the run it is in as Ctrl-C would (the run
    leaves nothing half-written) and every run it would start after. A SIGTERM from anyone else does the same: the
    driver takes that worker's run for one whose worker was lost (retried alone)."""
    import signal

    forking.die_with_parent(driver)  # a driver killed outright (SIGKILL, the OOM killer) takes its workers with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt_run)  # (a forked worker inherits the CLI's SIGTERM-as-Ctrl-C)
    forking.release_interrupts()  # held since the driver started this worker (_process_pool)
    import torch

    torch.set_num_threads(threads)


KILLED_WORKER_SECONDS = 5.0  # a bound on a SIGKILLed worker's exit, which is at once
_in_run = False  # a process worker is inside _process_task
_stopped = False  # a process worker was told to stop (SIGTERM): it starts no run any more


def _interrupt_run(signum, frame) -> None:
    """The first SIGTERM interrupts the run; a second would interrupt the run's own clean-up."""
    global _stopped
    first, _stopped = not _stopped, True
    if first and _in_run:
        raise KeyboardInterrupt


def _stop_workers(pool, how: int | None = None) -> list:
    """A signal (default SIGTERM: see _init_process_worker) to each of the pool's worker processes; returns them."""
    import signal

    processes = list((getattr(pool, "_processes", None) or {}).values())  # ProcessPoolExecutor's pid -> Process
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM if how is None else how)
    return processes


def _shut_down(pool, runs_dir: Path) -> None:
    """Shut the pool down once its workers are idle, then remove what workers that are gone left half-written (a
    dead worker's run, a run stopped before it could remove its own). An interrupt while waiting for them (a second
    Ctrl-C) kills them instead, so that no wait is left behind (an interrupted shutdown would otherwise leave the
    interpreter's exit waiting on workers that are never told to end). Further interrupts wait for the clean-up."""
    import signal

    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except BaseException:
        with forking.interrupts_held():
            for process in _stop_workers(pool, getattr(signal, "SIGKILL", signal.SIGTERM)):
                process.join(KILLED_WORKER_SECONDS)
            results.remove_stale_staging(runs_dir)
        raise
    with forking.interrupts_held():
        results.remove_stale_staging(runs_dir)


def start_method(threads: int, devices) -> str:
    """'fork' where it is safe, so that workers start at once with torch already imported; else 'spawn', whose
    workers import torch first (seconds each, longer than a sweep of small runs takes on one core).
    Safe means forking.fork_is_safe() (Linux, no other Python thread), and: one intra-op thread per worker (GNU
    OpenMP cannot run a parallel region in a child forked after this process ran one); and no CUDA in the
    children: every run's `devices` is the CPU, or this torch has no CUDA (merely asking CUDA whether there is a
    GPU, as resolving 'auto' or 'cuda' here does, leaves a forked child unable to use it), and CUDA is not
    initialised here."""
    import torch

    no_cuda = set(devices) <= {"cpu"} or not torch.backends.cuda.is_built()
    safe = forking.fork_is_safe() and threads == 1 and no_cuda and not torch.cuda.is_initialized()
    return "fork" if safe else "spawn"


def _process_task(cfg_dict: dict, threads: int, command, kind: str = config.RUN) -> dict:
    global _in_run
    _in_run = True
    try:
        if _stopped:  # the SIGTERM came between two runs
            raise KeyboardInterrupt
        return _probe(config.CONFIGS[kind](**cfg_dict), threads, command)
    finally:
        _in_run = False


WORKER_DIED = ("its worker process died or was stopped (SIGTERM) twice, the second time running this run alone (killed "
               "for lack of memory? "
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


def _process_pool(jobs, workers: int, opts, command):
    """Run `jobs` in one pool of `workers` processes (forked or spawned: see start_method), at most `workers`
    submitted at a time (so the runs in flight are known), yielding (run_id, outcome) as they finish. Returns
    (the jobs in flight when a worker died, the jobs not yet submitted); ([], []) when every job finished."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from .. import runner  # noqa: F401  (imported here, a forked worker has it, and torch, from the start)

    method = start_method(opts["threads"], {cfg.device for _, cfg in jobs})
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_init_process_worker, initargs=(opts["threads"], os.getpid()))
    todo, running, broken = list(jobs), {}, []
    try:
        while running or (todo and not broken):
            while todo and len(running) < workers and not broken:
                rid, cfg = todo.pop(0)
                task = (_process_task, dataclasses.asdict(cfg), opts["threads"], command, config.command_of(cfg))
                with forking.interrupts_held():  # a worker this starts inherits them held (_init_process_worker)
                    running[pool.submit(*task)] = (rid, cfg)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                if isinstance(future.exception(), (BrokenProcessPool, KeyboardInterrupt)):  # a worker lost or stopped
                    broken.append(job)
                    continue
                yield job[0], future.result()
        return broken, todo
    except BaseException:  # Ctrl-C, SIGTERM, the sweep stopped otherwise: the runs in flight stop too
        _stop_workers(pool)
        raise
    finally:
        _shut_down(pool, Path(jobs[0][1].out).parent)


def _ray_task(cfg_dict: dict, threads: int, command, kind: str = config.RUN) -> dict:
    """Probe into a temporary folder on the Ray node and return the run directory's files (relative path ->
    bytes): the driver writes them, so the nodes need no shared file system."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="initprobe-ray-") as tmp:
        out = Path(tmp) / "run"
        outcome = _probe(config.CONFIGS[kind](**{**cfg_dict, "out": str(out)}), threads, command)
        if outcome["status"] == "ok":
            outcome["files"] = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        return outcome


def _publish_files(final: Path, files: dict[str, bytes]) -> None:
    """Write a run directory from its files' contents, atomically (staging folder + rename, like the runner)."""
    res = results.Reservation(final, results.staging_path(final))
    shutil.rmtree(res.staging, ignore_errors=True)
    with results.publishing(res) as staging:
        for rel, data in files.items():
            path = staging / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise ValueError(f"unexpected path in a run's files: {rel}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        info = results.read_json(staging / "config.json")
        info["config"]["out"] = str(final)  # it ran in a temporary folder on its node
        results.write_json(staging / "config.json", info)


def check_address(address: str | None) -> None:
    """ConfigError unless the cluster at `address` takes a TCP connection within RAY_CONNECT_SECONDS, name
    resolution included (a name server that hangs cannot hold the sweep). None, 'auto' and 'local' are Ray's to
    resolve: a local Ray, or the cluster this machine is part of."""
    if address is None or address in ("auto", "local"):
        return
    host, port = _host_port(address)
    outcome: list[BaseException | None] = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=RAY_CONNECT_SECONDS).close()
            outcome.append(None)
        except Exception as e:  # noqa: BLE001  (a name that is not one, IDNA, a NUL byte: not reachable either way)
            outcome.append(e)

    attempt = threading.Thread(target=connect, name="ray-address-check", daemon=True)
    attempt.start()
    attempt.join(RAY_CONNECT_SECONDS)
    if not outcome:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {host}:{port} did not answer within "
                          f"{RAY_CONNECT_SECONDS:g} s")
    if outcome[0] is not None:
        error = outcome[0]
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {reason}")


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) of 'host:port', '[v6]:port' or 'ray://host:port'; ConfigError for anything else."""
    rest = address.removeprefix("ray://")
    host, colon, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or "/" in rest or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address {RAY_ADDRESS_FORMS}, got '{address}'")
    return host, int(port)


@contextlib.contextmanager
def _bounded_join(address: str | None):
    """Joining a cluster that answers but whose GCS does not: one attempt of Ray's (its own timeouts end it within
    about a minute) instead of its default twenty, unless the user set RAY_gcs_server_port_wait_time_s."""
    key = "RAY_gcs_server_port_wait_time_s"
    if address in (None, "auto", "local") or key in os.environ:
        yield
        return
    os.environ[key] = RAY_JOIN_ATTEMPTS
    try:
        yield
    finally:
        os.environ.pop(key, None)


@contextlib.contextmanager
def ray_session(address: str | None):
    """Ray for a whole sweep: the cluster at `address` joined (checked first: check_address), or a local Ray started,
    and shut down at the end if it was started here. A Ray already initialised in this process (a notebook, a test,
    an enclosing session) is used as it is. The sweep opens it before writing into its directory, so a cluster that
    cannot be joined leaves nothing behind."""
    check_address(address)
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    own = not ray.is_initialized()
    if own:
        import logging

        kwargs = {"address": address} if address else {"include_dashboard": False}
        try:
            with _bounded_join(address), _keeping_sigterm_handler():
                ray.init(**kwargs, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot start or join Ray (address {address or 'local'}): {e}") from None
    _started_here.append(own)
    try:
        yield ray
    finally:
        _started_here.pop()
        if own:
            ray.shutdown()


@contextlib.contextmanager
def _keeping_sigterm_handler():
    """Ray's core worker takes SIGTERM over (it ends the process at once); a Python handler installed before (the
    CLI's, which stops a sweep as Ctrl-C does: runs.csv written, Ray shut down) is put back."""
    import signal

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(handler):
            signal.signal(signal.SIGTERM, handler)


def _run_ray(jobs, opts, command, started) -> Iterator[tuple[str, dict]]:
    """Each point is a Ray task (num_cpus=1, num_gpus=gpus_per_run) on the cluster at `address`, or a local Ray
    (ray_session)."""
    if not jobs:
        return
    with ray_session(opts["address"]) as ray:
        yield from _ray_tasks(ray, jobs, opts, command)


def _ray_tasks(ray, jobs, opts, command) -> Iterator[tuple[str, dict]]:
    task = ray.remote(num_cpus=1, num_gpus=opts["gpus_per_run"])(_ray_task)
    finals, pending = {}, []
    try:
        for rid, cfg in jobs:
            ref = task.remote(dataclasses.asdict(cfg), opts["threads"], command, config.command_of(cfg))
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
        # A session opened here ends its Ray job at shutdown, and the job's tasks with it. Cancelling them first
        # only races Ray's own bookkeeping (a reply arriving for a task being cancelled aborts the driver), so
        # tasks are cancelled only in a Ray someone else opened (a notebook's), which lives on after the sweep.
        if not any(_started_here):
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)


BACKENDS = {"local": _run_local, "process": _run_process, "ray": _run_ray}
