"""Build the probed network from a RunConfig: `depth` Linear or Conv2d layers, the activation applied by the
probe. `layers[l - 1]` is layer l of DESIGN section 1 everywhere in the code."""

import math

import torch
from torch import nn

from . import activations, config, inits

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def layer_sizes(cfg: config.RunConfig) -> list[tuple[int, int]]:
    """(in, out) features or channels of each layer; the first maps the input to `width`."""
    first = cfg.in_channels if cfg.arch == "cnn" else (cfg.input_dim or cfg.width)
    return [(first if l == 0 else cfg.width, cfg.width) for l in range(cfg.depth)]


def empty_layers(cfg: config.RunConfig, device, dtype) -> nn.ModuleList:
    def make(n_in, n_out):
        if cfg.arch == "mlp":
            return nn.Linear(n_in, n_out, device="meta", dtype=dtype)
        return nn.Conv2d(n_in, n_out, cfg.kernel_size, padding=cfg.kernel_size // 2,
                         padding_mode=cfg.padding, device="meta", dtype=dtype)

    # on "meta" nn skips its own default init, which we would overwrite anyway
    return nn.ModuleList(make(i, o) for i, o in layer_sizes(cfg)).to_empty(device=device)


def init_bias_(b, w, cfg: config.RunConfig, generator):
    if cfg.bias == "zeros":
        return b.zero_()
    if cfg.bias == "torch_default":  # nn.Linear/Conv2d: U(+-1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(inits.fans(w)[0])
        return b.uniform_(-bound, bound, generator=generator)
    return b.normal_(0.0, cfg.bias_std, generator=generator)


@torch.no_grad()
def build(cfg: config.RunConfig, device, generator, lsuv_input=None) -> nn.ModuleList:
    """The network for one seed, every weight and bias drawn from `generator`."""
    layers = empty_layers(cfg, device, DTYPES[cfg.dtype])
    spec = inits.get(cfg.init)
    params = config.init_params(cfg)
    for layer in layers:
        init_bias_(layer.bias, layer.weight, cfg, generator)
        if spec.fn is not inits.lsuv_:
            spec.fn(layer.weight, generator=generator, **params)
    if spec.fn is inits.lsuv_:
        phi = activations.torch_fn(cfg.act, cfg.slope)

        def forward_one(l, x):
            h = layers[l](x)
            return h, phi(h)

        inits.lsuv_(layers, forward_one, lsuv_input, generator=generator)
    return layers


def make_input(cfg: config.RunConfig, batch: int, device, generator) -> torch.Tensor:
    """x0 ~ N(0, 1): (batch, input_dim) for the MLP, (batch, in_channels, size, size) for the CNN."""
    if cfg.arch == "mlp":
        shape = (batch, cfg.input_dim or cfg.width)
    else:
        shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    return torch.randn(shape, device=device, dtype=DTYPES[cfg.dtype], generator=generator)
