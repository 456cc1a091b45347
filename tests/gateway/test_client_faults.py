"""What a client does is never a backend's failure (DESIGN.md §5), and the gateway's own numbers
tell the truth about whose time is whose.

- a client too slow to send its body before the route's deadline gets 408 ``client_timeout``;
  the backend's breaker hears nothing and the upstream metrics count no failure;
- a public route whose rate limit counts per user reads an optional token (its ``sub``) and
  counts an invalid one by IP, never with a 401;
- the gateway-overhead figure leaves out retry backoff.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from tests.support.gateway import Gateway, route
from tests.support.procs import Upstream

GatewayFactory = Callable[..., Gateway]
UpstreamFactory = Callable[[str], Upstream]
SECRET = "client-faults-secret-0123456789abcdef"


def slow_body_exchange(gateway: Gateway, path: str, stall_s: float = 2.0) -> bytes:
    """Send a head declaring 10 body bytes, 2 of them, then stall; the answer that comes."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nab".encode())
        sock.settimeout(stall_s)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and received.endswith(b"}"):
                    break
        except TimeoutError:
            pass
    return received


def admin(gateway: Gateway, path: str) -> Any:
    return httpx.get(f"{gateway.admin_url}{path}", trust_env=False).json()


def test_a_slow_upload_past_the_deadline_is_408_and_never_a_backend_failure(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    upstream = upstream_factory("patient")
    breaker = {"failure_threshold": 2, "reset_timeout_s": 30}
    gateway = gateway_factory(
        {
            "routers": [
                route("/upload", "/upload", [upstream.url], ["POST"], deadline_ms=400,
                      circuit_breaker=breaker),
                route("/buffered", "/buffered", [upstream.url], ["POST"], deadline_ms=400,
                      retry={"max_retries": 2}),
            ]
        }
    )  # fmt: skip

    for path in ("/upload", "/upload", "/upload", "/buffered", "/buffered"):
        started = time.monotonic()
        answer = slow_body_exchange(gateway, path)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"type": "client_timeout"' in answer
        assert time.monotonic() - started < 1.5

    (circuit,) = admin(gateway, "/api/circuits")["circuits"]
    assert (circuit["state"], circuit["failures"]) == ("closed", 0)
    metrics = httpx.get(f"{gateway.admin_url}/metrics", trust_env=False).text
    assert 'outcome="timeout"' not in metrics
    assert 'kairos_requests_total{code="408",method="POST",route="upload"} 3.0' in metrics
    # the retried route reads the body before any attempt: the backend never saw these
    assert all(hit["path"] != "/buffered" for hit in upstream.hit_log())
    with gateway.client() as client:
        assert client.post("/upload", content=b"0123456789").status_code == 200


def test_a_public_per_user_limit_keys_on_an_optional_token(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    upstream = upstream_factory("limited")
    limit = {"strategy": "PerUser", "requests_per_window": 2, "window_duration": 60}
    gateway = gateway_factory(
        {
            "jwt": {"secret": SECRET},
            "routers": [route("/open", "/open", [upstream.url], rate_limit=limit)],
        }
    )

    def status(token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with gateway.client() as client:
            return client.get("/open", headers=headers).status_code

    alice = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    bob = jwt.encode({"sub": "bob"}, SECRET, algorithm="HS256")
    assert [status(alice) for _ in range(3)] == [200, 200, 429]
    assert [status(bob) for _ in range(3)] == [200, 200, 429]  # bob has his own quota
    assert [status("not.a.token") for _ in range(2)] == [200, 200]  # anonymous: by IP, no 401
    assert status(None) == 429  # the same IP's quota


def test_gateway_overhead_leaves_out_retry_backoff(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    upstream = upstream_factory("flaky")
    upstream.control(mode="fail", status=503)
    retry = {"max_retries": 2, "initial_backoff_ms": 200, "jitter": False, "budget_percent": 100}
    gateway = gateway_factory(
        {
            "circuit_breaker": {"failure_threshold": 1000},
            "routers": [route("/flaky", "/flaky", [upstream.url], retry=retry)],
        }
    )
    with gateway.client() as client:
        started = time.monotonic()
        assert client.get("/flaky").status_code == 503
        assert time.monotonic() - started >= 0.6  # 200 + 400 ms of backoff
    snapshot = admin(gateway, "/api/metrics")
    assert snapshot["latency_ms"]["p50"] >= 600
    assert snapshot["overhead_ms"]["p50"] < 100
