"""Pipelines: ``|`` chains of stages, compiled afresh for every run."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from ._build import _Build, _may_carry_metadata
from ._chain import Chain, In, Out, Runner
from ._errors import annotate
from ._metadata import Metadata
from ._metadata_path import run_sync
from ._pipeline_run import PipelineRun
from ._segment import AbstractSegment, AbstractSource, PassThrough, _Node, wrap_callable

if TYPE_CHECKING:
    from .._blocking import BlockingStream
    from ._stats import RunStats

V = TypeVar("V")

__all__ = ["Pipeline", "PipelineRun"]

# Hand-over bounds of the blocking wrapper (talkpipe_async._blocking uses these too).
BLOCKING_BATCH = 512
BLOCKING_BUFFER = 2048
BLOCKING_LATENCY = 0.005


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
