"""Select operators: take/firstN, skip, every_n/everyN, take_while, drop_while, until."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, error_context, segment, source
from talkpipe_async.operators import drop_while, every_n, everyN, firstN, skip, take, take_while, until
from tests.helpers.ops_a import LOOPS, Gate, items_of, run_collect

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
    with pytest.raises(ValueError, match=r"^take: n must be at least 0, not -1$"):
        take(-1)
    with pytest.raises(ValueError, match=r"^skip: n must be at least 0, not -1$"):
        skip(-1)
    with pytest.raises(ValueError, match=r"^every_n: n must be at least 1, not 0$"):
        every_n(0)
    with pytest.raises(ValueError, match=r"^until: n must be at least 1, not 0$"):
        until(anyio.Event(), read_ahead=0)


async def test_predicates_may_be_sync_or_async_and_see_each_item() -> None:
    xs = [1, 2, 5, 1]

    def small(x: int) -> bool:
        return x < 3

    async def async_small(x: int) -> bool:
        return x < 3

    async def async_big(x: int) -> bool:
        return x >= 3

    for pred in (small, async_small):
        assert await take_while(pred).collect(xs) == [1, 2]
        assert await drop_while(pred).collect(xs) == [5, 1]
    assert await until(async_big).collect(xs) == [1, 2]
    assert await until(async_big, inclusive=True).collect(xs) == [1, 2, 5]


def test_default_stage_names() -> None:
    """The names that stats, progress tables and error notes show."""
    stages = (take(1), skip(1), every_n(1), take_while(bool), drop_while(bool), until(bool), until(anyio.Event()))
    assert [s.name for s in stages] == ["take", "skip", "every_n", "take_while", "drop_while", "until", "until"]
    assert [take(1, name="first").name, skip(1, name="rest").name] == ["first", "rest"]


async def test_until_is_exclusive_by_default() -> None:
    assert await until(lambda x: x == 2).collect([1, 2, 3]) == [1]


async def test_an_error_in_a_predicate_names_the_stage() -> None:
    def bad(x: int) -> bool:
        raise ValueError(f"bad {x}")

    for stage, name in ((take_while(bad), "take_while"), (drop_while(bad), "drop_while"), (until(bad), "until"),
                        (take_while(bad, name="gate"), "gate")):
        with pytest.raises(ValueError, match="bad 7") as info:
            await stage.collect([7])
        context = error_context(info.value)
        assert context is not None and context.segment == name


async def _pulled_while_the_consumer_holds_the_first_item(stage: until[int]) -> tuple[int, set[str]]:
    """How many items the upstream gave while the consumer sits on item 0; the names of the tasks then running."""
    pulled = 0

    @source
    async def counting() -> Any:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield i

    async with (counting() | stage).stream() as items:
        async for _ in items:
            await anyio.wait_all_tasks_blocked()  # the feeder has filled its read-ahead and waits
            return pulled, {t.name or "" for t in anyio.get_running_tasks()}
    raise AssertionError("no item")


async def test_until_event_reads_ahead_one_item_by_default_in_named_tasks() -> None:
    default, names = await _pulled_while_the_consumer_holds_the_first_item(until(anyio.Event()))
    one, _ = await _pulled_while_the_consumer_holds_the_first_item(until(anyio.Event(), read_ahead=1))
    three, _ = await _pulled_while_the_consumer_holds_the_first_item(until(anyio.Event(), read_ahead=3))
    # The consumer holds item 0: read_ahead items wait in the feed, up to read_ahead - 1 more came with item 0, and
    # the feeder holds one: at most 2 * read_ahead items read ahead (docs/operators-a.md).
    assert (default, one, three) == (1 + 2 * 1, 1 + 2 * 1, 1 + 2 * 3)
    assert {"talkpipe_async feed of until", "talkpipe_async stop watch of until"} <= names
    _, named = await _pulled_while_the_consumer_holds_the_first_item(until(anyio.Event(), name="halt"))
    assert {"talkpipe_async feed of halt", "talkpipe_async stop watch of halt"} <= named
