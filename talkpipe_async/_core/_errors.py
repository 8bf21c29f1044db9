"""Error context: which segment raised, and on which item.

Nothing runs per item.  Each stage's generator frame is recorded when the run
starts; when an exception leaves the run, the deepest recorded frame in its
traceback is the stage that raised it, and that frame's loop variable (found
once per function from its source) is the item it was processing.
"""

from __future__ import annotations

import inspect
import reprlib
from dataclasses import dataclass
from functools import lru_cache
from types import CodeType, FrameType
from typing import Any

__all__ = ["ErrorContext", "TalkpipeAsyncError", "add_note", "annotate", "attach_context", "error_context"]

_MISSING = object()


class TalkpipeAsyncError(Exception):
    """The root of every exception this library raises itself.

    ``except TalkpipeAsyncError`` catches any of them.  Each one also keeps the standard-library base that
    describes it (a lost connection is a ``ConnectionError``, a malformed record a ``ValueError``, a stage
    timeout a ``TimeoutError``), so code written against those bases keeps working.  Exceptions raised by
    user code inside a stage pass through unchanged: they get a note naming the stage and the item, not
    this base.
    """

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlevel = 3


@dataclass(frozen=True)
class ErrorContext:
    """Where an exception came from: the segment's name and the item's repr."""

    segment: str
    item: str | None

    def describe(self) -> str:
        """One line for the exception's notes."""
        if self.item is None:
            return f"talkpipe_async: raised in {self.segment!r}"
        return f"talkpipe_async: raised in {self.segment!r} while processing item {self.item}"


def error_context(exc: BaseException) -> ErrorContext | None:
    """Return the :class:`ErrorContext` attached to *exc*, if any."""
    ctx = getattr(exc, "talkpipe_context", None)
    return ctx if isinstance(ctx, ErrorContext) else None


def _input_name(code: CodeType) -> str | None:
    names = code.co_varnames[: code.co_argcount]
    if names and names[0] == "self":
        names = names[1:]
    return names[0] if names else None


@lru_cache(maxsize=512)
def _loop_variable(code: CodeType) -> str | None:
    """The name bound by ``for x in <input>`` in the function of *code*."""
    import ast  # parsing is needed only when an error is being explained
    import textwrap

    source_name = _input_name(code)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(code)))
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.For, ast.AsyncFor)) and isinstance(node.target, ast.Name):
            it = node.iter
            if isinstance(it, ast.Name) and it.id == source_name:
                return node.target.id
    return None


def _safe_repr(value: Any) -> str:
    try:
        return _repr.repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        return f"<{type(value).__name__} object>"


def _item_repr(frame: FrameType) -> str | None:
    name = _loop_variable(frame.f_code)
    if name is None:
        return None
    value = frame.f_locals.get(name, _MISSING)
    return None if value is _MISSING else _safe_repr(value)


def attach_context(exc: BaseException, segment: str, item: Any = _MISSING) -> None:
    """Record on *exc* that *segment* failed (on *item*, if given), once.

    For operators that run user code away from the stage's own frame (in a
    worker task or thread), where the runner cannot find the item from the
    traceback.  Adds the same PEP 678 note and ``talkpipe_context`` as the
    runner does.
    """
    if error_context(exc) is None:
        _attach(exc, ErrorContext(segment=segment, item=None if item is _MISSING else _safe_repr(item)))


def _attach(exc: BaseException, ctx: ErrorContext) -> None:
    try:
        exc.talkpipe_context = ctx  # type: ignore[attr-defined]
    except AttributeError:
        return
    add_note(exc, ctx.describe())


def annotate(exc: BaseException, frames: dict[FrameType, str]) -> None:
    """Attach the failing stage's name and item to *exc* (once).

    Only errors (``Exception``) are attributed: an interrupt, an exit or a
    cancellation reaches whatever stage happens to be running and is not that
    stage's failure, so it leaves the run as it came.
    """
    if not frames or not isinstance(exc, Exception) or error_context(exc) is not None:
        return
    found: tuple[FrameType, str] | None = None
    tb = exc.__traceback__
    while tb is not None:
        label = frames.get(tb.tb_frame)
        if label is not None:
            found = (tb.tb_frame, label)
        tb = tb.tb_next
    if found is None:
        return
    _attach(exc, ErrorContext(segment=found[1], item=_item_repr(found[0])))


def add_note(exc: BaseException, note: str) -> None:
    """Add a PEP 678 note to *exc* (on Python 3.10 too, through ``__notes__``)."""
    add = getattr(exc, "add_note", None)
    if add is not None:
        add(note)
    else:  # Python 3.10: keep the PEP 678 attribute so tools can still show it
        notes: Any = getattr(exc, "__notes__", None) or []
        exc.__notes__ = [*notes, note]  # type: ignore[attr-defined]
