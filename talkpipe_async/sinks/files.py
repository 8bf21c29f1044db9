"""File sinks: append lines or JSON Lines to a file, rotation-safe, with a flush policy.

The sinks pass every item on after writing it (or after flushing it, with
``emit="flushed"``), so a checkpointing stage such as
:class:`talkpipe_async.sources.acknowledge` can follow them.  Writes happen in
a worker thread (``anyio.to_thread.run_sync``: asyncio, uvloop and trio), one
hop per batch of items.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TypedDict

import anyio
import anyio.to_thread

from .._core._channel import Channel, ChannelClosed
from .._core._counters import Counters
from .._core._fields import extract_field
from .._core._metadata import Flush, Metadata
from .._core._run import current_run
from .._core._segment import PassThrough
from ._item_types import T
from ._ndjson import ndjson_dumps

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SinkStats", "write_jsonl", "write_lines"]


@dataclass
class SinkStats(Counters):
    """Counters of a file sink (accumulated over all runs of the stage)."""

    items: int = 0
    """Items written."""
    bytes: int = 0
    """Bytes written."""
    flushes: int = 0
    """Flushes of the file buffer to the OS."""
    fsyncs: int = 0
    """``os.fsync`` calls (``fsync=True``)."""
    reopens: int = 0
    """Times the path was reopened because its file was rotated away or deleted."""

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


class _Writer:
    """The thread side: an append-mode file that follows its path."""

    def __init__(self, sink: _FileSink[Any]) -> None:
        self.sink = sink
        self.path = sink.path
        self.stats = sink.stats
        self.f: BinaryIO | None = None
        self.ident = (0, 0)
        self.unflushed = 0
        self.dirty_since = 0.0  # monotonic time of the first unflushed write
        self.closed = False
        self.lock = threading.Lock()

    def _open(self) -> BinaryIO:
        f = open(self.path, "ab")
        st = os.fstat(f.fileno())
        self.ident = (st.st_dev, st.st_ino)
        self.f = f
        return f

    def _file(self) -> BinaryIO:
        """The open file for the path: opened on first use, reopened when the path's file was rotated or deleted."""
        f = self.f
        if f is None:
            return self._open()
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self.ident
        except FileNotFoundError:
            moved = True
        if moved:
            self.stats.reopens += 1
            self._flush_file(f)
            f.close()
            self.f = None
            return self._open()
        return f

    def write(self, items: list[Any]) -> None:
        data = self.sink.encode_batch(items)
        with self.lock:
            f = self._file()
            f.write(data)
            self.stats.items += len(items)
            self.stats.bytes += len(data)
            if not self.unflushed:
                self.dirty_since = time.monotonic()
            self.unflushed += len(items)
            every = self.sink.flush_every
            if every is not None and self.unflushed >= every:
                self._flush()

    def _flush_file(self, f: BinaryIO) -> None:
        f.flush()
        self.stats.flushes += 1
        if self.sink.fsync:
            os.fsync(f.fileno())
            self.stats.fsyncs += 1

    def _flush(self) -> None:
        if self.f is not None and self.unflushed:
            self._flush_file(self.f)
        self.unflushed = 0

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def flush_if_due(self, interval: float) -> None:
        with self.lock:
            if self.unflushed and time.monotonic() - self.dirty_since >= interval:
                self._flush()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            f, self.f = self.f, None
            if f is not None:
                try:
                    if self.unflushed:
                        self._flush_file(f)
                finally:
                    self.unflushed = 0
                    f.close()


async def _flush_timer(writer: _Writer, interval: float) -> None:
    """Flush data older than *interval* even while the sink is suspended (a slow consumer)."""
    while not writer.closed:
        await anyio.sleep(interval / 2)
        if writer.unflushed and not writer.closed:
            await anyio.to_thread.run_sync(writer.flush_if_due, interval)


async def _feed(items: AsyncIterator[Any], channel: Channel) -> None:
    try:
        async for item in items:
            await channel.put(item)
    except ChannelClosed:
        return
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:  # handed to the sink's task, in order
        channel.close(exc)
        return
    channel.close()


class FileSinkOptions(TypedDict, total=False):
    """The options the file sinks share (:class:`write_lines`, :class:`write_jsonl`); see :class:`write_lines`."""

    field: str | None
    flush_every: int | None
    flush_interval: float | None
    fsync: bool
    emit: Literal["written", "flushed"]
    buffer: int
    name: str | None
    stats: SinkStats | None


class _FileSink(PassThrough[T]):
    """Shared machinery of the file sinks."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        field: str | None = None,
        flush_every: int | None = None,
        flush_interval: float | None = 1.0,
        fsync: bool = False,
        emit: Literal["written", "flushed"] = "written",
        buffer: int = 256,
        name: str | None = None,
        stats: SinkStats | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        if emit not in ("written", "flushed"):
            raise ValueError(f"emit must be 'written' or 'flushed', not {emit!r}")
        if flush_every is not None and flush_every < 1:
            raise ValueError("flush_every must be at least 1")
        if flush_interval is not None and flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if emit == "flushed" and flush_every is None and flush_interval is None:
            raise ValueError('emit="flushed" needs flush_every or flush_interval (or items would pile up)')
        self.path = os.fspath(path)
        self.field = field
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self.fsync = fsync
        self.emit = emit
        self.buffer = buffer
        self.name = name or type(self).__name__
        self.stats = stats if stats is not None else SinkStats()

    def encode_batch(self, items: list[Any]) -> bytes:
        """The bytes for a batch of items (runs in the worker thread)."""
        raise NotImplementedError

    def _value(self, item: Any) -> Any:
        return item if self.field is None else extract_field(item, self.field)

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Write every item, pass every item and metadata on in order."""
        run = current_run()
        channel = Channel(self.buffer)
        run.start_soon(_feed, items, channel, name=f"{self.label} feeder")
        state = _SinkRun(self, _Writer(self))
        if self.flush_interval is not None:
            run.start_soon(_flush_timer, state.writer, self.flush_interval, name=f"{self.label} flush timer")
        try:
            while True:
                batch = await state.next_batch(channel, self.buffer)
                if batch is None:  # the flush deadline passed, or the upstream ended
                    await state.flush()
                    for x in state.release():
                        yield x
                    if state.ended:
                        return
                    continue
                data: list[Any] = []
                for item in batch:
                    if not isinstance(item, Metadata):
                        data.append(item)
                        continue
                    await state.write(data)  # the data before the metadata, first
                    data = []
                    for x in await state.take_metadata(item):
                        yield x
                await state.write(data)
                for x in state.after_batch():
                    yield x
        finally:
            channel.abort()
            await state.close()


class _SinkRun:
    """One run of a file sink: the items written but not passed on yet, and the flush policy.

    Items pass on once written (``emit="written"``) or once flushed
    (``emit="flushed"``); metadata passes on after the items before it.
    Unflushed data is flushed ``flush_interval`` seconds after the batch that
    left it unflushed, even when no further item arrives.
    """

    def __init__(self, sink: _FileSink[Any], writer: _Writer) -> None:
        self.writer = writer
        self.hold = sink.emit == "flushed"
        self.interval = sink.flush_interval
        self.out: list[Any] = []  # written items (and metadata after them) not passed on yet
        self.deadline = float("inf")  # when unflushed data must be flushed
        self.ended = False

    async def next_batch(self, channel: Channel, size: int) -> list[Any] | None:
        """The next batch from the feeder; None when the flush deadline passes first or the upstream ended."""
        with anyio.move_on_after(self.deadline - anyio.current_time()):
            try:
                return await channel.get_batch(size)
            except anyio.EndOfStream:
                self.ended = True
        return None

    def release(self) -> list[Any]:
        """Everything held so far, to pass on now."""
        out, self.out = self.out, []
        return out

    async def write(self, data: list[Any]) -> None:
        """Write a batch of items in the worker thread (one hop), reopening a rotated file first."""
        if data:
            await anyio.to_thread.run_sync(self.writer.write, data)
            self.out.extend(data)

    async def flush(self) -> None:
        """Flush the file now: nothing is left unflushed, so no deadline is pending."""
        await anyio.to_thread.run_sync(self.writer.flush)
        self.deadline = float("inf")

    async def take_metadata(self, item: Metadata) -> list[Any]:
        """Queue *item* after the items written before it; what may pass on now.

        A :class:`Flush` flushes the file, so it and everything before it pass
        on at once; other metadata waits with the items under ``emit="flushed"``.
        """
        if isinstance(item, Flush):
            await self.flush()
            hold_now = False
        else:
            hold_now = self.hold
        self.out.append(item)
        return [] if hold_now else self.release()

    def after_batch(self) -> list[Any]:
        """Arm the flush deadline for data the batch left unflushed; what may pass on now."""
        if self.writer.unflushed == 0:
            self.deadline = float("inf")
        elif self.interval is not None and self.deadline == float("inf"):
            self.deadline = anyio.current_time() + self.interval
        if not self.hold or self.writer.unflushed == 0:
            return self.release()
        return []

    async def close(self) -> None:
        """Flush and close the file, shielded: a cancelled run still hands what it wrote to the OS."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.writer.close)


class write_lines(_FileSink[T]):
    """Append each item (``str``, or ``str(item)``; or its ``field``) as a line to *path*.

    Rotation-safe: before each batch the sink compares ``stat(path)`` with
    its open file and reopens (append mode) when the file was renamed or
    deleted.  Flush policy (all optional, any combination): every
    ``flush_every`` items, ``flush_interval`` seconds after the first
    unflushed write (also while no items arrive), and on :class:`Flush`
    metadata; always at the end of the run.  ``fsync=True`` syncs each flush
    to disk.  Items pass on after being written (``emit="written"``) or only
    once flushed (``emit="flushed"``: at most ``flush_every`` items held).
    ``newline`` ends each line; text that itself contains newlines is written
    as is.  ``buffer``: items read ahead from upstream (and per thread hop).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encoding: str = "utf-8",
        errors: str = "strict",
        newline: str = "\n",
        **options: Unpack[FileSinkOptions],
    ) -> None:
        super().__init__(path, **options)
        self.encoding = encoding
        self.errors = errors
        self.newline = newline

    def encode_batch(self, items: list[Any]) -> bytes:
        """Join the lines and encode them."""
        value = self._value
        nl = self.newline
        texts = [v if type(v) is str else str(v) for v in map(value, items)]
        texts.append("")
        return nl.join(texts).encode(self.encoding, self.errors)


class write_jsonl(_FileSink[T]):
    """Append each item (or its ``field``) as one JSON line to *path*; see :class:`write_lines` for the policies.

    ``dumps`` replaces the default serializer (``json.dumps`` with
    ``ensure_ascii=False`` and compact separators, U+2028 and U+2029 escaped
    so that no line reader splits a record); an item it cannot serialise raises ``TypeError``
    naming the stage and the item.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dumps: Callable[[Any], str] | None = None,
        **options: Unpack[FileSinkOptions],
    ) -> None:
        super().__init__(path, **options)
        self.dumps = dumps or _compact_dumps

    def encode_batch(self, items: list[Any]) -> bytes:
        """One JSON document per line."""
        dumps = self.dumps
        value = self._value
        texts = []
        for item in items:
            try:
                texts.append(dumps(value(item)))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{self.label}: cannot write item {item!r:.120} as JSON: {exc}") from exc
        texts.append("")
        return "\n".join(texts).encode("utf-8")


def _compact_dumps(value: Any) -> str:
    return ndjson_dumps(value, compact=True)
