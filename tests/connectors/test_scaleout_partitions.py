"""Partitioning by key on Redis Streams, in one process against a real redis-server.

* The sink sends each item to ``<stream>:<crc32(key) % n>`` (a stable hash).
* One partitioned source reads every partition, in order per key.
* A partition left with pending entries (its owner died) is taken over
  first, in order, one entry at a time, before new entries are read.
* Two sources in one process share the partitions: each owns its share
  (leases), every message is handled once, in order per key.
* ``idle_exit`` does not end a source while a partition meant for it is
  still held by another owner (one that died: its lease lapses; one that
  stopped: it leaves the members at once and hands over once done).
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import nats
import pytest

from talkpipe_async import segment
from talkpipe_async.connectors import (
    Message,
    ack,
    consume,
    jetstream_messages,
    map_data,
    partition_for,
    redis_stream_messages,
    to_jetstream,
    to_redis_stream,
)
from talkpipe_async.connectors._partitions import Coordinator, LeaseTable
from tests.helpers.brokers import ASYNCIO_LOOPS, nats_fill

pytest_plugins = ["tests.helpers.brokers"]

pytestmark = pytest.mark.anyio
N = 4


@pytest.fixture(params=ASYNCIO_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """redis.asyncio needs asyncio: run on asyncio and uvloop."""
    return request.param


async def places_per_key(src: Any, count: int) -> dict[str, list[int]]:
    """Consume *src* to its end (bounded in time), checking it handed *count* items; each key's places in order."""
    seen: dict[str, list[int]] = {}
    with anyio.fail_after(30):
        assert await consume(src, lambda x: seen.setdefault(x["k"], []).append(x["s"])) == count
    return seen


def feed(keys: int, per_key: int) -> list[dict[str, Any]]:
    """Messages ``{"k": key, "s": n-th of its key}``, keys interleaved."""
    return [{"k": f"key-{k}", "s": s} for s in range(per_key) for k in range(keys)]


def test_partition_for_is_crc32_of_the_key_bytes() -> None:
    assert partition_for("user-7", 8) == zlib.crc32(b"user-7") % 8
    assert partition_for(b"user-7", 8) == partition_for("user-7", 8)
    assert partition_for(42, 5) == zlib.crc32(b"42") % 5
    with pytest.raises(ValueError, match="go together"):
        to_redis_stream("s", key="k")
    with pytest.raises(ValueError, match="at least 1"):
        redis_stream_messages("s", "g", partitions=0)


class Leases(LeaseTable):
    """A lease table kept in memory, recording what is done to it in order (the coordinator's side alone)."""

    def __init__(self) -> None:
        self.holders: dict[int, str] = {}
        self.members = {"a"}
        self.done: list[str] = []

    async def heartbeat(self, owned: list[int], member: bool = True) -> tuple[list[str], set[int]]:
        return sorted(self.members), {p for p in owned if self.holders.get(p) == "a"}

    async def acquire(self, partition: int) -> bool:
        self.done.append(f"acquire {partition}")
        return self.holders.setdefault(partition, "a") == "a"

    async def release(self, partition: int) -> None:
        self.done.append(f"release {partition}")
        if self.holders.get(partition) == "a":
            del self.holders[partition]

    async def leave(self) -> None:
        self.done.append("leave")
        self.members.discard("a")


async def test_leaving_releases_the_partitions_even_when_the_last_acknowledgements_hang(
        caplog: pytest.LogCaptureFixture) -> None:
    """The close has a deadline: acknowledgements that are never confirmed get their share of it, then the
    owned partitions are released, then the membership, then any lease not recorded as owned."""
    table = Leases()
    table.holders[3] = "b"  # a partition meant for "a" but held by another: never recorded as owned
    owned: list[list[int]] = []
    coordinator = Coordinator(table, 4, "a", "src", 1.0, on_change=owned.append)

    async def hang(partitions: list[int]) -> None:
        table.done.append(f"flush {partitions}")
        await anyio.sleep_forever()

    with anyio.fail_after(5):
        await coordinator.step(lambda p: False, hang)
        table.done.clear()
        await coordinator.leave(hang, 0.2)
    assert table.done == ["flush [0, 1, 2]", "release 0", "release 1", "release 2", "leave", "release 3"]
    assert owned[-4:] == [[0, 1, 2], [1, 2], [2], []] and table.holders == {3: "b"}
    assert "src: the last acknowledgements were not confirmed within 0.2 s" in caplog.text


async def test_sink_routes_each_item_by_its_key(redis_url: str, client: Any) -> None:
    stream = f"p-{uuid.uuid4().hex[:6]}"
    items = feed(10, 3)
    sink = to_redis_stream(stream, url=redis_url, key="k", partitions=N)
    assert await sink.collect(items) == items
    for p in range(N):
        stored = [json.loads(f[b"data"]) for _, f in await client.xrange(f"{stream}:{p}")]
        expected = [x for x in items if zlib.crc32(x["k"].encode()) % N == p]
        assert stored == expected
    by_function = to_redis_stream(stream + "f", url=redis_url, key=lambda x: x["k"], partitions=N)
    await by_function.collect(items)
    assert await client.xlen(f"{stream}f:{partition_for('key-0', N)}") >= 3


async def test_one_source_reads_every_partition_in_order_per_key(redis_url: str) -> None:
    stream = f"p-{uuid.uuid4().hex[:6]}"
    items = feed(10, 20)
    await to_redis_stream(stream, url=redis_url, key="k", partitions=N).collect(items)
    src = redis_stream_messages(stream, "g", url=redis_url, partitions=N, block=0.05, idle_exit=0.5, lease_ttl=2.0)
    seen = await places_per_key(src, len(items))
    assert seen == {f"key-{k}": list(range(20)) for k in range(10)}
    assert src.stats.acked == len(items)


async def test_pending_entries_of_a_dead_owner_come_first_in_order(redis_url: str, client: Any) -> None:
    stream = f"p-{uuid.uuid4().hex[:6]}"
    items = [{"k": "a", "s": s} for s in range(10)]
    await to_redis_stream(stream, url=redis_url, key="k", partitions=1).collect(items[:6])
    await client.xgroup_create(f"{stream}:0", "g", id="0")
    # a dead owner: it read four entries (pending) and never acknowledged them; its lease lapsed
    await client.xreadgroup("g", "dead", {f"{stream}:0": ">"}, count=4)
    await to_redis_stream(stream, url=redis_url, key="k", partitions=1).collect(items[6:])
    src = redis_stream_messages(stream, "g", url=redis_url, partitions=1, block=0.05, idle_exit=0.5, lease_ttl=2.0)
    got: list[Message[Any]] = []
    async with src.stream() as messages:
        async for message in messages:
            got.append(message)
            await message.ack()
    assert [m.data["s"] for m in got] == list(range(10))
    assert [m.deliveries for m in got] == [2, 2, 2, 2] + [1] * 6
    assert all(m.id.startswith("0:") for m in got)
    assert src.stats.isolated == 4 and src.stats.redelivered == 4
    assert int((await client.xpending(f"{stream}:0", "g"))["pending"]) == 0


async def test_a_nacked_entry_comes_again_before_newer_ones_and_a_poison_one_goes_to_the_dead_letter(
    redis_url: str, client: Any
) -> None:
    stream = f"p-{uuid.uuid4().hex[:6]}"
    await to_redis_stream(stream, url=redis_url, key="k", partitions=1).collect([{"k": "a", "s": s} for s in range(6)])
    failures: dict[int, int] = {}

    def handle(x: dict[str, Any]) -> int:
        if x["s"] in (2, 4) and (x["s"] == 4 or failures.get(2, 0) < 1):  # 2 fails once, 4 always
            failures[x["s"]] = failures.get(x["s"], 0) + 1
            raise RuntimeError(f"cannot handle {x['s']} now")
        return int(x["s"])

    mapper = map_data(handle, on_error="nak")
    src = redis_stream_messages(stream, "g", url=redis_url, partitions=1, batch=1, block=0.05, idle_exit=0.5,
                            lease_ttl=2.0, max_deliveries=3)
    with anyio.fail_after(30):
        out = await (src | mapper | ack(unwrap=True)).collect()
    assert out == [0, 1, 2, 3, 5]
    assert failures == {2: 1, 4: 3} and src.stats.nacked == 4 and src.stats.dead_lettered == 1
    dead = await client.xrange(f"{stream}:dead")
    assert [json.loads(f[b"data"])["s"] for _, f in dead] == [4]
    assert int((await client.xpending(f"{stream}:0", "g"))["pending"]) == 0


async def test_two_sources_share_the_partitions_by_lease(redis_url: str, client: Any) -> None:
    stream = f"p-{uuid.uuid4().hex[:6]}"
    items = feed(12, 60)
    await to_redis_stream(stream, url=redis_url, key="k", partitions=N).collect(items)
    seen: dict[str, list[tuple[str, int]]] = {}
    sources = [redis_stream_messages(stream, "g", url=redis_url, consumer=name, partitions=N, block=0.05,
                                 idle_exit=1.0, lease_ttl=1.0, batch=5) for name in ("a", "b")]
    started = anyio.Event()

    async def run(src: redis_stream_messages) -> None:
        async with src.stream() as messages:
            async for message in messages:
                seen.setdefault(message.data["k"], []).append((src.consumer or "", message.data["s"]))
                await anyio.sleep(0.001)  # the work of one message
                await message.ack()
                if not started.is_set():
                    started.set()
                    # "a" holds every partition; on its first message it waits until "b" has joined the group
                    while b"b" not in await client.zrange(f"{stream}:g:members", 0, -1):
                        await anyio.sleep(0.01)

    with anyio.fail_after(40):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, sources[0])
            await started.wait()  # "a" owns every partition; "b" joins and the partitions are rebalanced
            tg.start_soon(run, sources[1])
    assert {k: [s for _, s in v] for k, v in seen.items()} == {f"key-{k}": list(range(60)) for k in range(12)}
    workers = {w for v in seen.values() for w, _ in v}
    assert workers == {"a", "b"}, "the second source never got a partition"
    assert sources[0].owned_partitions == [] and sources[1].owned_partitions == []
    rest = await client.keys(f"{stream}:g:lease:*")
    assert rest == [], "a lease outlived its owner's run"


async def test_idle_exit_waits_for_a_partition_still_held_by_another(redis_url: str, client: Any) -> None:
    stream = f"p-{uuid.uuid4().hex[:6]}"
    items = feed(8, 5)
    await to_redis_stream(stream, url=redis_url, key="k", partitions=N).collect(items)
    held = partition_for("key-0", N)
    # An owner that died holding one partition: its lease lapses 1.5 s from now, five idle_exit periods.
    await client.set(f"{stream}:g:lease:{held}", "dead", px=1500)
    src = redis_stream_messages(stream, "g", url=redis_url, partitions=N, block=0.05, idle_exit=0.3, lease_ttl=2.0)
    seen = await places_per_key(src, len(items))
    assert seen == {f"key-{k}": list(range(5)) for k in range(8)}


async def test_a_stopped_source_leaves_the_members_at_once_and_hands_over_once_done(
    redis_url: str, client: Any
) -> None:
    stream = f"p-{uuid.uuid4().hex[:6]}"
    items = feed(8, 5)
    await to_redis_stream(stream, url=redis_url, key="k", partitions=N).collect(items)

    async def members() -> set[str]:
        return {m.decode() for m in await client.zrange(f"{stream}:g:members", 0, -1)}

    await stopped_source_hands_over(
        *(redis_stream_messages(stream, "g", url=redis_url, consumer=name, partitions=N, block=0.05, batch=1,
                                lease_ttl=1.0, idle_exit=0.3) for name in ("a", "b")), members)


async def stopped_source_hands_over(a: Any, b: Any, members: Callable[[], Awaitable[set[str]]]) -> None:
    """*a* takes every partition; stopped at its first message, it leaves the members before finishing that
    message (for longer than *b*'s idle_exit); *b* takes the rest, waits for that partition and reads it too."""
    seen: dict[str, list[tuple[str, int]]] = {}

    def note(name: str, x: dict[str, Any]) -> None:
        seen.setdefault(x["k"], []).append((name, x["s"]))

    @segment
    async def slow_first(messages: AsyncIterator[Message[Any]]) -> AsyncIterator[Message[Any]]:
        async for message in messages:
            if not seen:
                a.stop()
                while "a" in await members():
                    await anyio.sleep(0.01)
                tg.start_soon(consume, b, lambda x: note("b", x))
                await anyio.sleep(1.0)  # a slow message: b has nothing else to read for longer than its idle_exit
            note("a", message.data)
            yield message

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            assert await consume(a | slow_first()) == 1
    assert {k: [s for _, s in v] for k, v in seen.items()} == {f"key-{k}": list(range(5)) for k in range(8)}
    assert sum(w == "a" for v in seen.values() for w, _ in v) == 1
    assert a.owned_partitions == [] and b.owned_partitions == []


# --- NATS JetStream ---------------------------------------------------------------------------------------------


async def nats_stream(url: str) -> tuple[str, str]:
    """A fresh stream storing ``<subject>.>``; returns (stream, subject)."""
    tag = uuid.uuid4().hex[:6]
    await nats_fill(url, "unused", [], streams={f"FEED{tag}": [f"feed{tag}.>"]})
    return f"FEED{tag}", f"feed{tag}"


async def test_jetstream_sink_routes_by_key_and_one_source_reads_in_order(nats_url: str) -> None:
    stream, subject = await nats_stream(nats_url)
    items = feed(10, 20)
    await to_jetstream(subject, servers=nats_url, key="k", partitions=N).collect(items)
    src = jetstream_messages(stream, "d", servers=nats_url, subject=subject, partitions=N, fetch_wait=0.05,
                          idle_exit=1.0, lease_ttl=2.0, dead_letter=False)
    seen: dict[str, list[int]] = {}
    subjects: dict[str, set[str]] = {}

    async def handle(x: dict[str, Any]) -> None:
        seen.setdefault(x["k"], []).append(x["s"])

    with anyio.fail_after(30):
        async with src.stream() as messages:
            async for message in messages:
                await handle(message.data)
                subjects.setdefault(message.data["k"], set()).add(message.token._msg.subject)  # type: ignore[attr-defined]
                await message.ack()
    assert seen == {f"key-{k}": list(range(20)) for k in range(10)}
    assert subjects == {f"key-{k}": {f"{subject}.{partition_for(f'key-{k}', N)}"} for k in range(10)}
    assert src.owned_partitions == []


async def test_jetstream_two_sources_share_the_partitions_by_lease(nats_url: str) -> None:
    stream, subject = await nats_stream(nats_url)
    items = feed(12, 40)
    await to_jetstream(subject, servers=nats_url, key="k", partitions=N).collect(items)
    sources = [jetstream_messages(stream, "d", servers=nats_url, subject=subject, partitions=N, fetch_wait=0.05,
                               idle_exit=1.5, lease_ttl=1.0, batch=5, consumer=name, dead_letter=False)
               for name in ("a", "b")]
    seen: dict[str, list[tuple[str, int]]] = {}
    started = anyio.Event()
    nc = await nats.connect(nats_url)
    bucket = f"{stream}_d_leases"

    async def members() -> set[str]:
        info = await nc.jetstream().stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.m.>")
        return {name.rsplit(".", 1)[-1] for name in info.state.subjects or {}}

    async def run(src: jetstream_messages) -> None:
        async with src.stream() as messages:
            async for message in messages:
                seen.setdefault(message.data["k"], []).append((src.consumer or "", message.data["s"]))
                await anyio.sleep(0.002)  # the work of one message
                await message.ack()
                if not started.is_set():
                    started.set()
                    while "b" not in await members():  # "a" holds every partition; it waits until "b" joined
                        await anyio.sleep(0.01)

    try:
        with anyio.fail_after(45):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, sources[0])
                await started.wait()
                tg.start_soon(run, sources[1])
    finally:
        await nc.close()
    assert {k: [s for _, s in v] for k, v in seen.items()} == {f"key-{k}": list(range(40)) for k in range(12)}
    assert {w for v in seen.values() for w, _ in v} == {"a", "b"}, "the second source never got a partition"


async def test_jetstream_idle_exit_waits_for_a_partition_still_held_by_another(nats_url: str) -> None:
    stream, subject = await nats_stream(nats_url)
    items = feed(8, 5)
    await to_jetstream(subject, servers=nats_url, key="k", partitions=N).collect(items)
    nc = await nats.connect(nats_url)
    try:
        # An owner that died holding one partition: its lease lapses 1.5 s from now, five idle_exit periods.
        kv = await nc.jetstream().create_key_value(bucket=f"{stream}_d_leases", ttl=1.5, history=1)
        await kv.create(f"p.{partition_for('key-0', N)}", b"dead")
    finally:
        await nc.close()
    src = jetstream_messages(stream, "d", servers=nats_url, subject=subject, partitions=N, fetch_wait=0.05,
                             idle_exit=0.3, lease_ttl=2.0, dead_letter=False)
    seen = await places_per_key(src, len(items))
    assert seen == {f"key-{k}": list(range(5)) for k in range(8)}


async def test_jetstream_stopped_source_leaves_the_members_at_once_and_hands_over_once_done(nats_url: str) -> None:
    stream, subject = await nats_stream(nats_url)
    await to_jetstream(subject, servers=nats_url, key="k", partitions=N).collect(feed(8, 5))
    nc = await nats.connect(nats_url)
    bucket = f"{stream}_d_leases"

    async def members() -> set[str]:
        info = await nc.jetstream().stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.m.>")
        return {name.rsplit(".", 1)[-1] for name in info.state.subjects or {}}

    try:
        await stopped_source_hands_over(
            *(jetstream_messages(stream, "d", servers=nats_url, subject=subject, partitions=N, fetch_wait=0.05,
                                 batch=1, lease_ttl=1.0, idle_exit=0.3, consumer=name, dead_letter=False)
              for name in ("a", "b")), members)
    finally:
        await nc.close()
