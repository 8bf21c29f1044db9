"""``tail -F`` as a source: follow a file by name across rotation, truncation and deletion.

The tail holds every file that was ever at the path open, in the order the
files appeared there (the *chain*, see ``_tail_chain``).  A scout thread
opens a new file as soon as it arrives at the path (inotify on Linux,
otherwise every ``poll_min``), and each poll looks again, so no file that
was at the path escapes however fast the rotation and whatever the consumer
is doing.  Each poll, in one worker-thread hop (``anyio.to_thread.run_sync``:
asyncio, uvloop and trio), reads the first file of the chain:

1. ``fstat(fd)``: a size below the read offset, or first bytes that no
   longer match the file's fingerprint, mean the file was truncated (or
   truncated and regrown between polls): the unread rest is read from the
   copy a copytruncate rotator left, when one is found; then reading
   restarts at 0 and a :class:`TailEvent` ``"truncated"`` is emitted;
2. reads up to ``chunk_size`` bytes and splits them into lines (a partial
   last line is held, at most ``max_line_bytes``, until its newline comes);
3. at end of file, if the file has left the path (renamed or deleted), it is
   closed once no change has been seen on it for ``rotate_grace`` seconds,
   and reading moves on to the next file of the chain (``"rotated"``).

Lines come out as :class:`Line` objects that know their byte offset.  With a
``checkpoint`` file, ``line.ack()`` (or the :class:`acknowledge` segment at
the end of the pipeline) marks the line, and everything before it, as done;
the tail writes (device, inode, fingerprint, offset) of the last acknowledged
line and the files held after it atomically, and a restarted tail resumes
right after that line, then reads those files.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Literal, overload

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._core._fields import extract_field
from .._core._segment import AbstractSource, PassThrough
from ._file_lines import (
    DEFAULT_CHUNK,
    DEFAULT_MAX_LINE,
    FileStats,
    Splitter,
    check_encoding,
    check_errors,
)
from ._item_types import Item
from ._tail_chain import _Tailer
from ._tail_items import Line, TailEvent

#: Bytes the scout may read from the file at the path ahead of the consumer.
DEFAULT_READ_AHEAD = 1024 * 1024

__all__ = ["Line", "TailEvent", "acknowledge", "tail_file"]


class tail_file(AbstractSource[Item]):
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
      interval; polling still decides what is read.  A second watch follows
      the renames in the directory, so that a file renamed away from the
      path before the tail could open it there is read by its new name
      (``stats.recovered``).  Elsewhere, or with ``watch=False``, the tail
      only polls.
    - ``read_ahead``: on every change in the directory the scout thread reads
      what was appended to the file at the path, up to this many bytes
      ahead of the consumer (0: only polls read), so that a copytruncate
      rotation can only take lines written in the instant before it.
    - ``rotate_grace``: a file that left the path (rotated away or deleted)
      is drained until no change has been seen on it for this long, then
      closed; meanwhile the files that came after it are already held open
      and are read next, in the order they appeared at the path.
    - ``max_line_bytes``: longer lines are dropped to their next newline and
      counted (``stats.dropped_long``); the held partial line never exceeds it.
    - ``errors``: ``"replace"`` (counted in ``stats.decode_errors``) or
      ``"strict"`` (raise :class:`~talkpipe_async.sources.RecordError`).
    - ``checkpoint``: a file path; the offset of the last acknowledged line
      (see :class:`Line` and :class:`acknowledge`) is written there
      atomically, at most every ``checkpoint_interval`` seconds while the
      tail polls, and when the run ends.  On start a valid checkpoint wins
      over ``start``: the checkpointed file (found by inode in the same
      directory if it was rotated) is read from the acknowledged offset,
      then the files the tail held after it, then the file at the path.
    - ``events``: emit :class:`TailEvent` metadata (truncated, rotated, ...).

    Every kind of trouble is counted in ``stats`` (:class:`FileStats`).  A
    partial last line is held until its newline arrives; it is emitted only
    when its file is rotated away or deleted (counted in
    ``stats.unterminated``) and discarded if the file is truncated under it
    (``stats.partial_discarded``).
    """

    @overload
    def __init__(
        self: tail_file[Line],
        path: str | os.PathLike[str],
        *,
        start: Literal["end", "beginning"] = ...,
        poll_min: float = ...,
        poll_max: float = ...,
        rotate_grace: float = ...,
        encoding: str = ...,
        errors: str = ...,
        max_line_bytes: int = ...,
        chunk_size: int = ...,
        strip_cr: bool = ...,
        checkpoint: str | os.PathLike[str] | None = ...,
        checkpoint_interval: float = ...,
        events: bool = ...,
        text: Literal[False] = ...,
        watch: bool = ...,
        read_ahead: int = ...,
        name: str | None = ...,
        stats: FileStats | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: tail_file[str],
        path: str | os.PathLike[str],
        *,
        start: Literal["end", "beginning"] = ...,
        poll_min: float = ...,
        poll_max: float = ...,
        rotate_grace: float = ...,
        encoding: str = ...,
        errors: str = ...,
        max_line_bytes: int = ...,
        chunk_size: int = ...,
        strip_cr: bool = ...,
        checkpoint: str | os.PathLike[str] | None = ...,
        checkpoint_interval: float = ...,
        events: bool = ...,
        text: Literal[True],
        watch: bool = ...,
        read_ahead: int = ...,
        name: str | None = ...,
        stats: FileStats | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: tail_file[Any],
        path: str | os.PathLike[str],
        *,
        start: Literal["end", "beginning"] = ...,
        poll_min: float = ...,
        poll_max: float = ...,
        rotate_grace: float = ...,
        encoding: str = ...,
        errors: str = ...,
        max_line_bytes: int = ...,
        chunk_size: int = ...,
        strip_cr: bool = ...,
        checkpoint: str | os.PathLike[str] | None = ...,
        checkpoint_interval: float = ...,
        events: bool = ...,
        text: bool,
        watch: bool = ...,
        read_ahead: int = ...,
        name: str | None = ...,
        stats: FileStats | None = ...,
    ) -> None: ...
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
        read_ahead: int = DEFAULT_READ_AHEAD,
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
        if read_ahead < 0:
            raise ValueError("read_ahead must be 0 or more")
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
        self.read_ahead = read_ahead
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
        try:
            await run_sync(tailer.load_checkpoint)
            watcher = tailer.start_scout(self.watch)
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
            with anyio.CancelScope(shield=True):
                await run_sync(tailer.close)


class acknowledge(PassThrough[Item]):
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
