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
from tests.helpers.ops import task_count
from tests.helpers.ops import until as _until
from tests.helpers.sources import numbers

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
    before = task_count()
    async with background(numbers() | double()) as run:
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


async def test_drain_deadline_counts_the_item_stuck_in_the_sink() -> None:
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
    assert error.delivered == 0
    assert error.not_delivered == 10  # the nine never taken and the one the sink never finished
    assert error.items == list(range(1, 10)) and error.not_entered == 9
    assert run.not_delivered == 10 and run.delivered == 0 and run.accepted == 10
    assert "10 of 10 accepted items" in str(error)


async def test_drain_deadline_counts_items_held_by_a_batch() -> None:
    """A batch in the sink never finishes: the items of that batch and of the partial one behind it are counted."""
    from talkpipe_async.operators import DrainTimeout
    from talkpipe_async.sinks import callback

    feed: Feed[int] = Feed(maxsize=100)
    written: list[int] = []
    stuck_on = anyio.Event()

    async def write(rows: list[int]) -> None:
        if 4 in rows:
            stuck_on.set()
            await anyio.sleep_forever()
        written.extend(rows)

    async with background(feed | batch(3) | callback(write), units=len) as run:
        for i in range(8):
            await feed.push(i)
        await stuck_on.wait()  # [0, 1, 2] written, [3, 4, 5] in the sink, 6 and 7 behind it
        with pytest.raises(DrainTimeout) as caught:
            await run.stop(drain=True, grace=0.05)
    error = caught.value
    assert written == [0, 1, 2]
    assert (error.accepted, error.delivered, error.not_delivered) == (8, 3, 5)
    assert error.not_entered == len(error.items) == error.accepted - error.entered
    assert run.not_delivered == 5


async def test_drain_deadline_counts_items_in_flight_in_a_concurrent_map() -> None:
    from talkpipe_async.operators import DrainTimeout

    feed: Feed[int] = Feed(maxsize=100)
    out: list[int] = []
    five_out = anyio.Event()

    async def work(x: int) -> int:
        if x == 5:
            await anyio.sleep_forever()
        return x

    def deliver(x: int) -> None:
        out.append(x)
        if len(out) == 5:
            five_out.set()

    async with background(feed | concurrent_map(work, 4), on_item=deliver) as run:
        for i in range(10):
            await feed.push(i)
        await five_out.wait()  # 0..4 out; 5 never ends; 6.. finished or queued behind it
        with pytest.raises(DrainTimeout) as caught:
            await run.stop(drain=True, grace=0.05)
    error = caught.value
    assert out == [0, 1, 2, 3, 4]
    assert (error.accepted, error.delivered, error.not_delivered) == (10, 5, 5)
    assert run.count == 5 and run.not_delivered == 5


async def test_drain_deadline_counts_items_in_a_thread_stage() -> None:
    import threading

    from talkpipe_async.operators import DrainTimeout, thread_map

    feed: Feed[int] = Feed(maxsize=100)
    release = threading.Event()
    out: list[int] = []
    three_out = anyio.Event()

    def work(x: int) -> int:
        if x == 3:
            release.wait()  # a blocking call that only the test ends (a thread cannot be interrupted)
        return x

    def deliver(x: int) -> None:
        out.append(x)
        if len(out) == 3:
            three_out.set()

    async def release_once_cancelled(run: Any) -> None:
        # The grace is wall-clock time: wait for the cancellation itself, bounded in time (not in loop rounds,
        # which can run out before the grace does), and release the thread whatever happens so nothing hangs.
        try:
            with anyio.fail_after(10):
                while not run.cancelled:
                    await anyio.sleep(0.001)
        finally:
            release.set()

    async with background(feed | thread_map(work, 2), on_item=deliver) as run:
        for i in range(6):
            await feed.push(i)
        await three_out.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(release_once_cancelled, run)
            with pytest.raises(DrainTimeout) as caught:
                await run.stop(drain=True, grace=0.05)
    error = caught.value
    assert out == [0, 1, 2]
    assert (error.accepted, error.delivered, error.not_delivered) == (6, 3, 3)


async def test_drain_deadline_of_another_source_raises_with_the_count() -> None:
    """Not only a Feed: a drain that times out on any source raises, counting what the gate let in."""
    from talkpipe_async.operators import DrainTimeout
    from talkpipe_async.sinks import callback

    @source
    async def ten_then_idle() -> AsyncIterator[int]:
        for i in range(10):
            yield i
        await anyio.sleep_forever()

    stuck_on = anyio.Event()
    written: list[int] = []

    async def write(x: int) -> None:
        if x == 4:
            stuck_on.set()
            await anyio.sleep_forever()
        written.append(x)

    async with background(ten_then_idle() | callback(write)) as run:
        await stuck_on.wait()
        with pytest.raises(DrainTimeout) as caught:
            await run.stop(drain=True, grace=0.05)
    error = caught.value
    assert written == [0, 1, 2, 3]
    assert (error.accepted, error.delivered, error.not_delivered, error.items) == (5, 4, 1, [])


async def test_a_completed_drain_counts_filtered_and_batched_items_as_delivered() -> None:
    """Once the run has ended normally every accepted item is finished, whatever the stages made of it."""
    from talkpipe_async.operators import filter as filter_

    feed: Feed[int] = Feed(maxsize=100)
    got: list[list[int]] = []
    async with background(feed | filter_(lambda x: x % 2 == 0) | batch(4), on_item=got.append) as run:
        for i in range(20):
            await feed.push(i)
        await run.stop(drain=True, grace=30)
    assert got == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    assert (run.accepted, run.delivered, run.not_delivered) == (20, 20, 0)


async def test_cancel_counts_every_accepted_item_not_finished() -> None:
    feed: Feed[int] = Feed(maxsize=100)
    out: list[int] = []
    two_out = anyio.Event()

    async def deliver(x: int) -> None:
        out.append(x)
        if len(out) == 2:
            two_out.set()
            await anyio.sleep_forever()  # the consumer itself is busy with the second item

    async with background(feed | double(), on_item=deliver) as run:
        for i in range(6):
            await feed.push(i)
        await two_out.wait()
        await run.stop(drain=False)
    assert out == [0, 2]
    assert (run.accepted, run.delivered, run.not_delivered) == (6, 1, 5)
