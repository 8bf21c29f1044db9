"""talkpipe-async: pull-based streaming pipelines of async generators.

Segments are async generators chained with ``|``; nothing runs until the
pipeline is consumed, and items flow one at a time::

    from talkpipe_async import segment, source

    @source
    async def numbers(n: int = 10):
        for i in range(n):
            yield i

    @segment
    async def double(items):
        async for x in items:
            yield 2 * x

    async with (numbers(n=3) | double()).stream() as items:
        async for x in items:
            print(x)
"""

from typing import TYPE_CHECKING, Any

from ._core._errors import ErrorContext, TalkpipeAsyncError, error_context
from ._core._fields import assign_field, extract_field
from ._core._metadata import Flush, Metadata, create_metadata, is_metadata
from ._core._pipeline import Pipeline, PipelineRun
from ._core._public import present, show_as_public
from ._core._segment import (
    AbstractFieldSegment,
    AbstractSegment,
    AbstractSource,
    CallableSegment,
    PassThrough,
    field_segment,
    segment,
    source,
    wrap_callable,
)

if TYPE_CHECKING:
    from ._backoff import Backoff
    from ._blocking import BlockingStream, EventLoopRunningError
    from ._core._stats import RunStats, StageSnapshot

__version__ = "0.1.0"

# Names whose modules load on first use: the blocking wrapper brings asyncio, threads and
# concurrent.futures, which a program that only streams inside its own event loop never needs;
# the statistics snapshots are dataclasses, built when the statistics module is first imported.
_LAZY = {
    "Backoff": "._backoff",
    "BlockingStream": "._blocking",
    "EventLoopRunningError": "._blocking",
    "RunStats": "._core._stats",
    "StageSnapshot": "._core._stats",
}


def __getattr__(name: str) -> Any:
    """Load the lazily imported public names on first use (``talkpipe_async.BlockingStream``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    present(value, __name__)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AbstractFieldSegment",
    "AbstractSegment",
    "AbstractSource",
    "Backoff",
    "BlockingStream",
    "EventLoopRunningError",
    "CallableSegment",
    "ErrorContext",
    "Flush",
    "Metadata",
    "PassThrough",
    "Pipeline",
    "PipelineRun",
    "RunStats",
    "StageSnapshot",
    "TalkpipeAsyncError",
    "assign_field",
    "create_metadata",
    "error_context",
    "extract_field",
    "field_segment",
    "is_metadata",
    "segment",
    "source",
    "wrap_callable",
]

show_as_public(globals())
