"""The pieces every network stage shares: :class:`LineFramer`, :class:`NetStats` and the stream errors.

:class:`LineFramer` splits 64 KiB reads into lines in Python with a hard
line-length cap; :class:`NetStats` holds the counters a caller reads while
and after a run.  (Re-exported by :mod:`talkpipe_async.sources` and
:mod:`talkpipe_async.sources.sockets`.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from .._core._counters import Counters
from .._core._errors import TalkpipeAsyncError

__all__ = ["DEFAULT_MAX_LINE", "READ_SIZE", "ConnectionLost", "LineFramer", "LineTooLong", "NetStats", "Overlong"]

log = logging.getLogger("talkpipe_async.net")

READ_SIZE = 65536
DEFAULT_MAX_LINE = 1 << 20

Overlong = Literal["raise", "skip"]


class LineTooLong(ValueError, TalkpipeAsyncError):
    """A line exceeded ``max_line_bytes`` (raised with policy ``on_overlong="raise"``)."""


class ConnectionLost(ConnectionError, TalkpipeAsyncError):
    """A stream ended abnormally (reset, protocol error, read timeout) and reconnecting is off."""


@dataclass
class NetStats(Counters):
    """Counters of one network source or sink; pass one in as ``stats=`` to read them.

    Every dropped line, byte, datagram or rejected connection is counted here:
    nothing is discarded without a trace.  ``blocked_puts`` (servers) counts
    the reads whose lines had to wait for room in the source's buffer: each
    one is the pipeline pushing back on a client.
    """

    connections: int = 0
    reconnects: int = 0
    rejected: int = 0
    idle_closed: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    items: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0
    partial_dropped: int = 0
    malformed: int = 0
    datagrams_dropped: int = 0
    errors: int = 0
    high_water: int = 0
    last_error: str = ""
    tls_failures: int = 0
    blocked_puts: int = 0


class LineFramer:
    """Split a byte stream into lines on ``b"\\n"`` with a hard length cap.

    Feed it chunks of any size; it returns the complete lines (without the
    newline, and without a trailing ``\\r`` when ``strip_cr``).  The unfinished
    last line is kept until its newline arrives, but never more than
    ``max_line_bytes``: an over-long line raises :class:`LineTooLong`
    (``overlong="raise"``) or is dropped up to the next newline and counted
    (``overlong="skip"``), so memory stays bounded whatever the peer sends.
    Text decoding assumes an ASCII-compatible encoding (UTF-8, Latin-1).
    """

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE,
        *,
        overlong: Overlong = "raise",
        strip_cr: bool = True,
        label: str = "stream",
        stats: NetStats | None = None,
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        if overlong not in ("raise", "skip"):
            raise ValueError(f"overlong must be 'raise' or 'skip', not {overlong!r}")
        self.max_line_bytes = max_line_bytes
        self.overlong = overlong
        self.strip_cr = strip_cr
        self.label = label
        self.stats = stats if stats is not None else NetStats()
        self._partial = b""
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of the unfinished last line held now (at most ``max_line_bytes``)."""
        return len(self._partial)

    def _too_long(self, size: int) -> None:
        if self.overlong == "raise":
            raise LineTooLong(f"{self.label}: line longer than {self.max_line_bytes} bytes (at least {size})")
        self.stats.dropped_lines += 1
        if self.stats.dropped_lines == 1:
            log.warning("%s: dropping lines longer than %d bytes (counted in stats)", self.label, self.max_line_bytes)

    def _block(self, data: bytes) -> bytes | None:
        """The complete lines of *data* (joined, no final newline), or None."""
        if self._discarding:
            i = data.find(b"\n")
            if i < 0:
                self.stats.dropped_bytes += len(data)
                return None
            self.stats.dropped_bytes += i + 1
            data = data[i + 1 :]
            self._discarding = False
        end = data.rfind(b"\n")
        cap = self.max_line_bytes
        if end < 0:
            partial = self._partial + data if self._partial else data
            if len(partial) > cap:
                self._too_long(len(partial))
                self.stats.dropped_bytes += len(partial)
                self._partial = b""
                self._discarding = True
            else:
                self._partial = partial
            return None
        block = self._partial + data[:end] if self._partial else data[:end]
        rest = data[end + 1 :]
        if len(rest) > cap:
            self._too_long(len(rest))
            self.stats.dropped_bytes += len(rest)
            self._partial = b""
            self._discarding = True
        else:
            self._partial = rest
        if len(block) > cap:  # some line of the block may be over the cap: check each
            lines = block.split(b"\n")
            kept = []
            for line in lines:
                if len(line) > cap:
                    self._too_long(len(line))
                    self.stats.dropped_bytes += len(line) + 1
                else:
                    kept.append(line)
            if not kept:
                return None
            block = b"\n".join(kept)
        return block

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines (bytes) that *data* finishes."""
        block = self._block(data)
        if block is None:
            return []
        lines = block.split(b"\n")
        if self.strip_cr and b"\r" in block:
            lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
        return lines

    def feed_text(self, data: bytes, encoding: str = "utf-8", errors: str = "replace") -> list[str]:
        """The complete lines (decoded) that *data* finishes; one decode per chunk."""
        block = self._block(data)
        if block is None:
            return []
        lines = block.decode(encoding, errors).split("\n")
        if self.strip_cr and b"\r" in block:
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        return lines

    def finish(self) -> bytes | None:
        """At a clean end of stream: the unterminated last line, if any."""
        tail, self._partial = self._partial, b""
        if self._discarding or not tail:
            self._discarding = False
            return None
        if self.strip_cr and tail.endswith(b"\r"):
            tail = tail[:-1]
        return tail

    def drop_partial(self) -> None:
        """The stream broke: forget (and count) the unfinished last line."""
        if self._partial:
            self.stats.partial_dropped += 1
            self.stats.dropped_bytes += len(self._partial)
        self._partial = b""
        self._discarding = False
