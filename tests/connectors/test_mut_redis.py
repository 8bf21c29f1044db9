"""The partitioned Redis session (``talkpipe_async.connectors._redis_partitions``) against a real redis-server.

The session is driven directly (``start``, ``read``, the tokens, ``aclose``), in one process, with short leases,
so that each promise is checked at the broker: the lease keys and the member set, the groups on every partition
stream, the order in which pending entries of a partition are taken over, the acknowledgements sent in batches,
what a nacked entry does, the dead-letter stream and its fields, the counters, and what is left when it closes.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from talkpipe_async.connectors import BrokerUnavailable, redis_stream_messages
from talkpipe_async.connectors._redis_partitions import PartitionToken, RedisLeases, RedisPartitionSession
from talkpipe_async.connectors._redis_session import HAND_BACK_IDLE_MS, RedisSession, RedisToken
from talkpipe_async.connectors.redis import connect_redis, ensure_group, redis_transient
from tests.helpers import servers
from tests.helpers.brokers import ASYNCIO_LOOPS

pytest_plugins = ["tests.helpers.brokers"]

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(servers.redis_binary() is None, reason="redis-server not installed"),
]

LOGGER = "talkpipe_async.connectors"


@pytest.fixture(params=ASYNCIO_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """redis.asyncio needs asyncio: run on asyncio and uvloop."""
    return request.param


@pytest.fixture
def stream() -> str:
    """A fresh stream name for one test."""
    return f"rp-{uuid.uuid4().hex[:8]}"


def source(url: str, stream: str, **kw: Any) -> redis_stream_messages:
    kw.setdefault("partitions", 2)
    kw.setdefault("lease_ttl", 3.0)
    kw.setdefault("block", 0.05)
    kw.setdefault("consumer", "a")
    return redis_stream_messages(stream, "g", url=url, **kw)


@asynccontextmanager
async def opened(url: str, stream: str, *, start: bool = True, **kw: Any) -> AsyncIterator[RedisPartitionSession]:
    """A session of a partitioned source on *stream* (group ``g``), started unless told, closed at the end."""
    src = source(url, stream, **kw)
    client = await connect_redis(url)
    session = RedisPartitionSession(src, client, src.consumer or "", redis_transient())
    try:
        with anyio.fail_after(20):
            if start:
                await session.start()
            yield session
    finally:
        with anyio.fail_after(10):
            await session.aclose()


async def add(client: Any, name: str, *values: Any) -> list[str]:
    """XADD each value as ``{"data": json}`` to *name*; the entry ids."""
    return [(await client.xadd(name, {"data": json.dumps(v)})).decode() for v in values]


async def pending_ids(client: Any, name: str) -> list[str]:
    rows = await client.xpending_range(name, "g", min="-", max="+", count=100)
    return [r["message_id"].decode() for r in rows]


async def take(session: RedisPartitionSession, count: int, wait: float) -> list[Any]:
    """One read, its messages then held downstream (as the source does with every message it hands out)."""
    got = await session.read(count, wait)
    for message in got:
        session.track(message.token)
    return got


async def read_all(session: RedisPartitionSession, count: int = 100, rounds: int = 20) -> list[Any]:
    """Read (and hold) until a read returns nothing (at most *rounds* reads)."""
    out: list[Any] = []
    for _ in range(rounds):
        got = await take(session, count, 0.05)
        if not got:
            break
        out += got
    return out


def the_error(exc: BaseException | None) -> BaseException | None:
    """The error inside a group of one (the run hands a task's single error on with its own type)."""
    while exc is not None and len(getattr(exc, "exceptions", ())) == 1:
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


def record_command_names(session: RedisPartitionSession | RedisSession) -> list[str]:
    """A list that gets the name of every command the session sends through its outage guard, in order."""
    names: list[str] = []
    call = session.guard.call

    async def named(what: str, func: Any, *args: Any, **kw: Any) -> Any:
        names.append(what)
        return await call(what, func, *args, **kw)

    session.guard.call = named  # type: ignore[method-assign]
    return names


def watch_close(session: RedisPartitionSession | RedisSession) -> list[bool]:
    """A list that gets ``True`` when the session closes its client."""
    closed: list[bool] = []
    close = session.client.aclose

    async def aclose() -> None:
        closed.append(True)
        await close()

    session.client.aclose = aclose
    return closed


# ------------------------------------------------------------------------------------------------- the leases


async def test_start_creates_the_group_on_every_partition_and_takes_every_lease(redis_url: str, client: Any,
                                                                                stream: str) -> None:
    """Each partition stream ``<stream>:<i>`` gets the group (created with the stream, at ``start_id``); a lone
    worker joins the members (scored by expiry) and holds every lease, as its consumer name, for ``lease_ttl``."""
    await add(client, f"{stream}:1", "old")
    async with opened(redis_url, stream, partitions=3, start_id="$") as session:
        assert session.streams == [f"{stream}:0", f"{stream}:1", f"{stream}:2"]
        for i in range(3):
            groups = await client.xinfo_groups(f"{stream}:{i}")
            assert [g["name"] for g in groups] == [b"g"]
        # start_id "$": the entry written before is not delivered
        assert (await client.xinfo_groups(f"{stream}:1"))[0]["last-delivered-id"] != b"0-0"
        for i in range(3):
            assert await client.get(f"{stream}:g:lease:{i}") == b"a"
            assert 2000 < await client.pttl(f"{stream}:g:lease:{i}") <= 3000
        members = await client.zrange(f"{stream}:g:members", 0, -1, withscores=True)
        assert [m for m, _ in members] == [b"a"]
        t = await client.time()
        server_ms = t[0] * 1000 + t[1] // 1000
        assert server_ms + 2000 < members[0][1] <= server_ms + 3000
        assert session.src.owned_partitions == [0, 1, 2]


async def test_entries_written_before_the_first_start_are_read_by_default(redis_url: str, client: Any,
                                                                         stream: str) -> None:
    """``start_id`` defaults to ``"0"``: the group created at the first start reads the partition from its start."""
    await add(client, f"{stream}:1", "early")
    async with opened(redis_url, stream, partitions=2) as session:
        assert [m.data for m in await read_all(session)] == ["early"]


async def test_start_accepts_an_existing_group_and_reports_other_errors(redis_url: str, client: Any,
                                                                        stream: str) -> None:
    """An existing group is used as it is (its pending entries kept); a key of the wrong type is an error."""
    await client.xgroup_create(f"{stream}:0", "g", id="0", mkstream=True)
    await add(client, f"{stream}:0", 1)
    await client.xreadgroup("g", "dead", {f"{stream}:0": ">"}, count=1)
    async with opened(redis_url, stream, partitions=1) as session:
        assert [m.data for m in await read_all(session)] == [1]
    await client.set(f"{stream}x:0", "not a stream")
    with pytest.raises(Exception, match="WRONGTYPE"):
        async with opened(redis_url, f"{stream}x", partitions=1):
            pass


async def test_the_lease_table_at_the_broker(redis_url: str, client: Any, stream: str) -> None:
    """``acquire`` is ``SET NX PX`` with the worker's name; ``heartbeat`` renews only this worker's leases (and
    says which those are), adds the worker to the members unless told not to, drops expired members and lists the
    live ones; ``release`` deletes only this worker's lease; ``leave`` drops only its membership."""
    async with opened(redis_url, stream, partitions=3, start=False, lease_ttl=2.0) as session:
        leases = RedisLeases(session, 2.0)
        assert leases.ttl_ms == 2000
        assert leases.members == f"{stream}:g:members"
        assert leases.leases == [f"{stream}:g:lease:{i}" for i in range(3)]
        assert await leases.acquire(0) is True
        assert await leases.acquire(0) is False
        assert 1000 < await client.pttl(f"{stream}:g:lease:0") <= 2000
        await client.set(f"{stream}:g:lease:1", "b", px=500)
        await client.zadd(f"{stream}:g:members", {"b": 10**13, "gone": 1})
        assert await leases.heartbeat([0, 1], member=False) == (["b"], {0})
        assert await client.zscore(f"{stream}:g:members", "a") is None
        await client.pexpire(f"{stream}:g:lease:0", 100)
        members, mine = await leases.heartbeat([1, 0])
        assert (sorted(members), mine) == (["a", "b"], {0})
        assert 1000 < await client.pttl(f"{stream}:g:lease:0") <= 2000
        assert await client.pttl(f"{stream}:g:lease:1") <= 500  # another's lease is not renewed
        await leases.release(1)
        assert await client.get(f"{stream}:g:lease:1") == b"b"
        await leases.release(0)
        assert await client.exists(f"{stream}:g:lease:0") == 0
        await leases.leave()
        assert await client.zrange(f"{stream}:g:members", 0, -1) == [b"b"]
        assert RedisLeases(session, 0.0001).ttl_ms == 1
        assert RedisLeases(session, 0.0025).ttl_ms == 2


async def test_a_second_worker_gets_its_share_once_the_first_releases(redis_url: str, client: Any,
                                                                      stream: str) -> None:
    """With two members, partition ``i`` goes to the ``i % 2``-th by name: the holder releases the other's
    share at its next round (sending its acknowledgements first), the newcomer takes it at its own."""
    async with opened(redis_url, stream, partitions=4, consumer="a", lease_ttl=0.6) as a:
        async with opened(redis_url, stream, partitions=4, consumer="b", lease_ttl=0.6) as b:
            assert b.src.owned_partitions == [] and b.expecting()
            await add(client, f"{stream}:1", "x")
            got = await read_all(a)
            assert [m.data for m in got] == ["x"]
            await got[0].ack()
            with anyio.fail_after(5):
                while a.src.owned_partitions != [0, 2]:
                    await take(a, 10, 0.05)
                while b.src.owned_partitions != [1, 3]:
                    await take(b, 10, 0.05)
            assert await pending_ids(client, f"{stream}:1") == []  # acknowledged before the lease went
            assert not b.expecting()


# -------------------------------------------------------------------------------------------- reading in order


async def test_pending_entries_are_taken_over_one_at_a_time_before_new_ones(redis_url: str, client: Any,
                                                                             stream: str) -> None:
    """A partition just acquired hands its pending entries (of any consumer) first, one per read, oldest first,
    marked as delivered again; then new entries from every readable partition in one read."""
    for p in range(2):
        await client.xgroup_create(f"{stream}:{p}", "g", id="0", mkstream=True)
    ids0 = await add(client, f"{stream}:0", "p0", "p1", "p2")
    await client.xreadgroup("g", "dead", {f"{stream}:0": ">"}, count=2)
    await add(client, f"{stream}:1", "q0")
    async with opened(redis_url, stream, partitions=2) as session:
        first = await take(session, 100, 0.05)
        assert [(m.data, m.id, m.deliveries, m.token.suspect) for m in first] == [("p0", f"0:{ids0[0]}", 2, True)]
        assert isinstance(first[0].token, PartitionToken)
        assert (first[0].token.partition, first[0].token.entry) == (0, ids0[0])
        assert session.unyielded == first
        session.track(first[0].token)
        second = await take(session, 100, 0.05)
        assert [m.data for m in second] == ["p1"]  # the one in progress here is not claimed again
        assert session.stats.claims >= 2
        await first[0].ack()
        await second[0].ack()
        rest = await read_all(session)
        assert sorted(m.data for m in rest) == ["p2", "q0"]
        assert {m.id for m in rest} == {f"0:{ids0[2]}", f"1:{(await client.xrange(f'{stream}:1'))[0][0].decode()}"}
        assert all(m.deliveries == 1 and not m.token.suspect for m in rest)
        assert session.stats.redelivered == 2 and session.stats.delivered == 4
        assert session.stats.claims == 4  # one scan per entry taken over, one per partition found empty
        assert session.stats.reads >= 1


async def test_one_read_takes_count_split_between_the_readable_partitions(redis_url: str, client: Any,
                                                                          stream: str) -> None:
    """``count`` is shared between the partitions read (at least one each); each message says its partition."""
    async with opened(redis_url, stream, partitions=2) as session:
        await read_all(session)  # the backlogs (none)
        for p in range(2):
            await add(client, f"{stream}:{p}", *[f"{p}-{i}" for i in range(5)])
        reads = session.stats.reads
        got = await take(session, 4, 0.05)
        assert session.stats.reads == reads + 1  # one command for both partitions
        assert sorted(m.data for m in got) == ["0-0", "0-1", "1-0", "1-1"]
        assert session.unyielded == got  # the batch being handed out
        assert all(m.id.startswith(m.data[0] + ":") for m in got)
        got = await take(session, 1, 0.05)
        assert sorted(m.data for m in got) == ["0-2", "1-2"]


async def test_a_read_with_nothing_readable_waits_for_at_most_the_wait(redis_url: str, stream: str) -> None:
    """No partition readable (all held elsewhere): the read returns nothing after about its wait, no longer."""
    async with opened(redis_url, stream, partitions=1, lease_ttl=30.0, start=False) as session:
        await session.client.set(f"{stream}:g:lease:0", "other", px=30000)
        await session.start()
        start = anyio.current_time()
        assert await take(session, 10, 0.2) == []
        assert 0.15 <= anyio.current_time() - start < 1.0
        assert session.stats.reads == 0


async def test_a_read_blocks_for_at_most_its_wait_when_the_partitions_are_empty(redis_url: str,
                                                                                stream: str) -> None:
    """An empty readable partition: the blocking read returns nothing after about *wait*."""
    async with opened(redis_url, stream, partitions=1, lease_ttl=30.0) as session:
        await read_all(session)
        start = anyio.current_time()
        assert await take(session, 10, 0.3) == []
        assert 0.25 <= anyio.current_time() - start < 1.5


async def test_a_read_does_not_block_past_the_next_lease_round(redis_url: str, stream: str) -> None:
    """A read with a long wait returns by the next lease round (``lease_ttl / 3``), so the leases are renewed."""
    async with opened(redis_url, stream, partitions=1, lease_ttl=0.9) as session:
        await read_all(session)
        start = anyio.current_time()
        assert await session.read(10, 3.0) == []
        assert anyio.current_time() - start < 1.5


async def test_the_reads_renew_the_lease_each_round(redis_url: str, client: Any, stream: str) -> None:
    """A read that finds the round due renews the leases (``lease_ttl / 3`` apart), so they never lapse."""
    async with opened(redis_url, stream, partitions=1, lease_ttl=0.9) as session:
        with anyio.fail_after(5):
            end = anyio.current_time() + 1.0
            while anyio.current_time() < end:
                await take(session, 10, 0.05)
        assert await client.get(f"{stream}:g:lease:0") == b"a"
        assert session.coordinator.lost == 0
        assert session.coordinator.interval == pytest.approx(0.3)


async def test_the_background_renews_the_leases_and_flushes_the_acknowledgements(redis_url: str, client: Any,
                                                                                 stream: str) -> None:
    """Without reads, the background keeps the leases and sends a lone acknowledgement after ``ack_interval``."""
    async with opened(redis_url, stream, partitions=1, lease_ttl=1.2, ack_interval=0.05) as session:
        await add(client, f"{stream}:0", 1)
        got = await read_all(session)
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.background)
            await got[0].ack()
            with anyio.fail_after(3):  # counted once the server's reply to XACK is read, so the entry is gone by then
                while session.stats.acked == 0:
                    await anyio.sleep(0.01)
            assert session.stats.acked == 1
            assert await pending_ids(client, f"{stream}:0") == []
            lowest = 10_000
            end = anyio.current_time() + 1.3  # more than a lease's life: renewed by the rounds
            while anyio.current_time() < end:
                lowest = min(lowest, await client.pttl(f"{stream}:g:lease:0"))
                await anyio.sleep(0.05)
            assert lowest > 500  # renewed every lease_ttl / 3 (0.4 s), long before it runs low
            assert session.coordinator.lost == 0 and session.failure is None
            tg.cancel_scope.cancel()


async def test_the_background_hands_a_share_over_to_a_newcomer(redis_url: str, stream: str) -> None:
    """A worker that is not reading hands over the newcomer's share at its next background round."""
    async with opened(redis_url, stream, partitions=2, consumer="a", lease_ttl=0.9) as a:
        await read_all(a)
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.background)
            async with opened(redis_url, stream, partitions=2, consumer="b", lease_ttl=0.9) as b:
                with anyio.fail_after(5):
                    while a.src.owned_partitions != [0]:
                        await anyio.sleep(0.02)
                    while b.src.owned_partitions != [1]:
                        await take(b, 10, 0.05)
                assert a.failure is None
            tg.cancel_scope.cancel()


async def test_a_failure_of_the_background_is_kept_for_the_reads(redis_url: str, stream: str) -> None:
    """An error of the lease rounds (the server gone past the budget) is kept as the session's failure, with its own
    type, which the next acknowledgement raises."""
    async with opened(redis_url, stream, partitions=1, lease_ttl=0.3, outage_budget=0.0) as session:

        async def broken(*args: Any, **kw: Any) -> Any:
            raise ConnectionError("gone")

        session.coordinator.table._heartbeat = broken  # type: ignore[attr-defined]
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.background)
                while session.failure is None:
                    await anyio.sleep(0.02)
                tg.cancel_scope.cancel()
        assert isinstance(session.failure, BrokerUnavailable)  # the error itself, as the plain session keeps it
        with pytest.raises(BrokerUnavailable) as raised:  # what a stage acknowledging a message can catch
            await session.queue_ack(0, "1-0")
        assert raised.value is session.failure
        assert session.ack_count == 0
        session.coordinator.table._heartbeat = session.client.register_script(  # type: ignore[attr-defined]
            "return {{}, {}}")


# ---------------------------------------------------------------------------------------------- acknowledgements


async def test_acknowledgements_are_sent_in_batches_per_partition(redis_url: str, client: Any,
                                                                  stream: str) -> None:
    """Acks are buffered: sent in one round trip once ``ack_batch`` wait, or before the next read, each on its
    partition's stream; the counter counts them once confirmed."""
    async with opened(redis_url, stream, partitions=2, ack_batch=3) as session:
        await read_all(session)
        for p in range(2):
            await add(client, f"{stream}:{p}", "a", "b")
        got = await read_all(session)
        assert len(got) == 4
        assert not session.ack_waiting.is_set()
        await got[0].ack()
        assert session.ack_waiting.is_set() and session.ack_count == 1
        session.ack_waiting = anyio.Event()
        await got[1].ack()
        assert not session.ack_waiting.is_set()
        assert session.stats.acked == 0
        assert len(await pending_ids(client, f"{stream}:0")) + len(await pending_ids(client, f"{stream}:1")) == 4
        await got[2].ack()  # the third: sent at once
        assert session.stats.acked == 3 and session.ack_count == 0 and session.acks == {}
        await got[3].ack()
        await got[3].ack()  # settled once
        assert session.ack_count == 1
        await take(session, 10, 0.01)  # a read sends what is buffered first
        assert session.stats.acked == 4
        assert await pending_ids(client, f"{stream}:0") == [] and await pending_ids(client, f"{stream}:1") == []
        await session.flush_acks()
        assert session.stats.acked == 4


async def test_acknowledgements_that_fail_are_kept_in_front_for_the_next_flush(redis_url: str, client: Any,
                                                                              stream: str) -> None:
    """An ``XACK`` round trip that fails keeps its ids, counted, in front of any ack queued while it was on the
    wire, for the next flush; none is counted as sent until confirmed."""
    async with opened(redis_url, stream, partitions=2, outage_budget=0.0, ack_batch=100) as session:
        await read_all(session)
        await add(client, f"{stream}:0", 1, 2, 3)
        await add(client, f"{stream}:1", 4)
        got = await read_all(session)
        by_data = {m.data: m for m in got}
        await by_data[1].ack()
        await by_data[4].ack()
        await by_data[2].ack()
        real = session.client
        on_wire = anyio.Event()
        fail = anyio.Event()

        class Pipe:
            def xack(self, *args: Any) -> None:
                pass

            async def execute(self) -> Any:
                on_wire.set()
                await fail.wait()
                raise ConnectionError("down")

        class Broken:
            def pipeline(self, transaction: bool = False) -> Any:
                return Pipe()

        session.client = Broken()

        async def flush() -> None:
            with pytest.raises(BrokerUnavailable):
                await session.flush_acks()

        async with anyio.create_task_group() as tg:
            tg.start_soon(flush)
            await on_wire.wait()
            assert session.ack_count == 0
            await by_data[3].ack()
            fail.set()
        session.client = real
        entries = {m.data: m.token.entry for m in got}
        assert session.acks == {0: [entries[1], entries[2], entries[3]], 1: [entries[4]]}
        assert session.ack_count == 4 and session.stats.acked == 0
        session.failure = None
        await session.flush_acks()
        assert session.stats.acked == 4 and session.ack_count == 0
        assert await pending_ids(client, f"{stream}:0") == [] and await pending_ids(client, f"{stream}:1") == []


# -------------------------------------------------------------------------------------------- nak, term, touch


async def test_a_nacked_entry_comes_again_first_after_its_delay(redis_url: str, client: Any, stream: str) -> None:
    """``nak(delay)``: nothing more of its partition is read until the delay is over, then the nacked entry comes
    again (delivered twice) before newer ones; the other partitions are read meanwhile, in short reads (a read
    waits at most 50 ms while a partition waits for its pause to end, whatever its own wait)."""
    async with opened(redis_url, stream, partitions=2, lease_ttl=6.0) as session:
        await read_all(session)
        await add(client, f"{stream}:0", "x", "y")
        got = await read_all(session)
        assert [m.data for m in got] == ["x", "y"]
        await got[1].ack()
        nacked_at = anyio.current_time()
        await got[0].nak(0.4)
        assert session.stats.nacked == 1
        part = session.coordinator.owned[0]
        assert part.backlog and part.paused_until == pytest.approx(anyio.current_time() + 0.4, abs=0.1)
        assert session.expecting()
        await add(client, f"{stream}:0", "z")
        await add(client, f"{stream}:1", "other")
        assert [m.data for m in await take(session, 10, 0.05)] == ["other"]
        with anyio.fail_after(5):
            again: list[Any] = []
            while not again:
                again = await take(session, 10, 3.0)
        assert 0.35 <= anyio.current_time() - nacked_at < 0.95
        assert [(m.data, m.deliveries) for m in again] == [("x", 2)]
        await again[0].ack()
        assert [m.data for m in await read_all(session)] == ["z"]
        assert not session.expecting()


async def test_a_nak_without_delay_comes_again_at_once(redis_url: str, client: Any, stream: str) -> None:
    """``nak()`` with no delay: the entry is the very next one read; a nak of a partition no longer owned only
    counts."""
    async with opened(redis_url, stream, partitions=2) as session:
        await read_all(session)
        await add(client, f"{stream}:1", "x", "y")
        got = await read_all(session)
        await got[0].nak()
        await got[1].ack()
        assert session.coordinator.owned[1].paused_until <= anyio.current_time()
        again = await take(session, 10, 0.05)
        assert [(m.data, m.deliveries) for m in again] == [("x", 2)]
        session.nak(5, 1.0)
        assert session.stats.nacked == 2


async def test_term_moves_the_entry_to_the_dead_letter_with_its_reason(redis_url: str, client: Any, stream: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """``term(reason)``: the entry's fields, plus where it came from, why and how often it was delivered, are
    appended to the dead-letter stream (capped), and the entry is acknowledged, in one transaction; logged."""
    async with opened(redis_url, stream, partitions=1, dead_letter=f"{stream}:dlq", dead_letter_maxlen=10,
                      name="src") as s:
        ids = await add(client, f"{stream}:0", {"v": 1}, {"v": 2})
        got = await read_all(s)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            await got[1].term("bad value")
            await got[1].term("again")  # settled once
        dead = await client.xrange(f"{stream}:dlq")
        assert len(dead) == 1
        assert dead[0][1] == {b"data": json.dumps({"v": 2}).encode(), b"dlq_stream": f"{stream}:0".encode(),
                              b"dlq_group": b"g", b"dlq_id": ids[1].encode(), b"dlq_reason": b"bad value",
                              b"dlq_deliveries": b"1"}
        assert await pending_ids(client, f"{stream}:0") == [ids[0]]
        assert s.stats.dead_lettered == 1
        moved = [r for r in caplog.records if "moved to" in r.getMessage()]
        assert [(r.getMessage(), r.levelno) for r in moved] == [
            (f"src: entry {ids[1]} of {stream}:0 moved to {stream}:dlq: bad value", logging.WARNING)]
        await client.xdel(f"{stream}:0", ids[0])
        await got[0].term("gone")  # deleted meanwhile: dead-lettered without fields
        dead = await client.xrange(f"{stream}:dlq")
        assert dead[1][1][b"dlq_reason"] == b"gone" and b"data" not in dead[1][1]
        assert await pending_ids(client, f"{stream}:0") == []
        many = {f"0-{i + 1}": ({"data": "x"}, "r", 1) for i in range(300)}
        await s.dead_letter(0, many)  # capped (approximately) at dead_letter_maxlen
        assert await client.xlen(f"{stream}:dlq") < 300
        assert s.stats.dead_lettered == 302


async def test_touch_resets_the_idle_time_of_an_entry_in_progress(redis_url: str, client: Any,
                                                                  stream: str) -> None:
    """``touch()`` resets the entry's idle time without counting a delivery; a settled token does nothing."""
    async with opened(redis_url, stream, partitions=1) as session:
        await add(client, f"{stream}:0", 1, 2)
        got = await read_all(session)
        await anyio.sleep(0.25)  # idle time to reset
        await got[0].touch()
        rows = {r["message_id"].decode(): r for r in
                await client.xpending_range(f"{stream}:0", "g", min="-", max="+", count=10)}
        first, second = got[0].token.entry, got[1].token.entry
        assert rows[first]["time_since_delivered"] < 150 <= rows[second]["time_since_delivered"]
        assert rows[first]["times_delivered"] == 1 and rows[first]["consumer"] == b"a"
        await got[1].ack()
        await session.flush_acks()
        await got[1].touch()
        assert [r["message_id"].decode() for r in
                await client.xpending_range(f"{stream}:0", "g", min="-", max="+", count=10)] == [first]


# ------------------------------------------------------------------------------------ poison and malformed entries


async def test_an_entry_delivered_too_often_goes_to_the_dead_letter_when_taken_over(
        redis_url: str, client: Any, stream: str, caplog: pytest.LogCaptureFixture) -> None:
    """Taken over with more deliveries than ``max_deliveries``: dead-lettered with the count and the limit in the
    reason, not handed downstream; one delivered exactly ``max_deliveries`` times is still handed."""
    await client.xgroup_create(f"{stream}:0", "g", id="0", mkstream=True)
    ids = await add(client, f"{stream}:0", "poison", "fine")
    await client.xreadgroup("g", "dead", {f"{stream}:0": ">"}, count=2)  # both once
    for _ in range(2):
        await client.xreadgroup("g", "dead", {f"{stream}:0": "0"}, count=1)  # "poison" twice more
    await client.xreadgroup("g", "dead", {f"{stream}:0": ids[0]}, count=1)  # "fine" once more
    async with opened(redis_url, stream, partitions=1, max_deliveries=3) as session:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert await take(session, 10, 0.05) == []
        dead = await client.xrange(f"{stream}:dead")
        assert [(f[b"dlq_id"], f[b"dlq_reason"], f[b"dlq_deliveries"]) for _, f in dead] == [
            (ids[0].encode(), b"delivered 4 times (max_deliveries=3)", b"4")]
        got = await take(session, 10, 0.05)
        assert [(m.data, m.deliveries) for m in got] == [("fine", 3)]  # at the limit: still handed
        assert session.stats.dead_lettered == 1 and session.stats.delivered == 1
        assert "moved to" in caplog.text


async def test_a_pending_entry_deleted_from_the_stream_is_dead_lettered_and_skipped(
        redis_url: str, client: Any, stream: str) -> None:
    """A pending entry whose data is gone: recorded in the dead-letter stream as deleted, the next one follows."""
    await client.xgroup_create(f"{stream}:0", "g", id="0", mkstream=True)
    ids = await add(client, f"{stream}:0", "gone", "kept")
    await client.xreadgroup("g", "dead", {f"{stream}:0": ">"}, count=2)
    await client.xdel(f"{stream}:0", ids[0])
    async with opened(redis_url, stream, partitions=1) as session:
        got: list[Any] = []
        with anyio.fail_after(5):
            while not got:
                got = await take(session, 10, 0.05)
        assert [m.data for m in got] == ["kept"]
        dead = await client.xrange(f"{stream}:dead")
        reasons = [f[b"dlq_reason"] for _, f in dead]
        assert reasons in ([b"entry deleted from the stream"], [])  # redis >= 7 drops it from the pending list
        assert ids[0] not in await pending_ids(client, f"{stream}:0")


async def test_malformed_payloads_are_dead_lettered_and_counted(redis_url: str, client: Any, stream: str) -> None:
    """A payload the decoder rejects (or a missing field) is dead-lettered with the error, counted as malformed;
    ``decode=None`` hands the raw bytes, ``field=None`` the whole field dict."""
    async with opened(redis_url, stream, partitions=1) as session:
        await read_all(session)
        await client.xadd(f"{stream}:0", {"data": "{not json"})
        await client.xadd(f"{stream}:0", {"other": "1"})
        await add(client, f"{stream}:0", 7)
        got = await take(session, 10, 0.05)
        assert [m.data for m in got] == [7]
        assert session.stats.malformed == 2 and session.stats.dead_lettered == 2
        reasons = [f[b"dlq_reason"].decode() for _, f in await client.xrange(f"{stream}:dead")]
        assert reasons[0].startswith("malformed payload: JSONDecodeError: ")
        assert reasons[1] == "malformed payload: KeyError: b'data'"
    async with opened(redis_url, stream + "r", partitions=1, decode=None) as session:
        await read_all(session)
        await client.xadd(f"{stream}r:0", {"data": "raw"})
        assert [m.data for m in await take(session, 10, 0.05)] == [b"raw"]
    async with opened(redis_url, stream + "f", partitions=1, field=None) as session:
        await read_all(session)
        await client.xadd(f"{stream}f:0", {"x": "1"})
        assert [m.data for m in await take(session, 10, 0.05)] == [{b"x": b"1"}]


# ------------------------------------------------------------------------------------------------ busy and close


async def test_busy_means_a_message_of_the_partition_is_in_progress(redis_url: str, client: Any,
                                                                    stream: str) -> None:
    """A partition is busy while a message of it is held downstream or waits in the batch, unsettled."""
    async with opened(redis_url, stream, partitions=2) as session:
        await read_all(session)
        await add(client, f"{stream}:1", 1, 2)
        got = await session.read(10, 0.05)
        assert session.busy(1) and not session.busy(0)
        session.track(got[0].token)
        session.unyielded = [got[1]]
        await got[1].ack()
        assert session.busy(1) and not session.busy(0)
        session.unyielded = []
        assert session.busy(1)
        await got[0].ack()
        assert not session.busy(1)
        session.unyielded = got
        assert not session.busy(1)


async def test_close_hands_back_releases_leaves_and_closes(redis_url: str, client: Any, stream: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Closing: the unsettled messages are handed back (left pending, counted), the acknowledgements sent, every
    lease and the membership dropped, the client closed."""
    src = source(redis_url, stream, partitions=2)
    session = RedisPartitionSession(src, await connect_redis(redis_url), "a", redis_transient())
    with anyio.fail_after(10):
        await session.start()
        await read_all(session)
        await add(client, f"{stream}:0", 1, 2, 3, 4)
        got = await session.read(10, 0.05)
        for message in got[:2]:
            session.track(message.token)
        session.unyielded = got[2:]
        await got[2].ack()
        await session.hand_back([got[0].token, got[1].token, got[0].token])
        assert session.stats.handed_back == 2
        closed = watch_close(session)
        with caplog.at_level(logging.INFO, logger=LOGGER):
            await session.aclose()
    assert session.stats.handed_back == 3 and session.stats.acked == 1
    assert len(await pending_ids(client, f"{stream}:0")) == 3
    assert await client.keys(f"{stream}:g:lease:*") == []
    assert await client.zrange(f"{stream}:g:members", 0, -1) == []
    assert src.owned_partitions == []
    assert "left (partitions released, membership dropped)" in caplog.text
    assert closed == [True]


async def test_close_gives_the_last_acknowledgements_half_the_close_deadline(
        redis_url: str, client: Any, stream: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Acknowledgements that are never confirmed get half of the close's deadline; then the leases are released
    anyway (what they covered is delivered again)."""
    import talkpipe_async.connectors._redis_partitions as module

    monkeypatch.setattr(module, "CLOSE_TIMEOUT", 0.6)
    src = source(redis_url, stream, partitions=1)
    session = RedisPartitionSession(src, await connect_redis(redis_url), "a", redis_transient())
    with anyio.fail_after(10):
        await session.start()
        await add(client, f"{stream}:0", 1)
        got = await read_all(session)
        await got[0].ack()
        real = session.client

        class Pipe:
            def xack(self, *args: Any) -> None:
                pass

            async def execute(self) -> Any:
                await anyio.sleep_forever()

        class Hanging:
            def pipeline(self, transaction: bool = False) -> Any:
                return Pipe()

            async def aclose(self) -> None:
                await real.aclose()

        session.client = Hanging()
        start = anyio.current_time()
        await session.aclose()
        took = anyio.current_time() - start
    assert 0.28 <= took < 0.6
    assert await client.keys(f"{stream}:g:lease:*") == []
    assert await pending_ids(client, f"{stream}:0") == [got[0].token.entry]


async def test_close_warns_when_the_broker_is_gone_and_still_closes(redis_url: str, stream: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A close whose last acknowledgements or releases fail says so (the leases lapse after ``lease_ttl``)."""
    src = source(redis_url, stream, partitions=1, outage_budget=0.0, name="src")
    session = RedisPartitionSession(src, await connect_redis(redis_url), "a", redis_transient())
    with anyio.fail_after(10):
        await session.start()

        async def broken(*args: Any, **kw: Any) -> Any:
            raise ValueError("no")

        session.coordinator.table.release = broken  # type: ignore[method-assign]
        closed = watch_close(session)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            await session.aclose()
    assert ("src: could not send the last acknowledgements or release the partitions (ValueError: no); "
            "the leases lapse after lease_ttl") in caplog.text
    assert closed == [True]


async def test_each_command_is_named_for_the_outage_messages(redis_url: str, client: Any, stream: str) -> None:
    """Every command goes through the outage guard under the name its warnings and errors show."""
    async with opened(redis_url, stream, partitions=1, start=False) as session:
        names = record_command_names(session)
        await client.xgroup_create(f"{stream}:0", "g", id="0", mkstream=True)
        await add(client, f"{stream}:0", 1, 2, 3)
        await client.xreadgroup("g", "dead", {f"{stream}:0": ">"}, count=1)
        await session.start()
        assert names == ["lease heartbeat", "lease acquire"]
        names.clear()
        got = await read_all(session)
        assert names[:2] == ["XPENDING", "XCLAIM"] and "XREADGROUP" in names
        names.clear()
        await got[1].touch()
        await got[1].term("x")
        await got[0].ack()
        await session.flush_acks()
        assert names == ["XCLAIM (touch)", "XRANGE", "dead-letter XADD+XACK", "XACK"]
        names.clear()
        await session.coordinator.leave(session.before_release, 1.0)
        assert names == ["lease release", "leave"]


async def test_an_outage_is_counted_and_named(stream: str) -> None:
    """The session's commands ride out an outage within ``outage_budget``; past it the error names the stage and
    the server, and each outage is counted once."""
    src = source("redis://127.0.0.1:1/0", stream, partitions=1, outage_budget=0.0, name="src", timeout=1.5)
    import redis.asyncio as aioredis

    session = RedisPartitionSession(src, aioredis.Redis.from_url(src.url), "a", redis_transient())
    assert session.guard.call_timeout == 6.5 and session.guard.budget == 0.0

    async def down() -> None:
        raise ConnectionError("refused")

    with pytest.raises(BrokerUnavailable, match=r"src.*redis at redis://127\.0\.0\.1:1/0"):
        await session.guard.call("PING", down)
    assert session.stats.outages == 1
    await session.guard.call("PING", anyio.sleep, 0)  # the outage ends
    with pytest.raises(BrokerUnavailable):
        await session.guard.call("PING", down)
    assert session.stats.outages == 2


# ================================================================================================================
# The plain (unpartitioned) session: ``talkpipe_async.connectors._redis_session``


@asynccontextmanager
async def plain(url: str, stream: str, *, consumer: str = "a", group: bool = True,
                **kw: Any) -> AsyncIterator[RedisSession]:
    """A session of an unpartitioned source on *stream* (group ``g``, created unless told), closed at the end."""
    kw.setdefault("block", 0.05)
    src = redis_stream_messages(stream, "g", url=url, consumer=consumer, **kw)
    client = await connect_redis(url)
    if group:
        await ensure_group(client, stream, "g")
    session = RedisSession(src, client, consumer, redis_transient())
    try:
        with anyio.fail_after(20):
            yield session
    finally:
        with anyio.fail_after(10):
            await session.aclose()


async def plain_take(session: RedisSession, count: int = 100, wait: float = 0.05) -> list[Any]:
    """One read, its messages then held downstream (as the source does)."""
    got = await session.read(count, wait)
    for message in got:
        session.track(message.token)
    return got


async def plain_pending(client: Any, stream: str) -> dict[str, Any]:
    """The group's pending entries by id: consumer, idle ms, deliveries."""
    rows = await client.xpending_range(stream, "g", min="-", max="+", count=100)
    return {r["message_id"].decode(): (r["consumer"].decode(), r["time_since_delivered"], r["times_delivered"])
            for r in rows}


async def test_plain_reads_fresh_entries_then_acknowledges_in_batches(redis_url: str, client: Any,
                                                                     stream: str) -> None:
    """A read hands up to ``count`` new entries (first deliveries, not suspect, ids as text); acks are sent in one
    ``XACK`` once ``ack_batch`` wait, or before the next read; the first one waiting wakes the ack timer."""
    ids = await add(client, stream, *range(5))
    async with plain(redis_url, stream, ack_batch=3, batch=10) as session:
        assert session.ack_batch == 3
        got = await plain_take(session, 4)
        assert [(m.data, m.id, m.deliveries, m.token.suspect) for m in got] == [
            (i, ids[i], 1, False) for i in range(4)]
        assert isinstance(got[0].token, RedisToken) and session.stats.delivered == 4 and session.stats.reads == 1
        await got[0].ack()
        assert session.ack_waiting.is_set() and session.acks == [ids[0]]
        session.ack_waiting = anyio.Event()
        await got[1].ack()
        assert not session.ack_waiting.is_set()
        assert session.stats.acked == 0 and len(await plain_pending(client, stream)) == 4
        await got[2].ack()
        assert session.stats.acked == 3 and session.acks == []
        assert list(await plain_pending(client, stream)) == [ids[3]]
        await got[3].ack()
        assert got[3].token.ack_nowait() is None  # settled once
        assert [m.data for m in await plain_take(session)] == [4]
        assert session.stats.reads == 2 and session.stats.delivered == 5
        assert session.stats.acked == 4 and list(await plain_pending(client, stream)) == [ids[4]]
        assert session.held.keys() == {ids[4]}


async def test_plain_ack_settles_the_token_and_wakes_a_drain(redis_url: str, client: Any, stream: str) -> None:
    """Acking the last message held downstream ends a wait for the drain at once; a token that was never handed
    out (no tracker) acks too; a failure of the background is raised by the next ack."""
    await add(client, stream, 1, 2, 3)
    async with plain(redis_url, stream) as session:
        got = await plain_take(session)
        token = RedisToken(session, "0-1", 1)
        assert (token.id, token.deliveries, token.settled, token.suspect, token._tracker) == ("0-1", 1, False,
                                                                                            False, None)
        await got[2].ack()
        async with anyio.create_task_group() as tg:
            drained: list[bool] = []

            async def drain() -> None:
                drained.append(await session.wait_drained(5))

            tg.start_soon(drain)
            await anyio.wait_all_tasks_blocked()
            await got[0].ack()
            await anyio.wait_all_tasks_blocked()
            assert not drained  # one still held
            start = anyio.current_time()
            await got[1].ack()
        assert drained == [True] and anyio.current_time() - start < 1
        assert session.held == {}
        await token.ack()
        assert token.settled
        session.failure = RuntimeError("acks failed")
        with pytest.raises(RuntimeError, match="acks failed"):
            await RedisToken(session, "0-2", 1).ack()
        session.failure = None


async def test_plain_acknowledgements_that_fail_are_kept_for_the_next_flush(redis_url: str, client: Any,
                                                                           stream: str) -> None:
    """An ``XACK`` that fails keeps its ids (in front of any queued since) and does not count them."""
    await add(client, stream, 1, 2, 3)
    async with plain(redis_url, stream, outage_budget=0.0) as session:
        got = await plain_take(session)
        await got[0].ack()
        await got[1].ack()
        real = session.client.xack

        async def down(*args: Any) -> Any:
            raise ConnectionError("down")

        session.client.xack = down
        with pytest.raises(BrokerUnavailable):
            await session.flush_acks()
        session.client.xack = real
        assert session.acks == [got[0].id, got[1].id] and session.stats.acked == 0
        await got[2].ack()
        await session.flush_acks()
        assert session.stats.acked == 3 and await plain_pending(client, stream) == {}
        assert session.stats.outages == 1


async def test_plain_acks_queued_during_a_failing_flush_are_kept_after_its_ids(redis_url: str, client: Any,
                                                                              stream: str) -> None:
    """An ack queued while an ``XACK`` is on the wire, which then fails, is kept too: the failed ids go in front."""
    await add(client, stream, 1, 2)
    async with plain(redis_url, stream, outage_budget=0.0) as session:
        got = await plain_take(session)
        await got[0].ack()
        on_wire = anyio.Event()
        fail = anyio.Event()
        real = session.client.xack

        async def slow_then_down(*args: Any) -> Any:
            on_wire.set()
            await fail.wait()
            raise ConnectionError("down")

        session.client.xack = slow_then_down

        async def flush() -> None:
            with pytest.raises(BrokerUnavailable):
                await session.flush_acks()

        async with anyio.create_task_group() as tg:
            tg.start_soon(flush)
            await on_wire.wait()
            await got[1].ack()
            fail.set()
        assert session.acks == [got[0].id, got[1].id]
        session.client.xack = real
        await session.flush_acks()
        assert session.stats.acked == 2 and await plain_pending(client, stream) == {}


async def test_plain_each_command_is_named_for_the_outage_messages(redis_url: str, client: Any,
                                                                  stream: str) -> None:
    """Every command goes through the outage guard under the name its warnings and errors show."""
    ids = await add(client, stream, 1, 2, 3)
    await ensure_group(client, stream, "g")
    await client.xreadgroup("g", "dead", {stream: ">"}, count=1)
    await client.xreadgroup("g", "a", {stream: ">"}, count=1)
    async with plain(redis_url, stream, claim_idle=0.0) as session:
        names = record_command_names(session)
        own = await plain_take(session)
        assert [m.id for m in own] == [ids[1]]
        assert names == ["XREADGROUP (own pending)", "XPENDING"]
        names.clear()
        claimed = await plain_take(session)  # the end of its own list, then a scan
        assert [m.id for m in claimed] == [ids[0]]
        assert names == ["XREADGROUP (own pending)", "XPENDING (idle)", "XCLAIM"]
        names.clear()
        await claimed[0].touch()
        await claimed[0].nak()
        await own[0].term("x")
        assert names == ["XCLAIM (touch)", "XCLAIM (nak)", "XRANGE", "dead-letter XADD+XACK"]
        names.clear()
        again = await plain_take(session)  # the nacked entry, claimed again at once
        await again[0].ack()
        await session.flush_acks()
        assert names == ["XPENDING (idle)", "XCLAIM", "XACK"]
        names.clear()
        assert [m.data for m in await plain_take(session)] == [3]
        assert names == ["XPENDING (idle)", "XREADGROUP"]
        names.clear()
        await session.hand_back([claimed[0].token])
        assert names == []  # settled already: nothing to hand back
        await session._hand_back_ids([ids[0]])
        assert names == ["XCLAIM (hand back)"]
        names.clear()
    assert names == ["XPENDING (own)", "XCLAIM (hand back)"]  # the last entry, still held


async def test_plain_an_outage_rereads_the_own_pending_list(redis_url: str, client: Any, stream: str) -> None:
    """After an outage the session reads its own pending list again, in full batches and not suspect (entries
    whose delivery the broken connection lost), skipping those it holds."""
    await add(client, stream, 1, 2, 3, 4)
    async with plain(redis_url, stream) as session:
        first = await plain_take(session, 1)
        await client.xreadgroup("g", "a", {stream: ">"}, count=3)  # delivered, but lost on the way
        session._outage_started()
        assert session.stats.outages == 1
        got = await plain_take(session, 2)  # 1 and 2 read from its list: 1 is held here
        assert [(m.data, m.deliveries, m.token.suspect) for m in got] == [(2, 2, False)]
        assert [m.data for m in await plain_take(session, 2)] == [3, 4]
        assert first[0].data == 1
        assert await plain_take(session, 10) == []


async def test_plain_a_restarted_consumer_takes_its_own_pending_entries_first_one_at_a_time(
        redis_url: str, client: Any, stream: str) -> None:
    """A consumer name with entries already pending (a restarted instance) hands them first, one per read,
    suspect, with their delivery counts; then new entries."""
    ids = await add(client, stream, 1, 2)
    await ensure_group(client, stream, "g")
    await client.xreadgroup("g", "a", {stream: ">"}, count=2)
    await client.xreadgroup("g", "a", {stream: "0"}, count=1)  # the first twice
    new = await add(client, stream, 3)
    async with plain(redis_url, stream, max_deliveries=3) as session:  # the first is at the limit: handed
        one = await plain_take(session)
        assert [(m.id, m.deliveries, m.token.suspect) for m in one] == [(ids[0], 3, True)]
        two = await plain_take(session)
        assert [(m.id, m.deliveries, m.token.suspect) for m in two] == [(ids[1], 2, True)]
        assert session.stats.redelivered == 2
        three = await plain_take(session)
        assert [(m.id, m.deliveries) for m in three] == [(new[0], 1)]
        assert session.stats.reads == 1 and session.stats.delivered == 3


async def test_plain_own_entries_deleted_or_over_the_limit_are_dead_lettered_and_the_rest_handed(
        redis_url: str, client: Any, stream: str) -> None:
    """Its own pending list read again in full (after an outage): an entry deleted from the stream and one
    delivered more than ``max_deliveries`` times go to the dead-letter stream with their reasons; the entries after
    them in the same read are still handed (one at the limit too), their payload as stored with ``decode=None``."""
    ids = await add(client, stream, "gone", "over", "ok")
    await ensure_group(client, stream, "g")
    await client.xreadgroup("g", "a", {stream: ">"}, count=3)
    await client.xreadgroup("g", "a", {stream: ids[0]}, count=1)  # "over" twice
    await client.xdel(stream, ids[0])
    async with plain(redis_url, stream, max_deliveries=2, decode=None) as session:
        session._outage_started()  # the own list is read again in full batches
        got = await plain_take(session, 10)
        assert [(m.id, m.data, m.deliveries) for m in got] == [(ids[2], b'"ok"', 2)]
        dead = await client.xrange(f"{stream}:dead")
        assert [(f[b"dlq_id"].decode(), f[b"dlq_reason"]) for _, f in dead] == [
            (ids[0], b"entry deleted from the stream"), (ids[1], b"delivered 3 times (max_deliveries=2)")]
        assert list(await plain_pending(client, stream)) == [ids[2]]
    gone = await add(client, stream + "w", "gone")
    await ensure_group(client, stream + "w", "g")
    await client.xreadgroup("g", "a", {stream + "w": ">"}, count=1)
    await client.xdel(stream + "w", gone[0])  # trimmed or deleted while pending
    async with plain(redis_url, stream + "w", field=None) as session:
        assert await plain_take(session, 10) == []  # no empty payload handed downstream
        assert session.stats.dead_lettered == 1 and session.stats.malformed == 0


async def test_plain_own_pending_entries_over_the_limit_go_to_the_dead_letter(redis_url: str, client: Any,
                                                                              stream: str) -> None:
    """An own pending entry delivered more than ``max_deliveries`` times is dead-lettered, not handed."""
    ids = await add(client, stream, "bad", "ok")
    await ensure_group(client, stream, "g")
    await client.xreadgroup("g", "a", {stream: ">"}, count=1)
    await client.xreadgroup("g", "a", {stream: "0"}, count=1)
    async with plain(redis_url, stream, max_deliveries=1) as session:
        assert await plain_take(session) == []
        dead = await client.xrange(f"{stream}:dead")
        assert [(f[b"dlq_id"], f[b"dlq_reason"]) for _, f in dead] == [
            (ids[0].encode(), b"delivered 3 times (max_deliveries=1)")]  # this read was the third
        assert [m.data for m in await plain_take(session)] == ["ok"]


async def test_plain_entries_idle_for_claim_idle_are_taken_over_one_at_a_time(redis_url: str, client: Any,
                                                                             stream: str) -> None:
    """Entries another consumer left pending for ``claim_idle`` are claimed one per read, oldest first, with their
    delivery count raised, suspect; an entry not idle long enough is not; no scan before ``claim_interval``."""
    ids = await add(client, stream, 1, 2)
    await ensure_group(client, stream, "g")
    await client.xreadgroup("g", "dead", {stream: ">"}, count=2)
    async with plain(redis_url, stream, consumer="b", claim_idle=0.3, claim_interval=0.3) as session:
        before = anyio.current_time()
        assert await plain_take(session) == []  # not idle for 0.3 s yet
        assert session.stats.claims == 1
        assert before + 0.3 <= session.next_claim <= anyio.current_time() + 0.3
        await anyio.sleep(0.35)
        got = await plain_take(session)
        assert [(m.id, m.deliveries, m.token.suspect) for m in got] == [(ids[0], 2, True)]
        assert (await plain_pending(client, stream))[ids[0]][0] == "b"
        got = await plain_take(session)
        assert [m.id for m in got] == [ids[1]]
        assert session.stats.claims == 3 and session.stats.redelivered == 2
        assert await plain_take(session) == []
        claims = session.stats.claims
        assert await plain_take(session) == []
        assert session.stats.claims == claims  # the next scan waits for claim_interval


async def test_plain_a_slow_message_claimed_again_by_its_own_consumer_settles_twice(redis_url: str, client: Any,
                                                                                     stream: str) -> None:
    """A message held longer than ``claim_idle`` is claimed again (by any consumer, this one too): both deliveries
    are settled without error, in either order."""
    ids = await add(client, stream, 1)
    async with plain(redis_url, stream, claim_idle=0.1, claim_interval=0.05) as session:
        first = await plain_take(session)
        await anyio.sleep(0.2)  # the handling of the first delivery outlasts claim_idle
        second: list[Any] = []
        with anyio.fail_after(5):
            while not second:
                second = await plain_take(session)
        assert [(m.id, m.deliveries) for m in second] == [(ids[0], 2)]
        await first[0].ack()
        await second[0].ack()
        assert session.held == {}
        await session.flush_acks()
        assert await plain_pending(client, stream) == {}


async def test_plain_a_claimed_entry_over_the_limit_goes_to_the_dead_letter(redis_url: str, client: Any,
                                                                            stream: str) -> None:
    """An entry taken over with more deliveries than ``max_deliveries`` is dead-lettered, not handed."""
    ids = await add(client, stream, "bad")
    await ensure_group(client, stream, "g")
    await client.xreadgroup("g", "dead", {stream: ">"}, count=1)
    async with plain(redis_url, stream, consumer="b", claim_idle=0.0, max_deliveries=1) as session:
        assert await plain_take(session) == []
        dead = await client.xrange(f"{stream}:dead")
        assert [(f[b"dlq_id"], f[b"dlq_reason"]) for _, f in dead] == [
            (ids[0].encode(), b"delivered 2 times (max_deliveries=1)")]
        assert await plain_pending(client, stream) == {}


async def test_plain_a_claimed_entry_deleted_meanwhile_is_skipped(redis_url: str, client: Any,
                                                                 stream: str) -> None:
    """A pending entry deleted from the stream is not handed downstream when claimed."""
    ids = await add(client, stream, 1)
    await ensure_group(client, stream, "g")
    await client.xreadgroup("g", "dead", {stream: ">"}, count=1)
    await client.xdel(stream, ids[0])
    async with plain(redis_url, stream, consumer="b", claim_idle=0.0) as session:
        assert await plain_take(session) == []
        assert await plain_take(session) == []


async def test_plain_nak_makes_the_entry_claimable_after_its_delay(redis_url: str, client: Any,
                                                                  stream: str) -> None:
    """``nak(delay)`` leaves the entry pending with an idle time of ``claim_idle - delay``: any consumer's next
    scan takes it once the delay is over (at once without a delay), delivered again."""
    ids = await add(client, stream, 1, 2)
    async with plain(redis_url, stream, claim_idle=5.0) as session:
        got = await plain_take(session)
        await got[0].nak()
        await got[0].nak()  # settled once
        assert session.stats.nacked == 1 and session.next_claim == 0.0
        assert (await plain_pending(client, stream))[ids[0]][1] >= 5000
        again = await plain_take(session)
        assert [(m.id, m.deliveries) for m in again] == [(ids[0], 2)]
        await again[0].nak(1.0)
        idle = (await plain_pending(client, stream))[ids[0]][1]
        assert 4000 <= idle < 4500
        await got[1].nak(10.0)  # a delay beyond claim_idle: idle 0
        assert (await plain_pending(client, stream))[ids[1]][1] < 500
        assert session.stats.nacked == 3


async def test_plain_touch_resets_the_idle_time(redis_url: str, client: Any, stream: str) -> None:
    """``touch()`` resets the idle time of an unsettled entry without counting a delivery."""
    ids = await add(client, stream, 1, 2)
    async with plain(redis_url, stream) as session:
        got = await plain_take(session)
        await anyio.sleep(0.25)
        await got[0].touch()
        rows = await plain_pending(client, stream)
        assert rows[ids[0]][1] < 150 <= rows[ids[1]][1] and rows[ids[0]][2] == 1
        await got[1].ack()
        await session.flush_acks()
        await got[1].touch()
        assert list(await plain_pending(client, stream)) == [ids[0]]


async def test_plain_term_and_poison_go_to_the_dead_letter(redis_url: str, client: Any, stream: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """``term(reason)`` copies the entry's fields with where it came from, why and how often it was delivered to
    the dead-letter stream and acknowledges it, in one transaction; logged; malformed payloads the same."""
    await add(client, stream, {"v": 0})
    ids = await add(client, stream, {"v": 1})
    bad = (await client.xadd(stream, {"data": "{oops"})).decode()
    missing = (await client.xadd(stream, {"x": "1"})).decode()
    async with plain(redis_url, stream, dead_letter=f"{stream}:dlq", dead_letter_maxlen=10, name="src") as s:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            got = await plain_take(s)
            assert [m.data for m in got] == [{"v": 0}, {"v": 1}]
            await got[0].ack()
            got = got[1:]
            await got[0].term("no good")
            await got[0].term("again")
        dead = await client.xrange(f"{stream}:dlq")
        fields = [f for _, f in dead]
        assert fields[0][b"dlq_reason"].startswith(b"malformed payload: JSONDecodeError: ")
        assert fields[1] == {b"x": b"1", b"dlq_stream": stream.encode(), b"dlq_group": b"g",
                             b"dlq_id": missing.encode(), b"dlq_reason": b"malformed payload: KeyError: b'data'",
                             b"dlq_deliveries": b"1"}
        assert fields[2] == {b"data": b'{"v": 1}', b"dlq_stream": stream.encode(), b"dlq_group": b"g",
                             b"dlq_id": ids[0].encode(), b"dlq_reason": b"no good", b"dlq_deliveries": b"1"}
        assert fields[0][b"dlq_id"] == bad.encode()
        assert s.stats.dead_lettered == 3 and s.stats.malformed == 2 and s.stats.delivered == 2
        await s.flush_acks()
        moved = [r.getMessage() for r in caplog.records if "moved to" in r.getMessage()]
        assert moved[-1] == f"src: entry {ids[0]} moved to {stream}:dlq: no good"
        assert await plain_pending(client, stream) == {}
        await s.dead_letter_ids(["0-1"], "gone", 4)  # an entry no longer in the stream: no fields
        last = (await client.xrange(f"{stream}:dlq"))[-1][1]
        assert last[b"dlq_id"] == b"0-1" and b"data" not in last and last[b"dlq_deliveries"] == b"4"
        await s.dead_letter({})
        assert s.stats.dead_lettered == 4
        await s.dead_letter({f"0-{i + 2}": ({"data": "x"}, "r", 1) for i in range(300)})
        assert await client.xlen(f"{stream}:dlq") < 300  # capped (approximately) at dead_letter_maxlen


async def test_plain_decode_paths(redis_url: str, client: Any, stream: str) -> None:
    """The payload: ``decode`` of the field, the raw bytes with ``decode=None``, the field dict with ``field=None``;
    one bad payload among good ones costs only itself."""
    await add(client, stream, 1)
    await client.xadd(stream, {"data": "raw"})
    async with plain(redis_url, stream, decode=None) as session:
        got = await plain_take(session)
        entries = [i.decode() for i, _ in await client.xrange(stream)]
        assert [(m.data, m.id, m.deliveries, m.token.suspect) for m in got] == [
            (b'1', entries[0], 1, False), (b"raw", entries[1], 1, False)]
        for message in got:
            await message.ack()
        await session.flush_acks()
        assert await plain_pending(client, stream) == {} and session.stats.delivered == 2
    async with plain(redis_url, stream + "f", field=None) as session:
        await client.xadd(stream + "f", {"x": "1"})
        assert [m.data for m in await plain_take(session)] == [{b"x": b"1"}]
    async with plain(redis_url, stream + "m") as session:
        await add(client, stream + "m", 1)
        await client.xadd(stream + "m", {"data": "{"})
        await add(client, stream + "m", 2)
        got = await plain_take(session)
        assert [(m.data, m.deliveries, m.token.suspect) for m in got] == [(1, 1, False), (2, 1, False)]
        assert session.stats.delivered == 2 and session.stats.redelivered == 0


async def test_plain_close_hands_back_what_it_owns(redis_url: str, client: Any, stream: str) -> None:
    """Closing sends the last acknowledgements, then makes every entry this consumer still owns claimable by any
    consumer at once (idle far above any ``claim_idle``), without raising its delivery count; counted once."""
    ids = await add(client, stream, 1, 2, 3, 4)
    async with plain(redis_url, stream) as session:
        got = await plain_take(session, 3)
        await got[0].ack()
        session.unyielded = [got[2]]
        await session.hand_back([got[1].token])
        await session.hand_back([got[1].token])
        assert session.stats.handed_back == 1
        await session._hand_back_ids([ids[1].encode()])
        assert session.stats.handed_back == 1
        await client.xreadgroup("g", "a", {stream: ">"}, count=1)  # the fourth: delivered, never seen
        others = await add(client, stream, 5)
        await client.xreadgroup("g", "other", {stream: ">"}, count=1)  # another consumer's, in progress
        closed = watch_close(session)
    assert closed == [True]
    rows = await plain_pending(client, stream)
    assert set(rows) == {*ids[1:], *others}
    assert rows.pop(others[0])[:1] == ("other",) and (await plain_pending(client, stream))[others[0]][1] < 60_000
    assert all(idle >= HAND_BACK_IDLE_MS and n == 1 for _, idle, n in rows.values())
    assert session.stats.handed_back == 3 and session.stats.acked == 1


async def test_plain_close_warns_when_it_cannot_hand_back(redis_url: str, client: Any, stream: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A close that cannot reach the server says what is left behind, and still closes the client."""
    async with plain(redis_url, stream, outage_budget=0.0, name="src") as session:

        async def down(*args: Any, **kw: Any) -> Any:
            raise ValueError("no")

        session.client.xpending_range = down
        closed = watch_close(session)
        caplog.set_level(logging.WARNING, logger=LOGGER)
    assert closed == [True]
    assert ("src: could not send the last acknowledgements or hand back pending entries (ValueError: no); they are "
            "redelivered after claim_idle") in caplog.text


async def test_plain_background_sends_a_lone_ack_after_the_interval(redis_url: str, client: Any,
                                                                    stream: str) -> None:
    """The ack timer sends what waits ``ack_interval`` after the first ack; its failure is kept for the reads."""
    await add(client, stream, 1)
    async with plain(redis_url, stream, ack_interval=0.2, outage_budget=0.0) as session:
        got = await plain_take(session)
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.background)
            start = anyio.current_time()
            await got[0].ack()
            with anyio.fail_after(3):
                while await plain_pending(client, stream):
                    await anyio.sleep(0.01)
            assert anyio.current_time() - start >= 0.15
            assert session.stats.acked == 1
            real = session.client.xack

            async def down(*args: Any) -> Any:
                raise ConnectionError("down")

            session.client.xack = down
            await RedisToken(session, "0-1", 1).ack()
            with anyio.fail_after(3):
                while session.failure is None:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        assert isinstance(session.failure, BrokerUnavailable)
        session.client.xack = real
        session.failure = None


async def test_plain_a_read_blocks_for_its_wait(redis_url: str, stream: str) -> None:
    """With nothing to read, a read returns nothing after about its wait."""
    async with plain(redis_url, stream) as session:
        await plain_take(session)
        start = anyio.current_time()
        assert await session.read(10, 0.3) == []
        assert 0.25 <= anyio.current_time() - start < 1.5


async def test_plain_an_outage_is_counted_and_named(stream: str) -> None:
    """Past ``outage_budget`` the error names the stage and the server; the call deadline is ``timeout + 5``."""
    import redis.asyncio as aioredis

    src = redis_stream_messages(stream, "g", url="redis://127.0.0.1:1/0", outage_budget=0.0, name="src",
                                timeout=1.5)
    session = RedisSession(src, aioredis.Redis.from_url(src.url), "a", redis_transient())
    assert session.guard.call_timeout == 6.5 and session.guard.budget == 0.0
    assert (session.stream, session.group, session.consumer, session.own_cursor) == (stream, "g", "a", "0-0")

    async def down() -> None:
        raise ConnectionError("refused")

    with pytest.raises(BrokerUnavailable, match=r"src.*redis at redis://127\.0\.0\.1:1/0"):
        await session.guard.call("PING", down)
    assert session.stats.outages == 1 and session.own_suspect is False
    session.own_cursor = None
    await session.guard.call("PING", anyio.sleep, 0)  # the outage ends
    with pytest.raises(BrokerUnavailable):
        await session.guard.call("PING", down)
    assert session.stats.outages == 2 and session.own_cursor == "0-0"
