"""Riding out broker outages: retry with backoff for a budget of time, then fail naming the broker.

Brokers restart.  A connector keeps working through a short outage: every
call to the broker has a deadline; a call that fails because the broker is
unreachable is retried with capped exponential backoff (jittered) until the
broker answers again or ``outage_budget`` seconds have passed since the
first failure of this outage; then :class:`BrokerUnavailable` names the
broker, what was being done and the last cause.  A warning is logged when an
outage starts, every few seconds while it lasts, and when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio

from .._backoff import Backoff, Retries
from .._core._errors import TalkpipeAsyncError

__all__ = ["DEFAULT_OUTAGE_BUDGET", "BrokerUnavailable", "OutageGuard"]

T = TypeVar("T")
logger = logging.getLogger("talkpipe_async.connectors")

DEFAULT_OUTAGE_BUDGET = 60.0
"""Seconds a connector keeps retrying an unreachable broker before it gives up."""
OUTAGE_BACKOFF = Backoff(initial=0.05, maximum=1.0, jitter="equal")
WARN_EVERY = 5.0


def stage_call_timeout(timeout: float) -> float:
    """The guard's deadline for one call of a stage whose connection ``timeout`` is given: ``timeout + 5`` s.

    A blocking read adds the time it asks the server to wait (``deadline_extra``).
    """
    return timeout + 5.0


if sys.version_info >= (3, 11):
    # The connectors run on asyncio only; asyncio's own timeout costs less than half of anyio.fail_after, and it
    # is paid on every broker call (two per batch on the read path).
    _deadline = asyncio.timeout
else:
    @contextlib.asynccontextmanager
    async def _deadline(seconds: float) -> AsyncIterator[None]:
        with anyio.fail_after(seconds):
            yield


class BrokerUnavailable(ConnectionError, TalkpipeAsyncError):
    """The broker could not be reached: the first connection failed, or an outage outlasted its budget."""


class OutageGuard:
    """Retries broker calls through an outage, within a time budget.

    ``transient`` are the exception types that mean "the broker is
    unreachable right now" (connection refused or reset, timeouts);
    anything else propagates at once.  ``call_timeout`` is the deadline of
    one call on top of the time the call itself asks the broker to block.
    """

    def __init__(self, label: str, broker: str, budget: float, transient: tuple[type[BaseException], ...],
                 call_timeout: float = 10.0, on_outage: Callable[[], None] | None = None) -> None:
        if budget < 0:
            raise ValueError("outage_budget must be >= 0")
        self.label = label
        self.broker = broker
        self.budget = budget
        self.transient: tuple[type[BaseException], ...] = (*transient, TimeoutError)
        self.call_timeout = call_timeout
        self.on_outage = on_outage
        self.outages = 0
        self.gave_up = False
        self._since: float | None = None
        self._warned = 0.0
        self._retries = Retries(OUTAGE_BACKOFF)  # no attempt limit: the outage's time budget bounds it

    @property
    def in_outage(self) -> bool:
        """True between a failed call and the next successful one."""
        return self._since is not None

    async def call(self, what: str, func: Callable[..., Awaitable[T]], *args: Any, deadline_extra: float = 0.0,
                   **kwargs: Any) -> T:
        """``await func(*args, **kwargs)`` with a deadline, retried through an outage.

        The deadline is ``call_timeout + deadline_extra`` (the time the call
        asks the broker to block, for a blocking read).
        """
        while True:
            try:
                async with _deadline(self.call_timeout + deadline_extra):
                    result = await func(*args, **kwargs)
            except self.transient as exc:
                await self.failed(what, exc)
                continue
            if self._since is not None:
                self.recovered()
            return result

    async def failed(self, what: str, exc: BaseException) -> None:
        """Note a failed call: wait the next backoff delay, or raise once the budget is spent."""
        now = anyio.current_time()
        if self._since is None:
            self._since = now
            self._warned = now
            self._retries = Retries(OUTAGE_BACKOFF)
            self.outages += 1
            if self.on_outage is not None:
                self.on_outage()
            logger.warning("%s: %s unreachable during %s (%s: %s); retrying for up to %.0f s",
                           self.label, self.broker, what, type(exc).__name__, exc, self.budget)
        elapsed = now - self._since
        if elapsed >= self.budget or self.gave_up:  # after giving up once (closing), no second budget
            self._since = None
            self.gave_up = True
            raise BrokerUnavailable(
                f"{self.label}: {self.broker} unreachable for {elapsed:.1f} s (outage_budget={self.budget:g} s) "
                f"during {what}: {type(exc).__name__}: {exc}"
            ) from exc
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            logger.warning("%s: %s still unreachable after %.1f s (%s: %s)", self.label, self.broker, elapsed,
                           type(exc).__name__, exc)
        wait = self._retries.failed()  # never None: OUTAGE_BACKOFF has no attempt limit
        delay = min(wait if wait is not None else 0.0, self.budget - elapsed)
        await anyio.sleep(max(delay, 0.0))

    def recovered(self) -> None:
        """The broker answered again: end the outage (the next failure starts a new budget)."""
        if self._since is not None:
            logger.warning("%s: %s reachable again after %.1f s", self.label, self.broker,
                           anyio.current_time() - self._since)
        self._since = None
