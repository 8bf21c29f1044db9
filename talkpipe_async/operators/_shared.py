"""Helpers shared by the operators: the producer side of a channel.

A producer task puts items into a :class:`Channel`; the consumer (the
operator's own generator) takes them in batches.  How the producer ends the
channel is the same everywhere: see :func:`produce_into`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .._core._channel import Channel, ChannelClosed

__all__ = ["produce_into"]


async def produce_into(channel: Channel, produce: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run ``produce(channel, *args)``, which puts items into *channel*, then end *channel*.

    A normal return closes the channel (the consumer sees the end after the
    items); an error closes it with that error (raised to the consumer after
    the items before it); cancellation closes it and propagates;
    ``ChannelClosed`` (the consumer is gone) just returns.
    """
    try:
        await produce(channel, *args)
    except ChannelClosed:
        return
    except anyio.get_cancelled_exc_class():
        channel.close()
        raise
    except BaseException as exc:  # handed to the consumer, in order
        channel.close(exc)
        return
    channel.close()
