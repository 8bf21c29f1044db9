"""The WebSocket plumbing the source and the sink share (``_net/websocket.py``), through the public stages.

Pinned here: the close codes a stage may send (1000 and 3000-4999, each bound itself allowed, the message naming
the code); ``ws://`` and ``wss://`` URLs are asked of httpx as ``http://`` and ``https://`` ones, so a client's
settings for those (a proxy mounted for ``http://``) apply to them; the first connection of a process loads
httpx-ws and wsproto and works (the loaded session class is kept for the next); an httpx-ws too old for the stages,
or none at all, is named with the command that installs the right one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from talkpipe_async import Pipeline
from talkpipe_async._net import websocket as _ws
from talkpipe_async.sinks import to_websocket
from talkpipe_async.sources import WebSocketRejected, websocket_messages
from tests.helpers.net import client_frames, parse_head, raw_server, ws_frame, ws_handshake

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("code", [1000, 3000, 3999, 4999])
def test_the_close_codes_a_stage_may_send_are_accepted(code: int) -> None:
    assert websocket_messages("ws://x/", close_code=code).close_code == code
    assert to_websocket("ws://x/", close_code=code).close_code == code


@pytest.mark.parametrize("code", [999, 1001, 1011, 2999, 5000])
def test_other_close_codes_are_refused_by_name(code: int) -> None:
    message = f"close_code must be 1000 or in 3000-4999, not {code}"
    with pytest.raises(ValueError) as info:
        websocket_messages("ws://x/", close_code=code)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        to_websocket("ws://x/", close_code=code)
    assert str(info.value) == message


async def test_a_ws_url_goes_where_the_clients_http_settings_send_it() -> None:
    """A proxy mounted for ``http://`` carries ``ws://`` connections too (here it refuses the upgrade)."""
    asked: list[str] = []
    contacted: list[int] = []

    async def proxy(stream: anyio.abc.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        asked.append(parse_head(data.split(b"\r\n\r\n", 1)[0])[0])
        await stream.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    async def target(stream: anyio.abc.SocketStream) -> None:
        contacted.append(1)

    async with raw_server(proxy) as proxy_port, raw_server(target) as target_port:
        transport = httpx.AsyncHTTPTransport(proxy=f"http://127.0.0.1:{proxy_port}")
        async with httpx.AsyncClient(mounts={"http://": transport}) as client:
            source = websocket_messages(f"ws://127.0.0.1:{target_port}/feed", client=client)
            with pytest.raises(WebSocketRejected) as info:
                await Pipeline(source).collect()
    assert info.value.status_code == 403
    assert asked == [f"GET http://127.0.0.1:{target_port}/feed HTTP/1.1"] and contacted == []


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As in a process that has not opened a WebSocket yet: nothing of httpx-ws loaded (restored afterwards)."""
    for name in ("_quiet_session", "_TRANSPORT_ERRORS", "_SEND_ERRORS"):
        monkeypatch.setattr(_ws, name, getattr(_ws, name))  # recorded, to be put back
    monkeypatch.setattr(_ws, "_quiet_session", None)
    monkeypatch.setattr(_ws, "_TRANSPORT_ERRORS", (OSError, anyio.EndOfStream, anyio.ClosedResourceError))
    monkeypatch.setattr(_ws, "_SEND_ERRORS", _ws._TRANSPORT_ERRORS)
    yield


async def test_the_first_connection_of_a_process_loads_what_it_needs(fresh_process: None) -> None:
    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"one") + ws_frame(b"\x03\xe8", opcode=0x8))  # then a normal close
        await stream.receive()  # the client's close reply

    async with raw_server(server) as port:
        got = await Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/")).collect()
    assert got == ["one"]
    loaded = _ws._quiet_session
    assert loaded is not None and _ws._load() is loaded  # kept for the next connection


async def test_a_peer_that_drops_right_after_the_first_load_is_a_lost_connection(fresh_process: None) -> None:
    """The errors of a broken transport are known from the first connection on (not only after a reconnect)."""

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"one"))
        await anyio.aclose_forcefully(stream)  # no close frame

    from talkpipe_async.sources import WebSocketClosed

    got: list[Any] = []
    async with raw_server(server) as port:
        with pytest.raises(WebSocketClosed) as info:
            async with Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/")).stream() as items:
                async for message in items:
                    got.append(message)
    assert got == ["one"] and info.value.code == 1006


async def test_a_sink_whose_peer_is_gone_after_the_first_load_says_so(fresh_process: None) -> None:
    from talkpipe_async.sources import ConnectionLost

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await anyio.aclose_forcefully(stream)

    async with raw_server(server) as port:
        with pytest.raises(ConnectionLost):
            await Pipeline(to_websocket(f"ws://127.0.0.1:{port}/")).collect([f"m{i}" for i in range(10_000)])


async def test_an_httpx_ws_without_context_managed_sessions_is_named(
    fresh_process: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx_ws

    class Old:  # the session class of httpx-ws before 0.9
        pass

    monkeypatch.setattr(httpx_ws, "AsyncWebSocketSession", Old)
    with pytest.raises(ImportError) as info:
        await Pipeline(websocket_messages("ws://127.0.0.1:9/")).collect()
    assert str(info.value) == "WebSocket stages need httpx-ws>=0.9: pip install -U 'talkpipe-async[ws]'"


def test_without_httpx_ws_the_stages_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec

    def not_installed(name: str, *args: Any) -> Any:
        return None if name == "httpx_ws" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", not_installed)
    with pytest.raises(ImportError) as info:
        websocket_messages("ws://x/")
    assert str(info.value) == "WebSocket stages need httpx-ws>=0.9: pip install 'talkpipe-async[ws]'"


def close_code_of(data: bytes) -> int | None:
    """The code of the first (masked, client-to-server) close frame in *data*, or None."""
    for opcode, payload in client_frames(data):
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
    return None


async def test_oversized_messages_are_counted_each_with_their_bytes_and_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from talkpipe_async.sources import WebSocketStats

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        big = ws_frame(b"x" * 300)
        rest = ws_frame(b"y" * 200) + ws_frame(b"fine") + ws_frame(b"\x03\xe8", opcode=0x8)
        await stream.send(ws_frame(b"ok") + big + rest)
        await stream.receive()

    caplog.set_level(logging.WARNING, logger="talkpipe_async.net")
    stats = WebSocketStats()
    async with raw_server(server) as port:
        source = websocket_messages(f"ws://127.0.0.1:{port}/", max_message_bytes=100, on_oversize="skip", stats=stats,
                                    name="feed")
        assert await Pipeline(source).collect() == ["ok", "fine"]
    assert (stats.dropped_messages, stats.dropped_bytes) == (2, 500)
    assert stats.bytes_received >= 2 + 300 + 200 + 4  # every byte read counts, dropped ones too
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"feed (ws://127.0.0.1:{port}/): dropping messages larger than 100 bytes (counted in stats)"]


async def test_a_message_of_exactly_the_limit_is_delivered() -> None:
    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"z" * 100) + ws_frame(b"\x03\xe8", opcode=0x8))
        await stream.receive()

    async with raw_server(server) as port:
        assert await Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/", max_message_bytes=100)).collect() == [
            "z" * 100]


async def test_an_oversized_message_closes_with_1009_message_too_big() -> None:
    from talkpipe_async.sources import MessageTooLarge

    seen: list[int | None] = []

    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"x" * 300))
        data = b""
        with anyio.move_on_after(10):
            while close_code_of(data) is None:
                data += await stream.receive()
        seen.append(close_code_of(data))
        await stream.send(ws_frame(b"\x03\xf1", opcode=0x8))  # the close reply

    async with raw_server(server) as port:
        with pytest.raises(MessageTooLarge):
            await Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/", max_message_bytes=100)).collect()
    assert seen == [1009]


async def test_a_sink_counts_the_utf8_bytes_it_sends() -> None:
    async def server(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        data = b""
        while close_code_of(data) is None:  # take the messages until the sink's close frame
            data += await stream.receive()
        await stream.send(ws_frame(b"\x03\xe8", opcode=0x8))  # the close reply

    async with raw_server(server) as port:
        sink = to_websocket(f"ws://127.0.0.1:{port}/")
        await Pipeline(sink).collect(["héllo", "ok"])
    assert sink.stats.bytes_sent == 6 + 2 and sink.stats.items == 2
