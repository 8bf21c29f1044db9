"""merge, zip and chain (``talkpipe_async.operators.combine``): names, tasks, metadata and the segment forms' inputs.

What a user of the combine operators relies on beyond "the items come out": each stage's default and given name
(it labels stats, errors and the tasks it starts), the text refusing an empty ``zip_streams``, the producer and
feeder tasks named after the stage, metadata kept in its place in the stream (beside a zip's tuples, inside a
chain, from the upstream of a segment form), and a segment form with several other inputs keeping each input in
its own lane (the upstream first in every tuple).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from talkpipe_async import Flush, source
from talkpipe_async.operators import chain, chain_with, concat, merge, merge_with, zip_streams, zip_with
from talkpipe_async.sources import just

pytestmark = pytest.mark.anyio


@source
async def forever(tag: str) -> AsyncIterator[str]:
    """An endless source that never waits on its own."""
    for i in itertools.count():
        yield f"{tag}{i}"


@source
async def from_list(xs: list[Any]) -> AsyncIterator[Any]:
    """Yield *xs*, metadata included."""
    for x in xs:
        yield x


def test_default_and_given_names() -> None:
    """Each operator is called by its own name unless named (``concat`` is ``chain``)."""
    assert merge(just(1)).label == "merge"
    assert merge_with(just(1)).label == "merge_with"
    assert zip_streams(just(1)).label == "zip_streams"
    assert zip_with(just(1)).label == "zip_with"
    assert chain(just(1)).label == "chain"
    assert concat(just(1)).label == "chain"
    assert chain_with(just(1)).label == "chain_with"
    assert merge(just(1), name="m").label == "m"
    assert merge_with(just(1), name="mw").label == "mw"
    assert zip_streams(just(1), name="z").label == "z"
    assert zip_with(just(1), name="zw").label == "zw"
    assert chain(just(1), name="c").label == "c"
    assert chain_with(just(1), name="cw").label == "cw"


def test_zip_streams_needs_an_input() -> None:
    """A zip of nothing is refused with its text."""
    with pytest.raises(ValueError, match=r"^zip_streams needs at least one input$"):
        zip_streams()


async def _task_names_while_holding_the_first_output(pipeline: Any, label: str) -> set[str]:
    """The names of the running tasks that mention *label*, while the consumer sits on the first output."""
    async with pipeline.stream() as items:
        async for _ in items:
            await anyio.wait_all_tasks_blocked()  # every producer has filled its lane and waits
            return {t.name or "" for t in anyio.get_running_tasks() if label in (t.name or "")}
    raise AssertionError("no output")


@pytest.mark.parametrize("given", [None, "mine"])
async def test_producer_and_feeder_tasks_are_named_after_the_stage(anyio_backend: Any, given: str | None) -> None:
    """One producer task per input (``talkpipe producer K of NAME``), one feeder task for a segment form's
    upstream (``talkpipe feeder for NAME``), one producer for a whole chain (``talkpipe producer of NAME``)."""

    def named(default: str) -> str:
        return given or default

    cases: list[tuple[Any, str, set[str]]] = [
        (
            merge(forever("a"), forever("b"), capacity=2, name=given),
            named("merge"),
            {f"talkpipe producer 0 of {named('merge')}", f"talkpipe producer 1 of {named('merge')}"},
        ),
        (
            forever("u") | merge_with(forever("a"), capacity=2, name=given),
            named("merge_with"),
            {f"talkpipe feeder for {named('merge_with')}", f"talkpipe producer 0 of {named('merge_with')}"},
        ),
        (
            zip_streams(forever("a"), forever("b"), capacity=2, name=given),
            named("zip_streams"),
            {f"talkpipe producer 0 of {named('zip_streams')}", f"talkpipe producer 1 of {named('zip_streams')}"},
        ),
        (
            forever("u") | zip_with(forever("a"), forever("b"), capacity=2, name=given),
            named("zip_with"),
            {
                f"talkpipe feeder for {named('zip_with')}",
                f"talkpipe producer 0 of {named('zip_with')}",
                f"talkpipe producer 1 of {named('zip_with')}",
            },
        ),
        (
            chain(forever("a"), forever("b"), capacity=2, name=given),
            named("chain"),
            {f"talkpipe producer of {named('chain')}"},
        ),
        (
            forever("u") | chain_with(forever("a"), capacity=2, name=given),
            named("chain_with"),
            {f"talkpipe producer of {named('chain_with')}"},
        ),
    ]
    with anyio.fail_after(10):
        for pipeline, label, expected in cases:
            assert await _task_names_while_holding_the_first_output(pipeline, label) == expected, label


async def test_zip_with_several_inputs_keeps_the_upstream_first(anyio_backend: Any) -> None:
    """``zip_with(b, c)`` pairs ``(upstream, b, c)`` position by position, each input in its own place."""
    with anyio.fail_after(10):
        out = await (just(1, 2, 3) | zip_with(just("a", "b", "c", "d"), just(True, False, None))).collect()
    assert out == [(1, "a", True), (2, "b", False), (3, "c", None)]


async def test_merge_with_several_inputs_keeps_each_inputs_order(anyio_backend: Any) -> None:
    """``merge_with(b, c)`` delivers every item of the upstream and of each other input, each in its own order."""
    with anyio.fail_after(10):
        merged = just(*range(10)) | merge_with(just(*range(100, 107)), just(*range(200, 205)), capacity=2)
        out = await merged.collect()
    assert sorted(out) == [*range(10), *range(100, 107), *range(200, 205)]
    for low in (0, 100, 200):
        assert [x for x in out if low <= x < low + 100] == sorted(x for x in out if low <= x < low + 100)


async def test_zip_passes_each_inputs_metadata_in_its_place(anyio_backend: Any) -> None:
    """Metadata of an input comes out when it reaches the head of its lane: after the tuple holding the item
    before it, before the tuple holding the item after it; a consumer of items only never sees it."""
    with anyio.fail_after(10):
        out = await zip_streams(from_list([1, Flush(), 2]), from_list(["a", "b"])).collect(metadata=True)
        assert out == [(1, "a"), Flush(), (2, "b")]
        assert await zip_streams(from_list([1, Flush(), 2]), from_list(["a", "b"])).collect() == [(1, "a"), (2, "b")]


async def test_zip_with_passes_the_upstreams_metadata_in_its_place(anyio_backend: Any) -> None:
    """The upstream's metadata goes through ``zip_with`` in its place among the tuples, not ahead of them."""
    with anyio.fail_after(10):
        out = await (from_list([1, Flush(), 2, 3]) | zip_with(from_list(["a", "b", "c"]))).collect(metadata=True)
    assert out == [(1, "a"), Flush(), (2, "b"), (3, "c")]


async def test_merge_with_passes_the_upstreams_metadata_in_its_place(anyio_backend: Any) -> None:
    """The upstream's metadata goes through ``merge_with`` in its place among the upstream's items."""
    with anyio.fail_after(10):
        out = await (from_list([1, 2, Flush(), 3]) | merge_with(just(), capacity=1)).collect(metadata=True)
    assert out == [1, 2, Flush(), 3]


async def test_chain_keeps_metadata_in_its_place(anyio_backend: Any) -> None:
    """``chain`` passes each input's metadata in its place; ``chain_with`` the upstream's and the others'."""
    with anyio.fail_after(10):
        out = await chain(from_list([1, Flush(), 2]), from_list([Flush(), 3])).collect(metadata=True)
        assert out == [1, Flush(), 2, Flush(), 3]
        assert await chain(from_list([1, Flush(), 2]), from_list([3])).collect() == [1, 2, 3]
        out = await (from_list([1, 2, Flush(), 3]) | chain_with(from_list([Flush(), 4]), capacity=1)).collect(
            metadata=True
        )
        assert out == [1, 2, Flush(), 3, Flush(), 4]


async def test_chain_runs_a_bounded_amount_ahead(anyio_backend: Any) -> None:
    """``chain`` reads its inputs in its own task, at most ``capacity`` items ahead of those handed out: with
    ``capacity=3`` more than 3 and at most ``2 * 3 + 1`` items were read while the consumer holds the first (the
    batch being handed out, a full channel, the one waiting to be put)."""
    pulled = 0

    @source
    async def counting() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(5000):
            pulled += 1
            yield i

    with anyio.fail_after(10):
        async with chain(counting(), capacity=3).stream() as items:
            async for first in items:
                await anyio.wait_all_tasks_blocked()
                assert first == 0
                break
    assert 3 < pulled <= 7, pulled


async def test_an_inputs_error_comes_after_its_items_with_its_type(anyio_backend: Any) -> None:
    """An input that fails hands out the items it sent first, then its very error ends ``merge`` and ``zip_streams``
    (and a segment form whose upstream fails)."""

    @source
    async def broken() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ConnectionResetError("input gone")

    cases: list[tuple[Any, list[Any]]] = [
        (merge(broken()), [1, 2]),
        (zip_streams(broken(), just("a", "b", "c")), [(1, "a"), (2, "b")]),
        (broken() | merge_with(just()), [1, 2]),
        (broken() | zip_with(just("a", "b", "c")), [(1, "a"), (2, "b")]),
    ]
    for pipeline, before in cases:
        got: list[Any] = []
        with anyio.fail_after(10), pytest.raises(ConnectionResetError, match=r"^input gone"):
            async with pipeline.stream() as items:
                async for x in items:
                    got.append(x)
        assert got == before
