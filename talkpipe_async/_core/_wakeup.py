"""Ctrl-C wakes an idle asyncio loop while worker threads block.

Python runs signal handlers in the main thread only, but the kernel may hand
a process signal such as Ctrl-C's SIGINT to any thread.  When it lands on a
worker thread blocked inside a long item, the C-level handler only notes it:
the main thread, idle in the event loop's ``select()``, is not interrupted,
and the Python handler runs only when the loop next wakes for another
reason, which may be when the item ends.  trio and uvloop set a *wakeup fd*
that the C-level handler writes to, so their loop wakes at once; asyncio's
plain runner does not.

So while a thread stage runs on a plain asyncio loop in the main thread and
nobody has set a wakeup fd, the library sets one that the loop watches; it is
removed when the last thread stage on that loop ends.  A wakeup fd the host
set (asyncio's own ``add_signal_handler`` sets one) is left as it is.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import weakref
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType

__all__ = ["signal_wakeup"]

_wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wakeup] = weakref.WeakKeyDictionary()


class _Wakeup:
    """One loop's wakeup socket pair, set as the wakeup fd while it has users."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.users = 0
        self.installed = False
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        loop.add_reader(self.reader.fileno(), self._drain)
        # The sockets close with the loop: the reader is dropped with its selector.
        weakref.finalize(loop, _close, self.reader, self.writer)

    def _drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except OSError:  # drained (BlockingIOError)
            pass

    def acquire(self) -> None:
        self.users += 1
        if self.users == 1:
            previous = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
            self.installed = previous == -1
            if not self.installed:  # the host's own wakeup fd stays
                signal.set_wakeup_fd(previous)

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.installed:
            self.installed = False
            current = signal.set_wakeup_fd(-1)
            if current != self.writer.fileno():  # the host set its own meanwhile: keep it
                signal.set_wakeup_fd(current)

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()


def _for_this_loop() -> _Wakeup | None:
    """The running loop's wakeup, if it needs one: plain asyncio, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        loop = asyncio.get_running_loop()  # under trio: RuntimeError, trio wakes itself
    except RuntimeError:
        return None
    if not isinstance(loop, asyncio.BaseEventLoop):  # uvloop's loop is not one, and sets its own wakeup fd
        return None
    wakeup = _wakeups.get(loop)
    if wakeup is None:
        wakeup = _wakeups[loop] = _Wakeup(loop)
    return wakeup


def signal_wakeup() -> AbstractContextManager[None]:
    """While inside, a signal wakes the running asyncio loop whichever thread the kernel gave it to.

    Call it on the loop's thread; the object it returns may be entered again
    and again for the rest of the run (``thread_map`` enters it per call).
    """
    wakeup = _for_this_loop()
    return nullcontext() if wakeup is None else wakeup
