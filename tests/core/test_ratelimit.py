"""Rate-limit keys, token buckets and the limiter of ``kairos_core.ratelimit`` (DESIGN.md §3, §5).

Keys, windows and token buckets are pure (windows and buckets run on a fake clock). The limiter's
tests run twice, against this process's counters and against Redis (``kairos_core.redislimits``
on a real redis-server): the policies never know where their counters live, and the rules must
not either.
Window resets are real sleeps of about a second.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kairos_core.config.models import RateLimitConfig
from kairos_core.ratelimit import (
    LimitDecision,
    LimitKey,
    RateLimiter,
    TokenBuckets,
    Windows,
    capacity,
    describe,
    limit_keys,
    refill_per_second,
)
from kairos_core.redislimits import RedisLimits
from kairos_core.redislink import RedisLink
from tests.support.redisserver import RedisServer

IP = "198.51.100.7"
OTHER_IP = "198.51.100.8"
WINDOWS = ("FixedWindow", "SlidingWindow")


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    """The limiter with this process's counters, then with counters in a real Redis."""
    if request.param == "memory":
        yield RateLimiter()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    link = RedisLink(server.url, timeout_ms=1000)
    await link.start()
    yield RateLimiter(RedisLimits(link, "test"))
    await link.stop()


def policy(**fields: Any) -> RateLimitConfig:
    fields.setdefault("requests_per_window", 3)
    fields.setdefault("window_duration", 60)
    return RateLimitConfig(**fields)


def keys_for(
    limit: RateLimitConfig,
    *,
    route_id: str = "users",
    client_ip: str = IP,
    user: str | None = None,
    route_scoped: bool = False,
) -> tuple[LimitKey, ...]:
    return limit_keys(
        limit, route_id=route_id, client_ip=client_ip, user=user, route_scoped=route_scoped
    )


def header_map(decision: LimitDecision) -> dict[str, str]:
    headers = decision.headers()
    assert len({name for name, _ in headers}) == len(headers), headers
    return dict(headers)


# --- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "user", "suffix"),
    [
        ("PerIP", None, f"ip={IP}"),
        ("PerIP", "alice", f"ip={IP}"),
        ("PerUser", "alice", "user=alice"),
        ("PerUser", None, f"ip={IP}"),
        ("PerRoute", "alice", "route=users"),
        ("PerIPAndRoute", "alice", f"route=users:ip={IP}"),
        ("PerUserAndRoute", "alice", "route=users:user=alice"),
        ("PerUserAndRoute", None, f"route=users:ip={IP}"),
    ],
)
def test_key_of_each_strategy(strategy: str, user: str | None, suffix: str) -> None:
    keys = keys_for(policy(strategy=strategy), user=user)

    assert keys == (LimitKey(strategy, f"kairos_rl:global:{suffix}"),)


def test_route_scoped_keys_never_share_the_global_prefix() -> None:
    limit = policy(strategy="PerIP")

    (global_key,) = keys_for(limit, route_scoped=False)
    (route_key,) = keys_for(limit, route_scoped=True)

    assert global_key.key == f"kairos_rl:global:ip={IP}"
    assert route_key.key == f"kairos_rl:route=users:ip={IP}"


def test_key_prefix_comes_from_the_policy() -> None:
    (key,) = keys_for(policy(strategy="PerRoute", redis_key_prefix="edge"), route_scoped=True)

    assert key.key == "edge:route=users:route=users"


def test_per_route_keys_on_the_route_id_not_the_path() -> None:
    limit = policy(strategy="PerRoute")

    assert keys_for(limit, client_ip=IP) == keys_for(limit, client_ip=OTHER_IP)
    assert keys_for(limit, route_id="users") != keys_for(limit, route_id="orders")


def test_composite_gives_one_key_per_strategy_in_order() -> None:
    limit = policy(strategy={"Composite": ["PerIP", "PerRoute", "PerUserAndRoute"]})

    keys = keys_for(limit, user="alice")

    assert keys == (
        LimitKey("PerIP", f"kairos_rl:global:ip={IP}"),
        LimitKey("PerRoute", "kairos_rl:global:route=users"),
        LimitKey("PerUserAndRoute", "kairos_rl:global:route=users:user=alice"),
    )


def test_serde_tagged_spellings_give_the_same_keys() -> None:
    plain = policy(strategy={"Composite": ["PerIP", "PerRoute"]})
    tagged = policy(strategy={"Composite": [{"strategy": "PerIP"}, {"strategy": "PerRoute"}]})

    assert keys_for(tagged) == keys_for(plain)
    assert keys_for(policy(strategy={"PerIP": None})) == keys_for(policy(strategy="PerIP"))


def test_composite_parts_with_their_own_numbers_carry_their_sub_policy() -> None:
    limit = policy(
        requests_per_window=100,
        window_duration=60,
        window_type="SlidingWindow",
        strategy={
            "Composite": [
                {"strategy": "PerIP", "requests_per_window": 10, "window_duration": 1},
                "PerRoute",
                {"strategy": {"Composite": ["PerUser"]}, "window_type": "TokenBucket"},
            ]
        },
    )

    ip, route, user = keys_for(limit, user="alice")

    assert (ip.strategy, route.strategy, user.strategy) == ("PerIP", "PerRoute", "PerUser")
    assert ip.policy is not None and ip.policy.numbers == (10, 1, 0, "SlidingWindow")
    assert route.policy is None  # the block's own numbers
    assert user.policy is not None and user.policy.numbers == (100, 60, 0, "TokenBucket")
    assert ip.key == f"kairos_rl:global:ip={IP}"  # keys are named as before


def test_two_parts_on_one_key_with_other_numbers_are_two_counters() -> None:
    limit = policy(
        strategy={
            "Composite": [
                {"strategy": "PerIP", "requests_per_window": 2, "window_duration": 1},
                {"strategy": "PerIP", "requests_per_window": 50, "window_duration": 60},
                "PerIP",
                "PerUser",  # anonymous: the same key and numbers as the plain PerIP part
            ]
        }
    )

    keys = keys_for(limit)

    assert [k.key for k in keys] == [f"kairos_rl:global:ip={IP}"] * 3
    assert [k.policy.numbers if k.policy else None for k in keys] == [
        (2, 1, 0, "FixedWindow"),
        (50, 60, 0, "FixedWindow"),
        None,
    ]


@pytest.mark.parametrize("window", [*WINDOWS, "TokenBucket"])
async def test_each_key_is_charged_against_its_own_sub_policy(
    limiter: RateLimiter, window: str
) -> None:
    limit = policy(
        requests_per_window=10,
        window_type=window,
        strategy={
            "Composite": [
                {"strategy": "PerIP", "requests_per_window": 2},
                {"strategy": "PerRoute", "requests_per_window": 3},
            ]
        },
    )

    first = [await limiter.check(limit, keys_for(limit, client_ip=IP)) for _ in range(2)]
    other = [await limiter.check(limit, keys_for(limit, client_ip=OTHER_IP)) for _ in range(2)]
    again = await limiter.check(limit, keys_for(limit, client_ip=IP))

    assert [d.allowed for d in first] == [True, True]
    assert [d.allowed for d in other] == [True, False]  # PerRoute: 3 in all, not the block's 10
    assert other[1].limit == 3
    assert not again.allowed  # PerIP: 2, not the block's 10


def test_describe_shows_each_part_with_its_own_numbers() -> None:
    limit = policy(
        requests_per_window=100,
        window_duration=60,
        burst_allowance=20,
        window_type="SlidingWindow",
        strategy={
            "Composite": [
                {
                    "strategy": "PerIP",
                    "requests_per_window": 10,
                    "window_duration": 1,
                    "burst_allowance": 0,
                    "window_type": "FixedWindow",
                },
                "PerUser",
            ]
        },
    )

    assert describe(limit) == (
        "PerIP: 10 requests / 1 s, FixedWindow; "
        "PerUser: 100 requests / 60 s (+20 burst), SlidingWindow"
    )


def test_capacity_and_refill_rate() -> None:
    limit = policy(requests_per_window=10, window_duration=4, burst_allowance=5)

    assert capacity(limit) == 15
    assert refill_per_second(limit) == 2.5
    assert capacity(policy(requests_per_window=7)) == 7


def test_describe_is_one_line_for_humans() -> None:
    simple = policy(requests_per_window=100, window_duration=60, window_type="SlidingWindow")
    composite = policy(
        requests_per_window=10,
        window_duration=1,
        burst_allowance=20,
        window_type="TokenBucket",
        strategy={"Composite": ["PerIP", "PerRoute"]},
    )

    assert describe(simple) == "100 requests / 60 s, SlidingWindow, PerIP"
    assert describe(composite) == "10 requests / 1 s (+20 burst), TokenBucket, PerIP + PerRoute"


# --- headers ------------------------------------------------------------------------------------


def test_headers_of_an_allowed_request() -> None:
    headers = header_map(LimitDecision(True, limit=10, remaining=4, reset_s=12.2))

    assert headers == {"RateLimit-Limit": "10", "RateLimit-Remaining": "4", "RateLimit-Reset": "13"}


def test_headers_of_a_refused_request_add_retry_after() -> None:
    decision = LimitDecision(False, limit=10, remaining=-1, reset_s=0.0, retry_after_s=0.2)

    assert header_map(decision) == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "0",
        "Retry-After": "1",  # never 0: a client must wait a little
    }


# --- token buckets ------------------------------------------------------------------------------


def test_token_bucket_starts_full_and_refuses_when_empty() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(clock=clock)

    taken = [buckets.take("k", 3, 1.0) for _ in range(4)]

    assert [d.allowed for d in taken] == [True, True, True, False]
    assert [d.remaining for d in taken] == [2, 1, 0, 0]
    assert {d.limit for d in taken} == {3}
    refused = taken[-1]
    assert refused.retry_after_s == pytest.approx(1.0)  # time to the next token
    assert header_map(refused)["Retry-After"] == "1"
    assert refused.reset_s == pytest.approx(3.0)  # time until full


def test_token_bucket_refills_at_its_rate() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(clock=clock)
    for _ in range(2):
        assert buckets.take("k", 2, 2.0).allowed

    clock.now += 0.25
    early = buckets.take("k", 2, 2.0)
    assert not early.allowed
    assert early.retry_after_s == pytest.approx(0.25)

    clock.now += 0.25  # 0.5 s × 2 tokens/s: exactly one token
    assert buckets.take("k", 2, 2.0).allowed
    assert not buckets.take("k", 2, 2.0).allowed


def test_token_bucket_never_fills_above_capacity() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(clock=clock)
    buckets.take("k", 3, 1.0)

    clock.now += 1_000_000
    taken = [buckets.take("k", 3, 1.0).allowed for _ in range(5)]

    assert taken == [True, True, True, False, False]


def test_token_bucket_reset_is_time_until_full() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(clock=clock)

    first = buckets.take("k", 4, 0.5)

    assert first.reset_s == pytest.approx(2.0)
    assert header_map(first)["RateLimit-Reset"] == "2"


def test_token_buckets_are_per_key() -> None:
    buckets = TokenBuckets(clock=FakeClock())
    assert buckets.take("a", 1, 1.0).allowed
    assert not buckets.take("a", 1, 1.0).allowed

    assert buckets.take("b", 1, 1.0).allowed


def test_sweep_never_forgets_a_bucket_that_is_not_full() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(clock=clock)
    slow = (2, 2 / 60)  # 2 requests a minute
    assert buckets.take("slow", *slow).allowed
    assert buckets.take("slow", *slow).allowed

    clock.now += 2  # 0.07 of a token back
    for _ in range(TokenBuckets._SWEEP_EVERY):  # a busy fast policy triggers the sweep
        buckets.take("fast", 1_000_000, 1_000_000.0)

    assert not buckets.take("slow", *slow).allowed


# --- windows in memory ---------------------------------------------------------------------


def test_a_fixed_window_opens_at_the_first_request_and_resets_when_it_ends() -> None:
    clock = FakeClock()
    windows = Windows(clock=clock)
    assert [windows.fixed("k", 2, 10).allowed for _ in range(3)] == [True, True, False]
    clock.now += 9.5
    refused = windows.fixed("k", 2, 10)
    assert (refused.allowed, refused.remaining, refused.retry_after_s) == (False, 0, 0.5)
    clock.now += 0.5
    assert windows.fixed("k", 2, 10).allowed


def test_a_moving_window_admits_n_in_any_window_long_span() -> None:
    clock = FakeClock()
    windows = Windows(clock=clock)
    assert windows.moving("k", 2, 10).allowed  # t = 0
    clock.now += 6
    assert windows.moving("k", 2, 10).allowed  # t = 6
    clock.now += 3
    refused = windows.moving("k", 2, 10)  # t = 9: both still inside
    assert (refused.allowed, refused.retry_after_s) == (False, 1.0)
    clock.now += 1  # t = 10: the first has left, the second has not
    assert windows.moving("k", 2, 10).allowed
    assert not windows.moving("k", 2, 10).allowed


def test_windows_with_other_numbers_on_one_key_are_other_counters() -> None:
    windows = Windows(clock=FakeClock())
    assert windows.fixed("k", 1, 1).allowed
    assert windows.fixed("k", 1, 60).allowed
    assert not windows.fixed("k", 1, 1).allowed


def test_the_sweep_forgets_passed_windows_only_and_starts_no_thread() -> None:
    clock = FakeClock()
    windows = Windows(clock=clock)
    threads = threading.active_count()
    for n in range(1000):
        windows.fixed(f"short{n}", 1, 1)
        windows.moving(f"short{n}", 1, 1)
    windows.fixed("long", 1, 3600)
    windows.moving("long", 1, 3600)
    clock.now += Windows.SWEEP_EVERY_S
    windows.fixed("trigger", 1, 1)  # a check after the interval sweeps
    assert len(windows._fixed) == 2 and len(windows._moving) == 1  # "long" (and "trigger")
    assert not windows.fixed("long", 1, 3600).allowed
    assert not windows.moving("long", 1, 3600).allowed
    assert threading.active_count() == threads


# --- the limiter (this process, then Redis) ------------------------------------------------


async def check_many(
    limiter: RateLimiter, limit: RateLimitConfig, keys: tuple[LimitKey, ...], count: int
) -> list[LimitDecision]:
    return [await limiter.check(limit, keys) for _ in range(count)]


@pytest.mark.parametrize("window_type", [*WINDOWS, "TokenBucket"])
async def test_n_allowed_then_refused_with_headers(limiter: RateLimiter, window_type: str) -> None:
    limit = policy(requests_per_window=3, window_duration=60, window_type=window_type)
    keys = keys_for(limit)

    decisions = await check_many(limiter, limit, keys, 5)

    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [header_map(d)["RateLimit-Remaining"] for d in decisions] == ["2", "1", "0", "0", "0"]
    for decision in decisions:
        headers = header_map(decision)
        assert headers["RateLimit-Limit"] == "3"
        assert 0 <= int(headers["RateLimit-Reset"]) <= 60
        assert ("Retry-After" in headers) == (not decision.allowed)
    assert 1 <= int(header_map(decisions[-1])["Retry-After"]) <= 60


@pytest.mark.parametrize("window_type", [*WINDOWS, "TokenBucket"])
async def test_burst_allowance_adds_to_the_limit(limiter: RateLimiter, window_type: str) -> None:
    limit = policy(requests_per_window=3, burst_allowance=2, window_type=window_type)

    decisions = await check_many(limiter, limit, keys_for(limit), 6)

    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert {d.limit for d in decisions} == {5}


@pytest.mark.parametrize("window_type", WINDOWS)
async def test_window_reset_is_honoured(limiter: RateLimiter, window_type: str) -> None:
    limit = policy(requests_per_window=2, window_duration=1, window_type=window_type)
    keys = keys_for(limit)
    before = await check_many(limiter, limit, keys, 3)
    assert [d.allowed for d in before] == [True, True, False]
    assert header_map(before[-1])["Retry-After"] == "1"

    await asyncio.sleep(1.1)

    after = await check_many(limiter, limit, keys, 3)
    assert [d.allowed for d in after] == [True, True, False]
    assert after[0].remaining == 1


async def test_sliding_window_counts_any_window_long_span(limiter: RateLimiter) -> None:
    limit = policy(requests_per_window=2, window_duration=1, window_type="SlidingWindow")
    keys = keys_for(limit)
    assert (await limiter.check(limit, keys)).allowed  # t = 0
    await asyncio.sleep(0.5)
    assert (await limiter.check(limit, keys)).allowed  # t = 0.5
    refused = await limiter.check(limit, keys)
    assert not refused.allowed
    assert 0.3 <= refused.retry_after_s <= 0.55  # until the t = 0 hit leaves the window

    await asyncio.sleep(0.6)  # t = 1.1: only the t = 0 hit has left

    later = await check_many(limiter, limit, keys, 2)
    assert [d.allowed for d in later] == [True, False]


async def test_keys_have_separate_counters(limiter: RateLimiter) -> None:
    limit = policy(requests_per_window=1)

    assert (await limiter.check(limit, keys_for(limit, client_ip=IP))).allowed
    assert not (await limiter.check(limit, keys_for(limit, client_ip=IP))).allowed
    assert (await limiter.check(limit, keys_for(limit, client_ip=OTHER_IP))).allowed


async def test_route_override_never_shares_counters_with_the_global_policy(
    limiter: RateLimiter,
) -> None:
    limit = policy(requests_per_window=1)
    assert (await limiter.check(limit, keys_for(limit, route_scoped=False))).allowed
    assert not (await limiter.check(limit, keys_for(limit, route_scoped=False))).allowed

    assert (await limiter.check(limit, keys_for(limit, route_scoped=True))).allowed


@pytest.mark.parametrize("window_type", [*WINDOWS, "TokenBucket"])
async def test_composite_refuses_if_any_key_refuses(limiter: RateLimiter, window_type: str) -> None:
    limit = policy(
        requests_per_window=2,
        window_type=window_type,
        strategy={"Composite": ["PerIP", "PerRoute"]},
    )

    def keys(ip: str, route_id: str) -> tuple[LimitKey, ...]:
        return keys_for(limit, client_ip=ip, route_id=route_id)

    assert (await limiter.check(limit, keys(IP, "users"))).allowed
    assert (await limiter.check(limit, keys(OTHER_IP, "users"))).allowed
    # a fresh IP, but the route's key is spent
    refused = await limiter.check(limit, keys("198.51.100.9", "users"))
    assert not refused.allowed
    assert header_map(refused)["RateLimit-Remaining"] == "0"
    assert "Retry-After" in header_map(refused)
    # a fresh route, but the first IP has one request left: allowed, then its key is spent
    assert (await limiter.check(limit, keys(IP, "orders"))).allowed
    assert not (await limiter.check(limit, keys(IP, "billing"))).allowed


async def test_composite_remaining_is_the_tightest_key(limiter: RateLimiter) -> None:
    limit = policy(requests_per_window=3, strategy={"Composite": ["PerIP", "PerRoute"]})
    await limiter.check(limit, keys_for(limit, client_ip=OTHER_IP))

    decision = await limiter.check(limit, keys_for(limit, client_ip=IP))

    assert decision.remaining == 1  # the route key has seen two requests, the IP key one


async def test_composite_of_ip_and_user_allows_n_anonymous_requests(limiter: RateLimiter) -> None:
    limit = policy(requests_per_window=4, strategy={"Composite": ["PerIP", "PerUser"]})
    keys = keys_for(limit, user=None)

    decisions = await check_many(limiter, limit, keys, 5)

    assert [d.allowed for d in decisions] == [True, True, True, True, False]
