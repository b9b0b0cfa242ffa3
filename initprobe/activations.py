"""Activation registry: everything known about a nonlinearity in one entry (as neural-tangents keeps a nonlinearity
and its kernel together): its torch function, numpy phi and phi' for theory, PyTorch's gain, where it is flat, and
the closed forms theory can use (piecewise-linear: the arc-cosine kernel).

No torch import at module level, so `initprobe list` and `initprobe theory` stay instant; the torch function is
made on first use (`torch_fn`).
"""

import functools
import math
from dataclasses import dataclass
from typing import Callable

from .names import unknown


class _LazyNumpy:
    """numpy, imported on first use: `initprobe --help` needs only the registry's names, and should not pay for
    importing numpy. The first attribute access replaces this placeholder with the module itself."""

    def __getattr__(self, name):
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np = _LazyNumpy()

SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
SATURATION_LEVEL = 0.05  # saturated where abs(phi'(h)) < 5% of max abs(phi') (docs/architecture.md)


def _sigmoid(x):
    e = np.exp(-np.abs(x))  # overflow-free logistic, accurate in both tails (1 + tanh(x/2) cancels for x << 0)
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _norm_cdf(x):
    return 0.5 * (1.0 + np.vectorize(math.erf, otypes=[float])(x / math.sqrt(2.0)))


def _norm_pdf(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _mish_grad(x):
    t, s = np.tanh(_softplus(x)), _sigmoid(x)
    return t + x * (1.0 - t * t) * s


@dataclass(frozen=True)
class Activation:
    name: str
    formula: str
    phi: Callable  # numpy phi(x, slope)
    dphi: Callable  # numpy phi'(x, slope)
    torch: Callable  # torch(slope) -> the torch function h -> phi(h) (torch imported on the first call)
    torch_gain: Callable | None = None  # torch.nn.init.calculate_gain(name) as f(slope); None if PyTorch has none
    gain_formula: str | None = None  # the gain as `initprobe list` writes it, where it depends on the slope
    odd: bool = False  # phi(-x) = -phi(x): the zero-correlation fixed point of theory
    negative_slope: Callable | None = None  # piecewise linear, phi = x (x > 0), a x (x < 0): a as f(slope)
    takes_slope: bool = False  # phi depends on the `slope` option
    # tensors of h's size autograd keeps per layer: what phi saves for its backward, and its output, which the next
    # layer saves (one tensor when phi saves its output): the memory estimate's activations (memory.py)
    saves: int = 2

    def gain(self, slope: float = 0.01) -> float:
        """PyTorch's gain where it defines one, else the gain that keeps a unit Gaussian's second moment."""
        if self.torch_gain is not None:
            return float(self.torch_gain(slope))
        return 1.0 / math.sqrt(second_moment(self, 1.0, slope))

    def max_abs_dphi(self, slope: float = 0.01) -> float:
        return float(np.max(np.abs(self.dphi(_grid(), slope))))

    @functools.lru_cache(maxsize=64)  # noqa: B019  (registry entries live as long as the process)
    def saturation(self, slope: float = 0.01):
        """How the probe finds the flat part of phi, abs(phi'(h)) < 5% of max abs(phi'):
        ('interval', (lo, hi)) when the non-flat set is one interval (checking h against two numbers is
        cheap), else ('threshold', t) to compare abs(phi'(h)) with t elementwise."""
        threshold = SATURATION_LEVEL * self.max_abs_dphi(slope)
        grid = _grid()
        live = np.abs(self.dphi(grid, slope)) >= threshold
        idx = np.flatnonzero(live)
        if idx.size == 0 or idx[-1] - idx[0] + 1 != idx.size:
            return "threshold", threshold
        lo = -math.inf if idx[0] == 0 else _edge(self, slope, threshold, grid[idx[0] - 1], grid[idx[0]])
        hi = math.inf if idx[-1] == grid.size - 1 else _edge(self, slope, threshold, grid[idx[-1] + 1],
                                                             grid[idx[-1]])
        return "interval", (lo, hi)


@functools.cache
def _grid():
    """Where phi' is inspected; beyond it every phi' is monotone."""
    return np.linspace(-50.0, 50.0, 1_000_001)


def _edge(act, slope, threshold, flat, live) -> float:
    """Bisect for the boundary between a flat grid point and a live one."""
    for _ in range(60):
        mid = 0.5 * (flat + live)
        if abs(act.dphi(np.array([mid]), slope)[0]) >= threshold:
            live = mid
        else:
            flat = mid
    return float(live)


def _torch(path: str, **slope_kwarg):
    """torch(slope) for `path` ('tanh' in torch, 'F.relu' in torch.nn.functional); with `slope_kwarg`
    ({'negative_slope': None}) the slope is passed as that keyword."""
    def make(slope: float = 0.01):
        import torch
        import torch.nn.functional as F

        fn = getattr(F, path[2:]) if path.startswith("F.") else getattr(torch, path)
        return functools.partial(fn, **{k: slope for k in slope_kwarg}) if slope_kwarg else fn
    return make


def _identity_torch(slope: float = 0.01):
    return _identity


def _identity(h):
    return h


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("identity", "x", lambda x, s: x, lambda x, s: np.ones_like(x), _identity_torch, lambda s: 1.0,
                   odd=True, negative_slope=lambda s: 1.0, saves=1),
        Activation("tanh", "tanh(x)", lambda x, s: np.tanh(x), lambda x, s: 1.0 - np.tanh(x) ** 2, _torch("tanh"),
                   lambda s: 5.0 / 3.0, odd=True, saves=1),
        Activation("sigmoid", "1/(1+exp(-x))", lambda x, s: _sigmoid(x),
                   lambda x, s: _sigmoid(x) * (1.0 - _sigmoid(x)), _torch("sigmoid"), lambda s: 1.0, saves=1),
        Activation("softsign", "x/(1+|x|)", lambda x, s: x / (1.0 + np.abs(x)),
                   lambda x, s: 1.0 / (1.0 + np.abs(x)) ** 2, _torch("F.softsign"), odd=True, saves=3),
        Activation("hardtanh", "clip(x, -1, 1)", lambda x, s: np.clip(x, -1.0, 1.0),
                   lambda x, s: (np.abs(x) < 1.0).astype(float), _torch("F.hardtanh"), odd=True),
        Activation("relu", "max(x, 0)", lambda x, s: np.maximum(x, 0.0), lambda x, s: (x > 0).astype(float),
                   _torch("F.relu"), lambda s: math.sqrt(2.0), negative_slope=lambda s: 0.0, saves=1),
        Activation("leaky_relu", "x if x>0 else slope*x", lambda x, s: np.where(x > 0, x, s * x),
                   lambda x, s: np.where(x > 0, 1.0, s), _torch("F.leaky_relu", negative_slope=None),
                   lambda s: math.sqrt(2.0 / (1.0 + s * s)), gain_formula="sqrt(2/(1+slope^2))",
                   negative_slope=lambda s: s, takes_slope=True),
        Activation("elu", "x if x>0 else exp(x)-1", lambda x, s: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
                   lambda x, s: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0))), _torch("F.elu")),
        Activation("selu", "lambda*(x if x>0 else alpha*(exp(x)-1))",
                   lambda x, s: SELU_LAMBDA * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
                   lambda x, s: SELU_LAMBDA * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0))),
                   _torch("F.selu"), lambda s: 0.75),
        Activation("gelu", "x*Phi(x) (exact, erf)", lambda x, s: x * _norm_cdf(x),
                   lambda x, s: _norm_cdf(x) + x * _norm_pdf(x), _torch("F.gelu")),
        Activation("silu", "x*sigmoid(x)", lambda x, s: x * _sigmoid(x),
                   lambda x, s: _sigmoid(x) * (1.0 + x * (1.0 - _sigmoid(x))), _torch("F.silu")),
        Activation("softplus", "log(1+exp(x))", lambda x, s: _softplus(x), lambda x, s: _sigmoid(x),
                   _torch("F.softplus")),
        Activation("mish", "x*tanh(softplus(x))", lambda x, s: x * np.tanh(_softplus(x)), lambda x, s: _mish_grad(x),
                   _torch("F.mish")),
        Activation("sin", "sin(x)", lambda x, s: np.sin(x), lambda x, s: np.cos(x), _torch("sin"), odd=True),
    ]
}
ALIASES = {"linear": "identity", "swish": "silu"}


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def choices() -> list[str]:
    return sorted([*ACTIVATIONS, *ALIASES])


def get(name: str) -> Activation:
    """The activation called `name` (aliases allowed); unknown names raise KeyError naming the closest ones."""
    key = canonical(name)
    if key not in ACTIVATIONS:
        raise KeyError(unknown("activation", name, choices()))
    return ACTIVATIONS[key]


@functools.cache
def _trapezoid_rule():
    """Nodes and weights of E_z[f(z)], z ~ N(0, 1), on a dense grid: Gauss-Hermite converges slowly where phi has
    kinks (201 nodes put E[hardtanh(5z)^2] 2% off); this grid is within ~1e-6 relative for every activation here."""
    z = np.linspace(-10.0, 10.0, 20_001)
    return z, np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * (z[1] - z[0])


def second_moment(act: Activation, q: float, slope: float = 0.01) -> float:
    """E[phi(sqrt(q) z)^2] for z ~ N(0, 1), by the trapezoid rule on a dense grid of z."""
    z, weights = _trapezoid_rule()
    return float(np.sum(weights * act.phi(math.sqrt(q) * z, slope) ** 2))


def torch_fn(name: str, slope: float = 0.01) -> Callable:
    """The torch function of activation `name` (torch is imported on the first call)."""
    return get(name).torch(slope)
