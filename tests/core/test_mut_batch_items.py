"""The items of successive batches (``talkpipe_async._core._batch_items``): batch iterators that cannot be closed.

``batch_items`` closes the batch iterator when the items end or are closed, if it has an ``aclose``: it may be given
any async iterator of lists, not only an async generator, and one without ``aclose`` (a class with ``__anext__``)
is read to its end, or left early, without an error.  Each test runs with the C step and with its
pure-Python twin (``speedups``).
"""

from __future__ import annotations

from typing import Any

import pytest

from talkpipe_async._core._batch_items import batch_items

pytestmark = pytest.mark.anyio


class PlainBatches:
    """An async iterator of lists with no ``aclose``: it counts the batches it handed out."""

    def __init__(self, data: list[list[int]]) -> None:
        self.data = list(data)
        self.handed = 0

    def __aiter__(self) -> PlainBatches:
        return self

    async def __anext__(self) -> list[int]:
        if not self.data:
            raise StopAsyncIteration
        self.handed += 1
        return self.data.pop(0)


async def test_a_batch_iterator_without_aclose_is_read_to_its_end(speedups: str) -> None:
    """Every item of every batch comes out in order, and the end is a plain end (nothing to close, no error)."""
    batches = PlainBatches([[1, 2], [], [3]])
    it = batch_items(batches)
    assert [x async for x in it] == [1, 2, 3]
    assert batches.handed == 3


async def test_closing_items_over_a_batch_iterator_without_aclose_is_no_error(speedups: str) -> None:
    """Items closed before the end (``aclose()``) leave an iterator without ``aclose`` alone: no error, and no
    further batch is read."""
    batches = PlainBatches([[1, 2], [3], [4]])
    it: Any = batch_items(batches)
    assert await it.__anext__() == 1
    await it.aclose()
    assert batches.handed == 1
