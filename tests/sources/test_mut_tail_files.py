"""The file helpers of tail_file's chain (``_tail_files``): fingerprints, checkpoints, copies, offsets.

What the mutation run found unchecked, each helper on real files against what its docstring promises.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from talkpipe_async.sources._file_lines import Splitter
from talkpipe_async.sources._tail_files import (
    FINGERPRINT_BYTES,
    Gen,
    Held,
    directory_files,
    end_position,
    find_copy,
    fp_hash,
    head,
    open_matching,
    open_unseen,
    read_checkpoint,
    take_ahead,
    write_json_atomically,
)
from tests.sources.test_mut_tail_chain import ident


def held(path: Path, pos: int = 0, max_line: int = 100) -> Held:
    fd = os.open(path, os.O_RDONLY)
    st = os.fstat(fd)
    return Held(fd, Gen(st.st_dev, st.st_ino, head(fd), str(path), pos), pos, Splitter(max_line), st)


def test_fingerprint_is_the_first_256_bytes_and_its_hash_is_128_bits(tmp_path: Path) -> None:
    """``head`` reads the first FINGERPRINT_BYTES bytes from offset 0 whatever the descriptor's position; the
    hash is a 32-hex-digit BLAKE2b of exactly the bytes given."""
    f = tmp_path / "f"
    f.write_bytes(bytes(range(256)) * 2)
    fd = os.open(f, os.O_RDONLY)
    try:
        os.lseek(fd, 10, os.SEEK_SET)
        assert FINGERPRINT_BYTES == 256
        assert head(fd) == bytes(range(256))
    finally:
        os.close(fd)
    import hashlib

    assert fp_hash(b"abc") == hashlib.blake2b(b"abc", digest_size=16).hexdigest()
    assert len(fp_hash(b"abc")) == 32 and fp_hash(b"abc") != fp_hash(b"abd")


def test_a_generation_records_its_identity() -> None:
    """A checkpoint entry names the device, inode, fingerprint length and fingerprint hash."""
    g = Gen(3, 7, b"hello", "/x/app.log", 12)
    assert (g.dev, g.ino, g.fp, g.path, g.start) == (3, 7, b"hello", "/x/app.log", 12)
    assert g.record() == {"dev": 3, "ino": 7, "fp_len": 5, "fp": fp_hash(b"hello")}
    assert Gen(1, 2, b"", "p").start == 0


def test_a_new_held_file_is_fresh(tmp_path: Path) -> None:
    """A file just held: read from its given offset, nothing read ahead, not cut, no mark, not announced,
    never seen quiet, its size and mtime as given."""
    f = tmp_path / "f"
    f.write_bytes(b"abc\n")
    h = held(f, pos=2)
    try:
        st = os.fstat(h.fd)
        assert (h.pos, h.size, h.mtime, h.gen.start) == (2, 4, st.st_mtime_ns, 2)
        assert (h.mark, h.announce, h.ahead, h.ahead_len, h.cut, h.discard_partial) == (b"", False, [], 0, False, False)
        assert (h.quiet_since, h.q_size, h.q_mtime) == (None, -1, -1)
        assert h.splitter.max_line == 100 and h.ident == (st.st_dev, st.st_ino)
        assert h.lock.acquire(blocking=False)
        h.lock.release()
    finally:
        os.close(h.fd)


def test_checkpoints_are_written_whole_and_read_back(tmp_path: Path) -> None:
    """write_json_atomically leaves exactly the JSON given (UTF-8) and no temp file; read_checkpoint returns
    the acknowledged file at its offset, then each following file at its start (0 when not given)."""
    target = tmp_path / "ck"
    data = {
        "version": 2,
        "dev": 1,
        "ino": 2,
        "fp_len": 3,
        "fp": "é",
        "offset": 40,
        "next": [
            {"dev": 1, "ino": 5, "fp_len": 0, "fp": "h", "start": 7},
            {"dev": "1", "ino": 6, "fp_len": 1, "fp": 9},
        ],
    }
    target.write_text("old")
    write_json_atomically(str(target), data)
    assert json.loads(target.read_bytes().decode("utf-8")) == data
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert read_checkpoint(str(target)) == [
        ({"dev": 1, "ino": 2, "fp_len": 3, "fp": "é"}, 40),
        ({"dev": 1, "ino": 5, "fp_len": 0, "fp": "h"}, 7),
        ({"dev": 1, "ino": 6, "fp_len": 1, "fp": "9"}, 0),
    ]
    del data["next"]
    write_json_atomically(str(target), data)
    assert read_checkpoint(str(target)) == [({"dev": 1, "ino": 2, "fp_len": 3, "fp": "é"}, 40)]
    assert read_checkpoint(str(tmp_path / "none")) is None


@pytest.mark.parametrize("missing", ["dev", "ino", "fp_len", "fp", "offset"])
def test_a_checkpoint_missing_a_field_is_malformed(tmp_path: Path, missing: str) -> None:
    """Every field of an entry is required: a missing one is a ValueError naming it."""
    data: dict[str, Any] = {"dev": 1, "ino": 2, "fp_len": 3, "fp": "x", "offset": 4}
    del data[missing]
    (tmp_path / "ck").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"^malformed checkpoint: KeyError\('{missing}'\)$"):
        read_checkpoint(str(tmp_path / "ck"))


def test_directory_files_names_regular_files_by_identity(tmp_path: Path) -> None:
    """Every regular file of the path's directory by (device, inode), the path under its own name though
    another name links to it; skipped names, directories and symlinks are left out."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a")
    os.link(log, tmp_path / "a-link")  # sorts before app.log: the path's own name must still win
    (tmp_path / "other").write_bytes(b"b")
    (tmp_path / "skipped").write_bytes(b"c")
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "other", tmp_path / "a-symlink")
    files = directory_files(str(log), {str(tmp_path / "skipped")})
    assert files == {ident(log): str(log), ident(tmp_path / "other"): str(tmp_path / "other")}
    files = directory_files(str(log), {str(log)})  # the path skipped: found by another name
    assert files[ident(log)] == str(tmp_path / "a-link")
    assert directory_files(str(tmp_path / "gone" / "app.log"), set()) == {}


def test_a_file_gone_during_the_scan_hides_no_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file deleted between the directory listing and its stat (a rotator at work) is left out; the files
    listed after it are still found."""

    log = tmp_path / "app.log"
    log.write_bytes(b"a")
    (tmp_path / "app.log.1").write_bytes(b"b")
    (tmp_path / "app.log.2").write_bytes(b"c")
    real = os.scandir

    class Listing:
        def __init__(self, directory: str) -> None:
            self.it = real(directory)

        def __enter__(self) -> Iterator[os.DirEntry[str]]:
            entries = sorted(self.it, key=lambda e: e.name != "app.log.1")  # the doomed one first
            os.unlink(tmp_path / "app.log.1")
            return iter(entries)

        def __exit__(self, *exc: object) -> None:
            self.it.close()

    monkeypatch.setattr(os, "scandir", Listing)
    files = directory_files(str(log), set())
    assert sorted(files.values()) == [str(log), str(tmp_path / "app.log.2")]


def test_a_copy_gone_before_it_is_opened_hides_no_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate copy listed but deleted before find_copy opens it is passed over; a real copy listed
    after it is still found."""
    from talkpipe_async.sources import _tail_files

    log, h = copy_case(tmp_path)
    try:
        (tmp_path / "app.log.1").write_bytes(b"line-01\nline-02\n")
        real = _tail_files.directory_files

        def stale(path: str, skip: set[str]) -> dict[tuple[int, int], str]:
            return {(0, 0): str(tmp_path / "app.log.0"), **real(path, skip)}  # app.log.0: already deleted

        monkeypatch.setattr(_tail_files, "directory_files", stale)
        found = find_copy(h, str(log), set())
        assert found is not None and found[2] == str(tmp_path / "app.log.1")
        os.close(found[0])
    finally:
        os.close(h.fd)


def test_open_matching_needs_the_inode_the_fingerprint_and_the_offset(tmp_path: Path) -> None:
    """A checkpointed file is reopened only if it is the same inode, starts with the same bytes, and still
    holds the offset to resume at (exactly that many bytes is enough)."""
    f = tmp_path / "f"
    f.write_bytes(b"hello world\n")
    dev, ino = ident(f)
    entry = {"dev": dev, "ino": ino, "fp_len": 5, "fp": fp_hash(b"hello")}
    opened = open_matching(str(f), entry, 12)
    assert opened is not None
    fd, st, first = opened
    os.close(fd)
    assert (st.st_ino, first) == (ino, b"hello world\n")
    assert open_matching(str(f), entry, 13) is None  # shorter than the offset
    assert open_matching(str(f), {**entry, "ino": ino + 1}, 0) is None
    assert open_matching(str(f), {**entry, "dev": dev + 1}, 0) is None
    assert open_matching(str(f), {**entry, "fp": fp_hash(b"hellx")}, 0) is None
    whole = {**entry, "fp_len": 12, "fp": fp_hash(b"hello world\n")}
    opened = open_matching(str(f), whole, 0)  # a fingerprint as long as the file
    assert opened is not None
    os.close(opened[0])
    assert open_matching(str(f), {**whole, "fp_len": 13}, 0) is None  # the file is shorter than its fingerprint
    assert open_matching(str(tmp_path / "gone"), entry, 0) is None


def copy_case(tmp_path: Path) -> tuple[Path, Held]:
    """app.log read up to offset 8 ("line-01\\n"), then truncated: the copy made before is what find_copy
    looks for."""
    log = tmp_path / "app.log"
    log.write_bytes(b"line-01\nline-02\n")
    h = held(log, pos=8)
    h.mark = b"line-01\n"
    return log, h


def test_find_copy_takes_the_longest_copy_with_the_same_start_and_mark(tmp_path: Path) -> None:
    """Of the files whose name starts with the path's name, starting with its fingerprint, holding its mark
    just before the read offset and more bytes than the offset, the longest is returned, opened; the
    others are closed."""
    log, h = copy_case(tmp_path)
    try:
        (tmp_path / "app.log.1").write_bytes(b"line-01\nline-02\n")
        (tmp_path / "app.log.2").write_bytes(b"line-01\nline-02\nline-03\n")
        (tmp_path / "app.log.3").write_bytes(b"line-01\nline-0")
        (tmp_path / "other.log").write_bytes(b"line-01\nline-02\nline-03\nline-04\n")  # not named after it
        (tmp_path / "app.log.4").write_bytes(b"line-01\n")  # nothing after the offset
        (tmp_path / "app.log.5").write_bytes(b"LINE-01\nline-02\nline-03\nline-04\n")  # another start
        (tmp_path / "app.log.6").write_bytes(b"line-0X\nline-02\nline-03\nline-04\n")  # its fp matches, ...
        h.gen.fp = b"line"  # ... as a fingerprint of 4 bytes; its mark does not
        h.mark = b"01\n"
        found = find_copy(h, str(log), set())
        assert found is not None
        fd, st, name = found
        assert (name, st.st_size, os.pread(fd, 100, 0)) == (
            str(tmp_path / "app.log.2"),
            24,
            b"line-01\nline-02\nline-03\n",
        )
        os.close(fd)
        fds = set(os.listdir("/proc/self/fd")) if sys.platform.startswith("linux") else set()
        found = find_copy(h, str(log), set())
        assert found is not None
        os.close(found[0])
        if fds:
            assert set(os.listdir("/proc/self/fd")) == fds  # the copies not taken are closed
    finally:
        os.close(h.fd)


def test_find_copy_is_never_the_file_itself_nor_a_skipped_one(tmp_path: Path) -> None:
    """The truncated file (by inode, under any name) and the skipped names are not copies; without a copy
    the answer is None."""
    log, h = copy_case(tmp_path)
    try:
        os.link(log, tmp_path / "app.log.hard")
        (tmp_path / "app.log.ckpt").write_bytes(b"line-01\nline-02\nline-03\n")
        assert find_copy(h, str(log), {str(tmp_path / "app.log.ckpt")}) is None
        (tmp_path / "app.log.1").write_bytes(b"line-01\nline-02\n")
        found = find_copy(h, str(log), {str(tmp_path / "app.log.ckpt")})
        assert found is not None and found[2] == str(tmp_path / "app.log.1")
        os.close(found[0])
        h.mark = b""
        h.gen.fp = b""
        h.pos = 16
        assert find_copy(h, str(log), {str(tmp_path / "app.log.ckpt")}) is None  # the copy is not longer
    finally:
        os.close(h.fd)


def test_open_unseen_holds_a_regular_file_not_seen_from_its_start(tmp_path: Path) -> None:
    """A file renamed away unseen is held from offset 0 with its fingerprint and name; a seen one, a
    directory or a missing name is not."""
    f = tmp_path / "app.log.1"
    f.write_bytes(b"abc\n")
    sp = Splitter(9)
    h = open_unseen(str(f), set(), sp)
    assert h is not None
    try:
        st = os.fstat(h.fd)
        assert (h.pos, h.gen.start, h.gen.fp, h.gen.path, h.splitter, h.size) == (0, 0, b"abc\n", str(f), sp, 4)
        assert h.ident == ident(f) == (st.st_dev, st.st_ino)
    finally:
        os.close(h.fd)
    assert open_unseen(str(f), {ident(f)}, sp) is None
    assert open_unseen(str(tmp_path), set(), sp) is None
    assert open_unseen(str(tmp_path / "gone"), set(), sp) is None


@pytest.mark.parametrize(
    ("content", "max_line", "expected", "dropping"),
    [
        (b"", 10, 0, False),
        (b"abc", 10, 0, False),  # one partial line: read whole
        (b"abcdefghij", 10, 0, False),  # exactly max_line bytes of partial line: still read whole
        (b"abcdefghijk", 10, 11, True),  # longer: skipped to its newline, counted once
        (b"a\nb\npartial", 10, 4, False),
        (b"a\nb\n", 10, 4, False),
        (b"\nxxxxxxxxxx", 10, 1, False),  # the newline just inside the window of max_line + 1 bytes
        (b"\nxxxxxxxxxxx", 10, 12, True),  # one byte further: outside it
        (b"0123456789\nab", 10, 11, False),
    ],
)
def test_end_position_starts_after_the_last_complete_line(
    tmp_path: Path, content: bytes, max_line: int, expected: int, dropping: bool
) -> None:
    """start="end" begins after the last newline within the last max_line + 1 bytes; a partial line longer
    than max_line is skipped (and counted as dropped once)."""
    f = tmp_path / "f"
    f.write_bytes(content)
    sp = Splitter(max_line)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert end_position(fd, len(content), sp) == expected
    finally:
        os.close(fd)
    assert (sp.dropping, sp.dropped) == (dropping, int(dropping))


def test_take_ahead_gives_at_most_the_limit_in_order_and_keeps_the_rest(tmp_path: Path) -> None:
    """What the scout read ahead comes out in order, at most ``limit`` bytes at a time, a chunk split at the
    limit; ``ahead_len`` follows."""
    f = tmp_path / "f"
    f.write_bytes(b"")
    h = held(f)
    try:
        h.ahead, h.ahead_len = [b"abc", b"de", b"fghij"], 10
        assert take_ahead(h, 5) == b"abcde"
        assert (h.ahead, h.ahead_len) == ([b"fghij"], 5)
        assert take_ahead(h, 2) == b"fg"
        assert (h.ahead, h.ahead_len) == ([b"hij"], 3)
        h.ahead, h.ahead_len = [b"hij", b"k"], 4
        assert take_ahead(h, 4) == b"hijk"
        assert (h.ahead, h.ahead_len) == ([], 0)
        assert take_ahead(h, 4) == b""
        h.ahead, h.ahead_len = [b"ab", b"cd"], 4
        assert take_ahead(h, 3) == b"abc"
        assert (h.ahead, h.ahead_len) == ([b"d"], 1)
    finally:
        os.close(h.fd)


def test_an_io_error_on_a_file_looked_at_is_contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error reading a file just opened (injected: no real file fails so on demand) closes it and
    passes it over: not a copy, not the checkpointed file; a file renamed away unseen fails with that error
    (the descriptor closed), not another."""
    log, h = copy_case(tmp_path)
    bad = tmp_path / "app.log.1"
    good = tmp_path / "app.log.2"
    bad.write_bytes(b"line-01\nline-02\nline-03\nline-04\n")  # the longest: it would win
    good.write_bytes(b"line-01\nline-02\n")
    real_fstat, real_pread = os.fstat, os.pread
    bad_ino = os.stat(bad).st_ino
    opened: list[int] = []

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if st.st_ino == bad_ino:
            opened.append(fd)
            raise OSError(5, "Input/output error")
        return st

    def pread(fd: int, n: int, offset: int) -> bytes:
        if real_fstat(fd).st_ino == bad_ino:
            raise OSError(5, "Input/output error")
        return real_pread(fd, n, offset)

    try:
        monkeypatch.setattr(os, "fstat", fstat)
        found = find_copy(h, str(log), set())
        assert found is not None and found[2] == str(good)
        os.close(found[0])
        dev, ino = ident(bad)
        entry = {"dev": dev, "ino": ino, "fp_len": 4, "fp": fp_hash(b"line")}
        assert open_matching(str(bad), entry, 0) is None
        monkeypatch.setattr(os, "fstat", real_fstat)
        monkeypatch.setattr(os, "pread", pread)
        with pytest.raises(OSError, match="Input/output error"):
            open_unseen(str(bad), set(), Splitter(9))
    finally:
        monkeypatch.undo()
        os.close(h.fd)
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed
