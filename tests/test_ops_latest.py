"""Operators driven by another stream or by the latest value: take_until."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush
from talkpipe_async.operators import interval, map, take, take_until, timer
from talkpipe_async.sources import empty, just, never, throw
from tests.ops_a_helpers import LOOPS, Gate, on_mock_clock, run_collect, timed

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=30, deadline=None)


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=st.lists(st.integers(), max_size=30))
def test_take_until_a_silent_stream_is_identity(loop: Any, xs: list[int]) -> None:
    data = [Flush() if x % 5 == 0 else x for x in xs]
    assert run_collect(loop, take_until(never()), data, metadata=True) == data
    assert run_collect(loop, take_until(empty()), data, metadata=True) == data  # ended without an item


@PROPS
@given(times=st.lists(st.integers(1, 50), max_size=15, unique=True), stop=st.integers(1, 50))
def test_take_until_on_virtual_time(times: list[int], stop: int) -> None:
    # Items at whole tenths of a second; the other stream emits at stop + 0.05 s: no ties.
    schedule = [(t / 10, t) for t in sorted(times)]
    out = on_mock_clock(timed(schedule) | take_until(timer(stop / 10 + 0.05)))
    assert [x for _, x in out] == [t for t in sorted(times) if t <= stop]


def test_interval_until_timer() -> None:
    assert on_mock_clock(interval(1.0) | take_until(timer(3.5))) == [(1.0, 0), (2.0, 1), (3.0, 2)]


async def test_stops_a_waiting_upstream_and_closes_both(anyio_backend: Any) -> None:
    upstream = Gate([1, 2])
    other = Gate([], ["stop"])
    with anyio.fail_after(10):
        async with (upstream.source() | take_until(other.source())).stream() as items:
            got = [await items.__anext__(), await items.__anext__()]
            await upstream.waiting.wait()
            other.release.set()
            got += [x async for x in items]
        assert got == [1, 2]
        await upstream.closed.wait()
        await other.closed.wait()


async def test_other_is_closed_when_the_stream_ends_first(anyio_backend: Any) -> None:
    other = Gate([])
    with anyio.fail_after(10):
        assert await (just(1, 2) | take_until(other.source()) | map(str)).collect() == ["1", "2"]
        await other.closed.wait()
        other2 = Gate([])
        assert await (interval(0.001) | take_until(other2.source()) | take(2)).collect() == [0, 1]
        await other2.closed.wait()


async def test_error_of_the_other_stream_ends_this_one(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        with pytest.raises(ValueError) as info:
            await (never() | take_until(throw(ValueError("watch failed"), name="watch"))).collect()
    assert "watch" in "".join(getattr(info.value, "__notes__", []))
    with pytest.raises(ValueError):
        take_until(never(), read_ahead=0)
