"""One run's compiled chain: the generators, the metadata plumbing, the threads and what closes them.

Both ways of running a pipeline build one: :meth:`Pipeline.iter_sync` (plain
generators, no loop) and :class:`PipelineRun` (``stream()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._metadata_path import MetaCounter, release_sync, strip_sync
from ._segment import AbstractSource

if TYPE_CHECKING:
    from ._pipeline import Pipeline
    from ._stats import StageStats
    from ._threads import ThreadStage


# Inputs of these types cannot hold Metadata: no plumbing is installed after them.
_PLAIN_INPUTS = (range, str, bytes, bytearray, memoryview)


def _may_carry_metadata(head: Any) -> bool:
    if isinstance(head, AbstractSource):
        return head.emits_metadata
    return not isinstance(head, _PLAIN_INPUTS)


def _frame_of(gen: Any) -> FrameType | None:
    return getattr(gen, "ag_frame", None) or getattr(gen, "gi_frame", None)


class _Build:
    """Compiles one run: generators, metadata plumbing, threads, closers."""

    def __init__(self, pipeline: Pipeline[Any, Any], outlet_metadata: bool) -> None:
        self.stages = pipeline.stages
        self.frames: dict[FrameType, str] = {}
        self.closers: list[Any] = []
        self.threads: list[ThreadStage] = []
        self.counter = MetaCounter()
        self.stats: list[StageStats] | None = None
        self.frame_stats: dict[FrameType, StageStats] = {}  # for the sampled time of stats=True
        self.timed = False
        n = len(self.stages)
        wants = [False] * (n + 1)
        wants[n] = outlet_metadata
        for i in range(n - 1, -1, -1):
            wants[i] = wants[i + 1] or self.stages[i].process_metadata
        self._wants_after = wants  # wants[i + 1]: a stage after i (or the outlet) takes metadata

    def receiver_after(self, i: int) -> bool:
        return self._wants_after[i + 1]

    def record(self, gen: Any, label: str | None) -> Any:
        """Close *gen* at the end of the run; attribute errors to *label* if given."""
        frame = _frame_of(gen) if label is not None else None
        if frame is not None:
            self.frames[frame] = label  # type: ignore[assignment]
        self.closers.append(gen)
        return gen

    def observe(self, gen: Any, label: str, node: Any = None, sync: bool = False) -> Any:
        """With statistics on, count what *gen* yields (a step closed with the run)."""
        if self.stats is None:
            return gen
        from ._stats import StageStats, counted_async, counted_sync, observe_async, observe_sync

        stats = StageStats(label, node)
        self.stats.append(stats)
        frame = _frame_of(gen)
        if frame is not None:
            self.frame_stats[frame] = stats
        if sync:
            self.closers.append(observe_sync(gen, stats) if self.timed else counted_sync(gen, stats))
        else:
            self.closers.append(observe_async(gen, stats) if self.timed else counted_async(gen, stats))
        return self.closers[-1]

    def sync_chain(self, it: Iterable[Any], start: int, stop: int, meta: bool) -> tuple[Iterator[Any], bool]:
        """Chain sync stages ``start..stop`` over *it*; return it and whether metadata may flow."""
        chain: Iterable[Any] = it
        for i in range(start, stop):
            stage = self.stages[i]
            if stage.process_metadata or not meta:
                chain = self.record(stage.transform(chain), stage.label)  # type: ignore[attr-defined]
                chain = self.observe(chain, stage.label, stage, sync=True)
                meta = meta or stage.process_metadata
                continue
            pending: list[Any] | None = [] if self.receiver_after(i) else None
            out = self.record(stage.transform(strip_sync(chain, pending, self.counter)), stage.label)  # type: ignore[attr-defined]
            chain = release_sync(out, pending) if pending is not None else out
            chain = self.observe(chain, stage.label, stage, sync=True)
            meta = pending is not None
        return iter(chain), meta

    def final_strip_sync(self, chain: Iterator[Any]) -> Iterator[Any]:
        return strip_sync(chain, None, self.counter)

    def on_thread_frame(self, label: str, stats: list[StageStats]) -> Callable[[Any], None]:
        """Record a worker thread's generator for errors (*label*) and sampled time (``stats[0]``, if any)."""

        def record(gen: Any) -> None:
            frame = _frame_of(gen)
            if frame is not None:
                self.frames[frame] = label
                if stats:
                    self.frame_stats[frame] = stats[0]

        return record
