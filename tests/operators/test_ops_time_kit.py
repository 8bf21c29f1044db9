"""Time and batch operators checked as marble diagrams in virtual time, through talkpipe_async.testing.

One unit is 10 ms of virtual time.  The anyio tests run on virtual clocks (asyncio's VirtualClockLoop and trio's
autojumping MockClock); the pytest-asyncio tests run on the ordinary loop, and the kit runs their marbles on a
fresh virtual loop.  Items meet timers on exact virtual instants only where the operator documents the order.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from talkpipe_async import Backoff
from talkpipe_async.operators import (
    StageTimeout,
    batch,
    deadline,
    debounce,
    delay,
    flush_t,
    interval,
    merge,
    retry,
    take,
    throttle,
    time_window,
    timeout,
    timer,
)
from talkpipe_async.testing import assert_marbles, marble_source, virtual_backend


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The anyio tests of this module on each virtual clock."""
    return virtual_backend(request.param)


AB_C = {"x": ["a", "b"], "y": ["c"]}


@pytest.mark.anyio
async def test_batch_by_size_and_at_the_end() -> None:
    await assert_marbles(batch(2), "-a-b-c|", "---x--(y|)", AB_C)


@pytest.mark.anyio
async def test_batch_timeout_counts_from_the_first_item_held() -> None:
    values = {"x": ["a", "b"], "y": ["c", "d"], "z": ["e"]}
    await assert_marbles(batch(3, timeout=0.03), "-a-b------c-d-e|", "----x--------y-(z|)", values)


@pytest.mark.anyio
async def test_batch_flush_emits_what_it_holds_and_passes_on() -> None:
    await assert_marbles(batch(3), "-a-F-b|", "---(xF)--(y|)", {"x": ["a"], "y": ["b"]})


@pytest.mark.asyncio
async def test_batch_under_pytest_asyncio() -> None:
    await assert_marbles(batch(2, timeout=0.05), "-a-b-c------|", "---x------y-|", AB_C)


@pytest.mark.anyio
async def test_time_window_tumbling() -> None:
    await assert_marbles(time_window(0.04), "-a-b-c-d--|", "----x---y-|", {"x": ["a", "b"], "y": ["c", "d"]})


@pytest.mark.anyio
async def test_time_window_sliding_slides_and_empties() -> None:
    """Every 20 ms, the items of the last 40 ms: each item is in two windows, then the window empties."""
    values = {"p": ["a"], "q": ["a", "b"], "r": ["b", "c"], "s": ["c"], "e": []}
    await assert_marbles(time_window(0.04, every=0.02, emit_empty=True), "-a-b-c-------|", "--p-q-r-s-e-e|", values)


@pytest.mark.anyio
async def test_time_window_skips_empty_windows_unless_asked() -> None:
    await assert_marbles(time_window(0.02), "-a-------b|", "--x-------(y|)", {"x": ["a"], "y": ["b"]})
    await assert_marbles(
        time_window(0.02, emit_empty=True), "-a-------b|", "--x-e-e-e-(y|)", {"x": ["a"], "e": [], "y": ["b"]}
    )


@pytest.mark.anyio
async def test_flush_t_sends_flush_on_its_ticks() -> None:
    await assert_marbles(flush_t(0.03), "-a--b--|", "-a-Fb-F|")


@pytest.mark.anyio
async def test_throttle_spaces_a_burst() -> None:
    await assert_marbles(throttle(50), "-(abc)----|", "-a-b-c|")


@pytest.mark.anyio
async def test_throttle_lets_a_burst_through_then_spaces() -> None:
    await assert_marbles(throttle(50, burst=2), "-(abcd)------|", "-(ab)-c-d--|")


@pytest.mark.asyncio
async def test_throttle_under_pytest_asyncio() -> None:
    await assert_marbles(throttle(25), "(abc)-------|", "a---b---(c|)")


@pytest.mark.anyio
async def test_debounce_keeps_the_last_of_a_burst() -> None:
    await assert_marbles(debounce(0.03), "-a-b-----c-d|", "------b-----(d|)")


@pytest.mark.anyio
async def test_debounce_per_key() -> None:
    values = {"a": ("k", 1), "b": ("j", 2), "c": ("k", 3)}
    await assert_marbles(debounce(0.05, key=lambda kv: kv[0]), "-a-b-c-----|", "--------b-c|", values)


@pytest.mark.anyio
async def test_debounce_flush_emits_the_waiting_item_at_once() -> None:
    await assert_marbles(debounce(1.0), "-a-F---|", "---(aF)---|")


@pytest.mark.anyio
async def test_delay_shifts_items_and_keeps_spacing() -> None:
    await assert_marbles(delay(0.05), "-a-b|", "------a-(b|)")


@pytest.mark.anyio
async def test_timeout_raises_when_the_upstream_stalls() -> None:
    await assert_marbles(timeout(0.05), "-a-b--------c|", "-a-b----#", errors=StageTimeout)


@pytest.mark.asyncio
async def test_timeout_first_item_limit_under_pytest_asyncio() -> None:
    await assert_marbles(timeout(0.02, first=0.1), "--------ab|", "--------ab|")
    await assert_marbles(timeout(0.02, first=0.05), "--------a|", "-----#", errors=StageTimeout)


@pytest.mark.anyio
async def test_deadline_stops_the_stream() -> None:
    await assert_marbles(deadline(0.05, on_expire="stop"), "-a-b--c-d|", "-a-b-|")
    await assert_marbles(deadline(0.05), "-a-b--c-d|", "-a-b-#", errors=StageTimeout)


@pytest.mark.anyio
async def test_interval_ticks_on_its_grid() -> None:
    await assert_marbles(interval(0.03) | take(3), None, "---a--b--(c|)", {"a": 0, "b": 1, "c": 2})
    await assert_marbles(interval(0.03, first=0.01) | take(2), None, "-a--(b|)", {"a": 0, "b": 1})


@pytest.mark.anyio
async def test_timer_once_and_then_periodic() -> None:
    await assert_marbles(timer(0.05), None, "-----(a|)", {"a": 0})
    await assert_marbles(timer(0.05, 0.02) | take(3), None, "-----a-b-(c|)", {"a": 0, "b": 1, "c": 2})


@pytest.mark.anyio
async def test_retry_waits_its_backoff_in_virtual_time() -> None:
    calls: Counter[str] = Counter()

    async def flaky(x: str) -> str:
        calls[x] += 1
        if calls[x] < 3:
            raise ConnectionError(f"try {calls[x]}")
        return x.upper()

    backoff = Backoff(initial=0.02, multiplier=2.0, jitter="none", max_attempts=4)
    # two failures: waits of 20 ms and 40 ms before the third call succeeds
    await assert_marbles(retry(flaky, backoff), "-a|", "-------(A|)")
    assert calls["a"] == 3


@pytest.mark.anyio
async def test_retry_gives_up_after_max_attempts() -> None:
    async def broken(x: str) -> str:
        raise ConnectionError("down")

    backoff = Backoff(initial=0.02, multiplier=1.0, jitter="none", max_attempts=3)
    await assert_marbles(retry(broken, backoff), "-a|", "-----#", errors=ConnectionError)


@pytest.mark.anyio
async def test_merge_interleaves_by_time() -> None:
    await assert_marbles(merge(marble_source("-a--b|"), marble_source("--x|")), None, "-ax-b|")


@pytest.mark.asyncio
async def test_merge_error_under_pytest_asyncio() -> None:
    await assert_marbles(merge(marble_source("-a--b|"), marble_source("--#")), None, "-a#")
