"""The sweep driver under hostile input and faults: sizes its cost model must not build per layer, a driver killed
mid-run, a cluster that cannot be reached, two sweeps on one directory, options that do not apply to a run, a sweep
whose every run failed."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

from initprobe import results, shapes, sweep
from initprobe.sweep import backends, lock
from initprobe.config import ConfigError, RunConfig


# --- the cost model -----------------------------------------------------------------------------------------------


def test_the_cost_model_is_a_closed_form_not_a_list_per_layer():
    """work() orders a parallel sweep's runs before any runs: for a billion layers it must neither die nor build
    a list per layer. Every layer after the first is width -> width, so the count is first + (depth - 1) * next.
    A per-layer list of a million layers would trace over 50 MB; the closed form traces a few hundred bytes."""
    work = sweep.work  # imported before anything is traced
    for arch, first in (("mlp", 7 * 16), ("cnn", 3 * 16 * 9)):
        for depth in (1, 2, 10**6, 10**9):
            cfg = RunConfig(arch=arch, depth=depth, width=16, batch=8, seeds=2,
                            **({"input_dim": 7} if arch == "mlp" else {}))
            positions = shapes.positions(cfg)
            expected = 2 * 8 * positions * (first + (depth - 1) * 16 * 16 * (9 if arch == "cnn" else 1))
            if depth <= 10**6:  # the per-layer count, as a check of the closed form, where a list still fits
                tracemalloc.start()
                got = work(cfg)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                assert peak < 64 * 1024, (arch, depth, peak)
            else:
                got = work(cfg)
            assert got == expected, (arch, depth)


def test_a_billion_layer_point_does_not_kill_the_driver(tmp_path, monkeypatch):
    """The driver orders a parallel sweep's runs by work() and records them: a point too big for any machine is
    its run's to refuse, the driver goes on and writes runs.csv (the backend here records what it was given and
    reports each run failed, as a run refusing its size would be)."""
    (tmp_path / "s.toml").write_text("[base]\nwidth = 1\nbatch = 1\nseeds = 1\n[grid]\ndepth = [3, 1000000000]\n")
    s = sweep.load_sweep(tmp_path / "s.toml")
    given = []

    def refuse(jobs, opts, command, started):
        for rid, cfg in jobs:
            given.append(cfg.depth)
            yield rid, {"status": "failed", "error": "ConfigError: too big", "wall_seconds": 0.0}

    monkeypatch.setitem(backends.BACKENDS, "process", refuse)
    result = sweep.run_sweep(s, out_dir=tmp_path / "out", backend="process", figures=False)
    assert given == [10**9, 3]  # the longest first
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert sorted(runs["depth"]) == [3, 10**9] and set(runs["status"]) == {"failed"} and result.failed == 2


# --- a driver killed mid-run ----------------------------------------------------------------------------------------

# A user's init that holds its run until the test opens the gate, leaving a file named after the process that runs
# it: the test knows which workers are busy, and kills the driver while they are.
GATE = """
import os
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent


def gated_(w, generator=None):
    (HERE / f"busy-{os.getpid()}").touch()
    while not (HERE / "open").exists():
        time.sleep(0.02)
    return torch.nn.init.normal_(w, std=w.shape[1] ** -0.5, generator=generator)


def deaf_(w, generator=None):  # as a run inside a long native call, which no signal handler interrupts
    (HERE / f"busy-{os.getpid()}").touch()
    while not (HERE / "open").exists():
        try:
            time.sleep(0.02)
        except KeyboardInterrupt:
            pass
    return torch.nn.init.normal_(w, std=w.shape[1] ** -0.5, generator=generator)
"""
HANG_GUARD = 60  # seconds: a bound on waiting for something that should happen at once, not a measured time


# `initprobe ARGS` with the process backend's workers spawned, not forked (as where forking is not safe)
SPAWNING = ("import sys; from initprobe.sweep import backends; backends.start_method = lambda *a: 'spawn'; "
            "from initprobe.cli import main; sys.exit(main(sys.argv[1:]))")


def initprobe(*args, cwd: Path, spawn: bool = False, group: bool = False) -> subprocess.Popen:
    """`initprobe ARGS` in a process of its own, with cwd on its path (for the user's init modules); with `group`,
    as a command started from a terminal: the leader of a process group of its own (its workers join it), with
    Ctrl-C's default disposition (the suite may run in a background job, which a shell starts with SIGINT
    ignored, and a process inherits that)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])}
    entry = ["-c", SPAWNING] if spawn else ["-m", "initprobe.cli"]
    terminal = (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if group else None
    return subprocess.Popen([sys.executable, *entry, *args], cwd=cwd, env=env, text=True, start_new_session=group,
                            preexec_fn=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition, what: str):
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {HANG_GUARD} s")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a dead child its new parent has not reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def started(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot): with the pid, names one process even if the pid is
    reused later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rfind(")") + 2:].split()[19])


def end(processes: dict[int, int | None]) -> None:
    """SIGKILL what is left of `processes` ({pid: started(pid)}), only where the pid is still that process."""
    for pid, start in processes.items():
        if start is not None and alive(pid) and started(pid) == start:
            os.kill(pid, signal.SIGKILL)


def gated_sweep(tmp_path: Path, init: str = "gated_") -> Path:
    (tmp_path / "gate_init.py").write_text(GATE)
    (tmp_path / "s.toml").write_text(textwrap.dedent(f"""
        [base]
        depth = 3
        width = 16
        batch = 8
        seeds = 1
        [grid]
        act = ["tanh", "relu", "sigmoid"]
        init = ["glorot_uniform", "gate_init:{init}"]
        """))
    return tmp_path / "s.toml"


@contextlib.contextmanager
def busy_process_sweep(tmp_path: Path, init: str = "gated_", **how):
    """A process-backend sweep (2 workers) of gated runs (gated_sweep), held while both workers are inside one:
    yields (the driver, {worker pid: its start}); leaves no process of it behind, whatever the test found. `how`:
    initprobe()'s spawn and group."""
    gated_sweep(tmp_path, init)
    driver = initprobe("sweep", "s.toml", "--out", "out", "--backend", "process", "--workers", "2", "--quiet",
                       cwd=tmp_path, **how)
    busy = lambda: {int(p.name.split("-")[1]) for p in tmp_path.glob("busy-*")}  # noqa: E731
    workers = {}
    try:
        wait_for(lambda: len(busy()) == 2 or driver.poll() is not None, "both workers inside a gated run")
        assert driver.poll() is None, driver.communicate()
        workers = {pid: started(pid) for pid in busy()}
        yield driver, workers
    finally:
        driver.kill()
        end({**{pid: started(pid) for pid in busy()}, **workers})


def resumed_every_run_once(tmp_path: Path) -> None:
    """Open the gate, run the sweep again: every run once, ok, and nothing else in its runs/ (no staging folder)."""
    (tmp_path / "open").touch()
    resume = initprobe("sweep", "s.toml", "--out", "out", "--backend", "process", "--workers", "2", "--quiet",
                       cwd=tmp_path)
    stdout, stderr = resume.communicate(timeout=600)
    assert resume.returncode == 0, stderr
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(runs) == 6 and runs["run_id"].is_unique and set(runs["status"]) == {"ok"}
    assert sorted(p.name for p in (tmp_path / "out" / "runs").iterdir()) == sorted(runs["run_id"])
    layers = pd.read_csv(tmp_path / "out" / "layers.csv")
    assert layers.groupby("run_id").size().to_dict() == {rid: 3 for rid in runs["run_id"]}


INTERRUPTED = "interrupted; nothing half-written was left behind (run a sweep again to resume it)\n"


def staging_folders(tmp_path: Path) -> list[str]:
    return [p.name for p in (tmp_path / "out" / "runs").iterdir() if results.staging_pid(p) is not None]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("spawn", [False, True], ids=["forked", "spawned"])
def test_a_killed_driver_takes_its_workers_with_it_and_the_resume_runs_each_run_once(tmp_path, spawn):
    """SIGKILL the driver of a process-backend sweep while both workers are inside a run: the workers go too (they
    would otherwise sit in their runs, or idle, for ever), and a resume finishes every run exactly once."""
    with busy_process_sweep(tmp_path, spawn=spawn) as (driver, workers):
        assert driver.pid not in workers
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        wait_for(lambda: not any(alive(pid) for pid in workers), "the workers of the killed driver to die")
    resumed_every_run_once(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_a_stopped_process_sweep_stops_the_runs_in_flight_and_a_resume_runs_each_once(tmp_path, how):
    """SIGTERM to the driver of a process-backend sweep, or Ctrl-C in its terminal (SIGINT to the whole process
    group), while both workers are inside runs that would never end on their own: the sweep stops at once, exit
    130, runs.csv written, the runs in flight interrupted and gone without a trace (no staging folder), the workers
    ended; a resume then finishes every run exactly once."""
    with busy_process_sweep(tmp_path, group=True) as (driver, workers):
        if how == "sigterm":
            driver.send_signal(signal.SIGTERM)
        else:
            os.killpg(driver.pid, signal.SIGINT)
        stdout, stderr = driver.communicate(timeout=HANG_GUARD)  # the gate stays shut: the runs must be stopped
        assert driver.returncode == 130 and stderr == INTERRUPTED, stderr
        assert (tmp_path / "out" / "runs.csv").is_file() and staging_folders(tmp_path) == []
        wait_for(lambda: not any(alive(pid) for pid in workers), "the workers to end")
    resumed_every_run_once(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_second_ctrl_c_ends_a_process_sweep_whose_runs_do_not_stop(tmp_path):
    """Runs that the first Ctrl-C cannot interrupt (a long native call) hold the sweep until they end; a second
    Ctrl-C ends it at once: the workers killed, their half-written runs removed, exit 130 with the one line."""
    with busy_process_sweep(tmp_path, init="deaf_", group=True) as (driver, workers):
        os.killpg(driver.pid, signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):  # the runs go on; so does the sweep, waiting for them
            driver.communicate(timeout=1.0)
        assert all(alive(pid) for pid in workers)
        os.killpg(driver.pid, signal.SIGINT)
        stdout, stderr = driver.communicate(timeout=HANG_GUARD)
        assert driver.returncode == 130 and stderr == INTERRUPTED, stderr
        assert not any(alive(pid) for pid in workers) and staging_folders(tmp_path) == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_sent_sigterm_by_someone_else_loses_its_run_and_the_sweep_goes_on(tmp_path):
    """SIGTERM to one worker (a plain `kill`, a memory watchdog's first warning) is not the sweep's stop: that
    worker's run is taken as one whose worker was lost and retried alone, the other runs go on, and the sweep
    ends with every run once and ok."""
    with busy_process_sweep(tmp_path) as (driver, workers):
        os.kill(min(workers), signal.SIGTERM)
        (tmp_path / "open").touch()
        stdout, stderr = driver.communicate(timeout=600)
        assert driver.returncode == 0 and stderr == "", stderr
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(runs) == 6 and runs["run_id"].is_unique and set(runs["status"]) == {"ok"}
    assert sorted(p.name for p in (tmp_path / "out" / "runs").iterdir()) == sorted(runs["run_id"])


def descendants(root: int) -> set[int]:
    """Every process below `root`, from /proc (children, their children, ...)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rfind(")") + 2:].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_ray_driver_takes_the_runs_of_its_local_ray_with_it(tmp_path):
    """What holds for a local Ray when its driver is SIGKILLed (docs/output-format.md): Ray's own fate sharing ends
    its GCS, raylet and the workers running the tasks at once, so no run goes on; its per-node agents notice too
    and leave after Ray's own timeout (a minute), which this test does not wait for (it ends them itself)."""
    pytest.importorskip("ray")
    gated_sweep(tmp_path)
    driver = initprobe("sweep", "s.toml", "--out", str(tmp_path / "out"), "--backend", "ray", "--quiet", cwd=tmp_path)
    busy = lambda: {int(p.name.split("-")[1]) for p in tmp_path.glob("busy-*")}  # noqa: E731
    ray_processes = {}
    try:
        wait_for(lambda: len(busy()) >= 1 or driver.poll() is not None, "a Ray worker inside a gated run")
        assert driver.poll() is None, driver.communicate()
        ray_processes = {pid: started(pid) for pid in descendants(driver.pid)}
        workers = busy()
        assert workers <= set(ray_processes)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        wait_for(lambda: not any(alive(pid) for pid in workers), "the Ray workers of the killed driver to die")
    finally:
        driver.kill()
        end(ray_processes)


# --- two sweeps on one directory ------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in folder.rglob("*")}


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_the_lock_refuses_a_second_holder_and_its_file_alone_is_no_obstacle(tmp_path):
    """flock conflicts between two opens of the file even in one process: a sweep started while the lock is held
    is refused before it writes; a directory holding only the lock file (its sweep killed before writing anything
    else) is started like an empty one."""
    (tmp_path / "s.toml").write_text("[base]\ndepth = 2\nwidth = 4\nbatch = 2\nseeds = 1\n")
    s = sweep.load_sweep(tmp_path / "s.toml")
    out = tmp_path / "out"
    with lock.held(out):
        with pytest.raises(ConfigError, match=f"{out} is in use by another sweep \\(process {os.getpid()}\\)"):
            sweep.run_sweep(s, out_dir=out, figures=False)
        assert [p.name for p in out.iterdir()] == [".lock"]
    assert sweep.run_sweep(s, out_dir=out, figures=False).ran == 1


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_sweep_directory_locked_by_another_process_is_refused_untouched(tmp_path):
    """Another process holds the sweep directory's lock (as a running sweep does): `initprobe sweep` on it is one
    line and exit code 2, and changes nothing."""
    (tmp_path / "s.toml").write_text("[base]\ndepth = 2\nwidth = 4\nbatch = 2\nseeds = 1\n"
                                     '[grid]\nact = ["tanh", "relu"]\n')
    first = initprobe("sweep", "s.toml", "--out", "out", "--quiet", "--no-figures", cwd=tmp_path)
    assert first.wait(timeout=600) == 0, first.communicate()
    (tmp_path / "out" / "runs.csv").unlink()  # something for the second invocation to write, if it ran
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid())); f.flush(); "
                               "print('held', flush=True); time.sleep(600)",
                               str(tmp_path / "out" / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = snapshot(tmp_path / "out")
        second = initprobe("sweep", "s.toml", "--out", "out", "--quiet", "--no-figures", cwd=tmp_path)
        stdout, stderr = second.communicate(timeout=HANG_GUARD)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2 and stdout == ""
    assert stderr == f"error: out is in use by another sweep (process {holder.pid}); wait for it to finish or " \
                     "choose another --out\n"
    assert snapshot(tmp_path / "out") == before


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_second_sweep_on_a_running_sweeps_directory_is_refused_and_the_first_finishes(tmp_path):
    """Two real sweeps on one --out: while the first runs (held inside a run), the second is refused with one line
    before it writes anything; the first then finishes with every run once and nothing hidden left."""
    gated_sweep(tmp_path)
    first = initprobe("sweep", "s.toml", "--out", "out", "--quiet", "--no-figures", cwd=tmp_path)
    try:
        wait_for(lambda: any(tmp_path.glob("busy-*")) or first.poll() is not None, "the first sweep inside a run")
        assert first.poll() is None, first.communicate()
        before = snapshot(tmp_path / "out")
        second = initprobe("sweep", "s.toml", "--out", "out", "--quiet", "--no-figures", cwd=tmp_path)
        stdout, stderr = second.communicate(timeout=HANG_GUARD)
        assert second.returncode == 2 and stderr.count("\n") == 1, stderr
        assert stderr.startswith(f"error: out is in use by another sweep (process {first.pid})")
        assert snapshot(tmp_path / "out") == before
        (tmp_path / "open").touch()
        assert first.wait(timeout=600) == 0, first.communicate()
    finally:
        first.kill()
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(runs) == 6 and runs["run_id"].is_unique and set(runs["status"]) == {"ok"}
    assert sorted(p.name for p in (tmp_path / "out" / "runs").iterdir()) == sorted(runs["run_id"])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_ray_sweep_stopped_by_sigterm_stops_like_ctrl_c_and_shuts_its_ray_down(tmp_path):
    """Ray's core worker takes SIGTERM over (it would end the driver at once, runs.csv unwritten); the CLI's handler
    is put back, so SIGTERM stops the sweep as Ctrl-C does: exit 130, runs.csv written, and the local Ray it
    started shut down, its agents included."""
    pytest.importorskip("ray")
    gated_sweep(tmp_path)
    driver = initprobe("sweep", "s.toml", "--out", "out", "--backend", "ray", "--quiet", cwd=tmp_path)
    ray_processes = {}
    try:
        wait_for(lambda: any(tmp_path.glob("busy-*")) or driver.poll() is not None, "a Ray worker inside a run")
        assert driver.poll() is None, driver.communicate()
        ray_processes = {pid: started(pid) for pid in descendants(driver.pid)}
        driver.send_signal(signal.SIGTERM)
        stdout, stderr = driver.communicate(timeout=HANG_GUARD)
        assert driver.returncode == 130, stderr
        assert "interrupted; nothing half-written was left behind" in stderr
        assert (tmp_path / "out" / "runs.csv").is_file()
        wait_for(lambda: not any(alive(pid) for pid in ray_processes), "the local Ray to be shut down")
    finally:
        driver.kill()
        end(ray_processes)


# --- a Ray cluster that cannot be reached ---------------------------------------------------------------------------


def closed_port() -> int:
    """A local TCP port nothing listens on (just released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_ray_address_that_cannot_be_reached_is_refused(monkeypatch):
    """Refused before Ray is asked (Ray retries an address for many minutes): a name that does not resolve, a port
    nobody listens on, something that is not host:port; one that does not answer in time (name resolution
    included) is refused when the time is up."""
    for address in ("bogus:1234", f"127.0.0.1:{closed_port()}", f"ray://127.0.0.1:{closed_port()}"):
        with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at {re.escape(address)}"):
            backends.check_address(address)
    for address in ("bogus", "ray://head", "head:port", "head:0", "head:70000", "http://head:8265"):
        with pytest.raises(ConfigError, match="expected host:port, ray://host:port, auto or local"):
            backends.check_address(address)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", f"[::ffff:127.0.0.1]:{port}", "auto",
                        "local", None):
            backends.check_address(address)
        release = threading.Event()

        def hanging_name_server(*args, **kwargs):
            release.wait()
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

        monkeypatch.setattr(backends, "RAY_CONNECT_SECONDS", 0.1)
        monkeypatch.setattr(socket, "getaddrinfo", hanging_name_server)
        try:
            with pytest.raises(ConfigError, match=f"127.0.0.1:{port} did not answer within 0.1 s"):
                backends.check_address(f"127.0.0.1:{port}")
        finally:
            release.set()


@pytest.mark.slow
def test_sweep_on_a_ray_address_that_cannot_be_reached_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "s.toml").write_text("[base]\ndepth = 2\nwidth = 4\nbatch = 2\nseeds = 1\n")
    for address in ("bogus:1234", f"127.0.0.1:{closed_port()}"):
        sweep_cmd = initprobe("sweep", "s.toml", "--out", "out", "--backend", "ray", "--address", address,
                              cwd=tmp_path)
        try:
            stdout, stderr = sweep_cmd.communicate(timeout=HANG_GUARD)
        finally:
            sweep_cmd.kill()
        assert sweep_cmd.returncode == 2
        assert stderr.startswith(f"error: cannot reach the Ray cluster at {address}") and stderr.count("\n") == 1
        assert not (tmp_path / "out").exists()


# A parent that starts one child, which applies `how` (a way to die with its parent), writes its pid and sleeps;
# the parent then sleeps too, until the test kills it.
ORPHAN = """
import multiprocessing, os, sys, time
from initprobe import forking

def child(parent, how, pidfile):
    {"kernel": forking.die_with_parent, "watch": lambda p: __import__("threading").Thread(
        target=forking.watch_parent, args=(p,), daemon=True).start()}[how](parent)
    open(pidfile, "w").write(str(os.getpid()))
    time.sleep(3600)

if __name__ == "__main__":
    how, start, pidfile = sys.argv[1:]
    if start == "fork":
        if os.fork() == 0:
            child(os.getppid(), how, pidfile)
    else:
        multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(), how, pidfile)).start()
    time.sleep(3600)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the kernel's way is Linux's")
@pytest.mark.parametrize("how,start", [("kernel", "fork"), ("watch", "fork"), ("watch", "spawn")])
def test_a_child_dies_with_its_parent_either_way(tmp_path, how, start):
    """Both ways a child ends with its parent: the kernel's parent-death signal (Linux), and the portable watcher
    (the parent's multiprocessing sentinel for a spawned child, its parent id changing for a plain fork)."""
    (tmp_path / "orphan.py").write_text(ORPHAN)
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, str(tmp_path / "orphan.py"), how, start, str(pidfile)])
    child = None
    try:
        wait_for(lambda: pidfile.is_file() and pidfile.read_text(), "the child to start")
        child = int(pidfile.read_text())
        assert alive(child)
        parent.kill()
        parent.wait()
        wait_for(lambda: not alive(child), "the child of the killed parent to die")
    finally:
        parent.kill()
        if child is not None:
            end({child: started(child)})


# --- a sweep whose every run failed ---------------------------------------------------------------------------------

FAILING = """
def bad_(w, generator=None):
    raise RuntimeError("this init always fails")
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_a_sweep_whose_every_run_failed_exits_1_and_says_so(tmp_path, monkeypatch, capsys, quiet):
    """Every run recorded failed: exit code 1 and one line saying so on stderr; no path of a layers.csv that does
    not exist (there is no ok run to join). runs.csv, which holds the errors, is written and named."""
    from initprobe.cli import main

    (tmp_path / "failing_init.py").write_text(FAILING)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text('[base]\ndepth = 2\nwidth = 4\nbatch = 2\nseeds = 1\ninit = "failing_init:bad_"\n'
                                     '[grid]\nact = ["tanh", "relu"]\n')
    code = main(["sweep", "s.toml", "--out", "out", "--no-figures", *(["--quiet"] if quiet else [])])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == "error: every run of the sweep failed (2 of 2); their errors are in out/runs.csv\n"
    printed = captured.out.splitlines()
    assert not (tmp_path / "out" / "layers.csv").exists() and not any("layers.csv" in line for line in printed)
    assert printed[-1] == ("out" if quiet else "out/runs.csv")
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(runs["status"]) == ["failed", "failed"]
    assert set(runs["error"]) == {
        "UserCodeError: init 'failing_init:bad_' failed: RuntimeError: this init always fails"}


def test_a_sweep_with_one_run_ok_exits_0_and_names_its_files(tmp_path, monkeypatch, capsys):
    from initprobe.cli import main

    (tmp_path / "failing_init.py").write_text(FAILING)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text('[base]\ndepth = 2\nwidth = 4\nbatch = 2\nseeds = 1\n'
                                     '[grid]\ninit = ["failing_init:bad_", "glorot_uniform"]\n')
    code = main(["sweep", "s.toml", "--out", "out", "--no-figures"])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    assert captured.out.splitlines()[-2:] == ["out/runs.csv", "out/layers.csv"]
    assert "1 failed (see runs.csv)" in captured.out
