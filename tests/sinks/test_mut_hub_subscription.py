"""The hub's subscriber side (``sinks/_hub_subscription.py``): one subscriber's buffer, counters and errors.

Pinned here, on asyncio, uvloop and trio: ``drop_oldest`` on a buffer holding only metadata still drops one item
(the buffer never grows past its size), and the upstream's error reaches every subscriber with the upstream's own
frames in its traceback, without one subscriber's frames piling up on the next.  No sleeps: every wait is on the
hub's counters.
"""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from talkpipe_async import Flush, Metadata, source
from talkpipe_async.sinks import Hub, SubscriberStats, Subscription

pytestmark = pytest.mark.anyio


async def drain(items: Subscription[Any]) -> list[Any]:
    return [x async for x in items]


def balanced(stats: SubscriberStats) -> bool:
    queued: int = stats.as_dict()["queued"]
    return stats.received == stats.delivered + stats.dropped + stats.discarded + queued


async def test_drop_oldest_on_a_buffer_of_metadata_only_drops_the_oldest_of_it() -> None:
    """A full buffer that holds only metadata: ``drop_oldest`` drops the oldest metadata item, so the buffer
    keeps its size and the subscriber gets the newest items, each counted once."""
    made: list[Flush] = []

    @source
    async def flushes() -> AsyncIterator[Any]:
        for _ in range(4):
            made.append(Flush())
            yield made[-1]
            await anyio.lowlevel.checkpoint()

    hub = Hub(flushes(), buffer=2, policy="drop_oldest")
    async with hub, hub.subscribe(metadata=True) as items:
        await hub.wait_until(lambda s: s.upstream_runs == 1 and not s.upstream_running)  # it reads nothing meanwhile
        assert items.stats.high_water == 2 and hub.stats.high_water == 2
        got = await drain(items)
    assert all(isinstance(x, Metadata) for x in got)
    assert [[id(m) for m in made].index(id(x)) for x in got] == [2, 3]  # Flush items are equal: by identity
    stats = items.stats
    assert (stats.received, stats.delivered, stats.dropped, stats.discarded) == (4, 2, 2, 0)
    assert hub.stats.dropped == 2 and balanced(stats)


async def test_the_upstreams_error_reaches_each_subscriber_with_the_upstreams_traceback() -> None:
    """Every subscriber gets the upstream's error after its items; its traceback shows where the upstream
    raised it, and is the same length for each subscriber (one subscriber's frames do not pile up on the next
    one's: the error is one object, shared)."""

    @source
    async def breaks_after_two() -> AsyncIterator[int]:
        for i in range(2):
            yield i
            await anyio.lowlevel.checkpoint()
        raise ValueError("the upstream broke")

    hub = Hub(breaks_after_two())
    errors: list[BaseException] = []
    frames: list[list[str]] = []
    async with hub, hub.subscribe() as one, hub.subscribe() as two:
        for items in (one, two):
            got = []
            with pytest.raises(ValueError, match=r"^the upstream broke") as caught:
                async for x in items:
                    got.append(x)
            assert got == [0, 1]
            errors.append(caught.value)
            frames.append([f.name for f in traceback.extract_tb(caught.value.__traceback__)])
    assert errors[0] is errors[1]
    assert "breaks_after_two" in frames[0]
    assert frames[0] == frames[1]
    assert one.stats.state == two.stats.state == "failed"
