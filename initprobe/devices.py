"""Devices: which one a run uses, what it is called, how much memory is free, and the peak a run used."""

import contextlib
import functools
import platform
import sys

import torch

from . import memory
from .config import ConfigError


def resolve(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu. Asking for a device that is not there is a ConfigError."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device cuda: no CUDA GPU is available (torch {torch.__version__})")
    if name == "mps" and not has_mps:
        raise ConfigError("--device mps: no Apple MPS device is available")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to `threads` inside the block (None: left as they are), restored after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() if device.type == "cpu" else device.type


def free_memory(device: torch.device) -> memory.Free:
    """Memory free for a run on `device`: CUDA's free memory and the host's, or the host's alone (MemAvailable on
    Linux, else physical memory) for the CPU and MPS, whose tensors are in host memory."""
    if device.type == "cuda":
        return memory.Free(torch.cuda.mem_get_info(device)[0], memory.host_available(), shared=False)
    host = memory.host_available()
    return memory.Free(host, host)


def release_free_memory(device: torch.device) -> None:
    """Hand the host memory the allocator holds free back to the system (glibc's malloc_trim, which also releases
    free pages inside the heap); nothing elsewhere. The checkpointed probe calls it once per segment, and a run
    between seeds: freed activations of a layer size near glibc's mmap threshold are kept on the heap, and small
    blocks allocated between them (batch norm's per-unit moments) stop the heap from shrinking, so without it the
    resident size grows with depth, and with each seed, although the memory in use does not (memory.py estimates
    the memory in use)."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl)
        return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int:
    """Peak bytes: CUDA's max_memory_allocated, else the process's peak resident set size. On Linux from
    /proc (VmHWM, this program's own): getrusage's maxrss survives exec, so a process started by a larger one
    (a bench, a spawned sweep worker) would report its parent's peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB
