"""One poison message under three supervised worker processes: only the poison reaches the dead letter.

The feed holds N messages; one of them (in the middle of a batch) makes the
worker's pipeline raise (the default error policy: the run fails, the
process exits 1).  The test is the supervisor: it restarts a crashed worker
under the same consumer name, a bounded number of times.  After a crash the
worker hands back what it held; the messages redelivered after a crash are
handed downstream one at a time, so the batch-mates of the poison succeed
and only the poison's own delivery count grows until it is dead-lettered.

Checked: the dead letter holds exactly the poison; every other message was
handled; the crashes number ``max_deliveries`` (5) and no batch-mate was
delivered more than a few times.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import anyio
import pytest

from tests.helpers.brokers import nats_fill, nats_read, start_worker

pytest_plugins = ["tests.helpers.brokers"]

# Broker restarts, crashes and signals to worker processes: long attacks, run once per CI run (see .ci/run).
pytestmark = pytest.mark.soak

N = 1000
POISON = 137
BATCH = 50
MAX_RESTARTS = 12
DEADLINE = 50.0


def payloads() -> list[dict[str, Any]]:
    return [{"i": i, "poison": True} if i == POISON else {"i": i} for i in range(N)]


def supervise(start: Any, names: list[str], deadline: float) -> tuple[int, list[str]]:
    """Run one worker per name; restart those that crash until every one ends with 0; return (crashes, logs)."""
    procs = {name: start(name) for name in names}
    crashes = 0
    logs: list[str] = []
    while procs:
        assert time.monotonic() < deadline, f"workers still running: {list(procs)}"
        for name, proc in list(procs.items()):
            try:
                _, err = proc.communicate(timeout=0.05)
            except Exception:  # still running (TimeoutExpired)
                continue
            logs.append(err)
            if proc.returncode == 0:
                del procs[name]
                continue
            assert "Poisoned" in err, f"worker {name} failed otherwise: {err[-3000:]}"
            crashes += 1
            assert crashes <= MAX_RESTARTS, "the poison keeps crashing workers: it never reached the dead letter"
            procs[name] = start(name)
    return crashes, logs


def check(records: list[dict[str, Any]], dead_ids: list[int], crashes: int, kind: str) -> None:
    counts = Counter(r["i"] for r in records)
    assert dead_ids == [POISON], f"dead letter holds {dead_ids}, expected only the poison {POISON}"
    assert set(counts) == set(range(N)) - {POISON}, f"lost {sorted(set(range(N)) - {POISON} - set(counts))[:10]}"
    most = max(r["d"] for r in records)
    dup = sum(c - 1 for c in counts.values())
    print(f"{kind} poison: crashes {crashes}, dead-lettered {dead_ids}, handled {len(counts)}, duplicates {dup}, "
          f"most deliveries of a handled message {most}")
    assert crashes == 5, f"{crashes} crashes; the poison should fail exactly max_deliveries=5 times"
    assert most < 5, "a batch-mate of the poison was charged nearly as often as the poison"


def test_redis_poison_alone_reaches_the_dead_letter(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    tag = uuid.uuid4().hex[:6]
    stream, group, results = f"feed-{tag}", f"workers-{tag}", f"results-{tag}"
    client.xgroup_create(stream, group, id="0", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for p in payloads():
        pipe.xadd(stream, {"data": json.dumps(p)})
    pipe.execute()

    def start(name: str) -> Any:
        return start_worker("redis", redis_url, stream, group, results, name, batch=BATCH, idle_exit=3.0,
                            extra=("--delay", "0.0005"))

    crashes, _ = supervise(start, ["w0", "w1", "w2"], time.monotonic() + DEADLINE)
    records = [json.loads(f[b"data"]) for _, f in client.xrange(results)]
    dead = [json.loads(f[b"data"])["i"] for _, f in client.xrange(f"{stream}:dead")]
    check(records, dead, crashes, "redis")
    assert int(client.xpending(stream, group)["pending"]) == 0
    client.close()


def test_nats_poison_alone_reaches_the_default_dead_letter(nats_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    feed, res = f"FEED{tag}", f"RES{tag}"
    anyio.run(lambda: nats_fill(nats_url, f"feed{tag}.x", payloads(), streams={feed: [f"feed{tag}.>"],
                                                                                res: [f"res{tag}.>"]}))

    def start(name: str) -> Any:
        return start_worker("nats", nats_url, feed, "workers", f"res{tag}.out", name, batch=BATCH, claim_idle=5.0,
                            idle_exit=4.0, extra=("--delay", "0.0005"))

    crashes, _ = supervise(start, ["w0", "w1", "w2"], time.monotonic() + DEADLINE)
    records = anyio.run(nats_read, nats_url, res)
    # dead_letter=None (the default) keeps a copy in stream <stream>_DLQ, subject dlq.<stream>
    dead = [d["i"] for d in anyio.run(nats_read, nats_url, f"{feed}_DLQ")]
    check(records, dead, crashes, "nats")
