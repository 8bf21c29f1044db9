"""TalkPipe 1.2's own segments inside talkpipe-async pipelines: threads they start, errors in those threads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest

from talkpipe_async import segment, source
from tests.helpers.talkpipe import require_talkpipe

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


# ---- metadata across the edge ----


async def test_talkpipe_flush_n_flushes_our_batch() -> None:
    from talkpipe.pipe.metadata import flushN

    from talkpipe_async.operators import batch

    out = await (anums(n=5) | flushN(n=2) | batch(10)).collect()
    assert out == [[0, 1], [2, 3], [4]]


async def test_talkpipe_metadata_reaches_the_consumer_as_ours() -> None:
    from talkpipe.pipe.metadata import flushN

    from talkpipe_async import Flush

    out = await (anums(n=3) | flushN(n=2)).collect(metadata=True)
    assert out == [0, 1, Flush(), 2]


async def test_our_flush_reaches_a_talkpipe_segment_that_takes_metadata_as_talkpipes() -> None:
    from talkpipe.pipe.metadata import CollectMetadata
    from talkpipe.pipe.metadata import Flush as TPFlush

    from talkpipe_async import Flush, Metadata

    @segment
    async def inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            yield x + 1

    out = await (inc() | CollectMetadata()).collect([1, Flush(), 2, Metadata(action="mark", n=3)])
    assert out == [str(TPFlush), str(tp.Metadata)]


async def test_talkpipe_segment_sees_our_metadata_fields() -> None:
    from talkpipe_async import Metadata

    @tp.segment(process_metadata=True)
    def fields(items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            if tp.is_metadata(item):
                yield dict(item.model_extra or {})

    from talkpipe_async.interop import from_talkpipe

    out = await from_talkpipe(fields()).collect([1, Metadata(action="mark", n=3)])
    assert out == [{"action": "mark", "n": 3}]


def test_is_metadata_recognises_talkpipes_metadata() -> None:
    from talkpipe.pipe.basic import firstN
    from talkpipe.pipe.metadata import Flush as TPFlush

    from talkpipe_async import is_metadata
    from talkpipe_async.interop import from_talkpipe

    from_talkpipe(firstN(n=1))  # a TalkPipe stage built: TalkPipe is in use

    assert is_metadata(TPFlush()) and is_metadata(tp.Metadata(x=1))
    assert not is_metadata({"x": 1})


def test_is_metadata_does_not_import_talkpipe() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from talkpipe_async import is_metadata; import talkpipe_async.interop;"
        "assert not is_metadata(1); assert not any(m.startswith('talkpipe.') for m in sys.modules), sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- TalkPipe first ----


async def test_a_talkpipe_source_starts_a_pipeline() -> None:
    from talkpipe_async import Pipeline

    @tp.source()
    def tp_nums(n: int) -> Iterator[int]:
        yield from range(n)

    @segment
    async def inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            yield x + 1

    assert await Pipeline(tp_nums(n=3), inc()).collect() == [1, 2, 3]
    assert await (Pipeline(tp_nums(n=3)) | inc()).collect() == [1, 2, 3]


async def test_from_talkpipe_starts_a_chain_with_a_talkpipe_segment_or_pipeline() -> None:
    from talkpipe.pipe.basic import firstN

    from talkpipe_async.interop import from_talkpipe

    @tp.source()
    def tp_nums(n: int) -> Iterator[int]:
        yield from range(n)

    @segment
    async def inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            yield x + 1

    assert await (from_talkpipe(firstN(n=2)) | inc()).collect([5, 6, 7]) == [6, 7]
    pipe = from_talkpipe(tp_nums(n=5) | firstN(n=3)) | inc()
    # TalkPipe's class names label its stages
    assert [stage.label for stage in pipe.stages] == ["tp_numsInput", "firstNOperation", "inc"]
    assert await pipe.collect() == [1, 2, 3]


def test_talkpipe_or_first_says_what_to_write() -> None:
    from talkpipe.pipe.basic import firstN

    @segment
    async def inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            yield x + 1

    with pytest.raises(TypeError, match=r"from_talkpipe\(tp_object\) \| stage"):
        firstN(n=2) | inc()


# ---- thread stages: blocking=True, and the hook is scoped to the run ----


async def test_talkpipe_segment_with_blocking_reads_its_input_in_its_own_thread() -> None:
    from talkpipe_async.interop import from_talkpipe

    debounce = from_talkpipe(Debounce(key_field="k", debounce_seconds=0.05), blocking=True)
    assert all(stage.blocking for stage in debounce.stages)
    out = await (anums(n=6) | akeyed() | debounce).collect()
    assert sorted(d["v"] for d in out) == [4, 5]


async def test_thread_error_with_blocking_fails_the_run_and_the_hook_is_restored() -> None:
    import threading

    from talkpipe_async.interop import from_talkpipe

    before = threading.excepthook
    debounce = from_talkpipe(Debounce(key_field="k", debounce_seconds=0.05), blocking=True)
    with pytest.raises(ValueError, match="bad item 3"):
        await (anums(n=6) | akeyed() | fail_on(3) | debounce).collect()
    assert threading.excepthook is before


async def test_a_dead_reader_thread_fails_the_run_even_when_the_segment_waits_forever() -> None:
    import queue
    import threading

    release = threading.Event()

    @tp.segment()
    def stuck(items: Iterable[int]) -> Iterator[int]:
        got: queue.Queue[int] = queue.Queue()

        def reader() -> None:
            for x in items:
                if x == 2:
                    raise ValueError("reader died")
                got.put(x)

        threading.Thread(target=reader, daemon=True).start()
        while not release.is_set():  # waits for the reader's items forever, as a segment whose reader died would
            try:
                yield got.get(timeout=0.05)
            except queue.Empty:
                continue

    try:
        with pytest.raises(ValueError, match="reader died"):
            await (anums(n=5) | stuck()).collect()
    finally:
        release.set()  # let the abandoned worker end


async def test_talkpipe_flush_n_inline_after_a_sync_source_and_in_iter_sync() -> None:
    from talkpipe.pipe.metadata import flushN

    from talkpipe_async import Flush, Pipeline
    from talkpipe_async.operators import batch

    @tp.source()
    def tp_nums(n: int) -> Iterator[int]:
        yield from range(n)

    assert await Pipeline(tp_nums(n=5), flushN(n=2), batch(10)).collect() == [[0, 1], [2, 3], [4]]
    assert await Pipeline(flushN(n=2), batch(10)).collect(range(5)) == [[0, 1], [2, 3], [4]]
    assert list(Pipeline(tp_nums(n=3), flushN(n=2)).iter_sync(metadata=True)) == [0, 1, Flush(), 2]
