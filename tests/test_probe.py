"""The probe's per-layer statistics (probe.COLUMNS) against a direct computation, the C kernels against the torch
path (also built without OpenMP) and behind their boundary checks, the checkpointed probe against the plain one,
and what a run records about its own cost. Nothing here asserts on wall time."""

import importlib.machinery
import importlib.util
import json
import math
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import initprobe
from initprobe import activations, config, fused, models, probe, runner
from initprobe.config import RunConfig

# phi's backward node hands the probe dL/dh and dL/dx at once (tanh, relu, gelu); phi that is no single node on h gets
# a tensor hook on each (identity: x is h; softsign: a composite of abs, add and div)
ACTS = ["tanh", "relu", "gelu", "identity", "softsign", "sigmoid"]


# the C kernels of _fused.c (CPU float32/float64 where they are built) and the torch path (every other device)
PATHS = ["fused", "torch"]
# the CNN and float64 cases of the comparisons run in the full suite only (make test-fast: MLPs in float32)
CNN = pytest.param("cnn", marks=pytest.mark.slow)


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
    """Standard deviation to compare a signed mean column with (preact_mean, act_mean: a mean near zero has no
    meaningful relative error); for chan_sq_mean, a squared mean, E[x^2] = chan_sq_mean + chan_var (a norm centres
    every channel: its squared mean is rounding of the size eps E[x^2]); 0 for the other columns."""
    if name == "chan_sq_mean":
        return np.asarray(column("chan_sq_mean"), dtype=float) + np.asarray(column("chan_var"), dtype=float)
    var = name[: -len("_mean")] + "_var" if name.endswith("_mean") else None
    if var not in probe.COLUMNS:
        return 0.0
    return np.sqrt(np.asarray(column(var), dtype=float))


def network(cfg, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    params = models.build(cfg, models.layer_seeds(cfg.depth, gen), device)
    x0 = models.make_input(cfg, cfg.batch, device, gen)
    cotangent = torch.randn(x0.shape[:1] + (cfg.width,) + x0.shape[2:], device=device, dtype=x0.dtype,
                            generator=gen)
    return params, x0, cotangent


NORMS = {"none": None, "batch": lambda t: F.batch_norm(t, None, None, training=True, eps=1e-5),
         "layer": lambda t: F.layer_norm(t, t.shape[1:], eps=1e-5)}


def direct_forward(cfg, params, x0):
    """The network written out here (not with models.Net): per layer (w, h, x, branch), every tensor retaining its
    gradient. Plain: h = N(W x + b), x = phi(h); residual: the stem x^1 = W x^0 + b (h is x), then h = N(x) (a copy
    without a norm), branch = alpha (W phi(h) + b), x = x + branch."""
    phi = activations.torch_fn(cfg.act, cfg.slope)
    norm, alpha = NORMS[cfg.norm], config.branch_alpha(cfg)
    x, kept = x0, []
    for l, (w, b) in enumerate(params):
        branch = None
        if cfg.block == "residual" and l == 0:
            x = h = models.block(cfg, x, w, b)
        elif cfg.block == "residual":
            h = norm(x) if norm else x.clone()
            branch = alpha * models.block(cfg, phi(h), w, b)
            branch.retain_grad()
            x = x + branch
        else:
            a = models.block(cfg, x, w, b)
            h = norm(a) if norm else a
            x = phi(h) if cfg.act != "identity" else h * 1.0  # a separate tensor, so both gradients are retained
        h.retain_grad()
        x.retain_grad()
        kept.append((w, h, x, branch))
    return x, kept


def channel_direct(t: torch.Tensor) -> tuple[float, float]:
    """(mean over channels of the squared channel mean, of the channel variance), channels dim 1, in float64."""
    per_channel = t.double().transpose(0, 1).reshape(t.shape[1], -1)
    var, mean = torch.var_mean(per_channel, dim=1, correction=0)
    return float(mean.square().mean()), float(var.mean())


def direct_columns(cfg, params, x0, cotangent) -> np.ndarray:
    """Every column of probe.COLUMNS the obvious way, in float64: retained tensors, torch.var_mean, a full Gram
    matrix for the pair correlation, and the activation's own numpy phi' for saturation."""
    act = activations.get(cfg.act)
    threshold = activations.SATURATION_LEVEL * act.max_abs_dphi(cfg.slope)
    x, kept = direct_forward(cfg, params, x0)
    x.backward(cotangent)
    rows = []
    for l, (w, h, x, branch) in enumerate(kept):
        h64, x64 = h.detach().double(), x.detach().double()
        pre_var, pre_mean = torch.var_mean(h64, correction=0)
        act_var, act_mean = torch.var_mean(x64, correction=0)
        unit = F.normalize(h64.reshape(h64.shape[0], -1), dim=1)
        gram = unit @ unit.T
        batch = gram.shape[0]
        corr = (gram.sum() - gram.diagonal().sum()) / (batch * (batch - 1)) if batch > 1 else torch.tensor(math.nan)
        dphi = act.dphi(h64.cpu().numpy(), cfg.slope)
        stem = cfg.block == "residual" and l == 0
        w64 = w.detach().double()
        chan_sq_mean, chan_var = channel_direct(x64)
        row = {"preact_mean": pre_mean, "preact_var": pre_var, "act_mean": act_mean, "act_var": act_var,
               "grad_preact_var": h.grad.double().var(correction=0), "grad_act_var": x.grad.double().var(correction=0),
               "weight_var": w64.var(correction=0), "weight_sq_mean": w64.pow(2).mean(),
               "weight_grad_var": w.grad.double().var(correction=0),
               "saturated_frac": math.nan if stem else float(np.mean(np.abs(dphi) < threshold)),
               "zero_frac": (x64 == 0).double().mean(), "preact_corr": corr, "chan_sq_mean": chan_sq_mean,
               "chan_var": chan_var,
               "branch_var": math.nan if branch is None else branch.detach().double().var(correction=0)}
        missing = [name for name in probe.COLUMNS if name not in row]
        assert not missing, f"no direct computation of {missing}: add one here"
        rows.append([float(row[name]) for name in probe.COLUMNS])
    return np.array(rows)


@pytest.mark.parametrize("arch", ["mlp", CNN])
@pytest.mark.parametrize("act", ACTS)
def test_probe_matches_a_direct_computation(device, arch, act, path):
    """float64, so the only differences are summation order: rtol 1e-9 leaves room for E[t^2] - E[t]^2 against
    var_mean's two-pass formula (a few hundred ulps where the variance is small against the mean)."""
    assert_probe_matches_direct(cfg_for(device, arch, act, "float64"))


# residual and normalized networks: every block and norm, a branch scale other than 1, and SkipInit's exact zeros
ARCHITECTURES = {"plain-batch": dict(norm="batch"), "plain-layer": dict(norm="layer"),
                 "residual": dict(block="residual", branch_scale=0.7),
                 "residual-batch": dict(block="residual", norm="batch"),
                 "residual-layer-skipinit": dict(block="residual", norm="layer", branch_scale=0.0),
                 "residual-inv-sqrt-depth": dict(block="residual", norm="batch", branch_scale="inv_sqrt_depth")}


@pytest.mark.parametrize("arch", ["mlp", CNN])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("act", ["tanh", "relu", "identity"])
def test_residual_and_normalized_probes_match_a_direct_computation(device, arch, architecture, act, path):
    """The same columns for every block and norm, held to the network written out in the test (direct_forward):
    branch_var is the variance of alpha (W phi(h) + b) itself, 0 for alpha = 0; the stem has no saturation."""
    cfg = cfg_for(device, arch, act, "float64", **ARCHITECTURES[architecture])
    got = assert_probe_matches_direct(cfg)
    branch = got[:, probe.COLUMNS.index("branch_var")]
    if cfg.block == "residual":
        assert np.isnan(branch[0]) and np.isnan(got[0, probe.COLUMNS.index("saturated_frac")])
        assert np.all(branch[1:] == 0) if cfg.branch_scale == 0 else np.all(branch[1:] > 0)
    else:
        assert np.isnan(branch).all()


@pytest.mark.parametrize("arch", ["mlp", CNN])
@pytest.mark.parametrize("architecture", ["plain", "plain-batch", "residual", "residual-layer-skipinit"])
def test_channel_statistics_add_up_to_the_second_moment(device, arch, architecture, path):
    """chan_var + chan_sq_mean = act_var + act_mean^2: with equal channel sizes both are E[(x^l)^2], so the probe's
    columns, however it sums them, agree to float64 rounding (relative 1e-12, a few hundred ulps over the sums)."""
    cfg = cfg_for(device, arch, "relu", "float64", **ARCHITECTURES.get(architecture, {}))
    params, x0, cotangent = network(cfg, device)
    stats_, _ = probe.probe(cfg, params, activations.torch_fn(cfg.act), x0, cotangent,
                            activations.get(cfg.act).saturation(cfg.slope))
    got = dict(zip(probe.COLUMNS, probe.to_host([stats_])[0].T))
    np.testing.assert_allclose(got["chan_var"] + got["chan_sq_mean"], got["act_var"] + got["act_mean"] ** 2,
                               rtol=1e-12)


def assert_probe_matches_direct(cfg) -> np.ndarray:
    """The probe's columns of cfg's network (float64) against direct_columns; returns the probe's."""
    device = torch.device(cfg.device)
    params, x0, cotangent = network(cfg, device)
    phi = activations.torch_fn(cfg.act, cfg.slope)
    stats, _ = probe.probe(cfg, params, phi, x0, cotangent, activations.get(cfg.act).saturation(cfg.slope))
    got = probe.to_host([stats])[0]
    for w, _ in params:
        w.grad = None
    want = direct_columns(cfg, params, x0, cotangent)
    for j, name in enumerate(probe.COLUMNS):
        scale = spread(want, name, lambda var: want[:, probe.COLUMNS.index(var)])
        assert_close(got[:, j], want[:, j], 1e-9, 1e-9 * scale, name)
    return got


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


@pytest.mark.parametrize("arch", ["mlp", CNN])
@pytest.mark.parametrize("act", ACTS + ["selu", "sin"])
@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-5), pytest.param("float64", 1e-12, marks=pytest.mark.slow)])
def test_fused_kernels_equal_the_torch_path(device, monkeypatch, arch, act, dtype, rtol):
    """The C kernels and the torch calls compute the same sums in another order (the kernels in double), so they
    agree to float32 rounding of a sum (float64: to a few ulps); counts agree exactly. Means near zero are held
    to their column's spread, the pair correlation (in [-1, 1], a difference of sums near the batch size)
    absolutely."""
    assert_fused_equals_torch(device, monkeypatch, cfg_for(device, arch, act, dtype, depth=8,
                                                           width=40 if arch == "mlp" else 6, batch=12), rtol)


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------------ the C kernels


def compile_fused(target: Path) -> Path | None:
    """_fused.c built into `target` as setup.py builds it where the compiler has no OpenMP (sysconfig's compiler,
    Python's headers, -O3, -shared -fPIC, no -fopenmp); None where that does not compile (no compiler, no Python
    headers)."""
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    if not shutil.which(cc[0]):
        return None
    name = "_fused" + sysconfig.get_config_var("EXT_SUFFIX")
    out = target / name
    includes = {sysconfig.get_paths()["include"], sysconfig.get_paths()["platinclude"]}
    command = [*cc, "-O3", "-shared", "-fPIC", *(f"-I{d}" for d in sorted(includes)),
               str(Path(fused.__file__).with_name("_fused.c")), "-o", str(out), "-lm"]
    done = subprocess.run(command, capture_output=True, text=True)
    return out if done.returncode == 0 else None


def load_extension(path: Path):
    """The extension at `path` as a module of its own: named _fused (its init function is PyInit__fused), not
    registered in sys.modules, so it sits beside the installed initprobe._fused."""
    loader = importlib.machinery.ExtensionFileLoader("_fused", str(path))
    spec = importlib.util.spec_from_file_location("_fused", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def serial_kernels(tmp_path_factory):
    """_fused.c compiled without OpenMP, as setup.py builds it where the compiler lacks OpenMP; skip where it does
    not compile at all."""
    path = compile_fused(tmp_path_factory.mktemp("fused"))
    if path is None:
        pytest.skip("_fused.c does not compile here (no C compiler or no Python headers): the kernels are optional")
    return load_extension(path)


@pytest.mark.slow
def test_fused_kernels_are_built_where_they_compile(serial_kernels):
    """setup.py marks the extension optional, so a failed build would only show as a slower probe: where _fused.c
    compiles (at least without OpenMP, setup.py's fallback), the installed package must have it."""
    assert fused.built(), "initprobe._fused did not build although _fused.c compiles here; see the pip install output"


def kernel_sums(kernels, h, x, lo, hi, grads):
    """(layer()'s values: fused.LAYER_VALUES of them, the channel statistics last; moments()'s four) from `kernels` (a
    _fused module), called through fused.py."""
    layer_out = torch.zeros(1, fused.LAYER_VALUES, dtype=torch.float64)
    moments_out = torch.zeros(1, 4, dtype=torch.float64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "_fused", kernels)
        fused.layer(fused.Output(layer_out), 0, h, x, lo, hi)
        fused.moments(fused.Output(moments_out), 0, *grads)
    return layer_out[0].numpy(), moments_out[0].numpy()


def direct_sums(h, x, lo, hi, grads):
    """What _fused.c says layer() and moments() write, computed in float64 by torch; h is compared with the bounds
    in its own dtype, as the kernel compares."""
    lo_t, hi_t = torch.tensor(lo, dtype=h.dtype), torch.tensor(hi, dtype=h.dtype)
    h64, x64 = h.double().reshape(h.shape[0], -1), x.double()
    unit = F.normalize(h64, dim=1).sum(dim=0)
    var, mean = torch.var_mean(x64, dim=0, correction=0)  # each channel (column) over the batch
    layer = [h64.sum(), h64.pow(2).sum(), unit.pow(2).sum(), ((h < lo_t) | (h > hi_t)).sum(), x64.sum(),
             (x64 - x64.mean()).pow(2).sum(), (x64 != 0).sum(), mean.square().mean(), var.mean()]
    moments = [v for g in grads for v in (g.double().sum(), g.double().pow(2).sum())]
    return np.array([float(v) for v in layer]), np.array([float(v) for v in moments])


@pytest.mark.slow
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_kernels_compiled_without_openmp_give_the_same_sums(serial_kernels, dtype, rtol):
    """A batch of 37 x 1000 (past the kernels' grain, so that the OpenMP build splits it across threads and the
    serial build does not; 37 rows: groups of four and a remainder), a sigmoid's output with exact zeros (mean
    about 0.4: its deviations are taken about a shift) and two gradients of one size. The serial build's sums
    equal a float64 computation, and the installed build's, to float32 rounding of a sum (float64: a few ulps);
    counts exactly."""
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(37, 1000, generator=gen, dtype=dtype) * 3
    x = torch.sigmoid(h)
    x[:, 1::5] = 0
    grads = [torch.randn(37, 1000, generator=gen, dtype=dtype) for _ in range(2)]
    lo, hi = activations.get("sigmoid").saturation()[1]
    want_layer, want_moments = direct_sums(h, x, lo, hi, grads)
    assert 0 < want_layer[3] < h.numel() and 0 < want_layer[6] < x.numel()  # some, not all, saturated; some zeros
    built = {"serial": serial_kernels, **({"installed": fused._fused} if fused.built() else {})}
    # what rounding scales with: sums of magnitudes, the row count for the pairs' squared norm, none for counts
    h64, x64 = h.double(), x.double()
    second = float(x64.pow(2).mean())  # the channel statistics' sums are of squares, each at most E[x^2]
    scale_layer = np.array([float(h64.abs().sum()), float(h64.pow(2).sum()), 37.0, 0.0, float(x64.abs().sum()),
                            float((x64 - x64.mean()).pow(2).sum()), 0.0, second, second])
    scale_moments = np.array([float(v) for g in grads for v in (g.double().abs().sum(), g.double().pow(2).sum())])
    for name, kernels in built.items():
        got_layer, got_moments = kernel_sums(kernels, h, x, lo, hi, grads)
        assert np.all(np.abs(got_layer - want_layer) <= rtol * scale_layer), (name, got_layer, want_layer)
        assert np.all(np.abs(got_moments - want_moments) <= rtol * scale_moments), (name, got_moments, want_moments)


@pytest.fixture
def kernels(request):
    """The installed kernels, else the serial build of _fused.c (skipped where that does not compile)."""
    return fused._fused if fused.built() else request.getfixturevalue("serial_kernels")


def test_kernels_read_strided_tensors_as_their_contiguous_copies(kernels):
    """A transposed or sliced tensor is copied to contiguous memory before the kernels read it: the same numbers as
    the contiguous tensor itself, never the strided memory read as if it were contiguous."""
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(64, 20, generator=gen).t()  # (20, 64), column-major
    x = torch.tanh(torch.randn(20, 128, generator=gen))[:, ::2]  # (20, 64), every other element
    grads = [torch.randn(20, 64, generator=gen).t(), torch.randn(40, 64, generator=gen)[::2]]
    assert not (h.is_contiguous() or x.is_contiguous() or any(g.is_contiguous() for g in grads))
    strided = kernel_sums(kernels, h, x, -2.0, 2.0, grads)
    contiguous = kernel_sums(kernels, h.contiguous(), x.contiguous(), -2.0, 2.0, [g.contiguous() for g in grads])
    for got, want in zip(strided, contiguous):
        np.testing.assert_array_equal(got, want)


class NoKernels:
    """Stands in for _fused: any kernel call fails the test."""

    def layer(self, *args):
        raise AssertionError("a kernel was called")

    moments = layer


def refused(error, call, match):
    """`call` raises `error` matching `match`, before any kernel is called."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "_fused", NoKernels())
        with pytest.raises(error, match=match):
            call()


def test_fused_boundary_refuses_what_the_kernels_cannot_read():
    """Everything the kernels would read wrongly (or outside memory) is refused by fused.py with an error that says
    what is wrong: the output buffer, the row and its width, the dtypes, devices and sizes of the inputs."""
    out = fused.Output(torch.zeros(3, fused.LAYER_VALUES, dtype=torch.float64))
    h = torch.randn(4, 5)
    x = torch.tanh(h)
    # the output buffer: float64, 2-D, contiguous, on the CPU
    refused(ValueError, lambda: fused.Output(torch.zeros(3, 7)), "float64")
    refused(ValueError, lambda: fused.Output(torch.zeros(7, 3, dtype=torch.float64).t()), "contiguous")
    refused(ValueError, lambda: fused.Output(torch.zeros(7, dtype=torch.float64)), "2-D")
    # the row: inside the buffer, wide enough for the values written
    refused(IndexError, lambda: fused.layer(out, 3, h, x, -1.0, 1.0), "row 3")
    refused(IndexError, lambda: fused.layer(out, -1, h, x, -1.0, 1.0), "row -1")
    narrow = fused.Output(torch.zeros(3, 3, dtype=torch.float64))
    refused(IndexError, lambda: fused.moments(narrow, 0, h, x), "4 values")
    # dtypes: float32 or float64, one for all
    refused(ValueError, lambda: fused.layer(out, 0, h, x.double(), -1.0, 1.0), "one dtype")
    refused(ValueError, lambda: fused.layer(out, 0, h.half(), x.half(), -1.0, 1.0), "float32/float64")
    refused(ValueError, lambda: fused.moments(out, 0, h.to(torch.int32)), "float32/float64")
    refused(ValueError, lambda: fused.moments(out, 0, h.to(torch.bfloat16)), "float32/float64")
    # devices: the CPU's memory only (a tensor on the meta device has none)
    refused(ValueError, lambda: fused.moments(out, 0, torch.empty(4, 5, device="meta")), "CPU")
    refused(ValueError, lambda: fused.layer(out, 0, h, torch.empty(4, 5, device="meta"), -1.0, 1.0), "CPU")
    # sizes: one for the tensors read together; h and x of one shape, batch first
    refused(ValueError, lambda: fused.moments(out, 0, h, torch.randn(4, 6)), "one size")
    refused(ValueError, lambda: fused.layer(out, 0, h, x.reshape(5, 4), -1.0, 1.0), "one shape")
    refused(ValueError, lambda: fused.layer(out, 0, torch.tensor(1.0), torch.tensor(1.0), -1.0, 1.0), "batch first")
    refused(ValueError, lambda: fused.moments(out, 0), "one or two")
    refused(ValueError, lambda: fused.moments(out, 0, h, h, h), "one or two")


def test_rows_fill_in_any_order(device):
    """Rows stack consecutive rows in one go (up or down) and write anything else row by row."""
    rows = probe.Rows(7, 2, torch.float64, device, chunk=3)
    order = [6, 5, 4, 0, 2, 3, 1]  # down, then a chunk with a gap
    for r in order:
        rows.add(r, [torch.tensor(float(r), device=device, dtype=torch.float64),
                     torch.tensor(-float(r), device=device, dtype=torch.float64)])
    rows.flush()
    np.testing.assert_array_equal(rows.buf.cpu().numpy(), np.array([[r, -r] for r in range(7)], dtype=float))


# ------------------------------------------------------------------------------- checkpointed == plain


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), pytest.param("float64", 1e-10, marks=pytest.mark.slow)])
@pytest.mark.parametrize("act", ["relu", "tanh", "softsign", "gelu"])
def test_checkpointed_probe_equals_plain(device, act, dtype, rtol):
    """Both probes run the same float operations on the same numbers: weights are regenerated from the same per-layer
    seeds and W = Z + 0 is exact, so they agree bit for bit where BLAS runs the same kernel both times; the tolerance
    (~100 ulps of float32, ~1e6 of float64) only leaves room for a BLAS kernel picking another blocking for a
    recomputed segment, amplified through 30 layers. Means near zero are compared against their column's spread
    instead."""
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


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("architecture", ["residual", "residual-batch", "plain-layer", "residual-layer-skipinit"])
def test_checkpointed_residual_and_normalized_probes_equal_plain(device, arch, architecture):
    """The checkpointed probe recomputes each segment's blocks (norms, branches, the stem) in the backward pass:
    the same columns as the plain probe, branch_var included (float32, tolerance as above)."""
    size = dict(depth=12, width=32, batch=8) if arch == "mlp" else dict(depth=8, width=6, batch=3, image_size=6,
                                                                         padding="circular")
    cfg = RunConfig(arch=arch, act="relu", init="he_normal", seeds=1, plots=False, device=device.type,
                    **size, **ARCHITECTURES[architecture])
    plain = runner.measure(cfg, device, checkpointed=False)[0]
    ckpt = runner.measure(cfg, device, checkpointed=True)[0]
    for name in probe.COLUMNS:
        assert_close(ckpt[name], plain[name], 1e-5, 1e-5 * spread(plain, name, plain.__getitem__), name)


@pytest.mark.parametrize("architecture", ["residual", "plain-layer", "residual-layer-skipinit"])
def test_jacobian_of_residual_and_normalized_networks(device, architecture):
    """probe.jacobian_singular_values of a residual or layer-normalized network: the singular values of each
    input's Jacobian of the network written out in the test (direct_forward), by torch.autograd.functional."""
    cfg = cfg_for(device, "mlp", "tanh", "float64", **ARCHITECTURES[architecture])
    params, x0, _ = network(cfg, device)
    got = probe.jacobian_singular_values(cfg, params, activations.torch_fn(cfg.act), x0, n_inputs=3)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda x: direct_forward(cfg, params, x)[0].reshape(-1),
                                                 x0[i:i + 1]).reshape(cfg.width, -1)
        want = torch.linalg.svdvals(jac)
        np.testing.assert_allclose(got[i].cpu().numpy(), want.cpu().numpy(), rtol=1e-9, atol=1e-12)


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


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited maxrss is Linux's behaviour")
def test_peak_memory_is_the_programs_own_not_its_parents():
    """getrusage's maxrss survives fork + exec: a run started by a process holding 1 GiB would report >= 1 GiB.
    The child imports torch (a few hundred MiB) and reports its own peak, well under the parent's gigabyte."""
    held = b"\x01" * 2**30  # touched pages: resident in this process
    code = "import torch; from initprobe import devices; print(devices.peak_memory(torch.device('cpu')))"
    peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert len(held) == 2**30 and 50 * 2**20 < peak < 2**30 - 2**27, peak


# ------------------------------------------------------------------------------------------ the benchmark


@pytest.mark.parametrize("instrumented_s, goal, verdict", [(1.25, 1.10, False), (1.05, 1.10, True)])
def test_bench_overhead_row_judges_the_median_ratio_against_its_goal(device, tmp_path, monkeypatch, instrumented_s,
                                                                     goal, verdict):
    """Each pass runs (on a tiny network), but its time is made up: the row's value is the median ratio of the
    instrumented pass to the bare one, judged against the goal; the .item()-per-statistic reference is in the note.
    The bare pass must leave no gradient behind (else the next instrumented pass would see it)."""
    from initprobe import bench

    made_up = {"bare": 1.0, "instrumented": instrumented_s, "naive": 3.0}
    ran = []

    def timed(fn, device, reps):
        fn()
        ran.append(fn.__name__)
        return [made_up[fn.__name__]] * reps

    monkeypatch.setattr(bench, "timed", timed)
    options = dict(arch="mlp", depth=3, width=16, batch=4, act="tanh")
    result, flops = bench.overhead("tiny", options, goal, device, reps=3)
    assert set(ran) == set(made_up)
    assert result["target"] == "overhead tiny" and result["value"] == instrumented_s
    assert result["pass"] is verdict and result["goal"] == f"<= {goal:.2f}"
    assert ".item()-per-statistic approach: 3.00x" in result["note"]
    # per second of bare pass: two flops a multiply-add, three products a layer (forward, dL/dx, dL/dW), each of
    # batch 4 x 16 x 16 multiply-adds, 3 layers
    assert flops == 2 * 3 * (4 * 16 * 16 * 3) / made_up["bare"]
    cfg = RunConfig(**options, device=device.type)
    params, x0, cotangent = bench._setup(cfg, device)
    bench.bare_pass(cfg, params, activations.torch_fn("tanh"), x0, cotangent)
    assert all(w.grad is None for w, _ in params)
    path = bench.write({"rows": [result]}, tmp_path / "b" / "bench.json")
    assert json.loads(path.read_text())["rows"][0] == result


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
