"""Batch and window operators: batch/makeLists, window, time_window, flush_n/flushN, flush_t/flushT."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, Metadata, segment
from talkpipe_async.operators import batch, flush_n, flush_t, flushN, flushT, makeLists, time_window, window
from tests.helpers.ops_a import LOOPS, Gate, items_of, on_mock_clock, run_collect, timed

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=50, deadline=None)
ints = st.lists(st.integers(0, 99), max_size=50)
# items with Flush / other metadata sprinkled in
mixed = st.lists(st.one_of(st.integers(0, 99), st.just("F"), st.just("M")), max_size=50).map(
    lambda xs: [Flush() if x == "F" else Metadata(tag=1) if x == "M" else x for x in xs]
)


def chunks(xs: list[Any], n: int) -> list[list[Any]]:
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def batch_reference(data: list[Any], size: int) -> list[Any]:
    out: list[Any] = []
    pending: list[Any] = []
    for x in data:
        if isinstance(x, Metadata):
            if isinstance(x, Flush) and pending:
                out.append(pending)
                pending = []
            out.append(x)
            continue
        pending.append(x)
        if len(pending) == size:
            out.append(pending)
            pending = []
    if pending:
        out.append(pending)
    return out


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(data=mixed, size=st.integers(1, 7))
def test_batch_matches_reference_with_metadata(loop: Any, data: list[Any], size: int) -> None:
    expected = batch_reference(data, size)
    assert run_collect(loop, batch(size), data, metadata=True) == expected
    # the timer path (feeder task) gives the same result when the timeout never fires
    assert run_collect(loop, batch(size, timeout=60.0), data, metadata=True) == expected
    assert run_collect(loop, window(size), data, metadata=True) == expected


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=ints, size=st.integers(1, 6), step=st.integers(1, 8))
def test_sliding_window_matches_slices(loop: Any, xs: list[int], size: int, step: int) -> None:
    expected = [xs[i : i + size] for i in range(0, len(xs) - size + 1, step)]
    assert run_collect(loop, window(size, step), xs) == expected


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=ints, n=st.integers(1, 6))
def test_flush_n_then_batch_gives_chunks(loop: Any, xs: list[int], n: int) -> None:
    assert run_collect(loop, flush_n(n) | batch(1000), xs) == chunks(xs, n)
    out = run_collect(loop, flush_n(n), xs, metadata=True)
    assert [x for x in out if not isinstance(x, Metadata)] == xs
    assert sum(isinstance(x, Flush) for x in out) == len(xs) // n


async def test_aliases() -> None:
    assert makeLists is batch and flushN is flush_n and flushT is flush_t


async def test_batch_timeout_fires_without_new_items() -> None:
    gate = Gate([1, 2, 3], [4])
    start = anyio.current_time()
    with anyio.fail_after(5):
        async with (gate.source() | batch(100, timeout=0.05)).stream() as items:
            first = await items.__anext__()
            waited = anyio.current_time() - start
            gate.release.set()
            rest = [b async for b in items]
    assert first == [1, 2, 3]  # the source is still blocked: only the timer can emit this
    assert waited >= 0.045
    assert rest == [[4]]
    assert gate.closed.is_set()


async def test_batch_timer_break_and_error() -> None:
    gate = Gate(list(range(10)))
    with anyio.fail_after(5):
        async with (gate.source() | batch(3, timeout=1.0)).stream() as items:
            async for _ in items:
                break
    assert gate.closed.is_set()

    @segment
    async def boom(items: Any) -> Any:
        async for x in items:
            if x == 4:
                raise RuntimeError("bad item 4")
            yield x

    got: list[Any] = []
    with pytest.raises(RuntimeError, match="bad item 4"):
        async with (items_of(list(range(10))) | boom() | batch(3, timeout=1.0)).stream() as items:
            async for b in items:
                got.append(b)
    assert got == [[0, 1, 2]]  # the items before the error are delivered first


async def test_time_window_tumbling_emits_on_time() -> None:
    gate = Gate([1, 2, 3], [4, 5])
    with anyio.fail_after(5):
        async with (gate.source() | time_window(0.05)).stream(metadata=True) as items:
            first = await items.__anext__()
            gate.release.set()
            rest = [w async for w in items]
    assert first == [1, 2, 3]
    assert [x for w in rest for x in w] == [4, 5]


async def test_time_window_tumbling_cap_and_flush() -> None:
    data: list[Any] = [1, 2, 3, 4, 5, Flush(), 6]
    out = await (items_of(data) | time_window(60.0, max_items=2)).collect(metadata=True)
    assert out == [[1, 2], [3, 4], [5], Flush(), [6]]


async def test_time_window_sliding_overflow_raises() -> None:
    with pytest.raises(BufferError, match="time_window"):
        await (items_of(list(range(10))) | time_window(60.0, every=30.0, max_items=5)).collect()


async def test_flush_t_ticks_while_source_is_idle() -> None:
    gate = Gate([1])
    with anyio.fail_after(5):
        async with (gate.source() | flush_t(0.02)).stream(metadata=True) as items:
            got = [await items.__anext__() for _ in range(3)]
    assert got[0] == 1 and got[1:] == [Flush(), Flush()]


async def test_flush_t_then_batch() -> None:
    gate = Gate([1, 2], [3])
    with anyio.fail_after(5):
        async with (gate.source() | flush_t(0.02) | batch(1000)).stream() as items:
            first = await items.__anext__()
            gate.release.set()
            rest = [b async for b in items]
    assert first == [1, 2] and rest == [[3]]


def test_validation() -> None:
    for make in (lambda: batch(0), lambda: batch(3, timeout=0), lambda: window(2, 0), lambda: flush_t(-1)):
        with pytest.raises(ValueError):
            make()


# ----------------------------------------------------------------- exact timing under trio's MockClock


def test_mock_batch_timeout_exact() -> None:
    out = on_mock_clock(timed([(0.0, 0), (0.05, 1), (0.3, 2), (0.31, 3), (0.32, 4)]) | batch(3, timeout=0.1))
    assert out == [(0.1, [0, 1]), (0.32, [2, 3, 4])]


def test_mock_time_windows_exact() -> None:
    schedule = [(0.4, "a"), (1.4, "b"), (1.7, "c"), (3.2, "d")]  # off the tick grid: no ties
    assert on_mock_clock(timed(schedule) | time_window(1.0)) == [(1.0, ["a"]), (2.0, ["b", "c"]), (3.2, ["d"])]
    sliding = on_mock_clock(timed(schedule) | time_window(1.0, every=0.5))
    assert sliding == [(0.5, ["a"]), (1.0, ["a"]), (1.5, ["b"]), (2.0, ["b", "c"]), (2.5, ["c"])]


def test_mock_flush_t_exact() -> None:
    out = on_mock_clock(timed([(0.25, 1), (1.1, 2)]) | flush_t(0.5), metadata=True)
    assert out == [(0.25, 1), (0.5, Flush()), (1.0, Flush()), (1.1, 2)]
