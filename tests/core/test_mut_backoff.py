"""The one backoff policy every retrying stage shares (``Backoff``) and its retry rule (``Retries``).

Pinned here: each option's bound (the smallest allowed value works, one step past it is refused with a message
naming the option), the defaults, the exact waits without jitter (growth, the cap, the first wait replaced by a
server's ``retry``, no overflow however many failures), where each jitter mode draws from (the random source the
caller hands in, and its exact range), how many waits ``max_attempts`` allows, and the rule that a connection
counts as a success only once it delivered data and stayed up ``healthy_after`` seconds (virtual time).
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

from talkpipe_async import Backoff
from talkpipe_async._backoff import Retries
from talkpipe_async.testing import virtual_backend

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Each test on a virtual clock: waits are exact and take no real time."""
    return virtual_backend(request.param)


class Draws(random.Random):
    """A random source that records each range asked for and answers a fixed fraction of it."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return a + (b - a) * self.fraction


# ---------------------------------------------------------------- options


def test_the_defaults() -> None:
    b = Backoff()
    assert (b.initial, b.maximum, b.multiplier, b.jitter, b.max_attempts, b.exact_first, b.healthy_after) == (
        0.5, 30.0, 2.0, "full", None, False, 10.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1 (or None)"),
        ({"jitter": "half"}, "unknown jitter 'half'"),
        ({"initial": -0.001}, "initial and maximum must be >= 0 and multiplier >= 1"),
        ({"maximum": -0.001}, "initial and maximum must be >= 0 and multiplier >= 1"),
        ({"multiplier": 0.999}, "initial and maximum must be >= 0 and multiplier >= 1"),
        ({"healthy_after": -0.001}, "healthy_after must be >= 0"),
    ],
)
def test_each_option_past_its_bound_is_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Backoff(**options)
    assert str(info.value) == message


def test_each_option_at_its_bound_is_accepted() -> None:
    b = Backoff(initial=0, maximum=0, multiplier=1, max_attempts=1, healthy_after=0, jitter="none")
    assert b.delay(0) == 0 and list(b.delays()) == []
    for jitter in ("full", "equal", "none", True, False):
        assert Backoff(jitter=jitter).jitter == jitter


def test_true_and_false_name_a_jitter_mode() -> None:
    assert [Backoff(jitter=j).mode for j in (True, False, "full", "equal", "none")] == [
        "full", "none", "full", "equal", "none"]


# ---------------------------------------------------------------- waits


def test_waits_without_jitter_grow_by_the_multiplier_up_to_the_cap() -> None:
    b = Backoff(initial=0.5, multiplier=3, maximum=10, jitter="none")
    assert [b.delay(n) for n in range(5)] == [0.5, 1.5, 4.5, 10, 10]


def test_a_base_replaces_the_initial_wait_for_that_wait_only() -> None:
    b = Backoff(initial=0.5, multiplier=2, maximum=100, jitter="none")
    assert [b.delay(n, base=3) for n in range(3)] == [3, 6, 12]
    assert b.delay(0, base=0) == 0  # a base of 0 is a base, not "none given"
    assert b.delay(1) == 1.0


def test_any_number_of_failures_waits_the_cap_without_overflow() -> None:
    b = Backoff(initial=1, multiplier=10, maximum=60, jitter="none")
    assert b.delay(10_000) == 60
    assert Backoff(initial=0, multiplier=10, jitter="none").delay(10_000) == 0


def test_a_slow_multiplier_keeps_growing_until_the_cap() -> None:
    b = Backoff(initial=0.5, multiplier=1.05, maximum=30, jitter="none")
    assert b.delay(70) == pytest.approx(0.5 * 1.05**70)  # still growing after many failures
    assert b.delay(84) == 30


def test_exact_first_makes_only_the_first_wait_exact() -> None:
    draws = Draws(0.25)
    b = Backoff(initial=2, multiplier=2, maximum=100, jitter="full", exact_first=True)
    assert b.delay(0, rng=draws) == 2 and draws.asked == []
    assert b.delay(1, rng=draws) == 1 and draws.asked == [(0.0, 4)]
    assert Backoff(initial=2, jitter="full").delay(0, rng=Draws(0.25)) == 0.5  # not exact unless asked


def test_full_jitter_draws_from_zero_to_the_wait() -> None:
    draws = Draws(1.0)
    b = Backoff(initial=1, multiplier=2, maximum=100, jitter="full")
    assert [b.delay(n, rng=draws) for n in range(3)] == [1, 2, 4]
    assert draws.asked == [(0.0, 1), (0.0, 2), (0.0, 4)]
    assert b.delay(2, rng=Draws(0.0)) == 0


def test_equal_jitter_draws_from_half_the_wait_to_the_wait() -> None:
    b = Backoff(initial=1, multiplier=2, maximum=100, jitter="equal")
    low, high = Draws(0.0), Draws(1.0)
    assert [b.delay(n, rng=low) for n in range(3)] == [0.5, 1, 2]
    assert [b.delay(n, rng=high) for n in range(3)] == [1, 2, 4]
    assert low.asked == [(0.0, 0.5), (0.0, 1), (0.0, 2)]


def test_without_a_random_source_the_module_one_is_used() -> None:
    b = Backoff(initial=1, jitter="full")
    random.seed(7)
    first = [b.delay(0) for _ in range(3)]
    random.seed(7)
    assert [b.delay(0) for _ in range(3)] == first
    assert len(set(first)) == 3 and all(0 <= w <= 1 for w in first)


def test_max_attempts_allows_one_wait_fewer_than_tries() -> None:
    b = Backoff(initial=1, multiplier=2, maximum=100, jitter="none", max_attempts=4)
    assert list(b.delays()) == [1, 2, 4]
    assert [b.exhausted(n) for n in range(6)] == [False, False, False, False, True, True]
    assert not Backoff(max_attempts=None).exhausted(10**9)
    unbounded = Backoff(initial=1, multiplier=1, jitter="none").delays()
    assert [next(unbounded) for _ in range(100)] == [1] * 100


def test_delays_use_the_random_source_handed_in() -> None:
    draws = Draws(0.5)
    b = Backoff(initial=1, multiplier=2, maximum=100, jitter="full", max_attempts=3)
    assert list(b.delays(rng=draws)) == [0.5, 1]


# ---------------------------------------------------------------- the retry rule


def plain(**options: Any) -> Backoff:
    return Backoff(initial=1, multiplier=2, maximum=100, jitter="none", **options)


async def test_each_failure_in_a_row_waits_longer_until_max_attempts() -> None:
    retries = Retries(plain(max_attempts=4))
    assert [retries.failed() for _ in range(5)] == [1, 2, 4, None, None]
    assert retries.failures == 5


async def test_a_connection_up_healthy_after_seconds_with_data_starts_the_count_again() -> None:
    retries = Retries(plain(max_attempts=3, healthy_after=5))
    assert retries.failed() == 1
    assert retries.failed() == 2
    retries.opened()
    retries.delivered()
    await anyio.sleep(5)
    assert retries.healthy
    assert retries.failed() == 1 and retries.failures == 1  # a fresh count: the first wait again


async def test_a_connection_that_drops_sooner_counts_as_a_failure() -> None:
    retries = Retries(plain(max_attempts=3, healthy_after=5))
    retries.failed()
    retries.opened()
    retries.delivered()
    await anyio.sleep(4.9)
    assert not retries.healthy
    assert retries.failed() == 2 and retries.failures == 2
    retries.opened()
    retries.delivered()
    await anyio.sleep(4.9)
    assert retries.failed() is None  # a flapping peer uses up max_attempts too


async def test_a_connection_that_delivered_nothing_is_never_healthy() -> None:
    retries = Retries(plain(healthy_after=5))
    assert not retries.healthy  # never opened
    retries.failed()
    retries.opened()
    await anyio.sleep(60)
    assert not retries.healthy
    assert retries.failed() == 2


async def test_each_attempt_must_deliver_data_of_its_own() -> None:
    retries = Retries(plain(healthy_after=5))
    retries.opened()
    retries.delivered()
    retries.failed()
    retries.opened()  # a new attempt: the last one's data does not count
    await anyio.sleep(10)
    assert not retries.healthy
    retries.delivered()
    assert retries.healthy


async def test_data_without_an_open_attempt_is_not_a_healthy_connection() -> None:
    retries = Retries(plain(healthy_after=0))
    retries.delivered()
    assert not retries.healthy
    assert retries.failed() == 1


async def test_a_failure_ends_the_attempt() -> None:
    retries = Retries(plain(healthy_after=0))
    retries.opened()
    retries.delivered()
    assert retries.healthy
    retries.failed()
    assert not retries.healthy  # not opened again: no attempt is running
    retries.delivered()
    assert not retries.healthy


async def test_an_attempt_up_exactly_healthy_after_seconds_counts_even_when_the_clock_rounds() -> None:
    await anyio.sleep(0.7)
    retries = Retries(plain(healthy_after=0.1))
    retries.opened()
    retries.delivered()
    await anyio.sleep(0.1)  # 0.7 + 0.1 - 0.7 is a few ulps below 0.1 in floats
    assert retries.healthy


async def test_next_attempt_sleeps_the_wait_and_says_when_to_give_up() -> None:
    retries = Retries(plain(max_attempts=3))
    start = anyio.current_time()
    assert await retries.next_attempt() is True
    assert anyio.current_time() - start == pytest.approx(1)
    assert await retries.next_attempt(base=10) is True  # a server's retry: 10 x 2
    assert anyio.current_time() - start == pytest.approx(21)
    assert await retries.next_attempt() is False  # given up, without sleeping
    assert anyio.current_time() - start == pytest.approx(21)


async def test_a_server_wait_replaces_the_computed_one_and_still_counts() -> None:
    retries = Retries(plain(max_attempts=2))
    start = anyio.current_time()
    assert await retries.next_attempt(wait=7) is True
    assert anyio.current_time() - start == pytest.approx(7) and retries.failures == 1
    assert await retries.next_attempt(wait=7) is False


async def test_the_random_source_handed_to_retries_draws_its_waits() -> None:
    draws = Draws(0.5)
    retries = Retries(Backoff(initial=1, multiplier=2, maximum=100, jitter="full"), rng=draws)
    assert [retries.failed() for _ in range(3)] == [0.5, 1, 2]
    assert retries.rng is draws and draws.asked == [(0.0, 1), (0.0, 2), (0.0, 4)]
