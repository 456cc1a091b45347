"""The request pipeline in process (``kairos_core.pipeline``), on an in-memory upstream behind
the ``UpstreamClient`` interface: every line above the transport runs, no socket is opened.

Each test pins a sentence of DESIGN.md §2 / §5 or of the pipeline's docstring: the order of the
steps (the first that refuses decides), whose fault an attempt's end is, and what is recorded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest

from kairos_core.config import parse_config
from kairos_core.http import ProxyRequest, ProxyResponse
from kairos_core.metrics import Metrics
from kairos_core.pipeline import Pipeline, RequestRecord
from kairos_core.state import RuntimeState, compile_state
from kairos_gateway.accesslog import AccessLog
from tests.support.memory import Call, MemoryUpstream, Reply

SECRET = "pipeline-secret-0123456789abcdefghijkl"
A, B = "http://10.0.0.1:8001", "http://10.0.0.2:8002"
MAX_BODY = 100


def _backend(url: str) -> dict[str, Any]:
    host, port = url.rsplit(":", 1)
    return {"host": host, "port": int(port)}


def _route(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "external_path": f"/{name}",
        "internal_path": f"/{name}",
        "methods": ["GET", "POST"],
        "backends": [_backend(A), _backend(B)],
        **extra,
    }


LIMIT = {"strategy": "PerIP", "requests_per_window": 2, "window_duration": 60}
CONFIG = {
    "jwt": {"secret": SECRET},
    "server": {"max_body_bytes": MAX_BODY},
    "cors": {"allowed_origins": ["https://app.test"], "allowed_methods": ["GET", "POST"]},
    "circuit_breaker": {"failure_threshold": 2, "reset_timeout_s": 60},
    "routers": [
        _route("open"),
        _route("private", auth_required=True, rate_limit=LIMIT),
        _route("limited", rate_limit=LIMIT),
        _route("retried", retry={"max_retries": 1, "initial_backoff_ms": 0}),
        _route("quick", deadline_ms=100, retry={"max_retries": 3, "initial_backoff_ms": 0}),
        _route(
            "shaped",
            request_transformation={"headers": [{"action": "set", "name": "X-Via", "value": "k"}]},
            response_transformation={"status_code_mappings": [{"from": 503, "to": 502}]},
        ),
    ],
}
TOKEN = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")


class Harness:
    """A pipeline on a fresh state, its in-memory upstream, and every record it produced."""

    def __init__(self, script: Callable[[Call], Reply] | None = None) -> None:
        self.upstream = MemoryUpstream(script)
        self.state: RuntimeState = compile_state(parse_config(json.dumps(CONFIG), environ={}))
        self.records: list[RequestRecord] = []
        self.metrics = Metrics("test")
        self.pipeline = Pipeline(self.state, self.upstream, on_record=self._record)

    def _record(self, record: RequestRecord) -> None:
        self.records.append(record)
        self.metrics.observe(record.sample())

    async def send(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> ProxyResponse:
        sent = [("Host", "gw.test"), *(headers or [])]
        if body is not None:
            sent.append(("Content-Length", str(len(body))))
        request = ProxyRequest(
            method, path, "", sent, "192.0.2.1", body=_stream(body) if body is not None else None
        )
        response = await self.pipeline.handle(request)
        if not isinstance(response.body, bytes):
            response.body = b"".join([chunk async for chunk in response.body])
        await response.close()
        return response

    def breaker_failures(self, key: str) -> int:
        breaker = self.state.shared.breakers.get(key)
        assert breaker is not None
        return breaker.snapshot().failures

    def counted(self, route: str, code: int) -> float:
        text = self.metrics.prometheus().decode()
        line = f'kairos_requests_total{{code="{code}",method="GET",route="{route}"}} '
        return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


async def _stream(body: bytes) -> AsyncIterator[bytes]:
    yield body


def error_type(response: ProxyResponse) -> str:
    assert isinstance(response.body, bytes)
    return str(json.loads(response.body)["type"])


def header(response: ProxyResponse, name: str) -> list[str]:
    return [v for k, v in response.headers if k.lower() == name.lower()]


# --- the order of the steps ----------------------------------------------------------------------


async def test_a_bad_head_is_refused_before_routing() -> None:
    harness = Harness()
    response = await harness.send("GET", "/nowhere", [("X-Bad", "a\x00b")])
    assert (response.status, error_type(response)) == (400, "bad_request")


async def test_a_declared_body_over_the_cap_is_413_before_routing() -> None:
    harness = Harness()
    response = await harness.send("POST", "/nowhere", [("Content-Length", str(MAX_BODY + 1))])
    assert (response.status, error_type(response)) == (413, "payload_too_large")


async def test_unknown_path_is_404_and_known_path_wrong_method_405() -> None:
    harness = Harness()
    assert (await harness.send("GET", "/nowhere")).status == 404
    wrong = await harness.send("DELETE", "/open")
    assert (wrong.status, header(wrong, "allow")) == (405, ["GET, HEAD, POST"])


async def test_a_preflight_is_answered_before_authentication() -> None:
    harness = Harness()
    preflight = [("Origin", "https://app.test"), ("Access-Control-Request-Method", "GET")]
    response = await harness.send("OPTIONS", "/private", preflight)
    assert response.status == 204
    assert header(response, "access-control-allow-origin") == ["https://app.test"]
    assert harness.upstream.calls == []


async def test_401_comes_before_the_rate_limit_and_spends_no_quota() -> None:
    harness = Harness()
    for _ in range(5):
        assert (await harness.send("GET", "/private")).status == 401
    authorized = [("Authorization", f"Bearer {TOKEN}")]
    assert [(await harness.send("GET", "/private", authorized)).status for _ in range(3)] == [
        200,
        200,
        429,
    ]


async def test_a_429_never_reaches_an_upstream_or_a_breaker() -> None:
    harness = Harness(lambda call: Reply(500))
    statuses = [(await harness.send("GET", "/limited")).status for _ in range(5)]
    assert statuses == [500, 500, 429, 429, 429]
    assert len(harness.upstream.calls) == 2
    assert harness.breaker_failures(A) + harness.breaker_failures(B) == 2
    assert [r.rate_limited for r in harness.records] == [False, False, True, True, True]


# --- selection and whose fault ----------------------------------------------------------------


async def test_every_backend_open_is_circuit_open_with_retry_after_and_counted() -> None:
    harness = Harness()
    for key in (A, B):
        breaker = harness.state.shared.breakers.get(key)
        assert breaker is not None
        breaker.force_open()
    response = await harness.send("GET", "/open")
    assert (response.status, error_type(response)) == (503, "circuit_open")
    assert header(response, "retry-after") == ["60"]
    assert harness.counted("open", 503) == 1
    assert "status=503" in AccessLog("text").line(harness.records[-1])
    assert "error=circuit_open" in AccessLog("text").line(harness.records[-1])


async def test_a_failing_backend_counts_and_opens_its_breaker_only() -> None:
    harness = Harness(lambda call: Reply(503 if call.origin == A else 200))
    for _ in range(4):
        await harness.send("GET", "/open")
    assert harness.state.shared.circuit(A) == "open"
    assert harness.state.shared.circuit(B) == "closed"


async def test_a_deadline_reached_on_the_backend_is_its_failure() -> None:
    harness = Harness(lambda call: Reply(delay_s=1.0))
    response = await harness.send("GET", "/quick")
    assert (response.status, error_type(response)) == (504, "timeout")
    assert harness.breaker_failures(A) + harness.breaker_failures(B) == 1


async def test_a_deadline_reached_waiting_for_the_clients_body_is_the_clients() -> None:
    harness = Harness()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"ab"
        await asyncio.sleep(1.0)
        yield b"cd"

    request = ProxyRequest(
        "POST", "/quick", "", [("Host", "gw"), ("Content-Length", "4")], "192.0.2.1",
        body=slow_body(),
    )  # fmt: skip
    response = await harness.pipeline.handle(request)
    await response.close()
    assert (response.status, error_type(response)) == (408, "client_timeout")
    assert harness.breaker_failures(A) + harness.breaker_failures(B) == 0
    assert harness.upstream.calls == []  # a retried route reads the body before any attempt
    assert header(response, "connection") == ["close"]


async def test_a_retry_goes_to_the_backend_not_tried_yet() -> None:
    harness = Harness(lambda call: Reply(503 if call.origin == A else 200))
    response = await harness.send("GET", "/retried")
    assert response.status == 200
    assert harness.upstream.origins() == [A, B]
    (record,) = harness.records
    assert (record.attempts, record.retries) == (2, ["status_503"])


async def test_a_response_its_client_abandoned_keeps_its_status_and_is_client_closed() -> None:
    harness = Harness(lambda call: Reply())
    for abandoned in (False, True):
        request = ProxyRequest("GET", "/retried", "", [("Host", "gw.test")], "192.0.2.1")
        response = await harness.pipeline.handle(request)
        response.abandoned = abandoned  # what the listener sets when the client went away
        await response.close()

    assert [(r.status, r.error_type) for r in harness.records] == [
        (200, None),
        (200, "client_closed"),
    ]


async def test_a_small_body_cut_short_fails_the_attempt_and_is_retried() -> None:
    harness = Harness(lambda call: Reply(cut=call.origin == A))
    response = await harness.send("GET", "/retried")
    assert (response.status, response.body) == (200, b"ok")
    assert harness.upstream.origins() == [A, B]
    assert harness.breaker_failures(A) == 1
    (record,) = harness.records
    assert record.retries == ["reset"]


async def test_a_small_body_cut_short_without_retry_is_a_502_and_a_failure() -> None:
    harness = Harness(lambda call: Reply(cut=True))
    response = await harness.send("GET", "/open")
    assert (response.status, error_type(response)) == (502, "upstream")
    assert harness.breaker_failures(A) == 1


async def test_a_post_is_not_retried_after_it_was_sent() -> None:
    harness = Harness(lambda call: Reply(503))
    assert (await harness.send("POST", "/retried", body=b"x")).status == 503
    assert len(harness.upstream.calls) == 1


async def test_a_post_is_retried_when_it_never_left() -> None:
    harness = Harness(
        lambda call: Reply(error="connect", sent=False) if call.origin == A else Reply()
    )
    assert (await harness.send("POST", "/retried", body=b"x")).status == 200
    assert harness.upstream.origins() == [A, B]


# --- what goes out and what comes back -------------------------------------------------------


async def test_transformations_and_addressing_headers_reach_the_upstream() -> None:
    harness = Harness(lambda call: Reply(503))
    response = await harness.send("GET", "/shaped", [("X-Forwarded-For", "203.0.113.1")])
    assert response.status == 502  # the response transformation mapped 503 → 502
    sent = dict((k.lower(), v) for k, v in harness.upstream.calls[0].headers)
    assert (sent["x-via"], sent["x-forwarded-for"], sent["x-real-ip"]) == (
        "k",
        "192.0.2.1",
        "192.0.2.1",
    )


@pytest.mark.parametrize("path", ["/open", "/nowhere"])
async def test_every_response_has_security_headers_and_one_request_id(path: str) -> None:
    harness = Harness(lambda call: Reply(headers=[("X-Request-ID", "upstream-id")]))
    response = await harness.send("GET", path, [("X-Request-ID", "client-id-1")])
    assert header(response, "x-request-id") == ["client-id-1"]
    assert header(response, "x-content-type-options") == ["nosniff"]


async def test_each_request_is_recorded_once_with_its_route_and_status() -> None:
    harness = Harness()
    await harness.send("GET", "/open")
    await harness.send("GET", "/nowhere")
    assert [(r.route_id, r.status, r.error_type) for r in harness.records] == [
        ("open", 200, None),
        (None, 404, "route_not_found"),
    ]


async def test_an_abandoned_request_is_recorded_as_499() -> None:
    harness = Harness(lambda call: Reply(delay_s=5.0))
    request = ProxyRequest("GET", "/open", "", [("Host", "gw")], "192.0.2.1")
    task = asyncio.create_task(harness.pipeline.handle(request))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (record,) = harness.records
    assert (record.status, record.error_type) == (499, "client_closed")
    assert harness.breaker_failures(A) == 0
