"""Activation registry: name -> torch function, PyTorch gain, and the numpy phi/phi' that theory needs.

No torch import at module level, so `initprobe list` and `initprobe theory` stay instant; the torch
function is looked up on first use by `torch_fn`.
"""

import difflib
import functools
import math
from dataclasses import dataclass
from typing import Callable


class _LazyNumpy:
    """numpy, imported on first use: `initprobe --help` needs only the registry's names, and importing numpy
    costs it ~0.1 s. The first attribute access replaces this placeholder with the module itself."""

    def __getattr__(self, name):
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np = _LazyNumpy()

SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
SATURATION_LEVEL = 0.05  # saturated where abs(phi'(h)) < 5% of max abs(phi') (DESIGN section 1)


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
    torch_gain: Callable | None = None  # torch.nn.init.calculate_gain(name) as f(slope); None if PyTorch has none
    odd: bool = False  # phi(-x) = -phi(x): the zero-correlation fixed point of theory

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


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("identity", "x", lambda x, s: x, lambda x, s: np.ones_like(x), lambda s: 1.0, odd=True),
        Activation("tanh", "tanh(x)", lambda x, s: np.tanh(x), lambda x, s: 1.0 - np.tanh(x) ** 2,
                   lambda s: 5.0 / 3.0, odd=True),
        Activation("sigmoid", "1/(1+exp(-x))", lambda x, s: _sigmoid(x),
                   lambda x, s: _sigmoid(x) * (1.0 - _sigmoid(x)), lambda s: 1.0),
        Activation("softsign", "x/(1+|x|)", lambda x, s: x / (1.0 + np.abs(x)),
                   lambda x, s: 1.0 / (1.0 + np.abs(x)) ** 2, odd=True),
        Activation("hardtanh", "clip(x, -1, 1)", lambda x, s: np.clip(x, -1.0, 1.0),
                   lambda x, s: (np.abs(x) < 1.0).astype(float), odd=True),
        Activation("relu", "max(x, 0)", lambda x, s: np.maximum(x, 0.0), lambda x, s: (x > 0).astype(float),
                   lambda s: math.sqrt(2.0)),
        Activation("leaky_relu", "x if x>0 else slope*x", lambda x, s: np.where(x > 0, x, s * x),
                   lambda x, s: np.where(x > 0, 1.0, s), lambda s: math.sqrt(2.0 / (1.0 + s * s))),
        Activation("elu", "x if x>0 else exp(x)-1", lambda x, s: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
                   lambda x, s: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))),
        Activation("selu", "lambda*(x if x>0 else alpha*(exp(x)-1))",
                   lambda x, s: SELU_LAMBDA * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
                   lambda x, s: SELU_LAMBDA * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0))),
                   lambda s: 0.75),
        Activation("gelu", "x*Phi(x) (exact, erf)", lambda x, s: x * _norm_cdf(x),
                   lambda x, s: _norm_cdf(x) + x * _norm_pdf(x)),
        Activation("silu", "x*sigmoid(x)", lambda x, s: x * _sigmoid(x),
                   lambda x, s: _sigmoid(x) * (1.0 + x * (1.0 - _sigmoid(x)))),
        Activation("softplus", "log(1+exp(x))", lambda x, s: _softplus(x), lambda x, s: _sigmoid(x)),
        Activation("mish", "x*tanh(softplus(x))", lambda x, s: x * np.tanh(_softplus(x)), lambda x, s: _mish_grad(x)),
        Activation("sin", "sin(x)", lambda x, s: np.sin(x), lambda x, s: np.cos(x), odd=True),
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
        raise KeyError(unknown_message("activation", name, choices()))
    return ACTIVATIONS[key]


def unknown_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), valid, n=3, cutoff=0.5)  # ReLU, GELU: torch class names
    hint = f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(valid)}"
    return f"unknown {kind} '{name}'; {hint}"


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
    """The torch function for activation `name` (imported here so the registry itself needs no torch)."""
    import torch
    import torch.nn.functional as F

    fns = {
        "identity": lambda h: h,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "softsign": F.softsign,
        "hardtanh": F.hardtanh,
        "relu": F.relu,
        "leaky_relu": lambda h: F.leaky_relu(h, slope),
        "elu": F.elu,
        "selu": F.selu,
        "gelu": F.gelu,
        "silu": F.silu,
        "softplus": F.softplus,
        "mish": F.mish,
        "sin": torch.sin,
    }
    return fns[canonical(name)]
