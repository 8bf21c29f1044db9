"""Sources shared by the tests of several parts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio.lowlevel

from talkpipe_async import source


@source
async def numbers() -> AsyncIterator[int]:
    """The ints 0, 1, 2, ... without end, one checkpoint before each (the consumer decides when to stop)."""
    i = 0
    while True:
        await anyio.lowlevel.checkpoint()
        yield i
        i += 1
