"""``tail -F`` as a source: follow a file by name across rotation, truncation and deletion.

The tail holds the file descriptor open and polls.  Each poll, in one
worker-thread hop (``anyio.to_thread.run_sync``: asyncio, uvloop and trio):

1. checks ``fstat(fd)``: a size below the read offset, or first bytes that
   no longer match the file's fingerprint, mean the file was truncated (or
   truncated and regrown between polls): reading restarts at 0 and a
   :class:`TailEvent` ``"truncated"`` is emitted;
2. reads up to ``chunk_size`` bytes and splits them into lines (a partial
   last line is held, at most ``max_line_bytes``, until its newline comes);
3. at end of file, ``stat(path)``: another device/inode (rotation, or
   delete and recreate) or no file at all means the followed file is gone
   from the name; the old file keeps being drained until it has been idle
   for ``rotate_grace`` seconds, then the tail switches to the new file at
   the path (from its start) and emits ``"rotated"``.

Lines come out as :class:`Line` objects that know their byte offset.  With a
``checkpoint`` file, ``line.ack()`` (or the :class:`acknowledge` segment at
the end of the pipeline) marks the line, and everything before it, as done;
the tail writes (device, inode, fingerprint, offset) of the last acknowledged
line atomically, and a restarted tail resumes right after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat as stat_module
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._core._fields import extract_field
from .._core._metadata import Metadata
from .._core._segment import AbstractSegment, AbstractSource
from ._watch import open_watcher
from .files import (
    DEFAULT_CHUNK,
    DEFAULT_MAX_LINE,
    DROPPED,
    FileStats,
    LineDecoder,
    Splitter,
    check_encoding,
    check_errors,
)

__all__ = ["Line", "TailEvent", "acknowledge", "tail_file"]

log = logging.getLogger("talkpipe_async.sources.tail")

#: Bytes at the start of a file that identify its content (truncate-and-regrow guard, checkpoints).
FINGERPRINT_BYTES = 256
_CHECKPOINT_VERSION = 1


class TailEvent(Metadata):
    """Metadata emitted by :class:`tail_file` when the followed file changes.

    ``kind`` is ``"missing"`` (no file at the path; once per absence),
    ``"truncated"`` (reading restarted at offset 0; ``offset`` is where it
    was), ``"deleted"`` (the followed file left its name and was drained and
    closed) or ``"rotated"`` (a new file at the path is now followed, from
    its start).  Like all metadata it only reaches stages that set
    ``process_metadata=True`` and ``stream(metadata=True)`` consumers.
    """

    kind: str
    path: str

    def __init__(self, kind: str, path: str, **fields: Any) -> None:
        super().__init__(kind=kind, path=path, **fields)


class _Gen:
    """One generation of one file: its identity and the first bytes of its content."""

    __slots__ = ("dev", "fp", "ino", "path")

    def __init__(self, dev: int, ino: int, fp: bytes, path: str) -> None:
        self.dev = dev
        self.ino = ino
        self.fp = fp
        self.path = path


class Line:
    """One line from :class:`tail_file`: its text and the offset just after its newline.

    ``str(line)`` is the text.  ``ack()`` acknowledges this line and every
    line before it (in stream order) for the checkpoint; ``await commit()``
    also writes the checkpoint now, durably.  Acknowledging is cheap and may
    happen from any task or thread.
    """

    __slots__ = ("_gen", "_seq", "_tailer", "offset", "path", "text")

    def __init__(self, text: str, path: str, offset: int, gen: _Gen, seq: int, tailer: _Tailer) -> None:
        self.text = text
        self.path = path
        self.offset = offset
        self._gen = gen
        self._seq = seq
        self._tailer = tailer

    def ack(self) -> None:
        """Mark this line (and all before it) as processed downstream."""
        self._tailer.ack(self)

    async def commit(self) -> None:
        """Acknowledge this line and write the checkpoint before returning (no-op without a checkpoint)."""
        self._tailer.ack(self)
        if self._tailer.checkpoint is not None:
            await anyio.to_thread.run_sync(self._tailer.write_checkpoint)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Line({self.text!r}, path={self.path!r}, offset={self.offset})"


class _Open:
    """A file descriptor being read, with its reading state."""

    __slots__ = ("fd", "gen", "idle_since", "mtime", "pos", "size", "splitter")

    def __init__(self, fd: int, gen: _Gen, pos: int, splitter: Splitter, st: os.stat_result) -> None:
        self.fd = fd
        self.gen = gen
        self.pos = pos
        self.splitter = splitter
        self.size = st.st_size
        self.mtime = st.st_mtime_ns
        self.idle_since: float | None = None


def _fp_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _head(fd: int) -> bytes:
    return os.pread(fd, FINGERPRINT_BYTES, 0)


class _Tailer:
    """The per-run state of a tail; every method but ``ack`` runs in a worker thread."""

    def __init__(self, src: tail_file) -> None:
        self.src = src
        self.path = src.path
        self.stats = src.stats
        self.checkpoint = src.checkpoint
        self.cur: _Open | None = None
        self.first = True
        self.missing_reported = False
        self.seq = 0
        self.acked: tuple[_Gen, int, int] | None = None  # (generation, offset, seq)
        self.written_seq = 0
        self.last_write = 0.0
        self.resume: tuple[_Gen, int] | None = None
        self.lock = threading.Lock()
        self.decoder = LineDecoder(src.label, self.path, src.encoding, src.errors, src.strip_cr, src.stats)
        self.warned_long = False

    # -- acknowledgement and checkpoints -------------------------------------------------

    def ack(self, line: Line) -> None:
        acked = self.acked
        if acked is None or line._seq > acked[2]:
            self.acked = (line._gen, line.offset, line._seq)

    def write_checkpoint(self) -> None:
        """Write the last acknowledged position atomically (temp file, fsync, rename)."""
        with self.lock:
            acked = self.acked
            if self.checkpoint is None or acked is None or acked[2] <= self.written_seq:
                return
            gen, offset, seq = acked
            fp = gen.fp
            data = {
                "version": _CHECKPOINT_VERSION,
                "path": self.path,
                "dev": gen.dev,
                "ino": gen.ino,
                "fp_len": len(fp),
                "fp": _fp_hash(fp),
                "offset": offset,
            }
            target = self.checkpoint
            tmp = f"{target}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            try:
                dir_fd = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY)
            except OSError:  # pragma: no cover - platforms without directory fds
                pass
            else:
                try:
                    os.fsync(dir_fd)
                except OSError:  # pragma: no cover
                    pass
                finally:
                    os.close(dir_fd)
            self.written_seq = seq
            self.last_write = time.monotonic()
            self.stats.checkpoints += 1

    def load_checkpoint(self) -> None:
        """Find where the checkpoint says to resume (sets ``resume``) and open that file."""
        if self.checkpoint is None:
            return
        try:
            with open(self.checkpoint, encoding="utf-8") as f:
                data = json.load(f)
            dev, ino, offset = int(data["dev"]), int(data["ino"]), int(data["offset"])
            fp_len, fp = int(data["fp_len"]), str(data["fp"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "%s: unreadable checkpoint %s (%s): reading from the beginning", self.src.label, self.checkpoint, exc
            )
            self.first = False  # a new file: read it whole rather than lose lines
            return
        self.first = False  # with a checkpoint, an unknown file is read from its start
        for candidate in self._candidates():
            try:
                fd = os.open(candidate, os.O_RDONLY)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                head = _head(fd)
            except OSError:
                os.close(fd)
                continue
            if (st.st_dev, st.st_ino) == (dev, ino) and len(head) >= fp_len and _fp_hash(head[:fp_len]) == fp:
                if st.st_size >= offset:
                    gen = _Gen(st.st_dev, st.st_ino, head, candidate)
                    self.cur = _Open(fd, gen, offset, Splitter(self.src.max_line_bytes), st)
                    if candidate != self.path:
                        log.info("%s: resuming in rotated file %s at offset %d", self.src.label, candidate, offset)
                    return
            os.close(fd)
        log.warning(
            "%s: the checkpointed file is gone or changed; reading %s from the beginning", self.src.label, self.path
        )

    def _candidates(self) -> list[str]:
        out = [self.path]
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            with os.scandir(directory) as entries:
                out.extend(e.path for e in entries if e.is_file(follow_symlinks=False) and e.path != self.path)
        except OSError:
            pass
        return out

    # -- polling -------------------------------------------------------------------------

    def _open(self, events: list[Any]) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            if not self.missing_reported:
                self.missing_reported = True
                self.stats.missing += 1
                log.warning("%s: %s does not exist (yet); waiting for it", self.src.label, self.path)
                events.append(TailEvent("missing", self.path))
            self.first = False
            return
        try:
            st = os.fstat(fd)
            if stat_module.S_ISDIR(st.st_mode):
                raise IsADirectoryError(f"{self.path} is a directory")
            head = _head(fd)
        except BaseException:
            os.close(fd)
            raise
        self.missing_reported = False
        splitter = Splitter(self.src.max_line_bytes)
        pos = 0
        if self.first and self.src.start == "end":
            pos = self._end_position(fd, st.st_size, splitter)
        elif not self.first:
            self.stats.rotations += 1
            events.append(TailEvent("rotated", self.path))
        self.first = False
        self.cur = _Open(fd, _Gen(st.st_dev, st.st_ino, head, self.path), pos, splitter, st)
        self.stats.files += 1

    def _end_position(self, fd: int, size: int, splitter: Splitter) -> int:
        """Start after the last complete line (the line being written is read whole)."""
        window = min(size, splitter.max_line + 1)
        tail = os.pread(fd, window, size - window)
        nl = tail.rfind(b"\n")
        if nl >= 0:
            return size - window + nl + 1
        if size <= splitter.max_line:
            return 0
        splitter.dropping = True  # an over-long partial line: skip to its newline
        splitter.dropped += 1
        return size

    def _check_truncation(self, cur: _Open, events: list[Any]) -> None:
        st = os.fstat(cur.fd)
        if st.st_size == cur.size and st.st_mtime_ns == cur.mtime:
            return
        cur.size, cur.mtime = st.st_size, st.st_mtime_ns
        truncated = st.st_size < cur.pos
        if not truncated:
            head = _head(cur.fd)
            fp = cur.gen.fp
            if len(head) < len(fp) or head[: len(fp)] != fp:
                truncated = True
            elif len(head) > len(fp):
                cur.gen.fp = head
        if not truncated:
            return
        self.stats.truncations += 1
        if cur.splitter.buf:
            self.stats.partial_discarded += 1
        log.info("%s: %s was truncated at offset %d; reading from 0", self.src.label, self.path, cur.pos)
        events.append(TailEvent("truncated", cur.gen.path, offset=cur.pos))
        cur.splitter.reset()
        cur.pos = 0
        cur.gen = _Gen(st.st_dev, st.st_ino, _head(cur.fd), cur.gen.path)

    def _lines(self, cur: _Open, data: bytes, start: int) -> list[Any]:
        sp = cur.splitter
        before = sp.dropped
        raws = sp.split(data)
        if sp.dropped != before:
            self.stats.dropped_long += sp.dropped - before
            if not self.warned_long:
                self.warned_long = True
                log.warning(
                    "%s: dropped a line longer than %d bytes in %s (counted in stats.dropped_long)",
                    self.src.label,
                    sp.max_line,
                    self.path,
                )
        if sp.high_water > self.stats.buffer_high_water:
            self.stats.buffer_high_water = sp.high_water
        out: list[Any] = []
        idx = -1
        find = data.find
        decode = self.decoder.decode
        gen = cur.gen
        path = gen.path
        for raw in raws:
            idx = find(b"\n", idx + 1)
            if raw is DROPPED:
                continue
            end = start + idx + 1
            self.seq += 1
            out.append(Line(decode(raw, None, end - len(raw) - 1), path, end, gen, self.seq, self))
        return out

    def _finish(self, cur: _Open, out: list[Any]) -> None:
        """The followed file left its name and has been idle: emit its last partial line, close it."""
        rest = cur.splitter.partial
        if rest:
            self.stats.unterminated += 1
            self.seq += 1
            text = self.decoder.decode(rest, None, cur.pos - len(rest))
            out.append(Line(text, cur.gen.path, cur.pos, cur.gen, self.seq, self))
        os.close(cur.fd)
        self.cur = None

    def poll(self) -> tuple[list[Any], bool]:
        """One poll: returns the new items (lines and events) and whether more data is waiting."""
        src = self.src
        out: list[Any] = []
        self.stats.polls += 1
        if self.checkpoint is not None and self.acked is not None and self.acked[2] > self.written_seq:
            if time.monotonic() - self.last_write >= src.checkpoint_interval:
                self.write_checkpoint()
        if self.cur is None:
            self._open(out)
            if self.cur is None:
                return out, False
        cur = self.cur
        self._check_truncation(cur, out)
        data = os.pread(cur.fd, src.chunk_size, cur.pos)
        if data:
            start = cur.pos
            cur.pos += len(data)
            self.stats.bytes += len(data)
            cur.idle_since = None
            out.extend(self._lines(cur, data, start))
            return out, len(data) == src.chunk_size
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == (cur.gen.dev, cur.gen.ino)
            gone = False
        except (FileNotFoundError, NotADirectoryError):
            same, gone = False, True
        if same:
            cur.idle_since = None
            return out, False
        now = time.monotonic()
        if cur.idle_since is None:
            cur.idle_since = now
            return out, False
        if now - cur.idle_since < src.rotate_grace:
            return out, False
        self._finish(cur, out)
        if gone:
            out.append(TailEvent("deleted", cur.gen.path))
            return out, False
        self._open(out)
        return out, self.cur is not None

    def due(self) -> float | None:
        """Seconds until a poll is needed whatever the file system says (a rotated file's grace), or None."""
        cur = self.cur
        if cur is None or cur.idle_since is None:
            return None
        return max(0.0, self.src.rotate_grace - (time.monotonic() - cur.idle_since))

    def close(self) -> None:
        """Write the last checkpoint and close the descriptor."""
        try:
            self.write_checkpoint()
        finally:
            if self.cur is not None:
                os.close(self.cur.fd)
                self.cur = None


class tail_file(AbstractSource[Any]):
    """Follow *path* like ``tail -F``, yielding a :class:`Line` per line (or ``str`` with ``text=True``).

    - ``start``: ``"end"`` (default: only lines written from now on; the line
      being written when the tail starts is read whole) or ``"beginning"``.
      A file that appears later, or replaces a rotated one, is read from its
      start.
    - ``poll_min`` / ``poll_max``: the poll interval starts at ``poll_min``
      after data and doubles while idle up to ``poll_max``.
    - ``watch``: on Linux, an inotify watch on the file's directory ends a
      wait as soon as something there changes (``stats.wakeups``), so a
      line arrives within about a millisecond however long the poll
      interval; polling still decides what is read.  Elsewhere, or with
      ``watch=False``, the tail only polls.
    - ``rotate_grace``: after the path is rotated away or deleted, the old
      file is drained until it has been idle this long, then closed.
    - ``max_line_bytes``: longer lines are dropped to their next newline and
      counted (``stats.dropped_long``); the held partial line never exceeds it.
    - ``errors``: ``"replace"`` (counted in ``stats.decode_errors``) or
      ``"strict"`` (raise :class:`~talkpipe_async.sources.RecordError`).
    - ``checkpoint``: a file path; the offset of the last acknowledged line
      (see :class:`Line` and :class:`acknowledge`) is written there
      atomically, at most every ``checkpoint_interval`` seconds while the
      tail polls, and when the run ends.  On start a valid checkpoint wins
      over ``start``; a checkpointed file that was rotated while the tail was
      down is found by inode in the same directory and drained first.
    - ``events``: emit :class:`TailEvent` metadata (truncated, rotated, ...).

    Every kind of trouble is counted in ``stats`` (:class:`FileStats`).  A
    partial last line is held until its newline arrives; it is emitted only
    when its file is rotated away or deleted (counted in
    ``stats.unterminated``) and discarded if the file is truncated under it
    (``stats.partial_discarded``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        start: Literal["end", "beginning"] = "end",
        poll_min: float = 0.01,
        poll_max: float = 0.25,
        rotate_grace: float = 1.0,
        encoding: str = "utf-8",
        errors: str = "replace",
        max_line_bytes: int = DEFAULT_MAX_LINE,
        chunk_size: int = DEFAULT_CHUNK,
        strip_cr: bool = True,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_interval: float = 1.0,
        events: bool = True,
        text: bool = False,
        watch: bool = True,
        name: str | None = None,
        stats: FileStats | None = None,
    ) -> None:
        super().__init__(emits_metadata=events)
        if start not in ("end", "beginning"):
            raise ValueError(f"start must be 'end' or 'beginning', not {start!r}")
        if not 0 < poll_min <= poll_max:
            raise ValueError("need 0 < poll_min <= poll_max")
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        Splitter(max_line_bytes)  # validates
        self.path = os.fspath(path)
        self.start = start
        self.poll_min = poll_min
        self.poll_max = poll_max
        self.rotate_grace = rotate_grace
        self.encoding = check_encoding(encoding)
        self.errors = check_errors(errors)
        self.max_line_bytes = max_line_bytes
        self.chunk_size = chunk_size
        self.strip_cr = strip_cr
        self.checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
        self.checkpoint_interval = checkpoint_interval
        self.events = events
        self.text = text
        self.watch = watch
        self._directory = os.path.dirname(os.path.abspath(self.path))
        self.name = name or "tail_file"
        self.stats = stats if stats is not None else FileStats()

    async def generate(self) -> AsyncIterator[Any]:
        """Poll the file forever (until the run ends), yielding lines and events."""
        tailer = _Tailer(self)
        run_sync = anyio.to_thread.run_sync
        interval = self.poll_min
        stats = self.stats
        events, text = self.events, self.text
        watcher = open_watcher(self._directory) if self.watch else None
        try:
            await run_sync(tailer.load_checkpoint)
            while True:
                items, more = await run_sync(tailer.poll)
                if items:
                    interval = self.poll_min
                    for item in items:
                        if type(item) is Line:
                            stats.lines += 1
                            yield item.text if text else item
                        elif events:
                            yield item
                if more:
                    await anyio.lowlevel.checkpoint()
                elif not items:
                    due = tailer.due()
                    wait = interval if due is None else min(interval, due)
                    if watcher is None:
                        await anyio.sleep(wait)
                    elif await watcher.wait(wait):
                        stats.wakeups += 1
                    interval = min(interval * 2, self.poll_max)
        finally:
            if watcher is not None:
                watcher.close()
            with anyio.CancelScope(shield=True):
                await run_sync(tailer.close)


class acknowledge(AbstractSegment[Any, Any]):
    """Acknowledge each item's tail :class:`Line` for the checkpoint, then pass the item on.

    Put it after the stage whose completion means "done" (a sink): a line is
    acknowledged once its item reaches this stage, which acknowledges every
    line before it too.  ``field``: where the :class:`Line` is in the item
    (dotted path; default: the item itself).  ``durable=True``: write the
    checkpoint (fsync) before passing each item on, so that even a crash
    repeats no acknowledged line; the default writes it every
    ``checkpoint_interval`` seconds and when the run ends.
    """

    def __init__(self, field: str | None = None, *, durable: bool = False, name: str | None = None) -> None:
        super().__init__()
        self.field = field
        self.durable = durable
        self.name = name or "acknowledge"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Acknowledge and yield every item."""
        field, durable = self.field, self.durable
        async for item in items:
            line = item if field is None else extract_field(item, field)
            if type(line) is not Line:
                where = field or "the item"
                raise TypeError(f"{self.label}: expected a tail Line at {where}, got {type(line).__name__}")
            if durable:
                await line.commit()
            else:
                line.ack()
            yield item
