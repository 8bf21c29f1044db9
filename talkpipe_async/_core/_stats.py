"""Per-stage statistics of a run: ``stream(stats=True)`` and ``PipelineRun.stats()``.

With statistics on, the runner puts one counting step after each stage (and
after the input): it counts the items the stage hands on and, with
``stats="timed"``, the time spent waiting for them (inclusive of the stages
upstream; a stage's own time is its figure minus the one before it).
Statistics are off by default, and then nothing is added per item.

With the C extension, the counting step after an async generator is a C
``Counter`` that counts ``__anext__`` calls and hands back the generator's own
awaitable (about 10 ns per item instead of a generator step); its items are
the calls minus the one in flight (``ag_running``) or the one that ended the
stream (``ag_frame is None``), frozen when the run closes the stage.  The
sync side uses a C ``CountIter``.  Anything else is counted by a generator.
"""

from __future__ import annotations

import operator
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import _batch_items

__all__ = [
    "RunStats",
    "StageSnapshot",
    "StageStats",
    "count_async",
    "count_sync",
    "counted_async",
    "counted_sync",
    "observe_async",
    "observe_sync",
]


class StageStats:
    """Live counters of one stage (updated by the counting step)."""

    __slots__ = ("buffer", "counter", "items_out", "label", "node", "sampled_s", "time_s")

    def __init__(self, label: str, node: Any = None) -> None:
        self.label = label
        self.node = node
        self.items_out = 0
        self.time_s = 0.0  # stats="timed": time waiting for this stage's items, stages upstream included
        self.sampled_s = 0.0  # stats=True: this stage's own running time, sampled
        self.buffer: Callable[[], tuple[int, int]] | None = None
        self.counter: Callable[[], int] | None = None  # a C counter's item count, when one counts

    def out(self) -> int:
        """Items handed on so far."""
        return self.items_out if self.counter is None else self.counter()


@dataclass(frozen=True)
class StageSnapshot:
    """One stage's figures at the time of the snapshot."""

    name: str
    items_in: int
    items_out: int
    errors: int
    skipped: int | None
    time_s: float
    buffer_fill: int | None
    buffer_capacity: int | None


@dataclass(frozen=True)
class RunStats:
    """A snapshot of a run: one :class:`StageSnapshot` per stage, input first.

    ``elapsed_s`` is the time since the run started, and once it has closed, its whole duration (it no longer grows).
    """

    stages: tuple[StageSnapshot, ...]
    elapsed_s: float
    metadata_dropped: int
    running: bool

    def format(self) -> str:
        """A plain-text table, one line per stage."""
        lines = [f"{'stage':<24} {'in':>10} {'out':>10} {'errors':>6} {'time s':>9} {'buffer':>11}"]
        for s in self.stages:
            buffer = "" if s.buffer_fill is None else f"{s.buffer_fill}/{s.buffer_capacity}"
            lines.append(
                f"{s.name[:24]:<24} {s.items_in:>10} {s.items_out:>10} {s.errors:>6} {s.time_s:>9.3f} {buffer:>11}"
            )
        lines.append(f"elapsed {self.elapsed_s:.3f} s, metadata dropped {self.metadata_dropped}")
        return "\n".join(lines)


if _batch_items._speedups is not None:

    class _AgenCounter(_batch_items._speedups.Counter):  # type: ignore[misc]
        """Counts an async generator's items from the ``__anext__`` calls made on it."""

        sealed: int | None = None

        def items(self) -> int:
            """The items the generator has handed on."""
            if self.sealed is not None:
                return self.sealed
            up = self.upstream
            unfinished = up.ag_running or up.ag_frame is None  # in flight, or the call that ended it
            calls: int = self.calls
            return max(0, calls - (1 if unfinished else 0))

        @property
        def ag_running(self) -> bool:
            """Whether the generator is running (the runner closes busy stages last)."""
            return bool(self.upstream.ag_running)

        async def aclose(self) -> None:
            """Freeze the count, then close the generator."""
            if self.sealed is None or self.upstream.ag_running:
                self.sealed = None
                self.sealed = self.items()
            await self.upstream.aclose()


def counted_async(items: AsyncIterator[Any], stats: StageStats) -> AsyncIterator[Any]:
    """*items*, counted into *stats*: by a C counter for an async generator, else by :func:`count_async`."""
    if _batch_items.SPEEDUPS and type(items) is types.AsyncGeneratorType:
        counter = _AgenCounter(items)
        stats.counter = counter.items
        return counter
    return count_async(items, stats)


#: Iterators that know how many items they have left: their count is their start length minus that (no step).
_SIZED_ITERATORS: tuple[type, ...] = (type(iter(range(0))), type(iter([])), type(iter(())))


def counted_sync(items: Iterator[Any], stats: StageStats) -> Iterator[Any]:
    """*items*, counted into *stats*: from the remaining length of a range, list or tuple iterator;
    by a C ``CountIter``; else by :func:`count_sync`."""
    if type(items) in _SIZED_ITERATORS:
        start = operator.length_hint(items)
        stats.counter = lambda: max(0, start - operator.length_hint(items))
        return items
    if _batch_items.SPEEDUPS:
        counter = _batch_items._speedups.CountIter(items)
        stats.counter = lambda: counter.count
        return counter  # type: ignore[no-any-return]
    return count_sync(items, stats)


async def count_async(items: AsyncIterator[Any], stats: StageStats) -> AsyncIterator[Any]:
    """Count what *items* yields."""
    async for item in items:
        stats.items_out += 1
        yield item


def count_sync(items: Iterator[Any], stats: StageStats) -> Iterator[Any]:
    """Sync twin of :func:`count_async`."""
    for item in items:
        stats.items_out += 1
        yield item


async def observe_async(items: AsyncIterator[Any], stats: StageStats) -> AsyncIterator[Any]:
    """Count what *items* yields and the time spent waiting for it."""
    clock = time.perf_counter
    step = items.__anext__
    while True:
        start = clock()
        try:
            item = await step()
        except StopAsyncIteration:
            stats.time_s += clock() - start
            return
        stats.time_s += clock() - start
        stats.items_out += 1
        yield item


def observe_sync(items: Iterator[Any], stats: StageStats) -> Iterator[Any]:
    """Sync twin of :func:`observe_async`."""
    clock = time.perf_counter
    step = items.__next__
    while True:
        start = clock()
        try:
            item = step()
        except StopIteration:
            stats.time_s += clock() - start
            return
        stats.time_s += clock() - start
        stats.items_out += 1
        yield item


def snapshot(
    stages: list[StageStats],
    errors: dict[str, int],
    started: float,
    dropped: int,
    running: bool,
    timed: bool = False,
    ended: float | None = None,
) -> RunStats:
    """Turn live counters into a :class:`RunStats` (own times, items in from the stage before).

    ``elapsed_s`` runs from *started* to *ended*, or to now while the run has not ended.
    """
    out = []
    before_items, before_time = 0, 0.0
    for i, st in enumerate(stages):
        fill = capacity = None
        if st.buffer is not None:
            fill, capacity = st.buffer()
        skipped = getattr(st.node, "skipped", None)
        out.append(
            StageSnapshot(
                name=st.label,
                items_in=before_items if i else 0,
                items_out=st.out(),
                errors=errors.get(st.label, 0),
                skipped=skipped if isinstance(skipped, int) else None,
                time_s=max(0.0, st.time_s - before_time) if timed else st.sampled_s,
                buffer_fill=fill,
                buffer_capacity=capacity,
            )
        )
        before_items, before_time = out[-1].items_out, st.time_s
    end = time.monotonic() if ended is None else ended
    return RunStats(tuple(out), end - started, dropped, running)
