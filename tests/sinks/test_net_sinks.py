"""Network sinks: sockets, stdout, HTTP POST batches, and pipelines served as streaming responses."""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from talkpipe_async import Flush, Pipeline, source
from talkpipe_async.sinks.net import DeliveryFailed, to_http, to_stdout, to_tcp, to_unix
from talkpipe_async.sinks.web import PipelineResponse, sse_format, streaming_response
from talkpipe_async.sources.sockets import Backoff, ConnectionLost, NetStats, unix_server_lines
from talkpipe_async.sources.sse import SSEParser
from tests.helpers.net import FAST, AppServer, AppState, make_app, raw_server

pytestmark = pytest.mark.anyio


# --- socket and stdout sinks -----------------------------------------------------------------


async def test_to_tcp_jsonl_groups_and_flush() -> None:
    received = bytearray()
    chunks: list[bytes] = []
    done = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        try:
            while True:
                data = await stream.receive()
                chunks.append(data)
                received.extend(data)
        except anyio.EndOfStream:
            done.set()

    items = [{"n": 1}, {"n": 2}, Flush(), {"n": 3}, {"n": 4}, {"n": 5}, {"n": 6}]
    async with raw_server(handler) as port:
        stats = NetStats()
        out = await Pipeline(to_tcp("127.0.0.1", port, format="jsonl", flush_every=3, stats=stats)).collect(
            items, metadata=True
        )
        with anyio.fail_after(5):
            await done.wait()
    assert out == items  # passed through, metadata in place
    assert [json.loads(x) for x in received.decode().splitlines()] == [{"n": i} for i in range(1, 7)]
    assert stats.bytes_sent == len(received) and stats.items == 6


async def test_to_tcp_jsonl_escapes_the_line_separators() -> None:
    received = bytearray()
    done = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        try:
            while True:
                received.extend(await stream.receive())
        except anyio.EndOfStream:
            done.set()

    async with raw_server(handler) as port:
        await Pipeline(to_tcp("127.0.0.1", port, format="jsonl")).collect(SEPARATED)
        with anyio.fail_after(5):
            await done.wait()
    text = received.decode()
    assert [json.loads(line) for line in text.splitlines()] == SEPARATED  # str.splitlines splits on U+2028 too
    assert "\u2028" not in text and "ü" in text


async def test_to_tcp_reconnects_after_the_peer_resets_and_goes_on() -> None:
    import socket
    import struct

    first_closed = anyio.Event()
    done = anyio.Event()
    seen: list[list[str]] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        lines: list[str] = []
        seen.append(lines)
        buf = b""
        try:
            while True:
                buf += await stream.receive()
                *complete, buf = buf.split(b"\n")
                lines.extend(x.decode() for x in complete)
                if len(seen) == 1 and lines:  # the first connection: reset it after its first line
                    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    await anyio.aclose_forcefully(stream)
                    first_closed.set()
                    return
        except anyio.EndOfStream:
            done.set()

    @source
    async def numbers() -> AsyncIterator[str]:
        yield "0"
        await first_closed.wait()
        for i in range(1, 100):
            yield str(i)

    stats = NetStats()
    async with raw_server(handler) as port:
        sink = to_tcp("127.0.0.1", port, reconnect=True, backoff=FAST, stats=stats)
        with anyio.fail_after(10):
            out = await (numbers() | sink).collect()
            await done.wait()
    assert out == [str(i) for i in range(100)]
    assert stats.reconnects >= 1 and stats.errors >= 1
    assert seen[0] == ["0"]
    tail = [int(x) for x in seen[-1]]
    assert tail == list(range(tail[0], 100)) and tail[0] <= 2, tail  # in order; what a reset socket took is lost


async def test_to_tcp_without_reconnect_raises_and_with_it_gives_up_in_the_end() -> None:
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()  # nothing listens there now
        with pytest.raises(OSError):
            await Pipeline(to_tcp("127.0.0.1", port)).collect(["a"])
        stats = NetStats()
        with pytest.raises(ConnectionLost, match="gave up after 5 attempts"):
            await Pipeline(to_tcp("127.0.0.1", port, reconnect=True, backoff=FAST, stats=stats)).collect(["a"])
        assert stats.errors == 5


async def test_to_unix_to_a_unix_server_source() -> None:
    directory = tempfile.mkdtemp(prefix="tp")
    path = os.path.join(directory, "k.sock")
    got: list[str] = []
    ready = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def serve() -> None:
            async with Pipeline(unix_server_lines(path, on_listening=lambda _: ready.set())).stream() as lines:
                async for line in lines:
                    got.append(line)
                    if len(got) == 3:
                        return

        tg.start_soon(serve)
        await ready.wait()
        await Pipeline(to_unix(path)).collect(["x", 2, b"raw"])
    assert got == ["x", "2", "raw"]
    os.rmdir(directory)


async def test_to_stdout_writes_lines() -> None:
    buf = io.StringIO()
    await Pipeline(to_stdout(file=buf, flush_every=2)).collect(["a", "b", "c"])
    assert buf.getvalue() == "a\nb\nc\n"
    buf = io.StringIO()
    await Pipeline(to_stdout(file=buf, format="jsonl")).collect([{"k": "é"}])
    assert buf.getvalue() == '{"k": "é"}\n'


# --- HTTP POST batches -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[AppServer, AppState]]:
    state = AppState()
    with AppServer(make_app(state)) as server:
        yield server, state


async def test_post_batches_with_retry(app: tuple[AppServer, AppState]) -> None:
    server, state = app
    state.posted.clear()
    state.fail_posts = 2  # two 503s with Retry-After: 0, then success
    stats = NetStats()
    sink = to_http(server.url("/ingest"), batch_size=3, backoff=Backoff(0.01, max_attempts=5), stats=stats)
    out = await Pipeline(sink).collect(list(range(7)))
    assert out == list(range(7))
    assert state.posted == [[0, 1, 2], [3, 4, 5], [6]]
    assert stats.errors == 2 and stats.items == 7

    state.posted.clear()
    sink = to_http(server.url("/ingest"), batch_size=10, format="ndjson")
    out = await Pipeline(sink).collect([{"a": 1}, Flush(), {"a": 2}], metadata=True)
    assert out == [{"a": 1}, Flush(), {"a": 2}]
    assert state.posted == [[{"a": 1}], [{"a": 2}]]  # the Flush sent the first batch early


async def test_post_batches_failures(app: tuple[AppServer, AppState]) -> None:
    server, state = app
    with pytest.raises(httpx.HTTPStatusError, match="400"):
        await Pipeline(to_http(server.url("/reject"))).collect([1])
    state.fail_posts = 10
    with pytest.raises(DeliveryFailed) as info:
        await Pipeline(to_http(server.url("/ingest"), backoff=Backoff(0.01, max_attempts=3))).collect([1, 2])
    assert info.value.items == [1, 2]
    state.fail_posts = 0


# --- streaming responses ---------------------------------------------------------------------


class Probe:
    """What the endless source saw, read from the test's thread."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = threading.Event()


PROBE = Probe()


@source
async def numbers(n: int) -> AsyncIterator[dict[str, int]]:
    for i in range(n):
        yield {"i": i}


@source
async def endless() -> AsyncIterator[str]:
    try:
        while True:
            PROBE.produced += 1
            yield "p" * 1024
    finally:
        PROBE.closed.set()


#: records whose strings hold the two characters that line readers take for line ends
SEPARATED = [{"i": 0, "text": "a\u2028b"}, {"i": 1, "text": "c\u2029d", "é": "ü"}, {"i": 2}]


@source
async def separated() -> AsyncIterator[dict[str, Any]]:
    for record in SEPARATED:
        yield record


@source
async def failing() -> AsyncIterator[int]:
    yield 1
    raise ValueError("boom in the pipeline")


def web_app() -> Starlette:
    async def ndjson(request: Request) -> PipelineResponse:
        return streaming_response(Pipeline(numbers(n=int(request.query_params["n"]))))

    async def sse(request: Request) -> PipelineResponse:
        pipeline = numbers(n=3) | Pipeline(lambda xs: xs)
        return streaming_response(pipeline, format="sse", id_of=lambda x: x["i"], retry=50)

    async def forever(request: Request) -> PipelineResponse:
        return streaming_response(Pipeline(endless()), serializer=str)

    async def broken(request: Request) -> PipelineResponse:
        fmt = request.query_params["format"]
        return streaming_response(Pipeline(failing()), format=fmt)

    async def separators(request: Request) -> PipelineResponse:
        return streaming_response(Pipeline(separated()))

    return Starlette(
        routes=[
            Route("/ndjson", ndjson),
            Route("/sse", sse),
            Route("/forever", forever),
            Route("/broken", broken),
            Route("/separators", separators),
        ]
    )


@pytest.fixture(scope="module")
def web() -> Iterator[AppServer]:
    with AppServer(web_app()) as server:
        yield server


async def test_ndjson_response(web: AppServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(web.url("/ndjson?n=50"))
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(x) for x in response.text.splitlines()] == [{"i": i} for i in range(50)]


async def test_ndjson_response_survives_a_line_reader_that_splits_on_u2028(web: AppServer) -> None:
    async with httpx.AsyncClient() as client, client.stream("GET", web.url("/separators")) as response:
        lines = [line async for line in response.aiter_lines()]  # splits on U+2028/U+2029 too
    assert [json.loads(line) for line in lines] == SEPARATED
    async with httpx.AsyncClient() as client:
        body = (await client.get(web.url("/separators"))).content
    assert b"\\u2028" in body and b"\\u2029" in body and "é".encode() in body  # escaped; the rest stays UTF-8


async def test_sse_response_parses_back(web: AppServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(web.url("/sse"))
    assert response.headers["content-type"].startswith("text/event-stream")
    parser = SSEParser()
    events = parser.feed(response.content)
    assert [json.loads(e.data) for e in events] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [e.id for e in events] == ["0", "1", "2"] and parser.retry == 50


def test_sse_format_multiline() -> None:
    assert sse_format("a\nb", event="x", id="7") == b"id: 7\nevent: x\ndata: a\ndata: b\n\n"
    with pytest.raises(ValueError):
        sse_format("a", id="bad\nid")


async def test_pipeline_errors_are_visible_to_the_client(web: AppServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(web.url("/broken?format=sse"))
        events = SSEParser().feed(response.content)
        assert [e.event for e in events] == ["message", "pipeline-error"]  # an "error" event would be onerror
        assert "boom in the pipeline" in events[1].data
        with pytest.raises(httpx.RemoteProtocolError):  # NDJSON: a broken body, never a silently short one
            await client.get(web.url("/broken?format=ndjson"))


async def test_backpressure_each_item_waits_for_the_send_before_the_next_is_pulled() -> None:
    PROBE.produced = 0
    PROBE.closed.clear()
    sent, arrived = anyio.create_memory_object_stream[dict[str, Any]](0)  # a client that reads when the test says
    disconnect = anyio.Event()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    response = streaming_response(Pipeline(endless()), serializer=str)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(response, scope, receive, sent.send)
            assert (await arrived.receive())["type"] == "http.response.start"
            for n in range(1, 4):
                assert (await arrived.receive())["body"].startswith(b"p")
                while arrived.statistics().tasks_waiting_send == 0:  # the next item is waiting in send()
                    await anyio.sleep(0.001)
                assert PROBE.produced == n + 1  # exactly one item beyond what the client took
            disconnect.set()  # the client goes away: the run is cancelled and every stage closed
    assert PROBE.closed.is_set() and response.disconnected and response.items_sent == 3


async def test_a_client_that_leaves_closes_the_pipeline(web: AppServer) -> None:
    PROBE.produced = 0
    PROBE.closed.clear()
    async with httpx.AsyncClient() as client:
        async with client.stream("GET", web.url("/forever")) as response:
            first = await response.aiter_raw().__anext__()
            assert first.startswith(b"p")
        # leaving the block closes the connection: the server sees the disconnect and closes the pipeline
    assert await anyio.to_thread.run_sync(PROBE.closed.wait, 5), "the server's pipeline was not closed"




async def test_sse_error_and_end_events_are_configurable() -> None:
    async def broken(request: Request) -> PipelineResponse:
        return streaming_response(
            Pipeline(failing()), format="sse", error_event="oops", end_event="done", end_id="fin", id_of=str
        )

    app = Starlette(routes=[Route("/", broken)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        events = SSEParser().feed((await client.get("http://local/")).content)
    assert [(e.event, e.id) for e in events] == [("message", "1"), ("oops", "1"), ("done", "fin")]
    assert events[1].data == "ValueError: boom in the pipeline"
    assert json.loads(events[2].data) == {"items": 1, "failed": True}
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        streaming_response(Pipeline(failing()), format="sse", end_event="two\nlines")
