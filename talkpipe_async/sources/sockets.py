"""Socket sources through anyio: TCP and Unix clients and servers, UDP datagrams.

Also re-exports the pieces every network stage shares: :class:`LineFramer`
(64 KiB reads split into lines in Python, with a hard line-length cap) and
:class:`NetStats` (counters a caller can read while and after a run), from
the private transport layer, and :class:`Backoff` (capped exponential backoff with jitter).
The clients are here; the servers and the UDP source live in modules of their own, re-exported here.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypedDict

import anyio
import anyio.abc

from .._backoff import Backoff, Retries
from .._core._batch_items import BatchSource
from .._net.connect import check_unix_path, connect_tcp, connect_unix
from .._net.framing import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from .._net.framing import READ_SIZE as READ_SIZE
from .._net.framing import ConnectionLost as ConnectionLost
from .._net.framing import LineFramer as LineFramer
from .._net.framing import LineTooLong as LineTooLong
from .._net.framing import NetStats as NetStats
from .._net.framing import Overlong as Overlong
from ._framing import FramedSource
from ._item_types import Text
from ._socket_servers import tcp_server_lines as tcp_server_lines
from ._socket_servers import unix_server_lines as unix_server_lines
from ._udp import udp_datagrams as udp_datagrams

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "Backoff",
    "ConnectionLost",
    "LineFramer",
    "LineTooLong",
    "NetStats",
    "tcp_bytes",
    "tcp_lines",
    "tcp_server_lines",
    "udp_datagrams",
    "unix_bytes",
    "unix_lines",
    "unix_server_lines",
]


class ClientOptions(TypedDict, total=False):
    """The options :class:`tcp_lines` and :class:`unix_lines` (and their bytes forms) share; see :class:`tcp_lines`."""

    reconnect: bool
    backoff: Backoff | None
    max_line_bytes: int
    on_overlong: Overlong
    encoding: str
    errors: str
    read_size: int
    read_timeout: float | None
    connect_timeout: float
    stats: NetStats | None
    name: str | None


class _StreamClient(FramedSource[Text], BatchSource[Text]):
    """Shared body of the TCP and Unix client sources."""

    lines_mode = True
    emits_metadata = False  # only data: no metadata plumbing after it

    def __init__(
        self,
        *,
        reconnect: bool = False,
        backoff: Backoff | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE,
        on_overlong: Overlong = "raise",
        encoding: str = "utf-8",
        errors: str = "replace",
        read_size: int = READ_SIZE,
        read_timeout: float | None = None,
        connect_timeout: float = 10.0,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(max_line_bytes, on_overlong, encoding, errors, stats, name)
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.read_size = read_size
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout

    async def _connect(self) -> anyio.abc.ByteStream:
        raise NotImplementedError

    def _where(self) -> str:
        raise NotImplementedError

    async def _open(self) -> anyio.abc.ByteStream:
        with anyio.fail_after(self.connect_timeout):
            return await self._connect()

    async def _receive(self, stream: anyio.abc.ByteStream) -> bytes:
        if self.read_timeout is None:
            return await stream.receive(self.read_size)
        with anyio.fail_after(self.read_timeout):
            return await stream.receive(self.read_size)

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Connect, read 64 KiB at a time, yield each read's lines (or the chunk); reconnect if asked."""
        stats = self.stats if self.stats is not None else NetStats()
        label = f"{self.label} ({self._where()})"
        retries = Retries(self.backoff)
        while True:
            try:
                stream = await self._open()
            except (OSError, TimeoutError) as err:
                stats.errors += 1
                stats.last_error = repr(err)
                if not self.reconnect or not await retries.next_attempt():
                    raise
                continue
            stats.connections += 1
            retries.opened()
            framer = self._framer(label, stats)
            lost: BaseException | None = None
            try:
                while True:
                    try:
                        data = await self._receive(stream)
                    except anyio.EndOfStream:
                        if self.lines_mode:
                            tail = framer.finish()
                            if tail is not None:
                                stats.items += 1
                                yield [tail.decode(self.encoding, self.errors)]
                        break
                    except (anyio.BrokenResourceError, OSError, TimeoutError, ssl.SSLError) as err:
                        framer.drop_partial()
                        lost = err
                        break
                    stats.bytes_received += len(data)
                    retries.delivered()
                    if not self.lines_mode:
                        stats.items += 1
                        yield [data]
                        continue
                    lines = framer.feed_text(data, self.encoding, self.errors)
                    if lines:
                        stats.items += len(lines)
                        yield lines
            finally:
                await anyio.aclose_forcefully(stream)
            if lost is not None:
                stats.errors += 1
                stats.last_error = repr(lost)
                if not self.reconnect:
                    raise ConnectionLost(f"{label}: connection lost: {lost!r}") from lost
            elif not self.reconnect:
                return
            if not await retries.next_attempt():
                raise ConnectionLost(f"{label}: gave up after {retries.failures} reconnection attempts") from lost
            stats.reconnects += 1


class tcp_lines(_StreamClient[Text]):
    """Lines (str) read from a TCP server.

    Reads ``read_size`` bytes at a time and splits them in Python (see
    :class:`LineFramer`).  The source reads only when the pipeline pulls, so a
    slow pipeline leaves data in the kernel buffers and TCP flow control
    blocks the sender: memory held here is one read plus one partial line.
    ``tls=True`` (optionally ``ssl_context``, ``tls_hostname``) wraps the
    connection in TLS.  ``reconnect=True`` reconnects after EOF, reset or read
    timeout with ``backoff`` (its count and delay start again only after a
    connection that delivered data and stayed up ``backoff.healthy_after``
    seconds, so ``max_attempts`` bounds a server that keeps dropping);
    otherwise a reset raises :class:`ConnectionLost` and EOF ends the stream
    (the unterminated last line is still delivered).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(**options)
        self.host = host
        self.port = port
        self.tls = tls or ssl_context is not None
        self.ssl_context = ssl_context
        self.tls_hostname = tls_hostname

    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    async def _connect(self) -> anyio.abc.ByteStream:
        return await connect_tcp(self.host, self.port, self.tls, self.ssl_context, self.tls_hostname)


class tcp_bytes(tcp_lines[bytes]):
    """Raw chunks (bytes, up to ``read_size`` each) read from a TCP server; options as :class:`tcp_lines`."""

    lines_mode = False


class unix_lines(_StreamClient[Text]):
    """Lines (str) read from a Unix stream socket; options and guarantees as :class:`tcp_lines`.

    Paths longer than 107 bytes raise ``ValueError`` up front (the kernel limit).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(**options)
        self.path = check_unix_path(path)

    def _where(self) -> str:
        return self.path

    async def _connect(self) -> anyio.abc.ByteStream:
        return await connect_unix(self.path)


class unix_bytes(unix_lines[bytes]):
    """Raw chunks (bytes) read from a Unix stream socket; options as :class:`unix_lines`."""

    lines_mode = False
