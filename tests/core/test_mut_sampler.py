"""Sampled stage time (``stream(stats=True)``): what the sampler thread credits, and the thread itself.

Pinned here: a sample credits every thread's innermost stage frame, not only the first stack that holds one; a
stage's sampled time never exceeds the time its run took; and the sampler is one daemon thread named "talkpipe stats
sampler" while the run lasts (a run left open when the interpreter exits does not hold the exit).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from types import FrameType
from typing import Any

import pytest

from talkpipe_async import segment
from talkpipe_async._core._sampler import Sampler
from talkpipe_async._core._stats import StageStats

pytestmark = pytest.mark.anyio


@segment
async def add(items: AsyncIterator[int], n: int = 0) -> AsyncIterator[int]:
    async for x in items:
        yield x + n


def burn(seconds: float) -> None:
    """Keep the CPU busy (work for the sampler to see; not a wait)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@segment
def busy_in_thread(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        burn(0.02)
        yield x


def test_one_sample_credits_the_stage_running_on_each_thread() -> None:
    frames: dict[FrameType, Any] = {}
    parked, release = threading.Barrier(3), threading.Event()
    stats = [StageStats("first"), StageStats("second")]

    def stage() -> Iterator[None]:
        parked.wait(10)  # both threads are inside their stage's frame now
        release.wait(10)
        yield

    gens = [stage(), stage()]
    for gen, s in zip(gens, stats, strict=True):
        assert gen.gi_frame is not None
        frames[gen.gi_frame] = s
    threads = [threading.Thread(target=next, args=(gen,)) for gen in gens]
    for t in threads:
        t.start()
    parked.wait(10)
    try:
        Sampler(frames).sample(sys._current_frames(), 0.5)
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert [s.sampled_s for s in stats] == [0.5, 0.5]


async def test_sampled_time_is_never_more_than_the_run_took(monkeypatch: pytest.MonkeyPatch) -> None:
    from talkpipe_async._core import _sampler

    monkeypatch.setattr(_sampler, "INTERVAL", 0.005)
    started = time.monotonic()
    run = (add() | busy_in_thread(blocking=True) | add()).stream(range(10), stats=True)
    async with run as items:
        assert [x async for x in items] == list(range(10))
    took = time.monotonic() - started
    busy = run.stats().stages[2]
    assert busy.name == "busy_in_thread"
    assert 0 < busy.time_s <= took + 0.005, run.stats().format()


async def test_the_sampler_is_a_named_daemon_thread_for_the_length_of_the_run() -> None:
    def samplers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "talkpipe stats sampler"]

    async with (add() | add()).stream(range(3), stats=True) as items:
        assert [x async for x in items] == [0, 1, 2]
        running = samplers()
        assert len(running) == 1 and running[0].daemon
    assert samplers() == []
