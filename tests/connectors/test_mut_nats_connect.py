"""``connect_nats``: the bounded first connection, on asyncio's virtual clock, against fault-injecting listeners.

A listener that hangs up at once (a refused or crashing server) and one whose backlog is full (a connect that hangs
in the kernel), both raw sockets on 127.0.0.1 in the test's own loop; the loop's clock is virtual, so the attempts,
the pauses between them and the connect deadline are checked exactly.  The connected client's behaviour is tested
against a real nats-server in ``test_nats.py`` and ``test_mut_nats.py``.
"""

from __future__ import annotations

import itertools
import logging
import sys
from typing import Any

import anyio
import pytest

from talkpipe_async.connectors import BrokerUnavailable, MissingClient
from talkpipe_async.connectors.nats import connect_nats, nats_transient
from talkpipe_async.testing import virtual_backend
from tests.helpers import net

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> Any:
    """nats-py needs asyncio; its virtual clock makes every pause and deadline exact."""
    return virtual_backend("asyncio")


async def test_the_first_connection_is_tried_retries_plus_one_times_a_tenth_of_a_second_apart() -> None:
    accepted: list[float] = []
    async with net.hanging_up(accepted) as port:
        url = f"nats://127.0.0.1:{port}"
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable) as raised:
            await connect_nats(url, retries=2, connect_timeout=0.5)
    assert [b - a for a, b in itertools.pairwise(accepted)] == pytest.approx([0.1, 0.1], abs=1e-6)
    assert str(raised.value).startswith(f"nats at {url} is unreachable after 3 attempts: ")
    assert "INFO" in str(raised.value)  # what the client saw: no INFO line from the server


async def test_no_retries_means_one_attempt() -> None:
    """nats-py reads ``max_reconnect_attempts=0`` as "no limit": ``retries=0`` must still give up after one try."""
    accepted: list[float] = []
    async with net.hanging_up(accepted) as port:
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 1 attempts"):
            await connect_nats(f"nats://127.0.0.1:{port}", retries=0, connect_timeout=0.5)
    assert len(accepted) == 1


async def test_the_defaults_are_the_stages_documented_ones() -> None:
    """Four attempts (``retries=3``), each connect bounded by two seconds (``timeout=2.0``)."""
    accepted: list[float] = []
    async with net.hanging_up(accepted) as port:
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 4 attempts"):
            await connect_nats(f"nats://127.0.0.1:{port}")
    assert len(accepted) == 4
    with net.full_backlog() as port:
        start = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 1 attempts"):
            await connect_nats(f"nats://127.0.0.1:{port}", retries=0)
    assert anyio.current_time() - start == pytest.approx(2.0, abs=1e-6)


async def test_a_connect_that_hangs_in_the_kernel_is_cut_at_connect_timeout_each_time() -> None:
    with net.full_backlog() as port:
        start = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 2 attempts") as raised:
            await connect_nats(f"nats://127.0.0.1:{port}", retries=1, connect_timeout=0.5)
    assert anyio.current_time() - start == pytest.approx(0.5 + 0.1 + 0.5, abs=1e-6)
    assert str(raised.value).endswith(": TimeoutError()")  # the last error the client reported


async def test_without_the_client_library_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The nats package missing (``None`` in ``sys.modules`` makes its import fail): the error says what to install."""
    monkeypatch.setitem(sys.modules, "nats", None)
    expected = "the nats connector needs the 'nats' package: pip install \"talkpipe-async[nats]\""
    with pytest.raises(MissingClient) as connecting:
        await connect_nats("nats://127.0.0.1:1")
    with pytest.raises(MissingClient) as classifying:
        nats_transient()
    assert str(connecting.value) == str(classifying.value) == expected


async def test_a_users_error_callback_still_hears_each_failure(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[BaseException] = []

    async def mine(exc: BaseException) -> None:
        heard.append(exc)

    caplog.set_level(logging.DEBUG, logger="talkpipe_async.connectors")
    accepted: list[float] = []
    async with net.hanging_up(accepted) as port:
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 2 attempts"):
            await connect_nats(f"nats://127.0.0.1:{port}", retries=1, error_cb=mine)
    assert len(heard) == 2 and all(isinstance(e, Exception) for e in heard)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert [m for m in logged if m.startswith("nats client error: Error('nats: empty response")] == logged[-2:]


async def test_a_failure_before_any_attempt_is_named_too() -> None:
    """No server to try at all: no attempt reached the error callback, so the client's own error is named."""
    with anyio.fail_after(60), pytest.raises(BrokerUnavailable) as raised:
        await connect_nats([], retries=0)
    assert str(raised.value) == "nats at [] is unreachable after 1 attempts: NoServersError()"


async def open_stage(stage: str, url: str, **kw: Any) -> None:
    """Open the connection of a JetStream source or sink as a run does (each attempt fails here)."""
    from talkpipe_async.connectors import jetstream_messages, to_jetstream

    if stage == "source":
        await jetstream_messages("S", "d", servers=url, **kw)._open()
    else:
        await to_jetstream("s", servers=url, **kw)._open_writer()


@pytest.mark.parametrize("stage", ["source", "sink"])
async def test_the_stages_connect_within_their_own_timeout(stage: str) -> None:
    """``jetstream_messages`` and ``to_jetstream`` bound each connection attempt by their ``timeout`` (here not the
    client's default of 2 s)."""
    with net.full_backlog() as port:
        url = f"nats://127.0.0.1:{port}"
        start = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 1 attempts"):
            await open_stage(stage, url, retries=0, timeout=0.5)
    assert anyio.current_time() - start == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("stage", ["source", "sink"])
async def test_the_stages_try_their_first_connection_retries_plus_one_times(stage: str) -> None:
    accepted: list[float] = []
    async with net.hanging_up(accepted) as port:
        url = f"nats://127.0.0.1:{port}"
        with anyio.fail_after(60), pytest.raises(BrokerUnavailable, match="after 3 attempts"):
            await open_stage(stage, url, retries=2, timeout=0.5)
    assert len(accepted) == 3
