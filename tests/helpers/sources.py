"""Sources and segments shared by the tests of several parts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio.lowlevel

from talkpipe_async import segment, source


@source
async def numbers() -> AsyncIterator[int]:
    """The ints 0, 1, 2, ... without end, one checkpoint before each (the consumer decides when to stop)."""
    i = 0
    while True:
        await anyio.lowlevel.checkpoint()
        yield i
        i += 1


@segment(process_metadata=True)
def sync_seen_by(items: Iterable[Any], log: list[Any]) -> Iterator[Any]:
    """A sync stage that takes metadata: notes every item it sees, metadata included, and passes it on."""
    for x in items:
        log.append(x)
        yield x


@segment
def sync_fails_on(items: Iterable[int], bad: int) -> Iterator[int]:
    """A sync stage that raises ``ValueError`` at the item *bad*."""
    for x in items:
        if x == bad:
            raise ValueError(f"bad item {x}")
        yield x


class Countdown:
    """An async iterator that is not an async generator: n-1, n-2, ..., 0, one checkpoint before each."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __aiter__(self) -> Countdown:
        return self

    async def __anext__(self) -> int:
        await anyio.lowlevel.checkpoint()
        if self.n == 0:
            raise StopAsyncIteration
        self.n -= 1
        return self.n
