"""Marble diagrams: timed input and expected output written as strings, checked in virtual time.

``"-a-b---c|"``: each character is one time unit (``unit`` seconds,
10 ms by default); ``-`` is a unit with nothing, a letter or digit is an
item at that unit (its value from ``values``, else the character itself),
``|`` the end of the stream, ``#`` an error, ``F`` a :class:`Flush` (unless
``values`` maps it), and ``(ab)`` items at the same unit (the whole group
takes one unit).  Spaces are ignored.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from .._core._errors import TalkpipeAsyncError
from .._core._metadata import Flush
from .._core._segment import AbstractSource
from ._clock import in_virtual_time

__all__ = ["MarbleError", "MarbleEvent", "assert_marbles", "marble_source", "parse_marbles", "record_marbles"]

DEFAULT_UNIT = 0.01
#: how many units past the expected end a run is still watched (an item after the end shows in the diff)
_AFTER_END = 10


class MarbleError(TalkpipeAsyncError):
    """The error a ``#`` of an input diagram raises (unless ``values`` maps ``#`` to an exception)."""


@dataclass(frozen=True)
class MarbleEvent:
    """One event of a diagram: an item, the end or an error, at a frame (a count of units)."""

    frame: int
    kind: Literal["item", "end", "error"]
    value: Any = None


def parse_marbles(diagram: str, values: Mapping[str, Any] | None = None) -> list[MarbleEvent]:
    """The events of *diagram*, in order.  Raises ``ValueError`` on a malformed diagram."""
    values = values or {}
    events: list[MarbleEvent] = []
    frame, group = 0, False
    for i, ch in enumerate(diagram):
        if ch == " ":
            continue
        if ch == "(":
            if group:
                raise ValueError(f"marbles {diagram!r}: nested '(' at {i}")
            group = True
            continue
        if ch == ")":
            if not group:
                raise ValueError(f"marbles {diagram!r}: ')' without '(' at {i}")
            group = False
            frame += 1
            continue
        if ch != "-":
            events.append(_event(frame, ch, values))
        if not group:
            frame += 1
    if group:
        raise ValueError(f"marbles {diagram!r}: '(' not closed")
    return events


def _event(frame: int, ch: str, values: Mapping[str, Any]) -> MarbleEvent:
    if ch == "|":
        return MarbleEvent(frame, "end")
    if ch == "#":
        return MarbleEvent(frame, "error", values.get("#", MarbleError("#")))
    if ch in values:
        return MarbleEvent(frame, "item", values[ch])
    return MarbleEvent(frame, "item", Flush() if ch == "F" else ch)


def span(diagram: str) -> int:
    """How many units the diagram covers."""
    frames = 0
    group = False
    for ch in diagram.replace(" ", ""):
        if ch == "(":
            group = True
        elif ch == ")":
            group = False
            frames += 1
        elif not group:
            frames += 1
    return frames


class marble_source(AbstractSource[Any]):
    """A source that plays an input diagram: each item at its unit after the first pull.

    Without ``|`` or ``#`` it waits forever after its last item (a stream
    that has not ended).  Use it for operators with several inputs::

        merge(marble_source("-a--b|"), marble_source("--x|"))
    """

    def __init__(self, diagram: str, values: Mapping[str, Any] | None = None, *, unit: float = DEFAULT_UNIT) -> None:
        super().__init__()
        self.events = parse_marbles(diagram, values)
        self.unit = unit
        self.name = f"marbles {diagram!r}"

    async def generate(self) -> AsyncIterator[Any]:
        """Yield each item at its time; end or raise where the diagram says."""
        start = anyio.current_time()
        for event in self.events:
            await anyio.sleep_until(start + event.frame * self.unit)
            if event.kind == "end":
                return
            if event.kind == "error":
                error = event.value
                raise error if isinstance(error, BaseException) else MarbleError(repr(error))
            yield event.value
        await anyio.sleep_forever()


def _frame(elapsed: float, unit: float) -> int:
    units = elapsed / unit
    near = round(units)
    return near if abs(units - near) < 1e-6 else math.floor(units)


async def record_marbles(stage: Any, input: Any, *, unit: float = DEFAULT_UNIT, until: float) -> list[MarbleEvent]:
    """Run *stage* over *input* (metadata included) and note each event's frame, watching for *until* units."""
    events: list[MarbleEvent] = []
    start = anyio.current_time()

    def now() -> int:
        return _frame(anyio.current_time() - start, unit)

    with anyio.move_on_after(until * unit):
        try:
            async with stage.stream(input, metadata=True) as items:
                async for x in items:
                    events.append(MarbleEvent(now(), "item", x))
        except Exception as exc:
            events.append(MarbleEvent(now(), "error", exc))
        else:
            events.append(MarbleEvent(now(), "end"))
    return events


Errors = type[BaseException] | tuple[type[BaseException], ...]


def _matches(expected: MarbleEvent, got: MarbleEvent, errors: Errors) -> bool:
    if expected.frame != got.frame or expected.kind != got.kind:
        return False
    if expected.kind == "error":
        exc = got.value
        if isinstance(expected.value, MarbleError):  # a bare '#': any error of the given types
            return isinstance(exc, errors)
        return type(exc) is type(expected.value) and str(exc) == str(expected.value)
    return bool(expected.value == got.value)


def render(events: list[MarbleEvent], values: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Draw *events* as a diagram; values with no symbol in *values* are drawn ``?`` and listed."""
    notes: list[str] = []
    by_frame: dict[int, list[str]] = {}
    for e in events:
        by_frame.setdefault(e.frame, []).append(_symbol(e, values, notes))
    last = max(by_frame, default=-1)
    cells = []
    for frame in range(last + 1):
        symbols = by_frame.get(frame, ["-"])
        cells.append(symbols[0] if len(symbols) == 1 else "(" + "".join(symbols) + ")")
    return "".join(cells), notes


def _symbol(event: MarbleEvent, values: Mapping[str, Any], notes: list[str]) -> str:
    if event.kind == "end":
        return "|"
    if event.kind == "error":
        notes.append(f"# at frame {event.frame}: {event.value!r}")
        return "#"
    for ch, v in values.items():
        if type(v) is type(event.value) and v == event.value:
            return ch
    if isinstance(event.value, Flush):
        return "F"
    if isinstance(event.value, str) and len(event.value) == 1 and event.value not in "-|#() ":
        return event.value
    notes.append(f"? at frame {event.frame}: {event.value!r}")
    return "?"


def _describe(
    expected: list[MarbleEvent], got: list[MarbleEvent], values: Mapping[str, Any], unit: float, errors: Errors
) -> str:
    want, _ = render(expected, values)
    seen, notes = render(got, values)
    first = next(
        (i for i, (e, g) in enumerate(zip(expected, got, strict=False)) if not _matches(e, g, errors)),
        min(len(expected), len(got)),
    )
    lines = [f"marbles differ at event {first} (unit {unit} s)", f"  expected: {want}", f"  got:      {seen}"]
    lines.append(f"  expected event {first}: {_event_text(expected, first, unit)}")
    lines.append(f"  got event {first}:      {_event_text(got, first, unit)}")
    lines.extend("  " + n for n in notes)
    return "\n".join(lines)


def _event_text(events: list[MarbleEvent], i: int, unit: float) -> str:
    if i >= len(events):
        return "nothing (no more events)"
    e = events[i]
    what = {"end": "end", "error": f"error {e.value!r}"}.get(e.kind, repr(e.value))
    return f"{what} at frame {e.frame} (t={e.frame * unit:.6g} s)"


async def assert_marbles(
    stage: Any,
    input: str | None,
    expected: str,
    values: Mapping[str, Any] | None = None,
    *,
    unit: float = DEFAULT_UNIT,
    errors: Errors = Exception,
) -> list[MarbleEvent]:
    """Check that *stage*, fed the *input* diagram, emits the *expected* diagram, in virtual time.

    *input* is None for a stage with its own sources (a source, ``merge``).
    Both diagrams read their symbols from *values*.  A ``#`` expected
    matches an error of the types in *errors* (or, when ``values`` maps
    ``#`` to an exception, one of the same type and message).  Expected
    without ``|`` means "not ended within the diagram": the run is watched
    for the diagram's span only; with ``|`` it is watched a few units past
    the end, so late items show.  Runs on the test's clock when it is
    virtual, else on a fresh virtual clock (see :func:`in_virtual_time`).
    Raises ``AssertionError`` with both diagrams and the first differing
    event; returns the events seen.
    """
    values = dict(values or {})
    want = parse_marbles(expected, values)
    frames = max(span(expected), span(input) if input is not None else 0)
    ends = any(e.kind != "item" for e in want)
    until = frames + _AFTER_END - 0.5 if ends else frames - 0.5
    source = marble_source(input, values, unit=unit) if input is not None else None
    pipeline = source | stage if source is not None else stage
    got = await in_virtual_time(_record, pipeline, unit, until)
    if len(got) != len(want) or not all(_matches(e, g, errors) for e, g in zip(want, got, strict=False)):
        raise AssertionError(_describe(want, got, values, unit, errors))
    return got


async def _record(pipeline: Any, unit: float, until: float) -> list[MarbleEvent]:
    return await record_marbles(pipeline, None, unit=unit, until=until)
