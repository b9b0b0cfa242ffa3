"""One forward and backward pass through any nn.Module (--model), recording statistics of the modules that --record
selects: one row per recorded module call, in forward execution order (docs/models.md).

How each statistic is taken, and why that way:
- The output's statistics are computed inside the module's forward hook, on the device, before anything after the
  module can change the output in place (ReLU(inplace=True) after a norm, `x += residual`).
- dL/d(output) comes from a tensor hook registered in the forward hook: it fires with the gradient with respect to
  the output as the module returned it, even when the output is modified in place later. Full backward hooks would
  fail on such in-place ops. A tensor hook on a view (nn.Linear on (N, T, C) input returns one) is dropped when the
  view is modified in place, so for a view whose base it covers whole, the node that made the base is hooked too;
  its gradient is used only where the view's own hook did not fire.
- A module called several times gets a row per call, each with hooks of its own (`call` = 1, 2, ...).
- A weight's statistics are taken before the forward pass; its gradient's when autograd has accumulated it (a
  shared module's weight gets one gradient, the sum over its calls, on each of its rows).
- Nothing leaves the device in a hook: each call leaves a few 0-d tensors, stacked when the pass is over, and the
  caller moves every seed's rows to the host in one transfer.

Columns that do not apply to a row are NaN, written as empty cells: a module without a `weight`, an output that does
not reach the loss (no gradient: BERT's pooler when the loss is on last_hidden_state), channel statistics of an
output without channels, token_corr of an output that is not an (N, T, C) sequence.
"""

import collections
import itertools
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import any_model, config, probe, stats, usercode
from .config import ConfigError
from .names import one_line

COLUMNS = ["act_mean", "act_var", "grad_act_var", "weight_var", "weight_sq_mean", "weight_grad_var", "zero_frac",
           "chan_sq_mean", "chan_var", "token_corr"]
KEYS = ["seed", "layer", "module", "module_type", "call"]
FORWARD = ("act_mean", "act_var", "chan_sq_mean", "chan_var", "zero_frac", "token_corr")  # forward_stats' order
WEIGHT = ("weight_var", "weight_sq_mean")
ORDER = [(*FORWARD, "grad_act_var", *WEIGHT, "weight_grad_var").index(c) for c in COLUMNS]
ROOT = "(model)"  # the qualified name of the model itself ("" in named_modules)
# modules whose 3-D output is (N, C, L): channels in dim 1; every other 3-D output is an (N, T, C) sequence
CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)


class RecorderFailure(Exception):
    """An error in initprobe's own hooks: a bug to show, not the model rejecting its input."""


@dataclass
class Target:
    """A recorded module: its qualified name, whether it is a block (recorded only when its output has its input's
    shape), and which dim of a 3-D output holds its channels."""

    name: str
    module: nn.Module
    block: bool
    channel_first: bool


def select(model: nn.Module, record: str) -> list[Target]:
    """The modules `record` names: params (every module owning parameters itself), blocks (the items of an
    nn.ModuleList/nn.Sequential that have submodules of their own), or those whose whole qualified name matches a
    regular expression."""
    named = [(name or ROOT, module) for name, module in model.named_modules()]
    if record == "params":
        chosen = [(n, m) for n, m in named if any(True for _ in m.parameters(recurse=False))]
    elif record == "blocks":
        items = {id(c) for _, m in named if isinstance(m, (nn.ModuleList, nn.Sequential)) for c in m.children()}
        chosen = [(n, m) for n, m in named if id(m) in items and any(True for _ in m.children())]
    else:
        pattern = re.compile(record)
        chosen = [(n, m) for n, m in named if pattern.fullmatch(n)]
    return [Target(n, m, record == "blocks", isinstance(m, CHANNEL_FIRST)) for n, m in chosen]


@dataclass
class Row:
    target: Target
    call: int
    inside: tuple[int, ...]  # the block calls this call happened inside (blocks: only the outermost are kept)
    channels: bool  # the output has channels (2 dims or more)
    sequence: bool  # the output is an (N, T, C) sequence


@dataclass
class ModuleRecorder:
    """Hooks on the selected modules of `model` while in a `with` block; rows() afterwards."""

    model: nn.Module
    targets: list[Target]
    rows: list[Row] = field(default_factory=list)
    forward: list[torch.Tensor] = field(default_factory=list)  # (len(FORWARD),) per row
    grads: dict[int, torch.Tensor] = field(default_factory=dict)  # row -> Var(dL/d output), 0-d
    weights: dict[int, torch.Tensor] = field(default_factory=dict)  # id(weight) -> (len(WEIGHT),)
    weight_grads: dict[int, torch.Tensor] = field(default_factory=dict)  # id(weight) -> Var(dL/dW), 0-d

    def __post_init__(self):
        self.handles, self.calls = [], collections.Counter()
        self.open_blocks, self.kept_blocks = [], set()  # block calls under way; block calls recorded
        self.block_ids = itertools.count()

    def __enter__(self):
        for target in self.targets:
            self.handles.append(target.module.register_forward_hook(self.hook(target), with_kwargs=True))
            if target.block:
                self.handles.append(target.module.register_forward_pre_hook(self.open_block))
            self.watch_weight(weight_of(target.module))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def watch_weight(self, weight: torch.Tensor | None) -> None:
        """The weight's statistics now, its gradient's once autograd has accumulated it."""
        if weight is None or id(weight) in self.weights:
            return
        mean, sq_mean = stats.raw_moments(weight)
        self.weights[id(weight)] = torch.stack([(sq_mean - mean.square()).clamp_min(0), sq_mean])
        if weight.requires_grad and weight.is_leaf:
            self.handles.append(weight.register_post_accumulate_grad_hook(self.take_weight_grad))

    def take_weight_grad(self, weight: torch.Tensor) -> None:
        mean, sq_mean = stats.raw_moments(weight.grad)
        self.weight_grads[id(weight)] = (sq_mean - mean.square()).clamp_min(0)

    def open_block(self, module, args):
        self.open_blocks.append(next(self.block_ids))

    def hook(self, target: Target) -> Callable:
        def on_output(module, args, kwargs, output):  # returns None: the output is left as it is
            block_call = self.open_blocks.pop() if target.block else None
            try:
                self.record(target, args, kwargs, output, block_call)
            except Exception as e:
                raise RecorderFailure(f"recording {target.name}: {one_line(e)}") from e

        return on_output

    def record(self, target: Target, args, kwargs, output, block_call) -> None:
        y, _ = any_model.primary(output)
        if y is None or not y.is_floating_point():
            return
        self.calls[target.name] += 1
        if target.block:
            x = block_input(args, kwargs)
            if x is None or x.shape != y.shape:
                return
            self.kept_blocks.add(block_call)
        index = len(self.rows)
        sequence = y.dim() == 3 and not target.channel_first
        self.rows.append(Row(target, self.calls[target.name], tuple(self.open_blocks), y.dim() >= 2, sequence))
        self.forward.append(forward_stats(y, sequence))
        if y.requires_grad and torch.is_grad_enabled():
            self.hook_gradient(y, index)

    def hook_gradient(self, y: torch.Tensor, index: int) -> None:
        """Var(dL/dy) of this call into grads[index] (see the module docstring for views)."""
        if not y._is_view():
            y.register_hook(lambda grad: self.take_grad(index, grad))
            return
        _ = y.grad_fn  # brings the view's autograd history up to date before a hook is registered on it
        y.register_hook(lambda grad: self.take_grad(index, grad))
        base, node = y._base, y._base.grad_fn
        if node is None or base.numel() != y.numel() or not (base.is_contiguous() and y.is_contiguous()):
            return
        output_nr, shape = base.output_nr, y.shape

        def from_base(grad_outputs):
            grad = grad_outputs[output_nr]
            if index not in self.grads and grad is not None:
                self.take_grad(index, grad.reshape(shape))

        node.register_prehook(from_base)

    def take_grad(self, index: int, grad: torch.Tensor) -> None:
        self.grads[index] = stats.moments(grad)[1]

    def result(self) -> tuple[list[Row], torch.Tensor, np.ndarray]:
        """The rows kept (blocks inside a recorded block are not), their columns (rows, len(COLUMNS)) on the device,
        and where each statistic applies (a NaN there is an overflow; elsewhere it is an empty cell)."""
        kept = [i for i, row in enumerate(self.rows) if not self.kept_blocks.intersection(row.inside)]
        if not kept:
            return [], torch.empty(0, len(COLUMNS)), np.zeros((0, len(COLUMNS)), dtype=bool)
        forward = torch.stack([self.forward[i] for i in kept])
        nan = torch.full((), math.nan, dtype=forward.dtype, device=forward.device)
        weights = [weight_of(self.rows[i].target.module) for i in kept]
        grads = torch.stack([self.grads.get(i, nan).to(forward.dtype) for i in kept])
        weight = torch.stack([self.weights[id(w)].to(forward.dtype) if w is not None else nan.expand(len(WEIGHT))
                              for w in weights])
        weight_grad = torch.stack([self.weight_grads.get(id(w), nan).to(forward.dtype) for w in weights])
        table = torch.cat([forward, grads[:, None], weight, weight_grad[:, None]], dim=1)
        applies = np.array([self.applies(i, w) for i, w in zip(kept, weights)], dtype=bool)
        return [self.rows[i] for i in kept], table[:, ORDER], applies[:, ORDER]

    def applies(self, index: int, weight: torch.Tensor | None) -> list[bool]:
        """Which statistics row `index` has, in the order its columns are assembled."""
        row = self.rows[index]
        forward = {"chan_sq_mean": row.channels, "chan_var": row.channels, "token_corr": row.sequence}
        return [forward.get(c, True) for c in FORWARD] + [index in self.grads] + [weight is not None] * len(WEIGHT) \
            + [weight is not None and id(weight) in self.weight_grads]


def weight_of(module: nn.Module) -> torch.Tensor | None:
    """The module's own `weight` parameter (Linear, Conv, norms, Embedding), or None."""
    weight = module._parameters.get("weight")
    return weight if isinstance(weight, torch.Tensor) else None


def block_input(args, kwargs) -> torch.Tensor | None:
    """A block's input: its first positional tensor, else the hidden_states keyword, else the first keyword tensor."""
    x, _ = any_model.primary(args)
    if x is None and isinstance(kwargs.get("hidden_states"), torch.Tensor):
        x = kwargs["hidden_states"]
    return x if x is not None else any_model.primary(kwargs)[0]


def forward_stats(y: torch.Tensor, sequence: bool) -> torch.Tensor:
    """FORWARD statistics of one output, as a 1-D tensor on its device. Channels: dim 1 of (N, C, ...), the last dim
    of an (N, T, C) `sequence`; a 0-d or 1-d output has none (NaN)."""
    y = y.detach()
    if y.dim() >= 2:
        mean, var, chan_sq_mean, chan_var = stats.all_moments(y, -1 if sequence else 1)
    else:
        mean, var = stats.moments(y)
        chan_sq_mean = chan_var = torch.full_like(mean, math.nan)
    zero_frac = 1 - torch.count_nonzero(y).to(mean.dtype) / max(y.numel(), 1)
    token_corr = stats.token_corr(y) if sequence else torch.full_like(mean, math.nan)
    return torch.stack([mean, var, chan_sq_mean, chan_var, zero_frac, token_corr.to(mean.dtype)])


@dataclass
class Probed:
    """One network's rows and columns (on the device), and what its run says about the model."""

    rows: list[Row]
    table: torch.Tensor
    applies: np.ndarray
    info: dict


def probe_model(model: nn.Module, inp: any_model.ModelInput, record: str, generator: torch.Generator,
                forward_seed: int) -> Probed:
    """Forward `inp`, then backward a unit-variance random cotangent on the output's primary tensor (L = sum(g * y),
    so dL/dy = g), recording the modules `record` selects."""
    targets = select(model, record)
    if not targets:
        some = ", ".join(name for name, _ in itertools.islice(model.named_modules(), 1, 4))
        raise ConfigError(f"--record '{record}' matches no module of {type(model).__name__}; its modules are named "
                          f"like {some}")
    model.zero_grad(set_to_none=True)
    recorder = ModuleRecorder(model, targets)
    device = inp.tensor.device
    with recorder, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(forward_seed)  # dropout in train mode: the same seed, the same masks
        output = run_forward(model, inp)
        y, where = any_model.primary(output)
        if y is None or not y.is_floating_point() or not y.requires_grad:
            raise ConfigError(f"{type(model).__name__}'s output has no floating-point tensor with a gradient to "
                              "start the backward pass from")
        probe.backward(y, torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype))
    model.zero_grad(set_to_none=True)
    rows, table, applies = recorder.result()
    if not rows:
        raise ConfigError(f"--record {record} recorded nothing: no item of an nn.ModuleList/nn.Sequential with "
                          "modules of its own kept its input's shape; try --record params or a regular expression")
    info = {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "input": inp.description, "output": f"output{where} {tuple(y.shape)}", "rows": len(rows)}
    return Probed(rows, table, applies, info)


def run_forward(model: nn.Module, inp: any_model.ModelInput):
    """The model's forward pass; anything it raises (other than from initprobe's hooks) is the model rejecting its
    input, reported in one line."""
    return usercode.call(f"{type(model).__name__} rejected its input ({inp.description})", any_model.forward, model,
                         inp, keep=(RecorderFailure,))


def measure(cfg: config.RunConfig, make: Callable[[], nn.Module], device: torch.device,
            on_seed: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, float, dict]:
    """Probe `cfg.seeds` fresh models: (layers frame, where each statistic applies (a frame of booleans, the same
    shape as the statistic columns), probe seconds, the first model's info). Every seed's rows stay on the device
    until the one transfer at the end."""
    probed, seeds = [], [cfg.seed + i for i in range(cfg.seeds)]
    start = time.perf_counter()
    for i, seed in enumerate(seeds):
        generator = torch.Generator(device=device).manual_seed(seed)
        draws = any_model.Seeds.draw(generator)
        model = any_model.build(cfg, make, draws, device)
        inp = any_model.make_input(cfg, model, device, generator)
        probed.append(probe_model(model, inp, cfg.record, generator, draws.forward))
        del model, inp
        if on_seed:
            on_seed(i + 1)
    host = probe.to_host([p.table for p in probed])
    seconds = time.perf_counter() - start  # the transfer synchronises, so this holds on a GPU too
    frame = pd.concat([rows_frame(seed, p.rows, table) for seed, p, table in zip(seeds, probed, host)],
                      ignore_index=True)
    applies = pd.DataFrame(np.concatenate([p.applies for p in probed]), columns=COLUMNS)
    return frame, applies, seconds, probed[0].info


def rows_frame(seed: int, rows: list[Row], table: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(table, columns=COLUMNS)
    keys = {"seed": seed, "layer": np.arange(1, len(rows) + 1), "module": [r.target.name for r in rows],
            "module_type": [type(r.target.module).__name__ for r in rows], "call": [r.call for r in rows]}
    for i, (key, values) in enumerate(keys.items()):
        frame.insert(i, key, values)
    return frame
