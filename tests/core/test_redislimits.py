"""Shared rate-limit counters (``kairos_core.redislimits``) on a real redis-server.

The counting rules themselves run against both stores in ``test_ratelimit.py``; these tests pin
what only the shared store does: one round trip per request, one counter for every process, the
key layout, and ``cluster.on_redis_error``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kairos_core.config.models import RateLimitConfig
from kairos_core.errors import GatewayError
from kairos_core.ratelimit import LimitKey, RateLimiter, limit_keys
from kairos_core.redislimits import RedisLimits
from kairos_core.redislink import FAILURES_TO_DOWN, RedisLink
from tests.support.redisserver import RedisServer

IP = "198.51.100.7"
WINDOW_TYPES = ("FixedWindow", "SlidingWindow", "TokenBucket")

Factory = Callable[..., RateLimiter]


@pytest.fixture
async def shared(redis_server: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    """Limiters standing for separate processes: each its own link and memory, one Redis."""
    links: list[RedisLink] = []

    async def make(prefix: str = "kairos", **kwargs: Any) -> RateLimiter:
        link = RedisLink(redis_server.url, timeout_ms=kwargs.pop("timeout_ms", 1000))
        await link.start()
        links.append(link)
        return RateLimiter(RedisLimits(link, prefix, **kwargs))

    yield make
    for link in links:
        await link.stop()


def policy(**fields: Any) -> RateLimitConfig:
    fields.setdefault("requests_per_window", 3)
    fields.setdefault("window_duration", 60)
    return RateLimitConfig(**fields)


def keys_for(limit: RateLimitConfig, client_ip: str = IP) -> tuple[LimitKey, ...]:
    return limit_keys(limit, route_id="users", client_ip=client_ip, user=None, route_scoped=True)


@pytest.mark.parametrize("window_type", WINDOWS := WINDOW_TYPES)
async def test_two_processes_admit_n_in_total_not_2n(
    shared: Callable[..., Any], window_type: str
) -> None:
    first, second = await shared(), await shared()
    limit = policy(requests_per_window=4, window_type=window_type)
    keys = keys_for(limit)

    allowed = [
        (await (first if i % 2 == 0 else second).check(limit, keys)).allowed for i in range(8)
    ]

    assert allowed == [True] * 4 + [False] * 4


async def test_a_request_costs_one_round_trip_whatever_its_policy(
    shared: Callable[..., Any], redis_server: RedisServer
) -> None:
    limiter = await shared()
    limit = policy(
        requests_per_window=100,
        strategy={
            "Composite": [
                {"strategy": "PerIP", "window_type": "FixedWindow"},
                {"strategy": "PerRoute", "window_type": "SlidingWindow"},
                {"strategy": "PerIPAndRoute", "window_type": "TokenBucket"},
            ]
        },
    )
    keys = keys_for(limit)
    assert len(keys) == 3
    await limiter.check(limit, keys)  # loads the script

    with redis_server.client_commands() as sent:
        decisions = [await limiter.check(limit, keys) for _ in range(20)]

    assert all(d.allowed for d in decisions)
    assert decisions[-1].remaining == 79
    assert [command.split(" ")[0] for command in sent] == ["EVALSHA"] * 20


async def test_keys_carry_the_cluster_prefix_the_policy_prefix_its_scope_and_numbers(
    shared: Callable[..., Any], redis_server: RedisServer
) -> None:
    limiter = await shared("edge")
    limit = policy(requests_per_window=3, burst_allowance=1, redis_key_prefix="rl")
    await limiter.check(limit, keys_for(limit))
    assert [k.decode() for k in redis_server.client().keys("*")] == [
        f"edge:rl:route=users:ip={IP}:FixedWindow:3+1/60s"
    ]
    assert (
        59_000
        < int(redis_server.client().pttl(f"edge:rl:route=users:ip={IP}:FixedWindow:3+1/60s"))
        <= 60_000
    )


async def test_a_different_cluster_prefix_is_a_different_counter(
    shared: Callable[..., Any],
) -> None:
    blue, green = await shared("blue"), await shared("green")
    limit = policy(requests_per_window=1)
    assert (await blue.check(limit, keys_for(limit))).allowed
    assert (await green.check(limit, keys_for(limit))).allowed
    assert not (await blue.check(limit, keys_for(limit))).allowed


async def kill_and_take_link_down(limiter: RateLimiter, redis_server: RedisServer) -> None:
    redis_server.stop()
    limit = policy(requests_per_window=1000, window_type="TokenBucket")
    for _ in range(FAILURES_TO_DOWN):
        await limiter.check(limit, keys_for(limit, "192.0.2.1"))


async def test_allow_counts_in_this_process_while_redis_is_down(
    shared: Callable[..., Any], redis_server: RedisServer
) -> None:
    limiter = await shared(on_redis_error="allow")
    await kill_and_take_link_down(limiter, redis_server)
    limit = policy(requests_per_window=2)

    started = time.perf_counter()
    decisions = [await limiter.check(limit, keys_for(limit)) for _ in range(3)]

    assert [d.allowed for d in decisions] == [True, True, False]
    assert time.perf_counter() - started < 0.05


async def test_deny_answers_503_cluster_unavailable_while_redis_is_down(
    shared: Callable[..., Any], redis_server: RedisServer
) -> None:
    limiter = await shared(on_redis_error="deny")
    redis_server.stop()
    limit = policy()
    for _ in range(FAILURES_TO_DOWN + 2):
        with pytest.raises(GatewayError) as refused:
            await limiter.check(limit, keys_for(limit))
        assert refused.value.status == 503
        assert refused.value.error_type == "cluster_unavailable"
        assert refused.value.headers == (("Retry-After", "1"),)


async def test_a_redis_that_never_answers_costs_the_timeout_then_nothing(
    shared: Callable[..., Any], redis_server: RedisServer
) -> None:
    limiter = await shared(timeout_ms=200)
    limit = policy(requests_per_window=1000)
    await limiter.check(limit, keys_for(limit))
    redis_server.pause()
    try:
        for _ in range(FAILURES_TO_DOWN):
            started = time.perf_counter()
            assert (await limiter.check(limit, keys_for(limit))).allowed
            assert time.perf_counter() - started < 0.200 + 0.050
        started = time.perf_counter()
        assert (await limiter.check(limit, keys_for(limit))).allowed
        assert time.perf_counter() - started < 0.1  # not after the 200 ms timeout
    finally:
        redis_server.resume()
