"""What every commit into an existing file shares: numbered commit points and shielding from Ctrl-C.

A commit (the few metadata steps that make staged elements visible, see :mod:`shadows.write_h5` and
:mod:`shadows.writeback.zarr`) must never stop half-way because of the user: :func:`shielded` holds a ``SIGINT`` back
until the block has finished, then raises the ``KeyboardInterrupt`` it held.  A ``SIGKILL`` cannot be held back:
the commits are ordered so that a kill at any step leaves every element old or new, and the tests prove it by
killing the writer at each :func:`point` (a test installs a hook with :func:`set_hook`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_hook: Callable[[str], None] | None = None


def set_hook(hook: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Install ``hook(name)``, called at every commit point (``None`` removes it); returns the previous hook.

    For fault-injection tests: a hook may pause, raise, or kill the process at a named point.
    """
    global _hook
    previous, _hook = _hook, hook
    return previous


def point(name: str) -> None:
    """A numbered step of a commit: a test's hook runs here (nothing happens without one)."""
    if _hook is not None:
        _hook(name)


@contextmanager
def shielded() -> Iterator[None]:
    """Hold ``SIGINT`` (Ctrl-C) back while the block runs; raise the held ``KeyboardInterrupt`` after it.

    Only the main thread receives Python's signals, so elsewhere the block simply runs.  A handler other than
    Python's default (IPython's, say) is called after the block instead of raising.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt
