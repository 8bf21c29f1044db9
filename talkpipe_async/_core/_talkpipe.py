"""TalkPipe 1.2 objects as stages: sources, segments and pipelines, with metadata crossing both ways.

Nothing here imports TalkPipe: its objects are recognised by the module and
name of a class in their type's MRO (``talkpipe.pipe.core.AbstractSegment``
...), and TalkPipe's metadata classes are taken from the objects' own modules
once a TalkPipe object is in hand.  Metadata is converted at the edge of a
TalkPipe stage only (TalkPipe's ``Metadata`` and ``Flush`` are pydantic
models, ours are plain classes): what a TalkPipe stage yields is converted to
ours, and a TalkPipe segment that asks for metadata (``process_metadata=True``)
gets ours converted to TalkPipe's.  The chain of our own stages pays nothing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import _metadata
from ._metadata import Flush, Metadata
from ._segment import AbstractSegment, AbstractSource

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["TalkPipeSegment", "TalkPipeSource", "adapt_talkpipe", "from_talkpipe", "register_loaded"]

_CORE = "talkpipe.pipe.core"


def _talkpipe_kind(obj: Any) -> str | None:
    """'source', 'segment' or 'pipeline' for a TalkPipe object, else None (no import of TalkPipe)."""
    names = {c.__name__ for c in type(obj).__mro__ if c.__module__ == _CORE}
    if "Pipeline" in names:
        return "pipeline"
    if "AbstractSource" in names:
        return "source"
    if "AbstractSegment" in names:
        return "segment"
    return None


def register_loaded() -> bool:
    """Let ``is_metadata`` recognise TalkPipe's metadata if TalkPipe's core is loaded (never imports it)."""
    core = sys.modules.get(_CORE)
    tp_meta = getattr(core, "Metadata", None)  # None while the module is still being imported
    if not isinstance(tp_meta, type):
        return False
    if tp_meta not in _metadata.foreign_metadata:
        _metadata.foreign_metadata = (*_metadata.foreign_metadata, tp_meta)
    return True


def _talkpipe_classes() -> tuple[type[Any], type[Any]]:
    """TalkPipe's Metadata and Flush classes; only called once a TalkPipe object exists (TalkPipe is loaded)."""
    tp_metadata = importlib.import_module("talkpipe.pipe.metadata")  # loaded with TalkPipe's core package

    register_loaded()
    return sys.modules[_CORE].Metadata, tp_metadata.Flush


def _fields(obj: Any) -> dict[str, Any]:
    extra = getattr(obj, "model_extra", None)
    return dict(extra) if extra else {}


def to_ours(item: Any) -> Metadata:
    """TalkPipe's metadata as ours: ``Flush`` stays a flush, the fields are kept."""
    cls = Flush if any(c.__name__ == "Flush" for c in type(item).__mro__) else Metadata
    return cls(**_fields(item))


def _outputs(items: Iterable[Any], tp_meta: type[Any]) -> Iterator[Any]:
    for item in items:
        yield to_ours(item) if isinstance(item, tp_meta) else item


def _inputs(items: Iterable[Any], tp_meta: type[Any], tp_flush: type[Any]) -> Iterator[Any]:
    for item in items:
        if isinstance(item, Metadata):
            item = (tp_flush if isinstance(item, Flush) else tp_meta)(**item.__dict__)
        yield item


class TalkPipeSegment(AbstractSegment[Any, Any]):
    """A TalkPipe segment (or a TalkPipe ``Pipeline`` of segments) as a sync stage.

    It runs through the sync mirror: inline, or in a worker thread after an
    async stage.  Its ``process_metadata`` is the TalkPipe segment's.
    """

    def __init__(self, segment: Any, *, blocking: bool = False) -> None:
        super().__init__(process_metadata=bool(getattr(segment, "process_metadata", False)), blocking=blocking)
        self.segment = segment
        self.name = type(segment).__name__
        self._meta, self._flush = _talkpipe_classes()

    def transform(self, items: Iterable[Any]) -> Iterator[Any]:
        """Call the TalkPipe segment on the items; metadata converted at both edges."""
        if self.process_metadata:
            items = _inputs(items, self._meta, self._flush)
        return _outputs(self.segment(items), self._meta)

    def _entry(self) -> Callable[..., Any]:
        return type(self).transform


class TalkPipeSource(AbstractSource[Any]):
    """A TalkPipe source as a sync source (inline, or in a worker thread with ``blocking=True``)."""

    def __init__(self, source: Any, *, blocking: bool = False) -> None:
        super().__init__(blocking=blocking)
        self.source = source
        self.name = type(source).__name__
        self._meta, _ = _talkpipe_classes()

    def generate(self) -> Iterator[Any]:
        """The TalkPipe source's items, its metadata converted to ours."""
        return _outputs(self.source(), self._meta)


def adapt_talkpipe(obj: Any) -> AbstractSegment[Any, Any] | AbstractSource[Any] | None:
    """The stage for a TalkPipe object, or None when *obj* is not one."""
    kind = _talkpipe_kind(obj)
    ours = getattr(obj, "talkpipe_async_stage", None)  # one of our stages, registered in ChatterLang
    if kind is not None and ours is not None:
        return ours  # type: ignore[no-any-return]
    if kind == "source":
        return TalkPipeSource(obj)
    if kind is not None:
        return TalkPipeSegment(obj)
    return None


def from_talkpipe(obj: Any, *, blocking: bool = False) -> Pipeline[Any, Any]:
    """A TalkPipe source, segment or pipeline as a talkpipe-async :class:`Pipeline`.

    A TalkPipe ``Pipeline`` (``tp_source | tp_segment``, or what ChatterLang
    compiles) becomes one stage per TalkPipe operation, so each runs, and is
    counted, as a stage of its own.  ``blocking=True`` runs every one of them in
    a worker thread.  Use it where TalkPipe's own ``|`` would run first::

        from_talkpipe(firstN(n=2)) | our_segment()
    """
    from ._pipeline import Pipeline

    kind = _talkpipe_kind(obj)
    if kind is None:
        raise TypeError(f"from_talkpipe() takes a TalkPipe source, segment or pipeline, not {obj!r}")
    ops = obj.operations if kind == "pipeline" else [obj]
    stages: list[Any] = []
    for op in ops:
        if getattr(op, "talkpipe_async_stage", None) is not None:
            stages.append(op.talkpipe_async_stage)
        elif _talkpipe_kind(op) == "pipeline":
            stages.extend(from_talkpipe(op, blocking=blocking).stages)
        elif _talkpipe_kind(op) == "source":
            stages.append(TalkPipeSource(op, blocking=blocking))
        else:
            stages.append(TalkPipeSegment(op, blocking=blocking))
    return Pipeline(*stages)


def talkpipe_or_error(left: Any, right: Any) -> TypeError:
    """The error for ``talkpipe_object | our_stage``: TalkPipe's ``|`` ran first and cannot chain ours."""
    return TypeError(
        f"TalkPipe's '|' ran first in {type(left).__name__} | {right!r} and cannot chain a talkpipe-async stage; "
        f"start the chain on this side: from_talkpipe(tp_object) | stage, or Pipeline(tp_object, stage) "
        f"(from talkpipe_async.interop import from_talkpipe)"
    )
