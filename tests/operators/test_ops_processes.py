"""process_map: batches of items in worker processes (asyncio, uvloop, trio)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Metadata, error_context, source
from talkpipe_async.operators import process_map
from tests.helpers import processes as work
from tests.helpers.ops import until
from tests.helpers.processes import children

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=10, deadline=None)


@source
async def from_list(xs: list[Any], pulled: list[int] | None = None) -> AsyncIterator[Any]:
    """Yield *xs*; count each item in *pulled* as it is produced."""
    for x in xs:
        if pulled is not None:
            pulled[0] += 1
        yield x


@PROPS
@given(xs=st.lists(st.integers(-1000, 1000), max_size=80), batch=st.integers(1, 9), ordered=st.booleans())
async def test_results_equal_serial_map(xs: list[int], batch: int, ordered: bool) -> None:
    out = await (from_list(xs) | process_map(work.triple, workers=2, batch_size=batch, ordered=ordered)).collect()
    expected = [x * 3 for x in xs]
    assert (out if ordered else sorted(out)) == (expected if ordered else sorted(expected))


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
async def test_spawn_safe_start_methods(method: str) -> None:
    stage = process_map(work.triple, workers=2, batch_size=4, mp_context=method)
    assert await (from_list(list(range(50))) | stage).collect() == [x * 3 for x in range(50)]


async def test_read_ahead_is_bounded_exactly() -> None:
    pulled = [0]
    worst = 0
    received = 0
    stage = process_map(work.triple, workers=2, batch_size=3, max_pending=10)
    async with (from_list(list(range(200)), pulled) | stage).stream() as items:
        async for _ in items:
            received += 1
            worst = max(worst, pulled[0] - received)
            assert pulled[0] <= received + 10 - 1  # the item in hand was one of the 10 the stage held
    assert received == 200
    assert worst == 10 - 1  # the bound is reached: the upstream did read ahead that far


async def test_error_keeps_type_stage_item_and_worker_traceback() -> None:
    out: list[int] = []
    stage = process_map(work.fail_on_seven, workers=2, batch_size=4)
    with pytest.raises(ValueError, match="seven is not welcome") as info:
        async with (from_list(list(range(20))) | stage).stream() as items:
            async for x in items:
                out.append(x)
    assert out == list(range(7))  # the items before it, in order
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == stage.label and ctx.item == "7"
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "traceback in the worker process" in notes and "fail_on_seven" in notes


async def test_unpicklable_error_arrives_as_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="Unpicklable"):
        await (from_list([1]) | process_map(work.raise_unpicklable, workers=1)).collect()


async def test_dead_worker_raises_broken_pool_naming_the_batch() -> None:
    before = children()
    with pytest.raises(BrokenProcessPool) as info:
        await (from_list(list(range(10))) | process_map(work.die_on_three, workers=1, batch_size=1)).collect()
    ctx = error_context(info.value)
    assert ctx is not None and ctx.item == "3"
    assert children() == before


async def test_unpicklable_item_names_that_item() -> None:
    gen = (i for i in range(1))  # generators cannot be pickled
    with pytest.raises(TypeError, match="pickle") as info:
        await (from_list([1, gen, 3]) | process_map(work.triple, workers=1, batch_size=8)).collect()
    ctx = error_context(info.value)
    assert ctx is not None and "generator" in (ctx.item or "")


def test_unknown_start_method_fails_when_built() -> None:
    with pytest.raises(ValueError):
        process_map(work.triple, mp_context="teleport")


def test_unpicklable_function_names_the_stage() -> None:
    with pytest.raises(TypeError, match=r"process_map\(.*<lambda>\).*picklable"):
        process_map(lambda x: x)


async def test_break_leaves_no_child_process() -> None:
    before = children()
    async with (from_list(list(range(10_000))) | process_map(work.triple, workers=2, batch_size=2)).stream() as items:
        async for x in items:
            if x == 30:
                break
    assert children() == before


def exit_hook_pools() -> set[Any]:
    """The pools concurrent.futures' exit hook would still wake at interpreter exit (by manager thread)."""
    from concurrent.futures import process

    return set(getattr(process, "_threads_wakeups", {}))


@pytest.mark.parametrize("stop_at", [None, 30])
async def test_a_finished_run_leaves_no_pool_for_the_exit_hook(stop_at: int | None) -> None:
    """Read to the end or left early, a run's pool is forgotten by concurrent.futures' exit hook: at interpreter
    exit that hook wakes every pool it lists, and for a pool whose workers were terminated the wake-up pipe may
    be closing in another thread at that moment ("Exception ignored ... Bad file descriptor" on stderr)."""
    before = exit_hook_pools()
    async with (from_list(list(range(200))) | process_map(work.triple, workers=2, batch_size=4)).stream() as items:
        async for x in items:
            if x == stop_at:
                break
    assert exit_hook_pools() == before


@settings(max_examples=8, deadline=None)
@given(stop_at=st.integers(0, 300), batch=st.integers(1, 20), ordered=st.booleans())
async def test_break_anywhere_leaves_no_child_process(stop_at: int, batch: int, ordered: bool) -> None:
    before = children()
    stage = process_map(work.triple, workers=2, batch_size=batch, ordered=ordered)
    async with (from_list(list(range(300))) | stage).stream() as items:
        async for n, _ in aenumerate(items):
            if n == stop_at:
                break
    assert children() == before


async def aenumerate(items: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    """``enumerate`` for an async iterator."""
    n = 0
    async for x in items:
        yield n, x
        n += 1


async def test_cancel_during_a_long_call_leaves_no_child_process(tmp_path: Path) -> None:
    before = children()
    mark = tmp_path / "started"
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon((from_list([str(mark)]) | process_map(work.mark_and_hang, workers=1)).collect)
            await until(mark.exists, rounds=10**9)
            scope.cancel()
    assert scope.cancelled_caught
    assert children() == before


async def test_metadata_keeps_its_position_ordered() -> None:
    meta = Metadata(n=1)
    stage = process_map(work.triple, workers=2, batch_size=8)
    out: list[Any] = []
    async with (from_list([1, 2, meta, 3]) | stage).stream(metadata=True) as items:
        async for x in items:
            out.append(x)
    assert out == [3, 6, meta, 9]


async def test_metadata_is_a_barrier_unordered() -> None:
    meta = Metadata(n=1)
    stage = process_map(work.triple, workers=2, batch_size=1, ordered=False)
    out: list[Any] = []
    async with (from_list([1, 2, 3, meta, 4]) | stage).stream(metadata=True) as items:
        async for x in items:
            out.append(x)
    assert sorted(out[:3]) == [3, 6, 9] and out[3] is meta and out[4] == 12
