"""Server-Sent Events: the WHATWG parser and the reconnecting source."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from talkpipe_async import Pipeline
from talkpipe_async.operators import take
from talkpipe_async.sources.sockets import Backoff, NetStats
from talkpipe_async.sources.sse import SSEError, SSEEvent, SSEParser, sse_events
from tests.helpers.net import (
    FAST,
    LAST_CHUNK,
    AppServer,
    AppState,
    EndlessLine,
    chunk,
    chunked_head,
    make_app,
    raw_server,
    read_request,
)

pytestmark = pytest.mark.anyio



def parse(*chunks: bytes) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for c in chunks:
        events += parser.feed(c)
    return events, parser


# --- the parser ------------------------------------------------------------------------------


def test_basic_event_and_type() -> None:
    events, _ = parse(b"event: tick\ndata: hello\n\n")
    assert events == [SSEEvent("tick", "hello", "")]


def test_bom_stripped_once_even_split() -> None:
    events, _ = parse(b"\xef\xbb", b"\xbfdata: a\n\n")
    assert events == [SSEEvent(data="a")]
    events, _ = parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n")  # a second BOM is part of the field name
    assert events == []


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_line_endings(eol: bytes) -> None:
    events, _ = parse(b"data: a" + eol + b"data: b" + eol + eol)
    assert events == [SSEEvent(data="a\nb")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    events, _ = parse(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n")
    assert events == [SSEEvent(data="a\nb")]


def test_lone_cr_then_lf_in_next_chunk_only_skipped_once() -> None:
    # "\r" ends a line; the "\n" right after it is part of the same line end; the second "\n" is a blank line
    events, _ = parse(b"data: a\r", b"\n", b"\n")
    assert events == [SSEEvent(data="a")]


def test_comments_ignored() -> None:
    events, _ = parse(b": heartbeat\n:\ndata: x\n: in the middle\n\n")
    assert events == [SSEEvent(data="x")]


def test_multiline_data_and_value_space_rules() -> None:
    events, _ = parse(b"data:no-space\ndata:  two-spaces\ndata\n\n")
    assert events == [SSEEvent(data="no-space\n two-spaces\n")]


def test_id_kept_across_events_and_nul_ignored() -> None:
    events, parser = parse(b"id: 1\ndata: a\n\ndata: b\n\nid: bad\x00id\ndata: c\n\n")
    assert [e.id for e in events] == ["1", "1", "1"]
    assert parser.last_event_id == "1"
    events, _ = parse(b"id: 7\ndata: a\n\nid\ndata: b\n\n")  # an empty id resets it
    assert [e.id for e in events] == ["7", ""]


def test_id_without_data_still_updates_last_event_id() -> None:
    _, parser = parse(b"id: 42\n\n")
    assert parser.last_event_id == "42"


def test_retry_digits_only() -> None:
    _, parser = parse(b"retry: 250\n\n")
    assert parser.retry == 250
    for bad in (b"retry: 1.5\n\n", b"retry: -3\n\n", b"retry: \n\n", b"retry: 12a\n\n", "retry: \u0663\n\n".encode()):
        _, parser = parse(bad)
        assert parser.retry is None, bad


def test_incomplete_final_event_dropped() -> None:
    events, _ = parse(b"data: a\n\ndata: b\n")
    assert events == [SSEEvent(data="a")]
    events, _ = parse(b"data: a\n\ndata: partial")
    assert events == [SSEEvent(data="a")]


def test_unknown_fields_and_event_reset() -> None:
    events, _ = parse(b"event: x\nfoo: bar\ndata: 1\n\ndata: 2\n\n")
    assert events == [SSEEvent("x", "1"), SSEEvent("message", "2")]


def test_event_without_data_not_dispatched_and_type_reset() -> None:
    events, _ = parse(b"event: x\n\ndata: 2\n\n")
    assert events == [SSEEvent("message", "2")]


def test_invalid_utf8_replaced() -> None:
    events, _ = parse(b"data: \xff\xfe ok\n\n")
    assert events == [SSEEvent(data="\ufffd\ufffd ok")]


def test_line_cap_bounds_memory() -> None:
    parser = SSEParser(max_line_chars=1000)
    with pytest.raises(SSEError, match="longer than 1000"):
        for _ in range(100):
            parser.feed(b"data: " + b"x" * 100)
    parser = SSEParser(max_line_chars=1000)
    with pytest.raises(SSEError, match="event data longer"):
        for _ in range(100):
            parser.feed(b"data: " + b"x" * 100 + b"\n")


STREAM = (
    b"\xef\xbb\xbf: comment\r\nretry: 30\r\nid: 1\r\nevent: a\r\ndata: x\r\ndata: y\r\n\r\n"
    b"data: z\n\nid: 2\rdata: w\r\rid: \x00\ndata: v\n\n: end\ndata: dangling"
)
EXPECTED = [
    SSEEvent("a", "x\ny", "1"),
    SSEEvent("message", "z", "1"),
    SSEEvent("message", "w", "2"),
    SSEEvent("message", "v", "2"),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    events, parser = parse(*pieces)
    assert events == EXPECTED
    assert parser.retry == 30
    assert parser.last_event_id == "2"


# --- the source against a real uvicorn + Starlette server --------------------------------------------------


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[AppServer, AppState]]:
    state = AppState()
    with AppServer(make_app(state)) as server:
        yield server, state


async def test_reconnects_with_last_event_id_after_mid_line_disconnect(app: tuple[AppServer, AppState]) -> None:
    server, state = app
    state.last_event_ids.clear()
    stats = NetStats()
    source = sse_events(server.url("/sse?n=6&drop_after=3"), backoff=FAST, stats=stats)
    got = await Pipeline(source).collect()
    assert [e.data for e in got] == [f"event {i}" for i in range(1, 7)]  # the partial "cut in the mid" is dropped
    assert [e.id for e in got] == [str(i) for i in range(1, 7)]
    assert state.last_event_ids == [None, "3", "6"]  # reconnect after the cut, then after EOF -> 204 ends it
    assert stats.partial_dropped >= 1
    assert stats.reconnects == 2


async def test_user_client_and_204_stops(app: tuple[AppServer, AppState]) -> None:
    server, _ = app
    async with httpx.AsyncClient() as client:
        got = await Pipeline(sse_events(server.url("/sse?n=3"), client=client, last_event_id="1")).collect()
        assert [e.id for e in got] == ["2", "3"]
        assert not client.is_closed  # a shared client stays open


@pytest.mark.parametrize("path", ["/status/404", "/status/500", "/wrong-type"])
async def test_fails_without_retry(app: tuple[AppServer, AppState], path: str) -> None:
    server, _ = app
    stats = NetStats()
    with pytest.raises(SSEError, match=r"HTTP|content type"):
        await Pipeline(sse_events(server.url(path), backoff=FAST, stats=stats)).collect()
    assert stats.reconnects == 0


# --- fault injection with raw listeners (every backend) ----------------------------------------------


async def test_stall_times_out_per_chunk_and_reconnects() -> None:
    seen: list[str | None] = []
    release = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        headers = await read_request(stream)
        seen.append(headers.get("last-event-id"))
        await stream.send(chunked_head("text/event-stream"))
        if len(seen) == 1:
            await stream.send(chunk(b"id: a\ndata: 1\n\n"))
            await release.wait()  # stall: no bytes at all
        else:
            await stream.send(chunk(b"id: b\ndata: 2\n\n") + LAST_CHUNK)
            await stream.receive()  # wait for the client to hang up

    async with raw_server(handler) as port:
        stats = NetStats()
        source = sse_events(f"http://127.0.0.1:{port}/", read_timeout=0.3, backoff=FAST, stats=stats)
        async with Pipeline(source).stream() as items:
            got = []
            async for event in items:
                got.append(event)
                if len(got) == 2:
                    break
        release.set()
    assert [e.data for e in got] == ["1", "2"]
    assert seen == [None, "a"]
    assert "ReadTimeout" in stats.last_error


async def test_garbage_and_reset_then_gives_up() -> None:
    count = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal count
        count += 1
        await read_request(stream)
        await stream.send(b"\x00\xffgarbage, not HTTP\r\n\r\n")

    async with raw_server(handler) as port:
        source = sse_events(f"http://127.0.0.1:{port}/", backoff=Backoff(initial=0.01, max_attempts=3))
        with pytest.raises(SSEError, match="gave up after 3"):
            await Pipeline(source).collect()
    assert count == 3


async def test_backoff_resets_after_a_healthy_connection() -> None:
    delays: list[float] = []

    class Recording(Backoff):
        def delay(self, attempt: int, base: float | None = None, rng: Any = None) -> float:
            delays.append(attempt)
            return 0.0

    n = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal n
        n += 1
        await read_request(stream)
        await stream.send(chunked_head("text/event-stream"))
        if n in (1, 4):
            await stream.send(chunk(b"data: ok\n\n"))
        if n == 5:
            await stream.send(chunk(b"data: last\n\n"))
            await stream.send(LAST_CHUNK)
            await stream.receive()
            return
        # otherwise a reset without a final chunk

    async with raw_server(handler) as port:
        # healthy_after=0: a connection that delivered anything is healthy (the stable period is tested elsewhere)
        source = sse_events(f"http://127.0.0.1:{port}/", backoff=Recording(max_attempts=10, healthy_after=0))
        async with Pipeline(source).stream() as items:
            got = []
            async for event in items:
                got.append(event.data)
                if event.data == "last":
                    break
    assert got == ["ok", "ok", "last"]
    assert delays == [0, 1, 2, 0]  # after: productive, failed, failed, productive


async def test_one_gigabyte_without_newline_stays_bounded() -> None:
    handler = EndlessLine("text/event-stream")
    async with raw_server(handler) as port:
        source = sse_events(f"http://127.0.0.1:{port}/", max_line_chars=1 << 20, backoff=FAST)
        with pytest.raises(SSEError, match="longer than"):
            await Pipeline(source).collect()
    assert handler.sent < 64 << 20  # stopped long before a gigabyte


async def test_live_demo_reconnects_and_shuts_down(capsys: pytest.CaptureFixture[str]) -> None:
    from talkpipe_async._live_demo import run_live_demo

    with anyio.fail_after(10):
        await run_live_demo(6)
    out = capsys.readouterr().out
    assert out.count("event id=") == 6
    assert "Last-Event-ID: 3" in out and "1 reconnect(s)" in out


@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual")]
)
async def test_the_server_retry_is_milliseconds_exactly() -> None:
    ended: list[float] = []
    connected: list[float] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        connected.append(anyio.current_time())
        await read_request(stream)
        body = b"retry: 1500\nid: 1\ndata: a\n\n" if len(connected) == 1 else b"data: b\n\n"
        head = chunked_head("text/event-stream").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        await stream.send(head + chunk(body) + LAST_CHUNK)
        ended.append(anyio.current_time())

    backoff = Backoff(initial=99.0, jitter="none", exact_first=True)  # the first wait is the server's retry
    async with raw_server(handler) as port:
        source = sse_events(f"http://127.0.0.1:{port}/", backoff=backoff)
        got = [e.data for e in await (source | take(2)).collect()]  # virtual: only the wait takes time
    assert got == ["a", "b"]
    assert connected[1] - ended[0] == pytest.approx(1.5, abs=1e-6)  # 1500 ms, not 1500 s nor 1.5 ms
