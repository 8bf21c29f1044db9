"""Outage budgets of the connectors, in one process, against real servers that are stopped and restarted.

* A source or sink whose broker stays down longer than ``outage_budget``
  fails with ``BrokerUnavailable`` naming the broker, what it was doing and
  the cause, within the budget plus one call deadline (no hang).
* The JetStream sink keeps publishing through a restart: every item is
  stored, once (``Nats-Msg-Id`` de-duplication of republished messages).
* A session close that a frozen broker holds past its deadline is cut
  there, and says so in a warning naming the source.
* A confirmation round trip to NATS cut short by a frozen server leaves
  the connection working once the server answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from talkpipe_async.connectors import (
    BrokerUnavailable,
    _base,
    consume,
    jetstream_messages,
    redis_stream_messages,
    to_jetstream,
    to_redis_stream,
)
from talkpipe_async.connectors.nats import NatsLink, close_nats, confirm_sent, connect_nats
from tests.helpers.brokers import ASYNCIO_LOOPS, RestartableServer, nats_fill, nats_read

pytest_plugins = ["tests.helpers.brokers"]

pytestmark = pytest.mark.anyio

BUDGET = 1.0
BOUND = BUDGET + 8.0  # the budget, plus one call deadline (timeout + 5 s), plus slack for a loaded machine


@pytest.fixture(params=ASYNCIO_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """The broker clients need asyncio: asyncio and uvloop."""
    return request.param


async def stop_after(items: int, server: RestartableServer) -> AsyncIterator[int]:
    """Yield 0..items-1, stop the server, then yield more (the sink must fail, not hang)."""
    for i in range(items):
        yield i
    await anyio.to_thread.run_sync(server.stop)
    for i in range(items, items * 2):
        yield i


def check_error(err: BaseException, broker: str, url: str) -> None:
    text = str(err)
    assert f"{broker} at {url}" in text and f"outage_budget={BUDGET:g}" in text, text
    assert err.__cause__ is not None and type(err.__cause__).__name__ in text, text


async def test_redis_source_fails_after_its_budget(restartable_redis: RestartableServer) -> None:
    url = restartable_redis.url
    await to_redis_stream("feed", url=url).collect([{"i": i} for i in range(10)])
    src = redis_stream_messages("feed", "g", url=url, block=0.05, outage_budget=BUDGET)

    async def stop_server(_: Any) -> None:
        if restartable_redis.proc is not None:
            await anyio.to_thread.run_sync(restartable_redis.stop)

    with anyio.fail_after(BOUND), pytest.raises(BrokerUnavailable) as info:
        await consume(src, stop_server)
    check_error(info.value, "redis", url)
    assert src.stats.outages >= 1


async def test_redis_sink_fails_after_its_budget(restartable_redis: RestartableServer) -> None:
    url = restartable_redis.url
    sink = to_redis_stream("out", url=url, batch=1, outage_budget=BUDGET)
    with anyio.fail_after(BOUND), pytest.raises(BrokerUnavailable) as info:
        await sink.collect(stop_after(5, restartable_redis))
    check_error(info.value, "redis", url)
    assert 1 <= sink.stats.written <= 5  # the feeder reads ahead: the server may stop before the 5th write


async def test_jetstream_source_fails_after_its_budget(restartable_nats: RestartableServer) -> None:
    url = restartable_nats.url
    await nats_fill(url, "feed.x", [{"i": i} for i in range(10)], streams={"FEED": ["feed.>"]})
    src = jetstream_messages("FEED", "d", servers=url, fetch_wait=0.05, outage_budget=BUDGET)

    async def stop_server(_: Any) -> None:
        if restartable_nats.proc is not None:
            await anyio.to_thread.run_sync(restartable_nats.stop)

    with anyio.fail_after(BOUND), pytest.raises(BrokerUnavailable) as info:
        await consume(src, stop_server)
    check_error(info.value, "nats", url)


async def test_jetstream_sink_fails_after_its_budget_instead_of_hanging(restartable_nats: RestartableServer) -> None:
    url = restartable_nats.url
    await nats_fill(url, "out.x", [], streams={"OUT": ["out.>"]})
    sink = to_jetstream("out.x", servers=url, batch=1, timeout=0.5, outage_budget=BUDGET)
    with anyio.fail_after(BOUND), pytest.raises(BrokerUnavailable) as info:
        await sink.collect(stop_after(5, restartable_nats))
    check_error(info.value, "nats", url)
    assert 1 <= sink.stats.written <= 5  # the feeder reads ahead: the server may stop before the 5th write


async def test_jetstream_sink_rides_a_restart_and_stores_each_item_once(restartable_nats: RestartableServer) -> None:
    url = restartable_nats.url
    await nats_fill(url, "out.x", [], streams={"OUT": ["out.>"]})
    n = 400

    async def items() -> AsyncIterator[int]:
        for i in range(n):
            if i == n // 2:
                await anyio.to_thread.run_sync(restartable_nats.outage, 0.5)
            yield i

    sink = to_jetstream("out.x", servers=url, batch=20, timeout=0.5)
    with anyio.fail_after(40):
        assert await sink.collect(items()) == list(range(n))
    stored = await nats_read(url, "OUT")
    assert sorted(stored) == list(range(n)), "an item was lost or stored twice"
    # Whether the sink saw the outage depends on the client: nats-py may hold publishes in its reconnect buffer
    # and never report a failure (seen on Python 3.12); what must hold either way is asserted above.
    print(f"jetstream sink restart: {n} stored once, outages {sink.stats.outages}, republished {sink.stats.rewritten}")


def test_json_payloads_stay_plain() -> None:
    """The dedup header does not touch the payload (a regression guard for readers of the stream)."""
    sink = to_jetstream("x")
    assert sink.encode({"a": 1}) == json.dumps({"a": 1}, separators=(",", ":")).encode()


@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_worker_process_exits_with_the_error_when_the_budget_is_spent(kind: str) -> None:
    """A worker whose broker stays down exits non-zero with BrokerUnavailable, never 0 without an error."""
    import time

    from tests.helpers.brokers import nats_count, start_worker
    from tests.helpers.wait import wait_until_sync

    server = RestartableServer(kind)
    server.start()
    proc: Any = None
    try:
        url = server.url
        if kind == "redis":
            import redis

            client = redis.Redis.from_url(url)
            pipe = client.pipeline(transaction=False)
            for i in range(20_000):
                pipe.xadd("feed", {"data": json.dumps({"i": i})})
            pipe.execute()
            stream, group, results = "feed", "g", "res"

            def handled() -> int:
                return int(client.xlen("res"))
        else:
            anyio.run(
                lambda: nats_fill(
                    url, "feed.x", [{"i": i} for i in range(20_000)], streams={"FEED": ["feed.>"], "RES": ["res.>"]}
                )
            )
            stream, group, results = "FEED", "g", "res.x"

            def handled() -> int:
                return int(anyio.run(nats_count, url, "RES"))

        proc = start_worker(
            kind,
            url,
            stream,
            group,
            results,
            "w0",
            idle_exit=30.0,
            extra=("--outage-budget", str(BUDGET), "--delay", "0.001"),
        )
        wait_until_sync(
            lambda: proc.poll() is not None or handled() > 100, time.monotonic() + 30, "the worker to handle messages"
        )
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        server.stop()
        _, err = proc.communicate(timeout=BOUND + 10)
        assert proc.returncode not in (0, None), err[-3000:]
        assert "BrokerUnavailable" in err and f"{kind} at {url}" in err, err[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        server.close()


def wait_until_stopped(pid: int) -> None:
    """Return once the kernel shows *pid* stopped: a signal is delivered asynchronously, and a server still
    running for a moment would answer what the test means it to leave unanswered."""
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} not stopped 5 s after SIGSTOP"
        os.sched_yield()


@contextmanager
def frozen(server: RestartableServer) -> Iterator[None]:
    """The server stopped with SIGSTOP: its connections stay open and nothing is answered, until the block ends."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        wait_until_stopped(server.proc.pid)
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


async def test_a_close_held_past_its_deadline_is_cut_and_says_so(
        restartable_redis: RestartableServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The acknowledgement sent at close cannot reach a frozen broker: the close ends at its deadline and warns."""
    monkeypatch.setattr(_base, "CLOSE_TIMEOUT", 0.5)
    url = restartable_redis.url
    await to_redis_stream("frozen", url=url).collect([{"i": i} for i in range(3)])
    src = redis_stream_messages("frozen", "g", url=url, block=0.05)
    caplog.set_level(logging.WARNING, "talkpipe_async.connectors")
    with anyio.fail_after(BOUND), ExitStack() as thaw:
        async with src.stream() as messages:
            async for message in messages:
                await message.ack()
                thaw.enter_context(frozen(restartable_redis))  # thawed once the run has closed
                break
    cut = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert cut == [f"{src.label}: closing the session: cut short after 0 s; what it did not finish is left to the "
                   "broker (unacknowledged messages are delivered again, leases lapse after lease_ttl)"]


async def test_a_confirmation_cut_short_leaves_the_nats_connection_reading(
        restartable_nats: RestartableServer) -> None:
    """The acknowledgements sent before a lease is released are confirmed by a round trip with a deadline; one
    cut by that deadline (a frozen server) must not leave the client deaf to what the server sends later."""
    import nats

    nc = await nats.connect(restartable_nats.url)
    try:
        with anyio.fail_after(BOUND):
            await confirm_sent(nc, 5)  # nothing of the connection's start is still on the wire
            with frozen(restartable_nats), pytest.raises(asyncio.TimeoutError):  # TimeoutError from 3.11 on
                await confirm_sent(nc, 0.2)
            await confirm_sent(nc, 5)  # its answer comes after the late one of the round trip cut short
            assert (await nc.jetstream().account_info()).streams >= 0
    finally:
        await nc.close()


async def test_a_connection_made_with_no_retries_still_rides_a_long_outage(
        restartable_nats: RestartableServer) -> None:
    """``retries`` bounds only the first connection: once connected, the client reconnects without a limit (the
    stages bound an outage in time), and the link records when the connection went down and came back."""
    link = NatsLink()
    nc = await connect_nats(restartable_nats.url, retries=0, link=link)
    try:
        assert link.nc is nc and link.down_since is None and not link.ever_down
        await anyio.to_thread.run_sync(restartable_nats.stop)
        with anyio.fail_after(10):
            while link.down_since is None:
                await anyio.sleep(0.02)
        went_down = link.down_since
        assert link.ever_down
        await anyio.sleep(1.5)  # the outage's length: six reconnect attempts 0.25 s apart, more than one try allows
        assert not nc.is_closed and link.down_since == went_down  # the first loss is kept while it lasts
        await anyio.to_thread.run_sync(restartable_nats.start)
        with anyio.fail_after(20):
            while link.down_since is not None or not nc.is_connected:
                await anyio.sleep(0.02)
        await nc.flush(timeout=5)
        assert link.ever_down
    finally:
        await close_nats(nc)
