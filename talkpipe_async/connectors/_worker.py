"""A worker process that consumes a broker pipeline and stops cleanly on SIGTERM / SIGINT.

On the first signal the broker source stops fetching and hands back at
once what it fetched but had not handed downstream (Redis: ``XCLAIM ...
IDLE <large> JUSTID``, claimable by the others' next scan; NATS: ``-NAK``);
the stages after it finish what is in progress, and :func:`consume`
acknowledges it; then the run ends and the worker returns.  A second signal,
or ``drain_timeout`` seconds without finishing, cancels the run: what is
still unacknowledged is handed back when the run closes, and the stop is
reported as not clean.
"""

from __future__ import annotations

import inspect
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from .._core._pipeline import Pipeline
from ._base import BrokerSource, consume

__all__ = ["WorkerResult", "run_worker", "serve"]

logger = logging.getLogger("talkpipe_async.connectors")

EXIT_OK = 0
EXIT_UNCLEAN = 143
DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class WorkerResult:
    """How a worker run ended."""

    handled: int = 0
    """Items handled and acknowledged."""
    stopped_by: str | None = None
    """The name of the signal that stopped it (None: the feed ended, e.g. ``idle_exit``)."""
    clean: bool = True
    """False when the drain was cut short (second signal or ``drain_timeout``)."""

    @property
    def exit_code(self) -> int:
        """0 for a clean stop or a finished feed, 143 when the drain was cut short."""
        return EXIT_OK if self.clean else EXIT_UNCLEAN


def broker_source_of(pipeline: Pipeline[Any, Any]) -> BrokerSource:
    """The broker source that starts *pipeline* (``TypeError`` if it starts with something else)."""
    head = pipeline.stages[0]
    if not isinstance(head, BrokerSource):
        raise TypeError(f"a worker pipeline must start with a broker source, not {type(head).__name__}")
    return head


async def serve(
    pipeline: Pipeline[Any, Any],
    handler: Callable[[Any], Awaitable[Any] | Any] | None = None,
    *,
    drain_timeout: float = 30.0,
    signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS,
) -> WorkerResult:
    """Run ``consume(pipeline, handler)`` until the feed ends or a signal stops it (see the module doc).

    Errors of the run propagate with their own type (the worker did not stop
    cleanly; messages in progress are redelivered).
    """
    source = broker_source_of(pipeline)
    result = WorkerResult()
    drain = anyio.CancelScope()

    def count(item: Any) -> Any:
        result.handled += 1
        return handler(item) if handler is not None else None

    async def counted(item: Any) -> None:
        result.handled += 1
        assert handler is not None
        await handler(item)

    on_item: Callable[[Any], Any] = counted if handler is not None and inspect.iscoroutinefunction(handler) \
        else count

    async def watch(receiver: Any) -> None:
        async for signum in receiver:
            name = signal.Signals(signum).name
            if result.stopped_by is None:
                result.stopped_by = name
                logger.warning("%s: %s received: stop fetching, finish what is in progress (at most %g s)",
                               source.label, name, drain_timeout)
                source.stop()
                drain.deadline = anyio.current_time() + drain_timeout
            else:
                logger.warning("%s: %s received again: stopping now", source.label, name)
                drain.cancel()

    error: Exception | None = None
    with anyio.open_signal_receiver(*signals) as receiver:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, receiver)
            try:
                with drain:
                    await consume(pipeline, on_item)
            except Exception as exc:  # re-raised below with its own type, not inside a task group's group
                error = exc
            finally:
                tg.cancel_scope.cancel()
    if error is not None:
        raise error
    if drain.cancelled_caught:
        result.clean = False
    return result


def run_worker(
    pipeline: Pipeline[Any, Any] | Callable[[], Pipeline[Any, Any]],
    handler: Callable[[Any], Awaitable[Any] | Any] | None = None,
    *,
    drain_timeout: float = 30.0,
    backend: str = "asyncio",
    backend_options: dict[str, Any] | None = None,
) -> int:
    """Run :func:`serve` in a new event loop; return the exit code (0: clean stop or finished feed).

    *pipeline* may be a factory called inside the loop.  Errors propagate.
    """

    async def main() -> WorkerResult:
        built = pipeline() if callable(pipeline) and not isinstance(pipeline, Pipeline) else pipeline
        return await serve(built, handler, drain_timeout=drain_timeout)

    result: WorkerResult = anyio.run(main, backend=backend, backend_options=backend_options)
    logger.info("worker ended: handled %d, stopped by %s, clean=%s", result.handled, result.stopped_by,
                result.clean)
    return result.exit_code
