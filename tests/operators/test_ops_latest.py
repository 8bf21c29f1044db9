"""Operators driven by another stream or by the latest value.

take_until, sample, switch_map, with_latest_from, combine_latest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, source
from talkpipe_async.operators import (
    combine_latest,
    interval,
    map,
    merge,
    sample,
    switch_map,
    take,
    take_until,
    timer,
    with_latest_from,
)
from talkpipe_async.sources import empty, just, never, throw
from tests.helpers.ops_a import LOOPS, Gate, on_mock_clock, run_collect, timed

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


def _sample_reference(schedule: list[tuple[float, int]], every: float) -> list[tuple[float, int]]:
    out: list[tuple[float, int]] = []
    latest: int | None = None
    tick = every
    for at, x in schedule:
        while tick < at:
            if latest is not None:
                out.append((round(tick, 6), latest))
                latest = None
            tick += every
        latest = x
    if latest is not None:
        out.append((schedule[-1][0], latest))  # the end of the stream yields the waiting item at once
    return out


@PROPS
@given(times=st.lists(st.integers(0, 40), max_size=20, unique=True))
def test_sample_matches_reference_on_virtual_time(times: list[int]) -> None:
    # Items at 0.03 + k/10 s, ticks every 0.25 s: never at the same instant.
    schedule = [(round(0.03 + t / 10, 6), t) for t in sorted(times)]
    stage = sample(0.25)
    assert on_mock_clock(timed(schedule) | stage) == _sample_reference(schedule, 0.25)
    assert stage.dropped == len(schedule) - len(_sample_reference(schedule, 0.25))


def test_sample_skips_empty_ticks_and_flushes() -> None:
    flush = Flush()
    schedule = [(0.1, "a"), (0.2, "b"), (1.6, "c"), (1.7, flush), (2.2, "d")]
    out = on_mock_clock(timed(schedule) | sample(0.5), metadata=True)
    assert out == [(0.5, "b"), (1.7, "c"), (1.7, flush), (2.2, "d")]


async def test_sample_closes_upstream_on_early_stop(anyio_backend: Any) -> None:
    gate = Gate([1])
    with anyio.fail_after(10):
        assert await (gate.source() | sample(0.01) | take(1)).collect() == [1]
        await gate.closed.wait()
    with pytest.raises(ValueError):
        sample(0)


def _inner_schedule(x: int) -> list[tuple[float, Any]]:
    # Item x's inner stream: x values, 0.1 s apart, starting 0.05 s after the item.
    return [(0.05 + 0.1 * j, (x, j)) for j in range(x)]


def _switch_reference(schedule: list[tuple[float, int]]) -> list[tuple[float, Any]]:
    out: list[tuple[float, Any]] = []
    for i, (at, x) in enumerate(schedule):
        until = schedule[i + 1][0] if i + 1 < len(schedule) else float("inf")
        out += [(round(at + d, 6), y) for d, y in _inner_schedule(x) if at + d < until]
    return out


@PROPS
@given(times=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5)), max_size=12, unique_by=lambda p: p[0]))
def test_switch_map_matches_reference_on_virtual_time(times: list[tuple[int, int]]) -> None:
    # Items at whole tenths, inner values at tenths + 0.05: a switch never ties with an inner value.
    schedule = [(t / 10, n) for t, n in sorted(times)]
    out = on_mock_clock(timed(schedule) | switch_map(lambda x: timed(_inner_schedule(x))))
    assert out == _switch_reference(schedule)


async def test_switch_map_accepts_every_kind_of_inner(anyio_backend: Any) -> None:
    async def agen(x: int) -> AsyncIterator[int]:
        yield x
        yield -x

    async def alist(x: int) -> list[int]:
        await anyio.lowlevel.checkpoint()
        return [x, x]

    with anyio.fail_after(10):
        # one upstream item: its inner stream runs to its end
        assert await (just(3) | switch_map(agen)).collect() == [3, -3]
        assert await (just(3) | switch_map(alist)).collect() == [3, 3]
        assert await (just(3) | switch_map(lambda x: [x] * x)).collect() == [3, 3, 3]
        assert await (just(2) | switch_map(lambda x: just(x) | map(str))).collect() == ["2"]
        flush = Flush()
        assert await (just(flush, 1) | switch_map(lambda x: [x])).collect(metadata=True) == [flush, 1]


async def test_switch_map_cancels_and_closes_the_previous_inner(anyio_backend: Any) -> None:
    upstream = Gate(["a"], ["b"])
    inners: dict[str, Gate] = {"a": Gate(["a1"]), "b": Gate(["b1"], ["b2"])}
    with anyio.fail_after(10):
        async with (upstream.source() | switch_map(lambda k: inners[k].source())).stream() as items:
            assert await items.__anext__() == "a1"
            await inners["a"].waiting.wait()
            upstream.release.set()  # "b" arrives: the inner stream of "a" is cancelled and closed
            assert await items.__anext__() == "b1"
            assert inners["a"].closed.is_set()
            inners["b"].release.set()
            assert [x async for x in items] == ["b2"]  # upstream ended: the last inner runs to its end
        await inners["b"].closed.wait()
        # stopping early closes the running inner stream and the upstream
        gate, up = Gate(["x"]), Gate([1])
        assert await (up.source() | switch_map(lambda _: gate.source()) | take(1)).collect() == ["x"]
        await gate.closed.wait()
        await up.closed.wait()


async def test_switch_map_errors_name_the_stage_and_item(anyio_backend: Any) -> None:
    def boom(x: int) -> list[int]:
        raise KeyError(x)

    with anyio.fail_after(10):
        with pytest.raises(KeyError) as info:
            await (just(7) | switch_map(boom)).collect()
        notes = "".join(getattr(info.value, "__notes__", []))
        assert "switch_map(boom)" in notes and "7" in notes
        # an inner error while the upstream waits ends the stream with that error
        with pytest.raises(ValueError, match="inner"):
            await (merge(just(1), never()) | switch_map(lambda _: throw(ValueError("inner")))).collect()
        with pytest.raises(ValueError, match="up"):
            await (throw(ValueError("up")) | switch_map(lambda x: [x])).collect()


# Two timed streams for the latest-value operators: items at whole tenths (upstream) and at tenths + 0.05 (other),
# so no two arrivals tie.
_TIMES = st.lists(st.integers(0, 30), max_size=12, unique=True)


def _schedules(up: list[int], other: list[int]) -> tuple[list[tuple[float, Any]], list[tuple[float, Any]]]:
    return [(t / 10, f"u{t}") for t in sorted(up)], [(t / 10 + 0.05, f"o{t}") for t in sorted(other)]


@PROPS
@given(up=_TIMES, other=_TIMES)
def test_with_latest_from_matches_reference(up: list[int], other: list[int]) -> None:
    ups, others = _schedules(up, other)
    expected = []
    for at, x in ups:
        seen = [y for bt, y in others if bt < at]
        if seen:
            expected.append((at, (x, seen[-1])))
    stage = with_latest_from(timed(others))
    assert on_mock_clock(timed(ups) | stage) == expected
    assert stage.skipped == len(ups) - len(expected)


@PROPS
@given(up=_TIMES, other=_TIMES)
def test_combine_latest_matches_reference(up: list[int], other: list[int]) -> None:
    ups, others = _schedules(up, other)
    events = sorted([(t, 0, x) for t, x in ups] + [(t, 1, y) for t, y in others])
    expected: list[tuple[float, Any]] = []
    last: list[Any] = [None, None]
    if not ups or not others:
        events = []  # an input that ends without an item ends the stream at once
    for t, i, x in events:
        last[i] = x
        if None not in last:
            expected.append((round(t, 6), tuple(last)))
    out = on_mock_clock(timed(ups) | combine_latest(timed(others)))
    assert out == expected


async def test_latest_operators_pass_metadata_and_close_the_others(anyio_backend: Any) -> None:
    flush = Flush()
    with anyio.fail_after(10):
        g1, g2 = Gate(["o"]), Gate(["o"])
        up = Gate([])

        @source
        async def after_other() -> AsyncIterator[Any]:
            await g1.waiting.wait()  # the other stream has emitted
            yield 1
            yield flush
            yield 2

        out = await (after_other() | with_latest_from(g1.source())).collect(metadata=True)
        assert out == [(1, "o"), flush, (2, "o")]
        await g1.closed.wait()
        out = await (just(1, flush) | combine_latest(g2.source()) | take(1)).collect(metadata=True)
        assert out in ([(1, "o")], [flush, (1, "o")])
        await g2.closed.wait()
        # an other stream that ends without an item: combine_latest ends at once, closing the upstream
        assert await (up.source() | combine_latest(empty())).collect() == []
        await up.closed.wait()


async def test_latest_operators_fail_with_the_other_stream(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        with pytest.raises(ValueError, match="rates down") as info:
            await (never() | with_latest_from(throw(ValueError("rates down"), name="rates"))).collect()
        assert "rates" in "".join(getattr(info.value, "__notes__", []))
        with pytest.raises(ValueError, match="rates down"):
            await (never() | combine_latest(throw(ValueError("rates down")))).collect()
        with pytest.raises(ValueError, match="up"):
            await (throw(ValueError("up")) | combine_latest(never())).collect()
    with pytest.raises(TypeError):
        with_latest_from()
    with pytest.raises(TypeError):
        combine_latest()


async def test_switch_map_never_leaks_items_of_a_switched_stream(anyio_backend: Any) -> None:
    # A fast upstream against inner streams that pause at every item: switches happen at every step. Whatever the
    # scheduling, the output is ordered by upstream item, each inner stream's items are a prefix of it, and the
    # last inner stream is complete.
    closed: list[int] = []

    async def inner(x: int) -> AsyncIterator[tuple[int, int]]:
        try:
            for j in range(5):
                await anyio.lowlevel.checkpoint()
                yield (x, j)
        finally:
            await anyio.lowlevel.checkpoint()  # a finally that awaits, even when cancelled
            closed.append(x)

    @source
    async def fast() -> AsyncIterator[int]:
        for i in range(2000):
            for _ in range(i % 9):  # from no pause to longer than an inner stream: switches cut them anywhere
                await anyio.lowlevel.checkpoint()
            yield i

    with anyio.fail_after(50):
        out = await (fast() | switch_map(inner)).collect()
    xs = [x for x, _ in out]
    assert xs == sorted(xs)
    per_item: dict[int, list[int]] = {}
    for x, j in out:
        per_item.setdefault(x, []).append(j)
    assert all(js == list(range(len(js))) for js in per_item.values())
    assert out[-5:] == [(1999, j) for j in range(5)]
    lengths = {len(js) for js in per_item.values()}
    assert len(per_item) > 100 and {1, 5} <= lengths  # streams were cut short and others ran to their end
    assert sorted(closed) == sorted(set(closed)) and closed[-1] == 1999  # each inner stream closed once, in turn


async def test_cancelling_the_run_closes_the_inner_and_other_streams(anyio_backend: Any) -> None:
    inner, other, up1, up2 = Gate(["i"]), Gate(["o"]), Gate([1]), Gate([1])
    with anyio.fail_after(10):
        for pipeline, gates in (
            (up1.source() | switch_map(lambda _: inner.source()), [inner, up1]),
            (up2.source() | combine_latest(other.source()), [other, up2]),
        ):
            with anyio.CancelScope() as scope:
                async with pipeline.stream() as items:
                    async for _ in items:
                        for gate in gates:
                            await gate.waiting.wait()
                        scope.cancel()
            assert scope.cancelled_caught
            for gate in gates:
                await gate.closed.wait()


@source
async def _counting(n: int, every: int) -> AsyncIterator[int]:
    for i in range(n):
        if i % every == 0:
            await anyio.lowlevel.checkpoint()
        yield i


async def test_latest_operators_at_a_high_rate_keep_their_counts(anyio_backend: Any) -> None:
    # Whatever the interleaving: tuples only move forward, the last one holds every input's last item, and every
    # item is accounted for (yielded in a tuple, counted as skipped, or the first of an input before all emitted).
    with anyio.fail_after(50):
        stage = combine_latest(_counting(3000, 7), _counting(2000, 3), capacity=8)
        out = await (_counting(4000, 5) | stage).collect()
        assert out[-1] == (3999, 2999, 1999)
        for k in range(3):
            column = [t[k] for t in out]
            assert column == sorted(column)
        assert len(out) == 9000 - stage.skipped - 2
        pairing = with_latest_from(_counting(3000, 2))
        paired = await (_counting(4000, 3) | pairing).collect()
        assert len(paired) == 4000 - pairing.skipped
        assert [u for u, _ in paired] == sorted(u for u, _ in paired)
        assert [o for _, o in paired] == sorted(o for _, o in paired)
