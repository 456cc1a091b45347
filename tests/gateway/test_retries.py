"""Retries of a real ``kairos-gateway`` process against real upstreams (DESIGN.md §2 step 8, §5).

One gateway per test worker serves a route per scenario; the upstreams are switched between
behaviours through their control plane before each test, and what the gateway sent is read from
their hit logs (wall-clock timestamps of every attempt). Breakers are configured out of the way
(``failure_threshold`` 100,000) so that only the retry policy decides the number of attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import aiohttp
import httpx
import pytest

from tests.support.canned import CannedUpstream
from tests.support.gateway import Gateway, route
from tests.support.procs import Upstream, free_port
from tests.support.upstreams import HitRecord

BREAKER_OFF = {"failure_threshold": 100_000}
FAST_RETRY = {"max_retries": 2, "initial_backoff_ms": 10, "max_backoff_ms": 10, "jitter": False}
SCHEDULE_MS = [100, 200, 400]
DEADLINE_MS = 500
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
GARBAGE_RETRY_AFTER = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Retry-After: \xb2\r\n"  # latin-1 superscript two: a digit to str.isdigit, not to float
    b"Content-Type: application/json\r\n"
    b"Content-Length: 20\r\n"
    b"Connection: close\r\n\r\n"
    b'{"server": "canned"}'
)


@dataclass
class Stack:
    gateway: Gateway
    a: Upstream
    b: Upstream
    echo: Upstream
    canned: CannedUpstream
    config: dict[str, Any]
    since: float = 0.0

    def hits(self, upstream: Upstream, path: str) -> list[HitRecord]:
        """Requests ``upstream`` received on ``path`` since the current test began."""
        return [h for h in upstream.hit_log() if h["path"] == path and h["t"] >= self.since]


def retry_route(
    external: str,
    upstreams: list[str],
    retry: dict[str, Any],
    *,
    internal: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return route(
        external,
        internal or external,
        upstreams,
        retry=retry,
        circuit_breaker=BREAKER_OFF,
        **extra,
    )


def _config(a: Upstream, b: Upstream, echo: Upstream, canned: str, dead: str) -> dict[str, Any]:
    schedule = {
        "max_retries": len(SCHEDULE_MS),
        "initial_backoff_ms": SCHEDULE_MS[0],
        "max_backoff_ms": 1000,
        "backoff_multiplier": 2,
        "jitter": False,
    }
    budget = {
        "max_retries": 3,
        "initial_backoff_ms": 0,
        "max_backoff_ms": 0,
        "budget_percent": 20,
        "min_retries_per_second": 3,
    }
    return {
        "circuit_breaker": BREAKER_OFF,
        "routers": [
            retry_route("/schedule", [a.url], schedule),
            retry_route("/fast/{*rest}", [a.url], FAST_RETRY, methods=ALL_METHODS),
            retry_route(
                "/small-replay", [a.url], {**FAST_RETRY, "max_replay_bytes": 1024}, methods=["POST"]
            ),
            retry_route("/replay", [b.url], FAST_RETRY, methods=["POST"]),
            retry_route("/refused", [dead, echo.url], FAST_RETRY, methods=["POST"]),
            retry_route("/both-failing", [a.url, b.url], {**FAST_RETRY, "max_retries": 3}),
            retry_route("/one-ok", [a.url, echo.url], FAST_RETRY),
            retry_route(
                "/retry-after",
                [a.url],
                {**FAST_RETRY, "max_retries": 1, "max_backoff_ms": 2000},
                internal="/_status/503",
            ),
            retry_route(
                "/deadline",
                [a.url],
                {**schedule, "initial_backoff_ms": 400},
                deadline_ms=DEADLINE_MS,
            ),
            retry_route("/budget", [a.url], budget),
            retry_route("/garbage-retry-after", [canned], FAST_RETRY),
            route("/no-retry", "/no-retry", [a.url], circuit_breaker=BREAKER_OFF),
        ],
    }


def start_upstreams(exit_stack: contextlib.ExitStack, *names: str) -> list[Upstream]:
    """Start upstream processes side by side (each start is mostly a Python import)."""
    with ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(Upstream.start, name) for name in names]
    started = [f.result() for f in futures if f.exception() is None]
    for upstream in started:
        exit_stack.callback(upstream.stop)
    return [f.result() for f in futures]  # raises the first failure, if any


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with contextlib.ExitStack() as exit_stack:
        a, b, echo = start_upstreams(exit_stack, "a", "b", "echo")
        canned = CannedUpstream(GARBAGE_RETRY_AFTER)
        exit_stack.callback(canned.close)
        config = _config(a, b, echo, canned.url, f"http://127.0.0.1:{free_port()}")
        gateway = exit_stack.enter_context(Gateway(config, tmp_path_factory.mktemp("retries")))
        yield Stack(gateway, a, b, echo, canned, config)


@pytest.fixture
def stack(servers: Stack) -> Stack:
    """The module's servers; each test sets the upstream modes it relies on."""
    servers.since = time.time()
    return servers


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.gateway.client() as c:
        yield c


# --- helpers ------------------------------------------------------------------------------------


def assert_upstream_answer(response: httpx.Response, server: str, status: int) -> dict[str, Any]:
    """The response is the upstream's own, passed through untouched (not a gateway error)."""
    assert response.status_code == status, response.text
    assert response.headers["x-upstream"] == server
    body: dict[str, Any] = response.json()
    assert body["server"] == server
    assert "type" not in body, body
    return body


def assert_gateway_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    assert "x-upstream" not in response.headers
    assert response.json()["type"] == error_type


# --- the schedule -------------------------------------------------------------------------------


def test_retries_follow_the_backoff_schedule(stack: Stack, client: httpx.Client) -> None:
    stack.a.control(mode="fail", status=503)

    response = client.get("/schedule")

    body = assert_upstream_answer(response, "a", 503)
    assert body == {"server": "a", "error": "injected failure", "mode": "fail"}
    hits = stack.hits(stack.a, "/schedule")
    assert len(hits) == len(SCHEDULE_MS) + 1
    gaps_ms = [(later["t"] - earlier["t"]) * 1000 for earlier, later in pairwise(hits)]
    for gap, expected in zip(gaps_ms, SCHEDULE_MS, strict=True):
        assert 0.8 * expected <= gap <= 1.8 * expected + 50, gaps_ms


def test_no_retry_policy_means_one_attempt(stack: Stack, client: httpx.Client) -> None:
    stack.a.control(mode="fail", status=503)

    response = client.get("/no-retry")

    assert_upstream_answer(response, "a", 503)
    assert len(stack.hits(stack.a, "/no-retry")) == 1


@pytest.mark.parametrize(("status", "attempts"), [(502, 3), (503, 3), (504, 3), (500, 1), (429, 1)])
def test_only_retry_on_status_codes_are_retried(
    stack: Stack, client: httpx.Client, status: int, attempts: int
) -> None:
    stack.a.control(mode="fail", status=status)
    path = f"/fast/status-{status}"

    response = client.get(path)

    assert_upstream_answer(response, "a", status)
    assert len(stack.hits(stack.a, path)) == attempts


def test_success_after_a_retry_is_returned(stack: Stack, client: httpx.Client) -> None:
    stack.a.control(mode="flap", flap_every=1, status=503)
    httpx.get(f"{stack.a.url}/warm", trust_env=False)  # spend the flap's first "ok"

    response = client.get("/fast/flap")

    assert_upstream_answer(response, "a", 200)
    assert len(stack.hits(stack.a, "/fast/flap")) == 2


# --- what may be sent again ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "idempotency_key", "attempts"),
    [
        ("GET", False, 3),
        ("PUT", False, 3),
        ("DELETE", False, 3),
        ("POST", False, 1),
        ("PATCH", False, 1),
        ("POST", True, 3),
        ("PATCH", True, 3),
    ],
)
def test_non_idempotent_methods_need_an_idempotency_key(
    stack: Stack, client: httpx.Client, method: str, idempotency_key: bool, attempts: int
) -> None:
    stack.a.control(mode="fail", status=503)
    path = f"/fast/{method.lower()}-{idempotency_key}"
    headers = {"Idempotency-Key": "order-42"} if idempotency_key else {}
    content = b"payload" if method in ("POST", "PUT", "PATCH") else None

    response = client.request(method, path, headers=headers, content=content)

    assert_upstream_answer(response, "a", 503)
    hits = stack.hits(stack.a, path)
    assert len(hits) == attempts
    assert {hit["method"] for hit in hits} == {method}


def test_retried_post_sends_the_same_body_each_time(stack: Stack, client: httpx.Client) -> None:
    stack.b.control(mode="flap", flap_every=1, status=503)
    httpx.get(f"{stack.b.url}/warm", trust_env=False)  # spend the flap's first "ok"
    body = os.urandom(200_000)

    response = client.post("/replay", content=body, headers={"Idempotency-Key": "k-1"})

    echoed = assert_upstream_answer(response, "b", 200)
    assert echoed["body_len"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    hits = stack.hits(stack.b, "/replay")
    assert [hit["method"] for hit in hits] == ["POST", "POST"]
    assert {hit["headers"].get("content-length") for hit in hits} == {str(len(body))}


def test_body_over_max_replay_bytes_is_sent_once(stack: Stack, client: httpx.Client) -> None:
    stack.a.control(mode="fail", status=503)

    response = client.post("/small-replay", content=b"x" * 4096, headers={"Idempotency-Key": "k"})

    assert_upstream_answer(response, "a", 503)
    assert len(stack.hits(stack.a, "/small-replay")) == 1


def test_connection_refused_is_retried_even_for_post(stack: Stack, client: httpx.Client) -> None:
    body = b"never sent to the dead backend"

    responses = [client.post("/refused", content=body) for _ in range(4)]

    for response in responses:
        echoed = assert_upstream_answer(response, "echo", 200)
        assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert len(stack.hits(stack.echo, "/refused")) == 4


def test_post_reset_after_sending_is_not_retried(stack: Stack, client: httpx.Client) -> None:
    stack.a.control(mode="reset")

    response = client.post("/fast/reset-post", content=b"maybe processed")

    assert_gateway_error(response, 502, "upstream")
    assert len(stack.hits(stack.a, "/fast/reset-post")) == 1


def _pool_a_connection(stack: Stack, client: httpx.Client) -> None:
    """Leave an idle keep-alive connection to ``a`` in the gateway's upstream pool."""
    stack.a.control(mode="ok")
    assert client.get("/fast/pooled").status_code == 200


def test_get_reset_after_sending_is_retried_per_policy(stack: Stack, client: httpx.Client) -> None:
    _pool_a_connection(stack, client)
    stack.a.control(mode="reset")

    response = client.get("/fast/reset-get")

    assert_gateway_error(response, 502, "upstream")
    assert len(stack.hits(stack.a, "/fast/reset-get")) == FAST_RETRY["max_retries"] + 1


def test_get_reset_without_retry_policy_is_sent_once(stack: Stack, client: httpx.Client) -> None:
    _pool_a_connection(stack, client)
    stack.a.control(mode="reset")

    response = client.get("/no-retry")

    assert_gateway_error(response, 502, "upstream")
    assert len(stack.hits(stack.a, "/no-retry")) == 1


# --- where retries go ---------------------------------------------------------------------------


def test_each_retry_prefers_a_backend_not_yet_tried(stack: Stack, client: httpx.Client) -> None:
    stack.a.control(mode="fail", status=503)
    stack.b.control(mode="fail", status=502)

    response = client.get("/both-failing")

    assert response.status_code in (502, 503)
    hits = sorted(
        [("a", h["t"]) for h in stack.hits(stack.a, "/both-failing")]
        + [("b", h["t"]) for h in stack.hits(stack.b, "/both-failing")],
        key=lambda hit: hit[1],
    )
    servers = [name for name, _ in hits]
    assert len(servers) == 4
    assert all(first != second for first, second in pairwise(servers)), servers
    assert response.headers["x-upstream"] == servers[-1]


def test_retry_goes_to_the_healthy_backend(stack: Stack, client: httpx.Client) -> None:
    stack.a.control(mode="fail", status=503)

    responses = [client.get("/one-ok") for _ in range(6)]

    for response in responses:
        assert_upstream_answer(response, "echo", 200)
    assert len(stack.hits(stack.echo, "/one-ok")) == 6


# --- time limits --------------------------------------------------------------------------------


def test_upstream_retry_after_sets_the_wait(stack: Stack, client: httpx.Client) -> None:
    stack.a.control(mode="ok")

    response = client.get("/retry-after", params={"retry_after": "1"})

    body = assert_upstream_answer(response, "a", 503)
    assert body == {"server": "a", "status": 503}
    assert response.headers["retry-after"] == "1"
    hits = stack.hits(stack.a, "/_status/503")
    assert len(hits) == 2
    assert 0.9 <= hits[1]["t"] - hits[0]["t"] <= 1.6


def test_deadline_bounds_the_whole_request(stack: Stack, client: httpx.Client) -> None:
    stack.a.control(mode="fail", status=503)
    sent_at = time.time()

    response = client.get("/deadline")

    answered_after = time.time() - sent_at
    assert answered_after < 0.7
    if response.status_code == 504:
        assert_gateway_error(response, 504, "timeout")
    else:
        assert_upstream_answer(response, "a", 503)
    hits = stack.hits(stack.a, "/deadline")
    assert 1 <= len(hits) <= 2  # t = 0 and t = 0.4; the next wait (0.8 s) passes the deadline
    assert all(hit["t"] <= sent_at + DEADLINE_MS / 1000 + 0.05 for hit in hits), hits


async def test_retry_budget_caps_the_load_on_a_dead_upstream(stack: Stack) -> None:
    stack.a.control(mode="fail", status=503)
    requests = 300

    # aiohttp as the load client: httpx.AsyncClient needs seconds for this burst on its own
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:

        async def one() -> tuple[int, str | None, bytes]:
            async with session.get(f"{stack.gateway.url}/budget") as response:
                return response.status, response.headers.get("x-upstream"), await response.read()

        answers = await asyncio.gather(*(one() for _ in range(requests)))

    assert {(status, server) for status, server, _ in answers} == {(503, "a")}
    assert all(json.loads(body)["error"] == "injected failure" for _, _, body in answers)
    attempts = len(stack.hits(stack.a, "/budget"))
    # 20 % of the requests + 3 retries/s over the 10 s window; the floor alone is 30
    assert requests + 30 <= attempts <= requests * 1.2 + 3 * 10


def test_garbage_retry_after_is_ignored(stack: Stack, client: httpx.Client) -> None:
    before = stack.canned.hits

    response = client.get("/garbage-retry-after")

    assert response.status_code == 503
    assert response.json() == {"server": "canned"}
    assert stack.canned.hits - before == 3


# --- resources ----------------------------------------------------------------------------------


def test_retry_traffic_leaks_no_file_descriptors(
    stack: Stack, gateway_factory: Callable[..., Gateway]
) -> None:
    gateway = gateway_factory(stack.config)
    with gateway.client() as client:
        for path in ("/fast/warm", "/one-ok", "/both-failing"):
            client.get(path)
        client.post("/refused", content=b"warm")
    time.sleep(0.5)
    baseline = gateway.open_fds()

    stack.a.control(mode="fail", status=503)
    stack.b.control(mode="fail", status=503)
    with gateway.client() as client:
        for i in range(5):
            assert client.get(f"/fast/fail-{i}").status_code == 503
            assert client.get("/one-ok").status_code == 200
            assert client.post("/refused", content=b"x" * 1000).status_code == 200
            assert client.get("/both-failing").status_code == 503
    stack.a.control(mode="reset")
    for i in range(5):  # a new client connection each time
        assert httpx.get(f"{gateway.url}/fast/reset-{i}", trust_env=False).status_code == 502
    time.sleep(0.5)

    assert abs(gateway.open_fds() - baseline) <= 4
