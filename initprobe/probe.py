"""One forward + backward through the network, recording the per-layer statistics of layers.csv (COLUMNS; their
meaning: docs/architecture.md).

Everything is computed on the device: forward statistics as the forward goes, gradient statistics in hooks during
the backward (so no gradient is kept): dL/dh and dL/dx in one hook on phi's backward node per layer, dL/dW read
from each weight's .grad and freed one layer later (the checkpointed probe, whose weights are not leaves, hooks
them). No host sync: the caller stacks the rows of all seeds and moves them to the host in one transfer.
Variances are biased (divide by the number of elements), over all elements of the tensor. The channel statistics
(chan_sq_mean, chan_var) are stats.channel_moments' of x^l; branch_var is the variance of a residual block's branch
alpha (W phi(h) + b) before it is added. A residual network's stem (layer 1) has no phi: its h is its x, and its
saturated_frac is empty.

Two recorders compute the same sums: Recorder with torch calls on any device, FusedRecorder with the C kernels
of _fused.c for CPU float32/float64 tensors (one pass over each tensor instead of about twenty); recorder()
picks one.
"""

import functools
import math

import torch
from torch.func import jvp
from torch.utils.checkpoint import checkpoint

from . import devices, fused, inits, models, shapes, stats, usercode

COLUMNS = ["preact_mean", "preact_var", "act_mean", "act_var", "grad_preact_var", "grad_act_var",
           "weight_var", "weight_sq_mean", "weight_grad_var", "saturated_frac", "zero_frac", "preact_corr",
           "chan_sq_mean", "chan_var", "branch_var"]
HIST_BINS = 60
HIST_QUANTITIES = ("act", "grad_preact")  # Glorot & Bengio 2010, figures 6 and 7


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics in at least float32, float64 for float64 networks."""
    return torch.float64 if dtype == torch.float64 else torch.float32


EXACT_COUNT = 2**24  # float32 holds every integer up to this exactly: a 0/1 mask sums to its exact count


def count(mask: torch.Tensor, exact: bool) -> torch.Tensor:
    """Ones in a 0/1 float mask. Tensor.sum() is a plain reduction, cheaper than count_nonzero's test of each element,
    and exact while the mask has at most EXACT_COUNT elements (`exact`): every partial sum is an integer no larger
    than that."""
    return mask.sum() if exact else torch.count_nonzero(mask)


def saturation_mask_(h, phi, saturation, out) -> torch.Tensor:
    """1.0 where abs(phi'(h)) < threshold (h flat), else 0.0 (nan is never saturated), into `out`.
    `saturation` is ('interval', (lo, hi)), the set where phi is not flat (a cheap comparison), or ('threshold', t)
    for activations whose non-flat set is not one interval (gelu, silu, mish, sin: phi'(h) by forward-mode AD)."""
    kind, value = saturation
    if kind == "threshold":
        _, dphi = jvp(phi, (h,), (torch.ones_like(h),))
        return torch.lt(dphi.abs(), value, out=out)
    lo, hi = value
    if lo == -hi:  # symmetric (tanh, sigmoid, softsign, hardtanh, identity): one comparison of abs(h)
        return torch.abs(h, out=out).gt_(hi)
    if lo > -math.inf:
        torch.lt(h, lo, out=out)
    else:
        out.zero_()
    return out.add_(h > hi) if hi < math.inf else out


def inward_edges(saturation, dtype: torch.dtype):
    """An interval's edges as `dtype` holds them, rounded toward the live side, so that comparing h in that dtype
    says exactly whether h is beyond the edge. Rounded to nearest, hardtanh's edge 1 - 1e-16 becomes 1.0 in float32,
    and h = 1.0, where hardtanh is flat, would not count (bfloat16 networks hit exactly 1.0 often)."""
    kind, value = saturation
    if kind != "interval" or dtype == torch.float64:
        return saturation
    lo, hi = torch.tensor(value, dtype=torch.float64)
    lo_held, hi_held = lo.to(dtype), hi.to(dtype)
    lo_held = torch.where(lo_held < lo, torch.nextafter(lo_held, hi_held), lo_held)
    hi_held = torch.where(hi_held > hi, torch.nextafter(hi_held, lo_held), hi_held)
    return kind, (lo_held.item(), hi_held.item())


# the raw sums of a layer's forward row (and x's channel moments), in the order _fused.layer writes them
FORWARD_RAW = ("pre_sum", "pre_sq", "pre_pairs", "sat", "act_sum", "act_sq", "nonzero", "chan_sq_mean", "chan_var")


class Rows:
    """A (depth, cols) device buffer filled one row at a time. A row's values (0-d tensors) wait until `chunk` rows
    have come, then one stack writes them all: a stack per row costs about as much as the statistics of a small
    layer. Only a chunk's few hundred scalars are alive at once: thousands of them would pin the freed activations
    between them on the heap, and a checkpointed probe's memory would then grow with depth."""

    def __init__(self, depth, cols, dtype, device, chunk=32):
        self.buf = torch.full((depth, cols), math.nan, dtype=dtype, device=device)
        self.chunk, self.pending = chunk, []

    def add(self, row: int, values: list):
        self.pending.append((row, values))
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self):
        """Consecutive rows (the forward pass goes up, the backward down) in one stack; anything else row by row."""
        pending = sorted(self.pending, key=lambda rv: rv[0])
        self.pending = []
        if not pending:
            return
        lo, hi = pending[0][0], pending[-1][0]
        if [r for r, _ in pending] == list(range(lo, hi + 1)):
            torch.stack([v for _, vals in pending for v in vals], out=self.buf[lo:hi + 1].view(-1))
        else:
            for r, vals in pending:
                torch.stack(vals, out=self.buf[r])


class Workspace:
    """Buffers reused by every layer of one shape (no allocation per layer), and their views."""

    def __init__(self, h: torch.Tensor):
        self.shape = h.shape
        self.scratch = torch.empty_like(h)  # x - mean(x), then the saturation mask (0/1)
        self.scratch_flat = self.scratch.view(-1)
        self.flags = torch.empty(h.shape, dtype=torch.bool, device=h.device)  # x != 0
        self.exact = h.numel() <= EXACT_COUNT
        self.coef = torch.ones((2, h.shape[0]), dtype=h.dtype, device=h.device)  # (1 / row norms, ones)
        self.recip = self.coef[0]
        self.row_dims = tuple(range(1, h.dim()))


class Recorder:
    """Collects each layer's raw sums as the forward and backward pass it, into preallocated device buffers.

    At moderate widths much of the cost is per call rather than per element, and every pass over a tensor that is
    no longer in cache costs a trip to memory. So a layer makes few torch calls, in an order that finds its data in
    cache: no grad-mode switches (every input is detached, and hooks run with grad mode off), no allocation but the
    0-d results (see Workspace), no per-row stacks (see Rows), one hook for dL/dh and dL/dx, no hook for dL/dW in
    the plain probe (see take_weight_grad)."""

    ROWS_DTYPE = None  # the row buffers' dtype; None: the statistics' dtype

    def __init__(self, depth, dtype, device, saturation, phi, hist_layers=()):
        self.depth, self.dtype = depth, dtype
        self.saturation, self.phi, self.hist_layers = inward_edges(saturation, dtype), phi, hist_layers
        # counts go into the float rows too: exact up to 2^24 elements in float32, as finish() divided them anyway
        rows_dtype = self.ROWS_DTYPE or dtype
        self.fwd = Rows(depth, len(FORWARD_RAW), rows_dtype, device)
        self.weights = Rows(depth, 2, rows_dtype, device)  # sum, sum of squares of W
        self.grads = Rows(depth, 4, rows_dtype, device)  # sum, sum of squares of dL/dh; the same of dL/dx
        self.weight_grads = Rows(depth, 2, rows_dtype, device)
        self.branches = Rows(depth, 2, rows_dtype, device)  # sum, sum of squares of W phi(h) + b (residual blocks)
        self.kept, self.work, self.one_node = {}, None, None
        self.leaves = None  # the plain probe's weights
        self.nodes = []  # the hooked autograd nodes, layer by layer (release_graph)
        self.buffers = {}  # (slot, shape) -> a tensor in the statistics' dtype (in_stat_dtype)

    def weight(self, l, w):
        """Statistics of W^l, taken once the layer's matmul has read W into cache (taken before it, they would read W
        from memory a second time)."""
        self.weights.add(l, self.sums(w, "w"))

    def forward(self, l, h, x):
        """Statistics of layer index l (h^l, the input of phi, and x^l), and the hook for its gradients; a stem's h
        is its x."""
        hd, xd = self.in_stat_dtype(h, "h"), self.in_stat_dtype(x, "x")
        self.forward_stats(l, hd, xd)
        keep = l + 1 in self.hist_layers
        if keep:
            self.kept[("act", l + 1)] = xd if x.dtype == self.dtype else xd.clone()  # not the reused buffer
        self.hook_grads(l, h, x, ("grad_preact", l + 1) if keep else None)

    def workspace(self, hd) -> "Workspace":
        """The buffers for tensors of hd's shape, made again only when the shape changes."""
        if self.work is None or self.work.shape != hd.shape:
            self.work = Workspace(hd)
        return self.work

    def forward_stats(self, l, hd, xd):
        work = self.workspace(hd)
        scratch, flat = work.scratch, work.scratch_flat
        # x first, while phi's output is in cache: nonzero count (a float -> bool copy tests != 0, nan included, as
        # count_nonzero does), sum, then squared deviations from the mean (two-pass: exact when the mean dominates)
        nonzero = torch.count_nonzero(work.flags.copy_(xd))
        x_sum = xd.sum()
        torch.sub(xd, x_sum, alpha=1.0 / xd.numel(), out=scratch)
        act_sq = flat.dot(flat)
        # h: row norms, then (1 / norms, ones) @ rows = (sum of unit rows, column sums), one pass each
        norms = torch.linalg.vector_norm(hd, dim=work.row_dims)
        torch.reciprocal(norms, out=work.recip)
        unit_sum, col_sum = torch.mm(work.coef, hd if hd.dim() == 2 else hd.reshape(hd.shape[0], -1))
        saturated = count(saturation_mask_(hd, self.phi, self.saturation, scratch), work.exact)
        self.fwd.add(l, [col_sum.sum(), norms.dot(norms), unit_sum.dot(unit_sum), saturated, x_sum, act_sq, nonzero,
                         *stats.channel_moments(xd)])

    def branch(self, l, branch):
        """Sum and sum of squares of a residual block's branch W phi(h) + b (its mean is small against its spread
        for zero-mean weights, as for W and the gradients)."""
        self.branches.add(l, self.sums(branch, "h"))

    def hook_grads(self, l, h, x, key):
        """dL/dh and dL/dx in one post-hook of phi's node (input h, output x), or, when phi is no single node on h
        (an identity; a composite like softsign), a tensor hook on each."""
        if self.one_node is None:
            node = x.grad_fn
            self.one_node = x is not h and len(node.next_functions) == 1 and node.next_functions[0][0] is h.grad_fn
        if self.one_node:
            self.nodes.append(x.grad_fn)
            self.nodes[-1].register_hook(functools.partial(self.node_hook, l, key))
            return
        pending = {}

        def gx_hook(grad):  # runs first: the backward reaches x before h
            pending["gx"] = grad

        def gh_hook(grad):
            self.record_grads(l, grad, pending.pop("gx", grad), key)

        x.register_hook(gx_hook)
        h.register_hook(gh_hook)
        self.nodes += [n for n in (h.grad_fn, x.grad_fn) if n is not None]

    def release_graph(self) -> None:
        """Free the autograd graph one layer at a time, from the top. A node Python has seen (a hook registered from
        Python) is freed through its Python object, and freeing it frees the node below from inside that call:
        a graph of some ten thousand layers let go at once from its top overflows the C stack (a segmentation
        fault). Held here and released from the last layer down, each node goes when nothing above holds it.
        The caller first drops its own references to the top (the last h and x)."""
        while self.nodes:
            self.nodes.pop()

    def node_hook(self, l, key, grad_inputs, grad_outputs):
        self.record_grads(l, grad_inputs[0], grad_outputs[0], key)

    def record_grads(self, l, gh, gx, key):
        if self.leaves is not None and l + 1 < self.depth:
            self.take_weight_grad(l + 1)
        if key is not None:
            self.kept[key] = gh.detach().to(self.dtype, copy=True)
        self.grad_stats(l, gh, gx)

    def grad_stats(self, l, gh, gx):
        self.grads.add(l, self.sums(gh, "h") + self.sums(gx, "x"))

    def take_weight_grad(self, l):
        """Statistics of the gradient accumulated in leaf weight l, then free it: memory stays one layer's worth.
        Autograd accumulates into leaves first, so W^(l+1)'s gradient is there when layer l's hook runs (and takes
        it, instead of a hook per weight); probe() takes whatever is left once the backward is done."""
        w = self.leaves[l]
        if w.grad is not None:
            self.weight_grad(l, w.grad)
            w.grad = None

    def weight_grad(self, l, grad):
        self.weight_grads.add(l, self.sums(grad, "w"))

    def sums(self, t: torch.Tensor, slot: str) -> list:
        """Sum and sum of squares of all elements, in the statistics' dtype (W and gradients: their mean is small
        against their spread, so E[t^2] - E[t]^2 loses nothing)."""
        v = self.in_stat_dtype(t, slot).reshape(-1)
        return [v.sum(), v.dot(v)]

    def in_stat_dtype(self, t: torch.Tensor, slot: str) -> torch.Tensor:
        """t (detached) in the statistics' dtype: t itself, or a narrower network's tensor (bfloat16) copied into a
        buffer kept for `slot` and t's shape. A new float32 copy of every tensor of every layer would leave holes
        between the network's own tensors that the allocator keeps: several times the memory in use (memory.py).
        The forward's slots (h, x, w) are free again when the backward's gradients use them."""
        t = t.detach()
        if t.dtype == self.dtype:
            return t
        buf = self.buffers.get((slot, t.shape))
        if buf is None:
            buf = self.buffers[(slot, t.shape)] = torch.empty(t.shape, dtype=self.dtype, device=t.device)
        return buf.copy_(t)

    def columns(self, batch, n, n_weights, alpha=1.0, stem=False) -> torch.Tensor:
        """The COLUMNS of every layer; `alpha` scales the residual branches; with `stem`, layer 1 is a linear stem
        (no phi: its saturated_frac is empty)."""
        for rows in (self.fwd, self.weights, self.grads, self.weight_grads, self.branches):
            rows.flush()
        if stem:
            self.fwd.buf[0, FORWARD_RAW.index("sat")].fill_(math.nan)
        r = dict(zip(FORWARD_RAW, self.fwd.buf.unbind(1)))
        r["w_sum"], r["w_sq"] = self.weights.buf.unbind(1)
        r["gh_sum"], r["gh_sq"], r["gx_sum"], r["gx_sq"] = self.grads.buf.unbind(1)
        r["gw_sum"], r["gw_sq"] = self.weight_grads.buf.unbind(1)
        r["br_sum"], r["br_sq"] = self.branches.buf.unbind(1)
        return finish(r, batch, n, n_weights, alpha)


class FusedRecorder(Recorder):
    """The same statistics from the C kernels of _fused.c: one pass over each tensor (the preactivation: two over
    each group of four rows, the second from cache) instead of about twenty torch calls a layer, summed in double
    and written straight into float64 row buffers, so no tensor is made per layer. CPU, float32/float64 only (see
    recorder())."""

    ROWS_DTYPE = fused.ROW_DTYPE

    def __init__(self, depth, dtype, device, saturation, phi, hist_layers=()):
        super().__init__(depth, dtype, device, saturation, phi, hist_layers)
        self.out = {id(rows): fused.Output(rows.buf) for rows in (self.fwd, self.weights, self.grads,
                                                                   self.weight_grads, self.branches)}
        # an interval's outside is counted in the kernel; a threshold's by torch (forward_stats)
        self.lo, self.hi = self.saturation[1] if self.saturation[0] == "interval" else (-math.inf, math.inf)

    def weight(self, l, w):
        self.moments(self.weights, l, w)

    def forward_stats(self, l, hd, xd):
        fused.layer(self.out[id(self.fwd)], l, hd, xd, self.lo, self.hi)
        if self.saturation[0] == "threshold":  # phi'(h) by forward-mode AD, counted by torch
            work = self.workspace(hd)
            mask = saturation_mask_(hd, self.phi, self.saturation, work.scratch)
            self.fwd.buf[l, FORWARD_RAW.index("sat")] = count(mask, work.exact)

    def moments(self, rows, l, *tensors):
        """Sum and sum of squares of each tensor (all of one size) into row l of `rows`."""
        fused.moments(self.out[id(rows)], l, *tensors)

    def grad_stats(self, l, gh, gx):
        self.moments(self.grads, l, gh, gx)

    def branch(self, l, branch):
        self.moments(self.branches, l, branch)

    def weight_grad(self, l, grad):
        self.moments(self.weight_grads, l, grad)


def recorder(depth, dtype, device, saturation, phi, hist_layers=()) -> Recorder:
    """A FusedRecorder where the C kernels apply, else the torch one; `dtype` is the network's."""
    cls = FusedRecorder if fused.available(device, dtype) else Recorder
    return cls(depth, stat_dtype(dtype), device, saturation, phi, hist_layers)


def probe(cfg, params, phi, x0, cotangent, saturation, hist_layers=(), keep_grads=False):
    """Statistics (depth, len(COLUMNS)) on the device, and histogram inputs {(quantity, l): tensor}.
    `params` are the layers' (weight, bias), weights as leaves that require grad.

    Loss L = sum(cotangent * x^depth): the gradient at the top is the cotangent, a unit-variance one for a run.
    `cotangent` may also be a function of x^depth that returns it (training: dL/dx^depth of the real loss, which
    needs x^depth). With `keep_grads` every dL/dW stays in its weight's .grad (an optimizer steps with them);
    without, each is freed once read, so memory holds one layer's worth."""
    net = models.Net.of(cfg, phi)
    rec = recorder(len(params), x0.dtype, x0.device, saturation, phi, hist_layers)
    rec.leaves = None if keep_grads else [w for w, _ in params]
    x = x0
    for l, (w, b) in enumerate(params):
        w.grad = None
        x = record(rec, net, l, net.layer(l, x, w, b), w)
    backward(x, cotangent(x) if callable(cotangent) else cotangent)
    for l, (w, _) in enumerate(params):
        if keep_grads:
            rec.weight_grad(l, w.grad)
        else:
            rec.take_weight_grad(l)
    n_weights, n = weight_counts(cfg, rec.fwd.buf.dtype, x0.device), x.numel()
    del x
    rec.release_graph()
    return rec.columns(x0.shape[0], n, n_weights, net.alpha, net.residual), rec.kept


def record(rec: Recorder, net: models.Net, l: int, step: models.Step, w) -> torch.Tensor:
    """Layer l's forward statistics into `rec` (its weight's once the layer has read it); returns x^l."""
    rec.weight(l, w)
    if step.branch is not None:
        rec.branch(l, step.branch)
    rec.forward(l, step.h, step.x)
    return step.x


def probe_checkpointed(cfg, seeds, phi, x0, cotangent, saturation, hist_layers=(), segment=None):
    """The same statistics in O(sqrt(depth)) memory: layers run in checkpointed segments of about
    sqrt(depth), and weights are made again from their seeds when a segment is recomputed in the backward
    pass, so neither activations nor weights of the whole network are ever held at once. A user's init must then
    give a layer the same weights twice: WeightCheck makes sure it did."""
    depth = len(seeds)
    segment = segment or max(1, math.ceil(math.sqrt(depth)))
    net = models.Net.of(cfg, phi)
    rec = recorder(depth, x0.dtype, x0.device, saturation, phi, hist_layers)
    # W = Z + anchor: a non-leaf, so autograd hands us dL/dW in a tensor hook and keeps no leaf alive
    anchor = torch.zeros((), device=x0.device, dtype=x0.dtype, requires_grad=True)
    state = {"recomputing": False}
    check = WeightCheck(depth, x0.device) if inits.is_custom(cfg.init) else None

    def weight_grad(l, grad):
        rec.weight_grad(l, grad)
        if l % segment == 0:  # the segment's backward is done (its first layer's dL/dW comes last)
            devices.release_free_memory(x0.device)

    def run_segment(x, start):
        for l in range(start, min(start + segment, depth)):
            z, b = models.make_layer(cfg, l, seeds[l], x0.device)
            if check is not None:
                (check.compare if state["recomputing"] else check.record)(l, z)
            w = z + anchor
            step = net.layer(l, x, w, b)
            x = step.x
            if not state["recomputing"]:
                record(rec, net, l, step, w)
                w.register_hook(functools.partial(weight_grad, l))
        return x

    x = x0
    for start in range(0, depth, segment):
        x = checkpoint(run_segment, x, start, use_reentrant=False)
        devices.release_free_memory(x0.device)
    state["recomputing"] = True
    backward(x, cotangent)
    n_weights, n = weight_counts(cfg, rec.fwd.buf.dtype, x0.device), x.numel()
    del x
    rec.release_graph()
    if check is not None:
        check.verify(cfg.init)
    return rec.columns(x0.shape[0], n, n_weights, net.alpha, net.residual), rec.kept


class WeightCheck:
    """A fingerprint of each layer's weight as the forward pass made it, compared on the device with the weight the
    recompute makes from the same seed; one host sync at the end. A user's init that is not a function of its seed
    (state of its own, a clock) would otherwise give the backward pass another network than the forward."""

    def __init__(self, depth, device):
        self.prints = torch.empty(depth, dtype=torch.float64, device=device)
        self.differ = torch.zeros((), dtype=torch.int64, device=device)
        self.ramps = {}  # elements -> weights 1..2: a weighted sum also tells permuted entries apart

    def fingerprint(self, z):
        flat = z.detach().reshape(-1).to(torch.float64)
        if flat.numel() not in self.ramps:
            self.ramps[flat.numel()] = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=z.device)
        return flat.dot(self.ramps[flat.numel()])

    def record(self, l, z):
        self.prints[l] = self.fingerprint(z)

    def compare(self, l, z):  # bit patterns, so that a nan fingerprint equals itself
        self.differ += self.fingerprint(z).view(torch.int64) != self.prints[l].view(torch.int64)

    def verify(self, init: str) -> None:
        if self.differ.item():
            raise usercode.UserCodeError(
                f"init '{init}' gave a layer other weights when the checkpointed probe made it again from the same "
                "seed; an init must depend only on its generator (or the global generators, which initprobe seeds "
                "per layer), else the statistics would mix two networks")


def backward(x: torch.Tensor, cotangent: torch.Tensor) -> None:
    """Backpropagate L = sum(cotangent * x), so that dL/dx is the cotangent. x.backward(cotangent) would do it, but
    its shape check imports sympy, a slow import on the first call; (x * cotangent).sum() costs a product
    forward and backward. Instead a view of x is summed and a hook hands the cotangent itself on as its
    gradient: one extra pass, no new tensor."""
    top = x.view(x.shape)
    top.register_hook(lambda grad: cotangent)
    top.sum().backward()


def weight_counts(cfg, dtype, device) -> torch.Tensor:
    """Elements of each layer's weight, made on the device by fills: torch.tensor(list, device=cuda) copies from
    the host and waits for the copy (a host sync). Every layer but the first has the same count, so that is two
    fills, not one a layer and a stack."""
    filled = torch.full((cfg.depth,), shapes.weight_size(cfg, cfg.depth - 1), dtype=dtype, device=device)
    filled[0].fill_(shapes.weight_size(cfg, 0))  # `filled[0] = n` would copy a host tensor in, and wait for it
    return filled


def finish(r: dict, batch: int, n: int, n_weights: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Columns from the raw per-layer sums (each a (depth,) tensor), for all layers at once. weight_var is Var(W),
    weight_sq_mean E[W^2] (= Var(W) + E[W]^2): mean-field theory's sigma_w^2 / fan_in is the second moment, which
    differs from the variance for an init with non-zero mean (constant, U(0, 1)). branch_var is alpha^2 times the
    variance of W phi(h) + b (nan where a layer has no branch; exactly 0 for alpha = 0)."""

    def var(name, count):  # biased: E[t^2] - E[t]^2, clamped at 0 against rounding
        return (r[name + "_sq"] / count - (r[name + "_sum"] / count) ** 2).clamp_min(0)

    pairs = batch * (batch - 1)
    corr = (r["pre_pairs"] - batch) / pairs if pairs else torch.full_like(r["pre_sum"], math.nan)
    corr = torch.where(torch.isfinite(r["pre_sq"]), corr, math.nan)  # an infinite row norm has no direction
    columns = [r["pre_sum"] / n, var("pre", n), r["act_sum"] / n, r["act_sq"] / n, var("gh", n), var("gx", n),
               var("w", n_weights), r["w_sq"] / n_weights, var("gw", n_weights), r["sat"] / n, 1 - r["nonzero"] / n,
               corr, r["chan_sq_mean"], r["chan_var"], alpha**2 * var("br", n)]
    return torch.stack(columns, dim=1)


def histograms(kept: dict, bins: int = HIST_BINS):
    """Per quantity: counts (n_layers, bins) over a common [lo, hi] of the finite values, and (lo, hi).
    The range stays on the device (values scaled to [0, 1]); non-finite values fall outside and are not counted.
    One layer's tensor is worked on at a time: temporaries of every layer at once would take several times the
    memory of the kept tensors themselves."""
    out = {}
    for quantity in HIST_QUANTITIES:
        keys = sorted(k for k in kept if k[0] == quantity)
        if not keys:
            continue
        lo = torch.stack([_finite_extreme(kept[k], torch.inf, torch.amin) for k in keys]).amin()
        hi = torch.stack([_finite_extreme(kept[k], -torch.inf, torch.amax) for k in keys]).amax()
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        counts = torch.stack([torch.histc(_scaled(kept[k], lo, span), bins=bins, min=0.0, max=1.0) for k in keys])
        out[quantity] = (counts, torch.stack([lo, hi]), [k[1] for k in keys])
    return out


def _finite_extreme(t: torch.Tensor, fill: float, reduce) -> torch.Tensor:
    """reduce (amin or amax) over the finite values of t, `fill` if there are none."""
    v = t.reshape(-1).float()
    return reduce(torch.where(torch.isfinite(v), v, fill))


def _scaled(t: torch.Tensor, lo: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """(t - lo) / span, and 2 (outside [0, 1], so not counted) where t is not finite."""
    v = t.reshape(-1).float()
    return torch.where(torch.isfinite(v), (v - lo) / span, 2.0)


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

    net = models.Net.of(cfg, phi)
    detached = [(w.detach(), b) for w, b in params]

    def network(x):  # one input, without its batch axis
        return net.forward(detached, x.unsqueeze(0)).reshape(-1)

    jac = torch.func.vmap(torch.func.jacrev(network))(x0[:n_inputs])  # (n, out, *in)
    jac = jac.reshape(jac.shape[0], jac.shape[1], -1).to(stat_dtype(x0.dtype))
    finite = torch.isfinite(jac).flatten(1).all(1)  # an exploded network's Jacobian: nan singular values, no error
    svals = torch.full((jac.shape[0], min(jac.shape[1:])), torch.nan, dtype=jac.dtype, device=jac.device)
    svals[finite] = torch.linalg.svdvals(jac[finite])
    return svals
