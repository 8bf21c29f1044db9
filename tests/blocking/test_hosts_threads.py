"""Thread stages as a sync host sees them: the latency promise and Ctrl-C.

Latency: an item a worker thread has produced is the consumer's as soon as it
asks for it, even while the worker is blocked inside the sync code (no wait
for the next item or a timer).  Exact signals only: threading events and
fail_after guards that turn a hang into a failure, never timed asserts.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
import pytest

from talkpipe_async import segment, source
from tests.conftest import die_with_parent

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def _until_set(event: threading.Event) -> None:
    """The consumer is busy in an await until *event* (set by a worker thread) is set."""
    with anyio.fail_after(10):
        while not event.is_set():
            await anyio.sleep(0.001)  # polls a signal; the promise under test does not depend on it


@pytest.mark.anyio
async def test_a_lone_item_from_a_blocked_source_reaches_a_consumer_that_was_busy() -> None:
    blocked = threading.Event()
    release = threading.Event()

    @source(blocking=True)
    def slow() -> Iterator[int]:
        yield 1
        yield 2
        blocked.set()
        release.wait(30)  # a blocking read that returns much later
        yield 3

    async with slow().stream() as items:
        try:
            it = items.__aiter__()
            assert await it.__anext__() == 1
            await _until_set(blocked)  # busy in an await while the worker produced 2 and blocked
            with anyio.fail_after(10):
                assert await it.__anext__() == 2  # not held back until 3 arrives
            release.set()
            assert [x async for x in it] == [3]
        finally:
            release.set()  # the worker must not outlive a failed assertion


@pytest.mark.anyio
async def test_a_lone_item_from_a_blocked_segment_reaches_the_consumer() -> None:
    blocked = threading.Event()
    release = threading.Event()

    @segment
    def slow_tail(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            yield x
            if x == 2:
                blocked.set()
                release.wait(30)  # blocking work after yielding

    @source
    async def numbers() -> Any:
        for i in range(4):
            yield i

    async with (numbers() | slow_tail()).stream() as items:
        try:
            it = items.__aiter__()
            assert await it.__anext__() == 0
            await _until_set(blocked)
            with anyio.fail_after(10):
                assert [await it.__anext__() for _ in range(2)] == [1, 2]
            release.set()
            assert [x async for x in it] == [3]
        finally:
            release.set()


# --------------------------------------------------------------------------- Ctrl-C

SIGINT_CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading, anyio
    from talkpipe_async import segment, source
    from talkpipe_async.operators import thread_map

    kind, backend, where = sys.argv[1], sys.argv[2], sys.argv[3]
    started = []

    def work(x):
        started.append(x)
        if x == 0:
            os.write(1, b"inside\\n")
            if where == "on_worker_thread":  # the kernel may hand a process signal to any thread
                signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            sys.stdin.readline()          # the test lets this item end once the run has seen the interrupt
        return x

    @segment
    def sync_work(items):
        for x in items:
            yield work(x)

    @source
    async def numbers():
        i = 0
        while True:
            yield i
            i += 1
            if where == "in_source" and i == 1:
                # The interrupt lands while the source's own code runs (as a Ctrl-C may, on a busy loop), asked for
                # item 1 while the worker is inside item 0.
                with anyio.fail_after(10):
                    while not started:
                        await anyio.sleep(0.001)
                os.kill(os.getpid(), signal.SIGINT)
            if i % 64 == 0:
                await anyio.sleep(0)

    @segment
    async def marker(items):
        try:
            async for x in items:
                yield x
        finally:
            os.write(1, b"closing\\n")    # runs after the stage before it has closed

    stage = thread_map(work, 1) if kind == "thread_map" else sync_work()

    async def main():
        async with (numbers() | stage | marker()).stream() as items:
            async for _ in items:
                pass

    try:
        anyio.run(main, backend=backend)
    except BaseException as exc:
        print(type(exc).__name__, getattr(exc, "__notes__", None), started, flush=True)
    """
)


class _Lines:
    """A child's stdout read line by line on a thread, each line waited for with a deadline.

    A child that hangs then fails the test with what it printed, instead of
    blocking a read until the suite's timeout kills the whole test worker.
    """

    def __init__(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(child.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put("")  # end of output

    def next(self, timeout: float = 20) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the child printed no line within {timeout} s")

    def rest(self) -> str:
        self._reader.join(timeout=30)
        lines = []
        while not self._lines.empty():
            lines.append(self._lines.get())
        return "".join(lines)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("where", ["from_outside", "in_source", "on_worker_thread"])
@pytest.mark.parametrize("kind", ["sync_segment", "thread_map"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_starts_no_new_item_and_surfaces_as_keyboard_interrupt(kind: str, backend: str, where: str) -> None:
    """Ctrl-C while a worker thread is inside an item closes the run at once, wherever the interrupt lands.

    It may land while the loop waits (from_outside, sent once the worker is
    inside item 0), while the source's own code runs on the loop's thread
    (in_source), or on the worker thread itself (on_worker_thread: the kernel
    may hand a process signal to any thread, and only the main thread runs
    Python's handlers): each way the stages close before the worker's item ends.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", SIGINT_CHILD, kind, backend, where], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=die_with_parent,
    )
    try:
        assert child.stdin is not None
        lines = _Lines(child)
        assert lines.next() == "inside\n"
        if where == "from_outside":
            child.send_signal(signal.SIGINT)
        assert lines.next() == "closing\n"  # the run has seen the interrupt and closed the stages
        child.stdin.write("go\n")
        child.stdin.flush()
        child.wait(timeout=30)
        out = lines.rest()
    finally:
        child.kill()
        _, err = child.communicate()
    # Before Python 3.11, anyio.run on asyncio turns Ctrl-C into CancelledError for any program (asyncio's tasks
    # cannot be un-cancelled there); what this library adds, no stage blamed and no new item, holds all the same.
    plain_anyio = "CancelledError" if sys.version_info < (3, 11) and backend == "asyncio" else "KeyboardInterrupt"
    assert out.strip() == f"{plain_anyio} None [0]", out + err
