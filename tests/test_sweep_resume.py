"""Resuming a sweep trusts only complete run directories: a run whose files were deleted, cut short or made
unreadable since is run again, and the sweep's files come out as if nothing had happened."""

import textwrap

import pandas as pd
import pytest

from initprobe import results, sweep

from conftest import snapshot

ACTS = ["tanh", "relu", "selu", "softsign", "sigmoid", "gelu", "elu"]


def write_sweep(path, plots=False):
    path.write_text(textwrap.dedent(f"""
        [sweep]
        name = "resume"
        figures = false
        plots = {str(plots).lower()}
        [base]
        depth = 3
        width = 8
        batch = 4
        seeds = 2
        [grid]
        act = {ACTS!r}
    """).replace("'", '"'))
    return path


def cut_at_line_end(p):
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[:-1]))


def cut_mid_line(p):
    p.write_bytes(p.read_bytes()[:-7])


DAMAGE = {  # act of the run: what happens to its directory after the sweep
    "tanh": lambda d: (d / "layers.csv").unlink(),
    "relu": lambda d: cut_mid_line(d / "summary.json"),
    "selu": lambda d: cut_at_line_end(d / "layers.csv"),
    "softsign": lambda d: cut_mid_line(d / "histograms.csv"),
    "sigmoid": lambda d: (d / "config.json").write_text("[]\n"),
    "gelu": lambda d: (d / "summary.json").write_text(""),
}


def test_resume_runs_again_every_run_whose_files_are_not_complete(tmp_path):
    spec = sweep.load_sweep(write_sweep(tmp_path / "s.toml"))
    first = sweep.run_sweep(spec, root=tmp_path)
    assert first.ran == len(ACTS) and first.failed == 0
    layers = (first.path / "layers.csv").read_text()
    dirs = {row.act: first.path / row.path for row in first.runs.itertuples()}
    for act, damage in DAMAGE.items():
        damage(dirs[act])
        assert results.incomplete(dirs[act]) is not None, act
    untouched = snapshot(dirs["elu"])
    again = sweep.run_sweep(spec, root=tmp_path)
    assert again.ran == len(DAMAGE) and again.resumed == len(ACTS) - len(DAMAGE) and again.failed == 0
    assert set(again.runs["status"]) == {"ok"}
    assert (again.path / "layers.csv").read_text() == layers  # the same seeds give the same numbers again
    assert snapshot(dirs["elu"]) == untouched
    assert all(results.incomplete(d) is None for d in dirs.values())
    assert not [p for p in (again.path / "runs").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_resume_runs_again_a_run_whose_plots_are_gone(tmp_path):
    """With per-run plots asked for, a run whose plots/ folder was removed is not complete."""
    spec = sweep.load_sweep(write_sweep(tmp_path / "s.toml", plots=True))
    first = sweep.run_sweep(spec, root=tmp_path)
    victim = first.path / first.runs.loc[first.runs["act"] == "relu", "path"].item()
    for p in (victim / "plots").iterdir():
        p.unlink()
    (victim / "plots").rmdir()
    again = sweep.run_sweep(spec, root=tmp_path)
    assert again.ran == 1 and (victim / "plots" / "variance.png").stat().st_size > 0


def test_a_complete_run_without_plots_asked_for_is_complete(tmp_path):
    spec = sweep.load_sweep(write_sweep(tmp_path / "s.toml"))
    first = sweep.run_sweep(spec, root=tmp_path)
    assert all(results.incomplete(first.path / p) is None for p in first.runs["path"])
    assert pd.read_csv(first.path / "layers.csv").groupby("run_id").size().eq(2 * 3).all()
