"""The broker-neutral core of the connectors (``talkpipe_async.connectors._base``), through an in-memory adapter.

``MemoryBroker`` is a complete adapter of the interface the module documents (tokens, a session, a source, a
writer and a sink), holding its messages in lists and recording every call made to it.  With it, each promise of
the shared code is checked exactly, on asyncio's virtual clock: the read loop's batches, waits and idle end, the
isolation of redelivered messages, ``stop()`` and the hand-back, who closes the session and when, the shielded and
bounded closes, the sink's batches and partitions, and the ``ack``/``map_data``/``filter_data``/``consume``
stages.  The adapters over real brokers are tested in ``test_redis.py``, ``test_nats.py`` and their companions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from talkpipe_async import error_context, segment, source
from talkpipe_async.connectors import AckToken, BackendNotSupported, Message, ack, consume, filter_data, map_data
from talkpipe_async.connectors._base import (
    CLOSE_TIMEOUT,
    Ack,
    BatchWriter,
    BrokerSession,
    BrokerSink,
    BrokerSource,
    MapData,
    MissingClient,
    _Closer,
    _keep_session,
    import_client,
    messages_in,
)
from talkpipe_async.connectors._partitions import partition_for
from talkpipe_async.testing import virtual_backend

pytestmark = pytest.mark.anyio

LOGGER = "talkpipe_async.connectors"


@pytest.fixture
def anyio_backend() -> Any:
    """The connectors run on asyncio; its virtual clock makes the waits exact."""
    return virtual_backend("asyncio")


class Token(AckToken):
    """Records each settlement asked of it (into the broker's log too) and settles once."""

    __slots__ = ("asked", "log", "queued")

    def __init__(self, id: str, log: list[Any], *, suspect: bool = False, queued: bool = False) -> None:
        super().__init__(id, 1, suspect)
        self.asked: list[Any] = []
        self.log = log
        self.queued = queued

    def _note(self, what: Any) -> None:
        self.asked.append(what)
        self.log.append((what, self.id))

    async def ack(self) -> None:
        self._note("ack")
        self._settle()

    def ack_nowait(self) -> Awaitable[None] | None:
        if self.queued:  # an adapter that buffers acknowledgements: settled here, nothing to await
            self._note("ack queued")
            self._settle()
            return None
        return self.ack()

    async def nak(self, delay: float | None = None) -> None:
        self._note(("nak", delay))
        self._settle()

    async def term(self, reason: str) -> None:
        self._note(("term", reason))
        self._settle()

    async def touch(self) -> None:
        self._note("touch")


@dataclass
class MemoryBroker:
    """The broker's side: the batches each read returns, and a log of every call."""

    batches: list[list[Message[Any]]] = field(default_factory=list)
    log: list[Any] = field(default_factory=list)
    reads: list[tuple[float, int, float]] = field(default_factory=list)
    failure: BaseException | None = None
    expecting: bool = False
    close_takes: float = 0.0
    hand_back_takes: float = 0.0
    background_error: BaseException | None = None

    def message(self, data: Any, id: str | None = None, **kw: Any) -> Message[Any]:
        return Message(data, Token(id or f"{data}", self.log, **kw))

    def fill(self, *batches: list[Any], **kw: Any) -> list[list[Message[Any]]]:
        made = [[self.message(x, **kw) for x in batch] for batch in batches]
        self.batches.extend(made)
        return made


class Session(BrokerSession):
    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__()
        self.broker = broker

    async def read(self, count: int, wait: float) -> list[Message[Any]]:
        broker = self.broker
        broker.reads.append((anyio.current_time(), count, wait))
        self.failure = broker.failure
        if broker.batches:
            return broker.batches.pop(0)
        await anyio.sleep(wait)
        return []

    def retire(self) -> None:
        self.broker.log.append("retire")

    def expecting(self) -> bool:
        return self.broker.expecting

    async def background(self) -> None:
        if self.broker.background_error is not None:
            raise self.broker.background_error
        await anyio.sleep_forever()

    async def hand_back(self, tokens: list[AckToken]) -> None:
        self.broker.log.append(("hand back", [t.id for t in tokens]))
        await anyio.sleep(self.broker.hand_back_takes)

    async def aclose(self) -> None:
        self.broker.log.append(("closing", anyio.current_time()))
        await anyio.sleep(self.broker.close_takes)
        self.broker.log.append(("closed", anyio.current_time()))


class Source(BrokerSource):
    def __init__(self, broker: MemoryBroker, *, batch: int = 3, idle_exit: float | None = 0.5, wait: float = 1.0,
                 isolate_timeout: float = 10.0) -> None:
        super().__init__(batch=batch, idle_exit=idle_exit, wait=wait, name="mem", isolate_timeout=isolate_timeout)
        self.broker = broker
        self.session: Session | None = None

    async def _open(self) -> BrokerSession:
        self.broker.log.append("open")
        self.session = Session(self.broker)
        return self.session


class Writer(BatchWriter):
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def write(self, payloads: list[Any], partitions: list[int] | None = None) -> None:
        self.broker.log.append(("write", payloads, partitions))

    async def aclose(self) -> None:
        await anyio.sleep(self.broker.close_takes)
        self.broker.log.append("writer closed")


class Sink(BrokerSink):
    def __init__(self, broker: MemoryBroker, *, batch: int = 2, **kw: Any) -> None:
        super().__init__(batch=batch, encode=lambda x: f"<{x}>", name="mem-sink", **kw)
        self.broker = broker

    async def _open_writer(self) -> BatchWriter:
        self.broker.log.append("writer opened")
        return Writer(self.broker)


@source
async def given(items: list[Any]) -> AsyncIterator[Any]:
    """The README's form of a source: each item in turn."""
    for x in items:
        yield x


def data(items: list[Any]) -> list[Any]:
    return [m.data if isinstance(m, Message) else m for m in items]


# -- messages_in, ack -------------------------------------------------------------------------------------------


def test_messages_in_finds_messages_in_nested_batches_only() -> None:
    broker = MemoryBroker()
    a, b, c = (broker.message(x) for x in "abc")
    assert list(messages_in(a)) == [a]
    assert list(messages_in([a, (b, [c]), "x", 1])) == [a, b, c]
    assert list(messages_in("abc")) == [] and list(messages_in({"k": a})) == []


async def test_ack_acknowledges_each_message_then_passes_it_on() -> None:
    broker = MemoryBroker()
    plain, queued = broker.message("p"), broker.message("q", queued=True)
    out = await (given([plain, queued]) | ack()).collect()
    assert out == [plain, queued]
    assert broker.log == [("ack", "p"), ("ack queued", "q")]
    assert await (given([broker.message("u")]) | ack(unwrap=True)).collect() == ["u"]


async def test_ack_acknowledges_every_message_of_a_batch() -> None:
    broker = MemoryBroker()
    batch = [broker.message("a"), (broker.message("b"),)]
    assert await (given([batch]) | ack()).collect() == [batch]
    assert broker.log == [("ack", "a"), ("ack", "b")]
    batch2 = [broker.message("c"), broker.message("d")]
    assert await (given([batch2]) | ack(unwrap=True)).collect() == [["c", "d"]]


async def test_an_item_without_a_message_is_an_error_naming_the_stage_and_the_item() -> None:
    with pytest.raises(TypeError) as raised:
        await (given([{"k": 1}]) | ack()).collect()
    assert str(raised.value).splitlines()[0] == "ack: item carries no Message to acknowledge: {'k': 1}"


async def test_ack_can_pass_items_without_a_message_and_counts_them() -> None:
    stage = ack(missing="pass")
    assert await (given([1, [2], 3]) | stage).collect() == [1, [2], 3]
    assert stage.passed_without_token == 3
    unwrapping = ack(unwrap=True, missing="pass")
    assert await (given(["x"]) | unwrapping).collect() == ["x"]  # nothing to unwrap: the item as it is
    assert unwrapping.passed_without_token == 1


# -- map_data, filter_data -------------------------------------------------------------------------------------


async def test_map_data_replaces_the_payload_and_keeps_the_token() -> None:
    broker = MemoryBroker()
    messages = [broker.message(1), broker.message(2)]

    async def double(x: int) -> int:
        await anyio.sleep(0)
        return x * 2

    out = await (given(messages) | map_data(lambda x: x + 1) | map_data(double)).collect()
    assert [m.data for m in out] == [4, 6]
    assert [m.token for m in out] == [m.token for m in messages]
    assert broker.log == []  # nothing settled on the way


def halve(x: int) -> float:
    if x == 0:
        raise ZeroDivisionError("zero")
    return 1 / x


async def test_map_data_raises_by_default_and_leaves_the_message_pending() -> None:
    broker = MemoryBroker()
    with pytest.raises(ZeroDivisionError):
        await (given([broker.message(0)]) | map_data(halve)).collect()
    assert broker.log == []


async def test_map_data_dead_letters_with_the_stage_and_the_error_as_reason() -> None:
    broker = MemoryBroker()
    stage = map_data(halve, on_error="dead_letter")
    out = await (given([broker.message(0, "a"), broker.message(2, "b"), broker.message(0, "c")]) | stage).collect()
    assert data(out) == [0.5]
    assert broker.log == [(("term", "halve: ZeroDivisionError: zero"), "a"),
                          (("term", "halve: ZeroDivisionError: zero"), "c")]
    assert stage.errors == 2


async def test_map_data_can_ask_for_redelivery_instead() -> None:
    broker = MemoryBroker()
    stage = map_data(halve, on_error="nak")
    out = await (given([broker.message(0, "a"), broker.message(0, "b"), broker.message(4, "c")]) | stage).collect()
    assert data(out) == [0.25]
    assert broker.log == [(("nak", None), "a"), (("nak", None), "b")]
    assert stage.errors == 2


def test_the_data_stages_are_named_after_their_function() -> None:
    assert map_data(halve).label == "halve"
    assert map_data(functools.partial(halve)).label == "map_data"  # a callable without a name
    assert filter_data(halve).label == "halve"
    assert filter_data(functools.partial(halve)).label == "filter_data"


async def test_filter_data_keeps_what_passes_and_acknowledges_the_rest() -> None:
    broker = MemoryBroker()

    async def even(x: int) -> bool:
        return x % 2 == 0

    stage = filter_data(even)
    out = await (given([broker.message(i) for i in range(5)]) | stage).collect()
    assert data(out) == [0, 2, 4]
    assert broker.log == [("ack", "1"), ("ack", "3")]
    assert stage.dropped == 2
    sync = filter_data(lambda x: x > 2)
    assert data(await (given([broker.message(i) for i in range(5)]) | sync).collect()) == [3, 4]
    assert sync.dropped == 3


# -- consume ---------------------------------------------------------------------------------------------------


async def test_consume_hands_each_payload_to_the_handler_then_acknowledges() -> None:
    broker = MemoryBroker()
    seen: list[Any] = []

    def handle(x: Any) -> None:
        broker.log.append(("handled", x))
        seen.append(x)

    items = [broker.message("a"), [broker.message("b"), broker.message("c")], broker.message("d", queued=True)]
    assert await consume(given(items), handle) == 3
    assert seen == ["a", items[1], "d"]  # a batch is handed as it is
    assert broker.log == [("handled", "a"), ("ack", "a"), ("handled", items[1]), ("ack", "b"), ("ack", "c"),
                          ("handled", "d"), ("ack queued", "d")]


async def test_consume_awaits_an_async_handler_and_works_without_one() -> None:
    broker = MemoryBroker()
    seen: list[Any] = []

    async def handle(x: Any) -> None:
        await anyio.sleep(1)
        seen.append((x, anyio.current_time()))

    start = anyio.current_time()
    assert await consume(given([broker.message("a"), broker.message("b")]), handle) == 2
    assert seen == [("a", start + 1), ("b", start + 2)]
    assert await consume(given([broker.message("c")])) == 1
    assert broker.log == [("ack", "a"), ("ack", "b"), ("ack", "c")]


async def test_consume_stops_at_its_limit() -> None:
    broker = MemoryBroker()
    assert await consume(given([broker.message(i) for i in range(5)]), limit=2) == 2
    assert broker.log == [("ack", "0"), ("ack", "1")]


async def test_a_failing_handler_ends_the_run_and_its_message_stays_pending() -> None:
    broker = MemoryBroker()

    def handle(x: Any) -> None:
        if x == "b":
            raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await consume(given([broker.message("a"), broker.message("b")]), handle)
    assert broker.log == [("ack", "a")]


# -- the session's books ---------------------------------------------------------------------------------------


async def test_wait_drained_returns_at_once_with_nothing_held() -> None:
    session = Session(MemoryBroker())
    start = anyio.current_time()
    assert await session.wait_drained(5) is True
    assert anyio.current_time() == start


async def test_wait_drained_waits_for_the_last_settlement_up_to_its_limit() -> None:
    broker = MemoryBroker()
    session = Session(broker)
    a, b = broker.message("a"), broker.message("b")
    session.track(a.token)
    session.track(b.token)
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:

        async def settle() -> None:
            await anyio.sleep(1)
            await a.ack()
            await anyio.sleep(1)
            await b.ack()

        tg.start_soon(settle)
        assert await session.wait_drained(5) is True
    assert anyio.current_time() - start == 2
    session.track(broker.message("c").token)
    start = anyio.current_time()
    assert await session.wait_drained(3) is False
    assert anyio.current_time() - start == 3
    assert session._drained is None


def test_leftovers_are_the_unsettled_held_and_the_never_handed_out() -> None:
    broker = MemoryBroker()
    session = Session(broker)
    held_open, held_done, out_open, out_done, out_tracked = (broker.message(x) for x in "abcde")
    for m in (held_open, held_done):
        session.track(m.token)
    held_done.token._settle()
    out_done.token._settle()
    session.track(out_tracked.token)
    session.unyielded = [out_open, out_done, out_tracked]
    assert session.leftovers() == [held_open.token, out_tracked.token, out_open.token]
    assert session.unyielded == []


# -- the read loop ---------------------------------------------------------------------------------------------


async def test_each_read_asks_for_a_batch_and_waits_at_most_wait() -> None:
    broker = MemoryBroker()
    broker.fill(["a", "b", "c"], ["d"])
    source = Source(broker, batch=3, idle_exit=None, wait=1.0)
    got: list[Any] = []
    async with source.stream() as items:
        async for m in items:
            got.append(m.data)
            if m.data == "d":
                break
    assert got == ["a", "b", "c", "d"]
    assert [(count, wait) for _, count, wait in broker.reads] == [(3, 1.0), (3, 1.0)]


async def test_idle_exit_cuts_the_waits_and_ends_the_stream_exactly() -> None:
    broker = MemoryBroker()
    broker.fill(["a"])
    source = Source(broker, idle_exit=2.5, wait=1.0)
    start = anyio.current_time()
    assert data(await source.collect()) == ["a"]
    assert [(t - start, wait) for t, _, wait in broker.reads] == [(0, 1.0), (0, 1.0), (1, 1.0), (2, 0.5)]
    assert anyio.current_time() - start == 2.5


async def test_time_waiting_for_expected_messages_does_not_count_as_idle() -> None:
    broker = MemoryBroker(expecting=True)
    source = Source(broker, idle_exit=1.5, wait=1.0)

    async def stop_expecting() -> None:
        await anyio.sleep(3.5)
        broker.expecting = False

    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_expecting)
        assert await source.collect() == []
    assert anyio.current_time() - start == 4.5  # idle counted from the last empty read while expecting (t=3)


async def test_a_failure_of_the_session_ends_the_run_with_its_own_type() -> None:
    class Gone(Exception):
        pass

    broker = MemoryBroker(failure=Gone("acks could not be sent"))
    broker.fill(["a"], ["b"])
    got: list[Any] = []
    with pytest.raises(Gone, match="acks could not be sent"):
        async with Source(broker, idle_exit=None).stream() as items:
            async for m in items:
                got.append(m.data)
    assert got == ["a"]  # the failure comes before the next read


async def test_the_messages_handed_out_are_held_until_settled() -> None:
    broker = MemoryBroker()
    broker.fill(["a", "b"])
    source = Source(broker)
    async with source.stream() as items:
        first = await items.__anext__()
        session = source.session
        assert session is not None and list(session.held) == ["a"]
        assert first.token._tracker is session
        await first.ack()
        assert session.held == {}
        second = await items.__anext__()
        assert list(session.held) == ["b"] and second.data == "b"
        await second.ack()


async def test_a_redelivered_message_is_handed_out_alone() -> None:
    """A suspect waits until everything before it is settled, and nothing follows it until it is settled."""
    broker = MemoryBroker()
    broker.batches.append([broker.message("a"), broker.message("s", suspect=True), broker.message("b")])
    source = Source(broker, isolate_timeout=10.0)
    handed: list[tuple[str, float]] = []

    @segment
    async def settle_later(items: AsyncIterator[Message[Any]]) -> AsyncIterator[Message[Any]]:
        async with anyio.create_task_group() as tg:
            async for m in items:
                handed.append((m.data, anyio.current_time()))

                async def settle(m: Message[Any] = m) -> None:
                    await anyio.sleep(2)
                    await m.ack()

                tg.start_soon(settle)
        for _ in ():
            yield _

    start = anyio.current_time()
    await (source | settle_later()).collect()
    assert [(x, t - start) for x, t in handed] == [("a", 0), ("s", 2), ("b", 4)]
    assert source.stats.isolated == 1


async def test_a_suspect_waits_at_most_isolate_timeout() -> None:
    broker = MemoryBroker()
    broker.batches.append([broker.message("a"), broker.message("s", suspect=True), broker.message("b")])
    source = Source(broker, isolate_timeout=3.0)
    times: list[tuple[str, float]] = []
    start = anyio.current_time()
    async with source.stream() as items:
        async for m in items:  # never settled
            times.append((m.data, anyio.current_time() - start))
    assert times == [("a", 0), ("s", 3), ("b", 6)]


async def test_stop_hands_back_the_rest_of_the_batch_and_ends_the_stream() -> None:
    broker = MemoryBroker()
    broker.fill(["a", "b", "c"], ["d"])
    source = Source(broker, idle_exit=None)
    got: list[Any] = []
    async with source.stream() as items:
        async for m in items:
            got.append(m.data)
            await m.ack()
            if m.data == "a":
                source.stop()
    assert got == ["a"]
    assert broker.log == ["open", ("ack", "a"), "retire", "retire", ("hand back", ["b", "c"]),
                          ("closing", 0.0), ("closed", 0.0)]
    assert source.stopping is True
    source.idle_exit = 0.5
    assert data(await source.collect()) == ["d"]  # a new run reads again


async def test_stop_before_the_run_only_marks_it() -> None:
    source = Source(MemoryBroker())
    source.stop()
    assert source.stopping is True and source._session is None


async def test_outside_a_run_the_source_closes_its_own_session() -> None:
    broker = MemoryBroker()
    broker.fill(["a"])
    source = Source(broker, idle_exit=None)
    gen = source.generate()
    assert (await gen.__anext__()).data == "a"
    await gen.aclose()
    assert broker.log[-2:] == [("closing", 0.0), ("closed", 0.0)]
    assert source._session is None


async def test_in_a_run_the_session_outlives_the_source_until_every_stage_closed() -> None:
    """An acknowledgement sent by a later stage after the source ended still reaches an open session."""
    broker = MemoryBroker()
    broker.fill(["a"])

    @segment
    async def ack_after_the_source_ended(items: AsyncIterator[Message[Any]]) -> AsyncIterator[Any]:
        held = [m async for m in items]
        broker.log.append("source ended")
        for m in held:
            await m.ack()
            yield m.data

    assert await (Source(broker) | ack_after_the_source_ended()).collect() == ["a"]
    assert broker.log.index(("ack", "a")) < broker.log.index(("closing", 0.5))


async def test_a_run_task_that_starts_after_the_source_closed_the_session_leaves_it_alone() -> None:
    """The run's task and the source's end each offer to close the session; only the first does."""
    broker = MemoryBroker()
    closer = _Closer()
    assert closer.take() is True and closer.take() is False
    taken = _Closer()
    taken.take()  # the source ended first and closed the session itself
    with anyio.fail_after(1):
        await _keep_session(Session(broker), "mem", taken)
    assert broker.log == []


async def test_a_close_that_hangs_is_cut_after_close_timeout_and_said(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    broker = MemoryBroker(close_takes=60.0)
    source = Source(broker, idle_exit=0.0)
    start = anyio.current_time()
    assert await source.collect() == []
    assert anyio.current_time() - start == CLOSE_TIMEOUT == 5.0
    assert ("closed", pytest.approx(60.0)) not in broker.log
    assert ("mem: closing the session: cut short after 5 s; what it did not finish is left to the broker "
            "(unacknowledged messages are delivered again, leases lapse after lease_ttl)") in caplog.text


async def test_a_close_runs_to_its_end_even_when_the_run_is_cancelled() -> None:
    broker = MemoryBroker(close_takes=2.0)
    broker.fill(["a"])
    source = Source(broker, idle_exit=None)
    with anyio.move_on_after(1):
        async with source.stream() as items:
            async for _ in items:
                await anyio.sleep_forever()
    assert broker.log[-2:] == [("closing", 1.0), ("closed", 3.0)]


def test_a_source_needs_a_batch_of_at_least_one() -> None:
    with pytest.raises(ValueError, match=r"^batch must be at least 1$"):
        Source(MemoryBroker(), batch=0)
    assert Source(MemoryBroker(), batch=1).batch == 1


# -- the sink --------------------------------------------------------------------------------------------------


async def test_the_sink_writes_in_batches_and_yields_each_item_once_written() -> None:
    broker = MemoryBroker()
    sink = Sink(broker, batch=2)

    @segment
    async def note(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            broker.log.append(("yielded", x if not isinstance(x, Message) else x.data))
            yield x

    message = broker.message("m")
    out = await (given([1, message, 3]) | sink | note()).collect()
    assert out == [1, message, 3]
    writes = [e for e in broker.log if e[0] in ("write", "yielded")]
    assert writes[0] == ("write", ["<1>", "<m>"], None)  # a message's payload is written
    assert writes.index(("yielded", 1)) > 0
    assert ("write", ["<3>"], None) in writes
    assert writes.index(("write", ["<3>"], None)) < writes.index(("yielded", 3))
    assert (sink.stats.written, sink.stats.write_batches) == (3, 2)
    assert broker.log[0] == "writer opened" and broker.log[-1] == "writer closed"


async def test_a_partitioned_sink_writes_each_payload_with_its_keys_partition() -> None:
    broker = MemoryBroker()
    items = [{"k": "a"}, broker.message({"k": "b"}), {"k": "c"}]
    await (given(items) | Sink(broker, batch=3, key="k", partitions=4)).collect()
    (write,) = [e for e in broker.log if e[0] == "write"]
    assert write[2] == [partition_for(k, 4) for k in "abc"]


async def test_an_error_upstream_of_the_sink_comes_after_what_was_written_and_the_writer_is_closed() -> None:
    broker = MemoryBroker()

    @source
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("upstream")

    got: list[Any] = []
    with pytest.raises(ValueError, match="upstream"):
        async with (failing() | Sink(broker, batch=1)).stream() as items:
            async for x in items:
                got.append(x)
    assert got == [1, 2]
    assert broker.log[-1] == "writer closed"


def test_the_sink_checks_its_arguments() -> None:
    broker = MemoryBroker()
    with pytest.raises(ValueError, match=r"^batch must be at least 1$"):
        Sink(broker, batch=0)
    with pytest.raises(ValueError, match=r"^key= and partitions= go together: the key chooses one of the partitions$"):
        Sink(broker, key="k")
    with pytest.raises(ValueError, match="go together"):
        Sink(broker, partitions=2)
    with pytest.raises(ValueError, match="partitions"):
        Sink(broker, key="k", partitions=0)
    assert Sink(broker, batch=1).partitions_of([{"k": 1}]) is None


# -- the stage classes, the names and the closes ---------------------------------------------------------------


def test_a_missing_client_library_names_the_extra_to_install() -> None:
    with pytest.raises(MissingClient) as raised:
        import_client("talkpipe_async_no_such_client", "kafka")
    assert str(raised.value) == ("the kafka connector needs the 'talkpipe_async_no_such_client' package: "
                                 'pip install "talkpipe-async[kafka]"')
    assert isinstance(raised.value.__cause__, ImportError)


async def test_the_stage_classes_default_to_the_strict_policies() -> None:
    """``Ack()`` refuses an item without a message and yields messages; ``MapData(f)`` lets the error end the run."""
    broker = MemoryBroker()
    message = broker.message("m")
    assert await (given([message]) | Ack()).collect() == [message]
    with pytest.raises(TypeError) as raised:
        await (given([1]) | Ack()).collect()
    assert str(raised.value).splitlines()[0] == "ack: item carries no Message to acknowledge: 1"
    with pytest.raises(ZeroDivisionError):
        await (given([broker.message(0)]) | MapData(halve)).collect()


def test_the_broker_stages_refuse_another_loop_naming_the_stage_and_the_clients() -> None:
    async def read() -> None:
        await Source(MemoryBroker()).collect()

    async def write() -> None:
        await (given([1]) | Sink(MemoryBroker())).collect()

    for run, label in ((read, "mem"), (write, "mem-sink")):
        with pytest.raises(BackendNotSupported) as raised:
            anyio.run(run, backend="trio")
        first_line = str(raised.value).splitlines()[0]
        assert first_line.startswith(f"{label}: the redis and nats clients (asyncio libraries) can only be awaited")


async def test_each_suspect_is_counted() -> None:
    broker = MemoryBroker()
    broker.batches.append([broker.message(x, suspect=True) for x in "st"])
    source = Source(broker, isolate_timeout=1.0)
    assert data(await source.collect()) == ["s", "t"]
    assert source.stats.isolated == 2


async def test_the_session_holds_each_token_handed_out_by_its_id() -> None:
    broker = MemoryBroker()
    broker.fill(["a"])
    source = Source(broker)
    async with source.stream() as items:
        first = await items.__anext__()
        assert source.session is not None and source.session.held == {"a": first.token}
        await first.ack()


async def test_stop_hands_back_only_what_was_never_handed_out() -> None:
    """A message downstream and not yet settled stays with its stage; the rest of the batch goes back."""
    broker = MemoryBroker()
    broker.fill(["a", "b", "c"])
    source = Source(broker, idle_exit=None)
    async with source.stream() as items:
        first = await items.__anext__()
        source.stop()
        assert [m async for m in items] == []
        await first.ack()
    assert ("hand back", ["b", "c"]) in broker.log


async def test_the_read_loop_tells_the_session_when_the_stream_ends_idle() -> None:
    broker = MemoryBroker()
    assert await Source(broker, idle_exit=1.0).collect() == []
    assert broker.log == ["open", "retire", ("closing", 1.0), ("closed", 1.0)]
    assert Source(broker).stopping is False


async def test_outside_a_run_the_close_is_shielded_from_the_callers_cancellation() -> None:
    broker = MemoryBroker(close_takes=2.0)
    broker.fill(["a"])
    gen = Source(broker, idle_exit=None).generate()
    assert (await gen.__anext__()).data == "a"
    with anyio.CancelScope() as scope:
        scope.cancel()
        await gen.aclose()
    assert broker.log[-2:] == [("closing", 0.0), ("closed", 2.0)]


async def test_each_cut_close_names_what_it_cut(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    broker = MemoryBroker(close_takes=60.0, hand_back_takes=60.0)
    broker.fill(["a", "b"])
    source = Source(broker, idle_exit=None)
    gen = source.generate()  # outside a run: the source closes its own session
    assert (await gen.__anext__()).data == "a"
    source.stop()
    with pytest.raises(StopAsyncIteration):
        await gen.__anext__()
    await (given([1]) | Sink(broker)).collect()
    cut = [r.getMessage().split(": cut short")[0] for r in caplog.records]
    assert cut == ["mem: handing back unread messages", "mem: closing the session", "mem-sink: closing the writer"]


async def test_the_runs_tasks_are_named_after_the_stage() -> None:
    """In a task dump, and in the error a failing task ends the run with."""
    broker = MemoryBroker()
    broker.fill(["a"])
    names: set[str] = set()

    @segment
    async def look(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            names.update(t.get_name() for t in asyncio.all_tasks())
            yield x

    await (Source(broker) | Sink(broker) | look()).collect()
    assert {"mem session", "mem-sink feeder"} <= names
    failing = MemoryBroker(background_error=RuntimeError("lost"))
    with pytest.raises(RuntimeError, match="lost") as raised:
        await Source(failing, idle_exit=None).collect()
    context = error_context(raised.value)
    assert context is not None and context.segment == "mem session"
