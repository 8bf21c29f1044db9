"""Latest-value operators (``talkpipe_async.operators.latest``): names, limits and edges found unchecked.

Default stage names label stats, progress tables and error notes, and the tasks of a run carry them; the validation
messages name the operator and the bad value; the read-ahead and lane bounds are exact; counters start at zero;
several other streams each keep their own latest item; combine_latest takes its inputs in turn; a switched inner
stream is closed, within the cleanup bound, before the next starts.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from talkpipe_async import Flush, source
from talkpipe_async.operators import combine_latest, sample, switch_map, take, take_until, with_latest_from
from talkpipe_async.sources import empty, just, never
from tests.helpers.ops_a import Gate, timed
from tests.helpers.sources import Countdown

pytestmark = pytest.mark.anyio


def test_default_names_and_given_names() -> None:
    assert take_until(never()).label == "take_until"
    assert sample(1.0).label == "sample"
    assert with_latest_from(never()).label == "with_latest_from"
    assert combine_latest(never()).label == "combine_latest"

    def search(q: str) -> list[str]:
        return [q]

    class Lookup:
        def __call__(self, q: str) -> list[str]:
            return [q]

    assert switch_map(search).label == "switch_map(search)"
    assert switch_map(Lookup()).label == "switch_map(Lookup)"  # a callable without __name__: its type's name
    assert take_until(never(), name="a").label == "a"
    assert sample(1.0, name="b").label == "b"
    assert switch_map(search, name="c").label == "c"
    assert with_latest_from(never(), name="d").label == "d"
    assert combine_latest(never(), name="e").label == "e"


def test_validation_names_the_operator_and_the_value() -> None:
    with pytest.raises(ValueError, match=r"^take_until: read_ahead must be at least 1, not 0$"):
        take_until(never(), read_ahead=0)
    assert take_until(never(), read_ahead=1).read_ahead == 1
    assert take_until(never()).read_ahead == 1
    with pytest.raises(ValueError, match=r"^sample: seconds must be positive, not 0$"):
        sample(0)
    with pytest.raises(ValueError, match=r"^sample: seconds must be positive, not -1.0$"):
        sample(-1.0)
    with pytest.raises(ValueError, match=r"^sample: seconds must be positive, not nan$"):
        sample(math.nan)
    assert sample(0.5).seconds == 0.5 and sample(0.5).dropped == 0
    with pytest.raises(ValueError, match=r"^switch_map: capacity must be at least 1, not 0$"):
        switch_map(list, capacity=0)
    assert switch_map(list, capacity=1).capacity == 1
    with pytest.raises(TypeError, match=r"^with_latest_from: give at least one other stream$"):
        with_latest_from()
    with pytest.raises(TypeError, match=r"^combine_latest: give at least one other stream$"):
        combine_latest()
    assert with_latest_from(never()).skipped == 0 and combine_latest(never()).skipped == 0
    assert combine_latest(never(), capacity=5).capacity == 5


async def test_the_tasks_of_a_run_carry_the_stage_name(anyio_backend: Any) -> None:
    names: set[str] = set()

    @source
    async def upstream() -> AsyncIterator[int]:
        for _ in range(5):  # let the watchers and input readers start
            await anyio.lowlevel.checkpoint()
        names.update(t.name for t in anyio.get_running_tasks() if t.name)
        yield 1

    with anyio.fail_after(10):
        assert await (upstream() | take_until(never(), name="tu")).collect() == [1]
        assert await (upstream() | sample(100.0, name="sm")).collect() == [1]
        assert await (upstream() | switch_map(lambda x: [x], name="sw")).collect() == [1]
        assert await (
            upstream() | with_latest_from(Gate(["b"]).source(), Gate(["c"]).source(), name="wl")
        ).collect() == [(1, "b", "c")]
        # the others never end: take(1) ends the stream once the first tuple is out
        combined = upstream() | combine_latest(Gate(["b"]).source(), Gate(["c"]).source(), name="cl") | take(1)
        assert await combined.collect() == [(1, "b", "c")]
    assert {
        "talkpipe_async watcher of tu",
        "talkpipe_async feed of tu",
        "talkpipe_async stop watch of tu",
        "talkpipe_async feed of sm",
        "talkpipe producer of sw",
        "talkpipe_async feed of wl",
        "talkpipe_async stop watch of wl",
        "talkpipe_async watcher 0 of wl",
        "talkpipe_async watcher 1 of wl",
        "talkpipe_async feeder of cl",
        "talkpipe_async input 1 of cl",
        "talkpipe_async input 2 of cl",
    } <= names


@source
async def _endless(pulled: list[int], first: Any = None) -> AsyncIterator[Any]:
    if first is not None:
        yield first
    i = 0
    while True:
        pulled.append(i)
        yield i
        i += 1


async def _pulled_while_holding(pipeline: Any, pulled: list[int], *, metadata: bool = False) -> tuple[Any, int]:
    """Take one item and hold it while the run's tasks read ahead as far as they may; how many were read."""
    async with pipeline.stream(metadata=metadata) as items:
        x = await items.__anext__()
        for _ in range(3000):
            await anyio.lowlevel.checkpoint()
        return x, len(pulled)


async def test_read_ahead_and_lane_bounds(anyio_backend: Any) -> None:
    with anyio.fail_after(20):
        # take_until: at most 2 * read_ahead items past the one the consumer holds
        pulled: list[int] = []
        x, n = await _pulled_while_holding(_endless(pulled) | take_until(never()), pulled)
        assert x == 0 and 1 < n <= 1 + 2
        pulled = []
        x, n = await _pulled_while_holding(_endless(pulled) | take_until(never(), read_ahead=3), pulled)
        assert x == 0 and 3 < n <= 1 + 2 * 3
        # sample: at most 2 * 256 items read while the consumer holds what sample yielded (here a Flush)
        pulled = []
        flush = Flush()
        x, n = await _pulled_while_holding(_endless(pulled, flush) | sample(100.0), pulled, metadata=True)
        assert x is flush and 256 < n <= 2 * 256
        # switch_map: capacity items wait between the producer task and the stage
        pulled = []
        x, n = await _pulled_while_holding(just(1) | switch_map(lambda _: _endless(pulled), capacity=3), pulled)
        assert x == 0 and 3 < n <= 1 + 2 * 3
        pulled = []
        x, n = await _pulled_while_holding(just(1) | switch_map(lambda _: _endless(pulled)), pulled)
        assert x == 0 and 64 < n <= 1 + 2 * 64
        # with_latest_from: the upstream runs ahead by one item
        pulled = []
        x, n = await _pulled_while_holding(_endless(pulled) | with_latest_from(Gate(["o"]).source()), pulled)
        assert x[1] == "o" and n <= x[0] + 1 + 2
        # combine_latest: each input's lane holds at most capacity items
        pulled = []
        x, n = await _pulled_while_holding(_endless(pulled) | combine_latest(just("o"), capacity=4), pulled)
        assert x[1] == "o" and x[0] + 4 < n <= x[0] + 1 + 2 * 4


async def test_sample_yields_the_held_item_before_a_flush_and_counts_replaced_items(anyio_backend: Any) -> None:
    flush = Flush()
    stage: sample[Any] = sample(100.0)
    with anyio.fail_after(10):
        # no tick comes: a Flush with nothing held passes alone; one with an item held yields the newest first
        out = await (just(flush, 1, 2, 3, flush, 4, 5) | stage).collect(metadata=True)
    assert out == [flush, 3, flush, 5]
    assert stage.dropped == 3  # 1, 2 and 4 were replaced before any tick
    with anyio.fail_after(10):
        assert await (just(6) | stage).collect() == [6]
    assert stage.dropped == 3  # counted over every run of the instance


async def test_with_latest_from_waits_for_every_other_stream(anyio_backend: Any) -> None:
    b, c = Gate(["b1", "b2"]), Gate([], ["c1"])
    flush = Flush()

    @source
    async def upstream() -> AsyncIterator[Any]:
        await b.waiting.wait()
        yield 1  # c has not emitted yet: left out
        yield flush  # the consumer sees it once 1 has been handled, and lets c emit
        await c.closed.wait()  # c emitted its item and ended: its last item is kept
        yield 2
        yield 3

    stage = with_latest_from(b.source(), c.source())
    out: list[Any] = []
    with anyio.fail_after(10):
        async with (upstream() | stage).stream(metadata=True) as items:
            async for x in items:
                out.append(x)
                if x is flush:
                    c.release.set()
        await b.closed.wait()
    assert out == [flush, (2, "b2", "c1"), (3, "b2", "c1")]
    assert stage.skipped == 1


async def test_combine_latest_over_three_inputs(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        stage: combine_latest[Any, Any] = combine_latest(just("b"), just("c"))
        out: list[Any] = await (just(1) | stage).collect()
        assert out == [(1, "b", "c")]
        assert stage.skipped == 0
        # the upstream's metadata passes through in order, between the tuples around it
        flush = Flush()
        g = Gate(["o"])

        @source
        async def after_other() -> AsyncIterator[Any]:
            await g.waiting.wait()  # the other stream's item is in its lane
            yield 1
            yield flush
            yield 2

        out = await (after_other() | combine_latest(g.source()) | take(2)).collect(metadata=True)
        assert out == [(1, "o"), flush, (2, "o")]
        await g.closed.wait()
        # an upstream item replaced before the other stream has emitted is left out and counted
        late = Gate([], ["o"])

        @source
        async def early() -> AsyncIterator[Any]:
            yield 1
            yield 2
            yield 3
            yield flush  # the consumer sees it once 1, 2 and 3 have been taken, and lets the other emit

        stage = combine_latest(late.source())
        out = []
        async with (early() | stage).stream(metadata=True) as items:
            async for x in items:
                out.append(x)
                if x is flush:
                    late.release.set()
        assert out == [flush, (3, "o")]
        assert stage.skipped == 2
        # one input that ends without an item ends the stream at once, whatever the others do
        up, other = Gate([1]), Gate(["o"])
        assert await (up.source() | combine_latest(other.source(), empty())).collect() == []
        await up.closed.wait()
        await other.closed.wait()
        # an error comes after the tuples before it
        b = Gate(["b"])

        @source
        async def failing() -> AsyncIterator[int]:
            await b.waiting.wait()
            yield 1
            yield 2
            raise ValueError("up failed")

        got: list[Any] = []
        with pytest.raises(ValueError, match="up failed"):
            async with (failing() | combine_latest(b.source())).stream() as items:
                async for x in items:
                    got.append(x)
        assert got == [(1, "b"), (2, "b")]
        await b.closed.wait()


async def test_switch_map_async_fn_returning_a_pipeline_and_inner_metadata(anyio_backend: Any) -> None:
    flush = Flush()

    async def lookup(x: int) -> Any:
        await anyio.lowlevel.checkpoint()
        return just(x, flush, x + 1)

    async def agen(x: Any) -> AsyncIterator[Any]:
        yield x

    with anyio.fail_after(10):
        assert await (just(1) | switch_map(lookup)).collect(metadata=True) == [1, 2]  # the inner Flush stays inside
        assert await (just(flush, 5) | switch_map(agen)).collect(metadata=True) == [flush, 5]


async def test_take_until_ends_with_the_error_after_the_items_before_it(anyio_backend: Any) -> None:
    up = Gate([1, 2])
    with anyio.fail_after(10):
        got: list[Any] = []

        @source
        async def other() -> AsyncIterator[Any]:
            await up.waiting.wait()
            raise ValueError("signal failed")
            yield  # pragma: no cover

        with pytest.raises(ValueError, match="signal failed"):
            async with (up.source() | take_until(other())).stream() as items:
                async for x in items:
                    got.append(x)
        assert got == [1, 2]
        await up.closed.wait()


async def test_switch_map_closes_a_switched_async_generator_before_the_next_starts(anyio_backend: Any) -> None:
    # The inner generator is paused at a yield (its item waits for room in a full lane) when the switch comes: it is
    # closed, its finally running to its end even though it awaits, before the next inner stream starts.
    events: list[Any] = []
    second = anyio.Event()

    async def inner(x: int) -> AsyncIterator[int]:
        events.append(("start", x))
        try:
            while True:
                yield x
        finally:
            await anyio.lowlevel.checkpoint()
            events.append(("end", x))

    @source
    async def upstream() -> AsyncIterator[int]:
        yield 1
        await second.wait()
        yield 2

    with anyio.fail_after(10):
        async with (upstream() | switch_map(inner, capacity=1)).stream() as items:
            assert await items.__anext__() == 1
            second.set()
            async for x in items:
                if x == 2:
                    break
    assert events[:3] == [("start", 1), ("end", 1), ("start", 2)]
    assert events.count(("end", 2)) == 1


def test_switch_map_gives_a_switched_inner_stream_a_bounded_time_to_close() -> None:
    # An inner generator, paused at a yield, whose finally never ends is given up on after the cleanup bound (ten
    # seconds, here of virtual time); the next inner stream then runs.
    from trio.testing import MockClock

    async def inner(x: int) -> AsyncIterator[int]:
        try:
            while True:
                yield x
        finally:
            if x == 1:
                await anyio.sleep_forever()

    async def main() -> list[tuple[float, int]]:
        start = anyio.current_time()
        out: list[Any] = []
        async with (timed([(0.0, 1), (0.5, 2)]) | switch_map(inner, capacity=1)).stream() as items:
            async for x in items:
                out.append((round(anyio.current_time() - start, 6), x))
                if x == 2:
                    break
                await anyio.sleep(1.0)  # a slow consumer: the inner generator waits at a yield
        return out

    out = anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    assert out[-1] == (10.5, 2)


async def test_switch_map_accepts_an_async_iterator_without_aclose(anyio_backend: Any) -> None:
    # An async iterable whose iterator has no ``aclose`` (a plain class) is read to its end, and switched away
    # from, without any closing step.
    with anyio.fail_after(10):
        assert await (just(3) | switch_map(Countdown)).collect() == [2, 1, 0]
        out = await (just(1000, 2) | switch_map(Countdown)).collect()
        assert out[-2:] == [1, 0]


async def test_combine_latest_takes_the_inputs_in_turn(anyio_backend: Any) -> None:
    # While the consumer holds an item, both lanes fill; then each round takes one item of each input in turn, a
    # metadata item included: after the two Flushes the other stream has given o1 and o2, so the first tuple
    # already holds o2 (o1 is replaced before the upstream's first item, and counted in ``skipped``).
    flush0, flush = Flush(), Flush()
    held, up_done = anyio.Event(), anyio.Event()
    other = Gate([], ["o1", "o2"])

    @source
    async def upstream() -> AsyncIterator[Any]:
        yield flush0
        await held.wait()
        yield flush
        yield 1
        yield 2
        up_done.set()

    out: list[Any] = []
    stage: combine_latest[Any, Any] = combine_latest(other.source())
    with anyio.fail_after(10):
        async with (upstream() | stage).stream(metadata=True) as items:
            async for x in items:
                out.append(x)
                if x is flush0:
                    held.set()
                    other.release.set()
                    await up_done.wait()
                    await other.closed.wait()
    assert out == [flush0, flush, (1, "o2"), (2, "o2")]
    assert stage.skipped == 1
