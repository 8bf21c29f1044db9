"""Keyed operators: concurrent_map(key=), group_by, partition, merge_map, concat_map (asyncio, uvloop, trio)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import AbstractSegment, Flush, error_context, segment, source
from talkpipe_async.operators import (
    KeyedStats,
    batch,
    concat_map,
    concurrent_map,
    group_by,
    merge_map,
    partition,
    stable_hash,
    take,
    thread_map,
)
from talkpipe_async.testing import in_virtual_time
from tests.helpers.ops import task_count, until

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=25, deadline=None)
KEYED = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1000)), max_size=60)


@source
async def from_list(xs: list[Any], pulled: list[int] | None = None) -> AsyncIterator[Any]:
    """Yield *xs*; append each index to *pulled* as it is produced."""
    for i, x in enumerate(xs):
        if pulled is not None:
            pulled.append(i)
        yield x


async def spin(n: int) -> None:
    for _ in range(n):
        await anyio.lowlevel.checkpoint()


def per_key(pairs: list[tuple[int, int]]) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for pair in pairs:
        out.setdefault(pair[0], []).append(pair)
    return out


# ------------------------------------------------------------------ concurrent_map(key=)


class OneAtATime:
    """A keyed function that fails the test if two calls of one key ever overlap."""

    def __init__(self) -> None:
        self.running: set[int] = set()
        self.peak = 0

    async def __call__(self, pair: tuple[int, int]) -> tuple[int, int]:
        key, value = pair
        assert key not in self.running, f"two calls of key {key} at once"
        self.running.add(key)
        self.peak = max(self.peak, len(self.running))
        await spin((value * 7) % 5)
        self.running.discard(key)
        return pair


@PROPS
@given(pairs=KEYED, limit=st.integers(1, 6))
async def test_keyed_ordered_equals_map_one_call_per_key(pairs: list[tuple[int, int]], limit: int) -> None:
    fn = OneAtATime()
    out = await (from_list(pairs) | concurrent_map(fn, limit, key=lambda p: p[0])).collect()
    assert out == pairs
    assert fn.peak <= limit


@PROPS
@given(pairs=KEYED, limit=st.integers(1, 6), window=st.integers(0, 6))
async def test_keyed_unordered_keeps_order_within_each_key(
    pairs: list[tuple[int, int]], limit: int, window: int
) -> None:
    fn = OneAtATime()
    op = concurrent_map(fn, limit, key=lambda p: p[0], ordered=False, window=limit + window)
    out = await (from_list(pairs) | op).collect()
    assert sorted(out) == sorted(pairs)
    assert per_key(out) == per_key(pairs)


async def test_keyed_different_keys_run_concurrently_up_to_limit() -> None:
    running: set[int] = set()
    peak = 0
    full = anyio.Event()

    async def fn(pair: tuple[int, int]) -> tuple[int, int]:
        nonlocal peak
        assert pair[0] not in running
        running.add(pair[0])
        peak = max(peak, len(running))
        if len(running) == 4:
            full.set()
        if pair[1] == 0:
            await full.wait()  # the first item of each key waits until four keys run at once
        await spin(1)
        running.discard(pair[0])
        return pair

    pairs = [(k, i) for i in range(3) for k in range(6)]
    out = await (from_list(pairs) | concurrent_map(fn, 4, key=lambda p: p[0])).collect()
    assert out == pairs and peak == 4


async def test_keyed_field_name() -> None:
    fn = OneAtATime()

    async def call(item: dict[str, int]) -> int:
        await fn((item["user"], item["n"]))
        return item["n"]

    items = [{"user": i % 3, "n": i} for i in range(30)]
    assert await (from_list(items) | concurrent_map(call, 5, key="user")).collect() == list(range(30))


async def test_the_chain_method_takes_key() -> None:
    """``.concurrent_map(fn, limit, key=...)`` on a source, a segment or a pipeline is the keyed operator."""
    fn = OneAtATime()
    pairs = [(k, i) for i in range(8) for k in (i * 5 % 3, 3)]
    unordered = from_list(pairs).concurrent_map(fn, 4, key=lambda p: p[0], ordered=False, window=8)
    out = await unordered.collect()
    assert sorted(out) == sorted(pairs) and per_key(out) == per_key(pairs)
    assert fn.peak <= 4  # without key=, two items of key 3 would run at once and fail the call

    users = [{"user": i % 3, "n": i} for i in range(12)]

    async def call(item: dict[str, int]) -> int:
        await fn((item["user"], item["n"]))
        return item["n"]

    assert await (from_list(users) | take(12)).concurrent_map(call, 3, key="user").collect() == list(range(12))


async def test_keyed_slow_key_holds_back_others_only_up_to_the_window() -> None:
    release = anyio.Event()
    pulled: list[int] = []

    async def fn(pair: tuple[str, int]) -> int:
        if pair[0] == "slow":
            await release.wait()
        return pair[1]

    items = [("slow", 0), ("slow", 1), *[("fast", i) for i in range(2, 40)]]
    op = concurrent_map(fn, 4, key=lambda p: p[0], ordered=False, window=8)
    async with (from_list(items, pulled) | op).stream() as results:
        got = [await results.__anext__() for _ in range(30)]  # the fast key flows past the stuck one
        assert got == list(range(2, 32))
        release.set()
        rest = [x async for x in results]
    assert sorted(got + rest) == list(range(40))


async def test_keyed_ordered_window_bounds_reads_behind_a_stuck_key() -> None:
    release = anyio.Event()
    pulled: list[int] = []

    async def fn(pair: tuple[str, int]) -> int:
        if pair[1] == 0:
            await release.wait()
        return pair[1]

    items = [(f"k{i % 3}", i) for i in range(50)]
    op = concurrent_map(fn, 4, key=lambda p: p[0], window=6)
    async with (from_list(items, pulled) | op).stream() as results:
        async with anyio.create_task_group() as tg:

            async def first() -> None:
                assert await results.__anext__() == 0

            tg.start_soon(first)
            await until(lambda: len(pulled) >= 6)
            await spin(200)
            assert len(pulled) == 6
            release.set()
        assert [x async for x in results] == list(range(1, 50))


async def test_keyed_key_error_fails_that_item_with_context() -> None:
    async def fn(x: Any) -> Any:
        return x

    got: list[Any] = []
    with pytest.raises(KeyError) as info:
        async with (from_list([{"k": 1}, {"k": 2}, {"j": 3}]) | concurrent_map(fn, 2, key="k")).stream() as items:
            async for x in items:
                got.append(x)
    assert got == [{"k": 1}, {"k": 2}]
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment.startswith("concurrent_map") and "'j': 3" in (ctx.item or "")


@pytest.mark.parametrize("ordered", [True, False])
async def test_keyed_metadata_passes_through(ordered: bool) -> None:
    async def fn(x: int) -> int:
        await spin(x % 3)
        return x

    xs: list[Any] = [1, 2, Flush(), 3, 4, Flush(), 5]
    out = await (from_list(xs) | concurrent_map(fn, 3, key=lambda x: x % 2, ordered=ordered)).collect(metadata=True)
    assert [isinstance(x, Flush) for x in out] == [isinstance(x, Flush) for x in xs]
    assert sorted(out[:2]) == [1, 2] and sorted(out[3:5]) == [3, 4] and out[6] == 5


async def test_keyed_break_leaves_no_tasks() -> None:
    before = task_count()
    started = 0

    async def fn(pair: tuple[int, int]) -> int:
        nonlocal started
        started += 1
        if pair[1]:
            await anyio.sleep_forever()
        return pair[1]

    pairs = [(i % 4, i) for i in range(40)]
    async with (from_list(pairs) | concurrent_map(fn, 4, key=lambda p: p[0])).stream() as items:
        async for x in items:
            assert x == 0
            await until(lambda: started >= 4)
            break
    assert task_count() == before


def test_thread_map_takes_key_too() -> None:
    import threading

    lock = threading.Lock()
    running: set[int] = set()

    def fn(pair: tuple[int, int]) -> int:
        with lock:
            assert pair[0] not in running
            running.add(pair[0])
        with lock:
            running.discard(pair[0])
        return pair[1]

    pairs = [(i % 3, i) for i in range(30)]
    assert anyio.run(thread_map(fn, 4, key=lambda p: p[0]).collect, pairs) == list(range(30))


# ------------------------------------------------------------------ group_by: a reference model


def reference_group_by(
    items: list[Any], size: int, max_keys: int
) -> tuple[dict[int, list[list[tuple[int, int]]]], int, int]:
    """What group_by(key, batch(size), max_keys=...) must emit, per key, and how many groups open and get evicted."""
    groups: OrderedDict[int, list[tuple[int, int]]] = OrderedDict()
    out: dict[int, list[list[tuple[int, int]]]] = {}
    opened = evicted = 0

    def close(k: int, held: list[tuple[int, int]]) -> None:
        if held:
            out.setdefault(k, []).append(held)

    for item in items:
        if isinstance(item, Flush):
            for k, held in groups.items():
                close(k, held)
            groups.clear()
            continue
        k = item[0]
        if k not in groups:
            if len(groups) >= max_keys:
                old, held = groups.popitem(last=False)
                close(old, held)
                evicted += 1
            groups[k] = []
            opened += 1
        groups.move_to_end(k)
        groups[k].append(item)
        if len(groups[k]) == size:
            close(k, groups[k])
            groups[k] = []
    for k, held in groups.items():
        close(k, held)
    return out, opened, evicted


ITEMS_WITH_FLUSH = st.lists(st.one_of(st.tuples(st.integers(0, 6), st.integers(0, 99)), st.just(Flush())), max_size=60)


@PROPS
@given(items=ITEMS_WITH_FLUSH, size=st.integers(1, 4), max_keys=st.integers(1, 5))
async def test_group_by_matches_reference(items: list[Any], size: int, max_keys: int) -> None:
    stats = KeyedStats()
    stage = group_by(lambda p: p[0], batch(size), max_keys=max_keys, stats=stats, buffer=2)
    out = await (from_list(items) | stage).collect()
    expected, opened, evicted = reference_group_by(items, size, max_keys)
    got: dict[int, list[list[tuple[int, int]]]] = {}
    for b in out:
        got.setdefault(b[0][0], []).append(b)
    assert got == expected
    assert (stats.opened, stats.evicted_lru, stats.live) == (opened, evicted, 0)
    assert stats.flushes == sum(isinstance(x, Flush) for x in items)


async def test_group_by_bounds_live_sub_pipelines() -> None:
    live = 0
    peak = 0

    @segment
    async def tracked(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:
            async for x in items:
                await spin(x[1] % 3)
                yield x
        finally:
            live -= 1

    pairs = [((i * 7) % 11, i) for i in range(200)]
    out = await (from_list(pairs) | group_by(lambda p: p[0], tracked(), max_keys=3)).collect()
    assert sorted(out) == sorted(pairs) and per_key(out) == per_key(pairs)
    assert peak == 3 and live == 0


async def test_group_by_factory_per_key_and_metadata_barrier() -> None:
    made: list[str] = []

    def factory(key: str) -> AbstractSegment[Any, Any]:
        made.append(key)
        return batch(100)

    xs: list[Any] = [{"u": "a", "n": 1}, {"u": "b", "n": 2}, {"u": "a", "n": 3}, Flush(), {"u": "b", "n": 4}]
    out = await (from_list(xs) | group_by("u", factory)).collect(metadata=True)
    assert sorted(out[:2], key=len) == [[{"u": "b", "n": 2}], [{"u": "a", "n": 1}, {"u": "a", "n": 3}]]
    assert out[2] == Flush() and out[3] == [{"u": "b", "n": 4}] and len(out) == 4
    assert made == ["a", "b", "b"]


async def test_group_by_idle_timeout_in_virtual_time() -> None:
    async def scenario() -> tuple[list[tuple[float, list[str]]], KeyedStats]:
        @source
        async def timed() -> AsyncIterator[str]:
            yield "a1"
            yield "b1"
            await anyio.sleep(3)
            yield "a2"  # a stays busy; b goes idle at 5
            await anyio.sleep(7)  # a goes idle at 8
            yield "b2"
            await anyio.sleep(100)

        stats = KeyedStats()
        start = anyio.current_time()
        seen: list[tuple[float, list[str]]] = []
        stage = group_by(lambda s: s[0], batch(10), idle_timeout=5, stats=stats)
        async with (timed() | stage).stream() as items:
            async for b in items:
                seen.append((round(anyio.current_time() - start, 6), b))
        return seen, stats

    seen, stats = await in_virtual_time(scenario)
    assert seen == [(5.0, ["b1"]), (8.0, ["a1", "a2"]), (15.0, ["b2"])]
    assert (stats.evicted_idle, stats.opened, stats.evicted_lru) == (3, 3, 0)


async def test_group_by_sub_pipeline_error_names_key_and_closes_other_groups() -> None:
    closed: list[str] = []

    def factory(key: str) -> AbstractSegment[Any, Any]:
        @segment
        async def work(items: AsyncIterator[tuple[str, str]]) -> AsyncIterator[str]:
            try:
                async for _, x in items:
                    if x == "bad":
                        raise ValueError("no good")
                    yield x
            finally:
                closed.append(key)

        return work()

    xs = [("a", "x"), ("b", "y"), ("c", "bad"), ("a", "z")]
    with pytest.raises(ValueError, match="no good") as info:
        await (from_list(xs) | group_by(lambda p: p[0], factory)).collect()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "key 'c'" in notes and "group_by" in notes
    assert sorted(closed) == ["a", "b", "c"]


async def test_group_by_key_error_after_groups_flushed() -> None:
    xs: list[Any] = [{"k": 1}, {"k": 1}, {"j": 2}]
    got: list[Any] = []
    with pytest.raises(KeyError) as info:
        async with (from_list(xs) | group_by("k", batch(10))).stream() as items:
            async for b in items:
                got.append(b)
    assert got == [[{"k": 1}, {"k": 1}]]  # the open group flushed before the error
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "group_by" and "'j': 2" in (ctx.item or "")


async def test_group_by_upstream_error_after_flush() -> None:
    @source
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise OSError("source broke")

    got: list[Any] = []
    with pytest.raises(OSError, match="source broke"):
        async with (failing() | group_by(lambda x: x % 2, batch(10))).stream() as items:
            async for b in items:
                got.append(b)
    assert sorted(got) == [[1], [2]]


async def test_group_by_early_ending_sub_pipeline_counts_dropped() -> None:
    stats = KeyedStats()
    pairs = [(i % 2, i) for i in range(20)]
    out = await (from_list(pairs) | group_by(lambda p: p[0], take(1), stats=stats, buffer=4)).collect()
    assert sorted(out) == [(0, 0), (1, 1)]
    assert stats.dropped == 18  # every item has either come out or been counted


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_group_by_break_and_cancel_close_every_group(how: str) -> None:
    before = task_count()
    closed: list[int] = []
    opened = 0

    @segment
    async def hold(items: AsyncIterator[tuple[int, int]]) -> AsyncIterator[int]:
        nonlocal opened
        opened += 1
        try:
            async for _, v in items:
                yield v
            await anyio.sleep_forever()
        finally:
            await anyio.lowlevel.checkpoint()  # an awaiting finally still runs
            closed.append(1)

    pairs = [(i % 5, i) for i in range(10)]

    async def consume() -> None:
        async with (from_list(pairs) | group_by(lambda p: p[0], hold())).stream() as items:
            async for _ in items:
                await until(lambda: opened == 5)
                if how == "break":
                    break
                scope.cancel()

    with anyio.CancelScope() as scope:
        await consume()
    assert len(closed) == 5
    assert task_count() == before


async def test_group_by_soak_many_keys_accounts_for_every_item() -> None:
    """5,000 items over 60 keys, 50 live groups, small buffers, a Flush now and then: nothing lost or reordered."""

    rng = random.Random(7)
    items: list[Any] = []
    for i in range(5_000):
        items.append((rng.randrange(60), i))
        if rng.random() < 0.001:
            items.append(Flush())
    stats = KeyedStats()
    stage = group_by(lambda p: p[0], batch(3), max_keys=50, buffer=2, out_buffer=4, stats=stats)
    out = await (from_list(items) | stage).collect()
    expected, opened, evicted = reference_group_by(items, 3, 50)
    got: dict[int, list[list[tuple[int, int]]]] = {}
    for b in out:
        got.setdefault(b[0][0], []).append(b)
    assert got == expected
    assert (stats.opened, stats.evicted_lru, stats.live, stats.dropped) == (opened, evicted, 0, 0)


async def test_group_by_break_while_sub_pipelines_wait_for_the_output() -> None:
    """Many sub-pipelines wait in line for a full output when the consumer leaves: all of them end."""
    before = task_count()
    closed = 0

    @segment
    async def chatty(items: AsyncIterator[int]) -> AsyncIterator[int]:
        nonlocal closed
        try:
            async for x in items:
                for _ in range(10):
                    yield x
        finally:
            closed += 1

    stage = group_by(lambda x: x, chatty(), out_buffer=1)
    async with (from_list(list(range(30))) | stage).stream() as outputs:
        async for _ in outputs:
            await until(lambda: stats_live(stage) == 30)
            break
    assert closed == 30 and task_count() == before


def stats_live(stage: group_by[Any, Any]) -> int:
    return stage.stats.live if stage.stats is not None else 0


# ------------------------------------------------------------------ partition


def test_stable_hash_is_crc32_and_the_same_in_another_process() -> None:
    assert stable_hash("user-1") == zlib.crc32(b"suser-1")
    assert stable_hash(b"x") == zlib.crc32(b"bx")
    assert stable_hash(7) == zlib.crc32(b"i7")
    keys = ["a", "user-1", 12345, ("a", 1), b"raw", None]
    here = [stable_hash(k) for k in keys]
    code = f"from talkpipe_async.operators import stable_hash; print([stable_hash(k) for k in {keys!r}])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=30
    )
    assert there.stdout.strip() == str(here)


@PROPS
@given(pairs=KEYED, n=st.integers(1, 4))
async def test_partition_keeps_order_per_key_and_a_key_in_one_lane(pairs: list[tuple[int, int]], n: int) -> None:
    def lane(i: int) -> Any:
        async def tag(pair: tuple[int, int]) -> tuple[int, tuple[int, int]]:
            await spin(pair[1] % 4)
            return i, pair

        return concurrent_map(tag, 3)

    out = await (from_list(pairs) | partition(lambda p: p[0], n, lane)).collect()
    assert sorted(p for _, p in out) == sorted(pairs)
    assert per_key([p for _, p in out]) == per_key(pairs)
    assert all(i == stable_hash(p[0]) % n for i, p in out)


async def test_partition_flush_leaves_after_every_lane_flushed() -> None:
    xs: list[Any] = [*range(10), Flush(), 10, 11]
    out = await (from_list(xs) | partition(lambda x: x, 3, batch(100))).collect(metadata=True)
    k = next(i for i, x in enumerate(out) if isinstance(x, Flush))
    assert sorted(x for b in out[:k] for x in b) == list(range(10))
    assert sorted(x for b in out[k + 1 :] for x in b) == [10, 11]


async def test_partition_lane_that_ends_early_releases_metadata() -> None:
    stats = KeyedStats()
    xs: list[Any] = [*range(8), Flush(), *range(8, 16)]
    stage = partition(lambda x: x, 2, lambda lane: take(1) if lane == 0 else batch(100), stats=stats)
    out = await (from_list(xs) | stage).collect(metadata=True)
    k = [i for i, x in enumerate(out) if isinstance(x, Flush)]
    assert len(k) == 1
    data = [x for x in out if not isinstance(x, Flush)]
    lane0 = [x for x in range(16) if stable_hash(x) % 2 == 0]
    lane1 = [x for x in range(16) if stable_hash(x) % 2 == 1]
    assert lane0[0] in data
    assert sorted(x for b in data if isinstance(b, list) for x in b) == lane1
    assert stats.dropped == len(lane0) - 1


async def test_partition_error_in_a_lane() -> None:
    async def fn(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x

    with pytest.raises(ValueError, match="seven") as info:
        await (from_list(list(range(20))) | partition(lambda x: x, 2, concurrent_map(fn, 2))).collect()
    assert "7" in "\n".join(getattr(info.value, "__notes__", []))


async def test_partition_break_leaves_no_tasks() -> None:
    before = task_count()
    async with (from_list(list(range(100))) | partition(lambda x: x, 4, batch(3))).stream() as items:
        async for _ in items:
            break
    assert task_count() == before


# ------------------------------------------------------------------ merge_map / concat_map


def inner_of(sizes: dict[int, int]) -> Any:
    async def inner(x: int) -> AsyncIterator[tuple[int, int]]:
        for i in range(sizes[x]):
            await spin((x + i) % 3)
            yield (x, i)

    return inner


@PROPS
@given(sizes=st.lists(st.integers(0, 5), max_size=25), limit=st.integers(1, 5), buffer=st.integers(1, 3))
async def test_concat_map_equals_flat_map(sizes: list[int], limit: int, buffer: int) -> None:
    table = dict(enumerate(sizes))
    out = await (from_list(list(table)) | concat_map(inner_of(table), limit, buffer=buffer)).collect()
    assert out == [(x, i) for x, n in table.items() for i in range(n)]


@PROPS
@given(sizes=st.lists(st.integers(0, 5), max_size=25), limit=st.integers(1, 5))
async def test_merge_map_same_multiset_order_per_inner_and_limit(sizes: list[int], limit: int) -> None:
    table = dict(enumerate(sizes))
    running = 0
    peak = 0
    inner = inner_of(table)

    async def counted(x: int) -> AsyncIterator[tuple[int, int]]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            async for y in inner(x):
                yield y
        finally:
            running -= 1

    out = await (from_list(list(table)) | merge_map(counted, limit, buffer=2)).collect()
    expected = [(x, i) for x, n in table.items() for i in range(n)]
    assert sorted(out) == expected and per_key(out) == per_key(expected)
    assert peak <= limit


async def test_merge_map_runs_inner_streams_at_once() -> None:
    gate = anyio.Event()
    entered = 0

    async def inner(x: int) -> AsyncIterator[int]:
        nonlocal entered
        entered += 1
        if entered == 3:
            gate.set()
        await gate.wait()
        yield x

    assert sorted(await (from_list([1, 2, 3]) | merge_map(inner, 3)).collect()) == [1, 2, 3]


async def test_merge_map_metadata_is_a_barrier_and_inner_kinds() -> None:
    async def listed(x: int) -> list[int]:
        await spin(x)
        return [x, x]

    xs: list[Any] = [3, 1, Flush(), 2, 0]
    out = await (from_list(xs) | merge_map(listed, 4)).collect(metadata=True)
    assert sorted(out[:4]) == [1, 1, 3, 3] and out[4] == Flush() and sorted(out[5:]) == [0, 0, 2, 2]
    out = await (from_list(xs) | concat_map(lambda x: from_list([x] * 2), 3)).collect(metadata=True)
    assert out == [3, 3, 1, 1, Flush(), 2, 2, 0, 0]


@pytest.mark.parametrize("stage", [merge_map, concat_map])
async def test_inner_error_with_context_after_its_items(stage: Any) -> None:
    async def inner(x: int) -> AsyncIterator[int]:
        yield x
        if x == 2:
            raise LookupError("inner broke")

    got: list[int] = []
    with pytest.raises(LookupError) as info:
        async with (from_list([1, 2, 3]) | stage(inner, 1)).stream() as items:
            async for y in items:
                got.append(y)
    assert got == [1, 2]
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == f"{stage.__name__}(inner)" and ctx.item == "2"


@pytest.mark.parametrize("stage", [merge_map, concat_map])
async def test_inner_streams_closed_on_break(stage: Any) -> None:
    before = task_count()
    closed = 0

    async def inner(x: int) -> AsyncIterator[int]:
        nonlocal closed
        try:
            while True:
                yield x
                await anyio.lowlevel.checkpoint()
        finally:
            await anyio.lowlevel.checkpoint()
            closed += 1

    async with (from_list(list(range(10))) | stage(inner, 3, buffer=2)).stream() as items:
        async for _ in items:
            await until(lambda: task_count() >= before + 4)
            break
    assert closed == 3 and task_count() == before
