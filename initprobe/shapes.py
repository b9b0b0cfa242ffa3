"""The shapes a config describes: each layer's (in, out) size, its weight's shape, element and operation counts.
No torch: theory, the sweep's run order and the memory estimate need them before any tensor exists."""

import math

from .config import RunConfig


def layer_sizes(cfg: RunConfig) -> list[tuple[int, int]]:
    """(in, out) features or channels of each layer; the first maps the input to `width`."""
    first = cfg.in_channels if cfg.arch == "cnn" else (cfg.input_dim or cfg.width)
    return [(first if l == 0 else cfg.width, cfg.width) for l in range(cfg.depth)]


def weight_shape(cfg: RunConfig, n_in: int, n_out: int) -> tuple[int, ...]:
    """As nn.Linear (out, in) / nn.Conv2d (out, in, k, k), so fans are PyTorch's."""
    return (n_out, n_in) if cfg.arch == "mlp" else (n_out, n_in, cfg.kernel_size, cfg.kernel_size)


def weight_shapes(cfg: RunConfig) -> list[tuple[int, ...]]:
    return [weight_shape(cfg, *io) for io in layer_sizes(cfg)]


def weight_sizes(cfg: RunConfig) -> list[int]:
    """Elements of each layer's weight."""
    return [math.prod(s) for s in weight_shapes(cfg)]


def positions(cfg: RunConfig) -> int:
    """Output positions per example: 1 for the MLP, image_size^2 for the CNN."""
    return cfg.image_size**2 if cfg.arch == "cnn" else 1


def multiply_adds(cfg: RunConfig) -> int:
    """Multiply-adds of one forward pass of a batch (the backward pass costs twice that)."""
    return cfg.batch * positions(cfg) * sum(weight_sizes(cfg))
