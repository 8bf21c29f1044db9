"""Socket sources through anyio: TCP and Unix clients and servers, UDP datagrams.

Also re-exports the pieces every network stage shares: :class:`LineFramer`
(64 KiB reads split into lines in Python, with a hard line-length cap) and
:class:`NetStats` (counters a caller can read while and after a run), from
the private transport layer, and :class:`Backoff` (capped exponential backoff with jitter).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from .._backoff import Backoff, Retries
from .._core._channel import Channel, ChannelClosed
from .._core._items import BatchSource
from .._core._run import current_run
from .._core._segment import AbstractSource
from .._net.connect import UnixAcceptor, check_unix_path, connect_tcp, connect_unix
from .._net.framing import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from .._net.framing import READ_SIZE as READ_SIZE
from .._net.framing import ConnectionLost as ConnectionLost
from .._net.framing import LineFramer as LineFramer
from .._net.framing import LineTooLong as LineTooLong
from .._net.framing import NetStats as NetStats
from .._net.framing import Overlong as Overlong
from .._net.tls import CountingTLSListener, hang_up

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

log = logging.getLogger("talkpipe_async.net")

ItemT = TypeVar("ItemT")
class _FramedSource(AbstractSource[ItemT]):
    """Shared options of the sources that split a byte stream with a :class:`LineFramer`."""

    def __init__(
        self,
        max_line_bytes: int,
        on_overlong: Overlong,
        encoding: str,
        errors: str,
        stats: NetStats | None,
        name: str | None,
        /,
    ) -> None:
        super().__init__()
        self.max_line_bytes = max_line_bytes
        self.on_overlong = on_overlong
        self.encoding = encoding
        self.errors = errors
        self.stats = stats
        if name:
            self.name = name

    def _framer(self, label: str, stats: NetStats) -> LineFramer:
        return LineFramer(self.max_line_bytes, overlong=self.on_overlong, label=label, stats=stats)


class _StreamClient(_FramedSource[Any], BatchSource[Any]):
    """Shared body of the TCP and Unix client sources."""

    lines_mode = True
    emits_metadata = False  # only data: no metadata plumbing after it

    def __init__(
        self,
        *,
        reconnect: bool,
        backoff: Backoff | None,
        max_line_bytes: int,
        on_overlong: Overlong,
        encoding: str,
        errors: str,
        read_size: int,
        read_timeout: float | None,
        connect_timeout: float,
        stats: NetStats | None,
        name: str | None,
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


class tcp_lines(_StreamClient):
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
        super().__init__(
            reconnect=reconnect,
            backoff=backoff,
            max_line_bytes=max_line_bytes,
            on_overlong=on_overlong,
            encoding=encoding,
            errors=errors,
            read_size=read_size,
            read_timeout=read_timeout,
            connect_timeout=connect_timeout,
            stats=stats,
            name=name,
        )
        self.host = host
        self.port = port
        self.tls = tls or ssl_context is not None
        self.ssl_context = ssl_context
        self.tls_hostname = tls_hostname

    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    async def _connect(self) -> anyio.abc.ByteStream:
        return await connect_tcp(self.host, self.port, self.tls, self.ssl_context, self.tls_hostname)


class tcp_bytes(tcp_lines):
    """Raw chunks (bytes, up to ``read_size`` each) read from a TCP server; options as :class:`tcp_lines`."""

    lines_mode = False


class unix_lines(_StreamClient):
    """Lines (str) read from a Unix stream socket; options and guarantees as :class:`tcp_lines`.

    Paths longer than 107 bytes raise ``ValueError`` up front (the kernel limit).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
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
        super().__init__(
            reconnect=reconnect,
            backoff=backoff,
            max_line_bytes=max_line_bytes,
            on_overlong=on_overlong,
            encoding=encoding,
            errors=errors,
            read_size=read_size,
            read_timeout=read_timeout,
            connect_timeout=connect_timeout,
            stats=stats,
            name=name,
        )
        self.path = check_unix_path(path)

    def _where(self) -> str:
        return self.path

    async def _connect(self) -> anyio.abc.ByteStream:
        return await connect_unix(self.path)


class unix_bytes(unix_lines):
    """Raw chunks (bytes) read from a Unix stream socket; options as :class:`unix_lines`."""

    lines_mode = False


class _ServerSource(_FramedSource[str]):
    """Shared body of the TCP and Unix server sources."""

    def __init__(
        self,
        *,
        max_connections: int,
        idle_timeout: float | None,
        buffer: int,
        max_line_bytes: int,
        on_overlong: Overlong,
        encoding: str,
        errors: str,
        on_listening: Callable[[Any], Any] | None,
        stats: NetStats | None,
        name: str | None,
    ) -> None:
        super().__init__(max_line_bytes, on_overlong, encoding, errors, stats, name)
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.buffer = buffer
        self.on_listening = on_listening

    async def _listen(self, stats: NetStats) -> tuple[anyio.abc.Listener[Any], Any]:
        raise NotImplementedError

    async def generate(self) -> AsyncIterator[str]:
        """Listen, merge the lines of every connection into one bounded channel, yield them."""
        stats = self.stats if self.stats is not None else NetStats()
        listener, address = await self._listen(stats)
        channel = Channel(self.buffer)
        try:
            current_run().start_soon(self._serve, listener, channel, stats)
        except BaseException:
            await anyio.aclose_forcefully(listener)
            raise
        if self.on_listening is not None:
            self.on_listening(address)
        try:
            while True:
                try:
                    batch = await channel.get_batch(1024)
                except anyio.EndOfStream:
                    return
                if channel.high_water > stats.high_water:
                    stats.high_water = channel.high_water
                stats.items += len(batch)
                for line in batch:
                    yield line
        finally:
            channel.abort()

    async def _serve(self, listener: anyio.abc.Listener[Any], channel: Channel, stats: NetStats) -> None:
        active = 0
        label = self.label

        async def handle(stream: anyio.abc.ByteStream) -> None:
            nonlocal active
            if active >= self.max_connections:
                stats.rejected += 1
                await hang_up(stream)
                return
            active += 1
            stats.connections += 1
            framer = self._framer(label, stats)
            try:
                while True:
                    try:
                        with anyio.move_on_after(self.idle_timeout) as scope:
                            data = await stream.receive(READ_SIZE)
                        if scope.cancelled_caught:
                            stats.idle_closed += 1
                            framer.drop_partial()
                            return
                    except anyio.EndOfStream:
                        tail = framer.finish()
                        if tail is not None:
                            await channel.put(tail.decode(self.encoding, self.errors))
                        return
                    except (anyio.BrokenResourceError, OSError) as err:
                        framer.drop_partial()
                        stats.errors += 1
                        stats.last_error = repr(err)
                        return
                    stats.bytes_received += len(data)
                    lines = framer.feed_text(data, self.encoding, self.errors)
                    if lines:
                        if len(channel) >= channel.capacity:
                            stats.blocked_puts += 1
                        await channel.put_batch(lines)
            except ChannelClosed:
                return
            except Exception as exc:  # the source raises it, in order (e.g. LineTooLong)
                channel.close(exc)
            finally:
                active -= 1
                await hang_up(stream)

        try:
            async with listener:
                await listener.serve(handle)
        except Exception as exc:
            channel.close(exc)


class tcp_server_lines(_ServerSource):
    """A TCP server whose source items are the lines sent by all its clients, merged.

    Every connection's handler reads 64 KiB, splits lines and puts them, as a
    batch, into one bounded channel of ``buffer`` lines; when the pipeline is
    slow the channel fills, handlers stop reading and TCP flow control
    blocks the senders.  Buffered lines stay below ``buffer`` plus one batch
    (the lines of one 64 KiB read) per connection.  Connections beyond
    ``max_connections`` are closed at once (``stats.rejected``); a connection
    silent for ``idle_timeout`` seconds is closed (``stats.idle_closed``).
    ``on_listening(address)`` is called with the bound ``(host, port)``
    (use ``port=0`` for an ephemeral port).  Over-long lines are dropped and
    counted by default (``on_overlong="skip"``): one bad client must not stop
    the server.  With ``ssl_context`` (a server context holding the
    certificate) every connection is TLS; a failed or timed-out
    (``tls_handshake_timeout``) handshake closes that connection and is
    counted in ``stats.tls_failures``.  A TLS connection the server ends
    (idle, over the cap, the end of the run) gets a close_notify first, and
    the server waits up to 2 seconds for the client's, so standard clients
    (Python's ``ssl``, anyio in standard mode) see a clean end rather than a
    truncated stream.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int = 100,
        idle_timeout: float | None = None,
        buffer: int = 1024,
        max_line_bytes: int = DEFAULT_MAX_LINE,
        on_overlong: Overlong = "skip",
        encoding: str = "utf-8",
        errors: str = "replace",
        on_listening: Callable[[Any], Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        tls_handshake_timeout: float = 10.0,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            buffer=buffer,
            max_line_bytes=max_line_bytes,
            on_overlong=on_overlong,
            encoding=encoding,
            errors=errors,
            on_listening=on_listening,
            stats=stats,
            name=name,
        )
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.tls_handshake_timeout = tls_handshake_timeout

    async def _listen(self, stats: NetStats) -> tuple[anyio.abc.Listener[Any], Any]:
        tcp = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        address = tcp.listeners[0].extra(SocketAttribute.local_address)
        if self.ssl_context is None:
            return tcp, address
        listener = CountingTLSListener(
            tcp, self.ssl_context, standard_compatible=False, handshake_timeout=self.tls_handshake_timeout
        )
        listener.stats = stats
        return listener, address


class unix_server_lines(_ServerSource):
    """A Unix-socket server whose items are the lines of all its clients; as :class:`tcp_server_lines`.

    An existing socket file at ``path`` is replaced; the file is removed when the run ends.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_connections: int = 100,
        idle_timeout: float | None = None,
        buffer: int = 1024,
        max_line_bytes: int = DEFAULT_MAX_LINE,
        on_overlong: Overlong = "skip",
        encoding: str = "utf-8",
        errors: str = "replace",
        on_listening: Callable[[Any], Any] | None = None,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            buffer=buffer,
            max_line_bytes=max_line_bytes,
            on_overlong=on_overlong,
            encoding=encoding,
            errors=errors,
            on_listening=on_listening,
            stats=stats,
            name=name,
        )
        self.path = check_unix_path(path)

    async def _listen(self, stats: NetStats) -> tuple[anyio.abc.Listener[Any], Any]:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        path = self.path

        def remove() -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        current_run().on_close(remove)
        return UnixAcceptor(sock), path


class udp_datagrams(AbstractSource[Any]):
    """Datagrams received on a UDP socket: ``bytes``, or ``(bytes, (host, port))`` with ``with_address``.

    UDP has no backpressure, so a receiving task keeps at most ``buffer``
    datagrams; when the pipeline falls behind the oldest are dropped and
    counted in ``stats.datagrams_dropped`` (a warning is logged at the first
    drop).  ``on_listening(address)`` gets the bound ``(host, port)``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        buffer: int = 1024,
        with_address: bool = False,
        on_listening: Callable[[Any], Any] | None = None,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        self.host = host
        self.port = port
        self.buffer = buffer
        self.with_address = with_address
        self.on_listening = on_listening
        self.stats = stats
        if name:
            self.name = name

    async def generate(self) -> AsyncIterator[Any]:
        """Receive datagrams in a task into a drop-oldest ring; yield them in order."""
        stats = self.stats if self.stats is not None else NetStats()
        sock = await anyio.create_udp_socket(local_host=self.host, local_port=self.port)
        ring: deque[Any] = deque()
        state: dict[str, Any] = {"event": anyio.Event(), "error": None}
        cap = self.buffer
        label = self.label
        with_address = self.with_address

        async def receive() -> None:
            try:
                async with sock:
                    async for packet, address in sock:
                        if len(ring) >= cap:
                            ring.popleft()
                            stats.datagrams_dropped += 1
                            if stats.datagrams_dropped == 1:
                                log.warning("%s: buffer full, dropping oldest datagrams (counted in stats)", label)
                        ring.append((packet, address) if with_address else packet)
                        stats.bytes_received += len(packet)
                        if len(ring) > stats.high_water:
                            stats.high_water = len(ring)
                        state["event"].set()
            except Exception as exc:
                state["error"] = exc
                state["event"].set()

        try:
            current_run().start_soon(receive)
        except BaseException:
            await anyio.aclose_forcefully(sock)
            raise
        if self.on_listening is not None:
            self.on_listening(sock.extra(SocketAttribute.local_address))
        while True:
            while ring:
                stats.items += 1
                yield ring.popleft()
            if state["error"] is not None:
                raise state["error"]
            event = state["event"] = anyio.Event()
            if not ring:
                await event.wait()
