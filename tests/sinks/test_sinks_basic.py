"""Basic sinks: collect, count, reduce, print, log, callback, to_stream, to_queue (asyncio, uvloop, trio)."""

from __future__ import annotations

import asyncio
import io
import logging
import operator
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, segment, source
from talkpipe_async.operators import QUEUE_END, background, from_stream
from talkpipe_async.sinks import callback, collect, count, log_items, print_items, reduce, to_queue, to_stream

pytestmark = pytest.mark.anyio


@source
async def from_list(xs: list[Any]) -> AsyncIterator[Any]:
    """Yield *xs*."""
    for x in xs:
        yield x


@segment
async def inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
    """x + 1."""
    async for x in items:
        yield x + 1


@settings(max_examples=20, deadline=None)
@given(xs=st.lists(st.integers(-50, 50), max_size=40))
async def test_function_sinks_match_reference(xs: list[int]) -> None:
    assert await collect(from_list(xs) | inc()) == [x + 1 for x in xs]
    assert await count(from_list(xs) | inc()) == len(xs)
    assert await reduce(from_list(xs), operator.add, 0) == sum(xs)


async def test_sinks_take_input_and_async_reducers() -> None:
    async def add(acc: int, x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return acc + x

    assert await reduce(inc(), add, 100, [1, 2, 3]) == 109
    assert await collect(inc(), [1]) == [2]
    assert await count(from_list([1, Flush(), 2])) == 2  # metadata is not counted


async def test_print_items() -> None:
    out = io.StringIO()
    assert await collect(from_list([1, "a"]) | print_items(prefix="> ", file=out)) == []
    assert out.getvalue() == "> 1\n> a\n"
    out = io.StringIO()
    assert await collect(from_list([1, 2]) | print_items(file=out, passthrough=True)) == [1, 2]


async def test_log_items(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.sinks")
    with caplog.at_level(logging.INFO, logger="test.sinks"):
        await count(from_list([{"id": 1}]) | log_items(log, fmt="event %r"))
    assert "event {'id': 1}" in caplog.text


async def test_callback_sync_async_and_error() -> None:
    seen: list[int] = []

    async def store(x: int) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(-x)

    assert await count(from_list([1, 2]) | callback(seen.append)) == 0
    assert await collect(from_list([3]) | callback(store, passthrough=True)) == [3]
    assert seen == [1, 2, -3]

    def bad(x: int) -> None:
        raise PermissionError(x)

    with pytest.raises(PermissionError):
        await count(from_list([1]) | callback(bad))


async def test_to_stream_hands_output_to_the_application() -> None:
    send, receive = anyio.create_memory_object_stream[int](2)
    got: list[int] = []
    async with background(from_list(list(range(10))) | inc() | to_stream(send), on_exit="wait"):
        async with receive:
            async for x in receive:  # ends when the sink closes its stream
                got.append(x)
    assert got == list(range(1, 11))


async def test_to_stream_receiver_gone_is_an_error() -> None:
    send, receive = anyio.create_memory_object_stream[int](1)
    receive.close()
    with pytest.raises(anyio.BrokenResourceError):
        await count(from_list([1, 2]) | to_stream(send))


async def test_stream_round_trip_between_two_pipelines() -> None:
    send, receive = anyio.create_memory_object_stream[int](4)
    async with background(from_list(list(range(50))) | to_stream(send), on_exit="wait"):
        assert await collect(from_stream(receive) | inc()) == list(range(1, 51))


async def test_to_queue(anyio_backend: Any) -> None:
    if anyio_backend[0] == "trio":
        with pytest.raises(RuntimeError, match="asyncio"):
            await count(from_list([1]) | to_queue(object()))
        return
    queue: asyncio.Queue[Any] = asyncio.Queue(3)
    got: list[Any] = []
    async with background(from_list([1, None, 2]) | to_queue(queue), on_exit="wait"):
        while (item := await queue.get()) is not QUEUE_END:
            got.append(item)
    assert got == [1, None, 2]
    quiet: asyncio.Queue[Any] = asyncio.Queue()
    await count(from_list([1]) | to_queue(quiet, end=None))
    assert quiet.qsize() == 1


async def test_queue_stages_refuse_trio_with_one_error(anyio_backend: Any) -> None:
    """from_queue and to_queue fail the same way on trio: one error type, naming the stage and what to use."""
    from talkpipe_async import TalkpipeAsyncError
    from talkpipe_async.operators import BackendNotSupported, from_queue

    if anyio_backend[0] != "trio":
        pytest.skip("asyncio and uvloop run asyncio queues")
    with pytest.raises(BackendNotSupported, match=r"^to_queue: .*asyncio.*to_stream\(\)") as sink_error:
        await count(from_list([1]) | to_queue(object()))
    with pytest.raises(BackendNotSupported, match=r"^from_queue: .*asyncio.*from_stream\(\)") as source_error:
        await collect(from_queue(object()))
    for error in (sink_error.value, source_error.value):
        assert isinstance(error, RuntimeError) and isinstance(error, TalkpipeAsyncError)


def test_queue_end_is_one_marker_for_sources_and_sinks() -> None:
    import talkpipe_async.operators.embed as embed
    import talkpipe_async.sinks.basic as basic

    assert basic.QUEUE_END is embed.QUEUE_END is QUEUE_END
    assert repr(QUEUE_END) == "QUEUE_END" and type(QUEUE_END)() is QUEUE_END
    assert to_queue(asyncio.Queue()).end is QUEUE_END
