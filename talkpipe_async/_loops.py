"""The shared private event-loop threads of the blocking wrapper.

One daemon thread per backend runs an event loop with a task group that the
runs are started in; it is created on first use,
reused by every blocking call from every thread, and stopped at interpreter
exit (:func:`shutdown`, registered with :mod:`atexit`).

Fork: a child process inherits this module's state but not the threads.
An at-fork hook drops the inherited state without touching it (no call, no
finalizer reaches the parent's loop), and the child's first blocking call
starts a loop thread of its own.  :data:`generation` changes in the child so
that runs inherited from the parent can tell they belong to another process.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

import anyio

__all__ = ["BACKENDS", "LOOP_THREAD_PREFIX", "LoopThread", "generation", "get_loop", "loop_thread", "on_loop_thread",
           "running_loop", "shutdown"]

BACKENDS = ("asyncio", "uvloop", "trio")
LOOP_THREAD_PREFIX = "talkpipe-async-loop"

generation = 0
"""Changes in a forked child: state made under another generation belongs to the parent."""


def _loop_hooks(backend: str) -> tuple[Callable[..., Any], threading.Thread]:
    """Run in the loop: a non-blocking thread-safe 'call soon' and the loop's thread."""
    if backend == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon, threading.current_thread()
    return asyncio.get_running_loop().call_soon_threadsafe, threading.current_thread()


class LoopThread:
    """One event loop running in a daemon thread; runs are started on it with :meth:`start`.

    A plain thread running ``anyio.run``, with no generator or finalizer that
    could wait for the loop, so a forked child may drop it safely.  Runs are
    handed over with the loop's own thread-safe "call soon" (never a blocking
    portal call, which trio refuses from a thread inside a trio run: a
    notebook or an application may call from one).
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.generation = generation
        self._lock = threading.Lock()
        self._runs: set[Any] = set()
        self._closed = False
        # Start requests, taken by the loop's main task (a task group is entered from a task only).
        self._requests: deque[tuple[Callable[[], Coroutine[Any, Any, None]], str]] = deque()
        self._wake: anyio.Event | None = None
        self._stopping = False
        ready: Future[Callable[..., Any]] = Future()
        self.thread = threading.Thread(
            target=self._main, args=(ready,), name=f"{LOOP_THREAD_PREFIX}[{backend}]", daemon=True
        )
        self.thread.start()
        self.call_soon = ready.result()

    def _main(self, ready: Future[Callable[..., Any]]) -> None:
        _this_thread.loop = True
        backend, options = ("asyncio", {"use_uvloop": True}) if self.backend == "uvloop" else (self.backend, {})

        async def serve() -> None:
            async with anyio.create_task_group() as tg:
                self._wake = anyio.Event()
                ready.set_result(_loop_hooks(self.backend)[0])
                while not self._stopping:
                    await self._wake.wait()
                    self._wake = anyio.Event()  # before taking the requests: no wake-up is lost
                    while self._requests:
                        driver, name = self._requests.popleft()
                        tg.start_soon(driver, name=name)
                tg.cancel_scope.cancel()  # the drivers still going report it to their consumers

        try:
            anyio.run(serve, backend=backend, backend_options=options)
        except BaseException as exc:  # reported to the thread that started us
            if not ready.done():
                ready.set_exception(exc)
            else:
                raise
        finally:
            self._release_runs()

    def _release_runs(self) -> None:
        with self._lock:
            self._closed = True
            runs, self._runs = self._runs, set()
        for run in runs:
            run.loop_gone()

    def start(self, run: Any, driver: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Start *driver* as a task on the loop; ``run.loop_gone()`` is called if the loop ends first.

        Raises ``RuntimeError`` when the loop has stopped.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the talkpipe-async loop thread has stopped")
            self._runs.add(run)
        self._requests.append((driver, name))
        try:
            self.call_soon(self._poke)
        except Exception:
            self.finished(run)
            raise RuntimeError("the talkpipe-async loop thread has stopped") from None

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def finished(self, run: Any) -> None:
        """*run* has ended: the loop need not release it any more."""
        with self._lock:
            self._runs.discard(run)

    def alive(self) -> bool:
        """True while the loop thread runs (always False for one inherited across fork)."""
        return self.generation == generation and self.thread.is_alive()

    def stop(self) -> None:
        """Cancel the runs still going (their drivers report it), stop the loop, join the thread."""
        if self.generation != generation:  # the parent's: never touch it
            return
        self._stopping = True
        try:
            self.call_soon(self._poke)
        except Exception:  # already stopped
            pass
        self.thread.join()


_this_thread = threading.local()


def on_loop_thread() -> bool:
    """True in one of the wrapper's loop threads (a blocking call there would wait for itself)."""
    return getattr(_this_thread, "loop", False)


_loops: dict[str, LoopThread] = {}
_loops_lock = threading.Lock()
_atexit_registered = False


def get_loop(backend: str) -> LoopThread:
    """The shared loop thread of *backend*, started if needed."""
    global _atexit_registered
    loop = _loops.get(backend)
    if loop is not None and loop.alive():
        return loop
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    with _loops_lock:
        loop = _loops.get(backend)
        if loop is None or not loop.alive():  # first use, or after shutdown()
            loop = _loops[backend] = LoopThread(backend)
            if not _atexit_registered:
                atexit.register(shutdown)
                _atexit_registered = True
        return loop


def loop_thread(backend: str = "asyncio") -> threading.Thread:
    """The shared event-loop thread for *backend* (started if needed).

    Its name is ``talkpipe-async-loop[<backend>]``.  It is a daemon thread;
    :func:`shutdown` (run automatically at interpreter exit) stops it.
    """
    return get_loop(backend).thread


def shutdown() -> None:
    """Stop the shared loop threads, cancelling the runs still going.

    Registered with :mod:`atexit`.  A later blocking call starts a fresh loop
    thread.  Consumers of cancelled runs get a ``RuntimeError``.
    """
    with _loops_lock:
        loops = list(_loops.values())
        _loops.clear()
    for loop in loops:
        loop.stop()


# The parent's loop threads, kept referenced in a forked child: dropping them
# is safe, keeping them also keeps their loops' own finalizers from running.
_inherited: list[LoopThread] = []


def _after_fork_in_child() -> None:
    """Forget the parent's loop threads without calling into them (the lock may be held by a parent thread)."""
    global generation, _loops_lock
    generation += 1
    _this_thread.loop = False  # forked from a loop thread: in the child this thread runs no loop of ours
    _loops_lock = threading.Lock()
    _inherited.extend(_loops.values())
    _loops.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def running_loop() -> str | None:
    """The event loop running in this thread, if any.

    Trio is found through sniffio's thread-local mark, which ``trio.run`` sets:
    another thread may be importing trio right now, and a module that is still
    importing must not be touched.  A trio run needs sniffio fully imported,
    so a missing or half-imported sniffio means no trio run here.
    """
    try:
        asyncio.get_running_loop()
        return "asyncio"
    except RuntimeError:
        pass
    local = getattr(sys.modules.get("sniffio"), "thread_local", None)
    if getattr(local, "name", None) == "trio":
        return "trio"
    return None
