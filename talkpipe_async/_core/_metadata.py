"""Control items that travel in the stream beside the data."""

from __future__ import annotations

from typing import Any

__all__ = ["Flush", "Metadata", "create_metadata", "is_metadata"]


class Metadata:
    """A control item (a flush signal, a marker) that travels in the stream.

    Segments that do not opt in (``process_metadata=False``, the default) never
    see metadata: it goes past them, in input order and without buffering, to
    the next segment that does opt in (or to the consumer of
    ``stream(metadata=True)``).  Fields are free-form keyword arguments::

        Metadata(action="flush", buffer_id="main")
    """

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]


class Flush(Metadata):
    """Metadata asking batching and windowing segments to emit what they hold."""


# TalkPipe's Metadata class, once TalkPipe's core is loaded and a TalkPipe stage is built (see _talkpipe.py):
# is_metadata() recognises it without importing TalkPipe.  The runner's own checks never need it: TalkPipe's
# metadata is converted to ours at the edge of every TalkPipe stage.
foreign_metadata: tuple[type, ...] = ()


def is_metadata(obj: object) -> bool:
    """Return True when *obj* is a :class:`Metadata` control item (or TalkPipe's, once TalkPipe is in use)."""
    return isinstance(obj, Metadata) or (bool(foreign_metadata) and isinstance(obj, foreign_metadata))


def create_metadata(**fields: Any) -> Metadata:
    """Create a :class:`Metadata` item with the given fields (TalkPipe's name)."""
    return Metadata(**fields)
