"""How a run opens and ends: its task group, the consumer's scopes, cleanup with a deadline, the error rule.

Opening a run enters a task group and, inside it, a :class:`Stoppable` around
the consumer's block.  The block is shielded from cancellations from outside
the run; a watch task (outside the shield) sees such a cancellation and
delivers it to the consumer once, after which the consumer's cleanup runs
shielded.  The run's own tasks are shielded the same way and stopped by the
run (see :mod:`._stop`).  So every stage's ``finally`` can await, whatever
ended the run, until the cleanup deadline.

Ending a run (:meth:`RunScope.close`): close the stages downstream first,
stop every task, wait for them, close the stages those tasks were running,
then leave the task group.  The outcome (:func:`outcome`) follows one rule:
when a task of the run failed, leaving the block raises that error, even if
a cancellation is on its way out; a cancellation with no failure goes on as a
cancellation; the consumer's own exception goes on unchanged.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING and sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from ._errors import annotate, attach_context, error_context
from ._logs import logger
from ._run import RESTOP_AFTER, RunContext
from ._stop import Stoppable

if TYPE_CHECKING:
    import anyio.abc

__all__ = ["CLEANUP_TIMEOUT", "RunScope", "close_each", "close_one"]

CLEANUP_TIMEOUT = 10.0


def _cancelled(exc: BaseException) -> bool:
    return isinstance(exc, anyio.get_cancelled_exc_class())


async def close_each(gens: Iterable[Any]) -> BaseException | None:
    """Close every one of *gens* in turn, whatever an earlier one raised; return the first error."""
    first: BaseException | None = None
    for gen in gens:
        error = await close_one(gen)
        first = first or error
    return first


async def close_one(gen: Any) -> BaseException | None:
    """Close one stage's generator; return (not raise) what its ``finally`` raised."""
    try:
        if hasattr(gen, "aclose"):
            await gen.aclose()
        elif hasattr(gen, "close"):
            gen.close()
    except RuntimeError as err:
        if "already running" not in str(err):
            return err
    except BaseException as err:  # reported once every stage is closed
        if _cancelled(err):
            logger().error("a stage's cleanup was cut short: the %.0f s cleanup deadline passed", CLEANUP_TIMEOUT)
            return None
        return err
    return None


def _groups() -> type[BaseExceptionGroup[BaseException]]:
    """``BaseExceptionGroup``; on Python 3.10 the backport's, imported when a run first ends (not at import: with
    ``typing_extensions`` and ``textwrap`` it takes about 19 ms)."""
    if sys.version_info >= (3, 11):
        return BaseExceptionGroup
    from exceptiongroup import BaseExceptionGroup as groups  # pragma: no cover

    return groups  # pragma: no cover


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """A task's single error keeps its own type; several stay grouped; cancellations alone are none."""
    errors = [e for e in group.exceptions if not _cancelled(e)]
    if not errors:
        return None
    if len(errors) == 1:
        inner: BaseException = errors[0]
        return _unwrap(inner) if isinstance(inner, _groups()) else inner
    return group


async def _deliver_outside_cancellation() -> BaseException | None:
    """Raise here the cancellation of a scope around the run that never reached the block.

    (The block did not await after the scope was cancelled.)  Leaving a
    fresh scope restarts anyio's delivery of the outer cancellation, and the
    checkpoint takes it.
    """
    with anyio.CancelScope():  # noqa: ASYNC100  # leaving it is the point
        pass
    from anyio.lowlevel import checkpoint

    try:
        await checkpoint()
    except anyio.get_cancelled_exc_class() as err:
        return err
    return None


class RunScope:
    """The task group of one run, the consumer's :class:`Stoppable` and the outside-cancellation watch."""

    def __init__(self) -> None:
        self.run: RunContext | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._body = Stoppable()
        self._exiting = False
        self._closed: anyio.Event | None = None

    async def enter(self) -> RunContext:
        """Open the task group and the consumer's scopes (call from the consumer's task)."""
        tg = self._tg = anyio.create_task_group()
        await tg.__aenter__()
        self.run = RunContext(tg, on_failure=self._interrupt_consumer)
        self._body.__enter__()
        tg.start_soon(self._watch_outside, name="talkpipe_async cancellation watch")
        return self.run

    def _interrupt_consumer(self) -> None:
        """A task failed, or the run was cancelled from outside: interrupt the consumer's block once.

        The block's unwinding gets the cleanup deadline: the stages chained in
        the consumer's task clean up inside the block, before the run's own
        close can set one, and for a run streamed inside a task of another run
        nothing else could reach through the block's shield.
        """
        if not self._exiting:
            self._body.stop(CLEANUP_TIMEOUT)

    async def _watch_outside(self) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():  # from outside the run (or by close(), which sets _exiting first)
            if not self._exiting:
                self._interrupt_consumer()
                with anyio.CancelScope(shield=True):
                    await self._restop_consumer()
            raise

    async def _restop_consumer(self) -> None:
        """Deliver the cancellation again while the consumer goes on, having caught it in an inner scope."""
        closed = self._closed = anyio.Event()
        while not self._exiting:
            with anyio.move_on_after(RESTOP_AFTER):
                await closed.wait()
            self._body.restop()

    async def close(self, close_stages: Callable[[list[Any]], Awaitable[BaseException | None]]) -> tuple[
        BaseException | None, BaseException | None
    ]:
        """End the run; return (the first error of a stage or task, a cancellation raised on the way out)."""
        assert self.run is not None and self._tg is not None
        run, tg = self.run, self._tg
        self._exiting = True
        self._body.shield_now(CLEANUP_TIMEOUT)
        error: BaseException | None = None
        busy: list[Any] = []
        try:
            error = await close_stages(busy)
            run._closing()
            run._stop_all(CLEANUP_TIMEOUT)
            await run._wait_all()
            closed = await close_each(busy)
            error = error or closed
        except anyio.get_cancelled_exc_class():  # the cleanup deadline passed
            logger().error("the run's cleanup passed its %.0f s deadline: cancelling what still runs", CLEANUP_TIMEOUT)
            run._stop_all(0.0)
        self._body.__exit__(None, None, None)
        if self._closed is not None:
            self._closed.set()
        tg.cancel_scope.cancel()  # ends the watch task
        outer: BaseException | None = None
        try:
            await tg.__aexit__(None, None, None)
        except _groups() as group:
            error = error or _unwrap(group)
        except BaseException as err:
            outer = err
        if outer is None and anyio.current_effective_deadline() == -math.inf:
            outer = await _deliver_outside_cancellation()
        if run.failure is not None:  # a task's failure comes first: it is what stopped the run
            if error is not None and error is not run.failure:
                logger().error("a stage also failed while the run was closing", exc_info=error)
            error = run.failure
        return error, outer


def outcome(
    exc: BaseException | None,
    error: BaseException | None,
    outer: BaseException | None,
    frames: Any,
    failed_task: str | None,
) -> BaseException | None:
    """What leaving the block raises: None (let *exc* go on, or return normally) or an exception.

    *exc*: what the block raised; *error*: a stage's or task's failure;
    *outer*: a cancellation that arrived while the run was closing.
    """
    if exc is not None and not _cancelled(exc):  # the consumer's (or an inline stage's) exception goes on
        if error is not None and error is not exc:
            logger().error("a task of the run failed too", exc_info=error)
        return None
    if error is not None:
        annotate(error, frames)
        if failed_task is not None and error_context(error) is None and isinstance(error, Exception):
            attach_context(error, failed_task)
        return error
    return None if exc is not None else outer
