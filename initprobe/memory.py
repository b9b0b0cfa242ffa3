"""The memory a run (plain or checkpointed, LSUV, the Jacobian) and `initprobe theory` need, in closed form from the
config: no torch, no per-layer lists, so an absurd size is refused in microseconds, before anything is allocated.

Each estimate is an upper bound of the growth of the process's peak resident memory (tests/test_memory.py holds
it to measured peaks): what autograd keeps per layer (the activation registry's `saves`), every weight, the
histograms' copies, the Jacobian's matrices, and per-layer and per-row costs of Python and autograd objects and of
the results. `plan` picks the plain or the checkpointed probe from it, and refuses, with what would fit, a run
that fits neither way.
"""

import math
import os
from dataclasses import dataclass, replace

from . import activations, blocks, inits, shapes
from .config import MODEL_SEQ_LEN, RunConfig
from .errors import ConfigError

ELEMENT_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2}
MiB, GiB = 2**20, 2**30
LIBRARIES = 192 * MiB  # first use, in a run, of kernels and lazily imported modules (checkpointing's: ~100 MiB)
PER_LAYER = 10 * 1024  # autograd nodes, hooks, 0-d statistics and seeds of one layer (measured ~7 KiB)
PER_ROW = 1024  # one (seed, layer) row of the results: device rows, host copies, the frame, theory (~400 B)
PER_THEORY_LAYER = 1024  # `initprobe theory`: one layer's predictions, the quadrature cache, the frame (~480 B)
THEORY_FIXED = 16 * MiB  # `initprobe theory`: the quadrature's tables and what numpy and pandas first use
# tensors of one layer's h (in the statistics' dtype) alive at once besides what autograd keeps:
TRANSIENT = 8  # the statistics' scratch, phi'(h) by forward-mode AD (mish: ~8), gradients in flight
CONVERSIONS = 4  # h, x, dL/dh, dL/dx in float32 when the network's dtype is narrower (bfloat16)
CONV_WORKSPACE = 4  # a convolution's own buffers
JACOBIAN_INPUTS = 4  # probe.jacobian_singular_values' inputs
JACOBIAN_COPIES = 8  # per input, matrices of out x max(in, out) elements: the basis, vmapped gradients, the result,
# its statistics-dtype copy, the SVD's workspace
HALF = 2  # the automatic choice checkpoints when the plain probe needs more than 1/HALF of the free memory


@dataclass(frozen=True)
class Sizes:
    """Elements of one config's tensors, from closed forms."""

    batch_units: int  # one layer's h (or x): batch x width x positions
    batch_inputs: int  # x0: batch x input size x positions
    padded: int  # circular padding's copy of a layer's input, saved by the convolution (0 otherwise)
    weights: int  # every layer's weight
    weight_max: int  # the largest layer's weight
    biases: int
    element: int  # bytes of the network's dtype
    stat: int  # bytes of the statistics' dtype


def sizes(cfg: RunConfig) -> Sizes:
    positions, n_in = shapes.positions(cfg), shapes.input_size(cfg)
    first, rest = shapes.weight_size(cfg, 0), shapes.weight_size(cfg, 1)
    padded = 0
    if cfg.arch == "cnn" and cfg.padding == "circular":
        padded = cfg.batch * max(cfg.width, cfg.in_channels) * (cfg.image_size + cfg.kernel_size - 1) ** 2
    element = ELEMENT_BYTES[cfg.dtype]
    return Sizes(batch_units=cfg.batch * cfg.width * positions, batch_inputs=cfg.batch * n_in * positions,
                 padded=padded, weights=shapes.total_weights(cfg), weight_max=max(first, rest),
                 biases=cfg.depth * cfg.width, element=element, stat=max(element, 4))


def _layer_kept(cfg: RunConfig, s: Sizes) -> int:
    """Bytes autograd keeps for one layer until the backward pass reaches it: phi's (activations' `saves`, which
    count a plain block's two tensors), what a residual block keeps beyond a plain one, and a norm's (blocks.py)."""
    extra = blocks.block(cfg.block).saved_per_layer - blocks.block("plain").saved_per_layer
    tensors = activations.get(cfg.act).saves + extra + blocks.norm(cfg.norm).saved_per_layer
    return (tensors * s.batch_units + s.padded) * s.element


def _working(cfg: RunConfig, s: Sizes, checkpointed: bool) -> int:
    """Bytes alive besides the layers' kept tensors: x0, the cotangent, two layers' weight gradients, a layer's
    transient tensors, the histograms' kept tensors: a copy of dL/dh, and x, which is autograd's own in the plain
    probe unless converted to the statistics' dtype, and kept alive only for them in the checkpointed one."""
    transient = TRANSIENT + (CONVERSIONS if s.element < s.stat else 0) + (CONV_WORKSPACE if cfg.arch == "cnn" else 0)
    kept = len(shapes.spread_layers(cfg.depth)) * (2 if s.element != s.stat or checkpointed else 1)
    return (s.batch_inputs + s.batch_units + 2 * s.weight_max) * s.element + (transient + kept) * s.batch_units * s.stat


def probe_bytes(cfg: RunConfig, checkpointed: bool) -> int:
    """Device bytes of one seed's probe (seeds run one after another), histograms included."""
    s = sizes(cfg)
    if checkpointed:  # segment inputs kept; one segment's layers and weights alive while it is recomputed
        segment = math.isqrt(cfg.depth - 1) + 1  # ceil(sqrt(depth)), as probe_checkpointed
        segments = -(-cfg.depth // segment)
        held = (segments + 1) * s.batch_units * s.element
        held += segment * (_layer_kept(cfg, s) + (s.weight_max + cfg.width) * s.element)
    else:
        held = (s.weights + s.biases) * s.element + cfg.depth * _layer_kept(cfg, s)
        if inits.get(cfg.init).data_dependent:  # lsuv: its own batch, and the forward that rescales the weights
            held += s.batch_inputs * s.element + 3 * s.batch_units * s.stat
    return held + _working(cfg, s, checkpointed) + cfg.depth * PER_LAYER


def jacobian_bytes(cfg: RunConfig) -> int:
    """Device bytes of --jacobian: the whole network, and per input the matrices of vmap(jacrev) and the SVD."""
    s = sizes(cfg)
    units, inputs = s.batch_units // cfg.batch, s.batch_inputs // cfg.batch
    matrices = JACOBIAN_INPUTS * JACOBIAN_COPIES * units * max(units, inputs) * max(s.stat, s.element)
    kept = cfg.depth * activations.get(cfg.act).saves * JACOBIAN_INPUTS * units * s.element
    return (s.weights + s.biases) * s.element + matrices + kept + cfg.depth * PER_LAYER


def results_bytes(cfg: RunConfig) -> int:
    """Host bytes of the results: every (seed, layer) row, and the libraries a run first uses."""
    return LIBRARIES + cfg.seeds * cfg.depth * PER_ROW


def theory_bytes(cfg: RunConfig) -> int:
    """Host bytes of `initprobe theory`'s predictions (numpy only: none of the run's libraries)."""
    return THEORY_FIXED + cfg.depth * PER_THEORY_LAYER


@dataclass(frozen=True)
class Need:
    """Bytes a run needs on its device and on the host (the same memory on a CPU)."""

    device: int
    host: int

    def total(self, shared: bool) -> int:
        return self.device + self.host if shared else self.device


def need(cfg: RunConfig, checkpointed: bool) -> Need:
    device = probe_bytes(cfg, checkpointed)
    if cfg.jacobian:
        device = max(device, jacobian_bytes(cfg))
    return Need(device, results_bytes(cfg))


def can_checkpoint(cfg: RunConfig) -> str | None:
    """None, or why this run cannot be checkpointed."""
    if inits.get(cfg.init).data_dependent:
        return f"{cfg.init} rescales stored weights"
    if cfg.jacobian:
        return "--jacobian needs the whole network in memory"
    return None


@dataclass(frozen=True)
class Free:
    """Memory free for a run: on its device, and on the host (the same memory when `shared`)."""

    device: int
    host: int
    shared: bool = True


def plan(cfg: RunConfig, free: Free) -> tuple[bool, str]:
    """(checkpoint?, why). As asked (--checkpoint / --no-checkpoint), else the plain probe while it needs at most
    1/HALF of the free memory, else the checkpointed one where it applies and fits, else the plain one if it fits.
    ConfigError, saying what would fit, when the probe cannot fit."""
    reason = can_checkpoint(cfg)
    if cfg.checkpoint and reason is not None:
        raise ConfigError(f"{reason}, so it cannot run with --checkpoint")
    if cfg.checkpoint is not None:
        if not _fits(cfg, free, cfg.checkpoint):
            raise ConfigError(refusal(cfg, free, [cfg.checkpoint]))
        return cfg.checkpoint, "asked for"
    if _fits(cfg, free, False, HALF):
        return False, "not needed"
    if reason is None and _fits(cfg, free, True):
        return True, (f"automatic: the plain probe needs about {_size(need(cfg, False).total(free.shared))}, "
                      f"{_size(_limit(free))} is free")
    if _fits(cfg, free, False):
        return False, f"not possible ({reason}); the plain probe fits"
    raise ConfigError(refusal(cfg, free, [False] if reason else [False, True], reason))


def _limit(free: Free) -> int:
    return free.device if not free.shared else free.host


def _fits(cfg: RunConfig, free: Free, checkpointed: bool, share: int = 1) -> bool:
    """Whether that probe of `cfg` needs at most 1/share of the free memory."""
    n = need(cfg, checkpointed)
    if free.shared:
        return n.total(True) * share <= free.host
    return n.device * share <= free.device and n.host <= free.host


RESIZABLE = ("width", "batch", "depth", "image_size")


def refusal(cfg: RunConfig, free: Free, ways: list[bool], reason: str | None = None) -> str:
    """The one line that refuses `cfg`: what it needs, what is free, and the largest width, batch, depth (and image
    size) that would fit with the other options as given."""
    needed = min(need(cfg, w).total(free.shared) for w in ways)
    way = " checkpointed" if ways == [True] else ""
    text = (f"the{way} probe would need about {_size(needed)} of memory, {_size(_limit(free))} is free"
            + (f" (and it cannot be checkpointed: {reason})" if reason else ""))
    options = []
    for key in RESIZABLE:
        if key == "image_size" and cfg.arch != "cnn":
            continue
        best = _largest(cfg, key, lambda c: any(_fits(c, free, w) for w in ways))
        if best is not None and best < getattr(cfg, key):
            options.append(f"--{key.replace('_', '-')} {best}")
    hint = f"; at most {', '.join(options[:-1]) + ' or ' if len(options) > 1 else ''}{options[-1]} would fit " \
           "(with the other options as given)" if options else "; nothing this size fits"
    return text + hint + _other_way(cfg, free, ways)


def _other_way(cfg: RunConfig, free: Free, ways: list[bool]) -> str:
    """'; with --checkpoint it fits' or '; without --jacobian the checkpointed probe fits', where that is so."""
    if ways == [False] and cfg.checkpoint is False and can_checkpoint(cfg) is None and _fits(cfg, free, True):
        return "; with --checkpoint it fits"
    plain = replace(cfg, jacobian=False, checkpoint=None)
    if cfg.jacobian and can_checkpoint(plain) is None and _fits(plain, free, True):
        return "; without --jacobian the checkpointed probe fits"
    return ""


def _largest(cfg: RunConfig, key: str, ok) -> int | None:
    """The largest value of `key` up to its current one for which ok(config) holds (the estimate grows with each),
    or None if not even the smallest does."""
    low = 1 if key != "image_size" else cfg.kernel_size
    if not ok(replace(cfg, **{key: low})):
        return None
    high = getattr(cfg, key)
    while low < high:
        mid = (low + high + 1) // 2
        if ok(replace(cfg, **{key: mid})):
            low = mid
        else:
            high = mid - 1
    return low


def check_model_input(cfg: RunConfig, free: Free) -> None:
    """ConfigError when the input batch of a --model alone would not fit in memory (the model itself is the user's
    and is not estimated): batch x seq_len token ids, or batch x input_shape numbers, 8 bytes each at most."""
    per_input = math.prod(cfg.input_shape) if cfg.input_shape else (cfg.seq_len or MODEL_SEQ_LEN)
    needed = cfg.batch * per_input * 8
    if needed > _limit(free):
        raise ConfigError(f"the input batch alone ({cfg.batch} x {per_input} numbers) would need about "
                          f"{_size(needed)} of memory, {_size(_limit(free))} is free")


def check_theory(cfg: RunConfig, free_host: int) -> None:
    """ConfigError, with the depth that would fit, when `initprobe theory` would not fit in memory."""
    if theory_bytes(cfg) <= free_host:
        return
    depth = max(0, (free_host - THEORY_FIXED) // PER_THEORY_LAYER)
    raise ConfigError(f"the predictions for {cfg.depth} layers would need about {_size(theory_bytes(cfg))} of "
                      f"memory, {_size(free_host)} is free; at most --depth {depth} would fit")


def _size(n: int) -> str:
    """'312 MiB', '7.5 GiB', '1.2 TiB', '3.4e+290 TiB' (any size, an integer past a float's range included)."""
    if n < GiB:
        return f"{n / MiB:.0f} MiB"
    if n < 2**40:
        return f"{n / GiB:.1f} GiB"
    if n < 2**60:
        return f"{n / 2**40:.1f} TiB"
    exponent = math.log10(n) - 40 * math.log10(2)  # log10 takes an int of any size
    return f"{10 ** (exponent % 1):.1f}e+{int(exponent)} TiB"


def host_available() -> int:
    """Bytes the host can give a process: MemAvailable (Linux), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
