"""The WebSocket source's settings: defaults, bounds and their messages, the malformed-message error, and the
connect timeout bounding a handshake the server never answers (trio's virtual clock, where only waits take time).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from trio.testing import MockClock

from talkpipe_async import Backoff, Pipeline
from talkpipe_async.sources import (
    ConnectionLost,
    MalformedMessage,
    WebSocketClosed,
    WebSocketStats,
    websocket_messages,
)
from tests.helpers.net import hold_after_request, raw_server, ws_close_frame, ws_frame, ws_handshake

pytestmark = pytest.mark.anyio

#: No wait between attempts: the tests count attempts, not time.
NOW = Backoff(initial=0.0, maximum=0.0, max_attempts=3)

VIRTUAL = pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual")]
)


def test_settings_defaults_and_given() -> None:
    source = websocket_messages("ws://h/x")
    assert (source.mode, source.reconnect, source.on_oversize, source.on_error) == ("text", False, "raise", "raise")
    assert (source.encoding_errors, source.read_timeout, source.connect_timeout) == ("replace", None, 10.0)
    assert (source.headers, source.subprotocols, source.close_code) == ({}, None, 1000)
    assert source.label == "websocket_messages"
    assert source.backoff == Backoff() and isinstance(source.stats, WebSocketStats)
    backoff, stats = Backoff(initial=1.0), WebSocketStats()
    given = websocket_messages(
        "ws://h/x", mode="json", reconnect=True, backoff=backoff, max_message_bytes=1, read_size=1,
        headers={"A": "1"}, subprotocols=("p",), encoding_errors="strict", read_timeout=3.0, connect_timeout=2.5,
        close_code=4000, stats=stats, name="feed",
    )
    assert (given.mode, given.reconnect, given.backoff, given.max_message_bytes, given.read_size) == (
        "json", True, backoff, 1, 1,
    )
    assert (given.headers, given.subprotocols, given.encoding_errors) == ({"A": "1"}, ["p"], "strict")
    assert (given.read_timeout, given.connect_timeout, given.close_code) == (3.0, 2.5, 4000)
    assert given.stats is stats and given.label == "feed"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_oversize": "drop"}, "on_oversize must be 'raise' or 'skip', not 'drop'"),
        ({"on_error": "ignore"}, "on_error must be 'raise', 'skip' or a callable, not 'ignore'"),
        ({"max_message_bytes": 0}, "max_message_bytes and read_size must be at least 1"),
        ({"read_size": 0}, "max_message_bytes and read_size must be at least 1"),
    ],
)
def test_each_bad_setting_is_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        websocket_messages("ws://h/x", **options)
    assert str(info.value) == message


def test_a_malformed_message_names_the_source_and_keeps_the_first_200_bytes() -> None:
    error = MalformedMessage("not JSON", source="feed (ws://h/x)", message_number=3, data=b"x" * 300)
    assert str(error) == "feed (ws://h/x): message 3: not JSON"
    assert (error.source, error.message_number, error.line_number) == ("feed (ws://h/x)", 3, 3)
    assert error.data == error.line == b"x" * 200


@VIRTUAL
@pytest.mark.parametrize("given", [None, 2.5])
async def test_a_handshake_the_server_never_answers_fails_after_the_connect_timeout(given: float | None) -> None:
    options: dict[str, Any] = {} if given is None else {"connect_timeout": given}
    async with raw_server(hold_after_request) as port:
        started = anyio.current_time()
        with anyio.fail_after(100), pytest.raises(ConnectionLost):
            await Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/", **options)).collect()
        assert anyio.current_time() - started == pytest.approx(10.0 if given is None else given)


def scripted_ws(*frames: bytes) -> Any:
    """A raw WebSocket server handler: the handshake, then *frames* in one write, then read until the client goes."""

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await ws_handshake(stream)
        await stream.send(b"".join(frames))
        while True:
            await stream.receive()  # the client's close reply, then the end (EndOfStream ends the handler)

    return handler


@pytest.mark.parametrize(("reason", "detail"), [(b"boom", ": boom"), (b"", "")])
async def test_an_abnormal_close_names_its_code_and_reason_in_the_error_and_the_stats(
    reason: bytes, detail: str
) -> None:
    stats = WebSocketStats()
    async with raw_server(scripted_ws(ws_frame(b"one"), ws_close_frame(1011, reason))) as port:
        url = f"ws://127.0.0.1:{port}/"
        got: list[str] = []
        with pytest.raises(WebSocketClosed) as info:
            async with Pipeline(websocket_messages(url, stats=stats, name="feed")).stream() as items:
                async for item in items:
                    got.append(item)
    assert got == ["one"]
    assert str(info.value) == f"feed ({url}): connection closed abnormally (code 1011{detail})"
    assert (info.value.code, info.value.reason) == (1011, reason.decode())
    assert (stats.errors, stats.last_error) == (1, f"close code 1011 {reason.decode()}".strip())


async def test_giving_up_names_the_last_error_and_keeps_it_as_the_cause() -> None:
    stats = WebSocketStats()
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/"
        source = websocket_messages(url, reconnect=True, backoff=NOW, stats=stats, name="feed")
        with pytest.raises(ConnectionLost) as info:
            await Pipeline(source).collect()
    cause = info.value.__cause__
    assert isinstance(cause, httpx.ConnectError)
    assert str(info.value) == f"feed ({url}): gave up after 3 attempts: {cause!r}"
    assert (stats.errors, stats.reconnects, stats.last_error) == (3, 2, repr(cause))


async def test_text_mode_decodes_binary_messages_with_the_given_error_handler() -> None:
    async with raw_server(scripted_ws(ws_frame(b"ok \xff", opcode=0x2), ws_close_frame(1000))) as port:
        url = f"ws://127.0.0.1:{port}/"
        assert await Pipeline(websocket_messages(url, encoding_errors="ignore")).collect() == ["ok "]
        assert await Pipeline(websocket_messages(url)).collect() == ["ok \ufffd"]


async def test_skipped_malformed_messages_are_counted_and_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="talkpipe_async.net")
    stats = WebSocketStats()
    frames = ws_frame(b"{bad"), ws_frame(b"[1]"), ws_frame(b"also bad", opcode=0x2), ws_close_frame(1000)
    async with raw_server(scripted_ws(*frames)) as port:
        url = f"ws://127.0.0.1:{port}/"
        source = websocket_messages(url, mode="json", on_error="skip", stats=stats, name="feed")
        assert await Pipeline(source).collect() == [[1]]
    assert stats.malformed == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"feed: skipping malformed messages (counted in stats): feed ({url}): message 1: ")


async def test_a_malformed_binary_message_reaches_the_hook_with_its_bytes() -> None:
    seen: list[MalformedMessage] = []
    async with raw_server(scripted_ws(ws_frame(b"{bad", opcode=0x2), ws_frame(b"{also"), ws_close_frame(1000))) as port:
        url = f"ws://127.0.0.1:{port}/"
        source = websocket_messages(url, mode="json", on_error=seen.append, name="feed")
        assert await Pipeline(source).collect() == []
    assert [(e.message_number, e.data) for e in seen] == [(1, b"{bad"), (2, b"{also")]
    assert str(seen[0]).startswith(f"feed ({url}): message 1: not valid JSON: ")
