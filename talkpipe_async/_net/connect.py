"""Opening connections: TCP (with or without TLS) and Unix stream sockets, and a Unix listener.

The Unix side talks to the socket through ``anyio.wait_readable`` /
``wait_writable`` rather than anyio's own Unix streams (see
:class:`RawUnixStream` and :class:`UnixAcceptor` for why).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .framing import READ_SIZE

__all__ = ["UNIX_PATH_MAX", "RawUnixStream", "UnixAcceptor", "check_unix_path", "connect_tcp", "connect_unix"]

UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, one of them the terminating NUL


def check_unix_path(path: str | os.PathLike[str]) -> str:
    """*path* as text; ``ValueError`` when it is longer than a Unix socket path may be."""
    text = os.fspath(path)
    if len(os.fsencode(text)) > UNIX_PATH_MAX:
        raise ValueError(
            f"unix socket path is {len(os.fsencode(text))} bytes, the limit is {UNIX_PATH_MAX}: {text!r} "
            "(use a shorter directory, e.g. a tempfile.mkdtemp() under /tmp)"
        )
    return text


async def connect_tcp(
    host: str, port: int, tls: bool, ssl_context: ssl.SSLContext | None, tls_hostname: str | None
) -> anyio.abc.ByteStream:
    """``anyio.connect_tcp`` with or without TLS."""
    if not tls:
        return await anyio.connect_tcp(host, port)
    if ssl_context is None:
        ssl_context = ssl.create_default_context()
    return await anyio.connect_tcp(host, port, ssl_context=ssl_context, tls_hostname=tls_hostname or host)


class RawUnixStream(anyio.abc.ByteStream):
    """A Unix stream socket read and written through ``anyio.wait_readable``/``wait_writable``.

    (anyio 4.16's asyncio ``UNIXSocketStream`` removes its reader in a done
    callback, so a receive cancelled while data arrives makes the loop report
    ``InvalidStateError``; this class has no such window.)
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        """Up to *max_bytes* bytes; ``EndOfStream`` at EOF, ``BrokenResourceError`` on reset."""
        while True:
            try:
                data = self.sock.recv(max_bytes)
            except (BlockingIOError, InterruptedError):
                await anyio.wait_readable(self.sock)
                continue
            except OSError as err:
                if self.sock.fileno() < 0:
                    raise anyio.ClosedResourceError from None
                raise anyio.BrokenResourceError from err
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        """Send all of *item*, waiting while the socket buffer is full."""
        view = memoryview(item)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                await anyio.wait_writable(self.sock)
                continue
            except OSError as err:
                raise anyio.BrokenResourceError from err
            view = view[sent:]

    async def send_eof(self) -> None:
        """Shut down the sending side."""
        self.sock.shutdown(socket.SHUT_WR)

    async def aclose(self) -> None:
        """Close the socket."""
        if self.sock.fileno() >= 0:
            anyio.notify_closing(self.sock)
            self.sock.close()
        await anyio.lowlevel.checkpoint()


async def connect_unix(path: str) -> RawUnixStream:
    """Connect to the Unix stream socket at *path* (without a worker thread)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            sock.connect(path)
        except (BlockingIOError, InterruptedError):
            await anyio.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err), path) from None
            try:
                sock.getpeername()
            except OSError:  # Linux's EAGAIN: the listener's backlog is full and the socket was left unconnected
                raise ConnectionRefusedError(errno.ECONNREFUSED, "the listener's backlog is full", path) from None
    except BaseException:
        sock.close()
        raise
    return RawUnixStream(sock)


class UnixAcceptor(anyio.abc.Listener[RawUnixStream]):
    """Accept loop on a listening Unix socket through ``anyio.wait_readable``.

    (anyio 4.16's asyncio ``UNIXSocketListener`` can call ``set_result`` on a
    cancelled future when a pending ``accept()`` is cancelled.)
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def serve(
        self,
        handler: Callable[[RawUnixStream], Any],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        """Accept connections forever, one handler task each."""
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.wait_readable(self.sock)
                try:
                    client, _ = self.sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                tg.start_soon(handler, RawUnixStream(client))

    async def aclose(self) -> None:
        """Close the listening socket."""
        self.sock.close()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """No typed attributes."""
        return {}

