"""How a WebSocket connection ends, and what the stages report about it (``_net/websocket.py``), against raw peers.

Pinned here: a ``wss://`` URL is asked of httpx as ``https://``, so a client's TLS settings for ``https://`` apply
to it; the sink's error after its peer closed names the peer's code and reason (1006, and no reason, when the
connection broke without a close frame); ``WebSocketClosed``'s reason defaults to empty; the sink counts the
messages it ignores, and records why its reader failed (the closing handshake then reads nothing more); the first
and only oversized message is warned about; the ``MessageTooLarge`` text names the size seen (a session raises it
unless told to skip); a fragmented binary message arrives whole; a protocol error of the peer is answered with its
close code; ``bytes_received`` counts every read, the closing handshake's included; the close reply's reason is
recorded; a cancelled run, or a session left by cancellation, still completes its closing handshake (with 1000
unless told otherwise); a transport error met while answering a ping is the error the source reports; the closing
handshake discards at most 16 MiB while it waits for the reply.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpcore
import httpx
import pytest
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSListener
from httpx_ws.transport import ASGIWebSocketTransport

from talkpipe_async import Pipeline, source
from talkpipe_async._net.websocket import connect
from talkpipe_async.sinks import to_websocket
from talkpipe_async.sources import MessageTooLarge, WebSocketClosed, WebSocketStats, websocket_messages
from tests.helpers.net import client_frames, raw_server, reset, ws_close_frame, ws_frame, ws_handshake

pytestmark = pytest.mark.anyio

NORMAL = ws_frame(b"\x03\xe8", opcode=0x8)  # a close frame with code 1000


def client_close(data: bytes) -> tuple[int, bytes] | None:
    """The (code, payload) of the first masked close frame in *data* (code -1 without one), or None."""
    for opcode, payload in client_frames(data):
        if opcode == 0x8:
            return (int.from_bytes(payload[:2], "big") if len(payload) >= 2 else -1), payload
    return None


async def until_close(stream: anyio.abc.ByteStream) -> int | None:
    """Read the client's frames until its close frame: its code (-1 without one), None at the end of the stream."""
    data = b""
    while (found := client_close(data)) is None:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return None
    return found[0]


# -- wss:// ------------------------------------------------------------------------------------------------------


@asynccontextmanager
async def tls_server(
    handler: Callable[[anyio.abc.ByteStream], Awaitable[None]], context: ssl.SSLContext
) -> AsyncIterator[int]:
    """A TLS listener on 127.0.0.1 running *handler* per connection; yields the port."""
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = tcp.listeners[0].extra(SocketAttribute.local_port)

    async def guarded(stream: anyio.abc.ByteStream) -> None:
        try:
            await handler(stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            pass
        finally:
            await anyio.aclose_forcefully(stream)

    async with TLSListener(tcp, context, standard_compatible=False) as listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, guarded)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


async def test_a_wss_url_goes_where_the_clients_https_settings_send_it(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The CA is trusted only by the transport mounted for ``https://``: a ``wss://`` connection goes through it."""
    server_ctx, client_ctx = tls

    async def server(stream: anyio.abc.ByteStream) -> None:
        await ws_handshake(stream)  # type: ignore[arg-type]
        await stream.send(ws_frame(b"secret") + NORMAL)
        await until_close(stream)

    async with tls_server(server, server_ctx) as port:
        transport = httpx.AsyncHTTPTransport(verify=client_ctx)
        async with httpx.AsyncClient(mounts={"https://": transport}) as client:
            source = websocket_messages(f"wss://localhost:{port}/feed", client=client, connect_timeout=5)
            assert await Pipeline(source).collect() == ["secret"]


# -- the sink's error once its peer is gone ---------------------------------------------------------------------


async def sink_error_after_close(close: bytes) -> tuple[str, WebSocketClosed]:
    """Run a sink whose peer closes with *close* before the first item: (the sink's label, its error)."""
    replied = anyio.Event()

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(close)
        await until_close(stream)  # the sink's reply
        replied.set()
        await until_close(stream)  # until the sink closes the socket

    async def items() -> AsyncIterator[str]:
        await replied.wait()
        yield "late"

    async with raw_server(server) as port:
        url = f"ws://127.0.0.1:{port}/"
        with pytest.raises(WebSocketClosed) as info:
            await Pipeline(to_websocket(url, name="out")).collect(items())
    return f"out ({url})", info.value


async def test_a_sink_whose_peer_closed_names_its_code_and_reason() -> None:
    label, error = await sink_error_after_close(ws_close_frame(4000, b"going away now"))
    assert str(error) == f"{label}: cannot send, the connection is closed (code 4000: going away now)"
    assert (error.code, error.reason) == (4000, "going away now")


async def test_a_sink_whose_peer_closed_without_a_reason_names_the_code_alone() -> None:
    label, error = await sink_error_after_close(ws_close_frame(4001))
    assert str(error) == f"{label}: cannot send, the connection is closed (code 4001)"
    assert (error.code, error.reason) == (4001, "")


async def test_a_send_on_a_connection_reset_unread_reports_1006() -> None:
    """The connection broke (a reset) with no close frame ever read: the send names 1006 and no reason."""
    gone = anyio.Event()

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        reset(stream)
        await anyio.aclose_forcefully(stream)
        gone.set()

    async with raw_server(server) as port, httpx.AsyncClient() as client:
        async with connect(client, f"ws://127.0.0.1:{port}/", stats=WebSocketStats(), label="out") as session:
            await gone.wait()
            with pytest.raises(WebSocketClosed) as info:
                for _ in range(1000):  # the kernel may take a write or two before it reports the reset
                    await session.send_message("x")
    assert str(info.value) == "out: cannot send, the connection is closed (code 1006)"
    assert (info.value.code, info.value.reason) == (1006, "")


async def test_a_sink_whose_peer_dropped_without_a_close_frame_reports_1006() -> None:
    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await anyio.aclose_forcefully(stream)  # no close frame

    async with raw_server(server) as port:
        url = f"ws://127.0.0.1:{port}/"
        with pytest.raises(WebSocketClosed) as info:
            await Pipeline(to_websocket(url, name="out")).collect(f"m{i}" for i in range(100_000))
    assert str(info.value) == f"out ({url}): cannot send, the connection is closed (code 1006)"
    assert (info.value.code, info.value.reason) == (1006, "")


def test_a_websocket_closed_error_has_an_empty_reason_by_default() -> None:
    error = WebSocketClosed("feed: gone", code=1006)
    assert (str(error), error.code, error.reason) == ("feed: gone", 1006, "")


async def test_a_sink_counts_the_messages_its_peer_sends() -> None:
    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"one") + ws_frame(b"two", opcode=0x2) + ws_frame(b"three"))
        await until_close(stream)
        await stream.send(NORMAL)

    stats = WebSocketStats()
    async with raw_server(server) as port:
        await Pipeline(to_websocket(f"ws://127.0.0.1:{port}/", stats=stats)).collect(["a", "b"])
    assert (stats.ignored_messages, stats.items, stats.close_code) == (3, 2, 1000)


ASGIMessage = dict[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]


class NoFrames:
    """An ASGI WebSocket app that, once it has the first message, answers with messages httpx-ws's in-process
    transport cannot turn into frames: the sink's reader fails while the connection still takes writes."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def __call__(self, scope: ASGIMessage, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] != "websocket.disconnect":
            self.received.append(message["text"])
            if len(self.received) == 1:  # a denial response after the accept: the transport's read raises on it
                for _ in range(2):
                    await send({"type": "websocket.http.response.start", "status": 500, "headers": []})


async def test_a_sink_whose_reader_failed_reports_it_at_the_next_send() -> None:
    """The reader task's error goes to ``stats.last_error``, and the next item is not sent into a connection
    nobody reads: the send raises, naming the connection as closed, with the reader's error as the cause."""
    app = NoFrames()
    stats = WebSocketStats()

    @source
    async def items() -> AsyncIterator[str]:
        yield "a"
        while not stats.last_error:  # the reader has not met the broken answer yet
            await anyio.sleep(0.001)
        yield "b"

    async with ASGIWebSocketTransport(app) as transport, httpx.AsyncClient(transport=transport) as client:
        sink = to_websocket("ws://app/", client=client, stats=stats, name="out")
        with pytest.raises(WebSocketClosed) as info:
            await Pipeline(items(), sink).collect()
    assert app.received == ["a"] and stats.items == 1
    assert str(info.value) == "out (ws://app/): cannot send, the connection is closed (code 1006)"
    assert type(info.value.__cause__).__name__ == "UnhandledASGIMessageType"
    assert stats.last_error.startswith("UnhandledASGIMessageType(")


# -- oversized and fragmented messages --------------------------------------------------------------------------


async def test_a_single_oversized_message_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"x" * 300) + ws_frame(b"fine") + NORMAL)
        await until_close(stream)

    caplog.set_level(logging.WARNING, logger="talkpipe_async.net")
    stats = WebSocketStats()
    async with raw_server(server) as port:
        source = websocket_messages(
            f"ws://127.0.0.1:{port}/", max_message_bytes=100, on_oversize="skip", stats=stats, name="feed"
        )
        assert await Pipeline(source).collect() == ["fine"]
    assert (stats.dropped_messages, stats.dropped_bytes) == (1, 300)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"feed (ws://127.0.0.1:{port}/): dropping messages larger than 100 bytes (counted in stats)"]


async def test_message_too_large_names_the_limit_and_the_size_seen() -> None:
    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"x" * 300))
        await until_close(stream)
        await stream.send(ws_close_frame(1009))

    async with raw_server(server) as port:
        with pytest.raises(MessageTooLarge) as info:
            await Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/", max_message_bytes=100, name="feed")).collect()
    assert str(info.value) == (
        f"feed (ws://127.0.0.1:{port}/): message larger than max_message_bytes=100 (at least 300 bytes)"
    )


async def test_a_session_raises_at_an_oversized_message_unless_told_otherwise() -> None:
    """A session opened without ``on_oversize`` raises, and closes with 1009, as the source does by default."""
    seen: list[int | None] = []

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"x" * 300) + ws_frame(b"after"))
        seen.append(await until_close(stream))
        await stream.send(ws_close_frame(1009))

    stats = WebSocketStats()
    async with raw_server(server) as port, httpx.AsyncClient() as client:
        url = f"ws://127.0.0.1:{port}/"
        async with connect(client, url, stats=stats, label="feed", max_message_bytes=100) as session:
            with pytest.raises(MessageTooLarge):
                await session.receive_message()
    assert seen == [1009] and stats.dropped_messages == 0


async def test_a_fragmented_binary_message_arrives_whole() -> None:
    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        first = ws_frame(b"\x00abc", opcode=0x2, fin=False) + ws_frame(b"de", opcode=0x0, fin=False)
        await stream.send(first + ws_frame(b"f\xff", opcode=0x0) + ws_frame(b"one", opcode=0x2) + NORMAL)
        await until_close(stream)

    async with raw_server(server) as port:
        got = await Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/", mode="bytes")).collect()
    assert got == [b"\x00abcdef\xff", b"one"]


# -- protocol errors, counting, the closing handshake -----------------------------------------------------------


async def test_a_protocol_error_of_the_peer_is_answered_with_its_close_code() -> None:
    """A text message that is not UTF-8: the stream ends with 1007, and the peer is told 1007."""
    seen: list[int | None] = []

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"ok") + ws_frame(b"\xff\xfe"))
        seen.append(await until_close(stream))
        await stream.send(ws_close_frame(1007))

    got: list[str] = []
    async with raw_server(server) as port:
        with pytest.raises(WebSocketClosed) as info:
            async with Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/")).stream() as items:
                async for message in items:
                    got.append(message)
    assert got == ["ok"] and info.value.code == 1007 and seen == [1007]


async def test_bytes_received_counts_every_read() -> None:
    frames = ws_frame(b"a" * 40) + ws_frame(b"b" * 30, opcode=0x2) + ws_frame(b"c" * 50) + NORMAL

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(frames)
        await until_close(stream)

    stats = WebSocketStats()
    async with raw_server(server) as port:
        source = websocket_messages(f"ws://127.0.0.1:{port}/", read_size=16, stats=stats)
        assert len(await Pipeline(source).collect()) == 3
    assert stats.bytes_received == len(frames)


@pytest.mark.parametrize("reason", [b"", b"see you"])
async def test_the_close_handshake_counts_its_bytes_and_records_the_reply(reason: bytes) -> None:
    """Leaving early: what the peer still sends before its close reply is read, counted and discarded."""
    late = ws_frame(b"late" * 10) + ws_frame(b"later" * 10) + ws_close_frame(1000, reason)
    seen: list[int | None] = []

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"one"))
        seen.append(await until_close(stream))
        await stream.send(late)
        await until_close(stream)

    stats = WebSocketStats()
    async with raw_server(server) as port:
        source = websocket_messages(f"ws://127.0.0.1:{port}/", read_size=16, stats=stats, close_code=4004)
        async with Pipeline(source).stream() as items:
            async for _message in items:
                break
    assert seen == [4004]
    assert stats.bytes_received == len(ws_frame(b"one")) + len(late)
    assert (stats.close_code, stats.close_reason) == (1000, reason.decode())


# -- cancellation, transport errors, the byte budget -------------------------------------------------------------


async def test_a_cancelled_run_still_completes_its_closing_handshake() -> None:
    seen: list[int | None] = []
    replied = anyio.Event()

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"one") + ws_frame(b"two"))
        seen.append(await until_close(stream))
        await stream.send(ws_close_frame(1000, b"bye"))
        replied.set()
        await until_close(stream)

    stats = WebSocketStats()
    async with raw_server(server) as port:
        with anyio.CancelScope() as scope:
            async with Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/", stats=stats)).stream() as items:
                async for _message in items:
                    scope.cancel()
                    await anyio.sleep_forever()  # cancelled here
        assert scope.cancelled_caught
    assert seen == [1000] and replied.is_set()
    assert (stats.close_code, stats.close_reason) == (1000, "bye")  # the reply was read, cancelled or not


async def test_a_run_cancelled_while_waiting_for_a_message_still_completes_its_closing_handshake() -> None:
    """Cancelled inside a read (the peer is silent): the close frame still goes out and the reply is read."""
    seen: list[int | None] = []
    delivered = anyio.Event()

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"one"))  # then silence
        seen.append(await until_close(stream))
        await stream.send(ws_close_frame(1000, b"bye"))
        await until_close(stream)

    stats = WebSocketStats()
    got: list[str] = []

    async def consume(port: int) -> None:
        async with Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/", stats=stats)).stream() as items:
            async for message in items:
                got.append(message)
                delivered.set()

    async with raw_server(server) as port, anyio.create_task_group() as tg:
        tg.start_soon(consume, port)
        await delivered.wait()  # the source now waits for a second message that never comes
        tg.cancel_scope.cancel()
    assert got == ["one"] and seen == [1000]
    assert (stats.close_code, stats.close_reason) == (1000, "bye")


async def test_a_session_left_by_cancellation_completes_its_closing_handshake() -> None:
    """``finish`` is shielded: a session cancelled in a read still sends its close frame and reads the reply."""
    seen: list[int | None] = []

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"one"))  # then silence
        seen.append(await until_close(stream))
        await stream.send(ws_close_frame(4003, b"bye"))
        await until_close(stream)

    stats = WebSocketStats()
    async with raw_server(server) as port, httpx.AsyncClient() as client:
        with anyio.CancelScope() as scope:
            url = f"ws://127.0.0.1:{port}/"
            async with connect(client, url, stats=stats, label="feed", close_code=4003) as session:
                assert await session.receive_message() == "one"
                scope.cancel()
                await session.receive_message()  # cancelled here
        assert scope.cancelled_caught
    assert seen == [4003] and (stats.close_code, stats.close_reason) == (4003, "bye")


async def test_a_transport_error_while_answering_a_ping_is_reported() -> None:
    """The peer resets the connection with a ping unanswered: the source's error carries the transport error."""
    delivered, gone = anyio.Event(), anyio.Event()

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"one") + ws_frame(b"are you there", opcode=0x9))
        await delivered.wait()
        reset(stream)
        await anyio.aclose_forcefully(stream)
        gone.set()

    stats = WebSocketStats()
    async with raw_server(server) as port:
        with pytest.raises(WebSocketClosed) as info:
            source = websocket_messages(f"ws://127.0.0.1:{port}/", stats=stats, name="feed")
            async with Pipeline(source).stream() as items:
                async for _message in items:
                    delivered.set()
                    await gone.wait()  # the ping, read with "one", is answered once the peer is gone
    cause = info.value.__cause__  # the write of the answer (trio) or the read after it (asyncio) failed
    assert isinstance(cause, httpcore.NetworkError)
    assert str(info.value) == f"feed (ws://127.0.0.1:{port}/): connection closed abnormally (code 1006: {cause!r})"
    assert info.value.code == 1006 and stats.last_error == repr(cause)


async def test_the_closing_handshake_discards_at_most_16_mib_before_it_closes() -> None:
    """A peer that goes on sending without a close reply: the socket is closed once 16 MiB are read, not later."""
    frame = ws_frame(b"z" * ((1 << 20) - 10), opcode=0x2)  # 1 MiB with its 10-byte header
    assert len(frame) == 1 << 20
    ends: list[int | None] = []

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"one"))
        ends.append(await until_close(stream))
        await stream.send(frame * 16)  # and no close reply
        ends.append(await until_close(stream))  # None: the client closed the connection

    stats = WebSocketStats()
    with anyio.fail_after(10):  # the close timeout below is a minute: only the byte budget ends the wait
        async with raw_server(server) as port, httpx.AsyncClient() as client:
            url = f"ws://127.0.0.1:{port}/"
            async with connect(client, url, stats=stats, label="feed", close_timeout=60) as session:
                assert await session.receive_message() == "one"
    assert ends == [1000, None]
    assert stats.bytes_received == len(ws_frame(b"one")) + (16 << 20) and stats.close_code is None
