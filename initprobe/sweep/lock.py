"""The sweep directory's lock: one invocation at a time writes into a sweep directory.

An exclusive `flock` on `<sweep>/.lock`, taken before the invocation writes anything else into the directory and
held until it ends. The kernel releases it when the holding process dies, however it dies, so a killed sweep never
leaves a stale lock; the file itself stays (it names the last holder's process id, for the message). Where there is
no `fcntl` (Windows) sweeps are not locked.
"""

import contextlib
import os
from pathlib import Path

from ..config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows)
    fcntl = None

LOCK_NAME = ".lock"


@contextlib.contextmanager
def held(target: Path):
    """Hold the lock of sweep directory `target` (created if missing) for the block; ConfigError, having written
    nothing, when another process holds it."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd = os.open(target / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot write to {target}: {e.strerror or e}") from None
    try:
        _acquire(fd, target)
        yield
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, target: Path) -> None:
    if fcntl is None:  # pragma: no cover
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        who = f" (process {holder})" if holder.isdigit() else ""
        raise ConfigError(f"{target} is in use by another sweep{who}; wait for it to finish or choose another "
                          "--out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
