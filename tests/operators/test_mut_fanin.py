"""Fan-in (``talkpipe_async.operators._fanin``): the lanes ``merge``, ``zip_streams`` and ``fork`` read through.

``FanIn`` directly: the exact bound of a lane (a put into a full lane waits until the consumer takes one), the
round-robin order of ``fair`` (one item per non-empty lane per round), a lane's error after its items, a waiting
consumer woken by a put or a close, and ``abort`` waking a waiting producer with ``ChannelClosed`` (its text).
Through the operators: the smallest lane (``capacity=1``, ``buffer=1``) and the texts that refuse a wrong input.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from talkpipe_async._core._channel import ChannelClosed
from talkpipe_async.operators import fork, map, merge
from talkpipe_async.operators._fanin import FanIn
from talkpipe_async.sources import just

pytestmark = pytest.mark.anyio


def test_capacity_must_be_at_least_one() -> None:
    """A lane of one item is the smallest; zero is refused with its text."""
    with pytest.raises(ValueError, match=r"^capacity must be at least 1$"):
        FanIn(2, 0)
    fan = FanIn(3, 1)
    assert fan.capacity == 1 and len(fan.lanes) == 3 and not fan.aborted


async def test_a_put_into_a_full_lane_waits_until_the_consumer_takes_one(anyio_backend: Any) -> None:
    """Each lane holds exactly ``capacity`` items: the next put waits, and a take lets exactly one more in."""
    fan = FanIn(2, 2)
    done: list[int] = []

    async def producer() -> None:
        for i in range(5):
            await fan.put(0, i)
            done.append(i)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.wait_all_tasks_blocked()
            assert done == [0, 1]
            assert fan.take(0) == 0
            await anyio.wait_all_tasks_blocked()
            assert done == [0, 1, 2]
            assert [fan.take(0), fan.take(0)] == [1, 2]
            await anyio.wait_all_tasks_blocked()
            assert done == [0, 1, 2, 3, 4]
    assert [fan.take(0), fan.take(0)] == [3, 4]


async def test_fair_takes_one_item_per_non_empty_lane_per_round(anyio_backend: Any) -> None:
    """``fair`` visits the lanes in turn, one item from each that has one, and ends when every lane has ended."""
    fan = FanIn(3, 4)
    for x in ("a1", "a2", "a3"):
        await fan.put(0, x)
    for x in ("c1", "c2"):
        await fan.put(2, x)
    fan.close(0)
    fan.close(1)
    fan.close(2)
    with anyio.fail_after(10):
        out = [x async for x in fan.fair()]
    assert out == ["a1", "c1", "a2", "c2", "a3"]


async def test_a_lanes_error_comes_after_its_items(anyio_backend: Any) -> None:
    """A lane closed with an error hands out its items first, then the consumer gets that very error."""
    fan = FanIn(2, 4)
    await fan.put(0, 1)
    await fan.put(0, 2)
    error = OSError("lane 0 broke")
    fan.close(0, error)
    got: list[Any] = []
    with anyio.fail_after(10), pytest.raises(OSError) as info:
        async for x in fan.fair():
            got.append(x)
    assert info.value is error and got == [1, 2]


async def test_a_waiting_consumer_is_woken_by_a_put_and_by_a_close(anyio_backend: Any) -> None:
    """The consumer waits while every open lane is empty; a put, or a close, wakes it (and it waits again after)."""
    fan = FanIn(2, 4)
    got: list[Any] = []

    async def consume() -> None:
        async for x in fan.fair():
            got.append(x)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            await fan.put(1, "x")
            await anyio.wait_all_tasks_blocked()
            assert got == ["x"]
            await fan.put(0, "y")
            await anyio.wait_all_tasks_blocked()
            assert got == ["x", "y"]
            fan.close(0)
            await anyio.wait_all_tasks_blocked()
            fan.close(1)
    assert got == ["x", "y"]


async def test_producers_may_put_while_the_woken_consumer_is_busy(anyio_backend: Any) -> None:
    """Once a put has woken the consumer, later puts made while it holds its item (before it waits again) go in
    and are handed out in order."""
    fan = FanIn(1, 4)
    steps = fan.fair()
    got: list[Any] = []

    async def first() -> None:
        got.append(await steps.__anext__())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            await fan.put(0, "a")
        await fan.put(0, "b")
        await fan.put(0, "c")
        fan.close(0)
        rest = [x async for x in steps]
    assert got == ["a"] and rest == ["b", "c"]


async def test_abort_wakes_a_waiting_producer_and_refuses_later_puts(anyio_backend: Any) -> None:
    """After ``abort`` (the consumer is gone) a producer waiting on a full lane, and any later put, get
    ``ChannelClosed``; the items held are dropped."""
    fan = FanIn(2, 1)
    await fan.put(0, "held")
    errors: list[BaseException] = []

    async def producer() -> None:
        try:
            await fan.put(0, "waits")
        except ChannelClosed as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.wait_all_tasks_blocked()
            assert errors == []
            fan.abort()
    assert [str(e) for e in errors] == ["the consumer of this fan-in has gone"]
    assert fan.aborted and all(not lane.items for lane in fan.lanes)
    with pytest.raises(ChannelClosed, match=r"^the consumer of this fan-in has gone$"):
        await fan.put(1, "late")


async def test_the_smallest_lanes_still_carry_everything(anyio_backend: Any) -> None:
    """``merge(capacity=1)`` and ``fork(buffer=1)`` run with lanes of one item and lose nothing."""
    with anyio.fail_after(10):
        merged = await merge(just(*range(20)), just(*range(100, 110)), capacity=1).collect()
        assert sorted(merged) == [*range(20), *range(100, 110)]
        forked = await (just(*range(10)) | fork(map(lambda x: x), map(lambda x: -x), buffer=1)).collect()
        assert sorted(forked) == sorted([*range(10), *(-x for x in range(10))])


async def test_a_branch_may_be_a_pipeline_of_segments(anyio_backend: Any) -> None:
    """A fork branch given as a pipeline of segments runs as that pipeline."""

    def inc(x: int) -> int:
        return x + 1

    def tenfold(x: int) -> int:
        return x * 10

    with anyio.fail_after(10):
        out = await (just(1, 2) | fork(map(inc) | map(tenfold))).collect()
    assert out == [20, 30]


def test_wrong_inputs_are_refused_with_their_texts() -> None:
    """A merge input must be a source or a pipeline that starts with one; a fork branch must start with a segment."""
    with pytest.raises(TypeError, match=r"^expected a source or a pipeline that starts with a source, got 42$"):
        merge(just(1), 42)  # type: ignore[arg-type]
    segments = map(lambda x: x) | map(lambda x: x)
    with pytest.raises(TypeError, match=r"^expected a source or a pipeline that starts with a source, got "):
        merge(just(1), segments)
    with pytest.raises(TypeError, match=r"^a branch must start with a segment, not a source: "):
        fork(just(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^a branch must start with a segment, not a source: "):
        fork(just(1) | map(lambda x: x))
