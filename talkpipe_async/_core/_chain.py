"""Typed chaining shared by sources, segments and pipelines.

``a | b`` is typed through ``__or__``.  mypy infers a generic right operand
(``take(3)``, ``batch(10)``, ``map(lambda x: ...)``) from the items of the
left one; pyright does not (it types both operands of a binary operator on
their own), so there such an operand loses its item type.  The methods here
are plain calls, which both checkers infer from the items upstream::

    numbers().map(lambda x: x * 2.5)     # Pipeline[Never, float]
    numbers().then(take(3))              # Pipeline[Never, int]

Each method returns what ``self | stage`` returns: the same stages, nothing
added per item.  The stage-level runners (``collect``, ``stream``, ...) are
run the pipeline of the stage alone; :class:`Pipeline` has its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, Protocol, TypeVar, overload

from ._metadata import Metadata

if TYPE_CHECKING:
    from .._blocking import BlockingStream
    from ._pipeline import Pipeline, PipelineRun
    from ._segment import AbstractSegment
    from ._stats import RunStats

In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)
R = TypeVar("R", covariant=True)
V = TypeVar("V")

__all__ = ["Chain", "Runner"]

_NO_INITIAL: Any = object()  # scan() without an initial value


class Runner(Protocol[In, R]):
    """What ``as_function()`` returns (without ``single_in``): call it with the input items, or none."""

    def __call__(self, items: Iterable[In] | AsyncIterable[In] | None = None, /) -> R:
        """Run the pipeline once over *items*."""
        ...


class Chain(Generic[In, Out]):
    """Typed chaining methods: ``then``, ``map``, ``filter``, ``flat_map``, ``scan``, ``concurrent_map``.

    ``In`` is the item type a stage reads (``Never`` for a source: it reads
    nothing), ``Out`` the item type it yields.
    """

    def registerUpstream(self, upstream: Any) -> NoReturn:  # TalkPipe's name
        """Called by TalkPipe's ``|`` in ``talkpipe_object | this``: raise what to write instead."""
        from ._talkpipe import talkpipe_or_error

        raise talkpipe_or_error(upstream, self)

    def then(self, stage: AbstractSegment[Out, V] | Pipeline[Out, V]) -> Pipeline[In, V]:
        """``self | stage``, with the stage's item type inferred from this one's."""
        from ._pipeline import Pipeline

        return Pipeline(self, stage)

    @overload
    def map(self, fn: Callable[[Out], Awaitable[V]], *, name: str | None = None) -> Pipeline[In, V]: ...
    @overload
    def map(self, fn: Callable[[Out], V], *, name: str | None = None) -> Pipeline[In, V]: ...
    def map(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Pipeline[In, Any]:
        """``self | map(fn)`` (see :class:`talkpipe_async.operators.map`)."""
        from ..operators.transform import map as map_op  # operators stand on the core: loaded on first use

        return self.then(map_op(fn, name=name))

    def filter(self, pred: Callable[[Out], object], *, name: str | None = None) -> Pipeline[In, Out]:
        """``self | filter(pred)`` (see :class:`talkpipe_async.operators.filter`)."""
        from ..operators.transform import filter as filter_op  # operators stand on the core: loaded on first use

        return self.then(filter_op(pred, name=name))

    @overload
    def flat_map(self, fn: Callable[[Out], AsyncIterator[V]], *, name: str | None = None) -> Pipeline[In, V]: ...
    @overload
    def flat_map(self, fn: Callable[[Out], Awaitable[Iterable[V]]], *, name: str | None = None) -> Pipeline[In, V]: ...
    @overload
    def flat_map(self, fn: Callable[[Out], Iterable[V]], *, name: str | None = None) -> Pipeline[In, V]: ...
    def flat_map(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Pipeline[In, Any]:
        """``self | flat_map(fn)`` (see :class:`talkpipe_async.operators.flat_map`)."""
        from ..operators.transform import flat_map as flat_map_op  # operators stand on the core: loaded on first use

        return self.then(flat_map_op(fn, name=name))

    @overload
    def scan(self, fn: Callable[[V, Out], Awaitable[V]], *, initial: V, name: str | None = None) -> Pipeline[In, V]: ...
    @overload
    def scan(self, fn: Callable[[V, Out], V], *, initial: V, name: str | None = None) -> Pipeline[In, V]: ...
    @overload
    def scan(self, fn: Callable[[Out, Out], Awaitable[Out]], *, name: str | None = None) -> Pipeline[In, Out]: ...
    @overload
    def scan(self, fn: Callable[[Out, Out], Out], *, name: str | None = None) -> Pipeline[In, Out]: ...
    def scan(
        self, fn: Callable[[Any, Any], Any], *, initial: Any = _NO_INITIAL, name: str | None = None
    ) -> Pipeline[In, Any]:
        """``self | scan(fn, initial=...)``: without *initial* the first item starts the accumulator."""
        from ..operators.transform import scan as scan_op  # operators stand on the core: loaded on first use

        if initial is _NO_INITIAL:
            return self.then(scan_op(fn, name=name))
        stage: scan_op[Any, Any] = scan_op(fn, initial=initial, name=name)
        return self.then(stage)

    def concurrent_map(
        self,
        fn: Callable[[Out], Awaitable[V]],
        limit: int = 16,
        *,
        ordered: bool = True,
        window: int | None = None,
        key: str | Callable[[Out], Any] | None = None,
        name: str | None = None,
    ) -> Pipeline[In, V]:
        """``self | concurrent_map(fn, limit, ...)`` (see :class:`talkpipe_async.operators.concurrent_map`).

        ``key`` (a callable on the item, or a dotted field name): items of one
        key run one at a time, in arrival order.
        """
        # operators stand on the core: loaded on first use
        from ..operators.concurrency import concurrent_map as concurrent_map_op

        return self.then(concurrent_map_op(fn, limit, ordered=ordered, window=window, key=key, name=name))

    # ---- running a single stage: the pipeline of this stage alone (Pipeline overrides these with its own)

    def pipeline(self) -> Pipeline[In, Out]:
        """This stage alone as a :class:`Pipeline` (what ``stream``/``collect`` run)."""
        from ._pipeline import Pipeline

        return Pipeline(self)

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
    def stream(self, input: Any = None, **options: Any) -> PipelineRun[Any]:
        """Run this stage alone; see :meth:`Pipeline.stream` (same options)."""
        return self.pipeline().stream(input, **options)

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
    async def collect(self, input: Any = None, *, metadata: bool = False) -> list[Any]:
        """Run this stage alone and return a list; see :meth:`Pipeline.collect`."""
        return await self.pipeline().collect(input, metadata=metadata)

    @overload
    def iter_sync(
        self, input: Iterable[In | Metadata] | None = None, *, metadata: Literal[False] = False
    ) -> Iterator[Out]: ...
    @overload
    def iter_sync(
        self, input: Iterable[In | Metadata] | None = None, *, metadata: bool
    ) -> Iterator[Out | Metadata]: ...
    def iter_sync(self, input: Any = None, *, metadata: bool = False) -> Iterator[Any]:
        """Run this sync stage alone without an event loop; see :meth:`Pipeline.iter_sync`."""
        return self.pipeline().iter_sync(input, metadata=metadata)

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
        """This stage as an async callable; see :meth:`Pipeline.as_function`."""
        return self.pipeline().as_function(single_in=single_in, single_out=single_out)

    @overload
    def run_blocking(
        self, input: Iterable[In | Metadata] | None = None, *, metadata: Literal[False] = False, backend: str = ...
    ) -> list[Out]: ...
    @overload
    def run_blocking(
        self, input: Iterable[In | Metadata] | None = None, *, metadata: bool, backend: str = ...
    ) -> list[Out | Metadata]: ...
    def run_blocking(self, input: Any = None, **options: Any) -> list[Any]:
        """Run this stage alone from sync code; see :meth:`Pipeline.run_blocking`."""
        return self.pipeline().run_blocking(input, **options)

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
    def iter_blocking(self, input: Any = None, **options: Any) -> BlockingStream[Any]:
        """Stream this stage alone into sync code; see :meth:`Pipeline.iter_blocking`."""
        return self.pipeline().iter_blocking(input, **options)

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
        """This stage as a blocking callable; see :meth:`Pipeline.as_function_blocking`."""
        return self.pipeline().as_function_blocking(single_in=single_in, single_out=single_out, backend=backend)
