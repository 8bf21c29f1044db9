"""The HTTP sources' exact promises: what is requested, what each error says, what is counted, how retries bound.

Every test talks to a raw anyio listener on 127.0.0.1 that scripts its answers, so a test can break a body after
a known number of bytes, answer with a chosen status, or record the request line and headers the source sent.
The tick spacing of ``http_poll`` and the read and connect timeouts run on trio's virtual clock, where only the
waits take time.
"""

from __future__ import annotations

import json
import logging
import socket
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from trio.testing import MockClock

from talkpipe_async import Backoff, Pipeline
from talkpipe_async._core._errors import TalkpipeAsyncError
from talkpipe_async.operators import take
from talkpipe_async.sources.http import MalformedRecord, http_bytes, http_lines, http_ndjson, http_poll
from talkpipe_async.sources.sockets import ConnectionLost, LineTooLong, NetStats
from tests.helpers.net import LAST_CHUNK, RawRequest, Script, chunk, chunked_head
from tests.helpers.net import scripted as net_scripted

pytestmark = pytest.mark.anyio

#: No wait between attempts: the tests count attempts, not time.
NOW = Backoff(initial=0.0, maximum=0.0, max_attempts=3)

def answer(status: str = "200 OK", body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """A whole response with a length, closing the connection after it."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    return head.encode() + body


def scripted(script: Script) -> AbstractAsyncContextManager[tuple[str, list[RawRequest]]]:
    """A raw server scripted per connection (see ``tests.helpers.net.scripted``), at ``/p``."""
    return net_scripted(script, "/p")


def replies(*bodies: bytes) -> Script:
    """A script that sends the n-th whole response (the last one again once they run out)."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        await stream.send(bodies[min(n, len(bodies)) - 1])

    return script


# --- settings ---------------------------------------------------------------------------------------------------


def test_stream_settings_defaults_and_validation() -> None:
    """Defaults: 60 s per chunk, 10 s to connect, raise on a broken stream, the default backoff, 1 MiB lines,
    raise on over-long lines, UTF-8 with replacement, the class name as the stage's name; every setting kept."""
    lines = http_lines("http://h/x")
    assert (lines.read_timeout, lines.connect_timeout, lines.on_disconnect) == (60.0, 10.0, "raise")
    assert lines.backoff == Backoff()
    assert (lines.max_line_bytes, lines.on_overlong) == (1 << 20, "raise")
    assert (lines.encoding, lines.errors) == ("utf-8", "replace")
    assert lines.label == "http_lines" and http_bytes("http://h/x").label == "http_bytes"
    assert isinstance(lines.stats, NetStats)
    stats = NetStats()
    backoff = Backoff(initial=1.0)
    given = http_lines(
        "http://h/x", read_timeout=None, connect_timeout=2.0, on_disconnect="reconnect", backoff=backoff,
        stats=stats, name="feed", max_line_bytes=7, on_overlong="skip", encoding="latin-1", errors="strict",
    )
    assert (given.read_timeout, given.connect_timeout, given.on_disconnect) == (None, 2.0, "reconnect")
    assert given.backoff is backoff and given.stats is stats and given.label == "feed"
    assert (given.max_line_bytes, given.on_overlong, given.encoding, given.errors) == (7, "skip", "latin-1", "strict")
    with pytest.raises(ValueError, match=r"^on_disconnect must be 'raise' or 'reconnect', not 'retry'$"):
        http_bytes("http://h/x", on_disconnect="retry")  # type: ignore[arg-type]
    assert http_ndjson("http://h/x").on_error == "raise"
    with pytest.raises(ValueError, match=r"^on_error must be 'raise', 'skip' or a callable, not 'drop'$"):
        http_ndjson("http://h/x", on_error="drop")  # type: ignore[arg-type]
    hook = print
    assert http_ndjson("http://h/x", on_error=hook).on_error is hook


def test_poll_settings_defaults_and_validation() -> None:
    """``http_poll``: JSON bodies, 100 000 remembered keys, 16 MiB bodies, 30 s timeout, retry on failure; an
    interval of 0 is refused."""
    poll = http_poll("http://h/x", 1.5)
    assert (poll.url, poll.interval, poll.decode, poll.key, poll.select) == ("http://h/x", 1.5, "json", None, None)
    assert (poll.remember, poll.max_body_bytes, poll.timeout, poll.on_failure) == (100_000, 16 << 20, 30.0, "retry")
    assert poll.headers == {} and poll.params == {} and poll.client is None
    assert poll.label == "http_poll" and isinstance(poll.stats, NetStats)
    stats = NetStats()
    given = http_poll(
        "http://h/x", 2, headers={"A": "1"}, params={"q": 1}, decode="text", remember=3, max_body_bytes=9,
        timeout=4.0, on_failure="raise", stats=stats, name="watch",
    )
    assert (given.headers, given.params, given.decode, given.remember) == ({"A": "1"}, {"q": 1}, "text", 3)
    assert (given.max_body_bytes, given.timeout, given.on_failure) == (9, 4.0, "raise")
    assert given.stats is stats and given.label == "watch"
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^interval must be positive$"):
            http_poll("http://h/x", bad)
    http_poll("http://h/x", 1e-9)


def test_malformed_record_names_source_and_line() -> None:
    """A ``MalformedRecord`` reads ``source: line N: message`` and keeps the first 200 bytes of the line."""
    err = MalformedRecord("bad", source="http://h/x", line_number=4, line=b"x" * 300)
    assert str(err) == "http://h/x: line 4: bad"
    assert (err.source, err.line_number, err.line) == ("http://h/x", 4, b"x" * 200)
    assert isinstance(err, ValueError) and isinstance(err, TalkpipeAsyncError)


# --- the streamed request ---------------------------------------------------------------------------------------


async def test_the_request_carries_method_headers_params_and_content() -> None:
    """The method, headers, query parameters and body given are what the server receives; by default a GET with
    no query string."""
    async with scripted(replies(answer(body=b"ok"))) as (url, seen):
        got = await http_bytes(
            url, method="POST", headers={"X-Token": "t1"}, params={"q": "a b"}, content=b"payload"
        ).collect()
        assert got == [b"ok"]
        assert await http_bytes(url).collect() == [b"ok"]
    posted, plain = seen
    assert posted.line == "POST /p?q=a+b HTTP/1.1" and posted["x-token"] == "t1" and posted.body == b"payload"
    assert plain.line == "GET /p HTTP/1.1" and plain.body == b""


async def test_a_given_client_is_used_and_left_open() -> None:
    """The caller's ``httpx.AsyncClient`` makes the requests (its default headers are sent) and stays open."""
    async with scripted(replies(answer(body=b"[1]"))) as (url, seen):
        async with httpx.AsyncClient(headers={"X-Client": "mine"}) as client:
            assert await http_bytes(url, client=client).collect() == [b"[1]"]
            assert await (http_poll(url, 1, client=client) | take(1)).collect() == [[1]]
            assert not client.is_closed
    assert [h.get("x-client") for h in seen] == ["mine", "mine"]


async def test_bytes_counts_chunks_bytes_and_connections_in_the_given_stats() -> None:
    """``http_bytes`` counts one item per chunk, every byte and the connection, in the caller's stats."""
    body = b"abc" * 1000
    async with scripted(replies(answer(body=body))) as (url, _):
        stats = NetStats()
        got = await http_bytes(url, stats=stats).collect()
    assert b"".join(got) == body
    assert stats.items == len(got) and stats.bytes_received == len(body) and stats.connections == 1
    assert stats.errors == 0 and stats.reconnects == 0


async def test_bytes_yields_each_chunk_as_it_arrives_and_counts_it() -> None:
    """Each chunk read is one item, counted as it is delivered; the whole body's bytes are counted."""
    more = anyio.Event()

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        await stream.send(chunked_head("application/octet-stream") + chunk(b"first"))
        await more.wait()  # the first chunk reached the consumer
        await stream.send(chunk(b"second") + LAST_CHUNK)
        await stream.receive()

    async with scripted(script) as (url, _):
        stats = NetStats()
        got: list[bytes] = []
        async with Pipeline(http_bytes(url, stats=stats)).stream() as items:
            async for data in items:
                got.append(data)
                more.set()
    assert got == [b"first", b"second"]
    assert (stats.items, stats.bytes_received, stats.connections) == (2, 11, 1)


async def test_a_status_error_names_method_url_and_status_and_is_not_retried() -> None:
    """A non-2xx answer raises ``HTTPStatusError`` naming the method, URL and status, even when reconnecting."""
    async with scripted(replies(answer("503 Service Unavailable"))) as (url, seen):
        stats = NetStats()
        with pytest.raises(httpx.HTTPStatusError) as info:
            await http_lines(url, method="PUT", on_disconnect="reconnect", backoff=NOW, stats=stats).collect()
    assert str(info.value) == f"PUT {url}: HTTP 503"
    assert info.value.response.status_code == 503 and info.value.request.method == "PUT"
    assert len(seen) == 1 and stats.connections == 0


async def test_a_broken_stream_names_the_bytes_received_over_several_chunks() -> None:
    """``on_disconnect="raise"``: ``ConnectionLost`` names the method, URL, every byte received and the error;
    the stats count the error and keep its repr."""
    more = anyio.Event()

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        await stream.send(chunked_head("text/plain") + chunk(b"one\ntw"))
        await more.wait()  # "one" reached the consumer: "tw" was held across reads
        await stream.send(chunk(b"o\nth"))  # then closed without the last chunk

    async with scripted(script) as (url, _):
        stats = NetStats()
        got: list[str] = []
        with pytest.raises(ConnectionLost) as info:
            async with Pipeline(http_lines(url, stats=stats)).stream() as items:
                async for line in items:
                    got.append(line)
                    more.set()
    assert got == ["one", "two"]
    assert str(info.value).startswith(f"GET {url}: stream broken after 10 bytes: RemoteProtocolError(")
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
    assert stats.errors == 1 and stats.last_error.startswith("RemoteProtocolError(")
    assert stats.bytes_received == 10 and stats.items == 2 and stats.connections == 1
    assert stats.partial_dropped == 1 and stats.reconnects == 0


async def test_reconnecting_gives_up_after_max_attempts_naming_the_last_error() -> None:
    """A stream that breaks before any data is a failure each time: ``max_attempts`` requests, then
    ``ConnectionLost`` naming the count and the last error."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        await stream.send(chunked_head("text/plain"))  # then closed: no data at all

    async with scripted(script) as (url, seen):
        stats = NetStats()
        with pytest.raises(ConnectionLost) as info:
            await http_bytes(url, on_disconnect="reconnect", backoff=NOW, stats=stats).collect()
    assert len(seen) == 3
    assert str(info.value).startswith(f"GET {url}: gave up after 3 attempts: RemoteProtocolError(")
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
    assert (stats.connections, stats.errors, stats.reconnects) == (3, 3, 2)


async def test_a_refused_connection_is_retried_then_names_zero_bytes() -> None:
    """A connection refused is a transport error like any other: raised at once, or retried up to the bound."""
    async with scripted(replies(answer())) as (url, _):
        pass  # the listener is closed: its port now refuses
    stats = NetStats()
    with pytest.raises(ConnectionLost, match=r"stream broken after 0 bytes: ConnectError\("):
        await http_bytes(url, stats=stats).collect()
    assert stats.errors == 1 and stats.connections == 0
    with pytest.raises(ConnectionLost, match=r"gave up after 3 attempts: ConnectError\("):
        await http_bytes(url, on_disconnect="reconnect", backoff=NOW, stats=stats).collect()
    assert stats.errors == 4 and stats.reconnects == 2


async def test_a_stream_that_delivered_and_stayed_up_starts_the_count_again() -> None:
    """Every break after data that stayed up ``healthy_after`` resets the failure count: four breaks in a row
    with ``max_attempts=2`` still end in the whole body; each break's partial line is dropped and counted, and a
    line of the new body held across reads is kept."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        if n <= 4:
            await stream.send(chunked_head("text/plain") + chunk(b"line %d\npartial" % n))
            return  # broken mid-line
        await stream.send(chunked_head("text/plain") + chunk(b"last\nen"))
        await more.wait()  # "last" reached the consumer: "en" is held across reads of the new body
        await stream.send(chunk(b"d") + LAST_CHUNK)
        await stream.receive()

    more = anyio.Event()
    backoff = Backoff(initial=0.0, maximum=0.0, max_attempts=2, healthy_after=0)
    async with scripted(script) as (url, seen):
        stats = NetStats()
        got = []
        async with Pipeline(http_lines(url, on_disconnect="reconnect", backoff=backoff, stats=stats)).stream() as items:
            async for line in items:
                got.append(line)
                if line == "last":
                    more.set()
    assert got == ["line 1", "line 2", "line 3", "line 4", "last", "end"]
    assert len(seen) == 5
    assert (stats.reconnects, stats.errors, stats.partial_dropped, stats.items) == (4, 4, 4, 6)


async def test_lines_decode_with_the_given_codec_and_policy() -> None:
    """Lines decode as UTF-8 with replacement by default; ``encoding`` and ``errors`` are used as given."""
    body = b"caf\xe9\nok\n"
    async with scripted(replies(answer(body=body))) as (url, _):
        assert await http_lines(url).collect() == ["caf\ufffd", "ok"]
        assert await http_lines(url, encoding="latin-1").collect() == ["caf\xe9", "ok"]
        with pytest.raises(UnicodeDecodeError):
            await http_lines(url, errors="strict").collect()


async def test_line_caps_name_the_stage_and_count_in_the_given_stats() -> None:
    """An over-long line raises ``LineTooLong`` naming the stage; skipped ones are counted in the caller's
    stats, with the lines delivered."""
    body = b"12345\n123456\nabc"
    async with scripted(replies(answer(body=body))) as (url, _):
        with pytest.raises(LineTooLong, match=r"^feed: line longer than 5 bytes"):
            await http_lines(url, max_line_bytes=5, name="feed").collect()
        with pytest.raises(LineTooLong, match=r"^http_ndjson: line longer than 5 bytes"):
            await http_ndjson(url, max_line_bytes=5).collect()
        stats = NetStats()
        got = await http_lines(url, max_line_bytes=5, on_overlong="skip", stats=stats).collect()
    assert got == ["12345", "abc"]
    assert stats.dropped_lines == 1 and stats.items == 2


# --- NDJSON -----------------------------------------------------------------------------------------------------

NDJSON = b'{"a": 1}\n \t\n{bad\n[2]\n' + b"{" * 250 + b"\n3\n"


def _json_error(text: bytes) -> str:
    try:
        json.loads(text)
    except ValueError as err:
        return str(err)
    raise AssertionError("valid JSON")


async def test_ndjson_malformed_record_names_url_line_and_error() -> None:
    """The error raised names the URL, the 1-based line number (blank lines counted) and the parser's message;
    it is counted in ``stats.malformed``, after the records before it."""
    async with scripted(replies(answer(body=NDJSON))) as (url, _):
        stats = NetStats()
        got: list[Any] = []
        with pytest.raises(MalformedRecord) as info:
            async with Pipeline(http_ndjson(url, stats=stats)).stream() as items:
                async for record in items:
                    got.append(record)
    assert got == [{"a": 1}]
    assert str(info.value) == f"{url}: line 3: {_json_error(b'{bad')}"
    assert (info.value.source, info.value.line_number, info.value.line) == (url, 3, b"{bad")
    assert stats.malformed == 1 and stats.items == 1


async def test_ndjson_hook_and_skip_see_every_malformed_record_and_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    """A callable receives each malformed record (the line cut to 200 bytes) and the stream goes on; ``skip``
    counts them and logs one warning naming the stage and the first error; blank lines are not records."""
    async with scripted(replies(answer(body=NDJSON))) as (url, _):
        dead: list[MalformedRecord] = []
        stats = NetStats()
        got = await http_ndjson(url, on_error=dead.append, stats=stats).collect()
        assert got == [{"a": 1}, [2], 3]
        assert [(d.line_number, d.line) for d in dead] == [(3, b"{bad"), (5, b"{" * 200)]
        assert stats.malformed == 2 and stats.items == 3
        stats = NetStats()
        with caplog.at_level(logging.WARNING, logger="talkpipe_async.net"):
            got = await http_ndjson(url, on_error="skip", stats=stats, name="feed").collect()
    assert got == [{"a": 1}, [2], 3]
    assert stats.malformed == 2 and stats.items == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "talkpipe_async.net"]
    first = f"{url}: line 3: {_json_error(b'{bad')}"
    assert warnings == [f"feed: skipping malformed records (counted in stats): {first}"]


# --- polling ----------------------------------------------------------------------------------------------------


async def test_poll_sends_validators_from_the_last_answer_with_the_callers_headers_and_params() -> None:
    """ETag and Last-Modified of an answer become If-None-Match and If-Modified-Since of the next request, next
    to the caller's headers and params, replacing validators the caller gave (each header sent once); a 304
    emits nothing; an answer without them clears them (the caller's are sent again)."""
    script = replies(
        answer(body=b"[1]", headers={"ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}),
        answer("304 Not Modified"),
        answer(body=b"[2]"),
        answer(body=b"[3]"),
    )
    async with scripted(script) as (url, seen):
        stats = NetStats()
        given = {"X-Token": "t", "If-None-Match": '"v0"', "If-Modified-Since": "Sun, 31 Dec 2023 00:00:00 GMT"}
        source = http_poll(url, 0.001, headers=given, params={"q": "1"}, stats=stats)
        got = await (source | take(3)).collect()
    assert got == [[1], [2], [3]]
    lines = [h.line for h in seen]
    assert lines[:4] == ["GET /p?q=1 HTTP/1.1"] * 4
    assert all(h["x-token"] == "t" for h in seen[:4])
    validators = [(h.get("if-none-match"), h.get("if-modified-since")) for h in seen[:4]]
    assert validators == [
        ('"v0"', "Sun, 31 Dec 2023 00:00:00 GMT"),
        ('"v1"', "Mon, 01 Jan 2024 00:00:00 GMT"),
        ('"v1"', "Mon, 01 Jan 2024 00:00:00 GMT"),
        ('"v0"', "Sun, 31 Dec 2023 00:00:00 GMT"),
    ]
    assert all(len(h.names) == len(set(h.names)) for h in seen[:4])
    assert stats.connections >= 4 and stats.items == 3 and stats.bytes_received >= 9


async def test_poll_without_validators_emits_a_body_only_when_it_changed() -> None:
    """With no ETag, an unchanged body (same bytes) is not emitted again; text and bytes decoding as asked."""
    script = replies(answer(body=b"a"), answer(body=b"a"), answer(body=b"b"), answer(body=b"b"), answer(body=b"a"))
    async with scripted(script) as (url, seen):
        stats = NetStats()
        got = await (http_poll(url, 0.001, decode="text", stats=stats) | take(3)).collect()
    assert got == ["a", "b", "a"] and len(seen) == 5
    assert stats.items == 3 and stats.bytes_received == 5 and stats.connections == 5
    async with scripted(replies(answer(body=b"\xff"))) as (url, _):
        assert await (http_poll(url, 0.001, decode="bytes") | take(1)).collect() == [b"\xff"]


async def test_poll_body_cap_is_inclusive() -> None:
    """A body of exactly ``max_body_bytes`` is read; one byte more raises, naming the URL and the cap, however
    many reads the body took."""
    async with scripted(replies(answer(body=b"[1, 2]"))) as (url, _):
        assert await (http_poll(url, 1, max_body_bytes=6) | take(1)).collect() == [[1, 2]]
        with pytest.raises(ValueError) as info:
            await (http_poll(url, 1, max_body_bytes=5) | take(1)).collect()
    assert str(info.value) == f"GET {url}: body larger than max_body_bytes=5"
    big = b'"' + b"x" * 199_998 + b'"'  # read in several pieces: the cap counts all of them
    async with scripted(replies(answer(body=big))) as (url, _):
        assert await (http_poll(url, 1, max_body_bytes=200_000) | take(1)).collect() == ["x" * 199_998]
        with pytest.raises(ValueError, match="body larger than max_body_bytes=199999"):
            await (http_poll(url, 1, max_body_bytes=199_999) | take(1)).collect()


async def test_poll_retries_5xx_and_transport_errors_at_the_next_tick(caplog: pytest.LogCaptureFixture) -> None:
    """A 500 and a dropped connection are counted and logged, and the next tick tries again; a 499 raises
    ``HTTPStatusError`` naming the URL."""

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        if n == 1:
            await stream.send(answer("500 Internal Server Error"))
        elif n == 2:
            return  # closed without an answer
        elif n == 3:
            await stream.send(answer(body=b'"ok"'))
        else:
            await stream.send(answer("499 Client Closed Request"))

    async with scripted(script) as (url, seen):
        stats = NetStats()
        got: list[Any] = []
        with caplog.at_level(logging.WARNING, logger="talkpipe_async.net"):
            with pytest.raises(httpx.HTTPStatusError) as info:
                async with Pipeline(http_poll(url, 0.001, stats=stats, name="watch")).stream() as items:
                    async for doc in items:
                        got.append(doc)
    assert got == ["ok"] and len(seen) == 4
    assert str(info.value) == f"GET {url}: HTTP 499"
    assert info.value.response.status_code == 499 and str(info.value.request.url) == url
    assert stats.errors == 2 and stats.connections == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "talkpipe_async.net"]
    assert len(warnings) == 2
    assert warnings[0] == f"watch: poll failed, retrying next tick: _Retryable('GET {url}: HTTP 500')"
    assert warnings[1].startswith("watch: poll failed, retrying next tick: RemoteProtocolError(")


async def test_poll_on_failure_raise_raises_the_5xx_and_the_transport_error() -> None:
    """``on_failure="raise"``: a 500 raises at once, naming the URL and status, counted in the stats."""
    async with scripted(replies(answer("500 Internal Server Error"))) as (url, seen):
        stats = NetStats()
        with pytest.raises(Exception) as info:
            await http_poll(url, 0.001, on_failure="raise", stats=stats).collect()
    assert str(info.value) == f"GET {url}: HTTP 500"
    assert not isinstance(info.value, httpx.HTTPStatusError)
    assert len(seen) == 1 and stats.errors == 1 and stats.last_error == f"_Retryable('GET {url}: HTTP 500')"

    async def drop(n: int, stream: anyio.abc.SocketStream) -> None:
        return

    async with scripted(drop) as (url, _):
        with pytest.raises(httpx.RemoteProtocolError):
            await http_poll(url, 0.001, on_failure="raise").collect()


async def test_poll_with_a_key_emits_unseen_elements_and_forgets_the_oldest() -> None:
    """With ``key``, each element whose key is new is emitted in order; only the last ``remember`` keys are kept,
    so the oldest one forgotten is emitted again; ``select`` picks the list out of the document."""
    docs = [{"items": [{"id": 1}, {"id": 2}, {"id": 3}]}, {"items": [{"id": 2}, {"id": 3}, {"id": 1}]}]
    script = replies(*(answer(body=json.dumps(d).encode()) for d in docs))
    async with scripted(script) as (url, _):
        stats = NetStats()
        source = http_poll(url, 0.001, key=lambda e: e["id"], select=lambda d: d["items"], remember=2, stats=stats)
        got = await (source | take(4)).collect()
    assert [e["id"] for e in got] == [1, 2, 3, 1]
    assert stats.items == 4


async def test_poll_with_a_key_refuses_a_document_that_is_not_a_list() -> None:
    """The elements must be a list: anything else raises ``TypeError`` naming the URL and the type."""
    async with scripted(replies(answer(body=b'{"a": 1}'))) as (url, _):
        with pytest.raises(TypeError) as info:
            await (http_poll(url, 1, key=lambda e: e) | take(1)).collect()
    assert str(info.value) == f"GET {url}: expected a JSON list of elements, got dict"


@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual")]
)
async def test_poll_ticks_are_spaced_start_to_start_and_an_overrun_is_not_made_up() -> None:
    """Requests start every ``interval`` from the first; a poll that takes longer than the interval delays the
    next one to its end, and the ticks it overran are skipped, not caught up; a poll started late by less than an
    interval keeps the grid."""
    started: list[float] = []
    t0 = anyio.current_time()

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        started.append(anyio.current_time() - t0)
        if n == 3:
            await anyio.sleep(2.0)  # this poll ends exactly when the tick after next is due
        if n == 5:
            await anyio.sleep(1.5)  # this one half an interval after the next tick
        await stream.send(answer(body=b"%d" % n))

    async with scripted(script) as (url, _):
        got = await (http_poll(url, 1.0) | take(7)).collect()
    assert got == [1, 2, 3, 4, 5, 6, 7]
    assert started == pytest.approx([0.0, 1.0, 2.0, 4.0, 5.0, 6.5, 7.0], abs=1e-3)


@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual")]
)
async def test_read_timeout_applies_to_each_chunk_exactly() -> None:
    """``read_timeout`` is the longest wait for the next chunk: a body that stalls after its first line is broken
    exactly that long after it, with ``ReadTimeout`` named."""
    release = anyio.Event()

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        await stream.send(chunked_head("text/plain") + chunk(b"a\n"))
        await release.wait()

    async with scripted(script) as (url, _):
        t0 = anyio.current_time()
        with anyio.fail_after(20), pytest.raises(ConnectionLost, match=r"stream broken after 2 bytes: ReadTimeout\("):
            await http_lines(url, read_timeout=2.5).collect()
        assert anyio.current_time() - t0 == pytest.approx(2.5, abs=1e-6)
        release.set()


@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual")]
)
async def test_a_poll_that_times_out_is_retried_when_it_ends() -> None:
    """``timeout`` bounds each poll: one that stalls fails that long after its start (counted, a ``ReadTimeout``),
    and the next poll, already due, starts at once."""
    started: list[float] = []
    release = anyio.Event()
    t0 = anyio.current_time()

    async def script(n: int, stream: anyio.abc.SocketStream) -> None:
        started.append(anyio.current_time() - t0)
        if n == 1:
            await release.wait()  # no answer at all
        await stream.send(answer(body=b"1"))

    async with scripted(script) as (url, _):
        stats = NetStats()
        with anyio.fail_after(20):
            assert await (http_poll(url, 1.0, timeout=2.5, stats=stats) | take(1)).collect() == [1]
        release.set()
    assert started == pytest.approx([0.0, 2.5], abs=1e-6)
    assert stats.errors == 1 and stats.last_error.startswith("ReadTimeout(")


@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual")]
)
async def test_connect_timeout_bounds_the_connection() -> None:
    """``connect_timeout`` bounds the connection itself: a server whose accept queue is full fails the request
    that long after it started, naming ``ConnectTimeout``."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname()):  # fills the queue: later connections hang
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
            t0 = anyio.current_time()
            with anyio.fail_after(20), pytest.raises(ConnectionLost, match=r"after 0 bytes: ConnectTimeout\("):
                await http_bytes(url, connect_timeout=2.5).collect()
            assert anyio.current_time() - t0 == pytest.approx(2.5, abs=1e-6)
