"""tail_file: tail -F semantics on real files (rotation, truncation, deletion, checkpoints)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from talkpipe_async import Metadata
from talkpipe_async.sources import FileStats, Line, RecordError, TailEvent, acknowledge, tail_file
from tests.conftest import BACKEND_NAMES, die_with_parent
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.anyio

FAST = {"poll_min": 0.002, "poll_max": 0.01}


async def take(items: AsyncIterator[Any], n: int, timeout: float = 4.0) -> list[Any]:
    """The next *n* items (failing after *timeout*): synchronise on items, not on sleeps."""
    out = []
    with anyio.fail_after(timeout):
        while len(out) < n:
            out.append(await items.__anext__())
    return out


async def texts(items: AsyncIterator[Any], n: int) -> list[str]:
    """The text of the next *n* lines (metadata items skipped)."""
    out: list[str] = []
    while len(out) < n:
        for item in await take(items, 1):
            if isinstance(item, Line):
                out.append(item.text)
            elif isinstance(item, str):
                out.append(item)
    return out


class Follower:
    """Consumes a running stream in a background task, so the tail keeps polling while the test acts."""

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.error: BaseException | None = None
        self.taken = 0

    async def consume(self, items: AsyncIterator[Any]) -> None:
        try:
            async for item in items:
                self.got.append(item)
        except Exception as exc:
            self.error = exc

    async def next(self, n: int, lines_only: bool = True) -> list[Any]:
        """The next *n* items (only lines, as text, if *lines_only*)."""

        def ready() -> list[Any] | None:
            if self.error is not None:
                raise self.error
            fresh = self.got[self.taken :]
            if lines_only:
                fresh = [str(x) for x in fresh if not isinstance(x, Metadata)]
            return fresh[:n] if len(fresh) >= n else None

        with anyio.fail_after(4):
            while (out := ready()) is None:
                await anyio.sleep(0.002)
        # advance past the items returned (and the metadata among them)
        count = 0
        while count < n:
            item = self.got[self.taken]
            self.taken += 1
            if not (lines_only and isinstance(item, Metadata)):
                count += 1
        return out


@asynccontextmanager
async def follow(source: Any, metadata: bool = False) -> AsyncIterator[Follower]:
    """Run *source* with a background consumer."""
    f = Follower()
    async with source.stream(metadata=metadata) as items, anyio.create_task_group() as tg:
        tg.start_soon(f.consume, items)
        try:
            yield f
        finally:
            tg.cancel_scope.cancel()


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def test_lines_and_offsets(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"one\ntwo\n")
    async with tail_file(log, start="beginning", **FAST).stream() as items:
        first = await take(items, 2)
        assert [str(x) for x in first] == ["one", "two"]
        assert [x.offset for x in first] == [4, 8]
        append(log, b"three\n")
        assert await texts(items, 1) == ["three"]


async def test_start_at_end_reads_the_line_being_written_whole(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"old\nin-progr")
    stats = FileStats()
    async with follow(tail_file(log, stats=stats, **FAST)) as f:
        await wait_until(lambda: stats.files == 1)  # the tail has found its starting point
        append(log, b"ess\nnew\n")
        assert await f.next(2) == ["in-progress", "new"]


async def test_text_mode_yields_str(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    async with tail_file(log, start="beginning", text=True, **FAST).stream() as items:
        assert await take(items, 1) == ["a"]


async def test_rename_and_recreate_drains_old_file_first(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    stats = FileStats()
    with open(log, "ab", buffering=0) as writer:
        writer.write(b"a\nb\n")
        async with tail_file(log, start="beginning", rotate_grace=0.3, stats=stats, **FAST).stream(
            metadata=True
        ) as items:
            assert await texts(items, 2) == ["a", "b"]
            os.rename(log, tmp_path / "app.log.1")
            log.write_bytes(b"new-1\n")
            writer.write(b"late-1\n")  # the old writer has not reopened yet
            assert await texts(items, 1) == ["late-1"]
            writer.write(b"late-2\n")  # still within the grace period
            got = await take(items, 3)
    assert [str(x) for x in got if isinstance(x, Line)] == ["late-2", "new-1"]
    events = [x for x in got if isinstance(x, TailEvent)]
    assert [e.kind for e in events] == ["rotated"]
    assert stats.rotations == 1


async def test_late_writes_over_time_all_come_before_the_new_file(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    old = open(log, "ab", buffering=0)
    try:
        async with tail_file(log, start="beginning", rotate_grace=0.5, text=True, **FAST).stream() as items:
            old.write(b"x\n")
            assert await take(items, 1) == ["x"]
            os.rename(log, tmp_path / "app.log.1")
            log.write_bytes(b"new\n")
            for i in range(5):  # a writer that keeps using the old file for a while
                old.write(f"late-{i}\n".encode())
                await anyio.sleep(0.01)
            assert await take(items, 6) == [f"late-{i}" for i in range(5)] + ["new"]
    finally:
        old.close()


async def test_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    stats = FileStats()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b"a\nb\n")
        async with tail_file(log, start="beginning", stats=stats, **FAST).stream(metadata=True) as items:
            assert await texts(items, 2) == ["a", "b"]
            shutil.copy(log, tmp_path / "app.log.1")
            os.truncate(log, 0)
            os.write(fd, b"c\n")
            got = await take(items, 2)
    finally:
        os.close(fd)
    assert isinstance(got[0], TailEvent) and got[0].kind == "truncated" and got[0].offset == 4
    assert str(got[1]) == "c"
    assert stats.truncations == 1


async def test_truncate_and_regrow_between_polls_is_caught_by_the_fingerprint(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"old-1\nold-2\n")
    stats = FileStats()
    async with tail_file(log, start="beginning", stats=stats, text=True, **FAST).stream() as items:
        assert await take(items, 2) == ["old-1", "old-2"]
        # Replaced in place with longer content before the next poll can see the truncation.
        with open(log, "r+b") as f:
            f.truncate(0)
            f.write(b"new-1\nnew-2\nnew-3\n")
        assert await take(items, 3) == ["new-1", "new-2", "new-3"]
    assert stats.truncations == 1


async def test_delete_and_recreate(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    stats = FileStats()
    async with follow(tail_file(log, start="beginning", rotate_grace=0.05, stats=stats, **FAST)) as f:
        assert await f.next(1) == ["a"]
        log.unlink()
        log.write_bytes(b"b\n")
        assert await f.next(1) == ["b"]
        log.unlink()
        await wait_until(lambda: stats.missing == 1)  # drained, closed, reported missing
        log.write_bytes(b"c\n")
        assert await f.next(1) == ["c"]
    assert stats.rotations == 2


async def test_missing_file_and_directory_at_start_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "sub" / "app.log"
    stats = FileStats()
    caplog.set_level(logging.WARNING, logger="talkpipe_async.sources.tail")
    async with tail_file(log, stats=stats, **FAST).stream(metadata=True) as items:
        [event] = await take(items, 1)
        assert isinstance(event, TailEvent) and event.kind == "missing"
        log.parent.mkdir()
        log.write_bytes(b"hello\n")  # a file that appears later is read from its start
        assert await texts(items, 1) == ["hello"]
    assert stats.missing == 1
    assert len([r for r in caplog.records if "does not exist" in r.getMessage()]) == 1


async def test_partial_line_kept_until_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    stats = FileStats()
    async with follow(tail_file(log, start="beginning", stats=stats, **FAST)) as f:
        append(log, b"par")
        await wait_until(lambda: stats.bytes >= 3)  # the tail has read the partial line
        append(log, b"tial\nnext\n")
        assert await f.next(2) == ["partial", "next"]
        assert len(f.got) == 2


async def test_crlf_even_split_across_writes(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\r\nb\r")
    stats = FileStats()
    async with follow(tail_file(log, start="beginning", stats=stats, **FAST)) as f:
        assert await f.next(1) == ["a"]
        await wait_until(lambda: stats.bytes >= 5)  # "b\r" is held
        append(log, b"\nc\r\n")
        assert await f.next(2) == ["b", "c"]


async def test_invalid_utf8_replace_counts(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"ok\nbad \xff\xfe\nok2\n")
    stats = FileStats()
    async with tail_file(log, start="beginning", stats=stats, text=True, **FAST).stream() as items:
        assert await take(items, 3) == ["ok", "bad \ufffd\ufffd", "ok2"]
    assert stats.decode_errors == 1


async def test_invalid_utf8_strict_raises_with_file_and_offset(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"ok\nbad \xff\n")
    with pytest.raises(RecordError) as info:
        async with tail_file(log, start="beginning", errors="strict", **FAST).stream() as items:
            await take(items, 3)
    err = info.value
    assert err.path == str(log) and err.offset == 3  # where the line starts
    assert "tail_file" in str(err) and "invalid utf-8" in str(err)


async def test_over_long_lines_dropped_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"short\n" + b"x" * 100 + b"\nafter\n")
    stats = FileStats()
    source = tail_file(log, start="beginning", max_line_bytes=16, chunk_size=8, stats=stats, text=True, **FAST)
    async with source.stream() as items:
        assert await take(items, 2) == ["short", "after"]
    assert stats.dropped_long == 1
    assert stats.buffer_high_water <= 16


async def test_endless_line_keeps_memory_bounded(tmp_path: Path) -> None:
    """A writer that sends megabytes without a newline: the held buffer never exceeds the cap."""
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    cap = 64 * 1024
    stats = FileStats()
    source = tail_file(log, start="beginning", max_line_bytes=cap, chunk_size=16 * 1024, stats=stats, **FAST)
    async with follow(source) as f:
        block = b"y" * (1024 * 1024)
        for i in range(8):
            append(log, block)
            await wait_until(lambda i=i: stats.bytes >= (i + 1) * len(block))  # type: ignore[misc]
            assert stats.buffer_high_water <= cap
        append(log, b"\nafter\n")
        assert await f.next(1) == ["after"]
        assert len(f.got) == 1
    assert stats.dropped_long == 1
    assert stats.buffer_high_water <= cap


async def test_truncation_discards_and_counts_a_partial_line(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\npart")
    stats = FileStats()
    async with follow(tail_file(log, start="beginning", stats=stats, **FAST)) as f:
        assert await f.next(1) == ["a"]
        await wait_until(lambda: stats.bytes >= 6)
        os.truncate(log, 0)
        append(log, b"b\n")
        assert await f.next(1) == ["b"]
    assert stats.partial_discarded == 1


async def test_idle_polls_back_off(tmp_path: Path) -> None:
    """While idle, the poll interval doubles up to poll_max: few polls, not one per poll_min."""
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    stats = FileStats()
    async with follow(tail_file(log, poll_min=0.001, poll_max=0.05, stats=stats)):
        start = anyio.current_time()
        await wait_until(lambda: anyio.current_time() - start >= 0.4)  # the workload: 0.4 s of idleness
        polls = stats.polls
    # Without backoff ~400 polls; with it about log2(50) + 0.4 / 0.05 = 14 (generous bound for a busy machine).
    assert polls < 40
    assert polls >= 3


async def test_checkpoint_restart_repeats_only_unacknowledged_lines(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    ckpt = tmp_path / "app.ckpt"
    log.write_bytes(b"".join(f"line-{i}\n".encode() for i in range(10)))
    stats = FileStats()
    source = tail_file(log, start="beginning", checkpoint=ckpt, checkpoint_interval=0, stats=stats, **FAST)
    async with source.stream() as items:
        got = await take(items, 7)
        got[4].ack()  # lines 0..4 done; 5 and 6 received but not acknowledged
    assert json.loads(ckpt.read_text())["offset"] == got[4].offset
    append(log, b"line-10\npart")  # written while the tail is down; a partial last line
    async with source.stream() as items:
        again = await texts(items, 6)
    assert again == ["line-5", "line-6", "line-7", "line-8", "line-9", "line-10"]


async def test_checkpoint_resumes_in_a_file_rotated_while_down(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    ckpt = tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\n")
    source = tail_file(log, start="beginning", checkpoint=ckpt, rotate_grace=0.05, **FAST)
    async with source.stream() as items:
        [a, _b] = await take(items, 2)
        a.ack()
    append(log, b"c\n")
    os.rename(log, tmp_path / "app.log.1")
    log.write_bytes(b"d\n")
    async with source.stream() as items:
        assert await texts(items, 3) == ["b", "c", "d"]


async def test_acknowledge_segment_and_durable_commit(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    ckpt = tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\nc\n")
    source = tail_file(log, start="beginning", checkpoint=ckpt, checkpoint_interval=3600, **FAST)

    async with (source | acknowledge(durable=True)).stream() as items:
        got = await take(items, 2)
        # durable: the checkpoint covers b before b is passed on
        assert json.loads(ckpt.read_text())["offset"] == got[1].offset

    async with (source | (lambda lines: ({"line": x} for x in lines)) | acknowledge("line")).stream() as items:
        [rec] = await take(items, 1)
        assert str(rec["line"]) == "c"
    assert json.loads(ckpt.read_text())["offset"] == 6


async def test_acknowledge_refuses_items_without_a_line(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="expected a tail Line"):
        await acknowledge().collect(["x"])


async def test_events_can_be_turned_off_and_metadata_passes_by(tmp_path: Path) -> None:
    log = tmp_path / "none.log"
    stats = FileStats()
    async with follow(tail_file(log, events=False, stats=stats, **FAST), metadata=True) as f:
        await wait_until(lambda: stats.missing == 1)
        log.write_bytes(b"x\n")
        assert await f.next(1, lines_only=False) == [f.got[0]]
        assert f.got[0].text == "x"


_CHILD = textwrap.dedent(
    """
    import sys, anyio
    from talkpipe_async.sources import tail_file

    async def main():
        source = tail_file(
            sys.argv[1], start="beginning", checkpoint=sys.argv[2], poll_min=0.002, poll_max=0.01
        )
        async with source.stream() as items:
            async for line in items:
                print("got", line.text, flush=True)
                await line.commit()
                print("acked", line.text, flush=True)

    anyio.run(main, backend=sys.argv[3], backend_options={"use_uvloop": True} if sys.argv[4] == "1" else None)
    """
)


def _run_child(args: list[str], stop: Callable[[list[str]], bool]) -> list[str]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args], stdout=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent)
    out: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            out.append(raw.rstrip("\n"))
            if stop(out):
                break
    finally:
        proc.kill()  # SIGKILL: no cleanup, no final checkpoint
        proc.wait()
    # What the child printed before the kill is still in the pipe: a line it printed as received may already be
    # acknowledged in the checkpoint, so it counts as delivered by this run.
    assert proc.stdout is not None
    out.extend(raw.rstrip("\n") for raw in proc.stdout.read().splitlines())
    proc.stdout.close()
    return out


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_checkpoint_survives_kill_9(tmp_path: Path, backend: str) -> None:
    """Kill the tailing process mid-way; the restarted one loses nothing and repeats only unacknowledged lines."""
    log = tmp_path / "app.log"
    ckpt = tmp_path / "app.ckpt"
    n = 60
    log.write_bytes(b"".join(f"line-{i}\n".encode() for i in range(n)))
    args = [str(log), str(ckpt), "trio" if backend == "trio" else "asyncio", "1" if backend == "uvloop" else "0"]
    first = _run_child(args, lambda out: out[-1] == "acked line-20")
    acked = {x.split(" ", 1)[1] for x in first if x.startswith("acked ")}
    got_first = [x.split(" ", 1)[1] for x in first if x.startswith("got ")]
    assert len(acked) >= 21
    # Restart: the checkpoint wins over start="beginning".
    second = _run_child(args, lambda out: out[-1] == f"got line-{n - 1}")
    got_second = [x.split(" ", 1)[1] for x in second if x.startswith("got ")]
    everything = [f"line-{i}" for i in range(n)]
    assert set(got_first) | set(got_second) == set(everything)  # nothing lost
    repeated = set(got_first) & set(got_second)
    assert not repeated & acked  # only unacknowledged lines repeated
    assert got_second == everything[everything.index(got_second[0]) :]  # in order, no gaps


async def test_a_change_wakes_the_tail_before_its_poll_interval_ends(tmp_path: Path) -> None:
    """On Linux a file-system notification wakes the tail at once: with polls 60 s apart, lines still arrive."""
    if not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux-only; elsewhere the tail polls")
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    stats = FileStats()
    slow = {"poll_min": 60.0, "poll_max": 60.0}
    async with follow(tail_file(log, start="end", text=True, stats=stats, **slow)) as f:
        await wait_until(lambda: stats.polls >= 1)  # the first poll found the end of the file
        append(log, b"one\n")
        assert await f.next(1) == ["one"]
        append(log, b"two\n")
        assert await f.next(1) == ["two"]
        log.rename(tmp_path / "app.log.1")  # rotation also wakes it
        log.write_bytes(b"three\n")
        assert await f.next(1) == ["three"]
    # Each line came within 1 s with polls 60 s apart: a notification woke the tail at least once.  How many
    # wake-ups that took depends on whether a change landed before the tail went back to waiting (then the poll
    # that follows its last delivery reads it), so only the lower bound is exact.
    assert stats.wakeups >= 1 and stats.rotations == 1


async def test_watch_false_polls_only(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    stats = FileStats()
    async with follow(tail_file(log, start="end", text=True, stats=stats, watch=False, **FAST)) as f:
        await wait_until(lambda: stats.polls >= 1)
        append(log, b"one\n")
        assert await f.next(1) == ["one"]
    assert stats.wakeups == 0
