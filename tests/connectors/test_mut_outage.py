"""Riding out a broker outage (``talkpipe_async.connectors._outage``): ``OutageGuard`` driven directly.

A broker call is a coroutine function that fails on a schedule of virtual time (asyncio's VirtualClockLoop: the
connectors run on asyncio), so every deadline, backoff wait and budget is exact and a minute-long outage passes at
once.  What is pinned: the deadline of one call, which errors are retried and which propagate, the backoff between
retries, the budget and the error that ends it (type, text, cause), one budget per outage and none after giving up,
the outage count and callback, and the warnings an operator reads.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import anyio
import pytest

from talkpipe_async import TalkpipeAsyncError
from talkpipe_async.connectors._outage import DEFAULT_OUTAGE_BUDGET, BrokerUnavailable, OutageGuard
from talkpipe_async.testing import virtual_backend

pytestmark = pytest.mark.anyio

LOGGER = "talkpipe_async.connectors"


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """The connectors run on asyncio: its virtual clock."""
    return virtual_backend("asyncio")


class Down(ConnectionError):
    """The broker refused the connection."""


class Flaky:
    """A broker call that fails with ``Down`` until a given number of calls, recording when each call started."""

    def __init__(self, failures: float, *, lasting: float = 0.0) -> None:
        self.failures = failures
        self.lasting = lasting
        self.starts: list[float] = []

    async def __call__(self, value: Any = "ok") -> Any:
        self.starts.append(anyio.current_time())
        if self.lasting:
            await anyio.sleep(self.lasting)
        if len(self.starts) <= self.failures:
            raise Down(f"refused #{len(self.starts)}")
        return value


def guard(budget: float = 30.0, **kwargs: Any) -> OutageGuard:
    return OutageGuard("src", "redis at redis://h:1", budget, (Down,), **kwargs)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def gaps(starts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(starts)]


def test_settings_and_validation() -> None:
    """The default budget is a minute; a negative budget is refused, 0 is allowed; the call deadline defaults to
    10 s; timeouts are always transient; a new guard is not in an outage and counted none."""
    assert DEFAULT_OUTAGE_BUDGET == 60.0
    with pytest.raises(ValueError, match=r"^outage_budget must be >= 0$"):
        OutageGuard("src", "b", -0.5, (Down,))
    g = OutageGuard("src", "b", 0, (Down, OSError))
    assert (g.label, g.broker, g.budget, g.call_timeout, g.on_outage) == ("src", "b", 0, 10.0, None)
    assert g.transient == (Down, OSError, TimeoutError)
    assert not g.in_outage and g.outages == 0 and not g.gave_up
    assert issubclass(BrokerUnavailable, ConnectionError) and issubclass(BrokerUnavailable, TalkpipeAsyncError)


async def test_a_call_that_works_returns_its_result_with_its_arguments() -> None:
    async def add(a: int, b: int, *, c: int = 0) -> int:
        return a + b + c

    g = guard()
    assert await g.call("adding", add, 1, 2, c=3) == 6
    assert not g.in_outage and g.outages == 0


async def test_other_errors_propagate_at_once() -> None:
    """Only the transient types (and timeouts) are retried; anything else is raised as itself, no outage."""
    calls: list[float] = []

    async def broken() -> None:
        calls.append(anyio.current_time())
        raise ValueError("bad reply")

    g = guard()
    with pytest.raises(ValueError, match="bad reply"):
        await g.call("reading", broken)
    assert len(calls) == 1 and g.outages == 0 and not g.in_outage


async def test_each_call_has_a_deadline_of_call_timeout_plus_the_extra() -> None:
    """A call the broker never answers is cut at ``call_timeout + deadline_extra`` and counts as a failure."""
    starts: list[float] = []

    async def hangs() -> None:
        starts.append(anyio.current_time())
        await anyio.sleep_forever()

    g = guard(budget=0, call_timeout=2.0)
    start = anyio.current_time()
    with pytest.raises(BrokerUnavailable) as info:
        await g.call("reading", hangs, deadline_extra=3.0)
    assert anyio.current_time() - start == pytest.approx(5.0)
    assert isinstance(info.value.__cause__, TimeoutError) and len(starts) == 1

    g = guard(budget=0)  # the default deadline: 10 s
    start = anyio.current_time()
    with pytest.raises(BrokerUnavailable):
        await g.call("reading", hangs)
    assert anyio.current_time() - start == pytest.approx(10.0)


async def test_a_slow_call_within_its_deadline_is_not_cut() -> None:
    g = guard(budget=0, call_timeout=1.0)
    slow = Flaky(0, lasting=2.5)
    assert await g.call("reading", slow, "done", deadline_extra=2.0) == "done"


async def test_retries_back_off_from_50ms_doubling_with_equal_jitter_up_to_1s(
        caplog: pytest.LogCaptureFixture) -> None:
    """Between retries the wait after the n-th failure lies in ``[d/2, d]`` with ``d = min(1 s, 50 ms * 2**(n-1))``;
    the call then returns the broker's answer, and the outage is over."""
    caplog.set_level(logging.INFO, LOGGER)
    await anyio.sleep(10.0)  # the outage starts some time into the run
    outages: list[float] = []
    g = guard(budget=60.0, on_outage=lambda: outages.append(anyio.current_time()))
    call = Flaky(20)
    assert await g.call("reading", call, "answer") == "answer"
    assert len(call.starts) == 21 and g.outages == 1 and outages == [call.starts[0]]
    assert not g.in_outage and not g.gave_up
    for n, gap in enumerate(gaps(call.starts), 1):
        d = min(1.0, 0.05 * 2 ** (n - 1))
        assert d / 2 - 1e-9 <= gap <= d + 1e-9, (n, gap)
    assert len({round(gap, 9) for gap in gaps(call.starts)[6:]}) > 1  # jittered, not one fixed wait
    assert warnings_of(caplog)[0] == ("src: redis at redis://h:1 unreachable during reading (Down: refused #1); "
                                      "retrying for up to 60 s")
    elapsed = call.starts[-1] - call.starts[0]
    assert warnings_of(caplog)[-1] == f"src: redis at redis://h:1 reachable again after {elapsed:.1f} s"


async def test_the_budget_ends_the_outage_exactly_with_an_error_naming_it() -> None:
    """Waits are cut so the last retry falls exactly at the end of the budget; its failure raises
    ``BrokerUnavailable`` naming the stage, the broker, the time, the budget, what was being done and the cause."""
    g = guard(budget=2.5)
    call = Flaky(float("inf"))
    with pytest.raises(BrokerUnavailable) as info:
        await g.call("writing a batch", call)
    assert call.starts[-1] - call.starts[0] == pytest.approx(2.5, abs=1e-9)
    for n, gap in enumerate(gaps(call.starts), 1):  # the backoff, the last wait cut to what is left
        d = min(1.0, 0.05 * 2 ** (n - 1))
        assert (d / 2 - 1e-9 <= gap or n == len(call.starts) - 1) and gap <= d + 1e-9, (n, gap)
    assert str(info.value) == ("src: redis at redis://h:1 unreachable for 2.5 s (outage_budget=2.5 s) during writing "
                               f"a batch: Down: refused #{len(call.starts)}")
    assert isinstance(info.value.__cause__, Down)
    assert g.gave_up and not g.in_outage and g.outages == 1


async def test_a_failure_exactly_at_the_budget_gives_up() -> None:
    """A retry failing exactly when the budget is spent raises; it is not retried once more."""
    times = [0.0, 0.5, 1.0]
    starts: list[float] = []
    t0 = anyio.current_time()
    assert t0 == 0.0, "a fresh virtual clock starts at 0: the times below are then exact"

    async def fails_on_schedule() -> None:
        await anyio.sleep(max(0.0, t0 + times[len(starts)] - anyio.current_time()))
        starts.append(anyio.current_time() - t0)
        raise Down("refused")

    g = guard(budget=1.0)
    with pytest.raises(BrokerUnavailable, match=r"unreachable for 1\.0 s \(outage_budget=1 s\)"):
        await g.call("reading", fails_on_schedule)
    assert starts == pytest.approx(times, abs=1e-9)


async def test_a_zero_budget_gives_up_at_the_first_failure() -> None:
    g = guard(budget=0)
    call = Flaky(float("inf"))
    with pytest.raises(BrokerUnavailable, match=r"^src: redis at redis://h:1 unreachable for 0\.0 s "
                                                 r"\(outage_budget=0 s\) during reading: Down: refused #1$"):
        await g.call("reading", call)
    assert len(call.starts) == 1 and g.outages == 1


async def test_after_giving_up_there_is_no_second_budget() -> None:
    """Once the guard gave up (the stage is closing), the next failure raises at once."""
    g = guard(budget=0.5)
    with pytest.raises(BrokerUnavailable):
        await g.call("reading", Flaky(float("inf")))
    call = Flaky(float("inf"))
    with pytest.raises(BrokerUnavailable, match=r"unreachable for 0\.0 s .* during closing: Down: refused #1$"):
        await g.call("closing", call)
    assert len(call.starts) == 1 and g.gave_up
    assert await g.call("closing", Flaky(0), 7) == 7  # a broker that answers still answers


async def test_each_outage_has_its_own_budget_and_backoff(caplog: pytest.LogCaptureFixture) -> None:
    """A success ends the outage: the next failure starts a new one (counted, the callback called, warned) with a
    full budget and the backoff from its first, shortest wait."""
    caplog.set_level(logging.INFO, LOGGER)
    told: list[float] = []
    g = guard(budget=4.0, on_outage=lambda: told.append(anyio.current_time()))
    first = Flaky(8)  # at most 3.55 s of waits: within the budget
    await g.call("reading", first)
    assert g.outages == 1 and not g.in_outage
    await anyio.sleep(100.0)
    second = Flaky(40)  # more than the first budget would allow after the first outage
    with pytest.raises(BrokerUnavailable):
        await g.call("writing", second)
    assert told == [first.starts[0], second.starts[0]] and g.outages == 2
    assert 0.025 - 1e-9 <= second.starts[1] - second.starts[0] <= 0.05 + 1e-9
    assert second.starts[-1] - second.starts[0] == pytest.approx(4.0, abs=1e-9)
    started = [m for m in warnings_of(caplog) if "retrying for up to" in m]
    assert started == [
        "src: redis at redis://h:1 unreachable during reading (Down: refused #1); retrying for up to 4 s",
        "src: redis at redis://h:1 unreachable during writing (Down: refused #1); retrying for up to 4 s",
    ]


async def test_in_outage_between_a_failure_and_the_next_success() -> None:
    g = guard(budget=10.0)
    seen: list[bool] = []

    async def watch() -> None:
        seen.append(g.in_outage)
        if len(seen) < 3:
            raise Down("refused")

    await g.call("reading", watch)
    assert seen == [False, True, True] and not g.in_outage


async def test_a_long_outage_is_warned_about_every_five_seconds(caplog: pytest.LogCaptureFixture) -> None:
    """While an outage lasts, a failure at least 5 s after the last warning warns again, with the time so far and
    the cause; no more often."""
    caplog.set_level(logging.INFO, LOGGER)
    times = [0.0, 4.9, 5.0, 7.0, 9.0, 9.99, 11.0]  # each later than the longest backoff wait allows
    starts: list[float] = []
    t0 = anyio.current_time()
    assert t0 == 0.0, "a fresh virtual clock starts at 0: the times below are then exact"

    async def fails_on_schedule() -> str:
        if len(starts) == len(times):
            return "back"
        await anyio.sleep(max(0.0, t0 + times[len(starts)] - anyio.current_time()))
        starts.append(anyio.current_time() - t0)
        raise Down(f"refused at {starts[-1]:g}")

    g = guard(budget=30.0)
    assert await g.call("reading", fails_on_schedule) == "back"
    assert starts == pytest.approx(times, abs=1e-9)
    assert warnings_of(caplog) == [
        "src: redis at redis://h:1 unreachable during reading (Down: refused at 0); retrying for up to 30 s",
        "src: redis at redis://h:1 still unreachable after 5.0 s (Down: refused at 5)",
        "src: redis at redis://h:1 still unreachable after 11.0 s (Down: refused at 11)",
        f"src: redis at redis://h:1 reachable again after {anyio.current_time() - t0:.1f} s",
    ]


async def test_a_timeout_is_retried_like_a_refused_connection() -> None:
    """A call cut by its deadline is retried within the budget, and the answer that comes returns."""
    calls: list[float] = []

    async def hangs_twice() -> str:
        calls.append(anyio.current_time())
        if len(calls) <= 2:
            await anyio.sleep_forever()
        return "late"

    g = guard(budget=30.0, call_timeout=1.0)
    assert await g.call("reading", hangs_twice) == "late"
    assert len(calls) == 3 and g.outages == 1
    assert 1.0 + 0.025 - 1e-9 <= calls[1] - calls[0] <= 1.0 + 0.05 + 1e-9

