"""Scale-out: 3 worker processes share one feed of 20,000 messages.

Each worker (tests/helpers/scaleout_worker.py) runs ``source | record | sink`` under
``consume()``, which acknowledges a message after its result is written.
Without failures every message is handled exactly once; after ``kill -9``
of one worker mid-stream, the survivors reclaim its pending messages
(Redis: ``XAUTOCLAIM`` after ``claim_idle``; NATS: redelivery after
``ack_wait``): every message is handled, and the duplicates are exactly
messages that were in flight at the dead worker.

These are plain (sync) tests: the workers are separate processes on asyncio.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from typing import Any

import anyio
import redis

from tests.helpers.brokers import counter, nats_count, start_first, start_worker, wait_all

pytest_plugins = ["tests.helpers.brokers"]
N = 20_000
BATCH = 50
DEADLINE = 35.0


def fill_redis(client: Any, stream: str, group: str) -> None:
    client.xgroup_create(stream, group, id="0", mkstream=True)
    for start in range(0, N, 2000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(N, start + 2000)):
            pipe.xadd(stream, {"data": json.dumps({"i": i})})
        pipe.execute()


def redis_results(client: Any, results: str) -> list[dict[str, Any]]:
    return [json.loads(fields[b"data"]) for _, fields in client.xrange(results)]


def test_redis_three_workers_exactly_once(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    tag = uuid.uuid4().hex[:6]
    stream, group, results = f"feed-{tag}", f"workers-{tag}", f"results-{tag}"
    fill_redis(client, stream, group)
    deadline = time.monotonic() + DEADLINE
    procs = [start_worker("redis", redis_url, stream, group, results, f"w{k}", batch=BATCH, idle_exit=1.0)
             for k in range(3)]
    outcomes = wait_all(procs, deadline)
    assert all(code == 0 for code, _, _ in outcomes), [err[-2000:] for _, _, err in outcomes]
    records = redis_results(client, results)
    counts = Counter(r["i"] for r in records)
    assert set(counts) == set(range(N))
    assert max(counts.values()) == 1, "a message was handled twice although no worker died"
    per_worker = Counter(r["w"] for r in records)
    handled = sum(counter(out, "handled") for _, out, _ in outcomes)
    assert handled == N and sum(per_worker.values()) == N
    assert int(client.xpending(stream, group)["pending"]) == 0
    client.close()


def test_redis_kill_one_worker_mid_stream(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    tag = uuid.uuid4().hex[:6]
    stream, group, results = f"feed-{tag}", f"workers-{tag}", f"results-{tag}"
    fill_redis(client, stream, group)
    deadline = time.monotonic() + DEADLINE
    claim_idle = 1.5
    procs = start_first(lambda name: start_worker("redis", redis_url, stream, group, results, name, batch=BATCH,
                                                  claim_idle=claim_idle, idle_exit=claim_idle * 2.5),
                        lambda: client.xlen(results) > 0, deadline, "w0's first result")
    victim = procs[0]
    # kill -9 the victim once the group is well into the stream and the victim holds messages
    def victim_pending() -> int:
        return sum(int(c["pending"]) for c in client.xinfo_consumers(stream, group) if c["name"] == b"w0")

    while client.xlen(results) < N // 5 or victim_pending() == 0:
        assert time.monotonic() < deadline, "workers made no progress"
        assert victim.poll() is None, "victim exited early"
        time.sleep(0.005)  # polling a server-side counter with a bound; no event crosses processes
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=5)
    # what the victim held in flight at its death (survivors can claim it only after claim_idle)
    in_flight = {row["message_id"].decode() for row in
                 client.xpending_range(stream, group, min="-", max="+", count=10 * BATCH, consumername="w0")}
    outcomes = wait_all(procs[1:], deadline)
    assert all(code == 0 for code, _, _ in outcomes), [err[-2000:] for _, _, err in outcomes]
    records = redis_results(client, results)
    counts = Counter(r["i"] for r in records)
    assert set(counts) == set(range(N)), f"lost {N - len(counts)} messages"
    duplicates = {r["mid"] for r in records if counts[r["i"]] > 1}
    n_dup = sum(c - 1 for c in counts.values())
    extra = [r for r in records if r["mid"] in duplicates - in_flight]
    assert duplicates <= in_flight, f"a message not in flight at the dead worker was handled twice: {extra[:6]}"
    # in flight per worker: the source's batch + the sink's channel and the batch it is writing + unsent acks
    assert n_dup <= len(in_flight) <= 4 * BATCH
    assert int(client.xpending(stream, group)["pending"]) == 0
    redelivered = sum(counter(out, "redelivered") for _, out, _ in outcomes)
    assert redelivered >= len(in_flight), "the survivors did not reclaim what the victim held"
    print(f"kill -9: in flight at the victim {len(in_flight)}, reclaimed {redelivered}, duplicates {n_dup}")
    client.close()


# --- NATS JetStream ---------------------------------------------------------------------------------------------


async def _nats_setup(url: str, tag: str) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=f"FEED{tag}", subjects=[f"feed{tag}.>"])
    await js.add_stream(name=f"RES{tag}", subjects=[f"res{tag}.>"])
    for start in range(0, N, 1000):
        futures = [await js.publish_async(f"feed{tag}.x", json.dumps({"i": i}).encode())
                   for i in range(start, min(N, start + 1000))]
        for f in futures:
            await f
    await nc.close()


async def _nats_results(url: str, tag: str) -> tuple[list[dict[str, Any]], int, int]:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(f"RES{tag}")
    sub = await js.pull_subscribe(f"res{tag}.>", durable="reader", stream=f"RES{tag}")
    out: list[dict[str, Any]] = []
    while len(out) < info.state.messages:
        for m in await sub.fetch(1000, timeout=5):
            out.append(json.loads(m.data))
            await m.ack()
    consumer = await js.consumer_info(f"FEED{tag}", "workers")
    await nc.close()
    return out, consumer.num_ack_pending, consumer.num_redelivered


def test_nats_kill_one_worker_mid_stream(nats_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    anyio.run(_nats_setup, nats_url, tag)
    deadline = time.monotonic() + DEADLINE
    ack_wait = 1.5
    procs = start_first(lambda name: start_worker("nats", nats_url, f"FEED{tag}", "workers", f"res{tag}.out", name,
                                                  batch=BATCH, claim_idle=ack_wait, idle_exit=ack_wait * 2.5),
                        lambda: anyio.run(nats_count, nats_url, f"RES{tag}") > 0, deadline, "w0's first result")
    victim = procs[0]

    while anyio.run(nats_count, nats_url, f"RES{tag}") < N // 5:
        assert time.monotonic() < deadline, "workers made no progress"
        assert victim.poll() is None, "victim exited early"
        time.sleep(0.005)  # polling a server-side counter with a bound; no event crosses processes
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=5)
    outcomes = wait_all(procs[1:], deadline)
    assert all(code == 0 for code, _, _ in outcomes), [err[-2000:] for _, _, err in outcomes]
    records, ack_pending, _ = anyio.run(_nats_results, nats_url, tag)
    counts = Counter(r["i"] for r in records)
    assert set(counts) == set(range(N)), f"lost {N - len(counts)} messages"
    n_dup = sum(c - 1 for c in counts.values())
    assert any(r["w"] == "w0" for r in records), "the victim was killed before it handled anything"
    # in flight at one worker: at most max_ack_pending of the consumer (4 batches, shared by all workers)
    assert n_dup <= 4 * BATCH
    duplicated_by_victim = {r["i"] for r in records if r["w"] == "w0" and counts[r["i"]] > 1}
    assert sum(counts[i] - 1 for i in duplicated_by_victim) == n_dup, "only the victim's messages may repeat"
    assert ack_pending == 0
    redelivered_to_survivors = sum(counter(out, "redelivered") for _, out, _ in outcomes)
    assert redelivered_to_survivors >= n_dup
    print(f"kill -9 (nats): redelivered to survivors {redelivered_to_survivors}, duplicates {n_dup}")
