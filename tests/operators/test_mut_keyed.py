"""Keyed operators (``talkpipe_async.operators.keyed``): hashes, names, settings, bounds and metadata, pinned exactly.

``stable_hash`` is CRC-32 of a tagged encoding of the key, fixed for every kind of key; the default stage names and
settings and the validation texts are what users read; the feeder and the idle sweeper run in tasks named after the
stage; the stats object given (or the stage's own) counts over every run; ``group_by`` evicts the least recently used
group and waits for its flush, and keeps a group whose input still holds items past its idle timeout; ``partition``
passes each metadata item on exactly once, after every live lane has passed it on, whether a lane ends before or
after passing it, even when the upstream yields the same metadata object twice.  The tests run on virtual clocks
(asyncio's VirtualClockLoop and trio's autojumping MockClock): a wait that can never end fails at once through its
deadline, and a short sleep lets every task run until it blocks.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from talkpipe_async import Flush, error_context, segment, source
from talkpipe_async.operators import KeyedStats, batch, group_by, partition, stable_hash, take
from talkpipe_async.testing import virtual_backend

pytestmark = pytest.mark.anyio

DEADLINE = 1000  # virtual seconds: a run that cannot end fails at once instead of hanging


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The anyio tests of this module on each virtual clock."""
    return virtual_backend(request.param)


@source
async def from_list(xs: list[Any], pulled: list[int] | None = None) -> AsyncIterator[Any]:
    """Yield *xs*; append each index to *pulled* as it is produced."""
    for i, x in enumerate(xs):
        if pulled is not None:
            pulled.append(i)
        yield x


async def settle() -> None:
    """Let every task run until it blocks (virtual time: the clock jumps once all are idle)."""
    await anyio.sleep(1)


def lane_of(key: Any, n: int) -> int:
    return stable_hash(key) % n


def keys_in_lanes(n: int, per_lane: int) -> list[list[int]]:
    """For each of *n* lanes, the first *per_lane* small ints that ``partition(lambda x: x, n, ...)`` sends there."""
    lanes: list[list[int]] = [[] for _ in range(n)]
    x = 0
    while any(len(lane) < per_lane for lane in lanes):
        lane = lanes[lane_of(x, n)]
        if len(lane) < per_lane:
            lane.append(x)
        x += 1
    return lanes


# ------------------------------------------------------------------ stable_hash


class SurrogateRepr:
    def __repr__(self) -> str:
        return "Key(\ud800)"


def test_stable_hash_encodes_each_kind_of_key_with_its_tag() -> None:
    """The bytes hashed for each kind of key: ``b`` + bytes, ``s`` + UTF-8 (lone surrogates passed through),
    ``i`` + decimal for ints, ``r`` + the repr for everything else (bools included, not hashed as ints), and
    ``t(`` parts joined by commas ``)`` for tuples, nested ones too."""
    assert stable_hash(b"x") == zlib.crc32(b"bx")
    assert stable_hash("é") == zlib.crc32(b"s\xc3\xa9")
    assert stable_hash("a\ud800") == zlib.crc32(b"sa\xed\xa0\x80")
    assert stable_hash(7) == zlib.crc32(b"i7")
    assert stable_hash(-12) == zlib.crc32(b"i-12")
    assert stable_hash(True) == zlib.crc32(b"rTrue")
    assert stable_hash(None) == zlib.crc32(b"rNone")
    assert stable_hash(1.5) == zlib.crc32(b"r1.5")
    assert stable_hash(SurrogateRepr()) == zlib.crc32(b"rKey(\xed\xa0\x80)")
    assert stable_hash(("a", 1, b"z")) == zlib.crc32(b"t(sa,i1,bz)")
    assert stable_hash((("a",), 2)) == zlib.crc32(b"t(t(sa),i2)")
    assert stable_hash(()) == zlib.crc32(b"t()")
    assert stable_hash(True) != stable_hash(1)


# ------------------------------------------------------------------ names, settings, validation


def test_default_and_given_names_and_stats() -> None:
    """Default labels are ``group_by`` and ``partition(<n>)``; a given name wins; the default settings are
    ``max_keys=1024``, no idle timeout, ``buffer=16`` and ``out_buffer=256``; the stats object given is the stage's,
    else it has its own (all counters zero); ``last_stats`` is None before the first run."""
    g: group_by[Any, Any] = group_by("k", batch(2))
    assert g.label == "group_by" and group_by("k", batch(2), name="per user").label == "per user"
    assert g.last_stats is None
    assert (g.max_keys, g.idle_timeout, g.buffer, g.out_buffer) == (1024, None, 16, 256)
    assert isinstance(g.stats, KeyedStats) and g.stats == KeyedStats()
    p: partition[Any, Any] = partition("k", 3, batch(2))
    assert p.label == "partition(3)" and partition("k", 3, batch(2), name="lanes").label == "lanes"
    assert p.last_stats is None
    assert (p.n, p.buffer, p.out_buffer) == (3, 16, 256)
    assert isinstance(p.stats, KeyedStats) and p.stats == KeyedStats()
    mine = KeyedStats()
    assert group_by("k", batch(2), stats=mine).stats is mine
    assert partition("k", 2, batch(2), stats=mine).stats is mine


def test_validation_texts_and_smallest_accepted_values() -> None:
    """Each bad setting is refused with its own text; the smallest good ones are accepted."""
    with pytest.raises(ValueError, match=r"^max_keys must be at least 1$"):
        group_by("k", batch(2), max_keys=0)
    group_by("k", batch(2), max_keys=1)
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"^idle_timeout must be positive$"):
            group_by("k", batch(2), idle_timeout=bad)
    group_by("k", batch(2), idle_timeout=0.5)
    group_by("k", batch(2), idle_timeout=None)
    makers: list[Any] = [
        lambda **kw: group_by("k", batch(2), **kw),
        lambda **kw: partition("k", 2, batch(2), **kw),
    ]
    for make in makers:
        for kw in ({"buffer": 0}, {"out_buffer": 0}):
            with pytest.raises(ValueError, match=r"^buffer and out_buffer must be at least 1$"):
                make(**kw)
        make(buffer=1, out_buffer=1)
    with pytest.raises(ValueError, match=r"^n must be at least 1$"):
        partition("k", 0, batch(2))
    partition("k", 1, batch(2))
    text = r"^segment_factory must be a segment, a pipeline or a callable, not 42$"
    with pytest.raises(TypeError, match=text):
        group_by("k", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=text):
        partition("k", 2, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a callable or a field name"):
        group_by(42, batch(2))  # type: ignore[arg-type]


async def test_a_segment_a_pipeline_or_a_factory_makes_the_sub_pipelines() -> None:
    """A segment or a pipeline runs afresh per key; a factory is called with the key (group_by) or the lane index
    (partition)."""
    xs = [{"u": "a"}, {"u": "b"}, {"u": "a"}]
    with anyio.fail_after(DEADLINE):
        out: list[Any] = await (from_list(xs) | group_by("u", batch(5) | batch(1))).collect()
    assert sorted(map(repr, out)) == sorted(map(repr, [[[{"u": "a"}, {"u": "a"}]], [[{"u": "b"}]]]))
    made: list[Any] = []

    def per_lane(i: int) -> Any:
        made.append(i)
        return batch(5)

    lanes = keys_in_lanes(3, 1)
    with anyio.fail_after(DEADLINE):
        out = await (from_list([lanes[2][0], lanes[0][0]]) | partition(lambda x: x, 3, per_lane)).collect()
    assert sorted(made) == [0, 1, 2] and sorted(out) == sorted([[lanes[2][0]], [lanes[0][0]]])


@segment
async def held(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Takes one item and never finishes with it (a stuck sub-pipeline)."""
    async for _ in items:
        await anyio.sleep_forever()
        yield None


@pytest.mark.parametrize("buffer", [None, 1, 3])
async def test_each_input_holds_buffer_items_16_by_default(buffer: int | None) -> None:
    """With its sub-pipeline stuck on one item, a key's input holds ``buffer`` items (16 by default) and the feeder
    holds one more: the upstream is read exactly that far, for group_by and for partition."""
    expect = 1 + (16 if buffer is None else buffer) + 1
    kw: dict[str, Any] = {} if buffer is None else {"buffer": buffer}
    stages: list[Any] = [group_by(lambda x: 0, held(), **kw), partition(lambda x: 0, 2, held(), **kw)]
    for stage in stages:
        pulled: list[int] = []
        with anyio.fail_after(DEADLINE):
            async with (from_list(list(range(100)), pulled) | stage).stream() as items:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(items.__anext__)
                    await settle()
                    assert len(pulled) == expect
                    tg.cancel_scope.cancel()


# ------------------------------------------------------------------ tasks, stats over runs, errors


async def test_the_feeder_and_the_idle_sweeper_run_in_tasks_named_after_the_stage() -> None:
    """The upstream runs in ``talkpipe feeder for <stage>``; with an idle timeout a task ``talkpipe idle sweeper
    for <stage>`` runs too (and none without one)."""
    seen: list[str | None] = []

    @source
    async def numbers() -> AsyncIterator[int]:
        for i in range(3):
            seen.append(anyio.get_current_task().name)
            yield i

    def names() -> set[str]:
        return {t.name or "" for t in anyio.get_running_tasks()}

    stages: list[tuple[Any, str]] = [
        (group_by(lambda x: x % 2, batch(5)), "group_by"),
        (group_by(lambda x: x % 2, batch(5), name="g"), "g"),
        (partition(lambda x: x, 2, batch(5)), "partition(2)"),
        (partition(lambda x: x, 2, batch(5), name="p"), "p"),
    ]
    with anyio.fail_after(DEADLINE):
        for stage, label in stages:
            seen.clear()
            async with (numbers() | stage).stream() as items:
                async for _ in items:
                    assert not any("sweeper" in name for name in names())
            assert set(seen) == {f"talkpipe feeder for {label}"}
        swept: group_by[int, list[int]] = group_by(lambda x: x % 2, batch(5), idle_timeout=5, name="g")
        async with (numbers() | swept).stream() as outputs:
            got = [await outputs.__anext__()]
            assert "talkpipe idle sweeper for g" in names()
            got += [b async for b in outputs]
            assert sorted(x for b in got for x in b) == [0, 1, 2]


async def test_stats_count_over_every_run_and_last_stats_is_them() -> None:
    """The stage's own stats, or the object given, go on counting over runs; ``last_stats`` is that object."""
    xs: list[Any] = [0, 1, 2, Flush(), 3]
    for given in (None, KeyedStats()):
        g: group_by[int, Any] = group_by(lambda x: x % 3, batch(5), stats=given)
        p: partition[int, Any] = partition(lambda x: x, 2, take(1), stats=given)
        for _ in range(2):
            with anyio.fail_after(DEADLINE):
                await (from_list(xs) | g).collect()
        assert g.last_stats is g.stats and (given is None or g.stats is given)
        assert (g.stats.opened, g.stats.flushes, g.stats.live) == (8, 2, 0)
        for _ in range(2):
            with anyio.fail_after(DEADLINE):
                await (from_list(list(range(20))) | p).collect()
        assert p.last_stats is p.stats and (given is None or p.stats is given)
        assert p.stats.dropped == 2 * 18
        assert p.stats.opened == (8 if given is not None else 0) + 4


async def test_a_group_by_key_error_names_the_stage_and_the_item_after_the_groups_flushed() -> None:
    """A key function's error carries the stage's (given) name and the item, after the open groups flushed."""
    got: list[Any] = []
    with pytest.raises(KeyError) as info, anyio.fail_after(DEADLINE):
        stage: group_by[dict[str, int], list[dict[str, int]]] = group_by("k", batch(5), name="g")
        async with (from_list([{"k": 1}, {"j": 2}]) | stage).stream() as items:
            async for b in items:
                got.append(b)
    assert got == [[{"k": 1}]]
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "g" and "'j': 2" in (ctx.item or "")


async def test_partition_errors_name_the_stage_and_the_item_or_lane() -> None:
    """A key function's error carries the stage's name and the item; a lane's error a note naming the lane and the
    stage."""
    with pytest.raises(KeyError) as info, anyio.fail_after(DEADLINE):
        await (from_list([{"k": 1}, {"j": 2}]) | partition("k", 2, batch(5))).collect()
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "partition(2)" and "'j': 2" in (ctx.item or "")

    @segment
    async def fails(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            raise ValueError(f"bad {x}")
        yield 0

    lanes = keys_in_lanes(2, 1)
    with pytest.raises(ValueError, match=f"bad {lanes[1][0]}") as failed, anyio.fail_after(DEADLINE):
        await (from_list([lanes[1][0]]) | partition(lambda x: x, 2, fails(), name="p")).collect()
    notes = "\n".join(getattr(failed.value, "__notes__", []))
    assert "key 1 of p" in notes


# ------------------------------------------------------------------ group_by


async def test_flush_and_the_end_come_after_every_output_of_the_items_before() -> None:
    """One key: a Flush comes after the batch it closed, every metadata item is counted once and passed on, and
    the end of the stream comes after the last group's flushed batch."""
    stats = KeyedStats()
    xs: list[Any] = [1, 1, Flush(), 1, Flush(), Flush(), 1, 1]
    with anyio.fail_after(DEADLINE):
        out = await (from_list(xs) | group_by(lambda x: "one", batch(10), stats=stats)).collect(metadata=True)
    assert out == [[1, 1], Flush(), [1], Flush(), Flush(), [1, 1]]
    assert (stats.flushes, stats.opened) == (3, 3)


async def test_a_new_key_evicts_the_least_recently_used_group_once_it_has_flushed() -> None:
    """With ``max_keys`` groups live, a new key closes the group whose last item is oldest, and its sub-pipeline
    starts only once that group has flushed: never more than ``max_keys`` sub-pipelines at once.  The factory is
    called with each key as its group opens."""
    live = 0
    peak = 0
    made: list[str] = []

    @segment
    async def slow_flush(items: AsyncIterator[str]) -> AsyncIterator[list[str]]:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:
            got = [x async for x in items]
            await anyio.sleep(1)  # flushing takes a while
            yield got
        finally:
            live -= 1

    def factory(key: str) -> Any:
        made.append(key)
        return slow_flush()

    stats = KeyedStats()
    xs = ["a1", "b1", "a2", "c1", "a3", "d1"]
    with anyio.fail_after(DEADLINE):
        out: list[Any] = await (from_list(xs) | group_by(lambda s: s[0], factory, max_keys=2, stats=stats)).collect()
    assert out[:2] == [["b1"], ["c1"]] and sorted(out[2:]) == [["a1", "a2", "a3"], ["d1"]]
    assert made == ["a", "b", "c", "d"] and peak == 2
    assert (stats.opened, stats.evicted_lru, stats.live) == (4, 2, 0)


async def test_a_group_whose_input_still_holds_items_is_not_idle() -> None:
    """A group past its idle timeout with items still waiting in its input stays open (its sub-pipeline is busy):
    a later item of the key goes to the same sub-pipeline, and the group closes once it has really been quiet."""

    @segment
    async def slow(items: AsyncIterator[str]) -> AsyncIterator[list[str]]:
        got: list[str] = []
        async for x in items:
            await anyio.sleep(20)
            got.append(x)
        yield got

    @source
    async def timed() -> AsyncIterator[str]:
        yield "a1"
        yield "a2"
        yield "a3"
        await anyio.sleep(7)
        yield "a4"  # a2, a3 still wait in the input: still the same group
        await anyio.sleep(200)

    async def run() -> tuple[list[tuple[float, list[str]]], KeyedStats]:
        stats = KeyedStats()
        start = anyio.current_time()
        seen: list[tuple[float, list[str]]] = []
        stage: group_by[str, Any] = group_by(lambda s: s[0], slow(), idle_timeout=5, stats=stats)
        async with (timed() | stage).stream() as items:
            async for b in items:
                seen.append((round(anyio.current_time() - start, 6), b))
        return seen, stats

    with anyio.fail_after(DEADLINE):
        seen, stats = await run()
    assert seen == [(80.0, ["a1", "a2", "a3", "a4"])]  # a4 is taken at 60; the group closes then and ends at 80
    assert (stats.opened, stats.evicted_idle) == (1, 1)


async def test_keys_opening_one_after_another_each_close_when_idle() -> None:
    """Under an idle timeout, after every group has closed, a key opens (waking the idle sweeper) and then another
    while the first is live: each group closes ``idle_timeout`` after its own last item."""

    @source
    async def timed() -> AsyncIterator[str]:
        yield "a1"
        await anyio.sleep(10)  # a closes at 5: no group is left
        yield "b1"
        await anyio.sleep(1)
        yield "c1"
        await anyio.sleep(100)

    async def run() -> tuple[list[tuple[float, list[str]]], KeyedStats]:
        stats = KeyedStats()
        start = anyio.current_time()
        seen: list[tuple[float, list[str]]] = []
        stage: group_by[str, Any] = group_by(lambda s: s[0], batch(10), idle_timeout=5, stats=stats)
        async with (timed() | stage).stream() as items:
            async for b in items:
                seen.append((round(anyio.current_time() - start, 6), b))
        return seen, stats

    with anyio.fail_after(DEADLINE):
        seen, stats = await run()
    assert seen == [(5.0, ["a1"]), (15.0, ["b1"]), (16.0, ["c1"])]
    assert (stats.opened, stats.evicted_idle) == (3, 3)


# ------------------------------------------------------------------ partition and metadata


async def test_the_same_metadata_object_twice_passes_twice() -> None:
    """The upstream may yield one metadata object more than once (a module-level ``FLUSH``): each time it passes
    on once, after every lane has flushed."""
    flush = Flush()
    lanes = keys_in_lanes(3, 2)
    first = [x for lane in lanes for x in lane[:1]]
    xs: list[Any] = [*first, flush, flush, lanes[0][1], flush]
    with anyio.fail_after(DEADLINE):
        out = await (from_list(xs) | partition(lambda x: x, 3, batch(100))).collect(metadata=True)
    marks = [i for i, x in enumerate(out) if x is flush]
    assert marks == [3, 4, 6]
    assert sorted(map(repr, out[:3])) == sorted(repr([x]) for x in first) and out[5] == [lanes[0][1]]


async def test_a_flush_reaches_waiting_lanes_while_the_upstream_is_quiet() -> None:
    """Lanes waiting for input are woken by a Flush: their batches and the Flush come out before the upstream
    yields anything more."""
    lanes = keys_in_lanes(2, 2)
    flushed = anyio.Event()

    @source
    async def quiet() -> AsyncIterator[Any]:
        yield lanes[0][0]
        yield lanes[1][0]
        await settle()  # both lanes wait for more
        yield Flush()
        await flushed.wait()
        yield lanes[0][1]

    out: list[Any] = []
    with anyio.fail_after(DEADLINE):
        async with (quiet() | partition(lambda x: x, 2, batch(10))).stream(metadata=True) as items:
            async for x in items:
                out.append(x)
                if isinstance(x, Flush):
                    flushed.set()
    assert sorted(out[:2]) == sorted([[lanes[0][0]], [lanes[1][0]]]) and out[2:] == [Flush(), [lanes[0][1]]]


async def test_metadata_reaching_no_live_lane_still_passes_on() -> None:
    """Every lane has ended (each took one item): a Flush after that still leaves the stage, once."""
    lanes = keys_in_lanes(2, 2)

    @source
    async def late() -> AsyncIterator[Any]:
        yield lanes[0][0]
        yield lanes[1][0]
        await settle()  # both lanes end
        yield lanes[0][1]
        yield Flush()

    stats = KeyedStats()
    with anyio.fail_after(DEADLINE):
        out = await (late() | partition(lambda x: x, 2, take(1), stats=stats)).collect(metadata=True)
    assert sorted(map(repr, out[:2])) == sorted(map(repr, [lanes[0][0], lanes[1][0]])) and out[2:] == [Flush()]
    assert stats.dropped == 1


def gated(gate: anyio.Event, then_end: bool) -> Any:
    """A lane that waits for *gate* before passing on its first item, then ends (*then_end*) or goes on."""

    @segment
    async def lane(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            await gate.wait()
            yield x
            if then_end:
                return

    return lane()


async def test_a_lane_that_ends_owing_metadata_releases_it_without_waiting() -> None:
    """Lane 0 ends (after one item) with a Flush still in its input while lane 1 is stuck before that Flush: lane 0
    does not stay behind waiting for it (it is no longer live), and the Flush leaves once lane 1 has passed it."""
    lanes = keys_in_lanes(2, 2)
    gate = anyio.Event()
    stats = KeyedStats()
    xs: list[Any] = [lanes[0][0], lanes[0][1], lanes[1][0], Flush()]

    def factory(i: int) -> Any:
        return take(1) if i == 0 else gated(gate, then_end=False)

    with anyio.fail_after(DEADLINE):
        async with (from_list(xs) | partition(lambda x: x, 2, factory, stats=stats)).stream(metadata=True) as items:
            assert await items.__anext__() == lanes[0][0]
            await settle()
            assert stats.live == 1
            gate.set()
            rest = [x async for x in items]
    assert rest == [lanes[1][0], Flush()]
    assert stats.dropped == 1


async def test_the_last_lane_to_owe_metadata_sends_it_when_it_ends() -> None:
    """Lane 1 passes a Flush on at once; lane 0, stuck on an earlier item, then ends without passing it: the Flush
    leaves then, once, after lane 0's output."""
    lanes = keys_in_lanes(2, 1)
    gate = anyio.Event()
    xs: list[Any] = [lanes[0][0], lanes[1][0], Flush(), 99]

    def factory(i: int) -> Any:
        return gated(gate, then_end=True) if i == 0 else batch(10)

    with anyio.fail_after(DEADLINE):
        async with (from_list(xs) | partition(lambda x: x, 2, factory)).stream(metadata=True) as items:
            assert await items.__anext__() == [lanes[1][0]]
            await settle()
            gate.set()
            rest = [x async for x in items]
    tail = [[99]] if lane_of(99, 2) == 1 else []
    assert rest == [lanes[0][0], Flush(), *tail]


async def test_metadata_waits_for_every_live_lane_when_one_ends_early() -> None:
    """Three lanes hold a Flush behind one item each.  Lane 0 ends without passing it on, then lane 1 passes it
    on: the Flush still waits for lane 2, and leaves only after lane 2's output."""
    lanes = keys_in_lanes(3, 1)
    gates = [anyio.Event() for _ in range(3)]
    xs: list[Any] = [lanes[0][0], lanes[1][0], lanes[2][0], Flush()]

    def factory(i: int) -> Any:
        return gated(gates[i], then_end=i == 0)

    got: list[Any] = []
    with anyio.fail_after(DEADLINE):
        async with (from_list(xs) | partition(lambda x: x, 3, factory)).stream(metadata=True) as items:
            for gate in gates:
                await settle()
                gate.set()
                got.append(await items.__anext__())
            got += [x async for x in items]
    assert got == [lanes[0][0], lanes[1][0], lanes[2][0], Flush()]


async def test_a_key_reopened_while_its_idle_group_still_works_keeps_its_order() -> None:
    """A group closed after ``idle_timeout`` may still be working on its last item; a later item of the same key
    opens a new group only once the old one has finished, so the key's outputs keep their order."""
    took = {"a1": 10, "a2": 1, "b1": 1}

    @segment
    async def work(items: AsyncIterator[str]) -> AsyncIterator[tuple[float, str]]:
        async for x in items:
            await anyio.sleep(took[x])
            yield anyio.current_time() - start, x

    @source
    async def arrivals() -> AsyncIterator[str]:
        yield "a1"
        await anyio.sleep(6)  # past the idle timeout: a1's group is closed while it still works on a1
        yield "a2"
        yield "b1"

    stats = KeyedStats()
    start = anyio.current_time()
    with anyio.fail_after(DEADLINE):
        out = await (arrivals() | group_by(lambda s: s[0], work(), idle_timeout=5, stats=stats)).collect()
    # the feeder waits for the old group, as for an evicted one: b1 too is read only then
    assert [x for x in out if x[1][0] == "a"] == [(10, "a1"), (11, "a2")] and (11, "b1") in out
    assert (len(out), stats.evicted_idle, stats.opened) == (3, 1, 3)
