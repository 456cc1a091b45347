"""The gateway and the dry run agree: one matrix of requests and backend states, run through
``Pipeline.handle`` (on an in-memory upstream) and through ``plan_request``.

For every cell: the same status and error type; the backend the pipeline used is one the dry
run lists as a candidate of the pool it picks from (exactly the dry run's pick for ``ip_hash``);
and a request the pipeline retried is exactly one whose plan says a retry ``applies``. The dry
run is run twice: on the live shared state (as ``POST /api/route-test`` does) and on snapshots
mapped from the admin API's circuit data (as ``kairos route-test --live`` does).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from kairos_cli.live import snapshot
from kairos_client.models import CircuitInfo
from kairos_core.config import parse_config
from kairos_core.config.models import HealthCheckConfig
from kairos_core.dryrun import DryRun, plan_request
from kairos_core.http import ProxyRequest
from kairos_core.pipeline import Pipeline
from kairos_core.selection import SnapshotStates
from kairos_core.state import RuntimeState, SharedState, compile_state
from tests.support.memory import Call, MemoryUpstream, Reply

SECRET = "agreement-secret-0123456789abcdefghij"
A, B, C = "http://10.0.0.1:8001", "http://10.0.0.2:8002", "http://10.0.0.3:8003"
MAX_BODY = 1000


def _backend(url: str) -> dict[str, Any]:
    host, port = url.rsplit(":", 1)
    return {"host": host, "port": int(port), "health_check_path": "/health"}


CONFIG = {
    "jwt": {"secret": SECRET},
    "server": {"max_body_bytes": MAX_BODY},
    "routers": [
        {
            "name": "items",
            "external_path": "/api/items/{id}",
            "internal_path": "/items/{id}",
            "methods": ["GET", "POST"],
            "backends": [_backend(A), _backend(B)],
            "retry": {"max_retries": 2, "initial_backoff_ms": 0, "budget_percent": 100},
        },
        {
            "name": "me",
            "external_path": "/api/me",
            "internal_path": "/me",
            "methods": ["GET"],
            "auth_required": True,
            "backends": [_backend(A), _backend(B)],
        },
        {
            "name": "sticky",
            "external_path": "/sticky",
            "internal_path": "/sticky",
            "methods": ["GET"],
            "load_balancing_strategy": "ip_hash",
            "backends": [_backend(A), _backend(B), _backend(C)],
        },
        {
            "name": "safe",
            "external_path": "/safe",
            "internal_path": "/safe",
            "methods": ["GET"],
            "backends": [_backend(A), _backend(B)],
            "fallback": [_backend(C)],
        },
    ],
}


@dataclass(frozen=True)
class Asked:
    name: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    chunked: bool = False
    client_ip: str = "127.0.0.1"


def _token() -> str:
    return jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")


REQUESTS = [
    Asked("plain", "GET", "/api/items/1"),
    Asked("control byte", "GET", "/api/items/1", (("X-Bad", "a\x01b"),)),
    Asked(
        "two authorization", "GET", "/api/items/1", (("Authorization", "a"), ("Authorization", "b"))
    ),
    Asked("two hosts", "GET", "/api/items/1", (("Host", "evil.example"),)),
    Asked("declared too large", "POST", "/api/items/1", (("Content-Length", "5000"),)),
    Asked("signed length", "POST", "/api/items/1", (("Content-Length", "+5"),), b"hello"),
    Asked("length and chunked", "POST", "/api/items/1", (("Content-Length", "5"),), b"hello", True),
    Asked("chunked body", "POST", "/api/items/1", (), b"hello", chunked=True),
    Asked("post", "POST", "/api/items/1", (), b"hello"),
    Asked("post with key", "POST", "/api/items/1", (("Idempotency-Key", "k1"),), b"hello"),
    Asked("big get", "GET", "/api/items/1", (), b"x" * 900),
    Asked("traversal", "GET", "/api/../etc/passwd"),
    Asked("unknown", "GET", "/nowhere"),
    Asked("wrong method", "DELETE", "/api/items/1"),
    Asked("no token", "GET", "/api/me"),
    Asked("bad token", "GET", "/api/me", (("Authorization", "Bearer x.y.z"),)),
    Asked("token", "GET", "/api/me", (("Authorization", f"Bearer {_token()}"),)),
    Asked("sticky 1", "GET", "/sticky", client_ip="192.0.2.10"),
    Asked("sticky 2", "GET", "/sticky", client_ip="192.0.2.77"),
    Asked("safe", "GET", "/safe"),
]

STATES = {
    "all well": ((), ()),
    "A open": ((A,), ()),
    "A open, B unhealthy": ((A,), (B,)),
    "A and B open": ((A, B), ()),
    "A and B unhealthy": ((), (A, B)),
    "all open": ((A, B, C), ()),
    "all unhealthy": ((), (A, B, C)),
}


async def _prepared(
    opened: tuple[str, ...], sick: tuple[str, ...]
) -> tuple[RuntimeState, MemoryUpstream]:
    def script(call: Call) -> Reply:
        if call.target == "/health":
            return Reply(500 if call.origin in sick else 200)
        return Reply(503)  # retryable: shows whether the pipeline retries

    upstream = MemoryUpstream(script)
    shared = SharedState(upstream=upstream)
    state = compile_state(parse_config(json.dumps(CONFIG), environ={}), shared)
    assert shared.health is not None
    shared.health.configure(state.health_targets(), HealthCheckConfig(unhealthy_threshold=1))
    for _ in range(200):
        if all(not shared.healthy(key) for key in sick):
            break
        await asyncio.sleep(0.001)
    for key in opened:
        breaker = shared.breakers.get(key)
        assert breaker is not None
        breaker.force_open()
    upstream.calls.clear()
    return state, upstream


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    yield body[:2]
    yield body[2:]


def _proxy_request(asked: Asked) -> ProxyRequest:
    headers = [("Host", "gateway.test"), *asked.headers]
    if asked.body is not None:
        if asked.chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        if not any(k.lower() == "content-length" for k, _ in headers) and not asked.chunked:
            headers.append(("Content-Length", str(len(asked.body))))
    path, _, query = asked.path.partition("?")
    return ProxyRequest(
        method=asked.method,
        raw_path=path,
        query=query,
        headers=headers,
        peer_ip=asked.client_ip,
        body=_chunks(asked.body) if asked.body is not None else None,
    )


def _circuit_snapshots(shared: SharedState) -> SnapshotStates:
    """What ``route-test --live`` builds from ``GET /api/circuits``."""
    infos = [
        CircuitInfo(
            backend=breaker.backend,
            state=breaker.state,
            healthy=shared.healthy(breaker.backend),
            in_flight=shared.in_flight.get(breaker.backend),
            admitting=shared.admits(breaker.backend),
            half_open_in_s=shared.seconds_until_half_open(breaker.backend),
        )
        for breaker in shared.breakers
    ]
    return SnapshotStates({info.backend: snapshot(info) for info in infos})


def _plan(state: RuntimeState, asked: Asked, states: Any) -> DryRun:
    request = _proxy_request(asked)
    return plan_request(
        state,
        asked.method,
        asked.path,
        headers=request.headers,
        client_ip=asked.client_ip,
        body=asked.body,
        states=states,
    )


@pytest.mark.parametrize("state_name", list(STATES))
@pytest.mark.parametrize("asked", REQUESTS, ids=[r.name for r in REQUESTS])
async def test_gateway_and_dry_run_agree(asked: Asked, state_name: str) -> None:
    opened, sick = STATES[state_name]
    state, upstream = await _prepared(opened, sick)
    plans = [
        _plan(state, asked, state.shared),
        _plan(state, asked, _circuit_snapshots(state.shared)),
    ]
    assert plans[0].to_dict() == plans[1].to_dict()
    plan = plans[0]

    response = await Pipeline(state, upstream).handle(_proxy_request(asked))
    await response.close()
    body = response.body if isinstance(response.body, bytes) else b""
    error_type = json.loads(body)["type"] if body.startswith(b'{"error"') else None

    if plan.routable:
        assert upstream.calls, f"dry run says routable, gateway answered {response.status}"
        assert (response.status, error_type) == (503, None)  # the upstream's answer
        pool = plan.candidates if plan.pick and plan.pick.pool == "backends" else plan.fallback
        eligible = {c.key for c in pool if c.eligible}
        assert upstream.calls[0].origin in eligible
        if state.routes[plan.route_id or ""].router.load_balancing_strategy == "ip_hash":
            assert plan.pick is not None and upstream.calls[0].origin == plan.pick.key
        retried = len(upstream.calls) > 1
        assert retried == (plan.retry is not None and plan.retry.applies)
    else:
        assert not upstream.calls
        assert (response.status, error_type) == (plan.status, plan.outcome)
