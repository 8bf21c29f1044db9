"""Helpers shared by the operator tests of part B (combine, concurrency, embed)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel

from talkpipe_async import source
from tests.helpers.wait import until as until


def task_count() -> int:
    """Running tasks, minus trio's system task that appears lazily on first use of a token."""
    return len([t for t in anyio.get_running_tasks() if "TrioToken" not in (t.name or "")])


async def pulled_while_the_consumer_holds_the_first_output(stage: Any) -> tuple[int, set[str]]:
    """How many items the upstream gave while the consumer sits on the first output; the feed tasks then running."""
    pulled = 0

    @source
    async def counting() -> Any:
        nonlocal pulled
        for i in range(5000):
            pulled += 1
            yield i

    async with (counting() | stage).stream() as items:
        async for _ in items:
            await anyio.wait_all_tasks_blocked()  # the feeder has filled its read-ahead and waits
            return pulled, {t.name or "" for t in anyio.get_running_tasks() if "feed of" in (t.name or "")}
    raise AssertionError("no output")
