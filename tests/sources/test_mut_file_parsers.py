"""The record parsers and file sources of ``talkpipe_async.sources.files``, at their edges: CSV lines split exactly
as ``newline=""`` text is (a lone CR anywhere, the file's last line), the line numbers of invalid bytes, blank rows
and bad rows counted one by one with their exact texts, the decoding options of encodings read in blocks (UTF-16),
what is counted and closed when a CSV file raises, and raw chunks of a FIFO handed out as they arrive.

Real files in ``tmp_path``; ``tests/sources/test_mut_files.py`` and ``tests/sources/test_files.py`` hold the rest.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async.sources import FileStats, RecordError, read_chunks, read_csv
from tests.conftest import open_fds

pytestmark = pytest.mark.anyio

#: Pieces of CSV text: fields, separators, every line end and a quote (so that quoted fields span lines).
CSV_PIECES = st.sampled_from(["a", "1", "é", ",", ",", "\r", "\n", "\n", "\r\n", '"'])


def csv_rows(text: str) -> list[list[str]] | type[csv.Error]:
    """What :mod:`csv` reads from *text* opened with ``newline=""`` (the rows, or ``csv.Error`` if it rejects it)."""
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:
        return csv.Error


def newline_empty_lines(text: str) -> int:
    """How many lines *text* holds read as ``newline=""`` text (ends at ``\\n``, ``\\r\\n`` and a lone ``\\r``)."""
    return len(io.StringIO(text, newline="").readlines())


async def _rows(path: Path, **options: Any) -> list[Any] | type[csv.Error]:
    try:
        return await read_csv(path, header=False, **options).collect()
    except RecordError as exc:
        assert exc.reason.startswith("malformed CSV (")
        return csv.Error


# --- CSV lines -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"a\n1\r2", b"a\r\n1\r2", b"a\r1\r2", b"a\n\r1\n", b"a\n1\r2\n", b"a\r\r\n1\r\r"],
    ids=["cr-before-last-char", "after-crlf", "cr-only", "cr-line-first", "cr-one-before-end", "cr-cr"],
)
async def test_csv_lone_cr_lines_split_as_text_with_newline_empty_would(tmp_path: Path, data: bytes) -> None:
    """A lone CR ends a line wherever it is: also one character before the end of the file's last line (the last
    record is then a one-character row, not part of the row before it) and at the start of a line."""
    p = tmp_path / "x.csv"
    p.write_bytes(data)
    expected = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
    assert await read_csv(p).collect() == expected


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
def test_csv_rows_match_the_csv_module_over_any_text(
    tmp_path_factory: pytest.TempPathFactory, anyio_backend: Any
) -> None:
    """Whatever the mix of fields, quotes and line ends (CRLF, lone CR, LF, inside or outside quoted fields, the last
    line terminated or not): ``read_csv(header=False)`` gives the rows :mod:`csv` reads from the file opened as
    ``newline=""`` text, or raises where it raises; and an invalid byte after them is reported at the line :mod:`csv`
    would count for it (every CR, LF and CRLF ending a line)."""
    folder = tmp_path_factory.mktemp("csv")

    @settings(max_examples=150, deadline=None)
    @given(st.lists(CSV_PIECES, max_size=40))
    def check(pieces: list[str]) -> None:
        text = "".join(pieces)
        path = folder / "f.csv"
        path.write_bytes(text.encode())
        assert anyio.run(_rows, path) == csv_rows(text)
        # an invalid byte on the line after them: its number counts every line csv reads before it
        clean = text.replace('"', "")
        path.write_bytes(clean.encode() + b"x,\xff\nz\n")
        with pytest.raises(RecordError) as info:
            anyio.run(partial(read_csv(path, header=False).collect))
        assert info.value.line == newline_empty_lines(clean + "x,?")  # the line the bad byte is on
        assert info.value.reason == "invalid utf-8"

    check()


async def test_csv_invalid_bytes_after_lone_cr_lines_name_their_own_line(tmp_path: Path) -> None:
    """Lines ended by a lone CR count one each, in every physical line that holds them, for the line number of an
    invalid byte further on."""
    p = tmp_path / "x.csv"
    p.write_bytes(b"a,b\r1,2\n3,4\r5,6\n7,\xff\n")
    got: list[Any] = []
    with pytest.raises(RecordError) as info:
        async with read_csv(p).stream() as records:
            async for record in records:
                got.append(record)
    assert info.value.line == 5
    assert got == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}, {"a": "5", "b": "6"}]


async def test_csv_invalid_bytes_in_a_file_of_lone_cr_line_ends_name_their_own_line(tmp_path: Path) -> None:
    """In a file whose lines end with a lone CR (no LF anywhere), an invalid byte is reported at its own line, after
    the records of the lines before it."""
    p = tmp_path / "x.csv"
    p.write_bytes(b"a,b\r1,2\r3,4\r5,\xff\r7,8\r")
    got: list[Any] = []
    with pytest.raises(RecordError) as info:
        async with read_csv(p).stream() as records:
            async for record in records:
                got.append(record)
    assert info.value.line == 4
    assert got == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    p.write_bytes(b"a\r\xff\n")  # the bad byte starts the line after a lone CR
    with pytest.raises(RecordError) as info:
        await read_csv(p).collect()
    assert info.value.line == 2


# --- CSV rows, counters and texts --------------------------------------------------------------------------------


async def test_csv_counts_every_blank_row_and_names_a_bad_rows_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each blank row is counted in ``blank_lines`` (not only the first), and a row with the wrong field count is
    named by its fields joined with commas, as they were read."""
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n\n\n4,5,6\n\n7,8\n", encoding="utf-8")
    stats = FileStats()
    with caplog.at_level(logging.WARNING, logger="talkpipe_async.sources.files"):
        got = await read_csv(p, on_error="skip", stats=stats).collect()
    assert got == [{"a": "1", "b": "2"}, {"a": "7", "b": "8"}]
    assert (stats.blank_lines, stats.skipped_records, stats.lines) == (3, 1, 2)
    want = f"read_csv: malformed CSV (3 fields, expected 2) at {p} line 5: '4,5,6'"
    assert [r.getMessage() for r in caplog.records] == [f"{want} (skipped; counted in stats.skipped_records)"]
    with pytest.raises(RecordError) as info:
        await read_csv(p).collect()
    assert str(info.value) == want


async def test_csv_error_counts_the_records_handed_out_and_closes_the_file(tmp_path: Path) -> None:
    """When a CSV file raises, ``stats.lines`` counts every record handed out before the error (those of earlier
    batches and those of the last, cut one), and the file is closed by then, not left to the garbage collector."""
    p = tmp_path / "x.csv"
    p.write_bytes(b"n\n" + b"".join(b"%d\n" % i for i in range(7)) + b"\xff\n8\n")
    before = open_fds()
    stats = FileStats()
    got: list[Any] = []
    with pytest.raises(RecordError) as info:
        async with read_csv(p, batch=3, stats=stats).stream() as records:
            async for record in records:
                got.append(record)
    assert info.value.line == 9  # the error (and its traceback) is still held here
    assert got == [{"n": str(i)} for i in range(7)]
    assert stats.lines == 7 and stats.files == 1
    assert open_fds() <= before, "the CSV file is still open"


async def test_csv_errors_are_chained_to_their_cause_and_counted_in_shared_stats(tmp_path: Path) -> None:
    """A row the csv module rejects raises chained to its ``csv.Error``; invalid bytes add to ``decode_errors`` of a
    ``FileStats`` shared by several runs, like every other counter."""
    p = tmp_path / "x.csv"
    p.write_text('a,b\n1,"x"y\n', encoding="utf-8")
    with pytest.raises(RecordError) as info:
        await read_csv(p, strict=True).collect()
    assert type(info.value.__cause__) is csv.Error
    p.write_bytes(b"a\n\xff\n")
    stats = FileStats()
    for _ in range(2):
        with pytest.raises(RecordError):
            await read_csv(p, stats=stats).collect()
    assert (stats.decode_errors, stats.files) == (2, 2)


# --- CSV in an encoding read in blocks (UTF-16) ------------------------------------------------------------------


async def test_csv_in_utf16_keeps_line_ends_inside_quoted_fields(tmp_path: Path) -> None:
    """An encoding whose line end is not the byte ``\\n`` is also read as ``newline=""`` text: a quoted field keeps
    its CRLF or lone CR."""
    p = tmp_path / "x.csv"
    p.write_bytes('a,b\r\n1,"x\r\ny"\r\n2,"u\rv"\r\n'.encode("utf-16"))
    assert await read_csv(p, encoding="utf-16").collect() == [{"a": "1", "b": "x\r\ny"}, {"a": "2", "b": "u\rv"}]


async def test_csv_in_utf16_decoding_errors(tmp_path: Path) -> None:
    """In UTF-16, ``errors="replace"`` replaces an invalid sequence; by default (strict) it raises after the rows
    before it, at the line after them, naming the stage, the codec and the file, chained to the
    UnicodeDecodeError and counted in ``decode_errors``."""
    p = tmp_path / "x.csv"
    p.write_bytes("a\n1\n".encode("utf-16") + b"\x00\xd8")  # ends inside a surrogate pair
    assert await read_csv(p, encoding="utf-16", errors="replace").collect() == [{"a": "1"}, {"a": "\ufffd"}]
    stats = FileStats()
    got: list[Any] = []
    with pytest.raises(RecordError) as info:
        async with read_csv(p, encoding="utf-16", name="rows", stats=stats).stream() as records:
            async for record in records:
                got.append(record)
    assert got == [{"a": "1"}]
    assert str(info.value) == f"rows: invalid utf-16 at {p} line 3" and info.value.line == 3
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    assert (stats.decode_errors, stats.lines) == (1, 1)


# --- raw chunks ------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
async def test_read_chunks_hands_out_a_fifos_bytes_as_they_arrive(tmp_path: Path) -> None:
    """A FIFO (or any stream) is read without a buffer: the bytes written so far come out as a chunk while the
    writer still holds the FIFO open, not once ``chunk_size`` bytes have come or the writer has closed it."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    seen = threading.Event()
    waited: list[bool] = []

    def writer() -> None:
        with open(fifo, "wb", buffering=0) as w:
            w.write(b"abc")
            waited.append(seen.wait(10))  # the reader sees the three bytes while the FIFO is still open
            w.write(b"de")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    got: list[bytes] = []
    async with read_chunks(fifo).stream() as chunks:
        async for chunk in chunks:
            got.append(chunk)
            seen.set()
    await anyio.to_thread.run_sync(partial(thread.join, 10))
    assert waited == [True]
    assert got == [b"abc", b"de"]
