"""The items of the command's pipeline: :class:`Record` on the way in, :class:`Output` on the way out.

Every item travels as a :class:`Record` (its text, its parsed JSON value,
and the tail :class:`~talkpipe_async.sources.Line` it came from, if any) so
that filters can read the JSON while the output keeps the original text,
and so that a tail checkpoint acknowledges a line only after every
destination wrote it.  Before the destinations, :func:`render` turns each
record (or batch of records) into an :class:`Output` whose ``str()`` is the
line to write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._core._errors import TalkpipeAsyncError
from ..sources.sse import SSEEvent
from ..sources.tail import Line
from .conditions import Condition

__all__ = [
    "NO_VALUE",
    "BadTarget",
    "CliState",
    "Output",
    "Record",
    "dumps",
    "grep_filter",
    "json_parser",
    "render",
    "to_record",
    "where_filter",
]


class _NoValue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


class Record:
    """One item on its way through the command's pipeline.

    ``text``: the text as read (``None`` for structured items); ``value``:
    the JSON value (``NO_VALUE`` until parsed); ``line``: the tail line to
    acknowledge once written (or ``None``).
    """

    __slots__ = ("line", "text", "value")

    def __init__(self, text: str | None, value: Any = NO_VALUE, line: Line | None = None) -> None:
        self.text = text
        self.value = value
        self.line = line

    @property
    def payload(self) -> Any:
        """The JSON value when there is one, else the text."""
        return self.text if self.value is NO_VALUE else self.value

    def grep_text(self) -> str:
        """The text that ``--grep`` searches (compact JSON for structured items)."""
        if self.text is not None:
            return self.text
        return dumps(self.value)

    def __repr__(self) -> str:
        return repr(self.text) if self.text is not None else repr(self.value)


class Output:
    """A rendered record or batch: ``str()`` is the line to write; ``payload`` the JSON value."""

    __slots__ = ("line", "payload", "text")

    def __init__(self, text: str, payload: Any, line: Line | None) -> None:
        self.text = text
        self.payload = payload
        self.line = line

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return repr(self.text)


@dataclass
class CliState:
    """What one command run counted: lines that were not JSON, the signal that stopped it."""

    bad_json: int = 0
    signal: int | None = None
    sources: list[Any] = field(default_factory=list)


class BadTarget(ValueError, TalkpipeAsyncError):
    """``run MODULE:ATTRIBUTE`` names nothing usable (exit code 2)."""


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII kept, anything else as ``str``."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def to_record(item: Any) -> Record:
    """Wrap a source's item: tail lines, text, SSE events (their data) and structured values."""
    if type(item) is Line:
        return Record(item.text, NO_VALUE, item)
    if isinstance(item, str):
        return Record(item)
    if isinstance(item, SSEEvent):
        return Record(item.data)
    if isinstance(item, (bytes, bytearray)):
        return Record(bytes(item).decode("utf-8", "replace"))
    return Record(None, item)


def render(fmt: str) -> Callable[[Any], Output]:
    """The function that turns a :class:`Record` (or a list of them) into an :class:`Output`."""

    def one(rec: Record) -> Output:
        if fmt == "json":
            return Output(dumps(rec.payload), rec.payload, rec.line)
        text = rec.text if rec.text is not None else dumps(rec.value)
        return Output(text, rec.payload, rec.line)

    def any_(item: Any) -> Output:
        if isinstance(item, list):
            payload = [r.payload for r in item]
            line = next((r.line for r in reversed(item) if r.line is not None), None)
            return Output(dumps(payload), payload, line)
        return one(item)

    return any_


def json_parser(state: CliState, policy: str) -> Callable[[Record], bool]:
    """``--json``: parse each record's text; a bad line fails the run (``fail``) or is counted and dropped."""
    loads = json.loads

    def parse(rec: Record) -> bool:
        if rec.value is not NO_VALUE:
            return True
        try:
            rec.value = loads(rec.text or "")
        except ValueError as exc:
            if policy == "fail":
                raise ValueError(f"not JSON ({exc}): {rec.text!r:.200}") from None
            state.bad_json += 1
            return False
        return True

    parse.__name__ = parse.__qualname__ = "--json"
    return parse


def grep_filter(patterns: list[str], ignore_case: bool, keep: bool) -> Callable[[Record], bool]:
    """``--grep`` (*keep*) / ``--grep-v``: does a record match any of *patterns*."""
    flags = re.IGNORECASE if ignore_case else 0
    compiled = [re.compile(p, flags) for p in patterns]
    if len(compiled) == 1:
        search = compiled[0].search
        if keep:
            return lambda rec: search(rec.grep_text()) is not None
        return lambda rec: search(rec.grep_text()) is None
    if keep:
        return lambda rec: any(c.search(rec.grep_text()) for c in compiled)
    return lambda rec: not any(c.search(rec.grep_text()) for c in compiled)


def where_filter(cond: Condition) -> Callable[[Record], bool]:
    """``--where``: does a record's JSON value satisfy *cond*."""
    def where(rec: Record) -> bool:
        return cond(rec.value)

    where.__name__ = where.__qualname__ = f"--where {cond.text}"
    return where
