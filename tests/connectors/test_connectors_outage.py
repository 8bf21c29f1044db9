"""Outage budgets of the connectors, in one process, against real servers that are stopped and restarted.

* A source or sink whose broker stays down longer than ``outage_budget``
  fails with ``BrokerUnavailable`` naming the broker, what it was doing and
  the cause, within the budget plus one call deadline (no hang).
* The JetStream sink keeps publishing through a restart: every item is
  stored, once (``Nats-Msg-Id`` de-duplication of republished messages).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from talkpipe_async.connectors import (
    BrokerUnavailable,
    consume,
    jetstream_messages,
    redis_stream_messages,
    to_jetstream,
    to_redis_stream,
)
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
