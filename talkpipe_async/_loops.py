"""The shared private event-loop threads of the blocking wrapper.

One daemon thread per backend runs an event loop with an anyio
:class:`~anyio.from_thread.BlockingPortal` in it; it is created on first use,
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
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import anyio
import anyio.from_thread

__all__ = ["BACKENDS", "LOOP_THREAD_PREFIX", "LoopThread", "generation", "get_loop", "loop_thread", "running_loop",
           "shutdown"]

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
    """One event loop running in a daemon thread, behind an anyio blocking portal.

    A plain thread running ``anyio.run`` (not ``start_blocking_portal``'s
    generator), so that nothing of it has a finalizer that could wait for the
    loop: after fork the child may drop it safely.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.generation = generation
        ready: Future[tuple[anyio.from_thread.BlockingPortal, Callable[..., Any]]] = Future()
        self.thread = threading.Thread(
            target=self._main, args=(ready,), name=f"{LOOP_THREAD_PREFIX}[{backend}]", daemon=True
        )
        self.thread.start()
        self.portal, self.call_soon = ready.result()

    def _main(self, ready: Future[tuple[anyio.from_thread.BlockingPortal, Callable[..., Any]]]) -> None:
        backend, options = ("asyncio", {"use_uvloop": True}) if self.backend == "uvloop" else (self.backend, {})

        async def serve() -> None:
            async with anyio.from_thread.BlockingPortal() as portal:
                ready.set_result((portal, _loop_hooks(self.backend)[0]))
                await portal.sleep_until_stopped()

        try:
            anyio.run(serve, backend=backend, backend_options=options)
        except BaseException as exc:  # reported to the thread that started us
            if not ready.done():
                ready.set_exception(exc)
            else:
                raise

    def alive(self) -> bool:
        """True while the loop thread runs (always False for one inherited across fork)."""
        return self.generation == generation and self.thread.is_alive()

    def stop(self) -> None:
        """Cancel the runs still going (their drivers report it), stop the loop, join the thread."""
        if self.generation != generation:  # the parent's: never touch it
            return
        try:
            self.portal.call(self.portal.stop, True)
        except RuntimeError:  # already stopped
            pass
        self.thread.join()


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
