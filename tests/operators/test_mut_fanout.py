"""Fan-out (``talkpipe_async.operators.fanout``): ``fork``, ``broadcast``, ``split`` and their branch input queues.

What the combine tests left unchecked: the settings, defaults, names and validation texts; the feeder and branch
tasks' names; the exact bound of a branch's input queue under ``policy="block"``; what ``drop_oldest`` keeps, counts
and logs (once, naming the fork, the branch and the item), that it lets the branch run once before a drop, and that
metadata is never dropped nor counted; which branch gets the item itself and which a (shallow or deep) copy;
``ForkStats`` counting over runs (and sized afresh when its lists do not fit the branches); metadata reaching a
waiting branch at once; and metadata a branch creates itself passing straight through.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from talkpipe_async import Flush, Metadata, segment, source
from talkpipe_async._core._counters import Counters
from talkpipe_async.operators import ForkStats, broadcast, fork, map, split
from talkpipe_async.operators.fanout import _BranchInput
from talkpipe_async.sources import just

pytestmark = pytest.mark.anyio

LOGGER = "talkpipe_async.operators.combine"


def ident(x: Any) -> Any:
    return x


@source
async def numbers(n: int) -> AsyncIterator[int]:
    """1 .. n, without waiting."""
    for i in range(1, n + 1):
        yield i


@source
async def feed(items: list[Any]) -> AsyncIterator[Any]:
    """Yield *items* (data and metadata) as given."""
    for x in items:
        yield x


@source
async def held_first(items: list[Any], took: list[anyio.Event]) -> AsyncIterator[Any]:
    """Yield the first of *items*, wait until every branch holds it (each sets its *took*), then the rest."""
    yield items[0]
    for event in took:
        await event.wait()
    for x in items[1:]:
        yield x


class Mark(Metadata):
    """Metadata a branch makes itself."""

    mark: int


async def drain_into(out: list[Any], items: AsyncIterator[Any]) -> None:
    """Read *items* to the end into *out*."""
    out.extend([x async for x in items])


@segment(process_metadata=True)
async def gated(items: AsyncIterator[Any], gate: anyio.Event, took: anyio.Event | None = None) -> AsyncIterator[Any]:
    """A branch that takes its first item (setting *took*), then waits for *gate* before passing anything on.

    Data comes out negated.
    """
    async for x in items:
        if took is not None:
            took.set()
        await gate.wait()
        yield x if isinstance(x, Metadata) else -x


# ---------------------------------------------------------------------- settings


def test_default_settings_and_names() -> None:
    """Defaults: broadcast, 16 items of buffer, the block policy, shallow copies, a fresh ForkStats; names per mode."""
    op = fork(map(ident))
    assert (op.mode, op.buffer, op.policy, op.copy) == ("broadcast", 16, "block", "shallow")
    assert op.label == "fork" and op.process_metadata is True
    assert isinstance(op.stats, ForkStats) and op.last_stats is None
    assert len(op.branches) == 1
    assert fork(map(ident), mode="round_robin").label == "split"
    assert fork(map(ident), name="fan").label == "fan"

    s = split(map(ident), map(ident), buffer=3, policy="drop_oldest", copy="none", name="workers")
    assert (s.mode, s.buffer, s.policy, s.copy, s.label) == ("round_robin", 3, "drop_oldest", "none", "workers")
    assert split(map(ident)).label == "split" and split(map(ident)).mode == "round_robin"

    stats = ForkStats()
    b = broadcast(map(ident), map(ident), buffer=5, copy="deep", stats=stats)
    assert (b.mode, b.buffer, b.copy, b.label) == ("broadcast", 5, "deep", "fork")
    assert b.stats is stats
    assert fork(map(ident), buffer=1).buffer == 1  # the smallest buffer


def test_validation_texts() -> None:
    """Each refused setting is named in its error."""
    with pytest.raises(ValueError, match=r"^fork needs at least one branch$"):
        fork()
    with pytest.raises(ValueError, match=r"^unknown mode 'fan'$"):
        fork(map(ident), mode="fan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^unknown policy 'drop_newest'$"):
        fork(map(ident), policy="drop_newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^unknown copy policy 'fancy'$"):
        fork(map(ident), copy="fancy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^buffer must be at least 1$"):
        fork(map(ident), buffer=0)
    for mode in ("broadcast", "round_robin"):
        assert fork(map(ident), mode=mode).mode == mode
    for policy in ("block", "drop_oldest"):
        assert fork(map(ident), policy=policy).policy == policy
    for copy in ("none", "shallow", "deep"):
        assert fork(map(ident), copy=copy).copy == copy


def test_fork_stats_start_empty() -> None:
    """A new ForkStats holds no slots (a run sizes it) and is a Counters dataclass."""
    a, b = ForkStats(), ForkStats()
    assert a.delivered == [] and a.dropped == [] and a.delivered is not b.delivered
    assert isinstance(a, Counters) and a.as_dict() == {"delivered": [], "dropped": []}


# ---------------------------------------------------------------------- tasks and bounds


async def test_feeder_and_branch_tasks_are_named_after_the_stage(anyio_backend: Any) -> None:
    """The upstream is read in ``talkpipe feeder for <label>``; branch i runs in ``talkpipe branch i of <label>``."""
    names: dict[str, str | None] = {}

    @source
    async def src() -> AsyncIterator[int]:
        for i in range(3):
            names.setdefault("src", anyio.get_current_task().name)
            yield i

    @segment
    async def who(items: AsyncIterator[int], tag: str) -> AsyncIterator[int]:
        async for x in items:
            names.setdefault(tag, anyio.get_current_task().name)
            yield x

    with anyio.fail_after(10):
        out = await (src() | fork(who(tag="a"), who(tag="b"), name="fan")).collect()
    assert sorted(out) == [0, 0, 1, 1, 2, 2]
    assert names == {"src": "talkpipe feeder for fan", "a": "talkpipe branch 0 of fan", "b": "talkpipe branch 1 of fan"}


@pytest.mark.parametrize("buffer", [1, 3])
async def test_block_policy_holds_exactly_buffer_items_per_branch(anyio_backend: Any, buffer: int) -> None:
    """Under ``block`` a stuck branch holds one item, its queue ``buffer`` more, and the feeder waits with one more."""
    pulled = 0
    gate = anyio.Event()

    @source
    async def counted() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(1, 101):
            pulled += 1
            yield i

    stats = ForkStats()
    with anyio.fail_after(10):
        async with (counted() | fork(gated(gate=gate), buffer=buffer, stats=stats)).stream() as items:
            async with anyio.create_task_group() as tg:
                out: list[int] = []
                tg.start_soon(drain_into, out, items)
                await anyio.wait_all_tasks_blocked()
                assert pulled == buffer + 2
                assert stats.delivered == [buffer + 1] and stats.dropped == [0]
                gate.set()
    assert out == [-i for i in range(1, 101)]
    assert stats.delivered == [100] and stats.dropped == [0]


# ---------------------------------------------------------------------- drop_oldest


async def test_drop_oldest_keeps_the_newest_counts_and_warns_once(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A stuck branch keeps its held item and the newest ``buffer``; each drop counts; one warning per ForkStats.

    The warning names the fork, the branch and the first item dropped.  The counters go on over a second run of
    the same fork, which logs no second warning.
    """
    stats = ForkStats()
    caplog.set_level(logging.WARNING, logger=LOGGER)

    for run in (1, 2):
        gates = [anyio.Event(), anyio.Event()]
        took = [anyio.Event(), anyio.Event()]
        op = fork(
            *(gated(gate=g, took=t) for g, t in zip(gates, took, strict=True)),
            buffer=2,
            policy="drop_oldest",
            stats=stats,
            name="slowpoke",
        )
        with anyio.fail_after(10):
            async with (held_first(list(range(1, 21)), took) | op).stream() as items:
                async with anyio.create_task_group() as tg:
                    out: list[int] = []
                    tg.start_soon(drain_into, out, items)
                    await anyio.wait_all_tasks_blocked()
                    assert stats.delivered == [20 * run, 20 * run]
                    assert stats.dropped == [17 * run, 17 * run]
                    for g in gates:
                        g.set()
        assert sorted(out) == [-20, -20, -19, -19, -1, -1]
        assert op.last_stats is stats
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (
            logging.WARNING,
            f"slowpoke: branch {i} is too slow; dropping its oldest item 2 (counted in ForkStats.dropped)",
        )
        for i in (0, 1)
    ]


async def test_metadata_is_never_dropped_nor_counted(anyio_backend: Any) -> None:
    """Under ``drop_oldest`` only data is dropped: queued metadata stays, in its place, and is not counted.

    A queue holding only metadata is never dropped from: the feeder waits for room instead.
    """
    gate, took = anyio.Event(), anyio.Event()
    stats = ForkStats()
    op = fork(gated(gate=gate, took=took), buffer=1, policy="drop_oldest", stats=stats)
    with anyio.fail_after(10):
        async with (held_first([1, 2, Flush(n=1), 3, 4, 5], [took]) | op).stream(metadata=True) as items:
            async with anyio.create_task_group() as tg:
                out: list[Any] = []
                tg.start_soon(drain_into, out, items)
                await anyio.wait_all_tasks_blocked()
                assert stats.delivered == [5] and stats.dropped == [3]  # 2, 3 and 4 were dropped
                gate.set()
    assert out == [-1, Flush(n=1), -5]

    gate, took = anyio.Event(), anyio.Event()
    stats = ForkStats()
    op = fork(gated(gate=gate, took=took), buffer=1, policy="drop_oldest", stats=stats)
    with anyio.fail_after(10):
        async with (held_first([1, Flush(n=1), 2, 3], [took]) | op).stream(metadata=True) as items:
            async with anyio.create_task_group() as tg:
                out = []
                tg.start_soon(drain_into, out, items)
                await anyio.wait_all_tasks_blocked()
                assert stats.delivered == [1] and stats.dropped == [0]  # the feeder waits with 2 in hand
                gate.set()
    assert out[:2] == [-1, Flush(n=1)] and out.count(Flush(n=1)) == 1
    assert len(out) - 2 + stats.dropped[0] == 2 and -3 in out


async def test_drop_oldest_lets_the_branch_run_once_before_a_drop(anyio_backend: Any) -> None:
    """A branch ready to take its queued item gets the chance before the queue's oldest item is dropped.

    The exact outcome needs a scheduler that runs ready tasks in order (trio's picks an order at random).
    """
    if anyio_backend[0] == "trio":
        pytest.skip("trio runs ready tasks in a random order")
    stats = ForkStats(delivered=[0], dropped=[0])
    inbox = _BranchInput(0, 1, True, stats, "lbl")
    got: list[int] = []

    async def branch() -> None:
        async for x in inbox:
            got.append(x)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await inbox.put(1)
            tg.start_soon(branch)  # ready, not yet run
            await inbox.put(2)  # the queue is full: the branch runs once, takes 1, and makes room
            inbox.end()
    assert got == [1, 2] and stats.delivered == [2] and stats.dropped == [0]


# ---------------------------------------------------------------------- copies


@pytest.mark.parametrize("copy", ["shallow", "deep", "none"])
async def test_the_first_branch_gets_the_item_and_the_others_copies(anyio_backend: Any, copy: str) -> None:
    """Branch 0 gets the upstream's object; each other branch its own ``copy.copy`` / ``copy.deepcopy`` (or it)."""
    original = {"inner": [1]}
    seen: dict[int, Any] = {}

    @segment
    async def keep(items: AsyncIterator[dict[str, list[int]]], k: int) -> AsyncIterator[int]:
        async for d in items:
            seen[k] = d
            yield k

    with anyio.fail_after(10):
        await (just(original) | fork(keep(k=0), keep(k=1), keep(k=2), copy=copy)).collect()  # type: ignore[arg-type]
    assert seen[0] is original
    assert all(seen[k] == original for k in (1, 2))
    if copy == "none":
        assert seen[1] is original and seen[2] is original
        return
    assert seen[1] is not original and seen[2] is not original and seen[1] is not seen[2]
    shared = [seen[k]["inner"] is original["inner"] for k in (1, 2)]
    assert shared == ([True, True] if copy == "shallow" else [False, False])


# ---------------------------------------------------------------------- stats


async def test_stats_count_over_runs_and_are_sized_to_the_branches(anyio_backend: Any) -> None:
    """A given ForkStats counts over every run; lists that do not fit the branches start again at zero."""
    with anyio.fail_after(10):
        for stats in (ForkStats(delivered=[7], dropped=[0, 0]), ForkStats(delivered=[0, 0], dropped=[5])):
            op = fork(map(ident), map(ident), stats=stats)
            await (numbers(3) | op).collect()
            assert stats.delivered == [3, 3] and stats.dropped == [0, 0]
            assert op.last_stats is stats
            await (numbers(2) | op).collect()
            assert stats.delivered == [5, 5] and stats.dropped == [0, 0]

        op = split(map(ident), map(ident), map(ident))
        await (numbers(7) | op).collect()
        assert op.last_stats is op.stats and op.stats.delivered == [3, 2, 2] and op.stats.dropped == [0, 0, 0]


# ---------------------------------------------------------------------- metadata


async def test_metadata_reaches_a_waiting_branch_at_once(anyio_backend: Any) -> None:
    """Metadata wakes a branch waiting for input: it comes out before any later item arrives."""
    more = anyio.Event()

    @source
    async def src() -> AsyncIterator[Any]:
        yield 1
        yield Flush(n=1)
        await more.wait()
        yield 2

    out: list[Any] = []
    with anyio.fail_after(10):
        async with (src() | fork(map(ident), map(ident))).stream(metadata=True) as items:
            async for x in items:
                out.append(x)
                if isinstance(x, Flush):
                    more.set()
    assert out == [1, 1, Flush(n=1), 2, 2]


async def test_metadata_a_branch_creates_passes_straight_through(anyio_backend: Any) -> None:
    """Metadata made inside a branch is not waited for from the other branches: it leaves the fork as it comes."""

    @segment(process_metadata=True)
    async def marking(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            yield x
            if not isinstance(x, Metadata):
                yield Mark(mark=x)

    with anyio.fail_after(10):
        out = await (feed([1, Flush(n=1), 2]) | fork(marking(), map(ident))).collect(metadata=True)
    marks = [x.mark for x in out if isinstance(x, Mark)]
    assert marks == [1, 2]
    assert out.count(Flush(n=1)) == 1
    assert sorted(x for x in out if not isinstance(x, Metadata)) == [1, 1, 2, 2]


@pytest.mark.parametrize("mode", ["broadcast", "split"])
async def test_the_same_metadata_object_twice_passes_twice(mode: str) -> None:
    """The upstream may yield one metadata object more than once (a module-level ``FLUSH``): each time it leaves
    the fork once, after every branch has passed it on, so each branch's batch flushed by it comes out before it.
    (A branch's later output may come out before a Flush the fork still holds for a slower branch.)"""
    from talkpipe_async.operators import batch

    flush = Flush()
    xs: list[Any] = [0, 1, 2, 3, flush, flush, 7, flush]
    op = broadcast(batch(100), batch(100)) if mode == "broadcast" else split(batch(100), batch(100))
    with anyio.fail_after(5):
        out = await (just(*xs) | op).collect(metadata=True)
    marks = [i for i, x in enumerate(out) if x is flush]
    first = [x for x in out[: marks[0]] if x != [7]]
    sevens = [7] if mode == "split" else [7, 7]
    assert len(marks) == 3 and marks[-1] == len(out) - 1 and not any(isinstance(x, Flush) and x is not flush
                                                                       for x in out)
    assert sorted(first) == ([[0, 1, 2, 3], [0, 1, 2, 3]] if mode == "broadcast" else [[0, 2], [1, 3]])
    assert sorted(x[0] for x in out if x == [7]) == sevens and len(out) == 3 + 2 + len(sevens)
