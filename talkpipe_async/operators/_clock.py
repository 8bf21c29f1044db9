"""Timer plumbing for time-aware operators: a feeder task and waits with deadlines.

An operator that must act when *no* item arrives (a batch timeout, a
debounce, a flush every t seconds, a stop event) cannot wait on its upstream
directly: cancelling an upstream step would break the upstream generator.
Instead one long-lived task of the run (:class:`ReadAhead`) reads the upstream
into a bounded :class:`Channel`, and the operator waits on the channel with a
deadline.  Every upstream step runs in that one task, so a source's own
timeouts and context variables keep working.  The operator's ``yield`` is
never inside the cancel scope: the scope wraps only ``get_batch``.

Because the upstream runs in another task, metadata cannot bypass an
operator that uses a :class:`ReadAhead`: such operators set
``process_metadata=True`` and pass the metadata through themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio

from .._core._channel import Channel, ChannelClosed
from .._core._closing import CLEANUP_TIMEOUT
from .._core._run import current_run

__all__ = ["ReadAhead"]


class ReadAhead:
    """The upstream of one operator run, read ahead by one task into a bounded channel.

    The upstream runs ahead of the operator by at most ``capacity`` items.
    With ``stamp=True`` each entry is ``(arrival_time, item)``.  Always call
    :meth:`close` (in a ``finally``): it stops the task and wakes it if it is
    waiting for room.
    """

    def __init__(self, items: AsyncIterator[Any], capacity: int, *, name: str, stamp: bool = False) -> None:
        self.channel = Channel(capacity)
        self._task = current_run().start_soon(self._run, items, stamp, name=f"talkpipe_async feed of {name}")

    async def _run(self, items: AsyncIterator[Any], stamp: bool) -> None:
        channel = self.channel
        try:
            if stamp:
                now = anyio.current_time
                async for x in items:
                    await channel.put((now(), x))
            else:
                put = channel.put
                async for x in items:
                    await put(x)
        except ChannelClosed:
            return
        except Exception as exc:  # handed to the operator, in order
            channel.close(exc)
            return
        channel.close()

    async def get(self, limit: int, deadline: float | None = None) -> list[Any]:
        """Return 1..limit entries, or ``[]`` when *deadline* passes first.

        Raises ``anyio.EndOfStream`` at the end of the upstream, and the
        upstream's error (after the entries before it).
        """
        if deadline is None:
            return await self.channel.get_batch(limit)
        with anyio.CancelScope(deadline=deadline):
            return await self.channel.get_batch(limit)
        return []

    def close(self) -> None:
        """Stop the feeder task (the operator is done with its upstream).

        The stages it was running unwind shielded, so their ``finally``
        blocks can await (until the run's cleanup deadline).
        """
        self.channel.abort()
        self._task.stop(CLEANUP_TIMEOUT)

