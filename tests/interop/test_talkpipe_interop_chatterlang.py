"""ChatterLang scripts compiled by TalkPipe 1.2's own compiler and run by this runtime, in Python and on the CLI."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.talkpipe import require_talkpipe

require_talkpipe()

from talkpipe.chatterlang.compiler import CompileError  # noqa: E402
from talkpipe.chatterlang.registry import register_segment  # noqa: E402
from talkpipe.pipe import core as tp  # noqa: E402

from talkpipe_async import Flush  # noqa: E402
from talkpipe_async.interop.chatterlang import compile_chatterlang  # noqa: E402

CLOSED: list[str] = []
TAGS = itertools.count()


@register_segment("recordClose")
@tp.segment()
def record_close(items: Iterable[Any], tag: str = "x") -> Iterator[Any]:
    """A TalkPipe segment that notes when it is closed (its finally ran)."""
    try:
        yield from items
    finally:
        CLOSED.append(tag)


@pytest.mark.anyio
async def test_script_runs_with_talkpipes_own_segments() -> None:
    pipe = compile_chatterlang('INPUT FROM echo[data="1,2,3"] | cast[cast_type="int"] | lambda[expression="item*10"]')
    assert await pipe.collect() == [10, 20, 30]


@pytest.mark.anyio
@pytest.mark.parametrize("blocking", [False, True])
async def test_our_stages_under_async_names_and_talkpipe_metadata_between(blocking: bool) -> None:
    script = '| cast[cast_type="int"] | flushN[n=2] | async_batch[size=10]'
    pipe = compile_chatterlang(script, blocking=blocking)
    assert [s.label for s in pipe.stages][-1] == "batch"  # our own stage, not a TalkPipe wrapper
    assert await pipe.collect(["1", "2", "3"]) == [[1, 2], [3]]


@pytest.mark.anyio
async def test_our_source_starts_a_script() -> None:
    pipe = compile_chatterlang("INPUT FROM async_interval[seconds=0.001, count=3] | async_enumerate[start=1]")
    assert await pipe.collect() == [(1, 0), (2, 1), (3, 2)]


@pytest.mark.anyio
@pytest.mark.parametrize("blocking", [False, True])
async def test_leaving_early_closes_talkpipe_stages(blocking: bool) -> None:
    tag = f"break-{next(TAGS)}"
    script = f'INPUT FROM async_interval[seconds=0.001] | recordClose[tag="{tag}"]'
    pipe = compile_chatterlang(script, blocking=blocking)
    seen = []
    async with pipe.stream() as items:
        async for x in items:
            seen.append(x)
            if len(seen) == 3:
                break
    assert seen == [0, 1, 2]
    assert tag in CLOSED  # closed before the block ended


@pytest.mark.anyio
async def test_cancelling_a_script_closes_it() -> None:
    tag = f"cancelled-{next(TAGS)}"
    pipe = compile_chatterlang(f'INPUT FROM async_interval[seconds=0.001] | recordClose[tag="{tag}"]')
    with anyio.CancelScope() as scope:
        async with pipe.stream() as items:
            async for x in items:
                if x == 5:
                    scope.cancel()
    assert scope.cancelled_caught
    assert tag in CLOSED


@pytest.mark.anyio
async def test_our_flush_reaches_a_script_segment_that_takes_metadata() -> None:
    pipe = compile_chatterlang("| collectMetadata")
    out = await pipe.collect([1, Flush(), 2])
    assert out == ["<class 'talkpipe.pipe.metadata.Flush'>"]


@pytest.mark.anyio
async def test_a_script_of_several_pipelines_keeps_talkpipes_order() -> None:
    pipe = compile_chatterlang('INPUT FROM echo[data="a,b"] | @v; INPUT FROM @v | lambda[expression="item.upper()"]')
    assert await pipe.collect() == ["A", "B"]


def test_a_bad_script_raises_talkpipes_compile_error() -> None:
    with pytest.raises(CompileError, match="nosuch"):
        compile_chatterlang("INPUT FROM nosuch | print")


def test_cli_runs_a_script() -> None:
    done = run_cli("chatterlang", 'INPUT FROM echo[data="1,2,3"] | cast[cast_type="int"] | async_batch[size=2]')
    assert (done.returncode, done.stdout.splitlines()) == (0, ["[1,2]", "[3]"]), done.stderr


def test_cli_script_with_print_and_discard() -> None:
    done = run_cli("chatterlang", "--discard", 'INPUT FROM echo[data="1,2,3"] | cast[cast_type="int"] | print')
    assert (done.returncode, done.stdout.splitlines()) == (0, ["1", "2", "3"]), done.stderr


def test_cli_script_reads_stdin_when_it_has_no_source() -> None:
    done = run_cli("chatterlang", '| lambda[expression="item.upper()"]', stdin="a\nb\n")
    assert (done.returncode, done.stdout.splitlines()) == (0, ["A", "B"]), done.stderr


def test_cli_bad_script_is_exit_2() -> None:
    done = run_cli("chatterlang", "INPUT FROM nosuch | print")
    assert done.returncode == 2
    assert "bad script" in done.stderr and "nosuch" in done.stderr
