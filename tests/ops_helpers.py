"""Helpers shared by the operator tests of part B (combine, concurrency, embed)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel


async def until(cond: Callable[[], bool], rounds: int = 2000) -> None:
    """Let other tasks run until *cond* holds (bounded, no time-based sleeps)."""
    for _ in range(rounds):
        if cond():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition not reached")


def task_count() -> int:
    """Running tasks, minus trio's system task that appears lazily on first use of a token."""
    return len([t for t in anyio.get_running_tasks() if "TrioToken" not in (t.name or "")])
