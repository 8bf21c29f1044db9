"""Error operators: per-segment error policies, retry with backoff and jitter.

* :class:`on_error` wraps one segment (or a per-item function) and decides
  what a failure does: ``"raise"`` (the default), ``"skip"`` (counted),
  ``"replace"`` (yield a value instead) or ``"dead_letter"`` (send the item
  and its exception to a sink: a callable, a core ``Channel`` or an anyio
  memory send stream).
* :class:`Backoff`, :func:`retrying` and :class:`retry`: call an ``async``
  function again after a failure, waiting ``base * factor**k`` seconds (capped
  at ``max_delay``) with jitter.
* :class:`retry_source`: re-open a source after a failure.

Only ``Exception`` subclasses listed in ``errors`` / ``retry_on`` are
handled; cancellation and other ``BaseException`` always propagate.
"""

from __future__ import annotations

import inspect
import logging
import random
import reprlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._backoff import Backoff, Retries
from .._core._channel import Channel, ChannelClosed
from .._core._counters import Counters
from .._core._errors import add_note
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment, AbstractSource
from .combine import as_source_pipeline, produced
from .concurrency import blame

if TYPE_CHECKING:
    from typing_extensions import Never

__all__ = [
    "Backoff",
    "DeadLetter",
    "ErrorStats",
    "on_error",
    "retry",
    "retry_call",
    "retry_source",
    "retrying",
]

T = TypeVar("T")
U = TypeVar("U")

logger = logging.getLogger("talkpipe_async.operators.errors")
_repr = reprlib.Repr()

Policy = Literal["raise", "skip", "replace", "dead_letter"]
ExcTypes = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True)
class DeadLetter:
    """What a dead-letter sink receives: the item, its exception, and the stage."""

    item: Any
    error: BaseException
    stage: str


@dataclass
class ErrorStats(Counters):
    """Counters of an :class:`on_error` stage (accumulated over all its runs)."""

    failed: int = 0
    skipped: int = 0
    replaced: int = 0
    dead_lettered: int = 0


class _NoItem:
    def __repr__(self) -> str:
        return "<no item>"


NO_ITEM: Any = _NoItem()


class _Recorder:
    """The wrapped segment's input: remembers the last item it handed out."""

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self._items = items
        self.last: Any = NO_ITEM
        self.pulled = 0
        self.upstream_error: BaseException | None = None

    def __aiter__(self) -> _Recorder:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._items.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException as exc:  # not the wrapped segment's fault: never handled
            self.upstream_error = exc
            raise
        self.last = item
        self.pulled += 1
        return item


async def _send_dead_letter(sink: Any, letter: DeadLetter) -> None:
    if isinstance(sink, Channel):
        await sink.put(letter)
    elif isinstance(sink, MemoryObjectSendStream):
        await sink.send(letter)
    else:
        result = sink(letter)
        if inspect.isawaitable(result):
            await result


class on_error(AbstractSegment[T, U], Generic[T, U]):
    """Apply an error policy to one segment or per-item function.

    ::

        pipeline = src() | on_error(parse_json(), "skip") | ...
        pipeline = src() | on_error(lookup, "replace", value={}) | ...
        pipeline = src() | on_error(enrich(), "dead_letter", sink=failures_send_stream) | ...

    ``inner`` is an async segment (an ``async def`` transform) or a function
    of one item (``def`` or ``async def``).  Policies, for exceptions that
    are instances of ``errors`` (default ``Exception``):

    * ``"raise"``: the exception propagates (type kept, with a note naming
      the segment and the item);
    * ``"skip"``: the item is dropped and counted (``ErrorStats.skipped``; a
      warning is logged for the first one, debug lines for the rest);
    * ``"replace"``: ``value`` is yielded in place of the item's output;
    * ``"dead_letter"``: a :class:`DeadLetter` (item, exception, stage) goes
      to ``sink``: a callable (sync or async), a core ``Channel`` or an anyio
      ``MemoryObjectSendStream`` (awaited: a full sink slows the pipeline, it
      never drops).

    For a segment, a failure ends its generator, so the wrapper starts a new
    one (``inner.transform``) on the remaining input: the failing item is the
    one the segment read last, and state the segment kept in its generator
    (a partial batch, a running total) is lost at each failure.  A segment
    that fails before reading any new item is not restarted (the error is
    raised).  Upstream errors are never handled here.  Metadata: the wrapper
    takes metadata exactly when ``inner`` does.  Counters: ``stats`` (an
    :class:`ErrorStats`: the one given, else the stage's own) counts over all
    the stage's runs; ``last_stats`` is the same object.
    """

    @overload
    def __init__(
        self: on_error[T, U],
        inner: AbstractSegment[T, U] | Callable[[T], Awaitable[U]],
        policy: Policy = "raise",
        *,
        value: Any = None,
        sink: Any = None,
        errors: ExcTypes = Exception,
        stats: ErrorStats | None = None,
        name: str | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: on_error[T, U],
        inner: Callable[[T], U],
        policy: Policy = "raise",
        *,
        value: Any = None,
        sink: Any = None,
        errors: ExcTypes = Exception,
        stats: ErrorStats | None = None,
        name: str | None = None,
    ) -> None: ...
    def __init__(
        self,
        inner: Any,
        policy: Policy = "raise",
        *,
        value: Any = None,
        sink: Any = None,
        errors: ExcTypes = Exception,
        stats: ErrorStats | None = None,
        name: str | None = None,
    ) -> None:
        if policy not in ("raise", "skip", "replace", "dead_letter"):
            raise ValueError(f"unknown error policy {policy!r}")
        if policy == "dead_letter" and sink is None:
            raise ValueError("policy 'dead_letter' needs a sink")
        if isinstance(inner, AbstractSegment):
            if inner.is_sync:
                raise TypeError(f"on_error wraps async segments; {inner.label!r} is a sync generator")
            process_metadata = inner.process_metadata
            inner_label = inner.label
        elif callable(inner) and not isinstance(inner, (AbstractSource, Pipeline)):
            process_metadata = False
            inner_label = getattr(inner, "__name__", type(inner).__name__)
        else:
            raise TypeError(f"on_error wraps an async segment or a function, not {inner!r}")
        super().__init__(process_metadata=process_metadata)
        self.inner = inner
        self.policy = policy
        self.value = value
        self.sink = sink
        self.errors = errors
        self.stats = stats if stats is not None else ErrorStats()
        self.last_stats: ErrorStats | None = None
        self.inner_label = inner_label
        self.name = name or f"on_error({inner_label}, {policy})"

    async def _handle(self, exc: BaseException, item: Any, stats: ErrorStats) -> bool:
        """Apply the policy; True when ``self.value`` should be yielded."""
        stats.failed += 1
        blame(exc, self.inner_label, item)
        if self.policy == "raise":
            raise exc
        if self.policy == "skip":
            stats.skipped += 1
            level = logging.WARNING if stats.skipped == 1 else logging.DEBUG
            logger.log(
                level,
                "%s skipped item %s after %s: %s (counted in ErrorStats.skipped)",
                self.label,
                _repr.repr(item),
                type(exc).__name__,
                exc,
            )
            return False
        if self.policy == "replace":
            stats.replaced += 1
            return True
        stats.dead_lettered += 1
        await _send_dead_letter(self.sink, DeadLetter(item, exc, self.inner_label))
        return False

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Yield the inner segment's (or function's) outputs under the policy."""
        stats = self.stats if self.stats is not None else ErrorStats()
        self.last_stats = stats
        if isinstance(self.inner, AbstractSegment):
            async with aclosing(self._segment(items, stats)) as steps:
                async for out in steps:
                    yield out
            return
        fn = self.inner
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
        errors = self.errors
        async for item in items:
            try:
                result = await fn(item) if is_async else fn(item)
            except errors as exc:
                if await self._handle(exc, item, stats):
                    yield self.value
                continue
            yield result

    async def _segment(self, items: AsyncIterator[Any], stats: ErrorStats) -> AsyncGenerator[Any, None]:
        assert isinstance(self.inner, AbstractSegment)
        recorder = _Recorder(items)
        errors = self.errors
        while True:
            gen: Any = self.inner.transform(recorder)
            started_at = recorder.pulled
            try:
                while True:
                    try:
                        out = await gen.__anext__()
                    except StopAsyncIteration:
                        return
                    except errors as exc:
                        if exc is recorder.upstream_error or recorder.pulled == started_at:
                            raise
                        if await self._handle(exc, recorder.last, stats):
                            yield self.value
                        break  # start a fresh generator on the remaining input
                    yield out
            finally:
                await gen.aclose()


# --------------------------------------------------------------------- retry


RETRY = Backoff(initial=0.1, maximum=10.0, max_attempts=5)


async def retry_call(
    fn: Callable[..., Awaitable[U]],
    *args: Any,
    backoff: Backoff = RETRY,
    retry_on: ExcTypes = Exception,
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], Any] | None = None,
) -> U:
    """Await ``fn(*args)``, trying again after a failure (see :class:`Backoff`).

    After the last attempt the last exception is raised with its own type and
    a note saying how many attempts were made.  ``on_retry(failure, exc,
    delay)`` is called (sync) before each wait.
    """
    retries = Retries(backoff, rng=rng)  # a call that fails is never a healthy attempt: failures only add up
    while True:
        try:
            return await fn(*args)
        except retry_on as exc:
            wait = retries.failed()
            failure = retries.failures
            if wait is None:
                add_note(exc, f"talkpipe_async: gave up after {failure} attempts")
                raise
            if on_retry is not None:
                on_retry(failure, exc, wait)
            logger.debug("retry %d of %s after %r; waiting %.3fs", failure, getattr(fn, "__name__", fn), exc, wait)
            await anyio.sleep(wait)


def retrying(
    fn: Callable[[T], Awaitable[U]],
    backoff: Backoff = RETRY,
    *,
    retry_on: ExcTypes = Exception,
    rng: random.Random | None = None,
) -> Callable[[T], Awaitable[U]]:
    """Wrap an async function of one item so that each call is retried.

    ::

        pipeline = urls() | concurrent_map(retrying(fetch, Backoff(initial=0.1, max_attempts=4)), limit=20)
    """

    async def call(item: T) -> U:
        return await retry_call(fn, item, backoff=backoff, retry_on=retry_on, rng=rng)

    call.__name__ = getattr(fn, "__name__", "retrying")
    return call


class retry(AbstractSegment[T, U], Generic[T, U]):
    """Map items through an async function, retrying each failing call.

    ::

        pipeline = ids() | retry(fetch_record, Backoff(initial=0.2, max_attempts=5))

    One call at a time (for concurrency use
    ``concurrent_map(retrying(fn, backoff), limit)``).  When an item still
    fails after ``backoff.max_attempts`` tries the last exception is raised (wrap
    in :class:`on_error` to skip or dead-letter it instead).
    """

    def __init__(
        self,
        fn: Callable[[T], Awaitable[U]],
        backoff: Backoff = RETRY,
        *,
        retry_on: ExcTypes = Exception,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.fn = fn
        self.backoff = backoff
        self.retry_on = retry_on
        self.rng = rng
        self.name = name or f"retry({getattr(fn, '__name__', type(fn).__name__)})"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Yield ``fn(item)`` for each item, retried as configured."""
        fn, backoff, retry_on, rng = self.fn, self.backoff, self.retry_on, self.rng
        async for item in items:
            try:
                result = await retry_call(fn, item, backoff=backoff, retry_on=retry_on, rng=rng)
            except retry_on as exc:
                blame(exc, self.label, item)
                raise
            yield result


class retry_source(AbstractSource[T], Generic[T]):
    """Re-open a source after it fails, with backoff, up to ``backoff.max_attempts`` times.

    ::

        pipeline = retry_source(tail_socket("127.0.0.1", 9000), Backoff(initial=0.5, max_attempts=10)) | parse()

    ``source`` is a source, a pipeline that starts with one, or a callable
    returning either (called for each attempt).  Each attempt runs with its
    own ``stream()`` in one producer task; items reach the consumer through a
    bounded channel (``capacity`` items).  ``backoff.max_attempts`` bounds consecutive
    failures: the count (and the delay) start again only after an attempt
    that delivered an item and ran for ``backoff.healthy_after`` seconds, so
    a source that yields a little and fails at once is not re-opened forever
    (``healthy_after=0``: any attempt that delivered an item).  Items
    already delivered are not taken back: where a re-opened source resumes
    is up to the source (a checkpoint, an offset, an event id).  A clean end
    of the source ends the stream.  After the last attempt the last
    exception is raised with its own type.  ``on_retry(failure, exc, delay)``
    is called (sync) before each wait.
    """

    def __init__(
        self,
        source: AbstractSource[T]
        | Pipeline[Never, T]
        | Callable[[], AbstractSource[T]]
        | Callable[[], Pipeline[Never, T]],
        backoff: Backoff = RETRY,
        *,
        retry_on: ExcTypes = Exception,
        capacity: int = 64,
        rng: random.Random | None = None,
        on_retry: Callable[[int, BaseException, float], Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not callable(source) or isinstance(source, (AbstractSource, Pipeline)):
            as_source_pipeline(source)  # fail early on a wrong type
        self.source = source
        self.backoff = backoff
        self.retry_on = retry_on
        self.capacity = capacity
        self.rng = rng
        self.on_retry = on_retry
        self.name = name or "retry_source"

    def _open(self) -> Pipeline[Any, Any]:
        source = self.source
        if callable(source) and not isinstance(source, (AbstractSource, Pipeline)):
            source = source()
        return as_source_pipeline(source)

    async def _produce(self, channel: Channel) -> None:
        retries = Retries(self.backoff, rng=self.rng)
        while True:
            try:
                retries.opened()
                async with self._open().stream(metadata=True) as items:
                    async for item in items:
                        await channel.put(item)
                        retries.delivered()
                break
            except self.retry_on as exc:
                if isinstance(exc, ChannelClosed):
                    raise
                wait = retries.failed()
                if wait is None:
                    failures = retries.failures
                    add_note(exc, f"talkpipe_async: {self.label} gave up after {failures} consecutive failures")
                    raise
                logger.warning("%s: source failed (%r); re-opening in %.3fs", self.label, exc, wait)
                if self.on_retry is not None:
                    self.on_retry(retries.failures, exc, wait)
                await anyio.sleep(wait)

    async def generate(self) -> AsyncIterator[T]:
        """Yield the source's items across re-openings."""
        async with aclosing(produced(self.label, self.capacity, self._produce)) as steps:
            async for item in steps:
                yield item
