"""The shared base of the sources that split a byte stream into lines, and the framing names they use.

:class:`FramedSource` holds the options of the line-framed sources (TCP,
Unix, process output).  The framer and the counters live in the private
transport layer (``talkpipe_async._net.framing``); their public names are
:class:`talkpipe_async.sources.LineFramer` and
:class:`talkpipe_async.sources.NetStats`.
"""

from __future__ import annotations

from typing import TypeVar

from .._core._segment import AbstractSource
from .._net.framing import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from .._net.framing import READ_SIZE as READ_SIZE
from .._net.framing import ConnectionLost as ConnectionLost
from .._net.framing import LineFramer as LineFramer
from .._net.framing import LineTooLong as LineTooLong
from .._net.framing import NetStats as NetStats
from .._net.framing import Overlong as Overlong

__all__ = [
    "DEFAULT_MAX_LINE",
    "READ_SIZE",
    "ConnectionLost",
    "FramedSource",
    "LineFramer",
    "LineTooLong",
    "NetStats",
    "Overlong",
]

ItemT = TypeVar("ItemT")


class FramedSource(AbstractSource[ItemT]):
    """Shared options of the sources that split a byte stream with a :class:`LineFramer`."""

    def __init__(
        self,
        max_line_bytes: int,
        on_overlong: Overlong,
        encoding: str,
        errors: str,
        stats: NetStats | None,
        name: str | None,
        /,
    ) -> None:
        super().__init__()
        self.max_line_bytes = max_line_bytes
        self.on_overlong = on_overlong
        self.encoding = encoding
        self.errors = errors
        self.stats = stats if stats is not None else NetStats()
        if name:
            self.name = name

    def _framer(self, label: str, stats: NetStats) -> LineFramer:
        return LineFramer(self.max_line_bytes, overlong=self.on_overlong, label=label, stats=stats)

