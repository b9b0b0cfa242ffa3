"""Sweeps: grid expansion, validation, --set, resume after an interruption, failures, backends giving the same
numbers, the report. Tiny networks throughout (depth 3-5, width 16-128, batch 8-16, 1-2 seeds)."""

import base64
import functools
import itertools
import os
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from initprobe import analysis, runner, sweep
from initprobe.plots import sweep_figures
from initprobe.sweep import backends
from initprobe.sweep import report as sweep_report
from initprobe.sweep import run as sweep_run
from initprobe.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = """
[base]
depth = 3
width = 16
batch = 8
seeds = 2
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def tiny_sweep(tmp_path, grid='act = ["tanh", "relu"]\ninit = ["glorot_uniform", "he_normal"]', extra="", sets=()):
    return sweep.load_sweep(write(tmp_path, TINY + "\n[grid]\n" + grid + "\n" + extra), sets)


def read_runs(path: Path) -> pd.DataFrame:
    return pd.read_csv(path / "runs.csv")


def numeric_layers(path: Path) -> pd.DataFrame:
    layers = pd.read_csv(path / "layers.csv").sort_values(["run_id", "seed", "layer"]).reset_index(drop=True)
    return layers.select_dtypes("number")


# --- expansion and validation ---------------------------------------------------------------------------------


def test_grid_is_the_product_of_its_lists_each_combination_once(tmp_path):
    s = tiny_sweep(tmp_path, 'act = ["tanh", "relu", "identity"]\ninit = ["glorot_uniform", "he_normal"]\n'
                             "seed = [0, 7]")
    assert len(s.points) == 3 * 2 * 2
    got = [(p.act, p.init, p.seed) for p in s.points]
    assert sorted(got) == sorted(itertools.product(["tanh", "relu", "identity"], ["glorot_uniform", "he_normal"],
                                                   [0, 7]))
    assert all(p.depth == 3 and p.width == 16 and p.batch == 8 for p in s.points)  # base applies to all
    assert len(set(s.run_ids)) == len(s.points)
    assert s.varying == ["act", "init", "seed"]


def test_a_key_is_fixed_or_varied_not_both(tmp_path):
    with pytest.raises(ConfigError, match=r"grid.depth: also set in \[base\]"):
        tiny_sweep(tmp_path, "depth = [3, 4]")


def test_points_are_added_not_crossed_and_duplicates_run_once(tmp_path):
    s = tiny_sweep(tmp_path, 'act = ["tanh"]\ninit = ["glorot_uniform", "xavier_uniform"]',  # aliases: one run
                   extra='[[point]]\nact = "selu"\ninit = "lecun_normal"\n'
                         '[[point]]\nact = "relu"\ninit = ["he_normal", "he_uniform"]\n')
    assert [(p.act, p.init) for p in s.points] == [("tanh", "glorot_uniform"), ("selu", "lecun_normal"),
                                                   ("relu", "he_normal"), ("relu", "he_uniform")]


def test_run_id_is_stable_and_ignores_only_where_the_run_goes(tmp_path):
    a, b = tiny_sweep(tmp_path).points[0], tiny_sweep(tmp_path).points[0]
    assert sweep.run_id(a) == sweep.run_id(b)
    assert sweep.run_id(a).startswith("tanh-glorot_uniform-mlp-d3-")
    assert len(sweep.run_id(a).rsplit("-", 1)[1]) == 12
    b.out, b.plots = "elsewhere", True
    assert sweep.run_id(a) == sweep.run_id(b)
    b.seed = 1
    assert sweep.run_id(a) != sweep.run_id(b)


def test_validation_names_every_bad_key_and_value_with_its_place(tmp_path):
    path = write(tmp_path, """
        [sweep]
        workers = 0
        [base]
        depth = 3
        widht = 16
        batch = "eight"
        [grid]
        act = ["tanh", "relu", "tanhh"]
        init = ["glorot_uniform", "he_normall"]
        [[point]]
        act = "tanh"
        mode = "fan_avgg"
        [girdd]
        x = 1
        """, "x.toml")
    with pytest.raises(ConfigError) as e:
        sweep.load_sweep(path)
    msg = str(e.value)
    assert f"{path}: grid.act[2]: unknown activation 'tanhh'; did you mean tanh" in msg
    assert f"{path}: grid.init[1]: unknown init 'he_normall'" in msg
    assert f"{path}: base.widht: unknown key" in msg and "did you mean width" in msg
    assert f"{path}: base.batch: expected int, got 'eight'" in msg
    assert f"{path}: sweep.workers: must be at least 1" in msg
    assert f"{path}: point[0].mode: must be one of" in msg
    assert f"{path}: girdd: unknown table" in msg
    assert msg.startswith("7 problems:")


def test_validation_of_combinations_names_the_grid_point(tmp_path):
    with pytest.raises(ConfigError) as e:
        tiny_sweep(tmp_path, 'init = ["variance_scaling", "he_normal"]\nscale = [2.0]')
    msg = str(e.value)
    assert "grid point (init=he_normal, scale=2.0): scale does not apply to init 'he_normal'" in msg
    assert "init=variance_scaling" not in msg  # the valid point is not named


def test_set_overrides_base_and_axes(tmp_path):
    s = tiny_sweep(tmp_path, sets=["depth=5", "act=tanh", 'init=["he_normal", "lecun_normal", "orthogonal"]',
                                   "sweep.name=renamed", "seeds=1"])
    assert s.name == "renamed"
    assert [(p.act, p.init, p.depth, p.seeds) for p in s.points] == [
        ("tanh", "he_normal", 5, 1), ("tanh", "lecun_normal", 5, 1), ("tanh", "orthogonal", 5, 1)]
    assert s.grid == {"init": ["he_normal", "lecun_normal", "orthogonal"]} and s.base["act"] == "tanh"
    with pytest.raises(ConfigError, match=r"--set act: unknown activation 'tanhh'(.|\n)*--set bogus: unknown key"):
        tiny_sweep(tmp_path, sets=["act=tanhh", "bogus=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        tiny_sweep(tmp_path, sets=["depth"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_sweep_configs_are_valid(path):
    s = sweep.load_sweep(path)
    assert s.points and s.name == path.stem
    assert path.read_text().lstrip().startswith("#")  # the header says what the figure should show


# --- running, resuming, failing -----------------------------------------------------------------------------------


def counting_run(monkeypatch, fail=None):
    """Wrap runner.run: count calls; `fail(cfg, n)` may raise instead of running."""
    real, calls = runner.run, []

    def run(cfg, *args, **kwargs):
        calls.append(cfg)
        if fail is not None:
            fail(cfg, len(calls))
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(runner, "run", run)
    return calls


def test_resume_after_interruption_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    s = tiny_sweep(tmp_path, 'act = ["tanh", "relu", "identity"]\ninit = ["glorot_uniform", "he_normal"]')
    out = tmp_path / "out"

    def interrupt(cfg, n):
        if n == 3:
            raise KeyboardInterrupt

    calls = counting_run(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(s, out_dir=out, figures=False)
    assert len(calls) == 3
    runs = read_runs(out)  # consistent after Ctrl-C: exactly the two finished runs
    assert list(runs["run_id"]) == s.run_ids[:2] and set(runs["status"]) == {"ok"}
    done = {rid: (out / "runs" / rid / "layers.csv").stat().st_mtime_ns for rid in s.run_ids[:2]}
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(done)
    # an abruptly killed earlier invocation also left staging folders behind
    dead_pid = 2**22 + 12345
    stale = [out / "runs" / f".{s.run_ids[2]}.partial-{dead_pid}",
             out / "runs" / f".{s.run_ids[3]}.partial-{os.getpid()}"]
    for folder in stale:
        folder.mkdir()
        (folder / "layers.csv").write_text("half-written")

    monkeypatch.undo()
    calls = counting_run(monkeypatch)
    result = sweep.run_sweep(s, out_dir=out, figures=False)
    assert [c.act + c.init for c in calls] == [p.act + p.init for p in s.points[2:]]  # only the missing ones
    assert result.resumed == 2 and result.ran == 4 and result.failed == 0
    runs = read_runs(out)
    assert len(runs) == len(s.points) == 6 and runs["run_id"].is_unique
    assert list(runs["run_id"]) == s.run_ids and set(runs["status"]) == {"ok"}
    for rid, mtime in done.items():  # completed runs were not recomputed
        assert (out / "runs" / rid / "layers.csv").stat().st_mtime_ns == mtime
    assert not any(folder.exists() for folder in stale)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(s.run_ids)
    layers = pd.read_csv(out / "layers.csv")
    assert list(layers.columns[:5]) == ["run_id", "act", "init", "seed", "layer"]
    assert len(layers) == 6 * 2 * 3 and layers.groupby("run_id").size().eq(2 * 3).all()

    calls.clear()  # a third time: nothing to do
    assert sweep.run_sweep(s, out_dir=out, figures=False).ran == 0 and not calls


def test_sweep_layers_csv_is_every_runs_layers_with_run_id_and_the_varying_keys(tmp_path):
    """Exactly each run's own rows (the text joined), run_id and the varying keys in front; a
    varied seed is not added twice (each row has its network's own seed, base seed + i)."""
    s = tiny_sweep(tmp_path, 'act = ["tanh", "relu"]\ngain = [0.5, 2.0]\nseed = [0, 7]')
    out = tmp_path / "out"
    sweep.run_sweep(s, out_dir=out, figures=False)
    combined = pd.read_csv(out / "layers.csv")
    assert list(combined.columns[:5]) == ["run_id", "act", "gain", "seed", "layer"]
    assert combined["run_id"].nunique() == 8
    for rid, cfg in zip(s.run_ids, s.points):
        own = pd.read_csv(out / "runs" / rid / "layers.csv")
        rows = combined[combined["run_id"] == rid].reset_index(drop=True)
        assert (rows["act"] == cfg.act).all() and (rows["gain"] == cfg.gain).all()
        assert sorted(rows["seed"].unique()) == [cfg.seed + i for i in range(cfg.seeds)]
        pd.testing.assert_frame_equal(rows[own.columns], own, check_exact=True)


# block, norm and branch_scale as axes and points: branch_scale only where there are residual blocks
ARCHITECTURE_SWEEP = """
[base]
depth = 4
width = 32
batch = 8
seeds = 2
act = "relu"
init = "he_normal"

[grid]
block = ["plain", "residual"]
norm = ["none", "batch", "layer"]

[[point]]
block = "residual"
branch_scale = [0.0, "inv_sqrt_depth"]
"""


def architecture_sweep(tmp_path):
    return sweep.load_sweep(write(tmp_path, ARCHITECTURE_SWEEP, "architectures.toml"))


def test_a_sweep_over_blocks_norms_and_branch_scales_runs_each_network(tmp_path):
    """Each run is the network of its point (the residual ones have a branch_var from layer 2, the plain ones
    none); the varying keys are columns of runs.csv and layers.csv; a plain run's label leaves out
    branch_scale, which does not apply to it."""
    s = architecture_sweep(tmp_path)
    assert len(s.points) == 8
    result = sweep.run_sweep(s, out_dir=tmp_path / "out", figures=False)
    assert result.failed == 0 and result.ran == 8
    runs = read_runs(tmp_path / "out")
    layers = pd.read_csv(tmp_path / "out" / "layers.csv")
    assert {"block", "norm", "branch_scale"} <= set(runs.columns) & set(layers.columns)
    for rid, cfg in zip(s.run_ids, s.points):
        own = layers[layers["run_id"] == rid]
        assert (own["block"] == cfg.block).all() and (own["norm"] == cfg.norm).all()
        branch = own.sort_values(["seed", "layer"])["branch_var"]
        if cfg.block == "residual":
            assert own.loc[own["layer"] == 1, "branch_var"].isna().all()
            blocks_ = own.loc[own["layer"] > 1, "branch_var"]
            assert (blocks_ == 0).all() if cfg.branch_scale == 0 else (blocks_ > 0).all()
        else:
            assert branch.isna().all()
    labels = dict(zip(runs["run_id"], runs["label"]))
    for rid, cfg in zip(s.run_ids, s.points):
        assert ("branch_scale=" in labels[rid]) == (cfg.block == "residual"), labels[rid]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["process", "ray"])
def test_architecture_sweep_gives_the_same_numbers_on_every_backend(tmp_path, backend):
    """The sweep above on the process backend (2 workers) and on a local Ray: the numbers of the local backend."""
    s = architecture_sweep(tmp_path)
    sweep.run_sweep(s, out_dir=tmp_path / "local", backend="local", figures=False)
    if backend == "ray":
        ray = pytest.importorskip("ray")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = sweep.run_sweep(s, out_dir=tmp_path / backend, backend=backend, workers=2, figures=False)
    finally:
        if backend == "ray":
            ray.shutdown()
    assert result.failed == 0 and result.ran == 8
    pd.testing.assert_frame_equal(numeric_layers(tmp_path / backend), numeric_layers(tmp_path / "local"),
                                  check_exact=True)


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_retried_on_resume(tmp_path, monkeypatch):
    s = tiny_sweep(tmp_path)
    out = tmp_path / "out"

    def oom(cfg, n):
        if cfg.act == "relu" and cfg.init == "he_normal":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    counting_run(monkeypatch, oom)
    progress = []
    result = sweep.run_sweep(s, out_dir=out, on_progress=progress.append)
    runs = read_runs(out)
    failed = runs[runs["status"] == "failed"]
    assert len(runs) == 4 and len(failed) == 1 and result.failed == 1
    assert failed["act"].item() == "relu" and failed["init"].item() == "he_normal"
    assert failed["error"].item() == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"
    assert not (out / "runs" / failed["run_id"].item()).exists()
    assert (out / "report.html").is_file()  # the sweep finished
    assert progress[-1].done == progress[-1].total == 4 and progress[-1].failed == 1
    ranked = analysis.ranking(runs)
    assert ranked["run_id"].iloc[-1] == failed["run_id"].item() and ranked["score"].iloc[-1] == np.inf

    monkeypatch.undo()
    calls = counting_run(monkeypatch)
    result = sweep.run_sweep(s, out_dir=out, figures=False)
    assert [(c.act, c.init) for c in calls] == [("relu", "he_normal")]
    runs = read_runs(out)
    assert len(runs) == 4 and set(runs["status"]) == {"ok"} and result.failed == 0


def test_a_directory_holding_another_sweep_is_refused(tmp_path):
    out = tmp_path / "out"
    sweep.run_sweep(tiny_sweep(tmp_path, 'act = ["tanh"]'), out_dir=out, figures=False)
    with pytest.raises(ConfigError, match="holds a different sweep"):
        sweep.run_sweep(tiny_sweep(tmp_path, 'act = ["relu"]'), out_dir=out, figures=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a sweep directory"):
        sweep.run_sweep(tiny_sweep(tmp_path, 'act = ["tanh"]'), out_dir=tmp_path / "other", figures=False)


def test_bad_backend_options_fail_before_anything_runs(tmp_path):
    s = tiny_sweep(tmp_path)
    with pytest.raises(ConfigError, match="backend must be one of"):
        sweep.run_sweep(s, out_dir=tmp_path / "out", backend="slurm")
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        sweep.run_sweep(s, out_dir=tmp_path / "out", backend="process", workers=0)
    assert not (tmp_path / "out").exists()


# --- backends -----------------------------------------------------------------------------------------------------

# width 128, batch 16: large enough that torch's CPU kernels give (slightly) different numbers with 1 and 2 threads
# on a multi-core machine, so a backend that did not pin the thread count would fail the comparison.
BACKEND_GRID = 'act = ["tanh", "relu"]\ninit = ["glorot_uniform", "he_normal"]'
BACKEND_SETS = ["width=128", "batch=16", "depth=4"]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    s = tiny_sweep(tmp, BACKEND_GRID, sets=BACKEND_SETS)
    sweep.run_sweep(s, out_dir=tmp / "out", backend="local", figures=False)
    return s, numeric_layers(tmp / "out")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_backend_gives_the_same_numbers_as_local(tmp_path, local_reference, monkeypatch, method):
    s, reference = local_reference
    if method == "fork" and backends.start_method(1, {p.device for p in s.points}) != "fork":
        pytest.skip("fork is not safe here (not Linux, another thread runs, or the runs may use CUDA)")
    monkeypatch.setattr(backends, "start_method", lambda threads, devices: method)
    result = sweep.run_sweep(s, out_dir=tmp_path / "out", backend="process", workers=2, figures=False)
    assert result.failed == 0 and result.ran == 4
    pd.testing.assert_frame_equal(numeric_layers(tmp_path / "out"), reference, check_exact=True)


def test_parallel_backends_start_the_longest_runs_first(tmp_path, monkeypatch):
    """local keeps the grid's order; process and ray get the runs by multiply-adds, most first, so that no worker
    is left with a long run at the end."""
    s = sweep.load_sweep(write(tmp_path, '[base]\nwidth = 16\nbatch = 8\nseeds = 2\n'
                                         '[grid]\ndepth = [2, 8, 4]\narch = ["mlp", "cnn"]'))
    given = {}

    def record(jobs, opts, command, started):
        given[opts["backend"]] = [cfg for _, cfg in jobs]
        yield from ()

    monkeypatch.setitem(backends.BACKENDS, "local", record)
    monkeypatch.setitem(backends.BACKENDS, "process", record)
    for backend in ("local", "process"):
        sweep.run_sweep(s, out_dir=tmp_path / backend, backend=backend, figures=False)

    def multiply_adds(c):  # 16 features (input_dim = width) or 3 -> 16 channels, 3x3 kernels over 32x32 positions
        if c.arch == "mlp":
            return 2 * 8 * c.depth * 16 * 16
        return 2 * 8 * 32 * 32 * 9 * (3 * 16 + (c.depth - 1) * 16 * 16)

    assert [(c.arch, c.depth) for c in given["local"]] == [(c.arch, c.depth) for c in s.points]
    assert [(c.arch, c.depth) for c in given["process"]] == [("cnn", 8), ("cnn", 4), ("cnn", 2), ("mlp", 8),
                                                             ("mlp", 4), ("mlp", 2)]
    assert [sweep.work(c) for c in given["process"]] == [multiply_adds(c) for c in given["process"]]


def test_process_workers_are_forked_only_where_that_is_safe():
    """fork on Linux with one Python thread and one intra-op thread per worker, for CPU runs (workers start with
    torch imported); spawn with a second Python thread (a lock it held would stay locked in the child), with
    several intra-op threads (GNU OpenMP cannot run parallel regions in a child forked after the parent did), or
    for GPU runs with a CUDA build of torch (checking for a GPU here already spoils CUDA for a forked child)."""
    if not sys.platform.startswith("linux") or threading.active_count() != 1:
        pytest.skip("needs Linux and no other thread in the test process")
    import torch

    assert backends.start_method(1, {"cpu"}) == "fork"
    assert backends.start_method(2, {"cpu"}) == "spawn"
    cuda_build = torch.backends.cuda.is_built()
    for devices in ({"cuda"}, {"auto"}, {"cpu", "cuda"}):
        assert backends.start_method(1, devices) == ("spawn" if cuda_build else "fork"), devices
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert backends.start_method(1, {"cpu"}) == "spawn"
    finally:
        stop.set()
        other.join()


@pytest.mark.slow
def test_ray_backend_gives_the_same_numbers_as_local(tmp_path, local_reference):
    ray = pytest.importorskip("ray")
    s, reference = local_reference
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = sweep.run_sweep(s, out_dir=tmp_path / "out", backend="ray", figures=False)
    finally:
        ray.shutdown()
    assert result.failed == 0 and result.ran == 4
    pd.testing.assert_frame_equal(numeric_layers(tmp_path / "out"), reference, check_exact=True)
    config = (tmp_path / "out" / "runs" / s.run_ids[0] / "config.json").read_text()
    assert str(tmp_path / "out" / "runs" / s.run_ids[0]) in config  # the driver's path, not the node's temp dir


def test_ray_backend_without_ray_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_run.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install initprobe\[ray\]"):
        sweep.run_sweep(tiny_sweep(tmp_path), out_dir=tmp_path / "out", backend="ray")
    assert not (tmp_path / "out").exists()


# --- ranking and report -------------------------------------------------------------------------------------------


def test_ranking_scores_both_directions_and_puts_non_finite_last():
    runs = pd.DataFrame({
        "run_id": list("abcde"), "label": list("abcde"), "status": ["ok", "ok", "ok", "failed", "ok"],
        "forward_ratio": [10.0, 1.0, np.inf, np.nan, 0.5], "backward_ratio": [0.1, 1.0, 1.0, np.nan, 2.0]})
    ranked = analysis.ranking(runs)
    assert list(ranked["run_id"]) == ["b", "e", "a", "c", "d"]
    assert list(ranked["rank"]) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(ranked["score"][:3], [0.0, 2 * np.log10(2), 2.0])
    assert np.isinf(ranked["score"][3:]).all()


@pytest.mark.slow
def test_report_is_self_contained_and_survives_inf_nan_and_zero(tmp_path):
    s = sweep.load_sweep(write(tmp_path, TINY + """
        [[point]]
        act = ["tanh", "identity"]
        init = "glorot_uniform"
        [[point]]
        act = "identity"
        init = "normal"
        std = 10.0
        depth = 40
        [[point]]
        act = "tanh"
        init = "zeros"
        """))
    result = sweep.run_sweep(s, out_dir=tmp_path / "out")
    runs = read_runs(tmp_path / "out")
    assert set(runs["status"]) == {"ok"}
    exploding = runs[runs["init"] == "normal"]
    assert exploding["first_nonfinite_layer"].notna().all()  # (10^2 * 16)^l overflows float32
    page = result.report.read_text()
    assert result.report == tmp_path / "out" / "report.html"
    assert "http://" not in page and "https://" not in page and 'src="file' not in page
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 2
    for image in images:
        assert base64.b64decode(image.split('"', 1)[0]).startswith(b"\x89PNG\r\n\x1a\n")
    for name in ("profiles", "ratios"):
        assert (tmp_path / "out" / "figures" / f"{name}.png").stat().st_size > 10_000
    for rid in s.run_ids:
        assert rid in page  # the runs table


@pytest.mark.slow
def test_report_drawn_by_two_processes_equals_the_one_drawn_by_one(tmp_path, monkeypatch):
    """write_report draws its two figures in two forked processes where there are two cores: same bytes."""
    s = tiny_sweep(tmp_path)
    out = tmp_path / "out"
    sweep.run_sweep(s, out_dir=out, figures=False)
    files = [out / "figures" / "profiles.png", out / "figures" / "ratios.png", out / "report.html"]
    drawn, forks, fork = {}, [], os.fork

    def counted_fork():
        forks.append(1)
        return fork()

    monkeypatch.setattr(os, "fork", counted_fork)
    for cores in (1, 2):
        monkeypatch.setattr(os, "cpu_count", functools.partial(int, cores))
        sweep_report.write_report(out)
        drawn[cores] = [f.read_bytes() for f in files]
    assert drawn[1] == drawn[2]
    assert all(len(data) > 10_000 for data in drawn[2])
    assert len(forks) == (1 if threading.active_count() == 1 else 0)  # the second core's process


def test_report_groups_columns_and_lines():
    runs = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "arch": ["mlp", "mlp", "cnn", "cnn"],
                         "width": [512, 512, 32, 32], "init": ["x", "y", "x", "y"]})
    groups = sweep_figures.assign_groups(runs, ["arch", "width", "init"])
    assert list(groups["column"]) == ["arch=mlp, width=512"] * 2 + ["arch=cnn, width=32"] * 2
    assert list(groups["line"]) == ["x", "y", "x", "y"]


def test_report_labels_skip_keys_an_arch_ignores_and_name_what_every_run_shares():
    runs = pd.DataFrame({"run_id": list("abcd"), "arch": ["mlp", "mlp", "cnn", "cnn"],
                         "padding": ["zeros", "zeros", "circular", "circular"], "init": ["x", "y", "x", "y"],
                         "act": ["relu"] * 4, "depth": [30] * 4, "seeds": [3] * 4})
    groups = sweep_figures.assign_groups(runs, ["arch", "padding", "init"])
    assert list(groups["column"]) == ["arch=mlp"] * 2 + ["arch=cnn, padding=circular"] * 2  # an MLP has no padding
    assert sweep_figures.describe_fixed(runs, ["arch", "padding", "init"]) == "act=relu, depth=30, 3 seeds"


def test_sparse_heatmap_becomes_one_column_a_row_per_run():
    runs = pd.DataFrame({"run_id": list("abcd"), "act": ["tanh", "tanh", "relu", "selu"],
                         "init": ["glorot_uniform", "glorot_normal", "he_normal", "lecun_normal"]})
    groups = sweep_figures.assign_groups(runs, ["act", "init"])  # 3 columns x 4 lines, 4 of 12 cells filled
    single = sweep_figures.one_column_if_sparse(groups)
    assert set(single["column"]) == {sweep_figures.ONE_COLUMN}
    assert list(single["line"]) == ["glorot_uniform, act=tanh", "glorot_normal, act=tanh", "he_normal, act=relu",
                                    "lecun_normal, act=selu"]
    full = sweep_figures.assign_groups(runs.assign(act="tanh"), ["init"])
    assert sweep_figures.one_column_if_sparse(full) is full


def test_heatmap_cells_say_failed_no_run_or_the_ratio():
    runs = pd.DataFrame({"run_id": list("abc"), "act": ["tanh", "tanh", "relu"], "init": ["x", "y", "x"],
                         "status": ["ok", "failed", "ok"], "forward_ratio": [0.5, np.nan, np.inf],
                         "backward_ratio": [2.0, np.nan, 1.0]})
    fig = sweep_figures.ratios_figure(runs, sweep_figures.assign_groups(runs, ["act", "init"]), "t")
    forward = sorted(t.get_text() for t in fig.axes[0].texts)
    assert forward == ["-", "0.5", "failed", "inf"]  # relu+y has no run


def test_profiles_draw_the_geometric_mean_over_seeds_of_each_line():
    """Small multiples, a row per quantity and a column per activation: in each panel a line per init, the
    geometric mean over seeds of the positive finite values at each layer, on a log axis; a masked value (0 here)
    is left out of its layer's mean and named in a note; axes labelled at the edges, a legend of the lines."""
    rng = np.random.default_rng(0)
    cells = [("a", "tanh", "x"), ("b", "tanh", "y"), ("c", "relu", "x"), ("d", "relu", "y")]
    layers = pd.DataFrame([{"run_id": rid, "seed": seed, "layer": layer, "act_var": rng.uniform(0.1, 10.0),
                            "grad_preact_var": rng.uniform(1e-3, 1e3)}
                           for rid, _, _ in cells for seed in (0, 1) for layer in (1, 2, 3, 4)])
    layers.loc[(layers["run_id"] == "d") & (layers["seed"] == 1) & (layers["layer"] == 3), "act_var"] = 0.0
    runs = pd.DataFrame(cells, columns=["run_id", "act", "init"])
    fig = sweep_figures.profiles_figure(layers, sweep_figures.assign_groups(runs, ["act", "init"]), "t")
    axes = np.array(fig.axes).reshape(2, 2)  # rows: act_var, grad_preact_var; columns: tanh, relu
    assert [ax.get_title() for ax in axes[0]] == ["act=tanh", "act=relu"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["x", "y"]
    for r, quantity in enumerate(("act_var", "grad_preact_var")):
        assert quantity in axes[r, 0].get_ylabel()
        for c, act in enumerate(("tanh", "relu")):
            ax = axes[r, c]
            assert ax.get_yscale() == "log" and (r == 0 or ax.get_xlabel() == "layer l")
            for init in ("x", "y"):
                rid = next(rid for rid, a, i in cells if (a, i) == (act, init))
                values = layers[layers["run_id"] == rid].pivot(index="layer", columns="seed", values=quantity)
                logs = np.log(values.where(values > 0))  # the 0 is left out, the other seed's value kept
                line = next(line for line in ax.get_lines() if line.get_label() == init)
                np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
                np.testing.assert_allclose(line.get_ydata(), np.exp(logs.mean(axis=1)), rtol=1e-12)
    notes = [t.get_text() for t in axes[0, 1].texts]
    assert "y: inf/nan/0 masked at layer 3" in "\n".join(notes)


def test_profiles_of_residual_and_normalized_runs_add_the_spp_rows():
    """With residual runs: forward and backward side by side with the legend beside them, the backward panel each
    run's stream gradient (dL/dx for residual blocks, dL/dh for plain ones), and the signal propagation plot's
    rows underneath (chan_sq_mean, chan_var, branch_var), each line the geometric mean over seeds; branch_var has no
    line for a plain run and leaves out the residual stem."""
    rng = np.random.default_rng(1)
    cells = [("a", "plain", "batch"), ("b", "residual", "none"), ("c", "residual", "batch")]
    columns = ("act_var", "grad_preact_var", "grad_act_var", "chan_sq_mean", "chan_var", "branch_var")
    layers = pd.DataFrame([{"run_id": rid, "seed": seed, "layer": layer,
                            **{c: rng.uniform(0.1, 10.0) for c in columns}}
                           for rid, _, _ in cells for seed in (0, 1) for layer in (1, 2, 3, 4)])
    plain_or_stem = (layers["run_id"] == "a") | (layers["layer"] == 1)
    layers.loc[plain_or_stem, "branch_var"] = np.nan
    runs = pd.DataFrame(cells, columns=["run_id", "block", "norm"]).assign(status="ok")
    spp = sweep_figures.spp_rows(layers, runs)
    assert [q for q, _ in spp] == ["chan_sq_mean", "chan_var", "branch_var"]
    layers = sweep_figures.mark_residual(layers, runs)
    groups = sweep_figures.assign_groups(runs, ["block", "norm"])
    fig = sweep_figures.profiles_figure(layers, groups, "t", spp=spp)
    rows = [("act_var", ""), ("gradient", ""), *spp]
    panels = [ax for ax in fig.axes if ax.get_lines()]
    legend_ax = next(ax for ax in fig.axes if ax.get_legend() is not None and not ax.get_lines())
    assert len(panels) == 5 and len(fig.axes) == 6
    labels = dict(zip(groups["run_id"], groups["line"]))
    assert [t.get_text() for t in legend_ax.get_legend().get_texts()] == [labels[r] for r, _, _ in cells]
    for ax, (quantity, _) in zip(panels, rows):
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "layer l" and ax.get_ylabel()
        for rid, block, _ in cells:
            column = {"gradient": "grad_act_var" if block == "residual" else "grad_preact_var"}.get(
                quantity, quantity)
            own = layers[layers["run_id"] == rid]
            if column == "branch_var":
                own = own[own["layer"] > 1]
            found = [line for line in ax.get_lines() if line.get_label() == labels[rid]]
            if column == "branch_var" and block == "plain":
                assert not found
                continue
            values = own.pivot(index="layer", columns="seed", values=column)
            np.testing.assert_array_equal(found[0].get_xdata(), values.index)
            np.testing.assert_allclose(found[0].get_ydata(), np.exp(np.log(values).mean(axis=1)), rtol=1e-12)


def test_ratio_heatmaps_colour_the_log_ratio_of_each_cell():
    """Cells coloured by log10 of the end-to-end ratio (rows: inits, columns: activations), grey where it cannot be
    (0, inf, nan), both directions; each cell annotated."""
    runs = pd.DataFrame({"run_id": list("abcd"), "act": ["tanh", "tanh", "relu", "relu"], "init": list("xyxy"),
                         "status": "ok", "forward_ratio": [0.01, 1.0, 100.0, 0.0],
                         "backward_ratio": [2.0, np.inf, 0.5, 1.0]})
    fig = sweep_figures.ratios_figure(runs, sweep_figures.assign_groups(runs, ["act", "init"]), "t")
    for ax, key in zip(fig.axes[:2], ("forward_ratio", "backward_ratio")):
        want = runs.pivot(index="init", columns="act", values=key).loc[["x", "y"], ["tanh", "relu"]].to_numpy()
        with np.errstate(divide="ignore"):
            logs = np.ma.masked_invalid(np.log10(want))
        image = ax.images[0].get_array()
        np.testing.assert_array_equal(np.ma.getmaskarray(image), np.ma.getmaskarray(logs))
        np.testing.assert_allclose(image.compressed(), logs.compressed(), rtol=1e-12)
        assert len(ax.texts) == 4
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["act=tanh", "act=relu"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["x", "y"]
    assert fig.axes[2].get_ylabel().startswith("log10 ratio")  # the colour bar


@pytest.mark.slow
def test_the_sweep_files_header_comment_goes_into_sweep_json_and_the_report(tmp_path):
    path = write(tmp_path, "# What this reproduces.\n#\n#   - a <list> & more\n" + TINY + '[grid]\nact = ["tanh"]\n')
    s = sweep.load_sweep(path)
    assert s.description == "What this reproduces.\n\n  - a <list> & more"
    result = sweep.run_sweep(s, out_dir=tmp_path / "out")
    assert "What this reproduces." in (tmp_path / "out" / "sweep.json").read_text()
    assert "  - a &lt;list&gt; &amp; more" in result.report.read_text()


@pytest.mark.slow
def test_smoke_config_runs(tmp_path):
    s = sweep.load_sweep(ROOT / "configs" / "sweeps" / "smoke.toml")
    result = sweep.run_sweep(s, out_dir=tmp_path / "smoke")
    runs = read_runs(tmp_path / "smoke")
    assert len(runs) == len(s.points) == 4 and set(runs["status"]) == {"ok"}
    assert result.report is not None and result.report.is_file()
    assert (tmp_path / "smoke" / "sweep.json").is_file()


KILLER = '''
import multiprocessing
import os


def die_(w, gain=1.0, generator=None):
    """What the OOM killer does to a worker: the process vanishes mid-run (in the parent, a plain error)."""
    if multiprocessing.parent_process() is None:
        raise RuntimeError("die_ is meant for worker processes")
    os._exit(137)
'''


@pytest.mark.slow
def test_process_backend_a_killed_worker_fails_only_its_own_run(tmp_path, monkeypatch):
    (tmp_path / "killer_init.py").write_text(KILLER)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get this sys.path
    # last, so that its retry alone is the only extra pool (each pool's workers import torch: seconds)
    s = tiny_sweep(tmp_path, 'act = ["tanh"]\ninit = ["glorot_uniform", "he_normal", "orthogonal", "killer_init:die_"]')
    out = tmp_path / "out"
    result = sweep.run_sweep(s, out_dir=out, backend="process", workers=2, figures=False)
    runs = read_runs(out).set_index("init")
    assert result.ran == 4 and result.failed == 1
    assert runs.loc["killer_init:die_", "status"] == "failed"
    assert runs.loc["killer_init:die_", "error"].startswith("its worker process died or was stopped (SIGTERM) twice")
    ok = runs.drop("killer_init:die_")
    assert ok["status"].eq("ok").all()  # before it, or in flight with it (retried alone)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(ok["run_id"])  # no staging folder left


# --- sweeps of train runs -------------------------------------------------------------------------------------------

TRAIN_SWEEP = """
[sweep]
command = "train"
[base]
act = "tanh"
init = "variance_scaling"
distribution = "normal"
width = 8
batch = 8
seeds = 1
steps = 4
record_every = 2
[grid]
scale = [0.5, 2.0]
depth = [2, 4]
"""


def test_train_keys_belong_to_train_sweeps(tmp_path):
    """A train sweep takes train's options (steps) and not run's alone (jacobian); a run sweep refuses train's."""
    s = sweep.load_sweep(write(tmp_path, TRAIN_SWEEP))
    assert len(s.points) == 4 and all(p.steps == 4 for p in s.points)
    assert all(rid.startswith("train-") for rid in s.run_ids)
    with pytest.raises(ConfigError, match="base.jacobian: unknown key"):
        sweep.load_sweep(write(tmp_path, TRAIN_SWEEP.replace("[grid]", "jacobian = true\n[grid]")))
    with pytest.raises(ConfigError, match="base.steps: unknown key"):
        sweep.load_sweep(write(tmp_path, TINY + "steps = 3\n"))


@pytest.fixture(scope="module")
def train_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    result = sweep.run_sweep(sweep.load_sweep(write(tmp, TRAIN_SWEEP)), out_dir=tmp / "out", backend="local")
    return result


@pytest.mark.slow
def test_a_train_sweep_records_each_runs_outcome_and_trainability(train_sweep):
    """runs.csv: each run's final accuracy and mean-field trainability, as its summary.json has them; layers.csv has
    every recorded step; the report adds the trainability heatmap, with the depth scales over the sigma_w^2 it
    spans."""
    runs = read_runs(train_sweep.path)
    assert set(runs["status"]) == {"ok"} and len(runs) == 4
    for _, row in runs.iterrows():
        summary = sweep_report.results.read_json(train_sweep.path / row["path"] / "summary.json")
        assert row["final_test_accuracy"] == pytest.approx(summary["final_test_accuracy"])
        assert row["six_xi_c"] == pytest.approx(summary["trainability"]["six_xi_c"])
        assert row["predicted"] == summary["trainability"]["predicted"]
        assert row["sigma_w2"] == pytest.approx(row["scale"])  # variance_scaling, fan_in: sigma_w^2 is the scale
    assert sorted(pd.read_csv(train_sweep.path / "layers.csv")["step"].unique()) == [0, 2, 4]
    assert (train_sweep.path / "figures" / "trainability.png").stat().st_size > 10_000
    assert "Trainability" in train_sweep.report.read_text()
    curves = sweep_report.trainability_curves(runs)
    assert curves["sigma_w2"].min() < 0.5 and curves["sigma_w2"].max() > 2.0  # the outer cells' edges


def test_trainability_heatmap_colours_each_cells_mean_accuracy_and_draws_the_depth_scales():
    """Cells are (sigma_w^2, depth), coloured by the mean final accuracy of their runs (two seeds pooled here); the
    curves are the depth scales given (predict.trainability_curves); depth is on a log axis."""
    from initprobe import predict

    cells = [(w, d, s) for w in (0.5, 1.0, 2.0) for d in (3, 30) for s in (0, 1)]
    runs = pd.DataFrame({"run_id": [f"r{i}" for i in range(len(cells))], "status": "ok",
                         "sigma_w2": [w for w, _, _ in cells], "depth": [d for _, d, _ in cells],
                         "seed": [s for _, _, s in cells], "final_test_accuracy": np.linspace(0.1, 0.9, len(cells))})
    curves = predict.trainability_curves("tanh", np.linspace(0.3, 2.5, 5), 0.05)
    ax = sweep_figures.trainability_figure(runs, ["sigma_w2", "depth", "seed"], "t", curves).axes[0]
    want = runs.pivot_table(index="depth", columns="sigma_w2", values="final_test_accuracy").to_numpy()
    np.testing.assert_allclose(np.asarray(ax.collections[0].get_array()).reshape(want.shape), want)
    drawn = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    np.testing.assert_allclose(next(v for k, v in drawn.items() if k.startswith(r"$6")), curves["six_xi_c"])
    np.testing.assert_allclose(next(v for k, v in drawn.items() if k.startswith(r"$\xi_q")), curves["xi_q"])
    assert ax.get_yscale() == "log" and ax.get_xlabel().startswith(r"$\sigma_w^2$")


@pytest.mark.slow
def test_a_train_sweep_gives_the_same_numbers_on_the_process_backend(tmp_path, train_sweep):
    s = sweep.load_sweep(write(tmp_path, TRAIN_SWEEP))
    result = sweep.run_sweep(s, out_dir=tmp_path / "out", backend="process", workers=2, figures=False)
    assert result.failed == 0
    pd.testing.assert_frame_equal(numeric_layers(tmp_path / "out"), numeric_layers(train_sweep.path),
                                  check_exact=True)


def test_trainability_heatmap_axes_are_sigma_w2_and_depth_where_both_vary_else_the_swept_keys():
    runs = pd.DataFrame({"depth": [10, 10, 20, 20], "sigma_w2": [1.0, 2.0, 1.0, 2.0], "scale": [1.0, 2.0, 1.0, 2.0],
                         "init": ["a", "b", "a", "b"], "seed": [0, 1, 0, 1]})
    assert sweep_figures.heatmap_axes(runs, ["scale", "depth"]) == ("sigma_w2", "depth")
    one_depth = runs[runs["depth"] == 10]  # an init's sigma_w^2 is no axis of its own: the init is
    assert sweep_figures.heatmap_axes(one_depth, ["init", "seed"]) == (None, "init")


@pytest.mark.parametrize("fails", [False, True], ids=["ok", "failed"])
def test_a_point_runs_with_the_sweeps_threads_and_gives_the_callers_back(monkeypatch, fails):
    """Each backend runs a point through _probe with `threads` intra-op threads; the caller's number is restored
    after, also when the run fails (a local sweep runs in the caller's process)."""
    import torch

    from initprobe import config

    inside = []

    def run(cfg, command=None):
        inside.append(torch.get_num_threads())
        if fails:
            raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "run", run)
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    outcome = backends._probe(config.RunConfig(), threads, None)
    assert inside == [threads] and torch.get_num_threads() == before
    assert outcome["status"] == ("failed" if fails else "ok")
    assert outcome["error"] == ("RuntimeError: out of memory" if fails else "")


def test_a_process_workers_first_sigterm_interrupts_its_run_and_a_second_does_not(monkeypatch):
    """The first stops the run (KeyboardInterrupt, as Ctrl-C) and every run after; a second, arriving while the run
    removes its half-written folder, must not cut that clean-up short."""
    monkeypatch.setattr(backends, "_in_run", True)
    monkeypatch.setattr(backends, "_stopped", False)
    with pytest.raises(KeyboardInterrupt):
        backends._interrupt_run(15, None)
    backends._interrupt_run(15, None)  # no exception
    assert backends._stopped
    monkeypatch.setattr(backends, "_in_run", False)
    with pytest.raises(KeyboardInterrupt):  # a run that would start after
        backends._process_task({}, 1, None)
    assert not backends._in_run
