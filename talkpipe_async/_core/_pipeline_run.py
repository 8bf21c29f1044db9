"""One run of a pipeline: ``async with pipeline.stream() as items``.

A :class:`PipelineRun` compiles the pipeline afresh (see :mod:`._build`),
starts the run's tasks and threads, and on leaving the block closes every
stage, downstream first, stops every task and raises the one exception the
consumer should see.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic

import anyio

from ._build import _Build, _may_carry_metadata
from ._chain import Out
from ._closing import RunScope, close_each, close_one, outcome
from ._errors import annotate, error_context
from ._logs import logger
from ._metadata_path import make_intercept, strip_async, sync_to_async
from ._run import RunContext, _current
from ._segment import AbstractSource

if TYPE_CHECKING:
    from ._pipeline import Pipeline
    from ._sampler import Sampler
    from ._stats import RunStats, StageStats

__all__ = ["PipelineRun"]


class PipelineRun(Generic[Out]):
    """One run of a pipeline; an async context manager that yields the items (``Out``)."""

    def __init__(
        self,
        pipeline: Pipeline[Any, Any],
        input: Any,
        metadata: bool,
        observe: bool | str = False,
        stats_every: float | None = None,
        on_stats: Callable[[RunStats], Any] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._input = input
        self._metadata = metadata
        self._observe = observe
        self._sampler: Sampler | None = None
        self._stats_every = stats_every
        self._on_stats = on_stats
        self._errors: dict[str, int] = {}
        self._started = 0.0
        self._ended: float | None = None  # once the run has closed: its duration stops growing
        self._running = False
        self._build: _Build | None = None
        self._scope: RunScope | None = None
        self._run: RunContext | None = None
        self._token: Any = None
        self._intercepts: list[Any] = []

    @property
    def metadata_dropped(self) -> int:
        """Metadata items dropped because no stage downstream takes metadata."""
        return self._build.counter.dropped if self._build else 0

    def stats(self) -> RunStats:
        """A snapshot of the run's per-stage figures (zeros unless started with ``stats=True``).

        Available while the run is going (from any task of the loop) and after it.
        """
        build = self._build
        stages = build.stats if build is not None and build.stats is not None else []
        timed = build is not None and build.timed
        from ._stats import snapshot

        return snapshot(
            stages, self._errors, self._started, self.metadata_dropped, self._running, timed, ended=self._ended
        )

    async def _report(self, every: float) -> None:
        while True:
            await anyio.sleep(every)
            self._emit_stats()

    def _emit_stats(self) -> None:
        snap = self.stats()
        if self._on_stats is not None:
            self._on_stats(snap)
        else:
            logger("talkpipe_async.stats").info("pipeline %s\n%s", self._pipeline, snap.format())

    async def __aenter__(self) -> AsyncIterator[Out]:
        build = self._build = _Build(self._pipeline, self._metadata)
        if self._observe:
            build.stats = []
            build.timed = self._observe == "timed"
        self._started = time.monotonic()
        self._ended = None
        self._running = True
        self._scope = RunScope()
        run = self._run = await self._scope.enter()
        self._token = _current.set(run)
        try:
            items = self._compile(build)
            for stage in build.threads:
                stage.start(run)
            if self._stats_every is not None:
                run.start_soon(self._report, self._stats_every, name="talkpipe stats reporter")
            if build.stats is not None and not build.timed:
                from ._sampler import Sampler

                self._sampler = Sampler(build.frame_stats)
                self._sampler.start()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return items

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        build = self._build
        assert build is not None
        self._running = False
        self._note_exit_error(build, exc)
        error, outer = await self._close_run(build)
        self._ended = time.monotonic()
        raised = self._choose_raised(build, exc, error, outer)
        self._release_frames(build)
        if self._observe and (self._stats_every is not None or self._on_stats is not None):
            self._final_stats(raised if raised is not None else exc)
        if raised is not None:
            raise raised
        return None

    def _note_exit_error(self, build: _Build, exc: BaseException | None) -> None:
        """Name the stage in the exception that ends the block, and count it, before the stages close.

        The stage is found by the frames of the run's generators, which closing
        finishes; cancellation and interrupts are not a stage's errors, so they
        are not counted.
        """
        if exc is None:
            return
        annotate(exc, build.frames)
        if isinstance(exc, Exception):
            self._count_error(exc)

    async def _close_run(self, build: _Build) -> tuple[BaseException | None, BaseException | None]:
        """Close every stage and stop the run's tasks: ``(first stage error, outside cancellation)``.

        The run context is unset even when closing fails, so nothing started
        later in this task joins a run that has ended.
        """
        assert self._scope is not None and self._run is not None
        try:
            return await self._scope.close(lambda busy: self._close_all(build, busy))
        finally:
            _current.reset(self._token)

    def _choose_raised(
        self, build: _Build, exc: BaseException | None, error: BaseException | None, outer: BaseException | None
    ) -> BaseException | None:
        """The one exception the consumer gets (see ``outcome``), counted when a stage raised it while closing.

        A failing task of the run is named only when its error is the one the
        run recorded as its failure; an outside cancellation (*outer*) is not
        a stage's error.
        """
        assert self._run is not None
        failed_task = self._run.failed_task if error is self._run.failure else None
        raised = outcome(exc, error, outer, build.frames, failed_task)
        if raised is not None and raised is not outer:
            self._count_error(raised)
        return raised

    def _release_frames(self, build: _Build) -> None:
        """Stop the time sampler and forget the run's frames: finished frames keep their last locals alive.

        Those locals are the last items each stage saw; a run kept for its
        ``stats()`` must not hold them.
        """
        if self._sampler is not None:
            self._sampler.stop()
        build.frames.clear()
        build.frame_stats.clear()

    def _final_stats(self, outer: BaseException | None) -> None:
        """Emit the last snapshot; while a cancellation is on its way out, a failing hook is logged, not raised."""
        if outer is None:
            self._emit_stats()
            return
        try:
            self._emit_stats()
        except Exception:
            logger("talkpipe_async.stats").exception(
                "the on_stats hook failed on the final snapshot of a cancelled run"
            )

    def _count_error(self, exc: BaseException) -> None:
        ctx = error_context(exc)
        if ctx is not None:
            self._errors[ctx.segment] = self._errors.get(ctx.segment, 0) + 1

    async def _close_all(self, build: _Build, busy: list[Any]) -> BaseException | None:
        """Close every stage, downstream first; *busy* gets those a task is running."""
        # A chain held by a bypass closes like a stage: the same deadline.
        first = await close_each(reversed(self._intercepts))
        for stage in build.threads:
            stage.abort()
        for gen in reversed(build.closers):
            if getattr(gen, "ag_running", False):
                busy.append(gen)
                continue
            error = await close_one(gen)
            first = first or error
        return first

    def _intercept(self, items: AsyncIterator[Any]) -> Any:
        ic = make_intercept(items)
        self._intercepts.append(ic)
        return ic

    def _compile(self, build: _Build) -> AsyncIterator[Any]:
        """Build this run's chain: head, fused sync prefix, async stages, outlet."""
        start = 1 if isinstance(build.stages[0], AbstractSource) else 0
        sync_head, cur = self._head(build)
        meta = _may_carry_metadata(build.stages[0] if start else self._input)
        bypass_open = False
        if sync_head is not None:
            start, cur, meta, bypass_open = self._sync_prefix(build, sync_head, start, meta)
        assert cur is not None
        return self._async_stages(build, cur, start, meta, bypass_open)

    def _head(self, build: _Build) -> tuple[Iterable[Any] | None, AsyncIterator[Any] | None]:
        """The first stage's output: a sync iterable (fused inline) or an async iterator."""
        first = build.stages[0]
        if isinstance(first, AbstractSource):
            if self._input is not None:
                raise TypeError("this pipeline starts with a source and takes no input")
            if first.is_sync and not first.blocking:
                return build.observe(build.record(first.generate(), first.label), first.label, first, sync=True), None
            if first.is_sync:
                return None, self._thread(build, 0, None)
            return None, build.observe(build.record(first.generate(), first.label), first.label, first)
        if self._input is None:
            raise TypeError(f"this pipeline starts with segment {first.label!r}: give stream() an input")
        if hasattr(self._input, "__aiter__"):
            return None, build.observe(self._input.__aiter__(), "input")
        return build.observe(iter(self._input), "input", sync=True), None

    def _sync_prefix(
        self, build: _Build, head: Iterable[Any], start: int, meta: bool
    ) -> tuple[int, AsyncIterator[Any], bool, bool]:
        """Fuse the inline sync stages after *head*; return where the async part starts.

        A sync segment that metadata must go past on its way to a stage that
        wants it is not fused: a plain generator cannot be suspended while it
        reads its input, so it runs in a worker thread, where metadata goes
        past it as soon as it asks for the next input.
        """
        stages = build.stages
        stop = _fusable_until(build, start, meta)
        chain, meta = build.sync_chain(head, start, stop, meta)
        if stop == len(stages):
            strip, bypass = meta and not self._metadata, False
        else:  # metadata is stripped here, in the adapter, when the next stage does not take it
            nxt = stages[stop]
            strip = meta and not nxt.process_metadata and not nxt.is_sync
            bypass = strip and build.receiver_after(stop)
        cur = build.record(sync_to_async(chain, strip, bypass, build.counter), None)
        return stop, cur, meta and not strip, bypass

    def _async_stages(
        self, build: _Build, cur: AsyncIterator[Any], start: int, meta: bool, bypass_open: bool
    ) -> AsyncIterator[Any]:
        """Chain the remaining stages, with metadata plumbing only where metadata can flow."""
        stages = build.stages
        for j in range(start, len(stages)):
            stage = stages[j]
            if stage.is_sync:
                if bypass_open:
                    cur, bypass_open = self._intercept(cur), False
                cur = self._thread(build, j, cur)
                meta = True
                continue
            if stage.process_metadata:
                if bypass_open:
                    cur, bypass_open = self._intercept(cur), False
                meta = True
            elif meta:
                bypass = build.receiver_after(j)
                cur = build.record(strip_async(cur, bypass, build.counter), None)
                bypass_open = bypass_open or bypass
                meta = False
            cur = build.record(stage.transform(cur), stage.label)  # type: ignore[attr-defined]
            cur = build.observe(cur, stage.label, stage)
        if self._metadata:
            if bypass_open:
                cur = self._intercept(cur)
        elif meta:
            cur = build.record(strip_async(cur, False, build.counter), None)
        return cur

    def _thread(self, build: _Build, j: int, upstream: AsyncIterator[Any] | None) -> AsyncIterator[Any]:
        stage = build.stages[j]

        def make(items: Iterable[Any] | None) -> Iterator[Any]:
            if items is None:
                return iter(stage.generate())  # type: ignore[attr-defined]
            return iter(stage.transform(items))  # type: ignore[attr-defined]

        from ._threads import ThreadStage

        thread_stats: list[StageStats] = []  # filled below, before the thread starts
        thread = ThreadStage(
            stage.label,
            make,
            upstream,
            pass_metadata=stage.process_metadata or upstream is None,
            forward_metadata=build.receiver_after(j),
            counter=build.counter,
            on_frame=build.on_thread_frame(stage.label, thread_stats),
        )
        build.threads.append(thread)
        output: AsyncIterator[Any] = build.observe(build.record(thread.output(), None), stage.label, stage)
        if build.stats is not None:
            build.stats[-1].buffer = thread.buffer_fill
            thread_stats.append(build.stats[-1])
        return output


def _fusable_until(build: _Build, start: int, meta: bool) -> int:
    """Where the inline sync stages from *start* end: the first async, blocking or unfusable stage.

    A sync segment that metadata may reach (*meta*, or a stage before it
    that passes metadata on) and must pass on its way to a later stage that
    wants it is not fused.
    """
    stages = build.stages
    stop, may_carry = start, meta
    while stop < len(stages) and stages[stop].is_sync and not stages[stop].blocking:
        if stages[stop].process_metadata:
            may_carry = True
        elif may_carry and build.receiver_after(stop):
            break
        else:
            may_carry = False
        stop += 1
    return stop
