"""Redis Streams connectors against a real redis-server started on 127.0.0.1.

The redis client (redis.asyncio) is an asyncio library, so these tests run
on asyncio and uvloop only (a local ``anyio_backend`` override); on trio the
connectors raise BackendNotSupported, which ``test_trio_is_refused_clearly``
checks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from talkpipe_async import segment
from talkpipe_async.connectors import (
    Message,
    ack,
    consume,
    filter_data,
    map_data,
    redis_stream_messages,
    to_redis_stream,
)
from tests.helpers import servers
from tests.helpers.brokers import ASYNCIO_LOOPS, check_refused_on_trio, check_unreachable

pytest_plugins = ["tests.helpers.brokers"]

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(servers.redis_binary() is None, reason="redis-server not installed"),
]


@pytest.fixture(params=ASYNCIO_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """redis.asyncio needs asyncio: run on asyncio and uvloop (trio: see test_trio_is_refused_clearly)."""
    return request.param


@pytest.fixture
def names() -> dict[str, str]:
    """Unique stream and group names for one test."""
    tag = uuid.uuid4().hex[:8]
    return {"stream": f"in-{tag}", "group": f"g-{tag}", "out": f"out-{tag}"}


async def fill(client: Any, stream: str, values: list[Any]) -> None:
    pipe = client.pipeline(transaction=False)
    for v in values:
        pipe.xadd(stream, {"data": json.dumps(v)})
    await pipe.execute()


async def pending(client: Any, stream: str, group: str) -> int:
    return int((await client.xpending(stream, group))["pending"])


def source(redis_url: str, names: dict[str, str], **kw: Any) -> redis_stream_messages:
    kw.setdefault("block", 0.05)
    kw.setdefault("idle_exit", 5.0)  # a bound: a test waiting for messages that never come ends instead of hanging
    return redis_stream_messages(names["stream"], names["group"], url=redis_url, **kw)


async def test_consume_all_and_ack(redis_url: str, client: Any, names: dict[str, str]) -> None:
    await fill(client, names["stream"], list(range(250)))
    seen: list[int] = []
    src = source(redis_url, names, batch=40)
    n = await consume(src, seen.append, limit=250)
    assert n == 250 and seen == list(range(250))
    assert await pending(client, names["stream"], names["group"]) == 0
    assert src.stats.delivered == 250 and src.stats.acked == 250


async def test_ack_segment_acks_after_downstream_and_reads_one_batch(
    redis_url: str, client: Any, names: dict[str, str]
) -> None:
    await fill(client, names["stream"], list(range(20)))

    def explode_at_5(x: int) -> int:
        if x == 5:
            raise ValueError("boom at 5")
        return x

    pipeline = source(redis_url, names, batch=10) | map_data(explode_at_5) | ack()
    with pytest.raises(ValueError, match="boom at 5"):
        await pipeline.collect()
    # 0..4 were fully handled (acked); 5..9 were read (one batch) but not handled; 10..19 never read.
    assert await pending(client, names["stream"], names["group"]) == 5
    rows = await client.xpending_range(names["stream"], names["group"], min="-", max="+", count=100)
    firsts = await client.xrange(names["stream"], count=10)
    assert [r["message_id"] for r in rows] == [f[0] for f in firsts[5:10]]


async def test_read_ahead_is_one_batch(redis_url: str, client: Any, names: dict[str, str]) -> None:
    await fill(client, names["stream"], list(range(100)))
    async with (source(redis_url, names, batch=8) | ack()).stream() as items:
        async for first in items:
            assert first.data == 0
            assert await pending(client, names["stream"], names["group"]) == 8
            break


async def test_reclaim_from_dead_consumer(redis_url: str, client: Any, names: dict[str, str]) -> None:
    await fill(client, names["stream"], list(range(10)))
    # consumer "a" takes a batch and "dies" (its run ends without acking)
    async with source(redis_url, names, consumer="a", batch=10).stream() as items:
        async for _ in items:
            break
    assert await pending(client, names["stream"], names["group"]) == 10
    got: list[Message[Any]] = []
    src = source(redis_url, names, consumer="b", batch=10, claim_idle=0.1, claim_interval=0.05)
    async with src.stream() as items:
        async for message in items:
            got.append(message)
            await message.ack()
            if len(got) == 10:
                break
    assert sorted(m.data for m in got) == list(range(10))
    assert all(m.deliveries == 2 for m in got)
    assert src.stats.redelivered == 10 and src.stats.claims >= 1
    assert await pending(client, names["stream"], names["group"]) == 0


async def test_dead_letter_after_max_deliveries(redis_url: str, client: Any, names: dict[str, str]) -> None:
    await fill(client, names["stream"], ["bad", "good"])

    def fussy(x: str) -> str:
        if x == "bad":
            raise RuntimeError("cannot handle bad")
        return x

    mapper = map_data(fussy, on_error="nak")
    src = source(redis_url, names, max_deliveries=2, claim_idle=0.05, claim_interval=0.02, idle_exit=0.5)
    out = await (src | mapper | ack(unwrap=True)).collect()
    assert out == ["good"]
    dead = await client.xrange(f"{names['stream']}:dead")
    assert len(dead) == 1
    fields = dead[0][1]
    assert json.loads(fields[b"data"]) == "bad"
    assert b"delivered 3 times" in fields[b"dlq_reason"] and fields[b"dlq_deliveries"] == b"3"
    assert mapper.errors == 2 and src.stats.dead_lettered == 1
    assert await pending(client, names["stream"], names["group"]) == 0


async def test_malformed_payload_goes_to_dead_letter_without_stopping(
    redis_url: str, client: Any, names: dict[str, str]
) -> None:
    await fill(client, names["stream"], [1, 2])
    await client.xadd(names["stream"], {"data": b"{not json"})
    await client.xadd(names["stream"], {"other": b"no data field"})
    await fill(client, names["stream"], [3, 4])
    seen: list[int] = []
    src = source(redis_url, names, batch=3)
    assert await consume(src, seen.append, limit=4) == 4
    assert seen == [1, 2, 3, 4]
    dead = await client.xrange(f"{names['stream']}:dead")
    assert [d[1][b"dlq_reason"].split(b":")[0] for d in dead] == [b"malformed payload"] * 2
    assert src.stats.malformed == 2 and src.stats.dead_lettered == 2
    assert await pending(client, names["stream"], names["group"]) == 0


async def test_map_data_dead_letter_policy(redis_url: str, client: Any, names: dict[str, str]) -> None:
    await fill(client, names["stream"], [1, 0, 2])
    src = source(redis_url, names)
    out = await consume(src | map_data(lambda x: 10 // x, on_error="dead_letter"), limit=2)
    assert out == 2
    dead = await client.xrange(f"{names['stream']}:dead")
    assert len(dead) == 1 and b"ZeroDivisionError" in dead[0][1][b"dlq_reason"]
    assert await pending(client, names["stream"], names["group"]) == 0


async def test_sink_writes_in_batches_then_ack(redis_url: str, client: Any, names: dict[str, str]) -> None:
    await fill(client, names["stream"], list(range(50)))
    sink = to_redis_stream(names["out"], url=redis_url, batch=7)
    pipeline = source(redis_url, names, batch=16) | map_data(lambda x: {"v": x * 2}) | sink | ack()
    assert await consume(pipeline, limit=50) == 50
    written = await client.xrange(names["out"])
    assert [json.loads(f[b"data"])["v"] for _, f in written] == [2 * i for i in range(50)]
    assert sink.stats.written == 50 and sink.stats.write_batches >= 50 // 7
    assert await pending(client, names["stream"], names["group"]) == 0


async def test_sink_maxlen(redis_url: str, client: Any, names: dict[str, str]) -> None:
    sink = to_redis_stream(names["out"], url=redis_url, batch=10, maxlen=5, approximate=False)
    out = await sink.collect(list(range(30)))
    assert out == list(range(30))
    assert await client.xlen(names["out"]) == 5


@segment
async def pairs_reversed(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Batch into lists of two, reversed (a reordering batching stage)."""
    held: list[Any] = []
    async for item in items:
        held.append(item)
        if len(held) == 2:
            yield held[::-1]
            held = []
    if held:
        yield held


async def test_batches_and_reordering_keep_tokens(redis_url: str, client: Any, names: dict[str, str]) -> None:
    await fill(client, names["stream"], list(range(21)))
    src = source(redis_url, names, batch=5)
    seen: list[list[int]] = []
    pipeline = src | filter_data(lambda x: x != 20) | pairs_reversed()
    n = await consume(pipeline, lambda b: seen.append([m.data for m in b]), limit=10)
    assert n == 10 and seen[0] == [1, 0]
    assert await pending(client, names["stream"], names["group"]) == 0


async def test_ack_refuses_items_without_token(redis_url: str, client: Any, names: dict[str, str]) -> None:
    await fill(client, names["stream"], [1])
    with pytest.raises(TypeError, match="carries no Message"):
        await consume(source(redis_url, names) | _strip() | ack(), limit=1)


@segment
async def _strip(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Lose the token (a bug the ack segment must report)."""
    async for m in items:
        yield m.data


async def test_unreachable_server_fails_clearly_after_bounded_retries() -> None:
    await check_unreachable(
        f"redis://127.0.0.1:{servers.unused_port()}/0",
        lambda u: redis_stream_messages("s", "g", url=u, retries=2, timeout=0.5),
        lambda u: to_redis_stream("s", url=u, retries=1, timeout=0.5),
    )


def test_trio_is_refused_clearly() -> None:
    check_refused_on_trio(lambda: redis_stream_messages("s", "g", url="redis://127.0.0.1:1/0"))


def test_stats_naked_is_a_deprecated_alias_of_nacked() -> None:
    from talkpipe_async.connectors import ConnectorStats

    stats = ConnectorStats()
    stats.nacked = 3
    with pytest.warns(DeprecationWarning, match="nacked"):
        assert stats.naked == 3
    with pytest.warns(DeprecationWarning, match="nacked"):
        stats.naked = 4
    assert stats.nacked == 4
    assert "naked" not in stats.as_dict() and stats.as_dict()["nacked"] == 4
