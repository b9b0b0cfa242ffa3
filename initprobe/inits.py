"""Initializer registry. Functions follow torch.nn.init: in place, under no_grad, return the tensor.

Glorot, He and LeCun are named presets of one `variance_scaling_` (Keras semantics); fans are computed
exactly as torch.nn.init does for Linear (out, in) and Conv (out, in, k, k) weights.
"""

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

from . import usercode
from .imports import import_callable
from .names import unknown

TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (Keras' correction)
SQRT2 = math.sqrt(2.0)
MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("uniform", "normal", "truncated_normal", "untruncated_normal")
LSUV_TOL = 0.1  # Mishkin & Matas 2015: stop when |Var(h) - 1| < 0.1 ...
LSUV_MAX_ITER = 10  # ... or after 10 rescalings of a layer
MODEL_OWN = "model"  # the init that keeps a --model's own weights


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
    @functools.wraps(fn)  # keeps fn's signature: the registry reads a scheme's options from it
    def wrapped(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapped


@_no_grad
def sample_(w, std: float, distribution: str, generator=None):
    """Zero-mean samples with standard deviation `std`; truncated normal is cut at +-2 sigma' and rescaled
    (sigma' = std / 0.8796...) so that the realized std is `std`, as Keras' VarianceScaling does."""
    if distribution == "uniform":
        bound = math.sqrt(3.0) * std
        return w.uniform_(-bound, bound, generator=generator)
    if distribution in ("normal", "untruncated_normal"):
        return w.normal_(0.0, std, generator=generator)
    if distribution == "truncated_normal":
        return truncated_normal_(w, std / TRUNC_STD, generator=generator)
    raise ValueError(f"unknown distribution '{distribution}'")


def scaled_variance(shape, scale=1.0, mode="fan_in", gain=1.0) -> float:
    """Var(W) = gain^2 * scale / n, n the fan `mode` of `shape`: the one statement of every preset's size."""
    return gain**2 * scale / fan(shape, mode)


def variance_scaling_(w, scale=1.0, mode="fan_in", distribution="truncated_normal", gain=1.0, generator=None):
    """Keras VarianceScaling (with a gain): zero-mean `distribution` with Var = scaled_variance(w.shape, ...)."""
    return sample_(w, math.sqrt(scaled_variance(w.shape, scale, mode, gain)), distribution, generator)


# The Glorot/He/LeCun presets: variance_scaling_ with scale 1 and a fixed fan mode (He: a choice of mode).
def glorot_uniform_(w, gain=1.0, distribution="uniform", generator=None):
    """Glorot & Bengio 2010's normalized init, torch xavier_uniform_: fan_avg."""
    return variance_scaling_(w, 1.0, "fan_avg", distribution, gain, generator)


def glorot_normal_(w, gain=1.0, distribution="normal", generator=None):
    """torch xavier_normal_: fan_avg, the same variance as glorot_uniform_."""
    return variance_scaling_(w, 1.0, "fan_avg", distribution, gain, generator)


def he_uniform_(w, gain=SQRT2, mode="fan_in", distribution="uniform", generator=None):
    """He et al. 2015, torch kaiming_uniform_ (default gain: ReLU's sqrt(2))."""
    return variance_scaling_(w, 1.0, mode, distribution, gain, generator)


def he_normal_(w, gain=SQRT2, mode="fan_in", distribution="normal", generator=None):
    """He et al. 2015, torch kaiming_normal_ (default gain: ReLU's sqrt(2))."""
    return variance_scaling_(w, 1.0, mode, distribution, gain, generator)


def lecun_uniform_(w, gain=1.0, distribution="uniform", generator=None):
    """LeCun et al. 1998: fan_in."""
    return variance_scaling_(w, 1.0, "fan_in", distribution, gain, generator)


def lecun_normal_(w, gain=1.0, distribution="normal", generator=None):
    """LeCun et al. 1998: fan_in. Keras' LecunNormal is this with distribution='truncated_normal'."""
    return variance_scaling_(w, 1.0, "fan_in", distribution, gain, generator)


@_no_grad
def orthogonal_(w, gain=1.0, generator=None):
    """(Semi-)orthogonal rows or columns of the weight flattened to (out, in*k*k), times gain. Computed in float32
    for a lower-precision weight (QR has no bfloat16 kernel), then rounded to it."""
    import torch

    if w.dtype in (torch.float32, torch.float64):
        return torch.nn.init.orthogonal_(w, gain, generator=generator)
    return w.copy_(torch.nn.init.orthogonal_(torch.empty_like(w, dtype=torch.float32), gain, generator=generator))


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
    centre = orthogonal_(torch.empty(w.shape[0], w.shape[1], device=w.device, dtype=w.dtype), gain, generator)
    w.zero_()
    w[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))] = centre
    return w


def torch_default_std(shape, gain=1.0) -> float:
    """gain / sqrt(3 fan_in): the std of U(+-gain/sqrt(fan_in))."""
    return gain / math.sqrt(3.0 * fans(shape)[0])


def torch_default_(w, gain=1.0, generator=None):
    """What nn.Linear/nn.Conv2d do by default, kaiming_uniform_(a=sqrt(5)): U(+-gain/sqrt(fan_in)).
    With gain 1 this is also Glorot & Bengio 2010's "standard" init U[-1/sqrt(n), 1/sqrt(n)]."""
    return sample_(w, torch_default_std(w.shape, gain), "uniform", generator)


def normal_(w, std=0.05, generator=None):
    return sample_(w, std, "normal", generator)


@_no_grad
def uniform_(w, bound=0.05, generator=None):
    return w.uniform_(-bound, bound, generator=generator)


@_no_grad
def truncated_normal_(w, std=0.05, generator=None):
    """N(0, std^2) cut at +-2 std, no rescaling (Keras TruncatedNormal): the realized std is 0.88 std."""
    import torch

    if std == 0:  # the limit (torch's truncated normal would divide by it)
        return w.zero_()

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


def keep_(w, generator=None):
    """The model's own initialization: the weight is left as the model made it (--model only)."""
    return w


@dataclass(frozen=True)
class Init:
    """A registry entry: the function, the formula `initprobe list` shows, and what code must know about the scheme.
    The options it takes, with their defaults, are the function's own keyword arguments."""

    fn: Callable
    formula: str
    second_moment: Callable | None = None  # E[W^2](shape, **options) before any tensor exists; None: data-dependent
    cnn_only: bool = False  # needs a convolution weight
    data_dependent: bool = False  # rescaled on a batch after the network exists (lsuv): no a-priori prediction
    orthogonal: bool = False  # (semi-)orthogonal weights: free probability's orthogonal case, not the Gaussian one
    model_only: bool = False  # keeps a --model's own weights: no scheme, so nothing for the built-in network

    @property
    def defaults(self) -> dict:
        """The options this scheme takes, with their defaults (the function's keyword arguments)."""
        return _options(self.fn)

    def expected_second_moment(self, shape, params: dict) -> float | None:
        """E[W^2] for a weight of `shape`: what theory needs as sigma_w^2 / fan_in before any tensor exists."""
        return None if self.second_moment is None else float(self.second_moment(tuple(shape), **params))

    @property
    def default_gain(self):
        return self.defaults.get("gain")


@functools.cache
def _options(fn: Callable) -> dict:
    skip = ("w", "weights", "forward_one", "x", "generator", "tol", "max_iter")
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if name not in skip}


def _preset(mode=None):
    """E[W^2] of a variance_scaling_ preset: its fixed fan `mode`, or the one chosen (He)."""
    return lambda shape, gain, distribution=None, **chosen: scaled_variance(shape, 1.0, chosen.get("mode", mode), gain)


def _ones_share(shape, gain=1.0):
    """Second moment of gain * (eye, dirac, or a centre-tap orthogonal matrix): min(out, in) entries of size gain^2
    among all the weight's entries."""
    return gain**2 * min(shape[0], shape[1]) / math.prod(shape)


def _orthogonal(shape, gain=1.0):
    rows, cols = shape[0], math.prod(shape[1:])  # torch flattens to (out, in * k * k)
    return gain**2 / max(rows, cols)


INITS: dict[str, Init] = {
    "glorot_uniform": Init(glorot_uniform_, "U(+-gain*sqrt(6/(fan_in+fan_out)))", _preset("fan_avg")),
    "glorot_normal": Init(glorot_normal_, "N(0, gain^2*2/(fan_in+fan_out))", _preset("fan_avg")),
    "he_uniform": Init(he_uniform_, "U(+-gain*sqrt(3/fan)), gain sqrt(2)", _preset()),
    "he_normal": Init(he_normal_, "N(0, gain^2/fan), gain sqrt(2)", _preset()),
    "lecun_uniform": Init(lecun_uniform_, "U(+-gain*sqrt(3/fan_in))", _preset("fan_in")),
    "lecun_normal": Init(lecun_normal_, "N(0, gain^2/fan_in)", _preset("fan_in")),
    "variance_scaling": Init(variance_scaling_, "Var = gain^2*scale/fan_mode (Keras VarianceScaling)",
                             lambda shape, scale, mode, gain, distribution: scaled_variance(shape, scale, mode, gain)),
    "orthogonal": Init(orthogonal_, "gain * (semi-)orthogonal matrix", _orthogonal, orthogonal=True),
    "identity": Init(identity_, "gain * I (eye for MLP, dirac for CNN)", _ones_share, orthogonal=True),
    "delta_orthogonal": Init(delta_orthogonal_, "orthogonal centre tap, zeros elsewhere (CNN)", _ones_share,
                             cnn_only=True, orthogonal=True),
    "torch_default": Init(torch_default_, "U(+-gain/sqrt(fan_in)) (nn.Linear/nn.Conv2d default)",
                          lambda shape, gain: torch_default_std(shape, gain) ** 2),
    "normal": Init(normal_, "N(0, std^2)", lambda shape, std: std**2),
    "uniform": Init(uniform_, "U(-bound, bound)", lambda shape, bound: bound**2 / 3),
    "truncated_normal": Init(truncated_normal_, "N(0, std^2) cut at +-2 std",
                             lambda shape, std: (TRUNC_STD * std) ** 2),
    "zeros": Init(zeros_, "0", lambda shape: 0.0),
    "constant": Init(constant_, "value", lambda shape, value: value**2),
    "lsuv": Init(lsuv_, f"orthogonal, then W/std(h) until |Var(h)-1|<{LSUV_TOL} ({LSUV_MAX_ITER} tries max)",
                 data_dependent=True, orthogonal=True),
    MODEL_OWN: Init(keep_, "the model's own initialization, as its library or code makes it",
                    model_only=True),
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
        return _custom(name)
    key = canonical(name)
    if key not in INITS:
        raise KeyError(unknown("init", name, choices()))
    return INITS[key]


@functools.cache
def _custom(spec: str) -> Init:
    """The entry of a user's function, made once per name (a run asks for it at every layer)."""
    return Init(_load_custom(spec), f"user function {spec}")


def _load_custom(spec: str) -> Callable:
    """A user's init as a registry function: `custom_(w, generator)` calls it (usercode.call: whatever it raises is
    its error), seeds the global generators around it (usercode.seeded_globals) and checks what it returns.
    KeyError, as for an unknown name, if it cannot be imported or called as fn(weight)."""
    try:
        fn = import_callable(spec, "init")
        takes_generator = _check_signature(spec, fn)
    except ValueError as e:  # UserCodeError is one
        raise KeyError(e.args[0]) from None

    def custom_(w, generator=None):
        shape, seed = tuple(w.shape), None if generator is None else generator.initial_seed()
        with _torch().no_grad(), usercode.seeded_globals(seed, w.device):
            kwargs = {"generator": generator} if takes_generator else {}
            out = usercode.call(f"init '{spec}' failed", fn, w, **kwargs)
            _check_result(spec, w, out, shape)
            if out is not None and out is not w:
                w.copy_(out)
        return w

    return custom_


def _check_signature(spec: str, fn: Callable) -> bool:
    """Whether `fn` takes generator=; UserCodeError if it cannot be called as fn(weight)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: try it as fn(w)
        return False
    takes_generator = "generator" in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    try:
        signature.bind(None, **({"generator": None} if takes_generator else {}))
    except TypeError as e:
        raise usercode.UserCodeError(f"init '{spec}' must take the weight tensor as its one argument "
                                     f"(torch.nn.init style, fn(w, generator=None)): {e}") from None
    return takes_generator


def _check_result(spec: str, w, out, shape: tuple) -> None:
    """An init fills `w` in place and returns it (or None), or returns a tensor of exactly w's shape. Anything else
    (a list, a number, a tensor that would broadcast, a `w` resized in place) is an error, not something to guess."""
    torch = _torch()
    if tuple(w.shape) != shape:
        raise usercode.UserCodeError(f"init '{spec}' changed the weight's shape from {list(shape)} to "
                                     f"{list(w.shape)}")
    if out is None or out is w:
        return
    if not isinstance(out, torch.Tensor):
        raise usercode.UserCodeError(f"init '{spec}' returned {type(out).__name__}, expected the weight tensor "
                                     f"(shape {list(shape)}) or None")
    if tuple(out.shape) != shape:
        raise usercode.UserCodeError(f"init '{spec}' returned a tensor of shape {list(out.shape)}, expected "
                                     f"{list(shape)}")


def _torch():
    import torch

    return torch
