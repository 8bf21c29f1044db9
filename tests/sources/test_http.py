"""HTTP sources: streamed bytes, lines, NDJSON and polling, against uvicorn and raw listeners."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from talkpipe_async import Pipeline
from talkpipe_async.sources.http import MalformedRecord, http_bytes, http_lines, http_ndjson, http_poll
from talkpipe_async.sources.sockets import ConnectionLost, LineTooLong, NetStats
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



@pytest.fixture(scope="module")
def app() -> Iterator[tuple[AppServer, AppState]]:
    state = AppState()
    with AppServer(make_app(state)) as server:
        yield server, state


async def test_lines_from_a_streaming_response(app: tuple[AppServer, AppState]) -> None:
    server, _ = app
    got = await Pipeline(http_lines(server.url("/lines?n=95"))).collect()
    assert got == [f"line {i}" for i in range(95)]


async def test_bytes_are_the_whole_body(app: tuple[AppServer, AppState]) -> None:
    server, _ = app
    got = await Pipeline(http_bytes(server.url("/lines?n=20"))).collect()
    assert b"".join(got) == "".join(f"line {i}\n" for i in range(20)).encode()


async def test_ndjson_error_policies_with_line_numbers(app: tuple[AppServer, AppState]) -> None:
    server, _ = app
    with pytest.raises(MalformedRecord) as info:
        await Pipeline(http_ndjson(server.url("/ndjson"))).collect()
    assert info.value.line_number == 2 and info.value.line == b"{not json"
    assert "line 2" in str(info.value)

    stats = NetStats()
    got = await Pipeline(http_ndjson(server.url("/ndjson"), on_error="skip", stats=stats)).collect()
    assert got == [{"n": 1, "text": "a\u2028b"}, {"n": 3}, {"n": 5}]  # U+2028 inside a string does not split
    assert stats.malformed == 1

    dead: list[MalformedRecord] = []
    got = await Pipeline(http_ndjson(server.url("/ndjson"), on_error=dead.append)).collect()
    assert len(got) == 3 and [d.line_number for d in dead] == [2]


async def test_status_error_raises(app: tuple[AppServer, AppState]) -> None:
    server, _ = app
    with pytest.raises(httpx.HTTPStatusError, match="404"):
        await Pipeline(http_lines(server.url("/status/404"))).collect()


async def test_early_break_returns_the_connection_to_the_pool(app: tuple[AppServer, AppState]) -> None:
    server, _ = app
    limits = httpx.Limits(max_connections=1)
    firsts = []
    async with httpx.AsyncClient(limits=limits) as client:
        for _ in range(3):  # with a leaked stream the second run would wait for the pool forever
            with anyio.fail_after(5):
                async with Pipeline(http_lines(server.url("/lines?n=100000"), client=client)).stream() as items:
                    async for line in items:
                        firsts.append(line)
                        break
    assert firsts == ["line 0"] * 3  # each run got the one pool slot back


async def test_poll_emits_only_what_is_new(app: tuple[AppServer, AppState]) -> None:
    server, state = app
    state.poll_version = 0
    state.poll_hits = 0
    source = http_poll(server.url("/poll"), 0.02, key=lambda e: e["id"])
    got: list[Any] = []
    async with Pipeline(source).stream() as items:
        async for element in items:
            got.append(element)
            if len(got) == 1:
                state.poll_version = 2  # two more elements appear
            if len(got) == 3:
                break
    assert got == [{"id": 0}, {"id": 1}, {"id": 2}]

    state.poll_version = 0
    state.poll_hits = 0
    source = http_poll(server.url("/poll"), 0.02)  # whole documents when changed (ETag / hash)
    docs: list[Any] = []
    async with Pipeline(source).stream() as items:
        async for doc in items:
            docs.append(doc)
            if len(docs) == 1:
                state.poll_bump_at = 4  # polls 2 and 3 are unchanged (304), poll 4 sees a new version
            if len(docs) == 2:
                break
    assert docs == [[{"id": 0}], [{"id": 0}, {"id": 1}]]
    assert state.poll_hits == 4


async def test_poll_retries_transport_errors_then_raises_on_4xx() -> None:
    hits = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal hits
        hits += 1
        await read_request(stream)
        if hits == 1:
            return  # connection closed without a response
        if hits == 2:
            body = json.dumps({"ok": True}).encode()
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        await stream.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    async with raw_server(handler) as port:
        stats = NetStats()
        got: list[Any] = []
        with pytest.raises(httpx.HTTPStatusError, match="403"):
            async with Pipeline(http_poll(f"http://127.0.0.1:{port}/", 0.01, stats=stats)).stream() as items:
                async for doc in items:
                    got.append(doc)
    assert got == [{"ok": True}]
    assert stats.errors == 1


async def _midline_handler(stream: anyio.abc.SocketStream) -> None:
    await read_request(stream)
    await stream.send(chunked_head("text/plain") + chunk(b"one\ntwo\nthr"))
    # close without the last chunk: a broken body


async def test_mid_line_disconnect_raises_clearly() -> None:
    async with raw_server(_midline_handler) as port:
        got: list[str] = []
        stats = NetStats()
        with pytest.raises(ConnectionLost, match="stream broken after 11 bytes"):
            async with Pipeline(http_lines(f"http://127.0.0.1:{port}/", stats=stats)).stream() as items:
                async for line in items:
                    got.append(line)
    assert got == ["one", "two"]  # the partial "thr" is never delivered


async def test_mid_line_disconnect_reconnects_when_asked() -> None:
    calls = 0

    async def handler(stream: anyio.abc.SocketStream) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await _midline_handler(stream)
            return
        await read_request(stream)
        await stream.send(chunked_head("text/plain") + chunk(b"four\nfive") + LAST_CHUNK)
        await stream.receive()

    async with raw_server(handler) as port:
        stats = NetStats()
        source = http_lines(f"http://127.0.0.1:{port}/", on_disconnect="reconnect", backoff=FAST, stats=stats)
        got = await Pipeline(source).collect()
    assert got == ["one", "two", "four", "five"]  # "thr" dropped, the complete body's last line kept
    assert stats.partial_dropped == 1 and stats.reconnects == 1


async def test_stall_read_timeout_per_chunk() -> None:
    release = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream)
        await stream.send(chunked_head("text/plain") + chunk(b"a\n"))
        await release.wait()

    async with raw_server(handler) as port:
        with pytest.raises(ConnectionLost, match="ReadTimeout"):
            await Pipeline(http_lines(f"http://127.0.0.1:{port}/", read_timeout=0.2)).collect()
        release.set()


async def test_huge_line_without_newline_is_bounded() -> None:
    handler = EndlessLine("application/x-ndjson")
    async with raw_server(handler) as port:
        with pytest.raises(LineTooLong):
            await Pipeline(http_ndjson(f"http://127.0.0.1:{port}/", max_line_bytes=1 << 20)).collect()
    assert handler.sent < 64 << 20


async def test_overlong_lines_skipped_and_counted() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream)
        body = b"short\n" + b"y" * 5000 + b"\nafter\n" + b"z" * 3000
        await stream.send(chunked_head("text/plain") + chunk(body[:2500]) + chunk(body[2500:]) + LAST_CHUNK)
        await stream.receive()

    async with raw_server(handler) as port:
        stats = NetStats()
        source = http_lines(f"http://127.0.0.1:{port}/", max_line_bytes=1000, on_overlong="skip", stats=stats)
        got = await Pipeline(source).collect()
    assert got == ["short", "after"]
    assert stats.dropped_lines == 2


@pytest.mark.parametrize("size", [1, 3, 1000])
async def test_ndjson_line_numbers_count_the_blank_lines_before_a_bad_one(size: int) -> None:
    body = b'\n\r\n{"a": 1}\n\n{bad\n{"b": 2}\n'  # lines 1, 2 and 4 blank; line 5 is not JSON

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream)
        chunks = b"".join(chunk(body[i : i + size]) for i in range(0, len(body), size))
        await stream.send(chunked_head("application/x-ndjson") + chunks + LAST_CHUNK)
        await stream.receive()

    async with raw_server(handler) as port:
        dead: list[MalformedRecord] = []
        got = await http_ndjson(f"http://127.0.0.1:{port}/", on_error=dead.append).collect()
    assert got == [{"a": 1}, {"b": 2}]
    assert [(d.line_number, d.line) for d in dead] == [(5, b"{bad")]
