"""tail_file rotation chains: every file that was at the path, in order, late writes included; checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from talkpipe_async.sources import FileStats, Line, TailEvent, _tail_chain, tail_file
from talkpipe_async.sources._tail_chain import _Tailer
from tests.helpers.wait import wait_until
from tests.sources.test_tail import FAST, follow, take, texts

pytestmark = pytest.mark.anyio


def rotate(log: Path, k: int, content: bytes) -> None:
    """logrotate "create": rename the file away, create a new one at the path."""
    os.rename(log, log.with_name(f"{log.name}.{k}"))
    log.write_bytes(content)


async def test_late_writes_while_the_consumer_pulls_come_before_the_next_files(tmp_path: Path) -> None:
    """A consumer keeps pulling through two rotations; writers keep using the rotated files (within the
    grace): each file is read whole, late lines included, before the next one."""
    log = tmp_path / "app.log"
    stats = FileStats()
    first = open(log, "ab", buffering=0)
    try:
        first.write(b"1-a\n")
        source = tail_file(log, start="beginning", rotate_grace=1.0, stats=stats, **FAST)
        async with follow(source) as f:
            assert await f.next(1) == ["1-a"]
            rotate(log, 1, b"2-a\n")
            await wait_until(lambda: stats.files == 2)  # the new file is held while the old one drains
            second = open(log, "ab", buffering=0)
            try:
                first.write(b"1-late-1\n")
                assert await f.next(1) == ["1-late-1"]  # read from the rotated file while the consumer pulls
                rotate(log, 2, b"3-a\n")
                await wait_until(lambda: stats.files == 3)
                first.write(b"1-late-2\n")
                second.write(b"2-late-1\n")
                assert await f.next(1) == ["1-late-2"]
                first.close()
                second.write(b"2-late-2\n")
                got = await f.next(4)
            finally:
                second.close()
    finally:
        first.close()
    assert got == ["2-a", "2-late-1", "2-late-2", "3-a"]
    assert stats.rotations == 2


@pytest.mark.parametrize("watch", [True, False])
async def test_files_rotated_while_the_consumer_does_not_pull_are_all_read(tmp_path: Path, watch: bool) -> None:
    """The consumer is busy (not pulling) while the path is rotated three times: every file is held as it
    arrives (the scout: inotify, or polls every poll_min) and read in order when the consumer comes back."""
    log = tmp_path / "app.log"
    log.write_bytes(b"0\n")
    stats = FileStats()
    source = tail_file(log, start="beginning", rotate_grace=0.05, watch=watch, stats=stats, text=True, **FAST)
    async with source.stream() as items:
        assert await take(items, 1) == ["0"]
        for k in range(1, 4):
            with open(log, "ab") as f:
                f.write(f"{k - 1}-more\n".encode())
            rotate(log, k, f"{k}\n".encode())
            await wait_until(lambda k=k: stats.files == k + 1)  # type: ignore[misc]
        assert await take(items, 6) == ["0-more", "1", "1-more", "2", "2-more", "3"]
    assert stats.rotations == 3


async def test_an_older_acknowledgement_never_moves_the_checkpoint_back(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    ckpt = tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\nc\n")
    stats = FileStats()
    source = tail_file(log, start="beginning", checkpoint=ckpt, rotate_grace=0.05, stats=stats, **FAST)
    async with source.stream() as items:
        a, b, c = await take(items, 3)
        await c.commit()
        await a.commit()  # late, out of order: must not move the checkpoint back to a
        assert json.loads(ckpt.read_text())["offset"] == c.offset
        rotate(log, 1, b"d\n")
        [d] = [x for x in await take(items, 1) if isinstance(x, Line)]
        await d.commit()
        await b.commit()  # a line of the previous file, acknowledged after one of the new file
        saved = json.loads(ckpt.read_text())
        assert (saved["ino"], saved["offset"]) == (os.stat(log).st_ino, d.offset)
        # Acknowledgements racing from threads: the checkpoint ends at the newest one.
        lines = [a, b, c, d] * 50
        threads = [threading.Thread(target=lambda x=x: x.ack()) for x in lines]  # type: ignore[misc]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    saved = json.loads(ckpt.read_text())
    assert (saved["ino"], saved["offset"]) == (os.stat(log).st_ino, d.offset)


async def test_a_restart_reads_the_files_held_after_the_checkpointed_one(tmp_path: Path) -> None:
    """The checkpoint names the acknowledged file and the files the tail held after it: a restart reads
    the rest of the first, then each of the others, in order, though two are no longer at the path."""
    log = tmp_path / "app.log"
    ckpt = tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\n")
    stats = FileStats()
    source = tail_file(log, start="beginning", checkpoint=ckpt, rotate_grace=3600, stats=stats, **FAST)
    async with source.stream() as items:
        [a, _b] = await take(items, 2)
        a.ack()
        rotate(log, 1, b"c\nd\n")
        await wait_until(lambda: stats.files == 2)
        rotate(log, 2, b"e\n")
        await wait_until(lambda: stats.files == 3)
    saved = json.loads(ckpt.read_text())
    assert saved["offset"] == a.offset and len(saved["next"]) == 2
    async with tail_file(log, start="beginning", checkpoint=ckpt, rotate_grace=0.05, **FAST).stream() as items:
        assert await texts(items, 4) == ["b", "c", "d", "e"]


@pytest.mark.parametrize("read_ahead", [0, 1 << 20])
async def test_copytruncate_reads_the_unread_rest_from_the_copy(tmp_path: Path, read_ahead: int) -> None:
    """Lines written before the copy but not read before the truncate are read from the copy."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    stats = FileStats()
    source = tail_file(log, start="beginning", read_ahead=read_ahead, stats=stats, **FAST)
    async with source.stream(metadata=True) as items:
        assert await texts(items, 1) == ["a"]
        with open(log, "ab") as f:
            f.write(b"b\nc\n")  # the consumer is not pulling
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
        with open(log, "ab") as f:
            f.write(b"d\n")
        got: list[object] = []
        while not got or str(got[-1]) != "d":
            got += await take(items, 1)
    lines = [str(x) for x in got if isinstance(x, Line)]
    events = [x for x in got if isinstance(x, TailEvent)]
    assert lines == ["b", "c", "d"]
    assert stats.truncations == 1
    if read_ahead == 0:
        assert [e.kind for e in events] == ["truncated"]
        assert events[0].recovered_from == str(tmp_path / "app.log.1")
    else:
        assert all(e.kind == "truncated" for e in events)


async def test_a_file_of_other_content_is_not_taken_for_the_copy(tmp_path: Path) -> None:
    """Only a file named after the followed one, with the same first bytes and the same bytes before the
    read offset, counts as its copy."""
    log = tmp_path / "app.log"
    header = b"h" * 299 + b"\n"  # longer than the fingerprint
    log.write_bytes(header + b"l1\n")
    stats = FileStats()
    source = tail_file(log, start="beginning", read_ahead=0, stats=stats, text=True, **FAST)
    async with source.stream() as items:
        assert await take(items, 2) == ["h" * 299, "l1"]
        with open(log, "ab") as f:
            f.write(b"l2\n")  # not read before the truncate; no true copy holds it
        (tmp_path / "other.log").write_bytes(header + b"l1\nl2-other\n")  # the right bytes, another name
        (tmp_path / "app.log.1").write_bytes(header + b"XX\nl2-wrong\n")  # same fingerprint, other bytes
        os.truncate(log, 0)
        with open(log, "ab") as f:
            f.write(b"c\n")
        assert await take(items, 1) == ["c"]
    assert stats.truncations == 1


async def test_every_held_descriptor_is_closed(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    stats = FileStats()
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    source = tail_file(log, start="beginning", rotate_grace=3600, stats=stats, text=True, **FAST)
    async with source.stream() as items:
        assert await take(items, 1) == ["a"]
        for k in range(1, 4):
            rotate(log, k, b"x\n")
            await wait_until(lambda k=k: stats.files == k + 1)  # type: ignore[misc]
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) <= before


async def test_a_restart_after_a_copytruncate_reads_the_copy_then_the_truncated_file(tmp_path: Path) -> None:
    """Acknowledged up to a line of the generation that was truncated: the checkpoint names the copy (from
    the offset where the truncated file stopped) and the new generation, and a restart reads both."""
    log = tmp_path / "app.log"
    ckpt = tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\n")
    source = tail_file(log, start="beginning", checkpoint=ckpt, read_ahead=0, **FAST)
    async with source.stream() as items:
        [_a, b] = await take(items, 2)
        b.ack()
        with open(log, "ab") as f:
            f.write(b"c\nd\n")  # not read before the truncate
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
        with open(log, "ab") as f:
            f.write(b"e\n")
        assert [str(x) for x in await take(items, 3)] == ["c", "d", "e"]
    saved = json.loads(ckpt.read_text())
    assert saved["offset"] == b.offset and [n["start"] for n in saved["next"]] == [b.offset, 0]
    async with tail_file(log, start="beginning", checkpoint=ckpt, **FAST).stream() as items:
        assert await texts(items, 3) == ["c", "d", "e"]


async def test_an_error_in_the_scout_thread_ends_the_run_with_it(tmp_path: Path) -> None:
    """No exception is lost in the scout thread: a directory put at the path fails the run, naming it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the scout wakes on inotify (Linux); elsewhere it looks every poll_min, here 60 s")
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    source = tail_file(log, start="beginning", rotate_grace=3600, text=True, poll_min=60.0, poll_max=60.0)
    with pytest.raises(IsADirectoryError, match=r"app\.log"):
        async with source.stream() as items:
            assert await take(items, 1) == ["a"]
            os.rename(log, tmp_path / "app.log.1")
            log.mkdir()  # the scout wakes on the directory change, the poll 60 s later: the scout sees it
            await take(items, 1, timeout=10)


async def test_lines_read_ahead_come_in_batches_of_chunk_size_and_in_order(tmp_path: Path) -> None:
    """The scout reads ahead in big reads while the consumer is busy; the poll hands them on in chunk_size
    pieces, split across lines, nothing lost or repeated."""
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    stats = FileStats()
    source = tail_file(log, start="beginning", chunk_size=100, stats=stats, text=True, **FAST)
    expected = [f"line-{i:05d}" for i in range(3000)]
    async with source.stream() as items:
        with open(log, "ab") as f:
            f.write(b"first\n")
        assert await take(items, 1) == ["first"]
        with open(log, "ab") as f:  # the consumer is not pulling
            for i in range(0, 3000, 100):
                f.write("".join(f"{x}\n" for x in expected[i : i + 100]).encode())
                f.flush()
        assert await take(items, 3000, timeout=20) == expected
    assert stats.polls >= 3000 * 11 // 100  # batches of at most chunk_size bytes


def polled(tailer: _Tailer) -> list[str]:
    """Poll in this thread (no scout) until nothing more comes: the texts of the lines read."""
    out: list[str] = []
    for _ in range(100):
        items, more = tailer.poll()
        out += [str(x) for x in items if isinstance(x, Line)]
        if not items and not more:
            return out
    raise AssertionError(f"still reading after 100 polls: {out}")


@pytest.fixture
def chain_tailer(tmp_path: Path) -> Iterator[tuple[_Tailer, FileStats]]:
    """A tail's reading side driven by hand: polls in the test's thread, no scout; renames followed."""
    if not sys.platform.startswith("linux"):
        pytest.skip("files renamed away unseen are found through inotify's rename events (Linux)")
    stats = FileStats()
    tailer = _Tailer(tail_file(tmp_path / "app.log", start="beginning", rotate_grace=0, stats=stats))
    tailer.watch_renames()
    try:
        yield tailer, stats
    finally:
        tailer.close()


def test_files_at_the_path_between_two_looks_are_read_in_their_place(
    tmp_path: Path, chain_tailer: tuple[_Tailer, FileStats]
) -> None:
    """Two files come and go at the path between two looks of the tail (a rotation faster than a starved
    tail): they are found by their new names and read, in rotation order, between the file before and the
    file after; a rotation from before the tail started is not read."""
    tailer, stats = chain_tailer
    log = tmp_path / "app.log"
    (tmp_path / "app.log.0").write_bytes(b"before the tail\n")
    log.write_bytes(b"a1\n")
    assert polled(tailer) == ["a1"]
    rotate(log, 1, b"b1\n")
    with open(tmp_path / "app.log.1", "ab") as f:
        f.write(b"a2\n")  # a late write to the rotated file
    with open(log, "ab") as f:
        f.write(b"b2\n")
    rotate(log, 2, b"c1\n")  # the file with b1 and b2 leaves the path unseen
    rotate(log, 3, b"d1\n")  # and so does the one with c1
    os.rename(tmp_path / "app.log.2", tmp_path / "app.log.2.old")  # followed through a later rename
    assert polled(tailer) == ["a2", "b1", "b2", "c1", "d1"]
    assert (stats.recovered, stats.rotations, stats.files) == (2, 3, 4)


def test_only_files_renamed_away_from_the_path_unseen_are_recovered(
    tmp_path: Path, chain_tailer: tuple[_Tailer, FileStats]
) -> None:
    """A file the tail held is never read twice, and a file that was never at the path (a compressed copy,
    a copytruncate copy) is not taken for one that was; nor is a file deleted before the tail saw it."""
    tailer, stats = chain_tailer
    log = tmp_path / "app.log"
    log.write_bytes(b"a1\n")
    assert polled(tailer) == ["a1"]
    rotate(log, 1, b"b1\n")
    assert polled(tailer) == ["b1"]
    (tmp_path / "app.log.1.gz").write_bytes(b"not lines\n")  # made from a rotated file
    shutil.copyfile(log, tmp_path / "app.log.copy")
    rotate(log, 2, b"c1\n")  # the file with b1, held: read once
    rotate(log, 3, b"d1\n")  # the file with c1 leaves unseen: recovered
    rotate(log, 4, b"e1\n")
    os.unlink(tmp_path / "app.log.4")  # the file with d1 left unseen and was deleted: gone
    assert polled(tailer) == ["c1", "e1"]
    assert (stats.recovered, stats.rotations) == (1, 3)


def test_a_late_write_within_the_grace_is_read_however_late_the_tail_looks(
    tmp_path: Path, chain_tailer: tuple[_Tailer, FileStats], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotated file's grace is measured up to the read that found its end: a line written after that read
    but less than rotate_grace after the file's previous change (the tail's thread descheduled between the
    read and its look at the clock) is read, not lost with the closed file."""
    tailer, _ = chain_tailer
    tailer.src.rotate_grace = 0.05
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(_tail_chain, "time", SimpleNamespace(monotonic=lambda: clock.now))
    log = tmp_path / "app.log"
    log.write_bytes(b"a1\n")
    assert polled(tailer) == ["a1"]
    with open(log, "ab", buffering=0) as writer:
        rotate(log, 1, b"b1\n")
        assert polled(tailer) == []  # the rotated file is quiet since now (0 s): within its grace
        read = os.pread
        armed = True

        def descheduled_after_the_read(fd: int, n: int, offset: int) -> bytes:
            nonlocal armed
            data = read(fd, n, offset)
            if armed and not data:  # the end of the rotated file: the writer writes, time passes
                armed = False
                writer.write(b"a2\n")
                clock.now = 0.06
            return data

        monkeypatch.setattr(os, "pread", descheduled_after_the_read)
        clock.now = 0.03
        assert polled(tailer) == []
        assert not armed
    clock.now = 1.0
    assert polled(tailer) == ["a2"]  # its grace runs again from this change
    clock.now = 2.0
    assert polled(tailer) == ["b1"]
