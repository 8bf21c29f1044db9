"""Interoperability with TalkPipe 1.2: its sources, segments, pipelines and ChatterLang scripts run here.

TalkPipe objects placed in a pipeline (``Pipeline(tp_source(), ours())``,
``ours() | tp_segment()``) run as sync stages; :func:`from_talkpipe` starts a
chain with one where TalkPipe's own ``|`` would run first.  Metadata crosses
both ways (TalkPipe's ``Flush`` from ``flushN`` flushes our ``batch``; our
``Flush`` reaches a TalkPipe segment with ``process_metadata=True`` as
TalkPipe's).  See ``docs/migration.md``.  TalkPipe itself is imported only
when a ChatterLang script is compiled.
"""

from __future__ import annotations

from .._core._public import show_as_public
from .._core._talkpipe import TalkPipeSegment, TalkPipeSource, from_talkpipe, register_loaded
from .chatterlang import compile_chatterlang

__all__ = ["TalkPipeSegment", "TalkPipeSource", "compile_chatterlang", "from_talkpipe"]

register_loaded()  # is_metadata() recognises TalkPipe's metadata from now on if TalkPipe is loaded

show_as_public(globals())
