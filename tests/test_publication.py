"""Publication of a run directory: it appears only when everything the run was asked to write is written (its
plots included); a generated name that another run took meanwhile becomes the next free one; staging folders that
killed processes left behind are cleaned; a run that fails leaves no directory it created behind."""

import json
import os
import subprocess
import sys

import pytest

from initprobe import results, runner
from initprobe.cli import main
from initprobe.config import ConfigError, RunConfig
from initprobe.plots import run_figures

from conftest import snapshot


def small(**kw) -> RunConfig:
    return RunConfig(**{**dict(depth=3, width=8, batch=4, seeds=1, plots=False, device="cpu"), **kw})


# ------------------------------------------------------------------------------------------ plots before publishing


def test_a_run_interrupted_while_drawing_its_plots_is_not_published(workdir, capsys, monkeypatch):
    """Ctrl-C after the first figure is saved: no run directory (it would look finished with one of its plots), no
    staging folder, no drawing process left writing into it; the message that nothing half-written was left
    behind is true."""
    parent, saved = os.getpid(), []

    def save_then_interrupt(fig, path, fmt):
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format=fmt)
        if os.getpid() == parent:
            saved.append(path.name)
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(run_figures, "save", save_then_interrupt)
    before = snapshot(workdir)
    code = main(["run", "--depth", "3", "--width", "8", "--batch", "4", "--seeds", "1"])
    assert code == 130 and "nothing half-written" in capsys.readouterr().err
    assert saved == ["variance.png"]
    assert snapshot(workdir) == before


def test_a_published_run_has_its_plots(workdir):
    result = runner.run(small(plots=True), root=workdir / "results")
    expected = {f"{name}.png" for name in run_figures.figures_of(results.read_run(result.path))}
    assert len(expected) >= 5 and {p.name for p in (result.path / "plots").iterdir()} == expected


# ------------------------------------------------------------------------------------------ names at publication


def test_a_generated_name_taken_meanwhile_becomes_the_next_free_one(workdir):
    """Another run publishes the same generated name while this one probes: this one is published as -2, its
    config.json says so, and the other is untouched."""
    root = workdir / "results"
    name = results.default_name(small())

    def other_run_publishes(_):
        (root / name).mkdir()
        (root / name / "layers.csv").write_text("the other run's\n")

    result = runner.run(small(), on_seed=other_run_publishes, root=root)
    assert result.path == root / f"{name}-2"
    assert json.loads((result.path / "config.json").read_text())["config"]["out"] == str(root / f"{name}-2")
    assert (root / name / "layers.csv").read_text() == "the other run's\n"
    assert sorted(p.name for p in root.iterdir()) == sorted(["earlier", name, f"{name}-2"])


def test_an_explicit_out_taken_meanwhile_is_an_error_and_nothing_is_left(workdir):
    root, out = workdir / "results", workdir / "results" / "mine"

    def other_writes_out(_):
        out.mkdir()
        (out / "notes.txt").write_text("theirs\n")

    with pytest.raises(ConfigError, match="appeared while the run was going"):
        runner.run(small(out=str(out)), on_seed=other_writes_out, root=root)
    assert sorted(p.name for p in root.iterdir()) == ["earlier", "mine"]  # no hidden staging folder kept
    assert (out / "notes.txt").read_text() == "theirs\n" and len(list(out.iterdir())) == 1


# ------------------------------------------------------------------------------------------ leftovers


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_staging_folders_of_killed_processes_are_removed(workdir):
    """A killed run's `.NAME.partial-PID` is removed by the next run written beside it; one whose process is
    alive (another run writing now) is left alone."""
    root = workdir / "results"
    stale = root / f".mlp-x-tanh-d3-w8.partial-{dead_pid()}"
    alive = root / f".mlp-y-tanh-d3-w8.partial-{os.getppid()}"
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "layers.csv").write_text("half\n")
    runner.run(small(), root=root)
    assert not stale.exists() and (alive / "layers.csv").read_text() == "half\n"


@pytest.mark.parametrize("named", [False, True])
def test_a_late_failure_leaves_no_directory_it_created(workdir, monkeypatch, named):
    """A run into directories that do not exist yet fails after probing: none of them is left behind."""
    def fails(*args, **kwargs):
        raise RuntimeError("found late")

    monkeypatch.setattr(results, "write_run", fails)
    root = workdir / "new" / "results"
    cfg = small(out=str(workdir / "a" / "b" / "run")) if named else small()
    with pytest.raises(RuntimeError, match="found late"):
        runner.run(cfg, root=root)
    assert sorted(p.name for p in workdir.iterdir()) == ["results"]


def recorded_forks(monkeypatch, interrupting: bool = False) -> list[int]:
    """The pids of the children forking.run_shared forks from now on (forking made safe here); with
    `interrupting`, a Ctrl-C arrives as each fork starts."""
    import signal

    from initprobe import forking

    monkeypatch.setattr(forking, "fork_is_safe", lambda: True)
    forked, fork = [], os.fork

    def recording_fork():
        if interrupting:
            os.kill(os.getpid(), signal.SIGINT)
        pid = fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", recording_fork)
    return forked


def late_write(path):
    """A share of work that writes `path` after 5 s: a child still at it when it should be gone would write it."""
    def share():
        import time

        time.sleep(5)
        path.write_text("late\n")
    return share


def assert_gone_and_reaped(pids: list[int]) -> None:
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_drawing_processes_die_with_an_error_of_the_parent(tmp_path, monkeypatch):
    """forking.run_shared: when the parent's own share raises, its forked children are killed and reaped before
    the error goes on (a child still drawing would write into the staging folder the caller then removes)."""
    from initprobe import forking

    forked, marker = recorded_forks(monkeypatch), tmp_path / "child-wrote"

    def parent_share():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        forking.run_shared([parent_share, late_write(marker)], workers=2)
    assert len(forked) == 1
    assert_gone_and_reaped(forked)
    assert not marker.exists()


def test_an_interrupt_while_drawing_processes_start_waits_for_them_then_ends_them(tmp_path, monkeypatch):
    """forking.run_shared: a Ctrl-C that arrives while it forks is held until every child is started (one that
    lands inside a fork is dropped by Python, and the run would go on as if nothing happened), then raised before
    the parent's share: the children are killed and reaped, and no share runs to its end."""
    import signal

    from initprobe import forking

    forked, written = recorded_forks(monkeypatch, interrupting=True), tmp_path / "written"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # the suite may run with SIGINT ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            forking.run_shared([late_write(written)] * 3, workers=3)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(forked) == 2
    assert_gone_and_reaped(forked)
    assert not written.exists()


def test_interrupts_held_inside_the_block_come_at_its_end_and_the_handlers_are_put_back():
    import signal

    from initprobe import forking

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # the suite may run with SIGINT ignored
    terminate = signal.getsignal(signal.SIGTERM)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with forking.interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                done.append(sum(range(1000)))  # Python code after the signal, not cut short
                done.append("end")
        assert done == [499500, "end"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is terminate
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_started_while_interrupts_are_held_holds_them_until_it_lets_them_through():
    """So that a Ctrl-C cannot land in a spawned worker's start-up (its imports), where it would print the
    worker's traceback: the worker lets SIGINT and SIGTERM through once its handlers are set."""
    import signal

    from initprobe import forking

    code = ("import re; from initprobe import forking\n"
            "blocked = lambda: int(re.search(r'SigBlk:\\s*(\\w+)', open('/proc/self/status').read()).group(1), 16)\n"
            "before = blocked(); forking.release_interrupts(); print(before, blocked())")
    both = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    with forking.interrupts_held():
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(int, child.stdout.split())
    assert before & both == both and after & both == 0


def test_a_sweep_rewrites_a_lagging_layers_csv_when_run_again(workdir, capsys):
    """After a hard kill, runs.csv may miss rows and layers.csv lags behind it (docs/output-format.md); the next
    invocation, with nothing left to run, writes both again from the run directories."""
    import pandas as pd

    (workdir / "s.toml").write_text('[sweep]\nname = "lag"\nfigures = false\n[base]\ndepth = 2\nwidth = 4\n'
                                    'batch = 2\nseeds = 1\n[grid]\nact = ["tanh", "relu", "selu"]\n')
    assert main(["sweep", "s.toml", "--quiet"]) == 0
    sweep_dir = workdir / "results" / "lag"
    runs, layers = (sweep_dir / "runs.csv").read_text(), (sweep_dir / "layers.csv").read_text()
    (sweep_dir / "runs.csv").write_text("".join(runs.splitlines(keepends=True)[:2]))  # as a kill leaves them
    (sweep_dir / "layers.csv").unlink()
    capsys.readouterr()
    assert main(["sweep", "s.toml", "--quiet"]) == 0
    again = pd.read_csv(sweep_dir / "runs.csv")
    assert len(again) == 3 and set(again["status"]) == {"ok"}
    assert (sweep_dir / "layers.csv").read_text() == layers
