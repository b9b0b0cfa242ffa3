"""The `initprobe` command, in process through `main(argv) -> exit code` (DESIGN section 5): bad input is one line
`error: ...` on stderr with exit code 2 and nothing in results/ is touched; the positive paths write what they say."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from initprobe.cli import main

TINY = ["--depth", "2", "--width", "8", "--batch", "4", "--seeds", "1", "--no-plots"]  # if validation let it through


def snapshot(root: Path) -> dict:
    """Every path under root (hidden ones included) with its bytes (None for directories)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = tmp_path, holding a results/ with an earlier run in it, and a few input files."""
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "results" / "earlier-run"
    (old / "plots").mkdir(parents=True)
    (old / "config.json").write_text('{"config": {"depth": 3}}\n')
    (old / "layers.csv").write_text("seed,layer,act_var\n0,1,1.0\n")
    (old / "summary.json").write_text("{}\n")
    (old / "plots" / "variance.png").write_bytes(b"\x89PNG\r\n\x1a\n fake")
    (tmp_path / "malformed.toml").write_text("depth = [\n")
    (tmp_path / "unknown_key.toml").write_text('act = "relu"\ndpth = 3\n')
    (tmp_path / "wrong_type.toml").write_text('depth = "x"\n')
    (tmp_path / "a-file").write_text("a regular file, not a directory\n")
    return tmp_path


def call(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------ bad input

ERRORS = {  # id: (argv, substrings the one line must contain)
    "unknown-init": (["run", "--init", "glorot_unifrom", *TINY], ["glorot_unifrom", "glorot_uniform"]),
    "unknown-act": (["run", "--act", "tanhh", *TINY], ["tanhh", "tanh"]),
    "depth-0": (["run", *TINY, "--depth", "0"], ["depth"]),
    "width-0": (["run", *TINY, "--width", "0"], ["width"]),
    "batch-0": (["run", *TINY, "--batch", "0"], ["batch"]),
    "image-too-small": (["run", "--arch", "cnn", "--image-size", "2", "--kernel-size", "3", *TINY],
                        ["image_size", "kernel_size"]),
    "even-kernel": (["run", "--arch", "cnn", "--kernel-size", "4", "--image-size", "8", *TINY], ["kernel"]),
    "delta-orthogonal-mlp": (["run", "--init", "delta_orthogonal", *TINY], ["delta_orthogonal", "cnn"]),
    "no-cuda": (["run", "--device", "cuda", *TINY], ["cuda"]),
    "out-under-a-file": (["run", "--out", "a-file/run", *TINY], ["a-file"]),
    "existing-out": (["run", "--out", "results/earlier-run", *TINY], ["results/earlier-run", "exists"]),
    "malformed-toml": (["run", "--config", "malformed.toml", *TINY], ["malformed.toml"]),
    "unknown-config-key": (["run", "--config", "unknown_key.toml", *TINY], ["dpth", "depth"]),
    "config-wrong-type": (["run", "--config", "wrong_type.toml", *TINY], ["depth", "'x'"]),
    "missing-config": (["run", "--config", "no-such.toml", *TINY], ["no-such.toml"]),
    "custom-init-import": (["run", "--init", "nosuchmodule:fn", *TINY], ["nosuchmodule"]),
    "gain-not-a-number": (["run", "--gain", "abc", *TINY], ["gain", "abc"]),
    "std-with-glorot": (["run", "--std", "0.1", *TINY], ["std", "glorot_uniform"]),
    "bias-normal-without-std": (["run", "--bias", "normal", *TINY], ["bias_std"]),
    "plot-nonexistent": (["plot", "/nonexistent"], ["/nonexistent"]),
    "depth-not-an-int": (["run", *TINY, "--depth", "abc"], ["depth"]),
    "unknown-option": (["run", "--dpth", "3", *TINY], ["--dpth", "--depth"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_one_line_exit_2_and_results_untouched(workdir, capsys, case):
    argv, wanted = ERRORS[case]
    if case == "no-cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present, so --device cuda is valid here")
    before = snapshot(workdir / "results")
    code, out, err = call(capsys, argv)
    lines = err.splitlines()  # blank lines count too: the one line is all there is
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in out + err
    for text in wanted:
        assert text in lines[0], (text, lines[0])
    assert snapshot(workdir / "results") == before


# ------------------------------------------------------------------------------------------------ runs


def only_run(workdir) -> Path:
    runs = [p for p in (workdir / "results").iterdir() if p.name != "earlier-run"]
    assert len(runs) == 1, runs
    return runs[0]


def test_config_file_then_command_line_override(workdir, capsys, device):
    """CLI > file > defaults: the file's init, act and width survive, --depth from the command line wins."""
    (workdir / "he.toml").write_text('init = "he_normal"\nact = "relu"\ndepth = 50\nwidth = 16\n')
    code, out, err = call(capsys, ["run", "--config", "he.toml", "--depth", "3", "--batch", "8", "--seeds", "1",
                                   "--no-plots", "--quiet", "--device", device.type])
    assert code == 0, err
    info = json.loads((only_run(workdir) / "config.json").read_text())["config"]
    assert (info["init"], info["act"], info["width"], info["depth"]) == ("he_normal", "relu", 16, 3)
    assert info["batch"] == 8 and info["plots"] is False


def test_quiet_prints_only_the_run_path(workdir, capsys, device):
    code, out, err = call(capsys, ["run", "--depth", "3", "--width", "16", "--batch", "8", "--seeds", "1",
                                   "--no-plots", "--quiet", "--device", device.type])
    assert code == 0, err
    run_dir = only_run(workdir)
    assert out == f"{Path('results') / run_dir.name}\n"
    assert err.strip() == ""
    assert (run_dir / "layers.csv").is_file()


def test_quiet_prints_a_long_path_on_one_line(workdir, capsys, device):
    """Scripts do `dir=$(initprobe run --quiet ...)`: the path must come out whole, however long (not wrapped at
    the console's 80 columns)."""
    target = workdir / "a-fairly-long-experiment-directory-name" / "glorot-uniform-tanh-depth-3-width-16-seed-0"
    assert len(str(target)) > 100
    code, out, err = call(capsys, ["run", "--depth", "3", "--width", "16", "--batch", "8", "--seeds", "1",
                                   "--no-plots", "--quiet", "--device", device.type, "--out", str(target)])
    assert code == 0, err
    assert out == f"{target}\n"
    assert (target / "layers.csv").is_file()


def test_progress_bar_on_a_terminal_runs_no_thread(workdir, capsys, device, monkeypatch):
    """The bar is redrawn on each update, not by rich's refresh thread: with a second thread, the figures' drawing
    processes and the sweep's workers could not be forked (a lock that thread held would stay locked)."""
    import io
    import threading

    from rich.console import Console

    from initprobe import cli, runner

    monkeypatch.setattr(cli, "err", Console(file=io.StringIO(), force_terminal=True, width=100))
    threads, seen = threading.active_count(), []

    real_run = runner.run

    def spying_run(cfg, on_seed=None, **kw):
        def spy(i):
            on_seed(i)
            seen.append(threading.active_count())
        return real_run(cfg, on_seed=spy, **kw)

    monkeypatch.setattr(runner, "run", spying_run)
    code, out, err = call(capsys, ["run", "--depth", "3", "--width", "16", "--batch", "8", "--seeds", "2",
                                   "--no-plots", "--device", device.type])
    assert code == 0, err
    assert seen == [threads, threads]
    assert "probing 2 network(s)" in cli.err.file.getvalue()  # the bar was drawn


def test_importing_turns_the_gc_off_for_the_imports_and_back_on(monkeypatch):
    """Heavy imports run with the cyclic GC off; afterwards it is on again, and what they made is frozen (left out
    of later collections) only when something was imported."""
    import gc

    from initprobe import cli

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    with cli.importing():
        assert not gc.isenabled()
        import json  # noqa: F401  (imported already: nothing new)
    assert gc.isenabled() and frozen == []
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    with cli.importing():
        import colorsys  # noqa: F401  (a small module, imported anew)
    assert gc.isenabled() and frozen == [True]


def test_main_records_its_own_argv_as_the_command(workdir, capsys, device):
    """config.json's environment.command is the command line of the run: main(argv) from Python (a notebook,
    a script) must record argv, not whatever the host process was started with."""
    argv = ["run", "--depth", "2", "--width", "8", "--batch", "4", "--seeds", "1", "--no-plots", "--quiet",
            "--device", device.type]
    code, out, err = call(capsys, argv)
    assert code == 0, err
    env = json.loads((only_run(workdir) / "config.json").read_text())["environment"]
    assert env["command"] == ["initprobe", *argv]


def test_list_shows_schemes_formulas_and_gains(workdir, capsys):
    code, out, err = call(capsys, ["list"])
    assert code == 0, err
    for text in ("glorot_uniform", "he_normal", "sqrt(2)", "variance_scaling", "lsuv"):
        assert text in out, text
    tanh_rows = [line for line in out.splitlines() if line.strip("│ ").startswith("tanh ")]
    assert tanh_rows and "1.667" in tanh_rows[0], tanh_rows  # PyTorch's 5/3


def weight_var_check(run_dir, expected_first, expected_rest, n_first, n_rest, kurtosis):
    """Each layer's weight_var within 6 standard errors v sqrt((k-1)/n) of its expected variance."""
    layers = pd.read_csv(run_dir / "layers.csv")
    for _, row in layers.iterrows():
        first = row["layer"] == 1
        want, n = (expected_first, n_first) if first else (expected_rest, n_rest)
        assert abs(row["weight_var"] - want) < 6 * want * math.sqrt((kurtosis - 1) / n), (row["layer"], want)
    return layers


def test_variance_scaling_options_reach_the_weights(workdir, capsys, device):
    """Keras VarianceScaling(scale=2, mode=fan_avg, distribution=uniform): Var = 2 / ((fan_in + fan_out)/2) - 2/64
    on the square 64 -> 64 layers, 2/48 on the 32 -> 64 first one. Uniform (kurtosis 9/5): 6 standard errors
    are 6 sqrt(0.8/4096) = 8.4% (square layers), 11.9% (first layer)."""
    code, out, err = call(capsys, ["run", "--init", "variance_scaling", "--scale", "2", "--mode", "fan_avg",
                                   "--distribution", "uniform", "--act", "sigmoid", "--depth", "5", "--width", "64",
                                   "--input-dim", "32", "--batch", "32", "--seeds", "2", "--no-plots", "--quiet",
                                   "--device", device.type])
    assert code == 0, err
    run_dir = only_run(workdir)
    weight_var_check(run_dir, 2 / 48, 2 / 64, 32 * 64, 64 * 64, 9 / 5)
    params = json.loads((run_dir / "config.json").read_text())["init_params"]
    assert params == {"scale": 2.0, "mode": "fan_avg", "distribution": "uniform", "gain": 1.0}


def test_gain_auto_takes_pytorch_relu_gain(workdir, capsys, device):
    """--gain auto with relu: gain sqrt(2), so Glorot uniform gives Var = 2 * 2/(fan_in + fan_out): 4/96 on the
    32 -> 64 first layer, 4/128 on the others (6 standard errors as above)."""
    code, out, err = call(capsys, ["run", "--init", "glorot_uniform", "--gain", "auto", "--act", "relu",
                                   "--depth", "4", "--width", "64", "--input-dim", "32", "--batch", "16",
                                   "--seeds", "2", "--no-plots", "--quiet", "--device", device.type])
    assert code == 0, err
    run_dir = only_run(workdir)
    weight_var_check(run_dir, 4 / 96, 4 / 128, 32 * 64, 64 * 64, 9 / 5)
    assert json.loads((run_dir / "config.json").read_text())["init_params"]["gain"] == pytest.approx(math.sqrt(2))


def test_run_with_plots_writes_plot_files(workdir, capsys, device):
    pytest.importorskip("initprobe.plots", reason="initprobe/plots.py is not there yet")
    code, out, err = call(capsys, ["run", "--depth", "4", "--width", "16", "--batch", "8", "--seeds", "2",
                                   "--device", device.type])
    assert code == 0, err
    plots = only_run(workdir) / "plots"
    files = sorted(plots.glob("*.png"))
    assert {"variance.png", "histograms.png"} <= {f.name for f in files}, files
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 1000, f


# ------------------------------------------------------------------------------------------------ process level


LOADED = """
import sys
from initprobe import cli
sys.argv = ["initprobe"] + sys.argv[1:]
try:
    cli.main()
except SystemExit:
    pass
print("loaded:", *[m for m in ("torch", "pandas", "matplotlib", "numpy", "sympy") if m in sys.modules],
      file=sys.stderr)
"""


SMALL_RUN = ["run", "--depth", "3", "--width", "8", "--batch", "4", "--seeds", "1", "--no-plots", "--quiet",
             "--device", "cpu"]


@pytest.mark.parametrize("args, loaded", [(["--help"], ""), (["run", "--help"], ""), (["sweep", "--help"], ""),
                                          (["list"], " numpy"),  # list computes the gains of non-torch activations
                                          (SMALL_RUN, " torch pandas numpy")])
def test_help_and_list_import_no_torch_pandas_or_matplotlib(tmp_path, args, loaded):
    """What keeps them instant: they run in a fresh process and print which heavy modules got imported. A run
    without plots needs no matplotlib, and no sympy (x.backward(cotangent)'s shape check imports it: 0.45 s)."""
    done = subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.stdout.strip(), done.stderr
    assert done.stderr.strip().splitlines()[-1] == "loaded:" + loaded, done.stderr


def test_console_script_help_exits_0(tmp_path):
    script = Path(sys.executable).parent / "initprobe"
    cmd = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "initprobe.cli", "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout and "list" in done.stdout


def test_bench_prints_every_row_with_its_verdict_and_writes_the_json(workdir, capsys, monkeypatch):
    """The table and JSON of `initprobe bench`, from rows made by bench.row (the measurements themselves are
    timed, so not run here): a failed row says FAIL, a row without a goal says info and is null in the JSON,
    and a note gets wide columns where the output is not a terminal."""
    from initprobe import bench

    note = "a long note that an 80-column table would fold over several lines"
    rows = [bench.row("fast enough", 1.05, "<= 1.10", True, note, "x bare"),
            bench.row("too slow", 1.2, "<= 1.10", False, "", "x bare"),
            bench.row("  once per sweep: its report", 2.0, "-", None, "", "s")]
    result = {"device": "cpu", "torch": torch.__version__, "cpu_count": 2, "freed_memory_kept": True,
              "matmul_gflops": 300.0, "bare_fraction_of_matmul": 0.7, "rows": rows}
    monkeypatch.setattr(bench, "run_all", lambda device, quick=False: result)
    assert main(["bench", "--device", "cpu", "--json", "b/bench.json"]) == 0
    printed = capsys.readouterr().out
    lines = {name: next(line for line in printed.splitlines() if name in line) for name in ("fast", "too", "once")}
    assert "pass" in lines["fast"] and "FAIL" in lines["too"] and "info" in lines["once"]
    assert "a long note that an 80-column table would fold" in lines["fast"]  # 150 columns: 17 for notes at 80
    written = json.loads((workdir / "b" / "bench.json").read_text())
    assert [r["pass"] for r in written["rows"]] == [True, False, None]
