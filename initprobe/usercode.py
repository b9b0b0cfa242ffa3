"""Calling a user's code: a custom init `package.module:function`, the import of a user's module (imports.py), a
--model's construction.

Whatever that code raises, SystemExit and KeyboardInterrupt included, is that code's error: a UserCodeError naming
the code and its exception (one line and exit 2 from `initprobe run`; in a sweep, that run's failure while the sweep
goes on). The one exception is an interrupt that really came from outside, a SIGINT or SIGTERM arriving during
the call: that stays a KeyboardInterrupt, so Ctrl-C still stops a run or a sweep.

A user's init may draw from the global generators instead of the `generator=` it is given; `seeded_globals` seeds
them per layer around the call (and restores them after), so such an init is reproducible too, and a layer made
again (a checkpointed probe's recompute) gets the weights it had.
"""

import contextlib

from . import forking
from .errors import ConfigError
from .names import one_line

_received = 0  # interrupts seen by the handlers marked_signals() installs


class UserCodeError(ConfigError):
    """A user's code failed (raised anything, returned something unusable)."""


def call(what: str, fn, *args, keep: tuple = (), **kwargs):
    """fn(*args, **kwargs); anything it raises becomes UserCodeError("{what}: Type: message"), but an interrupt from
    outside (a signal during the call) is raised as KeyboardInterrupt, and an exception of a type in `keep`
    (initprobe's own, raised from inside the user's code: a hook's failure) as it is."""
    before = _received
    try:
        with marked_signals():
            return fn(*args, **kwargs)
    except keep:
        raise
    except BaseException as e:  # noqa: B036  (SystemExit and KeyboardInterrupt of the user's code are its errors)
        if _received != before:
            raise KeyboardInterrupt from e
        raise UserCodeError(f"{what}: {one_line(e)}") from None


@contextlib.contextmanager
def marked_signals():
    """Count SIGINT and SIGTERM arriving in the block, each then handled as before (forking.interrupt_handlers:
    in the main thread, the only one where an interrupt can come from outside)."""
    with forking.interrupt_handlers(_marking):
        yield


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
