"""The block and normalization registries: what each kind of block and norm builds, and what the probe, theory,
the summary and validation need to know about it (docs/architecture.md). No torch at import: `initprobe --help`,
`list` and `theory` read these entries; the torch function of a norm is made on first use.

Blocks (layer l = 1..depth, phi the activation, N the norm):
- plain:    h^l = N(W^l x^{l-1} + b^l), x^l = phi(h^l)                     (conv-BN-ReLU order)
- residual: x^1 = W^1 x^0 + b^1, a linear stem (no phi, no norm, no skip) mapping the input to the width;
            x^l = x^{l-1} + alpha (W^l phi(h^l) + b^l), h^l = N(x^{l-1})  (l >= 2; pre-activation, ResNet v2)

Norms, in train mode as at the first step of training, affine gamma = 1, beta = 0, eps = EPS:
- batch: each unit (MLP) or channel (CNN) standardized over the batch (and the positions);
- layer: each example standardized over its units (MLP) or over (C, H, W) (CNN: GroupNorm with one group).
"""

from dataclasses import dataclass
from typing import Callable

from .names import unknown

EPS = 1e-5  # batch and layer norm's eps, torch's default: the variance is divided by sqrt(var + EPS)


@dataclass(frozen=True)
class Block:
    name: str
    description: str
    stem: bool  # layer 1 is a linear stem and layers 2.. carry a branch (branch_var, branch_scale apply)
    saved_per_layer: int  # (batch x width) tensors autograd keeps per layer, for the probe's memory estimate

    @property
    def stream_gradient(self) -> str:
        """The gradient column that carries the signal from the top to layer 1, the summary's backward ratio:
        dL/dh^l for plain blocks; for residual blocks dL/dx^l, the residual stream's (their dL/dh^l is one
        branch's share, 0 at every block where alpha = 0)."""
        return "grad_act_var" if self.stem else "grad_preact_var"


@dataclass(frozen=True)
class Norm:
    name: str
    description: str
    over: str | None  # "batch": each unit over the batch (and positions); "example": each example over its units
    saved_per_layer: int = 1  # tensors it adds to what autograd keeps per layer

    @property
    def standardizes(self) -> bool:
        return self.over is not None

    def group_size(self, width: int, batch: int, positions: int) -> int:
        """How many values each of its statistics is taken over (2 at least for a variance that is not 0)."""
        if self.over == "batch":
            return batch * positions
        if self.over == "example":
            return width * positions
        return 0

    def torch_fn(self) -> Callable | None:
        """h -> N(h) for (batch, units) or (batch, C, H, W) tensors; None for no norm."""
        if self.over is None:
            return None
        import torch.nn.functional as F

        if self.over == "batch":
            return lambda h: F.batch_norm(h, None, None, training=True, eps=EPS)
        return lambda h: F.layer_norm(h, h.shape[1:], eps=EPS)


BLOCKS = {
    "plain": Block("plain", "h = N(W x + b), x = phi(h): the stacks of the 2010-2017 papers", stem=False,
                   saved_per_layer=2),
    "residual": Block("residual", "layer 1 a linear stem, then x = x + alpha (W phi(N(x)) + b): pre-activation "
                      "ResNet blocks, one weight layer per branch", stem=True, saved_per_layer=3),
}

NORMS = {
    "none": Norm("none", "no normalization", over=None, saved_per_layer=0),
    "batch": Norm("batch", "each unit (MLP) or channel (CNN) standardized over the batch (and positions), train "
                  "mode, gamma 1, beta 0", over="batch"),
    "layer": Norm("layer", "each example standardized over its units (MLP) or over (C, H, W) (CNN: GroupNorm with "
                  "one group), gamma 1, beta 0", over="example"),
}


def block(name: str) -> Block:
    if name not in BLOCKS:
        raise KeyError(unknown("block", name, list(BLOCKS)))
    return BLOCKS[name]


def norm(name: str) -> Norm:
    if name not in NORMS:
        raise KeyError(unknown("norm", name, list(NORMS)))
    return NORMS[name]


def block_choices() -> list[str]:
    return list(BLOCKS)


def norm_choices() -> list[str]:
    return list(NORMS)
