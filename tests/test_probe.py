"""The probe (DESIGN section 1) against a direct computation, the checkpointed probe against the plain one, and what a
run records about its own cost (issue 5). Nothing here asserts on wall time."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import initprobe
from initprobe import activations, fused, models, probe, runner
from initprobe.config import RunConfig

# phi's backward node hands the probe dL/dh and dL/dx at once (tanh, relu, gelu); phi that is no single node on h gets
# a tensor hook on each (identity: x is h; softsign: a composite of abs, add and div)
ACTS = ["tanh", "relu", "gelu", "identity", "softsign", "sigmoid"]


# the C kernels of _fused.c (CPU float32/float64 where they are built) and the torch path (every other device)
PATHS = ["fused", "torch"]


@pytest.fixture(params=PATHS)
def path(request, device, monkeypatch):
    """Run the test on one path of the probe: INITPROBE_FUSED picks it (fused_available)."""
    if request.param == "fused" and not fused.available(device, torch.float32):
        pytest.skip("the C kernels are not built here, or the device is not the CPU")
    monkeypatch.setenv("INITPROBE_FUSED", "1" if request.param == "fused" else "0")
    return request.param


def cfg_for(device, arch, act, dtype, **kw) -> RunConfig:
    size = dict(depth=6, width=24, batch=10) if arch == "mlp" else dict(depth=4, width=5, batch=3, image_size=6)
    base = dict(arch=arch, act=act, dtype=dtype, init="glorot_normal", seeds=1, plots=False, device=device.type)
    return RunConfig(**{**base, **size, **kw})


def assert_close(got, want, rtol, atol, name):
    """assert_allclose with a per-element atol; nan matches nan."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    ok = np.isclose(got, want, rtol=rtol, atol=0, equal_nan=True) | (np.abs(got - want) <= atol)
    assert ok.all(), f"{name}: got {got[~ok]}, want {want[~ok]}"


def spread(frame_or_array, name, column):
    """Standard deviation to compare a mean column with (a mean near zero has no meaningful relative error)."""
    if not name.endswith("_mean"):
        return 0.0
    return np.sqrt(np.asarray(column(name.replace("mean", "var")), dtype=float))


def network(cfg, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    params = models.build(cfg, models.layer_seeds(cfg.depth, gen), device)
    x0 = models.make_input(cfg, cfg.batch, device, gen)
    cotangent = torch.randn(x0.shape[:1] + (cfg.width,) + x0.shape[2:], device=device, dtype=x0.dtype,
                            generator=gen)
    return params, x0, cotangent


def direct_columns(cfg, params, x0, cotangent) -> np.ndarray:
    """Every column of DESIGN section 1 the obvious way, in float64: retained tensors, torch.var_mean, a full Gram
    matrix for the pair correlation, and the activation's own numpy phi' for saturation."""
    act = activations.get(cfg.act)
    phi = activations.torch_fn(cfg.act, cfg.slope)
    threshold = activations.SATURATION_LEVEL * act.max_abs_dphi(cfg.slope)
    x, kept = x0, []
    for w, b in params:
        h = models.block(cfg, x, w, b)
        h.retain_grad()
        x = phi(h) if cfg.act != "identity" else h * 1.0  # a separate tensor, so both gradients are retained
        x.retain_grad()
        kept.append((w, h, x))
    x.backward(cotangent)
    rows = []
    for w, h, x in kept:
        h64, x64 = h.detach().double(), x.detach().double()
        pre_var, pre_mean = torch.var_mean(h64, correction=0)
        act_var, act_mean = torch.var_mean(x64, correction=0)
        unit = F.normalize(h64.reshape(h64.shape[0], -1), dim=1)
        gram = unit @ unit.T
        batch = gram.shape[0]
        corr = (gram.sum() - gram.diagonal().sum()) / (batch * (batch - 1)) if batch > 1 else torch.tensor(math.nan)
        dphi = act.dphi(h64.cpu().numpy(), cfg.slope)
        rows.append([pre_mean, pre_var, act_mean, act_var, h.grad.double().var(correction=0),
                     x.grad.double().var(correction=0), w.detach().double().var(correction=0),
                     w.grad.double().var(correction=0), float(np.mean(np.abs(dphi) < threshold)),
                     (x64 == 0).double().mean(), corr])
    return np.array([[float(v) for v in r] for r in rows])


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ACTS)
def test_probe_matches_a_direct_computation(device, arch, act, path):
    """float64, so the only differences are summation order: rtol 1e-9 leaves room for E[t^2] - E[t]^2 against
    var_mean's two-pass formula (a few hundred ulps where the variance is small against the mean)."""
    cfg = cfg_for(device, arch, act, "float64")
    params, x0, cotangent = network(cfg, device)
    phi = activations.torch_fn(cfg.act, cfg.slope)
    stats, _ = probe.probe(cfg, params, phi, x0, cotangent, activations.get(act).saturation(cfg.slope))
    got = probe.to_host([stats])[0]
    for w, _ in params:
        w.grad = None
    want = direct_columns(cfg, params, x0, cotangent)
    for j, name in enumerate(probe.COLUMNS):
        scale = spread(want, name, lambda var: want[:, probe.COLUMNS.index(var)])
        assert_close(got[:, j], want[:, j], 1e-9, 1e-9 * scale, name)


@pytest.mark.parametrize("act", ["tanh", "hardtanh"])
def test_counts_treat_nan_and_inf_as_the_original_definitions(device, act, path):
    """saturated: h beyond the live interval's edge, compared exactly (in float64) whatever float32 rounding does to
    the edge, so inf is saturated, nan is not, and hardtanh's h = +-1.0 (where it is flat) is; zero_frac counts exact
    zeros only (nan is nonzero, as in count_nonzero)."""
    cfg = cfg_for(device, "mlp", act, "float32", depth=1, width=4, batch=3)
    (w, b), = models.build(cfg, [0], device)
    sat = activations.get(act).saturation()
    hi = sat[1][1]
    values = torch.tensor([[0.0, math.nan, math.inf, -math.inf], [hi, -hi, 2 * hi, 0.5],
                           [1.0, -1.0, math.nextafter(hi, 0), math.nextafter(hi, 9)]], device=device)
    h = values.clone().requires_grad_()
    phi = activations.torch_fn(act)
    rec = probe.recorder(1, torch.float32, device, sat, phi)
    assert isinstance(rec, probe.FusedRecorder) == (path == "fused")
    rec.weight(0, w)
    rec.forward(0, h, phi(h))  # one exact zero (phi(0)); phi(nan) is nan
    n_weights = torch.tensor([16.0], device=device, dtype=rec.fwd.buf.dtype)
    cols = probe.to_host([rec.columns(3, values.numel(), n_weights)])[0][0]
    saturated = dict(zip(probe.COLUMNS, cols))["saturated_frac"] * values.numel()
    zeros = dict(zip(probe.COLUMNS, cols))["zero_frac"] * values.numel()
    assert saturated == pytest.approx(int((values.double().abs() > hi).sum()))
    assert saturated >= 3 + 2 * (act == "hardtanh")  # inf, -inf, 2 * hi; hardtanh also +-1.0
    assert zeros == pytest.approx(1)


def test_large_tensors_count_with_count_nonzero(device, monkeypatch):
    """Past 2^24 elements a float32 sum of a 0/1 mask could round; the probe counts with count_nonzero there. Same
    numbers either way (the threshold lowered so a small net takes that path)."""
    cfg = cfg_for(device, "mlp", "relu", "float32")
    params, x0, cotangent = network(cfg, device)
    phi, sat = activations.torch_fn("relu"), activations.get("relu").saturation()

    def run():
        stats, _ = probe.probe(cfg, params, phi, x0, cotangent, sat)
        return probe.to_host([stats])[0]

    exact = run()
    monkeypatch.setattr(probe, "EXACT_COUNT", 10)
    np.testing.assert_array_equal(run(), exact)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ACTS + ["selu", "sin"])
@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_fused_kernels_equal_the_torch_path(device, monkeypatch, arch, act, dtype, rtol):
    """The C kernels and the torch calls compute the same sums in another order (the kernels in double), so they
    agree to float32 rounding of a sum (float64: to a few ulps); counts agree exactly. Means near zero are held
    to their column's spread, the pair correlation (in [-1, 1], a difference of sums near the batch size)
    absolutely."""
    assert_fused_equals_torch(device, monkeypatch, cfg_for(device, arch, act, dtype, depth=8,
                                                           width=40 if arch == "mlp" else 6, batch=12), rtol)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_fused_kernels_equal_the_torch_path_on_every_thread(device, monkeypatch, arch, act, dtype, rtol):
    """Tensors past the kernels' grain (32768 elements), so that each of torch's threads takes a part, and a
    batch of 37: each thread's rows end in a group of fewer than four."""
    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: the kernels run on one thread")
    cfg = cfg_for(device, arch, act, dtype, depth=4, width=1000 if arch == "mlp" else 32, batch=37)
    assert_fused_equals_torch(device, monkeypatch, cfg, rtol)


def assert_fused_equals_torch(device, monkeypatch, cfg, rtol):
    if not fused.available(device, torch.float32):
        pytest.skip("the C kernels are not built here, or the device is not the CPU")
    act = cfg.act
    params, x0, cotangent = network(cfg, device)
    phi, sat = activations.torch_fn(act), activations.get(act).saturation()
    got = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("INITPROBE_FUSED", setting)
        stats, _ = probe.probe(cfg, params, phi, x0, cotangent, sat)
        got[setting] = probe.to_host([stats])[0]
    for j, name in enumerate(probe.COLUMNS):
        scale = 1.0 if name == "preact_corr" else spread(got["0"], name, lambda v: got["0"][:, probe.COLUMNS.index(v)])
        assert_close(got["1"][:, j], got["0"][:, j], rtol, rtol * scale, name)
    for name in ("saturated_frac", "zero_frac"):  # as counts: the torch path divides in float32
        j, n = probe.COLUMNS.index(name), cotangent.numel()
        np.testing.assert_array_equal(np.rint(got["1"][:, j] * n), np.rint(got["0"][:, j] * n), err_msg=name)


def test_fused_kernels_record_an_overflow_as_the_torch_path_does(device, monkeypatch):
    """A ReLU network scaled up until float32 overflows: non-finite statistics in the same places on both paths.
    Where a sum of squares overflows float32 but the sum does not, the kernels (blocks added in double) say inf
    and the torch path's E[t^2] - E[t]^2 says inf - inf = nan: both mark the layer non-finite."""
    if not fused.available(device, torch.float32):
        pytest.skip("the C kernels are not built here, or the device is not the CPU")
    cfg = cfg_for(device, "mlp", "relu", "float32", depth=12, width=32, batch=8)
    params, x0, cotangent = network(cfg, device)
    with torch.no_grad():
        for w, _ in params:
            w.mul_(1e4)
    phi, sat = activations.torch_fn("relu"), activations.get("relu").saturation()
    got = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("INITPROBE_FUSED", setting)
        got[setting] = probe.to_host([probe.probe(cfg, params, phi, x0, cotangent, sat)[0]])[0]
    finite = np.isfinite(got["0"])
    assert not finite.all()  # the network did overflow
    np.testing.assert_array_equal(np.isfinite(got["1"]), finite)
    np.testing.assert_allclose(got["1"][finite], got["0"][finite], rtol=2e-5)


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler: the kernels are optional")
def test_fused_kernels_are_built_where_there_is_a_c_compiler():
    """setup.py marks the extension optional, so a failed build would only show as a slower probe: fail here."""
    assert fused.built(), "initprobe._fused did not build; see the pip install output"


def test_rows_fill_in_any_order(device):
    """Rows stack consecutive rows in one go (up or down) and write anything else row by row."""
    rows = probe.Rows(7, 2, torch.float64, device, chunk=3)
    order = [6, 5, 4, 0, 2, 3, 1]  # down, then a chunk with a gap
    for r in order:
        rows.add(r, [torch.tensor(float(r), device=device, dtype=torch.float64),
                     torch.tensor(-float(r), device=device, dtype=torch.float64)])
    rows.flush()
    np.testing.assert_array_equal(rows.buf.cpu().numpy(), np.array([[r, -r] for r in range(7)], dtype=float))


# ------------------------------------------------------------------------------- checkpointed == plain (issue 5)


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-10)])
@pytest.mark.parametrize("act", ["relu", "tanh", "softsign", "gelu"])
def test_checkpointed_probe_equals_plain(device, act, dtype, rtol):
    """Both probes run the same float operations on the same numbers: weights are regenerated from the same per-layer
    seeds and W = Z + 0 is exact. On this CPU they agree bit for bit; the tolerance (~100 ulps of float32, ~1e6 of
    float64) only leaves room for a BLAS kernel picking another blocking for a recomputed segment on other hardware,
    amplified through 30 layers. Means near zero are compared against their column's spread instead."""
    cfg = RunConfig(act=act, dtype=dtype, depth=30, width=64, batch=16, seeds=2, plots=False, device=device.type)
    plain, plain_hist, _, _ = runner.measure(cfg, device, checkpointed=False)
    ckpt, ckpt_hist, _, _ = runner.measure(cfg, device, checkpointed=True)
    for name in probe.COLUMNS:
        assert_close(ckpt[name], plain[name], rtol, rtol * spread(plain, name, plain.__getitem__), name)
    np.testing.assert_allclose(ckpt_hist["count"], plain_hist["count"])
    np.testing.assert_allclose(ckpt_hist["bin_left"], plain_hist["bin_left"], rtol=rtol)


def test_checkpointed_cnn_equals_plain(device):
    cfg = RunConfig(arch="cnn", act="tanh", depth=12, width=6, batch=3, image_size=6, seeds=1, plots=False,
                    device=device.type, padding="circular")
    plain = runner.measure(cfg, device, checkpointed=False)[0]
    ckpt = runner.measure(cfg, device, checkpointed=True)[0]
    for name in probe.COLUMNS:
        assert_close(ckpt[name], plain[name], 1e-5, 1e-5 * spread(plain, name, plain.__getitem__), name)


# ------------------------------------------------------------------------------------------ cost of a run


@pytest.mark.parametrize("checkpoint", [False, True])
def test_summary_records_peak_memory_and_probe_time(device, tmp_path, checkpoint):
    cfg = RunConfig(act="tanh", depth=5, width=16, batch=8, seeds=2, plots=False, device=device.type,
                    checkpoint=checkpoint, out=str(tmp_path / "r"))
    initprobe.run(cfg, root=tmp_path)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert isinstance(summary["peak_memory_bytes"], int) and summary["peak_memory_bytes"] > 0
    timings = summary["timings"]
    assert isinstance(timings["probe_seconds"], float) and timings["probe_seconds"] >= 0
    assert timings["run_seconds"] >= timings["probe_seconds"]
    assert summary["checkpoint"]["used"] is checkpoint


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited maxrss is Linux's behaviour")
def test_peak_memory_is_the_programs_own_not_its_parents():
    """getrusage's maxrss survives fork + exec: a run started by a process holding 1 GiB would report >= 1 GiB.
    The child imports torch (a few hundred MiB) and reports its own peak, well under the parent's gigabyte."""
    held = b"\x01" * 2**30  # touched pages: resident in this process
    code = "import torch; from initprobe import devices; print(devices.peak_memory(torch.device('cpu')))"
    peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert len(held) == 2**30 and 50 * 2**20 < peak < 2**30 - 2**27, peak


# ------------------------------------------------------------------------------------------ the benchmark


def test_bench_overhead_row_compares_instrumented_with_bare(device, tmp_path):
    """The row's shape and that both passes ran on the same network; its value is a time ratio, so only its sign
    is asserted. The bare pass must leave no gradient behind (else the next instrumented pass would see it)."""
    from initprobe import bench

    options = dict(arch="mlp", depth=3, width=16, batch=4, act="tanh")
    result, flops = bench.overhead("tiny", options, 1.10, device, reps=1)
    assert set(result) == {"target", "value", "unit", "goal", "pass", "note"}
    assert result["target"] == "overhead tiny" and result["value"] > 0 and flops > 0
    assert result["pass"] == (result["value"] <= 1.10) and "bare" in result["note"]
    cfg = RunConfig(**options, device=device.type)
    params, x0, cotangent = bench._setup(cfg, device)
    bench.bare_pass(cfg, params, activations.torch_fn("tanh"), x0, cotangent)
    assert all(w.grad is None for w, _ in params)
    path = bench.write({"rows": [result]}, tmp_path / "b" / "bench.json")
    assert json.loads(path.read_text())["rows"][0]["target"] == "overhead tiny"


@pytest.mark.parametrize("arch, act", [("mlp", "tanh"), ("mlp", "gelu"), ("cnn", "relu")])
def test_probe_makes_no_host_sync_on_cuda(device, arch, act):
    """CUDA only (skipped elsewhere): torch raises on any synchronising call inside the probe, so every statistic
    stays on the device until the caller's one transfer."""
    if device.type != "cuda":
        pytest.skip("host synchronisation is a CUDA notion; run with TORCH_DEVICE=cuda")
    cfg = cfg_for(device, arch, act, "float32")
    params, x0, cotangent = network(cfg, device)
    phi, sat = activations.torch_fn(act), activations.get(act).saturation()
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats, _ = probe.probe(cfg, params, phi, x0, cotangent, sat)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert np.isfinite(probe.to_host([stats])[0]).all()
