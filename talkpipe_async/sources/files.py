"""File sources: lines, chunks, JSON Lines and CSV records of a file or a glob of files.

Blocking file I/O goes through ``anyio.to_thread.run_sync`` on plain
(unbuffered) file objects, so these sources work the same on asyncio, uvloop
and trio.  (aiofiles is not used: it is asyncio-only and hops a thread per
call.)  Where the OS can say so (Linux: ``preadv`` with ``RWF_NOWAIT``), the
line readers first read a regular file straight from the page cache in the
event loop, one ``chunk_size`` at a time, since such a read cannot block; at
the first chunk that is not cached they switch to worker threads for the rest
of the file.

Each thread hop reads about 1 MiB in ``chunk_size`` reads (128 KiB by
default) and splits it into lines in Python (``bytes.split`` /
``str.split``), decodes it and, for JSON Lines, parses the records.  The
lines reach the consumer through :func:`~talkpipe_async._core._batch_items.batch_items`
(a C step per item when the extension is built).  The line being assembled across chunks is capped at
``max_line_bytes``: a longer line is dropped up to its next newline and
counted, so memory stays bounded whatever the input (even gigabytes without a
newline).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import aclosing
from functools import partial
from typing import Any, BinaryIO, Generic, Literal, TypeVar, overload

import anyio
import anyio.to_thread

from .._core._batch_items import BatchSource
from ._file_batches import INLINE_SLICE as INLINE_SLICE
from ._file_batches import READ_AHEAD as READ_AHEAD
from ._file_batches import BatchCut
from ._file_batches import expand_paths as expand_paths
from ._file_batches import file_batches as file_batches
from ._file_batches import read_ahead as read_ahead
from ._file_lines import DEFAULT_CHUNK as DEFAULT_CHUNK
from ._file_lines import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from ._file_lines import DROPPED as DROPPED
from ._file_lines import BadLine as BadLine
from ._file_lines import FileStats as FileStats
from ._file_lines import LineDecoder as LineDecoder
from ._file_lines import RecordError as RecordError
from ._file_lines import Splitter as Splitter
from ._file_lines import check_encoding as check_encoding
from ._file_lines import check_errors as check_errors
from ._item_types import Item
from ._line_file import LineFile

__all__ = [
    "FileStats",
    "RecordError",
    "read_chunks",
    "read_csv",
    "read_jsonl",
    "read_lines",
]

T = TypeVar("T")
log = logging.getLogger("talkpipe_async.sources.files")

OnError = Literal["raise", "skip"]


def _open_binary(path: str) -> BinaryIO:
    return open(path, "rb", buffering=0)


class _FileSource(BatchSource[T], Generic[T]):
    """Shared options of the file sources."""

    def __init__(
        self,
        paths: Any,
        *,
        chunk_size: int,
        name: str | None,
        stats: FileStats | None,
    ) -> None:
        super().__init__(emits_metadata=False)
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.paths = paths
        self.chunk_size = chunk_size
        self.name = name or type(self).__name__
        self.stats = stats if stats is not None else FileStats()

    async def _files(self) -> AsyncIterator[tuple[str, BinaryIO]]:
        for path in await expand_paths(self.paths):
            f = await anyio.to_thread.run_sync(_open_binary, path)
            self.stats.files += 1
            try:
                yield path, f
            finally:
                f.close()


class _LineSource(_FileSource[T]):
    def __init__(
        self,
        paths: Any,
        *,
        encoding: str,
        errors: str,
        max_line_bytes: int,
        chunk_size: int,
        strip_cr: bool,
        name: str | None,
        stats: FileStats | None,
    ) -> None:
        super().__init__(paths, chunk_size=chunk_size, name=name, stats=stats)
        self.encoding = check_encoding(encoding)
        self.errors = check_errors(errors)
        self.max_line_bytes = max_line_bytes
        self.strip_cr = strip_cr
        Splitter(max_line_bytes)  # validates

    def _reader(self, path: str, f: BinaryIO, mark_bad: bool = False) -> LineFile:
        return LineFile(
            self.label,
            path,
            f,
            chunk_size=self.chunk_size,
            max_line=self.max_line_bytes,
            encoding=self.encoding,
            errors=self.errors,
            strip_cr=self.strip_cr,
            stats=self.stats,
            mark_bad=mark_bad,
        )


class read_lines(_LineSource[str]):
    """The lines of a file, a glob of files or a list of files, as ``str`` without line endings.

    ``errors``: ``"replace"`` (default: invalid bytes become U+FFFD and are
    counted in ``stats.decode_errors``) or ``"strict"`` (raise
    :class:`RecordError` naming the stage, file and line); any codec error
    handler name works.  ``max_line_bytes``: longer lines are dropped up to
    their next newline and counted (``stats.dropped_long``).  ``strip_cr``:
    remove the ``\\r`` of CRLF endings.  A last line without a newline is
    emitted.  ``encoding`` must be ASCII-compatible (UTF-8, Latin-1, ...)::

        async with read_lines("logs/*.log").stream() as lines:
            async for line in lines:
                ...
    """

    def __init__(
        self,
        paths: Any,
        *,
        encoding: str = "utf-8",
        errors: str = "replace",
        max_line_bytes: int = DEFAULT_MAX_LINE,
        chunk_size: int = DEFAULT_CHUNK,
        strip_cr: bool = True,
        name: str | None = None,
        stats: FileStats | None = None,
    ) -> None:
        super().__init__(
            paths,
            encoding=encoding,
            errors=errors,
            max_line_bytes=max_line_bytes,
            chunk_size=chunk_size,
            strip_cr=strip_cr,
            name=name,
            stats=stats,
        )

    async def batches(self) -> AsyncIterator[list[str]]:
        """Yield the lines of every file in order, a chunk's worth at a time."""
        stats = self.stats
        strict = self.errors == "strict"
        async for path, f in self._files():
            # Under "strict" a bad line comes back marked, so the lines read before it are handed out first.
            reader = self._reader(path, f, mark_bad=strict)
            chunks = file_batches(reader, _cut_at_bad_line) if strict else file_batches(reader)
            async with aclosing(chunks) as batches:
                async for lines in batches:
                    stats.lines += len(lines)
                    yield lines


def _cut_at_bad_line(lines: list[Any]) -> list[Any]:
    """*lines* up to the first that failed strict decoding; that line's error follows them."""
    for i, line in enumerate(lines):
        if type(line) is BadLine:
            raise BatchCut(lines[:i], line.error)
    return lines


class read_chunks(_FileSource[bytes]):
    """The raw bytes of a file (or glob, or list of files) in chunks of at most ``chunk_size`` bytes."""

    def __init__(
        self,
        paths: Any,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        name: str | None = None,
        stats: FileStats | None = None,
    ) -> None:
        super().__init__(paths, chunk_size=chunk_size, name=name, stats=stats)

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Yield each file's chunks in order (one thread hop per chunk)."""
        size = self.chunk_size
        stats = self.stats

        async for _path, f in self._files():
            async with aclosing(read_ahead(partial(_chunk, f, size))) as batches:
                async for batch in batches:
                    stats.bytes += len(batch[0])
                    stats.lines += 1
                    yield batch


class _Policy:
    """Applies ``on_error`` to a malformed record: raise, or skip and count (warn once)."""

    def __init__(self, stage: str, on_error: str, stats: FileStats) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.stage = stage
        self.skip = on_error == "skip"
        self.stats = stats
        self.warned = False

    def bad(self, path: str, line: int | None, reason: str, text: str | None, cause: BaseException) -> None:
        error = RecordError(self.stage, path, line, reason, text=text)
        if not self.skip:
            raise error from cause
        self.stats.skipped_records += 1
        if not self.warned:
            self.warned = True
            log.warning("%s (skipped; counted in stats.skipped_records)", error)


class read_jsonl(_LineSource[Any]):
    """The records of JSON Lines files: one JSON value per line; blank lines are skipped (and counted).

    ``on_error="raise"`` (default) raises :class:`RecordError` naming the
    stage, file and line of a malformed record; ``"skip"`` skips it and counts
    it in ``stats.skipped_records``.  ``loads`` replaces ``json.loads``.
    Lines are framed on ``b"\\n"`` only (U+2028 inside strings is fine), with
    the ``max_line_bytes`` cap of :class:`read_lines`.  Parsing happens in the
    worker thread, one chunk of records per hop.
    """

    def __init__(
        self,
        paths: Any,
        *,
        on_error: OnError = "raise",
        loads: Callable[[str], Any] = json.loads,
        encoding: str = "utf-8",
        errors: str = "strict",
        max_line_bytes: int = DEFAULT_MAX_LINE,
        chunk_size: int = DEFAULT_CHUNK,
        name: str | None = None,
        stats: FileStats | None = None,
    ) -> None:
        super().__init__(
            paths,
            encoding=encoding,
            errors=errors,
            max_line_bytes=max_line_bytes,
            chunk_size=chunk_size,
            strip_cr=True,
            name=name,
            stats=stats,
        )
        self.on_error = on_error
        self.loads = loads
        _Policy(self.label, on_error, self.stats)  # validates

    def _parse(self, reader: LineFile, policy: _Policy, lines: list[Any]) -> list[Any]:
        """The records of *lines*, the last lines *reader* completed (with ``DROPPED`` in place)."""
        first = reader.line_no - len(lines) + 1
        loads = self.loads
        out: list[Any] = []
        try:
            for i, line in enumerate(lines):
                if line is DROPPED:
                    continue
                if type(line) is BadLine:
                    error = line.error
                    policy.bad(error.path, error.line, error.reason, None, error)
                    continue
                try:
                    out.append(loads(line))
                except ValueError as exc:
                    if not line.strip():
                        self.stats.blank_lines += 1
                        continue
                    policy.bad(reader.path, first + i, f"malformed JSON ({exc})", line, exc)
        except RecordError as error:  # the records before it are handed out first
            raise BatchCut(out, error) from None
        return out

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Yield the parsed records of every file in order, a chunk's worth at a time."""
        policy = _Policy(self.label, self.on_error, self.stats)
        stats = self.stats
        async for path, f in self._files():
            reader = self._reader(path, f, mark_bad=True)
            parse = partial(self._parse, reader, policy)
            async with aclosing(file_batches(reader, parse, keep_places=True)) as batches:
                async for records in batches:
                    stats.lines += len(records)
                    yield records


class read_csv(_FileSource[Item]):
    """The records of CSV files, parsed by the standard :mod:`csv` module in the worker thread.

    ``header=True`` (default): the first row of each file names the fields and
    records are dicts; ``fieldnames=[...]``: dicts with those names (every
    row is data); ``header=False`` without names: lists.  A row whose field
    count differs from the header, or that :mod:`csv` rejects (including a
    field over ``csv.field_size_limit()``), goes to ``on_error``: ``"raise"``
    (:class:`RecordError` with file and line) or ``"skip"`` (counted in
    ``stats.skipped_records``).  ``batch``: records per thread hop.
    Quoted fields may span lines.  Extra keyword arguments go to
    ``csv.reader`` (``delimiter``, ``quotechar``, ...).
    """

    @overload
    def __init__(
        self: read_csv[dict[str, str]],
        paths: Any,
        *,
        header: Literal[True] = ...,
        fieldnames: Sequence[str] | None = ...,
        on_error: OnError = ...,
        encoding: str = ...,
        errors: str = ...,
        batch: int = ...,
        name: str | None = ...,
        stats: FileStats | None = ...,
        **csv_options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: read_csv[dict[str, str]],
        paths: Any,
        *,
        header: bool = ...,
        fieldnames: Sequence[str],
        on_error: OnError = ...,
        encoding: str = ...,
        errors: str = ...,
        batch: int = ...,
        name: str | None = ...,
        stats: FileStats | None = ...,
        **csv_options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: read_csv[list[str]],
        paths: Any,
        *,
        header: Literal[False],
        fieldnames: None = ...,
        on_error: OnError = ...,
        encoding: str = ...,
        errors: str = ...,
        batch: int = ...,
        name: str | None = ...,
        stats: FileStats | None = ...,
        **csv_options: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: read_csv[Any],
        paths: Any,
        *,
        header: bool,
        fieldnames: Sequence[str] | None = ...,
        on_error: OnError = ...,
        encoding: str = ...,
        errors: str = ...,
        batch: int = ...,
        name: str | None = ...,
        stats: FileStats | None = ...,
        **csv_options: Any,
    ) -> None: ...
    def __init__(
        self,
        paths: Any,
        *,
        header: bool = True,
        fieldnames: Sequence[str] | None = None,
        on_error: OnError = "raise",
        encoding: str = "utf-8",
        errors: str = "strict",
        batch: int = 2048,
        name: str | None = None,
        stats: FileStats | None = None,
        **csv_options: Any,
    ) -> None:
        super().__init__(paths, chunk_size=DEFAULT_CHUNK, name=name, stats=stats)
        self.header = header
        self.fieldnames = list(fieldnames) if fieldnames is not None else None
        self.on_error = on_error
        self.encoding = encoding
        self.errors = check_errors(errors)
        self.batch = batch
        self.csv_options = csv_options
        try:  # lines are split as bytes and decoded one by one when the encoding allows it
            check_encoding(encoding)
            self.split_bytes = True
        except ValueError:
            self.split_bytes = False
        _Policy(self.label, on_error, self.stats)  # validates

    def _rows(self, path: str, policy: _Policy) -> Iterable[Any]:
        with open(path, "rb") as f:
            self.stats.files += 1
            lines: Iterable[str]
            if self.split_bytes:
                lines = self._text_lines(f)
            else:  # a line end is not the byte b"\n" (UTF-16, ...): decoded ahead in blocks
                lines = io.TextIOWrapper(f, self.encoding, self.errors, newline="")
            reader = csv.reader(lines, **self.csv_options)
            names = self.fieldnames
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except (_BadBytes, UnicodeDecodeError) as exc:
                    self.stats.decode_errors += 1
                    line = exc.line if isinstance(exc, _BadBytes) else reader.line_num + 1
                    cause = exc.__cause__ if isinstance(exc, _BadBytes) else exc
                    raise RecordError(self.label, path, line, f"invalid {self.encoding}") from cause
                except csv.Error as exc:
                    policy.bad(path, reader.line_num, f"malformed CSV ({exc})", None, exc)
                    continue
                if names is None and self.header:
                    names = row
                    continue
                if names is None:
                    yield row
                elif len(row) != len(names):
                    if not row:
                        self.stats.blank_lines += 1
                        continue
                    policy.bad(
                        path,
                        reader.line_num,
                        f"malformed CSV ({len(row)} fields, expected {len(names)})",
                        ",".join(row),
                        ValueError("field count"),
                    )
                else:
                    yield dict(zip(names, row, strict=True))

    def _text_lines(self, f: BinaryIO) -> Iterator[str]:
        """The file's lines as text, decoded one at a time, so an invalid byte is reported at its own line.

        Split as ``newline=""`` text would be (at ``\n``, ``\r\n`` and a lone ``\r``, endings kept), which
        is what :mod:`csv` needs for quoted fields that span lines.
        """
        encoding, errors = self.encoding, self.errors
        number = 0
        for raw in f:
            try:
                text = raw.decode(encoding, errors)
            except UnicodeDecodeError as exc:  # the lines a lone CR ends before the bad byte come first
                before = _LONE_CR.split(raw[: exc.start].decode(encoding, errors))
                number += len(before) - 1
                yield from before[:-1]
                raise _BadBytes(number + 1) from exc
            cr = text.find("\r")
            last = len(text) - 1  # no CR, or only the one ending the line: of a CRLF, or the last line's CR
            if cr < 0 or cr == last or (cr == last - 1 and text[last] == "\n"):
                number += 1
                yield text
            else:
                parts = [part for part in _LONE_CR.split(text) if part]
                number += len(parts)
                yield from parts

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Yield the records of every file in order, ``batch`` at a time; those before a bad one first."""
        policy = _Policy(self.label, self.on_error, self.stats)
        n = self.batch
        stats = self.stats
        for path in await expand_paths(self.paths):
            rows = iter(self._rows(path, policy))
            cut: BatchCut | None = None
            try:
                async with aclosing(read_ahead(partial(_take, rows, n))) as batches:
                    async for records in batches:
                        stats.lines += len(records)
                        yield records
            except BatchCut as exc:
                cut = exc
            finally:
                close = getattr(rows, "close", None)
                if close is not None:
                    close()
            if cut is not None:
                stats.lines += len(cut.items)
                if cut.items:
                    yield cut.items
                raise cut.error


class _BadBytes(Exception):
    """A line of a CSV file that is not valid in its encoding (its number counted as :mod:`csv` counts lines)."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def _chunk(f: BinaryIO, size: int) -> tuple[list[Any], bool]:
    chunk = f.read(size)
    return ([chunk], True) if chunk else ([], False)


def _take(rows: Any, n: int) -> tuple[list[Any], bool]:
    out: list[Any] = []
    try:
        for row in rows:
            out.append(row)
            if len(out) >= n:
                return out, True
    except RecordError as error:  # the rows taken before it are handed out first
        raise BatchCut(out, error) from None
    return out, False
