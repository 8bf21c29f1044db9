"""Aggregates: minimum, maximum, mean (sinks) and running_min/max/mean/count (segments)."""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush
from talkpipe_async.operators import (
    map,
    maximum,
    mean,
    minimum,
    running_count,
    running_max,
    running_mean,
    running_min,
)
from talkpipe_async.sources import just
from tests.helpers.ops_a import LOOPS, items_of, run_collect

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=40, deadline=None)


def _run(loop: tuple[str, dict[str, Any]], coro_fn: Any) -> Any:
    return anyio.run(coro_fn, backend=loop[0])


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=st.lists(st.tuples(st.integers(-5, 5), st.integers()), max_size=30))
def test_running_forms_match_plain_python(loop: Any, xs: list[tuple[int, int]]) -> None:
    key = lambda p: p[0]  # noqa: E731 - ties on the key show which item is kept
    assert run_collect(loop, running_min(key), xs) == list(accumulate(xs, lambda a, b: min(a, b, key=key)))
    assert run_collect(loop, running_max(key), xs) == list(accumulate(xs, lambda a, b: max(a, b, key=key)))
    assert run_collect(loop, running_count(), xs) == list(range(1, len(xs) + 1))
    nums = [b for _, b in xs]
    assert run_collect(loop, running_mean(), nums) == [s / (i + 1) for i, s in enumerate(accumulate(nums))]


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=st.lists(st.tuples(st.integers(-5, 5), st.integers()), min_size=1, max_size=30))
def test_sinks_match_plain_python(loop: Any, xs: list[tuple[int, int]]) -> None:
    async def main() -> tuple[Any, ...]:
        key = lambda p: p[0]  # noqa: E731
        nums = [b for _, b in xs]
        return (
            await minimum(items_of(xs), key=key) == min(xs, key=key),
            await maximum(items_of(xs), key=key) == max(xs, key=key),
            await minimum(map(lambda p: p[1]), xs) == min(nums),
            await mean(items_of(nums)) == sum(nums) / len(nums),
        )

    assert all(_run(loop, main))


async def test_empty_stream(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        for sink in (minimum, maximum, mean):
            with pytest.raises(ValueError, match=f"{sink.__name__}: the stream had no items"):
                await sink(just())
            assert await sink(just(), default="none") == "none"
        assert await running_mean().collect([]) == []


async def test_metadata_passes_running_forms_in_order(anyio_backend: Any) -> None:
    flush = Flush()
    with anyio.fail_after(10):
        out = await (just(3, flush, 1, 2) | running_min() | running_count()).collect(metadata=True)
        assert out == [1, flush, 2, 3]
        assert await maximum(just(3, flush, 5)) == 5


async def test_error_names_the_stage(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        with pytest.raises(TypeError) as info:
            await (just(1, "a") | running_max(name="peak")).collect()
        assert "peak" in "".join(getattr(info.value, "__notes__", []))
