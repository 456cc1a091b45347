"""Fixes from the hardening review, each pinned against a real ``kairos-gateway`` process.

- an upstream ``Retry-After`` longer than the route's ``max_backoff_ms`` ends the retries, and its
  answer goes back at once (``kairos_core.retry``);
- header bytes outside ASCII pass through unchanged, request and response
  (``kairos_gateway.proxy_protocol``);
- a request its client abandoned is still logged and counted, as 499 ``client_closed``
  (``kairos_core.pipeline``);
- a small body that stalls past the route's ``timeout_ms`` is a 504 ``timeout``, not a 502;
- a config that would leave a non-loopback admin listener without a token is refused, through
  ``PUT /api/config`` and through a reload (``kairos_gateway.runtime``);
- ``If-Match: *`` and weak validators are accepted by ``PUT /api/config``; a stale one is 412.

Every test starts its own gateway (``gateway_factory``); a test that needs exact bytes on the wire
talks to the gateway over a raw socket or puts a raw upstream (``CannedUpstream``) behind it.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support.canned import CannedUpstream
from tests.support.gateway import Gateway, route
from tests.support.procs import Upstream
from tests.support.waiting import wait_until

GatewayFactory = Callable[..., Gateway]
UpstreamFactory = Callable[[str], Upstream]

BREAKER_OFF = {"failure_threshold": 1000}
ADMIN_TOKEN = "hardening-admin-token-0123456789"  # 32 characters
CLIENT_TIMEOUT_S = 10.0
# UTF-8 text, and a latin-1 byte that is not UTF-8 at all: every byte must pass unchanged
NON_ASCII_HEADERS = {
    b"x-name": "café".encode(),
    b"x-euro": "€uro".encode(),
    b"x-latin": b"caf\xe9",
}
NON_ASCII_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Name: caf\xc3\xa9\r\nX-Latin: caf\xe9\r\n\r\nok"
)
STALLED_SMALL_BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"


@pytest.fixture
def raw_upstream() -> Iterator[Callable[..., CannedUpstream]]:
    started: list[CannedUpstream] = []

    def start(response: bytes, **kwargs: Any) -> CannedUpstream:
        upstream = CannedUpstream(response, **kwargs)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.close()


def raw_exchange(gateway: Gateway, request: bytes) -> bytes:
    """Send ``request`` bytes to the proxy listener; every byte of the answer, up to EOF."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, raw value) of each header line of a message head, in order."""
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    pairs = [line.partition(b":") for line in lines]
    return [(name.strip().lower(), value.strip()) for name, _, value in pairs]


def admin_client(gateway: Gateway, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=gateway.admin_url, headers=headers, trust_env=False, timeout=CLIENT_TIMEOUT_S
    )


# --- Retry-After above max_backoff_ms ----------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after_s", "max_retries", "hits"),
    [(3600, 3, 1), (0, 3, 4), (1, 1, 2)],
    ids=["above-cap-answered-at-once", "zero-retried", "equal-to-cap-retried"],
)
def test_retry_after_above_max_backoff_ends_the_retries(
    gateway_factory: GatewayFactory,
    upstream_factory: UpstreamFactory,
    retry_after_s: int,
    max_retries: int,
    hits: int,
) -> None:
    upstream = upstream_factory("busy")
    retry = {"max_retries": max_retries, "max_backoff_ms": 1000}
    gateway = gateway_factory(
        {
            "routers": [
                route(
                    "/slow-down",
                    "/_status/503",
                    [upstream.url],
                    retry=retry,
                    circuit_breaker=BREAKER_OFF,
                )
            ]
        }
    )

    with gateway.client() as client:
        started = time.monotonic()
        response = client.get("/slow-down", params={"retry_after": retry_after_s})
        elapsed_s = time.monotonic() - started

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == str(retry_after_s)
    assert response.json()["server"] == "busy", "the upstream's own answer, not a gateway error"
    assert upstream.hits() == hits
    if retry_after_s * 1000 > retry["max_backoff_ms"]:
        assert elapsed_s < 1.0
    else:
        assert elapsed_s >= 0.9 * retry_after_s * (hits - 1)


# --- header bytes outside ASCII ----------------------------------------------------------------


def test_non_ascii_header_bytes_pass_through_unchanged_both_ways(
    gateway_factory: GatewayFactory, raw_upstream: Callable[..., CannedUpstream]
) -> None:
    upstream = raw_upstream(NON_ASCII_RESPONSE)
    gateway = gateway_factory({"routers": [route("/raw", "/raw", [upstream.url])]})
    request = (
        b"GET /raw HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in NON_ASCII_HEADERS.items())
        + b"\r\n"
    )

    answer = raw_exchange(gateway, request)

    status_line, _, _ = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", answer
    assert answer.endswith(b"\r\n\r\nok")
    assert (b"x-name", b"caf\xc3\xa9") in header_lines(answer)
    assert (b"x-latin", b"caf\xe9") in header_lines(answer)
    assert len(upstream.requests) == 1
    forwarded = header_lines(upstream.requests[0])
    for name, value in NON_ASCII_HEADERS.items():
        assert [v for n, v in forwarded if n == name] == [value]


# --- a request its client abandoned ------------------------------------------------------------


def test_an_abandoned_request_is_logged_and_counted_as_499(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    upstream = upstream_factory("slow")
    gateway = gateway_factory({"routers": [route("/abandon", "/_slow", [upstream.url])]})

    with (
        httpx.Client(base_url=gateway.url, trust_env=False, timeout=0.3) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get("/abandon", params={"ms": 3000})

    def access_lines() -> list[str]:
        lines = gateway.process.log_text().splitlines()
        return [line for line in lines if "kairos.access" in line and "path=/abandon" in line]

    wait_until(lambda: bool(access_lines()), 2.5, "the access log line")
    [line] = access_lines()
    assert "status=499" in line.split()
    assert "error=client_closed" in line.split()
    with admin_client(gateway) as admin:
        metrics = admin.get("/api/metrics").json()
    assert metrics["requests_total"] == 1
    assert metrics["status_classes"] == {"4xx": 1}


def test_a_download_its_client_abandoned_keeps_its_status_and_is_logged_client_closed(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    """The 200 was sent, so it stays 200 (nginx logs the same), but the access log says the
    body was cut short by the client, with the bytes that went out."""
    upstream = upstream_factory("downloads")
    gateway = gateway_factory({"routers": [route("/big", "/_download", [upstream.url])]})
    host, port = gateway.url.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /big?bytes=16777216 HTTP/1.1\r\nHost: t\r\n\r\n")
        received = 0
        while received < 64 * 1024:
            data = sock.recv(64 * 1024)
            assert data
            received += len(data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def access_lines() -> list[str]:
        lines = gateway.process.log_text().splitlines()
        return [line for line in lines if "kairos.access" in line and "path=/big" in line]

    wait_until(lambda: bool(access_lines()), 2.5, "the access log line")
    [line] = access_lines()
    fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
    assert (fields["status"], fields["error"]) == ("200", "client_closed")
    assert 64 * 1024 <= int(fields["bytes"]) < 16 * 1024 * 1024


# --- a small body that stalls ------------------------------------------------------------------


def test_a_small_body_stalled_past_timeout_ms_is_504_timeout(
    gateway_factory: GatewayFactory, raw_upstream: Callable[..., CannedUpstream]
) -> None:
    upstream = raw_upstream(STALLED_SMALL_BODY, hold_open=True)
    gateway = gateway_factory(
        {"routers": [route("/stall", "/stall", [upstream.url], timeout_ms=300)]}
    )

    with gateway.client() as client:
        started = time.monotonic()
        response = client.get("/stall")
        elapsed_s = time.monotonic() - started

    assert response.status_code == 504, response.text
    assert response.json()["type"] == "timeout"
    assert 0.25 <= elapsed_s < 2.0
    assert len(upstream.requests) == 1


# --- a public admin listener keeps its token ---------------------------------------------------


def test_a_public_admin_listener_cannot_lose_its_token(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    upstream = upstream_factory("a")
    gateway = gateway_factory(
        {"admin": {"token": ADMIN_TOKEN}, "routers": [route("/echo", "/echo", [upstream.url])]},
        args=("--admin-host", "0.0.0.0"),
    )
    version = gateway.config_version()
    on_disk = gateway.config_path.read_bytes()

    with admin_client(gateway, ADMIN_TOKEN) as admin, admin_client(gateway) as anonymous:
        served = admin.get("/api/config").json()["config"]
        tokenless = {**served, "admin": {**served["admin"], "token": None}}
        refused = admin.put("/api/config", json=tokenless)

        assert refused.status_code == 400, refused.text
        body = refused.json()
        assert body["type"] == "validation_error"
        assert any(d["path"] == "admin.token" for d in body["details"]), body
        assert gateway.config_path.read_bytes() == on_disk
        assert gateway.config_version() == version
        assert anonymous.get("/api/config").status_code == 401

        admin_block = {k: v for k, v in gateway.document["admin"].items() if k != "token"}
        gateway.write_config({**gateway.document, "admin": admin_block})
        reload = admin.post("/api/config/reload")

        assert reload.status_code == 400, reload.text
        assert reload.json()["reloaded"] is False
        assert reload.json()["config_version"] == version
        assert gateway.config_version() == version
        assert anonymous.get("/api/config").status_code == 401
        assert admin.get("/api/config").status_code == 200

        kept = admin.put("/api/config", json={**served, "_comment": "token kept"})
        assert kept.status_code == 200, kept.text
    assert json.loads(gateway.config_path.read_text())["admin"]["token"] == ADMIN_TOKEN


# --- If-Match ----------------------------------------------------------------------------------


def test_put_config_accepts_star_and_weak_validators_and_refuses_a_stale_one(
    gateway_factory: GatewayFactory, upstream_factory: UpstreamFactory
) -> None:
    upstream = upstream_factory("a")
    gateway = gateway_factory({"routers": [route("/echo", "/echo", [upstream.url])]})

    with admin_client(gateway) as admin:
        served = admin.get("/api/config")
        stale = served.json()["config_version"]
        assert served.headers["etag"] == f'"{stale}"'
        document = served.json()["config"]

        def put(if_match: str, comment: str) -> httpx.Response:
            edited = {**document, "_comment": comment}
            return admin.put("/api/config", json=edited, headers={"If-Match": if_match})

        star = put("*", "star")
        assert star.status_code == 200, star.text
        current = star.json()["config_version"]
        assert current != stale
        weak = put(f'W/"{current}"', "weak")
        assert weak.status_code == 200, weak.text
        current = weak.json()["config_version"]

        for if_match in (f'"{stale}"', f'W/"{stale}"'):
            refused = put(if_match, "stale")
            assert refused.status_code == 412, refused.text
            assert refused.json()["type"] == "precondition_failed"
        assert gateway.config_version() == current


def test_a_route_saved_back_with_redacted_secrets_keeps_them(
    gateway_factory: Callable[..., Gateway], upstream_factory: Callable[[str], Upstream]
) -> None:
    a, b = upstream_factory("a"), upstream_factory("b")
    secret_key = "route-provider-key-0123456789"
    ai_route = {
        **route("/smart", "/", [a.url, b.url], name="smart"),
        "ai_policy": {
            "enabled": True,
            "strategy": "latency_prediction",
            "fallback_providers": [{"provider": "openai", "model": "m", "api_key": secret_key}],
        },
    }
    gateway = gateway_factory({"routers": [ai_route]})
    with httpx.Client(base_url=gateway.admin_url, trust_env=False) as admin:
        shown = admin.get("/api/routes/smart").json()["config"]
        assert secret_key not in json.dumps(shown)
        assert admin.put("/api/routes/smart", json=shown).status_code == 200
    saved = json.loads(gateway.config_path.read_text())["routers"][0]
    assert saved["ai_policy"]["fallback_providers"][0]["api_key"] == secret_key


def test_an_event_id_from_before_a_restart_replays_what_the_gateway_has(
    gateway_factory: Callable[..., Gateway], upstream_factory: Callable[[str], Upstream]
) -> None:
    a = upstream_factory("a")
    gateway = gateway_factory({"routers": [route("/a", "/", [a.url], name="a")]})
    with httpx.Client(base_url=gateway.admin_url, trust_env=False, timeout=5) as admin:
        admin.post(f"/api/circuits/{quote(a.url, safe='')}/open")
        with admin.stream("GET", "/api/events", headers={"Last-Event-ID": "999999"}) as stream:
            seen = []
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    seen.append(line.removeprefix("event: "))
                if "circuit" in seen:
                    break
    assert "circuit" in seen
