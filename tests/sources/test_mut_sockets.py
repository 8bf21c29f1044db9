"""The TCP and Unix socket sources, clients and servers (``talkpipe_async.sources.sockets`` and its servers).

Written from a mutation run over the two modules: every default and setting kept, the counters exact over
several reads, connections and reconnects (``connections``, ``reconnects``, ``errors``, ``last_error``,
``bytes_received``, ``items``, ``rejected``, ``idle_closed``, ``blocked_puts``, ``high_water``), the names the
errors carry (the stage's label and the peer), a clean end against a reset with and without ``reconnect``, the
connect and TLS handshake timeouts, the decoding policy on each path a line takes (a finished line, the
unterminated last one), the connection cap counted exactly as clients come and go, the buffer of the servers
and the socket file of the Unix server.  Real sockets on 127.0.0.1 (or a Unix path); every wait is on a signal
(a line, a counter, an end of stream), bounded.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute

from talkpipe_async import Pipeline
from talkpipe_async.sources.sockets import (
    DEFAULT_MAX_LINE,
    READ_SIZE,
    Backoff,
    ConnectionLost,
    LineTooLong,
    NetStats,
    tcp_bytes,
    tcp_lines,
    tcp_server_lines,
    unix_bytes,
    unix_lines,
    unix_server_lines,
)
from tests.helpers.net import raw_server, reset
from tests.helpers.wait import wait_until

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio

#: Reconnect at once, at most three attempts in a row.
QUICK = Backoff(initial=0.001, maximum=0.01, max_attempts=3)


async def _read_all(stream: anyio.abc.ByteStream) -> bytes:
    """Everything *stream* brings until its end (a reset counts as the end)."""
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        return data


async def _hung_up(stream: anyio.abc.ByteStream) -> bool:
    """True once the server closes *stream* without sending anything."""
    with anyio.fail_after(5):
        return await _read_all(stream) == b""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def _socket_dir() -> Iterator[str]:
    """A short directory for Unix socket paths (the kernel limit is 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="tpm", dir="/tmp")
    try:
        yield directory
    finally:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


class Served:
    """A server source running in a task: its address, the lines consumed so far, its stats."""

    def __init__(self, stats: NetStats) -> None:
        self.address: Any = None
        self.got: list[str] = []
        self.stats = stats
        self.error: BaseException | None = None

    async def lines(self, n: int) -> None:
        """Wait until *n* lines have been consumed."""
        await wait_until(lambda: len(self.got) >= n or self.error is not None, what=f"{n} lines")
        if self.error is not None:
            raise self.error
        assert len(self.got) == n, self.got

    async def counted(self, name: str, value: int) -> None:
        """Wait until the counter ``stats.<name>`` reaches *value*."""
        await wait_until(lambda: getattr(self.stats, name) == value, what=f"stats.{name} == {value}")

    async def connect(self) -> anyio.abc.SocketStream:
        """A new client connection to the server."""
        if isinstance(self.address, str):
            return await anyio.connect_unix(self.address)
        return await anyio.connect_tcp(*self.address)


@asynccontextmanager
async def serving(make: Callable[..., Any], **options: Any) -> AsyncIterator[Served]:
    """Run ``make(on_listening=..., stats=..., **options)`` and consume its lines until the block ends."""
    stats = options.pop("stats", None) or NetStats()
    served = Served(stats)
    ready = anyio.Event()

    def listening(address: Any) -> None:
        served.address = address
        ready.set()

    async def consume() -> None:
        try:
            async with Pipeline(make(on_listening=listening, stats=stats, **options)).stream() as items:
                async for line in items:
                    served.got.append(line)
        except Exception as exc:  # the test reads it through Served.lines or Served.error
            served.error = exc
            ready.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await ready.wait()
            if served.error is not None:
                raise served.error
            yield served
            tg.cancel_scope.cancel()


# --- the clients: settings ------------------------------------------------------------------------


def test_client_defaults_and_settings_kept() -> None:
    """A client: no reconnect, a default ``Backoff``, a 1 MiB line cap that raises, UTF-8 with replacement,
    64 KiB reads, no read timeout, 10 s to connect, plain TCP, its class name as label; every setting kept."""
    for source in (tcp_lines("127.0.0.1", 9), tcp_bytes("127.0.0.1", 9), unix_lines("/tmp/x.sock")):
        assert source.reconnect is False and source.backoff == Backoff()
        assert source.max_line_bytes == DEFAULT_MAX_LINE and source.on_overlong == "raise"
        assert source.encoding == "utf-8" and source.errors == "replace"
        assert source.read_size == READ_SIZE == 65536 and source.read_timeout is None
        assert source.connect_timeout == 10.0
        assert isinstance(source.stats, NetStats) and source.label == type(source).__name__
    plain = tcp_lines("127.0.0.1", 9)
    assert plain.tls is False and plain.ssl_context is None and plain.tls_hostname is None
    assert (plain.host, plain.port) == ("127.0.0.1", 9)
    stats = NetStats()
    context = ssl.create_default_context()
    backoff = Backoff(initial=1)
    given = tcp_lines(
        "localhost",
        7,
        ssl_context=context,
        tls_hostname="example",
        reconnect=True,
        backoff=backoff,
        max_line_bytes=5,
        on_overlong="skip",
        encoding="latin-1",
        errors="strict",
        read_size=3,
        read_timeout=1.5,
        connect_timeout=2.5,
        stats=stats,
        name="feed",
    )
    assert given.tls is True and given.ssl_context is context and given.tls_hostname == "example"
    assert given.reconnect is True and given.backoff is backoff and given.stats is stats and given.label == "feed"
    assert (given.max_line_bytes, given.on_overlong, given.encoding, given.errors) == (5, "skip", "latin-1", "strict")
    assert (given.read_size, given.read_timeout, given.connect_timeout) == (3, 1.5, 2.5)
    assert tcp_lines("127.0.0.1", 9, tls=True).tls is True
    assert unix_bytes("/tmp/y.sock").path == "/tmp/y.sock"


# --- the clients: a run --------------------------------------------------------------------------


async def test_a_clean_end_ends_the_stream_and_the_counters_add_up_over_reads() -> None:
    """Without ``reconnect`` the server's end ends the stream, the unterminated last line included; lines,
    bytes and items are counted over every read, one connection, no error."""
    got_first = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"a\n")
        await got_first.wait()  # the client has the first read's line: the rest is a second read
        await stream.send(b"bb\ncc")

    stats = NetStats()
    got: list[str] = []
    async with raw_server(handler) as port:
        with anyio.fail_after(5):
            async with Pipeline(tcp_lines("127.0.0.1", port, stats=stats)).stream() as items:
                async for line in items:
                    got.append(line)
                    got_first.set()
    assert got == ["a", "bb", "cc"]
    assert stats.bytes_received == 7 and stats.items == 3
    assert stats.connections == 1 and stats.reconnects == 0 and stats.errors == 0 and stats.last_error == ""


async def test_bytes_mode_yields_each_read_and_counts_it() -> None:
    """``tcp_bytes`` yields each read as it came, and counts one item per read."""
    got_first = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"a\n")
        await got_first.wait()
        await stream.send(b"bb\ncc")

    stats = NetStats()
    chunks: list[bytes] = []
    async with raw_server(handler) as port:
        with anyio.fail_after(5):
            async with Pipeline(tcp_bytes("127.0.0.1", port, stats=stats)).stream() as items:
                async for chunk in items:
                    chunks.append(chunk)
                    got_first.set()
    assert chunks[0] == b"a\n" and b"".join(chunks) == b"a\nbb\ncc" and len(chunks) >= 2
    assert stats.items == len(chunks) and stats.bytes_received == 7


@pytest.mark.parametrize("read_timeout", [None, 5.0])
async def test_read_size_bounds_every_read(read_timeout: float | None) -> None:
    """No read returns more than ``read_size`` bytes, with or without a read timeout."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"abcdefghij")

    async with raw_server(handler) as port:
        with anyio.fail_after(5):
            source = tcp_bytes("127.0.0.1", port, read_size=3, read_timeout=read_timeout)
            chunks = await Pipeline(source).collect()
    assert b"".join(chunks) == b"abcdefghij" and max(map(len, chunks)) <= 3


async def test_a_reset_is_counted_and_the_error_names_the_source_and_the_peer() -> None:
    """A reset without ``reconnect``: ``ConnectionLost`` naming the stage and ``host:port``, caused by the
    reset; one error, its repr in ``last_error``; the unfinished line dropped and counted."""
    stats = NetStats()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"a\nhal")
        await wait_until(lambda: stats.bytes_received == 5, what="the client's read")
        reset(stream)

    async with raw_server(handler) as port:
        got: list[str] = []
        with anyio.fail_after(5), pytest.raises(ConnectionLost) as info:
            async with Pipeline(tcp_lines("127.0.0.1", port, stats=stats, name="feed")).stream() as items:
                async for line in items:
                    got.append(line)
    assert got == ["a"]
    lost = info.value.__cause__
    assert lost is not None
    assert str(info.value) == f"feed (127.0.0.1:{port}): connection lost: {lost!r}"
    assert stats.errors == 1 and stats.last_error == repr(lost) and stats.partial_dropped == 1
    assert stats.connections == 1 and stats.reconnects == 0


async def test_reconnects_count_every_connection_reset_and_retry_then_give_up() -> None:
    """``reconnect=True`` against a server that resets every connection: each connection, error and
    reconnect counted; after ``max_attempts`` failures in a row ``ConnectionLost`` says so, caused by the last
    reset."""
    stats = NetStats()
    connections = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.send(b"a\nhal")
        await wait_until(lambda: stats.bytes_received == 5 * connections, what="the client's read")
        reset(stream)

    got: list[str] = []
    async with raw_server(handler) as port:
        with anyio.fail_after(5), pytest.raises(ConnectionLost) as info:
            source = tcp_lines("127.0.0.1", port, reconnect=True, backoff=QUICK, stats=stats)
            async with Pipeline(source).stream() as items:
                async for line in items:
                    got.append(line)
    assert got == ["a", "a", "a"]
    assert str(info.value) == f"tcp_lines (127.0.0.1:{port}): gave up after 3 reconnection attempts"
    assert info.value.__cause__ is not None and stats.last_error == repr(info.value.__cause__)
    assert stats.connections == 3 and stats.reconnects == 2 and stats.errors == 3 and stats.partial_dropped == 3


async def test_reconnect_also_follows_a_clean_end() -> None:
    """With ``reconnect=True`` a clean end is followed by a new connection too (no error counted), and the
    attempts are bounded the same way."""
    stats = NetStats()
    connections = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.send(f"{connections}\n".encode())

    got: list[str] = []
    backoff = Backoff(initial=0.001, maximum=0.01, max_attempts=2)
    async with raw_server(handler) as port:
        with anyio.fail_after(5), pytest.raises(ConnectionLost) as info:
            source = tcp_lines("127.0.0.1", port, reconnect=True, backoff=backoff, stats=stats)
            async with Pipeline(source).stream() as items:
                async for line in items:
                    got.append(line)
    assert str(info.value) == f"tcp_lines (127.0.0.1:{port}): gave up after 2 reconnection attempts"
    assert got == ["1", "2"]
    assert stats.connections == 2 and stats.reconnects == 1 and stats.errors == 0 and stats.last_error == ""


async def _closed_port() -> int:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port: int = listener.listeners[0].extra(SocketAttribute.local_port)
    await listener.aclose()
    return port


async def test_a_refused_connection_raises_at_once_without_reconnect() -> None:
    """Without ``reconnect`` a refused connection raises its own error after one attempt, counted with its repr."""
    port = await _closed_port()
    stats = NetStats()
    with anyio.fail_after(5), pytest.raises(OSError) as info:
        await Pipeline(tcp_lines("127.0.0.1", port, stats=stats)).collect()
    assert stats.errors == 1 and stats.last_error == repr(info.value) and stats.connections == 0

    stats = NetStats()
    backoff = Backoff(initial=0.001, maximum=0.01, max_attempts=2)
    with anyio.fail_after(5), pytest.raises(OSError):
        await Pipeline(tcp_lines("127.0.0.1", port, reconnect=True, backoff=backoff, stats=stats)).collect()
    assert stats.errors == 2 and stats.reconnects == 0 and stats.connections == 0


async def test_connect_timeout_bounds_a_connection_that_never_completes() -> None:
    """A server whose accept queue is full never completes the handshake: ``connect_timeout`` ends the
    attempt with ``TimeoutError``, counted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)  # room for one connection not yet accepted
    filler = socket.create_connection(server.getsockname(), timeout=5)  # takes it: later handshakes stall
    try:
        stats = NetStats()
        with anyio.fail_after(3), pytest.raises(TimeoutError):
            await Pipeline(tcp_lines(*server.getsockname(), connect_timeout=0.2, stats=stats)).collect()
        assert stats.errors == 1 and stats.last_error.startswith("TimeoutError")
    finally:
        filler.close()
        server.close()


async def test_the_line_cap_and_its_error_name_the_source_and_the_peer() -> None:
    """``max_line_bytes`` is the cap of each line: over it raises ``LineTooLong`` naming the stage and the
    peer; with ``on_overlong="skip"`` the line is dropped and counted in the source's stats."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"abcd\nabcde\nok\n")

    async with raw_server(handler) as port:
        with anyio.fail_after(5):
            with pytest.raises(LineTooLong, match=rf"^tcp_lines \(127\.0\.0\.1:{port}\): line longer than 4 bytes"):
                await Pipeline(tcp_lines("127.0.0.1", port, max_line_bytes=4)).collect()
            stats = NetStats()
            source = tcp_lines("127.0.0.1", port, max_line_bytes=4, on_overlong="skip", stats=stats)
            assert await Pipeline(source).collect() == ["abcd", "ok"]
    assert stats.dropped_lines == 1


@pytest.mark.parametrize(
    ("data", "options", "expected"),
    [
        (b"caf\xe9\ncaf\xe9", {"encoding": "latin-1"}, ["café", "café"]),
        (b"ok\n\xff\n\xfe", {}, ["ok", "\ufffd", "\ufffd"]),
        (b"ok\n\xff\n", {"errors": "strict"}, UnicodeDecodeError),
        (b"ok\n\xff", {"errors": "strict"}, UnicodeDecodeError),
    ],
    ids=["latin-1", "replace", "strict-line", "strict-last-line"],
)
async def test_the_client_decodes_every_line_with_its_encoding_and_errors(
    data: bytes, options: dict[str, Any], expected: Any
) -> None:
    """``encoding`` and ``errors`` apply to finished lines and to the unterminated last line alike."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(data)

    async with raw_server(handler) as port:
        with anyio.fail_after(5):
            if isinstance(expected, list):
                assert await Pipeline(tcp_lines("127.0.0.1", port, **options)).collect() == expected
            else:
                with pytest.raises(expected):
                    await Pipeline(tcp_lines("127.0.0.1", port, **options)).collect()


# --- the servers: settings -----------------------------------------------------------------------


def test_server_defaults_settings_kept_and_validation() -> None:
    """A server: 127.0.0.1 on an ephemeral port, 100 connections, no idle timeout, a buffer of 1024 lines,
    a 1 MiB line cap that skips, UTF-8 with replacement, no TLS (10 s handshakes when it has), its class name
    as label; every setting kept; ``max_connections`` of 1 is accepted, 0 refused with a clear message."""
    with _socket_dir() as directory:
        path = os.path.join(directory, "d.sock")
        for source in (tcp_server_lines(), unix_server_lines(path)):
            assert source.max_connections == 100 and source.idle_timeout is None and source.buffer == 1024
            assert source.max_line_bytes == DEFAULT_MAX_LINE and source.on_overlong == "skip"
            assert source.encoding == "utf-8" and source.errors == "replace" and source.on_listening is None
            assert isinstance(source.stats, NetStats) and source.label == type(source).__name__
        assert unix_server_lines(path).path == path
    tcp = tcp_server_lines()
    assert (tcp.host, tcp.port, tcp.ssl_context, tcp.tls_handshake_timeout) == ("127.0.0.1", 0, None, 10.0)
    stats = NetStats()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    given = tcp_server_lines(
        "localhost",
        7,
        ssl_context=context,
        tls_handshake_timeout=2.5,
        max_connections=1,
        idle_timeout=1.5,
        buffer=8,
        max_line_bytes=5,
        on_overlong="raise",
        encoding="latin-1",
        errors="strict",
        on_listening=print,
        stats=stats,
        name="ingest",
    )
    assert (given.host, given.port, given.ssl_context, given.tls_handshake_timeout) == ("localhost", 7, context, 2.5)
    assert (given.max_connections, given.idle_timeout, given.buffer) == (1, 1.5, 8)
    assert (given.max_line_bytes, given.on_overlong, given.encoding, given.errors) == (5, "raise", "latin-1", "strict")
    assert given.on_listening is print and given.stats is stats and given.label == "ingest"
    with pytest.raises(ValueError, match=r"^max_connections must be at least 1$"):
        tcp_server_lines(max_connections=0)


# --- the servers: a run --------------------------------------------------------------------------


async def test_the_server_listens_where_it_is_told_and_reports_the_address() -> None:
    """``on_listening`` gets the bound ``(host, port)``: 127.0.0.1 and an ephemeral port by default, or the port
    asked for."""
    async with serving(tcp_server_lines) as served:
        host, port = served.address
        assert host == "127.0.0.1" and port != 0
        client = await served.connect()
        await client.send(b"hello\n")
        await served.lines(1)
        await client.aclose()
    wanted = _free_port()
    async with serving(tcp_server_lines, port=wanted) as served:
        assert served.address == ("127.0.0.1", wanted)
        client = await served.connect()
        await client.send(b"there\n")
        await served.lines(1)
        await client.aclose()
    assert served.got == ["there"]


async def test_server_counters_add_up_over_clients_and_reads() -> None:
    """Lines of every client are merged; bytes and items are counted over every read, the unterminated last
    line of a client that ends cleanly is delivered; one connection per client, no error."""
    async with serving(tcp_server_lines) as served:
        a = await served.connect()
        b = await served.connect()
        await a.send(b"a1\n")
        await served.lines(1)
        await b.send(b"b1\nb2\n")
        await served.lines(3)
        await a.send(b"a2\na3")
        await served.lines(4)
        await a.aclose()  # a clean end: its last line comes out
        await served.lines(5)
        await b.aclose()
    assert served.got == ["a1", "b1", "b2", "a2", "a3"]
    stats = served.stats
    assert stats.bytes_received == 3 + 6 + 5 and stats.items == 5
    assert stats.connections == 2 and stats.errors == 0 and stats.rejected == 0 and stats.idle_closed == 0


@pytest.mark.parametrize(
    ("data", "options", "expected"),
    [
        (b"caf\xe9\ncaf\xe9", {"encoding": "latin-1"}, ["café", "café"]),
        (b"ok\n\xff\n\xfe", {}, ["ok", "\ufffd", "\ufffd"]),
        (b"ok\n\xff\n", {"errors": "strict"}, UnicodeDecodeError),
        (b"ok\n\xff", {"errors": "strict"}, UnicodeDecodeError),
    ],
    ids=["latin-1", "replace", "strict-line", "strict-last-line"],
)
async def test_the_server_decodes_every_line_with_its_encoding_and_errors(
    data: bytes, options: dict[str, Any], expected: Any
) -> None:
    """``encoding`` and ``errors`` apply to finished lines and to a client's unterminated last line alike; a
    line that cannot be decoded under ``errors="strict"`` ends the source with the error."""
    async with serving(tcp_server_lines, **options) as served:
        client = await served.connect()
        await client.send(data)
        await client.aclose()
        if isinstance(expected, list):
            await served.lines(len(expected))
            assert served.got == expected
        else:
            await wait_until(lambda: served.error is not None, what="the error")
            assert isinstance(served.error, expected)
            assert served.got in ([], ["ok"])


async def test_a_client_reset_is_counted_and_its_unfinished_line_dropped() -> None:
    """A client that resets: its finished lines are delivered, the unfinished one dropped and counted, one
    error per reset with the error's repr in ``last_error``; the server goes on."""
    async with serving(tcp_server_lines) as served:
        for n in (1, 2):
            client = await served.connect()
            await client.send(b"a\nhal")
            await served.lines(n)
            await served.counted("bytes_received", 5 * n)
            reset(client)
            await client.aclose()
            await served.counted("errors", n)
        stats = served.stats
        assert stats.partial_dropped == 2 and stats.connections == 2
        assert stats.last_error.startswith(("BrokenResourceError", "ConnectionResetError")), stats.last_error
        client = await served.connect()
        await client.send(b"still here\n")
        await served.lines(3)
        await client.aclose()
    assert served.got == ["a", "a", "still here"]


async def test_idle_connections_are_closed_and_counted_each() -> None:
    """Each connection silent for ``idle_timeout`` is closed and counted; an unfinished line it held is
    dropped and counted."""
    async with serving(tcp_server_lines, idle_timeout=0.1) as served:
        a = await served.connect()
        b = await served.connect()
        await a.send(b"par")
        assert await _hung_up(a) and await _hung_up(b)
        await wait_until(lambda: served.stats.idle_closed == 2, what="both idle closes")
        await a.aclose()
        await b.aclose()
    assert served.got == [] and served.stats.partial_dropped == 1 and served.stats.connections == 2


async def test_a_connection_that_leaves_frees_its_place_under_a_cap_of_one() -> None:
    """``max_connections=1``: one client at a time; the next is hung up on and counted while it stays, and
    accepted once it has left."""
    async with serving(tcp_server_lines, max_connections=1) as served:
        for n in range(3):
            client = await served.connect()
            await client.send(b"in\n")
            await served.lines(2 * n + 1)
            extra = await served.connect()
            assert await _hung_up(extra)
            await extra.aclose()
            assert served.stats.rejected == n + 1
            await client.send(b"out")
            await client.aclose()
            await served.lines(2 * n + 2)  # its last line: the handler has ended
    assert served.got == ["in", "out"] * 3 and served.stats.connections == 3


async def test_the_connection_cap_counts_each_client_that_leaves_once() -> None:
    """``max_connections=2``: when one of two clients leaves, exactly one place is free."""
    async with serving(tcp_server_lines, max_connections=2) as served:
        a, b = await served.connect(), await served.connect()
        await a.send(b"a\n")
        await b.send(b"b\n")
        await served.lines(2)
        c = await served.connect()
        assert await _hung_up(c)
        await a.send(b"a out")
        await a.aclose()
        await served.lines(3)
        d = await served.connect()
        await d.send(b"d\n")
        await served.lines(4)
        e = await served.connect()
        assert await _hung_up(e)
        for s in (b, c, d, e):
            await s.aclose()
    assert sorted(served.got) == ["a", "a out", "b", "d"]
    assert served.stats.rejected == 2 and served.stats.connections == 3


async def test_a_hundred_clients_are_served_by_default_and_the_next_one_refused() -> None:
    """By default a server takes 100 clients at once; the 101st is hung up on and counted."""
    async with serving(tcp_server_lines) as served:
        clients = [await served.connect() for _ in range(100)]
        for i, client in enumerate(clients):
            await client.send(f"c{i}\n".encode())
        await served.lines(100)
        extra = await served.connect()
        assert await _hung_up(extra)
        await extra.aclose()
        for client in clients:
            await client.aclose()
    assert sorted(served.got) == sorted(f"c{i}" for i in range(100))
    assert served.stats.connections == 100 and served.stats.rejected == 1


async def test_the_buffer_holds_1024_lines_by_default_and_each_wait_for_room_is_counted() -> None:
    """The server's buffer holds ``buffer`` lines (1024 by default) while the pipeline does not pull; each read
    whose lines find it full is counted in ``blocked_puts`` and waits; all lines come out in order once the
    pipeline pulls, ``items`` counting them and ``high_water`` the fullest the buffer was."""
    stats = NetStats()
    ready = anyio.Event()
    address: list[Any] = []

    def listening(a: Any) -> None:
        address.append(a)
        ready.set()

    flood = b"x\n" * 1024
    with anyio.fail_after(10):
        async with Pipeline(tcp_server_lines(on_listening=listening, stats=stats)).stream() as items:
            first: list[str] = []
            async with anyio.create_task_group() as tg:

                async def pull_first() -> None:
                    first.append(await items.__anext__())

                tg.start_soon(pull_first)
                await ready.wait()
                a = await anyio.connect_tcp(*address[0])
                await a.send(b"first\n")
            # the pipeline holds "first" and pulls no more: 1024 lines fill the buffer without waiting
            await a.send(flood)
            await wait_until(lambda: stats.bytes_received == 6 + len(flood), what="the flood")
            assert stats.blocked_puts == 0
            b = await anyio.connect_tcp(*address[0])
            await b.send(b"y\n")
            await wait_until(lambda: stats.bytes_received == 6 + len(flood) + 2, what="b's line")
            assert stats.blocked_puts == 1
            c = await anyio.connect_tcp(*address[0])
            await c.send(b"z\n")
            await wait_until(lambda: stats.bytes_received == 6 + len(flood) + 4, what="c's line")
            assert stats.blocked_puts == 2
            rest = [await items.__anext__() for _ in range(1024 + 2)]
            for s in (a, b, c):
                await s.aclose()
    assert first == ["first"] and rest[:1024] == ["x"] * 1024 and sorted(rest[1024:]) == ["y", "z"]
    assert stats.items == 1 + 1024 + 2 and stats.high_water == 1024 and stats.connections == 3


async def test_over_long_lines_are_skipped_and_counted_or_raise_naming_the_source() -> None:
    """By default an over-long line is dropped and counted in the server's stats and the server goes on;
    ``on_overlong="raise"`` ends the source with ``LineTooLong`` naming the stage."""
    async with serving(tcp_server_lines, max_line_bytes=4) as served:
        client = await served.connect()
        await client.send(b"ok\nabcde\nfine\n")
        await served.lines(2)
        await client.aclose()
    assert served.got == ["ok", "fine"] and served.stats.dropped_lines == 1
    async with serving(tcp_server_lines, max_line_bytes=4, on_overlong="raise", name="ingest") as served:
        client = await served.connect()
        await client.send(b"abcde\n")
        await wait_until(lambda: served.error is not None, what="the error")
        await client.aclose()
    assert isinstance(served.error, LineTooLong)
    assert str(served.error).startswith("ingest: line longer than 4 bytes")


async def test_a_server_outside_a_run_closes_what_it_opened(no_fd_leak: None) -> None:
    """A server source iterated outside a pipeline run raises the run's error and leaves no socket open."""
    with pytest.raises(RuntimeError, match="no pipeline run is active"):
        await tcp_server_lines().generate().__anext__()


async def test_a_unix_server_outside_a_run_opens_nothing_and_leaves_no_file(no_fd_leak: None) -> None:
    """Outside a pipeline run the Unix server raises the run's error before it touches the path: no socket is
    left open and no socket file is left behind (a stale file there is left as it was)."""
    with _socket_dir() as directory:
        path = os.path.join(directory, "s.sock")
        with pytest.raises(RuntimeError, match="no pipeline run is active"):
            await unix_server_lines(path).generate().__anext__()
        assert not os.path.exists(path)


async def test_the_unix_server_replaces_a_stale_socket_file_and_removes_its_own() -> None:
    """A socket file left at the path is replaced; the server's own file is removed when the run ends."""
    with _socket_dir() as directory:
        path = os.path.join(directory, "s.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        assert os.path.exists(path)
        async with serving(unix_server_lines, path=path) as served:
            assert served.address == path
            for text in (b"one\n", b"two\n"):
                client = await served.connect()
                await client.send(text)
                await client.aclose()
            await served.lines(2)
        assert not os.path.exists(path)
    assert sorted(served.got) == ["one", "two"] and served.stats.connections == 2


def _errors_in(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and, for an exception group, every exception inside it."""
    yield exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _errors_in(inner)


async def test_a_server_that_cannot_accept_ends_with_the_error() -> None:
    """When the listener fails (here: no file descriptor left for the next connection) the source ends with
    that error, not as if its clients had all finished."""
    with _socket_dir() as directory:
        path = os.path.join(directory, "f.sock")
        ready, done = anyio.Event(), anyio.Event()
        ended: list[BaseException | None] = []

        async def consume() -> None:
            try:
                async with Pipeline(unix_server_lines(path, on_listening=lambda _: ready.set())).stream() as items:
                    async for _ in items:
                        pass
                ended.append(None)
            except Exception as exc:
                ended.append(exc)
            finally:
                done.set()

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await ready.wait()
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    lowest_free = os.dup(0)
                    os.close(lowest_free)
                    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor
                    try:
                        client.connect(path)  # queued: the server's accept() has no descriptor to give it
                        await done.wait()
                    finally:
                        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert ended[0] is not None, "the source ended as if nothing had happened"
    assert any(getattr(e, "errno", None) == errno.EMFILE for e in _errors_in(ended[0])), repr(ended[0])


# --- the TLS server ------------------------------------------------------------------------------


async def test_a_tls_handshake_that_never_comes_is_timed_out_and_counted(
        tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """A client that connects and never starts TLS is closed after ``tls_handshake_timeout``, counted in
    ``tls_failures``."""
    server_ctx, _ = tls
    async with serving(tcp_server_lines, ssl_context=server_ctx, tls_handshake_timeout=0.1) as served:
        silent = await served.connect()
        assert await _hung_up(silent)
        await wait_until(lambda: served.stats.tls_failures == 1, what="the failed handshake")
        await silent.aclose()
    assert served.stats.connections == 0


async def test_a_tls_client_that_ends_without_close_notify_still_delivers_its_last_line(
        tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """The TLS server does not require the client's close_notify: a client that ends its stream without one
    has all its lines delivered, the unterminated last one too, and no error is counted."""
    server_ctx, client_ctx = tls
    async with serving(tcp_server_lines, ssl_context=server_ctx) as served:
        client = await anyio.connect_tcp(*served.address, ssl_context=client_ctx, tls_hostname="localhost")
        await client.send(b"a\nb")
        await served.lines(1)
        await client.transport_stream.send_eof()  # the end of the TCP stream, without close_notify
        await served.lines(2)
        await anyio.aclose_forcefully(client)
    assert served.got == ["a", "b"] and served.stats.errors == 0
