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
lines reach the consumer through :func:`~talkpipe_async._core._items.batch_items`
(a C step per item when the extension is built).  The line being assembled across chunks is capped at
``max_line_bytes``: a longer line is dropped up to its next newline and
counted, so memory stays bounded whatever the input (even gigabytes without a
newline).
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import aclosing
from functools import partial
from typing import Any, BinaryIO, Generic, Literal, TypeVar, overload

import anyio
import anyio.to_thread

from .._core._items import BatchSource
from ._file_batches import INLINE_SLICE as INLINE_SLICE
from ._file_batches import READ_AHEAD as READ_AHEAD
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
from ._items import Item

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

#: Bytes read per thread hop (in reads of ``chunk_size``).
HOP_BYTES = 1024 * 1024
#: Size of the inline reads from the page cache: small enough that a chunk's lines stay in the CPU cache.
INLINE_CHUNK = 64 * 1024
#: Whether reads from the page cache can be tried without blocking (Linux ``RWF_NOWAIT``).
NOWAIT = hasattr(os, "preadv") and hasattr(os, "RWF_NOWAIT")

OnError = Literal["raise", "skip"]


class _LineFile:
    """The thread side of a line reader over one open file."""

    def __init__(
        self,
        stage: str,
        path: str,
        f: BinaryIO,
        *,
        chunk_size: int,
        max_line: int,
        encoding: str,
        errors: str,
        strip_cr: bool,
        stats: FileStats,
        mark_bad: bool = False,
    ) -> None:
        self.f = f
        self.fd = f.fileno()
        regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        self.offset: int | None = f.tell() if regular else None  # pread offset of a regular file
        self.nowait = NOWAIT and regular
        self._cache_buf: bytearray | None = None
        self.path = path
        self.chunk_size = chunk_size
        self.splitter = Splitter(max_line)
        self.decoder = LineDecoder(stage, path, encoding, errors, strip_cr, stats, mark_bad)
        self.stats = stats
        self.eof = False
        self.line_no = 0  # lines completed so far (dropped ones included)
        self._warned = False

    def _note_drops(self, before: int) -> None:
        sp = self.splitter
        if sp.dropped != before:
            self.stats.dropped_long += sp.dropped - before
            if not self._warned:
                self._warned = True
                log.warning(
                    "%s: dropped a line longer than %d bytes in %s (counted in stats.dropped_long)",
                    self.decoder.stage,
                    sp.max_line,
                    self.path,
                )
        if sp.high_water > self.stats.buffer_high_water:
            self.stats.buffer_high_water = sp.high_water

    def _slow(self, raws: list[Any], keep_places: bool) -> list[Any]:
        out: list[Any] = []
        base = self.line_no
        decode = self.decoder.decode
        for i, raw in enumerate(raws):
            if raw is DROPPED:
                if keep_places:
                    out.append(DROPPED)
                continue
            out.append(decode(raw, base + i + 1))
        return out

    def _lines(self, chunk: bytes, keep_places: bool) -> list[Any]:
        sp = self.splitter
        nl = chunk.rfind(b"\n")
        if nl < 0 or sp.dropping or len(sp.buf) + nl >= sp.max_line:
            before = sp.dropped
            raws = sp.split(chunk)
            self._note_drops(before)
            lines = self._slow(raws, keep_places)
            self.line_no += len(raws)
            return lines
        complete = bytes(sp.buf) + chunk[: nl + 1] if sp.buf else chunk[: nl + 1]
        return self._complete(complete, chunk[nl + 1 :], keep_places)

    def _complete(self, complete: bytes | memoryview, rest: bytes, keep_places: bool) -> list[Any]:
        """Fast path: *complete* ends with a newline and holds no line over the cap: decode it at once; hold *rest*."""
        sp = self.splitter
        sp.buf = bytearray()
        before = sp.dropped
        sp._hold(rest)
        self._note_drops(before)
        try:
            text = str(complete, self.decoder.encoding)
        except UnicodeDecodeError:
            raws = bytes(complete).split(b"\n")
            raws.pop()
            lines = self._slow(raws, keep_places)
        else:
            if self.decoder.strip_cr and "\r" in text:
                text = text.replace("\r\n", "\n")
            lines = text.split("\n")
            lines.pop()
        self.line_no += len(lines)
        return lines

    def batch(self, keep_places: bool = False) -> list[Any]:
        """Read up to ``HOP_BYTES`` in ``chunk_size`` reads; return the lines completed; set ``eof`` at the end.

        Small reads keep the split and decode in the CPU cache; many of them
        per thread hop amortise the hop.
        """
        size = self.chunk_size
        out: list[Any] = []
        for _ in range(max(1, HOP_BYTES // size)):
            lines = self._take(self._read(size), keep_places)
            if out:
                out += lines
            else:
                out = lines
            if self.eof:
                break
        return out

    def cached_batch(self, keep_places: bool = False) -> list[Any] | None:
        """The lines of the next chunk if the page cache holds it (never blocks), else ``None``.

        ``None`` also when the file system cannot tell (then ``nowait`` turns
        off for this file).
        """
        assert self.offset is not None
        sp = self.splitter
        size = min(self.chunk_size, INLINE_CHUNK)
        head = len(sp.buf)  # the partial line goes in front: no copy of the chunk
        buf = self._cache_buf
        if buf is None or len(buf) < head + size:
            buf = self._cache_buf = bytearray(head + size)
        view = memoryview(buf)
        try:
            n = os.preadv(self.fd, [view[head : head + size]], self.offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self.nowait = False
                return None
            raise
        self.offset += n
        self.stats.cached_reads += 1
        end = head + n
        nl = buf.rfind(b"\n", head, end)
        if n == 0 or sp.dropping or nl < 0 or nl >= sp.max_line:
            return self._take(bytes(view[head:end]), keep_places)
        self.stats.bytes += n
        if head:
            view[:head] = sp.buf
        return self._complete(view[: nl + 1], bytes(view[nl + 1 : end]), keep_places)

    def _read(self, size: int) -> bytes:
        """Read up to *size* bytes (blocking: call in a worker thread)."""
        if self.offset is None:
            return self.f.read(size)
        chunk = os.pread(self.fd, size, self.offset)
        self.offset += len(chunk)
        return chunk

    def _take(self, chunk: bytes, keep_places: bool) -> list[Any]:
        """The lines *chunk* completes; an empty chunk is the end of the file (its partial line is emitted)."""
        if not chunk:
            self.eof = True
            rest = self.splitter.partial
            self.splitter.reset()
            if not rest:
                return []
            self.line_no += 1
            return [self.decoder.decode(rest, self.line_no)]
        self.stats.bytes += len(chunk)
        return self._lines(chunk, keep_places)


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

    def _reader(self, path: str, f: BinaryIO, mark_bad: bool = False) -> _LineFile:
        return _LineFile(
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
        async for path, f in self._files():
            async with aclosing(file_batches(self._reader(path, f))) as batches:
                async for lines in batches:
                    stats.lines += len(lines)
                    yield lines


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

    def _parse(self, reader: _LineFile, policy: _Policy, lines: list[Any]) -> list[Any]:
        """The records of *lines*, the last lines *reader* completed (with ``DROPPED`` in place)."""
        first = reader.line_no - len(lines) + 1
        loads = self.loads
        out: list[Any] = []
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
        _Policy(self.label, on_error, self.stats)  # validates

    def _rows(self, path: str, policy: _Policy) -> Iterable[Any]:
        with open(path, encoding=self.encoding, errors=self.errors, newline="") as f:
            self.stats.files += 1
            reader = csv.reader(f, **self.csv_options)
            names = self.fieldnames
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except UnicodeDecodeError as exc:
                    self.stats.decode_errors += 1
                    raise RecordError(self.label, path, reader.line_num + 1, f"invalid {self.encoding}") from exc
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

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Yield the records of every file in order, ``batch`` at a time."""
        policy = _Policy(self.label, self.on_error, self.stats)
        n = self.batch
        stats = self.stats
        for path in await expand_paths(self.paths):
            rows = iter(self._rows(path, policy))
            try:
                async with aclosing(read_ahead(partial(_take, rows, n))) as batches:
                    async for records in batches:
                        stats.lines += len(records)
                        yield records
            finally:
                close = getattr(rows, "close", None)
                if close is not None:
                    close()


def _chunk(f: BinaryIO, size: int) -> tuple[list[Any], bool]:
    chunk = f.read(size)
    return ([chunk], True) if chunk else ([], False)


def _take(rows: Any, n: int) -> tuple[list[Any], bool]:
    out = []
    for row in rows:
        out.append(row)
        if len(out) >= n:
            return out, True
    return out, False
