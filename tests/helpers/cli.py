"""Helpers for tests/cli/test_cli.py: the real command as a subprocess, and small real servers in threads."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tests.conftest import die_with_parent
from tests.helpers.net import parse_head

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0

__all__ = ["Cli", "cli", "run_cli", "serve_http", "serve_tcp"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, cwd: str | Path | None = None, stdin: str | None = None,
            timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m talkpipe_async ARGS`` to the end; return the completed process (text)."""
    return subprocess.run(
        [sys.executable, "-m", "talkpipe_async", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_env(), preexec_fn=die_with_parent,
    )


class Cli:
    """A running command whose stdout and stderr lines are read by threads into queues."""

    def __init__(self, *args: str, cwd: str | Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "talkpipe_async", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, cwd=cwd, env=_env(), preexec_fn=die_with_parent,
        )
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: IO[str], q: queue.Queue[str | None]) -> None:
        try:
            for line in stream:
                q.put(line.rstrip("\n"))
        except (ValueError, OSError):  # the test closed the pipe on purpose
            pass
        q.put(None)  # end of the stream (a test-local queue marker, never a pipeline item)

    def _next(self, q: queue.Queue[str | None], sink: list[str], timeout: float) -> str:
        try:
            line = q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; stderr so far: {self.stderr_lines}") from None
        if line is None:
            q.put(None)
            raise AssertionError(f"stream ended; stdout {self.stdout_lines}, stderr {self.drain_stderr()}")
        sink.append(line)
        return line

    def line(self, timeout: float = TIMEOUT) -> str:
        """The next stdout line (fails after *timeout* seconds)."""
        return self._next(self.out, self.stdout_lines, timeout)

    def err_line(self, timeout: float = TIMEOUT) -> str:
        """The next stderr line."""
        return self._next(self.err, self.stderr_lines, timeout)

    def lines(self, n: int, timeout: float = TIMEOUT) -> list[str]:
        """The next *n* stdout lines."""
        return [self.line(timeout) for _ in range(n)]

    def signal(self, signum: int) -> None:
        """Send *signum* to the command."""
        self.proc.send_signal(signum)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the exit; join the readers; return the exit code."""
        code = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout)
        return code

    def rest(self) -> list[str]:
        """The stdout lines not read yet (after :meth:`wait`)."""
        out: list[str] = []
        while True:
            line = self.out.get_nowait() if not self.out.empty() else None
            if line is None:
                return out
            self.stdout_lines.append(line)
            out.append(line)

    def drain_stderr(self) -> list[str]:
        """Every stderr line read so far plus what is queued."""
        while not self.err.empty():
            line = self.err.get_nowait()
            if line is None:
                self.err.put(None)
                break
            self.stderr_lines.append(line)
        return self.stderr_lines

    def kill(self) -> None:
        """Stop the command if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def cli(*args: str, cwd: str | Path | None = None) -> Iterator[Cli]:
    """Start the command; kill it on exit if the test left it running."""
    c = Cli(*args, cwd=cwd)
    try:
        yield c
    finally:
        c.kill()


@contextmanager
def serve_tcp(handler: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP listener on 127.0.0.1 in a thread; each connection runs *handler* in its own thread."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return

            def run(c: socket.socket = conn) -> None:
                with c:
                    try:
                        handler(c)
                    except OSError:
                        pass

            t = threading.Thread(target=run, daemon=True)
            workers.append(t)
            t.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        try:
            srv.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        srv.close()
        acceptor.join(5)
        for t in workers:
            t.join(5)


def read_request(conn: socket.socket) -> tuple[str, bytes]:
    """Read one HTTP/1.1 request from a blocking socket (a server thread); return its request line and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    line, headers = parse_head(head)
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return line, body


@contextmanager
def serve_http(respond: Callable[[str, bytes, socket.socket], None]) -> Iterator[int]:
    """A raw HTTP server: ``respond(request_line, body, conn)`` writes the whole response."""

    def handler(conn: socket.socket) -> None:
        line, body = read_request(conn)
        respond(line, body, conn)

    with serve_tcp(handler) as port:
        yield port


SIGINT = signal.SIGINT
SIGTERM = signal.SIGTERM
