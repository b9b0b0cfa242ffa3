"""Forked processes, and the one rule for when forking is safe.

A forked child copies this process as it is, locks included. So fork only on Linux (macOS's system libraries are
not fork-safe; Windows has no fork) and only while no other Python thread runs (a lock it held would stay locked in
the child). Callers with further conditions (the sweep's workers: torch's OpenMP and CUDA) add them to this rule.
"""

import contextlib
import os
import signal
import sys
import threading
from typing import Callable


def fork_is_safe() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork") and threading.active_count() == 1


def default_workers() -> int:
    """One process per CPU, at most 2: what two figures or a few small tasks can use."""
    return min(os.cpu_count() or 1, 2)


def run_shared(tasks: list[Callable[[], None]], workers: int | None = None) -> None:
    """Call every task, sharing them between this process and `workers - 1` forked children (task k goes to
    process k % workers) where forking is safe, else all here. Pure-Python work such as drawing holds the GIL, so a
    second core needs a second process. A child that fails leaves its tasks to this process, which then raises any
    error with a normal traceback. If this process's own share raises (Ctrl-C, SIGTERM, an error), the children are
    killed and reaped before the error goes on: none is left writing into a place the caller then removes."""
    workers = default_workers() if workers is None else workers
    workers = max(1, min(workers, len(tasks))) if fork_is_safe() else 1
    children = {}
    for k in range(1, workers):
        pid = os.fork()
        if pid == 0:  # child: do its share, and leave without running the parent's cleanup (atexit, buffers)
            code = 1
            try:
                for task in tasks[k::workers]:
                    task()
                code = 0
            finally:
                os._exit(code)
        children[pid] = tasks[k::workers]
    try:
        for task in tasks[0::workers]:
            task()
        for pid, share in list(children.items()):
            failed = os.waitpid(pid, 0)[1] != 0
            del children[pid]
            if failed:
                for task in share:
                    task()
    except BaseException:
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        raise
