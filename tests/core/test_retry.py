"""Retry schedule, budget and loop of ``kairos_core.retry`` (DESIGN.md §5), without a network.

The loop is driven by scripted async attempt functions returning plain objects; waits are either
recorded (``asyncio.sleep`` replaced, so a schedule is checked exactly and instantly) or real and
a few milliseconds long. The budget runs on a fake clock.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kairos_core import retry as retry_module
from kairos_core.config.models import RetryConfig
from kairos_core.retry import (
    NO_RETRY,
    RetryBudget,
    RetryDecision,
    backoff_ms,
    jittered_backoff_ms,
    parse_retry_after,
    retry_after_first,
    retry_schedule,
)

RETRYABLE = frozenset({502, 503, 504})
FAST = RetryConfig(max_retries=3, initial_backoff_ms=0, max_backoff_ms=0, jitter=False)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(eq=False)
class Reply:
    """What one fake attempt produced (compared by identity, like a response object)."""

    status: int
    retry_after_s: float | None = None


def classify(reply: Reply) -> RetryDecision:
    if reply.status in RETRYABLE:
        return RetryDecision(True, f"status_{reply.status}", reply.retry_after_s)
    return NO_RETRY


@dataclass
class Script:
    """An attempt function that plays ``statuses`` back (repeating the last) and records calls."""

    statuses: list[int]
    retry_after_s: float | None = None
    made: list[Reply] = field(default_factory=list)
    discarded: list[Reply] = field(default_factory=list)
    started: list[float] = field(default_factory=list)

    async def attempt(self) -> Reply:
        self.started.append(time.monotonic())
        status = self.statuses[min(len(self.made), len(self.statuses) - 1)]
        reply = Reply(status, self.retry_after_s)
        self.made.append(reply)
        return reply

    async def discard(self, reply: Reply) -> None:
        self.discarded.append(reply)


async def run(
    first: Reply,
    script: Script,
    policy: RetryConfig = FAST,
    *,
    budget: RetryBudget | None = None,
    deadline: float | None = None,
    rng: random.Random | None = None,
    **callbacks: Any,
) -> Reply:
    return await retry_after_first(
        first,
        script.attempt,
        policy=policy,
        classify=classify,
        budget=budget or RetryBudget(),
        deadline=deadline,
        discard=script.discard,
        rng=rng or random.Random(0),
        **callbacks,
    )


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Every wait the retry loop asks for, in seconds; the waits themselves take no time."""
    recorded: list[float] = []
    real_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def record(seconds: float, *args: Any, **kwargs: Any) -> None:
        recorded.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", record)
    yield recorded


# --- the schedule -------------------------------------------------------------------------------


def test_backoff_doubles_from_initial_and_is_capped_at_max() -> None:
    policy = RetryConfig(
        max_retries=6, initial_backoff_ms=100, max_backoff_ms=1000, backoff_multiplier=2
    )

    assert [backoff_ms(policy, n) for n in range(6)] == [100, 200, 400, 800, 1000, 1000]


def test_default_schedule_is_kairos_rs_compatible() -> None:
    policy = RetryConfig(max_retries=8)

    assert [backoff_ms(policy, n) for n in range(8)] == [
        100,
        200,
        400,
        800,
        1600,
        3200,
        5000,
        5000,
    ]


def test_fractional_multiplier_grows_geometrically() -> None:
    policy = RetryConfig(initial_backoff_ms=100, max_backoff_ms=10_000, backoff_multiplier=1.5)

    assert [backoff_ms(policy, n) for n in range(4)] == pytest.approx([100, 150, 225, 337.5])


def test_multiplier_one_is_a_constant_backoff() -> None:
    policy = RetryConfig(initial_backoff_ms=250, max_backoff_ms=1000, backoff_multiplier=1)

    assert {backoff_ms(policy, n) for n in (0, 1, 2, 9, 10_000, 10**9)} == {250}


def test_zero_initial_backoff_means_immediate_retries() -> None:
    policy = RetryConfig(initial_backoff_ms=0, max_backoff_ms=1000)

    assert [backoff_ms(policy, n) for n in range(10)] == [0] * 10


def test_zero_initial_backoff_stays_zero_at_a_huge_retry_index() -> None:
    policy = RetryConfig(initial_backoff_ms=0, max_backoff_ms=1000)

    assert backoff_ms(policy, 10**6) == 0


@pytest.mark.parametrize("multiplier", [1.5, 2, 10, 1e6])
@pytest.mark.parametrize("retry_index", [64, 1023, 1024, 1025, 10**6, 10**18])
def test_huge_retry_index_is_capped_not_overflowed(multiplier: float, retry_index: int) -> None:
    policy = RetryConfig(initial_backoff_ms=100, max_backoff_ms=1000, backoff_multiplier=multiplier)

    assert backoff_ms(policy, retry_index) == 1000


def test_negative_retry_index_is_refused() -> None:
    with pytest.raises(ValueError, match="retry_index"):
        backoff_ms(RetryConfig(), -1)


def test_full_jitter_draws_within_zero_and_the_cap() -> None:
    policy = RetryConfig(max_retries=6, initial_backoff_ms=100, max_backoff_ms=1000)
    rng = random.Random(7)

    for n in range(6):
        cap = backoff_ms(policy, n)
        draws = [jittered_backoff_ms(policy, n, rng) for _ in range(500)]
        assert all(0 <= d <= cap for d in draws)
        # full jitter spreads over the whole range, not a band near the cap
        assert min(draws) < cap * 0.1
        assert max(draws) > cap * 0.9
        assert len(set(draws)) > 400


def test_jitter_is_reproducible_with_a_seeded_random() -> None:
    policy = RetryConfig(max_retries=6, initial_backoff_ms=100, max_backoff_ms=1000)

    def draws(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [jittered_backoff_ms(policy, n % 6, rng) for n in range(50)]

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)


def test_without_jitter_the_wait_is_exact_and_draws_nothing() -> None:
    policy = RetryConfig(max_retries=6, initial_backoff_ms=100, max_backoff_ms=1000, jitter=False)
    rng = random.Random(1)
    state = rng.getstate()

    waits = [jittered_backoff_ms(policy, n, rng) for n in range(6)]

    assert waits == [100, 200, 400, 800, 1000, 1000]
    assert rng.getstate() == state


def test_retry_schedule_numbers_attempts_from_two() -> None:
    policy = RetryConfig(max_retries=6, initial_backoff_ms=100, max_backoff_ms=1000, jitter=True)

    steps = retry_schedule(policy)

    assert [s.attempt for s in steps] == [2, 3, 4, 5, 6, 7]
    assert [s.wait_ms for s in steps] == [100, 200, 400, 800, 1000, 1000]
    assert all(s.jitter for s in steps)


def test_retry_schedule_is_empty_without_retries() -> None:
    assert retry_schedule(RetryConfig(max_retries=0)) == []


# --- the budget ---------------------------------------------------------------------------------


def acquire_all(budget: RetryBudget, percent: float = 20, floor: float = 3) -> int:
    """How many retries the budget grants right now, until the first refusal."""
    granted = 0
    while budget.try_acquire(percent, floor):
        granted += 1
        assert granted < 10_000, "the budget never refuses"
    return granted


def test_budget_allows_percent_of_requests_plus_the_floor_then_refuses() -> None:
    clock = FakeClock()
    budget = RetryBudget(window_s=10, clock=clock)
    for second in range(10):  # 100 requests spread over the 10 s window
        clock.now = 1000.0 + second
        for _ in range(10):
            budget.record_request()

    assert acquire_all(budget) == 20 + 30
    assert not budget.try_acquire(20, 3)
    assert not budget.try_acquire(20, 3)


def test_refused_retries_are_not_charged() -> None:
    clock = FakeClock()
    budget = RetryBudget(window_s=10, clock=clock)
    for _ in range(100):
        budget.record_request()
    assert acquire_all(budget) == 50

    for _ in range(5):  # 20 % of 5 more requests: exactly one more retry
        budget.record_request()

    assert acquire_all(budget) == 1


def test_budget_floor_alone_without_requests() -> None:
    budget = RetryBudget(window_s=10, clock=FakeClock())

    assert acquire_all(budget, percent=20, floor=3) == 30


def test_zero_budget_and_zero_floor_refuse_every_retry() -> None:
    budget = RetryBudget(window_s=10, clock=FakeClock())
    for _ in range(1000):
        budget.record_request()

    assert acquire_all(budget, percent=0, floor=0) == 0


def test_budget_window_slides_and_old_buckets_expire() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(window_s=10, clock=clock)
    for _ in range(100):
        budget.record_request()
    assert acquire_all(budget) == 50

    clock.now = 1009.5  # the spent retries are still in the window
    assert acquire_all(budget) == 0

    clock.now = 1010.5  # the requests and the retries of second 1000 have left the window
    assert acquire_all(budget) == 30


def test_budget_window_slides_bucket_by_bucket() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(window_s=10, clock=clock)
    for _ in range(50):
        budget.record_request()
    clock.now = 1005.0
    for _ in range(50):
        budget.record_request()

    clock.now = 1012.0  # only the 50 requests of second 1005 are still counted

    assert acquire_all(budget) == 10 + 30


# --- the loop -----------------------------------------------------------------------------------


async def test_not_retried_when_classify_says_no(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tenacity(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tenacity entered for an outcome that is not retried")

    monkeypatch.setattr(retry_module, "AsyncRetrying", no_tenacity)
    for status in (200, 404, 500):
        first = Reply(status)
        script = Script([503])

        assert await run(first, script) is first
        assert script.made == []
        assert script.discarded == []


async def test_stops_at_max_retries_and_returns_the_last_outcome_as_it_came() -> None:
    first = Reply(503)
    script = Script([503])
    reasons: list[str] = []

    result = await run(first, script, on_retry=lambda reason, wait_s: reasons.append(reason))

    assert len(script.made) == FAST.max_retries  # attempt 1 is ``first``, never re-run
    assert result is script.made[-1]
    assert script.discarded == [first, *script.made[:-1]]
    assert reasons == ["status_503"] * FAST.max_retries


async def test_zero_max_retries_returns_the_first_outcome() -> None:
    first = Reply(503)
    script = Script([200])

    result = await run(first, script, FAST.model_copy(update={"max_retries": 0}))

    assert result is first
    assert script.made == []
    assert script.discarded == []


async def test_stops_at_the_first_outcome_that_is_not_retryable() -> None:
    first = Reply(502)
    script = Script([504, 200, 503])

    result = await run(first, script)

    assert [r.status for r in script.made] == [504, 200]
    assert result is script.made[-1]
    assert script.discarded == [first, script.made[0]]


async def test_a_non_retryable_failure_is_returned_as_it_came() -> None:
    first = Reply(503)
    script = Script([500])

    result = await run(first, script)

    assert result is script.made[0]
    assert result.status == 500
    assert script.discarded == [first]


async def test_stops_when_the_budget_refuses() -> None:
    exhausted: list[bool] = []
    budget = RetryBudget(window_s=10, clock=FakeClock())
    policy = FAST.model_copy(
        update={"max_retries": 5, "budget_percent": 0, "min_retries_per_second": 0.2}
    )
    first = Reply(503)
    script = Script([503])

    result = await run(
        first,
        script,
        policy,
        budget=budget,
        on_budget_exhausted=lambda: exhausted.append(True),
    )

    assert len(script.made) == 2  # floor: 0.2/s × 10 s
    assert result is script.made[-1]
    assert script.discarded == [first, script.made[0]]
    assert exhausted == [True]


async def test_only_retries_actually_made_are_charged_to_the_budget() -> None:
    budget = RetryBudget(window_s=10, clock=FakeClock())
    policy = FAST.model_copy(update={"budget_percent": 0, "min_retries_per_second": 0.5})

    await run(Reply(503), Script([503]), policy, budget=budget)  # 3 retries, then max_retries
    await run(Reply(200), Script([503]), policy, budget=budget)  # not retryable: none
    await run(Reply(503), Script([200]), policy, budget=budget)  # 1 retry, which succeeds

    assert acquire_all(budget, percent=0, floor=0.5) == 5 - 4


async def test_waits_follow_the_schedule_without_jitter(sleeps: list[float]) -> None:
    policy = RetryConfig(max_retries=6, initial_backoff_ms=100, max_backoff_ms=1000, jitter=False)

    await run(Reply(503), Script([503]), policy)

    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


async def test_jittered_waits_come_from_the_given_random(sleeps: list[float]) -> None:
    policy = RetryConfig(max_retries=6, initial_backoff_ms=100, max_backoff_ms=1000)

    await run(Reply(503), Script([503]), policy, rng=random.Random(99))

    expected_rng = random.Random(99)
    expected = [jittered_backoff_ms(policy, n, expected_rng) / 1000 for n in range(6)]
    assert sleeps == pytest.approx(expected)
    assert all(
        0 <= s <= cap / 1000
        for s, cap in zip(sleeps, [100, 200, 400, 800, 1000, 1000], strict=True)
    )


async def test_upstream_retry_after_replaces_the_computed_wait(sleeps: list[float]) -> None:
    policy = RetryConfig(max_retries=2, initial_backoff_ms=100, max_backoff_ms=10_000)
    first = Reply(503, retry_after_s=7.5)
    script = Script([503, 503], retry_after_s=None)

    await run(first, script, policy, rng=random.Random(3))

    assert sleeps[0] == 7.5  # within max_backoff_ms: the upstream's word is honoured
    assert 0 <= sleeps[1] <= 0.2


async def test_retry_after_beyond_max_backoff_returns_the_answer_at_once(
    sleeps: list[float],
) -> None:
    policy = RetryConfig(max_retries=2, initial_backoff_ms=100, max_backoff_ms=1000)
    first = Reply(503, retry_after_s=3600)
    script = Script([200])

    outcome = await run(first, script, policy, rng=random.Random(3))

    assert outcome is first  # "come back in an hour" goes back to the client as it came
    assert sleeps == []
    assert script.started == []


async def test_retry_after_is_really_waited() -> None:
    first = Reply(503, retry_after_s=0.25)
    script = Script([200])
    started = time.monotonic()

    policy = RetryConfig(max_retries=1, initial_backoff_ms=0, max_backoff_ms=1000)
    await run(first, script, policy)

    assert script.started[0] - started >= 0.24


async def test_deadline_returns_the_last_outcome_instead_of_sleeping_past_it() -> None:
    policy = RetryConfig(max_retries=5, initial_backoff_ms=100, max_backoff_ms=1000, jitter=False)
    first = Reply(503)
    script = Script([503])
    started = time.monotonic()
    deadline = started + 0.25

    result = await run(first, script, policy, deadline=deadline)

    elapsed = time.monotonic() - started
    # retry 1 waits 0.1 s; retry 2 would wait 0.2 s more and pass the deadline
    assert len(script.made) == 1
    assert result is script.made[0]
    assert script.discarded == [first]
    assert elapsed < 0.25
    assert all(t < deadline for t in script.started)


async def test_deadline_already_passed_means_no_retry() -> None:
    first = Reply(503)
    script = Script([200])

    result = await run(first, script, deadline=time.monotonic() - 1)

    assert result is first
    assert script.made == []


async def test_retry_after_beyond_the_deadline_is_not_waited() -> None:
    first = Reply(503, retry_after_s=5)
    script = Script([200])
    started = time.monotonic()

    result = await run(first, script, deadline=started + 0.3)

    assert result is first
    assert script.made == []
    assert time.monotonic() - started < 0.1


# --- Retry-After --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("3600", 3600.0)]
)
def test_retry_after_delay_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date_is_seconds_from_now() -> None:
    when = "Wed, 21 Oct 2015 07:28:00 GMT"
    at = 1445412480.0  # that instant

    assert parse_retry_after(when, now=at - 30) == pytest.approx(30.0)
    assert parse_retry_after(when, now=at) == 0.0


def test_retry_after_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-1", "1.5", "12abc", "abc 12", "Wed, 99 Foo 2015", "0x10"]
)
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("value", ["²", "1²", "³"])
def test_retry_after_unicode_digits_are_garbage(value: str) -> None:
    assert parse_retry_after(value) is None
