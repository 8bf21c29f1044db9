"""tail_file's scout thread: rotations seen promptly, nothing lost, and the thread stopped with the tail.

The scout thread holds each new file as it arrives, reads ahead of the consumer (the copytruncate window) and wakes
the run's idle wait on every change in the directory (inotify).  These tests use real files and real rotations
(rename and create, copy and truncate).  Where promptness is the point, the polls are a minute long: only the
scout's wake-up can deliver a line within the test, so a line that comes at all came promptly.  Waits are on the
items themselves, or on the scout's own state (what it has held and read ahead) where no item can show it.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from talkpipe_async.sources import FileStats, tail_file
from talkpipe_async.sources._tail_chain import _Tailer
from talkpipe_async.sources.tail import DEFAULT_READ_AHEAD
from tests.helpers.wait import wait_until, wait_until_sync
from tests.sources.test_mut_tail_chain import append, poll_all, rotate, texts
from tests.sources.test_tail import follow, take

pytestmark = pytest.mark.anyio

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="inotify wake-ups and /proc/self/fd are Linux only"
)

#: Polls so long that nothing in a test but the scout's wake-up can end the run's idle wait.
MINUTE = 60.0


def descriptors() -> Counter[str]:
    """The process's open inotify descriptors and pipes, by kind (what the tail opens besides its files)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "inotify" in target:
            kinds["inotify"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
    return kinds


def scouts(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"{name} scout"]


# -- rotation seen promptly, nothing lost ----------------------------------------------------------------------------


@pytest.fixture
def idle(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Awaitable[None]]:
    """``await idle()``: until the run's latest poll found nothing, so that it now waits (a minute, here) for
    the scout's wake-up: a write after that reaches the consumer only through the wake-up."""
    last: list[bool] = [False]
    poll = _Tailer.poll

    def recording(self: _Tailer) -> tuple[list[Any], bool]:
        items, more = poll(self)
        last[0] = not items and not more
        return items, more

    monkeypatch.setattr(_Tailer, "poll", recording)

    async def wait() -> None:
        await wait_until(lambda: last[0], what="an idle poll")

    return wait


@linux_only
@pytest.mark.parametrize("read_ahead", [0, 1, DEFAULT_READ_AHEAD])
async def test_with_minute_long_polls_every_append_and_rotation_comes_at_once(
    tmp_path: Path, read_ahead: int, idle: Callable[[], Awaitable[None]]
) -> None:
    """With minute-long polls, each append, a rotation by rename and create, and a copy-and-truncate, each
    made while the run waits, come through within seconds (the scout wakes the run on each change), in order,
    nothing lost or twice; whatever the read-ahead (none, one byte, the default).  Leaving the stream then does
    not wait out the poll: the scout is stopped at once and joined."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    src = tail_file(
        log,
        start="beginning",
        rotate_grace=0,
        read_ahead=read_ahead,
        text=True,
        name="prompt",
        poll_min=MINUTE,
        poll_max=MINUTE,
    )
    async with follow(src) as f:
        assert await f.next(1) == ["a"]
        await idle()
        append(log, b"b\n")
        assert await f.next(1) == ["b"]
        await idle()
        rotate(log, 1, b"c\n")  # rename away, create anew
        assert await f.next(1) == ["c"]
        await idle()
        append(log, b"d\n")
        assert await f.next(1) == ["d"]
        await idle()
        shutil.copyfile(log, tmp_path / "app.log.2")  # copytruncate
        os.truncate(log, 0)
        append(log, b"e\n")
        assert await f.next(1) == ["e"]
        await idle()
        append(log, b"f\n")
        assert await f.next(1) == ["f"]
        assert f.got == ["a", "b", "c", "d", "e", "f"]
        closing = time.monotonic()
    assert time.monotonic() - closing < 30  # not the minute of the scout's wait
    assert not scouts("prompt")


@linux_only
async def test_a_file_created_after_the_start_comes_at_once(
    tmp_path: Path, idle: Callable[[], Awaitable[None]]
) -> None:
    """Nothing at the path when the tail starts (the scout holds nothing yet): the file created later is
    held by the scout and its line comes within seconds though the polls are a minute long; so do the next
    file after the first is deleted."""
    log = tmp_path / "app.log"
    async with follow(tail_file(log, rotate_grace=0, text=True, poll_min=MINUTE, poll_max=MINUTE)) as f:
        await idle()
        log.write_bytes(b"a\n")
        assert await f.next(1) == ["a"]
        await idle()
        log.unlink()
        log.write_bytes(b"b\n")
        assert await f.next(1) == ["b"]


@linux_only
def test_files_that_came_and_went_between_two_looks_are_read(tmp_path: Path, make_tailer: Any) -> None:
    """Starting the scout with inotify also follows the renames away from the path: two rotations by rename
    and create while nobody looks (the scout stopped, no poll) lose nothing: the file that was at the path only
    between the two looks is read, under its name now, in its place."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer: _Tailer = make_tailer(log, poll_min=0.002, poll_max=60)
    tailer.start_scout(True)
    wait_until_sync(lambda: len(tailer.chain) == 1, time.monotonic() + 10, "the first file")
    tailer.stop_scout()
    rotate(log, 1, b"b\n")
    os.rename(tmp_path / "app.log.1", tmp_path / "app.log.2")
    rotate(log, 1, b"c\n")
    items = poll_all(tailer)
    lines = [(x.text, os.path.basename(x.path)) for x in items if hasattr(x, "text")]
    assert lines == [("a", "app.log"), ("b", "app.log.1"), ("c", "app.log")]
    assert [x.kind for x in items if not hasattr(x, "text")] == ["rotated", "rotated"]


@linux_only
async def test_wakeups_count_changes_not_the_passing_of_time(tmp_path: Path) -> None:
    """An idle tail whose directory does not change is not woken (at most once, as the scout starts): its
    waits end by their own interval, growing from poll_min; ``stats.wakeups`` counts only changes.  After a
    change (an append: a modification and a close) the scout has taken the directory's events, and the tail
    is idle again: a few wake-ups for that change, then none."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    stats = FileStats()
    async with follow(tail_file(log, poll_min=0.001, poll_max=60, stats=stats)) as f:
        await wait_until(lambda: stats.polls >= 8, what="eight idle polls")
        assert stats.wakeups <= 1
        woken = stats.wakeups
        append(log, b"b\n")
        assert await f.next(1) == ["b"]
        polled = stats.polls
        await wait_until(lambda: stats.polls >= polled + 8, what="eight more idle polls")
        assert stats.wakeups - woken <= 3


# -- the scout's reading ahead -----------------------------------------------------------------------------------------


def test_the_scout_reads_ahead_even_a_single_byte(tmp_path: Path, make_tailer: Any) -> None:
    """read_ahead=1: the scout reads one byte ahead (the smallest read-ahead is one, not none)."""
    log = tmp_path / "app.log"
    log.write_bytes(b"ab\n")
    tailer: _Tailer = make_tailer(log, read_ahead=1, poll_min=0.002, poll_max=60)
    tailer.start_scout(True)
    wait_until_sync(lambda: bool(tailer.chain) and tailer.chain[0].ahead_len == 1, time.monotonic() + 10, "a byte")
    tailer.stop_scout()
    assert tailer.chain[0].ahead == [b"a"]
    assert texts(poll_all(tailer)) == ["ab"]


def test_without_inotify_the_scout_keeps_reading_ahead(tmp_path: Path, make_tailer: Any) -> None:
    """watch=False: the scout reads ahead again every poll_min, not just once: each append is read ahead
    without a poll."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer: _Tailer = make_tailer(log, watch=False, read_ahead=1024, poll_min=0.002, poll_max=60)
    assert tailer.start_scout(False) is None
    deadline = time.monotonic() + 10
    wait_until_sync(lambda: bool(tailer.chain) and tailer.chain[0].ahead_len == 2, deadline, "the first line")
    for n in (4, 6):
        append(log, b"x\n")

        def read_ahead(n: int = n) -> bool:
            return tailer.chain[0].ahead_len == n

        wait_until_sync(read_ahead, deadline, f"{n} bytes read ahead")
    tailer.stop_scout()
    assert texts(poll_all(tailer)) == ["a", "x", "x"]


def test_a_line_written_between_the_copy_and_the_truncation_is_kept_at_every_copytruncate(
    tmp_path: Path, make_tailer: Any
) -> None:
    """copytruncate loses what is written after the copy and before the truncation; the scout's read-ahead
    keeps it.  After a truncation the scout reads ahead in the file's new content, so the second copytruncate
    keeps its line too: every line once, in order, with no poll until the end."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer: _Tailer = make_tailer(log, poll_min=0.002, poll_max=60)
    tailer.start_scout(True)
    deadline = time.monotonic() + 10

    def held(n: int) -> bool:
        return len(tailer.chain) == n

    def last_ahead(n: int) -> bool:
        with tailer.chain_lock:
            return bool(tailer.chain) and tailer.chain[-1].ahead_len == n

    wait_until_sync(partial(last_ahead, 2), deadline, "the first line read ahead")
    for k, (late, fresh) in enumerate([(b"b\n", b"c\n"), (b"d\n", b"e\n")], start=1):
        shutil.copyfile(log, tmp_path / f"app.log.{k}")
        append(log, late)  # after the copy: only the read-ahead has it once the file is truncated
        wait_until_sync(partial(last_ahead, 4), deadline, f"the late line of copytruncate {k}")
        os.truncate(log, 0)
        wait_until_sync(partial(held, k + 1), deadline, f"truncation {k} seen")
        append(log, fresh)
        wait_until_sync(partial(last_ahead, 2), deadline, f"the new content after truncation {k}")
    tailer.stop_scout()
    items = poll_all(tailer)
    assert texts(items) == ["a", "b", "c", "d", "e"]
    assert [x.kind for x in items if not hasattr(x, "text")] == ["truncated", "truncated"]


# -- the scout stopped and joined with the tail -----------------------------------------------------------------------


@linux_only
@pytest.mark.parametrize("how", ["break", "cancel", "error"])
async def test_the_scout_is_stopped_and_joined_however_the_tail_closes(tmp_path: Path, how: str) -> None:
    """Leaving the stream by a break, a cancellation or an error in the consumer stops and joins the scout
    thread (one daemon thread, "<stage> scout", while the tail runs) and releases what it opened (its inotify
    watch, the rename watch, its wake-up and stop pipes) while the tail waits out a minute-long poll."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    before = descriptors()
    src = tail_file(log, start="beginning", text=True, name="closing", poll_min=MINUTE, poll_max=MINUTE)
    if how == "break":
        async with src.stream() as items:
            async for item in items:
                assert item == "a"
                assert [t.daemon for t in scouts("closing")] == [True]  # never holds the process open
                break
    elif how == "cancel":
        with anyio.CancelScope() as scope:
            async with src.stream() as items:
                assert await take(items, 1) == ["a"]
                assert scouts("closing")
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
    else:
        with pytest.raises(LookupError, match="the consumer failed"):
            async with src.stream() as items:
                assert await take(items, 1) == ["a"]
                assert scouts("closing")
                raise LookupError("the consumer failed")
    assert not scouts("closing")
    assert descriptors() == before


@linux_only
async def test_an_error_in_the_scouts_read_ends_the_run_with_it_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error in the scout's read-ahead (which no poll makes) ends the run with that error, within
    seconds though the polls are a minute long (the scout wakes the run to deliver it), and the scout is
    joined and its descriptors released."""

    def failing(self: _Tailer, h: Any) -> None:
        raise OSError(errno.EIO, "the read ahead failed")

    monkeypatch.setattr(_Tailer, "_read_ahead", failing)
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    before = descriptors()
    src = tail_file(log, start="beginning", text=True, name="failing", poll_min=MINUTE, poll_max=MINUTE)
    with pytest.raises(OSError, match="the read ahead failed"):
        async with src.stream() as items:
            with anyio.fail_after(10):
                async for _ in items:
                    pass
    assert not scouts("failing")
    assert descriptors() == before
