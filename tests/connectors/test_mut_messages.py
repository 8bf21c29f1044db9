"""A broker message, its acknowledgement token and the connectors' counters (``talkpipe_async.connectors._messages``).

Pinned without a broker, through a token that records what it is asked: the counters start at zero, are all in
``as_dict()`` in their order, the deprecated ``naked`` reads and writes ``nacked`` with a warning; a token settles
once, and its session stops holding it (the last one settled wakes a session waiting to drain); a ``Message``
reads its id, deliveries and settled state from its token, hands every settlement to it, and ``with_data`` keeps
the token.
"""

from __future__ import annotations

import warnings
from typing import Any

import anyio
import pytest

from talkpipe_async.connectors import AckToken, ConnectorStats, Message
from talkpipe_async.connectors._base import BrokerSession
from tests.helpers.wait import until

pytestmark = pytest.mark.anyio

COUNTERS = ["delivered", "redelivered", "acked", "nacked", "dead_lettered", "malformed", "reads", "claims", "written",
            "write_batches", "outages", "isolated", "handed_back", "rewritten"]


class Token(AckToken):
    """Records each settlement asked of it, and settles like the adapters do (the first one wins)."""

    __slots__ = ("asked",)

    def __init__(self, id: str, deliveries: int = 1, suspect: bool = False) -> None:
        super().__init__(id, deliveries, suspect)
        self.asked: list[Any] = []

    async def ack(self) -> None:
        self.asked.append("ack")
        self._settle()

    async def nak(self, delay: float | None = None) -> None:
        self.asked.append(("nak", delay))
        self._settle()

    async def term(self, reason: str) -> None:
        self.asked.append(("term", reason))
        self._settle()

    async def touch(self) -> None:
        self.asked.append("touch")


class Session(BrokerSession):
    async def read(self, count: int, wait: float) -> list[Message[Any]]:
        return []

    async def hand_back(self, tokens: list[AckToken]) -> None:  # pragma: no cover - not used here
        return

    async def aclose(self) -> None:  # pragma: no cover - not used here
        return


def test_the_counters_start_at_zero_and_as_dict_lists_them_all_in_order() -> None:
    stats = ConnectorStats()
    assert stats.as_dict() == dict.fromkeys(COUNTERS, 0)
    assert list(stats.as_dict()) == COUNTERS
    stats.acked += 3
    stats.rewritten = 2
    assert stats.as_dict()["acked"] == 3 and stats.as_dict()["rewritten"] == 2
    assert ConnectorStats(delivered=5).delivered == 5


def test_naked_is_a_deprecated_spelling_of_nacked() -> None:
    stats = ConnectorStats(nacked=4)
    with pytest.warns(DeprecationWarning, match=r"^ConnectorStats\.naked is deprecated: use ConnectorStats\.nacked$"):
        assert stats.naked == 4
    with pytest.warns(DeprecationWarning, match=r"^ConnectorStats\.naked is deprecated: use ConnectorStats\.nacked$"):
        stats.naked = 9
    assert stats.nacked == 9 and "naked" not in stats.as_dict()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats.naked  # noqa: B018 - the warning points at the line that read it
        stats.naked = 1
    assert [w.filename for w in caught] == [__file__, __file__]


def test_a_new_token_is_unsettled_and_keeps_what_it_was_given() -> None:
    token = Token("1-0", 3, suspect=True)
    assert (token.id, token.deliveries, token.settled, token.suspect, token._tracker) == ("1-0", 3, False, True, None)
    assert Token("2-0", 1).suspect is False


class Bare(AckToken):
    """A token that keeps ``AckToken``'s own constructor."""

    __slots__ = ()

    async def ack(self) -> None:  # pragma: no cover - not used here
        self._settle()

    async def nak(self, delay: float | None = None) -> None:  # pragma: no cover - not used here
        self._settle()

    async def term(self, reason: str) -> None:  # pragma: no cover - not used here
        self._settle()

    async def touch(self) -> None:  # pragma: no cover - not used here
        return


def test_a_token_is_not_suspect_unless_told() -> None:
    assert Bare("2-0", 1).suspect is False
    assert Bare("2-0", 1, True).suspect is True


def test_two_deliveries_of_one_message_in_a_session_both_settle() -> None:
    """The broker may deliver a message again while the first delivery is still held (its ack wait lapsed): the
    second token takes the id's place in the session; settling the first, then the second, both work."""
    session = Session()
    first, again = Token("5-0", 1), Token("5-0", 2)
    session.track(first)
    session.track(again)
    assert first._settle() and session.held == {}
    assert again._settle() and again.settled and session.held == {}


def test_settling_happens_once() -> None:
    token = Token("1-0")
    assert token._settle() is True and token.settled
    assert token._settle() is False and token.settled


async def test_a_settled_token_leaves_its_session_and_the_last_one_wakes_a_drain() -> None:
    """A session holds the tokens handed downstream; settling one removes it (only it), and when the last one goes
    a session waiting to drain wakes at once, not at its limit."""
    session = Session()
    a, b = Token("a"), Token("b")
    session.track(a)
    session.track(b)
    session.held["other"] = Token("other")
    assert a._settle()
    assert list(session.held) == ["b", "other"]
    del session.held["other"]
    finished: list[bool] = []

    async def drain() -> None:
        finished.append(await session.wait_drained(60.0))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await until(lambda: session._drained is not None)
            assert b._settle()
    assert finished == [True] and session.held == {}
    assert not b._settle()  # settled already: the session is not touched again


def test_settling_a_token_no_session_waits_on_does_not_fail() -> None:
    session = Session()
    token = Token("x")
    session.track(token)
    assert token._settle() and session.held == {} and session._drained is None


async def test_ack_nowait_acknowledges_by_default() -> None:
    token = Token("1-0")
    pending = token.ack_nowait()
    assert pending is not None
    await pending
    assert token.asked == ["ack"] and token.settled


async def test_a_message_reads_and_settles_through_its_token() -> None:
    token = Token("7-1", 2)
    message: Message[dict[str, int]] = Message({"n": 1}, token)
    assert (message.data, message.token, message.id, message.deliveries, message.settled) == (
        {"n": 1}, token, "7-1", 2, False)
    assert repr(message) == "Message(id='7-1', deliveries=2, data={'n': 1})"
    await message.touch()
    await message.nak(1.5)
    assert message.settled
    await message.ack()
    await message.term("poison")
    assert token.asked == ["touch", ("nak", 1.5), "ack", ("term", "poison")]

    other = Token("8")
    await Message(1, other).nak()
    assert other.asked == [("nak", None)]


def test_with_data_carries_the_same_token() -> None:
    token = Token("3")
    message = Message("raw", token)
    copy = message.with_data({"parsed": True})
    assert copy is not message and copy.token is token and copy.data == {"parsed": True}
    assert message.data == "raw" and copy.id == "3"
