"""Initializer registry. Functions follow torch.nn.init: in place, under no_grad, return the tensor.

Glorot, He and LeCun are named presets of one `variance_scaling_` (Keras semantics); fans are computed
exactly as torch.nn.init does for Linear (out, in) and Conv (out, in, k, k) weights.
"""

import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

from .activations import unknown_message

TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (Keras' correction)
SQRT2 = math.sqrt(2.0)
MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("uniform", "normal", "truncated_normal", "untruncated_normal")
LSUV_TOL = 0.1  # Mishkin & Matas 2015: stop when |Var(h) - 1| < 0.1 ...
LSUV_MAX_ITER = 10  # ... or after 10 rescalings of a layer


def fans(w) -> tuple[int, int]:
    """(fan_in, fan_out) exactly as torch.nn.init._calculate_fan_in_and_fan_out; `w` a tensor or a shape."""
    shape = tuple(getattr(w, "shape", w))
    if len(shape) < 2:
        raise ValueError("fans need a weight with at least 2 dimensions")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def fan(w, mode: str) -> float:
    fan_in, fan_out = fans(w)
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2,
            "fan_geo_avg": math.sqrt(fan_in * fan_out)}[mode]


def _no_grad(fn):
    def wrapped(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


@_no_grad
def sample_(w, std: float, distribution: str, generator=None):
    """Zero-mean samples with standard deviation `std`; truncated normal is cut at +-2 sigma' and rescaled
    (sigma' = std / 0.8796...) so that the realized std is `std`, as Keras' VarianceScaling does."""
    import torch

    if distribution == "uniform":
        bound = math.sqrt(3.0) * std
        return w.uniform_(-bound, bound, generator=generator)
    if distribution in ("normal", "untruncated_normal"):
        return w.normal_(0.0, std, generator=generator)
    if distribution == "truncated_normal":
        s = std / TRUNC_STD
        return torch.nn.init.trunc_normal_(w, 0.0, s, -2.0 * s, 2.0 * s, generator=generator)
    raise ValueError(f"unknown distribution '{distribution}'")


def variance_scaling_(w, scale=1.0, mode="fan_in", distribution="truncated_normal", generator=None):
    """Keras VarianceScaling: Var(W) = scale / n, n = fan_in, fan_out, their mean or geometric mean."""
    return sample_(w, math.sqrt(scale / fan(w, mode)), distribution, generator)


def glorot_uniform_(w, gain=1.0, distribution="uniform", generator=None):
    """U(+-gain*sqrt(6/(fan_in+fan_out))): Var = gain^2 * 2/(fan_in+fan_out) (= torch xavier_uniform_)."""
    return variance_scaling_(w, gain**2, "fan_avg", distribution, generator)


def glorot_normal_(w, gain=1.0, distribution="normal", generator=None):
    """N(0, gain^2 * 2/(fan_in+fan_out)) (= torch xavier_normal_); same variance as glorot_uniform_."""
    return variance_scaling_(w, gain**2, "fan_avg", distribution, generator)


def he_uniform_(w, gain=SQRT2, mode="fan_in", distribution="uniform", generator=None):
    """U(+-gain*sqrt(3/fan)) (= torch kaiming_uniform_ with the ReLU gain sqrt(2) by default)."""
    return variance_scaling_(w, gain**2, mode, distribution, generator)


def he_normal_(w, gain=SQRT2, mode="fan_in", distribution="normal", generator=None):
    """N(0, gain^2/fan) (= torch kaiming_normal_)."""
    return variance_scaling_(w, gain**2, mode, distribution, generator)


def lecun_uniform_(w, gain=1.0, distribution="uniform", generator=None):
    """U(+-gain*sqrt(3/fan_in)): Var = gain^2/fan_in."""
    return variance_scaling_(w, gain**2, "fan_in", distribution, generator)


def lecun_normal_(w, gain=1.0, distribution="normal", generator=None):
    """N(0, gain^2/fan_in). Keras' LecunNormal is this with distribution='truncated_normal'."""
    return variance_scaling_(w, gain**2, "fan_in", distribution, generator)


def scaled_variance_scaling_(w, scale=1.0, mode="fan_in", distribution="truncated_normal", gain=1.0,
                             generator=None):
    """variance_scaling_ with an extra gain: Var = gain^2 * scale / n."""
    return variance_scaling_(w, gain**2 * scale, mode, distribution, generator)


@_no_grad
def orthogonal_(w, gain=1.0, generator=None):
    """(Semi-)orthogonal rows or columns of the weight flattened to (out, in*k*k), times gain."""
    import torch

    return torch.nn.init.orthogonal_(w, gain, generator=generator)


@_no_grad
def identity_(w, gain=1.0, generator=None):
    """gain * identity: eye for Linear weights, dirac (centre tap) for Conv weights."""
    import torch

    (torch.nn.init.eye_ if w.dim() == 2 else torch.nn.init.dirac_)(w)
    return w.mul_(gain)


@_no_grad
def delta_orthogonal_(w, gain=1.0, generator=None):
    """Xiao et al. 2018: zero everywhere except an orthogonal (out, in) matrix in the kernel's centre tap."""
    import torch

    if w.dim() < 3:
        raise ValueError("delta_orthogonal needs a convolution weight (use --arch cnn)")
    centre = torch.empty(w.shape[0], w.shape[1], device=w.device, dtype=w.dtype)
    torch.nn.init.orthogonal_(centre, gain, generator=generator)
    w.zero_()
    w[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))] = centre
    return w


def torch_default_(w, gain=1.0, generator=None):
    """What nn.Linear/nn.Conv2d do by default, kaiming_uniform_(a=sqrt(5)): U(+-gain/sqrt(fan_in)).
    With gain 1 this is also Glorot & Bengio 2010's "standard" init U[-1/sqrt(n), 1/sqrt(n)]."""
    return sample_(w, gain / math.sqrt(3.0 * fans(w)[0]), "uniform", generator)


def normal_(w, std=0.05, generator=None):
    return sample_(w, std, "normal", generator)


@_no_grad
def uniform_(w, bound=0.05, generator=None):
    return w.uniform_(-bound, bound, generator=generator)


@_no_grad
def truncated_normal_(w, std=0.05, generator=None):
    """N(0, std^2) cut at +-2 std, no rescaling (Keras TruncatedNormal): the realized std is 0.88 std."""
    import torch

    return torch.nn.init.trunc_normal_(w, 0.0, std, -2.0 * std, 2.0 * std, generator=generator)


@_no_grad
def constant_(w, value=0.1, generator=None):
    return w.fill_(value)


def zeros_(w, generator=None):
    return constant_(w, 0.0)


@_no_grad
def lsuv_(weights, forward_one, x, tol=LSUV_TOL, max_iter=LSUV_MAX_ITER):
    """Mishkin & Matas 2015, after an orthogonal pre-init: layer by layer, divide W^l by the std of h^l on
    the batch `x` until |Var(h^l) - 1| < tol or max_iter rescalings. `forward_one(l, x)` returns (h^l, x^l)."""
    for l, w in enumerate(weights):
        for _ in range(max_iter):
            var = forward_one(l, x)[0].float().var(correction=0).item()  # data-dependent: a sync is inherent
            if not math.isfinite(var) or var == 0.0 or abs(var - 1.0) < tol:
                break
            w.div_(math.sqrt(var))
        x = forward_one(l, x)[1]
    return weights


@dataclass(frozen=True)
class Init:
    fn: Callable
    formula: str
    defaults: dict = field(default_factory=dict)  # the options this scheme takes, with their defaults
    cnn_only: bool = False
    variance: Callable | None = None  # expected E[W^2] (= Var for zero-mean schemes); None: data-dependent

    def expected_variance(self, shape, params: dict) -> float | None:
        """What theory needs before any tensor exists (`initprobe theory`)."""
        return None if self.variance is None else float(self.variance(tuple(shape), **params))

    @property
    def default_gain(self):
        return self.defaults.get("gain")


def _ones_share(shape, gain=1.0, **_):
    """Second moment of gain * (eye or dirac or a centre-tap orthogonal matrix): min(out, in) entries of size
    gain^2 among all, i.e. Var = gain^2 / max(out, in) for a square-free count over the kernel taps."""
    return gain**2 * min(shape[0], shape[1]) / math.prod(shape)


def _orthogonal_var(shape, gain=1.0, **_):
    rows, cols = shape[0], math.prod(shape[1:])  # torch flattens to (out, in * k * k)
    return gain**2 / max(rows, cols)


_DIST, _MODE = {"distribution": "uniform"}, {"mode": "fan_in"}
_FAN_AVG = dict(variance=lambda s, gain, **_: gain**2 / fan(s, "fan_avg"))
_FAN_MODE = dict(variance=lambda s, gain, mode, **_: gain**2 / fan(s, mode))
_FAN_IN = dict(variance=lambda s, gain, **_: gain**2 / fan(s, "fan_in"))
INITS: dict[str, Init] = {
    "glorot_uniform": Init(glorot_uniform_, "U(+-gain*sqrt(6/(fan_in+fan_out)))", {"gain": 1.0, **_DIST},
                           **_FAN_AVG),
    "glorot_normal": Init(glorot_normal_, "N(0, gain^2*2/(fan_in+fan_out))", {"gain": 1.0, "distribution": "normal"},
                          **_FAN_AVG),
    "he_uniform": Init(he_uniform_, "U(+-gain*sqrt(3/fan)), gain sqrt(2)", {"gain": SQRT2, **_MODE, **_DIST},
                       **_FAN_MODE),
    "he_normal": Init(he_normal_, "N(0, gain^2/fan), gain sqrt(2)",
                      {"gain": SQRT2, **_MODE, "distribution": "normal"}, **_FAN_MODE),
    "lecun_uniform": Init(lecun_uniform_, "U(+-gain*sqrt(3/fan_in))", {"gain": 1.0, **_DIST}, **_FAN_IN),
    "lecun_normal": Init(lecun_normal_, "N(0, gain^2/fan_in)", {"gain": 1.0, "distribution": "normal"}, **_FAN_IN),
    "variance_scaling": Init(scaled_variance_scaling_, "Var = gain^2*scale/fan_mode (Keras VarianceScaling)",
                             {"scale": 1.0, **_MODE, "distribution": "truncated_normal", "gain": 1.0},
                             variance=lambda s, gain, scale, mode, **_: gain**2 * scale / fan(s, mode)),
    "orthogonal": Init(orthogonal_, "gain * (semi-)orthogonal matrix", {"gain": 1.0}, variance=_orthogonal_var),
    "identity": Init(identity_, "gain * I (eye for MLP, dirac for CNN)", {"gain": 1.0}, variance=_ones_share),
    "delta_orthogonal": Init(delta_orthogonal_, "orthogonal centre tap, zeros elsewhere (CNN)", {"gain": 1.0},
                             cnn_only=True, variance=_ones_share),
    "torch_default": Init(torch_default_, "U(+-gain/sqrt(fan_in)) (nn.Linear/nn.Conv2d default)", {"gain": 1.0},
                          variance=lambda s, gain: gain**2 / (3 * fans(s)[0])),
    "normal": Init(normal_, "N(0, std^2)", {"std": 0.05}, variance=lambda s, std: std**2),
    "uniform": Init(uniform_, "U(-bound, bound)", {"bound": 0.05}, variance=lambda s, bound: bound**2 / 3),
    "truncated_normal": Init(truncated_normal_, "N(0, std^2) cut at +-2 std", {"std": 0.05},
                             variance=lambda s, std: (TRUNC_STD * std) ** 2),
    "zeros": Init(zeros_, "0", variance=lambda s: 0.0),
    "constant": Init(constant_, "value", {"value": 0.1}, variance=lambda s, value: value**2),
    "lsuv": Init(lsuv_, f"orthogonal, then W/std(h) until |Var(h)-1|<{LSUV_TOL} ({LSUV_MAX_ITER} tries max)"),
}
ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal",
           "kaiming_uniform": "he_uniform", "kaiming_normal": "he_normal"}


def choices() -> list[str]:
    return sorted([*INITS, *ALIASES])


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def is_custom(name: str) -> bool:
    return ":" in name


def get(name: str) -> Init:
    """The scheme called `name`; `package.module:function` imports a user's torch.nn.init-style function."""
    if is_custom(name):
        return Init(_load_custom(name), f"user function {name}")
    key = canonical(name)
    if key not in INITS:
        raise KeyError(unknown_message("init", name, choices()))
    return INITS[key]


def _load_custom(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except Exception as e:  # the user's module may fail in any way (SyntaxError, its own errors): one line
        raise KeyError(f"cannot import init '{spec}': {type(e).__name__}: {e}") from None
    if not callable(fn):
        raise KeyError(f"init '{spec}' is not callable")
    takes_generator = "generator" in inspect.signature(fn).parameters

    def custom_(w, generator=None):
        with _torch().no_grad():
            out = fn(w, generator=generator) if takes_generator else fn(w)
            if out is not None and out is not w:
                w.copy_(out)
        return w

    return custom_


def _torch():
    import torch

    return torch
