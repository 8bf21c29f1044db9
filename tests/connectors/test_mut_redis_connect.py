"""``connect_redis`` and the Redis sink's writes, on asyncio's virtual clock, against fault-injecting servers.

Each server here is a raw listener on 127.0.0.1 in the test's own loop, speaking just enough RESP for redis-py's
handshake: one that hangs up at once (a refused or crashing server), one that never answers (a stuck one), one that
answers late, and a listener whose backlog is full (a connect that hangs in the kernel).  The loop's clock is
virtual, so the pauses between attempts and the deadlines are checked exactly, without waiting for them.  The
sink's writes are checked on the wire where a real server cannot show them: the ``MAXLEN ~`` flag, a write cut
mid-batch and written again, a write the server never answers.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from talkpipe_async.connectors import BrokerUnavailable, redis_stream_messages, to_redis_stream
from talkpipe_async.connectors.redis import connect_redis, redis_transient
from talkpipe_async.testing import virtual_backend
from tests.helpers import net
from tests.helpers.net import raw_server

pytestmark = pytest.mark.anyio

# The server's reply to one command (a list of its arguments), or None to stay silent from then on.
Reply = Callable[[list[bytes]], Awaitable[bytes | None]]


@pytest.fixture
def anyio_backend() -> Any:
    """redis.asyncio needs asyncio; its virtual clock makes every pause and deadline exact."""
    return virtual_backend("asyncio")


def parse_commands(buf: bytes) -> tuple[list[list[bytes]], bytes]:
    """The whole RESP commands (arrays of bulk strings) at the start of *buf*, and the bytes left over."""
    commands = []
    while buf.startswith(b"*"):
        head, sep, rest = buf.partition(b"\r\n")
        if not sep:
            break
        args: list[bytes] = []
        for _ in range(int(head[1:])):
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep or len(rest) < int(size_line[1:]) + 2:
                return commands, buf
            size = int(size_line[1:])
            args.append(rest[:size])
            rest = rest[size + 2:]
        commands.append(args)
        buf = rest
    return commands, buf


def test_the_parser_keeps_a_partial_command_for_the_next_read() -> None:
    whole = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n"
    assert parse_commands(whole + whole[:9]) == ([[b"PING", b"hi"]], whole[:9])
    assert parse_commands(whole[:-1]) == ([], whole[:-1])


async def answer_ok(command: list[bytes]) -> bytes | None:
    """What redis-py's handshake needs: RESP3 to ``HELLO 3``, ``+PONG`` to PING, ``+OK`` to the rest."""
    name = command[0].upper()
    if name == b"HELLO":
        return b"%1\r\n+proto\r\n:3\r\n"
    return b"+PONG\r\n" if name == b"PING" else b"+OK\r\n"


@asynccontextmanager
async def resp_server(reply: Reply, log: list[list[bytes]]) -> AsyncIterator[str]:
    """A RESP server answering each command with *reply* (recorded in *log*); yields its URL."""

    async def serve(stream: anyio.abc.SocketStream) -> None:
        buf = b""
        while True:
            buf += await stream.receive()
            commands, buf = parse_commands(buf)
            for command in commands:
                log.append(command)
                answer = await reply(command)
                if answer is None:
                    await anyio.sleep_forever()
                await stream.send(answer)

    async with raw_server(serve) as port:
        yield f"redis://127.0.0.1:{port}/0"


@asynccontextmanager
async def hanging_up(accepted: list[float]) -> AsyncIterator[str]:
    """A server that closes each connection as soon as it is accepted, noting the time; yields its URL."""
    async with net.hanging_up(accepted) as port:
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def full_backlog() -> Iterator[str]:
    """A listener whose backlog is full, so that a connect hangs in the kernel; yields its URL."""
    with net.full_backlog() as port:
        yield f"redis://127.0.0.1:{port}/0"


async def test_the_first_connection_is_tried_retries_plus_one_times_with_pauses_doubling_to_a_second() -> None:
    accepted: list[float] = []
    async with hanging_up(accepted) as url:
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable) as raised:
            await connect_redis(url, retries=6, connect_timeout=0.5)
    assert len(accepted) == 7
    pauses = [b - a for a, b in itertools.pairwise(accepted)]
    assert pauses == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0], abs=1e-6)
    assert str(raised.value).startswith(f"redis at {url} is unreachable after 7 attempts: ")
    assert str(raised.value).endswith(str(raised.value.__cause__))  # what the client saw, last time
    assert type(raised.value.__cause__).__module__.startswith("redis")  # the client's own error, kept as the cause


async def test_no_retries_means_one_attempt() -> None:
    accepted: list[float] = []
    async with hanging_up(accepted) as url:
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 1 attempts"):
            await connect_redis(url, retries=0, connect_timeout=0.5)
    assert len(accepted) == 1


async def test_a_server_that_never_answers_is_given_up_a_second_after_connect_timeout() -> None:
    """The attempt's deadline, ``connect_timeout + 1`` s, ends a handshake nobody answers (redis-py waits 5 s)."""
    log: list[list[bytes]] = []

    async def silent(command: list[bytes]) -> bytes | None:
        return None

    async with resp_server(silent, log) as url:
        start = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 2 attempts") as raised:
            await connect_redis(url, retries=1, connect_timeout=0.5)
    elapsed = anyio.current_time() - start
    assert elapsed == pytest.approx(1.5 + 0.05 + 1.5, abs=1e-6)  # two attempts and the pause between them
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert len(log) == 2  # one first command per attempt, each left unanswered


async def test_a_late_answer_within_the_deadline_connects() -> None:
    log: list[list[bytes]] = []

    async def late_pong(command: list[bytes]) -> bytes | None:
        if command[0].upper() == b"PING":
            await anyio.sleep(1.4)  # past connect_timeout, within connect_timeout + 1
        return await answer_ok(command)

    async with resp_server(late_pong, log) as url:
        start = anyio.current_time()
        with anyio.fail_after(60):
            client = await connect_redis(url, retries=0, connect_timeout=0.5)
        try:
            assert anyio.current_time() - start == pytest.approx(1.4, abs=1e-6)
            assert [c[0].upper() for c in log].count(b"PING") == 1
        finally:
            await client.aclose()


async def test_a_connect_that_hangs_in_the_kernel_is_cut_at_connect_timeout() -> None:
    """``connect_timeout`` bounds the TCP connect itself, well before the attempt's own deadline."""
    with full_backlog() as url:
        start = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 1 attempts") as raised:
            await connect_redis(url, retries=0, connect_timeout=0.5)
    assert anyio.current_time() - start == pytest.approx(0.5, abs=1e-6)
    assert "Timeout connecting" in str(raised.value)


async def test_the_client_does_not_retry_a_command_itself() -> None:
    """A command cut by a broken connection fails once: the stages' outage guard, not the client, retries."""
    log: list[list[bytes]] = []

    async def drop_on_get(command: list[bytes]) -> bytes | None:
        if command[0].upper() == b"GET":
            raise anyio.BrokenResourceError  # the server goes away mid-command
        return await answer_ok(command)

    redis = pytest.importorskip("redis")
    async with resp_server(drop_on_get, log) as url:
        with anyio.fail_after(60):
            client = await connect_redis(url, retries=0, connect_timeout=0.5)
            try:
                with pytest.raises(redis.exceptions.ConnectionError):
                    await client.get("k")
            finally:
                await client.aclose()
    assert [c[0].upper() for c in log].count(b"GET") == 1


async def test_options_reach_the_client() -> None:
    log: list[list[bytes]] = []

    async def value(command: list[bytes]) -> bytes | None:
        return b"$2\r\nv1\r\n" if command[0].upper() == b"GET" else await answer_ok(command)

    async with resp_server(value, log) as url:
        with anyio.fail_after(60):
            client = await connect_redis(url, retries=0, decode_responses=True)
            try:
                assert await client.get("k") == "v1"  # str, not bytes: decode_responses was passed on
            finally:
                await client.aclose()


async def test_the_defaults_are_the_stages_documented_ones() -> None:
    """Four attempts (``retries=3``) and a two-second connect bound (``timeout=2.0``), as the stages document."""
    accepted: list[float] = []
    async with hanging_up(accepted) as url:
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 4 attempts"):
            await connect_redis(url)
    assert len(accepted) == 4
    with full_backlog() as url:
        start = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable):
            await connect_redis(url, retries=0)
    assert anyio.current_time() - start == pytest.approx(2.0, abs=1e-6)


async def test_without_the_client_library_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The redis package missing (``None`` in ``sys.modules`` makes its import fail): the error says what to install."""
    from talkpipe_async.connectors import MissingClient
    from talkpipe_async.connectors.redis import ensure_group

    monkeypatch.setitem(sys.modules, "redis", None)
    expected = "the redis connector needs the 'redis' package: pip install \"talkpipe-async[redis]\""
    with pytest.raises(MissingClient) as connecting:
        await connect_redis("redis://127.0.0.1:1/0")
    with pytest.raises(MissingClient) as creating:
        await ensure_group(object(), "s", "g")
    with pytest.raises(MissingClient) as classifying:
        redis_transient()
    assert str(connecting.value) == str(creating.value) == str(classifying.value) == expected


async def answer_xadd(command: list[bytes]) -> bytes | None:
    """An entry id to XADD, the handshake's answers to the rest."""
    return b"$3\r\n1-0\r\n" if command[0].upper() == b"XADD" else await answer_ok(command)


def xadds(log: list[list[bytes]]) -> list[list[bytes]]:
    return [c for c in log if c[0].upper() == b"XADD"]


async def test_the_cap_is_approximate_unless_told() -> None:
    log: list[list[bytes]] = []
    async with resp_server(answer_xadd, log) as url:
        with anyio.fail_after(60):
            await to_redis_stream("s", url=url, maxlen=10).collect([1])
            await to_redis_stream("s", url=url, maxlen=10, approximate=False).collect([2])
            await to_redis_stream("s", url=url).collect([3])
    assert xadds(log) == [
        [b"XADD", b"s", b"MAXLEN", b"~", b"10", b"*", b"data", b"1"],
        [b"XADD", b"s", b"MAXLEN", b"10", b"*", b"data", b"2"],
        [b"XADD", b"s", b"*", b"data", b"3"],
    ]


async def test_a_batch_cut_by_the_server_is_written_again_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """At least once: the whole batch goes again after a cut round trip, counted in ``rewritten``; each cut is an
    outage of its own once the batch before it went through."""
    log: list[list[bytes]] = []
    cut: set[bytes] = set()

    async def cut_each_batch_once(command: list[bytes]) -> bytes | None:
        first_of_batch = command[-1] in (b"1", b"3")
        if command[0].upper() == b"XADD" and first_of_batch and command[-1] not in cut:
            cut.add(command[-1])
            raise anyio.BrokenResourceError  # the server goes away with the batch half read
        return await answer_xadd(command)

    caplog.set_level(logging.WARNING, logger="talkpipe_async.connectors")
    async with resp_server(cut_each_batch_once, log) as url:
        sink = to_redis_stream("s", url=url, batch=2, outage_budget=30.0)
        with anyio.fail_after(60):
            assert await sink.collect([1, 2, 3, 4]) == [1, 2, 3, 4]
    assert [c[-1] for c in xadds(log)] == [b"1", b"1", b"2", b"3", b"3", b"4"]
    assert (sink.stats.outages, sink.stats.rewritten, sink.stats.written, sink.stats.write_batches) == (2, 4, 4, 2)
    assert f"redis-sink:s: redis at {url} unreachable during XADD" in caplog.text


async def test_a_write_never_answered_is_given_up_five_seconds_after_timeout() -> None:
    log: list[list[bytes]] = []

    async def never_store(command: list[bytes]) -> bytes | None:
        return None if command[0].upper() == b"XADD" else await answer_ok(command)

    async with resp_server(never_store, log) as url:
        sink = to_redis_stream("s", url=url, timeout=0.5, outage_budget=0.0)
        start = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match=f"redis at {url} unreachable") as raised:
            await sink.collect([1])
    assert anyio.current_time() - start == pytest.approx(5.5, abs=1e-6)
    assert "during XADD" in str(raised.value)
    assert sink.stats.outages == 1 and sink.stats.written == 0


async def test_the_stages_connect_with_their_own_timeout_and_retries() -> None:
    accepted: list[float] = []
    async with hanging_up(accepted) as url:
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 1 attempts"):
            await to_redis_stream("s", url=url, retries=0).collect([1])
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 1 attempts"):
            await redis_stream_messages("s", "g", url=url, retries=0).collect()
    assert len(accepted) == 2
    quick: dict[str, Any] = {"timeout": 0.5, "retries": 0}
    for stage in (to_redis_stream("s", **quick), redis_stream_messages("s", "g", **quick)):
        with full_backlog() as url:
            stage.url = url
            start = anyio.current_time()
            with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="Timeout connecting"):
                await stage.collect([1] if isinstance(stage, to_redis_stream) else None)
        assert anyio.current_time() - start == pytest.approx(0.5, abs=1e-6)


async def test_a_server_silent_while_the_group_is_made_fails_the_run_after_the_reply_timeout() -> None:
    """Making the group is not retried through an outage, but it cannot hang: the client's reply timeout, set
    past the longest call the stage makes (``timeout + 5 + block + 1`` s), ends it."""
    redis = pytest.importorskip("redis")
    log: list[list[bytes]] = []

    async def silent_on_group(command: list[bytes]) -> bytes | None:
        return None if command[0].upper() == b"XGROUP" else await answer_ok(command)

    async with resp_server(silent_on_group, log) as url:
        for extra in ({}, {"partitions": 1}):
            start = anyio.current_time()
            with anyio.fail_after(60), pytest.raises(redis.exceptions.TimeoutError):
                await redis_stream_messages("s", "g", url=url, timeout=0.5, block=2.0, **extra).collect()
            assert anyio.current_time() - start == pytest.approx(0.5 + 5 + 2.0 + 1, abs=1e-6)
