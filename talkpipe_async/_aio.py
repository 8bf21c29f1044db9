"""What only asyncio can run: the end marker of asyncio queues and the check that refuses other loops.

``asyncio.Queue`` and the asyncio-only client libraries (redis, nats) cannot
be awaited under trio.  Every stage that needs them calls
:func:`require_asyncio` when it starts, so the run fails at once with one
error type, :class:`BackendNotSupported`, naming the stage and what to use
instead.
"""

from __future__ import annotations

from typing import Any

from ._core._errors import TalkpipeAsyncError

__all__ = ["QUEUE_END", "BackendNotSupported", "require_asyncio"]


class BackendNotSupported(RuntimeError, TalkpipeAsyncError):
    """A stage that needs asyncio (an ``asyncio.Queue``, an asyncio client library) runs on another loop (trio)."""


def require_asyncio(label: str, reason: str, instead: str | None = None) -> None:
    """Raise :class:`BackendNotSupported` unless an asyncio event loop (plain or uvloop) runs this task.

    *label* names the stage, *reason* says what needs asyncio, *instead*
    (optional) what to use on other loops.
    """
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        advice = f"; use {instead} instead" if instead else "; run this pipeline on asyncio (plain or uvloop)"
        raise BackendNotSupported(f"{label}: {reason} can only be awaited under asyncio, not trio{advice}") from None


class _QueueEnd:
    """The type of :data:`QUEUE_END`."""

    _instance: _QueueEnd | None = None

    def __new__(cls) -> _QueueEnd:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "QUEUE_END"


QUEUE_END: Any = _QueueEnd()
"""Put this into an ``asyncio.Queue`` to end a ``from_queue`` source
(``to_queue`` sinks put it when their pipeline ends).  ``None`` is an ordinary
item."""
