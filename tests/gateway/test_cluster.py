"""Cluster mode seen from outside (DESIGN.md §8): real ``kairos-gateway`` instances sharing a real
redis-server, real upstreams.

Each test starts its own Redis and its own instances (shared state is the subject, so nothing
may leak between tests). The instances trust the loopback test client as a proxy, so a client
speaks for an IP of its own through ``X-Forwarded-For``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, route
from tests.support.procs import Upstream
from tests.support.redisserver import RedisServer
from tests.support.waiting import wait_until

WINDOW_TYPES = ("FixedWindow", "SlidingWindow", "TokenBucket")
CLIENT_IP = "203.0.113.9"
StartGateway = Callable[..., Gateway]


def cluster_config(
    redis: RedisServer, upstream: Upstream, *, on_redis_error: str = "allow", **extra: Any
) -> dict[str, Any]:
    breaker = {"failure_threshold": 2, "reset_timeout_s": 30, "success_threshold": 1}
    routes = [
        route(
            f"/limited/{window}",
            "/echo",
            [upstream.url],
            rate_limit={"requests_per_window": 4, "window_duration": 60, "window_type": window},
        )
        for window in WINDOW_TYPES
    ]
    return {
        "server": {"trusted_proxies": ["127.0.0.1/32"], "graceful_shutdown_s": 0},
        "cluster": {
            "redis_url": redis.url,
            "key_prefix": "it",
            "on_redis_error": on_redis_error,
            "redis_timeout_ms": 100,
        },
        "circuit_breaker": breaker,
        "routers": [*routes, route("/plain", "/plain", [upstream.url])],
        **extra,
    }


def get(gateway: Gateway, path: str, ip: str = CLIENT_IP) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}{path}", headers={"X-Forwarded-For": ip}, trust_env=False, timeout=10
    )


def admin(gateway: Gateway, method: str, path: str) -> httpx.Response:
    return httpx.request(method, f"{gateway.admin_url}{path}", trust_env=False, timeout=10)


def circuit_state(gateway: Gateway, backend: str) -> str:
    circuits = admin(gateway, "GET", "/api/circuits").json()["circuits"]
    (circuit,) = [c for c in circuits if c["backend"] == backend]
    return str(circuit["state"])


def metric(gateway: Gateway, name: str) -> float:
    text = admin(gateway, "GET", "/metrics").text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    ]
    return sum(values)


@pytest.fixture
def pair(
    redis_server: RedisServer, upstream: Upstream, gateway_factory: StartGateway
) -> tuple[Gateway, Gateway]:
    config = cluster_config(redis_server, upstream)
    return gateway_factory(config), gateway_factory(config)


# --- rate limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("window", WINDOW_TYPES)
def test_two_instances_admit_n_in_total_to_a_client_alternating_between_them(
    pair: tuple[Gateway, Gateway], window: str
) -> None:
    responses = [get(pair[i % 2], f"/limited/{window}") for i in range(8)]

    assert [r.status_code for r in responses] == [200] * 4 + [429] * 4
    assert [r.headers["ratelimit-remaining"] for r in responses] == ["3", "2", "1", "0"] + ["0"] * 4
    assert {r.headers["ratelimit-limit"] for r in responses} == {"4"}
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses[4:])


def test_a_limited_request_costs_one_redis_round_trip(
    pair: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    for gateway in pair:  # each has its connection to Redis, and the script is loaded
        get(gateway, "/limited/SlidingWindow", "192.0.2.1")

    with redis_server.client_commands() as sent:
        statuses = [
            get(pair[i % 2], "/limited/SlidingWindow", "192.0.2.2").status_code for i in range(6)
        ]

    assert statuses == [200] * 4 + [429] * 2
    assert [command.split(" ")[0] for command in sent] == ["EVALSHA"] * 6, sent


# --- breakers -----------------------------------------------------------------------------------


def test_a_breaker_opened_on_one_instance_is_open_on_the_other_within_a_second(
    pair: tuple[Gateway, Gateway], upstream: Upstream
) -> None:
    a, b = pair
    upstream.control(mode="fail", status=500)
    assert [get(a, "/plain").status_code for _ in range(2)] == [500, 500]
    assert circuit_state(a, upstream.url) == "open"

    took = wait_until(lambda: circuit_state(b, upstream.url) == "open", 1.0, "B's breaker open")

    assert took < 1.0
    hits = upstream.hits()
    refused = [get(b, "/plain") for _ in range(5)]
    assert {r.status_code for r in refused} == {503}
    assert {r.json()["type"] for r in refused} == {"circuit_open"}
    assert upstream.hits() == hits
    # a transition is counted where it happened, and only there
    assert metric(a, "kairos_circuit_transitions_total") == 1
    assert metric(b, "kairos_circuit_transitions_total") == 0


def test_a_forced_open_through_one_instances_admin_api_is_seen_by_the_other(
    pair: tuple[Gateway, Gateway], upstream: Upstream
) -> None:
    a, b = pair
    assert get(b, "/plain").status_code == 200
    opened = admin(a, "POST", f"/api/circuits/{upstream.url}/open")
    assert opened.status_code == 200, opened.text

    wait_until(lambda: circuit_state(b, upstream.url) == "open", 1.0, "B's breaker open")
    hits = upstream.hits()
    assert get(b, "/plain").status_code == 503
    assert upstream.hits() == hits

    assert admin(b, "POST", f"/api/circuits/{upstream.url}/reset").status_code == 200
    wait_until(lambda: circuit_state(a, upstream.url) == "closed", 1.0, "A's breaker closed")
    assert get(a, "/plain").status_code == 200


def test_an_instance_started_later_loads_the_open_breakers(
    redis_server: RedisServer, upstream: Upstream, gateway_factory: StartGateway
) -> None:
    config = cluster_config(redis_server, upstream)
    a = gateway_factory(config)
    assert admin(a, "POST", f"/api/circuits/{upstream.url}/open").status_code == 200

    late = gateway_factory(config)

    assert circuit_state(late, upstream.url) == "open"
    hits = upstream.hits()
    assert get(late, "/plain").status_code == 503
    assert upstream.hits() == hits


# --- Redis away ---------------------------------------------------------------------------------


def timed_gets(gateway: Gateway, path: str, count: int) -> list[tuple[int, float]]:
    out = []
    for index in range(count):
        started = time.perf_counter()
        response = get(gateway, path, f"198.51.100.{index % 200 + 1}")
        out.append((response.status_code, time.perf_counter() - started))
    return out


def test_under_allow_requests_keep_flowing_without_redis_and_sharing_resumes_when_it_returns(
    pair: tuple[Gateway, Gateway], redis_server: RedisServer, upstream: Upstream
) -> None:
    a, b = pair
    stop = threading.Event()

    def load(gateway: Gateway, path: str) -> list[tuple[int, float]]:
        """One request at a time, each from a client IP of its own, until told to stop."""
        seen: list[tuple[int, float]] = []
        while not stop.is_set():
            started = time.perf_counter()
            ip = f"198.18.{len(seen) // 250}.{len(seen) % 250 + 1}"
            seen.append((get(gateway, path, ip).status_code, time.perf_counter() - started))
        return seen

    with ThreadPoolExecutor(2) as pool:  # clients keep sending while Redis dies
        loads = [
            pool.submit(load, a, "/limited/FixedWindow"),
            pool.submit(load, b, "/limited/TokenBucket"),
        ]
        time.sleep(0.5)
        redis_server.stop()
        time.sleep(1.0)
        stop.set()
        during = [timing for future in loads for timing in future.result()]

    assert len(during) > 20
    assert {status for status, _ in during} == {200}
    assert max(seconds for _, seconds in during) < 0.1 + 0.4  # the Redis timeout, and slack
    assert admin(a, "GET", "/ready").status_code == 200
    assert metric(a, "kairos_cluster_redis_up") == 0
    assert metric(a, 'kairos_cluster_redis_transitions_total{state="down"}') == 1
    # limits still hold, per instance, on each one's own counters
    local = [get(a, "/limited/SlidingWindow", "192.0.2.77").status_code for _ in range(5)]
    assert local == [200] * 4 + [429]
    assert "is unreachable" in a.process.log_text()

    redis_server.start()
    wait_until(lambda: metric(a, "kairos_cluster_redis_up") == 1, 3.0, "A's link back up")
    wait_until(lambda: metric(b, "kairos_cluster_redis_up") == 1, 3.0, "B's link back up")
    shared = [get((a, b)[i % 2], "/limited/FixedWindow", "192.0.2.99") for i in range(6)]
    assert [r.status_code for r in shared] == [200] * 4 + [429] * 2
    assert "answers again" in a.process.log_text()
    assert admin(a, "POST", f"/api/circuits/{upstream.url}/open").status_code == 200
    wait_until(lambda: circuit_state(b, upstream.url) == "open", 1.0, "sharing resumed")


def test_under_deny_limited_requests_get_503_and_ready_says_why_until_redis_returns(
    redis_server: RedisServer, upstream: Upstream, gateway_factory: StartGateway
) -> None:
    gateway = gateway_factory(cluster_config(redis_server, upstream, on_redis_error="deny"))
    assert get(gateway, "/limited/FixedWindow").status_code == 200
    redis_server.stop()

    refused = [get(gateway, "/limited/FixedWindow") for _ in range(5)]

    assert {r.status_code for r in refused} == {503}
    assert {r.json()["type"] for r in refused} == {"cluster_unavailable"}
    assert {r.headers["retry-after"] for r in refused} == {"1"}
    assert get(gateway, "/plain").status_code == 200  # nothing shared on this route's path
    ready = admin(gateway, "GET", "/ready")
    assert ready.status_code == 503
    assert any("Redis is unreachable" in reason for reason in ready.json()["reasons"])

    redis_server.start()
    wait_until(lambda: admin(gateway, "GET", "/ready").status_code == 200, 3.0, "ready again")
    assert get(gateway, "/limited/FixedWindow").status_code == 200


def test_a_redis_that_stops_answering_costs_a_request_the_redis_timeout_at_most(
    pair: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    a, _ = pair
    before = timed_gets(a, "/limited/TokenBucket", 5)
    redis_server.pause()
    try:
        during = timed_gets(a, "/limited/TokenBucket", 10)
    finally:
        redis_server.resume()

    assert {status for status, _ in before + during} == {200}
    slowest = max(seconds for _, seconds in during)
    assert slowest < 0.1 + 0.4, f"a request took {slowest:.3f} s with Redis hung"
    assert re.search(r"is unreachable \(no answer within 100 ms\)", a.process.log_text())
