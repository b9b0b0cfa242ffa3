"""Calling a user's code: a custom init `package.module:function`, and the import of its module.

Whatever that code raises, SystemExit and KeyboardInterrupt included, is that code's error: a UserCodeError naming
the code and its exception (one line and exit 2 from `initprobe run`; in a sweep, that run's failure while the sweep
goes on). The one exception is an interrupt that really came from outside, a SIGINT or SIGTERM arriving during
the call: that stays a KeyboardInterrupt, so Ctrl-C still stops a run or a sweep.

A user's init may draw from the global generators instead of the `generator=` it is given; `seeded_globals` seeds
them per layer around the call (and restores them after), so such an init is reproducible too, and a layer made
again (a checkpointed probe's recompute) gets the weights it had.
"""

import contextlib
import importlib
import signal
import threading
from typing import Callable

from .errors import ConfigError
from .names import did_you_mean

_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
_received = 0  # interrupts seen by the handlers marked_signals() installs


class UserCodeError(ConfigError):
    """A user's code failed (raised anything, returned something unusable)."""


def load(spec: str, what: str) -> Callable:
    """The callable `spec` = package.module:name names (`what`: "init", for messages); UserCodeError, one line
    naming it, if its module cannot be imported (whatever the import raises), lacks the name, or it is not
    callable."""
    module_name, _, attr = spec.partition(":")
    module = call(f"cannot import {what} '{spec}'", importlib.import_module, module_name)
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise UserCodeError(f"cannot import {what} '{spec}': {module_name} has no '{attr}'"
                            f"{did_you_mean(attr, public)}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise UserCodeError(f"{what} '{spec}' is not callable")
    return fn


def call(what: str, fn, *args, **kwargs):
    """fn(*args, **kwargs); anything it raises becomes UserCodeError("{what}: Type: message"), but an interrupt from
    outside (a signal during the call) is raised as KeyboardInterrupt."""
    before = _received
    try:
        with marked_signals():
            return fn(*args, **kwargs)
    except BaseException as e:  # noqa: B036  (SystemExit and KeyboardInterrupt of the user's code are its errors)
        if _received != before:
            raise KeyboardInterrupt from e
        raise UserCodeError(f"{what}: {describe(e)}") from None


def describe(e: BaseException, limit: int = 300) -> str:
    """'Type: message' on one line, at most `limit` characters."""
    text = " ".join(f"{type(e).__name__}: {e}".split()).removesuffix(":")
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def marked_signals():
    """Count SIGINT and SIGTERM arriving in the block, each then handled as before. Only the main thread runs
    Python's signal handlers, so elsewhere no interrupt can come from outside and nothing is installed; a signal
    that is ignored or left to the system (SIG_IGN, SIG_DFL) is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _INTERRUPTS}
    wrapped = {s: h for s, h in previous.items() if callable(h)}
    for s, handler in wrapped.items():
        signal.signal(s, _marking(handler))
    try:
        yield
    finally:
        for s, handler in wrapped.items():
            signal.signal(s, handler)


def _marking(handler):
    def mark(signum, frame):
        global _received
        _received += 1
        handler(signum, frame)

    return mark


@contextlib.contextmanager
def seeded_globals(seed: int | None, device):
    """Python's, numpy's and torch's global generators (the CPU's and `device`'s) seeded with `seed` in the block,
    and restored after it; nothing changes when `seed` is None."""
    if seed is None:
        yield
        return
    import random

    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    accelerator = [] if device.type == "cpu" else [device]
    try:
        with torch.random.fork_rng(devices=accelerator, device_type=device.type if accelerator else "cuda"):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.default_generator.manual_seed(seed)
            if accelerator:
                torch.get_device_module(device.type).manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
