"""Hub: the edges the main hub tests leave open (asyncio, uvloop, trio).

Pinned here: the defaults and the exact option errors (each bound itself allowed), the names the hub gives (its
task, its subscribers, its source), the stats object it is handed, the log lines an operator reads (the upstream's
failure, the slow-subscriber warning logged once per hub, a disconnect), the error a hub hosted by ``run()`` keeps
for later subscribers, joining and leaving before a run starts, a subscriber that joins just after the last one left
(a fresh run from its first item: nothing of the stopping run, and not an end), an upstream that never waits, and a
replay history that holds no more than ``replay`` items.  No sleeps: every wait is
on the hub's counters or an event of the test.
"""

from __future__ import annotations

import gc
import itertools
import logging
import re
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from talkpipe_async import source
from talkpipe_async.operators import from_stream
from talkpipe_async.sinks import Hub, HubStats, SubscriberDisconnected, SubscriberStats, Subscription
from tests.sinks.test_hub import counter, failing

pytestmark = pytest.mark.anyio

LOGGER = "talkpipe_async.sinks.hub"


async def outcome(items: Subscription[Any]) -> tuple[list[Any], BaseException | None]:
    got: list[Any] = []
    try:
        async for x in items:
            got.append(x)
    except Exception as exc:
        return got, exc
    return got, None


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


# ------------------------------------------------------------------ options, defaults, names


def test_option_errors_name_the_bad_value_and_the_bounds_themselves_are_allowed() -> None:
    with pytest.raises(ValueError, match=r"^unknown policy 'newest' \(one of block, drop_oldest, disconnect\)$"):
        Hub(counter(), policy="newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^buffer must be at least 1$"):
        Hub(counter(), buffer=0)
    with pytest.raises(ValueError, match=r"^replay must be between 0 and buffer \(2\), not 3$"):
        Hub(counter(), buffer=2, replay=3)
    with pytest.raises(ValueError, match=r"^replay must be between 0 and buffer \(2\), not -1$"):
        Hub(counter(), buffer=2, replay=-1)
    assert Hub(counter(), buffer=1).buffer == 1
    assert Hub(counter(), buffer=2, replay=2).replay == 2  # replay == buffer
    hub = Hub(counter(), buffer=8, replay=2)
    hub.subscribe(replay=2)  # all the hub keeps
    with pytest.raises(ValueError, match=r"^replay=3 is more than the hub keeps \(replay=2\)$"):
        hub.subscribe(replay=3)
    # a subscriber's own options are checked like the hub's
    with pytest.raises(ValueError, match=r"^buffer must be at least 1$"):
        hub.subscribe(buffer=0)
    with pytest.raises(ValueError, match=r"^unknown policy 'newest'"):
        hub.subscribe(policy="newest")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"^replay must be between 0 and buffer \(1\), not 2$"):
        hub.subscribe(buffer=1)  # the hub's replay=2 does not fit a buffer of 1


async def test_defaults_and_the_names_the_hub_gives() -> None:
    hub = Hub(counter())
    assert (hub.buffer, hub.policy, hub.replay, hub.keep_running, hub.name) == (16, "block", 0, False, "hub")
    assert hub.error is None
    assert repr(hub) == f"<Hub 'hub' of {hub.upstream!r}>"
    assert Hub(counter(), name="feed").source().name == "feed.source"
    async with hub, hub.subscribe() as first, hub.subscribe() as second:
        assert (first.name, second.name) == ("hub-subscriber-1", "hub-subscriber-2")
        # a subscriber takes the hub's buffer and policy unless given its own
        assert (first.stats.buffer, first.stats.policy) == (16, "block")
        async with hub.subscribe(buffer=3, policy="drop_oldest") as own:
            assert (own.stats.buffer, own.stats.policy) == (3, "drop_oldest")


async def test_the_hub_uses_the_stats_it_is_given_and_names_its_task() -> None:
    stats = HubStats()
    hub = Hub(counter(n=2), name="feed", stats=stats)
    assert hub.stats is stats
    async with hub:
        names = [task.name for task in anyio.get_running_tasks()]
        assert any(name is not None and name.endswith("talkpipe hub feed") for name in names), names
        async with hub.subscribe() as items:
            assert [x async for x in items] == [0, 1]
    assert stats.published == 2 and stats.joined == 1


async def test_hosting_twice_is_refused_with_the_hubs_name() -> None:
    hub = Hub(counter(), name="once")
    refused = rf"^{re.escape(repr(hub))} is already running$"
    async with hub:
        with pytest.raises(RuntimeError, match=refused):
            await hub.run()
        with pytest.raises(RuntimeError, match=refused):
            async with hub:
                pass


# ------------------------------------------------------------------ what an operator reads in the log


async def test_an_upstream_failure_is_logged_with_the_hub_and_the_error(caplog: pytest.LogCaptureFixture) -> None:
    hub = Hub(failing(after=1), name="feed")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with hub, hub.subscribe() as items:
            _, error = await outcome(items)
    assert isinstance(error, ValueError)
    assert messages(caplog, logging.WARNING) == [f"{hub!r}: the upstream failed: {error!r}"]
    assert hub.stats.last_error == repr(error)


async def test_dropping_is_warned_once_per_hub_naming_the_subscriber(caplog: pytest.LogCaptureFixture) -> None:
    hub = Hub(counter(n=12), buffer=2, policy="drop_oldest", name="feed")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with hub, hub.subscribe(name="slowpoke") as slow, hub.subscribe(name="sloth") as sloth:
            await hub.wait_until(lambda s: s.upstream_runs == 1 and not s.upstream_running)  # neither reads
            assert [x async for x in slow] == [10, 11] and [x async for x in sloth] == [10, 11]
    assert slow.stats.dropped == sloth.stats.dropped == 10 and hub.stats.dropped == 20
    warned = messages(caplog, logging.WARNING)
    assert len(warned) == 1, warned  # two subscribers, twenty drops: one line
    assert warned[0] == (f"{hub!r}: subscriber 'slowpoke' is too slow; dropping its oldest items (counted in its "
                         "stats and HubStats.dropped; this is logged once per hub)")


async def test_each_disconnect_is_counted_and_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    hub = Hub(counter(n=5), buffer=2, policy="disconnect", name="feed")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with hub, hub.subscribe(name="stalled") as stalled, hub.subscribe(name="stuck", buffer=3) as stuck:
            await hub.wait_until(lambda s: s.disconnected == 2)
            _, error = await outcome(stalled)
            _, other = await outcome(stuck)
    assert isinstance(error, SubscriberDisconnected) and isinstance(other, SubscriberDisconnected)
    assert str(error) == ("subscriber 'stalled' disconnected: too slow: its buffer of 2 items was full "
                          "(policy 'disconnect'); 0 items delivered, 2 discarded")
    assert (other.subscriber, other.buffer, other.discarded) == ("stuck", 3, 3)
    assert messages(caplog, logging.INFO) == [f"{hub!r}: {error}", f"{hub!r}: {other}"]
    assert hub.stats.disconnected == 2


# ------------------------------------------------------------------ hosting, runs, replay


async def test_a_hub_run_by_run_keeps_the_upstream_error_for_later_subscribers() -> None:
    hub = Hub(failing(after=2), keep_running=True, buffer=4, replay=2)
    with pytest.raises(ValueError, match="broke after 2") as caught:
        await hub.run()  # hosted in this task: the upstream's error is raised here
    assert hub.error is caught.value
    async with hub.subscribe() as late:  # the replay, then the same error
        got, error = await outcome(late)
    assert got == [0, 1] and error is caught.value and late.stats.state == "failed"
    assert hub.stats.upstream_errors == 1


async def test_joining_and_leaving_before_a_run_starts_is_fine() -> None:
    hub = Hub(counter(n=3), buffer=4)
    async with hub:
        async with hub.subscribe():
            pass  # left before any run started
        assert hub.stats.left == 1 and hub.stats.subscribers == 0
        async with hub.subscribe() as items:
            assert [x async for x in items] == [0, 1, 2]
        await hub.wait_until(lambda s: not s.upstream_running)
        async with hub.subscribe():
            pass  # left after a run ended, before the next one started
        assert hub.stats.left == 2 and hub.stats.subscribers == 0
    assert hub.stats.upstream_runs == 1


async def test_a_subscriber_joining_just_after_the_last_one_left_gets_a_fresh_run() -> None:
    closed: list[str] = []
    hub = Hub(counter(closed=closed), buffer=2)
    async with hub:
        async with hub.subscribe() as first:
            assert await first.__anext__() == 0
        async with hub.subscribe() as second:  # no wait: the stopped run has not wound down yet
            # nothing of the stopping run: the first item of the fresh one, and on
            assert [await second.__anext__() for _ in range(3)] == [0, 1, 2]
            assert second.stats.state == "active"
        await hub.wait_until(lambda s: not s.upstream_running)
    assert hub.stats.upstream_runs == 2 and closed == ["closed", "closed"]


@source
async def one_then_shielded_wait(go: anyio.Event) -> AsyncIterator[int]:
    """0, then a wait no stop can cut short, then the end."""
    yield 0
    with anyio.CancelScope(shield=True):
        await go.wait()


async def test_a_stopping_run_that_ends_by_itself_does_not_end_the_next_subscriber() -> None:
    go = anyio.Event()
    hub = Hub(one_then_shielded_wait(go), buffer=2)
    async with hub:
        async with hub.subscribe() as first:
            assert await first.__anext__() == 0
        async with hub.subscribe() as second:  # the stopping run is still in its shielded wait
            go.set()  # ... and now ends by itself, with the stop pending
            assert [x async for x in second] == [0]  # a fresh run, not the old run's end
            assert second.stats.state == "ended"
    assert hub.stats.upstream_runs == 2


class Item:
    __slots__ = ("__weakref__", "n")

    def __init__(self, n: int) -> None:
        self.n = n


async def test_the_replay_history_holds_no_more_than_replay_items() -> None:
    send, receive = anyio.create_memory_object_stream[Item](100)
    hub = Hub(from_stream(receive), keep_running=True, buffer=4, replay=2)
    refs = []
    async with hub:
        for n in range(10):
            item = Item(n)
            refs.append(weakref.ref(item))
            await send.send(item)
        del item
        await hub.wait_until(lambda s: s.published == 10)
        gc.collect()
        assert [ref() is None for ref in refs[:8]] == [True] * 8  # only the last two are kept
        stats = SubscriberStats()  # one set of counters that two subscriptions count into
        async with hub.subscribe(stats=stats, replay=1) as late:
            assert [(await late.__anext__()).n] == [9]
        async with hub.subscribe(stats=stats) as late:
            send.close()
            assert [x.n async for x in late] == [8, 9]
        assert (stats.replayed, stats.received, stats.delivered) == (3, 3, 3)


@source
async def busy() -> AsyncIterator[int]:
    """0, 1, 2, ... without ever waiting: a CPU-bound upstream."""
    for i in itertools.count():
        yield i


async def test_an_upstream_that_never_waits_does_not_hold_the_loop() -> None:
    hub = Hub(busy(), keep_running=True)
    async with hub:  # no subscriber: nothing else makes the hub's task wait
        await hub.wait_until(lambda s: s.published >= 1000)
        await hub.wait_until(lambda s: s.published >= 2000)  # this task gets the loop again and again
    assert hub.stats.upstream_running == 0


async def test_when_the_upstream_ends_no_subscriber_is_attached_any_more() -> None:
    hub = Hub(counter(n=3), buffer=4)
    async with hub, hub.subscribe() as a, hub.subscribe() as b:
        assert [x async for x in a] == [0, 1, 2]
        assert hub.stats.subscribers == 0 and hub.subscriber_stats() == []  # b is still in its block
        assert b.stats.state == "ended"


async def test_closing_the_hub_disconnects_each_subscriber_by_name_and_counts_each() -> None:
    hub = Hub(counter(), buffer=4, name="feed")
    host = anyio.CancelScope()

    async def hosted(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with host:
            await hub.run(task_status=task_status)

    async with anyio.create_task_group() as tg:
        await tg.start(hosted)
        async with hub.subscribe(name="one") as one, hub.subscribe(name="two", buffer=2) as two:
            assert await one.__anext__() == 0
            await hub.wait_until(lambda s: s.blocked >= 1)
            host.cancel()
            await hub.wait_until(lambda s: s.disconnected == 2)
            _, error_one = await outcome(one)
            _, error_two = await outcome(two)
    assert isinstance(error_one, SubscriberDisconnected) and isinstance(error_two, SubscriberDisconnected)
    assert str(error_two) == "subscriber 'two' disconnected: the hub closed; 0 items delivered, 2 discarded"
    assert (error_one.subscriber, error_one.reason, error_one.buffer, error_one.delivered) == ("one", "closed", 4, 1)
    assert (error_two.subscriber, error_two.reason, error_two.buffer) == ("two", "closed", 2)
    assert one.stats.reason == two.stats.reason == "closed"
    assert hub.stats.disconnected == 2 and hub.stats.subscribers == 0


async def test_entering_a_hub_in_a_cancelled_scope_leaves_it_ready_for_another_go() -> None:
    hub = Hub(counter(n=2))
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with hub:
            pytest.fail("the block ran in a cancelled scope")  # pragma: no cover
    assert scope.cancelled_caught
    async with hub, hub.subscribe() as items:  # nothing of the first try is left running
        assert [x async for x in items] == [0, 1]
