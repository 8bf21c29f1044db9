"""Inner-stream operators (``merge_map``, ``concat_map``): the promises a mutation run found unchecked.

The stage names (they label stats, error notes and the tasks of the run), the validation texts and the smallest
accepted settings, the exact bounds (``limit`` inner streams at once, ``buffer`` items waiting per stream) with
their defaults, an upstream error after the inner streams started before it, the inner stream's iterator closed
when it ends or the consumer leaves, and a cleanup that never ends cut at the run's cleanup deadline.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from talkpipe_async import Flush, error_context, source
from talkpipe_async._core._closing import CLEANUP_TIMEOUT
from talkpipe_async.operators import concat_map, merge_map
from talkpipe_async.sources import just
from talkpipe_async.testing import virtual_backend
from tests.helpers.ops import task_count

pytestmark = pytest.mark.anyio

STAGES = [merge_map, concat_map]


def twice(x: int) -> list[int]:
    return [x, x]


def test_default_and_given_names() -> None:
    """``merge_map(<fn>)`` / ``concat_map(<fn>)`` from the function's name (a callable's type name without one)."""
    assert merge_map(twice).label == "merge_map(twice)"
    assert concat_map(twice).label == "concat_map(twice)"
    unnamed = functools.partial(twice)
    assert merge_map(unnamed).label == "merge_map(partial)"
    assert concat_map(unnamed).label == "concat_map(partial)"
    assert merge_map(twice, name="pages").label == "pages"
    assert concat_map(twice, name="pages").label == "pages"


@pytest.mark.parametrize("stage", STAGES)
def test_validation_texts(stage: Any) -> None:
    """``limit`` and ``buffer`` must be at least 1; the error names the operator and the setting."""
    what = stage.__name__
    for limit in (0, -1):
        with pytest.raises(ValueError, match=rf"^{what}: limit must be at least 1$"):
            stage(twice, limit)
    for buffer in (0, -3):
        with pytest.raises(ValueError, match=rf"^{what}: buffer must be at least 1$"):
            stage(twice, 2, buffer=buffer)


@pytest.mark.parametrize("stage", STAGES)
async def test_the_smallest_settings_carry_everything(stage: Any, anyio_backend: Any) -> None:
    """``limit=1`` and ``buffer=1`` are accepted and lose nothing; metadata keeps its place."""
    flush = Flush()
    with anyio.fail_after(10):
        out = await (just(1, 2, flush, 3) | stage(lambda x: range(x), 1, buffer=1)).collect(metadata=True)
    assert out == [0, 0, 1, flush, 0, 1, 2]


async def _count_running(make: Any, n_items: int) -> tuple[int, list[int]]:
    """How many inner streams had started once all of them wait at a gate; then the gate opens: every output."""
    entered = 0
    gate = anyio.Event()

    async def inner(x: int) -> AsyncIterator[int]:
        nonlocal entered
        entered += 1
        await gate.wait()
        yield x

    got: list[int] = []

    async def consume() -> None:
        async with (just(*range(n_items)) | make(inner)).stream() as items:
            async for y in items:
                got.append(y)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()  # every started inner stream waits at the gate
            seen = entered
            gate.set()
    return seen, got


@pytest.mark.parametrize(
    ("make", "running"),
    [
        (lambda f: merge_map(f), 16),
        (lambda f: concat_map(f), 1),
        (lambda f: merge_map(f, 3), 3),
        (lambda f: concat_map(f, 3), 3),
        (lambda f: merge_map(f, 1), 1),
    ],
    ids=["merge_map-default", "concat_map-default", "merge_map-3", "concat_map-3", "merge_map-1"],
)
async def test_exactly_limit_inner_streams_run_at_once(make: Any, running: int, anyio_backend: Any) -> None:
    """``limit`` inner streams start while they all wait, and not one more (16 for ``merge_map`` by default, 1 for
    ``concat_map``); the next start as earlier ones end, and every item arrives."""
    seen, got = await _count_running(make, 20)
    assert seen == running
    assert sorted(got) == list(range(20))


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("buffer", [1, 3, None])
async def test_an_inner_stream_runs_at_most_buffer_plus_one_items_ahead(
    stage: Any, buffer: int | None, anyio_backend: Any
) -> None:
    """While the consumer holds the first item, an endless inner stream fills its lane (``buffer`` items, 16 by
    default) and has made one more that waits for room: ``buffer + 2`` made in all, then it waits."""
    produced = 0

    async def endless(x: int) -> AsyncIterator[int]:
        nonlocal produced
        while True:
            produced += 1
            yield produced

    made = stage(endless) if buffer is None else stage(endless, buffer=buffer)
    with anyio.fail_after(10):
        async with (just(1) | made).stream() as items:
            async for y in items:
                assert y == 1
                await anyio.wait_all_tasks_blocked()
                assert produced == (16 if buffer is None else buffer) + 2
                break


@pytest.mark.parametrize("stage", STAGES)
async def test_an_upstream_error_comes_after_the_inner_streams_started_before_it(
    stage: Any, anyio_backend: Any
) -> None:
    """The upstream's own error, with its type, after every item of the inner streams it started."""

    @source
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise KeyError("upstream broke")

    async def slow(x: int) -> AsyncIterator[int]:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
            yield x

    got: list[int] = []
    with anyio.fail_after(10):
        with pytest.raises(KeyError, match="upstream broke"):
            async with (failing() | stage(slow, 4)).stream() as items:
                async for y in items:
                    got.append(y)
    assert sorted(got) == [1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("stage", STAGES)
async def test_an_error_of_fn_itself_names_the_stage_and_the_item(stage: Any, anyio_backend: Any) -> None:
    """``fn`` failing (before any inner item) ends the stage with its error, noting this stage and the item."""

    def pages(x: int) -> list[int]:
        if x == 2:
            raise LookupError("no pages")
        return [x]

    with anyio.fail_after(10):
        with pytest.raises(LookupError) as info:
            await (just(1, 2, 3) | stage(pages, 1, name="pager")).collect()
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "pager" and ctx.item == "2"


@pytest.mark.parametrize("stage", STAGES)
async def test_the_tasks_are_named_after_the_stage(stage: Any, anyio_backend: Any) -> None:
    """The upstream is read in ``talkpipe feeder for <stage>``; each inner stream runs in
    ``talkpipe inner stream of <stage>`` (seen in task dumps and in ``current_task()``)."""
    upstream: set[str | None] = set()
    inner: set[str | None] = set()

    @source
    async def numbers() -> AsyncIterator[int]:
        for i in range(3):
            upstream.add(anyio.get_current_task().name)
            yield i

    async def each(x: int) -> AsyncIterator[int]:
        inner.add(anyio.get_current_task().name)
        yield x

    with anyio.fail_after(10):
        for given, label in ((None, f"{stage.__name__}(each)"), ("mine", "mine")):
            upstream.clear()
            inner.clear()
            assert sorted(await (numbers() | stage(each, 2, name=given)).collect()) == [0, 1, 2]
            assert upstream == {f"talkpipe feeder for {label}"}
            assert inner == {f"talkpipe inner stream of {label}"}


class _Pages:
    """An async iterable that is not a generator: its iterator has ``aclose`` (or not) and counts the calls."""

    def __init__(self, n: int | None, closable: bool, log: list[str]) -> None:
        self.n = n
        self.closable = closable
        self.log = log

    def __aiter__(self) -> Any:
        outer = self
        i = 0

        class It:
            def __aiter__(self) -> Any:
                return self

            async def __anext__(self) -> int:
                nonlocal i
                await anyio.lowlevel.checkpoint()
                if outer.n is not None and i >= outer.n:
                    raise StopAsyncIteration
                i += 1
                return i

        it = It()
        if self.closable:

            async def aclose() -> None:
                await anyio.lowlevel.checkpoint()
                self.log.append("closed")

            it.aclose = aclose  # type: ignore[attr-defined]
        return it


@pytest.mark.parametrize("stage", STAGES)
async def test_an_inner_iterators_aclose_is_awaited_when_it_ends_or_the_consumer_leaves(
    stage: Any, anyio_backend: Any
) -> None:
    """An inner async iterator with ``aclose`` is closed once, at its end or when the consumer leaves; one without
    ``aclose`` is simply dropped."""
    log: list[str] = []
    with anyio.fail_after(10):
        assert sorted(await (just(2, 3) | stage(lambda n: _Pages(n, True, log), 2)).collect()) == [1, 1, 2, 2, 3]
        assert log == ["closed", "closed"]
        log.clear()
        assert sorted(await (just(2, 1) | stage(lambda n: _Pages(n, False, log), 2)).collect()) == [1, 1, 2]
        assert log == []
        before = task_count()
        async with (just(None, None) | stage(lambda n: _Pages(n, True, log), 2, buffer=2)).stream() as items:
            async for _ in items:
                break
        assert log == ["closed", "closed"] and task_count() == before


@pytest.mark.parametrize("stage", STAGES)
async def test_leaving_before_limit_is_reached_stops_everything_quietly(stage: Any, anyio_backend: Any) -> None:
    """The consumer leaves while the upstream is over and fewer than ``limit`` streams run (nothing waits for room
    and the feeder is done): no error, every inner stream closed, no task left."""
    closed = 0

    async def endless(x: int) -> AsyncIterator[int]:
        nonlocal closed
        try:
            while True:
                yield x
                await anyio.lowlevel.checkpoint()
        finally:
            closed += 1

    before = task_count()
    with anyio.fail_after(10):
        async with (just(1, 2) | stage(endless, 4, buffer=1000)).stream() as items:
            async for _ in items:
                await anyio.wait_all_tasks_blocked()
                break
    assert closed == 2 and task_count() == before


async def test_an_inner_streams_metadata_is_not_passed_on(anyio_backend: Any) -> None:
    """Only the upstream's metadata leaves the stage; a Flush inside an inner source is dropped."""
    flush, inner_flush = Flush(), Flush()
    with anyio.fail_after(10):
        for stage in STAGES:
            out = await (just(1, flush, 2) | stage(lambda x: just(x, inner_flush, x))).collect(metadata=True)
            assert out == [1, 1, flush, 2, 2]


@pytest.mark.parametrize(
    "anyio_backend",
    [virtual_backend("asyncio"), virtual_backend("trio")],
    ids=["asyncio-virtual", "trio-virtual"],
)
@pytest.mark.parametrize("stage", STAGES)
async def test_an_inner_cleanup_that_awaits_runs_but_is_cut_at_the_cleanup_deadline(
    stage: Any, anyio_backend: Any
) -> None:
    """When the consumer leaves, each inner stream's ``finally`` may await (a second here), but one that never
    ends is cancelled ``CLEANUP_TIMEOUT`` after the stop, and the block leaves (virtual clocks: no real wait)."""
    log: list[str] = []

    async def inner(x: int) -> AsyncIterator[int]:
        try:
            while True:
                yield x
                await anyio.lowlevel.checkpoint()
        finally:
            started = anyio.current_time()
            try:
                if x == 1:
                    await anyio.sleep(1)
                    log.append("slow cleanup done")
                else:
                    await anyio.sleep_forever()
            finally:
                log.append(f"{x} after {anyio.current_time() - started:.0f} s")

    with anyio.fail_after(10 * CLEANUP_TIMEOUT):
        async with (just(1, 2) | stage(inner, 2, buffer=1)).stream() as items:
            async for _ in items:
                await anyio.wait_all_tasks_blocked()
                break
    assert sorted(log) == ["1 after 1 s", f"2 after {CLEANUP_TIMEOUT:.0f} s", "slow cleanup done"]


@pytest.mark.parametrize(
    "anyio_backend",
    [virtual_backend("asyncio"), virtual_backend("trio")],
    ids=["asyncio-virtual", "trio-virtual"],
)
@pytest.mark.parametrize("stage", STAGES)
async def test_an_inner_stream_that_ignores_the_stop_is_ended_at_its_next_item(stage: Any, anyio_backend: Any) -> None:
    """When the consumer leaves, an inner stream that catches the stop and goes on is not read again: the item it
    makes next is its last (it is closed there), and the block leaves at once."""
    swallowed = 0
    made = 0

    async def stubborn(x: int) -> AsyncIterator[int]:
        nonlocal swallowed, made
        while True:
            made += 1
            yield made
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                swallowed += 1  # ignores the stop and goes on

    with anyio.fail_after(10 * CLEANUP_TIMEOUT):
        started = anyio.current_time()
        async with (just(1) | stage(stubborn, buffer=4)).stream() as items:
            async for _ in items:
                await anyio.wait_all_tasks_blocked()
                break
        assert anyio.current_time() - started < 1
    assert (swallowed, made) == (1, 2)
