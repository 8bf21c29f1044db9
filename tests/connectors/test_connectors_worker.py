"""The worker entry points: ``serve()`` in process, ``talkpipe-async worker`` as a command, against a real redis-server.

* SIGTERM while a message is in progress: the worker finishes it,
  acknowledges it and returns clean (exit code 0); what it fetched and had
  not started is handed back (claimable at once).
* A drain that does not finish within ``drain_timeout``: the run is cut, the
  unfinished message is handed back, the exit code is 143.
* The command: ``talkpipe-async worker module:factory`` exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from talkpipe_async.connectors import redis_stream_messages, serve
from talkpipe_async.connectors._redis_session import HAND_BACK_IDLE_MS
from tests.conftest import die_with_parent

pytest_plugins = ["tests.helpers.brokers"]

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> Any:
    """Signal handling through the asyncio loop (redis.asyncio needs asyncio)."""
    return "asyncio"


@pytest.fixture
async def feed(redis_url: str) -> AsyncIterator[tuple[Any, str]]:
    """A stream of 10 messages and a client."""
    client = aioredis.Redis.from_url(redis_url)
    stream = f"feed-{uuid.uuid4().hex[:6]}"
    pipe = client.pipeline(transaction=False)
    for i in range(10):
        pipe.xadd(stream, {"data": json.dumps(i)})
    await pipe.execute()
    try:
        yield client, stream
    finally:
        await client.aclose()


async def pending_of(client: Any, stream: str, consumer: str) -> list[dict[str, Any]]:
    return list(await client.xpending_range(stream, "g", min="-", max="+", count=100, consumername=consumer))


async def test_sigterm_finishes_the_message_in_progress_and_hands_back_the_rest(
    redis_url: str, feed: tuple[Any, str]
) -> None:
    client, stream = feed
    src = redis_stream_messages(stream, "g", url=redis_url, consumer="me", batch=10, block=0.05)
    started = anyio.Event()
    release = anyio.Event()
    seen: list[int] = []

    async def handle(x: int) -> None:
        seen.append(x)
        if x == 2:
            started.set()
            await release.wait()  # in progress when the signal comes

    async def signal_then_release() -> None:
        await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        while not src.stopping:  # the worker saw the signal
            await anyio.sleep(0.001)
        release.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(signal_then_release)
            result = await serve(src | _identity(), handle, drain_timeout=10)
    assert result.clean and result.exit_code == 0 and result.stopped_by == "SIGTERM"
    assert result.handled == len(seen) and seen[-1] >= 2
    # the rest of the batch was handed back: still pending, idle "for ever", delivered once
    rows = await pending_of(client, stream, "me")
    assert len(rows) == 10 - len(seen) and src.stats.handed_back == len(rows)
    assert all(r["time_since_delivered"] >= HAND_BACK_IDLE_MS // 2 and r["times_delivered"] == 1 for r in rows)


async def test_drain_timeout_cuts_the_run_and_hands_back_the_unfinished(
    redis_url: str, feed: tuple[Any, str]
) -> None:
    client, stream = feed
    src = redis_stream_messages(stream, "g", url=redis_url, consumer="slow", batch=10, block=0.05)
    started = anyio.Event()

    async def handle(x: int) -> None:
        started.set()
        await anyio.sleep_forever()  # never finishes

    async def signal_when_started() -> None:
        await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(signal_when_started)
            result = await serve(src | _identity(), handle, drain_timeout=0.3)
    assert not result.clean and result.exit_code == 143 and result.handled == 1
    rows = await pending_of(client, stream, "slow")
    assert len(rows) == 10, "the unfinished message and the rest of the batch stay claimable"
    assert all(r["time_since_delivered"] >= HAND_BACK_IDLE_MS // 2 for r in rows)


def _identity() -> Any:
    from talkpipe_async.connectors import map_data

    return map_data(lambda x: x)


def test_worker_command_stops_cleanly_on_sigterm(redis_url: str, tmp_path: Path) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    stream = f"cmd-{uuid.uuid4().hex[:6]}"
    for i in range(5):
        client.xadd(stream, {"data": json.dumps(i)})
    (tmp_path / "myworker.py").write_text(textwrap.dedent(f"""
        from talkpipe_async.connectors import redis_stream_messages, to_redis_stream

        def pipeline():
            src = redis_stream_messages({stream!r}, "g", url={redis_url!r}, block=0.05)
            return src | to_redis_stream({stream + ":out"!r}, url={redis_url!r})
    """))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    proc = subprocess.Popen([sys.executable, "-m", "talkpipe_async", "worker", "myworker:pipeline"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent)
    deadline = time.monotonic() + 30
    while client.xlen(stream + ":out") < 5:  # polling a server-side counter with a bound
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the worker handled nothing"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "handled 5, stopped by SIGTERM, clean=True" in err
    assert int(client.xpending(stream, "g")["pending"]) == 0
    client.close()
