"""The WebSocket source's settings: defaults, bounds and their messages, the malformed-message error, and the
connect timeout bounding a handshake the server never answers (trio's virtual clock, where only waits take time).
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest
from trio.testing import MockClock

from talkpipe_async import Backoff, Pipeline
from talkpipe_async.sources import ConnectionLost, MalformedMessage, WebSocketStats, websocket_messages
from tests.helpers.net import raw_server, read_request

pytestmark = pytest.mark.anyio

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
    answered = anyio.Event()

    async def silent(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream)
        await answered.wait()  # never set: the server keeps the connection and says nothing

    options = {} if given is None else {"connect_timeout": given}
    async with raw_server(silent) as port:
        started = anyio.current_time()
        with anyio.fail_after(100), pytest.raises(ConnectionLost):
            await Pipeline(websocket_messages(f"ws://127.0.0.1:{port}/", **options)).collect()
        assert anyio.current_time() - started == pytest.approx(10.0 if given is None else given)
