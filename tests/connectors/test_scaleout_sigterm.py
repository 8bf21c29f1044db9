"""SIGTERM to one of three worker processes (``serve()``): nothing lost, nothing handled twice.

Each worker runs ``source | record | sink`` under ``serve()``.  One of them
gets SIGTERM mid-stream: it stops fetching, hands back the rest of its batch
at once (Redis: ``XCLAIM ... IDLE <large> JUSTID``; NATS: ``-NAK``),
finishes and acknowledges what was in progress, and exits 0.  The stopped
worker starts alone and holds its first message until it is told to stop
(``--hold-first``), so it certainly holds the rest of a full first batch
when the signal comes, however the machine schedules the three processes;
the other two start once it holds, and the signal comes once they have
written a fifth of the results.  ``claim_idle``
/ ``ack_wait`` is 120 s, far beyond the test's deadline: the others can only
get the handed-back messages through the hand-back.  Checked on ids: every
message is handled exactly once, and the messages handled on their second
delivery are exactly the ones the stopped worker handed back.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers.brokers import (
    counter,
    killed_on_failure,
    nats_count,
    nats_fill,
    nats_read,
    start_first,
    start_worker,
    wait_all,
)
from tests.helpers.wait import wait_until_sync

pytest_plugins = ["tests.helpers.brokers"]

# Broker restarts, crashes and signals to worker processes: long attacks, run once per CI run (see .ci/run).
pytestmark = pytest.mark.soak

N = 3000
BATCH = 50
NEVER = 120.0  # claim_idle / ack_wait: no reclaim by time within the test
DEADLINE = 50.0
EXTRA = ("--delay", "0.001", "--serve")


def stop_one_of_three(start: Callable[[str, tuple[str, ...]], Any], results: Callable[[], int], deadline: float,
                      tmp_path: Path) -> list[tuple[int, str, str]]:
    """Start w0 alone until it holds its first batch, then w1 and w2; SIGTERM w0 mid-stream; wait for all."""
    holding = tmp_path / "w0-holds"
    held = (*EXTRA, "--hold-first", str(holding))
    procs = start_first(lambda name: start(name, held if name == "w0" else EXTRA), holding.exists, deadline,
                        "the stopped worker to hold its first batch")
    with killed_on_failure(procs):
        wait_until_sync(lambda: results() >= N // 5, deadline, "a fifth of the results")
    os.kill(procs[0].pid, signal.SIGTERM)
    return wait_all(procs, deadline)


def check(records: list[dict[str, Any]], victim: tuple[int, str, str], others: list[tuple[int, str, str]],
          kind: str) -> None:
    code, out, err = victim
    assert code == 0, f"the stopped worker did not exit 0: {err[-3000:]}"
    assert all(c == 0 for c, _, _ in others), [e[-2000:] for _, _, e in others]
    counts = Counter(r["i"] for r in records)
    assert set(counts) == set(range(N)), f"lost {N - len(counts)} messages"
    dup = sum(c - 1 for c in counts.values())
    twice = [r for r in records if counts[r["i"]] > 1]
    assert dup == 0, f"{dup} messages handled twice: {twice[:8]}"
    handed_back = counter(out, "handed_back")
    second = [r for r in records if r["d"] > 1]
    print(f"{kind} SIGTERM: victim handled {counter(out, 'handled')}, handed back {handed_back}; "
          f"handled by the others on a second delivery {len(second)}; lost 0, duplicates {dup}")
    assert counter(out, "handled") == 1, "the stopped worker did more than finish the message it held"
    assert handed_back == BATCH - 1, "the stopped worker did not hand back the rest of its first batch"
    assert all(r["w"] != "w0" for r in second)
    assert len(second) == handed_back, "the handed-back messages are not exactly those redelivered to the others"


def test_redis_sigterm_hands_back_and_drains(redis_url: str, tmp_path: Path) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    tag = uuid.uuid4().hex[:6]
    stream, group, results = f"feed-{tag}", f"workers-{tag}", f"results-{tag}"
    client.xgroup_create(stream, group, id="0", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for i in range(N):
        pipe.xadd(stream, {"data": json.dumps({"i": i})})
    pipe.execute()
    deadline = time.monotonic() + DEADLINE
    outcomes = stop_one_of_three(lambda name, extra: start_worker(
        "redis", redis_url, stream, group, results, name, batch=BATCH, claim_idle=NEVER, idle_exit=3.0, extra=extra),
        lambda: client.xlen(results), deadline, tmp_path)
    records = [json.loads(f[b"data"]) for _, f in client.xrange(results)]
    check(records, outcomes[0], outcomes[1:], "redis")
    assert int(client.xpending(stream, group)["pending"]) == 0
    client.close()


def test_nats_sigterm_hands_back_and_drains(nats_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    feed, res = f"FEED{tag}", f"RES{tag}"
    anyio.run(lambda: nats_fill(nats_url, f"feed{tag}.x", [{"i": i} for i in range(N)],
                                streams={feed: [f"feed{tag}.>"], res: [f"res{tag}.>"]}))
    deadline = time.monotonic() + DEADLINE
    outcomes = stop_one_of_three(lambda name, extra: start_worker(
        "nats", nats_url, feed, "workers", f"res{tag}.out", name, batch=BATCH, claim_idle=NEVER, idle_exit=3.0,
        extra=extra), lambda: anyio.run(nats_count, nats_url, res), deadline, tmp_path)
    records = anyio.run(nats_read, nats_url, res)
    check(records, outcomes[0], outcomes[1:], "nats")
