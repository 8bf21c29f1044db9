"""The file sources' promises, at their edges: every line once over any chunking, exact line numbers and counters,
the cap, the decoding and record policies with their exact texts, the defaults and the validation messages.

Real files in ``tmp_path``; the page-cache path and the worker-thread path are both run where they differ.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async.sources import FileStats, RecordError, read_chunks, read_csv, read_jsonl, read_lines
from talkpipe_async.sources import _file_batches as file_batches_module
from talkpipe_async.sources import _line_file as line_file
from talkpipe_async.sources.files import (
    DEFAULT_CHUNK,
    DEFAULT_MAX_LINE,
    DROPPED,
    BadLine,
    LineDecoder,
    Splitter,
    check_encoding,
    check_errors,
    expand_paths,
    read_ahead,
)
from tests.helpers.wait import wait_until

PIECES = st.sampled_from([b"a", b"bc", b"\n", b"\n", b"\r\n", b"\r", "é".encode(), b"\xff", b"x" * 9])


@pytest.fixture(params=["inline", "threads"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Reads from the page cache in the loop, or in worker threads only."""
    if request.param == "threads":
        monkeypatch.setattr(line_file, "NOWAIT", False)
    elif not line_file.NOWAIT:
        pytest.skip("no RWF_NOWAIT reads on this platform")
    yield request.param


def reference_lines(data: bytes, cap: int, strip_cr: bool) -> tuple[list[str], int, int]:
    """Lines of *data* split on ``\\n`` (an unterminated last line included), lines over *cap* bytes left out:
    (lines decoded with ``replace``, lines dropped, lines with invalid UTF-8)."""
    raws = data.split(b"\n")
    if raws[-1] == b"":
        raws.pop()
    lines: list[str] = []
    dropped = bad = 0
    for raw in raws:
        if len(raw) > cap:
            dropped += 1
            continue
        if strip_cr and raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
        lines.append(raw.decode("utf-8", "replace"))
    return lines, dropped, bad


def reference_high_water(data: bytes, cuts: list[int], cap: int) -> int:
    """The longest partial line (at most *cap* bytes) held after any of the reads ending at *cuts*."""
    high = 0
    for end in cuts:
        held = end - (data.rfind(b"\n", 0, end) + 1)
        if held <= cap:
            high = max(high, held)
    return high


# --- Splitter ------------------------------------------------------------------------------------------------------


def test_splitter_validation_and_reset() -> None:
    """The cap must be at least 1 (1 works); ``reset`` forgets both a held partial line and a line being skipped."""
    with pytest.raises(ValueError, match=r"^max_line_bytes must be at least 1$"):
        Splitter(0)
    one = Splitter(1)
    assert one.split(b"a\nbc\n\n") == [b"a", DROPPED, b""] and one.dropped == 1
    sp = Splitter(3)
    assert sp.split(b"xy") == [] and sp.partial == b"xy"
    sp.reset()
    assert sp.partial == b"" and not sp.dropping
    assert sp.split(b"z\n") == [b"z"]
    assert sp.split(b"long") == [] and sp.dropping
    sp.reset()
    assert not sp.dropping and sp.split(b"ok\n") == [b"ok"]
    assert sp.dropped == 1 and repr(DROPPED) == "<dropped over-long line>"


# --- RecordError, decoding, option checks ----------------------------------------------------------------------------


def test_record_error_text_and_fields() -> None:
    """The text names the stage, the reason, the file and the line (or the byte offset when there is no line), and
    the start of the offending text (80 characters at most, as a repr)."""
    err = RecordError("src", "/f.txt", 7, "bad thing", text="x" * 100)
    assert str(err) == f"src: bad thing at /f.txt line 7: {'x' * 80!r}"
    assert (err.stage, err.path, err.line, err.offset, err.reason) == ("src", "/f.txt", 7, None, "bad thing")
    at = RecordError("src", "/f.txt", None, "why", offset=1234)
    assert str(at) == "src: why at /f.txt offset 1234" and at.offset == 1234 and at.line is None
    assert str(RecordError("s", "p", 0, "r")) == "s: r at p line 0"
    assert isinstance(err, ValueError)


def test_line_decoder_policies() -> None:
    """One trailing ``\\r`` is stripped when asked (only one, only at the end); invalid bytes are counted and either
    replaced by the policy, raised as a RecordError naming stage, file, line (or offset) and codec reason, chained to
    the UnicodeDecodeError, or handed back as a BadLine carrying that error when ``mark_bad``."""
    stats = FileStats()
    dec = LineDecoder("st", "/p", "utf-8", "replace", True, stats)
    assert dec.decode(b"a\rb\r\r", 1) == "a\rb\r"
    assert dec.decode(b"ab\xff\r", 1) == "ab\ufffd" and stats.decode_errors == 1
    keep = LineDecoder("st", "/p", "utf-8", "ignore", False, stats)
    assert keep.decode(b"a\xffb\r", 2) == "ab\r" and stats.decode_errors == 2
    strict = LineDecoder("st", "/p", "utf-8", "strict", True, stats)
    with pytest.raises(RecordError) as info:
        strict.decode(b"ok\xff", 9)
    assert str(info.value) == "st: invalid utf-8 (invalid start byte) at /p line 9"
    assert isinstance(info.value.__cause__, UnicodeDecodeError) and stats.decode_errors == 3
    with pytest.raises(RecordError, match=r"^st: invalid utf-8 \(invalid start byte\) at /p offset 40$"):
        strict.decode(b"\xff", None, 40)
    marked = LineDecoder("st", "/p", "utf-8", "strict", True, stats, mark_bad=True)
    bad = marked.decode(b"\xfe", 5)
    assert type(bad) is BadLine and stats.decode_errors == 5
    assert str(bad.error) == "st: invalid utf-8 (invalid start byte) at /p line 5"
    assert isinstance(bad.error.__cause__, UnicodeDecodeError)
    assert marked.decode(b"fine\r", 6) == "fine"
    latin = LineDecoder("st", "/p", "iso8859-1", "strict", False, stats)
    assert latin.decode(b"\xe9", 1) == "é"


def test_encoding_and_error_policy_checks() -> None:
    """Encodings come back by their codec name and must frame lines on the bytes ``\\n`` and ``\\r``; error policies
    must be registered handlers; both messages are exact, also from the sources' constructors."""
    assert check_encoding("UTF8") == "utf-8" and check_encoding("latin-1") == "iso8859-1"
    for name in ("utf-16", "utf-32", "cp037"):
        with pytest.raises(ValueError) as info:
            check_encoding(name)
        assert str(info.value) == f"encoding {name!r} is not ASCII-compatible: lines cannot be split on b'\\n'"
    assert check_errors("ignore") == "ignore" and check_errors("strict") == "strict"
    with pytest.raises(ValueError) as bad:
        check_errors("nonsense")
    assert str(bad.value) == "unknown decoding error policy 'nonsense' (use 'replace' or 'strict')"
    assert bad.value.__cause__ is None and bad.value.__suppress_context__
    with pytest.raises(ValueError, match="not ASCII-compatible"):
        read_jsonl("x", encoding="utf-16")
    with pytest.raises(ValueError, match="unknown decoding error policy"):
        read_csv("x", errors="nonsense")
    assert read_lines("x", encoding="LATIN1").encoding == "iso8859-1"


def test_file_stats_as_dict() -> None:
    """``as_dict`` gives every counter by name with its value."""
    stats = FileStats(files=2, lines=5, rotations=1)
    got = stats.as_dict()
    assert got["files"] == 2 and got["lines"] == 5 and got["rotations"] == 1 and got["bytes"] == 0
    assert list(got) == [f for f in FileStats.__dataclass_fields__]


# --- read_lines over real files -----------------------------------------------------------------------------------


async def _read(path: Path, **options: Any) -> tuple[list[str], FileStats]:
    stats = FileStats()
    return await read_lines(path, stats=stats, **options).collect(), stats


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["lines", "jsonl"])
async def test_items_before_an_error_in_the_same_chunk_are_delivered(tmp_path: Path, read_path: str, kind: str) -> None:
    """Every line (record) before the bad one is delivered before the error, also those read in the same chunk: a
    strict decoding error of ``read_lines``, a malformed record of ``read_jsonl`` under ``on_error="raise"``."""
    p = tmp_path / "x.txt"
    p.write_bytes(b'"one"\n"two"\nbad\xff\n"four"\n')
    source: Any = read_lines(p, errors="strict") if kind == "lines" else read_jsonl(p)
    got: list[Any] = []
    with pytest.raises(RecordError) as info:
        async with source.stream() as items:
            async for item in items:
                got.append(item)
    assert info.value.line == 3
    assert got == (['"one"', '"two"'] if kind == "lines" else ["one", "two"])


@pytest.mark.anyio
async def test_a_dropped_line_is_warned_once_per_file_with_its_cap_and_file(
    tmp_path: Path, read_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Over-long lines are counted each time, but the warning (naming the stage, the cap and the file) is logged
    once for the file, and only when something was dropped."""
    quiet = tmp_path / "quiet.txt"
    quiet.write_bytes(b"short\n" * 10)
    p = tmp_path / "x.txt"
    p.write_bytes(b"a\n" + b"x" * 20 + b"\nb\n" + b"y" * 30 + b"\nc\n")
    with caplog.at_level(logging.WARNING, logger="talkpipe_async.sources.files"):
        lines, stats = await _read(quiet, max_line_bytes=10, chunk_size=7)
        assert stats.dropped_long == 0 and not caplog.records
        lines, stats = await _read(p, max_line_bytes=10, chunk_size=7, name="logs")
    assert lines == ["a", "b", "c"] and stats.dropped_long == 2
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [f"logs: dropped a line longer than 10 bytes in {p} (counted in stats.dropped_long)"]


@pytest.mark.anyio
async def test_counters_accumulate_over_files_and_the_high_water_is_the_largest(tmp_path: Path, read_path: str) -> None:
    """Over a list of files the counters add up (files, lines, bytes) and ``buffer_high_water`` keeps the largest
    partial line of any file, not the last file's."""
    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    big.write_bytes(b"123456789\n")  # read in chunks of 4: holds 8 bytes before the newline
    small.write_bytes(b"ab\n")
    stats = FileStats()
    got = await read_lines([big, small], chunk_size=4, stats=stats).collect()
    assert got == ["123456789", "ab"]
    assert (stats.files, stats.lines, stats.bytes, stats.buffer_high_water) == (2, 2, 13, 8)


@pytest.mark.anyio
async def test_crlf_stripping_only_touches_line_ends(tmp_path: Path, read_path: str) -> None:
    """``strip_cr`` (the default) removes the ``\\r`` of a CRLF ending only; a lone ``\\r`` inside a line or at the
    end of the file's last line stays, except as that last line's final character."""
    p = tmp_path / "x.txt"
    p.write_bytes(b"a\rb\r\nc\r\r\nd\re\r")
    assert await read_lines(p).collect() == ["a\rb", "c\r", "d\re"]
    assert await read_lines(p, strip_cr=False).collect() == ["a\rb\r", "c\r\r", "d\re\r"]


@pytest.mark.anyio
async def test_read_lines_defaults(tmp_path: Path, read_path: str) -> None:
    """Defaults: UTF-8 with invalid bytes replaced and counted, CRLF stripped, lines up to 1 MiB kept (a longer one
    dropped), the stage named ``read_lines``."""
    p = tmp_path / "x.txt"
    p.write_bytes(b"caf\xc3\xa9\r\n\xff\n" + b"k" * DEFAULT_MAX_LINE + b"\n" + b"d" * (DEFAULT_MAX_LINE + 1) + b"\nz")
    src = read_lines(p)
    got = await src.collect()
    assert got == ["café", "\ufffd", "k" * DEFAULT_MAX_LINE, "z"]
    assert (src.stats.decode_errors, src.stats.dropped_long) == (1, 1)
    assert src.name == "read_lines" and src.encoding == "utf-8" and src.errors == "replace"
    assert src.max_line_bytes == DEFAULT_MAX_LINE == 1 << 20 and src.chunk_size == DEFAULT_CHUNK == 128 * 1024


def test_source_options_are_validated() -> None:
    """``chunk_size`` and ``max_line_bytes`` must be at least 1 (1 works); ``on_error`` must be raise or skip; the
    messages are exact."""
    for make in (read_lines, read_chunks, read_jsonl):
        with pytest.raises(ValueError, match=r"^chunk_size must be at least 1$"):
            make("x", chunk_size=0)
        assert make("x", chunk_size=1).chunk_size == 1
    for make in (read_lines, read_jsonl):
        with pytest.raises(ValueError, match=r"^max_line_bytes must be at least 1$"):
            make("x", max_line_bytes=0)
    for source in (read_lines("x"), read_chunks("x"), read_jsonl("x"), read_csv("x")):
        assert source.emits_metadata is False  # no metadata plumbing is installed after a file source
    record_sources: list[Any] = [read_jsonl, read_csv]
    for make_records in record_sources:
        with pytest.raises(ValueError) as info:
            make_records("x", on_error="ignore")
        assert str(info.value) == "on_error must be 'raise' or 'skip', not 'ignore'"


@pytest.mark.anyio
async def test_lines_of_exactly_the_cap_on_every_path(tmp_path: Path, read_path: str) -> None:
    """A line of exactly ``max_line_bytes`` is delivered and one byte more is dropped, whether it sits inside one
    read, is held across reads, or is the unterminated last line."""
    p = tmp_path / "x.txt"
    cap = 8
    body = b"a" * cap + b"\n" + b"b" * (cap + 1) + b"\n" + b"c" * cap + b"\n" + b"d" * (cap + 1) + b"\n"
    for chunk_size in (3, 9, 64):
        p.write_bytes(body + b"e" * cap)
        lines, stats = await _read(p, max_line_bytes=cap, chunk_size=chunk_size)
        assert lines == ["a" * cap, "c" * cap, "e" * cap] and stats.dropped_long == 2, chunk_size
        p.write_bytes(body + b"e" * (cap + 1))
        lines, stats = await _read(p, max_line_bytes=cap, chunk_size=chunk_size)
        assert lines == ["a" * cap, "c" * cap] and stats.dropped_long == 3, chunk_size


@pytest.mark.anyio
async def test_page_cache_reads_count_one_per_chunk_of_at_most_64_kib(tmp_path: Path) -> None:
    """In the loop, a cached file is read in reads of ``min(chunk_size, 64 KiB)``, each counted in
    ``cached_reads``, plus the read that finds the end."""
    if not line_file.NOWAIT:
        pytest.skip("no RWF_NOWAIT reads on this platform")
    p = tmp_path / "x.txt"
    data = b"".join(b"%05d\n" % i for i in range(30_000))  # 180 000 bytes
    p.write_bytes(data)
    for chunk_size, reads in ((1000, 180 + 1), (100_000, 3 + 1), (line_file.INLINE_CHUNK, 3 + 1)):
        lines, stats = await _read(p, chunk_size=chunk_size)
        assert len(lines) == 30_000 and lines[-1] == "29999"
        assert (stats.cached_reads, stats.bytes) == (reads, len(data)), chunk_size


class _HopSpy:
    """Records, for each worker-thread hop of a line reader, how many ``pread`` calls it made (and their sizes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hops: list[list[int]] = []
        real_pread, real_run_sync = os.pread, anyio.to_thread.run_sync

        def pread(fd: int, n: int, offset: int) -> bytes:
            if self.hops:
                self.hops[-1].append(n)
            return real_pread(fd, n, offset)

        async def run_sync(func: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(func, "__qualname__", "").rsplit(".", 1)[-1] == "hop":
                self.hops.append([])
            return await real_run_sync(func, *args, **kwargs)

        monkeypatch.setattr(os, "pread", pread)
        monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)


@pytest.mark.anyio
async def test_a_thread_hop_reads_about_one_mib_in_chunk_size_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker-thread hop makes ``HOP_BYTES // chunk_size`` reads (at least one), stops at the end of the file,
    and never reads past it; the default chunk is 128 KiB."""
    monkeypatch.setattr(line_file, "NOWAIT", False)
    spy = _HopSpy(monkeypatch)
    hop = line_file.HOP_BYTES
    p = tmp_path / "x.txt"
    p.write_bytes((b"x" * 99 + b"\n") * ((hop + hop // 2) // 100))  # 1.5 MiB
    size = p.stat().st_size
    lines, stats = await _read(p, chunk_size=hop // 4)
    assert len(lines) == size // 100 and stats.bytes == size
    assert [len(h) for h in spy.hops] == [4, 3]  # 4 reads of 256 KiB; then 2 and the read at the end
    spy.hops.clear()
    lines, stats = await _read(p, chunk_size=2 * hop)
    assert [len(h) for h in spy.hops] == [1, 1] and stats.bytes == size
    spy.hops.clear()
    lines, stats = await _read(p)
    assert spy.hops == [[DEFAULT_CHUNK] * 8, [DEFAULT_CHUNK] * 5]


@pytest.mark.anyio
@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS])
async def test_a_file_system_without_nowait_reads_falls_back_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """When the file system refuses non-blocking reads, the whole file is read in worker threads, complete, and no
    read counts as cached; any other error of the read is raised."""
    if not line_file.NOWAIT:
        pytest.skip("no RWF_NOWAIT reads on this platform")
    calls: list[int] = []

    def preadv(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        calls.append(offset)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "preadv", preadv)
    p = tmp_path / "x.txt"
    p.write_bytes(b"".join(b"%d\n" % i for i in range(5000)))
    lines, stats = await _read(p, chunk_size=1000)
    assert lines == [str(i) for i in range(5000)] and stats.cached_reads == 0 and calls == [0]


@pytest.mark.anyio
async def test_other_errors_of_a_page_cache_read_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error of a non-blocking read is not mistaken for 'not supported': it reaches the consumer."""
    if not line_file.NOWAIT:
        pytest.skip("no RWF_NOWAIT reads on this platform")

    def preadv(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "preadv", preadv)
    p = tmp_path / "x.txt"
    p.write_bytes(b"a\n")
    with pytest.raises(OSError) as info:
        await read_lines(p).collect()
    assert info.value.errno == errno.EIO


# --- paths and read-ahead ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_paths_globs_and_literal_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A str with ``*``, ``?`` or ``[`` is a glob (sorted, ``**`` recursive, directories left out, a warning naming
    it when nothing matches); a Path, or a str without them, is taken as it is, even when it does not exist."""
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    for name in ("b1.log", "a1.log", "sub/c1.log", "sub/deep/d1.log", "a[1].log"):
        (tmp_path / name).write_text(name)
    (tmp_path / "dir.log").mkdir()
    t = str(tmp_path)
    assert await expand_paths(f"{t}/*.log") == [f"{t}/a1.log", f"{t}/a[1].log", f"{t}/b1.log"]
    assert await expand_paths(f"{t}/?1.log") == [f"{t}/a1.log", f"{t}/b1.log"]
    assert await expand_paths(f"{t}/a[1].log") == [f"{t}/a1.log"]
    assert await expand_paths(tmp_path / "a[1].log") == [f"{t}/a[1].log"]
    assert await expand_paths(f"{t}/**/*1.log") == [
        f"{t}/a1.log",
        f"{t}/b1.log",
        f"{t}/sub/c1.log",
        f"{t}/sub/deep/d1.log",
    ]
    assert await expand_paths([f"{t}/none.txt", tmp_path / "b1.log"]) == [f"{t}/none.txt", f"{t}/b1.log"]
    with caplog.at_level(logging.WARNING, logger="talkpipe_async.sources.files"):
        assert await expand_paths([f"{t}/*.none"]) == []
    assert [r.getMessage() for r in caplog.records] == [f"glob '{t}/*.none' matched no files"]


@pytest.mark.anyio
@pytest.mark.parametrize("in_run", [False, True])
async def test_read_ahead_hands_out_batches_in_order_then_the_error(in_run: bool) -> None:
    """Batches come in order, empty ones left out; an error of a read comes after the batches read before it, both
    outside a pipeline run (one read per batch) and inside one (reads in a task of the run)."""
    script: list[tuple[list[Any], bool] | Exception] = [
        ([1], True),
        ([], True),
        ([2, 3], True),
        LookupError("read failed"),
        ([9], False),
    ]

    def read() -> tuple[list[Any], bool]:
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    got: list[list[Any]] = []

    async def drain() -> None:
        async for batch in read_ahead(read):
            got.append(batch)

    if not in_run:
        with pytest.raises(LookupError, match="read failed"):
            await drain()
    else:
        from talkpipe_async import source

        @source
        async def outer() -> Any:
            await drain()
            yield 0

        with pytest.raises(LookupError, match="read failed"):
            await outer().collect()
    assert got == [[1], [2, 3]]


@pytest.mark.anyio
async def test_read_ahead_ends_after_the_last_read(tmp_path: Path) -> None:
    """``more=False`` ends the stream after that read's batch, in and outside a run; nothing is read after it."""
    from talkpipe_async import source

    reads = 0

    def read() -> tuple[list[Any], bool]:
        nonlocal reads
        reads += 1
        return [reads], reads < 3

    assert [b async for b in read_ahead(read)] == [[1], [2], [3]] and reads == 3
    reads = 0

    @source
    async def outer() -> Any:
        async for b in read_ahead(read, depth=1):
            yield b

    assert await outer().collect() == [[1], [2], [3]] and reads == 3


@pytest.mark.anyio
async def test_leaving_during_a_read_waits_for_it_in_a_named_task() -> None:
    """Inside a run the reads happen in a task named ``file read-ahead``; when the consumer is cancelled while a
    read is in flight, the read-ahead returns only after that read has ended, so the caller may close the file."""
    from talkpipe_async import source

    go = threading.Event()
    events: list[str] = []
    reads = 0
    names: set[str] = set()

    def read() -> tuple[list[Any], bool]:
        nonlocal reads
        reads += 1
        if reads == 2:
            go.wait(30)
            events.append("read ended")
        return [reads], True

    @source
    async def lines() -> Any:
        try:
            async with aclosing(read_ahead(read)) as batches:
                async for batch in batches:
                    names.update(t.name or "" for t in anyio.get_running_tasks())
                    yield batch
        finally:
            events.append("file closed")

    async def consume(scope: anyio.CancelScope) -> None:
        with scope:
            async with lines().stream() as items:
                async for _ in items:
                    await anyio.sleep_forever()

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, scope)
        await wait_until(lambda: reads >= 2, what="the second read")
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        go.set()
    assert events == ["read ended", "file closed"]
    assert any(n.endswith("file read-ahead") for n in names), names


@pytest.mark.anyio
async def test_inline_reads_yield_the_loop_once_per_time_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading from the page cache in the loop gives other tasks a turn once ``INLINE_SLICE`` seconds have passed
    since the last one: after every chunk with a slice of 0, never within a 30-second slice."""
    if not line_file.NOWAIT:
        pytest.skip("no RWF_NOWAIT reads on this platform")
    if time.monotonic() < 60:
        pytest.skip("the clock must read more than the slice")
    p = tmp_path / "x.txt"
    p.write_bytes(b"".join(b"%09d\n" % i for i in range(10_000)))  # 100 chunks of 1000 bytes
    turns = 0
    done = anyio.Event()

    async def other_task() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await anyio.lowlevel.checkpoint()

    async def read(slice_: float) -> int:
        monkeypatch.setattr(file_batches_module, "INLINE_SLICE", slice_)
        with open(p, "rb", buffering=0) as f:
            reader = line_file.LineFile(
                "s",
                str(p),
                f,
                chunk_size=1000,
                max_line=100,
                encoding="utf-8",
                errors="strict",
                strip_cr=True,
                stats=FileStats(),
            )
            start, n = turns, 0
            async for lines in file_batches_module.file_batches(reader):
                n += len(lines)
            assert n == 10_000 and reader.stats.cached_reads == 101
            return turns - start

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        await anyio.lowlevel.checkpoint()
        assert await read(30.0) == 0
        assert await read(0.0) >= 100
        done.set()


# --- chunks ----------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_chunks_default_size_and_counters(tmp_path: Path) -> None:
    """``read_chunks`` cuts at 128 KiB by default; ``bytes``, ``lines`` (chunks) and ``files`` are counted over a
    list of files, each file cut on its own."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"\x00" * (DEFAULT_CHUNK * 2 + 5))
    b.write_bytes(b"\x01" * 3)
    stats = FileStats()
    chunks = await read_chunks([a, b], stats=stats).collect()
    assert [len(c) for c in chunks] == [DEFAULT_CHUNK, DEFAULT_CHUNK, 5, 3]
    assert (stats.bytes, stats.lines, stats.files) == (DEFAULT_CHUNK * 2 + 8, 4, 2)
    assert read_chunks(a).name == "read_chunks" and read_chunks(a, name="raw").name == "raw"


# --- JSON Lines ------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_jsonl_error_texts_and_causes(tmp_path: Path, read_path: str) -> None:
    """A malformed record's error names the stage, the parser's reason, the file, the line and the line's start; a
    line of invalid UTF-8 names the codec's reason and no text; both are chained to their cause."""
    p = tmp_path / "x.jsonl"
    long = "{" + "x" * 100
    p.write_bytes(b'{"a": 1}\n\n' + long.encode() + b"\n")
    with pytest.raises(RecordError) as info:
        await read_jsonl(p, name="events").collect()
    reason = "malformed JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    assert str(info.value) == f"events: {reason} at {p} line 3: {long[:80]!r}"
    assert (info.value.stage, info.value.reason, info.value.line) == ("events", reason, 3)
    assert type(info.value.__cause__).__name__ == "JSONDecodeError"
    p.write_bytes(b'{"a": 1}\n\n\xff\n')
    with pytest.raises(RecordError) as info:
        await read_jsonl(p).collect()
    assert str(info.value) == f"read_jsonl: invalid utf-8 (invalid start byte) at {p} line 3"
    assert isinstance(info.value.__cause__, RecordError)
    assert isinstance(info.value.__cause__.__cause__, UnicodeDecodeError)


@pytest.mark.anyio
async def test_jsonl_line_numbers_before_a_dropped_line_in_the_same_chunk(tmp_path: Path, read_path: str) -> None:
    """A malformed record followed, in the same chunk, by an over-long line keeps its own line number: the dropped
    line still takes its place in the count."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"1\n{bad\n" + b'"' + b"x" * 40 + b'"\n2\n')
    with pytest.raises(RecordError) as info:
        await read_jsonl(p, max_line_bytes=32).collect()
    assert info.value.line == 2
    stats = FileStats()
    assert await read_jsonl(p, max_line_bytes=32, on_error="skip", stats=stats).collect() == [1, 2]
    assert (stats.skipped_records, stats.dropped_long) == (1, 1)


@pytest.mark.anyio
async def test_jsonl_skip_warns_once_with_the_first_error(
    tmp_path: Path, read_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``on_error="skip"`` each bad record is counted and the first one is logged, once per run, with its
    error text."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"1\nbad\n2\nworse\n")
    stats = FileStats()
    with caplog.at_level(logging.WARNING, logger="talkpipe_async.sources.files"):
        assert await read_jsonl(p, on_error="skip", stats=stats).collect() == [1, 2]
    assert stats.skipped_records == 2 and stats.lines == 2
    reason = "malformed JSON (Expecting value: line 1 column 1 (char 0))"
    want = f"read_jsonl: {reason} at {p} line 2: 'bad' (skipped; counted in stats.skipped_records)"
    assert [r.getMessage() for r in caplog.records] == [want]


@pytest.mark.anyio
async def test_jsonl_defaults_and_own_loads(tmp_path: Path, read_path: str) -> None:
    """``loads`` replaces ``json.loads`` and sees each line without its CRLF ending; by default invalid UTF-8 is a
    malformed record (strict) and raises; ``errors="replace"`` hands the replaced text to the parser instead."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"ab\r\ncd\n")
    assert await read_jsonl(p, loads=str.upper).collect() == ["AB", "CD"]
    p.write_bytes(b'"\xff"\n')
    with pytest.raises(RecordError, match="invalid utf-8"):
        await read_jsonl(p).collect()
    stats = FileStats()
    assert await read_jsonl(p, errors="replace", stats=stats).collect() == ["\ufffd"]
    assert stats.decode_errors == 1 and stats.skipped_records == 0
    src = read_jsonl(p)
    assert (src.name, src.errors, src.on_error, src.max_line_bytes) == ("read_jsonl", "strict", "raise", 1 << 20)


# --- CSV -------------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_csv_error_texts_line_numbers_and_counters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A row with the wrong field count names the counts, the file, its line and its fields; a row the csv module
    rejects names its reason; blank rows are counted apart; under skip each bad row is counted and the first
    logged once."""
    p = tmp_path / "x.csv"
    p.write_text('a,b\n1,2\n\n3\n4,5,6\n"q"x,7\n8,9\n', encoding="utf-8")
    with pytest.raises(RecordError) as info:
        await read_csv(p, name="rows").collect()
    assert str(info.value) == f"rows: malformed CSV (1 fields, expected 2) at {p} line 4: '3'"
    assert info.value.line == 4
    stats = FileStats()
    with caplog.at_level(logging.WARNING, logger="talkpipe_async.sources.files"):
        got = await read_csv(p, on_error="skip", strict=True, stats=stats).collect()
    assert got == [{"a": "1", "b": "2"}, {"a": "8", "b": "9"}]
    assert (stats.skipped_records, stats.blank_lines, stats.lines, stats.files) == (3, 1, 2, 1)
    first = f"read_csv: malformed CSV (1 fields, expected 2) at {p} line 4: '3'"
    assert [r.getMessage() for r in caplog.records] == [f"{first} (skipped; counted in stats.skipped_records)"]
    with pytest.raises(RecordError) as info:
        await read_csv(p, strict=True, fieldnames=["a", "b"], header=False).collect()
    assert str(info.value).startswith(f"read_csv: malformed CSV (1 fields, expected 2) at {p} line 4")
    p.write_text('a,b\n1,"x"y\n', encoding="utf-8")
    with pytest.raises(RecordError) as info:
        await read_csv(p, strict=True).collect()
    assert str(info.value) == f"read_csv: malformed CSV (',' expected after '\"') at {p} line 2"
    assert info.value.line == 2


@pytest.mark.anyio
async def test_csv_headers_per_file_and_batches(tmp_path: Path) -> None:
    """Each file's first row names its fields; records come ``batch`` at a time (2048 by default) and are counted."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("x,y\n" + "".join(f"{i},{i}\n" for i in range(5000)), encoding="utf-8")
    b.write_text("y,x\n1,2\n", encoding="utf-8")
    src = read_csv([a, b])
    sizes = [len(batch) async for batch in src.batches()]
    assert sizes == [2048, 2048, 904, 1]
    assert src.stats.lines == 5001 and src.stats.files == 2
    got = await read_csv([a, b], batch=3).collect()
    assert got[0] == {"x": "0", "y": "0"} and got[-1] == {"y": "1", "x": "2"} and len(got) == 5001
    assert [len(batch) async for batch in read_csv(b, batch=1, header=False).batches()] == [1, 1]


@pytest.mark.anyio
async def test_csv_decoding_options(tmp_path: Path) -> None:
    """``encoding`` and ``errors`` reach the decoder: Latin-1 reads, ``replace`` replaces; by default (strict) an
    invalid byte raises, counted in ``decode_errors``, naming the stage and the file."""
    p = tmp_path / "x.csv"
    p.write_bytes(b"n\ncaf\xe9\n")
    assert await read_csv(p, encoding="latin-1").collect() == [{"n": "café"}]
    assert await read_csv(p, errors="replace").collect() == [{"n": "caf\ufffd"}]
    stats = FileStats()
    with pytest.raises(RecordError) as info:
        await read_csv(p, stats=stats).collect()
    assert str(info.value).startswith("read_csv: invalid utf-8 at ") and info.value.path == str(p)
    assert isinstance(info.value.__cause__, UnicodeDecodeError) and stats.decode_errors == 1
    src = read_csv(p)
    assert (src.name, src.header, src.errors, src.batch, src.on_error) == ("read_csv", True, "strict", 2048, "raise")


@pytest.mark.anyio
async def test_csv_keeps_line_ends_inside_quoted_fields(tmp_path: Path) -> None:
    """The file is read with ``newline=""`` as the csv module asks: a quoted field keeps its CRLF or lone CR, and
    CRLF row ends are not part of any field."""
    p = tmp_path / "x.csv"
    p.write_bytes(b'a,b\r\n1,"x\r\ny"\r\n2,"u\rv"\r\n')
    assert await read_csv(p).collect() == [{"a": "1", "b": "x\r\ny"}, {"a": "2", "b": "u\rv"}]


@pytest.mark.anyio
async def test_csv_invalid_bytes_on_the_first_line(tmp_path: Path) -> None:
    """An invalid byte in the first line is reported at line 1, naming the stage, the codec and the file, chained
    to the UnicodeDecodeError and counted; a wrong field count is chained to a ValueError saying so."""
    p = tmp_path / "x.csv"
    p.write_bytes(b"caf\xe9,x\n1,2\n")
    stats = FileStats()
    with pytest.raises(RecordError) as info:
        await read_csv(p, name="rows", stats=stats).collect()
    assert str(info.value) == f"rows: invalid utf-8 at {p} line 1"
    assert (info.value.line, info.value.path, stats.decode_errors) == (1, str(p), 1)
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    p.write_bytes(b"a,b\n1\n")
    with pytest.raises(RecordError) as info:
        await read_csv(p).collect()
    assert type(info.value.__cause__) is ValueError and str(info.value.__cause__) == "field count"


@pytest.mark.anyio
async def test_csv_invalid_bytes_name_their_own_line(tmp_path: Path) -> None:
    """Invalid UTF-8 in a CSV file raises naming the line that holds it, after the records before it."""
    p = tmp_path / "x.csv"
    p.write_bytes(b"a,b\n" + b"".join(b"%d,x\n" % i for i in range(500)) + b"bad,\xff\n1,2\n")
    got: list[Any] = []
    with pytest.raises(RecordError) as info:
        async with read_csv(p).stream() as items:
            async for record in items:
                got.append(record)
    assert info.value.line == 502
    assert len(got) == 500


# --- properties over any bytes and chunking (slower: last) ---------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=60), st.lists(st.integers(1, 12), max_size=30), st.integers(1, 12))
def test_splitter_delivers_every_line_once_over_any_chunking(parts: list[bytes], sizes: list[int], cap: int) -> None:
    """Whatever the chunking: each finished line comes out once, in order, as its bytes or as DROPPED when longer
    than the cap (inclusive: a line of exactly ``cap`` bytes is kept); ``dropped`` counts each long line once, even
    an unfinished one; the held partial line is what follows the last newline, and ``high_water`` is the longest
    partial line held after any chunk."""
    data = b"".join(parts)
    sp = Splitter(cap)
    out: list[Any] = []
    pos = 0
    cuts = []
    for size in [*sizes, len(data)]:
        chunk = data[pos : pos + size]
        if not chunk:
            break
        pos += len(chunk)
        cuts.append(pos)
        out += sp.split(chunk)
    raws = data.split(b"\n")
    tail = raws.pop()
    assert out == [DROPPED if len(r) > cap else r for r in raws]
    assert sp.dropped == sum(len(r) > cap for r in raws) + (len(tail) > cap)
    assert sp.dropping == (len(tail) > cap)
    assert sp.partial == (tail if len(tail) <= cap else b"")
    assert sp.high_water == reference_high_water(data, cuts, cap)


@pytest.mark.parametrize("kind", ["inline", "threads"])
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
def test_read_lines_matches_the_reference_over_any_bytes(
    tmp_path_factory: pytest.TempPathFactory, kind: str, anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the bytes, chunk size, cap and ``strip_cr``: the lines, in order, are those of a plain split (long
    lines left out, one trailing ``\\r`` stripped, invalid bytes replaced), and every counter is exact: lines, bytes,
    files, dropped_long, decode_errors, buffer_high_water (the longest partial line held after a read)."""
    if kind == "threads":
        monkeypatch.setattr(line_file, "NOWAIT", False)
    elif not line_file.NOWAIT:
        pytest.skip("no RWF_NOWAIT reads on this platform")
    folder = tmp_path_factory.mktemp("ref")

    @settings(max_examples=120, deadline=None)
    @given(st.lists(PIECES, max_size=80), st.integers(1, 40), st.integers(3, 30), st.booleans())
    def check(parts: list[bytes], chunk_size: int, cap: int, strip_cr: bool) -> None:
        data = b"".join(parts)
        path = folder / "f.txt"
        path.write_bytes(data)
        options = {"chunk_size": chunk_size, "max_line_bytes": cap, "strip_cr": strip_cr}
        lines, stats = anyio.run(partial(_read, path, **options))
        want, dropped, bad = reference_lines(data, cap, strip_cr)
        assert lines == want
        cuts = [*range(chunk_size, len(data), chunk_size), len(data)]
        assert (stats.lines, stats.bytes, stats.files) == (len(want), len(data), 1)
        assert (stats.dropped_long, stats.decode_errors) == (dropped, bad)
        assert stats.buffer_high_water == reference_high_water(data, cuts, cap)

    check()


@pytest.mark.parametrize("kind", ["inline", "threads"])
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
def test_strict_decoding_names_the_exact_line_over_any_chunking(
    tmp_path_factory: pytest.TempPathFactory, kind: str, anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``errors="strict"`` the error names the 1-based line of the invalid byte, counting dropped over-long and
    blank lines, and every line before it has been delivered once, whatever the chunk size."""
    if kind == "threads":
        monkeypatch.setattr(line_file, "NOWAIT", False)
    elif not line_file.NOWAIT:
        pytest.skip("no RWF_NOWAIT reads on this platform")
    folder = tmp_path_factory.mktemp("strict")
    good = st.sampled_from([b"", b"ok", b"caf\xc3\xa9", b"y" * 12, b"z\r"])

    async def read(path: Path, chunk_size: int) -> tuple[list[str], RecordError]:
        got: list[str] = []
        try:
            async with read_lines(path, errors="strict", max_line_bytes=8, chunk_size=chunk_size).stream() as items:
                async for line in items:
                    got.append(line)
        except RecordError as exc:
            return got, exc
        raise AssertionError("no error")

    @settings(max_examples=80, deadline=None)
    @given(st.lists(good, max_size=30), st.integers(1, 50), st.booleans())
    def check(before: list[bytes], chunk_size: int, terminated: bool) -> None:
        path = folder / "f.txt"
        path.write_bytes(b"".join(line + b"\n" for line in before) + b"bad\xff" + (b"\n" if terminated else b""))
        got, err = anyio.run(read, path, chunk_size)
        assert err.line == len(before) + 1
        assert str(err) == f"read_lines: invalid utf-8 (invalid start byte) at {path} line {len(before) + 1}"
        want = [b.decode().removesuffix("\r") for b in before if len(b) <= 8]
        assert got == want[: len(got)]  # in order, once each (see test_items_before_an_error_...)

    check()


@pytest.mark.parametrize("kind", ["inline", "threads"])
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
def test_jsonl_error_line_numbers_over_any_chunking(
    tmp_path_factory: pytest.TempPathFactory, kind: str, anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipped records are counted exactly (malformed JSON, invalid UTF-8), blank lines apart, and under
    ``on_error="raise"`` the error names the first bad record's 1-based line, counting blank and dropped lines,
    whatever the chunk size."""
    if kind == "threads":
        monkeypatch.setattr(line_file, "NOWAIT", False)
    elif not line_file.NOWAIT:
        pytest.skip("no RWF_NOWAIT reads on this platform")
    folder = tmp_path_factory.mktemp("jsonl")
    lines = st.sampled_from([b"1", b'{"a": 2}', b"", b"  ", b"[3]\r", b"nope", b"\xff", b'"' + b"l" * 20 + b'"'])

    async def read(path: Path, **options: Any) -> tuple[list[Any], FileStats, RecordError | None]:
        stats = FileStats()
        got: list[Any] = []
        try:
            async with read_jsonl(path, stats=stats, max_line_bytes=12, **options).stream() as items:
                async for record in items:
                    got.append(record)
        except RecordError as exc:
            return got, stats, exc
        return got, stats, None

    @settings(max_examples=80, deadline=None)
    @given(st.lists(lines, max_size=25), st.integers(1, 30))
    def check(body: list[bytes], chunk_size: int) -> None:
        path = folder / "f.jsonl"
        path.write_bytes(b"\n".join(body))
        good = {b"1": 1, b'{"a": 2}': {"a": 2}, b"[3]\r": [3]}
        blank = sum(1 for b in body if b.strip() == b"")
        if body and body[-1] == b"":
            blank -= 1  # the file ends with a newline: no last line there
        skipped = [i + 1 for i, b in enumerate(body) if b in (b"nope", b"\xff")]
        want = [good[b] for b in body if b in good]
        got, stats, err = anyio.run(partial(read, path, on_error="skip", chunk_size=chunk_size))
        assert err is None and got == want
        assert stats.skipped_records == len(skipped) and stats.blank_lines == blank
        assert stats.dropped_long == sum(len(b) > 12 for b in body) and stats.lines == len(want)
        got, stats, err = anyio.run(partial(read, path, chunk_size=chunk_size))
        if skipped:
            assert err is not None and err.line == skipped[0]
            before = [good[b] for b in body[: skipped[0] - 1] if b in good]
            assert got == before[: len(got)]
        else:
            assert err is None and got == want

    check()
