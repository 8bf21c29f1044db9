"""Shared fixtures: every async test runs on asyncio, asyncio+uvloop and trio."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator

import pytest

try:
    import uvloop  # noqa: F401

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover - uvloop is in the test extra
    HAVE_UVLOOP = False

BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="uvloop",
        marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="no uvloop"),
    ),
    pytest.param(("trio", {}), id="trio"),
]
#: The same three by the names the runners take (``run_blocking(backend=...)``, the CLI's ``--backend``).
BACKEND_NAMES = [p.id for p in BACKENDS]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Run each ``@pytest.mark.anyio`` test once per event loop."""
    return request.param  # type: ignore[no-any-return]


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` for a process a test starts: Linux kills it (SIGKILL) when the test process dies.

    pytest-timeout's thread method ends pytest with ``os._exit``: no ``finally``, fixture teardown or ``atexit`` runs,
    so a server or command started by the test would otherwise outlive the run.  Elsewhere this does nothing.
    The signal follows the death of the *thread* that started the process: start it from the test's own thread.
    """
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# Looked up once here: between fork and exec the child must not load libraries or take locks.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def open_fds() -> int:
    """How many file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


def pool_thread(thread: threading.Thread) -> bool:
    """Worker-pool threads of the loop, which come and go on their own: anyio's (asyncio) or trio's thread cache."""
    return thread.name == "AnyIO worker thread" or thread.name.startswith("Trio thread ")


def new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    """Threads started since *before* was taken, worker-pool threads aside."""
    return {t for t in set(threading.enumerate()) - before if not pool_thread(t)}


def talkpipe_threads() -> list[threading.Thread]:
    """Live threads other than the main one and idle worker-pool threads."""
    return [t for t in threading.enumerate() if t is not threading.main_thread()]


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail if the test leaves file descriptors open."""
    before = open_fds()
    yield
    assert open_fds() <= before, "file descriptors leaked"


@pytest.fixture(params=["c", "python"])
def speedups(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with the C steps of the item path (when built) and with their pure-Python twins.

    Without the C extension (not built, or TALKPIPE_ASYNC_NO_EXTENSIONS=1) the C case is skipped, not forced.
    """
    from talkpipe_async._core import _batch_items as _items

    if request.param == "c" and (_items._speedups is None or os.environ.get("TALKPIPE_ASYNC_NO_EXTENSIONS")):
        pytest.skip("the C steps are off (not built, or TALKPIPE_ASYNC_NO_EXTENSIONS=1)")
    monkeypatch.setattr(_items, "SPEEDUPS", request.param == "c")
    return str(request.param)
