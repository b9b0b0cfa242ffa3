"""The boundary of the optional C kernels (_fused.c): every check of device, dtype, shape and contiguity happens
here, once, before a pointer is handed to C. The kernels trust what they are given; nothing else calls them.

Built at install time where a C compiler exists (setup.py), with OpenMP where the compiler has it and serially
where it does not. Where the extension is missing the probe uses torch calls (probe.Recorder) instead.
"""

import os

import torch

try:
    from . import _fused
except ImportError:  # no C compiler at install time: the torch path does the same work
    _fused = None

ROW_DTYPE = torch.float64  # the kernels write doubles
LAYER_VALUES = 9  # values layer() writes: see _fused.c


def built() -> bool:
    return _fused is not None


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """The kernels take CPU float32/float64 tensors; INITPROBE_FUSED=0 turns them off (the torch path, as on a GPU),
    e.g. to compare the two."""
    return (_fused is not None and device.type == "cpu" and dtype in (torch.float32, torch.float64)
            and os.environ.get("INITPROBE_FUSED", "1") != "0")


class Output:
    """A (rows, cols) float64 CPU buffer the kernels write rows of, with each row's address computed once
    (buf[row].data_ptr() would make a view per call)."""

    def __init__(self, buf: torch.Tensor):
        if buf.dtype != ROW_DTYPE or buf.device.type != "cpu" or not buf.is_contiguous() or buf.dim() != 2:
            raise ValueError("the kernels write into a contiguous 2-D float64 CPU buffer")
        self.buf, self.base, self.row_bytes = buf, buf.data_ptr(), buf.stride(0) * buf.element_size()

    def address(self, row: int, values: int) -> int:
        if not 0 <= row < self.buf.shape[0] or values > self.buf.shape[1]:
            raise IndexError(f"row {row} of {values} values is outside the {tuple(self.buf.shape)} buffer")
        return self.base + row * self.row_bytes


FLOATS = (torch.float32, torch.float64)


def _operands(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors as the kernels read them: detached, contiguous (a copy only when strided), on the CPU, all of one
    float32 or float64 dtype and size. Returned, so that a copy outlives the kernel's call."""
    dtype = tensors[0].dtype
    if dtype not in FLOATS or any(t.dtype != dtype or t.device.type != "cpu" for t in tensors):
        raise ValueError(f"the kernels read CPU float32/float64 tensors of one dtype, got "
                         f"{[(str(t.dtype), str(t.device)) for t in tensors]}")
    if len({t.numel() for t in tensors}) != 1:
        raise ValueError(f"the kernels read tensors of one size, got {[tuple(t.shape) for t in tensors]}")
    return [t.detach().contiguous() for t in tensors]


def layer(out: Output, row: int, h: torch.Tensor, x: torch.Tensor, lo: float, hi: float) -> None:
    """Row `row` of `out` <- a layer's forward sums of h (the input of phi) and x (its output), both (batch, ...) of
    one shape, and x's channel moments (channels: dim 1): see _fused.c for the nine values."""
    if h.shape != x.shape or h.dim() < 1:
        raise ValueError(f"h and x must have one shape, batch first, got {tuple(h.shape)} and {tuple(x.shape)}")
    h, x = _operands(h, x)
    rows = h.shape[0]
    cols = h.numel() // rows if rows else 0
    channels = x.shape[1] if x.dim() > 1 else 1
    _fused.layer(out.address(row, LAYER_VALUES), h.dtype == torch.float64, rows, cols, channels, h.data_ptr(),
                 x.data_ptr(), lo, hi)


def moments(out: Output, row: int, *tensors: torch.Tensor) -> None:
    """Row `row` of `out` <- sum and sum of squares of each of one or two tensors (one dtype and size)."""
    if not 1 <= len(tensors) <= 2:
        raise ValueError("moments takes one or two tensors")
    held = _operands(*tensors)
    _fused.moments(out.address(row, 2 * len(held)), held[0].dtype == torch.float64, held[0].numel(),
                   *(t.data_ptr() for t in held))
