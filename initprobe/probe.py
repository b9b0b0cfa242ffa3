"""One forward + backward through the network, recording the per-layer statistics of DESIGN section 1.

Everything is computed on the device: forward statistics as the forward goes, gradient statistics in tensor
hooks during the backward (so no gradient is kept), weight-gradient statistics in post-accumulate hooks that
free each .grad at once. The caller stacks the rows of all seeds and moves them to the host in one transfer.
Variances are biased (divide by the number of elements), over all elements of the tensor.
"""

import functools
import math

import torch
from torch.func import jvp
from torch.utils.checkpoint import checkpoint

from . import models

COLUMNS = ["preact_mean", "preact_var", "act_mean", "act_var", "grad_preact_var", "grad_act_var",
           "weight_var", "weight_grad_var", "saturated_frac", "zero_frac", "preact_corr"]
HIST_BINS = 60
HIST_QUANTITIES = ("act", "grad_preact")  # Glorot & Bengio 2010, figures 6 and 7


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics in at least float32, float64 for float64 networks."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_ONES: dict = {}


def total(v: torch.Tensor) -> torch.Tensor:
    """Sum of a 1-d tensor as a BLAS dot with ones: on CPU about 3x faster than Tensor.sum()."""
    key = (v.numel(), v.dtype, v.device)
    if key not in _ONES:
        _ONES[key] = torch.ones(v.numel(), dtype=v.dtype, device=v.device)
    return torch.dot(v, _ONES[key])


def moments(t: torch.Tensor) -> list[torch.Tensor]:
    """Sum and sum of squares of all elements: two BLAS-speed reductions (torch.var_mean costs ~15x more).
    Used where the mean is small against the spread (h, gradients, weights): E[t^2] - E[t]^2 loses nothing."""
    v = t.reshape(-1)
    return [total(v), torch.dot(v, v)]


def act_moments(x: torch.Tensor, scratch: torch.Tensor) -> list[torch.Tensor]:
    """Sum and sum of squared deviations: two-pass, exact when the mean dominates (sigmoid, relu outputs)."""
    v = x.reshape(-1)
    s = total(v)
    dev = torch.sub(v, s / v.numel(), out=scratch.reshape(-1))
    return [s, torch.dot(dev, dev)]


def preact_moments(h: torch.Tensor) -> list[torch.Tensor]:
    """Sum, sum of squares and |sum_a u_a|^2 of h (batch, ...), u_a = h_a / |h_a| its unit rows.
    The last gives the mean pair correlation: sum_{a != b} u_a.u_b = |sum_a u_a|^2 - B, in O(B * units)."""
    rows = h.reshape(h.shape[0], -1)  # (batch, units [* spatial])
    norms = torch.linalg.vector_norm(rows, dim=1)
    unit_sum = torch.mv(rows.t(), norms.reciprocal())  # (units,)
    return [total(h.reshape(-1)), norms.dot(norms), unit_sum.dot(unit_sum)]


def saturated_count(h, phi, saturation, scratch) -> torch.Tensor:
    """Elements where abs(phi'(h)) < threshold. `saturation` is ('interval', (lo, hi)), the set where phi is
    not flat (a cheap comparison), or ('threshold', t) for activations whose non-flat set is not one interval
    (gelu, silu, mish, sin: phi'(h) by forward-mode AD)."""
    kind, value = saturation
    flags = scratch.reshape(-1)
    if kind == "threshold":
        _, dphi = jvp(phi, (h,), (torch.ones_like(h),))
        return torch.count_nonzero(dphi.abs() < value)
    lo, hi = value
    if lo == -hi:  # symmetric (tanh, sigmoid, softsign, hardtanh, identity): one pass
        return torch.count_nonzero(torch.abs(h.reshape(-1), out=flags).gt_(hi))
    count = torch.count_nonzero(torch.lt(h.reshape(-1), lo, out=flags)) if lo > -math.inf else 0
    if hi < math.inf:
        count = count + torch.count_nonzero(torch.gt(h.reshape(-1), hi, out=flags))
    return count


FORWARD_RAW = ("pre_sum", "pre_sq", "pre_pairs", "act_sum", "act_sq", "w_sum", "w_sq")


class Recorder:
    """Collects each layer's raw sums as the forward and backward pass it, straight into preallocated device
    buffers (one row per layer). Keeping thousands of small result tensors alive instead would pin the freed
    activations between them on the heap: a checkpointed 10,000-layer run grew by gigabytes that way."""

    def __init__(self, depth, dtype, device, saturation, phi, hist_layers=()):
        def buffer(cols, kind=dtype):
            return torch.full((depth, cols), math.nan, dtype=kind, device=device) if kind.is_floating_point \
                else torch.zeros((depth, cols), dtype=kind, device=device)

        self.fwd, self.counts = buffer(len(FORWARD_RAW)), buffer(2, torch.int64)  # counts: saturated, nonzero
        self.grads = {name: buffer(2) for name in ("gh", "gx", "gw")}  # (sum, sum of squares)
        self.dtype, self.saturation, self.phi, self.hist_layers = dtype, saturation, phi, hist_layers
        self.kept, self.scratch = {}, None

    @torch.no_grad()
    def forward(self, l, w, h, x):
        """Forward statistics of layer index l, and hooks for its gradients."""
        hd, xd = h.detach().to(self.dtype), x.detach().to(self.dtype)
        if self.scratch is None or self.scratch.shape != hd.shape:
            self.scratch = torch.empty_like(hd)
        values = preact_moments(hd) + act_moments(xd, self.scratch) + moments(w.detach().to(self.dtype))
        torch.stack(values, out=self.fwd[l])
        sat = saturated_count(hd, self.phi, self.saturation, self.scratch)
        torch.stack([torch.as_tensor(sat, device=hd.device), torch.count_nonzero(xd)], out=self.counts[l])
        keep = l + 1 in self.hist_layers
        if keep:
            self.kept[("act", l + 1)] = xd
        h.register_hook(self.grad_hook("gh", l, ("grad_preact", l + 1) if keep else None))
        x.register_hook(self.grad_hook("gx", l))

    def grad_hook(self, name, l, key=None):
        def hook(grad):
            self.record_grad(name, l, grad)
            if key is not None:
                self.kept[key] = grad.detach().to(self.dtype, copy=True)

        return hook

    @torch.no_grad()
    def record_grad(self, name, l, grad):
        torch.stack(moments(grad.to(self.dtype)), out=self.grads[name][l])

    def weight_grad(self, l, grad):
        self.record_grad("gw", l, grad)

    def columns(self, batch, n, n_weights) -> torch.Tensor:
        raw = dict(zip(FORWARD_RAW, self.fwd.unbind(1)))
        for name, buf in self.grads.items():
            raw[name + "_sum"], raw[name + "_sq"] = buf.unbind(1)
        raw["sat"], raw["nonzero"] = self.counts.to(self.dtype).unbind(1)
        return finish(raw, batch, n, n_weights)


def probe(cfg, params, phi, x0, cotangent, saturation, hist_layers=()):
    """Statistics (depth, len(COLUMNS)) on the device, and histogram inputs {(quantity, l): tensor}.
    `params` are the layers' (weight, bias), weights as leaves that require grad.

    Loss L = sum(cotangent * x^depth): the gradient at the top is the unit-variance cotangent."""
    rec = Recorder(len(params), stat_dtype(x0.dtype), x0.device, saturation, phi, hist_layers)

    def weight_grad_hook(l):
        def hook(p):
            rec.weight_grad(l, p.grad)
            p.grad = None  # free it at once: memory stays one layer's worth, whatever the depth

        return hook

    handles = []
    x = x0
    for l, (w, b) in enumerate(params):
        handles.append(w.register_post_accumulate_grad_hook(weight_grad_hook(l)))
        h = models.block(cfg, x, w, b)
        x = phi(h)
        rec.forward(l, w, h, x)
    x.backward(cotangent)
    for handle in handles:
        handle.remove()
    return rec.columns(x0.shape[0], x.numel(), _weight_counts(params, x0)), rec.kept


def probe_checkpointed(cfg, seeds, phi, x0, cotangent, saturation, hist_layers=(), segment=None):
    """The same statistics in O(sqrt(depth)) memory: layers run in checkpointed segments of about
    sqrt(depth), and weights are made again from their seeds when a segment is recomputed in the backward
    pass, so neither activations nor weights of the whole network are ever held at once."""
    depth = len(seeds)
    segment = segment or max(1, math.ceil(math.sqrt(depth)))
    rec = Recorder(depth, stat_dtype(x0.dtype), x0.device, saturation, phi, hist_layers)
    # W = Z + anchor: a non-leaf, so autograd hands us dL/dW in a tensor hook and keeps no leaf alive
    anchor = torch.zeros((), device=x0.device, dtype=x0.dtype, requires_grad=True)
    state = {"recomputing": False}

    def run_segment(x, start):
        for l in range(start, min(start + segment, depth)):
            z, b = models.make_layer(cfg, l, seeds[l], x0.device)
            w = z + anchor
            h = models.block(cfg, x, w, b)
            x = phi(h)
            if not state["recomputing"]:
                rec.forward(l, w, h, x)
                w.register_hook(functools.partial(rec.weight_grad, l))
        return x

    x = x0
    for start in range(0, depth, segment):
        x = checkpoint(run_segment, x, start, use_reentrant=False)
    state["recomputing"] = True
    x.backward(cotangent)
    n_weights = [math.prod(models.weight_shape(cfg, *io)) for io in models.layer_sizes(cfg)]
    n_weights = torch.tensor(n_weights, dtype=rec.dtype, device=x0.device)
    return rec.columns(x0.shape[0], x.numel(), n_weights), rec.kept


def _weight_counts(params, x0):
    return torch.tensor([w.numel() for w, _ in params], dtype=stat_dtype(x0.dtype), device=x0.device)


def finish(r: dict, batch: int, n: int, n_weights: torch.Tensor) -> torch.Tensor:
    """Columns from the raw per-layer sums (each a (depth,) tensor), for all layers at once."""

    def var(name, count):  # biased: E[t^2] - E[t]^2, clamped at 0 against rounding
        return (r[name + "_sq"] / count - (r[name + "_sum"] / count) ** 2).clamp_min(0)

    pairs = batch * (batch - 1)
    corr = (r["pre_pairs"] - batch) / pairs if pairs else torch.full_like(r["pre_sum"], math.nan)
    columns = [r["pre_sum"] / n, var("pre", n), r["act_sum"] / n, r["act_sq"] / n, var("gh", n), var("gx", n),
               var("w", n_weights), var("gw", n_weights), r["sat"] / n, 1 - r["nonzero"] / n, corr]
    return torch.stack(columns, dim=1)


def histograms(kept: dict, bins: int = HIST_BINS):
    """Per quantity: counts (n_layers, bins) over a common [lo, hi] of the finite values, and (lo, hi).
    The range stays on the device (values scaled to [0, 1]); non-finite values fall outside and are not counted."""
    out = {}
    for quantity in HIST_QUANTITIES:
        keys = sorted(k for k in kept if k[0] == quantity)
        if not keys:
            continue
        vals = torch.stack([kept[k].reshape(-1).float() for k in keys])  # (n_layers, elements)
        finite = torch.isfinite(vals)
        lo = torch.where(finite, vals, torch.inf).amin()
        hi = torch.where(finite, vals, -torch.inf).amax()
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        scaled = torch.where(finite, (vals - lo) / span, torch.full_like(vals, 2.0))
        counts = torch.stack([torch.histc(s, bins=bins, min=0.0, max=1.0) for s in scaled])
        out[quantity] = (counts, torch.stack([lo, hi]), [k[1] for k in keys])
    return out


def hist_layers(depth: int, n: int = 5) -> tuple[int, ...]:
    """A few depths spread from the first layer to the last."""
    return tuple(sorted({1 + round(i * (depth - 1) / (n - 1)) for i in range(n)}))


def to_host(tensors: list[torch.Tensor]) -> list:
    """Move several device tensors to the host in one transfer (one sync on a GPU)."""
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors]).cpu().numpy()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(tuple(t.shape)))
        start += t.numel()
    return out


def jacobian_singular_values(cfg, params, phi, x0, n_inputs: int = 4) -> torch.Tensor:
    """Singular values (n_inputs, min(out, in)) of the end-to-end Jacobian d x^depth / d x^0 at the first
    inputs of the batch: one vectorised reverse-mode pass per input (torch.func)."""

    def network(x):  # one input, without its batch axis
        x = x.unsqueeze(0)
        for w, b in params:
            x = phi(models.block(cfg, x, w.detach(), b))
        return x.reshape(-1)

    jac = torch.func.vmap(torch.func.jacrev(network))(x0[:n_inputs])  # (n, out, *in)
    jac = jac.reshape(jac.shape[0], jac.shape[1], -1).to(stat_dtype(x0.dtype))
    finite = torch.isfinite(jac).flatten(1).all(1)  # an exploded network's Jacobian: nan singular values, no error
    svals = torch.full((jac.shape[0], min(jac.shape[1:])), torch.nan, dtype=jac.dtype, device=jac.device)
    svals[finite] = torch.linalg.svdvals(jac[finite])
    return svals
