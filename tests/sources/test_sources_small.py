"""Small sources: just, empty, never, throw, repeat, from_iterable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, source
from talkpipe_async.operators import filter, map, merge, take
from talkpipe_async.sources import empty, from_iterable, just, never, repeat, throw
from tests.helpers.ops_a import LOOPS

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=30, deadline=None)


def _run(loop: tuple[str, dict[str, Any]], pipeline: Any, *, metadata: bool = False) -> Any:
    async def main() -> Any:
        return await pipeline.collect(metadata=metadata)

    return anyio.run(main, backend=loop[0])


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=st.lists(st.integers(), max_size=40), n=st.integers(0, 20))
def test_sources_match_plain_python(loop: Any, xs: list[int], n: int) -> None:
    assert _run(loop, just(*xs)) == xs
    assert _run(loop, from_iterable(xs)) == xs
    assert _run(loop, repeat("x", n)) == ["x"] * n
    assert _run(loop, repeat(7) | take(n)) == [7] * n
    assert _run(loop, just(*xs) | map(lambda x: x * 2)) == [2 * x for x in xs]


async def test_empty_and_rerun(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        assert await empty().collect() == []
        src = just(1, 2)
        assert await src.collect() == [1, 2]
        assert await src.collect() == [1, 2]  # every run starts afresh
        once = from_iterable(iter([1, 2]))
        assert await once.collect() == [1, 2]
        assert await once.collect() == []  # a one-shot iterator is used up


async def test_just_passes_metadata_in_order(anyio_backend: Any) -> None:
    flush = Flush()
    with anyio.fail_after(10):
        assert await just(1, flush, 2).collect(metadata=True) == [1, flush, 2]
        assert await just(1, flush, 2).collect() == [1, 2]


async def test_throw_names_the_stage(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        with pytest.raises(ValueError, match="bad") as info:
            await (throw(ValueError("bad"), name="failing source") | map(str)).collect()
        assert "failing source" in "".join(getattr(info.value, "__notes__", []))
        with pytest.raises(KeyError):
            await throw(KeyError).collect()
    with pytest.raises(TypeError):
        throw(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        repeat(1, -1)
    with pytest.raises(TypeError):
        from_iterable(42)  # type: ignore[call-overload]


async def test_never_waits_until_cancelled(anyio_backend: Any) -> None:
    # merge with never() keeps the stream open after the real input ends: it is cancelled by take.
    with anyio.fail_after(10):
        assert await (merge(just(1, 2), never()) | take(2)).collect() == [1, 2]
        with anyio.CancelScope() as scope:
            async with never().stream() as items:
                scope.cancel()
                async for _ in items:
                    pass
        assert scope.cancelled_caught


async def test_endless_sources_can_be_cancelled(anyio_backend: Any) -> None:
    # A downstream that drops every item never waits: the sources give the loop a turn themselves.
    seen = [0, 0]

    def note(i: int) -> Any:
        def f(x: Any) -> Any:
            seen[i] += 1
            return x

        return f

    def endless() -> Any:
        while True:
            yield 0

    for i, src in enumerate([repeat(1), from_iterable(endless())]):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def drain(pipeline: Any = src | map(note(i)) | filter(lambda x: False)) -> None:
                    await pipeline.collect()

                tg.start_soon(drain)
                while seen[i] < 5000:
                    await anyio.sleep(0)
                tg.cancel_scope.cancel()
        assert seen[i] >= 5000


async def test_async_iterable_is_closed_on_early_stop(anyio_backend: Any) -> None:
    closed = anyio.Event()

    async def gen() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with anyio.fail_after(10):
        assert await (from_iterable(gen()) | take(3)).collect() == [0, 1, 2]
        await closed.wait()


@source
async def _nested() -> AsyncIterator[int]:
    async with (from_iterable([1, 2, 3]) | map(lambda x: x + 1)).stream() as items:
        async for x in items:
            yield x


async def test_inside_another_source(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        assert await _nested().collect() == [2, 3, 4]
