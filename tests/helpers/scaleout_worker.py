"""One worker process of the scale-out tests (run as ``python -m tests.helpers.scaleout_worker``).

It consumes a shared feed through a consumer group (Redis) or a durable
pull consumer (NATS JetStream), records every handled message as a result
``{"i": payload index, "mid": message id, "w": worker name}`` written by the
matching sink, and acknowledges each message after its result is written.
It exits after ``--idle-exit`` seconds without a message and prints
``handled=<n> redelivered=<n> outages=<n> isolated=<n> handed_back=<n>``.
``--delay`` adds that many seconds of work per message; a payload with
``"poison": true`` raises (the run fails, the process exits 1) unless
``--on-error`` says otherwise; ``--serve`` runs the pipeline with
``run_worker`` (SIGTERM / SIGINT stop it cleanly; the exit code is its own).
``--partitions n`` reads a feed partitioned by key (payloads ``{"i", "k":
key, "s": place in its key}``); the record then carries ``k`` and ``s``.
``--log PATH`` writes the connectors' log (partitions taken and released,
members seen, stop signals) to PATH with timestamps, for a failing test to show.
``--hold-first PATH`` holds the first message before its work: the worker
creates PATH, then waits until its source has been told to stop (SIGTERM
under ``--serve``), so a test can stop it while it certainly holds the rest
of its first batch.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from talkpipe_async import segment
from talkpipe_async.connectors import (
    Message,
    consume,
    jetstream_messages,
    redis_stream_messages,
    serve,
    to_jetstream,
    to_redis_stream,
)

log = logging.getLogger("scaleout_worker")


class Poisoned(RuntimeError):
    """The payload of a poison message."""


HOLD_LIMIT = 60.0  # a held worker never told to stop fails instead of hanging


def stop_seen(src: Any) -> anyio.Event:
    """An event set once *src* has been told to stop (after its own ``stop`` ran)."""
    seen = anyio.Event()
    stop = src.stop

    def stop_and_tell() -> None:
        stop()
        seen.set()

    src.stop = stop_and_tell
    return seen


def make_record(name: str, delay: float, hold: tuple[Path, anyio.Event] | None = None) -> Any:
    """A segment that replaces each payload by the result record (the token stays)."""

    @segment
    async def record(items: AsyncIterator[Message[Any]]) -> AsyncIterator[Message[Any]]:
        first = True
        async for message in items:
            if message.data.get("poison"):
                raise Poisoned(f"poison message {message.data['i']}")
            if first and hold is not None:
                path, stopped = hold
                path.touch()
                with anyio.fail_after(HOLD_LIMIT):
                    await stopped.wait()
            if delay:
                await anyio.sleep(delay)  # the work of one message
            if first:
                first = False
                log.info("first message handled")
            record = {"i": message.data["i"], "mid": message.id, "w": name, "d": message.deliveries}
            if "k" in message.data:  # a keyed feed: the key and the message's place in it
                record.update(k=message.data["k"], s=message.data["s"])
            yield message.with_data(record)

    return record()


async def main(args: argparse.Namespace) -> None:
    """Run the worker pipeline until the feed stays idle."""
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.INFO,
                            format=f"%(asctime)s.%(msecs)03d {args.name} %(message)s", datefmt="%H:%M:%S")
    budget = args.outage_budget
    if args.broker == "redis":
        src: Any = redis_stream_messages(
            args.stream, args.group, url=args.url, consumer=args.name, batch=args.batch, block=0.1,
            claim_idle=args.claim_idle, idle_exit=args.idle_exit, outage_budget=budget,
            partitions=args.partitions, lease_ttl=args.lease_ttl,
        )
        sink: Any = to_redis_stream(args.results, url=args.url, batch=args.batch, outage_budget=budget)
    else:
        src = jetstream_messages(
            args.stream, args.group, servers=args.url, batch=args.batch, fetch_wait=0.1, ack_wait=args.claim_idle,
            max_ack_pending=args.batch * 4, idle_exit=args.idle_exit, outage_budget=budget,
            subject=args.subject, partitions=args.partitions, lease_ttl=args.lease_ttl, consumer=args.name,
        )
        sink = to_jetstream(args.results, servers=args.url, batch=args.batch, outage_budget=budget)
    hold = (Path(args.hold_first), stop_seen(src)) if args.hold_first else None
    pipeline = src | make_record(args.name, args.delay, hold) | sink
    code = 0
    if args.serve:
        result = await serve(pipeline, drain_timeout=20.0)
        handled, code = result.handled, result.exit_code
    else:
        handled = await consume(pipeline)
    stats = src.stats
    log.info("ended: handled %d", handled)
    print(f"handled={handled} redelivered={stats.redelivered} outages={stats.outages} isolated={stats.isolated} "
          f"handed_back={stats.handed_back} sink_outages={sink.stats.outages} rewritten={sink.stats.rewritten}",
          flush=True)
    if code:
        raise SystemExit(code)


def parse() -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser()
    p.add_argument("--broker", choices=["redis", "nats"], default="redis")
    p.add_argument("--url", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--claim-idle", type=float, default=30.0)
    p.add_argument("--idle-exit", type=float, default=1.0)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--outage-budget", type=float, default=60.0)
    p.add_argument("--serve", action="store_true")
    p.add_argument("--partitions", type=int, default=None)
    p.add_argument("--lease-ttl", type=float, default=5.0)
    p.add_argument("--subject", default=None)
    p.add_argument("--log", default=None)
    p.add_argument("--hold-first", default=None)
    return p.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse())
