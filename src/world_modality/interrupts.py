"""Interrupts: SIGINT (Ctrl-C) and SIGTERM end a `wm` command the same way, with one line and no traceback from any
process (the command line prints the line: `world_modality.cli`).

In the main process both raise a `KeyboardInterrupt` (SIGTERM: `Terminated`), so the command unwinds as from Ctrl-C:
atomic writes leave what finished valid, and pools stop their worker processes. Worker processes (simulators, dataset
generation, a matrix's training runs) are started inside `child_processes`: they start with SIGINT blocked, so a
terminal's Ctrl-C, which reaches the whole process group, is handled by the main process alone, which stops them. In
them SIGTERM, whether from the main process or sent to the whole group, ends the process silently after its cleanup
(`exit_on_sigterm`), so no traceback is printed and nothing is left to multiprocessing's resource tracker (a worker
killed outright leaves the named semaphores it made, e.g. tqdm's lock, which the tracker then reports as leaked).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt."""


_received: list[int] = []  # the signals received inside `raised_in_main`, in order


def _raise(signum: int, frame) -> None:
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def raised_in_main() -> Iterator[None]:
    """SIGINT and SIGTERM raise `KeyboardInterrupt` / `Terminated` in the main thread inside the block (elsewhere,
    e.g. a command run from another thread, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {signum: signal.signal(signum, _raise) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()


def interrupting_signal(error: BaseException) -> int | None:
    """The signal that ended a command with ``error``: the one it raised, or one received while another error
    unwound (e.g. a worker process that SIGTERM ended first, seen as a broken pipe); None for no interrupt."""
    if _received:
        return _received[0]
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT
    return None


def exit_status(signum: int) -> int:
    """The shell's status of a command ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


@contextmanager
def child_processes() -> Iterator[None]:
    """Start worker processes inside the block: they start with SIGINT blocked (the mask is inherited across fork and
    exec; a SIGINT that arrives here meanwhile is delivered when the block ends)."""
    # multiprocessing's resource tracker, started with the first process, unblocks SIGINT in the thread that starts it.
    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def exit_on_sigterm() -> None:
    """In a worker process: SIGTERM raises SystemExit, which multiprocessing ends the process with silently, after the
    cleanup a normal exit runs (a pool's ``initializer``, or the first call of a worker's function)."""
    signal.signal(signal.SIGTERM, _exit)


def _exit(signum: int, frame) -> None:
    # The SystemExit may land inside a constructor (e.g. MuJoCo's GL context at a first render): the half-made object's
    # finaliser then fails on the attributes it never set, an error of the interruption, not of the work, which
    # Python would print as "Exception ignored in ...". A process on its way out reports none of those.
    sys.unraisablehook = _ignore
    raise SystemExit(exit_status(signum))


def _ignore(unraisable) -> None:
    """An unraisable-exception hook that reports nothing."""
