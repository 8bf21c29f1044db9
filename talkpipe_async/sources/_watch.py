"""A wake-up hint for polling sources: Linux inotify on a file's directory, through ctypes.

:class:`DirWatcher` lets a tail sleep "until the poll interval ends or the
directory changes, whichever comes first".  It only shortens waits: the
tail still polls (stat and read) as before, so a missed or spurious event
changes latency, never what is read.  Where inotify is not available (not
Linux, no libc, a missing directory, the watch limit reached)
:func:`open_watcher` returns ``None`` and the caller just sleeps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import sys

import anyio

__all__ = ["CHANGES", "DirWatcher", "open_watcher"]

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
#: Any change: IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
#: | IN_DELETE_SELF | IN_MOVE_SELF.
CHANGES = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800

_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c") or "libc.so.6"
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


class DirWatcher:
    """An inotify descriptor watching one directory; :meth:`wait` returns early when it changes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poller: select.poll | None = None

    async def wait(self, seconds: float) -> bool:
        """Wait up to *seconds*; True if a change in the directory ended the wait."""
        with anyio.move_on_after(seconds):
            await anyio.wait_readable(self.fd)
            self._drain()
            return True
        return False

    def wait_blocking(self, seconds: float, stop_fd: int) -> bool:
        """In a thread: wait up to *seconds* for a change or for *stop_fd* to become readable.

        Returns True if a change ended the wait, at once: the caller acts first, then calls :meth:`drain`.
        """
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            poller.register(stop_fd, select.POLLIN)
        ready = poller.poll(max(0, int(seconds * 1000)))
        return any(fd == self.fd for fd, _ in ready)

    def drain(self) -> None:
        """Consume the queued events."""
        self._drain()

    def _drain(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Release the descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_watcher(directory: str, mask: int = CHANGES) -> DirWatcher | None:
    """A watcher of *directory* for the events in *mask*, or ``None`` where inotify cannot watch it."""
    libc = _load_libc()
    if libc is None:
        return None
    fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(directory or "."), mask) < 0:
        os.close(fd)
        return None
    return DirWatcher(fd)
