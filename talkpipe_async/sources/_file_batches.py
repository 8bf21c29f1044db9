"""How the file sources hand out batches: inline reads from the page cache, then worker threads read ahead.

:func:`file_batches` reads a file's cached chunks in the event loop (with a
checkpoint at least every :data:`INLINE_SLICE` seconds), then the rest in
worker threads through :func:`read_ahead`, which keeps up to
:data:`READ_AHEAD` batches ready while the consumer works.
:func:`expand_paths` turns paths and globs into file names.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._core._channel import Channel, ChannelClosed
from .._core._errors import TalkpipeAsyncError
from .._core._run import current_run

if TYPE_CHECKING:
    from ._line_file import LineFile

__all__ = ["INLINE_SLICE", "READ_AHEAD", "BatchCut", "expand_paths", "file_batches", "read_ahead"]

log = logging.getLogger("talkpipe_async.sources.files")

#: Longest stretch of event-loop time spent reading cached chunks inline before a checkpoint.
INLINE_SLICE = 0.002
_GLOB_MAGIC = frozenset("*?[")

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


class BatchCut(TalkpipeAsyncError):
    """Raised by a parse step at a bad line: the items parsed before it, then the error to raise after them.

    A chunk holds many lines; without this the items before the bad one, already read and parsed, would be
    lost with the error (which ones depended on the chunk size and the page cache).
    """

    def __init__(self, items: list[Any], error: BaseException) -> None:
        self.items = items
        self.error = error


def _keep(lines: list[Any]) -> list[Any]:
    return lines


async def file_batches(
    reader: LineFile, parse: Parse = _keep, keep_places: bool = False
) -> AsyncGenerator[list[Any], None]:
    """``parse(lines)`` of every chunk of *reader*: inline while the page cache holds it, then in threads.

    Inline reads never block (``RWF_NOWAIT``); the loop gets a checkpoint at
    least every :data:`INLINE_SLICE` seconds.  At the first chunk that is not
    cached, the rest of the file is read ahead in worker threads.
    """
    cut: BatchCut | None = None
    try:
        async with aclosing(_parsed_batches(reader, parse, keep_places)) as batches:
            async for batch in batches:
                yield batch
    except BatchCut as exc:
        cut = exc
    if cut is not None:
        if cut.items:
            yield cut.items
        raise cut.error


async def _parsed_batches(reader: LineFile, parse: Parse, keep_places: bool) -> AsyncGenerator[list[Any], None]:
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
