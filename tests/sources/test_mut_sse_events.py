"""The reconnecting ``sse_events`` source's exact promises, against raw anyio listeners on 127.0.0.1.

Each test scripts the server's answers per connection and pins one promise: the request headers (``Accept``,
``Cache-Control``, ``Last-Event-ID`` from the last id seen), what ends the stream and what raises (the status and
content-type texts), every counter, the bound on failed attempts, and the waits between connections (the server's
``retry`` in milliseconds, kept across connections; ``backoff.initial`` otherwise), the waits measured on trio's
virtual clock, where only the waits take time.
"""

from __future__ import annotations

import socket
from contextlib import AbstractAsyncContextManager

import anyio
import anyio.abc
import httpx
import pytest
from trio.testing import MockClock

from talkpipe_async import Backoff
from talkpipe_async.operators import take
from talkpipe_async.sources.sockets import NetStats
from talkpipe_async.sources.sse import SSEError, SSEEvent, sse_events
from tests.helpers.net import LAST_CHUNK, RawRequest, Script, chunk
from tests.helpers.net import scripted as net_scripted

pytestmark = pytest.mark.anyio

#: No wait between attempts: these tests count attempts, not time.
NOW = Backoff(initial=0.0, maximum=0.0, max_attempts=3)

VIRTUAL = pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual")]
)

def scripted(script: Script) -> AbstractAsyncContextManager[tuple[str, list[RawRequest]]]:
    """A raw server scripted per connection (see ``tests.helpers.net.scripted``), at ``/events``."""
    return net_scripted(script, "/events")


def head(status: str = "200 OK", ctype: str | None = "text/event-stream") -> bytes:
    """A response head announcing a chunked body and the connection's close (no content type when *ctype* is None)."""
    extra = f"Content-Type: {ctype}\r\n" if ctype is not None else ""
    return f"HTTP/1.1 {status}\r\n{extra}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()


NO_CONTENT = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"


async def whole(stream: anyio.abc.SocketStream, body: bytes) -> None:
    """A complete event-stream body, then wait for the client to hang up."""
    await stream.send(head() + (chunk(body) if body else b"") + LAST_CHUNK)
    await stream.receive()


def test_settings_defaults() -> None:
    """Defaults: no headers, no id, 60 s per chunk, 10 s to connect, 3 s exactly before the first retry, 1 Mi
    characters per line, the class name as the stage's name; every setting kept."""
    source = sse_events("http://h/e")
    assert (source.url, source.headers, source.last_event_id, source.client) == ("http://h/e", {}, "", None)
    assert (source.read_timeout, source.connect_timeout, source.max_line_chars) == (60.0, 10.0, 1 << 20)
    assert source.backoff == Backoff(initial=3.0, exact_first=True)
    assert source.label == "sse_events" and isinstance(source.stats, NetStats)
    stats, backoff = NetStats(), Backoff(initial=1.0)
    given = sse_events(
        "http://h/e", headers={"A": "1"}, last_event_id="9", read_timeout=None, connect_timeout=2.0,
        backoff=backoff, max_line_chars=5, stats=stats, name="feed",
    )
    assert (given.headers, given.last_event_id) == ({"A": "1"}, "9")
    assert (given.read_timeout, given.connect_timeout) == (None, 2.0)
    assert given.backoff is backoff and given.max_line_chars == 5 and given.stats is stats and given.label == "feed"


async def test_request_headers_carry_the_last_event_id_seen() -> None:
    """Each request asks for ``text/event-stream`` without caching (the caller's headers replace these, each
    header sent once), and carries the last event id: the one given, then the stream's own, and none once the
    stream clears it; the stream's id replaces a ``Last-Event-ID`` header given."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        if n == 1:
            await whole(stream, b"id: 7\ndata: a\n\n")
        elif n == 2:
            await whole(stream, b"id\ndata: b\n\n")  # an empty id clears the last event id
        else:
            await stream.send(NO_CONTENT)

    async with scripted(script) as (url, seen):
        given = {"Accept": "text/event-stream", "Cache-Control": "max-age=0", "X-Token": "t"}
        source = sse_events(url, headers=given, last_event_id="5", backoff=NOW)
        got = await source.collect()
    assert got == [SSEEvent(data="a", id="7"), SSEEvent(data="b", id="")]
    assert [h.get("last-event-id") for h in seen] == ["5", "7", None]
    assert [h.line for h in seen] == ["GET /events HTTP/1.1"] * 3
    assert all(h["accept"] == "text/event-stream" for h in seen)
    assert all(h["cache-control"] == "max-age=0" and h["x-token"] == "t" for h in seen)
    assert all(len(h.names) == len(set(h.names)) for h in seen)

    async with scripted(script) as (url, seen):
        await sse_events(url, backoff=NOW).collect()
    assert seen[0].get("last-event-id") is None and seen[0]["cache-control"] == "no-cache"
    async with scripted(script) as (url, seen):
        await sse_events(url, headers={"Last-Event-ID": "0"}, backoff=NOW).collect()
    assert seen[1]["last-event-id"] == "7" and all(len(h.names) == len(set(h.names)) for h in seen)


async def test_a_given_client_is_used_and_left_open() -> None:
    """The caller's ``httpx.AsyncClient`` makes the requests (its default headers are sent) and stays open."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        await stream.send(NO_CONTENT)

    async with scripted(script) as (url, seen):
        async with httpx.AsyncClient(headers={"X-Client": "mine"}) as client:
            assert await sse_events(url, client=client).collect() == []
            assert not client.is_closed
    assert seen[0].get("x-client") == "mine"


async def test_an_id_seen_before_a_break_is_sent_on_reconnect() -> None:
    """The id of the last event dispatched before the stream broke is the next request's ``Last-Event-ID``."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        if n == 1:
            await stream.send(head() + chunk(b"id: 3\ndata: a\n\nid: 4\n"))  # broken inside the next event
        else:
            await stream.send(NO_CONTENT)

    async with scripted(script) as (url, seen):
        got = await sse_events(url, backoff=NOW).collect()
    assert got == [SSEEvent(data="a", id="3")]
    assert [h.get("last-event-id") for h in seen] == [None, "3"]  # an id counts once its event is dispatched


async def test_the_last_id_carries_over_to_the_next_connection() -> None:
    """The last event id of one connection is that of the next connection's events until the stream sets
    another, and is sent again on the connection after."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        bodies = {1: b"id: 7\ndata: a\n\n", 2: b"data: b\n\n"}
        if n in bodies:
            await whole(stream, bodies[n])
        else:
            await stream.send(NO_CONTENT)

    async with scripted(script) as (url, seen):
        got = await sse_events(url, backoff=NOW).collect()
    assert got == [SSEEvent(data="a", id="7"), SSEEvent(data="b", id="7")]
    assert [h.get("last-event-id") for h in seen] == [None, "7", "7"]


@pytest.mark.parametrize(
    ("status", "ctype", "message"),
    [
        ("201 Created", "text/event-stream", "HTTP 201, not retrying"),
        ("200 OK", "text/plain", "content type 'text/plain' is not text/event-stream"),
        ("200 OK", None, "content type '' is not text/event-stream"),
    ],
)
async def test_a_wrong_answer_raises_naming_the_url_and_is_not_retried(
    status: str, ctype: str | None, message: str
) -> None:
    """Any status but 200 and 204, or a content type other than ``text/event-stream``, raises at once."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        await stream.send(head(status, ctype) + LAST_CHUNK)
        await stream.receive()

    async with scripted(script) as (url, seen):
        stats = NetStats()
        with pytest.raises(SSEError) as info:
            await sse_events(url, backoff=NOW, stats=stats).collect()
    assert str(info.value) == f"{url}: {message}"
    assert len(seen) == 1 and stats.connections == 0 and stats.reconnects == 0


async def test_the_content_type_is_matched_without_parameters_or_case() -> None:
    """``Text/Event-Stream ; charset=utf-8`` is an event stream; a 204 on the first request ends with nothing."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        if n == 1:
            await stream.send(head(ctype="Text/Event-Stream ; charset=utf-8") + chunk(b"data: a\n\n") + LAST_CHUNK)
            await stream.receive()
        else:
            await stream.send(NO_CONTENT)

    async with scripted(script) as (url, _):
        assert [e.data for e in await sse_events(url, backoff=NOW).collect()] == ["a"]
    async with scripted(lambda n, stream: stream.send(NO_CONTENT)) as (url, seen):
        stats = NetStats()
        assert await sse_events(url, stats=stats).collect() == []
    assert len(seen) == 1 and stats.connections == 0


async def test_counters_over_breaks_a_clean_end_and_a_204() -> None:
    """Connections, bytes, events, reconnects, errors and partial events dropped (at each break and at a clean end
    of the body) are counted in the caller's stats."""
    bodies = {1: b"data: a\n\ndata: cut", 2: b"data: b\n\ndata: cut again", 3: b"data: c\n\ndata: d\n\ndata: cut"}

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        if n in (1, 2):
            await stream.send(head() + chunk(bodies[n]))  # broken: no last chunk
        elif n == 3:
            await whole(stream, bodies[n])  # the body ends cleanly inside an event
        else:
            await stream.send(NO_CONTENT)

    async with scripted(script) as (url, _):
        stats = NetStats()
        got = await sse_events(url, backoff=Backoff(initial=0.0, maximum=0.0, max_attempts=5), stats=stats).collect()
    assert [e.data for e in got] == ["a", "b", "c", "d"]
    assert (stats.connections, stats.items, stats.reconnects, stats.errors) == (3, 4, 3, 2)
    assert stats.partial_dropped == 3 and stats.bytes_received == sum(len(b) for b in bodies.values())
    assert stats.last_error.startswith("RemoteProtocolError(")


async def test_gives_up_after_max_attempts_that_delivered_nothing() -> None:
    """Connections that end before any data are failures in a row: ``max_attempts`` requests, then ``SSEError``
    naming the URL and the count."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        await whole(stream, b"")

    async with scripted(script) as (url, seen):
        stats = NetStats()
        with pytest.raises(SSEError) as info:
            await sse_events(url, backoff=NOW, stats=stats).collect()
    assert str(info.value) == f"{url}: gave up after 3 reconnection attempts"
    assert len(seen) == 3 and (stats.connections, stats.reconnects, stats.errors) == (3, 2, 0)


async def test_connections_that_delivered_start_the_count_again() -> None:
    """A connection that received data and stayed up ``healthy_after`` resets the count: five such ends in a row
    with ``max_attempts=2`` do not give up."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        if n <= 5:
            await whole(stream, b"data: %d\n\n" % n)
        else:
            await stream.send(NO_CONTENT)

    backoff = Backoff(initial=0.0, maximum=0.0, max_attempts=2, healthy_after=0)
    async with scripted(script) as (url, seen):
        got = await sse_events(url, backoff=backoff).collect()
    assert [e.data for e in got] == ["1", "2", "3", "4", "5"] and len(seen) == 6


async def test_the_line_cap_is_the_one_given() -> None:
    """``max_line_chars`` bounds each line of the stream: a line of exactly the cap is read, one more raises."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        if n == 1:
            await whole(stream, b"data: 1234\n\n")
        elif n == 2:
            await stream.send(NO_CONTENT)
        else:
            await whole(stream, b"data: 12345\n\n")

    async with scripted(script) as (url, _):
        assert [e.data for e in await sse_events(url, max_line_chars=10, backoff=NOW).collect()] == ["1234"]
        with pytest.raises(SSEError, match=r"^event-stream line longer than 10 characters"):
            await sse_events(url, max_line_chars=10, backoff=NOW).collect()


@VIRTUAL
async def test_the_default_first_wait_is_three_seconds_and_the_server_retry_is_kept() -> None:
    """Without a ``retry`` field the first reconnection waits ``backoff.initial`` (3 s by default); once the
    server sent ``retry``, every later first wait is that many milliseconds, on later connections too."""
    connected: list[float] = []
    ended: list[float] = []

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        connected.append(anyio.current_time())
        bodies = {1: b"data: a\n\n", 2: b"retry: 250\ndata: b\n\n", 3: b"data: c\n\n", 4: b"data: d\n\n"}
        await stream.send(head() + chunk(bodies[n]) + LAST_CHUNK)
        ended.append(anyio.current_time())

    async with scripted(script) as (url, _):
        backoff = Backoff(initial=3.0, exact_first=True, healthy_after=0)  # the default, healthy at once
        got = [e.data for e in await (sse_events(url, backoff=backoff) | take(4)).collect()]
        assert sse_events(url).backoff.initial == 3.0
    assert got == ["a", "b", "c", "d"]
    waits = [connected[i + 1] - ended[i] for i in range(3)]
    assert waits == pytest.approx([3.0, 0.25, 0.25], abs=1e-6)


@VIRTUAL
async def test_read_timeout_applies_to_each_chunk_exactly() -> None:
    """A stream that stalls is given up ``read_timeout`` after its last chunk, counted as an error
    (``ReadTimeout``), and requested again after the first wait, with the last id."""
    connected: list[float] = []
    release = anyio.Event()

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        connected.append(anyio.current_time())
        if n == 1:
            await stream.send(head() + chunk(b"id: 1\ndata: a\n\n"))
            await release.wait()  # stall: no bytes at all
        else:
            await stream.send(NO_CONTENT)

    async with scripted(script) as (url, seen):
        stats = NetStats()
        backoff = Backoff(initial=1.0, exact_first=True)
        with anyio.fail_after(20):
            got = await sse_events(url, read_timeout=2.5, backoff=backoff, stats=stats).collect()
        release.set()
    assert [e.data for e in got] == ["a"] and seen[1].get("last-event-id") == "1"
    assert connected[1] - connected[0] == pytest.approx(3.5, abs=1e-6)
    assert stats.errors == 1 and stats.last_error.startswith("ReadTimeout(")


@VIRTUAL
async def test_connect_timeout_bounds_each_connection_attempt() -> None:
    """``connect_timeout`` bounds the connection itself: a server whose accept queue is full fails the attempt
    that long after it started (a ``ConnectTimeout``, counted)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname()):  # fills the queue: later connections hang
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/events"
            stats = NetStats()
            t0 = anyio.current_time()
            with anyio.fail_after(20), pytest.raises(SSEError, match=r"gave up after 1 reconnection attempts"):
                await sse_events(url, connect_timeout=2.5, backoff=Backoff(max_attempts=1), stats=stats).collect()
            assert anyio.current_time() - t0 == pytest.approx(2.5, abs=1e-6)
    assert stats.errors == 1 and stats.last_error.startswith("ConnectTimeout(")
