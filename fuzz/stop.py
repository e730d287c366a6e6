"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM, promptly and without false findings.

The signal handler only raises a flag while the fuzz loop runs: an exception raised from a
signal handler can land anywhere, e.g. inside Hypothesis's garbage-collection callback,
which swallows it ("Exception ignored in: gc callback") and the run goes on. The loop
checks the flag where stopping is safe: the executor while it waits for a case (in slices),
and the Hypothesis property before and after each case, which then raises KeyboardInterrupt
itself. Outside the loop (set-up, warm-up) and on a second signal the handler raises at once."""
from __future__ import annotations

import contextlib
import signal
import threading

_requested = threading.Event()
_cooperative = threading.Event()


def requested() -> bool:
    return _requested.is_set()


def _handler(signum, frame):
    if _cooperative.is_set() and not _requested.is_set():
        _requested.set()
        return
    _requested.set()
    raise KeyboardInterrupt


def install(shard: bool = False):
    """Route SIGINT and SIGTERM through the handler above (main thread only). A shard of a
    sharded run ignores them, since a signal to the whole process group reaches its parent
    too; the parent stops it with SIGUSR1 instead, once, so it is never interrupted twice."""
    _requested.clear()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN if shard else _handler)
    if shard:
        signal.signal(signal.SIGUSR1, _handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})   # blocked by the parent


@contextlib.contextmanager
def cooperative():
    """While inside, a first signal only sets the flag; the code checks requested()."""
    _cooperative.set()
    try:
        yield
    finally:
        _cooperative.clear()


def check():
    """Raise KeyboardInterrupt if a stop was requested (call where stopping is safe)."""
    if _requested.is_set():
        raise KeyboardInterrupt
