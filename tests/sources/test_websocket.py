"""WebSocket source and sink (httpx-ws), against uvicorn serving Starlette and raw listeners for faults."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import sniffio
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from talkpipe_async import Pipeline
from talkpipe_async.operators import take
from talkpipe_async.sinks import to_websocket
from talkpipe_async.sources import (
    ConnectionLost,
    MalformedMessage,
    MalformedRecord,
    MessageTooLarge,
    WebSocketClosed,
    WebSocketRejected,
    WebSocketStats,
    websocket_messages,
)
from tests.helpers.net import FAST, AppServer, client_frames, raw_server, send_until_the_kernel_refuses
from tests.helpers.net import ws_frame as frame
from tests.helpers.net import ws_handshake as _handshake

pytestmark = pytest.mark.anyio

BIG = 200_000
FLOOD_SIZE = 4096
FLOOD_COUNT = 20_000  # 80 MB if nothing pushed back


def notifier(event: anyio.Event) -> Callable[[], None]:
    """A callable that any thread (the uvicorn thread) may call to set *event* in this test's loop."""
    if sniffio.current_async_library() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        return lambda: token.run_sync_soon(event.set)
    loop = asyncio.get_running_loop()
    return lambda: loop.call_soon_threadsafe(event.set)


@dataclass
class WsState:
    """What the server side saw, and hooks a test sets before connecting."""

    connections: dict[str, int] = field(default_factory=dict)
    received: list[Any] = field(default_factory=list)
    flood_sent: int = 0
    close_codes: list[int | str] = field(default_factory=list)
    handshake_headers: dict[str, str] = field(default_factory=dict)
    on_disconnect: Callable[[], None] | None = None
    on_received_all: Callable[[], None] | None = None
    release: threading.Event = field(default_factory=threading.Event)

    def count(self, path: str) -> int:
        self.connections[path] = self.connections.get(path, 0) + 1
        return self.connections[path]

    def disconnected(self) -> None:
        if self.on_disconnect is not None:
            self.on_disconnect()


def ws_app(state: WsState) -> Starlette:
    async def text(ws: WebSocket) -> None:
        await ws.accept()
        for i in range(int(ws.query_params.get("n", "5"))):
            await ws.send_text(f"msg {i}")
        await ws.close(1000)

    async def binary(ws: WebSocket) -> None:
        await ws.accept()
        for i in range(3):
            await ws.send_bytes(bytes([i]) * (i + 1))
        await ws.send_text("héllo")  # a text message in bytes mode: UTF-8
        await ws.close()

    async def json_messages(ws: WebSocket) -> None:
        await ws.accept()
        for message in ['{"n": 1}', "{not json", '{"n": 3}']:
            await ws.send_text(message)
        await ws.send_bytes(b'{"n": 4}')
        await ws.close()

    async def close_with(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("only")
        await ws.close(int(ws.query_params["code"]), reason="going down")

    async def flaky(ws: WebSocket) -> None:
        nth = state.count("/flaky")
        await ws.accept()
        start = 3 * (nth - 1)
        for i in range(start, start + 3):
            await ws.send_text(str(i))
        if nth == 1:
            raise RuntimeError("injected crash: uvicorn drops the connection")
        await ws.close()

    async def big(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("a")
        await ws.send_text("x" * BIG)
        await ws.send_text("b")
        await ws.close()

    async def forever(ws: WebSocket) -> None:
        """Sends as fast as the client lets it; tells the test when the client goes away."""
        await ws.accept()
        state.flood_sent = 0
        payload = "f" * FLOOD_SIZE
        try:
            while state.flood_sent < FLOOD_COUNT:
                await ws.send_text(payload)
                state.flood_sent += 1
                await anyio.sleep(0)  # let the server see a close frame (its send does not wait while TCP takes it)
            await ws.receive_text()
        except WebSocketDisconnect as exc:
            state.close_codes.append(exc.code)
        except (RuntimeError, OSError) as exc:
            state.close_codes.append(repr(exc))
        finally:
            state.disconnected()

    async def receive_all(ws: WebSocket) -> None:
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    state.received.append(("close", message.get("code")))
                    break
                state.received.append(message["text"] if message.get("text") is not None else message.get("bytes"))
        finally:
            if state.on_received_all is not None:
                state.on_received_all()

    async def collect(ws: WebSocket) -> None:
        await ws.accept()
        await receive_all(ws)

    async def greet(ws: WebSocket) -> None:
        """Sends two messages to a sink (which must read and discard them), then collects as /collect."""
        await ws.accept()
        await ws.send_text("welcome")
        await ws.send_text("to the sink")
        await receive_all(ws)

    async def quiet(ws: WebSocket) -> None:
        """Says nothing until the test releases it (uvicorn keeps pinging meanwhile)."""
        await ws.accept()
        await anyio.to_thread.run_sync(state.release.wait, 10)
        await ws.send_text("late")
        await ws.close()

    async def refuse(ws: WebSocket) -> None:
        await ws.close()  # before accept: uvicorn answers the handshake with 403

    async def headers(ws: WebSocket) -> None:
        await ws.accept(subprotocol="v2.talkpipe")
        await ws.send_json({"token": ws.headers.get("x-token"), "offered": ws.scope.get("subprotocols")})
        await ws.close()

    return Starlette(
        routes=[
            WebSocketRoute("/text", text),
            WebSocketRoute("/bytes", binary),
            WebSocketRoute("/json", json_messages),
            WebSocketRoute("/close", close_with),
            WebSocketRoute("/flaky", flaky),
            WebSocketRoute("/big", big),
            WebSocketRoute("/forever", forever),
            WebSocketRoute("/collect", collect),
            WebSocketRoute("/greet", greet),
            WebSocketRoute("/quiet", quiet),
            WebSocketRoute("/refuse", refuse),
            WebSocketRoute("/headers", headers),
        ]
    )


@pytest.fixture(scope="module")
def ws() -> Iterator[tuple[AppServer, WsState]]:
    state = WsState()
    with AppServer(ws_app(state)) as server:
        yield server, state


@pytest.fixture(scope="module")
def pinging() -> Iterator[tuple[AppServer, WsState]]:
    """A server that pings every 50 ms and drops a connection whose pong is 200 ms late."""
    state = WsState()
    server = AppServer(ws_app(state))
    server.config.ws_ping_interval = 0.05
    server.config.ws_ping_timeout = 0.2
    with server:
        yield server, state


async def wait_for(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll *condition* every 10 ms, at most *limit* seconds."""
    with anyio.fail_after(limit):
        while not condition():
            await anyio.sleep(0.01)


def ws_url(server: AppServer, path: str) -> str:
    return server.url(path).replace("http://", "ws://", 1)


# --- the source ----------------------------------------------------------------------------


async def test_text_messages_in_order_and_normal_close_ends(ws: tuple[AppServer, WsState]) -> None:
    server, _ = ws
    stats = WebSocketStats()
    got = await Pipeline(websocket_messages(ws_url(server, "/text?n=50"), stats=stats)).collect()
    assert got == [f"msg {i}" for i in range(50)]
    assert stats.items == 50 and stats.connections == 1 and stats.close_code == 1000 and stats.errors == 0


async def test_bytes_mode(ws: tuple[AppServer, WsState]) -> None:
    server, _ = ws
    got = await Pipeline(websocket_messages(server.url("/bytes"), mode="bytes")).collect()  # an http:// URL works too
    assert got == [b"\x00", b"\x01\x01", b"\x02\x02\x02", "héllo".encode()]
    texts = await Pipeline(websocket_messages(server.url("/bytes"), mode="text")).collect()
    assert texts[-1] == "héllo" and texts[0] == "\x00"


async def test_json_errors_name_the_stage_and_message_number(ws: tuple[AppServer, WsState]) -> None:
    server, _ = ws
    url = ws_url(server, "/json")
    with pytest.raises(MalformedMessage) as info:
        await Pipeline(websocket_messages(url, mode="json", name="ticker")).collect()
    err = info.value
    assert err.message_number == 2 and err.data == b"{not json"
    assert "ticker" in str(err) and "message 2" in str(err) and url in str(err)
    assert isinstance(err, MalformedRecord) and err.line_number == 2  # the same hook as http_ndjson's

    stats = WebSocketStats()
    got = await Pipeline(websocket_messages(url, mode="json", on_error="skip", stats=stats)).collect()
    assert got == [{"n": 1}, {"n": 3}, {"n": 4}]  # a binary message parses as JSON too
    assert stats.malformed == 1 and stats.items == 3

    dead: list[MalformedMessage] = []
    got = await Pipeline(websocket_messages(url, mode="json", on_error=dead.append)).collect()
    assert len(got) == 3 and [d.message_number for d in dead] == [2]


async def test_abnormal_close_raises_without_reconnect(ws: tuple[AppServer, WsState]) -> None:
    server, _ = ws
    got: list[str] = []
    with pytest.raises(WebSocketClosed, match="code 1011: going down") as info:
        async with Pipeline(websocket_messages(ws_url(server, "/close?code=1011"))).stream() as items:
            async for message in items:
                got.append(message)
    assert got == ["only"] and info.value.code == 1011 and info.value.reason == "going down"
    assert isinstance(info.value, ConnectionLost)


async def test_server_drop_reconnects_and_continues(ws: tuple[AppServer, WsState]) -> None:
    server, state = ws
    state.connections.pop("/flaky", None)
    stats = WebSocketStats()
    source = websocket_messages(ws_url(server, "/flaky"), reconnect=True, backoff=FAST, stats=stats)
    got = await (source | take(6)).collect()
    assert got == [str(i) for i in range(6)]
    assert stats.reconnects == 1 and stats.connections == 2 and stats.errors == 1


async def test_tcp_drop_without_close_frame_is_code_1006() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await _handshake(stream)
        await stream.send(frame(b"one") + frame(b"tw", fin=False) + frame(b"o", opcode=0x0) + frame(b"thr", fin=False))
        # the connection ends in the middle of a fragmented message, without a close frame

    async with raw_server(handler) as port:
        got: list[str] = []
        with pytest.raises(WebSocketClosed, match="code 1006") as info:
            async with Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/")).stream() as items:
                async for message in items:
                    got.append(message)
    assert got == ["one", "two"] and info.value.code == 1006  # the partial message is never delivered


async def test_read_timeout_counts_a_silent_connection_as_dropped() -> None:
    release = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await _handshake(stream)
        await stream.send(frame(b"one"))
        await release.wait()

    async with raw_server(handler) as port:
        got: list[str] = []
        with pytest.raises(WebSocketClosed, match="code 1006: ReadTimeout"):
            async with Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/", read_timeout=0.2)).stream() as items:
                async for message in items:
                    got.append(message)
        release.set()
    assert got == ["one"]


async def read_client_frames(stream: anyio.abc.SocketStream, count: int) -> list[tuple[int, bytes]]:
    """Read at least *count* masked (client-to-server) frames: their opcodes and unmasked payloads."""
    data = b""
    while len(frames := client_frames(data)) < count:
        data += await stream.receive()
    return frames


async def test_pings_are_answered_and_a_close_replied_to() -> None:
    replies: list[list[tuple[int, bytes]]] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await _handshake(stream)
        ping1, ping2 = frame(b"p1", opcode=0x9), frame(b"p2", opcode=0x9)
        await stream.send(ping1 + frame(b"hi") + ping2 + frame(struct.pack("!H", 1000), opcode=0x8))
        replies.append(await read_client_frames(stream, 3))

    async with raw_server(handler) as port:
        stats = WebSocketStats()
        assert await websocket_messages(f"ws://127.0.0.1:{port}/", stats=stats).collect() == ["hi"]
        with anyio.fail_after(5):
            while not replies:
                await anyio.sleep(0.01)
    assert replies[0] == [(0xA, b"p1"), (0xA, b"p2"), (0x8, struct.pack("!H", 1000))]  # two pongs, the close reply
    assert stats.pings == 2 and stats.close_code == 1000


async def test_oversized_messages_raise_or_are_dropped_and_counted(ws: tuple[AppServer, WsState]) -> None:
    server, _ = ws
    url = ws_url(server, "/big")
    got: list[str] = []
    with pytest.raises(MessageTooLarge, match="max_message_bytes=65536"):
        async with Pipeline(websocket_messages(url, max_message_bytes=65536)).stream() as items:
            async for message in items:
                got.append(message)
    assert got == ["a"]

    stats = WebSocketStats()
    got = await Pipeline(websocket_messages(url, max_message_bytes=65536, on_oversize="skip", stats=stats)).collect()
    assert got == ["a", "b"]
    assert stats.dropped_messages == 1 and stats.dropped_bytes == BIG


async def test_endless_fragmented_message_is_bounded() -> None:
    sent = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal sent
        await _handshake(stream)
        await stream.send(frame(b"x" * 65536, opcode=0x2, fin=False))
        block = frame(b"x" * 65536, opcode=0x0, fin=False)
        while sent < 1 << 30:  # a message that never ends: 1 GiB unless the client stops reading
            await stream.send(block)
            sent += 65536

    async with raw_server(handler) as port:
        with pytest.raises(MessageTooLarge):
            await websocket_messages(f"ws://127.0.0.1:{port}/", max_message_bytes=1 << 20).collect()
    assert sent < 64 << 20


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_break_or_cancel_closes_the_connection(ws: tuple[AppServer, WsState], how: str) -> None:
    server, state = ws
    state.close_codes = []
    gone = anyio.Event()
    state.on_disconnect = notifier(gone)
    stats = WebSocketStats()
    try:
        with anyio.CancelScope() as scope:
            async with Pipeline(websocket_messages(ws_url(server, "/forever"), stats=stats)).stream() as items:
                async for _message in items:
                    if how == "break":
                        break
                    scope.cancel()
                    await anyio.sleep_forever()  # cancelled here
        with anyio.fail_after(5):
            await gone.wait()  # set by the server's handler when it sees the disconnect
    finally:
        state.on_disconnect = None
    assert len(state.close_codes) == 1  # the server's handler saw its connection end ...
    assert stats.close_code == 1000  # ... after the closing handshake: the server's close reply was read


async def test_backpressure_reads_nothing_ahead() -> None:
    stalled, blocked = anyio.Event(), anyio.Event()  # raw_server runs in this loop: plain anyio events
    blocked_after: list[int] = []
    stats = WebSocketStats()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await _handshake(stream)
        await stream.send(frame(b"first"))
        with anyio.fail_after(5):
            await stalled.wait()  # the consumer holds its first message and pulls no more
        blocked_after.append(await send_until_the_kernel_refuses(stream, frame(b"f" * FLOOD_SIZE)))
        blocked.set()

    async with raw_server(handler) as port:
        async with Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/", stats=stats)).stream() as items:
            async for _message in items:
                held = stats.bytes_received
                stalled.set()
                with anyio.fail_after(5):
                    await blocked.wait()
                assert stats.bytes_received == held  # nothing was read while the consumer stalled
                break
    # the server was blocked by TCP flow control (its send refused) long before it sent 80 MB ...
    assert blocked_after[0] < FLOOD_SIZE * FLOOD_COUNT // 4, f"the server never blocked: {blocked_after[0]} bytes"
    # ... and the source held no more than one read beyond the message it delivered
    assert stats.items == 1 and held <= 65536 + 8


async def test_early_break_releases_the_pool_slot(ws: tuple[AppServer, WsState]) -> None:
    server, _ = ws
    firsts = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as client:
        for _ in range(3):  # a leaked connection would make the second run wait for the pool forever
            with anyio.fail_after(5):
                async with Pipeline(websocket_messages(ws_url(server, "/text?n=100"), client=client)).stream() as items:
                    async for message in items:
                        firsts.append(message)
                        break
    assert firsts == ["msg 0"] * 3  # each run got its connection from the one-slot pool


async def test_headers_and_subprotocols(ws: tuple[AppServer, WsState]) -> None:
    server, _ = ws
    source = websocket_messages(
        ws_url(server, "/headers"), mode="json", headers={"X-Token": "t0k"}, subprotocols=["v1.talkpipe", "v2.talkpipe"]
    )
    assert await source.collect() == [{"token": "t0k", "offered": ["v1.talkpipe", "v2.talkpipe"]}]


async def test_refused_handshake(ws: tuple[AppServer, WsState]) -> None:
    server, _ = ws
    with pytest.raises(WebSocketRejected, match="HTTP 403") as info:
        await websocket_messages(ws_url(server, "/refuse"), reconnect=True, backoff=FAST).collect()
    assert info.value.status_code == 403  # not retried: a 403 will not change


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_url_gives_up_after_bounded_retries() -> None:
    url = f"ws://127.0.0.1:{free_port()}/nobody"
    stats = WebSocketStats()
    with anyio.fail_after(5), pytest.raises(ConnectionLost, match="gave up after 5 attempts") as info:
        await websocket_messages(url, reconnect=True, backoff=FAST, stats=stats).collect()
    assert url in str(info.value) and stats.errors == 5 and stats.reconnects == 4
    with pytest.raises(ConnectionLost, match="cannot connect"):
        await websocket_messages(url).collect()


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="mode"):
        websocket_messages("ws://x/", mode="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_oversize"):
        websocket_messages("ws://x/", on_oversize="truncate")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        to_websocket("ws://x/", mode="xml")  # type: ignore[arg-type]


async def test_source_answers_pings_while_waiting(pinging: tuple[AppServer, WsState]) -> None:
    server, state = pinging
    state.release.clear()
    stats = WebSocketStats()

    async def release_after_many_pings() -> None:
        await wait_for(lambda: stats.pings >= 8)  # 8 pings: 0.4 s, twice the server's pong timeout
        state.release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_after_many_pings)
        got = await websocket_messages(ws_url(server, "/quiet"), stats=stats).collect()
    assert got == ["late"] and stats.connections == 1 and stats.close_code == 1000


# --- the sink ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "items", "expected"),
    [
        ("text", ["a", 2, b"\x00raw"], ["a", "2", b"\x00raw"]),
        ("bytes", [b"\x01\x02", "é"], [b"\x01\x02", "é".encode()]),
        ("json", [{"a": 1}, [1, 2], "s"], ['{"a": 1}', "[1, 2]", '"s"']),
    ],
)
async def test_sink_sends_exactly_the_items(
    ws: tuple[AppServer, WsState], mode: Any, items: list[Any], expected: list[Any]
) -> None:
    server, state = ws
    state.received = []
    done = anyio.Event()
    state.on_received_all = notifier(done)
    stats = WebSocketStats()
    try:
        passed = await to_websocket(ws_url(server, "/collect"), mode=mode, stats=stats).collect(items)
        with anyio.fail_after(5):
            await done.wait()
    finally:
        state.on_received_all = None
    assert passed == items  # a pass-through segment, like to_tcp
    assert state.received == [*expected, ("close", 1000)]
    assert stats.items == len(items) and stats.connections == 1


async def test_sink_reads_and_discards_what_the_server_sends(ws: tuple[AppServer, WsState]) -> None:
    server, state = ws
    state.received = []
    done = anyio.Event()
    state.on_received_all = notifier(done)
    stats = WebSocketStats()
    try:
        sink = to_websocket(ws_url(server, "/greet"), stats=stats)
        async with Pipeline(sink).stream(range(3)) as items:
            got = [x async for x in items]
        with anyio.fail_after(5):
            await done.wait()
    finally:
        state.on_received_all = None
    assert got == [0, 1, 2] and state.received == ["0", "1", "2", ("close", 1000)]
    assert stats.ignored_messages <= 2


async def test_sink_bytes_mode_refuses_other_types(ws: tuple[AppServer, WsState]) -> None:
    server, _ = ws
    with pytest.raises(TypeError, match="mode='bytes'"):
        await to_websocket(ws_url(server, "/collect"), mode="bytes").collect([{"not": "bytes"}])


async def test_sink_errors(ws: tuple[AppServer, WsState]) -> None:
    server, _ = ws
    with pytest.raises(WebSocketRejected, match="HTTP 403"):
        await to_websocket(ws_url(server, "/refuse")).collect(["x"])
    with pytest.raises(ConnectionLost, match="cannot connect"):
        await to_websocket(f"ws://127.0.0.1:{free_port()}/").collect(["x"])


async def test_sink_notices_a_server_close_at_the_next_send() -> None:
    replied = anyio.Event()  # raw_server runs in this loop: a plain anyio Event
    got: list[tuple[int, bytes]] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await _handshake(stream)
        got.extend(await read_client_frames(stream, 1))
        await stream.send(frame(struct.pack("!H", 1001) + b"bye", opcode=0x8))
        got.extend(await read_client_frames(stream, 1))  # the reply of the sink's reader task
        replied.set()

    stats = WebSocketStats()

    async def upstream() -> Any:
        yield "first"
        with anyio.fail_after(5):
            await replied.wait()
        yield "second"

    async with raw_server(handler) as port:
        with pytest.raises(WebSocketClosed, match="code 1001") as info:
            await to_websocket(f"ws://127.0.0.1:{port}/", stats=stats).collect(upstream())
    assert info.value.code == 1001 and info.value.reason == "bye" and stats.close_code == 1001
    assert got == [(0x1, b"first"), (0x8, struct.pack("!H", 1001) + b"bye")]  # "second" never went out
    assert stats.items == 1


async def test_sink_answers_pings_during_a_quiet_spell(pinging: tuple[AppServer, WsState]) -> None:
    server, state = pinging
    state.received = []
    done = anyio.Event()
    state.on_received_all = notifier(done)
    stats = WebSocketStats()

    async def upstream() -> Any:
        yield "a"
        await wait_for(lambda: stats.pings >= 8)  # the sink's reader task answers them: the server keeps us
        yield "b"

    try:
        assert await to_websocket(ws_url(server, "/collect"), stats=stats).collect(upstream()) == ["a", "b"]
        with anyio.fail_after(5):
            await done.wait()
    finally:
        state.on_received_all = None
    assert state.received == ["a", "b", ("close", 1000)]


async def test_source_to_sink_roundtrip(ws: tuple[AppServer, WsState]) -> None:
    server, state = ws
    state.received = []
    done = anyio.Event()
    state.on_received_all = notifier(done)
    try:
        pipeline = websocket_messages(ws_url(server, "/text?n=20")) | to_websocket(ws_url(server, "/collect"))
        assert await pipeline.collect() == [f"msg {i}" for i in range(20)]
        with anyio.fail_after(5):
            await done.wait()
    finally:
        state.on_received_all = None
    assert state.received == [*(f"msg {i}" for i in range(20)), ("close", 1000)]

