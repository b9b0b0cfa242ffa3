"""The activation registry against PyTorch (functions, derivatives, calculate_gain) and against closed forms or
Monte Carlo for what PyTorch does not define. Parametrized over ACTIVATIONS, so a new entry is tested at once."""

import math

import numpy as np
import pytest
import torch
from conftest import N_SE

from initprobe import activations
from initprobe.activations import ACTIVATIONS

NAMES = sorted(ACTIVATIONS)
# PyTorch's calculate_gain has no entry for these: their gain is 1/sqrt(E[phi(z)^2]), z ~ N(0, 1)
NOT_IN_TORCH = {"gelu", "silu", "elu", "softplus", "mish", "softsign", "hardtanh", "sin"}
SLOPES = (0.01, 0.1, 0.2, 0.5, 1.0, 3.0)  # leaky_relu negative slopes (the others ignore the slope)
KINKS = (-1.0, 0.0, 1.0)  # where some phi' jumps (relu, leaky_relu, selu at 0; hardtanh at +-1)
MC_DRAWS = 1_000_000


def torch_name(name: str) -> str:
    return "linear" if name == "identity" else name


def slopes_for(name: str):
    return SLOPES if name == "leaky_relu" else (0.01,)


CASES = [(name, slope) for name in NAMES for slope in slopes_for(name)]
CASE_IDS = [f"{n}-{s}" for n, s in CASES]


@pytest.fixture
def f64(device):
    if device.type == "mps":
        pytest.skip("MPS has no float64; these comparisons need it")
    return torch.float64


# ---- phi and phi' against torch ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,slope", CASES, ids=CASE_IDS)
def test_numpy_phi_matches_torch(name, slope, device, f64):
    """Same function in numpy (theory) and torch (measurement), to 1e-6 relative, far into both tails."""
    x = np.linspace(-40.0, 40.0, 8001)
    ours = ACTIVATIONS[name].phi(x, slope)
    theirs = activations.torch_fn(name, slope)(torch.from_numpy(x).to(device, f64)).cpu().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name,slope", CASES, ids=CASE_IDS)
def test_numpy_dphi_matches_autograd(name, slope, device, f64):
    """phi' against torch autograd to 1e-5 relative, on [-10, 10] away (1e-3) from the kinks. Further out, both
    1 - tanh^2 and s(1 - s) are pure rounding noise in either library, so there is nothing to compare."""
    x = np.linspace(-10.0, 10.0, 6001) + 1.0 / 3000.0  # an offset grid, so no point sits on a kink
    x = x[np.min(np.abs(x[:, None] - np.array(KINKS)), axis=1) > 1e-3]
    xt = torch.from_numpy(x).to(device, f64).requires_grad_()
    activations.torch_fn(name, slope)(xt).sum().backward()
    np.testing.assert_allclose(ACTIVATIONS[name].dphi(x, slope), xt.grad.cpu().numpy(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_odd_flag(name):
    """`odd` (theory's zero-correlation fixed point) is set exactly for the activations with phi(-x) = -phi(x)."""
    x = np.linspace(-6.0, 6.0, 1201)
    act = ACTIVATIONS[name]
    assert act.odd == bool(np.allclose(act.phi(-x, 0.01), -act.phi(x, 0.01), rtol=1e-12, atol=1e-15))


# ---- gains ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,slope", CASES, ids=CASE_IDS)
def test_gain_is_torch_calculate_gain(name, slope):
    """Where PyTorch's calculate_gain knows the activation, gain() is exactly PyTorch's; where it raises, the registry
    must not claim a PyTorch gain either."""
    try:
        expected = torch.nn.init.calculate_gain(torch_name(name), slope)
    except ValueError:
        assert ACTIVATIONS[name].torch_gain is None, f"torch has no gain for {name}, the registry claims one"
        assert name in NOT_IN_TORCH
        return
    assert ACTIVATIONS[name].torch_gain is not None, f"torch defines a gain for {name}, the registry has none"
    assert ACTIVATIONS[name].gain(slope) == pytest.approx(expected, rel=1e-12, abs=0)


def test_torch_gain_table():
    """PyTorch's calculate_gain table: linear/sigmoid 1, tanh 5/3, relu sqrt 2, leaky_relu sqrt(2/(1+slope^2)),
    selu 3/4."""
    get = activations.get
    assert get("linear").gain() == 1.0
    assert get("sigmoid").gain() == 1.0
    assert get("tanh").gain() == pytest.approx(5 / 3, rel=1e-15)
    assert get("relu").gain() == pytest.approx(math.sqrt(2), rel=1e-15)
    assert get("selu").gain() == 0.75
    for s in SLOPES:
        assert get("leaky_relu").gain(s) == pytest.approx(math.sqrt(2 / (1 + s * s)), rel=1e-15)
    assert {n for n, a in ACTIVATIONS.items() if a.torch_gain is None} == NOT_IN_TORCH


def _mc_second_moment(name, q, device, f64, seed=0):
    """E[phi(sqrt(q) z)^2] by Monte Carlo with torch's phi, and its standard error."""
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(MC_DRAWS, generator=g, device=device, dtype=f64)
    y = activations.torch_fn(name)(math.sqrt(q) * z) ** 2
    return y.mean().item(), y.std().item() / math.sqrt(MC_DRAWS)


@pytest.mark.parametrize("name", sorted(NOT_IN_TORCH))
def test_gain_without_torch_monte_carlo(name, device, f64):
    """gain() = 1/sqrt(E[phi(z)^2]): m2 by Monte Carlo (1e6 draws) has standard error se = std(phi^2)/1000; the gain
    1/sqrt(m2) then has standard error gain * se / (2 m2). Allowed: N_SE of those."""
    m2, se = _mc_second_moment(name, 1.0, device, f64)
    gain_mc = 1.0 / math.sqrt(m2)
    tol = N_SE * gain_mc * se / (2.0 * m2)
    assert abs(ACTIVATIONS[name].gain() - gain_mc) <= tol, (ACTIVATIONS[name].gain(), gain_mc, tol)


@pytest.mark.parametrize("q", [pytest.param(0.25, marks=pytest.mark.slow), 1.0,
                               pytest.param(4.0, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", NAMES)
def test_second_moment_monte_carlo(name, q, device, f64):
    """second_moment (theory's q-map) against Monte Carlo with torch's phi, within N_SE standard errors."""
    m2, se = _mc_second_moment(name, q, device, f64, seed=1)
    assert abs(activations.second_moment(ACTIVATIONS[name], q) - m2) <= N_SE * se


def _std_normal_pdf(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _hardtanh_m2(q):
    """E[min(q z^2, 1)]: with a = 1/sqrt(q), E[z^2; |z|<a] = P(|z|<a) - 2 a pdf(a)."""
    a = 1.0 / math.sqrt(q)
    inside = math.erf(a / math.sqrt(2))
    return q * (inside - 2 * a * _std_normal_pdf(a)) + (1.0 - inside)


CLOSED_FORMS = [
    ("identity", q, q) for q in (0.1, 1.0, 25.0)
] + [
    ("relu", q, q / 2) for q in (0.1, 1.0, 25.0)
] + [
    ("sin", q, (1 - math.exp(-2 * q)) / 2) for q in (0.1, 1.0, 25.0)
] + [
    ("hardtanh", q, _hardtanh_m2(q)) for q in (0.1, 1.0, 4.0, 25.0, 100.0)
] + [
    ("selu", 1.0, 1.0),  # SELU's fixed point: mean 0, second moment 1 for a unit Gaussian input
]


@pytest.mark.parametrize("name,q,exact", CLOSED_FORMS, ids=[f"{n}-{q}" for n, q, _ in CLOSED_FORMS])
def test_second_moment_closed_forms(name, q, exact):
    """Deterministic quadrature against exact values, to 1e-5 relative (kinks included: hardtanh, relu)."""
    assert activations.second_moment(ACTIVATIONS[name], q) == pytest.approx(exact, rel=1e-5)


def test_leaky_relu_second_moment():
    for s in SLOPES:
        assert activations.second_moment(ACTIVATIONS["leaky_relu"], 2.0, s) == pytest.approx(1 + s * s, rel=1e-5)


# ---- saturation ---------------------------------------------------------------------------------------------------

LOGIT = lambda p: math.log(p / (1 - p))  # noqa: E731
SATURATION = [  # (name, slope, kind, value): abs(phi') < 5% of its maximum, solved by hand
    ("tanh", 0.01, "interval", (-math.atanh(math.sqrt(0.95)), math.atanh(math.sqrt(0.95)))),
    ("sigmoid", 0.01, "interval", (LOGIT((1 - math.sqrt(0.95)) / 2), -LOGIT((1 - math.sqrt(0.95)) / 2))),
    ("softsign", 0.01, "interval", (1 - 1 / math.sqrt(0.05), 1 / math.sqrt(0.05) - 1)),
    ("hardtanh", 0.01, "interval", (-1.0, 1.0)),
    ("relu", 0.01, "interval", (0.0, math.inf)),
    ("leaky_relu", 0.01, "interval", (0.0, math.inf)),  # slope 0.01 < 5%: the negative side counts as flat
    ("leaky_relu", 0.2, "interval", (-math.inf, math.inf)),
    ("identity", 0.01, "interval", (-math.inf, math.inf)),
    ("elu", 0.01, "interval", (math.log(0.05), math.inf)),
    ("selu", 0.01, "interval", (math.log(0.05), math.inf)),  # max phi' is lambda*alpha, at 0-
    ("softplus", 0.01, "interval", (LOGIT(0.05), math.inf)),
    ("sin", 0.01, "threshold", 0.05),
    # gelu'' = pdf(x) (2 - x^2): max gelu' = Phi(sqrt 2) + sqrt 2 pdf(sqrt 2); gelu' < 0 near -0.75: not one interval
    ("gelu", 0.01, "threshold", 0.05 * (0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * _std_normal_pdf(math.sqrt(2)))),
]


@pytest.mark.parametrize("name,slope,kind,value", SATURATION, ids=[f"{c[0]}-{c[1]}" for c in SATURATION])
def test_saturation_closed_forms(name, slope, kind, value):
    got_kind, got = ACTIVATIONS[name].saturation(slope)
    assert got_kind == kind
    assert got == pytest.approx(value, abs=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_saturation_agrees_with_dphi(name):
    """Whatever form saturation() takes, it classifies points as abs(phi'(h)) < 5% of max abs(phi') does, the
    maximum found here on a grid of its own (fine near 0, where each activation's phi' peaks or has its kink)."""
    act = ACTIVATIONS[name]
    x = np.linspace(-20.0, 20.0, 4001) + 1.0 / 700.0
    fine = np.concatenate([x, np.linspace(-3.0, 3.0, 600_001)])
    peak = np.abs(act.dphi(fine, 0.01)).max()
    assert act.max_abs_dphi(0.01) == pytest.approx(peak, rel=1e-4)
    flat = np.abs(act.dphi(x, 0.01)) < activations.SATURATION_LEVEL * peak
    kind, value = act.saturation(0.01)
    if kind == "interval":
        np.testing.assert_array_equal(flat, ~((x >= value[0]) & (x <= value[1])))
    else:
        assert value == pytest.approx(activations.SATURATION_LEVEL * peak, rel=1e-4)


# ---- names --------------------------------------------------------------------------------------------------------

def test_aliases():
    assert activations.get("linear") is ACTIVATIONS["identity"]
    assert activations.get("swish") is ACTIVATIONS["silu"]
    x = torch.linspace(-3, 3, 61)
    assert torch.equal(activations.torch_fn("swish")(x), torch.nn.functional.silu(x))
    assert torch.equal(activations.torch_fn("linear")(x), x)
    assert set(activations.choices()) == set(ACTIVATIONS) | {"linear", "swish"}


@pytest.mark.parametrize("name", NAMES)
def test_get_every_name(name):
    assert activations.get(name) is ACTIVATIONS[name]
    assert ACTIVATIONS[name].name == name


@pytest.mark.parametrize("typo,closest", [("tanhh", "tanh"), ("sigmod", "sigmoid"), ("leaky-relu", "leaky_relu"),
                                          ("swissh", "swish"), ("ReLU", "relu"), ("GELU", "gelu")])  # torch names
def test_unknown_name_suggests_closest(typo, closest):
    with pytest.raises(KeyError) as e:
        activations.get(typo)
    message = e.value.args[0]
    assert typo in message and "did you mean" in message
    assert message.split("did you mean")[1].split(",")[0].strip(" ?") == closest


def test_unknown_name_without_close_match_lists_all():
    with pytest.raises(KeyError) as e:
        activations.get("qqqqqq")
    assert all(name in e.value.args[0] for name in activations.choices())
