"""Memory: what cannot fit is refused before anything is allocated or written, with one line that says what would fit;
the estimate (memory.py) is an upper bound of the memory a run has in use at its peak, on every path (plain,
checkpointed, LSUV, --jacobian, gelu/mish, bfloat16, circular padding, residual blocks and norms, `initprobe
theory`); a requested output (--jacobian) is never dropped by the automatic choice of the checkpointed probe."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from initprobe import devices, memory, runner
from initprobe.cli import main
from initprobe.config import ConfigError, RunConfig

from conftest import snapshot

GiB = 2**30
FREE = memory.Free(8 * GiB, 8 * GiB)  # a machine of 8 GiB free, whatever this one has


# ------------------------------------------------------------------------------------------ refused up front

HUGE = {  # the hostile sizes: each would take seconds to fail in an allocator, or exhaust the machine
    "width": ["--width", "100000000"],
    "batch": ["--batch", "1000000000"],
    "image-size": ["--arch", "cnn", "--image-size", "100000"],
    "deep-and-narrow": ["--depth", "100000000", "--width", "1"],
    "lsuv-batch": ["--init", "lsuv", "--batch", "300000", "--width", "1024", "--depth", "50"],
    "jacobian-deep": ["--jacobian", "--depth", "1000000", "--width", "4096", "--batch", "4"],
}


@pytest.mark.parametrize("case", HUGE)
def test_sizes_that_cannot_fit_are_one_line_and_exit_2_before_any_work(workdir, capsys, monkeypatch, case):
    def no_work(*args, **kwargs):
        raise AssertionError("probed a run that cannot fit")

    monkeypatch.setattr(runner, "measure", no_work)
    monkeypatch.setattr(devices, "free_memory", lambda device: FREE)
    before = snapshot(workdir)
    code = main(["run", "--seeds", "1", "--no-plots", *HUGE[case]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "would need about" in err and "8.0 GiB is free" in err
    assert "would fit" in err or "fits" in err, err
    assert snapshot(workdir) == before


SUGGESTION = re.compile(r"--([a-z-]+) (\d+)")


@pytest.mark.parametrize("case", ["width", "batch", "image-size", "deep-and-narrow", "lsuv-batch"])
def test_the_sizes_a_refusal_suggests_are_the_largest_that_fit(case):
    """Each '--key N' of the message fits (with the other options as given) and N + 1 does not."""
    values = dict(zip(HUGE[case][::2], HUGE[case][1::2]))
    cfg = RunConfig(seeds=1, plots=False, **{k[2:].replace("-", "_"): (int(v) if v.isdigit() else v)
                                             for k, v in values.items()})
    with pytest.raises(ConfigError) as refused:
        memory.plan(cfg, FREE)
    suggested = SUGGESTION.findall(str(refused.value).partition("at most")[2])
    assert suggested, str(refused.value)
    for key, n in suggested:
        field = key.replace("-", "_")
        memory.plan(dataclasses.replace(cfg, **{field: int(n)}), FREE)  # fits: no error
        with pytest.raises(ConfigError):
            memory.plan(dataclasses.replace(cfg, **{field: int(n) + 1}), FREE)


def test_lsuv_is_refused_saying_it_cannot_be_checkpointed():
    cfg = RunConfig(init="lsuv", batch=300000, width=1024, depth=50, seeds=1)
    with pytest.raises(ConfigError, match="cannot be checkpointed: lsuv rescales stored weights"):
        memory.plan(cfg, FREE)
    with pytest.raises(ConfigError, match="lsuv rescales stored weights, so it cannot run with --checkpoint"):
        memory.plan(dataclasses.replace(cfg, checkpoint=True), FREE)


def test_an_explicit_no_checkpoint_that_cannot_fit_says_checkpointing_would():
    cfg = RunConfig(depth=2000, width=1024, batch=1024, seeds=1, checkpoint=False)
    with pytest.raises(ConfigError, match="with --checkpoint it fits"):
        memory.plan(cfg, FREE)
    assert memory.plan(dataclasses.replace(cfg, checkpoint=None), FREE)[0] is True


def test_theory_of_an_absurd_depth_is_refused_at_once(workdir, capsys):
    before = snapshot(workdir)
    code = main(["theory", "--depth", "100000000"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "at most 100000 layers" in err, err
    assert snapshot(workdir) == before
    assert main(["theory", "--depth", "2000"]) == 0


def test_theory_refuses_a_depth_that_would_not_fit_in_memory():
    cfg = RunConfig(depth=50_000)
    free = memory.theory_bytes(cfg) - 1
    with pytest.raises(ConfigError, match=r"at most --depth \d+ would fit") as refused:
        memory.check_theory(cfg, free)
    depth = int(re.search(r"--depth (\d+)", str(refused.value)).group(1))
    memory.check_theory(dataclasses.replace(cfg, depth=depth), free)
    with pytest.raises(ConfigError):
        memory.check_theory(dataclasses.replace(cfg, depth=depth + 1), free)


# ------------------------------------------------------------------------------------------ --jacobian kept


def between_half_and_all(cfg) -> memory.Free:
    """Free memory in which the plain probe fits but takes more than half: the automatic choice would checkpoint."""
    n = memory.need(cfg, False).total(True)
    return memory.Free(n * 3 // 2, n * 3 // 2)


def test_jacobian_is_computed_where_the_automatic_choice_would_checkpoint(workdir, monkeypatch):
    cfg = RunConfig(depth=6, width=32, batch=16, seeds=1, plots=False, jacobian=True, device="cpu")
    free = between_half_and_all(cfg)
    assert memory.plan(dataclasses.replace(cfg, jacobian=False), free)[0] is True  # would checkpoint without it
    monkeypatch.setattr(devices, "free_memory", lambda device: free)
    result = runner.run(cfg, root=workdir / "results")
    assert result.summary["checkpoint"]["used"] is False and "jacobian" in result.summary
    assert (result.path / "jacobian.csv").is_file()


def test_jacobian_that_fits_only_checkpointed_is_refused_not_dropped():
    cfg = RunConfig(depth=200, width=1024, batch=4096, seeds=1, jacobian=True)
    free = memory.Free(memory.need(cfg, False).total(True) - 1, memory.need(cfg, False).total(True) - 1)
    with pytest.raises(ConfigError, match="cannot be checkpointed: --jacobian needs the whole network") as refused:
        memory.plan(cfg, free)
    assert "without --jacobian the checkpointed probe fits" in str(refused.value)


# ------------------------------------------------------------------------------------------ an upper bound

PEAK = """
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from initprobe import checks, config, devices, memory, predict, runner

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

cfg = config.RunConfig(**json.loads(sys.argv[1]))
checks.validate(cfg)
before = rss()
if sys.argv[2] == "theory":
    estimate = memory.theory_bytes(cfg)
    predict.for_config(cfg)
else:
    estimate = memory.need(cfg, bool(cfg.checkpoint)).total(True)
    runner.run(cfg, root=Path(sys.argv[3]))
print(json.dumps({"estimate": estimate, "growth": devices.peak_memory(torch.device("cpu")) - before}))
"""

# Each large enough that its tensors, not the libraries' fixed cost, dominate the estimate.
BOUNDED = {
    "plain tanh": dict(depth=20, width=1024, batch=2048),
    "gelu": dict(depth=20, width=1024, batch=2048, act="gelu"),
    "mish, two seeds": dict(depth=20, width=1024, batch=2048, act="mish", seeds=2),
    "bfloat16 gelu": dict(depth=20, width=1024, batch=2048, act="gelu", dtype="bfloat16"),
    "circular cnn, 64 input channels": dict(arch="cnn", padding="circular", depth=8, width=64, batch=64,
                                            image_size=32, in_channels=64),
    "circular cnn, bfloat16 mish": dict(arch="cnn", padding="circular", depth=8, width=64, batch=64, image_size=32,
                                        act="mish", dtype="bfloat16"),
    "lsuv": dict(depth=20, width=1024, batch=2048, init="lsuv"),
    "jacobian": dict(depth=10, width=2048, batch=16, jacobian=True, act="mish"),
    "checkpointed": dict(depth=100, width=1024, batch=1024, checkpoint=True),
    "checkpointed gelu": dict(depth=100, width=1024, batch=1024, checkpoint=True, act="gelu"),
    "checkpointed bfloat16": dict(depth=100, width=1024, batch=1024, checkpoint=True, dtype="bfloat16"),
    "deep and narrow": dict(depth=50000, width=2, batch=2, seeds=2),
    "residual, batch norm": dict(depth=20, width=1024, batch=2048, block="residual", norm="batch"),
    "layer norm, gelu": dict(depth=20, width=1024, batch=2048, norm="layer", act="gelu"),
    "checkpointed residual, batch norm": dict(depth=100, width=1024, batch=1024, block="residual", norm="batch",
                                              checkpoint=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", [*BOUNDED, "theory"])
def test_the_estimate_bounds_the_memory_a_run_uses(tmp_path, case):
    """In a fresh process, the growth of the peak resident set over what torch and initprobe's imports took is at
    most the estimate. glibc is told to return every freed block of 128 KiB or more to the system at once
    (MALLOC_MMAP_THRESHOLD_), so the resident set is the memory in use: by default glibc keeps freed blocks of up
    to 32 MiB for reuse, a retention the estimate does not count (devices.release_free_memory gives it back between
    seeds and checkpointed segments). The estimate must also be of use, not just large: the growth is at least a
    quarter of it."""
    cfg = {"seeds": 1, "plots": False, "device": "cpu", **BOUNDED.get(case, {"depth": 100_000})}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10), "OMP_NUM_THREADS": "1"}
    kind = "theory" if case == "theory" else "run"
    proc = subprocess.run([sys.executable, "-c", PEAK, json.dumps(cfg), kind, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.splitlines()[-1])
    assert measured["growth"] <= measured["estimate"], measured
    assert measured["growth"] >= measured["estimate"] / 4, measured


def test_a_model_whose_input_batch_alone_cannot_fit_is_refused(workdir, capsys, monkeypatch):
    """A --model's own memory is not estimated (it is the user's), but an input batch that alone exceeds the free
    memory is refused before the model is built or anything written."""
    (workdir / "tiny_model.py").write_text("from torch import nn\n\ndef make():\n    return nn.Linear(4, 4)\n")
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.setattr(devices, "free_memory", lambda device: FREE)
    before = snapshot(workdir)
    code = main(["run", "--model", "tiny_model:make", "--input-shape", "100000,100000", "--batch", "1000",
                 "--seeds", "1", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "input batch alone" in err and "8.0 GiB is free" in err, err
    assert snapshot(workdir) == before
