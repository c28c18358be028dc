"""Ctrl-C and SIGTERM as KeyboardInterrupt, delivered even where Python drops an exception.

A signal handler runs at whatever bytecode the main thread is at. When that is a garbage-collection callback
or a ``__del__`` (SQLAlchemy's pool cleans up in both), the KeyboardInterrupt it raises is printed as
"Exception ignored" and dropped, and the sweep ran on to the end with exit code 0. So the handler also records
the signal, and it is raised again at the next safe point (``raise_if_interrupted``: every training batch, the
sweep's progress updates, the poll loop of --workers, and the end of the ``sigterm_as_interrupt`` block), so
an interrupt ends the command even when Python dropped it. Each command starts with no interrupt recorded.

A store write must not be cut in half: a KeyboardInterrupt raised inside an SQLAlchemy transaction can leave
its SQLite connection holding the write lock, and then the run's own closing writes (its KILLED status, its
trial's end reason) fail with "database is locked" and the run stays RUNNING. Inside ``deferred()`` a signal is
recorded but not raised; it is raised when the block ends. A trial's timeout (SIGALRM) waits the same way.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading

_received: list[int] = []  # signals received since the outermost sigterm_as_interrupt began, newest last
_depth: list[int] = []  # how many sigterm_as_interrupt blocks are open (they nest: a sweep, then its worker)
_deferring: list[int] = []  # how many deferred() blocks are open
_pending: list[BaseException] = []  # delivered inside them, to be raised when the outermost ends


def _interrupt(signum: int) -> KeyboardInterrupt:
    """Ctrl-C's KeyboardInterrupt has no message (as Python's own); SIGTERM's says which signal."""
    return KeyboardInterrupt() if signum == signal.SIGINT else KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _raise_interrupt(signum, frame):
    _received.append(signum)
    deliver(_interrupt(signum))


def deliver(exc: BaseException) -> None:
    """From a signal handler: raise ``exc`` now, or, inside a ``deferred()`` block, when that block ends."""
    if _deferring:
        _pending.append(exc)
    else:
        raise exc


@contextlib.contextmanager
def deferred():
    """Inside, what a signal handler delivers (an interrupt, a trial's timeout) waits: a store write runs
    whole. When the outermost block ends, the first exception delivered inside it is raised.
    Signal handlers run in the main thread only, so another thread's block (Optuna's heartbeat) defers nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring.append(1)
    try:
        yield
    finally:
        _deferring.pop()
        outermost, waiting = not _deferring, list(_pending)
        if outermost:
            _pending.clear()
        if outermost and waiting:
            raise waiting[0]  # also when the block raised (it becomes the context): a trial's timeout is not lost


def run_whole(func):
    """``func``, made to run inside ``deferred()``: a signal during a call is raised when the call returns."""
    @functools.wraps(func)
    def whole(*args, **kwargs):
        with deferred():
            return func(*args, **kwargs)
    return whole


def raise_if_interrupted() -> None:
    """Raise the interrupt a signal brought, if one came (a safe point: between training batches)."""
    if _received:
        raise _interrupt(_received[-1])


def _quiet_dropped_interrupts(hook):
    """An unraisable hook that says nothing of a dropped KeyboardInterrupt (it is raised again at the next batch)
    and hands everything else to ``hook``."""
    def unraisable(info):
        if not isinstance(info.exc_value, KeyboardInterrupt):
            hook(info)
    return unraisable


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside, SIGTERM raises KeyboardInterrupt, as Ctrl-C does: open MLflow runs end KILLED and a sweep's
    trial FAIL with a reason, instead of the process dying with its runs left RUNNING."""
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, _quiet_dropped_interrupts(sys.unraisablehook)
    outermost = not _depth
    if outermost:
        _received.clear()  # a new command (tests run several in one process)
    _depth.append(1)
    try:
        yield
        if outermost:
            raise_if_interrupted()  # dropped after the last safe point: still the command's end
    finally:
        _depth.pop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook
