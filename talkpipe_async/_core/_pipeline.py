"""Pipelines: ``|`` chains of stages, compiled afresh for every run."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import anyio

from ._chain import Chain, In, Out, Runner
from ._closing import RunScope, close_one, outcome
from ._errors import annotate, error_context
from ._logs import logger
from ._metadata import Metadata
from ._plumbing import MetaCounter, make_intercept, release_sync, run_sync, strip_async, strip_sync, sync_to_async
from ._run import RunContext, _current
from ._segment import AbstractSegment, AbstractSource, PassThrough, _Node, wrap_callable

if TYPE_CHECKING:
    from .._blocking import BlockingStream
    from ._sampler import Sampler
    from ._stats import RunStats, StageStats
    from ._threads import ThreadStage

V = TypeVar("V")

__all__ = ["Pipeline", "PipelineRun"]

# Hand-over bounds of the blocking wrapper (talkpipe_async._blocking uses these too).
BLOCKING_BATCH = 512
BLOCKING_BUFFER = 2048
BLOCKING_LATENCY = 0.005

# Inputs of these types cannot hold Metadata: no plumbing is installed after them.
_PLAIN_INPUTS = (range, str, bytes, bytearray, memoryview)


def _may_carry_metadata(head: Any) -> bool:
    if isinstance(head, AbstractSource):
        return head.emits_metadata
    return not isinstance(head, _PLAIN_INPUTS)


def _frame_of(gen: Any) -> FrameType | None:
    return getattr(gen, "ag_frame", None) or getattr(gen, "gi_frame", None)


class Pipeline(Chain[In, Out]):
    """A chain of stages built with ``|``.

    Building a pipeline runs nothing and changes none of its parts; every
    run (``stream()``, ``collect()``, ``iter_sync()``) builds fresh
    generators, so one pipeline can run many times, even at once.  Nested
    pipelines are flattened.  A pipeline that starts with a segment takes its
    input from the caller: an iterable or an async iterable.

    ``Pipeline[In, Out]`` reads ``In`` items and yields ``Out`` items; one
    that starts with a source is a ``Pipeline[Never, Out]`` (it takes no
    input).  ``|`` composes the types; ``Pipeline(*ops)`` built by hand is a
    ``Pipeline[Any, Any]``.
    """

    def __init__(self: Pipeline[Any, Any], *ops: Any) -> None:
        stages: list[_Node] = []
        for op in ops:
            for stage in op.stages if isinstance(op, Pipeline) else (wrap_callable(op),):
                _append_fused(stages, stage)
        for position, stage in enumerate(stages):
            if isinstance(stage, AbstractSource) and position:
                raise TypeError(f"source {stage.label!r} can only start a pipeline (it is at position {position})")
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages: tuple[_Node, ...] = tuple(stages)

    @overload
    def __or__(self, other: PassThrough[Out]) -> Pipeline[In, Out]: ...
    @overload
    def __or__(
        self, other: AbstractSegment[Out, V] | Pipeline[Out, V] | Callable[[Iterable[Out]], Iterable[V]]
    ) -> Pipeline[In, V]: ...
    def __or__(self, other: Any) -> Pipeline[In, Any]:
        """Chain another stage or pipeline after this one: a new :class:`Pipeline`.

        It must read what this one yields (``Pipeline[A, B] | Segment[B, C]``
        is a ``Pipeline[A, C]``; anything else is a type error).
        """
        return Pipeline(self, other)

    def __ror__(self, other: Callable[[Iterable[Any]], Iterable[In]]) -> Pipeline[Any, Out]:
        """A TalkPipe-style callable segment before this pipeline: a new :class:`Pipeline`."""
        return Pipeline(other, self)

    def __repr__(self) -> str:
        return " | ".join(stage.label for stage in self.stages)

    @property
    def has_source(self) -> bool:
        """True when the pipeline starts with a source (it takes no input)."""
        return isinstance(self.stages[0], AbstractSource)

    @property
    def is_sync(self) -> bool:
        """True when every stage is a plain (sync) generator: see :meth:`iter_sync`."""
        return all(stage.is_sync for stage in self.stages)

    @overload
    def stream(
        self,
        input: Iterable[In | Metadata] | AsyncIterable[In | Metadata] | None = None,
        *,
        metadata: Literal[False] = False,
        stats: bool | str = False,
        stats_every: float | None = None,
        on_stats: Callable[[RunStats], Any] | None = None,
    ) -> PipelineRun[Out]: ...
    @overload
    def stream(
        self,
        input: Iterable[In | Metadata] | AsyncIterable[In | Metadata] | None = None,
        *,
        metadata: bool,
        stats: bool | str = False,
        stats_every: float | None = None,
        on_stats: Callable[[RunStats], Any] | None = None,
    ) -> PipelineRun[Out | Metadata]: ...
    def stream(
        self,
        input: Iterable[Any] | AsyncIterable[Any] | None = None,
        *,
        metadata: bool = False,
        stats: bool | str = False,
        stats_every: float | None = None,
        on_stats: Callable[[RunStats], Any] | None = None,
    ) -> PipelineRun[Any]:
        """Run the pipeline: ``async with pipeline.stream() as items: async for x in items``.

        Leaving the block (normally, by ``break``, by an exception or by
        cancellation) closes every stage, downstream first, and stops every
        task and thread of the run before the next statement.  With
        ``metadata=True`` the consumer receives :class:`Metadata` items too.

        ``stats=True`` counts items per stage (see :meth:`PipelineRun.stats`; a
        few ns per item per stage with the C extension, about 0.07 us without)
        and samples each stage's own running time every 50 ms from a thread;
        ``stats="timed"`` measures the time exactly instead (about 0.3 us per
        item per stage).
        ``stats_every`` seconds, ``on_stats(snapshot)`` is called (default: the
        snapshot is logged at INFO on the ``talkpipe_async.stats`` logger), and
        once more when the run ends.  Either turns statistics on.
        """
        if stats not in (False, True, "timed"):
            raise ValueError(f"stats must be False, True or 'timed', not {stats!r}")
        observe: bool | str = stats or stats_every is not None or on_stats is not None
        return PipelineRun(self, input, metadata, observe, stats_every, on_stats)

    @overload
    async def collect(
        self,
        input: Iterable[In | Metadata] | AsyncIterable[In | Metadata] | None = None,
        *,
        metadata: Literal[False] = False,
    ) -> list[Out]: ...
    @overload
    async def collect(
        self, input: Iterable[In | Metadata] | AsyncIterable[In | Metadata] | None = None, *, metadata: bool
    ) -> list[Out | Metadata]: ...
    async def collect(
        self, input: Iterable[Any] | AsyncIterable[Any] | None = None, *, metadata: bool = False
    ) -> list[Any]:
        """Run the pipeline to the end and return its items as a list."""
        async with self.stream(input, metadata=metadata) as items:
            return [item async for item in items]

    @overload
    def as_function(
        self, *, single_in: Literal[False] = False, single_out: Literal[False] = False
    ) -> Runner[In, Awaitable[list[Out]]]: ...
    @overload
    def as_function(
        self, *, single_in: Literal[False] = False, single_out: Literal[True]
    ) -> Runner[In, Awaitable[Out]]: ...
    @overload
    def as_function(
        self, *, single_in: Literal[True], single_out: Literal[False] = False
    ) -> Callable[[In], Awaitable[list[Out]]]: ...
    @overload
    def as_function(self, *, single_in: Literal[True], single_out: Literal[True]) -> Callable[[In], Awaitable[Out]]: ...
    @overload
    def as_function(self, *, single_in: bool = False, single_out: bool = False) -> Callable[..., Awaitable[Any]]: ...
    def as_function(self, *, single_in: bool = False, single_out: bool = False) -> Callable[..., Awaitable[Any]]:
        """Return an async callable that runs the pipeline once per call.

        ``single_in``: the argument is one item rather than an iterable.
        ``single_out``: return the only output item (``ValueError`` unless
        there is exactly one) rather than a list.
        """

        async def run(item: Any = None) -> Any:
            given = None if self.has_source else ([item] if single_in else item)
            results = await self.collect(given)
            return _single(results) if single_out else results

        return run

    @overload
    def iter_sync(
        self, input: Iterable[In | Metadata] | None = None, *, metadata: Literal[False] = False
    ) -> Iterator[Out]: ...
    @overload
    def iter_sync(
        self, input: Iterable[In | Metadata] | None = None, *, metadata: bool
    ) -> Iterator[Out | Metadata]: ...
    def iter_sync(self, input: Iterable[Any] | None = None, *, metadata: bool = False) -> Iterator[Any]:
        """Run a pipeline of sync stages as plain generators, with no event loop.

        Every stage runs in the calling thread (``blocking`` is ignored).
        Breaking out of the loop closes every stage at once (CPython closes
        the generators as the loop lets go of them).
        """
        for stage in self.stages:
            if not stage.is_sync:
                raise TypeError(f"iter_sync() needs sync stages, and {stage.label!r} is async: use stream()")
        build = _Build(self, metadata)
        head: Iterable[Any] = self._head_sync(input)
        if self.has_source:  # closed with the others, and its errors name it
            build.record(head, self.stages[0].label)
        meta = _may_carry_metadata(self.stages[0] if self.has_source else input)
        chain, meta = build.sync_chain(head, 1 if self.has_source else 0, len(self.stages), meta)
        if meta and not metadata:
            chain = build.final_strip_sync(chain)
        return _run_sync(chain, build)

    def _head_sync(self, input: Iterable[Any] | None) -> Iterable[Any]:
        first = self.stages[0]
        if isinstance(first, AbstractSource):
            if input is not None:
                raise TypeError("this pipeline starts with a source and takes no input")
            return first.generate()  # type: ignore[return-value]
        if input is None:
            raise TypeError(f"this pipeline starts with segment {first.label!r}: give it input")
        return input

    def __aiter__(self) -> Any:
        raise TypeError(
            "a bare `async for` cannot close the pipeline's stages when the loop stops early; "
            "use `async with pipeline.stream() as items: async for x in items: ...`"
        )

    # ---- blocking wrapper (issue 3): thin delegates to talkpipe_async/_blocking.py; nothing else here ----
    @overload
    def run_blocking(
        self, input: Iterable[In | Metadata] | None = None, *, metadata: Literal[False] = False, backend: str = ...
    ) -> list[Out]: ...
    @overload
    def run_blocking(
        self, input: Iterable[In | Metadata] | None = None, *, metadata: bool, backend: str = ...
    ) -> list[Out | Metadata]: ...
    def run_blocking(
        self, input: Iterable[Any] | None = None, *, metadata: bool = False, backend: str = "asyncio"
    ) -> list[Any]:
        """Run the pipeline to the end from sync code; return its items (see ``docs/blocking.md``)."""
        from .._blocking import run_blocking  # the blocking wrapper stands on the core: loaded on first use

        return run_blocking(self, input, metadata=metadata, backend=backend)

    @overload
    def iter_blocking(
        self,
        input: Iterable[In | Metadata] | None = None,
        *,
        metadata: Literal[False] = False,
        backend: str = ...,
        batch: int = ...,
        buffer: int = ...,
        latency: float = ...,
    ) -> BlockingStream[Out]: ...
    @overload
    def iter_blocking(
        self,
        input: Iterable[In | Metadata] | None = None,
        *,
        metadata: bool,
        backend: str = ...,
        batch: int = ...,
        buffer: int = ...,
        latency: float = ...,
    ) -> BlockingStream[Out | Metadata]: ...
    def iter_blocking(
        self,
        input: Iterable[Any] | None = None,
        *,
        metadata: bool = False,
        backend: str = "asyncio",
        batch: int = BLOCKING_BATCH,
        buffer: int = BLOCKING_BUFFER,
        latency: float = BLOCKING_LATENCY,
    ) -> BlockingStream[Any]:
        """Stream the items into sync code: ``with p.iter_blocking() as items: for x in items``.

        ``backend``: "asyncio", "uvloop" or "trio"; ``batch``, ``buffer``, ``latency``:
        the hand-over bounds (see ``docs/blocking.md``).
        """
        from .._blocking import iter_blocking  # the blocking wrapper stands on the core: loaded on first use

        return iter_blocking(
            self, input, metadata=metadata, backend=backend, batch=batch, buffer=buffer, latency=latency
        )

    @overload
    def as_function_blocking(
        self, *, single_in: Literal[False] = False, single_out: Literal[False] = False, backend: str = ...
    ) -> Runner[In, list[Out]]: ...
    @overload
    def as_function_blocking(
        self, *, single_in: Literal[False] = False, single_out: Literal[True], backend: str = ...
    ) -> Runner[In, Out]: ...
    @overload
    def as_function_blocking(
        self, *, single_in: Literal[True], single_out: Literal[False] = False, backend: str = ...
    ) -> Callable[[In], list[Out]]: ...
    @overload
    def as_function_blocking(
        self, *, single_in: Literal[True], single_out: Literal[True], backend: str = ...
    ) -> Callable[[In], Out]: ...
    @overload
    def as_function_blocking(
        self, *, single_in: bool = False, single_out: bool = False, backend: str = ...
    ) -> Callable[..., Any]: ...
    def as_function_blocking(
        self, *, single_in: bool = False, single_out: bool = False, backend: str = "asyncio"
    ) -> Callable[..., Any]:
        """A sync callable that runs the pipeline once per call (the blocking ``as_function``)."""
        from .._blocking import as_function_blocking  # the blocking wrapper stands on the core: loaded on first use

        return as_function_blocking(self, single_in=single_in, single_out=single_out, backend=backend)

    # ---- end of the blocking wrapper block ----


def _append_fused(stages: list[_Node], stage: _Node) -> None:
    """Append *stage*, or fuse it into the last stage when that one offers (``fuse_with``)."""
    fuse = getattr(stages[-1], "fuse_with", None) if stages else None
    fused = fuse(stage) if fuse is not None else None
    if fused is not None:
        stages[-1] = fused
    else:
        stages.append(stage)


def _single(results: list[Any]) -> Any:
    if len(results) != 1:
        raise ValueError(f"expected exactly 1 output item, got {len(results)}")
    return results[0]


def _run_sync(chain: Iterator[Any], build: _Build) -> Iterator[Any]:
    def close() -> None:
        for gen in reversed(build.closers):
            gen.close()

    return run_sync(chain, lambda exc: annotate(exc, build.frames), close)


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

        return snapshot(stages, self._errors, self._started, self.metadata_dropped, self._running, timed)

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
        if exc is not None:
            annotate(exc, build.frames)
            if isinstance(exc, Exception):  # cancellation and interrupts are not a stage's errors
                self._count_error(exc)
        assert self._scope is not None and self._run is not None
        try:
            error, outer = await self._scope.close(lambda busy: self._close_all(build, busy))
        finally:
            _current.reset(self._token)
        failed_task = self._run.failed_task if error is self._run.failure else None
        raised = outcome(exc, error, outer, build.frames, failed_task)
        if raised is not None and raised is not outer:
            self._count_error(raised)
        if self._sampler is not None:
            self._sampler.stop()
        build.frames.clear()  # finished frames keep their last locals (the last items) alive
        build.frame_stats.clear()
        if self._observe and (self._stats_every is not None or self._on_stats is not None):
            self._final_stats(raised if raised is not None else exc)
        if raised is not None:
            raise raised
        return None

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
        first: BaseException | None = None
        for ic in reversed(self._intercepts):
            try:
                await ic.aclose()
            except BaseException as err:  # reported after every stage is closed
                first = first or err
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
        stop, may_carry = start, meta
        while stop < len(stages) and stages[stop].is_sync and not stages[stop].blocking:
            stage = stages[stop]
            if stage.process_metadata:
                may_carry = True
            elif may_carry and build.receiver_after(stop):
                break
            else:
                may_carry = False
            stop += 1
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
