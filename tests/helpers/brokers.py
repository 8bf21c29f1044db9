"""Helpers shared by the broker connector tests: servers, worker processes, reads of the results.

The fixtures here (``redis_url``, ``nats_url``: one real server per test
module; ``client``: a plain redis.asyncio client on that redis-server;
``restartable_redis``, ``restartable_nats``: a server per test that the test
may stop and start again) reach a test module through
``pytest_plugins = ["tests.helpers.brokers"]``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from talkpipe_async.connectors import BackendNotSupported, BrokerUnavailable
from tests.conftest import die_with_parent
from tests.helpers.wait import wait_until_sync

# The broker clients are asyncio libraries: their tests run on asyncio and uvloop.
ASYNCIO_LOOPS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


async def check_unreachable(url: str, make_source: Callable[[str], Any], make_sink: Callable[[str], Any]) -> None:
    """A source (made with 2 retries) and a sink on *url*, where no server listens, fail clearly within 10 s."""
    start = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"unreachable after 3 attempts"):
        await make_source(url).collect()
    with pytest.raises(BrokerUnavailable, match=url):
        await make_sink(url).collect([1])
    assert time.monotonic() - start < 10


def check_refused_on_trio(make_source: Callable[[], Any]) -> None:
    """Running the source on trio raises BackendNotSupported naming asyncio."""

    async def main() -> None:
        await make_source().collect()

    with pytest.raises(BackendNotSupported, match="asyncio"):
        anyio.run(main, backend="trio")


class RestartableServer:
    """A redis-server or nats-server (JetStream) on a fixed 127.0.0.1 port that keeps its data across restarts.

    Redis writes every command to its append-only file (``appendfsync always``)
    and nats-server keeps JetStream in its store directory, so ``stop()``
    followed by ``start()`` is a broker outage, not a loss of data.
    """

    def __init__(self, kind: str) -> None:
        import tempfile

        from tests.helpers import servers

        binary = servers.redis_binary() if kind == "redis" else servers.nats_binary()
        if binary is None:
            servers._missing(f"{kind} server not installed")
        self.kind = kind
        self.binary = str(binary)
        self.port = servers.free_port()
        self.dir = tempfile.mkdtemp(prefix=f"talkpipe-{kind}-outage-")
        self.proc: Any = None
        self.starts = 0

    @property
    def url(self) -> str:
        """The server's URL."""
        if self.kind == "redis":
            return f"redis://127.0.0.1:{self.port}/0"
        return f"nats://127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        if self.kind == "redis":
            return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
                    "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no",
                    "--daemonize", "no", "--loglevel", "warning"]
        return [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.dir,
                "--server_name", "outage"]

    def start(self) -> None:
        """Start the server and wait (bounded) until it answers."""
        import subprocess
        from pathlib import Path

        from tests.helpers import servers

        log = Path(self.dir) / f"server-{self.starts}.log"
        self.starts += 1
        # The server dies with the thread that starts it: only the test's own thread lives as long as the session
        # (a restart from a worker thread, during an outage, would die when that idle thread ends).
        main = threading.current_thread() is threading.main_thread()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self._args(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=die_with_parent if main else None)
        probe = (b"PING\r\n", b"+PONG") if self.kind == "redis" else (None, None)
        servers._wait_ready(self.proc, self.port, probe[0], probe[1], log)

    def stop(self) -> None:
        """Stop the server (SIGTERM: Redis syncs its file, nats-server its store), bounded."""
        from tests.helpers import servers

        if self.proc is not None:
            servers._stop(self.proc)
            self.proc = None

    def outage(self, seconds: float) -> None:
        """Stop the server, keep it down for *seconds* (the length of the outage), start it again."""
        self.stop()
        time.sleep(seconds)  # the outage itself, not a synchronisation
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        import shutil

        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server for the test module (fails in CI, skips elsewhere, when it is not installed)."""
    from tests.helpers import servers

    with servers.redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    """A real nats-server with JetStream for the test module."""
    from tests.helpers import servers

    with servers.nats_server() as url:
        yield url


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    """A plain redis.asyncio client on the module's redis-server, for set-up and checks."""
    import redis.asyncio as aioredis

    c = aioredis.Redis.from_url(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


def _restartable(kind: str) -> Iterator[RestartableServer]:
    server = RestartableServer(kind)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def restartable_redis() -> Iterator[RestartableServer]:
    """A redis-server for one test that keeps its data across a restart."""
    yield from _restartable("redis")


@pytest.fixture
def restartable_nats() -> Iterator[RestartableServer]:
    """A nats-server with JetStream for one test that keeps its data across a restart."""
    yield from _restartable("nats")


def start_worker(broker: str, url: str, stream: str, group: str, results: str, name: str, *, batch: int = 50,
                 claim_idle: float = 30.0, idle_exit: float = 1.0, extra: tuple[str, ...] = ()) -> Any:
    """Start one ``tests.helpers.scaleout_worker`` process (stdout/stderr captured as text)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "tests.helpers.scaleout_worker", "--broker", broker, "--url", url, "--stream", stream,
           "--group", group, "--results", results, "--name", name, "--batch", str(batch),
           "--claim-idle", str(claim_idle), "--idle-exit", str(idle_exit), *extra]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent)


@contextmanager
def killed_on_failure(procs: list[Any]) -> Iterator[None]:
    """Kill and reap the worker processes in *procs* if the block fails: none outlives its test."""
    try:
        yield
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.communicate()
        raise


def start_first(start: Callable[[str], Any], ready: Callable[[], bool], deadline: float, what: str) -> list[Any]:
    """Start worker w0 alone until *ready* (*what* names it), then w1 and w2; return the three processes.

    So w0 is at work before the others, however slowly the machine starts
    it next to them: a test that stops or kills w0 mid-stream finds it busy.
    """
    procs = [start("w0")]
    first = procs[0]
    with killed_on_failure(procs):
        wait_until_sync(lambda: first.poll() is not None or ready(), deadline, what)
        assert first.poll() is None, f"w0 exited early: {first.communicate()[1][-2000:]}"
    return [first, start("w1"), start("w2")]


def wait_all(procs: list[Any], deadline: float) -> list[tuple[int, str, str]]:
    """Wait (bounded by the monotonic *deadline*) for every worker; return (code, stdout, stderr) each."""
    import subprocess

    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
            raise AssertionError(f"worker did not finish in time: {stderr[-3000:]}") from None
        out.append((p.returncode, stdout, stderr))
    return out


def counter(stdout: str, name: str) -> int:
    """A ``name=<n>`` counter printed by a worker."""
    import re

    match = re.search(rf"\b{name}=(\d+)", stdout)
    assert match, f"worker printed no {name}: {stdout!r}"
    return int(match.group(1))


async def nats_fill(url: str, subject: str, payloads: list[Any], *, streams: dict[str, list[str]]) -> None:
    """Create *streams* (name -> subjects) and publish *payloads* (JSON) to *subject*."""
    import json

    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    for name, subjects in streams.items():
        await js.add_stream(name=name, subjects=subjects)
    for start in range(0, len(payloads), 1000):
        futures = [await js.publish_async(subject, json.dumps(p).encode()) for p in payloads[start:start + 1000]]
        for f in futures:
            await f
    await nc.close()


async def nats_read(url: str, stream: str) -> list[Any]:
    """Every message of *stream*, decoded from JSON (a direct read, no consumer)."""
    import json

    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        await nc.close()
        return []
    out: list[Any] = []
    psub = await js.subscribe(info.config.subjects[0], stream=stream, ordered_consumer=True)
    while len(out) < info.state.messages:
        msg = await psub.next_msg(timeout=5)
        out.append(json.loads(msg.data))
    await psub.unsubscribe()
    await nc.close()
    return out


async def nats_count(url: str, stream: str) -> int:
    """Messages stored in *stream* (0 when it does not exist yet)."""
    import nats

    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()
