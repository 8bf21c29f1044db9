"""Broker outages under two consuming worker processes: nothing is lost.

A real redis-server (append-only file, ``appendfsync always``) or
nats-server (JetStream store directory) on a fixed port is stopped while two
workers (tests/helpers/scaleout_worker.py: ``source | record | sink`` under
``consume()``) are mid-stream, kept down for 0.1, 1 or 3 s, and started
again.  Both workers must ride out the outage (same consumer identity,
backoff, warnings) and finish: every message id is handled at least once,
the workers exit 0, and the duplicates are counted.  The 10 s outage runs
when ``TALKPIPE_LONG_OUTAGE=1``.

Plain (sync) tests: the workers are separate processes on asyncio.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from typing import Any

import anyio
import pytest

from tests.helpers.brokers import (
    RestartableServer,
    counter,
    nats_count,
    nats_fill,
    nats_read,
    start_worker,
    wait_all,
)
from tests.helpers.wait import wait_until_sync

pytest_plugins = ["tests.helpers.brokers"]

# Broker restarts, crashes and signals to worker processes: long attacks, run once per CI run (see .ci/run).
pytestmark = pytest.mark.soak

N = 4000
BATCH = 50
DELAY = 0.0008  # seconds of work per message: the workers are mid-stream when the broker goes down

OUTAGES = [
    pytest.param(0.1, id="0.1s"),
    pytest.param(1.0, id="1s"),
    pytest.param(3.0, id="3s"),
    pytest.param(10.0, id="10s", marks=pytest.mark.skipif(
        os.environ.get("TALKPIPE_LONG_OUTAGE") != "1", reason="set TALKPIPE_LONG_OUTAGE=1 for the 10 s outage")),
]


def report(kind: str, seconds: float, counts: Counter[int], outcomes: list[tuple[int, str, str]]) -> None:
    """Print the figures of one outage run (shown with -s)."""
    dup = sum(c - 1 for c in counts.values())
    outages = [counter(out, "outages") + counter(out, "sink_outages") for _, out, _ in outcomes]
    print(f"{kind} outage {seconds:g}s: handled {len(counts)}/{N}, duplicates {dup}, outages seen {outages}")


def check(counts: Counter[int], outcomes: list[tuple[int, str, str]]) -> None:
    assert all(code == 0 for code, _, _ in outcomes), [err[-3000:] for _, _, err in outcomes]
    missing = set(range(N)) - set(counts)
    assert not missing, f"lost {len(missing)} messages, e.g. {sorted(missing)[:10]}"
    # every worker was consuming when the broker went down, and said so in its log
    assert all("unreachable" in err for _, _, err in outcomes), [err[-2000:] for _, _, err in outcomes]


@pytest.mark.parametrize("seconds", OUTAGES)
def test_redis_outage_two_workers_lose_nothing(restartable_redis: RestartableServer, seconds: float) -> None:
    import redis


    url = restartable_redis.url
    client = redis.Redis.from_url(url)
    tag = uuid.uuid4().hex[:6]
    stream, group, results = f"feed-{tag}", f"workers-{tag}", f"results-{tag}"
    client.xgroup_create(stream, group, id="0", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for i in range(N):
        pipe.xadd(stream, {"data": json.dumps({"i": i})})
    pipe.execute()
    deadline = time.monotonic() + 45 + 2 * seconds
    procs = [start_worker("redis", url, stream, group, results, f"w{k}", batch=BATCH, idle_exit=seconds + 4,
                          extra=("--delay", str(DELAY))) for k in range(2)]
    wait_until_sync(lambda: client.xlen(results) >= N // 4, deadline, "a quarter of the results")
    client.close()
    restartable_redis.outage(seconds)
    outcomes = wait_all(procs, deadline)
    client = redis.Redis.from_url(url)
    counts = Counter(json.loads(f[b"data"])["i"] for _, f in client.xrange(results))
    report("redis", seconds, counts, outcomes)
    check(counts, outcomes)
    assert int(client.xpending(stream, group)["pending"]) == 0
    client.close()


@pytest.mark.parametrize("seconds", OUTAGES)
def test_nats_outage_two_workers_lose_nothing(restartable_nats: RestartableServer, seconds: float) -> None:
    url = restartable_nats.url
    tag = uuid.uuid4().hex[:6]
    feed, res = f"FEED{tag}", f"RES{tag}"
    anyio.run(lambda: nats_fill(url, f"feed{tag}.x", [{"i": i} for i in range(N)],
                                streams={feed: [f"feed{tag}.>"], res: [f"res{tag}.>"]}))
    deadline = time.monotonic() + 45 + 2 * seconds
    procs = [start_worker("nats", url, feed, "workers", f"res{tag}.out", f"w{k}", batch=BATCH, claim_idle=5.0,
                          idle_exit=seconds + 7, extra=("--delay", str(DELAY))) for k in range(2)]
    wait_until_sync(lambda: anyio.run(nats_count, url, res) >= N // 4, deadline, "a quarter of the results")
    restartable_nats.outage(seconds)
    outcomes = wait_all(procs, deadline)
    records: list[Any] = anyio.run(nats_read, url, res)
    counts = Counter(r["i"] for r in records)
    report("nats", seconds, counts, outcomes)
    check(counts, outcomes)
