"""One forward + backward through the network, recording the per-layer statistics of DESIGN section 1.

Everything is computed on the device: forward statistics as the forward goes, gradient statistics in tensor
hooks during the backward (so no gradient is kept), weight-gradient statistics in post-accumulate hooks that
free each .grad at once. The caller stacks the rows of all seeds and moves them to the host in one transfer.
Variances are biased (divide by the number of elements), over all elements of the tensor.
"""

import torch
from torch.func import jvp

COLUMNS = ["preact_mean", "preact_var", "act_mean", "act_var", "grad_preact_var", "grad_act_var",
           "weight_var", "weight_grad_var", "saturated_frac", "zero_frac", "preact_corr"]
HIST_BINS = 60
HIST_QUANTITIES = ("act", "grad_preact")  # Glorot & Bengio 2010, figures 6 and 7


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics in at least float32, float64 for float64 networks."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _var(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.to(dtype).var(correction=0)


def mean_pair_correlation(h: torch.Tensor, dtype) -> torch.Tensor:
    """Mean over pairs of inputs (a != b) of <h_a, h_b> / (|h_a| |h_b|) — the c^l of mean-field theory.
    With unit rows u_a: sum_{a != b} u_a.u_b = |sum_a u_a|^2 - B, so this costs O(B * units)."""
    rows = h.reshape(h.shape[0], -1).to(dtype)  # (batch, units [* spatial])
    b = rows.shape[0]
    if b < 2:
        return torch.tensor(float("nan"), dtype=dtype, device=h.device)
    u = rows / rows.norm(dim=1, keepdim=True)
    total = u.sum(0)
    return (total.dot(total) - b) / (b * (b - 1))


def forward_stats(h, x, phi, saturation_threshold, dtype) -> list[torch.Tensor]:
    hf, xf = h.to(dtype), x.to(dtype)
    pre_var, pre_mean = torch.var_mean(hf, correction=0)
    act_var, act_mean = torch.var_mean(xf, correction=0)
    _, dphi = jvp(phi, (h,), (torch.ones_like(h),))  # phi'(h), elementwise
    saturated = (dphi.abs() < saturation_threshold).to(dtype).mean()
    zero = (x == 0).to(dtype).mean()
    return [pre_mean, pre_var, act_mean, act_var, saturated, zero, mean_pair_correlation(hf, dtype)]


def probe(layers, phi, x0, cotangent, saturation_threshold, hist_layers=()):
    """Statistics (depth, len(COLUMNS)) on the device, and histogram inputs {(quantity, l): tensor}.

    Loss L = sum(cotangent * x^depth): the gradient at the top is the unit-variance cotangent."""
    dtype = stat_dtype(x0.dtype)
    depth = len(layers)
    nan = torch.tensor(float("nan"), dtype=dtype, device=x0.device)
    fwd, grad_pre, grad_act, w_var, w_grad = ([nan] * depth for _ in range(5))
    kept = {}

    def store(slot, l, key=None):
        def hook(grad):
            slot[l] = _var(grad, dtype)
            if key is not None:
                kept[key] = grad.detach().clone()

        return hook

    def store_weight_grad(l):
        def hook(p):
            w_grad[l] = _var(p.grad, dtype)
            p.grad = None  # free it now: memory stays one layer's worth, whatever the depth

        return hook

    handles = []
    x = x0
    for l, layer in enumerate(layers):
        w = layer.weight
        w_var[l] = _var(w.detach(), dtype)
        handles.append(w.register_post_accumulate_grad_hook(store_weight_grad(l)))
        h = layer(x)
        x = phi(h)
        with torch.no_grad():
            fwd[l] = forward_stats(h.detach(), x.detach(), phi, saturation_threshold, dtype)
            if l + 1 in hist_layers:
                kept[("act", l + 1)] = x.detach()
        h.register_hook(store(grad_pre, l, ("grad_preact", l + 1) if l + 1 in hist_layers else None))
        x.register_hook(store(grad_act, l))
    x.backward(cotangent)
    for handle in handles:
        handle.remove()
    for layer in layers:
        layer.zero_grad(set_to_none=True)  # bias grads
    rows = [torch.stack([f[0], f[1], f[2], f[3], grad_pre[l], grad_act[l], w_var[l], w_grad[l], f[4], f[5], f[6]])
            for l, f in enumerate(fwd)]
    return torch.stack(rows), kept


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
