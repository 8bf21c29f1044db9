"""Blocking calls while another thread is importing trio (a fresh interpreter each time).

httpx imports httpcore, which imports trio on the first ``AsyncClient()`` when
trio is installed; while that import runs, ``sys.modules["trio"]`` is a
partially initialised module.  Backend detection and the close path of the
blocking wrapper must not touch it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RACE_CHILD = textwrap.dedent(
    """
    import gc, sys, threading
    assert "trio" not in sys.modules and "httpcore" not in sys.modules
    from talkpipe_async import source

    @source
    async def numbers():
        for i in range(3):
            yield i

    pipeline = numbers()
    errors = []
    calls = [0] * 16
    started = threading.Barrier(17)
    stop = threading.Event()

    def worker(n):
        started.wait()
        while not stop.is_set():
            try:
                assert pipeline.run_blocking() == [0, 1, 2]
                stream = pipeline.iter_blocking().__enter__()
                next(stream)
                del stream          # abandoned: the collector closes it
                gc.collect(0)
            except BaseException as exc:
                errors.append(repr(exc))
            calls[n] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    started.wait()

    def importer():
        if sys.argv[1] == "httpx":
            import httpx
            httpx.AsyncClient()     # imports httpcore's backends, trio among them
        else:
            import trio

    imp = threading.Thread(target=importer)
    imp.start()
    imp.join()
    assert "trio" in sys.modules
    after = list(calls)
    while any(c - a < 3 for c, a in zip(calls, after)):   # every worker ran after the import, too
        threading.Event().wait(0.001)
    stop.set()
    for t in threads:
        t.join()
    print("calls", sum(calls), "errors", len(errors), sorted(set(errors))[:3], flush=True)
    """
)


@pytest.mark.parametrize("what", ["trio", "httpx"])
def test_blocking_calls_while_another_thread_imports_trio(what: str) -> None:
    pytest.importorskip("trio")
    done = subprocess.run(
        [sys.executable, "-c", RACE_CHILD, what], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("calls ") and " errors 0 []" in done.stdout, done.stdout + done.stderr
    assert done.stderr == ""  # nothing "ignored" in a close path or a finalizer
