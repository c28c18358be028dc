"""Ctrl-C and SIGTERM as KeyboardInterrupt, delivered even where Python drops an exception.

A signal handler runs at whatever bytecode the main thread is at. When that is a garbage-collection callback
or a ``__del__`` (SQLAlchemy's pool cleans up in both), the KeyboardInterrupt it raises is printed as
"Exception ignored" and dropped, and the sweep ran on to the end with exit code 0. So the handler also records
the signal, and the training loop raises it again at its next batch (``raise_if_interrupted``): an interrupt
always ends the run, once or twice, never zero times.
"""

from __future__ import annotations

import contextlib
import signal
import sys

_received: list[int] = []  # signals received in this process, newest last


def _interrupt(signum: int) -> KeyboardInterrupt:
    """Ctrl-C's KeyboardInterrupt has no message (as Python's own); SIGTERM's says which signal."""
    return KeyboardInterrupt() if signum == signal.SIGINT else KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _raise_interrupt(signum, frame):
    _received.append(signum)
    raise _interrupt(signum)


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
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook
