"""The probed network (docs/architecture.md): `depth` Linear or Conv2d layers, as plain (weight, bias) tensors, put
together into plain or residual blocks with an optional norm by `Net` (the blocks: initprobe/blocks.py).

Layer l (1-based in files and plots) is `params[l - 1]` here. Each layer's weights are drawn from a generator
of its own, seeded from the run's seed, so any layer can be made again on demand: the checkpointed probe
regenerates weights in the backward pass instead of holding 10,000 layers of them in memory, and gets the same
numbers as the plain path.
"""

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from . import activations, blocks, config, inits
from .shapes import layer_size, weight_shape

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def layer_seeds(depth: int, generator: torch.Generator) -> list[int]:
    return torch.randint(2**62, (depth,), generator=generator, device=generator.device).tolist()


def init_bias_(b, w, cfg: config.RunConfig, generator):
    if cfg.bias == "zeros":
        return b.zero_()
    if cfg.bias == "torch_default":  # nn.Linear/Conv2d: U(+-1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(inits.fans(w)[0])
        return b.uniform_(-bound, bound, generator=generator)
    return b.normal_(0.0, cfg.bias_std, generator=generator)


@torch.no_grad()
def make_layer(cfg: config.RunConfig, l: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of layer index l (0-based), drawn from a generator seeded with `seed`.
    A data-dependent init (lsuv) starts orthogonal; build() rescales it on a batch."""
    n_in, n_out = layer_size(cfg, l)
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[cfg.dtype]
    w = torch.empty(weight_shape(cfg, n_in, n_out), device=device, dtype=dtype)
    b = torch.empty(n_out, device=device, dtype=dtype)
    return init_(cfg, w, b, gen)


@torch.no_grad()
def init_(cfg: config.RunConfig, w, b, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight w and bias b initialized in place as `cfg` says, from `generator`. A data-dependent init (lsuv) starts
    orthogonal (build() rescales it on a batch)."""
    spec = inits.get(cfg.init)
    if spec.data_dependent:
        inits.orthogonal_(w, generator=generator)
    else:
        spec.fn(w, generator=generator, **config.init_params(cfg))
    init_bias_(b, w, cfg, generator)
    return w, b


def block(cfg: config.RunConfig, x, w, b):
    """h = W x + b (MLP) or a stride-1 'same' convolution (CNN), padded as nn.Conv2d pads."""
    if cfg.arch == "mlp":
        return F.linear(x, w, b)
    p = cfg.kernel_size // 2
    if cfg.padding == "circular":
        return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), w, b)
    return F.conv2d(x, w, b, padding=p)


class Step(NamedTuple):
    """What one layer's forward made: `out` the weight layer's output (W x + b; a residual block's branch before
    alpha), `h` the input of phi (the stem's own output x^1: it has no phi), `x` the layer's output x^l, `branch`
    a residual block's W phi(h) + b (None for plain blocks and the stem)."""

    out: torch.Tensor
    h: torch.Tensor
    x: torch.Tensor
    branch: torch.Tensor | None


@dataclass(frozen=True)
class Net:
    """The blocks of a config around its layers' weights: `layer(l, x, w, b)` is layer index l's forward."""

    cfg: config.RunConfig
    phi: Callable
    norm: Callable | None  # None: no norm
    alpha: float  # the residual branches' scale
    residual: bool

    @classmethod
    def of(cls, cfg: config.RunConfig, phi: Callable) -> "Net":
        return cls(cfg, phi, blocks.norm(cfg.norm).torch_fn(), config.branch_alpha(cfg), blocks.block(cfg.block).stem)

    def is_stem(self, l: int) -> bool:
        return self.residual and l == 0

    def layer(self, l: int, x, w, b) -> Step:
        if self.is_stem(l):
            x = block(self.cfg, x, w, b)
            return Step(x, x, x, None)
        if self.residual:
            # without a norm h is a copy of x, a tensor of its own: dL/dh is then the branch's share of dL/dx alone
            h = self.norm(x) if self.norm else x.clone()
            branch = block(self.cfg, self.phi(h), w, b)
            return Step(branch, h, torch.add(x, branch, alpha=self.alpha), branch)
        out = block(self.cfg, x, w, b)
        h = self.norm(out) if self.norm else out
        return Step(out, h, self.phi(h), None)

    def forward(self, params, x):
        """x^depth for input x (no statistics)."""
        for l, (w, b) in enumerate(params):
            x = self.layer(l, x, w, b).x
        return x


@torch.no_grad()
def build(cfg: config.RunConfig, seeds: list[int], device, lsuv_input=None) -> list[tuple]:
    """All layers' (weight, bias), weights as leaves that require grad (biases need none)."""
    params = [make_layer(cfg, l, s, device) for l, s in enumerate(seeds)]
    if needs_batch(cfg):
        lsuv_rescale_(cfg, params, lsuv_input)
    return [(w.requires_grad_(), b) for w, b in params]


def needs_batch(cfg: config.RunConfig) -> bool:
    """Whether building the network needs a batch of inputs (a data-dependent init)."""
    return inits.get(cfg.init).data_dependent


def lsuv_rescale_(cfg, params, x):
    """Each weight layer's output (W x + b: the pre-activation of a plain block before its norm, a residual block's
    branch before alpha, the stem) rescaled to unit variance on the batch x."""
    net = Net.of(cfg, activations.torch_fn(cfg.act, cfg.slope))

    def forward_one(l, x):
        step = net.layer(l, x, *params[l])
        return step.out, step.x

    inits.lsuv_([w for w, _ in params], forward_one, x)


def make_input(cfg: config.RunConfig, batch: int, device, generator) -> torch.Tensor:
    """x0 ~ N(0, 1): (batch, input_dim) for the MLP, (batch, in_channels, size, size) for the CNN."""
    if cfg.arch == "mlp":
        shape = (batch, cfg.input_dim or cfg.width)
    else:
        shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    return torch.randn(shape, device=device, dtype=DTYPES[cfg.dtype], generator=generator)


def make_readout(cfg: config.RunConfig, classes: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained network's linear readout from the last block to `classes` logits, initialized like the blocks
    (the same scheme and biases, from a generator seeded with `seed`). Its weight is (classes, width) for the MLP and
    (classes, width, 1, 1) for the CNN, which reads each channel's mean over the positions: with a 1x1 kernel the
    fans are the Linear's, and a CNN-only init (delta_orthogonal) applies too. A data-dependent init leaves it
    orthogonal, as lsuv starts (there is no batch to rescale it on)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (classes, cfg.width) if cfg.arch == "mlp" else (classes, cfg.width, 1, 1)
    w = torch.empty(shape, device=device, dtype=DTYPES[cfg.dtype])
    b = torch.empty(classes, device=device, dtype=DTYPES[cfg.dtype])
    return init_(cfg, w, b, gen)


def readout(cfg: config.RunConfig, x, w, b):
    """Logits (batch, classes) of the last block's output x: W x + b (the CNN's x averaged over positions first)."""
    if cfg.arch == "cnn":
        x = x.mean(dim=(2, 3))  # (batch, width)
    return F.linear(x, w.flatten(1), b)
