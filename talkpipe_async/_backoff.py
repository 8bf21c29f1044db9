"""One backoff policy for every stage that retries (network sources and sinks, retry operators).

:class:`Backoff` computes the waits; :class:`Retries` applies them, with the
rule every reconnecting stage shares (a connection resets the count only
once it is healthy).  A retry loop reads::

    retries = Retries(backoff)
    while True:
        try:
            ...  # retries.opened() once connected, retries.delivered() on data
        except SomeError:
            ...
        if not await retries.next_attempt():
            raise GaveUp(f"gave up after {retries.failures} attempts")
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import anyio

__all__ = ["Backoff", "Retries"]

Jitter = Literal["full", "equal", "none"]


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter.

    The wait after ``attempt + 1`` consecutive failures (``attempt`` counts
    from 0) is ``d = min(maximum, initial * multiplier**attempt)``, then
    jittered: ``"full"`` (default) draws uniformly from ``[0, d]``, ``"equal"``
    from ``[d/2, d]``, ``"none"`` keeps ``d`` (``True``/``False`` mean
    ``"full"``/``"none"``).  ``exact_first=True`` makes the first wait exactly
    ``initial`` (or the base a caller passes, such as an SSE server's
    ``retry``).  ``max_attempts`` bounds consecutive failed attempts (``None``:
    unlimited).  A reconnecting stage counts a connection as a success, and
    starts its count and its delay again from the beginning, only when the
    connection delivered data and stayed up for ``healthy_after`` seconds
    (see :class:`Retries`); a peer that accepts and then drops sooner counts
    as one more failure, so ``max_attempts`` bounds a flapping peer too::

        Backoff(initial=0.2, maximum=10, max_attempts=5, healthy_after=10)
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: Jitter | bool = "full"
    max_attempts: int | None = None
    exact_first: bool = False
    healthy_after: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")
        if self.jitter not in ("full", "equal", "none", True, False):
            raise ValueError(f"unknown jitter {self.jitter!r}")
        if self.initial < 0 or self.maximum < 0 or self.multiplier < 1:
            raise ValueError("initial and maximum must be >= 0 and multiplier >= 1")
        if self.healthy_after < 0:
            raise ValueError("healthy_after must be >= 0")

    @property
    def mode(self) -> Jitter:
        """The jitter mode as a name."""
        if self.jitter is True:
            return "full"
        if self.jitter is False:
            return "none"
        return self.jitter

    def delay(self, attempt: int, base: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``attempt + 1`` consecutive failures."""
        start = self.initial if base is None else base
        ceiling = min(self.maximum, _grown(start, self.multiplier, attempt))
        mode = self.mode
        if mode == "none" or (attempt == 0 and self.exact_first):
            return ceiling
        r = rng or random
        if mode == "full":
            return r.uniform(0.0, ceiling)
        return ceiling / 2 + r.uniform(0.0, ceiling / 2)

    def exhausted(self, failures: int) -> bool:
        """True when *failures* consecutive failures reach ``max_attempts``."""
        return self.max_attempts is not None and failures >= self.max_attempts

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits between ``max_attempts`` tries (unbounded when ``max_attempts`` is None)."""
        attempt = 0
        while self.max_attempts is None or attempt < self.max_attempts - 1:
            yield self.delay(attempt, rng=rng)
            attempt += 1


def _grown(start: float, multiplier: float, attempt: int) -> float:
    """``start * multiplier**attempt``; infinite (not an OverflowError) past the largest float."""
    if not start:
        return start
    try:
        return start * float(multiplier) ** attempt
    except OverflowError:
        return math.inf


#: How far below ``healthy_after`` a measured uptime may round and still count (one microsecond).
_CLOCK_SLACK = 1e-6


class Retries:
    """The retry rule every reconnecting stage shares: what counts as a failure, and the wait before the next try.

    A stage calls :meth:`opened` when an attempt starts working (a
    connection made, a source opened), :meth:`delivered` when it receives
    data, and :meth:`failed` when the attempt ends (or could not open) and
    the stage wants another.  The attempt was *healthy* when it delivered
    data and stayed open for at least ``backoff.healthy_after`` seconds:
    then the count of consecutive failures starts again from zero.  Every
    other end is one more consecutive failure, whatever it delivered: the
    next wait grows (:meth:`Backoff.delay`), and ``backoff.max_attempts``
    failures in a row give up.  Time is ``anyio.current_time()`` (virtual
    under a mock clock).
    """

    def __init__(self, backoff: Backoff, *, rng: random.Random | None = None) -> None:
        self.backoff = backoff
        self.rng = rng
        self.failures = 0
        self._opened_at: float | None = None
        self._productive = False

    def opened(self) -> None:
        """An attempt started working now."""
        self._opened_at = anyio.current_time()
        self._productive = False

    def delivered(self) -> None:
        """The current attempt received data."""
        self._productive = True

    @property
    def healthy(self) -> bool:
        """True when the current attempt delivered data and has been open for ``healthy_after`` seconds."""
        since = self._opened_at
        if since is None or not self._productive:
            return False
        # Clock readings are floats: an attempt up for exactly ``healthy_after`` seconds must count even when the
        # subtraction rounds a few ulps below it (far from zero, as a long-running clock is).
        return anyio.current_time() - since >= self.backoff.healthy_after - _CLOCK_SLACK

    def failed(self, base: float | None = None) -> float | None:
        """The current attempt ended: count it; the wait before the next one, or None once ``max_attempts`` are used.

        *base* replaces ``backoff.initial`` for this wait (an SSE server's ``retry``).
        """
        if self.healthy:
            self.failures = 0
        self._opened_at = None
        self._productive = False
        self.failures += 1
        if self.backoff.exhausted(self.failures):
            return None
        return self.backoff.delay(self.failures - 1, base, rng=self.rng)

    async def next_attempt(self, base: float | None = None, *, wait: float | None = None) -> bool:
        """The current attempt ended: count it (:meth:`failed`) and sleep until the next one is due.

        False, without sleeping, once ``backoff.max_attempts`` failures in a
        row are used up: the caller then gives up.  *base* is passed to
        :meth:`failed`; *wait*, when given, replaces the computed delay (a
        server's ``Retry-After``), the failure being counted all the same.
        """
        delay = self.failed(base)
        if delay is None:
            return False
        await anyio.sleep(delay if wait is None else wait)
        return True
