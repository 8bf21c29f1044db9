"""The blocking wrapper (issue 3): run any pipeline from sync code.

These are sync tests: the pipelines run on the shared loop thread of the
backend under test (asyncio or trio, the ``backend`` fixture).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import pytest

from talkpipe_async import Metadata, Pipeline, _blocking, error_context, is_metadata, segment, source
from talkpipe_async._blocking import LOOP_THREAD_PREFIX, EventLoopRunningError, loop_thread, shutdown
from tests.conftest import BACKEND_NAMES, die_with_parent, pool_thread

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_on(main: Any, backend: str) -> Any:
    """anyio.run on the event loop the ``backend`` parameter names (uvloop: asyncio with uvloop)."""
    if backend == "uvloop":
        return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    return anyio.run(main, backend=backend)


@pytest.fixture(params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop the shared loop thread runs."""
    return request.param  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- stages


@source
async def numbers(n: int = 10) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@source
async def forever(log: list[str], produced: list[int] | None = None) -> AsyncIterator[int]:
    """An infinite fast source that records its end in *log*."""
    i = 0
    try:
        while True:
            if produced is not None:
                produced[0] += 1
            yield i
            i += 1
    finally:
        log.append("source closed")


@source
async def one_then_wait(log: list[str]) -> AsyncIterator[int]:
    """Yields one item, then waits forever (the pump is inside the pipeline when closed)."""
    try:
        yield 1
        await anyio.sleep_forever()
    finally:
        log.append("source closed")


@segment
async def inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        yield x + 1


@segment
async def logged(items: AsyncIterator[Any], log: list[str]) -> AsyncIterator[Any]:
    try:
        async for x in items:
            yield x
    finally:
        log.append("segment closed")


@segment(name="boom")
async def boom(items: AsyncIterator[int], at: int = 3) -> AsyncIterator[int]:
    async for number in items:
        if number == at:
            raise ValueError(f"bad number {number}")
        yield number


@segment(name="sync boom")
def sync_boom(items: Iterable[int], at: int = 3) -> Iterator[int]:
    for number in items:
        if number == at:
            raise KeyError(number)
        yield number


@source(blocking=True)
def blocking_numbers(n: int, log: list[str]) -> Iterator[int]:
    """A sync source that runs in a worker thread."""
    try:
        yield from range(n)
    finally:
        log.append("thread source closed")


def _await_condition(predicate: Any, timeout: float = 3.0) -> None:
    """Poll *predicate* with a bound (no sleep as synchronisation: it only bounds the wait)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


# --------------------------------------------------------------------------- results


def test_run_blocking_matches_collect(backend: str) -> None:
    pipeline = numbers(n=1000) | inc() | inc()
    expected = _run_on(pipeline.collect, backend)
    assert pipeline.run_blocking(backend=backend) == expected == list(range(2, 1002))


def test_iter_blocking_streams_every_item_in_order(backend: str) -> None:
    pipeline = numbers(n=20_000) | inc()
    with pipeline.iter_blocking(backend=backend, batch=64, buffer=256) as items:
        assert list(items) == list(range(1, 20_001))


def test_input_for_a_pipeline_that_starts_with_a_segment(backend: str) -> None:
    pipeline = inc() | inc()
    assert pipeline.run_blocking(range(5), backend=backend) == [2, 3, 4, 5, 6]
    assert pipeline.run_blocking(iter([10]), backend=backend) == [12]
    with pytest.raises(TypeError, match="give"):
        pipeline.run_blocking(backend=backend)


def test_as_function_blocking(backend: str) -> None:
    double_inc = (inc() | inc()).as_function_blocking(backend=backend)
    assert double_inc([1, 2]) == [3, 4]
    one = (inc() | inc()).as_function_blocking(single_in=True, single_out=True, backend=backend)
    assert one(5) == 7
    sourced = (numbers(n=3) | inc()).as_function_blocking(backend=backend)
    assert sourced() == [1, 2, 3]
    with pytest.raises(ValueError, match="exactly 1"):
        (numbers(n=3) | inc()).as_function_blocking(single_out=True, backend=backend)()


def test_metadata_reaches_the_caller_when_asked(backend: str) -> None:
    mixed = [1, Metadata(tag="x"), 2]
    out = (inc() | inc()).run_blocking(mixed, metadata=True, backend=backend)
    assert [x for x in out if not is_metadata(x)] == [3, 4]
    assert sum(1 for x in out if is_metadata(x)) == 1
    assert (inc() | inc()).run_blocking(mixed, backend=backend) == [3, 4]


def test_the_loop_thread_is_shared_and_reused(backend: str) -> None:
    thread = loop_thread(backend)
    assert thread.name == f"{LOOP_THREAD_PREFIX}[{backend}]" and thread.daemon
    seen: list[threading.Thread] = []

    @segment
    async def where(items: AsyncIterator[int]) -> AsyncIterator[int]:
        seen.append(threading.current_thread())
        async for x in items:
            yield x

    for _ in range(3):
        (numbers(n=2) | where()).run_blocking(backend=backend)
    worker = threading.Thread(target=lambda: (numbers(n=2) | where()).run_blocking(backend=backend))
    worker.start()
    worker.join()
    assert seen == [thread] * 4
    assert loop_thread(backend) is thread


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="backend"):
        (numbers(n=1) | inc()).iter_blocking(backend="curio")
    with pytest.raises(ValueError, match="buffer"):
        (numbers(n=1) | inc()).iter_blocking(batch=10, buffer=5)
    stream = (numbers(n=1) | inc()).iter_blocking()
    with stream as items:
        assert list(items) == [1]
    with pytest.raises(RuntimeError, match="once"), stream:
        pass


# --------------------------------------------------------------------------- closing


def test_break_from_an_infinite_source_closes_upstream_first(backend: str) -> None:
    log: list[str] = []
    with (forever(log=log) | logged(log=log) | inc()).iter_blocking(backend=backend) as items:
        for x in items:
            if x == 5000:
                break
    assert log == ["segment closed", "source closed"]


def test_break_while_the_pipeline_waits_for_its_source(backend: str) -> None:
    log: list[str] = []
    with (one_then_wait(log=log) | logged(log=log)).iter_blocking(backend=backend) as items:
        for x in items:
            assert x == 1
            break
    assert sorted(log) == ["segment closed", "source closed"]


def test_leaving_the_with_without_reading_closes(backend: str) -> None:
    log: list[str] = []
    with (forever(log=log) | logged(log=log)).iter_blocking(backend=backend):
        pass
    with (forever(log=log) | logged(log=log)).iter_blocking(backend=backend) as items:
        next(items)
    assert log.count("source closed") in (1, 2)  # the first run may end before the source started
    assert log[-2:] == ["segment closed", "source closed"]


def test_an_abandoned_stream_is_closed_when_its_iterator_is_dropped(backend: str) -> None:
    log: list[str] = []
    stream = (forever(log=log) | logged(log=log)).iter_blocking(backend=backend)
    items = stream.__enter__()  # no `with`: the iterator's finalizer closes the run
    next(items)
    del items  # CPython drops it here, in this thread
    assert log == ["segment closed", "source closed"]
    assert stream.close() is None  # already closed


def test_break_stops_a_thread_stage_before_returning(backend: str) -> None:
    log: list[str] = []
    loop_thread(backend)
    before = set(threading.enumerate())
    with (blocking_numbers(n=10**9, log=log) | inc()).iter_blocking(backend=backend) as items:
        for x in items:
            if x > 1000:
                break
    assert log == ["thread source closed"]
    # The stage's worker thread is back in the loop's idle pool (or gone): no other thread is new.
    assert all(pool_thread(t) for t in set(threading.enumerate()) - before)


def test_close_error_is_raised_by_the_with_statement(backend: str) -> None:
    @source
    async def bad_cleanup() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
        finally:
            raise OSError("cleanup failed")

    log: list[str] = []
    stream = (bad_cleanup() | logged(log=log)).iter_blocking(backend=backend, batch=4, buffer=8)
    with pytest.raises(OSError, match="cleanup failed"), stream as items:
        next(items)
        _await_condition(lambda: stream.blocked)  # the pipeline is paused, not cancelled
    assert log == ["segment closed"]


# --------------------------------------------------------------------------- errors


def test_exception_type_and_context_reach_the_caller(backend: str) -> None:
    pipeline = numbers(n=10) | boom(at=3) | inc()
    got: list[int] = []
    with pytest.raises(ValueError, match="bad number 3") as info, pipeline.iter_blocking(backend=backend) as items:
        for x in items:
            got.append(x)
    assert got == [1, 2, 3]  # every item before the error, in order
    context = error_context(info.value)
    assert context is not None and context.segment == "boom" and context.item == "3"
    assert any("boom" in note for note in getattr(info.value, "__notes__", []))

    with pytest.raises(ValueError) as again:
        pipeline.run_blocking(backend=backend)
    assert error_context(again.value) == context


def test_exception_from_a_thread_stage_keeps_its_type(backend: str) -> None:
    pipeline = numbers(n=10) | sync_boom(at=4)
    with pytest.raises(KeyError) as info:
        pipeline.run_blocking(backend=backend)
    context = error_context(info.value)
    assert context is not None and context.segment == "sync boom"


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("make", ["fast", "waiting"])
def test_keyboard_interrupt_in_the_loop_body_cancels_promptly(backend: str, make: str) -> None:
    log: list[str] = []
    head = forever(log=log) if make == "fast" else one_then_wait(log=log)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), (head | logged(log=log)).iter_blocking(backend=backend) as items:
        for _ in items:
            raise KeyboardInterrupt
    assert time.monotonic() - start < 2.0
    assert sorted(log) == ["segment closed", "source closed"]


SIGINT_CHILD = textwrap.dedent(
    """
    import signal, sys, threading, anyio
    from talkpipe_async import source, segment

    closed = []
    waiting = threading.Event()
    on_loop_thread = sys.argv[2:] == ["on_loop_thread"]

    @source
    async def one_then_wait():
        try:
            yield 1
            if on_loop_thread:  # the kernel may hand Ctrl-C to any thread: here the loop's, while the caller waits
                with anyio.fail_after(10):
                    while not waiting.is_set():
                        await anyio.sleep(0.001)
                signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            await anyio.sleep_forever()
        finally:
            closed.append("source")

    @segment
    async def same(items):
        async for x in items:
            yield x

    try:
        with (one_then_wait() | same()).iter_blocking(backend=sys.argv[1]) as items:
            for x in items:
                print("ready", flush=True)
                waiting.set()
    except KeyboardInterrupt:
        print("interrupted", closed, flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_while_waiting_for_items_cancels_the_pipeline(backend: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SIGINT_CHILD, backend], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO,
        preexec_fn=die_with_parent,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        line = child.stdout.readline().strip()
        elapsed = time.monotonic() - sent
        out, err = child.communicate(timeout=10)
    finally:
        child.kill()
    assert line == "interrupted ['source']", err
    assert elapsed < 2.0  # the pipeline was cancelled and closed before the `with` returned
    assert child.returncode == 0 and not out, err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_handed_to_the_loop_thread_still_interrupts_the_waiting_caller(backend: str) -> None:
    """Python runs signal handlers in the main thread only; the caller waits in slices, so it runs them."""
    child = subprocess.Popen(
        [sys.executable, "-c", SIGINT_CHILD, backend, "on_loop_thread"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=die_with_parent,
    )
    try:
        out, err = child.communicate(timeout=30)  # without the slices, the caller would wait for an item forever
    finally:
        child.kill()
        child.wait()
    assert out.splitlines() == ["ready", "interrupted ['source']"], err
    assert child.returncode == 0, err


ATEXIT_CHILD = textwrap.dedent(
    """
    import sys, threading, anyio
    from talkpipe_async import source, segment

    @source
    async def slow():
        try:
            while True:
                yield 1
                await anyio.sleep(0.001)
        finally:
            print("source closed at exit", flush=True)

    @segment
    async def same(items):
        async for x in items:
            yield x

    started = threading.Event()

    def consume():
        with (slow() | same()).iter_blocking(backend=sys.argv[1]) as items:
            for x in items:
                started.set()

    threading.Thread(target=consume, daemon=True).start()
    started.wait()
    print("main done", flush=True)
    """
)


def test_interpreter_exit_shuts_the_loop_thread_down(backend: str) -> None:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", ATEXIT_CHILD, backend], capture_output=True, text=True, cwd=REPO, timeout=10
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["main", "done", "source", "closed", "at", "exit"]
    assert time.monotonic() - start < 5.0


def test_shutdown_ends_running_streams_and_later_calls_start_afresh(backend: str) -> None:
    log: list[str] = []
    old = loop_thread(backend)
    with (one_then_wait(log=log) | inc()).iter_blocking(backend=backend) as items:
        assert next(items) == 2
        shutdown()
        assert not old.is_alive()
        with pytest.raises(RuntimeError, match="shut down"):
            next(items)
    assert log == ["source closed"]
    assert (numbers(n=2) | inc()).run_blocking(backend=backend) == [1, 2]
    assert loop_thread(backend) is not old


# --------------------------------------------------------------------------- loops and threads


def test_a_thread_running_its_own_loop_may_block(backend: str) -> None:
    """A notebook cell: the caller's thread runs a loop; the run goes on the wrapper's loop thread."""
    pipeline = numbers(n=3) | inc()

    async def main() -> None:
        assert pipeline.run_blocking(backend="asyncio") == [1, 2, 3]
        with pipeline.iter_blocking(backend="trio") as items:
            assert next(items) == 1  # streaming, then closed by the `with`
        stream = pipeline.iter_blocking(backend="uvloop").__enter__()
        assert next(stream) == 1
        del stream  # abandoned: closing it waits for the run (on its own loop), it never skips the wait
        assert await pipeline.collect() == [1, 2, 3]

    _run_on(main, backend)


def test_nested_blocking_call_from_an_inline_stage_fails_instead_of_deadlocking(backend: str) -> None:
    inner = numbers(n=2) | inc()

    @segment
    def nested(items: Iterable[int]) -> Iterator[list[int]]:
        for _ in items:
            yield inner.run_blocking(backend=backend)  # runs inline on the loop thread

    with pytest.raises(EventLoopRunningError):
        Pipeline(nested()).run_blocking([1], backend=backend)


def test_many_threads_at_once_leave_no_thread_behind(backend: str) -> None:
    loop = loop_thread(backend)
    before = set(threading.enumerate())
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(k: int) -> None:
        try:
            barrier.wait()
            for j in range(50):
                n = 10 + (k * 50 + j) % 30
                if j % 10 == 0:  # a sync stage: a worker thread of the loop
                    log: list[str] = []
                    got = (blocking_numbers(n=n, log=log) | inc()).run_blocking(backend=backend)
                    assert got == list(range(1, n + 1)) and log == ["thread source closed"]
                elif j % 3 == 0:  # leave early
                    with (numbers(n=10**6) | inc()).iter_blocking(backend=backend) as items:
                        for x in items:
                            if x == n:
                                break
                else:
                    assert (numbers(n=n) | inc() | inc()).run_blocking(backend=backend) == list(range(2, n + 2))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert not errors, errors
    assert not any(w.is_alive() for w in workers)
    left = set(threading.enumerate()) - before
    # Precisely: nothing new but idle pool threads of the loop; the one loop thread is unchanged.
    assert all(pool_thread(t) for t in left), [t.name for t in left]
    assert len(left) <= 8
    loops = [t for t in threading.enumerate() if t.name.startswith(LOOP_THREAD_PREFIX)]
    assert loop in loops and len(loops) <= len(_blocking.BACKENDS)


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(("batch", "buffer"), [(8, 32), (None, None)])
def test_a_stalled_consumer_stops_the_pipeline_within_the_bound(
    backend: str, batch: int | None, buffer: int | None
) -> None:
    log: list[str] = []
    produced = [0]
    options: dict[str, Any] = {} if batch is None else {"batch": batch, "buffer": buffer}
    stream = (forever(log=log, produced=produced) | inc()).iter_blocking(backend=backend, **options)
    with stream as items:
        next(items)  # then the consumer stalls
        _await_condition(lambda: stream.blocked)
        ahead = produced[0] - 1
        assert ahead <= stream.max_ahead
        assert ahead >= stream.buffer  # it really did read ahead, up to the buffer
        assert stream.max_ahead == (39 if batch else _blocking.DEFAULT_BUFFER + _blocking.DEFAULT_BATCH - 1)
        _await_condition(lambda: stream.blocked)
        assert produced[0] - 1 == ahead  # still stopped
        more = [next(items) for _ in range(3 * stream.max_ahead)]  # and it resumes
        assert more == list(range(2, 2 + 3 * stream.max_ahead))
    assert log == ["source closed"]


def test_a_lone_item_reaches_an_idle_consumer_without_waiting_for_the_next(backend: str) -> None:
    """Each item is handed over on its own: the source yields the next only after the caller has the last one."""
    taken = [threading.Event() for _ in range(6)]

    @source
    async def paced() -> AsyncIterator[int]:
        for i in range(6):
            yield i
            with anyio.fail_after(10):  # a hang (item held back for a batch) becomes a failure
                while not taken[i].is_set():
                    await anyio.sleep(0.001)  # polls the caller's signal

    got: list[int] = []
    with (paced() | logged(log=[])).iter_blocking(backend=backend) as items:
        for i in items:
            got.append(i)
            taken[i].set()
    assert got == list(range(6))
