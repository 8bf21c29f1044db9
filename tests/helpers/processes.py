"""Functions run by process_map in worker processes (module level, so they pickle by name under spawn)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def triple(x: int) -> int:
    """Plain work: the tests compare with ``[x * 3 for x in xs]``."""
    return x * 3


def fail_on_seven(x: int) -> int:
    """Raise ``ValueError`` on 7 (and only on 7)."""
    if x == 7:
        raise ValueError(f"seven is not welcome: {x}")
    return x


def die_on_three(x: int) -> int:
    """The worker process exits at once on 3 (as a crash would)."""
    if x == 3:
        os._exit(13)
    return x


def mark_and_hang(path: str) -> str:
    """Create *path* (the test waits for it), then stay busy far longer than any test."""
    Path(path).touch()
    time.sleep(600)
    return path


class Unpicklable(Exception):
    """An error that cannot cross the process boundary (it holds a lock-like object)."""

    def __init__(self) -> None:
        super().__init__("holds a generator")
        self.gen = (i for i in range(1))


def raise_unpicklable(x: int) -> int:
    """Raise an error that cannot be pickled."""
    raise Unpicklable()


def children() -> set[int]:
    """The pids of this process's live child processes (every thread's children)."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            text = Path(f"/proc/self/task/{task}/children").read_text()
        except OSError:
            continue
        pids.update(int(p) for p in text.split())
    return pids
