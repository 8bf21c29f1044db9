"""Opening and ending connections (``_net/connect.py``, ``_net/tls.py``), on real sockets and real TLS.

Connecting: ``check_unix_path`` accepts a path of up to 107 bytes and names the length over it; ``connect_tcp``
connects plainly, or with TLS checked against ``tls_hostname`` (the host by default) with the given context or,
without one, the system's trust store; ``connect_unix`` returns a connected stream or raises, also when the
listener's backlog is full. ``RawUnixStream`` sends all of a write larger than the socket buffer, reads at most
``max_bytes``, ends with ``EndOfStream``, reports a reset as ``BrokenResourceError`` and its own close as
``ClosedResourceError``, also to a task already waiting; ``UnixAcceptor`` serves every connection, also after
another process sharing the socket took one first.

Ending TLS: ``hang_up`` sends close_notify, so a strict client sees a clean end, even when it is called in a
cancelled scope; it waits a bounded time for the client, sends what the TLS layer still holds when the client's data
came first, and drains what the client goes on sending until it closes; ``CountingTLSListener`` counts each failed
handshake and keeps the last error. Certificates from trustme.
"""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSListener, TLSStream

from talkpipe_async._net import tls as tls_module
from talkpipe_async._net.connect import RawUnixStream, UnixAcceptor, check_unix_path, connect_tcp, connect_unix
from talkpipe_async._net.framing import NetStats
from talkpipe_async._net.tls import CountingTLSListener, hang_up
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.anyio


# --- check_unix_path -------------------------------------------------------------------------------------------------


def test_a_unix_path_of_107_bytes_is_accepted_and_one_of_108_refused_with_its_length() -> None:
    path = "/tmp/" + "a" * 102
    assert len(path) == 107
    assert check_unix_path(path) == path
    assert check_unix_path(pathlib.PurePosixPath(path)) == path
    long = path + "b"
    with pytest.raises(ValueError) as info:
        check_unix_path(long)
    assert str(info.value) == (
        f"unix socket path is 108 bytes, the limit is 107: {long!r} "
        "(use a shorter directory, e.g. a tempfile.mkdtemp() under /tmp)"
    )
    wide = "/tmp/" + "é" * 51 + "a"  # 57 characters, 108 bytes
    with pytest.raises(ValueError, match="is 108 bytes"):
        check_unix_path(wide)


# --- connect_tcp -----------------------------------------------------------------------------------------------------


async def echo(stream: anyio.abc.ByteStream) -> None:
    """Echo what the client sends until it ends."""
    try:
        while True:
            await stream.send(await stream.receive())
    except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError):
        pass
    finally:
        await anyio.aclose_forcefully(stream)


@asynccontextmanager
async def serving(listener: anyio.abc.Listener[Any]) -> AsyncIterator[None]:
    """*listener* serves ``echo`` inside the block."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        yield
        tg.cancel_scope.cancel()


async def ping(stream: anyio.abc.ByteStream) -> bytes:
    try:
        await stream.send(b"ping")
        return await stream.receive()
    finally:
        await anyio.aclose_forcefully(stream)


async def test_connect_tcp_without_tls_is_a_plain_connection() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(SocketAttribute.local_port)
        with anyio.fail_after(10):
            async with serving(listener):
                stream = await connect_tcp("127.0.0.1", port, False, None, None)
                assert not isinstance(stream, TLSStream)
                assert await ping(stream) == b"ping"


async def test_connect_tcp_with_tls_checks_the_given_hostname_with_the_given_context(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The certificate is for ``localhost``: reached at 127.0.0.1 with ``tls_hostname="localhost"`` and the client
    context that trusts its CA, the connection works; without the hostname (the host, 127.0.0.1, is checked) or
    without the context (the system store, which does not know the CA) it fails."""
    server_ctx, client_ctx = tls
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = tcp.extra(SocketAttribute.local_port)
    async with TLSListener(tcp, server_ctx, standard_compatible=False) as listener:
        with anyio.fail_after(10):
            async with serving(listener):
                stream = await connect_tcp("127.0.0.1", port, True, client_ctx, "localhost")
                assert isinstance(stream, TLSStream)
                assert stream.extra(TLSAttribute.server_side) is False
                assert await ping(stream) == b"ping"
                with pytest.raises(ssl.SSLCertVerificationError, match=r"127\.0\.0\.1"):
                    await connect_tcp("127.0.0.1", port, True, client_ctx, None)
                with pytest.raises(ssl.SSLCertVerificationError):
                    await connect_tcp("127.0.0.1", port, True, None, "localhost")


# --- Unix streams ----------------------------------------------------------------------------------------------------


@pytest.fixture
def unix_path() -> Iterator[str]:
    """A socket path in a fresh short directory under /tmp (removed afterwards)."""
    directory = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(directory, "s")
    yield path
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def listening(path: str, backlog: int = 16) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def unix_echo(stream: RawUnixStream) -> None:
    """Echo until the client's end, then end our side too."""
    try:
        while True:
            await stream.send(await stream.receive())
    except anyio.EndOfStream:
        await stream.send_eof()
    finally:
        await stream.aclose()


async def test_a_unix_round_trip_larger_than_the_socket_buffers(unix_path: str) -> None:
    """4 MiB sent in one ``send`` arrive whole through the acceptor's echo; the client's ``send_eof`` reaches the
    server, whose own end reaches the client as ``EndOfStream``; ``receive(max_bytes)`` reads at most that."""
    payload = os.urandom(4 << 20)
    acceptor = UnixAcceptor(listening(unix_path))
    got = bytearray()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(acceptor.serve, unix_echo)
            stream = await connect_unix(unix_path)

            async def send() -> None:
                await stream.send(payload)
                await stream.send_eof()

            tg.start_soon(send)
            first = await stream.receive(5)
            assert 1 <= len(first) <= 5
            got += first
            try:
                while True:
                    got += await stream.receive()
            except anyio.EndOfStream:
                pass
            await stream.aclose()
            tg.cancel_scope.cancel()
    await acceptor.aclose()
    assert got == payload


async def test_a_reset_is_broken_and_a_close_is_closed() -> None:
    """A peer that closes with our data unread resets the connection: ``BrokenResourceError`` on receive and on send;
    receiving on a stream we closed ourselves is ``ClosedResourceError``; closing twice is harmless."""
    ours, theirs = socket.socketpair()
    stream = RawUnixStream(ours)
    await stream.send(b"unread")
    theirs.close()
    with pytest.raises(anyio.BrokenResourceError):
        await stream.receive()
    with pytest.raises(anyio.BrokenResourceError):
        await stream.send(b"more")
    await stream.aclose()
    await stream.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await stream.receive()


async def test_closing_wakes_a_task_waiting_to_receive() -> None:
    """``aclose`` while another task waits for data: that task gets ``ClosedResourceError`` at once."""
    ours, theirs = socket.socketpair()
    stream = RawUnixStream(ours)
    outcome: list[str] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                try:
                    await stream.receive()
                except anyio.ClosedResourceError:
                    outcome.append("closed")

            tg.start_soon(wait)
            for _ in range(10):  # let the receiver start waiting
                await anyio.lowlevel.checkpoint()
            await stream.aclose()
    theirs.close()
    assert outcome == ["closed"]


async def test_a_waiting_receive_can_be_cancelled() -> None:
    """An idle stream's receive waits in the event loop, not in the socket: a timeout cancels it."""
    ours, theirs = socket.socketpair()
    stream = RawUnixStream(ours)
    with anyio.fail_after(10):
        with anyio.move_on_after(0.05) as scope:
            await stream.receive()
    assert scope.cancelled_caught
    theirs.send(b"late")
    with anyio.fail_after(10):
        assert await stream.receive() == b"late"
    await stream.aclose()
    theirs.close()


async def test_connect_unix_to_a_missing_path_raises_and_leaks_nothing(unix_path: str) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        await connect_unix(unix_path)
    assert len(os.listdir("/proc/self/fd")) == before


async def test_connect_unix_to_a_listener_with_a_full_backlog_raises(unix_path: str) -> None:
    """A listener that accepts nobody and whose backlog is full cannot take the connection: ``connect_unix`` raises
    ``ConnectionRefusedError`` naming the path, instead of returning a stream that is not connected."""
    sock = listening(unix_path, backlog=0)
    waiting: list[Any] = []
    try:
        with anyio.fail_after(10):
            with pytest.raises(ConnectionRefusedError) as info:
                for _ in range(8):  # Linux lets backlog + 1 connections wait
                    waiting.append(await connect_unix(unix_path))
        error = info.value
        assert (error.errno, error.strerror, error.filename) == (
            errno.ECONNREFUSED, "the listener's backlog is full", unix_path
        )
        assert 1 <= len(waiting) < 8
    finally:
        for stream in waiting:
            await stream.aclose()
        sock.close()


async def test_the_acceptor_goes_on_when_another_process_took_the_connection_first(unix_path: str) -> None:
    """A listening socket shared with another process (a prefork server): when the connection the acceptor woke up
    for was taken by the other, the acceptor keeps serving the next ones."""
    sock = listening(unix_path)
    acceptor = UnixAcceptor(sock)
    served: list[bytes] = []
    seen = anyio.Event()

    async def handler(stream: RawUnixStream) -> None:
        try:
            served.append(await stream.receive())
            seen.set()
        except anyio.EndOfStream:  # a connection of the other process that we were first to take
            pass
        finally:
            await stream.aclose()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(acceptor.serve, handler)
            await anyio.lowlevel.checkpoint()
            for _ in range(3):
                taken = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                taken.connect(unix_path)
                await anyio.lowlevel.checkpoint()  # the loop sees the listener readable...
                try:
                    other, _ = sock.accept()  # ...but the other process takes the connection first
                    other.close()
                except BlockingIOError:  # (the acceptor ran first this time)
                    pass
                taken.close()
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
            client = await connect_unix(unix_path)
            await client.send(b"still served")
            await seen.wait()
            await client.aclose()
            tg.cancel_scope.cancel()
    await acceptor.aclose()
    assert served == [b"still served"]


# --- hang_up and the TLS listener ------------------------------------------------------------------------------------


class TLSServer:
    """A TLS server on 127.0.0.1 whose handler is set per test; the handler's outcome is kept."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.done = anyio.Event()
        self.outcome: list[Any] = []


@asynccontextmanager
async def tls_server(
    server_ctx: ssl.SSLContext, handle: Callable[[TLSStream], Awaitable[Any]]
) -> AsyncIterator[TLSServer]:
    """Accept TLS connections (the handshake done by the server task) and run *handle* on each."""
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server = TLSServer(tcp.extra(SocketAttribute.local_port))

    async def serve_one(transport: anyio.abc.SocketStream) -> None:
        try:
            stream = await TLSStream.wrap(transport, server_side=True, ssl_context=server_ctx,
                                          standard_compatible=False)
            server.outcome.append(await handle(stream))
        except BaseException as exc:
            server.outcome.append(exc)
            raise
        finally:
            server.done.set()

    async with tcp, anyio.create_task_group() as tg:
        tg.start_soon(tcp.serve, serve_one)
        yield server
        tg.cancel_scope.cancel()


def strict_client(port: int, context: ssl.SSLContext, after_close_notify: int = 0) -> str:
    """A TLS client in a thread that sends two records in one TCP write, then reads until the server's close_notify
    ("clean end") or a bare TCP close ("truncated"); then it writes *after_close_notify* more 64 KiB records
    without answering the close_notify, and closes. A write that fails is reported."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        conn = context.wrap_bio(incoming, outgoing, server_hostname="localhost")

        def pull() -> bool:
            data = raw.recv(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            return bool(data)

        while True:
            try:
                conn.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                if not pull():
                    return "no handshake"
        conn.write(b"first\n")
        conn.write(b"second\n")
        raw.sendall(outgoing.read())
        while True:
            try:
                if not conn.read(65536):  # the server's close_notify
                    break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                if not pull():  # a TCP end before any close_notify
                    return "truncated"
        for _ in range(after_close_notify):
            conn.write(b"x" * 65536)
            try:
                raw.sendall(outgoing.read())
            except OSError as err:
                return f"write failed: {err!r}"
        return "clean end"


async def client(port: int, context: ssl.SSLContext, after_close_notify: int = 0) -> str:
    return await anyio.to_thread.run_sync(strict_client, port, context, after_close_notify)


@pytest.fixture
def quick_shutdown(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(tls_module, "TLS_SHUTDOWN_TIMEOUT", 0.5)
    return 0.5


async def read_one_and_hang_up(stream: TLSStream) -> str:
    await stream.receive()
    await hang_up(stream)
    return "hung up"


async def test_hang_up_ends_a_tls_connection_with_close_notify(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], quick_shutdown: float
) -> None:
    """The client's second record is still unread when the server hangs up: the server's close_notify still goes
    out (sent from what the TLS layer holds), and the client sees a clean end."""
    server_ctx, client_ctx = tls
    with anyio.fail_after(20):
        async with tls_server(server_ctx, read_one_and_hang_up) as server:
            assert await client(server.port, client_ctx) == "clean end"
            await server.done.wait()
    assert server.outcome == ["hung up"]


async def test_hang_up_drains_what_the_client_still_sends(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """After the server's close_notify the client writes 2 MiB more before it closes: the server reads and drops it
    all (closing with unread data would reset the connection), so every write of the client succeeds."""
    server_ctx, client_ctx = tls
    with anyio.fail_after(20):
        async with tls_server(server_ctx, read_one_and_hang_up) as server:
            assert await client(server.port, client_ctx, after_close_notify=32) == "clean end"
            await server.done.wait()
    assert server.outcome == ["hung up"]


async def test_hang_up_in_a_cancelled_scope_still_says_close_notify(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], quick_shutdown: float
) -> None:
    """A server being shut down (its scope cancelled) still ends the connection with close_notify."""
    server_ctx, client_ctx = tls

    async def cancelled_hang_up(stream: TLSStream) -> str:
        await stream.receive()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await hang_up(stream)
        return "hung up"

    with anyio.fail_after(20):
        async with tls_server(server_ctx, cancelled_hang_up) as server:
            assert await client(server.port, client_ctx) == "clean end"
            await server.done.wait()
    assert server.outcome == ["hung up"]


def silent_client(port: int, context: ssl.SSLContext, wait: float) -> str:
    """A TLS client that sends a line, reads the server's close_notify and then neither answers nor closes: it
    waits (at most *wait* seconds) for the server to close the TCP connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as raw:
        conn = context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
        conn.sendall(b"line\n")
        try:
            while conn.recv(1024):
                pass
        except ssl.SSLZeroReturnError:
            pass
        with socket.socket(fileno=os.dup(conn.fileno())) as tcp:  # below TLS: wait for the TCP end
            tcp.settimeout(wait)
            try:
                return "closed" if tcp.recv(1) == b"" else "data"
            except TimeoutError:
                return "still open"


async def test_hang_up_waits_a_bounded_time_for_a_silent_client(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], quick_shutdown: float
) -> None:
    """A client that never answers the close_notify nor closes holds the server ``TLS_SHUTDOWN_TIMEOUT`` seconds,
    no more: then the connection is closed."""
    server_ctx, client_ctx = tls

    async def timed_hang_up(stream: TLSStream) -> float:
        await stream.receive()
        start = time.monotonic()
        await hang_up(stream)
        return time.monotonic() - start

    with anyio.fail_after(20):
        async with tls_server(server_ctx, timed_hang_up) as server:
            assert await anyio.to_thread.run_sync(silent_client, server.port, client_ctx, 5.0) == "closed"
            await server.done.wait()
    (took,) = server.outcome
    assert quick_shutdown * 0.9 <= took < 4


async def test_hang_up_closes_a_plain_connection() -> None:
    """Without TLS, ``hang_up`` only closes: the client sees the end."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(SocketAttribute.local_port)

        async def handler(stream: anyio.abc.SocketStream) -> None:
            await hang_up(stream)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, handler)
                stream = await anyio.connect_tcp("127.0.0.1", port)
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await stream.receive()
                await stream.aclose()
                tg.cancel_scope.cancel()


async def test_the_tls_listener_counts_each_failed_handshake(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Two clients that speak plain text to a TLS listener: each is closed, ``tls_failures`` counts 2 and
    ``last_error`` holds the repr of the SSL error; no handler runs, and the listener goes on to serve a TLS client."""
    server_ctx, client_ctx = tls
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = tcp.extra(SocketAttribute.local_port)
    listener = CountingTLSListener(tcp, server_ctx, standard_compatible=False)
    listener.stats = stats = NetStats()
    handled: list[bytes] = []

    async def handler(stream: anyio.abc.ByteStream) -> None:
        handled.append(await stream.receive())
        await anyio.aclose_forcefully(stream)

    with anyio.fail_after(20):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handler)
            for n in (1, 2):
                plain = await anyio.connect_tcp("127.0.0.1", port)
                await plain.send(b"GET / HTTP/1.0\r\n\r\n")
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    while True:
                        await plain.receive()
                await plain.aclose()
                await wait_until(lambda n=n: stats.tls_failures >= n, what=f"{n} failed handshakes")  # type: ignore[misc]
            assert stats.tls_failures == 2
            assert stats.last_error.startswith("SSLError(")
            good = await connect_tcp("127.0.0.1", port, True, client_ctx, "localhost")
            await good.send(b"hello")
            await wait_until(lambda: bool(handled), what="the TLS client's data")
            await anyio.aclose_forcefully(good)
            tg.cancel_scope.cancel()
    assert handled == [b"hello"] and stats.tls_failures == 2
