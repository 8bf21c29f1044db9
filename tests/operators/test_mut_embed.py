"""Embedding (``from_stream``, ``from_queue``, ``Feed``, ``background``): the promises the mutation run found unchecked.

Default and given names, every validation text, ``Feed``'s default bound and its counters (``accepted``,
``entered``, ``unread``, ``queued``), the ``FeedClosed`` texts naming the feed and the item, ``from_stream``'s
``close=False``, ``from_queue``'s own end marker, ``task_done`` and cancellation while it waits, the
``DrainTimeout`` text and counts, ``background``'s ``units``, ``repr`` and ``on_exit`` check, and an error
raised once only.

Every pipeline is built inside its test, so constructor code runs while the test runs.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from talkpipe_async import source
from talkpipe_async.operators import (
    QUEUE_END,
    BackendNotSupported,
    DrainTimeout,
    Feed,
    FeedClosed,
    background,
    batch,
    from_queue,
    from_stream,
)
from talkpipe_async.operators import map as map_
from tests.helpers.ops import task_count

pytestmark = pytest.mark.anyio

LIMIT = 5  # seconds: a lost wake-up fails fast instead of hanging the test run


def test_default_and_given_names() -> None:
    """Each source is named after itself unless given a name (the name labels errors and statistics)."""
    send, receive = anyio.create_memory_object_stream[int](1)
    defaults = [from_stream(receive), from_queue(object()), Feed()]
    assert [s.name for s in defaults] == ["from_stream", "from_queue", "Feed"]
    named = [from_stream(receive, name="s"), from_queue(object(), name="q"), Feed(name="f")]
    assert [s.name for s in named] == ["s", "q", "f"]
    assert [s.label for s in named] == ["s", "q", "f"]
    send.close()
    receive.close()


def test_validation_texts() -> None:
    """A negative ``maxsize``, a ``None`` end marker and an unknown ``on_exit`` are refused, each saying why."""
    with pytest.raises(ValueError, match=r"^maxsize must be at least 0$"):
        Feed(maxsize=-1)
    assert Feed(maxsize=0).maxsize == 0  # 0 is allowed: each push waits for the pipeline
    end_text = r"^None is an ordinary item; choose another end marker \(default QUEUE_END\)$"
    with pytest.raises(ValueError, match=end_text):
        from_queue(object(), end=None)
    with pytest.raises(ValueError, match=r"^unknown on_exit 'later'$"):
        background(Feed(), on_exit="later")  # type: ignore[arg-type]


def test_feed_default_bound_is_64_items() -> None:
    """``Feed()`` takes 64 items without a pipeline, then refuses the next with ``WouldBlock``, counting the 64."""
    feed: Feed[int] = Feed()
    assert feed.maxsize == 64
    for i in range(64):
        feed.push_nowait(i)
    with pytest.raises(anyio.WouldBlock):
        feed.push_nowait(64)
    assert (feed.queued, feed.accepted, feed.entered, feed.unread) == (64, 64, 0, [])


async def test_feed_counts_pushes_and_what_the_pipeline_took() -> None:
    """``accepted`` counts the pushes that returned (any of the three ways); ``entered`` the items taken."""
    feed: Feed[int] = Feed(maxsize=10)
    await feed.push(1)
    feed.push_nowait(2)
    await feed.push_many([3, 4])
    assert (feed.accepted, feed.queued, feed.entered) == (4, 4, 0)
    feed.close()
    assert await feed.collect() == [1, 2, 3, 4]
    assert (feed.accepted, feed.queued, feed.entered, feed.unread) == (4, 0, 4, [])


async def test_feed_closed_texts_name_the_feed_and_the_item() -> None:
    """After ``close()`` both ``push`` and ``push_nowait`` raise ``FeedClosed`` naming the feed and the refused item."""
    feed: Feed[str] = Feed(maxsize=2, name="orders")
    feed.close()
    message = r"^orders: closed or its pipeline stopped; 'late' not pushed$"
    with pytest.raises(FeedClosed, match=message) as caught:
        await feed.push("late")
    assert isinstance(caught.value.__cause__, anyio.ClosedResourceError)
    with pytest.raises(FeedClosed, match=message):
        feed.push_nowait("late")
    assert feed.accepted == 0


async def test_feed_push_nowait_after_the_pipeline_stopped_reading() -> None:
    """Once the run has stopped reading, ``push_nowait`` raises ``FeedClosed`` too (never a silent drop)."""
    feed: Feed[int] = Feed(maxsize=3)
    feed.push_nowait(1)
    async with feed.stream() as items:
        async for _ in items:
            break
    with pytest.raises(FeedClosed, match=r"^Feed: closed or its pipeline stopped; 2 not pushed$"):
        feed.push_nowait(2)
    assert feed.accepted == 1


async def test_feed_keeps_the_items_a_stopped_run_never_took_in_order() -> None:
    """A run that stops reading early leaves the rest in ``unread``, in order, and the counters add up."""
    feed: Feed[int] = Feed(maxsize=10)
    for i in range(5):
        feed.push_nowait(i)
    got: list[int] = []
    async with feed.stream() as items:
        async for x in items:
            got.append(x)
            if len(got) == 2:
                break
    assert got == [0, 1]
    assert feed.unread == [2, 3, 4]
    assert (feed.accepted, feed.entered) == (5, 2)


async def test_feed_fail_is_not_an_unread_item() -> None:
    """A ``fail`` marker still queued when the run stops is not an item: ``unread`` holds only pushed items."""
    feed: Feed[int] = Feed(maxsize=10)
    for i in range(3):
        await feed.push(i)
    await feed.fail(KeyError("app"))
    async with feed.stream() as items:
        async for _ in items:
            break
    assert feed.unread == [1, 2]
    with pytest.raises(FeedClosed):
        await feed.push(9)  # fail() also closed the feed


async def test_feed_fail_raises_the_given_error_after_the_items(anyio_backend: Any) -> None:
    """The pipeline sees every item pushed before ``fail`` and then the very error given, counted as entered."""
    feed: Feed[int] = Feed(maxsize=4)
    error = KeyError("upstream")
    await feed.push_many([1, 2])
    await feed.fail(error)
    got: list[int] = []
    with pytest.raises(KeyError) as caught:
        async with feed.stream() as items:
            async for x in items:
                got.append(x)
    assert caught.value is error
    assert got == [1, 2] and feed.entered == 2 and feed.unread == []


async def test_from_stream_close_false_leaves_the_stream_open() -> None:
    """With ``close=False`` the receive stream outlives the source: a second source can read on from it."""
    send, receive = anyio.create_memory_object_stream[int](5)
    for i in range(4):
        send.send_nowait(i)
    first: list[int] = []
    async with from_stream(receive, close=False).stream() as items:
        async for x in items:
            first.append(x)
            break
    send.send_nowait(4)  # not refused: the receiver is still open
    send.close()
    assert first == [0]
    assert await from_stream(receive).collect() == [1, 2, 3, 4]
    with pytest.raises(anyio.ClosedResourceError):
        receive.receive_nowait()  # the default closes it at the end


async def test_from_stream_closes_the_receiver_when_it_ends_normally() -> None:
    """The default ``close=True`` closes the receive stream at the end of a normal run too."""
    send, receive = anyio.create_memory_object_stream[int](2)
    send.send_nowait(7)
    send.close()
    assert await from_stream(receive).collect() == [7]
    with pytest.raises(anyio.ClosedResourceError):
        receive.receive_nowait()


async def test_from_queue_own_end_marker_and_task_done(anyio_backend: Any) -> None:
    """A given ``end`` marker ends the stream (by identity, QUEUE_END is then an item); every item taken is done."""
    if anyio_backend[0] == "trio":
        pytest.skip("asyncio.Queue")
    stop = object()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for x in [1, QUEUE_END, 2, stop, 3]:
        queue.put_nowait(x)
    assert await from_queue(queue, end=stop).collect() == [1, QUEUE_END, 2]
    assert queue.qsize() == 1
    assert queue.get_nowait() == 3
    queue.task_done()
    with anyio.fail_after(LIMIT):
        await queue.join()  # the four taken (end marker included) were each marked done


async def test_from_queue_waits_for_items_and_is_cancellable(anyio_backend: Any) -> None:
    """Reading an empty queue waits for the next put; cancelling that wait ends the run cleanly."""
    if anyio_backend[0] == "trio":
        pytest.skip("asyncio.Queue")
    queue: asyncio.Queue[Any] = asyncio.Queue()
    got: list[int] = []
    before = task_count()
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                reader: from_queue[int] = from_queue(queue)
                async with reader.stream() as items:
                    async for x in items:
                        got.append(x)

            tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            queue.put_nowait(1)
            await anyio.wait_all_tasks_blocked()
            assert got == [1]
            tg.cancel_scope.cancel()
    assert got == [1]
    assert task_count() == before


@pytest.mark.skipif(sys.version_info < (3, 13), reason="asyncio.Queue.shutdown is new in Python 3.13")
async def test_from_queue_ends_when_the_queue_is_shut_down(anyio_backend: Any) -> None:
    """A queue shut down (Python 3.13+) ends the stream after the items already in it, without an end marker."""
    if anyio_backend[0] == "trio":
        pytest.skip("asyncio.Queue")
    queue: asyncio.Queue[Any] = asyncio.Queue()
    queue.put_nowait(1)
    got: list[int] = []
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                got.extend(await from_queue(queue).collect())

            tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            queue.shutdown()  # type: ignore[attr-defined]
    assert got == [1]


async def test_from_queue_on_trio_names_the_stage(anyio_backend: Any) -> None:
    """On trio the error names the stage, what needs asyncio and what to use instead."""
    if anyio_backend[0] != "trio":
        pytest.skip("trio only")
    with pytest.raises(BackendNotSupported, match=r"^inbox: an asyncio\.Queue can only be awaited under asyncio"):
        await from_queue(object(), name="inbox").collect()
    with pytest.raises(BackendNotSupported, match=r"use from_stream\(\) with anyio.create_memory_object_stream\(\)"):
        await from_queue(object()).collect()


async def test_drain_timeout_text_and_counts() -> None:
    """``DrainTimeout`` says which run, the grace, and how many items never entered or were cancelled inside."""
    from talkpipe_async.sinks import callback

    feed: Feed[int] = Feed(maxsize=10, name="jobs")
    entered = anyio.Event()

    async def stuck(x: int) -> None:
        entered.set()
        await anyio.sleep_forever()

    async with background(feed | callback(stuck)) as run:
        for i in range(4):
            await feed.push(i)
        await entered.wait()
        with pytest.raises(DrainTimeout) as caught:
            await run.stop(drain=True, grace=0.05)
    error = caught.value
    assert str(error) == (
        f"{run.label}: the drain did not finish within 0.05 s; 4 of 4 accepted items not delivered "
        "(3 never entered the pipeline, kept in .items; 1 were inside its stages and were cancelled with it)"
    )
    assert (error.accepted, error.entered, error.delivered, error.not_entered, error.items) == (4, 1, 0, 3, [1, 2, 3])
    assert run.cancelled and run.stopping and run.done.is_set()


async def test_background_repr_and_label() -> None:
    """A run shows as ``<background run of PIPELINE>``; a fresh run counts nothing and is neither stopping nor done."""
    feed: Feed[int] = Feed()
    pipeline = feed | map_(lambda x: x)
    async with background(pipeline) as run:
        assert run.label == repr(pipeline)
        assert run.feed is feed
        counts = (run.count, run.accepted, run.entered, run.delivered, run.not_delivered, run.late)
        assert counts == (0, 0, 0, 0, 0, 0)
        assert run.error is None
        assert (run.stopping, run.gate_closed, run.cancelled, run.done.is_set()) == (False, False, False, False)
        assert repr(run) == f"<background run of {pipeline!r}>"
        await run.stop(drain=True)


async def test_background_units_count_input_items_delivered() -> None:
    """``units`` counts each output as that many input items: batches of 3 delivered count as their items."""
    feed: Feed[int] = Feed(maxsize=20)
    counted: list[int] = []
    async with background(feed | batch(3), on_item=lambda b: counted.append(len(b)), units=len) as run:
        for i in range(7):
            await feed.push(i)
        await anyio.wait_all_tasks_blocked()
        assert run.delivered == 6  # two full batches out, one item held by the batch
        await run.stop(drain=True)
    assert counted == [3, 3, 1]
    assert (run.count, run.delivered, run.accepted, run.not_delivered) == (3, 7, 7, 0)


async def test_background_counts_a_sinks_finished_items_as_delivered() -> None:
    """Before a sink the run counts an item delivered once the sink has finished with it, in ``units``."""
    from talkpipe_async.sinks import callback

    feed: Feed[int] = Feed(maxsize=20)
    written: list[list[int]] = []
    async with background(feed | batch(2) | callback(written.append), units=len) as run:
        for i in range(4):
            await feed.push(i)
        await anyio.wait_all_tasks_blocked()
        assert written == [[0, 1], [2, 3]]
        assert run.delivered == 4
        assert run.count == 0  # a sink hands nothing on
        await run.stop(drain=True)
    assert (run.delivered, run.not_delivered) == (4, 0)


async def test_background_another_source_counts_what_it_took() -> None:
    """With a source other than a Feed, ``accepted`` and ``entered`` are the items the run took from it."""
    out: list[int] = []

    @source
    async def three() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async with background(three(), on_item=out.append, on_exit="wait") as run:
        pass
    assert out == [0, 1, 2]
    assert (run.accepted, run.entered, run.delivered, run.not_delivered, run.count) == (3, 3, 3, 0, 3)
    assert run.feed is None


async def test_background_drain_of_another_source_stops_reading_it() -> None:
    """``stop(drain=True)`` ends a run whose source waits: nothing more is read, every item taken is delivered."""
    release = anyio.Event()
    out: list[int] = []

    @source
    async def slow() -> AsyncIterator[int]:
        yield 1
        await release.wait()
        yield 2  # pragma: no cover - the drain stops reading first

    async with background(slow(), on_item=out.append) as run:
        with anyio.fail_after(LIMIT):
            while out != [1]:
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()  # the gate's feeder now waits inside the source
            await run.stop(drain=True)
            assert run.gate_closed and run.stopping and not run.cancelled
    release.set()
    assert out == [1]
    assert (run.accepted, run.entered, run.delivered, run.not_delivered, run.late) == (1, 1, 1, 0, 0)


async def test_background_error_is_raised_once() -> None:
    """The pipeline's error is raised by the first ``wait``/``stop`` only; leaving the block then raises nothing."""

    @source
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ConnectionAbortedError("lost")

    async with background(broken()) as run:
        with pytest.raises(ConnectionAbortedError):
            await run.wait()
        await run.wait()  # already reported
        await run.stop()
    assert isinstance(run.error, ConnectionAbortedError)


async def test_background_exit_modes_without_stop() -> None:
    """Leaving the block: ``cancel`` (default) cancels, ``drain`` delivers what was pushed; no task outlives it."""
    before = task_count()
    feed: Feed[int] = Feed(maxsize=10)
    async with background(feed | map_(lambda x: x)) as run:
        await feed.push(1)
    assert run.cancelled and run.done.is_set()
    assert task_count() == before

    feed2: Feed[int] = Feed(maxsize=10)
    out: list[int] = []
    async with background(feed2 | map_(lambda x: x), on_item=out.append, on_exit="drain") as run2:
        await feed2.push_many([1, 2, 3])
    assert out == [1, 2, 3]
    assert not run2.cancelled and run2.stopping
    assert task_count() == before


async def test_background_of_segments_counts_the_input_items_it_took() -> None:
    """A pipeline without a source runs on ``input``: every input item counts as accepted, before any stage drops it."""
    from talkpipe_async.operators import filter as filter_

    out: list[int] = []
    async with background(filter_(lambda x: x % 2 == 0), range(10), on_item=out.append, on_exit="wait") as run:
        pass
    assert out == [0, 2, 4, 6, 8]
    assert (run.accepted, run.entered, run.count, run.delivered, run.not_delivered) == (10, 10, 5, 10, 0)


async def test_background_counts_only_what_a_sink_after_several_stages_finished() -> None:
    """The delivery count sits right before the sink, whatever comes before it (here a map and a batch)."""
    from talkpipe_async.sinks import callback

    feed: Feed[int] = Feed(maxsize=20)
    written: list[list[int]] = []
    async with background(feed | map_(lambda x: x) | batch(2) | callback(written.append), units=len) as run:
        await feed.push_many(range(5))
        await anyio.wait_all_tasks_blocked()
        assert written == [[0, 1], [2, 3]]
        assert run.delivered == 4  # the fifth is held by the batch
        await run.stop(drain=True)
    assert written == [[0, 1], [2, 3], [4]]
    assert (run.accepted, run.delivered, run.not_delivered) == (5, 5, 0)


async def test_background_drain_counts_an_item_handed_over_after_the_stop(caplog: pytest.LogCaptureFixture) -> None:
    """An item a source hands over after ``stop(drain=True)`` began is accepted, not delivered, and logged."""
    release = anyio.Event()
    out: list[int] = []

    @source
    async def slow() -> AsyncIterator[int]:
        yield 1
        await release.wait()
        yield 2
        yield 3  # pragma: no cover - never asked for

    async with background(slow(), on_item=out.append) as run:
        with anyio.fail_after(LIMIT):
            while out != [1]:
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()  # the gate's feeder now waits inside the source
            release.set()  # the source hands 2 over as the drain starts
            with caplog.at_level("WARNING", logger="talkpipe_async.operators.embed"):
                await run.stop(drain=True)
    assert out == [1]
    assert (run.accepted, run.entered, run.delivered, run.not_delivered, run.late) == (2, 1, 1, 1, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert f"{run!r}: 2 arrived after stop(drain=True); not delivered" in messages
    assert f"{run!r}: 1 accepted items not delivered" in messages


async def test_background_tasks_are_named() -> None:
    """The run's tasks say what they are in a task dump: the run (with its pipeline) and the gate's feeder."""
    feed: Feed[int] = Feed()
    async with background(feed | map_(lambda x: x)) as run:
        await anyio.wait_all_tasks_blocked()
        names = {t.name for t in anyio.get_running_tasks()}
        assert f"talkpipe background {run.label}" in names
        assert "talkpipe background gate feeder" in names
        await run.stop(drain=True)


async def test_background_stop_drains_by_default() -> None:
    """``stop()`` without arguments drains: what was pushed is delivered and the run is not cancelled."""
    feed: Feed[int] = Feed(maxsize=10)
    out: list[int] = []
    async with background(feed | map_(lambda x: x), on_item=out.append) as run:
        for i in range(5):
            feed.push_nowait(i)
        await run.stop()
    assert out == [0, 1, 2, 3, 4]
    assert run.stopping and not run.cancelled
    assert (run.accepted, run.delivered, run.not_delivered) == (5, 5, 0)


async def test_drain_with_no_grace_times_out_at_once() -> None:
    """``grace=0`` gives the drain no time: a run with an item stuck in its sink is cancelled, the text says 0 s."""
    from talkpipe_async.sinks import callback

    feed: Feed[int] = Feed(maxsize=10)
    entered = anyio.Event()

    async def stuck(x: int) -> None:
        entered.set()
        await anyio.sleep_forever()

    async with background(feed | callback(stuck)) as run:
        await feed.push(1)
        await entered.wait()
        with pytest.raises(DrainTimeout, match=r"the drain did not finish within 0\.0 s; 1 of 1 accepted"):
            await run.stop(drain=True, grace=0)
    assert run.cancelled


async def test_a_failing_units_function_is_named_in_the_error() -> None:
    """An error in ``units`` before a sink ends the run, noted as raised in the run's delivery count, with the item."""
    from talkpipe_async.sinks import callback

    def units(item: int) -> int:
        raise ZeroDivisionError("units")

    feed: Feed[int] = Feed()
    async with background(feed | callback(lambda x: None), units=units) as run:
        await feed.push(1)
        with pytest.raises(ZeroDivisionError) as caught:
            await run.stop()
    notes = getattr(caught.value, "__notes__", [])
    assert "talkpipe_async: raised in 'background delivery count' while processing item 1" in notes
    assert run.delivered == 0 and run.not_delivered == 1
