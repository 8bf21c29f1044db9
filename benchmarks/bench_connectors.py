"""Scale-out connectors: CPU time per message against the raw client loops doing the same work.

Each scenario starts a real server on 127.0.0.1 (redis-server; nats-server
with JetStream), stores the messages once, and then every run reads all of
them through a fresh consumer group (Redis) or durable consumer (NATS),
decoding each JSON payload and acknowledging it, with the same batch size
(100) on both sides.  What is compared is the CPU time of this process (the
client: ``time.process_time``, the broker runs in its own process) divided by
the messages handled, runs interleaved, medians.  Target: at most 1.10x the
raw redis-py / nats-py loop.  The Redis scenario also reads the same
messages partitioned by key (100 keys, 4 partition streams, one instance
holding every lease): what order per key costs.  FastStream (``pip install
"talkpipe-async[bench]"``) runs the same work when it is installed, over the first 10,000 messages only: it spends
about 0.6 ms of CPU per message (its handler's decoding and middleware), so 100,000 messages in every interleaved
run took most of an hour; the figure compared is CPU per message either way.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from talkpipe_async.connectors import consume, jetstream_messages, partition_for, redis_stream_messages
from tests.helpers import servers

from ._harness import Result

__all__ = ["run"]

BATCH = 100
PARTITIONS = 4
TARGET = ("CPU per message <= 1.10x the raw loop", lambda r: r <= 1.10)


def _cpu_runs(sides: dict[str, Callable[[], Awaitable[int]]], backend_options: dict[str, Any],
              repeat: int) -> dict[str, list[float]]:
    """Run every side *repeat* times, interleaved (after one warm-up each); CPU seconds per message."""
    import anyio

    samples: dict[str, list[float]] = {name: [] for name in sides}
    for rnd in range(repeat + 1):
        for name, func in sides.items():
            start = time.process_time()
            handled = anyio.run(func, backend="asyncio", backend_options=backend_options or None)
            spent = time.process_time() - start
            if rnd:
                samples[name].append(spent / handled)
    return samples


def _results(scenario: str, subject: str, samples: dict[str, list[float]], raw: str) -> list[Result]:
    def spread(xs: list[float]) -> float:
        return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else 0.0

    out = []
    s = statistics.median(samples[subject])
    for name, xs in samples.items():
        if name == subject:
            continue
        r = Result(scenario, subject, name, s, statistics.median(xs), spread(samples[subject]), spread(xs),
                   note="CPU seconds per message (client process)")
        if name == raw:
            r.target, check = TARGET
            r.met = check(r.ratio)
        out.append(r)
    return out


SKIP_FASTSTREAM = False
FASTSTREAM_MESSAGES = 10_000  # FastStream's sides read this many of the stored messages (CPU per message is compared)


def _faststream() -> Any:
    if SKIP_FASTSTREAM:
        return None
    try:
        import faststream
    except ImportError:
        return None
    return faststream


def _redis(n: int, repeat: int) -> list[Result]:
    import redis
    import redis.asyncio as aioredis

    results: list[Result] = []
    with servers.redis_server() as url:
        sync = redis.Redis.from_url(url)
        for start in range(0, n, 5000):
            pipe = sync.pipeline(transaction=False)
            for i in range(start, min(n, start + 5000)):
                payload = json.dumps({"i": i, "text": "x" * 40})
                pipe.xadd("feed", {"data": payload})
                pipe.xadd(f"feed:{partition_for(str(i % 100), PARTITIONS)}", {"data": payload})  # 100 keys
            pipe.execute()
        sync.close()
        groups = itertools.count()

        async def subject() -> int:
            src = redis_stream_messages("feed", f"s{next(groups)}", url=url, batch=BATCH, block=1.0)
            return await consume(src, limit=n)

        async def raw() -> int:
            client = aioredis.Redis.from_url(url)
            group = f"h{next(groups)}"
            await client.xgroup_create("feed", group, id="0")
            done = 0
            while done < n:
                response = await client.xreadgroup(group, "c", {"feed": ">"}, count=BATCH, block=1000)
                ids = []
                for id, fields in response[0][1]:
                    json.loads(fields[b"data"])
                    ids.append(id)
                await client.xack("feed", group, *ids)
                done += len(ids)
            await client.aclose()
            return done

        async def partitioned() -> int:
            src = redis_stream_messages("feed", f"p{next(groups)}", url=url, batch=BATCH, block=1.0,
                                    partitions=PARTITIONS)
            return await consume(src, limit=n)

        sides: dict[str, Callable[[], Awaitable[int]]] = {"redis_stream_messages | consume()": subject,
                                                         "raw redis-py loop": raw,
                                                         f"redis_stream_messages(partitions={PARTITIONS})": partitioned}
        fs = _faststream()
        if fs is not None:
            label = f"FastStream RedisBroker subscriber (first {min(n, FASTSTREAM_MESSAGES):,} messages)"
            sides[label] = lambda: _faststream_redis(url, f"f{next(groups)}", min(n, FASTSTREAM_MESSAGES))
        for options, label in (({}, "asyncio"), ({"use_uvloop": True}, "uvloop")):
            samples = _cpu_runs(sides, options, repeat)
            results += _results(f"Redis Streams consume-and-ack, {n:,} messages, batch {BATCH} ({label})",
                                "redis_stream_messages | consume()", samples, "raw redis-py loop")
    return results


async def _faststream_redis(url: str, group: str, n: int) -> int:
    """FastStream's Redis stream subscriber (consumer group, batch reads, ack after the handler)."""
    import anyio
    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(url, logger=None)
    done = anyio.Event()
    count = 0

    @broker.subscriber(stream=StreamSub("feed", group=group, consumer="c", batch=False, max_records=BATCH,
                                        last_id="0"))
    async def handle(body: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    async with broker:
        await broker.start()
        await done.wait()
    return count


async def _faststream_nats(url: str, durable: str, n: int) -> int:
    """FastStream's JetStream pull subscriber (durable, batch fetch, ack after the handler)."""
    import anyio
    from faststream.nats import JStream, NatsBroker, PullSub

    broker = NatsBroker(url, logger=None)
    done = anyio.Event()
    count = 0

    @broker.subscriber("feed.x", stream=JStream("FEED", declare=False), durable=durable,
                       pull_sub=PullSub(batch_size=BATCH))
    async def handle(body: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    async with broker:
        await broker.start()
        await done.wait()
    return count


def _nats(n: int, repeat: int) -> list[Result]:
    import anyio
    import nats

    results: list[Result] = []
    with servers.nats_server() as url:

        async def fill() -> None:
            nc = await nats.connect(url)
            js = nc.jetstream()
            await js.add_stream(name="FEED", subjects=["feed.>"])
            for start in range(0, n, 2000):
                futures = [await js.publish_async("feed.x", json.dumps({"i": i, "text": "x" * 40}).encode())
                           for i in range(start, min(n, start + 2000))]
                for f in futures:
                    await f
            await nc.close()

        anyio.run(fill)
        durables = itertools.count()

        async def subject() -> int:
            src = jetstream_messages("FEED", f"s{next(durables)}", servers=url, batch=BATCH, max_ack_pending=1000,
                                  dead_letter=False)
            return await consume(src, limit=n)

        async def raw() -> int:
            from nats.js.api import AckPolicy, ConsumerConfig

            nc = await nats.connect(url)
            js = nc.jetstream()
            durable = f"h{next(durables)}"
            await js.add_consumer("FEED", config=ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                                                               max_ack_pending=1000, ack_wait=30))
            sub = await js.pull_subscribe_bind(durable, stream="FEED")
            done = 0
            while done < n:
                msgs = await sub.fetch(BATCH, timeout=1.0)
                for m in msgs:
                    json.loads(m.data)
                    await m.ack()
                done += len(msgs)
            await nc.flush()
            await nc.close()
            return done

        sides: dict[str, Callable[[], Awaitable[int]]] = {"jetstream_messages | consume()": subject,
                                                         "raw nats-py loop": raw}
        if _faststream() is not None:
            label = f"FastStream NatsBroker pull subscriber (first {min(n, FASTSTREAM_MESSAGES):,} messages)"
            sides[label] = lambda: _faststream_nats(url, f"f{next(durables)}", min(n, FASTSTREAM_MESSAGES))
        samples = _cpu_runs(sides, {}, repeat)
        results += _results(f"NATS JetStream consume-and-ack, {n:,} messages, batch {BATCH} (asyncio)",
                            "jetstream_messages | consume()", samples, "raw nats-py loop")
    return results


def run(quick: bool) -> list[Result]:
    """Consume-and-ack of 100,000 messages (10,000 in quick mode) on Redis and NATS."""
    n = 10_000 if quick else 100_000
    repeat = 3 if quick else 7
    results: list[Result] = []
    if servers.redis_binary() is not None:
        results += _redis(n, repeat)
    if servers.nats_binary() is not None:
        results += _nats(n, repeat)
    return results


def _main(argv: Any = None) -> None:
    import sys

    global SKIP_FASTSTREAM
    args = argv or sys.argv
    SKIP_FASTSTREAM = "--no-faststream" in args
    n_arg = [a for a in args if a.startswith("--n=")]
    if n_arg:
        n = int(n_arg[0][4:])
        results = (_redis(n, 5) if "--nats" not in args else []) + (_nats(n, 5) if "--redis" not in args else [])
    else:
        results = run("--quick" in args)
    for r in results:
        print(f"{r.scenario}: {r.subject} {r.subject_s * 1e6:.2f} us vs {r.baseline} {r.baseline_s * 1e6:.2f} us "
              f"CPU/message, ratio {r.ratio:.3f} target {r.target or '-'} met={r.met}")


if __name__ == "__main__":
    _main()
