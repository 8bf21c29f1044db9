"""File sources on real files: lines, chunks, JSON Lines, CSV; caps, decoding and error policies."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from talkpipe_async._core import _batch_items as _items
from talkpipe_async.sources import FileStats, RecordError, read_chunks, read_csv, read_jsonl, read_lines
from talkpipe_async.sources import _line_file as line_file
from talkpipe_async.sources.files import DROPPED, Splitter

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True, params=["inline", "threads"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test twice: reads from the page cache in the loop (C item step), and worker-thread reads
    (pure-Python item step), so both code paths see every case."""
    if request.param == "threads":
        monkeypatch.setattr(line_file, "NOWAIT", False)
        monkeypatch.setattr(_items, "SPEEDUPS", False)
    elif not line_file.NOWAIT:
        pytest.skip("no RWF_NOWAIT reads on this platform")
    yield request.param


def open_fds() -> int:
    """How many file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


async def test_lines_of_one_file(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"one\ntwo\r\nthree")
    stats = FileStats()
    assert await read_lines(p, stats=stats).collect() == ["one", "two", "three"]
    assert stats.lines == 3 and stats.files == 1 and stats.bytes == 14


async def test_lines_of_a_glob_in_order_and_of_a_list(tmp_path: Path) -> None:
    for name, body in [("b.log", b"b1\nb2\n"), ("a.log", b"a1\n"), ("c.txt", b"no\n")]:
        (tmp_path / name).write_bytes(body)
    assert await read_lines(str(tmp_path / "*.log")).collect() == ["a1", "b1", "b2"]
    assert await read_lines([tmp_path / "c.txt", tmp_path / "a.log"]).collect() == ["no", "a1"]


async def test_empty_glob_yields_nothing_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert await read_lines(str(tmp_path / "*.none")).collect() == []
    assert "matched no files" in caplog.text


async def test_missing_literal_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await read_lines(tmp_path / "nope.txt").collect()


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 1 << 18])
async def test_lines_split_across_chunks(tmp_path: Path, chunk_size: int) -> None:
    lines = [f"line {i} " + "é" * (i % 5) for i in range(200)]
    p = tmp_path / "x.txt"
    p.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8", newline="")
    assert await read_lines(p, chunk_size=chunk_size).collect() == lines


async def test_crlf_kept_when_asked(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes(b"a\r\nb\n")
    assert await read_lines(p, strip_cr=False).collect() == ["a\r", "b"]


async def test_invalid_utf8_replaced_and_counted(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes(b"ok\nbad\xff\nok2\n")
    stats = FileStats()
    assert await read_lines(p, stats=stats).collect() == ["ok", "bad\ufffd", "ok2"]
    assert stats.decode_errors == 1


async def test_invalid_utf8_strict_names_stage_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes(b"ok\nok\nbad\xff\n")
    with pytest.raises(RecordError) as info:
        await read_lines(p, errors="strict", name="logs").collect()
    assert info.value.line == 3 and info.value.path == str(p) and info.value.stage == "logs"
    assert "logs: invalid utf-8" in str(info.value)


async def test_over_long_lines_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes(b"short\n" + b"x" * 50 + b"\nmid\n" + b"y" * 30 + b"\nend")
    stats = FileStats()
    with caplog.at_level(logging.WARNING):
        got = await read_lines(p, max_line_bytes=10, chunk_size=4, stats=stats).collect()
    assert got == ["short", "mid", "end"]
    assert stats.dropped_long == 2
    assert stats.buffer_high_water <= 10
    assert "dropped a line longer than 10 bytes" in caplog.text


async def test_over_long_line_inside_one_big_chunk(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes(b"a\n" + b"x" * 50 + b"\nb\n")
    stats = FileStats()
    assert await read_lines(p, max_line_bytes=10, stats=stats).collect() == ["a", "b"]
    assert stats.dropped_long == 1


async def test_no_newline_for_megabytes_keeps_memory_bounded(tmp_path: Path) -> None:
    """A "1 GB without a newline" input, scaled down: the held line never exceeds the cap."""
    p = tmp_path / "x.txt"
    with open(p, "wb") as f:
        f.write(b"first\n")
        for _ in range(16):
            f.write(b"z" * (1 << 20))
        f.write(b"\nafter\n")
    stats = FileStats()
    got = await read_lines(p, max_line_bytes=1 << 16, chunk_size=1 << 16, stats=stats).collect()
    assert got == ["first", "after"]
    assert stats.dropped_long == 1
    assert stats.buffer_high_water <= 1 << 16


def test_splitter_unit() -> None:
    sp = Splitter(4)
    assert sp.split(b"ab") == []
    assert sp.split(b"c\nde") == [b"abc"]
    assert sp.split(b"fgh") == []  # "defgh" is over the cap: now skipping
    assert sp.dropping and sp.buf == b""
    assert sp.split(b"ij\nk\n") == [DROPPED, b"k"]
    assert sp.dropped == 1 and sp.high_water <= 4


async def test_chunks(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(bytes(range(256)) * 10)
    chunks = await read_chunks(p, chunk_size=1000).collect()
    assert [len(c) for c in chunks] == [1000, 1000, 560]
    assert b"".join(chunks) == p.read_bytes()


async def test_jsonl_records_blank_lines_and_unicode_separators(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n  \n{"s": "x\u2028y"}\r\n[1, 2]\n', encoding="utf-8")
    stats = FileStats()
    assert await read_jsonl(p, stats=stats).collect() == [{"a": 1}, {"s": "x\u2028y"}, [1, 2]]
    assert stats.blank_lines == 2


async def test_jsonl_malformed_raises_with_line_number(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": \n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(RecordError) as info:
        await read_jsonl(p).collect()
    err = info.value
    assert err.line == 2 and err.stage == "read_jsonl" and "malformed JSON" in str(err)


async def test_jsonl_skip_policy_counts(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\nnot json\n{"b": \xff}\n' + b'"' + b"x" * 40 + b'"\n{"a": 2}\n')
    stats = FileStats()
    got = await read_jsonl(p, on_error="skip", max_line_bytes=32, stats=stats).collect()
    assert got == [{"a": 1}, {"a": 2}]
    assert stats.skipped_records == 2  # bad JSON, invalid UTF-8
    assert stats.dropped_long == 1
    assert stats.decode_errors == 1


async def test_jsonl_line_numbers_survive_dropped_lines(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"1\n" + b"9" * 50 + b"\n2\n{bad\n")
    with pytest.raises(RecordError) as info:
        await read_jsonl(p, max_line_bytes=10, chunk_size=5).collect()
    assert info.value.line == 4


async def test_csv_with_header_quoted_newlines(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text('name,note\nann,"two\nlines"\nbob,plain\n', encoding="utf-8", newline="")
    assert await read_csv(p).collect() == [
        {"name": "ann", "note": "two\nlines"},
        {"name": "bob", "note": "plain"},
    ]


async def test_csv_lists_and_fieldnames_and_glob(tmp_path: Path) -> None:
    (tmp_path / "1.csv").write_text("a;b\n", encoding="utf-8")
    (tmp_path / "2.csv").write_text("c;d\n", encoding="utf-8")
    pattern = str(tmp_path / "*.csv")
    assert await read_csv(pattern, header=False, delimiter=";").collect() == [["a", "b"], ["c", "d"]]
    got = await read_csv(pattern, fieldnames=["x", "y"], delimiter=";", batch=1).collect()
    assert got == [{"x": "a", "y": "b"}, {"x": "c", "y": "d"}]


async def test_csv_malformed_raise_and_skip(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n3\n4,5\n", encoding="utf-8")
    with pytest.raises(RecordError) as info:
        await read_csv(p).collect()
    assert info.value.line == 3 and "malformed CSV" in str(info.value)
    stats = FileStats()
    assert await read_csv(p, on_error="skip", stats=stats).collect() == [{"a": "1", "b": "2"}, {"a": "4", "b": "5"}]
    assert stats.skipped_records == 1


async def test_csv_rejected_by_the_csv_module_goes_to_the_policy(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text('a,b\n1,"x"y\n2,3\n', encoding="utf-8")
    stats = FileStats()
    got = await read_csv(p, on_error="skip", strict=True, stats=stats).collect()
    assert got == [{"a": "2", "b": "3"}]
    assert stats.skipped_records == 1


async def test_early_exit_closes_the_file(tmp_path: Path) -> None:
    fds = open_fds()
    p = tmp_path / "x.txt"
    p.write_bytes(b"".join(b"%d\n" % i for i in range(100_000)))
    async with read_lines(p).stream() as items:
        async for line in items:
            if line == "10":
                break
    async with read_csv(p, header=False).stream() as items:
        async for _ in items:
            break
    assert open_fds() <= fds, "file descriptors leaked"


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="ASCII-compatible"):
        read_lines("x", encoding="utf-16")
    with pytest.raises(ValueError, match="on_error"):
        read_jsonl("x", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="error policy"):
        read_lines("x", errors="nonsense")


def _evict(path: Path) -> None:
    """Drop *path* from the page cache (written back first): its pages are then read from the disk again."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class _ReadSpy:
    """Counts the reads of the file sources without changing them: in-loop ``RWF_NOWAIT`` reads and thread hops."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.nowait: list[int] = []  # per in-loop read: bytes read, or -1 for "not in the page cache"
        self.hops = 0  # worker-thread reads of the file's remaining chunks
        self.miss_at: int | None = None  # report this offset as not cached (a page-cache miss, on demand)
        real_preadv, real_run_sync = os.preadv, anyio.to_thread.run_sync

        def preadv(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
            if not flags & os.RWF_NOWAIT:
                return real_preadv(fd, buffers, offset, flags)
            if offset == self.miss_at:
                self.nowait.append(-1)
                raise BlockingIOError(11, "Resource temporarily unavailable")
            try:
                n = real_preadv(fd, buffers, offset, flags)
            except BlockingIOError:
                self.nowait.append(-1)
                raise
            self.nowait.append(n)
            return n

        async def run_sync(func: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(func, "__qualname__", "").rsplit(".", 1)[-1] == "hop":  # the reading step of file_batches
                self.hops += 1
            return await real_run_sync(func, *args, **kwargs)

        monkeypatch.setattr(os, "preadv", preadv)
        monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)


async def test_cached_file_is_read_in_the_loop_without_thread_hops(tmp_path: Path, read_path: str) -> None:
    p = tmp_path / "x.txt"
    lines = [f"{i:06d} é" for i in range(50_000)]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stats = FileStats()
    assert await read_lines(p, stats=stats).collect() == lines
    if read_path == "inline":
        assert stats.cached_reads == -(-stats.bytes // line_file.INLINE_CHUNK) + 1  # and the read at the end
    else:
        assert stats.cached_reads == 0


async def test_evicted_file_switches_to_threads_at_the_first_miss(
    tmp_path: Path, read_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real file dropped from the page cache: chunks are read in the loop only while the cache holds them; from the
    first miss on, the rest of the file is read in worker threads, complete and in order.

    How many leading chunks the cache still holds depends on the kernel (a non-blocking read that misses starts
    read-ahead, which a fast disk may finish before the read returns), so the test checks that the path taken is
    consistent, whatever it was; the next test forces the miss.
    """
    p = tmp_path / "cold.jsonl"
    data = b"".join(b'{"n": %d}\n' % i for i in range(20_000))
    p.write_bytes(data)
    _evict(p)
    spy = _ReadSpy(monkeypatch)
    stats = FileStats()
    records = await read_jsonl(p, stats=stats).collect()
    assert [r["n"] for r in records] == list(range(20_000))
    assert stats.bytes == len(data)
    if read_path == "threads":
        assert spy.nowait == [] and stats.cached_reads == 0 and spy.hops >= 1
        return
    hits = [n for n in spy.nowait if n >= 0]
    assert stats.cached_reads == len(hits)
    if spy.nowait[-1] == -1:  # a miss: it was the last in-loop read, and threads read the rest
        assert spy.nowait.count(-1) == 1 and spy.hops >= 1
        assert sum(hits) < len(data)
    else:  # the cache held all of it (or the read-ahead won every race): no thread hop at all
        assert spy.hops == 0 and sum(hits) == len(data)


async def test_uncached_chunk_sends_the_rest_of_the_file_to_worker_threads(
    tmp_path: Path, read_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel reports the second chunk as not cached: the first was read in the loop, the rest in threads."""
    p = tmp_path / "cold.jsonl"
    data = b"".join(b'{"n": %d}\n' % i for i in range(20_000))
    p.write_bytes(data)
    spy = _ReadSpy(monkeypatch)
    spy.miss_at = line_file.INLINE_CHUNK
    stats = FileStats()
    records = await read_jsonl(p, stats=stats).collect()
    assert [r["n"] for r in records] == list(range(20_000))
    assert stats.bytes == len(data)
    if read_path == "threads":
        assert spy.nowait == [] and stats.cached_reads == 0
    else:
        assert spy.nowait == [line_file.INLINE_CHUNK, -1] and stats.cached_reads == 1
    assert spy.hops >= 1


async def test_fifo_is_read_in_worker_threads(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(b"".join(b"%d\n" % i for i in range(10_000)))

    stats = FileStats()
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, write)
        got = await read_lines(fifo, stats=stats).collect()
    assert got == [str(i) for i in range(10_000)]
    assert stats.cached_reads == 0


async def test_reading_in_the_loop_lets_other_tasks_run(tmp_path: Path) -> None:
    p = tmp_path / "big.txt"
    p.write_bytes(b"".join(b"%08d the quick brown fox\n" % i for i in range(400_000)))  # about 13 MB
    turns = 0
    done = anyio.Event()

    async def other_task() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await anyio.lowlevel.checkpoint()

    stats = FileStats()
    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        await anyio.lowlevel.checkpoint()
        start = turns
        n = 0
        async with read_lines(p, stats=stats).stream() as items:
            async for _ in items:
                n += 1
        during = turns - start
        done.set()
    assert n == 400_000
    # Reading 13 MB takes tens of milliseconds; the loop gets a turn at least every INLINE_SLICE.
    assert during >= 3, f"the other task ran {during} times while the file was read"


async def test_errors_from_the_batch_step_name_the_source(tmp_path: Path) -> None:
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok\n\xff\n")
    with pytest.raises(RecordError) as info:
        async with read_lines(p, errors="strict", name="logs").stream() as items:
            async for _ in items:
                pass
    assert "logs" in "\n".join(getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
def test_inline_and_thread_reads_agree_on_any_bytes(
    tmp_path_factory: pytest.TempPathFactory, read_path: str, anyio_backend: Any
) -> None:
    """Whatever the bytes, chunk size and cap: reading from the page cache and in threads give the same lines
    and the same counters (the reference is the thread path, checked against a plain split above)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    if read_path != "inline":
        pytest.skip("compares the two paths itself")
    folder = tmp_path_factory.mktemp("agree")
    pieces = st.sampled_from([b"a", b"bc", b"\n", b"\r\n", "é".encode(), "€".encode()[:2], b"\xff", b"x" * 20])

    async def read(path: Path, nowait: bool, **options: Any) -> tuple[list[str], dict[str, int]]:
        saved, line_file.NOWAIT = line_file.NOWAIT, nowait
        try:
            stats = FileStats()
            lines = await read_lines(path, stats=stats, **options).collect()
        finally:
            line_file.NOWAIT = saved
        counters = stats.as_dict()
        counters.pop("cached_reads")
        return lines, counters

    @settings(max_examples=150, deadline=None)
    @given(st.lists(pieces, max_size=80), st.integers(1, 40), st.integers(3, 30), st.booleans())
    def check(parts: list[bytes], chunk_size: int, cap: int, strip_cr: bool) -> None:
        path = folder / "f.txt"
        path.write_bytes(b"".join(parts))
        options = {"chunk_size": chunk_size, "max_line_bytes": cap, "strip_cr": strip_cr}
        inline = anyio.run(partial(read, path, True, **options))
        threads = anyio.run(partial(read, path, False, **options))
        assert inline == threads

    check()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "data",
    [
        b"a,b\r\n1,2\r\n3,4\r\n",
        b"a,b\r1,2\r3,4\r",
        b'a,b\n1,"x\ny"\n3,4',
        b'a,b\r1,"x\r\ny"\r5,6\n7,8',
        b"a,b\n1,2\r",
    ],
    ids=["crlf", "lone-cr", "quoted-lf", "mixed", "cr-at-end"],
)
async def test_csv_lines_split_as_text_with_newline_empty_would(tmp_path: Path, data: bytes) -> None:
    """CSV lines split as bytes give the records :mod:`csv` reads from ``newline=""`` text: CRLF, a lone CR,
    line ends inside quoted fields, mixed endings, a CR at the very end."""
    import csv
    import io

    p = tmp_path / "x.csv"
    p.write_bytes(data)
    expected = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
    assert await read_csv(p).collect() == expected


@pytest.mark.anyio
async def test_csv_in_utf16_is_read_and_its_invalid_bytes_raise(tmp_path: Path) -> None:
    """An encoding whose line end is not the byte ``\\n`` is read too (decoded ahead in blocks); an invalid byte
    in it raises a RecordError with the file."""
    p = tmp_path / "x.csv"
    p.write_bytes("a,b\n1,é\n".encode("utf-16"))
    assert await read_csv(p, encoding="utf-16").collect() == [{"a": "1", "b": "é"}]
    p.write_bytes("a,b\n1,2\n".encode("utf-16") + b"\x00\xd8")  # an unpaired surrogate
    with pytest.raises(RecordError) as info:
        await read_csv(p, encoding="utf-16").collect()
    assert info.value.path == str(p) and "invalid utf-16" in str(info.value)
