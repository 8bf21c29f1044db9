"""A thread the sync code of a stage starts itself: its error fails the run, and the host's hook keeps working.

Pinned here: while a thread stage runs, an exception in a thread it started reaches the hook the host had
installed in ``threading.excepthook`` (its traceback is still reported) as well as the run; once the run ends, the
host's hook is back in place, also after two thread stages overlapped; and an exception of a thread that was
running before the stage started is the host's business only.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import pytest

from talkpipe_async import segment

pytestmark = pytest.mark.anyio


@segment
async def add(items: AsyncIterator[int], n: int = 0) -> AsyncIterator[int]:
    async for x in items:
        yield x + n


def run_and_die(message: str) -> None:
    """Start a thread that raises *message*, and wait for it."""

    def die() -> None:
        raise RuntimeError(message)

    helper = threading.Thread(target=die)
    helper.start()
    helper.join()


@segment(blocking=True)
def with_dying_helper(items: Iterable[int]) -> Iterator[int]:
    run_and_die("helper died")
    yield from items


@segment(blocking=True)
def passthrough(items: Iterable[int]) -> Iterator[int]:
    yield from items


class HostHook:
    """The host's own ``threading.excepthook``: records what reaches it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, args: Any) -> None:
        self.seen.append(str(args.exc_value))


@pytest.fixture
def host_hook(monkeypatch: pytest.MonkeyPatch) -> HostHook:
    hook = HostHook()
    monkeypatch.setattr(threading, "excepthook", hook)
    return hook


async def test_a_dying_thread_fails_the_run_and_still_reaches_the_hosts_hook(host_hook: HostHook) -> None:
    with pytest.raises(RuntimeError, match="helper died"):
        await (add() | with_dying_helper() | add()).collect(range(3))
    assert host_hook.seen == ["helper died"]  # the traceback is still reported the host's way
    assert threading.excepthook is host_hook


async def test_the_hosts_hook_is_back_after_a_run_that_went_well(host_hook: HostHook) -> None:
    assert await (add() | passthrough() | add()).collect(range(3)) == [0, 1, 2]
    assert threading.excepthook is host_hook
    run_and_die("after the run")  # outside any run: the host's alone
    assert host_hook.seen == ["after the run"]


async def test_the_hosts_hook_is_back_only_when_the_last_of_two_overlapping_runs_ends(host_hook: HostHook) -> None:
    first_open, second_done = anyio.Event(), anyio.Event()
    hooks_seen: list[bool] = []

    async def first() -> None:
        async with (add() | passthrough() | add()).stream(range(10**6)) as items:  # its thread stays busy
            async for _ in items:
                first_open.set()
                await second_done.wait()
                hooks_seen.append(threading.excepthook is host_hook)  # still watched: the first run is open
                break

    async def second() -> None:
        await first_open.wait()
        await (add() | passthrough() | add()).collect(range(3))
        second_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        tg.start_soon(second)
    assert hooks_seen == [False]
    assert threading.excepthook is host_hook


async def test_a_thread_older_than_the_run_is_left_to_the_host(host_hook: HostHook) -> None:
    go, started = threading.Event(), threading.Event()

    def old() -> None:
        started.set()
        go.wait(10)
        raise RuntimeError("an older thread died")

    older = threading.Thread(target=old)
    older.start()
    started.wait(10)

    @segment(blocking=True)
    def release_the_older_thread(items: Iterable[int]) -> Iterator[int]:
        go.set()
        older.join()
        yield from items

    assert await (add() | release_the_older_thread() | add()).collect(range(3)) == [0, 1, 2]
    assert host_hook.seen == ["an older thread died"]
