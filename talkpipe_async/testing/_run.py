"""Run a stage or pipeline on given input under a timeout, and compare its output with a readable diff."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import AsyncIterable, Iterable, Sequence
from typing import Any

import anyio

from .._core._errors import TalkpipeAsyncError
from ._clock import clock_is_virtual

__all__ = ["StageTimedOut", "assert_emits", "describe_difference", "run_stage"]

_SHORT = reprlib.Repr()
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 8
_SHORT.maxstring = _SHORT.maxother = 60


class StageTimedOut(AssertionError, TalkpipeAsyncError):
    """The stage did not finish within the test's timeout; ``items`` holds what it emitted before."""

    def __init__(self, message: str, items: list[Any]) -> None:
        super().__init__(message)
        self.items = items


def _name(stage: Any) -> str:
    return str(getattr(stage, "name", None) or type(stage).__name__)


async def run_stage(
    stage: Any,
    input: Iterable[Any] | AsyncIterable[Any] | None = None,
    *,
    metadata: bool = False,
    timeout: float = 5.0,  # noqa: ASYNC109 - the run's own bound, applied with move_on_after inside
) -> list[Any]:
    """Run *stage* (a segment, source or pipeline) over *input* and return what it emits.

    ``metadata=True`` includes the :class:`Metadata` items in the result.
    When the run takes longer than *timeout* seconds (of the loop's clock:
    virtual under a virtual clock), it is stopped and :class:`StageTimedOut`
    is raised with the items emitted so far; an error of the stage is
    raised as it is.
    """
    out: list[Any] = []
    with anyio.move_on_after(timeout) as scope:
        async with stage.stream(input, metadata=metadata) as items:
            async for x in items:
                out.append(x)
    if scope.cancelled_caught:
        message = f"{_name(stage)} did not finish within {timeout} s; it emitted {len(out)} items so far: "
        message += _SHORT.repr(out)
        if clock_is_virtual():
            message += " (the clock is virtual: it jumps to this timeout while the stage waits on a worker thread)"
        raise StageTimedOut(message, out)
    return out


def describe_difference(expected: Sequence[Any], got: Sequence[Any]) -> str | None:
    """None when the two lists are equal, else a readable account: the first differing index and a diff."""
    expected, got = list(expected), list(got)
    if expected == got:
        return None
    pairs = enumerate(zip(expected, got, strict=False))
    first = next((i for i, (e, g) in pairs if e != g), min(len(expected), len(got)))
    lines = [f"output differs from the expected at index {first} (expected {len(expected)} items, got {len(got)})"]
    if first < len(expected):
        lines.append(f"  expected[{first}] = {_SHORT.repr(expected[first])}")
    else:
        lines.append(f"  expected ends at {first}")
    if first < len(got):
        lines.append(f"  got[{first}]      = {_SHORT.repr(got[first])}")
    else:
        lines.append(f"  got ends at {first}")
    diff = list(difflib.ndiff([repr(x) for x in expected], [repr(x) for x in got]))
    shown = [d for d in diff if not d.startswith("?")]
    if len(shown) > 40:
        shown = [*shown[:40], f"  ... ({len(shown) - 40} more diff lines)"]
    lines.append("diff (- expected, + got):")
    lines.extend("  " + d for d in shown)
    return "\n".join(lines)


async def assert_emits(
    stage: Any,
    input: Iterable[Any] | AsyncIterable[Any] | None,
    expected: Sequence[Any],
    *,
    metadata: bool = False,
    timeout: float = 5.0,  # noqa: ASYNC109 - the run's own bound, applied with move_on_after inside
) -> list[Any]:
    """Run *stage* over *input* (see :func:`run_stage`) and fail with a diff unless it emits *expected*.

    Returns the output.  The ``AssertionError`` names the index of the
    first difference, the two items there, and a line diff of both lists.
    """
    got = await run_stage(stage, input, metadata=metadata, timeout=timeout)
    problem = describe_difference(expected, got)
    if problem is not None:
        raise AssertionError(f"{_name(stage)}: {problem}")
    return got
