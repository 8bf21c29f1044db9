"""TalkPipe 1.2's own segments inside talkpipe-async pipelines: threads they start, errors in those threads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest

from talkpipe_async import segment, source

from .talkpipe_helpers import require_talkpipe

require_talkpipe()

from talkpipe.pipe import core as tp  # noqa: E402
from talkpipe.pipe.basic import Debounce  # noqa: E402
from talkpipe.pipe.fork import ForkMode, ForkSegment  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")]


@source
async def anums(n: int = 5) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@segment
async def akeyed(items: AsyncIterator[int]) -> AsyncIterator[dict[str, Any]]:
    async for i in items:
        yield {"k": i % 2, "v": i}


def double(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        yield 2 * x


tp_double = tp.segment(double)


def fail_on(bad: int) -> Any:
    def stage(items: Iterable[Any]) -> Iterator[Any]:
        for x in items:
            if x == bad or (isinstance(x, dict) and x.get("v") == bad):
                raise ValueError(f"bad item {bad}")
            yield x

    return stage


@pytest.mark.parametrize("blocking", [False, True])
async def test_fork_reads_its_input_in_its_own_thread_after_an_async_stage(blocking: bool) -> None:
    fork = ForkSegment(branches=[tp_double(), tp_double()], mode=ForkMode.BROADCAST)
    stage = segment(blocking=True)(fork.transform)() if blocking else fork
    out = await (anums(n=5) | stage).collect()
    assert sorted(out) == sorted([0, 2, 4, 6, 8] * 2)


async def test_debounce_after_an_async_stage_yields_the_last_item_per_key() -> None:
    out = await (anums(n=6) | akeyed() | Debounce(key_field="k", debounce_seconds=0.05)).collect()
    assert sorted(out, key=lambda d: d["k"]) == [{"k": 0, "v": 4}, {"k": 1, "v": 5}]


async def test_an_error_in_a_thread_the_segment_starts_fails_the_run() -> None:
    # Debounce reads its input in a thread of its own and lets that thread die quietly;
    # the run must fail with the error, not end with the items seen so far.
    pipe = anums(n=6) | akeyed() | fail_on(3) | Debounce(key_field="k", debounce_seconds=0.05)
    with pytest.raises(ValueError, match="bad item 3"):
        await pipe.collect()


async def test_fork_branch_error_reaches_the_consumer() -> None:
    fork = ForkSegment(branches=[tp.segment(fail_on(2))(), tp_double()])
    with pytest.raises(ValueError, match="bad item 2"):
        await (anums(n=5) | fork).collect()
