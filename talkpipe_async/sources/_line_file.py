"""The thread side of the line readers: one open file read in chunks, split into lines and decoded.

A regular file is read with ``pread`` at its own offset; where the OS can say
that a read would not block (Linux ``preadv`` with ``RWF_NOWAIT``), the next
chunk is first tried straight from the page cache in the event loop
(:meth:`LineFile.cached_batch`).  Otherwise :meth:`LineFile.batch` reads
about ``HOP_BYTES`` per worker-thread hop in ``chunk_size`` reads, so that the
split and decode of each read stay in the CPU cache.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import Any, BinaryIO

from ._file_lines import DROPPED, FileStats, LineDecoder, Splitter

log = logging.getLogger("talkpipe_async.sources.files")

#: Bytes read per thread hop (in reads of ``chunk_size``).
HOP_BYTES = 1024 * 1024
#: Size of the inline reads from the page cache: small enough that a chunk's lines stay in the CPU cache.
INLINE_CHUNK = 64 * 1024
#: Whether reads from the page cache can be tried without blocking (Linux ``RWF_NOWAIT``).
NOWAIT = hasattr(os, "preadv") and hasattr(os, "RWF_NOWAIT")


class LineFile:
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
