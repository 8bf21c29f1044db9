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
import struct
import sys

import anyio

__all__ = ["CHANGES", "DirWatcher", "RenameLog", "open_rename_log", "open_watcher"]

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
#: Any change: IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
#: | IN_DELETE_SELF | IN_MOVE_SELF.
CHANGES = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_DELETE = 0x200
_IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
#: Renames out of the directory whose other half never came, kept at most (their cookies).
_MAX_PENDING = 256

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


class _Moved:
    """A file renamed away from the watched name: where it is now (None while a rename is under way)."""

    __slots__ = ("name",)

    def __init__(self, name: str | None) -> None:
        self.name = name


class RenameLog:
    """Where the files renamed away from one name of a directory are now, from inotify's rename events.

    The kernel queues a rename's events in the rename itself, so once a newer file is at the name,
    :meth:`take` (which reads what is queued first) knows every file renamed away before it arrived,
    even if nobody looked at the name while it was there.  Later renames of such a file are followed;
    a file moved out of the directory, deleted or renamed over is dropped.  ``overflowed`` is set when
    the kernel's queue overflowed (events were lost).
    """

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.moved: list[_Moved] = []
        self.pending: dict[int, _Moved] = {}  # rename cookie -> the file whose new name has not come yet
        self.overflowed = False

    def take(self) -> list[str]:
        """The names, in rename order, of the files renamed away from the name since the last call."""
        self._read()
        names = [m.name for m in self.moved if m.name is not None]
        self.moved = [m for m in self.moved if m.name is None]
        return names

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            offset = 0
            while offset < len(data):
                _, mask, cookie, size = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + size]
                offset += _EVENT.size + size
                self._event(mask, cookie, os.fsdecode(raw.rstrip(b"\0")))

    def _event(self, mask: int, cookie: int, name: str) -> None:
        if mask & _IN_Q_OVERFLOW:
            self.overflowed = True
        elif mask & _IN_MOVED_FROM:
            moved = next((m for m in self.moved if m.name == name), None)
            if moved is None and name == self.name:
                moved = _Moved(None)
                self.moved.append(moved)
            if moved is not None:
                moved.name = None
                self.pending[cookie] = moved
                if len(self.pending) > _MAX_PENDING:
                    stale = self.pending.pop(next(iter(self.pending)))
                    self.moved = [m for m in self.moved if m is not stale]
        elif mask & (_IN_MOVED_TO | _IN_DELETE):
            self.moved = [m for m in self.moved if m.name != name]  # deleted, or renamed over
            moved = self.pending.pop(cookie, None) if mask & _IN_MOVED_TO else None
            if moved is not None:
                moved.name = name

    def close(self) -> None:
        """Release the descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_rename_log(path: str) -> RenameLog | None:
    """A :class:`RenameLog` of *path*'s name in its directory, or ``None`` where inotify cannot watch it."""
    directory, name = os.path.split(os.path.abspath(path))
    watcher = open_watcher(directory, _IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE)
    return None if watcher is None else RenameLog(watcher.fd, name)
