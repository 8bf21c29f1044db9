"""Errors in threads that a sync stage starts itself fail the run instead of vanishing.

A TalkPipe segment may read its input or do its work in threads of its own
(``ForkSegment``, ``Debounce``); when such a thread dies, Python prints the
traceback on stderr and the segment often just ends early.  While a thread
stage runs, a :class:`ThreadWatch` is installed in ``threading.excepthook``
(chained to the hook that was there: the traceback is still printed); an
exception in a thread that did not exist when the stage started is handed to
the stage, which fails the run with it.  The hook is installed only while a
thread stage is running and removed with the last one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadWatch"]

_lock = threading.Lock()
_watches: list[ThreadWatch] = []
_previous: Callable[[Any], object] | None = None


class ThreadWatch:
    """Catch exceptions of threads started after this watch while it is open (see module docs)."""

    def __init__(self, on_error: Callable[[BaseException], None]) -> None:
        self.error: BaseException | None = None
        self._on_error = on_error
        self._known = {t.ident for t in threading.enumerate()}
        global _previous
        with _lock:
            if not _watches:
                _previous = threading.excepthook
                threading.excepthook = _hook
            _watches.append(self)

    def close(self) -> None:
        """Stop watching; the last open watch restores the previous hook."""
        global _previous
        with _lock:
            if self in _watches:
                _watches.remove(self)
            if not _watches and _previous is not None:
                if threading.excepthook is _hook:
                    threading.excepthook = _previous
                _previous = None

    def _report(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            self._on_error(exc)


def _hook(args: Any) -> None:
    exc = args.exc_value
    ident = args.thread.ident if args.thread is not None else None
    with _lock:
        targets = [w for w in _watches if ident not in w._known]
        previous = _previous
    if isinstance(exc, Exception):
        for watch in targets:
            watch._report(exc)
    if previous is not None:
        previous(args)
