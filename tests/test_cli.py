"""The `initprobe` command, in process through `main(argv) -> exit code`: bad input is one line `error: ...` on
stderr with exit code 2 and nothing in results/ is touched; the positive paths write what they say; the help
shows its text as written; the choices of an option are choices (listed, completed, refused when wrong)."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import initprobe
from initprobe import activations, inits, option_docs
from initprobe.cli import main

from conftest import snapshot

ROOT = Path(__file__).resolve().parent.parent

TINY = ["--depth", "2", "--width", "8", "--batch", "4", "--seeds", "1", "--no-plots"]  # if validation let it through


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
    # blocks, norms and branch scales: each impossible combination found before anything is written
    "unknown-block": (["run", "--block", "resnet", *TINY], ["resnet", "residual"]),
    "unknown-norm": (["run", "--norm", "batchnorm", *TINY], ["batchnorm", "batch"]),
    "batch-norm-of-one-example": (["run", "--norm", "batch", *TINY, "--batch", "1"], ["--norm batch", "--batch 1"]),
    "layer-norm-of-one-unit": (["run", "--norm", "layer", *TINY, "--width", "1"], ["--norm layer", "--width 1"]),
    "cnn-batch-norm-of-one-value": (["run", "--arch", "cnn", "--norm", "batch", "--image-size", "1",
                                     "--kernel-size", "1", *TINY, "--batch", "1"], ["--norm batch", "positions"]),
    "residual-without-blocks": (["run", "--block", "residual", *TINY, "--depth", "1"], ["residual", "depth"]),
    "branch-scale-on-plain-blocks": (["run", "--branch-scale", "0.5", *TINY],
                                     ["--branch-scale", "block 'plain'", "'residual'"]),
    "branch-scale-negative": (["run", "--block", "residual", "--branch-scale", "-1", *TINY],
                              ["--branch-scale", "non-negative"]),
    "branch-scale-unknown-word": (["run", "--block", "residual", "--branch-scale", "inv_sqrt", *TINY],
                                  ["inv_sqrt", "inv_sqrt_depth"]),
    "jacobian-with-batch-norm": (["run", "--norm", "batch", "--jacobian", *TINY], ["--jacobian", "--norm batch"]),
    "theory-batch-norm-of-one-example": (["theory", "--norm", "batch", "--batch", "1", "--depth", "3"],
                                         ["--norm batch", "--batch 1"]),
    # a format matplotlib cannot write is refused with the other options, before phase.csv is written
    "phase-unknown-format": (["phase", "--format", "bmp"], ["bmp", "png"]),
    # --out names a directory to create, for every command that takes it
    "theory-existing-out": (["theory", "--depth", "3", "--out", "results/earlier-run"],
                            ["results/earlier-run", "exists"]),
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


def test_list_blocks_shows_the_blocks_norms_and_branch_scale(workdir, capsys):
    code, out, err = call(capsys, ["list", "blocks"])
    assert code == 0, err
    for text in ("--block", "plain", "residual", "--norm", "batch", "layer", "inv_sqrt_depth"):
        assert text in out, text


def test_theory_of_a_residual_network_prints_and_writes_its_recursion(workdir, capsys, monkeypatch):
    """`initprobe theory --block residual --norm batch`: the ratios of the residual recursion (ReLU + He: the
    variance grows by 1 per block, 2 -> 11 over 10 layers), the architecture in words, and theory.csv with the
    branch's and the channels' columns."""
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = call(capsys, ["theory", "--block", "residual", "--norm", "batch", "--act", "relu", "--init",
                                   "he_normal", "--depth", "10", "--out", "th"])
    assert code == 0, err
    assert "architecture: residual blocks, batch norm, alpha = 1" in out and "5.5" in out  # forward 11 / 2
    frame = pd.read_csv(workdir / "th" / "theory.csv")
    assert frame["theory_act_var"].tolist() == pytest.approx([2.0 + l for l in range(10)], rel=1e-9)
    assert frame["theory_branch_var"].isna().tolist() == [True] + [False] * 9
    assert {"theory_chan_sq_mean", "theory_chan_var"} <= set(frame.columns)
    scales = json.loads((workdir / "th" / "theory.json").read_text())["scales"]
    assert scales["alpha"] == 1.0 and scales["architecture"] == "residual blocks, batch norm, alpha = 1"


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


@pytest.mark.slow
def test_run_with_plots_writes_plot_files(workdir, capsys, device):
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
code = cli.main(sys.argv[1:])
print("exit", code, "loaded:", *sorted(m for m in ("torch", "pandas", "matplotlib", "sympy") if m in sys.modules),
      file=sys.stderr)
"""


def loaded_by(args, cwd) -> tuple[str, set]:
    """Run `initprobe ARGS` in a fresh process: (its stdout, the heavy modules it imported)."""
    done = subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)
    last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    assert last.startswith("exit 0 loaded:"), done.stderr
    return done.stdout, set(last.split()[3:])


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["sweep", "--help"], ["theory", "--help"],
                                  ["train", "--help"], ["list"]], ids=" ".join)
def test_help_and_list_import_no_torch_pandas_or_matplotlib(tmp_path, args):
    """What keeps them instant: none of the heavy modules is imported to print help or the registries (numpy is
    allowed: list computes the gains of the activations PyTorch has none for)."""
    out, loaded = loaded_by(args, tmp_path)
    assert out.strip()
    assert not loaded & {"torch", "pandas", "matplotlib"}, loaded


@pytest.mark.slow
def test_a_run_without_plots_imports_no_matplotlib_or_sympy(tmp_path):
    """A run without plots draws nothing, so it needs no matplotlib; and no sympy, which torch imports for the shape
    check of x.backward(cotangent) (probe.backward hands the cotangent on without that check)."""
    out, loaded = loaded_by(["run", "--depth", "3", "--width", "8", "--batch", "4", "--seeds", "1", "--no-plots",
                             "--quiet", "--device", "cpu"], tmp_path)
    assert (tmp_path / out.strip() / "layers.csv").is_file()
    assert "torch" in loaded and not loaded & {"matplotlib", "sympy"}, loaded


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
    assert printed.splitlines()[-1] == str(Path("b") / "bench.json")
    assert (workdir / "b" / "bench.json").is_file()  # its parent created


def test_bench_json_naming_a_directory_fails_before_benchmarking(workdir, capsys, monkeypatch):
    """The JSON file is checked before minutes of measuring, not when they are over."""
    from initprobe import bench

    def run_all(*args, **kwargs):
        raise AssertionError("the benchmark ran although its JSON file cannot be written")

    monkeypatch.setattr(bench, "run_all", run_all)
    before = snapshot(workdir)
    code, out, err = call(capsys, ["bench", "--device", "cpu", "--json", "results"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: results") and "directory" in err, err
    assert snapshot(workdir) == before


def test_version(capsys):
    code, out, err = call(capsys, ["--version"])
    assert code == 0, err
    assert out == f"initprobe {initprobe.__version__}\n"


# ------------------------------------------------------------------------------------------------ --out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny run directories, for `initprobe plot RUN RUN`."""
    root = tmp_path_factory.mktemp("runs")
    for name, act in (("a", "tanh"), ("b", "relu")):
        initprobe.run(initprobe.RunConfig(act=act, depth=3, width=8, batch=4, seeds=1, plots=False, device="cpu",
                                          out=str(root / name)))
    return root / "a", root / "b"


def test_plot_overlay_into_an_existing_directory_is_refused(workdir, capsys, two_runs):
    (workdir / "mine").mkdir()
    (workdir / "mine" / "notes.txt").write_text("mine")
    before = snapshot(workdir)
    code, out, err = call(capsys, ["plot", *map(str, two_runs), "--out", "mine"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error:") and "mine" in err and "exists" in err, err
    assert snapshot(workdir) == before


def test_plot_overlay_without_out_gets_a_new_directory_each_time(workdir, capsys, two_runs, monkeypatch):
    """A generated name never overwrites: the second overlay of the same runs goes to NAME-2. (The figures are made
    but not rendered: an empty file stands for each.)"""
    from initprobe.plots import compare_figures

    monkeypatch.setattr(compare_figures, "save", lambda fig, path, fmt: path.write_bytes(b"") or path)
    paths = []
    for _ in range(2):
        code, out, err = call(capsys, ["plot", *map(str, two_runs)])
        assert code == 0, err
        paths.append({Path(line).parent for line in out.splitlines()})
    assert paths == [{Path("results/compare-a-vs-b")}, {Path("results/compare-a-vs-b-2")}]
    for folder in paths[0] | paths[1]:
        assert sorted(f.name for f in (workdir / folder).iterdir()) == ["compare_variance.png",
                                                                        "compare_weight_grad.png"]


# ------------------------------------------------------------------------------------------------ help text


def help_text(capsys, monkeypatch, argv) -> str:
    """The help of `initprobe ARGV`, its box lines removed and whitespace collapsed (rich wraps the text to the
    terminal: 1000 columns, so that it wraps nothing here)."""
    monkeypatch.setenv("COLUMNS", "1000")
    code, out, err = call(capsys, argv)
    assert code == 0, err
    return " ".join(re.sub("[\u2500-\u257f]", " ", out).split())


def test_help_shows_bracketed_text_as_written(capsys, monkeypatch):
    """Brackets in help are text, not rich markup that would swallow them."""
    assert ("optional [sweep] options, [base] run options, [grid] lists (crossed), optional [[point]] tables"
            in help_text(capsys, monkeypatch, ["sweep", "--help"]))
    assert "1/sqrt(E[phi(z)^2])" in help_text(capsys, monkeypatch, ["run", "--help"])


def test_activation_is_a_choice_and_the_help_lists_the_names(capsys, monkeypatch):
    """--act takes one of the registry's names, aliases included: its help shows them as the option's values (and
    a wrong one is refused while parsing: ERRORS' unknown-act)."""
    shown = re.search(r"--act <([^>]*)>", help_text(capsys, monkeypatch, ["run", "--help"]))
    assert shown, "run --help shows no --act <choices>"
    assert set(shown.group(1).replace(" ", "").split("|")) == set(activations.choices())


def test_help_lists_the_block_norm_and_branch_scale_options(capsys, monkeypatch):
    """run --help and theory --help show --block and --norm with their registries' names as choices, and
    --branch-scale with the word it takes besides a number."""
    for command in ("run", "theory"):
        shown = help_text(capsys, monkeypatch, [command, "--help"]).replace(" ", "")
        assert "--block<plain|residual>" in shown and "--norm<none|batch|layer>" in shown, command
        assert "--branch-scale" in shown and "inv_sqrt_depth" in shown, command


def completions(capsys, monkeypatch, words: str) -> list[str]:
    """What bash completion offers after `words` (the last one is being typed; a trailing space starts a new one),
    through click's own protocol as the shell calls it: _INITPROBE_COMPLETE=complete_bash, the words in
    COMP_WORDS, the index of the one being completed in COMP_CWORD; candidates come out one a line."""
    monkeypatch.setenv("_INITPROBE_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 0
    return sorted(capsys.readouterr().out.split())


@pytest.mark.parametrize("words, offered", [
    ("initprobe run --act ta", ["tanh"]),
    ("initprobe run --act s", sorted(n for n in activations.choices() if n.startswith("s"))),
    ("initprobe run --init glorot", ["glorot_normal", "glorot_uniform"]),
    ("initprobe run --init he_", ["he_normal", "he_uniform"]),
    ("initprobe run --mode fan_a", ["fan_avg"]),
    ("initprobe sweep --backend pro", ["process"]),
])
def test_shell_completion_offers_the_choices(capsys, monkeypatch, words, offered):
    assert completions(capsys, monkeypatch, words) == offered


def test_init_completion_offers_every_registry_name(capsys, monkeypatch):
    """--init is open (a registry name or package.module:function): any text is accepted, the names are offered."""
    assert completions(capsys, monkeypatch, "initprobe run --init ") == sorted(inits.choices())


# ------------------------------------------------------------------------------------------------ docs


def test_docs_options_md_is_generated_from_the_declarations():
    """docs/options.md is the table option_docs.options_markdown() makes from each option's declaration."""
    path = ROOT / "docs" / "options.md"
    regenerate = ("regenerate it: python -c \"from initprobe import option_docs; "
                  "open('docs/options.md','w').write(option_docs.options_markdown())\"")
    assert path.is_file(), f"docs/options.md is missing; {regenerate}"
    assert path.read_text() == option_docs.options_markdown(), f"docs/options.md is out of date; {regenerate}"


@pytest.mark.parametrize("instrumented_s, verdict", [(1.1004, True), (1.1006, False)])
def test_bench_overhead_is_judged_on_the_value_it_shows(monkeypatch, instrumented_s, verdict):
    """A ratio of 1.1004 shows as 1.1 and passes a goal of 1.10; 1.1006 shows as 1.101 and fails it: the table
    never shows a value that contradicts its verdict. The passes' times are fixed here; the network is tiny."""
    from initprobe import bench

    seconds = {"bare": 1.0, "instrumented": instrumented_s, "naive": 2.0}
    monkeypatch.setattr(bench, "timed", lambda fn, device, reps: [seconds[fn.__name__]] * reps)
    options = dict(arch="mlp", depth=2, width=8, batch=4, act="tanh")
    result, _ = bench.overhead("tiny", options, 1.10, torch.device("cpu"), reps=3)
    assert result["value"] == round(instrumented_s, 3) and result["pass"] is verdict
