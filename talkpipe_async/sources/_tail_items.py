"""What :class:`~talkpipe_async.sources.tail_file` yields: lines that can be acknowledged, and events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .._core._metadata import Metadata
from ._tail_files import Gen

if TYPE_CHECKING:
    from ._tail_chain import _Tailer

__all__ = ["Line", "TailEvent"]


class TailEvent(Metadata):
    """Metadata emitted by :class:`tail_file` when the followed file changes.

    ``kind`` is ``"missing"`` (no file at the path; once per absence),
    ``"truncated"`` (reading restarted at offset 0; ``offset`` is where it
    was; ``recovered_from`` names the copy the unread rest is read from,
    when one was found), ``"deleted"`` (the followed file left its name and
    was drained and closed, and no other file is at the path) or
    ``"rotated"`` (reading moved on to the next file that was at the path,
    from its start).  Like all metadata it only reaches stages that set
    ``process_metadata=True`` and ``stream(metadata=True)`` consumers.
    """

    kind: str
    path: str

    def __init__(self, kind: str, path: str, **fields: Any) -> None:
        super().__init__(kind=kind, path=path, **fields)


class Line:
    """One line from :class:`tail_file`: its text and the offset just after its newline.

    ``str(line)`` is the text.  ``ack()`` acknowledges this line and every
    line before it (in stream order) for the checkpoint; ``await commit()``
    also writes the checkpoint now, durably.  Acknowledging is cheap and may
    happen from any task or thread; acknowledging a line older than one
    already acknowledged changes nothing.
    """

    __slots__ = ("_gen", "_seq", "_tailer", "offset", "path", "text")

    def __init__(self, text: str, path: str, offset: int, gen: Gen, seq: int, tailer: _Tailer) -> None:
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
