"""Child processes: the one rule for when forking is safe, sharing work with forked children, and children that
end with their parent.

A forked child copies this process as it is, locks included. So fork only on Linux (macOS's system libraries are
not fork-safe; Windows has no fork) and only while no other Python thread runs (a lock it held would stay locked in
the child). Callers with further conditions (the sweep's workers: torch's OpenMP and CUDA) add them to this rule.

A child must not outlive its parent: killed with SIGKILL, a parent runs no cleanup, and a child left behind would
go on using a core and memory (and writing into a directory nobody reads) for as long as its work takes, or, as an
idle pool worker, for ever. Every child calls die_with_parent() first.
"""

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 0.2  # how often a child without the kernel's help looks for its parent
INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def fork_is_safe() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork") and threading.active_count() == 1


def default_workers() -> int:
    """One process per CPU, at most 2: what two figures or a few small tasks can use."""
    return min(os.cpu_count() or 1, 2)


@contextlib.contextmanager
def interrupts_held():
    """SIGINT and SIGTERM held back inside the block and acted on as it ends. For starting children and for
    clean-up that must not be cut short: an interrupt whose handler raises inside a fork is lost (Python reports
    the exception of a fork callback and drops it), and one landing in a spawned child's start-up (its imports)
    prints that child's traceback.

    Held twice over: their Python handlers (in the main thread, where Python runs them, whichever thread the
    signal reached) only note an arrival, and this thread blocks them, so that a child started inside inherits
    them blocked until it calls release_interrupts(). At the end the handlers are put back and the first noted
    interrupt is handled by its own handler (Ctrl-C's KeyboardInterrupt). Where threads cannot block signals
    (Windows), only the handlers hold."""
    arrived = []
    mask = getattr(signal, "pthread_sigmask", None)
    with interrupt_handlers(lambda handler: lambda signum, frame: arrived.append((signum, frame))) as handlers:
        blocked = mask(signal.SIG_BLOCK, INTERRUPTS) if mask is not None else None
        try:
            yield
        finally:
            if mask is not None:
                mask(signal.SIG_SETMASK, blocked)
            _handle_pending()  # what arrived meanwhile goes to the noting handlers
    for signum, frame in arrived[:1]:
        handlers[signum](signum, frame)


@contextlib.contextmanager
def interrupt_handlers(wrap: Callable):
    """Inside the block, each Python handler h of SIGINT and SIGTERM replaced by wrap(h), and every one put back
    after, even if an interrupt raises meanwhile; yields the replaced {signal: h}. Only the main thread runs Python's
    signal handlers, so elsewhere nothing is replaced; nor is a signal ignored or left to the system (SIG_IGN,
    SIG_DFL)."""
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for s in INTERRUPTS:
            handler = signal.getsignal(s)
            if callable(handler):
                handlers[s] = handler
                signal.signal(s, wrap(handler))
    try:
        yield handlers
    finally:
        _put_back(list(handlers.items()))


def _handle_pending() -> None:
    """Nothing: calling a Python function is where the interpreter runs the handlers of signals that arrived."""


def _put_back(handlers: list) -> None:
    """signal.signal(s, handler) for each, every one even if an interrupt arriving meanwhile raises."""
    if handlers:
        try:
            signal.signal(*handlers[0])
        finally:
            _put_back(handlers[1:])


def release_interrupts() -> None:
    """In a child started inside interrupts_held(), once its handlers are set: let SIGINT and SIGTERM through."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is not None:
        mask(signal.SIG_UNBLOCK, INTERRUPTS)


def run_shared(tasks: list[Callable[[], None]], workers: int | None = None) -> None:
    """Call every task, sharing them between this process and `workers - 1` forked children (task k goes to
    process k % workers) where forking is safe, else all here. Pure-Python work such as drawing holds the GIL, so a
    second core needs a second process. A child that fails leaves its tasks to this process, which then raises any
    error with a normal traceback. If this process's own share raises (Ctrl-C, SIGTERM, an error), the children are
    killed and reaped before the error goes on: none is left writing into a place the caller then removes."""
    workers = default_workers() if workers is None else workers
    workers = max(1, min(workers, len(tasks))) if fork_is_safe() else 1
    children, parent = {}, os.getpid()
    try:
        with interrupts_held():  # an interrupt meanwhile comes once every child is started and known
            for k in range(1, workers):
                pid = os.fork()
                if pid == 0:
                    _child(parent, tasks[k::workers])
                children[pid] = tasks[k::workers]
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


def _child(parent: int, tasks: list[Callable[[], None]]) -> None:
    """A forked child's share of run_shared; it leaves without running the parent's cleanup (atexit, buffers)."""
    code = 1
    try:
        die_with_parent(parent)
        release_interrupts()
        for task in tasks:
            task()
        code = 0
    finally:
        os._exit(code)


def die_with_parent(parent: int) -> None:
    """End this process when process `parent` (the one that started it) ends, however it ends, SIGKILL included.
    On Linux the kernel sends this process SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG; strictly, when the
    parent's thread that started it ends: callers start their children from the thread that outlives them).
    Elsewhere a daemon thread watches the parent and ends this process within WATCH_SECONDS of its death."""
    if kernel_kills_orphans():
        if os.getppid() != parent:  # the parent died before the kernel was asked: nobody will send the signal
            os._exit(1)
        return
    threading.Thread(target=watch_parent, args=(parent,), name="die-with-parent", daemon=True).start()


def kernel_kills_orphans() -> bool:
    """Ask the kernel for SIGKILL when this process's parent dies (Linux); False where it cannot be asked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(parent: int) -> None:
    """Block until process `parent` is gone, then end this process (without cleanup, as SIGKILL would). A
    multiprocessing child waits on its parent's sentinel (a pipe that closes when the parent dies, on every
    platform); any other child sees its parent id change (it is given to init, or a subreaper, when the parent
    dies)."""
    import multiprocessing
    from multiprocessing.connection import wait

    sentinel = getattr(multiprocessing.parent_process(), "sentinel", None)
    if sentinel is not None and multiprocessing.parent_process().pid == parent:
        wait([sentinel])
    else:
        while os.getppid() == parent:
            time.sleep(WATCH_SECONDS)
    os._exit(1)
