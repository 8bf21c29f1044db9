"""The blocking wrapper's shared loop threads (``talkpipe_async._loops``), driven directly.

The wrapper's tests see one loop thread per backend, made once per process; these tests make their own
``LoopThread`` objects (and a private table of shared loops for ``get_loop``), so every promise of the module is
checked on a loop built for the test: each backend runs its drivers on its own kind of loop, in a daemon thread named
after it, as tasks named by the caller; a run still registered when the loop stops is told (``loop_gone``) once, a
finished one is not; a stopped loop refuses new runs with one message; a loop that cannot start says why instead of
hanging its caller; a loop of another process generation is never touched; ``get_loop`` shares one loop per backend
among threads, starts a new one after ``shutdown``, rejects unknown backends, and registers the exit hook once;
``on_loop_thread`` and ``running_loop`` tell the loop threads and the running loop apart; and a forked child gets a
new generation, a thread that is not a loop thread, and a loop of its own.

Every wait is bounded (``bounded``): a loop that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import anyio
import pytest
import sniffio

import talkpipe_async
from talkpipe_async import _loops
from talkpipe_async._loops import LoopThread

try:
    import uvloop  # noqa: F401

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover - uvloop is in the test extra
    HAVE_UVLOOP = False

LOOP_BACKENDS = [
    pytest.param("asyncio", id="plain-asyncio"),
    pytest.param("uvloop", id="uv", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="no uvloop")),
    pytest.param("trio", id="trio-loop"),
]
WAIT = 10.0


def bounded(fn: Callable[..., Any], *args: Any, timeout: float = WAIT) -> Any:
    """``fn(*args)`` in a daemon thread: its result or its exception, or ``TimeoutError`` if it has not returned."""
    done: Future[Any] = Future()

    def target() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=target, daemon=True).start()
    return done.result(timeout)


class Run:
    """The part of a blocking run the loop thread talks to: ``loop_gone`` when the loop ends before the run."""

    def __init__(self) -> None:
        self.gone = 0

    def loop_gone(self) -> None:
        self.gone += 1


@pytest.fixture
def made() -> Iterator[list[LoopThread]]:
    """Loop threads made by a test; stopped (bounded) afterwards."""
    loops: list[LoopThread] = []
    yield loops
    for loop in loops:
        try:
            bounded(loop.stop)
        except Exception:  # pragma: no cover - a broken loop; the test has already failed
            pass


def make(made: list[LoopThread], backend: str) -> LoopThread:
    loop: LoopThread = bounded(LoopThread, backend)
    made.append(loop)
    return loop


@pytest.fixture
def fresh_table(monkeypatch: pytest.MonkeyPatch, made: list[LoopThread]) -> Iterator[dict[str, LoopThread]]:
    """A private table of shared loops for ``get_loop``/``shutdown``, as on the first use in a new process."""
    table: dict[str, LoopThread] = {}
    monkeypatch.setattr(_loops, "_loops", table)
    monkeypatch.setattr(_loops, "_atexit_registered", False)
    yield table
    made.extend(table.values())


def run_driver(loop: LoopThread, run: Run, name: str) -> dict[str, Any]:
    """Start a driver on *loop* that reports where it runs; wait (bounded) for its report."""
    report: Future[dict[str, Any]] = Future()

    async def driver() -> None:
        try:
            library = sniffio.current_async_library()
            kind = type(asyncio.get_running_loop()).__module__ if library == "asyncio" else "trio"
            report.set_result({
                "library": library,
                "loop": kind,
                "thread": threading.current_thread(),
                "on_loop_thread": _loops.on_loop_thread(),
                "running_loop": _loops.running_loop(),
                "task": anyio.get_current_task().name,
            })
        except BaseException as exc:  # pragma: no cover - reported to the test
            report.set_exception(exc)
            raise
        finally:
            loop.finished(run)

    loop.start(run, driver, name)
    return report.result(WAIT)


@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_each_backend_runs_its_drivers_on_its_own_loop_in_a_named_daemon_thread(
    backend: str, made: list[LoopThread]
) -> None:
    """Drivers run, one after another, on the backend's own loop (uvloop's for uvloop, trio's for trio), in the loop's
    daemon thread ``talkpipe-async-loop[<backend>]``, as tasks carrying the name given to ``start``; there
    ``on_loop_thread()`` is True and ``running_loop()`` names the loop."""
    loop = make(made, backend)
    assert loop.backend == backend
    assert loop.alive() is True
    assert loop.thread.name == f"talkpipe-async-loop[{backend}]"
    assert loop.thread.daemon is True
    for n in range(2):  # the second driver is taken after the loop went back to waiting for requests
        report = run_driver(loop, Run(), f"run {n} on {backend}")
        assert report["task"] == f"run {n} on {backend}"
        assert report["thread"] is loop.thread
        assert report["on_loop_thread"] is True
        if backend == "trio":
            assert (report["library"], report["running_loop"]) == ("trio", "trio")
        else:
            assert (report["library"], report["running_loop"]) == ("asyncio", "asyncio")
            assert report["loop"].startswith("uvloop") == (backend == "uvloop")
    assert loop.alive() is True


@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_stopping_cancels_the_runs_still_going_and_tells_only_those(backend: str, made: list[LoopThread]) -> None:
    """``stop`` cancels a driver still going and calls its run's ``loop_gone`` once; a run that reported
    ``finished`` is not told; the thread ends; a later ``start`` is refused with "the talkpipe-async loop thread has
    stopped" and the refused run is never told."""
    loop = make(made, backend)
    waiting, finished = Run(), Run()
    started: Future[None] = Future()
    cancelled: Future[bool] = Future()

    async def forever() -> None:
        started.set_result(None)
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set_result(True)
            raise

    loop.start(waiting, forever, "forever")
    started.result(WAIT)
    run_driver(loop, finished, "done")
    bounded(loop.stop)
    assert cancelled.result(WAIT) is True
    assert not loop.thread.is_alive() and loop.alive() is False
    assert (waiting.gone, finished.gone) == (1, 0)
    late = Run()
    with pytest.raises(RuntimeError) as info:
        loop.start(late, forever, "late")
    assert str(info.value) == "the talkpipe-async loop thread has stopped"
    assert late.gone == 0


def test_a_start_the_loop_cannot_take_is_refused_and_forgotten(
    made: list[LoopThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When handing the start to the loop fails (the loop ended but was not yet marked closed), ``start`` raises
    the stopped error, without the loop's own error chained, and the run is not told ``loop_gone`` later."""
    loop = make(made, "asyncio")
    run = Run()

    def refuse(callback: Callable[[], None]) -> None:
        raise RuntimeError("Event loop is closed")

    monkeypatch.setattr(loop, "call_soon", refuse)

    async def driver() -> None:  # pragma: no cover - never started
        pass

    with pytest.raises(RuntimeError) as info:
        loop.start(run, driver, "refused")
    assert str(info.value) == "the talkpipe-async loop thread has stopped"
    assert info.value.__suppress_context__ and info.value.__cause__ is None
    monkeypatch.undo()
    bounded(loop.stop)
    assert run.gone == 0


def test_a_loop_that_cannot_start_says_why() -> None:
    """A loop whose event loop cannot run raises the loop's error in the thread that made it, at once."""
    with pytest.raises(LookupError, match="no-such-backend"):
        bounded(LoopThread, "no-such-backend")


def test_a_loop_of_another_generation_is_never_touched(made: list[LoopThread], monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop made under another generation (a forked child's view of the parent's) is not alive and ``stop`` leaves
    it running; back in its own generation it is alive, and ``stop`` ends it."""
    loop = make(made, "asyncio")
    monkeypatch.setattr(_loops, "generation", _loops.generation + 1)
    assert loop.alive() is False
    bounded(loop.stop)
    assert loop.thread.is_alive()
    monkeypatch.undo()
    assert loop.alive() is True
    bounded(loop.stop)
    assert not loop.thread.is_alive() and loop.alive() is False


@pytest.mark.usefixtures("fresh_table")
def test_get_loop_shares_one_loop_per_backend() -> None:
    """``get_loop`` starts a backend's loop on first use and hands back the same one after; ``loop_thread()`` is the
    asyncio loop's thread by default, and each backend has its own."""
    first = bounded(_loops.get_loop, "asyncio")
    assert first.alive() and first.backend == "asyncio"
    assert bounded(_loops.get_loop, "asyncio") is first
    assert bounded(_loops.loop_thread) is first.thread
    trio_thread = bounded(_loops.loop_thread, "trio")
    assert trio_thread is not first.thread
    assert trio_thread.name == "talkpipe-async-loop[trio]"
    assert bounded(_loops.get_loop, "trio").backend == "trio"


@pytest.mark.usefixtures("fresh_table")
def test_get_loop_rejects_an_unknown_backend() -> None:
    with pytest.raises(ValueError) as info:
        _loops.get_loop("curio")
    assert str(info.value) == "unknown backend 'curio': choose one of asyncio, uvloop, trio"


def test_shutdown_stops_every_loop_and_the_next_call_starts_afresh(fresh_table: dict[str, LoopThread]) -> None:
    """``shutdown`` stops every shared loop and empties the table; the next ``get_loop`` starts a new, live loop."""
    old = [bounded(_loops.get_loop, "asyncio"), bounded(_loops.get_loop, "trio")]
    bounded(_loops.shutdown)
    assert fresh_table == {}
    assert not any(loop.thread.is_alive() for loop in old)
    new = bounded(_loops.get_loop, "asyncio")
    assert new is not old[0] and new.alive()


def test_a_dead_loop_in_the_table_is_replaced(fresh_table: dict[str, LoopThread]) -> None:
    """A shared loop that stopped (without ``shutdown``) is replaced by a new one on the next call."""
    old = bounded(_loops.get_loop, "asyncio")
    bounded(old.stop)
    new = bounded(_loops.get_loop, "asyncio")
    assert new is not old and new.alive()
    assert fresh_table["asyncio"] is new


def test_threads_asking_at_once_share_one_loop(fresh_table: dict[str, LoopThread]) -> None:
    """Eight threads asking for the asyncio loop at the same moment all get the same loop; only one was started."""
    barrier = threading.Barrier(8)
    got: list[LoopThread] = []
    lock = threading.Lock()

    def ask() -> None:
        barrier.wait(WAIT)
        loop = _loops.get_loop("asyncio")
        with lock:
            got.append(loop)

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    started = {id(loop): loop for loop in got}
    fresh_table.update({f"extra{n}": loop for n, loop in enumerate(started.values())})  # all stopped afterwards
    assert len(got) == 8 and len(started) == 1


@pytest.mark.skipif(not hasattr(atexit, "_ncallbacks"), reason="CPython's atexit")
@pytest.mark.usefixtures("fresh_table")
def test_the_exit_hook_is_registered_once() -> None:
    """The first loop registers ``shutdown`` to run at exit; loops started again after a shutdown add no more hooks."""
    before = atexit._ncallbacks()
    for _ in range(3):
        bounded(_loops.get_loop, "asyncio")
        bounded(_loops.shutdown)
    assert atexit._ncallbacks() == before + 1


def test_outside_a_loop_thread_nothing_is_running() -> None:
    """In a thread of the application (here the test's, and a new one) ``on_loop_thread()`` is False and
    ``running_loop()`` is None; inside ``asyncio.run`` it is "asyncio", inside ``trio.run`` "trio"."""
    import trio

    assert _loops.on_loop_thread() is False
    assert _loops.running_loop() is None
    assert bounded(_loops.on_loop_thread) is False
    assert bounded(_loops.running_loop) is None

    async def which() -> str | None:
        return _loops.running_loop()

    assert asyncio.run(which()) == "asyncio"
    assert trio.run(which) == "trio"


def test_running_loop_without_sniffio_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """With sniffio not (yet) imported, no trio run can be going: ``running_loop()`` is None, not an error."""
    monkeypatch.delitem(sys.modules, "sniffio")
    assert _loops.running_loop() is None


FORK_CHILD = textwrap.dedent(
    """
    import json, os, sys, threading
    from concurrent.futures import Future
    from talkpipe_async import _loops

    unraisable = []
    sys.unraisablehook = lambda u: unraisable.append(repr(u.exc_value))

    def report(pipe):
        loop = _loops.get_loop("asyncio")
        done = Future()

        class Run:
            def loop_gone(self):
                pass

        async def driver():
            done.set_result(_loops.on_loop_thread())

        loop.start(Run(), driver, "child run")
        return {"generation": _loops.generation, "on_loop_thread": _loops.on_loop_thread(),
                "new_loop_runs": done.result(10), "unraisable": unraisable}

    def fork(pipe_out, child_body):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.write(pipe_out, json.dumps(child_body()).encode() + b"\\n")
            except BaseException as exc:
                os.write(pipe_out, json.dumps({"error": repr(exc)}).encode() + b"\\n")
            finally:
                os._exit(code)
        os.waitpid(pid, 0)

    parent = _loops.get_loop("asyncio")
    r, w = os.pipe()
    results = {"parent": _loops.generation}

    def child():
        out = report(w)
        out["parent_loop_alive"] = parent.alive()
        fork(w, lambda: report(w))  # a grandchild
        return out

    fork(w, child)          # from the main thread
    done = Future()

    async def fork_on_loop():
        done.set_result(fork(w, lambda: report(w)))

    class Run:
        def loop_gone(self):
            pass

    parent.start(Run(), fork_on_loop, "forking")   # from the loop thread itself
    done.result(10)
    os.close(w)
    with os.fdopen(r) as lines:
        results["children"] = [json.loads(line) for line in lines]
    print(json.dumps(results))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_has_a_new_generation_and_a_loop_of_its_own() -> None:
    """In a fresh interpreter with a loop thread: a child forked from the main thread, its own child, and a child
    forked from inside the loop thread each see a generation no ancestor had, are not on a loop thread, see the
    parent's loop as not alive, start a loop of their own that runs drivers, and the at-fork hook raised nothing."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(talkpipe_async.__file__)))
    env = {**os.environ, "PYTHONPATH": package_root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", FORK_CHILD], capture_output=True, text=True, timeout=15, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    child, grandchild, from_loop = results["children"][1], results["children"][0], results["children"][2]
    generations = [results["parent"], child["generation"], grandchild["generation"]]
    assert len(set(generations)) == 3, results
    assert from_loop["generation"] != results["parent"]
    for seen in (child, grandchild, from_loop):
        assert seen.get("on_loop_thread") is False, results
        assert seen["new_loop_runs"] is True
        assert seen["unraisable"] == []
    assert child["parent_loop_alive"] is False
