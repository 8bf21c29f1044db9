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

from ._backoff import Backoff
from ._blocking import BlockingStream, EventLoopRunningError
from ._core._errors import ErrorContext, error_context
from ._core._fields import assign_field, extract_field
from ._core._metadata import Flush, Metadata, create_metadata, is_metadata
from ._core._pipeline import Pipeline, PipelineRun
from ._core._segment import (
    AbstractFieldSegment,
    AbstractSegment,
    AbstractSource,
    CallableSegment,
    field_segment,
    segment,
    source,
    wrap_callable,
)
from ._core._stats import RunStats, StageSnapshot

__version__ = "0.1.0"

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
    "Pipeline",
    "PipelineRun",
    "RunStats",
    "StageSnapshot",
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
