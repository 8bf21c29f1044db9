"""A signal the kernel hands to a worker thread wakes the asyncio loop at once (the Ctrl-C wakeup of thread stages).

Pinned here, in-process with a harmless signal (SIGUSR1) standing in for Ctrl-C: a blocking stage's worker that
gets the signal sees its Python handler run while the worker still waits (the idle loop woke: without the wakeup
the handler would run only once the worker returned); the wakeup fd is set only while a thread stage runs on a
plain asyncio loop, and is gone again after the last one, also when two ran at once; a wakeup fd the host set is
left in place, before and during a run; on trio and uvloop, which wake themselves, the library sets nothing; a
burst of signals while the loop is busy is no error; the wakeup's sockets close with their loop.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator
from types import FrameType
from typing import Any

import anyio
import anyio.from_thread
import pytest

from talkpipe_async import segment
from talkpipe_async._core._wakeup import _wakeups, signal_wakeup
from talkpipe_async.operators import thread_map

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="signals to threads are POSIX"),
]


def plain_asyncio() -> bool:
    """True on a plain asyncio loop (not uvloop, not trio): the one the library sets a wakeup fd for."""
    try:
        return isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)
    except RuntimeError:
        return False


def current_wakeup_fd() -> int:
    """The process's wakeup fd, read without changing it (only the main thread may read it)."""
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


@pytest.fixture(autouse=True)
def no_wakeup_fd_before() -> Iterator[None]:
    """Each test starts and ends with no wakeup fd (as under anyio's asyncio runner), whatever ran before."""
    before = signal.set_wakeup_fd(-1)
    yield
    signal.set_wakeup_fd(before)


@segment
async def same(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        yield x


def fds_seen_in(during: list[int]) -> Any:
    @segment(blocking=True)
    def look(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            during.append(anyio.from_thread.run_sync(current_wakeup_fd))  # read on the loop, while this waits
            yield x

    return look()


async def test_a_signal_to_the_worker_thread_runs_its_handler_while_the_worker_waits() -> None:
    handled = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        handled.set()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:

        @segment(blocking=True)
        def signalled(items: Iterable[int]) -> Iterator[bool]:
            for _ in items:
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # the kernel gave it to this thread
                yield handled.wait(10)  # only the main thread runs the handler: the loop must wake for it

        assert await (same() | signalled()).collect(range(1)) == [True]
    finally:
        signal.signal(signal.SIGUSR1, previous)


async def test_the_wakeup_fd_is_set_only_while_a_thread_stage_runs() -> None:
    during: list[int] = []
    assert await (same() | fds_seen_in(during)).collect(range(2)) == [0, 1]
    if plain_asyncio():  # the library's own fd, gone after the run
        assert during[0] != -1 and during == [during[0]] * 2
        assert current_wakeup_fd() == -1
    else:  # trio and uvloop wake themselves: the library leaves their fd alone
        assert during == [current_wakeup_fd()] * 2


async def test_two_overlapping_stages_share_the_fd_and_the_last_one_removes_it() -> None:
    if not plain_asyncio():
        pytest.skip("only a plain asyncio loop gets the library's wakeup fd")
    during: list[int] = []
    first_open, second_done = anyio.Event(), anyio.Event()
    after_second: list[int] = []

    async def first() -> None:
        async with (same() | fds_seen_in(during)).stream(range(10**6)) as items:
            async for _ in items:
                first_open.set()
                await second_done.wait()
                after_second.append(current_wakeup_fd())  # the first stage still runs: still set
                break

    async def second() -> None:
        await first_open.wait()
        await (same() | fds_seen_in(during)).collect(range(2))
        second_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        tg.start_soon(second)
    assert after_second == [during[0]] and during[0] != -1
    assert current_wakeup_fd() == -1


async def test_the_fd_stays_while_a_later_stage_runs_on_after_the_first_one_ended() -> None:
    if not plain_asyncio():
        pytest.skip("only a plain asyncio loop gets the library's wakeup fd")
    first_seen: list[int] = []
    second_open, first_done = anyio.Event(), anyio.Event()
    while_second_runs: list[int] = []

    async def first() -> None:
        await (same() | fds_seen_in(first_seen)).collect(range(2))
        first_done.set()

    async def second() -> None:
        async with (same() | fds_seen_in([])).stream(range(10**6)) as items:
            async for _ in items:
                second_open.set()
                await first_done.wait()
                while_second_runs.append(current_wakeup_fd())  # the first stage has ended; this one runs on
                break

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await second_open.wait()
        tg.start_soon(first)
    assert first_seen[0] != -1 and while_second_runs == [first_seen[0]]
    assert current_wakeup_fd() == -1


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
async def test_run_after_run_on_one_loop_reuses_its_wakeup() -> None:
    """A server that runs a thread stage per request does not open descriptors per run."""
    if not plain_asyncio():
        pytest.skip("only a plain asyncio loop gets the library's wakeup fd")
    await (same() | fds_seen_in([])).collect(range(1))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        await (same() | fds_seen_in([])).collect(range(1))
    assert len(os.listdir("/proc/self/fd")) <= before


async def test_thread_map_sets_it_for_its_calls() -> None:
    def read_fd(x: int) -> int:
        return anyio.from_thread.run_sync(current_wakeup_fd)

    seen = await (same() | thread_map(read_fd, limit=2)).collect(range(3))
    if plain_asyncio():
        assert seen[0] != -1 and seen == [seen[0]] * 3
        assert current_wakeup_fd() == -1


async def test_a_wakeup_fd_the_host_set_stays() -> None:
    if not plain_asyncio():
        pytest.skip("the host's fd on a plain asyncio loop")
    mine, other = socket.socketpair()
    mine.setblocking(False)
    try:
        signal.set_wakeup_fd(mine.fileno())
        during: list[int] = []
        assert await (same() | fds_seen_in(during)).collect(range(2)) == [0, 1]
        assert during == [mine.fileno()] * 2 and current_wakeup_fd() == mine.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        mine.close()
        other.close()


async def test_a_wakeup_fd_the_host_sets_during_the_run_stays_after_it() -> None:
    if not plain_asyncio():
        pytest.skip("the host's fd on a plain asyncio loop")
    mine, other = socket.socketpair()
    mine.setblocking(False)
    try:

        @segment(blocking=True)
        def host_takes_over(items: Iterable[int]) -> Iterator[int]:
            yield from items

        async with (same() | host_takes_over()).stream(range(10**6)) as items:
            async for _ in items:
                assert current_wakeup_fd() != -1
                signal.set_wakeup_fd(mine.fileno())  # the host installs its own meanwhile
                break
        assert current_wakeup_fd() == mine.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        mine.close()
        other.close()


async def test_a_burst_of_signals_while_the_loop_is_busy_reports_nothing() -> None:
    """More signals than the wakeup socket holds, with the loop busy (not draining it): the loop wakes all the same,
    and the full socket is no error to report."""
    if not plain_asyncio():
        pytest.skip("the library's wakeup fd is on a plain asyncio loop")
    reported: list[Any] = []
    previous_hook = sys.unraisablehook
    previous_handler = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    sys.unraisablehook = reported.append
    try:
        with signal_wakeup():  # (not read with current_wakeup_fd(): setting it again would reset its warning flag)
            for _ in range(5000):  # a few hundred fill a socket pair's buffer
                signal.raise_signal(signal.SIGUSR1)
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGUSR1, previous_handler)
    assert reported == []


def test_the_wakeup_sockets_close_with_their_loop() -> None:
    """A loop's wakeup sockets close once the loop is gone (a blocking caller makes loop after loop)."""

    async def run_a_thread_stage() -> list[int]:
        return await (same() | fds_seen_in([])).collect(range(2))

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(run_a_thread_stage()) == [0, 1]
        sockets = (_wakeups[loop].reader, _wakeups[loop].writer)
        assert [s.fileno() != -1 for s in sockets] == [True, True]  # kept for the loop's next thread stage
    finally:
        loop.close()
    gone = weakref.ref(loop)
    del loop
    for _ in range(3):
        gc.collect()
    assert gone() is None
    assert [s.fileno() for s in sockets] == [-1, -1]
