"""The Redis stages' own settings (``talkpipe_async.connectors.redis``) against a real redis-server.

What the source and the sink do with their arguments, seen at the broker: where the group starts, the consumer's
name, a missing group, the partition streams a partitioned sink writes, the payload field, the exact and the
approximate caps, and the limits of the arguments.  The sessions themselves are tested in ``test_mut_redis.py``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
import zlib
from typing import Any

import anyio
import pytest

from talkpipe_async.connectors import redis_stream_messages, to_redis_stream
from talkpipe_async.connectors.redis import ensure_group
from tests.helpers import servers
from tests.helpers.brokers import ASYNCIO_LOOPS

pytest_plugins = ["tests.helpers.brokers"]

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(servers.redis_binary() is None, reason="redis-server not installed"),
]


@pytest.fixture(params=ASYNCIO_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """redis.asyncio needs asyncio: run on asyncio and uvloop."""
    return request.param


@pytest.fixture
def stream() -> str:
    """A fresh stream name for one test."""
    return f"st-{uuid.uuid4().hex[:8]}"


async def add(client: Any, name: str, *values: Any) -> list[bytes]:
    return [await client.xadd(name, {"data": json.dumps(v)}) for v in values]


async def group_info(client: Any, name: str) -> dict[str, Any]:
    (info,) = await client.xinfo_groups(name)
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in info.items()}


def reader(url: str, name: str, **kw: Any) -> redis_stream_messages:
    kw.setdefault("block", 0.05)
    kw.setdefault("idle_exit", 0.5)  # ends the run once nothing more comes
    return redis_stream_messages(name, "g", url=url, **kw)


async def test_ensure_group_makes_the_stream_and_the_group_from_the_start(client: Any, stream: str) -> None:
    await ensure_group(client, stream, "g")  # no stream yet: made with the group
    assert await client.exists(stream) == 1
    await add(client, stream + "b", 1, 2)
    await ensure_group(client, stream + "b", "g")
    assert (await group_info(client, stream + "b"))["last-delivered-id"] == b"0-0"  # every entry still to read


async def test_ensure_group_at_the_end_skips_what_is_there(client: Any, stream: str) -> None:
    last = (await add(client, stream, 1, 2))[-1]
    await ensure_group(client, stream, "g", "$")
    assert (await group_info(client, stream))["last-delivered-id"] == last


async def test_ensure_group_is_quiet_when_the_group_exists_and_raises_anything_else(client: Any,
                                                                                    stream: str) -> None:
    import redis

    await ensure_group(client, stream, "g", "0")
    await ensure_group(client, stream, "g", "$")  # BUSYGROUP: kept as it was
    assert (await group_info(client, stream))["last-delivered-id"] == b"0-0"
    await client.set(stream + "s", "a plain string")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await ensure_group(client, stream + "s", "g")


async def test_start_id_dollar_reads_only_what_comes_after_the_group(redis_url: str, client: Any,
                                                                     stream: str) -> None:
    await add(client, stream, "old")
    got: list[Any] = []

    async def read() -> None:
        got.extend(m.data for m in await reader(redis_url, stream, start_id="$", idle_exit=2.0).collect())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            while not await client.xinfo_groups(stream):  # the group is made when the run starts
                await anyio.sleep(0.01)
            await add(client, stream, "new")
    assert got == ["new"]


async def test_without_create_group_a_missing_group_is_an_error(redis_url: str, client: Any, stream: str) -> None:
    import redis

    await add(client, stream, 1)
    with anyio.fail_after(10), pytest.raises(redis.exceptions.ResponseError, match="NOGROUP"):
        await reader(redis_url, stream, create_group=False).collect()
    assert await client.xinfo_groups(stream) == []


async def test_the_default_consumer_name_is_host_pid_random(redis_url: str, client: Any, stream: str) -> None:
    """Readable in ``XINFO CONSUMERS``: which host and process holds the pending entries."""
    await add(client, stream, 1)
    await add(client, stream + ":0", 1)
    with anyio.fail_after(10):
        await reader(redis_url, stream).collect()
        await reader(redis_url, stream, partitions=1, lease_ttl=2.0).collect()
    pattern = rf"{re.escape(socket.gethostname())}-{os.getpid()}-[0-9a-f]{{6}}"
    for name in (stream, stream + ":0"):
        consumers = [c["name"].decode() for c in await client.xinfo_consumers(name, "g")]
        assert len(consumers) == 1 and re.fullmatch(pattern, consumers[0]), consumers


async def test_a_given_consumer_name_is_used_on_both_sessions(redis_url: str, client: Any, stream: str) -> None:
    await add(client, stream, 1)
    await add(client, stream + ":0", 1)
    with anyio.fail_after(10):
        await reader(redis_url, stream, consumer="pod-7").collect()
        await reader(redis_url, stream, consumer="pod-7", partitions=1, lease_ttl=2.0).collect()
    for name in (stream, stream + ":0"):
        assert [c["name"] for c in await client.xinfo_consumers(name, "g")] == [b"pod-7"]


async def test_a_partitioned_source_reads_the_partition_streams(redis_url: str, client: Any, stream: str) -> None:
    await add(client, stream + ":1", "b")
    await add(client, stream, "not a partition")  # the plain stream is not read
    with anyio.fail_after(10):
        got = await reader(redis_url, stream, partitions=2, lease_ttl=2.0).collect()
    assert [m.data for m in got] == ["b"]


def test_the_arguments_are_checked_when_the_stage_is_made() -> None:
    with pytest.raises(ValueError, match=r"^lease_ttl must be positive$"):
        redis_stream_messages("s", "g", lease_ttl=0)
    redis_stream_messages("s", "g", lease_ttl=0.5)  # short leases are allowed
    with pytest.raises(ValueError, match="partitions"):
        redis_stream_messages("s", "g", partitions=0)
    with pytest.raises(ValueError, match="batch"):
        redis_stream_messages("s", "g", batch=0)
    with pytest.raises(ValueError, match="together"):
        to_redis_stream("s", partitions=2)
    with pytest.raises(ValueError, match="partitions"):
        to_redis_stream("s", key="k", partitions=0)


def test_the_derived_settings_follow_the_documented_rules() -> None:
    """``claim_interval``: ``claim_idle / 2``, at least 50 ms and at most 1 s; ``ack_batch``: ``batch``; the
    dead-letter stream ``<stream>:dead``; the labels in logs and errors name the stream."""
    assert redis_stream_messages("s", "g").claim_interval == 1.0
    assert redis_stream_messages("s", "g", claim_idle=1.0).claim_interval == 0.5
    assert redis_stream_messages("s", "g", claim_idle=0.04).claim_interval == 0.05
    assert redis_stream_messages("s", "g", claim_idle=1.0, claim_interval=0.3).claim_interval == 0.3
    assert redis_stream_messages("s", "g", batch=7).ack_batch == 7
    assert redis_stream_messages("s", "g", batch=7, ack_batch=3).ack_batch == 3
    assert redis_stream_messages("orders", "g").dead_letter == "orders:dead"
    assert redis_stream_messages("orders", "g", dead_letter="dl").dead_letter == "dl"
    assert redis_stream_messages("orders", "g").label == "redis:orders"
    assert redis_stream_messages("orders", "g", name="in").label == "in"
    assert to_redis_stream("orders").label == "redis-sink:orders"
    assert to_redis_stream("orders", name="out").label == "out"
    assert redis_stream_messages("orders", "g", partitions=2).owned_partitions == []  # none before the first run


async def test_a_partitioned_sink_writes_each_key_to_its_partition_stream(redis_url: str, client: Any,
                                                                          stream: str) -> None:
    items = [{"k": f"key-{i}", "v": i} for i in range(12)]
    with anyio.fail_after(10):
        out = await to_redis_stream(stream, url=redis_url, key="k", partitions=3, batch=5).collect(items)
    assert out == items
    for p in range(3):
        stored = [json.loads(f[b"data"]) for _, f in await client.xrange(f"{stream}:{p}")]
        assert stored == [x for x in items if zlib.crc32(x["k"].encode()) % 3 == p]
    assert await client.exists(stream) == 0


async def test_the_payload_goes_in_the_field_or_is_the_fields(redis_url: str, client: Any, stream: str) -> None:
    with anyio.fail_after(10):
        await to_redis_stream(stream, url=redis_url, field="body").collect([{"a": 1, "b": [1, 2]}])
        await to_redis_stream(stream + "f", url=redis_url, field=None, encode=lambda x: x).collect([{"a": "1"}])
    (_, fields), = await client.xrange(stream)
    assert fields == {b"body": b'{"a":1,"b":[1,2]}'}  # compact JSON by default
    (_, fields), = await client.xrange(stream + "f")
    assert fields == {b"a": b"1"}


async def test_an_exact_cap_keeps_exactly_maxlen(redis_url: str, client: Any, stream: str) -> None:
    with anyio.fail_after(10):
        await to_redis_stream(stream, url=redis_url, maxlen=3, approximate=False, batch=4).collect(list(range(10)))
    assert [json.loads(f[b"data"]) for _, f in await client.xrange(stream)] == [7, 8, 9]


async def test_a_read_blocking_longer_than_the_clients_own_timeout_is_not_an_outage(
        redis_url: str, client: Any, stream: str, caplog: pytest.LogCaptureFixture) -> None:
    """redis-py times a reply out after 5 s by default; a read asked to block longer must wait its full ``block``.

    With ``timeout=0.5`` a call's own deadline is 5.5 s: the read's deadline must add the time it blocks.
    """
    caplog.set_level(logging.WARNING, logger="talkpipe_async.connectors")
    common: dict[str, Any] = {"block": 6.0, "idle_exit": 6.0, "outage_budget": 2.0, "timeout": 0.5}
    plain = reader(redis_url, stream, **common)
    parted = reader(redis_url, stream, **common, partitions=1, lease_ttl=30.0)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(plain.collect)
            tg.start_soon(parted.collect)
    assert plain.stats.outages == parted.stats.outages == 0
    assert plain.stats.reads >= 1 and parted.stats.reads >= 1
    assert "unreachable" not in caplog.text


async def test_a_run_that_reads_nothing_still_closes_its_connection_and_releases_its_leases(
        redis_url: str, client: Any, stream: str) -> None:
    """With ``idle_exit=0`` the run ends before its first read: the session must still be closed."""
    before = len(await client.client_list())
    with anyio.fail_after(10):
        await reader(redis_url, stream, idle_exit=0.0).collect()
        await reader(redis_url, stream, idle_exit=0.0, partitions=2, lease_ttl=30.0).collect()
    assert len(await client.client_list()) == before
    assert await client.keys(f"{stream}:g:lease:*") == []
