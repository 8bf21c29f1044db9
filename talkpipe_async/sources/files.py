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

import codecs
import csv
import errno
import glob
import json
import logging
import os
import stat
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, BinaryIO, Generic, Literal, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._core._channel import Channel, ChannelClosed
from .._core._counters import Counters
from .._core._errors import TalkpipeAsyncError
from .._core._items import BatchSource
from .._core._run import current_run

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

DEFAULT_CHUNK = 128 * 1024
DEFAULT_MAX_LINE = 1024 * 1024
#: Bytes read per thread hop (in reads of ``chunk_size``).
HOP_BYTES = 1024 * 1024
#: Size of the inline reads from the page cache: small enough that a chunk's lines stay in the CPU cache.
INLINE_CHUNK = 64 * 1024
#: Longest stretch of event-loop time spent reading cached chunks inline before a checkpoint.
INLINE_SLICE = 0.002
#: Whether reads from the page cache can be tried without blocking (Linux ``RWF_NOWAIT``).
NOWAIT = hasattr(os, "preadv") and hasattr(os, "RWF_NOWAIT")
_GLOB_MAGIC = frozenset("*?[")

OnError = Literal["raise", "skip"]


@dataclass
class FileStats(Counters):
    """Counters of a file or tail source (accumulated over all runs of the stage).

    Nothing is dropped without being counted here; the ``max_line`` drops and
    skipped records are also logged (once per stage and kind) at WARNING level.
    """

    files: int = 0
    """Files opened."""
    lines: int = 0
    """Lines (or records, chunks) emitted."""
    bytes: int = 0
    """Bytes read."""
    dropped_long: int = 0
    """Lines longer than ``max_line_bytes``, dropped up to their next newline."""
    decode_errors: int = 0
    """Lines with invalid bytes for the encoding (replaced, or raised)."""
    skipped_records: int = 0
    """Malformed JSON / CSV records skipped (``on_error="skip"``)."""
    blank_lines: int = 0
    """Blank lines skipped by the JSON Lines reader."""
    buffer_high_water: int = 0
    """Largest partial line held between chunks, in bytes (never above ``max_line_bytes``)."""
    truncations: int = 0
    """Tail: times the file was truncated (or replaced in place) and reading restarted at 0."""
    rotations: int = 0
    """Tail: times the path was rotated (renamed, deleted and recreated) and the tail switched files."""
    recovered: int = 0
    """Tail: rotated files that left the path before the tail could open them there, found by their new name."""
    missing: int = 0
    """Tail: times the path was found missing (reported once per absence)."""
    partial_discarded: int = 0
    """Tail: unterminated partial lines discarded because the file was truncated under them."""
    unterminated: int = 0
    """Tail: unterminated last lines emitted when their file was rotated away or deleted."""
    checkpoints: int = 0
    """Tail: checkpoint files written."""
    polls: int = 0
    """Tail: polls of the file (one thread hop each)."""
    wakeups: int = 0
    """Tail: waits ended early by a file-system notification (Linux inotify) instead of the poll interval."""
    cached_reads: int = 0
    """Chunks read straight from the page cache in the event loop, without a thread hop (Linux)."""

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


class RecordError(ValueError, TalkpipeAsyncError):
    """A line or record that the stage's error policy refused: names the stage, the file and the line."""

    def __init__(
        self,
        stage: str,
        path: str,
        line: int | None,
        reason: str,
        *,
        offset: int | None = None,
        text: str | None = None,
    ) -> None:
        where = f"{path} line {line}" if line is not None else f"{path} offset {offset}"
        shown = f": {text[:80]!r}" if text is not None else ""
        super().__init__(f"{stage}: {reason} at {where}{shown}")
        self.stage = stage
        self.path = path
        self.line = line
        self.offset = offset
        self.reason = reason


class _Dropped:
    """Marks the place of a dropped over-long line in a split batch."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<dropped over-long line>"


DROPPED: Any = _Dropped()


class Splitter:
    """Splits a byte stream into lines, holding at most ``max_line`` bytes of partial line.

    ``split(chunk)`` returns the complete lines the chunk finishes (without
    their ``\\n``); an over-long line is replaced by :data:`DROPPED` in place
    (so line numbers stay right) and counted once in ``dropped``.  The partial
    last line is kept (``partial``) until its newline arrives; past the cap
    the splitter skips to the next newline without storing anything.
    """

    __slots__ = ("buf", "dropped", "dropping", "high_water", "max_line")

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.max_line = max_line
        self.buf = bytearray()
        self.dropping = False
        self.dropped = 0
        self.high_water = 0

    @property
    def partial(self) -> bytes:
        """The held partial line."""
        return bytes(self.buf)

    def reset(self) -> None:
        """Forget the partial line (and any line being skipped)."""
        self.buf = bytearray()
        self.dropping = False

    def _hold(self, part: bytes) -> None:
        if self.dropping:
            return
        if len(self.buf) + len(part) > self.max_line:
            self.buf = bytearray()
            self.dropping = True
            self.dropped += 1
            return
        self.buf += part
        if len(self.buf) > self.high_water:
            self.high_water = len(self.buf)

    def split(self, chunk: bytes) -> list[Any]:
        """The lines completed by *chunk* (``bytes`` or :data:`DROPPED`)."""
        parts: list[Any] = chunk.split(b"\n")
        last = parts.pop()
        if not parts:
            self._hold(last)
            return parts
        cap = self.max_line
        check_from = 1
        if self.dropping:
            self.dropping = False
            parts[0] = DROPPED  # the tail of a line already counted
        elif self.buf:
            if len(self.buf) + len(parts[0]) > cap:
                parts[0] = DROPPED
                self.dropped += 1
            else:
                self.buf += parts[0]
                parts[0] = bytes(self.buf)
            self.buf = bytearray()
        else:
            check_from = 0
        if len(chunk) > cap:
            for i in range(check_from, len(parts)):
                if parts[i] is not DROPPED and len(parts[i]) > cap:
                    parts[i] = DROPPED
                    self.dropped += 1
        self._hold(last)
        return parts


def check_encoding(encoding: str) -> str:
    """Return the codec's name; ``ValueError`` unless newlines are the byte ``\\n`` in it."""
    info = codecs.lookup(encoding)
    if "\n".encode(info.name) != b"\n" or "\r".encode(info.name) != b"\r":
        raise ValueError(f"encoding {encoding!r} is not ASCII-compatible: lines cannot be split on b'\\n'")
    return info.name


def check_errors(errors: str) -> str:
    """Validate a decoding error policy name."""
    try:
        codecs.lookup_error(errors)
    except LookupError:
        raise ValueError(f"unknown decoding error policy {errors!r} (use 'replace' or 'strict')") from None
    return errors


class BadLine:
    """Stands, in a decoded batch, for a line that failed strict decoding (record readers apply their policy)."""

    __slots__ = ("error",)

    def __init__(self, error: RecordError) -> None:
        self.error = error


class LineDecoder:
    """Decodes split lines with a policy; strips a trailing ``\\r`` (CRLF) if asked.

    With ``mark_bad=True`` a line that fails strict decoding comes back as a
    :class:`BadLine` instead of raising, so a record reader can skip it.
    """

    def __init__(
        self,
        stage: str,
        path: str,
        encoding: str,
        errors: str,
        strip_cr: bool,
        stats: FileStats,
        mark_bad: bool = False,
    ) -> None:
        self.stage = stage
        self.path = path
        self.encoding = encoding
        self.errors = errors
        self.strip_cr = strip_cr
        self.stats = stats
        self.mark_bad = mark_bad

    def decode(self, raw: bytes, line_no: int | None, offset: int | None = None) -> Any:
        """One line's text; counts invalid bytes and raises :class:`RecordError` under ``errors="strict"``."""
        if self.strip_cr and raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError as exc:
            self.stats.decode_errors += 1
            if self.errors == "strict":
                error = RecordError(
                    self.stage, self.path, line_no, f"invalid {self.encoding} ({exc.reason})", offset=offset
                )
                if self.mark_bad:
                    error.__cause__ = exc
                    return BadLine(error)
                raise error from exc
            return raw.decode(self.encoding, self.errors)


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


#: Batches read ahead of the consumer by the reading task.
READ_AHEAD = 2

Read = Callable[[], "tuple[list[Any], bool]"]


async def _produce(read: Read, channel: Channel, done: anyio.Event) -> None:
    try:
        more = True
        while more:
            batch, more = await anyio.to_thread.run_sync(read)
            if batch:
                await channel.put(batch)
    except ChannelClosed:
        pass
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:  # handed to the consumer, in order
        channel.close(exc)
    else:
        channel.close()
    finally:
        done.set()


async def read_ahead(read: Read, depth: int = READ_AHEAD) -> AsyncGenerator[list[Any], None]:
    """Batches from ``read() -> (batch, more)`` run in worker threads, *depth* batches ahead.

    Inside a pipeline run the reads happen in a task of the run, so the
    thread hop of the next read overlaps the consumer's work on this batch;
    outside a run, one read per batch, in turn.  Leaving early waits for the
    read in flight before returning, so the caller may close the file at once.
    """
    try:
        run = current_run()
    except RuntimeError:
        more = True
        while more:
            batch, more = await anyio.to_thread.run_sync(read)
            if batch:
                yield batch
        return
    channel = Channel(depth)
    done = anyio.Event()
    run.start_soon(_produce, read, channel, done, name="file read-ahead")
    try:
        while True:
            try:
                batches = await channel.get_batch(depth)
            except anyio.EndOfStream:
                return
            for batch in batches:
                yield batch
    finally:
        channel.abort()
        with anyio.CancelScope(shield=True):
            await done.wait()


Parse = Callable[[list[Any]], list[Any]]


def _keep(lines: list[Any]) -> list[Any]:
    return lines


async def file_batches(
    reader: _LineFile, parse: Parse = _keep, keep_places: bool = False
) -> AsyncGenerator[list[Any], None]:
    """``parse(lines)`` of every chunk of *reader*: inline while the page cache holds it, then in threads.

    Inline reads never block (``RWF_NOWAIT``); the loop gets a checkpoint at
    least every :data:`INLINE_SLICE` seconds.  At the first chunk that is not
    cached, the rest of the file is read ahead in worker threads.
    """
    clock = time.monotonic
    since = clock()
    while reader.nowait and not reader.eof:
        lines = reader.cached_batch(keep_places)
        if lines is None:
            break
        out = parse(lines)
        if out:
            yield out
        if clock() - since >= INLINE_SLICE:
            await anyio.lowlevel.checkpoint()
            since = clock()
    if reader.eof:
        return

    def hop() -> tuple[list[Any], bool]:
        return parse(reader.batch(keep_places)), not reader.eof

    async with aclosing(read_ahead(hop)) as batches:
        async for batch in batches:
            yield batch


def _expand_sync(paths: Any) -> list[str]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[str] = []
    for p in items:
        if isinstance(p, str) and _GLOB_MAGIC.intersection(p):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                log.warning("glob %r matched no files", p)
            out.extend(m for m in matches if os.path.isfile(m))
        else:
            out.append(os.fspath(p))
    return out


async def expand_paths(paths: Any) -> list[str]:
    """The files named by *paths*: a path, a glob pattern (``*``, ``?``, ``[``; sorted; ``**`` recursive) or a list."""
    return await anyio.to_thread.run_sync(_expand_sync, paths)


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


class read_csv(_FileSource[Any]):
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
