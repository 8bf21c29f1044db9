"""The UDP source (``udp_datagrams``): the edges the socket tests leave open.

Pinned here, with real datagrams on 127.0.0.1: the defaults (loopback, a free port, a ring of 1024, bare bytes) and
the ring's bound (1 allowed, 0 refused with its message); the port asked for is the one bound; ``with_address``
yields ``(bytes, (host, port))`` naming the sender; every datagram handed on is counted in ``stats.items``; a full
ring drops the oldest, counts each drop, and warns once; the high-water mark is the fullest the ring has been; the
stats object given is the one counted into; the name given labels the stage; the socket is closed when the run
ends.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import anyio.abc
import pytest

from talkpipe_async import Pipeline
from talkpipe_async.sources import NetStats, udp_datagrams
from tests.helpers.wait import until

pytestmark = pytest.mark.anyio


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_defaults_and_the_rings_bound() -> None:
    src = udp_datagrams()
    assert (src.host, src.port, src.buffer, src.with_address) == ("127.0.0.1", 0, 1024, False)
    assert isinstance(src.stats, NetStats) and src.label == "udp_datagrams"
    assert udp_datagrams(buffer=1).buffer == 1
    with pytest.raises(ValueError) as info:
        udp_datagrams(buffer=0)
    assert str(info.value) == "buffer must be at least 1"
    stats = NetStats()
    named = udp_datagrams(stats=stats, name="sensors")
    assert named.stats is stats and named.name == "sensors" and named.label == "sensors"


class Listening:
    """``on_listening``: the bound address, and an event once it is known."""

    def __init__(self) -> None:
        self.address: Any = None
        self.ready = anyio.Event()

    def __call__(self, address: Any) -> None:
        self.address = address
        self.ready.set()


async def test_the_port_asked_for_is_bound_and_the_sender_is_named() -> None:
    port = free_udp_port()
    listening = Listening()
    stats = NetStats()
    source = udp_datagrams(port=port, with_address=True, on_listening=listening, stats=stats)
    async with Pipeline(source).stream() as items:
        async with anyio.create_task_group() as tg:
            got: list[Any] = []

            async def pull() -> None:
                got.extend([await items.__anext__() for _ in range(3)])

            tg.start_soon(pull)
            await listening.ready.wait()
            assert listening.address == ("127.0.0.1", port)
            async with await anyio.create_connected_udp_socket("127.0.0.1", port) as sender:
                me = sender.extra(anyio.abc.SocketAttribute.local_address)
                for n in range(3):
                    await sender.send(f"d{n}".encode())
    assert got == [(f"d{n}".encode(), me) for n in range(3)]
    assert stats.items == 3 and stats.bytes_received == 6


async def test_a_full_ring_drops_the_oldest_counts_each_drop_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listening = Listening()
    stats = NetStats()
    caplog.set_level(logging.WARNING, logger="talkpipe_async.net")
    source = udp_datagrams(buffer=3, on_listening=listening, stats=stats, name="sensors")
    async with Pipeline(source).stream() as items:
        async with anyio.create_task_group() as tg:
            first: list[Any] = []

            async def pull_first() -> None:
                first.append(await items.__anext__())

            tg.start_soon(pull_first)
            await listening.ready.wait()
            sender = await anyio.create_connected_udp_socket(*listening.address)
            await sender.send(b"first")
        assert first == [b"first"] and stats.high_water == 1
        for n in range(8):  # nobody pulls now: 8 into a ring of 3
            await sender.send(f"d{n}".encode())
        await until(lambda: stats.bytes_received == 5 + 8 * 2)  # the receiving task has taken all of them
        got = [await items.__anext__() for _ in range(3)]
        await sender.aclose()
    assert got == [b"d5", b"d6", b"d7"]
    assert (stats.datagrams_dropped, stats.high_water, stats.items) == (5, 3, 4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["sensors: buffer full, dropping oldest datagrams (counted in stats)"]


async def test_the_socket_is_closed_when_the_run_ends() -> None:
    listening = Listening()
    port = free_udp_port()
    async with Pipeline(udp_datagrams(port=port, on_listening=listening)).stream() as items:
        async with anyio.create_task_group() as tg:

            async def pull() -> None:
                await items.__anext__()

            tg.start_soon(pull)
            await listening.ready.wait()
            async with await anyio.create_connected_udp_socket("127.0.0.1", port) as sender:
                await sender.send(b"x")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # free again: the source's socket is closed


async def test_the_first_drop_warns(caplog: pytest.LogCaptureFixture) -> None:
    listening = Listening()
    stats = NetStats()
    caplog.set_level(logging.WARNING, logger="talkpipe_async.net")
    async with Pipeline(udp_datagrams(buffer=1, on_listening=listening, stats=stats)).stream() as items:
        async with anyio.create_task_group() as tg:

            async def pull_first() -> None:
                await items.__anext__()

            tg.start_soon(pull_first)
            await listening.ready.wait()
            sender = await anyio.create_connected_udp_socket(*listening.address)
            await sender.send(b"first")
        await sender.send(b"a")
        await sender.send(b"b")  # one too many for a ring of 1
        await until(lambda: stats.bytes_received == 7)
        assert await items.__anext__() == b"b"
        await sender.aclose()
    assert stats.datagrams_dropped == 1
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "udp_datagrams: buffer full, dropping oldest datagrams (counted in stats)"]


async def test_a_source_that_cannot_start_releases_its_port() -> None:
    port = free_udp_port()
    with pytest.raises(RuntimeError):
        await udp_datagrams(port=port).generate().__anext__()  # outside a pipeline run: it cannot start its task
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))


class FailingAfter:
    """A real UDP socket whose receiving fails with *error* after *n* datagrams, once :attr:`fail` is set.

    No real peer can make a Linux UDP socket's receive fail (an unconnected socket is not told of ICMP errors), so
    this wrapper is the one stand-in here: everything else is the real socket.
    """

    def __init__(self, sock: anyio.abc.UDPSocket, n: int, error: OSError) -> None:
        self.sock = sock
        self.left = n
        self.error = error
        self.fail = anyio.Event()
        self.closed = False

    def extra(self, attribute: Any) -> Any:
        return self.sock.extra(attribute)

    async def __aenter__(self) -> FailingAfter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True
        await self.sock.aclose()

    def __aiter__(self) -> FailingAfter:
        return self

    async def __anext__(self) -> tuple[bytes, tuple[str, int]]:
        if self.left == 0:
            await self.fail.wait()
            raise self.error
        self.left -= 1
        return await self.sock.receive()


def failing_sockets(monkeypatch: pytest.MonkeyPatch, n: int, error: OSError) -> list[FailingAfter]:
    """From now on the source's socket is a :class:`FailingAfter`; the list gets each one made."""
    wrapped: list[FailingAfter] = []
    create = anyio.create_udp_socket

    async def failing(**kw: Any) -> FailingAfter:
        wrapped.append(FailingAfter(await create(**kw), n, error))
        return wrapped[-1]

    monkeypatch.setattr(anyio, "create_udp_socket", failing)
    return wrapped


async def test_a_failed_receive_reaches_the_consumer_after_the_datagrams_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receiving task keeps its error and wakes the consumer, who first gets every datagram received before it
    and then that error; the socket is closed."""
    error = OSError(5, "receive failed")
    wrapped = failing_sockets(monkeypatch, 2, error)
    listening = Listening()
    got: list[Any] = []
    with anyio.fail_after(10), pytest.raises(OSError) as raised:
        async with Pipeline(udp_datagrams(on_listening=listening)).stream() as items:
            async with anyio.create_task_group() as tg:

                async def pull() -> None:
                    got.append(await items.__anext__())

                tg.start_soon(pull)
                await listening.ready.wait()
                async with await anyio.create_connected_udp_socket(*listening.address) as sender:
                    await sender.send(b"a")
                    await sender.send(b"b")
            wrapped[0].fail.set()
            async for item in items:
                got.append(item)
    assert raised.value is error
    assert got == [b"a", b"b"]
    assert wrapped[0].closed


async def test_a_failed_receive_wakes_a_consumer_waiting_for_the_next_datagram(monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer is waiting on an empty ring when the receive fails: it is woken and gets the error."""
    error = OSError(5, "receive failed")
    wrapped = failing_sockets(monkeypatch, 1, error)
    listening = Listening()
    outcome: list[Any] = []
    first = anyio.Event()
    with anyio.fail_after(10):
        async with Pipeline(udp_datagrams(on_listening=listening)).stream() as items:
            async with anyio.create_task_group() as tg:

                async def pull_two() -> None:
                    outcome.append(await items.__anext__())
                    first.set()
                    try:
                        await items.__anext__()
                    except OSError as exc:
                        outcome.append(exc)

                tg.start_soon(pull_two)
                await listening.ready.wait()
                async with await anyio.create_connected_udp_socket(*listening.address) as sender:
                    await sender.send(b"a")
                await first.wait()
                await anyio.wait_all_tasks_blocked()  # the consumer waits on an empty ring, the receive on its fault
                wrapped[0].fail.set()
    assert outcome == [b"a", error]
