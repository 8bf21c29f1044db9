"""Hub: one upstream, subscribers that join and leave at any time (asyncio, uvloop, trio).

Every wait is on a signal the hub exposes (``hub.wait_until`` over its
counters) or an event of the test; no sleeps.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, Metadata, TalkpipeAsyncError, error_context, source
from talkpipe_async.operators import batch, from_stream, take
from talkpipe_async.sinks import Hub, HubStats, SubscriberDisconnected, SubscriberStats, Subscription

pytestmark = pytest.mark.anyio


@source
async def counter(n: int | None = None, closed: list[str] | None = None) -> AsyncIterator[int]:
    """0, 1, 2, ... (n items, or endless), with a scheduling point after each; records its close."""
    try:
        for i in range(n) if n is not None else itertools.count():
            yield i
            await anyio.lowlevel.checkpoint()
    finally:
        if closed is not None:
            closed.append("closed")


@source
async def failing(after: int) -> AsyncIterator[int]:
    """*after* items, then a ValueError."""
    for i in range(after):
        yield i
        await anyio.lowlevel.checkpoint()
    raise ValueError(f"upstream broke after {after}")


async def drain(items: Subscription[Any]) -> list[Any]:
    return [x async for x in items]


def balanced(stats: SubscriberStats) -> bool:
    """The per-subscriber accounting identity."""
    queued: int = stats.as_dict()["queued"]
    return stats.received == stats.delivered + stats.dropped + stats.discarded + queued and queued >= 0


# ------------------------------------------------------------------ basics, start and stop


async def test_every_subscriber_gets_every_item_in_order() -> None:
    hub = Hub(counter(n=50), buffer=4)
    got: dict[str, list[int]] = {}

    async def read(name: str, items: Subscription[int]) -> None:
        got[name] = await drain(items)

    async with hub, AsyncExitStack() as stack, anyio.create_task_group() as tg:
        for name in ("a", "b", "c"):  # all three join before the hub's task runs
            tg.start_soon(read, name, await stack.enter_async_context(hub.subscribe(name=name)))
    assert got == {name: list(range(50)) for name in "abc"}
    assert hub.stats.published == 50 and hub.stats.delivered == 150 and hub.stats.upstream_runs == 1


async def test_the_upstream_starts_with_the_first_subscriber_and_stops_after_the_last() -> None:
    closed: list[str] = []
    hub = Hub(counter(closed=closed), buffer=2)
    async with hub:
        assert hub.stats.as_dict()["upstream_runs"] == 0 and hub.stats.as_dict()["upstream_running"] == 0
        async with hub.subscribe() as a:
            assert await a.__anext__() == 0
            assert hub.stats.upstream_running == 1
            async with hub.subscribe() as b:  # the hub waits for a (block): read a to let it go on
                joined_at = hub.stats.published
                assert [await a.__anext__() for _ in range(3)] == [1, 2, 3]
                assert await b.__anext__() == joined_at  # the first item published after b joined
            assert hub.stats.subscribers == 1 and hub.stats.upstream_running == 1  # a is still there
            assert await a.__anext__() == 4
        assert hub.stats.subscribers == 0
        await hub.wait_until(lambda s: not s.upstream_running)
        assert closed == ["closed"]  # the source's finally ran
        async with hub.subscribe() as c:  # a fresh run for the next first subscriber
            assert await c.__anext__() == 0
        await hub.wait_until(lambda s: not s.upstream_running)
    assert closed == ["closed", "closed"] and hub.stats.upstream_runs == 2
    assert hub.stats.joined == 3 and hub.stats.left == 3


async def test_keep_running_runs_the_upstream_without_subscribers() -> None:
    send, receive = anyio.create_memory_object_stream[int](100)
    hub = Hub(from_stream(receive), keep_running=True, replay=2, buffer=4)
    async with hub:
        for i in range(5):
            await send.send(i)
        await hub.wait_until(lambda s: s.published == 5)
        assert hub.stats.upstream_runs == 1 and hub.stats.subscribers == 0
        async with hub.subscribe() as items:  # a late joiner: the last 2, then what comes next
            await send.send(5)
            send.close()
            assert await drain(items) == [3, 4, 5]
        await hub.wait_until(lambda s: not s.upstream_running)
        async with hub.subscribe() as items:  # the upstream ended: the replay, then the end
            assert await drain(items) == [4, 5]
            assert items.stats.state == "ended"
    assert hub.stats.upstream_runs == 1


async def test_run_hosts_the_hub_in_a_task_group_of_the_caller() -> None:
    hub = Hub(counter(n=10))
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        async with hub.subscribe() as items:
            assert await drain(items) == list(range(10))
        tg.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="not running"):
        async with hub.subscribe():
            pass


async def test_subscribing_without_a_host_is_refused() -> None:
    hub = Hub(counter(n=3))
    with pytest.raises(RuntimeError, match="async with hub"):
        async with hub.subscribe():
            pass
    assert hub.stats.joined == 0


async def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="policy"):
        Hub(counter(), policy="newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffer"):
        Hub(counter(), buffer=0)
    with pytest.raises(ValueError, match="replay"):
        Hub(counter(), buffer=2, replay=3)
    hub = Hub(counter(), buffer=8, replay=2)
    with pytest.raises(ValueError, match="more than the hub keeps"):
        hub.subscribe(replay=3)
    with pytest.raises(TypeError, match="source"):
        Hub(take(3))  # type: ignore[arg-type]


# ------------------------------------------------------------------ policies


async def test_block_makes_the_upstream_wait_for_the_slowest() -> None:
    hub = Hub(counter(), buffer=2, policy="block")
    async with hub, hub.subscribe(name="slow") as slow, hub.subscribe(name="fast", buffer=16) as fast:
        await hub.wait_until(lambda s: s.blocked >= 1)
        assert hub.stats.published == 3  # two in slow's buffer, the third waits for room
        assert [await fast.__anext__() for _ in range(3)] == [0, 1, 2]
        assert slow.stats.queued == 2 and fast.stats.queued == 0
        assert await slow.__anext__() == 0
        await hub.wait_until(lambda s: s.blocked >= 2)
        assert hub.stats.published == 4
        assert [await slow.__anext__() for _ in range(3)] == [1, 2, 3]
        assert slow.stats.high_water == 2 and hub.stats.high_water >= 2


async def test_drop_oldest_drops_and_counts_for_the_slow_one_only() -> None:
    hub = Hub(counter(n=20), buffer=3, policy="drop_oldest")
    async with hub, hub.subscribe(name="stalled") as stalled, \
            hub.subscribe(name="fast", policy="block") as fast:
        assert await drain(fast) == list(range(20))  # stalled reads nothing meanwhile
        assert await drain(stalled) == [17, 18, 19]
    assert (stalled.stats.delivered, stalled.stats.dropped, stalled.stats.received) == (3, 17, 20)
    assert fast.stats.dropped == 0 and hub.stats.dropped == 17 and hub.stats.delivered == 23
    assert balanced(stalled.stats) and balanced(fast.stats)


async def test_drop_oldest_keeps_metadata_while_data_can_go() -> None:
    @source
    async def with_flushes() -> AsyncIterator[Any]:
        for i in range(6):
            yield i
            if i == 1:
                yield Flush()
            await anyio.lowlevel.checkpoint()

    hub = Hub(with_flushes(), buffer=3, policy="drop_oldest")
    async with hub, hub.subscribe(metadata=True) as items:
        await hub.wait_until(lambda s: s.upstream_runs == 1 and not s.upstream_running)  # it reads nothing meanwhile
        got = await drain(items)
    assert [type(x).__name__ if isinstance(x, Metadata) else x for x in got] == ["Flush", 4, 5]
    assert items.stats.dropped == 4 and balanced(items.stats)


async def test_disconnect_ends_the_slow_one_with_a_typed_error_and_frees_its_buffer() -> None:
    hub = Hub(counter(n=10), buffer=3, policy="disconnect")
    async with hub, hub.subscribe(name="stalled") as stalled, \
            hub.subscribe(name="fast", policy="block", buffer=16) as fast:
        await hub.wait_until(lambda s: s.disconnected == 1)
        assert stalled.stats.queued == 0 and stalled.stats.discarded == 3  # freed at once
        assert stalled.stats.state == "disconnected" and stalled.stats.reason == "slow"
        assert hub.stats.subscribers == 1
        assert await drain(fast) == list(range(10))
        with pytest.raises(SubscriberDisconnected) as caught:
            await stalled.__anext__()
    error = caught.value
    assert isinstance(error, TalkpipeAsyncError)
    assert (error.subscriber, error.reason, error.delivered, error.discarded, error.buffer) == ("stalled", "slow", 0,
                                                                                               3, 3)
    assert "too slow" in str(error)
    assert hub.stats.disconnected == 1 and balanced(stalled.stats)


async def test_a_subscriber_that_keeps_up_is_never_disconnected() -> None:
    hub = Hub(counter(n=200), buffer=1, policy="disconnect")
    async with hub, hub.subscribe() as items:
        assert await drain(items) == list(range(200))
    assert hub.stats.disconnected == 0


# ------------------------------------------------------------------ replay


async def test_replay_gives_late_joiners_the_last_items_first() -> None:
    send, receive = anyio.create_memory_object_stream[int](100)
    hub = Hub(from_stream(receive), buffer=8, replay=3)
    async with hub, hub.subscribe(name="first") as first:
        for i in range(5):
            await send.send(i)
        assert [await first.__anext__() for _ in range(5)] == [0, 1, 2, 3, 4]
        await hub.wait_until(lambda s: s.published == 5)
        async with hub.subscribe(name="three") as three, hub.subscribe(replay=1) as one, \
                hub.subscribe(replay=0) as none:
            await send.send(5)
            send.close()
            assert await drain(three) == [2, 3, 4, 5]
            assert await drain(one) == [4, 5]
            assert await drain(none) == [5]
            assert three.stats.replayed == 3 and three.stats.received == 4
        assert await drain(first) == [5]


async def test_replay_never_holds_metadata() -> None:
    send, receive = anyio.create_memory_object_stream[Any](100)
    hub = Hub(from_stream(receive), buffer=8, replay=4)
    async with hub, hub.subscribe(metadata=True) as first:
        for item in (1, Flush(), 2):
            await send.send(item)
        await hub.wait_until(lambda s: s.published == 3)
        async with hub.subscribe(metadata=True) as late:
            send.close()
            assert await drain(late) == [1, 2]
        assert len(await drain(first)) == 3


# ------------------------------------------------------------------ errors, close, cancellation


async def outcome(items: Subscription[Any]) -> tuple[list[Any], BaseException | None]:
    got: list[Any] = []
    try:
        async for x in items:
            got.append(x)
    except Exception as exc:
        return got, exc
    return got, None


async def test_an_upstream_error_reaches_every_subscriber_and_the_hub_goes_on() -> None:
    hub = Hub(failing(after=3), buffer=8)
    async with hub, hub.subscribe() as a, hub.subscribe() as b:
        got_a, error_a = await outcome(a)
        got_b, error_b = await outcome(b)
    assert got_a == got_b == [0, 1, 2]
    assert isinstance(error_a, ValueError) and "broke after 3" in str(error_a)
    assert error_a is error_b  # the same exception object
    assert a.stats.state == b.stats.state == "failed"
    context = error_context(error_a)
    assert context is not None and context.segment == "failing"
    assert hub.stats.upstream_errors == 1 and "broke after 3" in (hub.stats.last_error or "")
    async with hub, hub.subscribe() as again:  # keep_running=False: the next subscriber starts a new run
        got_again, error_again = await outcome(again)
        assert got_again == [0, 1, 2] and isinstance(error_again, ValueError) and error_again is not error_a
        assert again.stats.state == "failed"
    assert hub.stats.upstream_runs == 2 and hub.stats.upstream_errors == 2


async def test_keep_running_raises_the_upstream_error_on_leaving_the_block() -> None:
    hub = Hub(failing(after=2), keep_running=True, buffer=4, replay=2)
    with pytest.raises(ValueError, match="broke after 2"):
        async with hub:
            await hub.wait_until(lambda s: s.upstream_errors == 1)
            async with hub.subscribe() as late:  # joins after the failure: the replay, then the error
                assert await late.__anext__() == 0
                assert await late.__anext__() == 1
                with pytest.raises(ValueError):
                    await late.__anext__()
    assert isinstance(hub.error, ValueError)


async def test_closing_the_hub_ends_its_subscribers_at_once_with_a_typed_error() -> None:
    hub = Hub(counter(), buffer=4)
    host = anyio.CancelScope()

    async def hosted(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with host:
            await hub.run(task_status=task_status)

    async with anyio.create_task_group() as tg:
        await tg.start(hosted)
        async with hub.subscribe(name="reader") as items:
            got = [await items.__anext__() for _ in range(5)]
            await hub.wait_until(lambda s: s.blocked >= 1)
            host.cancel()  # the owner closes the hub while the subscriber is in
            await hub.wait_until(lambda s: s.disconnected == 1)
            assert items.stats.queued == 0 and items.stats.state == "disconnected"
            got_rest, error = await outcome(items)
    assert got == [0, 1, 2, 3, 4] and got_rest == []
    assert isinstance(error, SubscriberDisconnected) and error.reason == "closed"
    assert (error.delivered, error.discarded) == (5, 4) and items.stats.discarded == 4
    assert hub.stats.disconnected == 1 and balanced(items.stats)


async def test_a_cancelled_subscriber_leaves_at_once_and_the_upstream_stops() -> None:
    closed: list[str] = []
    hub = Hub(counter(closed=closed), buffer=4)
    async with hub:
        stats = SubscriberStats()
        with anyio.CancelScope() as scope:
            async with hub.subscribe(stats=stats) as items:
                await hub.wait_until(lambda s: s.blocked >= 1)  # its buffer is full
                scope.cancel()
                await items.__anext__()  # the first item is there: no wait, no cancellation yet
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert hub.stats.subscribers == 0 and stats.state == "left"
        assert stats.queued == 0 and stats.delivered == 1 and stats.discarded == stats.received - 1
        assert balanced(stats)
        await hub.wait_until(lambda s: not s.upstream_running)
        assert closed == ["closed"]


async def test_cancelling_the_host_closes_the_upstream_stages() -> None:
    closed: list[str] = []
    hub = Hub(counter(closed=closed), buffer=2, keep_running=True)
    with anyio.move_on_after(30) as outer:
        async with hub:
            async with hub.subscribe() as items:
                await items.__anext__()  # the upstream runs
                outer.cancel()
                await anyio.sleep_forever()
    assert outer.cancelled_caught and closed == ["closed"]
    assert items.stats.state == "left" and hub.stats.subscribers == 0 and not hub.stats.upstream_running


async def test_leaving_with_break_frees_the_buffer_and_counts_it() -> None:
    hub = Hub(counter(), buffer=5)
    async with hub:
        async with hub.subscribe() as items:
            await hub.wait_until(lambda s: s.blocked >= 1)
            async for x in items:
                assert x == 0
                break
        assert items.stats.as_dict() | {"name": ""} == {
            "name": "", "policy": "block", "buffer": 5, "received": 5, "replayed": 0, "delivered": 1, "dropped": 0,
            "discarded": 4, "high_water": 5, "state": "left", "reason": None, "queued": 0,
        }
        assert hub.stats.left == 1 and hub.stats.subscribers == 0


# ------------------------------------------------------------------ metadata, the source form, counters


async def test_metadata_reaches_every_subscriber_that_asks_for_it() -> None:
    send, receive = anyio.create_memory_object_stream[Any](100)
    hub = Hub(from_stream(receive), buffer=16)
    out: dict[str, Any] = {}

    async def plain() -> None:
        async with hub.subscribe() as items:
            out["plain"] = await drain(items)

    async def batched() -> None:  # the source form: metadata flows into the subscriber's pipeline
        out["batched"] = await (hub.source() | batch(100)).collect()

    async def raw() -> None:
        async with hub.subscribe(metadata=True) as items:
            out["raw"] = ["F" if isinstance(x, Flush) else x async for x in items]

    async with hub, anyio.create_task_group() as tg:
        for f in (plain, batched, raw):
            tg.start_soon(f)
        await hub.wait_until(lambda s: s.subscribers == 3)
        for item in (0, 1, Flush(), 2, 3, Flush(), 4, 5, Flush()):
            await send.send(item)
        send.close()
    assert out["plain"] == list(range(6))
    assert out["batched"] == [[0, 1], [2, 3], [4, 5]]
    assert out["raw"] == [0, 1, "F", 2, 3, "F", 4, 5, "F"]


async def test_the_source_form_leaves_when_its_run_ends() -> None:
    hub = Hub(counter(), buffer=4)
    stats = SubscriberStats()
    async with hub:
        assert await (hub.source(name="web", stats=stats) | take(3)).collect() == [0, 1, 2]
        assert stats.state == "left" and stats.name == "web" and stats.delivered == 3
        assert hub.stats.subscribers == 0
        await hub.wait_until(lambda s: not s.upstream_running)


async def test_hub_counters_as_dict() -> None:
    hub = Hub(counter(n=5), buffer=8, name="feed", stats=HubStats())
    async with hub, hub.subscribe() as items:
        await drain(items)
        assert [s.name for s in hub.subscriber_stats()] == []  # ended: no longer attached
    assert hub.stats.as_dict() == {
        "published": 5, "subscribers": 0, "peak_subscribers": 1, "joined": 1, "left": 0, "disconnected": 0,
        "delivered": 5, "dropped": 0, "high_water": hub.stats.high_water, "blocked": 0, "upstream_runs": 1,
        "upstream_running": 0, "upstream_errors": 0, "last_error": None,
    }
    assert 1 <= hub.stats.high_water <= 5
    assert items.stats.name == "feed-subscriber-1"


async def test_a_hub_cannot_be_hosted_twice_at_once() -> None:
    hub = Hub(counter())
    async with hub:
        with pytest.raises(RuntimeError, match="already running"):
            async with hub:
                pass


# ------------------------------------------------------------------ the property: in order, no duplicates

PROPS = settings(max_examples=25, deadline=None)
subscriber_specs = st.lists(
    st.tuples(
        st.integers(0, 40),  # join once this many items were published
        st.one_of(st.none(), st.integers(1, 30)),  # leave after reading this many (None: read to the end)
        st.sampled_from(["block", "drop_oldest", "disconnect"]),
        st.integers(1, 4),  # buffer
        st.lists(st.integers(0, 3), min_size=1, max_size=5),  # scheduling points between reads (cycled)
    ),
    min_size=1,
    max_size=6,
)


@PROPS
@given(specs=subscriber_specs, total=st.integers(1, 60), replay=st.integers(0, 1))
async def test_each_subscriber_sees_an_in_order_subsequence_and_block_sees_everything_after_its_join(
    specs: list[tuple[int, int | None, str, int, list[int]]], total: int, replay: int
) -> None:
    hub = Hub(counter(n=total), buffer=4, replay=replay)
    results: list[tuple[int, int | None, str, list[int], SubscriberStats, BaseException | None]] = []

    async def subscriber(join: int, leave: int | None, policy: Any, buffer: int, pauses: list[int]) -> None:
        await hub.wait_until(lambda s: s.published >= join or (s.upstream_runs > 0 and not s.upstream_running))
        if hub.stats.upstream_runs > 0 and not hub.stats.upstream_running:
            return  # the run is over: joining now would start a new one
        got: list[int] = []
        error: BaseException | None = None
        async with hub.subscribe(policy=policy, buffer=max(buffer, replay), replay=replay) as items:
            joined_at = hub.stats.published  # no await since the join: the exact join point
            try:
                async for x in items:
                    got.append(x)
                    for _ in range(pauses[len(got) % len(pauses)]):
                        await anyio.lowlevel.checkpoint()
                    if leave is not None and len(got) >= leave:
                        break
            except SubscriberDisconnected as exc:
                error = exc
        results.append((joined_at, leave, policy, got, items.stats, error))

    async with hub, anyio.create_task_group() as tg:
        async with hub.subscribe(name="anchor") as anchor:  # holds the one upstream run open to the end
            for spec in specs:
                tg.start_soon(subscriber, *spec)
            assert await drain(anchor) == list(range(total))
    for joined_at, leave, policy, got, stats, error in results:
        assert got == sorted(set(got)), (policy, got)  # in order, nothing twice
        assert stats.delivered == len(got) and balanced(stats)
        replayed = stats.replayed
        assert replayed <= replay
        assert all(joined_at - replayed <= x < total for x in got), (joined_at, got)
        if policy in ("block", "disconnect"):  # nothing dropped: everything after the join, contiguous
            expect = list(range(joined_at - replayed, joined_at - replayed + len(got)))
            assert got == expect, (policy, joined_at, got)
        if policy == "block":
            assert error is None and stats.dropped == 0
            if leave is None or len(got) < leave:  # it read to the end: everything from its join on
                assert stats.state == "ended" and len(got) == total - joined_at + replayed
        if error is not None:
            assert isinstance(error, SubscriberDisconnected) and error.reason == "slow" and policy == "disconnect"
