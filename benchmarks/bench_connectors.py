"""Scale-out connectors (issue 7): consume-and-ack against hand-written client loops.

Each scenario starts a real server on 127.0.0.1 (redis-server; nats-server
with JetStream), stores the messages once, and then every timed run reads
all of them through a fresh consumer group (Redis) or durable consumer
(NATS), decoding each JSON payload and acknowledging it, with the same
batch size (100) on both sides.  Target: at least 0.7x the throughput of
the hand-written loop, i.e. a time ratio <= 1/0.7.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from talkpipe_async.connectors import JetStreamSource, RedisStreamSource, consume
from tests import servers

from ._harness import Result, compare, measure_async

__all__ = ["run"]

BATCH = 100
TARGET = (">= 0.7x throughput (time ratio <= 1.43)", lambda r: r <= 1 / 0.7)


def _redis(n: int, repeat: int) -> list[Result]:
    import redis
    import redis.asyncio as aioredis

    results: list[Result] = []
    with servers.redis_server() as url:
        sync = redis.Redis.from_url(url)
        for start in range(0, n, 5000):
            pipe = sync.pipeline(transaction=False)
            for i in range(start, min(n, start + 5000)):
                pipe.xadd("feed", {"data": json.dumps({"i": i, "text": "x" * 40})})
            pipe.execute()
        sync.close()
        groups = itertools.count()

        async def subject() -> None:
            group = f"s{next(groups)}"
            src = RedisStreamSource("feed", group, url=url, batch=BATCH, block=1.0)
            handled = await consume(src, limit=n)
            assert handled == n

        async def hand() -> None:
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

        for backend, options, label in (("asyncio", {}, "asyncio"), ("asyncio", {"use_uvloop": True}, "uvloop")):
            results += compare(
                f"Redis Streams consume-and-ack, {n:,} messages, batch {BATCH} ({label})",
                ("RedisStreamSource | consume()", measure_async(subject, backend, **options)),
                [("hand-written redis-py loop", measure_async(hand, backend, **options))],
                repeat=repeat,
                targets={"hand-written redis-py loop": TARGET},
            )
    return results


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

        async def subject() -> None:
            src = JetStreamSource("FEED", f"s{next(durables)}", servers=url, batch=BATCH, max_ack_pending=1000)
            handled = await consume(src, limit=n)
            assert handled == n

        async def hand() -> None:
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

        results += compare(
            f"NATS JetStream consume-and-ack, {n:,} messages, batch {BATCH} (asyncio)",
            ("JetStreamSource | consume()", measure_async(subject)),
            [("hand-written nats-py loop", measure_async(hand))],
            repeat=repeat,
            targets={"hand-written nats-py loop": TARGET},
        )
    return results


def run(quick: bool) -> list[Result]:
    """Consume-and-ack of 100,000 messages (10,000 in quick mode) on Redis and NATS."""
    n = 10_000 if quick else 100_000
    repeat = 3 if quick else 5
    results: list[Result] = []
    if servers.redis_binary() is not None:
        results += _redis(n, repeat)
    if servers.nats_binary() is not None:
        results += _nats(n, repeat)
    return results


def _main(argv: Any = None) -> None:
    import sys

    for r in run("--quick" in (argv or sys.argv)):
        print(f"{r.scenario}: {r.subject} {r.subject_s:.3f}s vs {r.baseline} {r.baseline_s:.3f}s "
              f"ratio {r.ratio:.3f} (throughput {1 / r.ratio:.2f}x) target {r.target} met={r.met}")


if __name__ == "__main__":
    _main()
