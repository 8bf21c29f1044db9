"""TalkPipe objects as stages: the edges the main interop tests leave open.

Pinned here: TalkPipe metadata a TalkPipe stage yields reaches our side as ours with its fields (a ``Flush`` as our
``Flush``, any other metadata as our ``Metadata``, none invented); a TalkPipe segment chained with our ``|`` runs
inline (not in a worker thread) unless asked; and ``is_metadata`` learns TalkPipe's metadata class once TalkPipe's
core is loaded: once, and never while it is not.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest

from talkpipe_async import Flush, Metadata, is_metadata, segment, source
from talkpipe_async._core import _metadata
from talkpipe_async._core._talkpipe import register_loaded
from tests.helpers.talkpipe import require_talkpipe

require_talkpipe()

from talkpipe.pipe import core as tp  # noqa: E402
from talkpipe.pipe.metadata import Flush as TPFlush  # noqa: E402

pytestmark = pytest.mark.anyio


@source
async def anums(n: int = 3) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@segment
async def same(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for x in items:
        yield x


def marks(items: Iterable[int]) -> Iterator[Any]:
    for x in items:
        yield x
        if x == 0:
            yield tp.Metadata(action="mark", n=3)
        if x == 1:
            yield TPFlush(reason="half")
            yield TPFlush()


tp_marks = tp.segment(marks)


async def test_talkpipe_metadata_reaches_our_side_as_ours_with_its_fields() -> None:
    out = await (anums() | tp_marks() | same()).collect(metadata=True)
    assert out == [0, Metadata(action="mark", n=3), 1, Flush(reason="half"), Flush(), 2]
    assert [type(x) for x in out] == [int, Metadata, int, Flush, Flush, int]
    assert out[1].__dict__ == {"action": "mark", "n": 3} and out[4].__dict__ == {}


async def test_a_talkpipe_segment_in_our_chain_runs_inline_unless_asked() -> None:
    pipe = anums() | tp_marks() | same()
    assert [stage.blocking for stage in pipe.stages] == [False, False, False]
    assert await pipe.collect() == [0, 1, 2]


@pytest.fixture
def nothing_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """As before any TalkPipe object was adapted in this process (restored afterwards)."""
    monkeypatch.setattr(_metadata, "foreign_metadata", ())


def test_talkpipes_metadata_is_recognised_once_its_core_is_loaded(nothing_registered: None) -> None:
    assert not is_metadata(tp.Metadata(x=1))
    assert register_loaded() is True
    assert is_metadata(tp.Metadata(x=1)) and is_metadata(TPFlush())
    assert register_loaded() is True
    assert _metadata.foreign_metadata == (tp.Metadata,)  # once, however often it is asked


def test_nothing_is_registered_while_talkpipes_core_is_not_loaded(
    nothing_registered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "talkpipe.pipe.core")
    assert register_loaded() is False
    assert _metadata.foreign_metadata == ()


def test_nothing_is_registered_while_talkpipes_core_is_half_imported(
    nothing_registered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    half = type(sys)("talkpipe.pipe.core")  # a module object without its classes yet
    monkeypatch.setitem(sys.modules, "talkpipe.pipe.core", half)
    assert register_loaded() is False
    assert _metadata.foreign_metadata == ()


def our_stage_registered_in_chatterlang(size: int) -> Any:
    """The TalkPipe object ChatterLang makes for ``async_batch[size=...]``: one of our stages inside."""
    from talkpipe.chatterlang import registry

    from talkpipe_async.interop.chatterlang import register_async_names

    register_async_names()
    return registry.segment_registry.get("async_batch")(size=size)


async def test_our_stage_registered_in_chatterlang_runs_as_itself_in_our_chain() -> None:
    wrapped = our_stage_registered_in_chatterlang(2)
    pipe = anums(n=5) | wrapped
    assert pipe.stages[-1] is wrapped.talkpipe_async_stage  # not a TalkPipe segment around it
    assert await pipe.collect() == [[0, 1], [2, 3], [4]]


def test_a_talkpipe_source_in_our_chain_runs_inline_unless_asked() -> None:
    from talkpipe.pipe.basic import firstN
    from talkpipe.pipe.io import echo

    from talkpipe_async import Pipeline
    from talkpipe_async.interop import from_talkpipe

    pipe = Pipeline(echo(data="1,2"), firstN(n=1))
    assert [stage.blocking for stage in pipe.stages] == [False, False]
    assert [stage.blocking for stage in from_talkpipe(echo(data="1,2") | firstN(n=1)).stages] == [False, False]
    assert [stage.blocking for stage in from_talkpipe(echo(data="1,2") | firstN(n=1), blocking=True).stages] == [
        True, True]


async def test_a_talkpipe_pipeline_inside_a_pipeline_becomes_one_stage_per_operation() -> None:
    from talkpipe.pipe.basic import firstN
    from talkpipe.pipe.io import echo

    from talkpipe_async.interop import from_talkpipe

    inner = tp_marks() | firstN(n=2)
    outer = tp.Pipeline(echo(data="0,1,2"), inner)  # a TalkPipe Pipeline whose second operation is a Pipeline
    for blocking in (False, True):
        pipe = from_talkpipe(outer, blocking=blocking)
        assert [stage.name for stage in pipe.stages] == ["echoInput", "marksOperation", "firstNOperation"]
        assert [stage.blocking for stage in pipe.stages] == [blocking] * 3
    assert await from_talkpipe(outer).collect() == ["0", "1"]


def test_from_talkpipe_names_what_it_was_given_instead() -> None:
    from talkpipe_async.interop import from_talkpipe

    with pytest.raises(TypeError) as info:
        from_talkpipe(42)
    assert str(info.value) == "from_talkpipe() takes a TalkPipe source, segment or pipeline, not 42"


def test_talkpipe_or_first_names_the_talkpipe_object_and_says_what_to_write() -> None:
    from talkpipe.pipe.basic import firstN

    stage = same()
    with pytest.raises(TypeError) as info:
        firstN(n=2) | stage
    assert str(info.value) == (
        f"TalkPipe's '|' ran first in firstNOperation | {stage!r} and cannot chain a talkpipe-async stage; "
        "start the chain on this side: from_talkpipe(tp_object) | stage, or Pipeline(tp_object, stage) "
        "(from talkpipe_async.interop import from_talkpipe)"
    )
