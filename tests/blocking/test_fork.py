"""The blocking wrapper across fork(): a child never calls into the parent's loop thread.

Every scenario runs in a fresh interpreter (forking the test runner itself,
with its threads, would test pytest rather than us), under a timeout, and the
processes are killed in ``finally``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import BACKEND_NAMES, die_with_parent

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")

PIPELINE = textwrap.dedent(
    """
    from talkpipe_async import segment, source

    @source
    async def numbers(n=5):
        for i in range(n):
            yield i

    @segment
    async def double(items):
        async for x in items:
            yield 2 * x

    pipeline = numbers() | double()
    """
)

OS_FORK_CHILD = PIPELINE + textwrap.dedent(
    """
    import gc, os, sys
    backend = sys.argv[1]
    assert pipeline.run_blocking(backend=backend) == [0, 2, 4, 6, 8]
    stream = pipeline.iter_blocking(backend=backend).__enter__()   # a run still open at fork time
    assert next(stream) == 0
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            try:
                del stream          # the inherited run is dropped: it must not call the parent's loop
                gc.collect()
                ok = pipeline.run_blocking(backend=backend) == [0, 2, 4, 6, 8]
                ok = ok and pipeline.run_blocking(backend=backend) == [0, 2, 4, 6, 8]
                os.write(1, b"child ok\\n" if ok else b"child wrong\\n")
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert list(stream) == [2, 4, 6, 8]      # the parent's own run is untouched
    assert pipeline.run_blocking(backend=backend) == [0, 2, 4, 6, 8]
    print("parent ok", flush=True)
    """
)

POOL_CHILD = PIPELINE + textwrap.dedent(
    """
    import multiprocessing, sys

    def work(n):
        return sum(pipeline.run_blocking(backend=sys.argv[1])) + n

    if __name__ == "__main__":
        assert pipeline.run_blocking(backend=sys.argv[1]) == [0, 2, 4, 6, 8]   # warm: the loop thread runs
        with multiprocessing.get_context("fork").Pool(2) as pool:
            print(pool.map_async(work, range(6)).get(timeout=30), flush=True)
    """
)


def _run_child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        out, err = child.communicate(timeout=40)
    finally:
        _kill_group(child)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def _kill_group(child: subprocess.Popen[str]) -> None:
    """Kill the child and whatever it forked (its own session)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_a_forked_child_runs_pipelines_of_its_own(backend: str) -> None:
    done = _run_child(OS_FORK_CHILD, backend)
    assert done.stdout.count("child ok") == 3 and "parent ok" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0 and "Exception ignored" not in done.stderr, done.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_multiprocessing_fork_pool_map(backend: str) -> None:
    done = _run_child(POOL_CHILD, backend)
    assert done.stdout.strip() == str([20 + n for n in range(6)]), done.stdout + done.stderr
    assert done.returncode == 0, done.stderr


WSGI_APP = textwrap.dedent(
    """
    from talkpipe_async import source

    @source
    async def numbers(n=3):
        for i in range(n):
            yield i

    WARM = numbers().run_blocking()   # at import: in the master, before it forks the workers

    def app(environ, start_response):
        body = repr(numbers().run_blocking()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    """
)


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_gunicorn_preload_workers_answer_every_request(tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    (tmp_path / "app.py").write_text(WSGI_APP)
    listener = socket.create_server(("127.0.0.1", 0))  # handed to gunicorn: no port race
    port = listener.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--graceful-timeout", "5",
         "--bind", f"fd://{listener.fileno()}", "--chdir", str(tmp_path), "app:app"],
        pass_fds=[listener.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        listener.close()
        answers = [_get(port) for _ in range(20)]
        assert all(a.startswith(b"HTTP/1.") and b" 200 " in a.split(b"\r\n")[0] for a in answers), answers[:2]
        assert all(a.endswith(b"[0, 1, 2]") for a in answers), answers[:2]
        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
        assert time.monotonic() - stopping < 15, "gunicorn did not stop promptly"
        assert server.returncode == 0
    finally:
        _kill_group(server)
