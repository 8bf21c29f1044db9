"""The WebSocket sink's settings and exactly what reaches the server, read off the wire by a raw anyio listener.

Pinned here: the defaults and the settings kept; the handshake's headers and offered subprotocols; each mode's
encoding (JSON keeps non-ASCII text, a given serializer replaces ``json.dumps``, bytes-like items go as they are,
text is UTF-8); the ``TypeError`` naming the item's type; and the connect timeout (10 s by default) bounding a
handshake the server never answers, measured on trio's virtual clock, where only the waits take time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from trio.testing import MockClock

from talkpipe_async import Pipeline, source
from talkpipe_async.sinks import to_websocket
from talkpipe_async.sources import ConnectionLost, WebSocketStats
from tests.helpers.net import client_frames, hold_after_request, raw_server, ws_close_frame, ws_frame, ws_handshake

pytestmark = pytest.mark.anyio

VIRTUAL = pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual")]
)

Frame = tuple[int, bytes]  # opcode, unmasked payload


async def frames_until_close(stream: anyio.abc.SocketStream) -> list[Frame]:
    """The client's frames, read until its close frame is among them; then the server's close reply is sent."""
    data = b""
    frames = client_frames(data)
    while not any(opcode == 0x8 for opcode, _ in frames):
        data += await stream.receive()
        frames = client_frames(data)
    await stream.send(ws_close_frame(1000))
    return frames


@asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A WebSocket server by hand: it records the handshake's headers and every frame up to the client's close,
    choosing the first subprotocol offered, and replies to the close."""
    seen: dict[str, Any] = {}

    async def handler(stream: anyio.abc.SocketStream) -> None:
        seen["headers"] = await ws_handshake(stream, choose_subprotocol=True)
        seen["frames"] = await frames_until_close(stream)

    async with raw_server(handler) as port:
        yield f"ws://127.0.0.1:{port}/in", seen


def test_settings_defaults_and_given() -> None:
    sink = to_websocket("ws://h/x")
    assert (sink.mode, sink.serializer, sink.headers, sink.subprotocols) == ("text", None, {}, None)
    assert (sink.connect_timeout, sink.close_code, sink.label) == (10.0, 1000, "to_websocket")
    assert isinstance(sink.stats, WebSocketStats)
    headers = {"X-Token": "t"}
    given = to_websocket(
        "ws://h/x", mode="json", serializer=repr, headers=headers, subprotocols=("p1", "p2"), connect_timeout=2.5,
        close_code=4000, name="out",
    )
    assert (given.mode, given.serializer, given.headers, given.subprotocols) == ("json", repr, headers, ["p1", "p2"])
    assert given.headers is not headers  # a copy: changing the caller's dict later changes nothing
    assert (given.connect_timeout, given.close_code, given.label) == (2.5, 4000, "out")


async def test_the_handshake_carries_the_headers_and_offers_the_subprotocols() -> None:
    async with recording_server() as (url, seen):
        sink = to_websocket(url, headers={"X-Token": "t0k"}, subprotocols=["v1.app", "v2.app"])
        assert await Pipeline(sink).collect(["x"]) == ["x"]
    assert seen["headers"]["x-token"] == "t0k"
    assert seen["headers"]["sec-websocket-protocol"] == "v1.app, v2.app"
    assert seen["frames"] == [(0x1, b"x"), (0x8, b"\x03\xe8")]


async def test_json_keeps_non_ascii_text_and_a_given_serializer_replaces_json_dumps() -> None:
    async with recording_server() as (url, seen):
        await Pipeline(to_websocket(url, mode="json")).collect([{"city": "Zürich"}, [1, "€"]])
    assert seen["frames"][:2] == [(0x1, '{"city": "Zürich"}'.encode()), (0x1, '[1, "€"]'.encode())]
    async with recording_server() as (url, seen):
        await Pipeline(to_websocket(url, mode="json", serializer=lambda item: f"<{item}>")).collect([7])
    assert seen["frames"][0] == (0x1, b"<7>")


async def test_bytes_mode_sends_bytes_like_items_as_they_are_and_text_as_utf8() -> None:
    async with recording_server() as (url, seen):
        items = [b"ab", bytearray(b"cd"), memoryview(b"ef"), "é"]
        await Pipeline(to_websocket(url, mode="bytes")).collect(items)
    assert seen["frames"][:4] == [(0x2, b"ab"), (0x2, b"cd"), (0x2, b"ef"), (0x2, "é".encode())]


async def test_bytes_mode_names_the_type_it_refuses() -> None:
    async with recording_server() as (url, _):
        with pytest.raises(TypeError) as info:
            await Pipeline(to_websocket(url, mode="bytes", name="out")).collect([{"k": 1}])
    assert str(info.value) == f"out ({url}): mode='bytes' sends bytes or str, not dict"


async def test_text_mode_sends_str_of_other_items_and_bytes_as_binary() -> None:
    async with recording_server() as (url, seen):
        await Pipeline(to_websocket(url)).collect([1.5, "s", b"\x00\xff"])
    assert seen["frames"][:3] == [(0x1, b"1.5"), (0x1, b"s"), (0x2, b"\x00\xff")]


@VIRTUAL
@pytest.mark.parametrize("given", [None, 2.5])
async def test_a_handshake_the_server_never_answers_fails_after_the_connect_timeout(given: float | None) -> None:
    """The connect timeout (10 s unless given) bounds the wait for the server's answer to the handshake."""
    options: dict[str, Any] = {} if given is None else {"connect_timeout": given}
    async with raw_server(hold_after_request) as port:
        url = f"ws://127.0.0.1:{port}/"
        started = anyio.current_time()
        with anyio.fail_after(100), pytest.raises(ConnectionLost, match=r"cannot connect"):
            await Pipeline(to_websocket(url, **options)).collect(["x"])
        assert anyio.current_time() - started == pytest.approx(10.0 if given is None else given)


async def test_the_close_frame_carries_the_given_code_and_one_stats_counts_every_run() -> None:
    stats = WebSocketStats()
    async with recording_server() as (url, seen):
        await Pipeline(to_websocket(url, close_code=4000, stats=stats)).collect(["a"])
    assert seen["frames"] == [(0x1, b"a"), (0x8, (4000).to_bytes(2, "big"))]
    async with recording_server() as (url, seen):
        await Pipeline(to_websocket(url, stats=stats)).collect(["b"])
    assert seen["frames"][-1] == (0x8, (1000).to_bytes(2, "big"))
    assert (stats.connections, stats.items) == (2, 2)


async def test_a_message_too_big_for_the_reader_is_dropped_and_counted_and_sending_goes_on() -> None:
    """What the server sends the sink is read and discarded; a message over the reader's 1 MiB is dropped as it
    arrives and counted, not an error: the items after it are still sent."""
    stats = WebSocketStats()
    big = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(ws_frame(b"x" * ((1 << 20) + 1)))
        big.set()
        seen.extend(await frames_until_close(stream))

    seen: list[Frame] = []

    @source
    async def items() -> AsyncIterator[str]:
        await big.wait()
        while not (stats.dropped_messages or stats.last_error):  # the reader has not met the big message yet
            await anyio.sleep(0.001)
        yield "after"

    async with raw_server(handler) as port:
        with anyio.fail_after(30):
            await Pipeline(items(), to_websocket(f"ws://127.0.0.1:{port}/", stats=stats)).collect()
    assert (stats.dropped_messages, stats.last_error) == (1, "")
    assert seen == [(0x1, b"after"), (0x8, b"\x03\xe8")]


async def test_the_reader_task_is_named_after_the_stage() -> None:
    """The task that reads what the server sends carries the stage's name (it is started before the first item is
    asked for), so a task dump shows whose it is."""
    names: list[str] = []

    @source
    async def items() -> AsyncIterator[str]:
        names.extend(str(task.name) for task in anyio.get_running_tasks())
        yield "x"

    async with recording_server() as (url, _):
        await Pipeline(items(), to_websocket(url, name="out")).collect()
    assert "out reader" in names
