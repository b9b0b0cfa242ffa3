"""The initializer registry against the schemes' published formulas (Glorot, He, LeCun, truncated normal), against
torch.nn.init (same generator, same numbers; and statistically) and against Keras' VarianceScaling. Parametrized
over INITS, so a new entry is tested.

Statistical checks compare mean(w^2) with the scheme's variance, allowing N_SE standard errors
v*sqrt((kurtosis-1)/n) (conftest.py): with n = 18,432 (the conv weight) that is about 6% for a normal, 4% for a
uniform; with n = 1e6, 0.85% and 0.54%.
"""

import math
import sys
import textwrap

import pytest
import torch
from conftest import KURTOSIS_NORMAL, KURTOSIS_UNIFORM, N_SE, se_second_moment, truncated_normal_moments

from initprobe import activations, checks, config, inits, models
from initprobe.config import ConfigError, RunConfig
from initprobe.inits import INITS

KERAS_TRUNC_STD = 0.87962566103423978  # std of N(0, 1) cut at +-2: Keras divides by it to undo the truncation
TRUNC_VAR, TRUNC_KURTOSIS = truncated_normal_moments(2.0)
KURTOSIS = {"uniform": KURTOSIS_UNIFORM, "normal": KURTOSIS_NORMAL, "untruncated_normal": KURTOSIS_NORMAL,
            "truncated_normal": TRUNC_KURTOSIS}

LINEAR, CONV = (256, 512), (64, 32, 3, 3)
SHAPES = {"linear": LINEAR, "conv": CONV}
BIG = (500, 2000)  # 1e6 entries, fan_in 2000, fan_out 500: every mode gives a different n
TORCH_SHAPES = [(10, 512), (256, 512), (512, 256), (64, 3, 3, 3), (16, 8, 5), (8, 4, 3, 3, 3), (32, 64, 1, 1)]
# lsuv needs a network: tested on one below; `model` keeps a --model's weights: tested in test_models.py
RANDOM = sorted(k for k, spec in INITS.items() if not (spec.data_dependent or spec.model_only))
DETERMINISTIC = {"identity", "zeros", "constant"}
PRESETS = ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal"]


def torch_fans(shape):
    return torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape, device="meta"))


def fan_n(shape, mode):
    fan_in, fan_out = torch_fans(shape)
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2,
            "fan_geo_avg": math.sqrt(fan_in * fan_out)}[mode]


def apply(name, shape, device, generator, act="tanh", slope=0.01, **options):
    """The weight as a run makes it: RunConfig -> validate -> init_params -> spec.fn(w, generator=, **params)."""
    cfg = RunConfig(init=name, act=act, slope=slope, arch="cnn" if len(shape) == 4 else "mlp", **options)
    checks.validate(cfg)
    params = config.init_params(cfg)
    w = torch.empty(shape, device=device)
    out = inits.get(name).fn(w, generator=generator, **params)
    assert out is w  # in place, returns its argument, as torch.nn.init does
    return w, params


def assert_sampled(w, std, distribution):
    """w is n iid zero-mean draws with the realized std `std` and the shape of `distribution`."""
    n, var = w.numel(), std * std
    w64 = w.detach().double()
    m2, mean, top = w64.pow(2).mean().item(), w64.mean().item(), w64.abs().max().item()
    tol = N_SE * se_second_moment(var, KURTOSIS[distribution], n)
    assert abs(m2 - var) <= tol, f"mean(w^2) = {m2:.6g}, expected {var:.6g} +- {tol:.3g} ({N_SE:g} s.e., n={n})"
    assert abs(mean) <= N_SE * std / math.sqrt(n), f"mean {mean:.3g} for std {std:.3g}, n={n}"
    if distribution == "uniform":
        bound = math.sqrt(3) * std
        assert top <= bound * (1 + 1e-6)
        assert top >= 0.95 * bound  # P(all n draws inside 0.95 bound) = 0.95^n < 1e-100
    elif distribution == "truncated_normal":
        cut = 2 * std / KERAS_TRUNC_STD  # 2 sigma'; 1e-6: the cut is rounded to float32
        assert top <= cut * (1 + 1e-6), f"max |w| = {top:.6g} beyond the cut {cut:.6g}"
        assert top >= 0.95 * cut  # P(one draw beyond 1.9 sigma') = 1.2%: all n inside has P < 1e-90
    else:
        assert top > 2 * std / KERAS_TRUNC_STD  # untruncated: P(one draw beyond 2.27 std) = 2.3%


def expected_sampling(name, shape, p):
    """(realized std, distribution) of a random scheme, from the scheme's formula (not from the library)."""
    fan_in, fan_out = torch_fans(shape)
    if name.startswith("glorot"):
        return p["gain"] * math.sqrt(2 / (fan_in + fan_out)), p["distribution"]
    if name.startswith("he"):
        return p["gain"] / math.sqrt(fan_n(shape, p["mode"])), p["distribution"]
    if name.startswith("lecun"):
        return p["gain"] / math.sqrt(fan_in), p["distribution"]
    if name == "variance_scaling":
        return p["gain"] * math.sqrt(p["scale"] / fan_n(shape, p["mode"])), p["distribution"]
    if name == "torch_default":
        return p["gain"] / math.sqrt(fan_in) / math.sqrt(3), "uniform"  # U(+-gain/sqrt(fan_in))
    if name == "normal":
        return p["std"], "normal"
    if name == "uniform":
        return p["bound"] / math.sqrt(3), "uniform"
    if name == "truncated_normal":  # N(0, std^2) cut at +-2 std, not rescaled
        return KERAS_TRUNC_STD * p["std"], "truncated_normal"
    raise AssertionError(f"no formula for {name}: add one to this test")


def assert_rows_orthonormal(m, gain):
    """m (rows, cols) is gain * a semi-orthogonal matrix: m m^T = gain^2 I if rows <= cols, else m^T m."""
    m = m.detach().double()
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    torch.testing.assert_close(gram, gain**2 * eye, rtol=0, atol=1e-5 * gain**2)  # float32 QR rounding


# ---- fans ---------------------------------------------------------------------------------------------------------

def test_fans_reference_values():
    assert inits.fans((10, 512)) == (512, 10)  # nn.Linear(512, 10).weight
    assert inits.fans((64, 3, 3, 3)) == (27, 576)  # nn.Conv2d(3, 64, 3).weight
    assert inits.fans(torch.nn.Conv2d(3, 64, 3).weight) == (27, 576)


@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=str)
def test_fans_match_torch(shape):
    assert inits.fans(shape) == torch_fans(shape)
    assert inits.fans(torch.empty(shape, device="meta")) == torch_fans(shape)
    assert inits.fans(torch.Size(shape)) == torch_fans(shape)
    fan_in, fan_out = torch_fans(shape)
    assert inits.fan(shape, "fan_in") == fan_in and inits.fan(shape, "fan_out") == fan_out
    assert inits.fan(shape, "fan_avg") == (fan_in + fan_out) / 2
    assert inits.fan(shape, "fan_geo_avg") == pytest.approx(math.sqrt(fan_in * fan_out), rel=1e-15)


def test_fans_need_two_dimensions():
    with pytest.raises(ValueError):
        inits.fans((10,))


def test_trunc_std_constant():
    assert inits.TRUNC_STD == KERAS_TRUNC_STD
    assert math.sqrt(TRUNC_VAR) == pytest.approx(KERAS_TRUNC_STD, rel=1e-15)


# ---- reference values ---------------------------------------------------------------------------------------------

def test_glorot_reference_values_same_generator(device, make_generator):
    """Linear 512 -> 10: bound 0.10721125, std 0.06189845 (8 digits, hence rtol 1e-6)."""
    w, ref = torch.empty(10, 512, device=device), torch.empty(10, 512, device=device)
    inits.glorot_uniform_(w, generator=make_generator(3))
    ref.uniform_(-0.10721125, 0.10721125, generator=make_generator(3))
    assert torch.allclose(w, ref, rtol=1e-6, atol=0)
    inits.glorot_normal_(w, generator=make_generator(4))
    ref.normal_(0.0, 0.06189845, generator=make_generator(4))
    assert torch.allclose(w, ref, rtol=1e-6, atol=0)


def test_glorot_uniform_and_normal_same_variance(device, generator):
    """Glorot uniform (6 under the root, a bound) and normal (2, a std) have one variance, 2/(fan_in+fan_out)."""
    std = math.sqrt(2 / sum(torch_fans(BIG)))
    for fn, dist in ((inits.glorot_uniform_, "uniform"), (inits.glorot_normal_, "normal")):
        assert_sampled(fn(torch.empty(BIG, device=device), generator=generator), std, dist)


# ---- every registry init, as a run applies it ---------------------------------------------------------------------

def _registry_cases():
    cases = []
    for name in RANDOM:
        for shape_id, shape in SHAPES.items():
            if INITS[name].cnn_only and len(shape) != 4:
                continue
            cases.append(pytest.param(name, shape, {}, id=f"{name}-{shape_id}"))
            if "gain" in INITS[name].defaults:  # gain auto with tanh: 5/3
                cases.append(pytest.param(name, shape, {"gain": "auto"}, id=f"{name}-{shape_id}-gain_auto"))
    return cases


@pytest.mark.parametrize("name,shape,options", _registry_cases())
def test_registry_init(name, shape, options, device, generator):
    w, p = apply(name, shape, device, generator, **options)
    if options.get("gain") == "auto":
        assert p["gain"] == pytest.approx(5 / 3, rel=1e-15)
    gain = p.get("gain", 1.0)
    out, cin = shape[0], shape[1]
    if name == "zeros":
        assert torch.count_nonzero(w) == 0
    elif name == "constant":
        assert torch.equal(w, torch.full_like(w, p["value"]))
    elif name == "identity":
        expected = torch.zeros_like(w)
        for i in range(min(out, cin)):  # eye for Linear, dirac (centre tap) for Conv
            expected[(i, i, *(k // 2 for k in shape[2:]))] = gain
        assert torch.equal(w, expected)
    elif name == "orthogonal":
        assert_rows_orthonormal(w.reshape(out, -1), gain)
    elif name == "delta_orthogonal":
        centre = (slice(None), slice(None), *(k // 2 for k in shape[2:]))
        assert_rows_orthonormal(w[centre], gain)
        rest = w.clone()
        rest[centre] = 0
        assert torch.count_nonzero(rest) == 0
    else:
        assert_sampled(w, *expected_sampling(name, shape, p))


@pytest.mark.parametrize("name,shape,options", _registry_cases())
def test_expected_second_moment(name, shape, options, device, generator):
    """Init.expected_second_moment (theory's a-priori E[W^2], the variance for zero-mean schemes) agrees with the
    scheme's formula. For the structured and constant schemes it is the exact second moment mean(w^2)."""
    w, p = apply(name, shape, device, generator, **options)
    got = INITS[name].expected_second_moment(shape, p)
    if name in ("identity", "orthogonal", "delta_orthogonal", "zeros", "constant"):
        assert got == pytest.approx(w.double().pow(2).mean().item(), rel=1e-5, abs=0.0)
    else:
        assert got == pytest.approx(expected_sampling(name, shape, p)[0] ** 2, rel=1e-12)


def test_delta_orthogonal_needs_conv(device):
    with pytest.raises(ValueError):
        inits.delta_orthogonal_(torch.empty(LINEAR, device=device))
    with pytest.raises(ConfigError):
        checks.validate(RunConfig(init="delta_orthogonal", arch="mlp"))


@pytest.mark.parametrize("shape", [(16, 32, 3, 3), (32, 32, 5, 5), (8, 8, 3), (8, 4, 3, 3, 3)], ids=str)
def test_delta_orthogonal_shapes(shape, device, generator):
    w = inits.delta_orthogonal_(torch.empty(shape, device=device), gain=1.5, generator=generator)
    centre = (slice(None), slice(None), *(k // 2 for k in shape[2:]))
    assert_rows_orthonormal(w[centre], 1.5)
    w[centre] = 0
    assert torch.count_nonzero(w) == 0


@pytest.mark.parametrize("shape", [(256, 512), (512, 256), (64, 32, 3, 3), (32, 64, 3, 3)], ids=str)
def test_identity_shapes(shape, device):
    w = inits.identity_(torch.empty(shape, device=device), gain=2.0)
    expected = torch.empty(shape, device=device)
    (torch.nn.init.eye_ if len(shape) == 2 else torch.nn.init.dirac_)(expected)
    assert torch.equal(w, 2.0 * expected)


# ---- Keras VarianceScaling and the presets' distributions -----------------------------------------------------------

# a million truncated-normal draws take a while (torch's trunc_normal_): the full suite only
DISTRIBUTIONS = [pytest.param(d, marks=pytest.mark.slow) if d == "truncated_normal" else d for d in inits.DISTRIBUTIONS]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("mode", inits.MODES)
def test_variance_scaling(mode, distribution, device, generator):
    """Var = scale/n for every mode and distribution; truncated: cut at 2 sigma', sigma' = sqrt(scale/n)/0.8796."""
    scale = 2.5
    w, p = apply("variance_scaling", BIG, device, generator, scale=scale, mode=mode, distribution=distribution)
    assert (p["scale"], p["mode"], p["distribution"]) == (scale, mode, distribution)
    assert_sampled(w, math.sqrt(scale / fan_n(BIG, mode)), distribution)


@pytest.mark.slow
def test_variance_scaling_truncated_is_keras_same_generator(device, make_generator):
    """Same draws as torch's trunc_normal_ with Keras' sigma' = sqrt(scale/n)/0.8796... and cut at +-2 sigma'."""
    for mode in inits.MODES:
        w = inits.variance_scaling_(torch.empty(LINEAR, device=device), 2.0, mode, "truncated_normal",
                                    generator=make_generator(5))
        s = math.sqrt(2.0 / fan_n(LINEAR, mode)) / KERAS_TRUNC_STD
        ref = torch.nn.init.trunc_normal_(torch.empty(LINEAR, device=device), 0.0, s, -2 * s, 2 * s,
                                          generator=make_generator(5))
        assert torch.allclose(w, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("name", PRESETS)
def test_preset_explicit_distribution(name, distribution, device, generator):
    """--distribution replaces a preset's own: glorot_normal + truncated_normal is Keras' GlorotNormal (realized
    var 2/(fan_in+fan_out), cut at 2 sigma'), he_normal + truncated_normal is Keras' he_normal."""
    w, p = apply(name, BIG, device, generator, distribution=distribution)
    assert p["distribution"] == distribution
    assert_sampled(w, *expected_sampling(name, BIG, p))


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("name", ["he_uniform", "he_normal"])
def test_he_mode(name, mode, device, generator):
    w, p = apply(name, BIG, device, generator, mode=mode)
    std = math.sqrt(2 / torch_fans(BIG)[0 if mode == "fan_in" else 1])
    assert_sampled(w, std, p["distribution"])


def test_lecun_variance(device, generator):
    for name in ("lecun_uniform", "lecun_normal"):
        w, p = apply(name, BIG, device, generator)
        assert_sampled(w, math.sqrt(1 / torch_fans(BIG)[0]), p["distribution"])


# ---- against torch.nn.init: same generator, same numbers ------------------------------------------------------------

def _torch_pairs():
    """(id, ours(w, g), torch's(w, g)): both must draw the same numbers from the same generator state."""
    nn = torch.nn.init
    pairs = []
    for gain in (1.0, 5 / 3):
        pairs += [
            (f"glorot_uniform-{gain:.3g}", lambda w, g, k=gain: inits.glorot_uniform_(w, gain=k, generator=g),
             lambda w, g, k=gain: nn.xavier_uniform_(w, gain=k, generator=g)),
            (f"glorot_normal-{gain:.3g}", lambda w, g, k=gain: inits.glorot_normal_(w, gain=k, generator=g),
             lambda w, g, k=gain: nn.xavier_normal_(w, gain=k, generator=g)),
            (f"orthogonal-{gain:.3g}", lambda w, g, k=gain: inits.orthogonal_(w, gain=k, generator=g),
             lambda w, g, k=gain: nn.orthogonal_(w, gain=k, generator=g)),
        ]
    for mode in ("fan_in", "fan_out"):
        pairs += [
            (f"he_uniform-{mode}", lambda w, g, m=mode: inits.he_uniform_(w, mode=m, generator=g),
             lambda w, g, m=mode: nn.kaiming_uniform_(w, mode=m, nonlinearity="relu", generator=g)),
            (f"he_normal-{mode}", lambda w, g, m=mode: inits.he_normal_(w, mode=m, generator=g),
             lambda w, g, m=mode: nn.kaiming_normal_(w, mode=m, nonlinearity="relu", generator=g)),
        ]
    pairs += [
        ("torch_default", lambda w, g: inits.torch_default_(w, generator=g),
         lambda w, g: nn.kaiming_uniform_(w, a=math.sqrt(5), generator=g)),
        ("normal", lambda w, g: inits.normal_(w, std=0.3, generator=g), lambda w, g: nn.normal_(w, 0, 0.3, g)),
        ("uniform", lambda w, g: inits.uniform_(w, bound=0.3, generator=g), lambda w, g: nn.uniform_(w, -0.3, 0.3, g)),
        ("truncated_normal", lambda w, g: inits.truncated_normal_(w, std=0.3, generator=g),
         lambda w, g: nn.trunc_normal_(w, 0.0, 0.3, -0.6, 0.6, generator=g)),
        ("zeros", lambda w, g: inits.zeros_(w, generator=g), lambda w, g: nn.zeros_(w)),
        ("constant", lambda w, g: inits.constant_(w, 0.7, generator=g), lambda w, g: nn.constant_(w, 0.7)),
    ]
    return pairs


TORCH_PAIRS = _torch_pairs()
# orthogonal's QR of each shape is the slow part: the full suite only
SAME_GENERATOR = [pytest.param(*p[1:], id=p[0], marks=[pytest.mark.slow] if p[0].startswith("orthogonal") else [])
                  for p in TORCH_PAIRS]


@pytest.mark.parametrize("shape", [LINEAR, CONV, (16, 8, 5), (8, 4, 3, 3, 3)], ids=str)
@pytest.mark.parametrize("ours,theirs", SAME_GENERATOR)
def test_same_as_torch_same_generator(ours, theirs, shape, device, make_generator):
    """Identical sampling calls on identical generator state: equal up to the last-ulp rounding of a bound or std
    computed in a different order (rtol 1e-6, atol 0)."""
    a = ours(torch.empty(shape, device=device), make_generator(11))
    b = theirs(torch.empty(shape, device=device), make_generator(11))
    assert torch.allclose(a, b, rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("ours,theirs", [p[1:] for p in TORCH_PAIRS], ids=[p[0] for p in TORCH_PAIRS])
def test_same_as_torch_statistically(ours, theirs, device, make_generator):
    """Independent draws (different seeds) of 1e6 entries: the two second moments differ by less than N_SE
    standard errors of their difference, sqrt(2) * v * sqrt((kurtosis-1)/n); and the shapes agree: the fractions
    beyond 2 std (0 uniform, 4.6% normal, 2.3% Keras-truncated) differ by less than N_SE binomial standard errors."""
    n = math.prod(BIG)
    a = ours(torch.empty(BIG, device=device), make_generator(1)).double()
    b = theirs(torch.empty(BIG, device=device), make_generator(2)).double()
    m2a, m2b = a.pow(2).mean().item(), b.pow(2).mean().item()
    tol = N_SE * math.sqrt(2) * se_second_moment(m2b, KURTOSIS_NORMAL, n)  # kurtosis <= 3 for all these
    assert abs(m2a - m2b) <= tol
    t = 2 * math.sqrt(m2b)
    fa, fb = (a.abs() > t).double().mean().item(), (b.abs() > t).double().mean().item()
    p = (fa + fb) / 2
    assert abs(fa - fb) <= N_SE * math.sqrt(2 * p * (1 - p) / n)


@pytest.mark.parametrize("layer", [lambda: torch.nn.Linear(512, 256), lambda: torch.nn.Conv2d(32, 64, 3),
                                   lambda: torch.nn.Conv1d(8, 16, 5)], ids=["Linear", "Conv2d", "Conv1d"])
def test_torch_default_is_module_default(layer, device):
    """torch_default_ without a generator draws what nn.Linear/ConvNd.reset_parameters() draw from the global RNG."""
    with torch.random.fork_rng(devices=None if device.type == "cuda" else []):  # leave the global RNG as it was
        m = layer().to(device)
        torch.manual_seed(123)
        m.reset_parameters()
        torch.manual_seed(123)
        w = inits.torch_default_(torch.empty_like(m.weight))
    assert torch.allclose(w, m.weight.detach(), rtol=1e-6, atol=0)


# ---- gain auto ----------------------------------------------------------------------------------------------------

def test_gain_auto_leaky_relu_is_kaiming(device, make_generator):
    """he_normal + leaky_relu (slope 0.2) + gain auto = torch kaiming_normal_(a=0.2): gain sqrt(2/(1+0.04))."""
    w, p = apply("he_normal", LINEAR, device, make_generator(7), act="leaky_relu", slope=0.2, gain="auto")
    assert p["gain"] == pytest.approx(torch.nn.init.calculate_gain("leaky_relu", 0.2), rel=1e-15)
    ref = torch.nn.init.kaiming_normal_(torch.empty(LINEAR, device=device), a=0.2, generator=make_generator(7))
    assert torch.allclose(w, ref, rtol=1e-6, atol=0)
    assert_sampled(w, math.sqrt(2 / 1.04 / LINEAR[1]), "normal")


@pytest.mark.parametrize("act", activations.choices())
def test_gain_auto_resolves_to_activation_gain(act):
    for slope in (0.01, 0.3):
        p = config.init_params(RunConfig(init="glorot_uniform", act=act, slope=slope, gain="auto"))
        assert p["gain"] == activations.get(act).gain(slope)


def test_init_params_defaults_and_overrides():
    assert config.init_params(RunConfig(init="he_normal")) == INITS["he_normal"].defaults
    p = config.init_params(RunConfig(init="he_uniform", gain=1.0, mode="fan_out"))
    assert p == {"gain": 1.0, "mode": "fan_out", "distribution": "uniform"}
    with pytest.raises(ConfigError):  # an option a scheme does not take is an error, not ignored
        checks.validate(RunConfig(init="glorot_uniform", std=0.1))


@pytest.mark.parametrize("name", sorted(INITS))
def test_defaults_are_config_options(name):
    assert set(INITS[name].defaults) <= set(config.INIT_OPTIONS)


# ---- reproducibility ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,shape", [(n, s) for n in RANDOM for s in SHAPES.values() if len(s) == 4 or
                                         not INITS[n].cnn_only], ids=lambda v: v if isinstance(v, str) else str(len(v)))
def test_same_seed_same_tensor(name, shape, device, make_generator):
    a, _ = apply(name, shape, device, make_generator(42))
    b, _ = apply(name, shape, device, make_generator(42))
    c, _ = apply(name, shape, device, make_generator(43))
    assert torch.equal(a, b)
    assert torch.equal(a, c) == (name in DETERMINISTIC)


# ---- lsuv ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_lsuv_unit_preactivation_variance(arch, device, generator):
    """After LSUV, every layer's pre-activation variance on the LSUV batch is within LSUV_TOL of 1, propagating
    that batch through the layers with the activation; every weight is still a rescaled orthogonal matrix."""
    if arch == "mlp":
        cfg = RunConfig(init="lsuv", act="tanh", depth=5, width=128, batch=256)
        x = torch.randn(256, 128, generator=generator, device=device)
    else:
        cfg = RunConfig(init="lsuv", act="tanh", arch="cnn", depth=4, width=16, in_channels=3, image_size=8, batch=16)
        x = torch.randn(16, 3, 8, 8, generator=generator, device=device)
    checks.validate(cfg)
    params = models.build(cfg, models.layer_seeds(cfg.depth, generator), device, lsuv_input=x)
    phi = activations.torch_fn(cfg.act, cfg.slope)
    h = x
    with torch.no_grad():
        for l, (w, b) in enumerate(params):
            h = models.block(cfg, h, w, b)
            assert abs(h.var(correction=0).item() - 1.0) < inits.LSUV_TOL, f"layer {l + 1}"
            h = phi(h)
            flat = w.detach().reshape(w.shape[0], -1)
            assert_rows_orthonormal(flat / flat.norm(dim=1).mean(), 1.0)


def test_lsuv_stops_after_max_iter():
    """A layer whose variance never reaches 1 is rescaled LSUV_MAX_ITER times and no more."""
    w = torch.ones(3, 3)
    calls = []

    def forward_one(l, x):  # h's variance is 4 whatever w is
        calls.append(l)
        return 2.0 * x, x

    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    inits.lsuv_([w], forward_one, x)
    expected_scale = (1.0 / math.sqrt(4.0 * x.var(correction=0).item())) ** inits.LSUV_MAX_ITER
    torch.testing.assert_close(w, torch.full((3, 3), expected_scale), rtol=1e-4, atol=0)
    assert len(calls) == inits.LSUV_MAX_ITER + 1  # 10 measurements, then the forward to the next layer


# ---- custom init (package.module:function) --------------------------------------------------------------------------

@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's module on sys.path: myinit (no generator), mygen (takes one), myfresh (returns a new tensor)."""
    name = f"user_inits_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import torch

        NOT_CALLABLE = 3

        def myinit(w):
            return w.fill_(0.25)

        def mygen(w, generator=None):
            return w.normal_(0.0, 0.5, generator=generator)

        def myfresh(w):
            return torch.full(w.shape, -1.5)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_custom_init_without_generator(user_module, device):
    spec = inits.get(f"{user_module}:myinit")
    w = spec.fn(torch.empty(LINEAR, device=device), generator=torch.Generator(device=device))
    assert torch.equal(w, torch.full(LINEAR, 0.25, device=device))
    assert spec.defaults == {}


def test_custom_init_with_generator(user_module, device, make_generator):
    w = inits.get(f"{user_module}:mygen").fn(torch.empty(BIG, device=device), generator=make_generator(9))
    ref = torch.empty(BIG, device=device).normal_(0.0, 0.5, generator=make_generator(9))
    assert torch.equal(w, ref)  # the generator is passed through
    assert_sampled(w, 0.5, "normal")


def test_custom_init_returning_new_tensor(user_module):
    w = torch.zeros(LINEAR)
    out = inits.get(f"{user_module}:myfresh").fn(w)
    assert out is w and torch.equal(w, torch.full(LINEAR, -1.5))


def test_custom_init_in_a_run_config(user_module, device):
    cfg = RunConfig(init=f"{user_module}:myinit", depth=2, width=8)
    checks.validate(cfg)
    w, _ = models.make_layer(cfg, 0, 0, device)
    assert torch.equal(w, torch.full((8, 8), 0.25, device=device))


@pytest.mark.parametrize("attr", ["no_such_function", None])
def test_custom_init_not_importable(attr, user_module):
    """A missing module or function is a KeyError that names it (and so a one-line ConfigError in a run)."""
    spec = f"{user_module}:{attr}" if attr else "no_such_module_xyz:myinit"
    with pytest.raises(KeyError) as e:
        inits.get(spec)
    assert spec in e.value.args[0]
    with pytest.raises(ConfigError, match=spec):
        checks.validate(RunConfig(init=spec))


def test_custom_init_not_callable(user_module):
    with pytest.raises(KeyError, match="not callable"):
        inits.get(f"{user_module}:NOT_CALLABLE")


# ---- names --------------------------------------------------------------------------------------------------------

def test_aliases():
    for alias, name in [("xavier_uniform", "glorot_uniform"), ("xavier_normal", "glorot_normal"),
                        ("kaiming_uniform", "he_uniform"), ("kaiming_normal", "he_normal")]:
        assert inits.get(alias) is INITS[name]
    for choice in inits.choices():  # every name offered (--init's completion, the help) is one get() knows
        assert inits.get(choice) in INITS.values()
    assert {"xavier_uniform", "kaiming_normal", "glorot_uniform", "lsuv"} <= set(inits.choices())


@pytest.mark.parametrize("typo,closest", [("glorot_unifrom", "glorot_uniform"), ("he_norml", "he_normal"),
                                          ("Orthogonal", "orthogonal"), ("xavier_unifrm", "xavier_uniform")])
def test_unknown_init_suggests_closest(typo, closest):
    with pytest.raises(KeyError) as e:
        inits.get(typo)
    message = e.value.args[0]
    assert typo in message
    assert message.split("did you mean")[1].split(",")[0].strip(" ?") == closest
