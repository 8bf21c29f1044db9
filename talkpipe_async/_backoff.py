"""One backoff policy for every stage that retries (network sources and sinks, retry operators)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = ["Backoff"]

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
    unlimited); a stage resets its count after a success::

        Backoff(initial=0.2, maximum=10, max_attempts=5)
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: Jitter | bool = "full"
    max_attempts: int | None = None
    exact_first: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")
        if self.jitter not in ("full", "equal", "none", True, False):
            raise ValueError(f"unknown jitter {self.jitter!r}")
        if self.initial < 0 or self.maximum < 0 or self.multiplier < 1:
            raise ValueError("initial and maximum must be >= 0 and multiplier >= 1")

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
        ceiling = min(self.maximum, start * self.multiplier ** min(attempt, 64))
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
