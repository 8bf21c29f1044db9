"""Lines of bytes for the file sources and the tail: splitting with a cap, decoding, counters, errors.

:class:`Splitter` cuts a byte stream into lines and holds at most
``max_line`` bytes of partial line (longer lines are dropped up to their
next newline and counted); :class:`LineDecoder` decodes them with the
stage's error policy.  :class:`FileStats` and :class:`RecordError` are
re-exported by :mod:`talkpipe_async.sources.files`.
"""

from __future__ import annotations

import codecs
from dataclasses import asdict, dataclass
from typing import Any

from .._core._counters import Counters
from .._core._errors import TalkpipeAsyncError

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_MAX_LINE",
    "DROPPED",
    "BadLine",
    "FileStats",
    "LineDecoder",
    "RecordError",
    "Splitter",
    "check_encoding",
    "check_errors",
]

DEFAULT_CHUNK = 128 * 1024
DEFAULT_MAX_LINE = 1024 * 1024


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
