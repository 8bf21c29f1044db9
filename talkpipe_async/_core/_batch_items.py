"""The items of successive batches as one async iterator: how batch-fed sources hand out items.

Sources read I/O in large chunks and produce lists; :func:`batch_items` hands
the items out one at a time.  With the C extension built (the default on
CPython), the per-item step is a C ``__anext__`` whose awaitable is already
done: about three times cheaper than an async generator's resume and
suspend.  Without it (``TALKPIPE_ASYNC_NO_EXTENSIONS=1``, or no compiler at
install time) a plain async generator does the same job.  Both close the
batch iterator on ``aclose()`` and pass its errors through unchanged.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any, TypeVar

from ._segment import AbstractSource

__all__ = ["SPEEDUPS", "BatchSource", "batch_items"]

T = TypeVar("T")

_speedups: Any
try:
    from . import _speedups
except ImportError:
    _speedups = None

#: True when the C extension serves :func:`batch_items` (it is built and
#: ``TALKPIPE_ASYNC_NO_EXTENSIONS`` is not set).  Tests and benchmarks may
#: set it to False to run the pure-Python twin.
SPEEDUPS = _speedups is not None and not os.environ.get("TALKPIPE_ASYNC_NO_EXTENSIONS")


async def _close(batches: AsyncIterator[Any]) -> None:
    close = getattr(batches, "aclose", None)
    if close is not None:
        await close()


if _speedups is not None:

    class _FastItems(_speedups.BatchItems):  # type: ignore[misc]
        """C-stepped items; fetches the next batch from the wrapped iterator when one runs out."""

        def __init__(self, batches: AsyncIterator[list[Any]]) -> None:
            self._batches = batches

        async def _fetch(self) -> Any:
            step = self._batches.__anext__
            while True:
                batch = await step()  # StopAsyncIteration ends the items
                if batch:
                    if type(batch) is not list:
                        batch = list(batch)
                    self._load(batch, 1)
                    return batch[0]

        async def aclose(self) -> None:
            """Close the batch iterator (its ``finally`` blocks run now)."""
            self._load([], 0)
            await _close(self._batches)

        @property
        def ag_running(self) -> bool:
            """Whether the batch generator is running (the runner closes busy stages last)."""
            return bool(getattr(self._batches, "ag_running", False))

        @property
        def ag_frame(self) -> FrameType | None:
            """The batch generator's frame (errors raised in it name the source)."""
            return getattr(self._batches, "ag_frame", None)


async def _slow_items(batches: AsyncIterator[list[Any]]) -> AsyncIterator[Any]:
    try:
        async for batch in batches:
            for item in batch:
                yield item
    finally:
        await _close(batches)


def batch_items(batches: AsyncIterator[list[T]]) -> AsyncIterator[T]:
    """The items of the lists *batches* yields, in order, one per ``__anext__`` (empty lists are skipped)."""
    if SPEEDUPS:
        return _FastItems(batches)
    return _slow_items(batches)


class BatchSource(AbstractSource[T]):
    """A source written as ``batches()``, an async generator of lists; the runner hands out the items.

    Use it when the source reads I/O in chunks and splits them into many
    items: the per-item cost is then a C step instead of a generator resume.
    """

    def batches(self) -> AsyncIterator[list[T]]:
        """Yield lists of items (empty lists are skipped)."""
        raise NotImplementedError

    def generate(self) -> AsyncIterator[T]:
        """The items of :meth:`batches`, one at a time."""
        return batch_items(self.batches())

    def _entry(self) -> Any:
        return type(self).batches
