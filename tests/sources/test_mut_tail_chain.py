"""tail_file's chain of files, polled by hand: what the mutation run of ``_tail_chain`` found unchecked.

The tail's reading side (``_Tailer.poll``) runs in the test's thread, without the scout, on real files with
real renames and truncations, so that every line, event, counter, log message and checkpoint field can be
asserted exactly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from talkpipe_async.sources import FileStats, Line, TailEvent, tail_file
from talkpipe_async.sources._tail_chain import _Tailer
from talkpipe_async.sources._tail_files import (
    CHECKPOINT_VERSION,
    fp_hash,
)

LOGGER = "talkpipe_async.sources.tail"


def rotate(log: Path, k: int, content: bytes) -> None:
    """logrotate "create": rename the file away, create a new one at the path."""
    os.rename(log, log.with_name(f"{log.name}.{k}"))
    log.write_bytes(content)


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def poll_all(tailer: _Tailer) -> list[Any]:
    """Poll in this thread until nothing more comes: every item (lines and events) in order."""
    out: list[Any] = []
    for _ in range(200):
        items, more = tailer.poll()
        out += items
        if not items and not more:
            return out
    raise AssertionError(f"still reading after 200 polls: {out}")


def texts(items: list[Any]) -> list[str]:
    return [x.text for x in items if isinstance(x, Line)]


def events(items: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(x.kind, {k: v for k, v in vars(x).items() if k != "kind"}) for x in items if isinstance(x, TailEvent)]


def ident(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_start_at_end_skips_what_is_there_and_reads_what_comes(tmp_path: Path, make_tailer: Any) -> None:
    """start="end": the complete lines already in the file are not read, the line being written is read whole;
    one file held, no rotation announced; each line's offset is just after its newline, the bytes counted."""
    log = tmp_path / "app.log"
    log.write_bytes(b"old\nin-pro")
    stats = FileStats()
    tailer = make_tailer(log, start="end", stats=stats)
    assert poll_all(tailer) == []
    append(log, b"gress\nnew\n")
    items = poll_all(tailer)
    assert [(x.text, x.offset, x.path) for x in items] == [("in-progress", 16, str(log)), ("new", 20, str(log))]
    assert (stats.files, stats.rotations, stats.bytes, stats.truncations) == (1, 0, 16, 0)
    assert [str(x) for x in items] == ["in-progress", "new"]


def test_a_file_missing_is_reported_once_per_absence(
    tmp_path: Path, make_tailer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No file at the path: one "missing" event and one warning naming the stage and the path, however many
    polls; a file that then appears is read from its start (start="end" notwithstanding) and announced as a
    rotation; once it is gone and drained, "deleted", then "missing" again for the new absence."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = tmp_path / "app.log"
    stats = FileStats()
    tailer = make_tailer(log, start="end", stats=stats, name="logs")
    first = poll_all(tailer) + poll_all(tailer)
    assert events(first) == [("missing", {"path": str(log)})]
    assert stats.missing == 1
    assert messages(caplog) == [(logging.WARNING, f"logs: {log} does not exist (yet); waiting for it")]
    log.write_bytes(b"a\n")
    items = poll_all(tailer)
    assert events(items) == [("rotated", {"path": str(log)})] and texts(items) == ["a"]
    assert (stats.files, stats.rotations) == (1, 1)
    log.unlink()
    items, more = tailer.poll()
    assert (events(items), more) == ([("deleted", {"path": str(log)})], False)  # nothing more is waiting
    items, more = tailer.poll()
    assert (events(items), more) == ([("missing", {"path": str(log)})], False)
    assert stats.missing == 2


def test_an_unterminated_last_line_is_emitted_when_its_file_is_gone(tmp_path: Path, make_tailer: Any) -> None:
    """The partial last line of a file deleted from the path comes out (offset: the file's end, counted in
    stats.unterminated) before "deleted"; the lines before it keep their offsets."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\npartial")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats)
    assert texts(poll_all(tailer)) == ["a"]
    log.unlink()
    items = poll_all(tailer)
    assert [(x.text, x.offset) for x in items if isinstance(x, Line)] == [("partial", 9)]
    assert events(items)[0] == ("deleted", {"path": str(log)})
    assert (stats.unterminated, stats.partial_discarded, stats.lines) == (1, 0, 0)


def test_a_rotated_file_is_drained_then_the_next_is_announced(tmp_path: Path, make_tailer: Any) -> None:
    """A rename away: the old file's late lines and its unterminated last line come first, then one
    "rotated" event, then the new file from its start; files and rotations counted once each."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a1\n")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats)
    assert texts(poll_all(tailer)) == ["a1"]
    rotate(log, 1, b"b1\n")
    append(tmp_path / "app.log.1", b"a2\na3")
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["a2", "a3", "rotated", "b1"]
    assert [x.offset for x in items if isinstance(x, Line)] == [6, 8, 3]
    assert [x.path for x in items if isinstance(x, Line)] == [str(log)] * 3  # the path each file was read at
    assert (stats.files, stats.rotations, stats.unterminated) == (2, 1, 1)


class Clock:
    """The tail's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from talkpipe_async.sources import _tail_chain

    c = Clock()
    monkeypatch.setattr(_tail_chain, "time", c)
    return c


def saved(ckpt: Path) -> dict[str, Any]:
    return json.loads(ckpt.read_text())  # type: ignore[no-any-return]


def record(path: Path, fp: bytes) -> dict[str, Any]:
    dev, ino = ident(path)
    return {"dev": dev, "ino": ino, "fp_len": len(fp), "fp": fp_hash(fp)}


def test_the_checkpoint_names_the_acknowledged_line_and_the_files_after_it(
    tmp_path: Path, make_tailer: Any, clock: Clock
) -> None:
    """The checkpoint holds the format version, the path, the acknowledged file's identity and the offset
    after the acknowledged line, and each file held after it with the offset it is read from; it is written
    only when something changed (a newer acknowledgement, or the chain), each write counted."""
    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\n")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats, checkpoint=ckpt, checkpoint_interval=3600, rotate_grace=3600)
    tailer.write_checkpoint()
    assert not ckpt.exists() and stats.checkpoints == 0  # nothing acknowledged yet
    a, b = poll_all(tailer)
    a.ack()
    tailer.write_checkpoint()
    assert saved(ckpt) == {
        "version": CHECKPOINT_VERSION,
        "path": str(log),
        **record(log, b"a\nb\n"),
        "offset": 2,
        "next": [],
    }
    assert CHECKPOINT_VERSION == 2 and stats.checkpoints == 1
    tailer.write_checkpoint()
    assert stats.checkpoints == 1  # nothing new
    first = record(log, b"a\nb\n")
    rotate(log, 1, b"c\n")
    assert poll_all(tailer) == []  # the new file is held; the old one is within its grace
    assert stats.checkpoints == 1
    # The chain changed: the next poll writes it out though no new line was acknowledged.
    tailer.poll()
    assert stats.checkpoints == 2
    assert saved(ckpt) == {
        "version": 2,
        "path": str(log),
        **first,
        "offset": 2,
        "next": [{**record(log, b"c\n"), "start": 0}],
    }
    b.ack()
    a.ack()  # older: changes nothing
    tailer.write_checkpoint()
    assert saved(ckpt)["offset"] == 4 and stats.checkpoints == 3


def test_an_older_acknowledgement_is_not_written_even_when_the_chain_changes(
    tmp_path: Path, make_tailer: Any, clock: Clock
) -> None:
    """An acknowledgement older than the last one is forgotten at once: a checkpoint written later for
    another reason (a change of the chain) still names the newest line."""
    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\nc\n")
    tailer = make_tailer(log, checkpoint=ckpt, rotate_grace=3600)
    _, b, c = poll_all(tailer)
    c.ack()
    tailer.write_checkpoint()
    b.ack()
    rotate(log, 1, b"d\n")
    poll_all(tailer)
    tailer.write_checkpoint()
    assert saved(ckpt)["offset"] == 6 and len(saved(ckpt)["next"]) == 1


def test_polls_write_the_checkpoint_every_interval(tmp_path: Path, make_tailer: Any, clock: Clock) -> None:
    """While the tail polls, a new acknowledgement is written once checkpoint_interval has passed since the
    last write (exactly then, not before); without a checkpoint nothing is written."""
    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\nc\n")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats, checkpoint=ckpt, checkpoint_interval=10)
    a, b, c = poll_all(tailer)
    tailer.poll()
    assert stats.checkpoints == 0  # nothing acknowledged
    a.ack()
    tailer.poll()  # the chain changed since the last (no) write: written at once
    assert (stats.checkpoints, saved(ckpt)["offset"]) == (1, 2)
    b.ack()
    clock.now += 9.5
    tailer.poll()
    assert stats.checkpoints == 1
    clock.now += 0.5
    tailer.poll()
    assert (stats.checkpoints, saved(ckpt)["offset"]) == (2, 4)
    clock.now += 100
    tailer.poll()
    assert stats.checkpoints == 2  # nothing newer acknowledged
    c.ack()
    tailer.close()
    assert (stats.checkpoints, saved(ckpt)["offset"]) == (3, 6)  # the last one, when the run ends
    plain = make_tailer(tmp_path / "app.log")
    [x] = [y for y in poll_all(plain) if y.text == "a"]
    x.ack()
    plain.write_checkpoint()
    assert sorted(os.listdir(tmp_path)) == ["app.ckpt", "app.log"]


def write_checkpoint_for(tmp_path: Path, content: bytes, ack_index: int, **options: Any) -> tuple[Path, Path]:
    """Run a hand-driven tail over app.log holding *content*, acknowledge line *ack_index*, close it."""
    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(content)
    tailer = _Tailer(tail_file(log, start="beginning", checkpoint=ckpt, rotate_grace=0, **options))
    try:
        poll_all(tailer)[ack_index].ack()
    finally:
        tailer.close()
    return log, ckpt


def test_a_restart_resumes_after_the_acknowledged_line(
    tmp_path: Path, make_tailer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A valid checkpoint wins over start="end": the file is read on from the acknowledged offset (one file
    held, no rotation announced, nothing logged)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    log, ckpt = write_checkpoint_for(tmp_path, b"a\nb\n", 0)
    append(log, b"c\n")
    stats = FileStats()
    tailer = make_tailer(log, start="end", checkpoint=ckpt, stats=stats)
    tailer.load_checkpoint()
    items = poll_all(tailer)
    assert [(x.text, x.offset) for x in items] == [("b", 4), ("c", 6)]
    assert (stats.files, stats.rotations) == (1, 0)
    assert messages(caplog) == []


def test_a_restart_in_a_rotated_file_says_where_it_resumes(
    tmp_path: Path, make_tailer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpointed file, rotated away while the tail was down, is found by inode and read on from the
    offset (logged at INFO with its name and the offset); then the file at the path, from its start, is
    announced as a rotation."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    log, ckpt = write_checkpoint_for(tmp_path, b"a\nb\n", 0, name="logs")
    rotate(log, 1, b"c\n")
    stats = FileStats()
    tailer = make_tailer(log, start="end", checkpoint=ckpt, stats=stats, name="logs")
    tailer.load_checkpoint()
    assert messages(caplog) == [(logging.INFO, f"logs: resuming in rotated file {tmp_path / 'app.log.1'} at offset 2")]
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["b", "rotated", "c"]
    assert [x.path for x in items if isinstance(x, Line)] == [str(tmp_path / "app.log.1"), str(log)]
    assert (stats.files, stats.rotations) == (2, 1)


def test_a_restart_reads_the_files_named_after_the_acknowledged_one_in_order(
    tmp_path: Path, make_tailer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The files held after the acknowledged one are reopened from the offsets they were read from, each
    announced; a file the checkpoint names that is gone is skipped with a warning, not a failure."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\n")
    tailer = _Tailer(tail_file(log, start="beginning", checkpoint=ckpt, rotate_grace=3600, name="logs"))
    try:
        a, _ = poll_all(tailer)
        a.ack()
        rotate(log, 1, b"c\n")
        poll_all(tailer)
        rotate(log, 2, b"d\n")
        poll_all(tailer)
        rotate(log, 3, b"e\n")
        poll_all(tailer)
    finally:
        tailer.close()
    assert [e["start"] for e in saved(ckpt)["next"]] == [0, 0, 0]
    os.unlink(tmp_path / "app.log.2")  # the file with c
    stats = FileStats()
    tailer = make_tailer(log, checkpoint=ckpt, stats=stats, name="logs")
    tailer.load_checkpoint()
    assert messages(caplog) == [
        (logging.INFO, f"logs: resuming in rotated file {tmp_path / 'app.log.1'} at offset 2"),
        (logging.WARNING, "logs: a file rotated after it is gone or changed; its unread lines cannot be read"),
        (logging.INFO, f"logs: resuming in rotated file {tmp_path / 'app.log.3'} at offset 0"),
    ]
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["b", "rotated", "d", "rotated", "e"]
    assert (stats.files, stats.rotations) == (3, 2)


def test_a_restart_whose_files_are_gone_reads_the_path_from_its_start(
    tmp_path: Path, make_tailer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """When the checkpointed file was replaced (other inode or other first bytes), both warnings name the
    stage, and the file at the path is read from its start (no line lost) though start="end"."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    log, ckpt = write_checkpoint_for(tmp_path, b"a\nb\n", 0, name="logs")
    log.unlink()
    log.write_bytes(b"x\ny\n")
    tailer = make_tailer(log, start="end", checkpoint=ckpt, name="logs")
    tailer.load_checkpoint()
    assert messages(caplog) == [
        (logging.WARNING, "logs: the checkpointed file is gone or changed; its unread lines cannot be read"),
        (logging.WARNING, f"logs: nothing the checkpoint names is left; reading {log} from the beginning"),
    ]
    assert texts(poll_all(tailer)) == ["x", "y"]


def test_a_checkpoint_whose_file_was_shortened_is_not_resumed(tmp_path: Path, make_tailer: Any) -> None:
    """The same inode with the same first bytes but shorter than the offset (truncated while the tail was
    down) is not resumed at an offset past its end: it is read again from its start."""
    log, ckpt = write_checkpoint_for(tmp_path, b"a\nbbbbbb\n", 1)
    os.truncate(log, 2)
    tailer = make_tailer(log, start="end", checkpoint=ckpt)
    tailer.load_checkpoint()
    assert texts(poll_all(tailer)) == ["a"]


def test_an_unreadable_checkpoint_reads_the_file_whole(
    tmp_path: Path, make_tailer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint that cannot be used is named in a warning with the reason, and the file is read from its
    start (rather than lose lines) though start="end"; no checkpoint at all keeps start="end"."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(b"a\n")
    ckpt.write_text('{"offset": 1}')
    tailer = make_tailer(log, start="end", checkpoint=ckpt, name="logs")
    tailer.load_checkpoint()
    assert messages(caplog) == [
        (
            logging.WARNING,
            f"logs: unreadable checkpoint {ckpt} (malformed checkpoint: KeyError('dev')): reading from the beginning",
        )
    ]
    assert texts(poll_all(tailer)) == ["a"]
    ckpt.unlink()
    tailer = make_tailer(log, start="end", checkpoint=ckpt)
    tailer.load_checkpoint()
    assert poll_all(tailer) == []
    tailer = make_tailer(log, start="end")
    tailer.load_checkpoint()  # no checkpoint configured: nothing to load
    assert poll_all(tailer) == []


def test_copytruncate_reads_the_unread_rest_from_the_copy_exactly_once(
    tmp_path: Path, make_tailer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Truncated under the tail after a copy was made: one "truncated" event with the offset reached, the
    copy's name and how many bytes it adds; the unread line comes from the copy (its name and offset), then
    the truncated file's new lines from 0; nothing twice, one truncation counted and logged."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = tmp_path / "app.log"
    log.write_bytes(b"a\nb\n")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats, name="logs")
    assert texts(poll_all(tailer)) == ["a", "b"]
    append(log, b"c\n")
    (tmp_path / "app.log.1").write_bytes(log.read_bytes())  # the copy
    os.truncate(log, 0)
    append(log, b"d\n")
    items = poll_all(tailer)
    assert [(x.text, x.path, x.offset) if isinstance(x, Line) else x.kind for x in items] == [
        "truncated",
        ("c", str(tmp_path / "app.log.1"), 6),
        ("d", str(log), 2),
    ]
    assert events(items) == [
        (
            "truncated",
            {"path": str(log), "offset": 4, "recovered_from": str(tmp_path / "app.log.1"), "recovered_bytes": 2},
        )
    ]
    assert (stats.truncations, stats.partial_discarded, stats.rotations, stats.unterminated) == (1, 0, 0, 0)
    assert messages(caplog) == [(logging.INFO, f"logs: {log} was truncated at offset 4; reading from 0")]


def test_a_truncation_without_a_copy_discards_the_partial_line(tmp_path: Path, make_tailer: Any) -> None:
    """No copy: the event has only the offset; the partial line held is discarded and counted, not emitted;
    reading restarts at 0."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\npart")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats)
    assert texts(poll_all(tailer)) == ["a"]
    os.truncate(log, 0)
    append(log, b"b\n")
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["truncated", "b"]
    assert events(items) == [("truncated", {"path": str(log), "offset": 6})]
    assert (stats.truncations, stats.partial_discarded, stats.unterminated) == (1, 1, 0)
    assert items[1].offset == 2


def test_a_partial_line_cut_short_in_the_copy_is_discarded(tmp_path: Path, make_tailer: Any) -> None:
    """The copy ends in a partial line (the rest of it went into the truncated file): it is counted as
    discarded, not emitted as a line of its own; the copy's complete lines are read."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats)
    assert texts(poll_all(tailer)) == ["a"]
    append(log, b"b\npar")
    (tmp_path / "app.log.1").write_bytes(log.read_bytes())
    os.truncate(log, 0)
    append(log, b"c\n")
    items = poll_all(tailer)
    assert texts(items) == ["b", "c"]
    assert (stats.truncations, stats.partial_discarded, stats.unterminated) == (1, 1, 0)


def test_a_file_truncated_and_regrown_is_caught_by_its_first_bytes(tmp_path: Path, make_tailer: Any) -> None:
    """Truncated and rewritten longer than the offset between two polls: its first bytes differ, so it is a
    truncation (offset reached, no copy) and the new content is read from 0; a file that only grew, or whose
    first line was completed, is not."""
    log = tmp_path / "app.log"
    log.write_bytes(b"ab")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats)
    assert poll_all(tailer) == []
    append(log, b"c\nd\n")  # the fingerprint grows with the file: no truncation
    assert texts(poll_all(tailer)) == ["abc", "d"]
    with open(log, "r+b") as f:
        f.write(b"XY")  # same size, first bytes changed
    append(log, b"e\n")
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["truncated", "XYc", "d", "e"]
    assert events(items) == [("truncated", {"path": str(log), "offset": 6})]
    assert stats.truncations == 1


def test_lines_carry_their_end_offsets_and_long_lines_are_counted(
    tmp_path: Path, make_tailer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Each line's offset is just after its newline, across dropped over-long lines; every drop is counted,
    the warning (stage, cap, path) comes once; the partial-line high water is the largest held."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = tmp_path / "app.log"
    log.write_bytes(b"ok\n" + b"x" * 10 + b"\nnext\n" + b"y" * 9 + b"\nz\nabcd")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats, max_line_bytes=5, name="logs")
    items = poll_all(tailer)
    assert [(x.text, x.offset) for x in items] == [("ok", 3), ("next", 19), ("z", 31)]
    assert stats.dropped_long == 2
    assert messages(caplog) == [
        (logging.WARNING, f"logs: dropped a line longer than 5 bytes in {log} (counted in stats.dropped_long)")
    ]
    assert stats.buffer_high_water == 4  # "abcd", held for its newline
    append(log, b"\nab")
    poll_all(tailer)
    append(log, b"x" * 10 + b"\n")  # another drop, in a later read: counted, not warned about again
    poll_all(tailer)
    assert stats.dropped_long == 3 and len(messages(caplog)) == 1
    assert stats.bytes == len(log.read_bytes())
    again = make_tailer(log, stats=stats, max_line_bytes=5)  # stats shared by a later run holding less
    poll_all(again)
    assert stats.buffer_high_water == 4


def test_a_strict_decoding_error_names_the_line_start(tmp_path: Path, make_tailer: Any) -> None:
    """errors="strict": the error names the stage, the file and the offset where the bad line starts."""
    from talkpipe_async.sources import RecordError

    log = tmp_path / "app.log"
    log.write_bytes(b"ok\nbad \xff\n")
    tailer = make_tailer(log, errors="strict", name="logs")
    with pytest.raises(RecordError, match=rf"^logs: invalid utf-8 \(.*\) at {log} offset 3$"):
        poll_all(tailer)


def test_a_strict_decoding_error_in_an_unterminated_last_line(tmp_path: Path, make_tailer: Any) -> None:
    """The unterminated last line of a file gone from the path is decoded like any line: its start offset."""
    from talkpipe_async.sources import RecordError

    log = tmp_path / "app.log"
    log.write_bytes(b"ok\nbad \xff")
    tailer = make_tailer(log, errors="strict", name="logs")
    assert texts(poll_all(tailer)) == ["ok"]
    log.unlink()
    with pytest.raises(RecordError, match=rf"^logs: invalid utf-8 \(.*\) at {log} offset 3$"):
        poll_all(tailer)


def test_polls_say_when_more_is_waiting(tmp_path: Path, make_tailer: Any) -> None:
    """A poll reads at most chunk_size bytes and says more is waiting when it read that many."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\nb\nc\n")
    stats = FileStats()
    tailer = make_tailer(log, chunk_size=4, stats=stats)
    items, more = tailer.poll()
    assert (texts(items), more) == (["a", "b"], True)
    items, more = tailer.poll()
    assert (texts(items), more) == (["c"], False)
    assert tailer.poll() == ([], False)
    assert stats.polls == 3


def test_a_rotated_file_is_held_until_quiet_for_the_grace(tmp_path: Path, make_tailer: Any, clock: Clock) -> None:
    """A file that left the path is closed only after rotate_grace with no change on it; each change starts
    the grace again; due() says how long until then (None while the file is at the path or none is held)."""
    log = tmp_path / "app.log"
    tailer = make_tailer(log, rotate_grace=10)
    assert tailer.due() is None
    log.write_bytes(b"a\n")
    assert texts(poll_all(tailer)) == ["a"]
    assert tailer.due() is None
    rotate(log, 1, b"b\n")
    tailer.discover()
    assert tailer.due() == 0.0  # left the path, not looked at yet
    assert poll_all(tailer) == []
    assert tailer.due() == 10.0
    clock.now += 4
    assert tailer.due() == 6.0
    append(tmp_path / "app.log.1", b"a2\n")
    clock.now += 5
    assert texts(poll_all(tailer)) == ["a2"]  # the change seen at 9 s: the grace runs from now
    assert tailer.due() == 10.0
    clock.now += 9.5
    assert poll_all(tailer) == []
    assert tailer.due() == 0.5
    clock.now += 0.5
    assert [x.text if isinstance(x, Line) else x.kind for x in poll_all(tailer)] == ["rotated", "b"]
    clock.now += 100
    assert tailer.due() is None
    rotate(log, 2, b"")
    poll_all(tailer)
    clock.now += 20
    assert tailer.due() == 0.0  # overdue: never negative


def test_close_closes_every_held_descriptor(tmp_path: Path) -> None:
    """close() closes every file of the chain and the rename watch."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer = _Tailer(tail_file(log, start="beginning", rotate_grace=3600))
    tailer.watch_renames()
    poll_all(tailer)
    rotate(log, 1, b"b\n")
    poll_all(tailer)
    fds = [h.fd for h in tailer.chain]
    assert len(fds) == 2
    tailer.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert tailer.chain == [] and tailer.renames is None


def test_the_checkpoint_of_a_finished_file_names_every_file_after_it(tmp_path: Path, make_tailer: Any) -> None:
    """An acknowledged line in a file the tail already finished (drained and closed): the checkpoint still
    names that file, then each later file in order, each once; acknowledging in a later file drops the
    earlier ones from it."""
    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(b"a\n")
    tailer = make_tailer(log, checkpoint=ckpt)
    [a] = poll_all(tailer)
    first = record(log, b"a\n")
    rotate(log, 1, b"b\n")
    items = poll_all(tailer)
    second = record(log, b"b\n")
    rotate(log, 2, b"c\n")
    items += poll_all(tailer)
    third = record(log, b"c\n")
    b = next(x for x in items if isinstance(x, Line) and x.text == "b")
    a.ack()  # late: its file is closed
    tailer.write_checkpoint()
    assert saved(ckpt) == {
        "version": 2,
        "path": str(log),
        **first,
        "offset": 2,
        "next": [{**second, "start": 0}, {**third, "start": 0}],
    }
    b.ack()
    tailer.write_checkpoint()
    assert saved(ckpt) == {"version": 2, "path": str(log), **second, "offset": 2, "next": [{**third, "start": 0}]}
    assert tailer.done == [tailer.done[0]] and tailer.done[0].ino == second["ino"]  # what came before is forgotten


def test_a_directory_at_the_path_is_an_error_naming_it(tmp_path: Path, make_tailer: Any) -> None:
    """A directory where the file should be is not waited for: the poll fails saying so."""
    log = tmp_path / "app.log"
    log.mkdir()
    tailer = make_tailer(log)
    with pytest.raises(IsADirectoryError, match=rf"^{log} is a directory$"):
        tailer.poll()
    assert tailer.chain == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renames away unseen are found through inotify")
def test_a_file_recovered_by_its_new_name_is_counted_and_named(
    tmp_path: Path, make_tailer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A file that came and went at the path between two looks is read by its new name, announced as a
    rotation, counted in stats.recovered and stats.files, with a warning naming the stage, the path and the
    name it is read from; a file renamed away before the first look is not."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    log = tmp_path / "app.log"
    log.write_bytes(b"old\n")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats, name="logs")
    tailer.watch_renames()
    rotate(log, 0, b"a1\n")  # before the tail's first look: belongs to no run
    assert texts(poll_all(tailer)) == ["a1"]
    version = tailer.chain_version
    rotate(log, 1, b"b1\n")
    rotate(log, 2, b"c1\n")  # the file with b1 was never seen at the path
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["rotated", "b1", "rotated", "c1"]
    assert (stats.recovered, stats.files, stats.rotations) == (1, 3, 2)
    assert tailer.chain_version >= version + 2
    assert messages(caplog) == [
        (
            logging.WARNING,
            f"logs: {log} left the path before it could be opened there; reading it from {tmp_path / 'app.log.2'}",
        )
    ]


def test_after_a_restart_polls_write_an_acknowledgement_only_when_due(
    tmp_path: Path, make_tailer: Any, clock: Clock
) -> None:
    """Resumed in the same file (the chain as the checkpoint left it): a new acknowledgement is written by a
    poll only once checkpoint_interval has passed on the monotonic clock (from its start, nothing having been
    written in this run), and always when the run ends."""
    log, ckpt = write_checkpoint_for(tmp_path, b"a\nb\n", 0)
    append(log, b"c\n")
    stats = FileStats()
    tailer = make_tailer(log, checkpoint=ckpt, checkpoint_interval=3600, stats=stats)
    tailer.load_checkpoint()
    b, c = poll_all(tailer)
    b.ack()
    tailer.poll()
    assert stats.checkpoints == 0 and saved(ckpt)["offset"] == 2
    clock.now = 3600.0
    tailer.poll()
    assert (stats.checkpoints, saved(ckpt)["offset"]) == (1, 4)
    c.ack()
    tailer.close()
    assert (stats.checkpoints, saved(ckpt)["offset"]) == (2, 6)


def test_carriage_returns_are_stripped_unless_asked_not_to(tmp_path: Path, make_tailer: Any) -> None:
    """By default a CRLF line ends without its CR; strip_cr=False keeps it."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\r\nb\n")
    assert texts(poll_all(make_tailer(log))) == ["a", "b"]
    assert texts(poll_all(make_tailer(log, strip_cr=False))) == ["a\r", "b"]


def test_a_copy_must_hold_the_64_bytes_before_the_offset(tmp_path: Path, make_tailer: Any) -> None:
    """A file named like a copy, with the same first 256 bytes, but other bytes among the 64 just before the
    offset reached is not the copy (whatever the sizes of the reads that reached it): the truncation reads
    nothing from it."""
    log = tmp_path / "app.log"
    content = b"".join(b"line-%04d\n" % i for i in range(30))  # 300 bytes
    log.write_bytes(content)
    stats = FileStats()
    tailer = make_tailer(log, chunk_size=100, stats=stats)
    assert len(texts(poll_all(tailer))) == 30  # three reads of 100 bytes
    append(log, b"z\n")
    assert texts(poll_all(tailer)) == ["z"]  # one of 2 bytes: the offset is 302
    other = bytearray(content + b"z\n")
    other[260] = ord("X")  # past the fingerprint, 42 bytes before the offset
    (tmp_path / "app.log.1").write_bytes(bytes(other) + b"more\n")
    os.truncate(log, 0)
    append(log, b"new\n")
    items = poll_all(tailer)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["truncated", "new"]
    assert events(items) == [("truncated", {"path": str(log), "offset": 302})]
    assert stats.truncations == 1


def test_a_file_already_held_is_never_held_twice(
    tmp_path: Path, make_tailer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path changes between the tail's look (stat) and its open: the stat saw a new file, the open finds
    one already held (staged by answering the stat with another file).  That file is not held a second
    time, so none of its lines is read twice."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats)
    assert texts(poll_all(tailer)) == ["a"]
    other = tmp_path / "other"
    other.write_bytes(b"x\n")
    real = os.stat

    def stale(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        return real(other if os.fspath(path) == str(log) else path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stale)
    assert poll_all(tailer) == []
    monkeypatch.undo()
    assert (stats.files, len(tailer.chain), tailer.at_path) == (1, 1, ident(log))
    append(log, b"b\n")
    assert texts(poll_all(tailer)) == ["b"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the rename log is inotify's")
def test_an_overflowed_rename_log_is_warned_about_once(
    tmp_path: Path, make_tailer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """More renames in the directory than the kernel queues between two looks: the tail cannot know every
    file that left the path, and says so once, naming the stage."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        limit = int(f.read())
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer = make_tailer(log, name="logs")
    tailer.watch_renames()
    assert texts(poll_all(tailer)) == ["a"]
    x, y = tmp_path / "x", tmp_path / "y"
    x.write_bytes(b"")
    for _ in range(limit // 4 + 1):  # two events a rename
        os.rename(x, y)
        os.rename(y, x)
    poll_all(tailer)
    poll_all(tailer)
    assert messages(caplog) == [
        (
            logging.WARNING,
            "logs: the inotify queue overflowed: a file at the path for less time than it took to open it "
            "may not be read",
        )
    ]


def test_empty_lines_are_lines_with_their_own_offsets(tmp_path: Path, make_tailer: Any) -> None:
    """Consecutive newlines are empty lines, each with the offset just after its newline."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n\n\nb\n")
    assert [(x.text, x.offset) for x in poll_all(make_tailer(log))] == [("a", 2), ("", 3), ("", 4), ("b", 6)]


def test_a_deleted_file_is_forgotten_once_closed_a_renamed_one_is_not(tmp_path: Path, make_tailer: Any) -> None:
    """Closing a drained file that was deleted forgets its (device, inode): the file system may give that
    inode to a new file, which must then be read as new.  A file only renamed away stays known, so a later
    rename of it is never taken for a file the tail missed."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer = make_tailer(log)
    assert texts(poll_all(tailer)) == ["a"]
    first = ident(log)
    rotate(log, 1, b"b\n")
    second = ident(log)
    assert texts(poll_all(tailer)) == ["b"]
    assert first in tailer.seen  # renamed away, drained, closed: still known
    log.unlink()
    assert events(poll_all(tailer))[0] == ("deleted", {"path": str(log)})
    assert second not in tailer.seen and first in tailer.seen


def test_a_restart_skips_a_later_generation_of_a_file_it_reads_on(tmp_path: Path, make_tailer: Any) -> None:
    """The checkpoint names a file twice (the acknowledged generation and, after a truncation, the next one
    of the same file): the restart reads that file on from the acknowledged offset once, then every file
    named after it, in order."""
    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(b"a\nb\n")
    tailer = make_tailer(log, checkpoint=ckpt, rotate_grace=3600)
    a, _ = poll_all(tailer)
    a.ack()
    os.truncate(log, 0)
    append(log, b"a\n")
    assert [x.text if isinstance(x, Line) else x.kind for x in poll_all(tailer)] == ["truncated", "a"]
    rotate(log, 1, b"y\n")
    poll_all(tailer)
    rotate(log, 2, b"z\n")
    poll_all(tailer)
    tailer.close()
    assert [e["ino"] for e in saved(ckpt)["next"]] == [
        ident(tmp_path / "app.log.1")[1],
        ident(tmp_path / "app.log.2")[1],
        ident(log)[1],
    ]
    append(tmp_path / "app.log.1", b"b\n")  # its first bytes are those of the acknowledged generation again
    again = make_tailer(log, checkpoint=ckpt)
    again.load_checkpoint()
    items = poll_all(again)
    assert [x.text if isinstance(x, Line) else x.kind for x in items] == ["b", "rotated", "y", "rotated", "z"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renames away are followed through inotify")
def test_a_file_resumed_from_the_checkpoint_is_not_read_again_when_rotated(tmp_path: Path, make_tailer: Any) -> None:
    """The file a restart resumes in is known to the run: when it is rotated away it is drained, not taken
    for a file that left the path unseen and read again from its start."""
    log, ckpt = write_checkpoint_for(tmp_path, b"a\nb\n", 0)
    tailer = make_tailer(log, checkpoint=ckpt)
    tailer.watch_renames()
    tailer.load_checkpoint()
    assert texts(poll_all(tailer)) == ["b"]
    rotate(log, 1, b"c\n")
    assert texts(poll_all(tailer)) == ["c"]


def test_counters_add_up_over_several_rotations_and_truncations_in_one_run(tmp_path: Path, make_tailer: Any) -> None:
    """Every counter adds each occurrence to what the run counted before, never restarts at one: two
    truncations without a copy (two partial lines discarded), two with a copy ending in a partial line (two
    more discarded), and two rotated files with an unterminated last line each."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats)
    assert texts(poll_all(tailer)) == ["a"]
    seen: list[str] = []
    for k in (1, 2):  # truncated with no copy, a partial line held
        append(log, f"held{k}".encode())
        seen += texts(poll_all(tailer))
        os.truncate(log, 0)
        append(log, f"t{k}\n".encode())
        seen += texts(poll_all(tailer))
    assert (stats.truncations, stats.partial_discarded) == (2, 2)
    for k in (1, 2):  # copytruncate, the copy ends inside a line
        append(log, f"c{k}\npar".encode())
        (tmp_path / f"app.log.c{k}").write_bytes(log.read_bytes())
        os.truncate(log, 0)
        append(log, f"u{k}\n".encode())
        seen += texts(poll_all(tailer))
    assert (stats.truncations, stats.partial_discarded) == (4, 4)
    for k in (1, 2):  # rotated away with an unterminated last line
        append(log, f"last{k}".encode())
        rotate(log, k, f"r{k}\n".encode())
        seen += texts(poll_all(tailer))
    assert seen == ["t1", "t2", "c1", "u1", "c2", "u2", "last1", "r1", "last2", "r2"]
    assert (stats.unterminated, stats.rotations, stats.truncations, stats.partial_discarded) == (2, 2, 4, 4)


def test_an_acknowledged_unterminated_last_line_is_checkpointed_in_order(tmp_path: Path, make_tailer: Any) -> None:
    """The unterminated last line of a rotated file is a line like the others for acknowledgement: acked after
    the line before it, the checkpoint names its file and the file's end, with the next file after it; acked
    after a line of the next file, it changes nothing (it is older)."""
    log, ckpt = tmp_path / "app.log", tmp_path / "app.ckpt"
    log.write_bytes(b"a\n")
    tailer = make_tailer(log, checkpoint=ckpt, checkpoint_interval=3600)
    (a,) = poll_all(tailer)
    append(log, b"partial")
    first = record(log, b"a\npartial")
    rotate(log, 1, b"b\n")
    items = poll_all(tailer) + poll_all(tailer)  # the first poll finds the new file; the next drains the old one
    partial, b = (x for x in items if isinstance(x, Line))
    assert (partial.text, partial.offset, b.text) == ("partial", 9, "b")
    a.ack()
    partial.ack()
    tailer.write_checkpoint()
    after = [{**record(log, b"b\n"), "start": 0}]
    assert saved(ckpt) == {"version": 2, "path": str(log), **first, "offset": 9, "next": after}
    b.ack()
    partial.ack()  # older than b: forgotten
    tailer.write_checkpoint()
    assert saved(ckpt) == {"version": 2, "path": str(log), **record(log, b"b\n"), "offset": 2, "next": []}


def test_copytruncate_after_a_single_byte_read_recovers_the_line_from_the_copy(
    tmp_path: Path, make_tailer: Any
) -> None:
    """The smallest offset a copy is looked for at: one byte read (a partial line), then copied and
    truncated; the line is completed from the copy, not discarded."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats)
    assert poll_all(tailer) == []
    append(log, b"b\n")
    (tmp_path / "app.log.1").write_bytes(log.read_bytes())
    os.truncate(log, 0)
    append(log, b"c\n")
    items = poll_all(tailer)
    assert [(x.text, x.path) if isinstance(x, Line) else x.kind for x in items] == [
        "truncated",
        ("ab", str(tmp_path / "app.log.1")),
        ("c", str(log)),
    ]
    assert (stats.truncations, stats.partial_discarded) == (1, 0)


def test_copytruncate_of_a_file_held_but_not_yet_read_recovers_all_of_it(tmp_path: Path, make_tailer: Any) -> None:
    """A file the tail holds (the scout holds each new file at once) but has not read a byte of is copied and
    truncated: everything it held is unread, so all of it comes from the copy, then the truncated file's new
    lines; nothing is lost. Staged by holding the file without a read (the scout's step), as no real timing
    can stop the tail between holding and reading on demand."""
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    stats = FileStats()
    tailer = make_tailer(log, stats=stats)
    assert poll_all(tailer) == []
    rotate(log, 1, b"x1\nx2\n")
    with tailer.chain_lock:
        tailer.discover()  # held, nothing read
    (tmp_path / "app.log.copy").write_bytes(log.read_bytes())
    os.truncate(log, 0)
    append(log, b"y1\n")
    items = poll_all(tailer) + poll_all(tailer)
    lines = [(x.text, x.path) for x in items if isinstance(x, Line)]
    assert lines == [("x1", str(tmp_path / "app.log.copy")), ("x2", str(tmp_path / "app.log.copy")), ("y1", str(log))]
    assert (stats.truncations, stats.partial_discarded) == (1, 0)
