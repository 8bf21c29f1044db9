"""Select operators: take/firstN, skip, every_n/everyN, take_while, drop_while, until."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, segment
from talkpipe_async.operators import drop_while, every_n, everyN, firstN, skip, take, take_while, until
from tests.ops_a_helpers import LOOPS, Gate, items_of, run_collect

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=50, deadline=None)
ints = st.lists(st.integers(-20, 20), max_size=40)


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=ints, n=st.integers(0, 10), m=st.integers(1, 5))
def test_counting_selectors_match_slices(loop: Any, xs: list[int], n: int, m: int) -> None:
    assert run_collect(loop, take(n), xs) == xs[:n]
    assert run_collect(loop, skip(n), xs) == xs[n:]
    assert run_collect(loop, every_n(m), xs) == xs[m - 1 :: m]


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=ints, bound=st.integers(-20, 20), inclusive=st.booleans())
def test_predicate_selectors_match_itertools(loop: Any, xs: list[int], bound: int, inclusive: bool) -> None:
    def pred(x: int) -> bool:
        return x < bound

    async def apred(x: int) -> bool:
        return x < bound

    assert run_collect(loop, take_while(pred), xs) == list(itertools.takewhile(pred, xs))
    assert run_collect(loop, drop_while(apred), xs) == list(itertools.dropwhile(pred, xs))
    head = list(itertools.takewhile(pred, xs))
    stop_at = len(head)
    expected = head + (xs[stop_at : stop_at + 1] if inclusive else [])
    assert run_collect(loop, until(lambda x: not pred(x), inclusive=inclusive), xs) == expected


async def test_aliases() -> None:
    assert firstN is take and everyN is every_n
    assert await firstN(2).collect(range(5)) == [0, 1]


async def test_take_does_not_read_past_n() -> None:
    pulled: list[int] = []

    @segment
    async def spy(items: Any) -> Any:
        async for x in items:
            pulled.append(x)
            yield x

    assert await (items_of(list(range(10))) | spy() | take(3)).collect() == [0, 1, 2]
    assert pulled == [0, 1, 2]
    pulled.clear()
    assert await (items_of(list(range(10))) | spy() | take(0)).collect() == []
    assert pulled == []


async def test_metadata_passes_selectors() -> None:
    data: list[Any] = [1, Flush(), 2, 3, Flush(), 4]
    out = await (items_of(data) | skip(1) | every_n(1) | take(2)).collect(metadata=True)
    assert out == [Flush(), 2, 3]


async def test_until_event_stops_while_upstream_waits() -> None:
    gate = Gate([1, 2, 3])
    stop = anyio.Event()
    got: list[int] = []
    with anyio.fail_after(5):
        async with (gate.source() | until(stop)).stream() as items:
            async for x in items:
                got.append(x)
                if x == 3:
                    await gate.waiting.wait()
                    stop.set()  # the source is blocked: until must still end the stream
        assert gate.closed.is_set()  # the feeder task ended and the source was closed
    assert got == [1, 2, 3]


async def test_until_event_already_set_and_metadata() -> None:
    stop = anyio.Event()
    stop.set()
    assert await (items_of([1, 2]) | until(stop)).collect() == []
    other = anyio.Event()
    data: list[Any] = [1, Flush(), 2]
    assert await (items_of(data) | until(other)).collect(metadata=True) == data


async def test_until_event_passes_upstream_error() -> None:
    @segment
    async def boom(items: Any) -> Any:
        async for x in items:
            if x == 2:
                raise RuntimeError("boom at 2")
            yield x

    with pytest.raises(RuntimeError, match="boom at 2"):
        await (items_of([1, 2, 3]) | boom() | until(anyio.Event())).collect()


async def test_break_in_consumer_closes_until_feeder() -> None:
    gate = Gate([1, 2])
    with anyio.fail_after(5):
        async with (gate.source() | until(anyio.Event())).stream() as items:
            async for _ in items:
                break
    assert gate.closed.is_set()


def test_validation() -> None:
    with pytest.raises(ValueError):
        take(-1)
    with pytest.raises(ValueError):
        every_n(0)
