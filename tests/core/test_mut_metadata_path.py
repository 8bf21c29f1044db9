"""How metadata goes past segments that do not process it (``talkpipe_async._core._metadata_path``).

Pinned from what a user sees, with the C steps of the item path and with their pure-Python twins (the ``speedups``
fixture): metadata such as ``Flush`` passes a segment that does not process metadata, exactly where it was relative
to the data, whether the run's input is a list, an async iterable, an async source or a sync chain; with no stage
downstream to receive it, it is dropped and counted (``metadata_dropped``), once per item; an error raised after a
bypass names its stage; and leaving a run while a chain is held by a bypass closes every stage of that chain.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import pytest

from talkpipe_async import Flush, Metadata, error_context, is_metadata, segment, source
from tests.helpers.sources import sync_fails_on, sync_seen_by

pytestmark = pytest.mark.anyio


@segment
async def add(items: AsyncIterator[int], n: int = 0) -> AsyncIterator[int]:
    async for x in items:
        yield x + n


@segment
async def spy(items: AsyncIterator[Any], seen: list[Any]) -> AsyncIterator[Any]:
    """A plain async segment that records every item it is given."""
    async for x in items:
        seen.append(x)
        yield x


@segment(process_metadata=True)
async def sees_all(items: AsyncIterator[Any], seen: list[Any]) -> AsyncIterator[Any]:
    async for x in items:
        seen.append(x)
        yield x


@segment
def sync_add(items: Iterable[int], n: int = 0) -> Iterator[int]:
    for x in items:
        yield x + n


@source
async def a_source(items: list[Any]) -> AsyncIterator[Any]:
    for x in items:
        yield x


async def aiter_of(items: list[Any]) -> AsyncIterator[Any]:
    for x in items:
        yield x


def stream_of() -> list[Any]:
    """Data with metadata at the start, in the middle (twice in a row) and at the end."""
    return [Flush(n=0), 1, 2, Flush(n=1), Metadata(kind="mark"), 3, Flush(n=2)]


EXPECTED_DATA = [11, 12, 13]


def expected_with_metadata() -> list[Any]:
    return [Flush(n=0), 11, 12, Flush(n=1), Metadata(kind="mark"), 13, Flush(n=2)]


async def test_metadata_from_an_async_source_passes_a_plain_segment_in_its_place(speedups: str) -> None:
    """An async source's metadata goes around a segment that does not process it and reaches the consumer
    (``metadata=True``) exactly where it was among the data; the segment sees only data."""
    seen: list[Any] = []
    out = await (a_source(items=stream_of()) | spy(seen=seen) | add(n=10)).collect(metadata=True)
    assert out == expected_with_metadata()
    assert seen == [1, 2, 3]


async def test_metadata_of_an_async_iterable_input_passes_a_plain_segment_in_its_place(speedups: str) -> None:
    """The same for an async iterable handed to ``collect`` as the input."""
    seen: list[Any] = []
    out = await (spy(seen=seen) | add(n=10)).collect(aiter_of(stream_of()), metadata=True)
    assert out == expected_with_metadata()
    assert seen == [1, 2, 3]


async def test_metadata_of_a_list_input_passes_a_plain_segment_in_its_place(speedups: str) -> None:
    """The same for a list input, whose metadata is taken aside where the list is fed into the async stages."""
    seen: list[Any] = []
    out = await (spy(seen=seen) | add(n=10)).collect(stream_of(), metadata=True)
    assert out == expected_with_metadata()
    assert seen == [1, 2, 3]


async def test_metadata_passed_on_by_a_stage_that_takes_it_goes_around_the_next_plain_one(speedups: str) -> None:
    """After a stage that processes metadata, the next plain segment again never sees it, and it reaches the next
    stage that takes it in its place."""
    first: list[Any] = []
    plain: list[Any] = []
    last: list[Any] = []
    chain = sees_all(seen=first) | spy(seen=plain) | add(n=10) | sees_all(seen=last)
    out = await chain.collect(aiter_of(stream_of()))
    assert out == EXPECTED_DATA
    assert first == stream_of()
    assert plain == [1, 2, 3]
    assert last == expected_with_metadata()


async def test_a_list_input_gives_its_metadata_to_a_first_stage_that_takes_it(speedups: str) -> None:
    """A first stage that processes metadata gets a list input's metadata in its place, and a plain segment after it
    does not."""
    first: list[Any] = []
    plain: list[Any] = []
    out = await (sees_all(seen=first) | spy(seen=plain) | add(n=10)).collect(stream_of(), metadata=True)
    assert first == stream_of()
    assert plain == [1, 2, 3]
    assert out == expected_with_metadata()


@pytest.mark.parametrize("input_kind", ["list", "async iterable", "source"])
async def test_metadata_with_no_receiver_is_dropped_and_counted_once_each(speedups: str, input_kind: str) -> None:
    """With no stage downstream that takes metadata and a consumer that does not ask for it, each metadata item is
    dropped where the stream enters the plain segment, and counted once: the run's ``metadata_dropped``."""
    seen: list[Any] = []
    items = stream_of()
    if input_kind == "source":
        run = (a_source(items=items) | spy(seen=seen) | add(n=10)).stream()
    elif input_kind == "list":
        run = (spy(seen=seen) | add(n=10)).stream(items)
    else:
        run = (spy(seen=seen) | add(n=10)).stream(aiter_of(items))
    async with run as out:
        assert [x async for x in out] == EXPECTED_DATA
    assert seen == [1, 2, 3]
    assert run.metadata_dropped == 4


async def test_metadata_after_the_last_taker_is_dropped_and_counted(speedups: str) -> None:
    """Metadata a stage processed and passed on, with no taker after it, is dropped before the next plain segment."""
    first: list[Any] = []
    run = (sees_all(seen=first) | add(n=10)).stream(aiter_of(stream_of()))
    async with run as out:
        assert [x async for x in out] == EXPECTED_DATA
    assert first == stream_of()
    assert run.metadata_dropped == 4


async def test_metadata_through_a_fused_sync_segment_is_dropped_and_counted_without_a_receiver(speedups: str) -> None:
    """A plain sync segment fused into the run: its input's metadata is dropped and counted when nothing takes it,
    and kept in its place when the consumer asks for it."""
    run = (sync_add(n=10) | add()).stream(stream_of())
    async with run as out:
        assert [x async for x in out] == EXPECTED_DATA
    assert run.metadata_dropped == 4
    assert await (sync_add(n=10) | add()).collect(stream_of(), metadata=True) == expected_with_metadata()


async def test_metadata_a_fused_sync_stage_passes_on_is_dropped_and_counted_at_the_end(speedups: str) -> None:
    """A run of sync stages only, one of which takes metadata: what it passes on is dropped and counted at the end
    unless the consumer asks for it."""
    first: list[Any] = []
    run = (sync_seen_by(log=first) | sync_add(n=10)).stream(stream_of())
    async with run as out:
        assert [x async for x in out] == EXPECTED_DATA
    assert first == stream_of()
    assert run.metadata_dropped == 4


def test_iter_sync_keeps_metadata_in_its_place_around_a_plain_stage(speedups: str) -> None:
    """In a chain of plain generators, metadata a stage passed on goes around the plain stage after it and comes out
    before that stage's next output, each item itself, none lost."""
    first: list[Any] = []
    out = list((sync_seen_by(log=first) | sync_add(n=10)).iter_sync(stream_of(), metadata=True))
    assert first == stream_of()
    assert out == expected_with_metadata()
    assert list((sync_seen_by(log=[]) | sync_add(n=10)).iter_sync(stream_of())) == EXPECTED_DATA


def test_iter_sync_error_names_the_stage_and_closes_the_chain(speedups: str) -> None:
    """An error in a plain-generator chain names the stage that raised it, and every stage is closed."""
    closed: list[str] = []

    @segment
    def guarded(items: Iterable[int]) -> Iterator[int]:
        try:
            yield from items
        finally:
            closed.append("guarded")

    with pytest.raises(ValueError, match="bad item 2") as info:
        list((guarded() | sync_fails_on(bad=2)).iter_sync([1, 2, 3]))
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "sync_fails_on"
    assert closed == ["guarded"]


def test_breaking_out_of_iter_sync_closes_every_stage(speedups: str) -> None:
    """Leaving an ``iter_sync`` loop early (closing its iterator) closes every stage of the chain at once."""
    closed: list[str] = []

    @segment
    def guarded(items: Iterable[int], tag: str) -> Iterator[int]:
        try:
            yield from items
        finally:
            closed.append(tag)

    it = (guarded(tag="a") | guarded(tag="b")).iter_sync(range(10))
    assert next(it) == 0
    assert closed == []
    it.close()  # type: ignore[attr-defined]
    assert sorted(closed) == ["a", "b"]
    it = (guarded(tag="c") | guarded(tag="d")).iter_sync(range(3))
    assert list(it) == [0, 1, 2]
    assert sorted(closed) == ["a", "b", "c", "d"]


async def test_an_error_after_a_bypass_names_its_stage(speedups: str) -> None:
    """An error raised by a segment that metadata went around still names that segment, and the items before it
    and the metadata arrived in order."""

    @segment
    async def fails_on(items: AsyncIterator[int], bad: int) -> AsyncIterator[int]:
        async for x in items:
            if x == bad:
                raise ValueError(f"bad item {x}")
            yield x

    got: list[Any] = []
    with pytest.raises(ValueError, match="bad item 3") as info:
        async with (fails_on(bad=3) | add(n=10)).stream(aiter_of(stream_of()), metadata=True) as out:
            async for x in out:
                got.append(x)
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "fails_on"
    assert got == [Flush(n=0), 11, 12, Flush(n=1), Metadata(kind="mark")]


async def test_leaving_a_run_held_by_a_bypass_closes_the_chain_under_it(speedups: str) -> None:
    """The consumer leaves right after receiving metadata, while the segments it went around are held waiting for
    their input: every one of them, and the source, is closed (their ``finally`` blocks run) when the run ends."""
    closed: list[str] = []

    @source
    async def endless() -> AsyncIterator[Any]:
        try:
            n = 0
            while True:
                closed.append(f"produced {n}")
                yield n
                yield Flush(n=n)
                n += 1
        finally:
            closed.append("source")

    @segment
    async def guarded(items: AsyncIterator[int], tag: str) -> AsyncIterator[int]:
        try:
            async for x in items:
                yield x
        finally:
            closed.append(tag)

    got: list[Any] = []
    async with (endless() | guarded(tag="a") | guarded(tag="b")).stream(metadata=True) as out:
        async for x in out:
            got.append(x)
            if is_metadata(x):
                break
    assert got == [0, Flush(n=0)]
    assert closed[0] == "produced 0", "nothing is produced after the item the consumer left on"
    assert sorted(closed[1:]) == ["a", "b", "source"]


async def test_without_the_extension_every_metadata_path_runs_in_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An install without the C extension (not built): runs, ``iter_sync`` included, keep metadata in its place,
    count what they drop, name a failing stage and close every stage, all in pure Python."""
    from talkpipe_async._core import _batch_items

    monkeypatch.setattr(_batch_items, "_speedups", None)
    monkeypatch.setattr(_batch_items, "SPEEDUPS", False)
    assert await (spy(seen=[]) | add(n=10)).collect(aiter_of(stream_of()), metadata=True) == expected_with_metadata()
    run = (sync_add(n=10) | add()).stream(stream_of())
    async with run as out:
        assert [x async for x in out] == EXPECTED_DATA
    assert run.metadata_dropped == 4
    first: list[Any] = []
    out_sync = list((sync_seen_by(log=first) | sync_add(n=10)).iter_sync(stream_of(), metadata=True))
    assert out_sync == expected_with_metadata()
    with pytest.raises(ValueError, match="bad item 2") as info:
        list(sync_fails_on(bad=2).iter_sync([1, 2, 3]))
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "sync_fails_on"


async def test_a_stage_that_swallows_the_close_still_lets_the_run_end_cleanly(speedups: str) -> None:
    """A segment that ends its stream on any exception from upstream (a bare ``except``), left while metadata went
    around it: the run still ends without an error, and the source is closed."""
    closed: list[str] = []

    @source
    async def endless() -> AsyncIterator[Any]:
        try:
            n = 0
            while True:
                yield n
                yield Flush(n=n)
                n += 1
        finally:
            closed.append("source")

    @segment
    async def ends_on_any_error(items: AsyncIterator[int]) -> AsyncIterator[int]:
        try:
            async for x in items:
                yield x
        except BaseException:
            closed.append("swallowed")
            return

    got: list[Any] = []
    async with (endless() | ends_on_any_error()).stream(metadata=True) as out:
        async for x in out:
            got.append(x)
            if is_metadata(x):
                break
    assert got == [0, Flush(n=0)]
    assert sorted(closed) == ["source", "swallowed"]


async def test_a_cancelled_run_lets_a_shielded_cleanup_above_a_bypass_finish(speedups: str) -> None:
    """A run cancelled from outside while its source, whose metadata went around a plain segment, waits: the
    source's ``finally`` gets to finish its shielded awaits."""
    log: list[str] = []
    waiting = anyio.Event()

    @source
    async def flush_then_wait() -> AsyncIterator[Any]:
        try:
            yield 1
            yield Flush(n=0)
            waiting.set()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()
                await anyio.lowlevel.checkpoint()
            log.append("source cleaned up")

    got: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            async with (flush_then_wait() | add()).stream(metadata=True) as items:
                async for x in items:
                    got.append(x)

        tg.start_soon(consume)
        await waiting.wait()
        tg.cancel_scope.cancel()
    assert got == [1, Flush(n=0)]
    assert log == ["source cleaned up"]


async def test_a_cleanup_past_the_deadline_after_a_bypass_is_cut_short_once(
    speedups: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Leaving a run on metadata that went around a segment whose ``finally`` awaits forever: that await is cut at
    the cleanup deadline, once (the shielded awaits after it in the same ``finally`` still run), the deadline is
    logged, and the block leaves normally, as it does when no metadata went around the segment."""
    from talkpipe_async._core import _closing

    monkeypatch.setattr(_closing, "CLEANUP_TIMEOUT", 0.2)
    caplog.set_level(logging.ERROR, logger="talkpipe_async")
    log: list[str] = []

    @segment
    async def slow_to_close(items: AsyncIterator[int]) -> AsyncIterator[int]:
        try:
            async for x in items:
                yield x
        finally:
            try:
                await anyio.sleep_forever()
            finally:
                log.append("cut short")
                with anyio.CancelScope(shield=True):
                    await anyio.lowlevel.checkpoint()
                    await anyio.lowlevel.checkpoint()
                log.append("cleaned up")

    got: list[Any] = []
    with anyio.fail_after(5):
        async with (a_source(items=[1, Flush(n=0), 2, 3]) | slow_to_close()).stream(metadata=True) as out:
            async for x in out:
                got.append(x)
                if is_metadata(x):
                    break
    assert got == [1, Flush(n=0)]
    assert log == ["cut short", "cleaned up"]
    messages = [r.getMessage() for r in caplog.records if r.name == "talkpipe_async"]
    assert "a stage's cleanup was cut short: the 0 s cleanup deadline passed" in messages


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_an_asyncio_cancel_that_lands_as_the_source_wakes_is_not_lost(speedups: str) -> None:
    """A plain ``Task.cancel()`` of the task consuming a run, given just after the awaited event was set (the source
    above a bypass is woken but has not run yet): the task ends cancelled; the source does not go on."""
    import asyncio

    log: list[str] = []
    waiting = anyio.Event()
    wake = asyncio.Event()

    @source
    async def flush_then_wait() -> AsyncIterator[Any]:
        try:
            yield 1
            yield Flush(n=0)
            waiting.set()
            await wake.wait()
            log.append("went on")
            yield 2
        finally:
            log.append("source closed")

    got: list[Any] = []

    async def consume() -> None:
        async with (flush_then_wait() | add()).stream(metadata=True) as items:
            async for x in items:
                got.append(x)

    task = asyncio.ensure_future(consume())
    await waiting.wait()
    wake.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert got == [1, Flush(n=0)]
    assert log == ["source closed"]
