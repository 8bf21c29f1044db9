"""Combine operators: merge, zip, chain, fork/broadcast/split (asyncio, uvloop, trio)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, segment, source
from talkpipe_async.operators import (
    ForkStats,
    broadcast,
    chain,
    chain_with,
    concat,
    fork,
    merge,
    merge_with,
    split,
    zip_streams,
    zip_with,
)
from tests.helpers.ops import task_count, until

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=20, deadline=None)
lists = st.lists(st.integers(-100, 100), max_size=30)


@source
async def from_list(xs: list[Any]) -> AsyncIterator[Any]:
    """Yield *xs*."""
    for x in xs:
        yield x


@source
async def forever(tag: str) -> AsyncIterator[str]:
    """An endless source that never waits."""
    for i in itertools.count():
        yield f"{tag}{i}"


@source
async def naturals() -> AsyncIterator[int]:
    """0, 1, 2, ... without ever waiting."""
    for i in itertools.count():
        yield i


@segment
async def scale(items: AsyncIterator[int], k: int = 2) -> AsyncIterator[int]:
    """Multiply by k."""
    async for x in items:
        yield x * k


@PROPS
@given(parts=st.lists(lists, min_size=1, max_size=4))
async def test_merge_preserves_the_multiset_and_each_order(parts: list[list[int]]) -> None:
    tagged = [[(k, x) for x in part] for k, part in enumerate(parts)]
    out = await merge(*(from_list(p) for p in tagged), capacity=3).collect()
    assert Counter(out) == Counter(item for p in tagged for item in p)
    for k, part in enumerate(tagged):
        assert [item for item in out if item[0] == k] == part


async def test_merge_is_fair_between_endless_sources() -> None:
    async with merge(forever("a"), forever("b"), capacity=4).stream() as items:
        out = [x async for x in _take(items, 40)]
    a = sum(1 for x in out if x.startswith("a"))
    assert 15 <= a <= 25, out


async def _take(items: AsyncIterator[Any], n: int) -> AsyncIterator[Any]:
    async for x in items:
        yield x
        n -= 1
        if n == 0:
            return


async def test_merge_accepts_pipelines_and_passes_metadata() -> None:
    out = await merge(from_list([1, Flush(), 2]) | scale(k=10), from_list([5])).collect(metadata=True)
    assert sorted(x for x in out if isinstance(x, int)) == [5, 10, 20]
    assert out.count(Flush()) == 1


async def test_merge_error_keeps_type_and_stops_other_inputs() -> None:
    @source
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ConnectionResetError("gone")

    before = task_count()
    with pytest.raises(ConnectionResetError):
        await merge(broken(), forever("x")).collect()
    assert task_count() == before


async def test_merge_with_segment_form() -> None:
    out = await (from_list([1, 2, 3]) | merge_with(from_list([10, 20]))).collect()
    assert sorted(out) == [1, 2, 3, 10, 20]


async def test_merge_rejects_a_segment() -> None:
    with pytest.raises(TypeError):
        merge(scale())


@PROPS
@given(a=lists, b=lists, c=lists)
async def test_zip_matches_builtin_zip(a: list[int], b: list[int], c: list[int]) -> None:
    out = await zip_streams(from_list(a), from_list(b), from_list(c), capacity=2).collect()
    assert out == list(zip(a, b, c, strict=False))


@PROPS
@given(a=lists, b=lists)
async def test_zip_with_matches_builtin_zip(a: list[int], b: list[int]) -> None:
    assert await (from_list(a) | zip_with(from_list(b))).collect() == list(zip(a, b, strict=False))


async def test_zip_ends_with_the_shortest_endless_partner() -> None:
    before = task_count()
    out = await zip_streams(from_list([1, 2]), forever("z")).collect()
    assert out == [(1, "z0"), (2, "z1")]
    assert task_count() == before


async def test_zip_error_keeps_type() -> None:
    @source
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise LookupError("nope")

    with pytest.raises(LookupError):
        await zip_streams(broken(), from_list([1, 2, 3])).collect()


@PROPS
@given(parts=st.lists(lists, min_size=1, max_size=4))
async def test_chain_is_concatenation(parts: list[list[int]]) -> None:
    expected = [x for p in parts for x in p]
    assert await chain(*(from_list(p) for p in parts), capacity=2).collect() == expected
    assert await concat(*(from_list(p) for p in parts)).collect() == expected


async def test_chain_with_and_errors_in_order() -> None:
    @source
    async def broken() -> AsyncIterator[int]:
        yield 7
        raise RuntimeError("after seven")

    assert await (from_list([1, 2]) | chain_with(from_list([3]))).collect() == [1, 2, 3]
    got: list[int] = []
    with pytest.raises(RuntimeError, match="after seven"):
        async with chain(from_list([1]), broken(), from_list([9])).stream() as items:
            async for x in items:
                got.append(x)
    assert got == [1, 7]


# ---------------------------------------------------------------------- fork


@PROPS
@given(xs=lists, n=st.integers(1, 4))
async def test_broadcast_every_branch_gets_every_item(xs: list[int], n: int) -> None:
    branches = [scale(k=10**k) for k in range(n)]
    out = await (from_list(xs) | fork(*branches, buffer=2)).collect()
    assert Counter(out) == Counter(x * 10**k for k in range(n) for x in xs)


@PROPS
@given(xs=lists, n=st.integers(1, 4))
async def test_split_round_robin(xs: list[int], n: int) -> None:
    @segment
    async def tag(items: AsyncIterator[int], k: int) -> AsyncIterator[tuple[int, int]]:
        async for x in items:
            yield (k, x)

    out = await (from_list(xs) | split(*(tag(k=k) for k in range(n)), buffer=2)).collect()
    for k in range(n):
        assert [x for (b, x) in out if b == k] == xs[k::n]


async def test_copy_policies() -> None:
    @segment
    async def mutate(items: AsyncIterator[dict[str, int]]) -> AsyncIterator[tuple[str, int, int]]:
        async for d in items:
            d["n"] += 100
            yield ("mutate", id(d), d["n"])

    @segment
    async def read(items: AsyncIterator[dict[str, int]]) -> AsyncIterator[tuple[str, int, int]]:
        async for d in items:
            await anyio.lowlevel.checkpoint()
            yield ("read", id(d), d["n"])

    shallow = await (from_list([{"n": 1}]) | fork(mutate(), read())).collect()
    assert sorted(v for _, _, v in shallow) == [1, 101]  # the reader is not affected
    assert len({i for _, i, _ in shallow}) == 2
    deep = await (from_list([{"n": 1}]) | fork(mutate(), read(), copy="deep")).collect()
    assert sorted(v for _, _, v in deep) == [1, 101]
    none = await (from_list([{"n": 1}]) | fork(read(), mutate(), copy="none")).collect()
    assert len({i for _, i, _ in none}) == 1  # documented: the very same object in every branch


async def test_drop_oldest_counts_drops_of_the_slow_branch() -> None:
    release = anyio.Event()
    seen_slow: list[int] = []

    @segment
    async def slow(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            await release.wait()
            seen_slow.append(x)
            yield -x

    @source
    async def live() -> AsyncIterator[int]:
        for i in range(1, 21):
            await anyio.lowlevel.checkpoint()  # a real-time source waits between items
            yield i

    stats = ForkStats()
    op = fork(scale(k=1), slow(), buffer=2, policy="drop_oldest", stats=stats)
    fast_out: list[int] = []
    with anyio.fail_after(5):
        async with (live() | op).stream() as items:
            async for x in items:
                if x > 0:
                    fast_out.append(x)
                if x == 20:
                    release.set()
    assert fast_out == list(range(1, 21))
    assert stats.dropped[0] == 0
    assert stats.dropped[1] > 0
    assert len(seen_slow) + stats.dropped[1] == 20
    assert seen_slow[-1] == 20  # the newest items survive
    assert op.last_stats is stats


async def test_block_policy_loses_nothing_and_bounds_the_queue() -> None:
    release = anyio.Event()

    @segment
    async def slow(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            await release.wait()
            yield -x

    pulled: list[int] = []

    @source
    async def counted() -> AsyncIterator[int]:
        for i in range(1, 31):
            pulled.append(i)
            yield i

    op = fork(scale(k=1), slow(), buffer=3)
    async with (counted() | op).stream() as items:
        out = [await items.__anext__()]
        await until(lambda: len(pulled) >= 3)
        for _ in range(200):
            await anyio.lowlevel.checkpoint()
        # the slow branch holds 1 item, its queue 3, and the feeder 1 in hand: the upstream waits
        assert len(pulled) <= 1 + 3 + 1
        release.set()
        out += [x async for x in items]
    assert sorted(out) == sorted([*range(1, 31), *(-x for x in range(1, 31))])
    assert op.last_stats is not None and op.last_stats.dropped == [0, 0]


async def test_fork_metadata_once_after_the_branches() -> None:
    @segment(process_metadata=True)
    async def batcher(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        held: list[Any] = []
        async for x in items:
            if isinstance(x, Flush):
                yield list(held)
                held.clear()
                yield x
            else:
                held.append(x)

    out = await (from_list([1, 2, Flush(), 3]) | fork(batcher(), batcher())).collect(metadata=True)
    assert out.count(Flush()) == 1
    assert out.index(Flush()) == 2 and out[:2] == [[1, 2], [1, 2]]


async def test_branch_error_keeps_type_and_stops_everything() -> None:
    @segment
    async def bad(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            if x == 3:
                raise ArithmeticError("branch broke")
            yield x

    before = task_count()
    with pytest.raises(ArithmeticError):
        with anyio.fail_after(5):
            await (naturals() | fork(scale(k=1), bad())).collect()
    assert task_count() == before


async def test_upstream_error_after_branches_finish() -> None:
    @source
    async def broken() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("upstream")

    got: list[int] = []
    with pytest.raises(ValueError, match="upstream"):
        async with (broken() | broadcast(scale(k=1), scale(k=-1))).stream() as items:
            async for x in items:
                got.append(x)
    assert sorted(got) == [-2, -1, 1, 2]


@segment
async def first_two(items: AsyncIterator[int]) -> AsyncIterator[int]:
    """Negate the first two items, then end (a branch that leaves early)."""
    n = 0
    async for x in items:
        yield -x
        n += 1
        if n == 2:
            return


async def test_branch_that_ends_early_does_not_block_others() -> None:
    out = await (from_list(list(range(1, 51))) | fork(scale(k=1), first_two(), buffer=1)).collect()
    assert sorted(x for x in out if x > 0) == list(range(1, 51))
    assert sorted(x for x in out if x < 0) == [-2, -1]


async def test_metadata_owed_by_a_branch_that_ended_still_leaves_the_fork() -> None:
    feed: list[Any] = [1, 2, 3, Flush(n=1), 4, 5, Flush(n=2), 6]
    with anyio.fail_after(5):
        out = await (from_list(feed) | fork(scale(k=1), first_two(), buffer=4)).collect(metadata=True)
    assert [x for x in out if isinstance(x, Flush)] == [Flush(n=1), Flush(n=2)]
    assert sorted(x for x in out if not isinstance(x, Flush) and x > 0) == [1, 2, 3, 4, 5, 6]


async def test_fork_early_break_leaves_no_tasks() -> None:
    before = task_count()
    async with (naturals() | fork(scale(k=1), scale(k=1), buffer=2)).stream() as items:
        async for _ in items:
            break
    assert task_count() == before


async def test_fork_argument_checks() -> None:
    with pytest.raises(ValueError):
        fork()
    with pytest.raises(ValueError):
        fork(scale(), policy="drop_newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fork(scale(), copy="fancy")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fork(from_list([1]))
