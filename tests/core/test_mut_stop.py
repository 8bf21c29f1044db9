"""Stopping one task of a run (``talkpipe_async._core._stop.Stoppable``), on every backend.

Pinned from the promise of :class:`Stoppable`: ``stop()`` interrupts the work once, whatever it awaits; the
``finally`` blocks it unwinds through can still await, for at most the grace given (no deadline without one);
a cancellation from outside does not reach in; a stop before the work starts only marks the handle; a task that
stops itself gets a plain cancellation; ``shield_now`` runs on shielded for at most its grace; and the work's own
errors leave the ``with`` unchanged.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import anyio
import anyio.lowlevel
import pytest

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from talkpipe_async._core._stop import Stoppable, current_task

pytestmark = pytest.mark.anyio


async def stopped_work(
    handle: Stoppable, entered: anyio.Event, log: list[Any], cleanup: Any, shielded_first: anyio.Event | None = None
) -> None:
    """The work of a task: wait forever inside *handle*; on the way out run *cleanup* (it may await)."""
    with handle:
        try:
            if shielded_first is not None:
                with anyio.CancelScope(shield=True):  # a wait the stop cannot interrupt (a worker thread's item)
                    entered.set()
                    await shielded_first.wait()
            else:
                entered.set()
            with anyio.move_on_after(3):  # bounded: a stop that never comes fails the test instead of hanging it
                await anyio.sleep_forever()
            log.append("not stopped")
        finally:
            log.append("unwinding")
            await cleanup(log)
    log.append("left")


async def awaiting_cleanup(log: list[Any]) -> None:
    for _ in range(3):
        await anyio.sleep(0.005)
        await anyio.lowlevel.checkpoint()
    log.append("cleaned up")


async def endless_cleanup(log: list[Any]) -> None:
    """Await forever; log the loop's clock when the wait is cut (the tests compare it with the time of the stop)."""
    try:
        await anyio.sleep_forever()
    finally:
        log.append(anyio.current_time())


def cut_within_grace(cut_at: float, stopped_at: float, grace: float) -> bool:
    """The unwinding was cut once the grace counted from the stop had passed, and not long after.

    The grace runs from the call of ``stop`` (or ``shield_now``), not from the moment the task resumes: on a loaded
    machine the task may resume late, so only the stop's own time is a sound lower bound.
    """
    return stopped_at + grace <= cut_at < stopped_at + 2.0


def parts() -> tuple[Stoppable, anyio.Event, list[Any]]:
    """A fresh handle, the event its work sets once inside, and the log of its unwinding."""
    return Stoppable(), anyio.Event(), []


async def stop_inside(
    handle: Stoppable,
    entered: anyio.Event,
    log: list[Any],
    cleanup: Any,
    grace: float | None,
    *,
    shielded_first: anyio.Event | None = None,
    then: Any = None,
) -> float:
    """Run the work in a task, stop it with *grace* once it is inside, then await ``then()`` if given; return the
    loop's clock at the stop once the work has left (all of it bounded by 5 s)."""
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stopped_work, handle, entered, log, cleanup, shielded_first)
            await entered.wait()
            stopped_at = anyio.current_time()
            handle.stop(grace)
            if then is not None:
                await then()
    return stopped_at


async def test_a_new_handle_is_not_stopped() -> None:
    assert Stoppable().stopped is False


async def test_stop_interrupts_the_work_and_its_finally_may_await() -> None:
    """A stop from another task interrupts a wait; the ``finally`` it unwinds through awaits normally; the
    interruption ends at the ``with`` (the task goes on after it)."""
    handle, entered, log = parts()

    async def then() -> None:
        assert handle.stopped

    await stop_inside(handle, entered, log, awaiting_cleanup, 5.0, then=then)
    assert log == ["unwinding", "cleaned up", "left"]


async def test_the_grace_bounds_the_unwinding() -> None:
    """A ``finally`` that would await forever is cancelled once the grace given to ``stop`` has passed."""
    handle, entered, log = parts()
    stopped_at = await stop_inside(handle, entered, log, endless_cleanup, 0.1)
    assert log[0] == "unwinding" and log[2] == "left"
    assert cut_within_grace(log[1], stopped_at, 0.1)


async def test_without_a_grace_the_unwinding_has_no_deadline() -> None:
    """``stop()`` with no grace: the ``finally`` may await as long as it needs (here until the test lets it)."""
    handle, entered, log = parts()
    done = anyio.Event()

    async def cleanup(log: list[Any]) -> None:
        await done.wait()
        log.append("cleaned up")

    async def then() -> None:
        await anyio.sleep(0.2)  # longer than any deadline a stop could have set by mistake
        assert log == ["unwinding"]
        done.set()

    await stop_inside(handle, entered, log, cleanup, None, then=then)
    assert log == ["unwinding", "cleaned up", "left"]


async def test_a_second_stop_changes_nothing() -> None:
    """Only the first ``stop`` counts: a later one does not lift its grace."""
    handle, entered, log = parts()

    async def then() -> None:
        handle.stop()
        handle.stop(30.0)

    stopped_at = await stop_inside(handle, entered, log, endless_cleanup, 0.1, then=then)
    assert cut_within_grace(log[1], stopped_at, 0.1) and log[2] == "left"


@pytest.mark.parametrize("turns", [0, 3, 200])
async def test_a_stop_during_a_shielded_wait_is_delivered_after_it(turns: int) -> None:
    """Work sitting in a shielded wait when it is stopped (a worker thread finishing its item) gets the stop at
    its next wait after the shield, however long the shielded wait lasted, and still unwinds with awaits."""
    handle, entered, log = parts()
    release = anyio.Event()

    async def then() -> None:
        for _ in range(turns):
            await anyio.lowlevel.checkpoint()
        if turns > 100:
            await anyio.sleep(0.05)  # a long shielded wait, in time as well as in loop turns
        assert log == []
        release.set()

    await stop_inside(handle, entered, log, awaiting_cleanup, 5.0, shielded_first=release, then=then)
    assert log == ["unwinding", "cleaned up", "left"]


async def test_a_stop_during_a_shielded_wait_still_has_its_grace() -> None:
    """The grace of a stop delivered after a shielded wait bounds the unwinding as usual."""
    handle, entered, log = parts()
    release = anyio.Event()

    async def then() -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        release.set()

    stopped_at = await stop_inside(handle, entered, log, endless_cleanup, 0.1, shielded_first=release, then=then)
    assert log[0] == "unwinding" and log[2] == "left"
    assert cut_within_grace(log[1], stopped_at, 0.1)


async def test_a_stop_before_the_work_only_marks_the_handle() -> None:
    """Stopped before the task enters it, the handle says so (the task may skip its work); entering it later
    does not interrupt anything."""
    handle = Stoppable()
    handle.stop(0.0)
    assert handle.stopped
    reached = False
    with handle:
        await anyio.sleep(0.01)
        await anyio.lowlevel.checkpoint()
        reached = True
    assert reached


async def test_a_stop_after_the_work_left_does_nothing() -> None:
    handle = Stoppable()
    with handle:
        await anyio.lowlevel.checkpoint()
    handle.stop(0.0)
    assert handle.stopped
    await anyio.sleep(0)  # nothing is cancelled afterwards
    await anyio.lowlevel.checkpoint()


async def test_a_cancellation_from_outside_does_not_reach_in() -> None:
    """The work runs shielded from the scopes around it; only ``stop`` interrupts it."""
    reached = False
    with anyio.CancelScope() as outer:
        outer.cancel()
        with Stoppable():
            await anyio.sleep(0.01)
            await anyio.lowlevel.checkpoint()
            reached = True
    assert reached


async def test_a_task_stopping_itself_gets_a_plain_cancellation() -> None:
    """Stopped from inside, the work is cancelled at its next await, and its ``finally`` is not shielded: an
    await there is cancelled too; the ``with`` ends the cancellation."""
    handle = Stoppable()
    log: list[str] = []
    with anyio.fail_after(5):
        with handle:
            handle.stop(5.0)
            try:
                await anyio.sleep(2)
                log.append("not interrupted")
            finally:
                start = anyio.current_time()
                try:
                    await anyio.sleep(2)
                finally:
                    log.append("cut" if anyio.current_time() - start < 1 else "shielded")
        log.append("left")
    assert log == ["cut", "left"]


async def test_shield_now_shields_for_at_most_its_grace() -> None:
    """From inside the work, ``shield_now(grace)``: a cancellation from anywhere (a stop, an outer scope) does not
    reach the work, which ends once the grace has passed; the ``with`` ends that."""
    handle = Stoppable()
    log: list[Any] = []
    with anyio.fail_after(5):
        with anyio.CancelScope() as outer:
            with handle:
                shielded_at = anyio.current_time()
                handle.shield_now(0.1)
                outer.cancel()
                try:
                    await anyio.sleep_forever()
                finally:
                    log.append(anyio.current_time())
            log.append("left")
    assert cut_within_grace(log[0], shielded_at, 0.1) and log[1] == "left"


async def test_shield_now_after_a_stop_sets_the_deadline() -> None:
    """A stop without grace, then ``shield_now`` from inside the unwinding: the grace given there is the deadline."""
    handle, entered, log = parts()

    shielded_at: list[float] = []

    async def cleanup(log: list[Any]) -> None:
        shielded_at.append(anyio.current_time())
        handle.shield_now(0.1)
        await endless_cleanup(log)

    await stop_inside(handle, entered, log, cleanup, None)
    assert log[0] == "unwinding" and cut_within_grace(log[1], shielded_at[0], 0.1) and log[2] == "left"


async def test_the_works_own_error_leaves_unchanged() -> None:
    """An error raised inside the handle, stopped or not, leaves the ``with`` as itself."""
    with pytest.raises(KeyError, match="own"):
        with Stoppable():
            await anyio.lowlevel.checkpoint()
            raise KeyError("own")
    handle, entered = Stoppable(), anyio.Event()

    async def fails_on_the_way_out() -> None:
        with handle:
            try:
                entered.set()
                await anyio.sleep_forever()
            finally:
                await anyio.sleep(0)
                raise KeyError("cleanup")

    with pytest.raises(BaseException) as info:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fails_on_the_way_out)
            await entered.wait()
            handle.stop(5.0)
    errors = info.value.exceptions if isinstance(info.value, BaseExceptionGroup) else (info.value,)
    assert [type(e) for e in errors] == [KeyError] and str(errors[0]) == "'cleanup'"


async def test_current_task_is_this_task() -> None:
    first = current_task()
    assert first is current_task() and first is not None
    other: list[Any] = []

    async def record() -> None:
        other.append(current_task())

    async with anyio.create_task_group() as tg:
        tg.start_soon(record)
    assert other[0] is not first and other[0] is not None


async def test_on_trio_the_stop_names_the_handle_it_came_from(anyio_backend: Any) -> None:
    """On trio a cancellation carries a reason: a stop's names the stopped handle (seen in tracebacks)."""
    if anyio_backend[0] != "trio":
        pytest.skip("only trio's cancellations carry a reason")
    handle, entered, log = parts()

    async def work() -> None:
        with handle:
            try:
                entered.set()
                await anyio.sleep_forever()
            except BaseException as exc:
                log.append(exc)
                raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        await entered.wait()
        handle.stop(5.0)
    assert getattr(log[0], "reason", None) == f"talkpipe_async stopped task {id(handle):x}"


async def test_on_trio_a_stop_an_inner_scope_caught_is_delivered_again_by_restop(anyio_backend: Any) -> None:
    """On trio an inner scope cancelled at the same moment may catch the stop as its own, and the work goes on;
    ``restop()`` delivers the stop again, and the work then unwinds (its ``finally`` still awaiting) and leaves."""
    if anyio_backend[0] != "trio":
        pytest.skip("asyncio's scopes catch only their own cancellation")
    handle, entered, log = parts()
    went_on = anyio.Event()
    inner_scopes: list[anyio.CancelScope] = []

    async def work() -> None:
        with handle:
            try:
                with anyio.CancelScope() as inner:
                    inner_scopes.append(inner)
                    entered.set()
                    await anyio.sleep_forever()
                log.append("went on")
                went_on.set()
                with anyio.move_on_after(3):  # bounded: a stop never delivered again fails the test
                    await anyio.sleep_forever()
                log.append("not stopped again")
            finally:
                await anyio.sleep(0)
                log.append("unwinding")
        log.append("left")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(work)
            await entered.wait()
            handle.stop(5.0)
            inner_scopes[0].cancel()
            await went_on.wait()
            gc.collect()  # the caught exception is gone
            handle.restop()
    assert log == ["went on", "unwinding", "left"]


async def test_on_trio_restop_changes_nothing_until_a_stop_was_caught(anyio_backend: Any) -> None:
    """``restop()`` before the stop reached the work, while the work unwinds it, after ``shield_now`` or after the
    work left: nothing happens (the unwinding keeps its awaits and its grace)."""
    if anyio_backend[0] != "trio":
        pytest.skip("restop acts only on trio")
    handle, entered, log = parts()
    unwinding = anyio.Event()
    go_on = anyio.Event()

    async def busy_work() -> None:
        with handle:
            try:
                entered.set()
                while True:  # always runnable: a stop reaches it at its next checkpoint
                    await anyio.lowlevel.checkpoint()
            finally:
                unwinding.set()
                await go_on.wait()
                handle.shield_now(5.0)
                await go_on.wait()
                await anyio.sleep(0.01)
                log.append("cleaned up")
        log.append("left")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(busy_work)
            await entered.wait()
            handle.stop(5.0)
            handle.restop()  # not delivered yet
            await unwinding.wait()
            handle.restop()  # delivered, and the exception is still unwinding
            go_on.set()
            await anyio.lowlevel.checkpoint()
            handle.restop()  # after shield_now
    handle.restop()  # after the work left
    assert log == ["cleaned up", "left"]


async def test_on_trio_no_instrument_is_left_once_the_work_left(anyio_backend: Any) -> None:
    """On trio a stop watches the task with a trio instrument until the work leaves; none is left behind (it would
    be called at every task switch for the rest of the run)."""
    if anyio_backend[0] != "trio":
        pytest.skip("only trio stops use an instrument")
    import trio

    handle, entered, log = parts()
    await stop_inside(handle, entered, log, awaiting_cleanup, 5.0)
    assert log == ["unwinding", "cleaned up", "left"]
    watch = handle._watch
    assert watch is not None
    with pytest.raises(KeyError):  # already removed
        trio.lowlevel.remove_instrument(watch)  # type: ignore[arg-type]
