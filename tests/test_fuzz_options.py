"""A table of hostile values over every numeric option (on the command line, in a config file, in a sweep's grid) and
over every config key (in a config file, TOML values of every type): each invocation is either refused with exit
code 2 and one line on stderr, or a finished run (exit 0, one new run directory, complete); never a traceback,
never another exit code, and nothing that was there before is changed."""

import math
import textwrap
from pathlib import Path

import pytest

from initprobe import config, results
from initprobe.cli import main

from conftest import snapshot

TINY = {"depth": 3, "width": 8, "batch": 4, "seeds": 1, "plots": False, "device": "cpu"}
CNN = {"arch": "cnn", "width": 4, "batch": 2, "image_size": 6}
MODEL = {"model": "fuzz_tokens:make", "input_kind": "tokens", "vocab": 50, "seq_len": 4, "batch": 2}
# what makes an option apply, so that its value is used rather than refused as not applying
CONTEXT = {"slope": {"act": "leaky_relu"}, "scale": {"init": "variance_scaling"}, "std": {"init": "normal"},
           "bound": {"init": "uniform"}, "value": {"init": "constant"}, "bias_std": {"bias": "normal"},
           "in_channels": CNN, "image_size": CNN, "kernel_size": CNN, "branch_scale": {"block": "residual"},
           "seq_len": MODEL, "vocab": MODEL}
MODEL_SOURCE = """
from torch import nn

def make():
    return nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 8))
"""


def base(key: str) -> dict:
    """The tiny run a value of `key` goes into: a --model's has no depth or width (they would not apply)."""
    context = CONTEXT.get(key, {})
    tiny = {k: v for k, v in TINY.items() if "model" not in context or k not in ("depth", "width")}
    return {**tiny, **context}
NUMERIC = [k for k in config.OPTIONS if set(config.value_types(k)) & {int, float}]

SLOW = pytest.mark.slow  # a valid value that makes a run of a thousand layers, seeds or positions, or draws plots

# The whole table (some 1,500 cases) runs in `make test`, not in the edit-test loop of `make test-fast`;
# tests/test_hostile_input.py and the option tests keep fast checks of the named hostile cases.
pytestmark = pytest.mark.slow

# text as typed on a command line
HOSTILE_TEXT = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e308", "-1e308", "5e-324",
                "-0.0", "0", "-1", "1.5", "1e3", "abc", "", "0x10", pytest.param("1_001", marks=SLOW), " 7",
                "9223372036854775807",
                "9223372036854775808", "18446744073709551616", "1" + "0" * 400, "1" + "0" * 5000, "\x00", "１"]
# TOML values: every type TOML has
HOSTILE_TOML = ["nan", "inf", "-inf", pytest.param("true", marks=SLOW), '"x"', '""', '"nan"', "[1, 2]", "[]",
                "{ a = 1 }", "1979-05-27", "07:32:00", "1979-05-27T07:32:00Z", "-1", "0", "9223372036854775807",
                "-9223372036854775808", "1e308", "5e-324", "1.5", '"\\u0000"']


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = tmp_path with an earlier run in results/ and a file beside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_DEVICE", "cpu")
    (tmp_path / "results" / "earlier").mkdir(parents=True)
    (tmp_path / "results" / "earlier" / "layers.csv").write_text("seed,layer\n0,1\n")
    (tmp_path / "notes.txt").write_bytes(b"mine\x00\n")
    (tmp_path / "fuzz_tokens.py").write_text(MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def refused_or_finished(workdir: Path, capsys, argv: list[str]) -> str:
    """main(argv) (an exception out of it fails the test: a traceback) is exit 2 with one line and nothing new, or
    exit 0 with one new, complete run directory and everything else as it was. Returns 'refused' or 'finished'."""
    before = snapshot(workdir)
    code = main(argv)
    captured = capsys.readouterr()
    after = snapshot(workdir)
    assert {k: v for k, v in after.items() if k in before} == before, "something that was there changed"
    new = sorted(k for k in after if k not in before)
    if code == 2:
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
        assert "Traceback" not in captured.err and new == [], (captured.err, new)
        return "refused"
    assert code == 0, (code, captured.err)
    tops = {Path(k).parts[0] if not k.startswith("results/") else "/".join(Path(k).parts[:2]) for k in new}
    assert len(tops) == 1, new
    run_dir = workdir / tops.pop()
    assert results.incomplete(run_dir) is None, results.incomplete(run_dir)
    return "finished"


def flags(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        flag = config.flag(key)
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{flag[2:]}")
        else:
            out += [flag, str(value)]
    return out


@pytest.mark.parametrize("text", HOSTILE_TEXT, ids=repr)
@pytest.mark.parametrize("key", NUMERIC)
def test_a_hostile_value_on_the_command_line(workdir, capsys, key, text):
    argv = ["run", *flags(base(key)), config.flag(key), text, "--quiet"]
    outcome = refused_or_finished(workdir, capsys, argv)
    if text.strip().lower().lstrip("-") in ("nan", "inf", "infinity", "1e400"):
        assert outcome == "refused"  # not finite: never a run


@pytest.mark.parametrize("value", HOSTILE_TOML, ids=repr)
@pytest.mark.parametrize("key", list(config.OPTIONS))
def test_a_hostile_value_in_a_config_file(workdir, capsys, key, value):
    lines = [f"{k} = {_toml(v)}" for k, v in base(key).items() if k != key] + [f"{key} = {value}"]
    (workdir / "hostile.toml").write_text("\n".join(lines) + "\n")
    before = (workdir / "hostile.toml").read_bytes()
    outcome = refused_or_finished(workdir, capsys, ["run", "--config", "hostile.toml", "--quiet"])
    assert (workdir / "hostile.toml").read_bytes() == before
    if value in ("nan", "inf", "-inf"):
        assert outcome == "refused"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", '"x"', "true", "[1]", "-1", "1e308", "1979-05-27"], ids=repr)
@pytest.mark.parametrize("key", NUMERIC)
def test_a_hostile_value_in_a_sweep_grid_is_refused_before_any_run(workdir, capsys, key, value):
    """A grid holding one hostile value next to a good one: refused as a whole before anything runs (one line), or,
    where the value is valid after all, the sweep finishes with a row for each point."""
    fixed = {k: v for k, v in base(key).items() if k not in ("plots", key)}
    good = {"seed": 1, "seeds": 2}.get(key, _toml(base(key).get(key, 1)))
    (workdir / "grid.toml").write_text(textwrap.dedent(f"""
        [sweep]
        name = "fuzz"
        figures = false
        [base]
        {chr(10).join(f"{k} = {_toml(v)}" for k, v in fixed.items())}
        [grid]
        {key} = [{good}, {value}]
    """).replace("\n        ", "\n"))
    before = snapshot(workdir)
    code = main(["sweep", "grid.toml", "--quiet"])
    captured = capsys.readouterr()
    if code == 2:
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
        assert snapshot(workdir) == before
        return
    assert code == 0, captured.err
    assert {k: v for k, v in snapshot(workdir).items() if k in before} == before
    runs = (workdir / "results" / "fuzz" / "runs.csv").read_text().splitlines()
    assert len(runs) == 3, runs
    assert value not in ("nan", "inf", "-inf")


def test_the_tables_cover_every_numeric_option():
    assert set(NUMERIC) == {"depth", "width", "input_dim", "in_channels", "image_size", "kernel_size", "branch_scale",
                            "slope", "seq_len", "vocab", "gain", "scale", "std", "bound", "value", "bias_std", "batch",
                            "seeds", "seed"}
    assert math.isnan(float(HOSTILE_TEXT[0])) and len(HOSTILE_TEXT) > 20 and len(HOSTILE_TOML) > 20


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
