"""Embedding: from_stream, from_queue, Feed, background (asyncio, uvloop, trio)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import pytest

from talkpipe_async import segment, source
from talkpipe_async.operators import (
    QUEUE_END,
    Feed,
    FeedClosed,
    background,
    batch,
    concurrent_map,
    from_queue,
    from_stream,
)
from tests.ops_helpers import task_count
from tests.ops_helpers import until as _until

pytestmark = pytest.mark.anyio


@segment
async def double(items: AsyncIterator[int]) -> AsyncIterator[int]:
    """2x."""
    async for x in items:
        yield 2 * x


until = partial(_until, rounds=5000)  # the embedding tests allow more rounds


async def test_from_stream_reads_until_senders_close() -> None:
    send, receive = anyio.create_memory_object_stream[int](4)
    got: list[int] = []
    async with anyio.create_task_group() as tg:

        async def produce() -> None:
            async with send:
                for i in range(20):
                    await send.send(i)

        tg.start_soon(produce)
        got = await (from_stream(receive) | double()).collect()
    assert got == [2 * i for i in range(20)]


async def test_from_stream_early_stop_closes_the_receiver() -> None:
    send, receive = anyio.create_memory_object_stream[int](1)
    send.send_nowait(1)
    async with from_stream(receive).stream() as items:
        async for _ in items:
            break
    with pytest.raises(anyio.BrokenResourceError):
        await send.send(2)  # a sender is told, instead of waiting forever
    send.close()


async def test_from_queue_asyncio_only(anyio_backend: Any) -> None:
    if anyio_backend[0] == "trio":
        with pytest.raises(RuntimeError, match="asyncio"):
            await from_queue(object()).collect()
        return
    queue: asyncio.Queue[Any] = asyncio.Queue(3)
    async with anyio.create_task_group() as tg:

        async def produce() -> None:
            for x in [1, None, 3]:  # None is an ordinary item
                await queue.put(x)
            await queue.put(QUEUE_END)

        tg.start_soon(produce)
        assert await from_queue(queue).collect() == [1, None, 3]
    with pytest.raises(ValueError):
        from_queue(queue, end=None)


async def test_feed_push_waits_while_the_pipeline_is_behind() -> None:
    feed: Feed[int] = Feed(maxsize=2)
    feed.push_nowait(1)
    feed.push_nowait(2)
    with pytest.raises(anyio.WouldBlock):
        feed.push_nowait(3)  # bounded: never dropped, refused
    assert feed.queued == 2
    pushed = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def push_third() -> None:
            await feed.push(3)  # waits until the pipeline takes an item
            pushed.set()
            feed.close()

        tg.start_soon(push_third)
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert not pushed.is_set()
        assert await (feed | double()).collect() == [2, 4, 6]


async def test_feed_fail_and_closed() -> None:
    feed: Feed[int] = Feed(maxsize=5)
    await feed.push(1)
    await feed.fail(KeyError("upstream app"))
    got: list[int] = []
    with pytest.raises(KeyError):
        async with feed.stream() as items:
            async for x in items:
                got.append(x)
    assert got == [1]
    with pytest.raises(FeedClosed):
        await feed.push(2)
    with pytest.raises(RuntimeError, match="one run"):
        await feed.collect()


async def test_feed_push_after_pipeline_stopped_raises() -> None:
    feed: Feed[int] = Feed(maxsize=1)
    await feed.push(1)
    async with feed.stream() as items:
        async for _ in items:
            break
    with pytest.raises(FeedClosed):
        await feed.push(2)


async def test_background_drain_finishes_in_flight_work() -> None:
    feed: Feed[int] = Feed(maxsize=10)
    done: list[Any] = []

    async def slow(x: int) -> int:
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        return x

    pipeline = feed | concurrent_map(slow, 4) | batch(3)
    before = task_count()
    async with background(pipeline, on_item=done.append) as run:
        for i in range(10):
            await feed.push(i)
        await until(lambda: feed.queued == 0)
        await run.stop(drain=True)
        assert run.done.is_set()
    assert [x for b in done for x in b] == list(range(10))  # the partial last batch is flushed too
    assert run.count == len(done) and run.not_delivered == 0
    assert task_count() == before


async def test_background_stop_without_drain_cancels() -> None:
    @source
    async def endless() -> AsyncIterator[int]:
        i = 0
        while True:
            await anyio.lowlevel.checkpoint()
            yield i
            i += 1

    before = task_count()
    async with background(endless() | double()) as run:
        await until(lambda: run.count > 10)
        await run.stop(drain=False)
    assert run.error is None
    assert task_count() == before


async def test_background_drain_of_an_idle_source() -> None:
    @source
    async def idle() -> AsyncIterator[int]:
        yield 1
        await anyio.sleep_forever()
        yield 2  # pragma: no cover

    out: list[int] = []
    async with background(idle(), on_item=out.append) as run:
        await until(lambda: out == [1])
        with anyio.fail_after(5):
            await run.stop(drain=True)  # the gate ends the stream although the source waits
    assert out == [1]


async def test_background_error_raised_by_wait_and_exit() -> None:
    @source
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ConnectionAbortedError("lost")

    async with background(broken()) as run:
        with pytest.raises(ConnectionAbortedError):
            await run.wait()
    with pytest.raises(ConnectionAbortedError):
        async with background(broken(), on_exit="wait"):
            pass


async def test_background_body_error_cancels_the_run() -> None:
    feed: Feed[int] = Feed()
    before = task_count()
    with pytest.raises(LookupError):
        async with background(feed | double()):
            raise LookupError("app failed")
    assert task_count() == before


async def test_background_async_on_item_and_exit_modes() -> None:
    feed: Feed[int] = Feed()
    seen: list[int] = []

    async def record(x: int) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(x)

    async with background(feed | double(), on_item=record, on_exit="drain"):
        await feed.push_many([1, 2, 3])
        await until(lambda: feed.queued == 0)
    assert seen == [2, 4, 6]


# ---------------------------------------------------------------- drain: every accepted item is delivered


async def test_drain_delivers_every_item_whose_push_returned() -> None:
    """Pushers race the stop: each item whose push returned is written; later pushes get FeedClosed."""
    from talkpipe_async.operators import map as map_
    from talkpipe_async.sinks import callback

    feed: Feed[int] = Feed(maxsize=100)
    written: list[int] = []
    accepted: list[int] = []
    refused: list[int] = []
    pipeline = feed | map_(lambda x: x) | batch(50, timeout=0.2) | callback(written.extend)

    async def pusher(base: int, stop_at: anyio.Event) -> None:
        for i in range(base, base + 100):
            if i == base + 50:
                stop_at.set()  # the stop starts while every pusher is mid-way
            try:
                await feed.push(i)
            except FeedClosed:
                refused.append(i)
                continue
            accepted.append(i)

    async with background(pipeline) as run:
        halfway = [anyio.Event() for _ in range(20)]
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(pusher, n * 1000, halfway[n])
            for event in halfway:
                await event.wait()
            with anyio.fail_after(10):
                await run.stop(drain=True)
    assert sorted(written) == sorted(accepted)
    assert len(accepted) + len(refused) == 2000
    assert refused, "pushes after the stop must be refused"
    assert run.not_delivered == 0
    with pytest.raises(FeedClosed):
        await feed.push(-1)


async def test_drain_with_queued_items_and_no_pushers() -> None:
    feed: Feed[int] = Feed(maxsize=100)
    out: list[int] = []
    async with background(feed | double(), on_item=out.append) as run:
        for i in range(100):
            feed.push_nowait(i)
        await run.stop(drain=True)  # nothing was taken yet: all 100 still go through
    assert out == [2 * i for i in range(100)]
    assert feed.accepted == 100


async def test_drain_deadline_reports_the_exact_count_not_delivered() -> None:
    from talkpipe_async.operators import DrainTimeout
    from talkpipe_async.sinks import callback

    feed: Feed[int] = Feed(maxsize=100)
    entered = anyio.Event()

    async def stuck(x: int) -> None:
        entered.set()
        await anyio.sleep_forever()

    async with background(feed | callback(stuck)) as run:
        for i in range(10):
            await feed.push(i)
        await entered.wait()
        with pytest.raises(DrainTimeout) as caught:
            await run.stop(drain=True, grace=0.05)
    error = caught.value
    assert error.accepted == 10
    assert error.entered == 1  # strict pull: the stuck sink asked for one item only
    assert error.not_delivered == 9 and error.items == list(range(1, 10))
    assert run.not_delivered == 9
    assert "9 accepted items" in str(error)
