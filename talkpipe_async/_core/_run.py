"""The context of one pipeline run: where concurrent stages start their tasks."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

import anyio
import anyio.abc

__all__ = ["RunContext", "current_run"]

_current: ContextVar[RunContext | None] = ContextVar("talkpipe_async_run", default=None)


class RunContext:
    """Owns the task group of one run.

    Stages whose work really is concurrent (read-ahead, fan-in, fan-out,
    threads) start their tasks here instead of opening a task group around a
    ``yield``.  When the run ends, the runner first closes every stage
    (downstream first), then cancels these tasks and waits for them, so no
    task or thread outlives the ``stream()`` block.
    """

    def __init__(self, task_group: anyio.abc.TaskGroup) -> None:
        self._tg = task_group
        self._closers: list[Callable[[], Any]] = []

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str | None = None) -> None:
        """Start ``func(*args)`` as a task of the run.

        The task must hand its errors to the stage that started it (through a
        channel), not raise them: an error that escapes a task cancels the
        whole run and is re-raised when the run ends.
        """
        self._tg.start_soon(func, *args, name=name)

    def on_close(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` (sync) when the run starts closing, before tasks are cancelled."""
        self._closers.append(callback)

    def _closing(self) -> None:
        for callback in reversed(self._closers):
            callback()


def current_run() -> RunContext:
    """The run whose stages are executing now (``RuntimeError`` outside a run)."""
    run = _current.get()
    if run is None:
        raise RuntimeError("no pipeline run is active: this stage must run inside pipeline.stream()")
    return run
