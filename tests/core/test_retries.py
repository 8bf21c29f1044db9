"""One retry rule for every reconnecting stage: a peer that accepts and then drops is bounded by max_attempts.

A connection (or a re-opened source) counts as healthy, and the count of
failures starts again, only after it delivered data and stayed up
``Backoff.healthy_after`` seconds.  Each stage is attacked with a real
flapping peer on 127.0.0.1 (it delivers, then resets), and the connections
are counted exactly; the rule itself runs on trio's virtual clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import pytest
from trio.testing import MockClock

from talkpipe_async import Backoff, Pipeline, source
from talkpipe_async._backoff import Retries
from talkpipe_async.operators import retry_source
from talkpipe_async.sinks import to_tcp
from talkpipe_async.sources import (
    ConnectionLost,
    NetStats,
    SSEError,
    WebSocketStats,
    http_ndjson,
    sse_events,
    tcp_lines,
    websocket_messages,
)
from tests.helpers.net import chunk, chunked_head, raw_server, read_request, reset, ws_frame, ws_handshake

pytestmark = pytest.mark.anyio

#: quick waits; healthy_after keeps its default (10 s), far longer than any connection here
QUICK = Backoff(initial=0.005, maximum=0.02, max_attempts=3)

VIRTUAL = pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual")]
)


class Flapping:
    """Counts a flapping peer's connections; each one waits until the client got what it sent, then resets."""

    def __init__(self, per_connection: int) -> None:
        self.per_connection = per_connection
        self.connections = 0
        self.got: list[Any] = []
        self._seen = [anyio.Event() for _ in range(64)]

    def received(self, item: Any) -> None:
        """The client side: record an item; wakes the connection that sent the last of its batch."""
        self.got.append(item)
        if len(self.got) % self.per_connection == 0:
            self._seen[len(self.got) // self.per_connection - 1].set()

    async def reset_when_delivered(self, stream: anyio.abc.SocketStream, nth: int) -> None:
        with anyio.fail_after(5):
            await self._seen[nth - 1].wait()
        reset(stream)


# --- the rule, in virtual time ---------------------------------------------------------------


@VIRTUAL
async def test_a_connection_is_healthy_only_after_data_and_the_stable_period() -> None:
    backoff = Backoff(initial=1.0, maximum=100.0, jitter="none", max_attempts=4, healthy_after=10.0)
    retries = Retries(backoff)
    waits = []
    for _ in range(2):  # up 9.9 s with data: not yet healthy, the delay keeps growing
        retries.opened()
        retries.delivered()
        await anyio.sleep(9.9)
        waits.append(retries.failed())
    retries.opened()  # up 60 s without data: not healthy either
    await anyio.sleep(60)
    waits.append(retries.failed())
    assert waits == [1.0, 2.0, 4.0] and retries.failures == 3
    retries.opened()
    retries.delivered()
    await anyio.sleep(10.0)  # data and the stable period: the count and the delay start again
    assert retries.healthy
    assert retries.failed() == 1.0 and retries.failures == 1
    assert retries.failed() == 2.0 and retries.failed() == 4.0  # failures without a connection in between
    assert retries.failed() is None and retries.failures == 4  # max_attempts used up


@VIRTUAL
async def test_next_attempt_sleeps_each_wait_and_says_when_to_give_up() -> None:
    backoff = Backoff(initial=1.0, maximum=100.0, jitter="none", max_attempts=4)
    retries = Retries(backoff)
    start = anyio.current_time()
    slept = []
    for wait in (None, 7.0, None):  # 7.0: a server's Retry-After replaces the delay, the failure still counts
        assert await retries.next_attempt(wait=wait)
        slept.append(anyio.current_time() - start)
    # Virtual clock readings are floats: their differences are exact to rounding, not bit for bit.
    assert slept == pytest.approx([1.0, 8.0, 12.0], abs=1e-9) and retries.failures == 3
    assert not await retries.next_attempt()  # the fourth failure: max_attempts used up, no sleep
    assert anyio.current_time() - start == pytest.approx(12.0, abs=1e-9) and retries.failures == 4


@VIRTUAL
async def test_retry_source_that_yields_then_fails_is_reopened_max_attempts_times() -> None:
    opened = 0

    @source
    async def one_then_fail() -> AsyncIterator[int]:
        nonlocal opened
        opened += 1
        yield opened
        raise ConnectionResetError("dropped after one item")

    backoff = Backoff(initial=0.01, maximum=0.05, max_attempts=5)
    got: list[int] = []
    with pytest.raises(ConnectionResetError, match="dropped after one item") as info:
        async with retry_source(one_then_fail(), backoff).stream() as items:
            async for x in items:
                got.append(x)
    assert opened == 5 and got == [1, 2, 3, 4, 5]
    assert "retry_source gave up after 5 consecutive failures" in "\n".join(getattr(info.value, "__notes__", []))


@VIRTUAL
async def test_retry_source_attempt_that_ran_the_stable_period_starts_the_count_again() -> None:
    opened = 0

    @source
    async def slow_then_fail() -> AsyncIterator[int]:
        nonlocal opened
        opened += 1
        yield opened
        if opened % 3 == 0:
            await anyio.sleep(10)  # every third attempt stays up the stable period
        if opened < 8:
            raise ConnectionResetError("dropped")

    backoff = Backoff(initial=0.01, maximum=0.05, max_attempts=4)
    out = await retry_source(slow_then_fail(), backoff).collect()
    assert out == list(range(1, 9))  # a healthy attempt after two quick failures: never four failures in a row


# --- real flapping peers ----------------------------------------------------------------------


async def test_http_ndjson_reconnect_gives_up_on_a_flapping_server() -> None:
    peer = Flapping(per_connection=2)

    async def handler(stream: anyio.abc.SocketStream) -> None:
        peer.connections += 1
        nth = peer.connections
        await read_request(stream)
        await stream.send(chunked_head("application/x-ndjson") + chunk(b'{"n": 1}\n{"n": 2}\n'))
        await peer.reset_when_delivered(stream, nth)

    stats = NetStats()
    async with raw_server(handler) as port:
        source = http_ndjson(f"http://127.0.0.1:{port}/", on_disconnect="reconnect", backoff=QUICK, stats=stats)
        with anyio.fail_after(20), pytest.raises(ConnectionLost, match="gave up after 3 attempts"):
            async with source.stream() as items:
                async for record in items:
                    peer.received(record)
    assert peer.connections == 3 and stats.connections == 3 and stats.reconnects == 2
    assert peer.got == [{"n": 1}, {"n": 2}] * 3


async def test_tcp_lines_reconnect_gives_up_on_a_flapping_server() -> None:
    peer = Flapping(per_connection=2)

    async def handler(stream: anyio.abc.SocketStream) -> None:
        peer.connections += 1
        await stream.send(b"a\nb\n")
        await peer.reset_when_delivered(stream, peer.connections)

    stats = NetStats()
    async with raw_server(handler) as port:
        source = tcp_lines("127.0.0.1", port, reconnect=True, backoff=QUICK, stats=stats)
        with anyio.fail_after(20), pytest.raises(ConnectionLost, match="gave up after 3"):
            async with source.stream() as items:
                async for line in items:
                    peer.received(line)
    assert peer.connections == 3 and stats.connections == 3 and peer.got == ["a", "b"] * 3


async def test_sse_gives_up_on_a_flapping_server() -> None:
    peer = Flapping(per_connection=1)

    async def handler(stream: anyio.abc.SocketStream) -> None:
        peer.connections += 1
        await read_request(stream)
        await stream.send(chunked_head("text/event-stream") + chunk(b"id: 1\ndata: x\n\n"))
        await peer.reset_when_delivered(stream, peer.connections)

    stats = NetStats()
    async with raw_server(handler) as port:
        source = sse_events(f"http://127.0.0.1:{port}/", backoff=QUICK, stats=stats)
        with anyio.fail_after(20), pytest.raises(SSEError, match="gave up after 3"):
            async with source.stream() as items:
                async for event in items:
                    peer.received(event.data)
    assert peer.connections == 3 and stats.connections == 3 and peer.got == ["x"] * 3


async def test_websocket_reconnect_gives_up_on_a_flapping_server() -> None:
    peer = Flapping(per_connection=1)

    async def handler(stream: anyio.abc.SocketStream) -> None:
        peer.connections += 1
        await ws_handshake(stream)
        await stream.send(ws_frame(b"hello"))
        await peer.reset_when_delivered(stream, peer.connections)

    stats = WebSocketStats()
    async with raw_server(handler) as port:
        source = websocket_messages(f"ws://127.0.0.1:{port}/", reconnect=True, backoff=QUICK, stats=stats)
        with anyio.fail_after(20), pytest.raises(ConnectionLost, match="gave up after 3"):
            async with source.stream() as items:
                async for message in items:
                    peer.received(message)
    assert peer.connections == 3 and stats.connections == 3 and peer.got == ["hello"] * 3


async def test_to_tcp_reconnect_gives_up_on_a_peer_that_resets_after_each_read() -> None:
    connections = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.receive()
        reset(stream)

    stats = NetStats()
    async with raw_server(handler) as port:
        sink = to_tcp("127.0.0.1", port, reconnect=True, backoff=QUICK, stats=stats)
        with anyio.fail_after(20), pytest.raises(ConnectionLost, match="gave up after 3 attempts"):
            await Pipeline(sink).collect(range(1_000_000))
    # how many writes each connection took before the reset showed is the kernel's business; the count is not
    assert connections == 3
    assert stats.reconnects == 2 and stats.errors == 3


def test_healthy_after_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="healthy_after"):
        Backoff(healthy_after=-1)
    assert Backoff().healthy_after == 10.0
