"""Helpers shared by the operator tests of part B (combine, concurrency, embed)."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from tests.helpers.wait import until as until


def task_count() -> int:
    """Running tasks, minus trio's system task that appears lazily on first use of a token."""
    return len([t for t in anyio.get_running_tasks() if "TrioToken" not in (t.name or "")])
