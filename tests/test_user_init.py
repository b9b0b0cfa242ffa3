"""A user's init (`--init package.module:function`) under hostile conditions: whatever it raises (SystemExit and
KeyboardInterrupt included) or returns that is not a weight is one line naming the init, exit 2, nothing written;
in a sweep, that run's failure while the sweep goes on. An interrupt that really comes from outside still stops
the run. An init that draws from the global generators instead of its `generator=` is reproducible, and the
checkpointed probe's recompute gets the weights the forward pass had (or the run says it cannot be so)."""

import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from initprobe import inits, runner
from initprobe.cli import main
from initprobe.config import RunConfig

from conftest import snapshot

TINY = ["--depth", "3", "--width", "8", "--batch", "4", "--seeds", "1", "--no-plots"]

SOURCE = """
import os, signal, sys, time
import numpy as np
import torch

COUNT = [0]

class Escape(BaseException):
    pass

def exits(w):
    raise SystemExit(0)

def exits_via_sys(w, generator=None):
    sys.exit(3)

def interrupts(w):
    raise KeyboardInterrupt

def escapes(w):
    raise Escape("not an Exception")

def raises(w):
    raise RuntimeError("boom")

def wrong_shape(w):
    return torch.zeros(3, 3)

def a_list(w):
    return [1.0]

def no_tensor():
    return None

def scalar(w):
    return torch.tensor(0.5)

def broadcasts(w):
    return torch.ones(w.shape[-1])

def resizes(w):
    w.resize_(2)

def global_torch(w):
    return w.normal_(0.0, w.shape[1] ** -0.5)

def global_numpy(w):
    draws = np.random.standard_normal(tuple(w.shape)) / np.sqrt(w.shape[1])
    return w.copy_(torch.from_numpy(draws))

def stateful(w):
    COUNT[0] += 1
    return w.normal_(0.0, w.shape[1] ** -0.5, generator=torch.Generator().manual_seed(COUNT[0]))

def signals_itself(w):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
    return w
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of hostile inits on sys.path (a new name per test: inits caches a user's function by name), and one
    whose import exits."""
    name = f"hostile_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(SOURCE))
    (tmp_path / f"{name}_exits.py").write_text("raise SystemExit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "earlier").mkdir(parents=True)
    (tmp_path / "results" / "earlier" / "layers.csv").write_text("seed,layer\n0,1\n")
    yield name
    for module in (name, f"{name}_exits"):
        sys.modules.pop(module, None)


def call(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


FAILING = {  # function: what its one line must say
    "exits": "SystemExit: 0",
    "exits_via_sys": "SystemExit: 3",
    "interrupts": "KeyboardInterrupt",
    "escapes": "Escape: not an Exception",
    "raises": "RuntimeError: boom",
    "wrong_shape": "returned a tensor of shape [3, 3], expected [8, 8]",
    "a_list": "returned list",
    "no_tensor": "must take the weight tensor",
    "scalar": "returned a tensor of shape [], expected [8, 8]",
    "broadcasts": "returned a tensor of shape [8], expected [8, 8]",
    "resizes": "changed the weight's shape from [8, 8] to [2]",
}


@pytest.mark.parametrize("fn", FAILING)
def test_a_failing_init_is_one_line_and_exit_2(user_module, capsys, fn):
    before = snapshot(Path.cwd())
    code, out, err = call(capsys, ["run", "--init", f"{user_module}:{fn}", *TINY])
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert f"{user_module}:{fn}" in err and FAILING[fn] in err, err
    assert out == ""
    assert snapshot(Path.cwd()) == before


def test_a_module_that_exits_on_import_is_one_line_and_exit_2(user_module, capsys):
    code, out, err = call(capsys, ["run", "--init", f"{user_module}_exits:fn", *TINY])
    assert code == 2
    assert err.count("\n") == 1 and f"cannot import init '{user_module}_exits:fn': SystemExit: 0" in err, err


def test_an_interrupt_from_outside_during_an_init_stops_the_run(user_module, capsys):
    """SIGINT arriving while the user's code runs is the user's Ctrl-C, not the init's error: exit 130, nothing
    written. SIGINT gets Python's own handler here, as in a fresh `initprobe` process, whatever an earlier test in
    this process left installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = snapshot(Path.cwd())
        code, _, err = call(capsys, ["run", "--init", f"{user_module}:signals_itself", *TINY])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and "interrupted" in err
    assert snapshot(Path.cwd()) == before


def sweep_file(path, module, backend):
    path.write_text(textwrap.dedent(f"""
        [sweep]
        name = "hostile"
        backend = "{backend}"
        workers = 2
        figures = false
        [base]
        depth = 3
        width = 8
        batch = 4
        seeds = 1
        [grid]
        init = ["{module}:exits", "glorot_uniform", "{module}:interrupts", "{module}:wrong_shape",
                "{module}:exits_via_sys"]
    """))
    return path


def check_sweep(module):
    runs = pd.read_csv("results/hostile/runs.csv").set_index("init")
    assert len(runs) == 5
    assert runs.loc["glorot_uniform", "status"] == "ok"
    for fn in ("exits", "interrupts", "wrong_shape", "exits_via_sys"):
        row = runs.loc[f"{module}:{fn}"]
        assert row["status"] == "failed" and FAILING[fn] in row["error"], row["error"]
    layers = pd.read_csv("results/hostile/layers.csv")
    assert set(layers["init"]) == {"glorot_uniform"} and len(layers) == 3


def test_a_sweep_records_each_failing_init_and_goes_on(user_module, capsys, tmp_path):
    code, _, err = call(capsys, ["sweep", str(sweep_file(tmp_path / "s.toml", user_module, "local")), "--quiet"])
    assert code == 0, err
    check_sweep(user_module)


@pytest.mark.slow
def test_a_process_sweep_records_each_failing_init_and_goes_on(user_module, capsys, tmp_path):
    code, _, err = call(capsys, ["sweep", str(sweep_file(tmp_path / "s.toml", user_module, "process")), "--quiet"])
    assert code == 0, err
    check_sweep(user_module)


# ------------------------------------------------------------------------------------------ reproducible weights


def cfg(init, **kw):
    return RunConfig(init=init, depth=6, width=16, batch=8, seeds=2, plots=False, device="cpu", **kw)


@pytest.mark.parametrize("fn", ["global_torch", "global_numpy"])
def test_an_init_ignoring_its_generator_is_reproducible(user_module, fn):
    """The same seed gives the same numbers, another seed others, and the caller's global generators are as
    they were (seeded per layer around the init, restored after)."""
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    first = runner.measure(cfg(f"{user_module}:{fn}"), torch.device("cpu"))[0]
    second = runner.measure(cfg(f"{user_module}:{fn}"), torch.device("cpu"))[0]
    other = runner.measure(cfg(f"{user_module}:{fn}", seed=7), torch.device("cpu"))[0]
    pd.testing.assert_frame_equal(first, second)
    assert not np.allclose(first["weight_var"], other["weight_var"])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


@pytest.mark.parametrize("fn", ["global_torch", "global_numpy"])
def test_checkpointed_recompute_gets_the_weights_of_the_forward_pass(user_module, fn):
    """The checkpointed probe makes each layer twice; an init drawing from the global generators gets the same
    seed both times, so both probes measure one network: equal weights (weight_var exactly) and equal statistics up
    to BLAS choosing another blocking for a recomputed segment (test_probe's tolerance: about 100 float32 ulps
    through the layers; a mean near zero against its column's spread)."""
    device = torch.device("cpu")
    plain = runner.measure(cfg(f"{user_module}:{fn}"), device, checkpointed=False)[0]
    ckpt = runner.measure(cfg(f"{user_module}:{fn}"), device, checkpointed=True)[0]
    np.testing.assert_array_equal(ckpt["weight_var"], plain["weight_var"])
    for name in ("preact_var", "act_var", "grad_preact_var", "grad_act_var", "weight_grad_var", "preact_mean"):
        spread = float(np.std(plain[name])) or 1.0
        np.testing.assert_allclose(ckpt[name], plain[name], rtol=1e-5, atol=1e-5 * spread, err_msg=name)


def test_an_init_that_is_no_function_of_its_seed_cannot_be_checkpointed(user_module, capsys):
    """An init with state of its own gives the recompute other weights: the run refuses to mix two networks."""
    code, _, err = call(capsys, ["run", "--init", f"{user_module}:stateful", "--checkpoint", *TINY])
    assert code == 2
    assert err.count("\n") == 1 and "gave a layer other weights" in err and f"{user_module}:stateful" in err
    code, _, err = call(capsys, ["run", "--init", f"{user_module}:stateful", "--no-checkpoint", "--quiet", *TINY])
    assert code == 0, err


def test_an_interrupt_handler_is_restored_after_the_init(user_module):
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(Exception, match="RuntimeError: boom"):
        inits.get(f"{user_module}:raises").fn(torch.empty(4, 4))
    assert signal.getsignal(signal.SIGINT) is handler
