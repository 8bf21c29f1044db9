"""Virtual time of the testing kit: the asyncio VirtualClockLoop and trio's autojumping MockClock, under anyio's
plugin (an ``anyio_backend`` of virtual clocks) and under pytest-asyncio (``event_loop_policy``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from talkpipe_async import source
from talkpipe_async.operators import batch, interval, take, time_window
from talkpipe_async.testing import (
    VirtualClockLoop,
    VirtualClockPolicy,
    clock_is_virtual,
    in_virtual_time,
    run_stage,
    virtual_backend,
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Each anyio test of this module once per virtual clock."""
    return virtual_backend(request.param)


@pytest.fixture
def event_loop_policy(virtual_event_loop_policy: VirtualClockPolicy) -> VirtualClockPolicy:
    """The pytest-asyncio tests of this module run on VirtualClockLoop (the plugin's fixture).

    pytest-asyncio 1.x prefers its ``pytest_asyncio_loop_factories`` hook, which lives in a conftest.py and so
    covers a whole directory; the subprocess test in tests/testing/test_testing_kit.py exercises that route.
    """
    return virtual_event_loop_policy


pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture is deprecated')


@source
async def every(seconds: float, n: int) -> AsyncIterator[tuple[float, int]]:
    """n items, one every *seconds*, stamped with their virtual time."""
    for i in range(n):
        await anyio.sleep(seconds)
        yield anyio.current_time(), i


@pytest.mark.anyio
async def test_an_hour_of_windowing_runs_at_once_on_virtual_timestamps() -> None:
    assert clock_is_virtual()
    wall, start = time.perf_counter(), anyio.current_time()
    # one item per second for an hour, in one-minute windows: 60 windows of 60 items
    windows = await run_stage(every(1.0, 3600) | time_window(60.0), timeout=7200)
    assert [len(w) for w in windows] == [59] + [60] * 59 + [1]  # items at t=1..3600; windows [0,60), [60,120), ...
    assert windows[0][0][0] - start == 1.0 and windows[-1][-1][0] - start == 3600.0
    assert [round(w[0][0] - start) for w in windows[1:]] == [60 * k for k in range(1, 61)]
    assert anyio.current_time() - start == 3600.0
    assert time.perf_counter() - wall < 30  # the virtual hour; the real bound is loose for a loaded machine


@pytest.mark.anyio
async def test_sleep_and_cancel_scopes_follow_the_virtual_clock() -> None:
    start = anyio.current_time()
    with anyio.move_on_after(10):
        await anyio.sleep(100)
    assert anyio.current_time() - start == 10
    with pytest.raises(TimeoutError):
        with anyio.fail_after(5):
            await anyio.sleep_forever()
    assert anyio.current_time() - start == 15
    assert await run_stage(interval(0.5) | take(4), timeout=3) == [0, 1, 2, 3]
    assert anyio.current_time() - start == 17


@pytest.mark.anyio
async def test_batch_timeout_in_virtual_time_and_real_io_alongside() -> None:
    # A real TCP echo on 127.0.0.1 on the same loop: the clock jumps only when nothing is ready.
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.send(await stream.receive())

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        async with await anyio.connect_tcp("127.0.0.1", port) as conn:
            await conn.send(b"ping")
            assert await conn.receive() == b"ping"
        tg.cancel_scope.cancel()
    start = anyio.current_time()
    got = await run_stage(every(0.4, 5) | batch(100, timeout=1.0), timeout=60)
    assert [[i for _, i in b] for b in got] == [[0, 1, 2], [3, 4]]
    assert anyio.current_time() - start == pytest.approx(2.0)


@pytest.mark.asyncio
async def test_pytest_asyncio_runs_on_the_virtual_loop() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualClockLoop) and clock_is_virtual()
    start = loop.time()
    got = await run_stage(every(60.0, 3) | batch(2, timeout=90.0), timeout=3600)
    assert [[i for _, i in b] for b in got] == [[0, 1], [2]]
    assert loop.time() - start == 180.0
    loop.advance(5)
    assert loop.time() - start == 185.0
    with pytest.raises(ValueError, match="cannot go back"):
        loop.advance(-1)


@pytest.mark.asyncio
async def test_in_virtual_time_runs_here_when_already_virtual() -> None:
    start = anyio.current_time()

    async def sleepy() -> float:
        await anyio.sleep(42)
        return anyio.current_time()

    assert await in_virtual_time(sleepy) == start + 42


def test_virtual_backend_names() -> None:
    assert virtual_backend("asyncio") == ("asyncio", {"loop_factory": VirtualClockLoop})
    name, options = virtual_backend("trio")
    assert name == "trio" and options["clock"].autojump_threshold == 0
    assert virtual_backend("trio")[1]["clock"] is not options["clock"]  # a fresh clock per test
    with pytest.raises(ValueError, match="asyncio' or 'trio"):
        virtual_backend("uvloop")


@pytest.mark.anyio
async def test_sse_source_reconnects_through_a_scripted_transport() -> None:
    import httpx

    from talkpipe_async import Backoff
    from talkpipe_async.sources.sse import sse_events
    from talkpipe_async.testing import Cut, scripted_transport, split_every, sse

    first = sse("one", id="1") + sse("two", id="2") + b"data: half"
    requests: list[httpx.Request] = []
    transport = scripted_transport([*split_every(first, 7), Cut()], [sse("three", id="3")], requests=requests)
    backoff = Backoff(initial=30.0, jitter="none", exact_first=True, max_attempts=3)
    start = anyio.current_time()
    async with httpx.AsyncClient(transport=transport) as client:
        events = await run_stage(sse_events("http://feed.test/events", client=client, backoff=backoff), timeout=600)
    assert [(e.data, e.id) for e in events] == [("one", "1"), ("two", "2"), ("three", "3")]
    assert [r.headers.get("last-event-id") for r in requests] == [None, "2", "3"]  # resumed where it left
    # two reconnection waits (after the cut, and after the second body's orderly end, which SSE also retries),
    # then the 204 ends the source: a virtual minute
    assert anyio.current_time() - start == 60.0


def test_marble_runs_are_identical_on_both_clocks_and_every_time() -> None:
    from talkpipe_async.operators import debounce, merge, throttle
    from talkpipe_async.testing import marble_source, record_marbles

    def pipeline() -> Any:
        left = marble_source("-a-b-(cd)----e--f|")
        right = marble_source("--x---y-(zw)---|")
        return merge(left, right) | throttle(40, burst=2) | debounce(0.015) | batch(2, timeout=0.03)

    async def once() -> list[Any]:
        return await record_marbles(pipeline(), None, until=100)

    runs = []
    for name in ("asyncio", "trio") * 5:
        backend, options = virtual_backend(name)
        runs.append(anyio.run(once, backend=backend, backend_options=options))
    assert runs[0][-1].kind == "end" and sum(e.kind == "item" for e in runs[0]) >= 3
    assert all(run == runs[0] for run in runs), runs


@pytest.mark.asyncio
async def test_asyncio_native_timers_follow_the_virtual_loop() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    fired: list[float] = []
    loop.call_later(7.5, lambda: fired.append(loop.time() - start))
    with pytest.raises(asyncio.TimeoutError):  # the builtin TimeoutError from Python 3.11 on
        await asyncio.wait_for(asyncio.sleep(100), 10)
    assert fired == [7.5] and loop.time() - start == 10


@pytest.mark.anyio
async def test_a_stage_on_a_worker_thread_meets_the_timeout_and_is_told_why() -> None:
    import threading

    from talkpipe_async.testing import StageTimedOut

    release = threading.Event()

    @source
    async def slow_thread() -> AsyncIterator[int]:
        yield 1
        await anyio.to_thread.run_sync(release.wait, 10, abandon_on_cancel=True)  # the clock does not wait
        yield 2

    try:
        with pytest.raises(StageTimedOut, match="clock is virtual") as info:
            await run_stage(slow_thread(), timeout=5)
    finally:
        release.set()
    assert info.value.items == [1]
