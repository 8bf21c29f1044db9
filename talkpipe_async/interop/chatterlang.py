"""ChatterLang scripts compiled by TalkPipe's own parser and registry, run by this runtime.

``compile_chatterlang(script)`` calls TalkPipe's compiler and turns what it
builds into a :class:`~talkpipe_async.Pipeline`: one sync stage per TalkPipe
operation (inline, or in worker threads with ``blocking=True``), so the run is
async, cancellable and closed like any other.  Our own stages are in TalkPipe's
registry too, under ``async_<name>`` (``async_batch[size=3]``,
``INPUT FROM async_read_lines[paths="log.txt"]``): in a compiled script they
run as the async stages they are.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._core._pipeline import Pipeline
from .._core._talkpipe import TalkPipeSource, from_talkpipe

__all__ = ["ASYNC_PREFIX", "compile_chatterlang", "register_async_names"]

ASYNC_PREFIX = "async_"

_SEGMENTS = (
    "batch", "take", "skip", "every_n", "buffer", "delay", "throttle", "rate_limit", "flatten", "flush_n",
    "flush_t", "debounce", "timeout", "enumerate",
)  # fmt: skip
_SOURCES = ("read_lines", "read_jsonl", "read_csv", "tail_file", "stdin_lines", "tcp_lines", "http_lines",
            "process_lines", "interval")  # fmt: skip

_registered = False
_lock = threading.Lock()


def _make_placeholder(base: type[Any], name: str, factory: Callable[..., Any], source: bool) -> type[Any]:
    """A TalkPipe class for the registry: it holds our stage, which a compiled script runs as is.

    Run by TalkPipe itself (outside :func:`compile_chatterlang`), it runs our
    stage through the blocking wrapper.
    """

    def __init__(self: Any, **params: Any) -> None:
        base.__init__(self)
        self.talkpipe_async_stage = factory(**params)

    def run(self: Any, items: Iterable[Any] | None) -> Iterator[Any]:
        with Pipeline(self.talkpipe_async_stage).iter_blocking(items) as out:
            yield from out

    def generate(self: Any) -> Iterator[Any]:
        return run(self, None)

    body = {"__init__": __init__, "__doc__": f"talkpipe-async's {factory.__name__} (see its docs)."}
    body.update({"generate": generate} if source else {"transform": run})
    return type(name, (base,), body)


def register_async_names() -> None:
    """Add our sources and operators to TalkPipe's ChatterLang registry as ``async_<name>`` (once)."""
    global _registered
    with _lock:
        if _registered:
            return
        core = importlib.import_module("talkpipe.pipe.core")
        registry = importlib.import_module("talkpipe.chatterlang.registry")
        from .. import operators, sources  # every stage module loads only when a script registers their names

        for name in _SEGMENTS:
            cls = _make_placeholder(core.AbstractSegment, ASYNC_PREFIX + name, getattr(operators, name), False)
            registry.segment_registry.register(cls, ASYNC_PREFIX + name)
        for name in _SOURCES:
            module = sources if hasattr(sources, name) else operators
            cls = _make_placeholder(core.AbstractSource, ASYNC_PREFIX + name, getattr(module, name), True)
            registry.input_registry.register(cls, ASYNC_PREFIX + name)
        _registered = True


def compile_chatterlang(script: str, *, blocking: bool = False) -> Pipeline[Any, Any]:
    """Compile a ChatterLang *script* with TalkPipe's compiler into a :class:`Pipeline` of this runtime.

    A script of one pipeline becomes one stage per operation; a script of
    several (``;``, loops) keeps TalkPipe's meaning (each runs to its end before
    the next starts) and runs as one stage.  ``blocking=True`` runs the
    TalkPipe stages in worker threads.  Raises TalkPipe's ``CompileError`` for
    a bad script.  TalkPipe 1.2 must be installed (see ``docs/migration.md``).
    """
    compiler = importlib.import_module("talkpipe.chatterlang.compiler")
    register_async_names()
    compiled = compiler.compile(script)
    parts = list(getattr(compiled, "segments", [compiled]))
    if len(parts) == 1:
        return from_talkpipe(parts[0], blocking=blocking)
    first = parts[0]
    if _starts_with_source(first):
        return Pipeline(TalkPipeSource(compiled, blocking=blocking))
    return from_talkpipe(compiled, blocking=blocking)


def _starts_with_source(op: Any) -> bool:
    core = sys.modules["talkpipe.pipe.core"]
    while isinstance(op, core.Pipeline) and op.operations:
        op = op.operations[0]
    return isinstance(op, core.AbstractSource)
