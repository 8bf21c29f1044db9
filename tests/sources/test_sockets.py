"""Socket sources: TCP/Unix clients and servers, UDP, TLS, faults and backpressure (real sockets)."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSListener

from talkpipe_async import Pipeline, segment
from talkpipe_async.sources.sockets import (
    Backoff,
    ConnectionLost,
    LineFramer,
    LineTooLong,
    NetStats,
    tcp_bytes,
    tcp_lines,
    tcp_server_lines,
    udp_datagrams,
    unix_lines,
    unix_server_lines,
)
from tests.helpers.net import FAST, raw_server, send_until_the_kernel_refuses

pytestmark = pytest.mark.anyio



@segment
async def stalled(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A sink that sleeps on every item (the run is cancelled by the test)."""
    async for item in items:
        await anyio.sleep(3600)
        yield item


# --- the framer ------------------------------------------------------------------------------


def test_framer_splits_any_chunking_and_caps() -> None:
    data = b"a\r\nbb\n\nccc\nd"
    for size in range(1, len(data) + 1):
        framer = LineFramer(10)
        lines = []
        for i in range(0, len(data), size):
            lines += framer.feed(data[i : i + size])
        assert lines == [b"a", b"bb", b"", b"ccc"]
        assert framer.finish() == b"d"
    framer = LineFramer(4, overlong="skip")
    assert framer.feed(b"ok\n12345") == [b"ok"]
    assert framer.feed(b"678\nfine\n") == [b"fine"]
    assert framer.stats.dropped_lines == 1 and framer.pending == 0
    with pytest.raises(LineTooLong):
        LineFramer(4).feed(b"123456789")


def test_framer_text_decoding_policy() -> None:
    framer = LineFramer(100)
    assert framer.feed_text(b"\xe2\x82\xac ok\n\xff\n") == ["\u20ac ok", "\ufffd"]
    with pytest.raises(UnicodeDecodeError):
        framer.feed_text(b"\xff\n", errors="strict")


def test_unix_path_limit() -> None:
    with pytest.raises(ValueError, match="limit is 107"):
        unix_lines("/tmp/" + "x" * 120)


# --- TCP client ------------------------------------------------------------------------------


async def test_tcp_lines_crlf_and_last_partial_line_at_clean_eof() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"one\r\ntw")
        await stream.send(b"o\nthree")

    async with raw_server(handler) as port:
        assert await Pipeline(tcp_lines("127.0.0.1", port)).collect() == ["one", "two", "three"]
        data = await Pipeline(tcp_bytes("127.0.0.1", port)).collect()
        assert b"".join(data) == b"one\r\ntwo\nthree"


async def test_reset_mid_line_raises_or_reconnects() -> None:
    calls = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal calls
        calls += 1
        if calls % 2 == 1:
            await stream.send(b"a\nb\nhalf")
            sock = stream.extra(SocketAttribute.raw_socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # closing with SO_LINGER 0 sends RST
        await stream.send(b"c\n")

    async with raw_server(handler) as port:
        stats = NetStats()
        got: list[str] = []
        with pytest.raises(ConnectionLost, match="connection lost"):
            async with Pipeline(tcp_lines("127.0.0.1", port, stats=stats)).stream() as items:
                async for line in items:
                    got.append(line)
        assert got == ["a", "b"] and stats.partial_dropped == 1

        calls = 0
        stats = NetStats()
        got = []
        async with Pipeline(tcp_lines("127.0.0.1", port, reconnect=True, backoff=FAST, stats=stats)).stream() as items:
            async for line in items:
                got.append(line)
                if line == "c":
                    break
        assert got == ["a", "b", "c"] and stats.partial_dropped == 1 and stats.reconnects == 1


async def test_connect_refused_gives_up_after_max_attempts() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.listeners[0].extra(SocketAttribute.local_port)
    await listener.aclose()
    stats = NetStats()
    with pytest.raises(OSError):
        source = tcp_lines("127.0.0.1", port, reconnect=True, backoff=Backoff(0.01, max_attempts=3), stats=stats)
        await Pipeline(source).collect()
    assert stats.errors == 3


async def test_read_timeout_on_a_stalled_server() -> None:
    release = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"x\n")
        await release.wait()

    async with raw_server(handler) as port:
        with pytest.raises(ConnectionLost, match="TimeoutError"):
            await Pipeline(tcp_lines("127.0.0.1", port, read_timeout=0.2)).collect()
        release.set()


async def test_megabytes_without_newline_are_bounded() -> None:
    sent = 0

    limit = 1 << 30

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal sent
        block = b"z" * 65536
        sent = 0
        while sent < limit:
            await stream.send(block)
            sent += len(block)

    async with raw_server(handler) as port:
        with pytest.raises(LineTooLong, match="longer than 1048576"):
            await Pipeline(tcp_lines("127.0.0.1", port)).collect()
        assert sent < 64 << 20
        limit = 16 << 20  # skip mode reads everything: 16 MB, then EOF
        stats = NetStats()
        got: list[str] = []
        with anyio.fail_after(10):  # skip mode: nothing delivered, everything counted, memory flat
            async with Pipeline(tcp_lines("127.0.0.1", port, on_overlong="skip", stats=stats)).stream() as items:
                async for line in items:
                    got.append(line)
        assert got == [] and stats.dropped_lines == 1 and stats.dropped_bytes > 1 << 20
        assert stats.bytes_received - stats.dropped_bytes <= 1 << 20


async def test_garbage_bytes_are_replaced_not_fatal() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"\x00\xff\xfe\x80\nok\n")

    async with raw_server(handler) as port:
        assert await Pipeline(tcp_lines("127.0.0.1", port)).collect() == ["\x00\ufffd\ufffd\ufffd", "ok"]


async def test_tls_client_with_trustme(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = tcp.listeners[0].extra(SocketAttribute.local_port)
    listener = TLSListener(tcp, server_ctx, standard_compatible=False)

    async def handler(stream: Any) -> None:
        async with stream:
            await stream.send(b"secret 1\nsecret 2\n")

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        source = tcp_lines("127.0.0.1", port, ssl_context=client_ctx, tls_hostname="localhost")
        got: list[str] = []
        async with Pipeline(source).stream() as items:
            async for line in items:
                got.append(line)
                if len(got) == 2:
                    break
        tg.cancel_scope.cancel()
    assert got == ["secret 1", "secret 2"]


# --- servers ---------------------------------------------------------------------------------


async def _run_server(
    make: Callable[[Callable[[Any], None]], Any], client: Callable[[Any, list[str]], Any]
) -> list[str]:
    """Run a server source in a task; call ``client(address, got)``; return what arrived."""
    got: list[str] = []
    ready = anyio.Event()
    address: list[Any] = []

    def listening(a: Any) -> None:
        address.append(a)
        ready.set()

    async def consume() -> None:
        async with Pipeline(make(listening)).stream() as items:
            async for line in items:
                got.append(line)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await ready.wait()
            await client(address[0], got)
            tg.cancel_scope.cancel()
    return got


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.005)


async def test_tls_server_source_with_trustme_and_a_plaintext_client_counted(
        tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    listening = anyio.Event()
    address: list[Any] = []

    def on_listening(addr: Any) -> None:
        address.append(addr)
        listening.set()

    stats = NetStats()
    source = tcp_server_lines(port=0, ssl_context=server_ctx, on_listening=on_listening, stats=stats)
    got: list[str] = []
    with anyio.fail_after(10):
        async with Pipeline(source).stream() as items:
            async with anyio.create_task_group() as tg:

                async def clients() -> None:
                    await listening.wait()
                    port = address[0][1]
                    plain = await anyio.connect_tcp("127.0.0.1", port)  # not TLS: its handshake fails
                    await plain.send(b"GET / HTTP/1.0\r\n\r\n")
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        await plain.receive()  # the server hangs up
                    await plain.aclose()
                    secure = await anyio.connect_tcp(
                        "127.0.0.1", port, ssl_context=client_ctx, tls_hostname="localhost"
                    )
                    try:
                        await secure.send(b"secret 1\nsecret 2\n")
                    finally:
                        await anyio.aclose_forcefully(secure)  # the server may hang up first: no close_notify

                tg.start_soon(clients)
                async for line in items:
                    got.append(line)
                    if len(got) == 2:
                        break
    assert got == ["secret 1", "secret 2"]
    assert stats.tls_failures == 1 and stats.connections == 1


async def test_tcp_server_merges_connections_caps_and_times_out_idle() -> None:
    stats = NetStats()

    async def client(addr: Any, got: list[str]) -> None:
        a = await anyio.connect_tcp(*addr)
        b = await anyio.connect_tcp(*addr)
        await a.send(b"from a 1\nfrom a")
        await b.send(b"from b 1\n")
        await a.send(b" 2\n")
        await _until(lambda: len(got) == 3)
        c = await anyio.connect_tcp(*addr)  # over the cap of 2: closed at once
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await c.receive()
        idle = await anyio.connect_tcp(*addr)  # no: still over the cap until a or b leaves
        await a.aclose()
        await b.aclose()
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await idle.receive()
        await _until(lambda: stats.connections == 2)
        d = await anyio.connect_tcp(*addr)  # accepted, then closed for being idle
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await d.receive()
        for s in (c, idle, d):
            await s.aclose()

    got = await _run_server(
        lambda on: tcp_server_lines(max_connections=2, idle_timeout=0.3, on_listening=on, stats=stats), client
    )
    assert sorted(got) == ["from a 1", "from a 2", "from b 1"]
    assert stats.rejected == 2 and stats.idle_closed == 1 and stats.connections == 3


async def test_unix_server_and_client() -> None:
    directory = tempfile.mkdtemp(prefix="tp")
    path = os.path.join(directory, "s.sock")

    async def client(addr: Any, got: list[str]) -> None:
        stream = await anyio.connect_unix(addr)
        await stream.send(b"hello\nworld\n")
        await _until(lambda: len(got) == 2)
        await stream.aclose()

    got = await _run_server(lambda on: unix_server_lines(path, on_listening=on), client)
    assert got == ["hello", "world"]
    assert not os.path.exists(path)  # removed when the run ended

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve_once() -> None:
        conn, _ = server.accept()
        conn.sendall(b"via unix\n")
        conn.close()

    thread = threading.Thread(target=serve_once)
    thread.start()
    assert await Pipeline(unix_lines(path)).collect() == ["via unix"]
    thread.join()
    server.close()
    os.unlink(path)
    os.rmdir(directory)


async def test_udp_drop_oldest_with_counter() -> None:
    stats = NetStats()
    ready = anyio.Event()
    address: list[Any] = []

    def listening(a: Any) -> None:
        address.append(a)
        ready.set()

    async with Pipeline(udp_datagrams(buffer=10, on_listening=listening, stats=stats)).stream() as items:
        first: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def pull_first() -> None:
                first.append(await items.__anext__())

            tg.start_soon(pull_first)
            await ready.wait()
            sender = await anyio.create_connected_udp_socket(*address[0])
            await sender.send(b"d0")
        # the pipeline is not pulling now: 50 more datagrams arrive into a ring of 10
        for i in range(1, 51):
            await sender.send(f"d{i}".encode())
        await _until(lambda: stats.bytes_received >= 2 + 9 * 2 + 41 * 3)
        got = [await items.__anext__() for _ in range(10)]
        await sender.aclose()
    assert first == [b"d0"]
    assert got == [f"d{i}".encode() for i in range(41, 51)]
    assert stats.datagrams_dropped == 40 and stats.high_water == 10


# --- backpressure ------------------------------------------------------------------------------


def stall_after_first(first: anyio.Event) -> Any:
    """A sink that takes one item, sets *first*, and then waits for good (the test cancels the run)."""

    @segment
    async def stall(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for item in items:
            first.set()
            await anyio.sleep_forever()
            yield item

    return stall()


async def test_backpressure_tcp_server_source_blocks_the_sender() -> None:
    stats = NetStats()
    ready, first = anyio.Event(), anyio.Event()
    address: list[Any] = []
    block = (b"x" * 1023 + b"\n") * 64

    def listening(a: Any) -> None:
        address.append(a)
        ready.set()

    async def consume() -> None:
        source = tcp_server_lines(buffer=64, on_listening=listening, stats=stats)
        async with (source | stall_after_first(first)).stream() as items:
            async for _ in items:
                pass

    async def send(stream: anyio.abc.SocketStream) -> None:
        while True:
            await stream.send(block)

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await ready.wait()
            stream = await anyio.connect_tcp(*address[0])
            async with anyio.create_task_group() as senders:
                senders.start_soon(send, stream)
                await first.wait()
                while stats.blocked_puts == 0:  # a handler found the buffer full: it reads nothing more
                    await anyio.sleep(0.005)
                senders.cancel_scope.cancel()
            read = stats.bytes_received
            sent_more = await send_until_the_kernel_refuses(stream, block)  # the kernel refuses: TCP pushed back
            assert stats.bytes_received == read
            tg.cancel_scope.cancel()
        await stream.aclose()
    assert sent_more < 48 << 20, f"sender never blocked: {sent_more} bytes sent"
    assert stats.high_water <= 64 + 64  # capacity + the lines of one 64 KiB read
    assert read <= (64 + 64 + 64) * 1024 + 65536  # the lines held (channel, batch in hand) and one read


async def test_backpressure_tcp_client_source_blocks_the_server() -> None:
    first, blocked = anyio.Event(), anyio.Event()
    refused_after: list[int] = []
    block = (b"y" * 1023 + b"\n") * 64

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(block)
        with anyio.fail_after(5):
            await first.wait()  # the consumer holds its first line and pulls no more
        refused_after.append(await send_until_the_kernel_refuses(stream, block))
        blocked.set()
        await anyio.sleep_forever()

    stats = NetStats()
    async with raw_server(handler) as port:

        async def consume() -> None:
            async with (tcp_lines("127.0.0.1", port, stats=stats) | stall_after_first(first)).stream() as items:
                async for _ in items:
                    pass

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await blocked.wait()
                tg.cancel_scope.cancel()
    assert refused_after[0] < 48 << 20, f"sender never blocked: {refused_after[0]} bytes sent"
    assert stats.bytes_received <= 65536  # one read: the rest waits in the kernel, not in the source
