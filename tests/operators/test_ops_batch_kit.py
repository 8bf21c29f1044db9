"""Batch and window operators through the testing kit's assert_emits: real clocks, anyio's plugin (asyncio, uvloop,
trio from tests/conftest.py) and pytest-asyncio (strict mode), with properties checked against list slicing."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush
from talkpipe_async.operators import batch, flush_n, time_window, window
from talkpipe_async.testing import assert_emits, assert_marbles, run_stage

F = Flush()


@pytest.mark.anyio
async def test_batch_sizes_and_the_rest() -> None:
    await assert_emits(batch(3), range(7), [[0, 1, 2], [3, 4, 5], [6]])
    await assert_emits(batch(3), [], [])


@pytest.mark.anyio
async def test_batch_flush_with_metadata() -> None:
    await assert_emits(batch(3), [1, 2, F, 3, F, F], [[1, 2], F, [3], F, F], metadata=True)


@pytest.mark.anyio
async def test_window_tumbling_and_sliding() -> None:
    await assert_emits(window(2), [1, 2, 3], [[1, 2], [3]])
    await assert_emits(window(3, step=1), [1, 2, 3, 4], [[1, 2, 3], [2, 3, 4]])
    await assert_emits(window(2, step=3), range(8), [[0, 1], [3, 4], [6, 7]])


@pytest.mark.anyio
async def test_window_flush_clears_a_sliding_window() -> None:
    await assert_emits(window(2, step=1), [1, 2, F, 3, 4], [[1, 2], F, [3, 4]], metadata=True)


@pytest.mark.asyncio
async def test_flush_n_then_batch_under_pytest_asyncio() -> None:
    await assert_emits(flush_n(2) | batch(100), range(5), [[0, 1], [2, 3], [4]])
    await assert_emits(flush_n(2), [1, 2, 3], [1, 2, F, 3], metadata=True)


@pytest.mark.asyncio
async def test_time_window_marbles_under_pytest_asyncio() -> None:
    await assert_marbles(time_window(0.05), "-a-b-c-d-e--|", "-----x----y-|", {"x": ["a", "b"], "y": ["c", "d", "e"]})


@settings(max_examples=40, deadline=None)
@given(xs=st.lists(st.integers(), max_size=40), size=st.integers(1, 6), step=st.integers(1, 6))
def test_window_is_list_slicing(xs: list[int], size: int, step: int) -> None:
    expected = [xs[i : i + size] for i in range(0, len(xs) - size + 1, step)]

    async def main() -> list[Any]:
        return await run_stage(window(size, step=step), xs)

    for backend in ("asyncio", "trio"):
        assert anyio.run(main, backend=backend) == expected
