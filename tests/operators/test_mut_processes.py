"""process_map: the promises the mutation run found unchecked.

Settings, defaults (the workers follow the CPUs this process may use) and every validation text; the pool started
with the stage's workers and start method; input order kept when a later batch finishes first, completion order
when unordered, a lone item sent at once, metadata in its place; at most ``2 * workers`` batches out at once, in
``2 * workers`` named dispatcher tasks, again after an unordered barrier, waited for with a thread limiter of the
run's own; the errors: the worker's traceback as a note, an unpicklable error's replacement text, a dead worker's
``BrokenProcessPool`` (a copy of the pool's, naming the batch's first item and its size), an upstream error after
the items read before it; a worker that ignores SIGTERM is killed at the cleanup deadline, so no worker process
outlives the run; and a finished pool leaves concurrent.futures' exit hook even while its thread is referenced.

Workers block on named pipes (FIFOs) that the test or another worker opens: every wait ends on an exact signal
(a pipe opened, an event, ``wait_all_tasks_blocked``), never a clock.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from talkpipe_async import Metadata, error_context, source
from talkpipe_async.operators import process_map
from talkpipe_async.operators import processes as processes_module
from tests.helpers import processes as work
from tests.helpers.processes import children

pytestmark = pytest.mark.anyio

LIMIT = 8  # seconds: a lost wake-up or a wrong order fails the test instead of hanging the run


@source
async def from_list(xs: list[Any]) -> AsyncIterator[Any]:
    for x in xs:
        yield x


@source
async def then_fail(xs: list[Any], error: BaseException) -> AsyncIterator[Any]:
    for x in xs:
        yield x
    raise error


class Tripler:
    """A callable object (no ``__qualname__`` of its own): the default name uses its type's name."""

    def __call__(self, x: int) -> int:
        return x * 3


# In worker processes (module level, so they pickle by name).

STATE = {"value": "as imported"}  # a forked worker sees what the parent changed; a spawned or forkserver one does not


def state_of_the_module(x: int) -> str:
    return STATE["value"]


def held_back(job: tuple[int, str, str]) -> int:
    """Item 0 waits until the *release* pipe is opened for writing; item 5 opens the *done* pipe when it runs."""
    x, release, done = job
    if x == 0:
        with open(release) as f:
            f.read()
    if x == 5:
        with open(done, "w"):
            pass
    return x


def gated(job: tuple[int, str | None]) -> int:
    """An item given a pipe waits until the pipe is opened for writing; the others return at once."""
    x, gate = job
    if gate is not None:
        with open(gate) as f:
            f.read()
    return x * 3


def deaf_and_hanging(path: str) -> str:
    """Ignore SIGTERM, tell the test (open *path*'s pipe for writing), then stay busy far longer than any test."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(path, "w"):
        pass
    time.sleep(600)
    return path


def fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


async def open_for_writing(path: str) -> None:
    """Open and close a pipe's writing end: a worker reading it goes on (blocks until the reader is there)."""
    await anyio.to_thread.run_sync(lambda: open(path, "w").close(), abandon_on_cancel=True)


async def read_to_end(path: str) -> None:
    """Wait until a worker has opened the pipe for writing and closed it."""
    await anyio.to_thread.run_sync(lambda: open(path).read(), abandon_on_cancel=True)


def unblock(*paths: str) -> None:
    """Open each end of the pipes once without blocking: a thread of the test still waiting on one (a failed test)
    goes on instead of outliving it."""
    for path in paths:
        for flags in (os.O_RDONLY, os.O_WRONLY):
            try:
                os.close(os.open(path, flags | os.O_NONBLOCK))
            except OSError:  # no reader for a writing end: nobody waits to read
                pass


def notes_of(exc: BaseException) -> list[str]:
    return list(getattr(exc, "__notes__", []))


def task_names(text: str) -> list[str]:
    return [t.name or "" for t in anyio.get_running_tasks() if text in (t.name or "")]


# ------------------------------------------------------------------------------------------------ construction


def test_defaults_settings_and_names() -> None:
    """Defaults: ordered, batches of 16, one worker per CPU this process may use, ``max_pending`` of ``2 * workers
    * batch_size``, Python's default start method, the name ``process_map(<function>)``; given settings are kept."""
    stage = process_map(work.triple)
    cpus = len(os.sched_getaffinity(0))
    assert stage.fn is work.triple
    assert (stage.ordered, stage.batch_size, stage.workers) == (True, 16, cpus)
    assert stage.max_pending == 2 * cpus * 16
    assert stage.mp_context is None and stage.context() is None
    assert stage.name == stage.label == "process_map(triple)"

    spawn = multiprocessing.get_context("spawn")
    given = process_map(work.triple, workers=3, batch_size=5, ordered=False, mp_context=spawn, name="crunch")
    assert (given.workers, given.batch_size, given.ordered, given.name) == (3, 5, False, "crunch")
    assert given.max_pending == 2 * 3 * 5
    assert given.mp_context is spawn and given.context() is spawn
    assert process_map(work.triple, workers=2, max_pending=7).max_pending == 7
    for method in ("forkserver", "spawn"):
        context = process_map(work.triple, mp_context=method).context()
        assert context is not None and context.get_start_method() == method
    assert process_map(Tripler()).name == "process_map(Tripler)"


def test_validation_texts_and_smallest_settings() -> None:
    """Each setting below 1 is refused with its own message; 1 is accepted."""
    with pytest.raises(ValueError, match=r"^workers must be at least 1$"):
        process_map(work.triple, workers=0)
    with pytest.raises(ValueError, match=r"^batch_size must be at least 1$"):
        process_map(work.triple, batch_size=0)
    with pytest.raises(ValueError, match=r"^max_pending must be at least 1$"):
        process_map(work.triple, max_pending=0)
    smallest = process_map(work.triple, workers=1, batch_size=1, max_pending=1)
    assert (smallest.workers, smallest.batch_size, smallest.max_pending) == (1, 1, 1)
    with pytest.raises(TypeError) as info:
        process_map(lambda x: x)
    assert str(info.value).startswith(
        "process_map(test_validation_texts_and_smallest_settings.<locals>.<lambda>): the function must be picklable "
        "(a module-level function, not a lambda or a nested function) to be sent to worker processes: "
    )
    assert info.value.__cause__ is not None


def test_default_workers_follow_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default is the CPU affinity (not the machine's CPU count); where there is none, ``os.cpu_count()``, and 1
    when even that is unknown."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        assert process_map(work.triple).workers == 1
    finally:
        os.sched_setaffinity(0, allowed)
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert process_map(work.triple).workers == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert process_map(work.triple).workers == 1


# ------------------------------------------------------------------------------------------------ order


@pytest.mark.parametrize("ordered", [True, False])
async def test_a_later_batch_finishing_first_keeps_input_order_unless_unordered(ordered: bool, tmp_path: Path) -> None:
    """Item 0 is held in one worker while items 1 to 5 go through the other: ordered, 0 still comes first and the
    consumer gets nothing while it is held; unordered, 1 to 5 come out as they finish and 0 last."""
    release, done = fifo(tmp_path / "release"), fifo(tmp_path / "done")
    stage = process_map(held_back, workers=2, batch_size=1, ordered=ordered, max_pending=10)
    got: list[int] = []
    five = anyio.Event()

    async def consume() -> None:
        async with (from_list([(x, release, done) for x in range(6)]) | stage).stream() as items:
            async for x in items:
                got.append(x)
                if len(got) == 5:
                    five.set()

    try:
        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await read_to_end(done)  # item 5 has run, item 0 is still held
                if ordered:
                    assert got == []
                else:
                    await five.wait()
                await open_for_writing(release)
    finally:
        unblock(release, done)
    if ordered:
        assert got == [0, 1, 2, 3, 4, 5]
    else:  # 1 to 5 in the order they finished (two dispatchers may hand theirs over in either order), then 0
        assert sorted(got[:5]) == [1, 2, 3, 4, 5] and got[5] == 0


async def test_a_lone_item_never_waits_for_a_batch_to_fill() -> None:
    """An upstream that gives the next item only once the previous result arrived (batches of 16): each item is
    sent alone, and the run goes on after every dispatcher has waited for input."""
    received = [anyio.Event() for _ in range(6)]

    @source
    async def lockstep() -> AsyncIterator[int]:
        for x in range(6):
            yield x
            await received[x].wait()

    got: list[int] = []
    with anyio.fail_after(LIMIT):
        async with (lockstep() | process_map(work.triple, workers=1)).stream() as items:
            async for x in items:
                received[len(got)].set()
                got.append(x)
    assert got == [0, 3, 6, 9, 12, 15]


@pytest.mark.parametrize("ordered", [True, False])
async def test_more_metadata_than_dispatchers_keeps_its_place(ordered: bool) -> None:
    """Metadata between items (more of it than the stage has dispatcher tasks) keeps its position ordered, and is a
    barrier unordered: each leaves after the items read before it and before the items after it."""
    marks = [Metadata(n=n) for n in range(5)]
    xs: list[Any] = []
    for n, mark in enumerate(marks):
        xs += [2 * n, 2 * n + 1, mark]
    stage = process_map(work.triple, workers=1, batch_size=1, ordered=ordered)
    with anyio.fail_after(LIMIT):
        async with (from_list(xs) | stage).stream(metadata=True) as items:
            out: list[Any] = [x async for x in items]
    expected: list[Any] = [x if isinstance(x, Metadata) else x * 3 for x in xs]
    if ordered:
        assert out == expected
    else:
        assert [out[i] for i in range(2, 15, 3)] == marks
        assert all(sorted(out[i : i + 2]) == expected[i : i + 2] for i in range(0, 15, 3))


# ------------------------------------------------------------------------------------------------ batches in flight


class CountingPool(ProcessPoolExecutor):
    """A pool that records how many of its calls were out (sent, not finished) at each submit."""

    futures: list[Future[Any]]
    out_at_submit: list[int]

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.futures.append(future)
        self.out_at_submit.append(sum(not f.done() for f in self.futures))
        return future


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[CountingPool]:
    """The pools the runs of the test start, each a :class:`CountingPool`."""
    started: list[CountingPool] = []

    def make_pool(*args: Any, **kwargs: Any) -> CountingPool:
        pool = CountingPool(*args, **kwargs)
        pool.futures, pool.out_at_submit = [], []
        started.append(pool)
        return pool

    monkeypatch.setattr(processes_module, "ProcessPoolExecutor", make_pool)
    return started


def out_now(pool: CountingPool) -> int:
    return sum(not f.done() for f in pool.futures)


@pytest.mark.parametrize("workers", [1, 2])
async def test_at_most_two_batches_per_worker_are_out(workers: int, tmp_path: Path, pools: list[CountingPool]) -> None:
    """With item 0 held in a worker and plenty read ahead, exactly ``2 * workers`` batches are out (each worker has
    its next batch queued; metadata after item 0 holds nothing back) and never more; they are sent by ``2 *
    workers`` tasks named after the stage, to a pool of ``workers`` processes."""
    gate = fifo(tmp_path / "gate")
    before = children()
    n = 40
    stage = process_map(gated, workers=workers, batch_size=1, max_pending=n)
    got: list[int] = []

    async def consume() -> None:
        jobs: list[Any] = [(0, gate), *((x, None) for x in range(1, n))]
        jobs.insert(1, Metadata(n=0))  # ordered, metadata is no barrier: the batches after it go out at once
        async with (from_list(jobs) | stage).stream() as items:
            async for x in items:
                got.append(x)

    try:
        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await anyio.wait_all_tasks_blocked()
                assert len(children() - before) == workers  # the pool has exactly `workers` processes
                if workers == 1:  # the one worker is held on item 0: nothing can come back
                    [pool] = pools
                    assert out_now(pool) == 2
                assert len(task_names(f"talkpipe dispatcher for {stage.label}")) == 2 * workers
                await open_for_writing(gate)
    finally:
        unblock(gate)
    assert got == [x * 3 for x in range(n)]
    [pool] = pools
    assert len(pool.futures) == n and max(pool.out_at_submit) <= 2 * workers
    if workers == 1:
        assert max(pool.out_at_submit) == 2


async def test_after_an_unordered_barrier_every_dispatcher_sends_again(
    tmp_path: Path, pools: list[CountingPool]
) -> None:
    """Unordered, dispatchers that meet metadata while a batch is out wait for it, then go on: once the metadata
    has left, ``2 * workers`` batches are out again."""
    gates = [fifo(tmp_path / f"gate{x}") for x in range(6)]
    jobs: list[Any] = [(0, gates[0]), (1, None), Metadata(n=0), *((x, gates[x]) for x in range(2, 6))]
    stage = process_map(gated, workers=2, batch_size=1, ordered=False, max_pending=20)
    got: list[Any] = []
    first = anyio.Event()
    passed = anyio.Event()

    async def consume() -> None:
        async with (from_list(jobs) | stage).stream(metadata=True) as items:
            async for x in items:
                got.append(x)
                first.set()
                if isinstance(x, Metadata):
                    passed.set()

    try:
        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await first.wait()
                await anyio.wait_all_tasks_blocked()
                assert got == [3]  # item 1 is back; item 0 is held, so the metadata waits
                await open_for_writing(gates[0])
                await passed.wait()
                await anyio.wait_all_tasks_blocked()
                [pool] = pools
                assert out_now(pool) == 4  # items 2 and 3 held in the workers, 4 and 5 queued behind them
                for gate in gates[2:]:
                    await open_for_writing(gate)
    finally:
        unblock(*gates)
    assert got[:3] == [3, 0, jobs[2]] and sorted(got[3:]) == [6, 9, 12, 15]


async def test_waiting_for_batches_takes_no_token_of_the_default_thread_limiter() -> None:
    """A run goes on while every token of anyio's default thread limiter is taken (by other work of the program):
    the threads that wait for the pool's results have a limiter of their own."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    total = limiter.total_tokens
    limiter.total_tokens = 1
    try:
        async with limiter:
            with anyio.fail_after(LIMIT):
                out = await (from_list(list(range(10))) | process_map(work.triple, workers=1, batch_size=2)).collect()
    finally:
        limiter.total_tokens = total
    assert out == [x * 3 for x in range(10)]


async def test_the_feeder_task_is_named_after_the_stage() -> None:
    """While the stage holds ``max_pending`` items, its feeder task waits, named after the stage."""
    stage = process_map(work.triple, workers=1, batch_size=1, max_pending=2, name="crunch")
    with anyio.fail_after(LIMIT):
        async with (from_list(list(range(10))) | stage).stream() as items:
            async for x in items:
                assert task_names("talkpipe feeder for crunch") == ["talkpipe feeder for crunch"]
                assert len(task_names("talkpipe dispatcher for crunch")) == 2
                assert x == 0
                break


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("ordered", [True, False])
async def test_an_error_carries_the_worker_traceback_and_names_the_item(ordered: bool) -> None:
    """The error keeps its type; one note is the worker's traceback (ending with the error's own line), one names
    the stage and the item; the items of its batch before it are delivered first."""
    stage = process_map(work.fail_on_seven, workers=1, batch_size=4, ordered=ordered)
    got: list[int] = []
    with anyio.fail_after(LIMIT), pytest.raises(ValueError) as info:
        async with (from_list(list(range(12))) | stage).stream() as items:
            async for x in items:
                got.append(x)
    assert info.value.args == ("seven is not welcome: 7",)
    assert {4, 5, 6} <= set(got) and 7 not in got
    if ordered:
        assert got == [0, 1, 2, 3, 4, 5, 6]
    ctx = error_context(info.value)
    assert ctx is not None and (ctx.segment, ctx.item) == ("process_map(fail_on_seven)", "7")
    [tb] = [n for n in notes_of(info.value) if n.startswith("traceback in the worker process:\n")]
    assert tb.startswith("traceback in the worker process:\nTraceback (most recent call last):\n")
    assert "in fail_on_seven" in tb and tb.endswith("\nValueError: seven is not welcome: 7")


async def test_an_unpicklable_error_is_replaced_by_a_runtime_error_naming_it() -> None:
    """The replacement's text is ``<type>: <message> (the error could not be pickled)``; it names the item."""
    stage = process_map(work.raise_unpicklable, workers=1)
    with anyio.fail_after(LIMIT), pytest.raises(RuntimeError) as info:
        await (from_list([5]) | stage).collect()
    assert str(info.value) == "Unpicklable: holds a generator (the error could not be pickled)"
    ctx = error_context(info.value)
    assert ctx is not None and (ctx.segment, ctx.item) == ("process_map(raise_unpicklable)", "5")


async def test_a_dead_worker_raises_a_copy_of_the_pools_error_naming_its_batch() -> None:
    """The consumer gets the items before the batch, then ``BrokenProcessPool`` with the pool's message, caused by
    the pool's own error (each batch gets its own copy, so its notes are its own), naming the stage, the batch's
    first item and the batch's size."""
    before = children()
    stage = process_map(work.die_on_three, workers=1, batch_size=1)
    got: list[int] = []
    with anyio.fail_after(LIMIT), pytest.raises(BrokenProcessPool) as info:
        async with (from_list(list(range(10))) | stage).stream() as items:
            async for x in items:
                got.append(x)
    assert got == [0, 1, 2]
    error = info.value
    assert isinstance(error.__cause__, BrokenProcessPool) and error.__cause__ is not error
    assert str(error) == str(error.__cause__) and "terminated abruptly" in str(error)
    ctx = error_context(error)
    assert ctx is not None and (ctx.segment, ctx.item) == ("process_map(die_on_three)", "3")
    assert [n for n in notes_of(error) if "batch held" in n] == ["talkpipe_async: the batch held 1 items"]
    assert children() == before


async def test_an_unpicklable_item_is_named_even_when_it_is_not_first_in_its_batch() -> None:
    """The pickling error names the first item of the batch that cannot be pickled, with the batch's size."""
    gen = (i for i in range(1))
    stage = process_map(work.triple, workers=1, batch_size=3, max_pending=3)
    with anyio.fail_after(LIMIT), pytest.raises(TypeError, match="pickle") as info:
        await (from_list([1, gen, 3]) | stage).collect()
    ctx = error_context(info.value)
    assert ctx is not None and ctx.item is not None and ctx.item.startswith("<generator object")
    held = [n for n in notes_of(info.value) if "batch held" in n]
    assert len(held) == 1 and held[0].startswith("talkpipe_async: the batch held ")


@pytest.mark.parametrize("ordered", [True, False])
async def test_an_upstream_error_arrives_after_the_items_read_before_it(ordered: bool) -> None:
    got: list[int] = []
    stage = process_map(work.triple, workers=2, batch_size=2, ordered=ordered)
    with anyio.fail_after(LIMIT), pytest.raises(KeyError, match="upstream"):
        async with (then_fail([0, 1, 2, 3, 4], KeyError("upstream")) | stage).stream() as items:
            async for x in items:
                got.append(x)
    assert sorted(got) == [0, 3, 6, 9, 12]


# ------------------------------------------------------------------------------------------------ cleanup


async def test_a_worker_that_ignores_sigterm_is_killed_at_the_cleanup_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker still alive at the cleanup deadline after the terminate is killed and joined: none is left."""
    monkeypatch.setattr(processes_module, "CLEANUP_TIMEOUT", 0.5)
    before = children()
    started = fifo(tmp_path / "started")
    try:
        with anyio.fail_after(LIMIT):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon((from_list([started]) | process_map(deaf_and_hanging, workers=1)).collect)
                    await read_to_end(started)
                    scope.cancel()
    finally:
        unblock(started)
    assert scope.cancelled_caught
    assert children() == before


# ------------------------------------------------------------------------------------------------ start method


async def test_the_start_method_given_is_the_one_the_workers_start_with(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``mp_context="forkserver"`` the workers do not inherit the parent's memory (a forked one would)."""
    monkeypatch.setitem(STATE, "value", "changed in the parent")
    with anyio.fail_after(LIMIT):
        forked = await (from_list([1]) | process_map(state_of_the_module, workers=1, mp_context="fork")).collect()
        served = await (from_list([1]) | process_map(state_of_the_module, workers=1, mp_context="forkserver")).collect()
    assert (forked, served) == (["changed in the parent"], ["as imported"])


# ------------------------------------------------------------------------------------------------ exit hook


def exit_hook_pools() -> set[Any]:
    """The pools concurrent.futures' exit hook would still wake at interpreter exit (by manager thread)."""
    from concurrent.futures import process

    return set(getattr(process, "_threads_wakeups", {}))


@pytest.mark.parametrize("stop_at", [None, 3])
async def test_a_finished_pool_leaves_the_exit_hook_even_while_its_thread_is_still_referenced(
    stop_at: int | None,
) -> None:
    """The hook's list holds each pool's manager thread weakly; a run removes its pool itself, so the pool is gone
    from it even when something else still holds the thread (here a snapshot of the threads taken during the run,
    as a thread dump or a debugger keeps)."""
    before = exit_hook_pools()
    snapshot: list[threading.Thread] = []
    with anyio.fail_after(LIMIT):
        async with (from_list(list(range(40))) | process_map(work.triple, workers=1, batch_size=2)).stream() as items:
            async for x in items:
                if not snapshot:
                    snapshot = threading.enumerate()
                    assert exit_hook_pools() - before  # the run's pool is listed while it runs
                if x == stop_at:
                    break
    assert exit_hook_pools() == before
    assert snapshot
