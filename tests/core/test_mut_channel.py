"""The bounded batch channel between tasks (``talkpipe_async._core._channel``), attacked at its edges.

Written from the mutants the mutation run left alive: the exact capacity bound, what a batch put may overfill,
the order and size of what ``get_batch`` returns, an error given once and then the end, what an abort tells each
side, and the counters (``high_water``, ``blocked_puts``, ``consumer_waiting``) that stats and tests read.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from talkpipe_async._core._channel import Channel, ChannelClosed
from tests.helpers.ops import until

pytestmark = pytest.mark.anyio


def test_capacity_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match=r"^capacity must be at least 1$"):
        Channel(0)
    assert Channel(1).capacity == 1


def test_a_new_channel_is_empty_and_its_counters_are_zero() -> None:
    channel = Channel(3)
    assert len(channel) == 0 and channel.high_water == 0 and channel.blocked_puts == 0
    assert not channel.consumer_waiting
    channel.close()  # closing before anyone waited is fine


async def test_every_wait_for_room_is_counted() -> None:
    channel = Channel(1)
    await channel.put(0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.put, 1)
        tg.start_soon(channel.put, 2)
        await until(lambda: channel.blocked_puts == 2)
        assert await channel.get_batch(1) == [0]
        await until(lambda: channel.blocked_puts == 3)  # one went in, the other waits again
        assert len(await channel.get_batch(1)) == 1
        assert len(await channel.get_batch(1)) == 1
    assert channel.blocked_puts == 3 and channel.high_water == 1


async def test_put_waits_exactly_at_capacity() -> None:
    channel = Channel(2)
    await channel.put(1)
    await channel.put(2)  # the second fits: the bound is capacity items, not capacity - 1
    assert len(channel) == 2 and channel.blocked_puts == 0
    third_in = anyio.Event()

    async def put_third() -> None:
        await channel.put(3)
        third_in.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(put_third)
        await channel.wait_blocked_put()
        assert channel.blocked_puts == 1 and not third_in.is_set() and len(channel) == 2
        assert await channel.get_batch(1) == [1]  # one slot frees: the waiting put goes in
        await third_in.wait()
    assert await channel.get_batch(10) == [2, 3]
    assert channel.high_water == 2


async def test_a_batch_put_waits_only_while_full_and_may_overfill() -> None:
    channel = Channel(3)
    await channel.put_batch([1, 2])
    await channel.put_batch([3, 4, 5])  # room for one: the whole batch goes in (a batch is never split)
    assert len(channel) == 5 and channel.high_water == 5 and channel.blocked_puts == 0
    done = anyio.Event()

    async def put_more() -> None:
        await channel.put_batch([6])
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(put_more)
        await channel.wait_blocked_put()
        assert not done.is_set()
        assert await channel.get_batch(2) == [1, 2]  # still 3 held: full, the batch keeps waiting
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert not done.is_set()
        assert await channel.get_batch(1) == [3]
        await done.wait()
    assert await channel.get_batch(100) == [4, 5, 6]


async def test_a_batch_put_into_an_exactly_full_channel_waits() -> None:
    channel = Channel(2)
    await channel.put_batch([1, 2])
    done = anyio.Event()

    async def put_more() -> None:
        await channel.put_batch([3])
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(put_more)
        await channel.wait_blocked_put()  # full at exactly capacity: it waits, it does not overfill
        assert not done.is_set() and len(channel) == 2
        assert await channel.get_batch(1) == [1]
        await done.wait()
    assert await channel.get_batch(10) == [2, 3]


async def test_get_batch_returns_up_to_limit_in_order() -> None:
    channel = Channel(10)
    for i in range(7):
        await channel.put(i)
    assert await channel.get_batch(3) == [0, 1, 2]
    assert await channel.get_batch(4) == [3, 4, 5, 6]  # exactly the limit: all of them
    await channel.put(7)
    assert await channel.get_batch(5) == [7]
    assert len(channel) == 0


async def test_an_error_after_the_items_is_raised_once_then_the_stream_ends() -> None:
    channel = Channel(4)
    await channel.put("a")
    channel.close(KeyError("upstream"))
    assert await channel.get_batch(10) == ["a"]
    with pytest.raises(KeyError, match="upstream"):
        await channel.get_batch(10)
    with pytest.raises(anyio.EndOfStream):
        await channel.get_batch(10)


async def test_close_without_error_ends_after_the_items_and_wakes_a_waiting_consumer() -> None:
    channel = Channel(4)
    got: list[Any] = []
    ended = anyio.Event()

    async def consume() -> None:
        while True:
            try:
                got.extend(await channel.get_batch(10))
            except anyio.EndOfStream:
                ended.set()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await until(lambda: channel.consumer_waiting)
        await channel.put(1)  # a put wakes the waiting consumer
        await until(lambda: got == [1])
        await until(lambda: channel.consumer_waiting)
        channel.close()
        await ended.wait()
    assert got == [1] and not channel.consumer_waiting


async def test_consumer_waiting_is_true_only_while_it_waits() -> None:
    channel = Channel(2)
    assert not channel.consumer_waiting
    await channel.put(1)
    assert await channel.get_batch(1) == [1]
    assert not channel.consumer_waiting  # items were there: it never waited
    async with anyio.create_task_group() as tg:
        tg.start_soon(channel.get_batch, 1)
        await until(lambda: channel.consumer_waiting)
        tg.cancel_scope.cancel()
    assert not channel.consumer_waiting  # reset when the wait ends, even by cancellation


async def test_abort_tells_both_sides() -> None:
    channel = Channel(1)
    await channel.put(1)
    refused: list[BaseException] = []

    async def blocked_put() -> None:
        try:
            await channel.put(2)
        except ChannelClosed as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(blocked_put)
        await channel.wait_blocked_put()
        channel.abort()
    assert len(refused) == 1 and str(refused[0]) == "the consumer of this channel has gone"
    assert len(channel) == 0  # what was held is dropped: nobody will read it
    with pytest.raises(ChannelClosed):
        await channel.put(3)  # not full, but aborted
    with pytest.raises(ChannelClosed):
        await channel.put_batch([3])
    with pytest.raises(ChannelClosed, match=r"^the channel was closed by its consumer$"):
        await channel.get_batch(1)


async def test_abort_wakes_a_waiting_consumer() -> None:
    channel = Channel(1)
    outcome: list[type[BaseException]] = []

    async def consume() -> None:
        try:
            await channel.get_batch(1)
        except ChannelClosed as exc:
            outcome.append(type(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await until(lambda: channel.consumer_waiting)
        channel.abort()
    assert outcome == [ChannelClosed]


async def test_wait_blocked_put_returns_at_once_after_a_blocked_put() -> None:
    channel = Channel(1)
    channel.blocked_puts = 1
    with anyio.fail_after(5):
        await channel.wait_blocked_put()


async def test_many_producers_one_consumer_lose_nothing() -> None:
    channel = Channel(3)
    got: list[int] = []

    async def produce(base: int) -> None:
        for i in range(base, base + 50):
            await channel.put(i)

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(produce, n * 100)
        while len(got) < 200:
            batch = await channel.get_batch(2)
            assert 1 <= len(batch) <= 2
            got.extend(batch)
    assert sorted(got) == sorted(i for n in range(4) for i in range(n * 100, n * 100 + 50))
    assert channel.high_water == 3
