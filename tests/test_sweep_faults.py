"""The sweep driver under hostile input and faults: sizes its cost model must not build per layer, a driver killed
mid-run, a cluster that cannot be reached, two sweeps on one directory, options that do not apply to a run, a sweep
whose every run failed."""

import tracemalloc

import pandas as pd

from initprobe import shapes, sweep
from initprobe.sweep import backends
from initprobe.config import RunConfig


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
