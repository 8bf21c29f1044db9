"""Stopping one task of a run so that the ``finally`` blocks it unwinds through can still await.

A task of the run (a feeder, a worker, a producer, the consumer's block) may
be in the middle of a stage's step when the run stops: awaiting a source's
read, say.  Only a cancellation can interrupt that await, and on trio (and
with anyio's cancel scopes on asyncio) a cancellation is level-triggered:
every later ``await`` inside the cancelled scope raises again, so a stage
whose ``finally`` awaits (to close a connection, to flush) would be cut short.

:class:`Stoppable` wraps the task's work in two scopes::

    stop    (shielded: cancellations from outside the run do not reach in; cancelled once, by stop())
      guard (shielded, with the cleanup deadline, once that cancellation has arrived)

``stop()`` cancels ``stop``; as soon as that cancellation has been delivered
to the task (an exception is on its way up through the stage's frames), the
``guard`` scope is shielded and given the cleanup deadline, so the awaits in
the ``finally`` blocks run normally until the deadline; past it they are
cancelled.  How to see the moment of delivery differs by backend: on trio an
instrument sees the task rescheduled with ``Cancelled``; on asyncio the
``stop`` scope is a subclass of anyio's that looks at the task's
cancel-request count right after each of anyio's delivery attempts (anyio
calls ``Task.cancel`` in a loop callback, and tries again every turn until
the task leaves its scope).  The task cannot run between an attempt and that
look, so the guard is shielded before the task's ``finally`` blocks start,
however long the task sat in a shielded wait first (a worker thread
finishing its item: anyio only tries again when that wait ends).
Nothing here runs per item: the scopes are entered once per task.
"""

from __future__ import annotations

import math
import sys
import weakref
from types import TracebackType
from typing import Any, cast

import anyio

__all__ = ["Stoppable", "current_task"]

def current_task() -> Any:
    """The running task object of the current backend."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_task()
    import asyncio

    return asyncio.current_task()


def _asyncio_cancels(task: Any) -> int:
    """How many cancellation requests *task* has received (asyncio)."""
    if sys.version_info >= (3, 11):
        return int(task.cancelling())
    waiter = getattr(task, "_fut_waiter", None)  # pragma: no cover - Python 3.10
    return int(bool(getattr(task, "_must_cancel", False) or (waiter is not None and waiter.cancelled())))


_watched_scope: type[Any] | None = None


def _asyncio_stop_scope() -> Any:
    """anyio's asyncio cancel scope (shielded), calling its ``on_delivery`` after each delivery attempt."""
    global _watched_scope
    if _watched_scope is None:
        from anyio._backends._asyncio import CancelScope

        class WatchedScope(CancelScope):
            on_delivery: Any = None

            def _deliver_cancellation(self, origin: Any) -> bool:
                retry = bool(super()._deliver_cancellation(origin))
                if self.on_delivery is not None:
                    self.on_delivery()
                return retry

        _watched_scope = WatchedScope
    return _watched_scope(shield=True)


def _is_trio_cancelled(error: Any) -> bool:
    import trio

    return isinstance(error, trio.Cancelled)


def _trio_pending_error(task: Any) -> Any:
    """What trio will raise in *task* when it resumes (set by ``reschedule``), if anything."""
    return getattr(getattr(task, "_next_send", None), "error", None)


def _let_cancel_point_raise(task: Any) -> None:
    """If *task* takes the cancellation at a cancel point, let it leave that point as a cancellation.

    trio's ``checkpoint()`` raises ``Cancelled`` from a scope of its own
    (already cancelled, deadline -inf) that catches the exception unless a
    cancellation is still visible around it.  Once the guard is shielded none
    is, and the stop would be lost; so that scope is told it is not cancelled
    any more (it is left at once, in the task's next step).
    """
    status = getattr(task, "_cancel_status", None)
    scope = getattr(status, "_scope", None)
    if scope is not None and scope.cancel_called and scope.deadline == -math.inf:
        status.effectively_cancelled = False  # type: ignore[union-attr]


class _TrioWatch:
    """A trio instrument: shields the guard the moment ``Cancelled`` is delivered to the task.

    Any ``Cancelled`` that reaches the task once it is stopped counts: ours,
    or one of an inner scope (a cancel point's own scope, the deadline that
    ends a ``trio.sleep``).  Such an inner scope may catch the exception as
    its own, and the task then goes on, shielded.  The watch stays until the
    task leaves, so it can deliver again (:meth:`rearm`, when the run asks:
    :meth:`Stoppable.restop`) once the delivered exception no longer exists
    (it was caught, it is not unwinding anything).  Not at once: a stage
    that was ending anyway may be running its ``finally`` by then.
    """

    def __init__(self, owner: Stoppable) -> None:
        self.owner = owner
        self.active = True
        self.delivered: weakref.ref[BaseException] | None = None
        self.rearming = False

    def task_scheduled(self, task: Any) -> None:
        owner = self.owner
        if task is owner._task and self.delivered is None:
            error = _trio_pending_error(task)
            if _is_trio_cancelled(error):
                self.delivered = weakref.ref(error)
                if not self.rearming:  # (else rearm() shields once trio's recalculation is over)
                    owner._shield_guard()
                    _let_cancel_point_raise(task)

    def rearm(self) -> None:
        """Deliver the cancellation again if the last one was caught (a blocked task gets it at once)."""
        delivered = self.delivered
        if not self.active or self.owner._exited or delivered is None or delivered() is not None:
            return
        self.delivered = None
        self.rearming = True
        try:
            self.owner._guard.shield = False
        finally:
            self.rearming = False
        if self.delivered is not None:
            self.owner._shield_guard()
            _let_cancel_point_raise(self.owner._task)

    def remove(self) -> None:
        if self.active:
            self.active = False
            import trio

            try:
                trio.lowlevel.remove_instrument(cast(Any, self))
            except (KeyError, RuntimeError):  # already removed, or the run has ended
                pass


class Stoppable:
    """Scopes around one task's work: ``stop()`` interrupts it once, then lets it unwind shielded.

    Use as ``with handle: await work()`` inside the task.  ``stop(grace)``
    may be called from any task of the loop, before, during or after the
    work; a handle stopped before the task enters it makes ``stopped`` true
    so the task can skip its work.
    """

    __slots__ = (
        "_deadline",
        "_entered",
        "_exited",
        "_guard",
        "_stop",
        "_task",
        "_watch",
        "stopped",
    )

    def __init__(self) -> None:
        import sniffio

        # A shield stops outer cancellations, not its own.
        on_trio = sniffio.current_async_library() == "trio"
        self._stop: Any = anyio.CancelScope(shield=True) if on_trio else _asyncio_stop_scope()
        self._guard = anyio.CancelScope()
        self._task: Any = None
        self._watch: _TrioWatch | None = None
        self._entered = False
        self._exited = False
        self._deadline = math.inf
        self.stopped = False

    def __enter__(self) -> Stoppable:
        self._stop.__enter__()
        self._guard.__enter__()
        self._task = current_task()
        self._entered = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._exited = True
        if self._watch is not None:
            self._watch.remove()
        swallowed = False
        for scope in (self._guard, self._stop):
            if swallowed:
                scope.__exit__(None, None, None)
            elif scope.__exit__(exc_type, exc, tb):
                swallowed = True
        return swallowed

    def shield_now(self, grace: float) -> None:
        """From inside the task: run on shielded from any cancellation, for at most *grace* seconds."""
        self._deadline = anyio.current_time() + grace
        if self._watch is not None:
            self._watch.remove()
        self._shield_guard()

    def stop(self, grace: float | None = None) -> None:
        """Interrupt the work once; its unwinding then runs shielded for at most *grace* seconds.

        ``grace=None``: no deadline (the owner sets one later with :meth:`shield_now`).
        """
        if self.stopped:
            return
        self.stopped = True
        if not self._entered or self._exited:
            return
        self._deadline = math.inf if grace is None else anyio.current_time() + grace
        if self._task is current_task():  # stopping itself: a plain cancellation at its next await
            self._stop.cancel()
            return
        import sniffio

        if sniffio.current_async_library() == "trio":
            self._stop_trio()
        else:
            self._stop_asyncio()

    def restop(self) -> None:
        """Stopped, still running, and the cancellation was caught: deliver it again (trio)."""
        if self._watch is not None:
            self._watch.rearm()

    def _reason(self) -> str:
        return f"talkpipe_async stopped task {id(self):x}"

    def _shield_guard(self) -> None:
        guard = self._guard
        if not guard.shield:
            guard.shield = True
        if guard.deadline != self._deadline and not guard.cancel_called:
            guard.deadline = self._deadline

    def _stop_trio(self) -> None:
        import trio

        watch = self._watch = _TrioWatch(self)
        trio.lowlevel.add_instrument(cast(Any, watch))  # sees the delivery, now (a blocked task) or at its next wait
        self._stop.cancel(self._reason())

    def _stop_asyncio(self) -> None:
        task = self._task
        before = _asyncio_cancels(task)

        def delivered() -> None:  # right after each of anyio's attempts, before the task runs again
            if not self._exited and not self._guard.shield and _asyncio_cancels(task) != before:
                self._shield_guard()

        self._stop.on_delivery = delivered
        self._stop.cancel()  # anyio calls task.cancel() now unless the task sits in a shielded scope
