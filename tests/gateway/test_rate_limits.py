"""Rate limits of a real ``kairos-gateway`` process (DESIGN.md §2 step 5, §3 rate_limit, §5).

The gateway trusts the loopback test client as a proxy, so each test speaks for client IPs of its
own through ``X-Forwarded-For`` and no two tests share a counter. One gateway carries a route per
scenario and no global block; a second one has a global block, for inheritance, overrides and the
admin listener.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from tests.support.gateway import Gateway, route
from tests.support.procs import Upstream
from tests.support.upstreams import HitRecord

JWT_SECRET = "kairos-rate-limit-tests-4e1f9a7c2b5d8e36"  # 40 characters
WINDOW_TYPES = ("FixedWindow", "SlidingWindow", "TokenBucket")
RATELIMIT_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_addresses = (f"203.0.{n // 250}.{n % 250 + 1}" for n in itertools.count())


def new_ip() -> str:
    """A client IP no other test of this worker has used."""
    return next(_addresses)


def limit(requests: int, window_s: int = 60, **extra: Any) -> dict[str, Any]:
    return {"requests_per_window": requests, "window_duration": window_s, **extra}


def limited(external: str, upstream: Upstream, rate_limit: dict[str, Any], **extra: Any) -> Any:
    return route(external, external, [upstream.url], rate_limit=rate_limit, **extra)


def _limited_config(echo: Upstream) -> dict[str, Any]:
    per_window = [
        limited(f"/window/{window}", echo, limit(3, window_type=window)) for window in WINDOW_TYPES
    ]
    resets = [
        limited(f"/reset/{window}", echo, limit(2, 1, window_type=window))
        for window in ("FixedWindow", "SlidingWindow")
    ]
    return {
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "jwt": {"secret": JWT_SECRET},
        "routers": [
            *per_window,
            *resets,
            limited("/burst", echo, limit(2, burst_allowance=2, window_type="TokenBucket")),
            limited("/refill", echo, limit(2, 1, window_type="TokenBucket")),
            limited("/per-ip", echo, limit(2, strategy="PerIP")),
            limited("/per-route-a", echo, limit(2, strategy="PerRoute")),
            limited("/per-route-b", echo, limit(2, strategy="PerRoute")),
            limited("/items/{id}", echo, limit(2, strategy="PerRoute")),
            limited("/ip-route-a", echo, limit(2, strategy="PerIPAndRoute")),
            limited("/ip-route-b", echo, limit(2, strategy="PerIPAndRoute")),
            limited("/per-user", echo, limit(2, strategy="PerUser"), auth_required=True),
            limited("/composite", echo, limit(3, strategy={"Composite": ["PerIP", "PerRoute"]})),
            limited(
                "/composite-parts",
                echo,
                limit(
                    10,
                    strategy={
                        "Composite": [
                            {"strategy": "PerIP", "requests_per_window": 2},
                            {"strategy": "PerRoute", "requests_per_window": 4},
                        ]
                    },
                ),
            ),
            route("/unlimited", "/unlimited", [echo.url]),
        ],
    }


def _global_config(echo: Upstream) -> dict[str, Any]:
    return {
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "rate_limit": limit(2, strategy="PerIP"),
        "routers": [
            route("/inherits", "/inherits", [echo.url]),
            route("/inherits-too", "/inherits-too", [echo.url]),
            limited("/override", echo, limit(4, strategy="PerIP")),
        ],
    }


@dataclass
class Stack:
    echo: Upstream
    limited: Gateway
    globally_limited: Gateway
    since: float = 0.0

    def hits(self, path: str) -> list[HitRecord]:
        """Requests the upstream received on ``path`` since the current test began."""
        return [h for h in self.echo.hit_log() if h["path"] == path and h["t"] >= self.since]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with contextlib.ExitStack() as exit_stack:
        echo = exit_stack.enter_context(Upstream.start("echo"))
        limited_gw = exit_stack.enter_context(
            Gateway(_limited_config(echo), tmp_path_factory.mktemp("limited"))
        )
        global_gw = exit_stack.enter_context(
            Gateway(_global_config(echo), tmp_path_factory.mktemp("global"))
        )
        yield Stack(echo, limited_gw, global_gw)


@pytest.fixture
def stack(servers: Stack) -> Stack:
    servers.since = time.time()
    return servers


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.limited.client() as c:
        yield c


# --- helpers ------------------------------------------------------------------------------------


def get(client: httpx.Client, path: str, ip: str, **headers: str) -> httpx.Response:
    return client.get(path, headers={"X-Forwarded-For": ip, **headers})


def statuses(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


def assert_rate_limited(response: httpx.Response) -> None:
    """The gateway's own 429 of DESIGN.md §4, with ``Retry-After`` and the limit headers."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "x-upstream" not in response.headers
    body = response.json()
    assert set(body) == {"error", "type", "timestamp", "request_id"}, body
    assert body["type"] == "rate_limit_error"
    assert RFC3339.fullmatch(body["timestamp"])
    assert body["request_id"] == response.headers["x-request-id"]
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["ratelimit-remaining"] == "0"


def limit_headers(response: httpx.Response) -> tuple[int, int, int]:
    """``RateLimit-Limit``, ``-Remaining`` and ``-Reset``, each exactly once."""
    for name in RATELIMIT_HEADERS:
        assert len(response.headers.get_list(name)) == 1, response.headers
    return (
        int(response.headers["ratelimit-limit"]),
        int(response.headers["ratelimit-remaining"]),
        int(response.headers["ratelimit-reset"]),
    )


def token(subject: str) -> str:
    return jwt.encode({"sub": subject, "exp": int(time.time()) + 300}, JWT_SECRET, "HS256")


# --- windows ------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", WINDOW_TYPES)
def test_n_allowed_then_429_with_headers(stack: Stack, client: httpx.Client, window: str) -> None:
    ip, path = new_ip(), f"/window/{window}"

    responses = [get(client, path, ip) for _ in range(5)]

    assert statuses(responses) == [200, 200, 200, 429, 429]
    assert [limit_headers(r)[:2] for r in responses] == [(3, 2), (3, 1), (3, 0), (3, 0), (3, 0)]
    for response in responses:
        assert 0 <= limit_headers(response)[2] <= 60
    for allowed in responses[:3]:
        assert allowed.headers["x-upstream"] == "echo"
        assert "retry-after" not in allowed.headers
    for refused in responses[3:]:
        assert_rate_limited(refused)
        assert int(refused.headers["retry-after"]) <= 60
    assert len(stack.hits(path)) == 3  # a 429 never reaches the upstream


def test_burst_allowance_raises_the_limit(stack: Stack, client: httpx.Client) -> None:
    ip = new_ip()

    responses = [get(client, "/burst", ip) for _ in range(5)]

    assert statuses(responses) == [200] * 4 + [429]
    assert [limit_headers(r)[:2] for r in responses] == [(4, 3), (4, 2), (4, 1), (4, 0), (4, 0)]


@pytest.mark.parametrize("window", ["FixedWindow", "SlidingWindow"])
def test_window_reset_is_honoured(stack: Stack, client: httpx.Client, window: str) -> None:
    ip, path = new_ip(), f"/reset/{window}"
    first = [get(client, path, ip) for _ in range(3)]
    assert statuses(first) == [200, 200, 429]
    assert first[-1].headers["retry-after"] == "1"

    time.sleep(1.1)

    again = [get(client, path, ip) for _ in range(3)]
    assert statuses(again) == [200, 200, 429]
    assert limit_headers(again[0])[1] == 1


def test_token_bucket_refills_at_its_rate(stack: Stack, client: httpx.Client) -> None:
    ip = new_ip()
    drained = [get(client, "/refill", ip) for _ in range(3)]
    assert statuses(drained) == [200, 200, 429]
    assert drained[-1].headers["retry-after"] == "1"

    time.sleep(0.55)  # 2 tokens/s: one token back

    assert statuses([get(client, "/refill", ip) for _ in range(2)]) == [200, 429]


# --- keys ---------------------------------------------------------------------------------------


def test_per_ip_gives_each_client_its_own_quota(client: httpx.Client) -> None:
    first, second = new_ip(), new_ip()

    assert statuses([get(client, "/per-ip", first) for _ in range(3)]) == [200, 200, 429]
    assert statuses([get(client, "/per-ip", second) for _ in range(3)]) == [200, 200, 429]


def test_per_route_is_shared_by_all_clients_of_a_route(client: httpx.Client) -> None:
    assert get(client, "/per-route-a", new_ip()).status_code == 200
    assert get(client, "/per-route-a", new_ip()).status_code == 200
    assert_rate_limited(get(client, "/per-route-a", new_ip()))

    # another route shares nothing with it
    assert statuses([get(client, "/per-route-b", new_ip()) for _ in range(3)]) == [200, 200, 429]


def test_per_route_keys_on_the_route_not_the_path(client: httpx.Client) -> None:
    assert get(client, "/items/1", new_ip()).status_code == 200
    assert get(client, "/items/2", new_ip()).status_code == 200

    assert_rate_limited(get(client, "/items/3", new_ip()))


def test_per_ip_and_route_needs_both_to_match(client: httpx.Client) -> None:
    first, second = new_ip(), new_ip()

    assert statuses([get(client, "/ip-route-a", first) for _ in range(3)]) == [200, 200, 429]
    assert statuses([get(client, "/ip-route-b", first) for _ in range(3)]) == [200, 200, 429]
    assert statuses([get(client, "/ip-route-a", second) for _ in range(3)]) == [200, 200, 429]


def test_per_user_keys_on_the_jwt_subject(client: httpx.Client) -> None:
    ip = new_ip()
    alice = {"Authorization": f"Bearer {token('alice')}"}
    bob = {"Authorization": f"Bearer {token('bob')}"}

    assert statuses([get(client, "/per-user", ip, **alice) for _ in range(3)]) == [200, 200, 429]
    # same IP, another user: a quota of its own
    assert statuses([get(client, "/per-user", ip, **bob) for _ in range(2)]) == [200, 200]
    # same user, another IP: still the user's spent quota
    assert_rate_limited(get(client, "/per-user", new_ip(), **alice))


def test_composite_refuses_when_any_key_is_spent(stack: Stack, client: httpx.Client) -> None:
    first, second = new_ip(), new_ip()
    assert statuses([get(client, "/composite", first) for _ in range(2)]) == [200, 200]
    assert get(client, "/composite", second).status_code == 200

    refused = get(client, "/composite", new_ip())  # fresh IP key, spent route key

    assert_rate_limited(refused)
    assert limit_headers(refused)[0] == 3
    assert len(stack.hits("/composite")) == 3


def test_composite_parts_enforce_their_own_numbers(stack: Stack, client: httpx.Client) -> None:
    first, second, third = new_ip(), new_ip(), new_ip()
    assert statuses([get(client, "/composite-parts", first) for _ in range(2)]) == [200, 200]

    per_ip = get(client, "/composite-parts", first)  # the PerIP part allows 2, not the block's 10
    assert_rate_limited(per_ip)
    assert limit_headers(per_ip)[0] == 2
    # the refused request still counted for the route (earlier keys stay charged): 3 of 4
    assert get(client, "/composite-parts", second).status_code == 200
    per_route = get(client, "/composite-parts", third)  # the PerRoute part allows 4 in all
    assert_rate_limited(per_route)
    assert limit_headers(per_route)[0] == 4
    assert len(stack.hits("/composite-parts")) == 3


def test_route_without_a_limit_has_no_ratelimit_headers(client: httpx.Client) -> None:
    ip = new_ip()

    responses = [get(client, "/unlimited", ip) for _ in range(20)]

    assert statuses(responses) == [200] * 20
    for response in responses:
        assert not any(name in response.headers for name in RATELIMIT_HEADERS)
        assert "retry-after" not in response.headers


# --- global block -------------------------------------------------------------------------------


def test_global_block_is_one_quota_across_routes(stack: Stack) -> None:
    ip = new_ip()
    with stack.globally_limited.client() as client:
        assert get(client, "/inherits", ip).status_code == 200
        assert get(client, "/inherits-too", ip).status_code == 200

        assert_rate_limited(get(client, "/inherits", ip))
        assert_rate_limited(get(client, "/inherits-too", ip))


def test_route_limit_overrides_the_global_block(stack: Stack) -> None:
    ip = new_ip()
    with stack.globally_limited.client() as client:
        overridden = [get(client, "/override", ip) for _ in range(5)]

        assert statuses(overridden) == [200] * 4 + [429]
        assert {limit_headers(r)[0] for r in overridden} == {4}
        # the override's requests did not spend the global quota
        inherited = [get(client, "/inherits", ip) for _ in range(3)]
        assert statuses(inherited) == [200, 200, 429]
        assert {limit_headers(r)[0] for r in inherited} == {2}


def test_admin_listener_is_never_rate_limited(stack: Stack) -> None:
    gateway = stack.globally_limited
    with httpx.Client(base_url=gateway.admin_url, trust_env=False, timeout=10) as admin:
        responses = [admin.get("/health") for _ in range(50)]

    assert statuses(responses) == [200] * 50
    for response in responses:
        assert not any(name in response.headers for name in RATELIMIT_HEADERS)


# --- resources ----------------------------------------------------------------------------------


def test_limited_traffic_leaks_no_file_descriptors(
    stack: Stack, gateway_factory: Callable[..., Gateway]
) -> None:
    gateway = gateway_factory(_limited_config(stack.echo))
    with gateway.client() as client:
        assert get(client, "/unlimited", new_ip()).status_code == 200
    time.sleep(0.5)
    baseline = gateway.open_fds()

    with gateway.client() as client:
        for _ in range(10):
            ip = new_ip()
            assert statuses([get(client, "/per-ip", ip) for _ in range(4)]) == [200, 200, 429, 429]
    for _ in range(10):  # a new client connection each time
        response = httpx.get(f"{gateway.url}/per-route-a", trust_env=False)
        assert response.status_code in (200, 429)
    time.sleep(0.5)

    assert abs(gateway.open_fds() - baseline) <= 4


def test_an_untrusted_client_cannot_escape_per_ip_by_changing_x_forwarded_for(
    gateway_factory: Callable[..., Gateway], upstream: Upstream
) -> None:
    # no trusted_proxies: the loopback test client is a client like any other
    gateway = gateway_factory(
        {"routers": [limited("/per-ip", upstream, limit(2, strategy="PerIP"))]}
    )
    spoofed = [
        {"X-Forwarded-For": new_ip()},
        {"X-Forwarded-For": f"{new_ip()}, {new_ip()}"},
        {"X-Real-IP": new_ip(), "X-Forwarded-For": new_ip()},
        {"Forwarded": f"for={new_ip()}", "X-Forwarded-For": new_ip()},
    ]
    with gateway.client() as client:
        responses = [client.get("/per-ip", headers=headers) for headers in spoofed]

    assert statuses(responses) == [200, 200, 429, 429]
    for refused in responses[2:]:
        assert_rate_limited(refused)
    assert upstream.hits() == 2
