"""Recovery: ``catch`` continues a stream that failed with a replacement stream.

The replacement runs with its own ``stream()`` in one producer task of the
run (as ``chain`` runs its inputs), so this stage never yields inside the
replacement's task group; closing or cancelling the run stops it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from .._core._channel import Channel
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSource, PassThrough
from .combine import DEFAULT_LANE, as_source_pipeline, produced

__all__ = ["catch"]

T = TypeVar("T")

log = logging.getLogger("talkpipe_async.operators")

Replacement = Pipeline[Any, Any] | AbstractSource[Any]


async def _replay(channel: Channel, pipeline: Pipeline[Any, Any]) -> None:
    """Producer task: run the replacement and put its items (metadata too) into *channel*."""
    async with pipeline.stream(metadata=True) as items:
        async for item in items:
            await channel.put(item)


class catch(PassThrough[T]):
    """On an upstream error, continue with a replacement stream instead of failing.

    *replacement* is a source or a pipeline that starts with one, or a
    function taking the exception and returning such a source (sync or
    ``async def``).  Only exceptions of the types in *errors* (``Exception``
    subclasses; default: ``Exception``) are caught; others, and
    cancellation, propagate::

        live_feed() | catch(read_jsonl("backup.jsonl"))        # switch to the backup
        src() | parse() | catch(lambda exc: just({"error": str(exc)}))

    The items before the error are yielded first, then the replacement's
    items (metadata too); an error of the replacement propagates with its
    own stage context.  Nothing is lost silently: each caught error is
    counted in ``caught``, kept in ``last_error`` and logged at WARNING with
    its traceback (which shows the failing stage's code; the caught error
    did not leave the run, so the runner has attached no stage note to it).
    Bound: ``capacity`` replacement items wait between its producer task and
    this stage.
    """

    def __init__(
        self,
        replacement: Replacement | Callable[[BaseException], Any],
        *,
        errors: type[Exception] | tuple[type[Exception], ...] = Exception,
        capacity: int = DEFAULT_LANE,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        if isinstance(replacement, (AbstractSource, Pipeline)):
            fixed = as_source_pipeline(replacement)
            self.factory: Callable[[BaseException], Any] = lambda _exc: fixed
        elif callable(replacement):
            self.factory = replacement
        else:
            raise TypeError(f"catch: expected a source, a pipeline or a function, got {replacement!r}")
        kinds = errors if isinstance(errors, tuple) else (errors,)
        if not all(isinstance(k, type) and issubclass(k, Exception) for k in kinds):
            # cancellation and the generator's own close must always get through
            raise TypeError(f"catch: errors must be Exception types, not {errors!r}")
        self.errors = errors
        self.capacity = capacity
        self.caught = 0
        self.last_error: BaseException | None = None
        self.name = name or "catch"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the upstream's items; after a caught error, the replacement's."""
        try:
            async for x in items:
                yield x
            return
        except self.errors as exc:
            failure: BaseException = exc
        self.caught += 1
        self.last_error = failure
        log.warning(
            "%s: continuing with the replacement after %s: %s",
            self.label,
            type(failure).__name__,
            failure,
            exc_info=failure,
        )
        made = self.factory(failure)
        if hasattr(made, "__await__"):
            made = await made
        pipeline = as_source_pipeline(made)
        async with aclosing(produced(self.label, self.capacity, _replay, pipeline)) as steps:
            async for x in steps:
                yield x
