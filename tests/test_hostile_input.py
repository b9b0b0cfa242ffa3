"""Hostile input the command must turn into one line on stderr and exit code 2, with nothing written or changed
(or, where the input is valid after all, a finished run): broken run directories handed to `initprobe plot`, and
the cases of tests/test_fuzz_options.py's table that need more than a value."""

import json
import shutil
from pathlib import Path

import pytest

from initprobe.cli import main

from conftest import snapshot

TINY = ["--depth", "3", "--width", "8", "--batch", "4", "--seeds", "1", "--no-plots"]


def refused(capsys, argv, *fragments):
    """main(argv) is exit 2 with one line on stderr holding every fragment, nothing on stdout."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err)
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    for fragment in fragments:
        assert fragment in captured.err, (fragment, captured.err)
    return captured.err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "good"
    assert main(["run", *TINY, "--out", str(out), "--quiet"]) == 0
    return out


# ------------------------------------------------------------------------------------------ plot of a broken run


def drop_column(path: Path, column: str) -> None:
    lines = path.read_text().splitlines()
    i = lines[0].split(",").index(column)
    path.write_text("\n".join(",".join(c for k, c in enumerate(line.split(",")) if k != i) for line in lines) + "\n")


def keep_header(path: Path) -> None:
    path.write_text(path.read_text().splitlines()[0] + "\n")


BROKEN = {  # name: (damage, fragments of the one line)
    "config-invalid-json": (lambda d: (d / "config.json").write_text("{\n"), ["config.json", "not readable JSON"]),
    "config-empty": (lambda d: (d / "config.json").write_text(""), ["config.json", "not readable JSON"]),
    "config-a-list": (lambda d: (d / "config.json").write_text("[1, 2]\n"), ["config.json", "JSON object"]),
    "config-config-a-number": (lambda d: (d / "config.json").write_text('{"config": 5}\n'),
                               ["config.json", "JSON object"]),
    "summary-empty": (lambda d: (d / "summary.json").write_text(""), ["summary.json", "not readable JSON"]),
    "summary-binary": (lambda d: (d / "summary.json").write_bytes(b"\xff\xfe\x00"), ["summary.json"]),
    "layers-missing-column": (lambda d: drop_column(d / "layers.csv", "act_var"), ["layers.csv", "act_var"]),
    "layers-header-only": (lambda d: keep_header(d / "layers.csv"), ["layers.csv", "no rows"]),
    "layers-empty": (lambda d: (d / "layers.csv").write_text(""), ["layers.csv", "not a readable CSV"]),
    "layers-text-in-numbers": (lambda d: (d / "layers.csv").write_text(
        "seed,layer,preact_var,act_var,grad_preact_var,grad_act_var,weight_var,weight_grad_var,saturated_frac,"
        "zero_frac\n0,1,a,1,1,1,1,1,0,0\n"), ["layers.csv", "preact_var"]),
    "layers-binary": (lambda d: (d / "layers.csv").write_bytes(b"\x00\xff\xfe" * 50), ["layers.csv"]),
    "histograms-wrong-columns": (lambda d: (d / "histograms.csv").write_text("x,y\n1,2\n"),
                                 ["histograms.csv", "quantity"]),
    "histograms-header-only": (lambda d: keep_header(d / "histograms.csv"), ["histograms.csv", "no rows"]),
    "jacobian-wrong-columns": (lambda d: (d / "jacobian.csv").write_text("a\n1\n"),
                               ["jacobian.csv", "singular_value"]),
}


@pytest.mark.parametrize("case", BROKEN)
def test_plot_of_a_broken_run_directory_is_one_line_and_exit_2(tmp_path, capsys, finished_run, case):
    damage, fragments = BROKEN[case]
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    damage(run)
    before = snapshot(tmp_path)
    refused(capsys, ["plot", str(run)], str(run), *fragments)
    refused(capsys, ["plot", str(finished_run), str(run), "--out", str(tmp_path / "overlay")], str(run))
    assert snapshot(tmp_path) == before


def test_plot_of_a_run_without_summary_still_draws(tmp_path, capsys, finished_run):
    """summary.json is optional for a figure (verdicts are left out): not an error."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()
    assert main(["plot", str(run)]) == 0
    assert (run / "plots" / "variance.png").stat().st_size > 0
    assert json.loads((run / "config.json").read_text())["config"]["depth"] == 3


# ------------------------------------------------------------------------------------------ other hostile input


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = tmp_path with an earlier run in results/, a regular file, and hostile input files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "earlier").mkdir(parents=True)
    (tmp_path / "results" / "earlier" / "layers.csv").write_text("seed,layer\n0,1\n")
    (tmp_path / "a-file").write_text("a regular file\n")
    (tmp_path / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "run-5.toml").write_text("run = 5\n")
    (tmp_path / "nul-name.toml").write_text('[sweep]\nname = "a\\u0000b"\n[base]\ndepth = 2\n')
    (tmp_path / "flat-and-run.toml").write_text('act = "relu"\n[run]\ndepth = 2\n')
    (tmp_path / "other-table.toml").write_text('depth = 2\n[other]\nact = "relu"\n')
    (tmp_path / "run-and-other.toml").write_text('[run]\ndepth = 2\n[other]\nact = "relu"\n')
    (tmp_path / "nested-table.toml").write_text('[run]\ndepth = 2\n[run.more]\nact = "relu"\n')
    return tmp_path


CASES = {  # name: (argv, fragments of the one line)
    "seed-past-64-bits": (["run", *TINY, "--seed", "18446744073709551615"], ["seed", "18446744073709551615"]),
    "seed-past-63-bits": (["run", *TINY, "--seed", "9223372036854775808"], ["seed"]),
    "seeds-run-past-63-bits": (["run", *TINY, "--seed", "9223372036854775807", "--seeds", "2"], ["seed"]),
    "binary-config": (["run", *TINY, "--config", "binary.toml"], ["binary.toml", "not text"]),
    "binary-sweep": (["sweep", "binary.toml"], ["binary.toml", "not text"]),
    "run-not-a-table": (["run", *TINY, "--config", "run-5.toml"], ["run", "table"]),
    "config-dev-zero": (["run", *TINY, "--config", "/dev/zero"], ["/dev/zero"]),
    "sweep-dev-zero": (["sweep", "/dev/zero"], ["/dev/zero"]),
    "config-a-directory": (["run", *TINY, "--config", "results"], ["results", "directory"]),
    "config-flat-keys-and-run-table": (["run", *TINY, "--config", "flat-and-run.toml"], ["'act' is outside [run]"]),
    "config-unknown-table": (["run", *TINY, "--config", "other-table.toml"], ["unknown table [other]"]),
    "config-run-and-unknown-table": (["run", *TINY, "--config", "run-and-other.toml"], ["'other' is outside [run]"]),
    "config-table-in-run": (["run", *TINY, "--config", "nested-table.toml"], ["unknown table [more]"]),
    "nul-in-sweep-name": (["sweep", "nul-name.toml"], ["sweep.name"]),
    "theory-out-a-file": (["theory", "--depth", "3", "--out", "a-file"], ["a-file", "exists"]),
    "phase-out-a-file": (["phase", "--out", "a-file"], ["a-file", "exists"]),
    "plot-out-a-file": (["plot", "{run}", "{run}", "--out", "a-file"], ["a-file", "exists"]),
    "plot-out-under-a-file": (["plot", "{run}", "{run}", "--out", "a-file/x"], ["a-file"]),
    "theory-out-under-a-file": (["theory", "--depth", "3", "--out", "a-file/x"], ["a-file"]),
    "phase-out-under-a-file": (["phase", "--out", "a-file/x"], ["a-file"]),
    "run-out-a-file": (["run", *TINY, "--out", "a-file"], ["a-file", "exists"]),
    "sweep-out-a-file": (["sweep", "nul-name.toml", "--set", "sweep.name=ok", "--out", "a-file"], ["a-file"]),
}


@pytest.mark.parametrize("case", CASES)
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(workdir, capsys, finished_run, case):
    argv, fragments = CASES[case]
    argv = [a.replace("{run}", str(finished_run)) for a in argv]
    before = snapshot(workdir)
    refused(capsys, argv, *fragments)
    assert snapshot(workdir) == before


def test_bench_json_under_a_file_fails_before_benchmarking(workdir, capsys, monkeypatch):
    from initprobe import bench

    def no_bench(*args, **kwargs):
        raise AssertionError("benchmarked before checking --json")

    monkeypatch.setattr(bench, "run_all", no_bench)
    before = snapshot(workdir)
    refused(capsys, ["bench", "--json", "a-file/bench.json"], "a-file")
    assert snapshot(workdir) == before


@pytest.mark.parametrize("init, arch", [("orthogonal", "mlp"), ("delta_orthogonal", "cnn"), ("lsuv", "mlp"),
                                        ("orthogonal", "cnn")])
def test_bfloat16_with_an_orthogonal_init_finishes(workdir, capsys, init, arch):
    """QR has no bfloat16 kernel: the orthogonal matrix is made in float32 and rounded to bfloat16, so its rows
    stay orthonormal to bfloat16's precision (2^-8 relative: |W W^T - gain^2 I| below 0.05 for 8 rows)."""
    import numpy as np
    import pandas as pd
    import torch

    from initprobe import inits

    extra = ["--arch", "cnn", "--image-size", "6"] if arch == "cnn" else []
    code = main(["run", *TINY, "--init", init, "--dtype", "bfloat16", *extra, "--out", "bf16", "--quiet"])
    assert code == 0, capsys.readouterr().err
    layers = pd.read_csv("bf16/layers.csv")
    assert np.isfinite(layers[["preact_var", "act_var", "grad_preact_var"]].to_numpy()).all()
    w = inits.get("orthogonal").fn(torch.empty(8, 8, dtype=torch.bfloat16), generator=torch.Generator())
    assert w.dtype == torch.bfloat16
    gram = w.float() @ w.float().T
    assert torch.allclose(gram, torch.eye(8), atol=0.05)


@pytest.mark.parametrize("text", ['act = "relu"\ndepth = 2\n', '[run]\nact = "relu"\ndepth = 2\n'])
def test_a_config_file_flat_or_under_run_is_used_whole(workdir, capsys, text):
    """Either layout works, every key of it taken (the command line overrides depth here, not act)."""
    (workdir / "c.toml").write_text(text)
    assert main(["run", *TINY, "--config", "c.toml", "--out", "r", "--quiet"]) == 0, capsys.readouterr().err
    cfg = json.loads((workdir / "r" / "config.json").read_text())["config"]
    assert cfg["act"] == "relu" and cfg["depth"] == 3
