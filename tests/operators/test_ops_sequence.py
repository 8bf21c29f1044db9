"""Sequence operators: pairwise, starmap, take_last, skip_last, timestamp, time_interval."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, source
from talkpipe_async.operators import (
    TimeInterval,
    Timestamped,
    filter,
    interval,
    map,
    pairwise,
    skip_last,
    starmap,
    take,
    take_last,
    time_interval,
    timestamp,
)
from talkpipe_async.sources import just
from tests.helpers.ops_a import LOOPS, on_mock_clock, run_collect, timed

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=40, deadline=None)


async def _add(a: int, b: int) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=st.lists(st.integers(), max_size=30), n=st.integers(0, 35))
def test_match_plain_python(loop: Any, xs: list[int], n: int) -> None:
    assert run_collect(loop, pairwise(), xs) == list(itertools.pairwise(xs))
    assert run_collect(loop, take_last(n), xs) == (xs[-n:] if n else [])
    assert run_collect(loop, skip_last(n), xs) == xs[: max(len(xs) - n, 0)]
    pairs = list(itertools.pairwise(xs))
    assert run_collect(loop, starmap(lambda a, b: a - b), pairs) == [a - b for a, b in pairs]
    assert run_collect(loop, starmap(_add) | filter(lambda s: s > 0), pairs) == [a + b for a, b in pairs if a + b > 0]


async def test_starmap_fuses_and_names_its_step(anyio_backend: Any) -> None:
    def div(a: int, b: int) -> float:
        return a / b

    with anyio.fail_after(10):
        with pytest.raises(ZeroDivisionError) as info:
            await (just((1, 1), (1, 0)) | map(lambda p: p) | starmap(div)).collect()
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "starmap(div)" in notes and "(1, 0)" in notes


async def test_metadata_passes(anyio_backend: Any) -> None:
    flush = Flush()
    with anyio.fail_after(10):
        assert await (just(1, flush, 2, 3) | pairwise()).collect(metadata=True) == [flush, (1, 2), (2, 3)]
        assert await (just(1, 2, flush, 3) | skip_last(1)).collect(metadata=True) == [1, flush, 2]
        assert await (just(1, flush, 2) | take_last(5)).collect(metadata=True) == [flush, 1, 2]


async def test_skip_last_is_bounded_and_stops_upstream(anyio_backend: Any) -> None:
    # skip_last(2) over an endless source: each item leaves once two newer ones came; take ends the run.
    closed = anyio.Event()

    @source
    async def endless() -> AsyncIterator[int]:
        try:
            for i in itertools.count():
                yield i
        finally:
            closed.set()

    with anyio.fail_after(10):
        assert await (endless() | skip_last(2) | take(3)).collect() == [0, 1, 2]
        await closed.wait()


def test_timestamp_and_time_interval_on_virtual_time() -> None:
    schedule = [(0.5, "a"), (0.75, "b"), (2.0, "c")]
    out = on_mock_clock(timed(schedule) | time_interval())
    assert [x for _, x in out] == [TimeInterval("a", 0.5), TimeInterval("b", 0.25), TimeInterval("c", 1.25)]
    stamped = on_mock_clock(timed(schedule) | timestamp() | pairwise() | map(lambda p: p[1].time - p[0].time))
    assert [round(d, 6) for _, d in stamped] == [0.25, 1.25]
    ticks = on_mock_clock(interval(0.5, count=2) | time_interval() | map(lambda t: t.interval))
    assert [x for _, x in ticks] == [0.5, 0.5]


async def test_timestamp_reads_the_loop_clock(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        before = anyio.current_time()
        out = await (just(1, 2) | timestamp()).collect()
        after = anyio.current_time()
    assert [t.value for t in out] == [1, 2]
    assert before <= out[0].time <= out[1].time <= after
    assert isinstance(out[0], Timestamped)
    with pytest.raises(AttributeError):
        out[0].value = 3  # type: ignore[misc]


def test_validation() -> None:
    with pytest.raises(ValueError):
        take_last(-1)
    with pytest.raises(ValueError):
        skip_last(-1)
