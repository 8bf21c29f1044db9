"""The context of one pipeline run: where concurrent stages start their tasks."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio

from ._logs import logger
from ._stop import Stoppable

if TYPE_CHECKING:
    import anyio.abc

__all__ = ["RunContext", "current_run"]

_current: ContextVar[RunContext | None] = ContextVar("talkpipe_async_run", default=None)
RESTOP_AFTER = 0.25


class RunContext:
    """Owns the tasks of one run.

    Stages whose work really is concurrent (read-ahead, fan-in, fan-out,
    threads) start their tasks here instead of opening a task group around a
    ``yield``.  When the run ends, the runner first closes every stage
    (downstream first), then stops these tasks and waits for them, so no
    task or thread outlives the ``stream()`` block.  A cancellation from
    outside the run does not reach these tasks directly: the run stops them
    itself, once, and their ``finally`` blocks then run shielded until the
    cleanup deadline (see :class:`~talkpipe_async._core._stop.Stoppable`).
    """

    def __init__(self, task_group: anyio.abc.TaskGroup, on_failure: Callable[[], Any] | None = None) -> None:
        self._tg = task_group
        self._closers: list[Callable[[], Any]] = []
        self._live: set[Stoppable] = set()
        self._idle: anyio.Event | None = None
        self._stopping = False
        self._on_failure = on_failure
        self.failure: BaseException | None = None
        self.failed_task: str | None = None

    def start_soon(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str | None = None
    ) -> Stoppable:
        """Start ``func(*args)`` as a task of the run; return its handle (``handle.stop(grace)``).

        A task should hand its errors to the stage that started it (through
        a channel).  An error that escapes a task is not lost: the run stops,
        and leaving the ``stream()`` block raises that error (with its type),
        even if a cancellation is also on its way out.
        """
        handle = Stoppable()
        if self._stopping:
            handle.stop()
        else:
            self._live.add(handle)  # from now on: a task not yet started is stopped too
        self._tg.start_soon(self._guarded, handle, func, args, name, name=name)
        return handle

    async def _guarded(
        self, handle: Stoppable, func: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...], name: str | None
    ) -> None:
        try:
            if handle.stopped:
                return
            with handle:
                await func(*args)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # raised when the run ends (see start_soon)
            self._fail(exc, name)
        finally:
            self._live.discard(handle)
            if not self._live and self._idle is not None:
                self._idle.set()

    def _fail(self, exc: BaseException, name: str | None) -> None:
        if self.failure is not None:
            if exc is not self.failure:
                logger().error("another task of the run failed too", exc_info=exc)
            return
        self.failure = exc
        self.failed_task = name
        if self._on_failure is not None:
            self._on_failure()

    def on_close(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` (sync) when the run starts closing, before tasks are stopped."""
        self._closers.append(callback)

    def _closing(self) -> None:
        for callback in reversed(self._closers):
            callback()

    def _stop_all(self, grace: float) -> None:
        """Stop every task of the run (tasks started from now on do not run)."""
        self._stopping = True
        for handle in list(self._live):
            handle.stop(grace)

    async def _wait_all(self) -> None:
        """Wait until every task of the run has returned.

        A stopped task whose inner scope caught the cancellation as its own
        (trio: a ``sleep`` whose deadline passed at that moment) goes on
        shielded; every ``RESTOP_AFTER`` seconds such tasks get it again.
        """
        while self._live:
            self._idle = anyio.Event()
            with anyio.move_on_after(RESTOP_AFTER):
                await self._idle.wait()
            for handle in list(self._live):
                handle.restop()


def current_run() -> RunContext:
    """The run whose stages are executing now (``RuntimeError`` outside a run)."""
    run = _current.get()
    if run is None:
        raise RuntimeError("no pipeline run is active: this stage must run inside pipeline.stream()")
    return run
