"""tail_file and acknowledge: settings, the scout thread and the source's loop.

What the mutation run of ``tail`` and of the scout in ``_tail_chain`` found unchecked.  The scout and the
read-ahead are driven on a hand-polled reading side; the loop runs as a source, its idle waits recorded.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from talkpipe_async.sources import FileStats, Line, acknowledge, tail_file
from talkpipe_async.sources._file_lines import DEFAULT_CHUNK, DEFAULT_MAX_LINE
from talkpipe_async.sources._tail_chain import _Tailer
from talkpipe_async.sources._tail_files import (
    Held,
)
from talkpipe_async.sources.tail import DEFAULT_READ_AHEAD
from tests.helpers.wait import wait_until, wait_until_sync
from tests.sources.test_mut_tail_chain import append, events, poll_all, rotate, saved, texts
from tests.sources.test_tail import follow, take

# -- settings --------------------------------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    """The documented defaults: from the end, polls from 10 ms doubling to 250 ms, a 1 s grace, UTF-8 with
    replacement, CRs stripped, no checkpoint (written every second when given), events on, Line items, inotify
    on, 1 MiB read ahead, the stage named "tail_file" with stats of its own."""
    src = tail_file(tmp_path / "app.log")
    assert (src.start, src.poll_min, src.poll_max, src.rotate_grace) == ("end", 0.01, 0.25, 1.0)
    assert (src.encoding, src.errors, src.strip_cr) == ("utf-8", "replace", True)
    assert (src.max_line_bytes, src.chunk_size) == (DEFAULT_MAX_LINE, DEFAULT_CHUNK)
    assert (src.checkpoint, src.checkpoint_interval) == (None, 1.0)
    assert (src.events, src.text, src.watch, src.read_ahead) == (True, False, True, DEFAULT_READ_AHEAD)
    assert DEFAULT_READ_AHEAD == 1024 * 1024
    assert src.name == "tail_file" and src.label == "tail_file"
    assert src.emits_metadata is True
    assert isinstance(src.stats, FileStats) and src.stats is not tail_file(tmp_path / "app.log").stats
    assert src.path == str(tmp_path / "app.log") and isinstance(src.path, str)
    assert src._directory == str(tmp_path)


def test_settings_are_kept(tmp_path: Path) -> None:
    """Every setting given is what the tail uses (paths as str, a given stats object shared)."""
    stats = FileStats()
    src = tail_file(
        tmp_path / "app.log",
        start="beginning",
        poll_min=0.5,
        poll_max=0.5,
        rotate_grace=3.0,
        encoding="latin-1",
        errors="strict",
        max_line_bytes=7,
        chunk_size=1,
        strip_cr=False,
        checkpoint=tmp_path / "ck",
        checkpoint_interval=9.0,
        events=False,
        text=True,
        watch=False,
        read_ahead=0,
        name="logs",
        stats=stats,
    )
    assert (src.start, src.poll_min, src.poll_max, src.rotate_grace) == ("beginning", 0.5, 0.5, 3.0)
    assert (src.encoding, src.errors, src.strip_cr) == ("iso8859-1", "strict", False)
    assert (src.max_line_bytes, src.chunk_size) == (7, 1)
    assert (src.checkpoint, src.checkpoint_interval) == (str(tmp_path / "ck"), 9.0)
    assert (src.events, src.text, src.watch, src.read_ahead) == (False, True, False, 0)
    assert src.emits_metadata is False
    assert src.name == "logs" and src.stats is stats


def test_validation(tmp_path: Path) -> None:
    """Each bad setting is refused with its own message; the smallest good ones are accepted."""
    log = tmp_path / "app.log"
    with pytest.raises(ValueError, match=r"^start must be 'end' or 'beginning', not 'middle'$"):
        tail_file(log, start="middle")  # type: ignore[call-overload]
    for low, high in ((0, 1), (-1, 1), (0.2, 0.1)):
        with pytest.raises(ValueError, match=r"^need 0 < poll_min <= poll_max$"):
            tail_file(log, poll_min=low, poll_max=high)
    with pytest.raises(ValueError, match=r"^chunk_size must be at least 1$"):
        tail_file(log, chunk_size=0)
    with pytest.raises(ValueError, match=r"^read_ahead must be 0 or more$"):
        tail_file(log, read_ahead=-1)
    with pytest.raises(ValueError, match=r"^max_line_bytes must be at least 1$"):
        tail_file(log, max_line_bytes=0)
    with pytest.raises(ValueError, match="unknown decoding error policy"):
        tail_file(log, errors="nope")
    with pytest.raises(LookupError):
        tail_file(log, encoding="no-such-codec")
    tail_file(log, start="end")
    tail_file(log, start="beginning", poll_min=0.001, poll_max=0.001, chunk_size=1, read_ahead=0, max_line_bytes=1)


def test_acknowledge_settings() -> None:
    """acknowledge's default name and field, and what it is given."""
    ack = acknowledge()
    assert (ack.name, ack.field, ack.durable) == ("acknowledge", None, False)
    ack = acknowledge("x.line", durable=True, name="done")
    assert (ack.name, ack.field, ack.durable) == ("done", "x.line", True)


# -- reading ahead and the scout thread ------------------------------------------------------------------------------


def held_now(tailer: _Tailer) -> Held:
    with tailer.chain_lock:
        tailer.discover()
    return tailer.chain[-1]


def test_reading_ahead_is_bounded_and_keeps_the_order(tmp_path: Path, make_tailer: Any) -> None:
    """The scout reads at most read_ahead bytes ahead of the consumer, from where the consumer's reading
    (and what was read ahead) ends; polls hand them out in chunk_size batches, then read on: every byte
    once, in order."""
    log = tmp_path / "app.log"
    log.write_bytes(b"0123456789\n")
    stats = FileStats()
    tailer = make_tailer(log, read_ahead=4, chunk_size=3, stats=stats)
    h = held_now(tailer)
    tailer._read_ahead(h)
    assert (h.ahead, h.ahead_len, h.pos) == ([b"0123"], 4, 0)
    tailer._read_ahead(h)
    assert (h.ahead, h.ahead_len) == ([b"0123"], 4)  # no room left
    assert tailer.poll() == ([], True)  # "012" taken: more is waiting
    assert (h.ahead, h.ahead_len, h.pos) == ([b"3"], 1, 3)
    tailer._read_ahead(h)
    assert (h.ahead, h.ahead_len) == ([b"3", b"456"], 4)
    assert texts(poll_all(tailer)) == ["0123456789"]
    assert stats.bytes == 11


def test_a_single_byte_read_ahead_is_handed_out_first(tmp_path: Path, make_tailer: Any) -> None:
    """However little the scout read ahead (one byte), the next poll hands it out before reading the file,
    and the room it took is free again for the next file."""
    log = tmp_path / "app.log"
    log.write_bytes(b"ab\n")
    tailer = make_tailer(log, read_ahead=1, rotate_grace=3600)
    h = held_now(tailer)
    tailer._read_ahead(h)
    assert (h.ahead, h.ahead_len) == ([b"a"], 1)
    assert tailer.poll() == ([], True)
    assert (h.ahead, h.ahead_len, h.pos) == ([], 0, 1)
    assert texts(poll_all(tailer)) == ["ab"]
    rotate(log, 1, b"cd\n")
    nxt = held_now(tailer)
    tailer._read_ahead(nxt)
    assert nxt.ahead == [b"c"]


def test_read_ahead_zero_reads_nothing_ahead(tmp_path: Path, make_tailer: Any) -> None:
    """read_ahead=0: the scout reads nothing; polls read the file."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer = make_tailer(log, read_ahead=0)
    h = held_now(tailer)
    tailer._read_ahead(h)
    assert (h.ahead, h.ahead_len, h.cut) == ([], 0, False)
    assert texts(poll_all(tailer)) == ["a"]


def test_bytes_read_ahead_survive_a_truncation(tmp_path: Path, make_tailer: Any) -> None:
    """A line the scout read before the file was truncated is still read (the copytruncate window); a
    truncation the scout sees ends the generation there: "truncated" at the offset after those bytes, then
    the new content from 0."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats)
    assert texts(poll_all(tailer)) == ["a"]
    h = tailer.chain[0]
    append(log, b"b\n")
    tailer._read_ahead(h)
    assert (h.ahead_len, h.cut) == (2, False)
    os.truncate(log, 0)
    append(log, b"c\n")
    tailer._read_ahead(h)  # sees the truncation: the generation is cut after "b"
    assert h.cut and len(tailer.chain) == 2 and tailer.chain[1].pos == 0
    assert tailer.chain_version == 2  # the new file, then its next generation
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["b", "truncated", "c"]
    assert events(items) == [("truncated", {"path": str(log), "offset": 4})]
    assert stats.truncations == 1


def test_bytes_read_ahead_from_a_regrown_file_are_not_taken(tmp_path: Path, make_tailer: Any) -> None:
    """Truncated and regrown past the read offset before the scout looked: its first bytes differ from the
    fingerprint (which grew with the file), so the bytes read are not this generation's: they are dropped
    and the new content is read from 0, whole."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a")
    tailer = make_tailer(log)
    h = held_now(tailer)
    append(log, b"bc\n")
    tailer._read_ahead(h)
    assert h.gen.fp == b"abc\n"  # the fingerprint grows with the file
    assert texts(poll_all(tailer)) == ["abc"]
    with open(log, "wb") as f:
        f.write(b"aZZZZZ\n")  # the same first byte, not the same first four
    tailer._read_ahead(h)
    assert h.cut and h.ahead_len == 0
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["truncated", "aZZZZZ"]


def test_the_scout_holds_new_files_and_reads_ahead_while_nobody_polls(tmp_path: Path, make_tailer: Any) -> None:
    """The scout thread ("<stage> scout", a daemon) holds each file that arrives at the path and reads ahead
    of the consumer, without a poll; stopping it joins it and closes its pipes."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer = make_tailer(log, name="logs", read_ahead=3, poll_min=0.001, poll_max=60)
    waker = tailer.start_scout(True)
    thread = tailer.scout_thread
    assert thread is not None and thread.name == "logs scout" and thread.daemon
    deadline = time.monotonic() + 10
    wait_until_sync(lambda: len(tailer.chain) == 1 and tailer.chain[0].ahead_len == 2, deadline, "the read-ahead")
    rotate(log, 1, b"bcdef\n")
    wait_until_sync(lambda: len(tailer.chain) == 2 and tailer.chain[1].ahead_len == 1, deadline, "the new file")
    assert tailer.chain[1].ahead == [b"b"]  # the bound holds across the files
    pipes = (*(tailer.stop_fds or ()), *(tailer.wake_fds or ()))
    assert len(pipes) == (4 if waker is not None else 0)
    tailer.stop_scout()
    assert not thread.is_alive() and tailer.scout_thread is None
    assert (tailer.stop_fds, tailer.wake_fds) == (None, None)
    for fd in pipes:
        with pytest.raises(OSError):
            os.fstat(fd)
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["a", "rotated", "bcdef"]


def test_without_inotify_the_scout_looks_every_poll_min(tmp_path: Path, make_tailer: Any) -> None:
    """watch=False: the scout still holds each new file, looking every poll_min (not poll_max)."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer = make_tailer(log, watch=False, poll_min=0.002, poll_max=60)
    assert tailer.start_scout(False) is None
    deadline = time.monotonic() + 10
    wait_until_sync(lambda: len(tailer.chain) == 1, deadline, "the first file")
    rotate(log, 1, b"b\n")
    wait_until_sync(lambda: len(tailer.chain) == 2, deadline, "the second file")
    rotate(log, 2, b"c\n")
    wait_until_sync(lambda: len(tailer.chain) == 3, deadline, "the third file")
    tailer.stop_scout()
    assert texts(poll_all(tailer)) == ["a", "b", "c"]


# -- the source's loop -----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lines_are_counted_and_events_pass_as_metadata(tmp_path: Path) -> None:
    """stats.lines counts the lines yielded, not the events; with text=True lines come as str and events
    still come as TailEvent metadata."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\nb\n")
    stats = FileStats()
    src = tail_file(log, start="beginning", text=True, rotate_grace=0, stats=stats, poll_min=0.002, poll_max=0.01)
    async with src.stream(metadata=True) as items:
        assert await take(items, 2) == ["a", "b"]
        rotate(log, 1, b"c\n")
        got = await take(items, 2)
        assert [x if isinstance(x, str) else x.kind for x in got] == ["rotated", "c"]
        assert stats.lines == 3


@pytest.fixture
def recorded_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The source's idle waits, recorded and not slept (the loop's clock is not the test's)."""
    import anyio
    import anyio.lowlevel
    import anyio.to_thread

    from talkpipe_async.sources import tail as tail_module

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await anyio.lowlevel.checkpoint()

    fake = type(
        "anyio",
        (),
        {
            "sleep": staticmethod(sleep),
            "lowlevel": anyio.lowlevel,
            "to_thread": anyio.to_thread,
            "CancelScope": anyio.CancelScope,
        },
    )
    monkeypatch.setattr(tail_module, "anyio", fake)
    return waits


@pytest.mark.anyio
async def test_idle_waits_double_from_poll_min_to_poll_max_and_restart_after_data(
    tmp_path: Path, recorded_waits: list[float]
) -> None:
    """Without inotify the source sleeps between idle polls: poll_min, doubling up to poll_max; after a poll
    that brought lines it starts again at poll_min."""
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    waits = recorded_waits
    async with follow(tail_file(log, watch=False, poll_min=1.0, poll_max=5.0)) as f:
        await wait_until(lambda: len(waits) >= 6, what="six idle waits")
        assert waits[:6] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
        append(log, b"x\n")
        assert await f.next(1) == ["x"]
        n = len(waits)
        await wait_until(lambda: len(waits) >= n + 3, what="three more waits")
    assert 1.0 in waits[6:]
    again = waits.index(1.0, 6)
    assert waits[again : again + 3] == [1.0, 2.0, 4.0]


@pytest.mark.anyio
async def test_an_idle_wait_ends_by_a_rotated_files_grace(tmp_path: Path, recorded_waits: list[float]) -> None:
    """While a rotated file's grace runs, the source waits no longer than what is left of it."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    waits = recorded_waits
    src = tail_file(log, start="beginning", watch=False, poll_min=30.0, poll_max=60.0, rotate_grace=0.2)
    async with src.stream() as items:
        assert [str(x) for x in await take(items, 1)] == ["a"]
        rotate(log, 1, b"b\n")
        assert [str(x) for x in await take(items, 1)] == ["b"]
    assert any(0 <= w <= 0.2 for w in waits) and max(waits) <= 60.0


@pytest.mark.anyio
async def test_with_inotify_the_grace_still_ends_a_wait(tmp_path: Path) -> None:
    """With the directory watched and minute-long polls, a rotated file is closed when its grace ends though
    nothing changes in the directory any more: the new file's lines come."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    src = tail_file(log, start="beginning", poll_min=60, poll_max=60, rotate_grace=0.1)
    async with src.stream() as items:
        assert [str(x) for x in await take(items, 1)] == ["a"]
        rotate(log, 1, b"b\n")
        assert [str(x) for x in await take(items, 1)] == ["b"]


@pytest.mark.anyio
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify wake-ups are Linux only")
async def test_wakeups_count_the_waits_a_change_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stats.wakeups is the number of idle waits that a change in the directory ended (with 60 s polls,
    every line here comes through one)."""
    from talkpipe_async.sources import _tail_chain
    from talkpipe_async.sources._watch import DirWatcher

    ended: list[bool] = []

    class Waker(DirWatcher):
        async def wait(self, seconds: float) -> bool:
            woke = await super().wait(seconds)
            ended.append(woke)
            return woke

    monkeypatch.setattr(_tail_chain, "DirWatcher", Waker)
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    stats = FileStats()
    async with follow(tail_file(log, poll_min=60, poll_max=60, stats=stats)) as f:
        for i in range(3):
            await wait_until(lambda: stats.polls >= 1, what="the first poll")
            append(log, f"{i}\n".encode())
            assert await f.next(1) == [str(i)]
        assert stats.wakeups == sum(ended) and stats.wakeups >= 1


@pytest.mark.anyio
async def test_the_last_checkpoint_is_written_when_the_run_is_cancelled(tmp_path: Path) -> None:
    """Leaving the stream cancels the source while it waits: its cleanup still runs (shielded), writing
    the last acknowledgement and stopping the scout thread."""
    import threading

    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(b"a\n")
    stats = FileStats()
    src = tail_file(
        log,
        start="beginning",
        checkpoint=ckpt,
        checkpoint_interval=3600,
        name="cancelled-tail",
        stats=stats,
        poll_min=0.002,
        poll_max=0.01,
    )
    async with follow(src) as f:
        await f.next(1)
        f.got[0].ack()
        await wait_until(lambda: stats.checkpoints == 1, what="the first checkpoint")
        append(log, b"b\n")
        await f.next(1)
        b = f.got[1]
        b.ack()  # not written by a poll: the interval is an hour
    assert saved(ckpt)["offset"] == b.offset == 4
    assert stats.checkpoints == 2
    assert not [t for t in threading.enumerate() if t.name == "cancelled-tail scout"]


@pytest.mark.anyio
async def test_acknowledge_names_itself_and_the_field_in_its_error() -> None:
    """An item without a tail Line where acknowledge looks is an error naming the stage, the place looked
    at and the type found."""
    with pytest.raises(TypeError) as err:
        await acknowledge().collect(["x"])
    assert err.value.args == ("acknowledge: expected a tail Line at the item, got str",)
    with pytest.raises(TypeError) as err:
        await acknowledge("rec.line", name="done").collect([{"rec": {"line": 5}}])
    assert err.value.args == ("done: expected a tail Line at rec.line, got int",)


def test_bytes_read_ahead_just_before_a_truncation_are_kept(
    tmp_path: Path, make_tailer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The truncation lands between the scout's read and its look at the size (staged in the read): the
    bytes it read were the file's, so they are kept and read, then the generation ends there."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer = make_tailer(log)
    assert texts(poll_all(tailer)) == ["a"]
    h = tailer.chain[0]
    append(log, b"b\n")
    real = os.pread

    def truncated_after(fd: int, n: int, offset: int) -> bytes:
        data = real(fd, n, offset)
        os.truncate(log, 0)
        return data

    monkeypatch.setattr(os, "pread", truncated_after)
    tailer._read_ahead(h)
    monkeypatch.undo()
    assert h.cut and h.ahead == [b"b\n"]
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["b", "truncated"]


def test_a_file_closed_by_a_poll_is_not_read_by_the_scout(tmp_path: Path, make_tailer: Any) -> None:
    """The scout may still hold, as its target, a file a poll has just drained and closed: reading ahead
    in it then does nothing (no read of a closed descriptor, no error in the scout)."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer = make_tailer(log)
    old = held_now(tailer)
    rotate(log, 1, b"b\n")
    assert texts(poll_all(tailer)) == ["a", "b"]
    assert old not in tailer.chain
    tailer._read_ahead(old)
    assert (old.ahead, old.ahead_len) == ([], 0)


@pytest.mark.anyio
async def test_acknowledge_passes_each_line_on_and_acknowledges_it(tmp_path: Path) -> None:
    """acknowledge yields every tail Line unchanged and acknowledges it: the checkpoint written when the
    run ends names the last one."""
    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\n")
    src = tail_file(log, start="beginning", checkpoint=ckpt, checkpoint_interval=3600, poll_min=0.002, poll_max=0.01)
    async with (src | acknowledge()).stream() as items:
        got = await take(items, 2)
    assert [(str(x), x.offset) for x in got] == [("a", 2), ("b", 4)]
    assert saved(ckpt)["offset"] == 4
