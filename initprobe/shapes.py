"""The shapes a config describes: each layer's (in, out) size, its weight's shape, element and operation counts.
No torch: theory, the sweep's run order and the memory estimate need them before any tensor exists. Every layer but
the first has the same shape, so counts over the network are closed forms: nothing here makes a list per layer
except the per-layer lists themselves (theory's), which a config is checked to fit before they are made."""

from fractions import Fraction

from .config import RunConfig

SPREAD_LAYERS = 5


def spread_layers(depth: int, n: int = SPREAD_LAYERS) -> tuple[int, ...]:
    """At most n layer numbers spread evenly from the first to the last: the layers a run keeps histograms of, and
    the layers a training figure draws."""
    return tuple(sorted({1 + round(Fraction(i * (depth - 1), max(n - 1, 1))) for i in range(n)}))  # exact at any depth


def input_size(cfg: RunConfig) -> int:
    """Features (MLP) or channels (CNN) of the network's input: what layer 1 maps to `width`."""
    return cfg.in_channels if cfg.arch == "cnn" else (cfg.input_dim or cfg.width)


def layer_size(cfg: RunConfig, l: int) -> tuple[int, int]:
    """(in, out) features or channels of layer index l (0-based)."""
    return (input_size(cfg) if l == 0 else cfg.width), cfg.width


def weight_shape(cfg: RunConfig, n_in: int, n_out: int) -> tuple[int, ...]:
    """As nn.Linear (out, in) / nn.Conv2d (out, in, k, k), so fans are PyTorch's."""
    return (n_out, n_in) if cfg.arch == "mlp" else (n_out, n_in, cfg.kernel_size, cfg.kernel_size)


def weight_size(cfg: RunConfig, l: int) -> int:
    """Elements of layer index l's weight."""
    n_in, n_out = layer_size(cfg, l)
    return n_in * n_out * (cfg.kernel_size**2 if cfg.arch == "cnn" else 1)


def total_weights(cfg: RunConfig) -> int:
    """Elements of every layer's weight."""
    return weight_size(cfg, 0) + (cfg.depth - 1) * weight_size(cfg, 1)


def positions(cfg: RunConfig) -> int:
    """Output positions per example: 1 for the MLP, image_size^2 for the CNN."""
    return cfg.image_size**2 if cfg.arch == "cnn" else 1


def multiply_adds(cfg: RunConfig) -> int:
    """Multiply-adds of one forward pass of a batch (the backward pass costs twice that)."""
    return cfg.batch * positions(cfg) * total_weights(cfg)
