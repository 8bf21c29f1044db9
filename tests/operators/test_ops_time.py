"""Time operators: throttle/rate_limit, debounce, delay, timeout, deadline, interval, timer.

Timing checks use lower bounds (which a slow machine cannot break) and
generous upper bounds via ``fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, Metadata, source
from talkpipe_async.operators import (
    StageTimeout,
    deadline,
    debounce,
    delay,
    interval,
    map,
    rate_limit,
    take,
    throttle,
    timeout,
    timer,
)
from tests.helpers.ops_a import LOOPS, Gate, items_of, on_mock_clock, run_collect, timed

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=50, deadline=None)


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=st.lists(st.tuples(st.integers(0, 4), st.integers()), max_size=30))
def test_debounce_without_timer_keeps_last_per_key(loop: Any, xs: list[tuple[int, int]]) -> None:
    # With a long quiet period nothing is due before the end: each key's last item,
    # in the order of those last items.
    last = {k: i for i, (k, _) in enumerate(xs)}
    expected = [xs[i] for i in sorted(last.values())]
    assert run_collect(loop, debounce(60.0, key=lambda kv: kv[0]), xs) == expected
    assert run_collect(loop, debounce(60.0), xs) == xs[-1:]


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=st.lists(st.one_of(st.integers(), st.just(None)), max_size=30))
def test_zero_delay_and_loose_limits_are_identity(loop: Any, xs: list[Any]) -> None:
    data = [Flush() if x is None else x for x in xs]
    assert run_collect(loop, delay(0), data, metadata=True) == data
    assert run_collect(loop, timeout(60) | deadline(60), data, metadata=True) == data
    assert run_collect(loop, throttle(1e9, burst=10), data, metadata=True) == data


async def test_throttle_token_bucket_spacing() -> None:
    rate, burst, n = 50.0, 3, 10
    start = anyio.current_time()
    times: list[float] = []
    with anyio.fail_after(5):
        async with (items_of(list(range(n))) | throttle(rate, burst=burst)).stream() as items:
            async for _ in items:
                times.append(anyio.current_time() - start)
    assert len(times) == n
    for i in range(burst, n):
        assert times[i] >= (i - burst + 1) / rate - 1e-3, (i, times)
    assert rate_limit is throttle


async def test_debounce_emits_after_quiet_period_while_source_waits() -> None:
    gate = Gate([1, 2, 3], [4])
    start = anyio.current_time()
    with anyio.fail_after(5):
        async with (gate.source() | debounce(0.05)).stream() as items:
            first = await items.__anext__()
            waited = anyio.current_time() - start
            gate.release.set()
            rest = [x async for x in items]
    assert first == 3 and waited >= 0.045
    assert rest == [4]


async def test_debounce_per_key_order_flush_and_cap() -> None:
    data: list[Any] = [("a", 1), ("b", 1), ("a", 2), Flush(), ("c", 1)]
    out = await (items_of(data) | debounce(60, key=lambda kv: kv[0])).collect(metadata=True)
    assert out == [("b", 1), ("a", 2), Flush(), ("c", 1)]
    capped = await (items_of([1, 2, 3, 4]) | debounce(60, key=lambda x: x, max_keys=2)).collect()
    assert capped == [1, 2, 3, 4]  # early, never dropped
    other = Metadata(kind="mark")
    assert await (items_of([1, other, 2]) | debounce(60)).collect(metadata=True) == [other, 2]


async def test_delay_shifts_items() -> None:
    start = anyio.current_time()
    with anyio.fail_after(5):
        async with (items_of([1, 2, 3]) | delay(0.05)).stream() as items:
            first = await items.__anext__()
            waited = anyio.current_time() - start
            rest = [x async for x in items]
    assert first == 1 and waited >= 0.045 and rest == [2, 3]


async def test_timeout_names_stage_and_cancels_upstream() -> None:
    gate = Gate([1, 2])
    got: list[int] = []
    with anyio.fail_after(5), pytest.raises(StageTimeout) as info:
        async with (gate.source() | timeout(0.05, name="feed watchdog")).stream() as items:
            async for x in items:
                got.append(x)
    assert got == [1, 2]
    err = info.value
    assert isinstance(err, TimeoutError) and err.stage == "feed watchdog"
    assert "feed watchdog" in str(err) and "after item #2" in str(err)
    assert gate.closed.is_set()


async def test_timeout_first_item_limit() -> None:
    gate = Gate([])
    with anyio.fail_after(5), pytest.raises(StageTimeout, match="the first item"):
        await (gate.source() | timeout(60, first=0.05)).collect()


async def test_deadline_stop_and_raise() -> None:
    with anyio.fail_after(5):
        ticks = await (interval(0.01) | deadline(0.1, on_expire="stop")).collect()
    assert 1 <= len(ticks) and ticks == list(range(len(ticks)))

    @source
    async def busy() -> AsyncIterator[int]:
        i = 0
        while True:  # never waits: the deadline must still end it
            yield i
            i += 1

    with anyio.fail_after(5), pytest.raises(StageTimeout, match="deadline"):
        await (busy() | map(lambda x: x) | deadline(0.05)).collect()


async def test_interval_and_timer() -> None:
    start = anyio.current_time()
    with anyio.fail_after(5):
        assert await interval(0.01, count=5).collect() == [0, 1, 2, 3, 4]
        assert anyio.current_time() - start >= 0.045
        assert await timer(0.02).collect() == [0]
        assert await (timer(0, 0.01) | take(3)).collect() == [0, 1, 2]


def test_validation() -> None:
    for make in (lambda: throttle(0), lambda: throttle(1, burst=0), lambda: debounce(0), lambda: delay(-1)):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(ValueError):
        deadline(1, on_expire="later")  # type: ignore[arg-type]


# ----------------------------------------------------------------- exact timing under trio's MockClock
# The operators read anyio.current_time() and sleep with anyio, so on trio a
# MockClock with autojump runs them in virtual time: exact, instant, never flaky.


def test_mock_throttle_exact() -> None:
    out = on_mock_clock(items_of(list(range(6))) | throttle(10, burst=2))
    assert out == [(0.0, 0), (0.0, 1), (0.1, 2), (0.2, 3), (0.3, 4), (0.4, 5)]


def test_mock_throttle_burst_after_idle_gap_stays_bounded() -> None:
    # A full bucket after a long pause holds `burst` items, however long the pause.
    schedule = [(0.0, i) for i in range(5)] + [(1.0, i) for i in range(5, 10)]
    out = on_mock_clock(timed(schedule) | throttle(10, burst=3))
    assert out == [(t, i) for i, t in enumerate([0.0, 0.0, 0.0, 0.1, 0.2, 1.0, 1.0, 1.0, 1.1, 1.2])]


def test_mock_throttle_slow_upstream_earns_no_extra_burst() -> None:
    # An upstream slower than the rate leaves the bucket full, never fuller: then `burst` at once, then the rate.
    schedule = [(0.15 * i, i) for i in range(5)] + [(0.75, i) for i in range(5, 10)]
    out = on_mock_clock(timed(schedule) | throttle(10, burst=2))
    assert out == [(t, i) for i, t in enumerate([0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.75, 0.85, 0.95, 1.05])]


def test_mock_throttle_partial_refill() -> None:
    # 0.25 s after the bucket emptied (at 0.2) it holds 2.5 tokens: two items at once, the third when it fills.
    schedule = [(0.0, i) for i in range(5)] + [(0.45, i) for i in range(5, 10)]
    out = on_mock_clock(timed(schedule) | throttle(10, burst=3))
    assert out == [(t, i) for i, t in enumerate([0.0, 0.0, 0.0, 0.1, 0.2, 0.45, 0.45, 0.5, 0.6, 0.7])]


@pytest.mark.parametrize("rate", [1, 7, 1000, 100_000])
def test_mock_throttle_never_early_and_on_average_exact(rate: float) -> None:
    n = 5 if rate < 10 else 2000
    out = on_mock_clock(items_of(list(range(n))) | throttle(rate))
    times = [t for t, _ in out]
    assert [x for _, x in out] == list(range(n))
    for k, t in enumerate(times):
        # never before its slot; at high rates the items whose slots passed during one sleep go together
        assert k / rate - 1e-6 <= t <= k / rate + 0.001 + 1e-6, (k, t)


class LateClock(trio.abc.Clock):
    """A virtual clock whose every sleep ends *late* seconds after its deadline (a coarse event-loop timer)."""

    def __init__(self, late: float) -> None:
        self.late = late
        self.now = 0.0

    def start_clock(self) -> None:
        """Nothing to start: time moves only when every task sleeps."""

    def current_time(self) -> float:
        """The virtual time."""
        return self.now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """Jump past the next deadline instead of waiting for it."""
        if deadline > self.now and deadline != float("inf"):
            self.now = deadline + self.late
        return 0.0


@pytest.mark.parametrize(("rate", "late"), [(1000, 0.0004), (1000, 0.003), (100_000, 0.0011), (10, 0.02)])
def test_throttle_keeps_its_rate_when_sleeps_overshoot(rate: float, late: float) -> None:
    # Time overslept is made up by the next items (their slots are on a fixed grid), so the average holds.
    n = max(50, int(rate / 2))  # half a second: the last item may be a sleep and a tick late
    clock = LateClock(late)

    async def main() -> list[float]:
        times = []
        async with (items_of(list(range(n))) | throttle(rate)).stream() as items:
            async for _ in items:
                times.append(anyio.current_time())
        return times

    times = anyio.run(main, backend="trio", backend_options={"clock": clock})
    achieved = (n - 1) / (times[-1] - times[0])
    assert achieved == pytest.approx(rate, rel=0.02)
    for k, t in enumerate(times):
        assert t >= times[0] + k / rate - 1e-6, (k, t)  # never early


def test_mock_debounce_exact() -> None:
    out = on_mock_clock(timed([(0.0, 1), (0.01, 2), (0.5, 3)]) | debounce(0.1))
    assert out == [(0.11, 2), (0.5, 3)]  # 3 is let out at the end of the stream


def test_mock_delay_and_interval_exact() -> None:
    assert on_mock_clock(timed([(0.0, "a"), (0.1, "b")]) | delay(0.3)) == [(0.3, "a"), (0.4, "b")]
    assert on_mock_clock(interval(0.25, count=4)) == [(0.25, 0), (0.5, 1), (0.75, 2), (1.0, 3)]


def test_mock_timeout_exact() -> None:
    from trio.testing import MockClock

    async def main() -> float:
        start = anyio.current_time()
        with pytest.raises(StageTimeout):
            await (timed([(0.2, 1), (0.4, 2), (1.4, 3)]) | timeout(0.5)).collect()
        return anyio.current_time() - start

    took = anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    assert round(took, 6) == 0.9
