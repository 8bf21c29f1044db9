"""Order per key across worker processes that join, leave (SIGTERM) and die (SIGKILL).

The feed holds KEYS keys, PER_KEY messages each (``{"i", "k", "s"}``, ``s``
the message's place in its key), written by a sink with ``key="k"`` into
PARTITIONS partitions.  Worker processes (tests/scaleout_worker.py with
``--partitions``) write one result per handled message to one results
stream, then acknowledge.  A partition is handed over only after its owner's
results are written and acknowledged (or after the owner died and its lease
lapsed), so the results stream shows the order of handling per key.

Checked: for every key, the first result of each message comes in the key's
order (0, 1, 2, ...: nothing lost, nothing out of order); repeats are
allowed (at least once: a killed worker's unacknowledged messages are handled
again) and counted.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from talkpipe_async.connectors import partition_for
from tests.broker_helpers import counter, start_worker, wait_all, wait_until

pytest_plugins = ["tests.broker_helpers"]

# Worker processes killed and stopped mid-stream: a long attack, run once per CI run (see .ci/run).
pytestmark = pytest.mark.soak

KEYS = 10
PER_KEY = 200
PARTITIONS = 6
BATCH = 20
LEASE_TTL = 1.0
DEADLINE = 55.0


def first_order_per_key(records: list[dict[str, Any]]) -> tuple[dict[str, list[int]], int]:
    """Per key, the places ``s`` in the order of their first result; and how many results were repeats."""
    firsts: dict[str, list[int]] = {}
    seen: set[tuple[str, int]] = set()
    repeats = 0
    for r in records:
        if (r["k"], r["s"]) in seen:
            repeats += 1
            continue
        seen.add((r["k"], r["s"]))
        firsts.setdefault(r["k"], []).append(r["s"])
    return firsts, repeats


def test_redis_order_per_key_while_workers_join_leave_and_die(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    tag = uuid.uuid4().hex[:6]
    stream, group, results = f"feed-{tag}", f"workers-{tag}", f"results-{tag}"
    pipe = client.pipeline(transaction=False)
    for s in range(PER_KEY):
        for k in range(KEYS):
            key = f"key-{k}"
            pipe.xadd(f"{stream}:{partition_for(key, PARTITIONS)}",
                      {"data": json.dumps({"i": s * KEYS + k, "k": key, "s": s})})
    pipe.execute()
    total = KEYS * PER_KEY
    deadline = time.monotonic() + DEADLINE

    def worker(name: str, *extra: str) -> Any:
        return start_worker("redis", redis_url, stream, group, results, name, batch=BATCH, idle_exit=3.0,
                            extra=("--partitions", str(PARTITIONS), "--lease-ttl", str(LEASE_TTL),
                                   "--delay", "0.001", *extra))

    def at(fraction: float) -> None:
        wait_until(lambda: client.xlen(results) >= total * fraction, deadline, f"{fraction:.0%} of the results")

    leaver = worker("w0", "--serve")
    victim = worker("w1")
    at(0.1)
    joiner = worker("w2")  # joins: the partitions are rebalanced over three workers
    at(0.3)
    os.kill(victim.pid, signal.SIGKILL)  # dies: its partitions wait for the lease to lapse, then are taken over
    victim.wait(timeout=5)
    at(0.5)
    os.kill(leaver.pid, signal.SIGTERM)  # leaves: it finishes what it holds and releases its partitions
    late = worker("w3")
    outcomes = wait_all([leaver, joiner, late], deadline)
    assert all(code == 0 for code, _, _ in outcomes), [err[-3000:] for _, _, err in outcomes]
    records = [json.loads(f[b"data"]) for _, f in client.xrange(results)]
    firsts, repeats = first_order_per_key(records)
    for key, places in firsts.items():
        assert places == list(range(PER_KEY)), (
            f"{key}: first handling out of order or lost at {next(i for i, s in enumerate(places) if s != i)}")
    assert set(firsts) == {f"key-{k}" for k in range(KEYS)}
    by_worker = Counter(r["w"] for r in records)
    assert set(by_worker) == {"w0", "w1", "w2", "w3"}, by_worker
    assert sum(int(client.xpending(f"{stream}:{p}", group)["pending"]) for p in range(PARTITIONS)) == 0
    assert client.keys(f"{stream}:{group}:lease:*") == []
    print(f"redis partitions: {total} messages, {repeats} repeats (at least once), per worker {dict(by_worker)}, "
          f"redelivered {sum(counter(out, 'redelivered') for _, out, _ in outcomes)}")
    client.close()
