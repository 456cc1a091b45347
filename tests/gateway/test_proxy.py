"""Proxy behaviour of a real ``kairos-gateway`` process (DESIGN.md §2 and §4).

One gateway per test worker serves every route below; the upstreams are the real test servers of
``tests/support/upstreams.py`` plus, where a test needs bytes those cannot produce (hop-by-hop
response headers, a body cut short, a non-HTTP answer), a canned TCP upstream defined here.
Requests whose bytes httpx would normalise (``..``, bad header names, conflicting framing) are
written to a raw socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.support.canned import CannedUpstream
from tests.support.gateway import Gateway, route
from tests.support.procs import Upstream, free_port
from tests.support.tls import OPENSSL, tls_backends

JWT_SECRET = "kairos-gateway-tests-7f3a9c2e5b8d1046-hs256"
JWT_ISSUER = "kairos-tests"
JWT_AUDIENCE = "kairos-test-clients"
ORIGIN = "https://app.test"
MAX_BODY_BYTES = 1024 * 1024
TIMEOUT_MS = 300
DEADLINE_MS = 300
TRUSTED_PROXY = "127.0.0.2"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
HOP_BY_HOP_REQUEST = (
    ("Connection", "X-Custom, X-Also-Hop"),
    ("X-Custom", "dropped"),
    ("X-Also-Hop", "dropped"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA=="),
    ("Proxy-Connection", "keep-alive"),
    ("Upgrade", "example/1"),
)
HOP_BY_HOP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Connection: close, X-Hop\r\n"
    b"X-Hop: private\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Proxy-Authenticate: Basic\r\n"
    b"Proxy-Extra: 1\r\n"
    b"Trailer: X-Checksum\r\n"
    b"Upgrade: example/1\r\n"
    b"X-End-To-End: kept\r\n"
    b"Content-Length: 2\r\n\r\nok"
)


@dataclass
class Stack:
    gateway: Gateway
    echo: Upstream


def _canned(exit_stack: contextlib.ExitStack, response: bytes, **kwargs: Any) -> str:
    upstream = CannedUpstream(response, **kwargs)
    exit_stack.callback(upstream.close)
    return upstream.url


def _config(
    echo: Upstream, hang: Upstream, reset: Upstream, canned: dict[str, str], dead: str
) -> dict[str, Any]:
    all_methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return {
        "server": {"max_body_bytes": MAX_BODY_BYTES, "trusted_proxies": [f"{TRUSTED_PROXY}/32"]},
        # these tests provoke failures on purpose; keep breakers from turning them into 503s
        "circuit_breaker": {"failure_threshold": 1000},
        "jwt": {
            "secret": JWT_SECRET,
            "issuer": JWT_ISSUER,
            "audience": JWT_AUDIENCE,
            "required_claims": ["sub"],
        },
        "cors": {
            "allowed_origins": [ORIGIN],
            "allowed_methods": ["GET", "POST"],
            "allowed_headers": ["X-Api-Key", "Content-Type"],
            "max_age": 321,
        },
        "routers": [
            route("/echo/{*rest}", "/echo/{*rest}", [echo.url], methods=all_methods),
            route("/items/{id}", "/v1/items/{id}", [echo.url]),
            route("/only-get", "/only-get", [echo.url]),
            route("/cookies", "/_cookies", [echo.url]),
            route("/secure/{*rest}", "/secure/{*rest}", [echo.url], auth_required=True),
            route("/hang", "/hang", [hang.url], timeout_ms=TIMEOUT_MS),
            route("/deadline", "/deadline", [hang.url], deadline_ms=DEADLINE_MS),
            route("/reset", "/reset", [reset.url]),
            route("/dead", "/dead", [dead]),
            route("/garbage", "/garbage", [canned["garbage"]]),
            route("/hop", "/hop", [canned["hop"]]),
            route("/own-request-id", "/x", [canned["request_id"]]),
            route("/no-content-type", "/x", [canned["no_content_type"]]),
            route("/truncated", "/x", [canned["truncated"]]),
            route("/stalled", "/x", [canned["stalled"]], timeout_ms=TIMEOUT_MS),
            route("/big-head", "/x", [canned["big_head"]]),
            route(
                "/tx/{*rest}",
                "/old/{*rest}",
                [echo.url],
                request_transformation={
                    "headers": [
                        {"action": "add", "name": "X-Added", "value": "added"},
                        {"action": "add", "name": "X-Present", "value": "not-used"},
                        {"action": "set", "name": "X-Set", "value": "one"},
                        {"action": "remove", "name": "X-Secret"},
                        {
                            "action": "replace",
                            "name": "X-Version",
                            "pattern": "v(\\d+)",
                            "replacement": "version-$1",
                        },
                    ],
                    "path": {"pattern": "^/old/(.*)$", "replacement": "/new/$1"},
                    "query_params": [
                        {"action": "add", "name": "added", "value": "a b"},
                        {"action": "set", "name": "mode", "value": "fast"},
                        {"action": "remove", "name": "api_key"},
                    ],
                },
            ),
            route(
                "/mapped/{*rest}",
                "/_status/{*rest}",
                [echo.url],
                response_transformation={
                    "headers": [
                        {"action": "add", "name": "X-Gateway", "value": "kairos"},
                        {"action": "add", "name": "Content-Type", "value": "text/never"},
                        {"action": "set", "name": "X-Upstream", "value": "masked"},
                        {"action": "remove", "name": "Server"},
                        {
                            "action": "replace",
                            "name": "Content-Type",
                            "pattern": "charset=utf-8",
                            "replacement": "charset=UTF-8",
                        },
                    ],
                    "status_code_mappings": [{"from": 404, "to": 200}],
                },
            ),
        ],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with contextlib.ExitStack() as exit_stack:
        echo = exit_stack.enter_context(Upstream.start("echo"))
        hang = exit_stack.enter_context(Upstream.start("hang"))
        hang.control(mode="hang")
        reset = exit_stack.enter_context(Upstream.start("reset"))
        reset.control(mode="reset")
        canned = {
            "garbage": _canned(exit_stack, b"this is not HTTP\r\n\r\n"),
            "hop": _canned(exit_stack, HOP_BY_HOP_RESPONSE),
            "request_id": _canned(
                exit_stack,
                b"HTTP/1.1 200 OK\r\nX-Request-ID: upstream-own-id\r\n"
                b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
            ),
            "no_content_type": _canned(
                exit_stack,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            ),
            # a chunked body whose terminating chunk never comes: the upstream closes instead
            "truncated": _canned(
                exit_stack, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            ),
            "stalled": _canned(
                exit_stack,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                stall_s=3.0,
            ),
            "big_head": _canned(
                exit_stack,
                b"HTTP/1.1 200 OK\r\n"
                + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(1024))
                + b"Content-Length: 2\r\n\r\nok",
            ),
        }
        dead = f"http://127.0.0.1:{free_port()}"
        config = _config(echo, hang, reset, canned, dead)
        directory = tmp_path_factory.mktemp("proxy")
        gateway = exit_stack.enter_context(Gateway(config, directory))
        yield Stack(gateway, echo)


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.gateway.client() as c:
        yield c


# --- helpers ------------------------------------------------------------------------------------


def header_values(echoed: dict[str, Any], name: str) -> list[str]:
    """Values of ``name`` in the upstream echo's received-headers list, in order."""
    return [value for key, value in echoed["headers"] if key.lower() == name.lower()]


def assert_gateway_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """The response is the gateway's own JSON error of DESIGN.md §4; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "type", "timestamp", "request_id"}, body
    assert body["type"] == error_type
    assert isinstance(body["error"], str) and body["error"]
    assert RFC3339.fullmatch(body["timestamp"]), body["timestamp"]
    stamp = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert stamp.tzinfo is not None
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def assert_security_headers(response: httpx.Response) -> None:
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert "x-frame-options" in response.headers
    assert "referrer-policy" in response.headers


def raw_exchange(port: int, request: bytes, timeout_s: float = 5.0) -> httpx.Response:
    """Send ``request`` verbatim on a new connection; the first response (Content-Length bodies)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before a response head: {received!r}")
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body[:length])


def wait_for_log(gateway: Gateway, needle: str, timeout_s: float = 3.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = gateway.process.log_text()
        if needle in text:
            return text
        time.sleep(0.02)
    raise AssertionError(
        f"{needle!r} not in the gateway log:\n{gateway.process.log_text()[-3000:]}"
    )


def token(claims: dict[str, Any], *, key: str | None = JWT_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def good_claims(**overrides: Any) -> dict[str, Any]:
    claims = {
        "sub": "user-1",
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "exp": int(time.time()) + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


# --- forwarding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_method_is_forwarded_as_sent(client: httpx.Client, method: str) -> None:
    response = client.request(method, f"/echo/m/{method.lower()}")

    assert response.status_code == 200
    echoed = response.json()
    assert echoed["method"] == method
    assert echoed["path"] == f"/echo/m/{method.lower()}"


def test_query_string_is_forwarded_byte_for_byte(client: httpx.Client) -> None:
    query = "a=1&b=%2F%20x&flag&empty=&a=2&e=caf%C3%A9&f=x+y&g=%7E&h=%3D%26"

    echoed = client.get(f"/echo/q?{query}").json()

    assert echoed["query"] == query
    assert echoed["path"] == "/echo/q"


@pytest.mark.parametrize(
    ("sent", "upstream"),
    [
        ("plain", "/v1/items/plain"),
        ("a%20b", "/v1/items/a%20b"),
        ("a%2Fb", "/v1/items/a%2Fb"),  # an encoded slash stays inside the one segment
        ("a%2fb", "/v1/items/a%2Fb"),
        ("caf%C3%A9", "/v1/items/caf%C3%A9"),
        ("a+b", "/v1/items/a%2Bb"),
        ("%3Fq%23f", "/v1/items/%3Fq%23f"),  # cannot smuggle a query or fragment in
    ],
)
def test_path_param_is_substituted_percent_encoded(
    client: httpx.Client, sent: str, upstream: str
) -> None:
    echoed = client.get(f"/items/{sent}?k=v").json()

    assert echoed["path"] == upstream
    assert echoed["query"] == "k=v"


def test_catch_all_keeps_segment_boundaries(client: httpx.Client) -> None:
    echoed = client.get("/echo/a/b%2Fc/d%20e/").json()

    assert echoed["path"] == "/echo/a/b%2Fc/d%20e/"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_request_body_arrives_intact(client: httpx.Client, method: str) -> None:
    body = random.Random(method).randbytes(300_000)

    echoed = client.request(method, "/echo/body", content=body).json()

    assert echoed["body_len"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body_arrives_intact(client: httpx.Client) -> None:
    parts = [random.Random(i).randbytes(50_000) for i in range(8)]

    echoed = client.post("/echo/chunked", content=iter(parts)).json()

    assert echoed["body_len"] == sum(map(len, parts))
    assert echoed["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


def test_repeated_request_headers_survive(client: httpx.Client) -> None:
    echoed = client.get("/echo/multi", headers=[("X-Multi", "1"), ("X-Multi", "2")]).json()

    assert header_values(echoed, "x-multi") == ["1", "2"]


# --- headers ------------------------------------------------------------------------------------


def test_hop_by_hop_request_headers_are_not_forwarded(client: httpx.Client) -> None:
    echoed = client.get("/echo/hop", headers=[*HOP_BY_HOP_REQUEST, ("X-End-To-End", "kept")]).json()

    received = {name.lower() for name, _ in echoed["headers"]}
    for name, _ in HOP_BY_HOP_REQUEST:
        assert name.lower() not in received, echoed["headers"]
    assert header_values(echoed, "x-end-to-end") == ["kept"]


def test_hop_by_hop_response_headers_are_dropped(client: httpx.Client) -> None:
    response = client.get("/hop")

    assert response.status_code == 200
    assert response.text == "ok"
    for name in ("x-hop", "keep-alive", "proxy-authenticate", "proxy-extra", "trailer", "upgrade"):
        assert name not in response.headers, response.headers
    # Connection may be the gateway's own, never the upstream's list of hop-by-hop names
    assert "x-hop" not in response.headers.get("connection", "").lower()
    assert response.headers["x-end-to-end"] == "kept"


def test_forwarded_headers_replace_what_an_untrusted_client_sent(
    stack: Stack, client: httpx.Client
) -> None:
    spoofed = {
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.test",
    }

    echoed = client.get("/echo/xff", headers=spoofed).json()

    assert header_values(echoed, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(echoed, "x-forwarded-proto") == ["http"]
    assert header_values(echoed, "x-forwarded-host") == [f"127.0.0.1:{stack.gateway.port}"]


def test_forwarded_for_is_extended_behind_a_trusted_proxy(stack: Stack) -> None:
    transport = httpx.HTTPTransport(local_address=TRUSTED_PROXY)
    with httpx.Client(base_url=stack.gateway.url, transport=transport, trust_env=False) as c:
        echoed = c.get(
            "/echo/xff",
            headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
        ).json()

    assert header_values(echoed, "x-forwarded-for") == [f"203.0.113.7, {TRUSTED_PROXY}"]
    assert header_values(echoed, "x-forwarded-proto") == ["https"]


def test_sane_request_id_is_kept_end_to_end(client: httpx.Client) -> None:
    response = client.get("/echo/rid", headers={"X-Request-ID": "req-42.a:b_c"})

    assert header_values(response.json(), "x-request-id") == ["req-42.a:b_c"]
    assert response.headers.get_list("x-request-id") == ["req-42.a:b_c"]


@pytest.mark.parametrize(
    "sent",
    [None, "has space", "x" * 129, "<script>alert(1)</script>", "semi;colon", "caf\u00e9"],
    ids=["absent", "space", "too-long", "markup", "semicolon", "non-ascii"],
)
def test_request_id_is_generated_unless_sane(client: httpx.Client, sent: str | None) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent.encode()}

    response = client.get("/echo/rid", headers=headers)

    at_upstream = header_values(response.json(), "x-request-id")
    assert len(at_upstream) == 1
    generated = at_upstream[0]
    assert generated != sent
    assert SANE_REQUEST_ID.fullmatch(generated)
    assert response.headers.get_list("x-request-id") == [generated]


def test_request_ids_differ_between_requests(client: httpx.Client) -> None:
    ids = {client.get("/echo/rid").headers["x-request-id"] for _ in range(5)}

    assert len(ids) == 5


def test_response_carries_exactly_one_request_id(client: httpx.Client) -> None:
    response = client.get("/own-request-id", headers={"X-Request-ID": "client-id-1"})

    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == ["client-id-1"]


def test_host_at_upstream_is_the_backends(stack: Stack, client: httpx.Client) -> None:
    echoed = client.get("/echo/host", headers={"Host": "public.test"}).json()

    assert header_values(echoed, "host") == [f"127.0.0.1:{stack.echo.port}"]
    assert header_values(echoed, "x-forwarded-host") == ["public.test"]


def test_repeated_set_cookie_survives(client: httpx.Client) -> None:
    response = client.get("/cookies")

    assert response.status_code == 200
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize("path", ["/echo/sec", "/nowhere", "/only-get?method=post", "/dead"])
def test_security_headers_on_proxied_and_error_responses(client: httpx.Client, path: str) -> None:
    method = "POST" if "method=post" in path else "GET"

    response = client.request(method, path)

    assert_security_headers(response)


def test_no_content_type_is_invented(client: httpx.Client) -> None:
    response = client.get("/no-content-type")

    assert response.status_code == 200
    assert response.text == "ok"
    assert "content-type" not in response.headers


# --- the error table of DESIGN.md §4 ------------------------------------------------------------


def test_unknown_path_is_route_not_found(client: httpx.Client) -> None:
    response = client.get("/no/such/route")

    assert_gateway_error(response, 404, "route_not_found")


def test_known_path_wrong_method_is_405_with_allow(stack: Stack, client: httpx.Client) -> None:
    hits = stack.echo.hits()

    response = client.post("/only-get", content=b"x")

    assert_gateway_error(response, 405, "method_not_allowed")
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert "GET" in allowed
    assert "POST" not in allowed
    assert stack.echo.hits() == hits


@pytest.mark.parametrize(
    "raw_path",
    ["/echo/a/%2e%2e/b", "/echo/a/../b", "/echo/%2E%2E/etc/passwd", "/echo/a/..%2Fb", "/echo/./b"],
)
def test_path_traversal_is_400_and_never_forwarded(stack: Stack, raw_path: str) -> None:
    hits = stack.echo.hits()
    request = f"GET {raw_path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode()

    response = raw_exchange(stack.gateway.port, request)

    assert_gateway_error(response, 400, "bad_request")
    assert_security_headers(response)
    # the gateway saw the path exactly as sent (nothing normalised it on the way)
    wait_for_log(stack.gateway, f"path={raw_path} ")
    assert stack.echo.hits() == hits


def test_http11_request_without_host_is_400_and_never_forwarded(stack: Stack) -> None:
    hits = stack.echo.hits()

    response = raw_exchange(
        stack.gateway.port, b"GET /echo/x HTTP/1.1\r\nConnection: close\r\n\r\n"
    )

    assert_gateway_error(response, 400, "bad_request")
    assert stack.echo.hits() == hits


def test_http10_request_without_host_is_served(stack: Stack) -> None:
    response = raw_exchange(stack.gateway.port, b"GET /echo/x HTTP/1.0\r\n\r\n")

    assert response.status_code == 200


def test_trace_on_a_known_path_is_405_with_allow(stack: Stack) -> None:
    request = b"TRACE /only-get HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"

    response = raw_exchange(stack.gateway.port, request)

    assert_gateway_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers.get("allow", "")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"TRACE /only-get HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        b"POST /echo/x HTTP/1.1\r\nHost: gw\r\nContent-Length: abc\r\n\r\n",
    ],
    ids=["trace", "bad-content-length"],
)
def test_framework_rejections_carry_security_headers(stack: Stack, request_bytes: bytes) -> None:
    response = raw_exchange(stack.gateway.port, request_bytes)

    assert 400 <= response.status_code < 500
    assert_security_headers(response)


def test_framework_rejection_does_not_echo_an_insane_request_id(stack: Stack) -> None:
    request = (
        b"TRACE /only-get HTTP/1.1\r\nHost: gw\r\nX-Request-ID: <script>alert(1)</script>\r\n"
        b"Connection: close\r\n\r\n"
    )

    response = raw_exchange(stack.gateway.port, request)

    body = assert_gateway_error(response, 405, "method_not_allowed")
    assert SANE_REQUEST_ID.fullmatch(body["request_id"])


def test_conflicting_framing_is_400_and_never_forwarded(stack: Stack) -> None:
    hits = stack.echo.hits()
    request = (
        b"POST /echo/smuggle HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /echo/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
    )

    response = raw_exchange(stack.gateway.port, request)

    assert_gateway_error(response, 400, "bad_request")
    time.sleep(0.2)
    assert stack.echo.hits() == hits


@pytest.mark.parametrize(
    "bad_header", [b"Bad Header: y", b"X-Ctl: a\x01b", b"X-Nul: a\x00b"], ids=["name", "ctl", "nul"]
)
def test_malformed_header_is_400_and_never_forwarded(stack: Stack, bad_header: bytes) -> None:
    hits = stack.echo.hits()
    request = (
        b"GET /echo/h HTTP/1.1\r\nHost: gw\r\n" + bad_header + b"\r\nConnection: close\r\n\r\n"
    )

    response = raw_exchange(stack.gateway.port, request)

    assert_gateway_error(response, 400, "bad_request")
    assert_security_headers(response)
    assert stack.echo.hits() == hits


def test_declared_body_over_cap_is_413_before_it_is_sent(stack: Stack) -> None:
    hits = stack.echo.hits()
    # only the head is sent: the answer must not wait for the body
    request = (
        f"POST /echo/big HTTP/1.1\r\nHost: gw\r\nContent-Length: {2 * MAX_BODY_BYTES}\r\n\r\n"
    ).encode()

    started = time.monotonic()
    response = raw_exchange(stack.gateway.port, request, timeout_s=3)

    assert time.monotonic() - started < 2
    assert_gateway_error(response, 413, "payload_too_large")
    assert stack.echo.hits() == hits


def test_streamed_body_passing_the_cap_is_413(client: httpx.Client) -> None:
    chunk = b"z" * 65536
    chunks = (chunk for _ in range(MAX_BODY_BYTES // len(chunk) + 2))

    response = client.post("/echo/streamed-big", content=chunks)

    assert_gateway_error(response, 413, "payload_too_large")


def test_connection_refused_is_502(client: httpx.Client) -> None:
    response = client.get("/dead")

    assert_gateway_error(response, 502, "upstream")


def test_upstream_reset_is_502(client: httpx.Client) -> None:
    response = client.get("/reset")

    assert_gateway_error(response, 502, "upstream")


def test_non_http_upstream_answer_is_502(client: httpx.Client) -> None:
    response = client.get("/garbage")

    assert_gateway_error(response, 502, "upstream")


@pytest.mark.parametrize(("path", "limit_ms"), [("/hang", TIMEOUT_MS), ("/deadline", DEADLINE_MS)])
def test_hanging_upstream_is_504_on_time(client: httpx.Client, path: str, limit_ms: int) -> None:
    started = time.monotonic()
    response = client.get(path)
    elapsed = time.monotonic() - started

    assert_gateway_error(response, 504, "timeout")
    assert limit_ms / 1000 * 0.9 <= elapsed < limit_ms / 1000 + 1.5


@pytest.mark.parametrize("path", ["/truncated", "/stalled"])
def test_broken_upstream_body_is_not_passed_off_as_complete(stack: Stack, path: str) -> None:
    with (
        httpx.Client(base_url=stack.gateway.url, trust_env=False, timeout=3) as c,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
        c.stream("GET", path) as response,
    ):
        b"".join(response.iter_bytes())


# --- JWT ----------------------------------------------------------------------------------------


def test_valid_token_is_forwarded(client: httpx.Client) -> None:
    bearer = token(good_claims())

    response = client.get("/secure/me", headers={"Authorization": f"Bearer {bearer}"})

    assert response.status_code == 200
    assert response.json()["path"] == "/secure/me"


REJECTED_AUTHORIZATIONS: dict[str, tuple[Callable[[], str | None], str]] = {
    "missing": (lambda: None, "missing bearer token"),
    "expired": (
        lambda: f"Bearer {token(good_claims(exp=int(time.time()) - 3600))}",
        "token expired",
    ),
    "wrong-audience": (
        lambda: f"Bearer {token(good_claims(aud='someone-else'))}",
        "invalid audience",
    ),
    "missing-claim": (
        lambda: f"Bearer {token(good_claims(sub=None))}",
        "missing required claim 'sub'",
    ),
    "alg-none": (
        lambda: f"Bearer {token(good_claims(), key=None, algorithm='none')}",
        "unsupported algorithm",
    ),
    "wrong-key": (
        lambda: f"Bearer {token(good_claims(), key='another-secret-0123456789abcdef0123')}",
        "invalid signature",
    ),
    "basic-scheme": (lambda: f"Basic {token(good_claims())}", "Bearer"),
}


@pytest.mark.parametrize("case", sorted(REJECTED_AUTHORIZATIONS))
def test_rejected_token_is_401_and_never_forwarded(
    stack: Stack, client: httpx.Client, case: str
) -> None:
    make_authorization, reason = REJECTED_AUTHORIZATIONS[case]
    authorization = make_authorization()
    headers = {} if authorization is None else {"Authorization": authorization}
    hits = stack.echo.hits()

    response = client.get("/secure/me", headers=headers)

    body = assert_gateway_error(response, 401, "authentication_error")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert reason in body["error"]
    assert JWT_SECRET not in response.text
    assert stack.echo.hits() == hits


# --- CORS ---------------------------------------------------------------------------------------


def preflight(client: httpx.Client, path: str, origin: str, method: str) -> httpx.Response:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "X-Api-Key",
        },
    )


def test_preflight_is_answered_by_the_gateway(stack: Stack, client: httpx.Client) -> None:
    hits = stack.echo.hits()

    response = preflight(client, "/echo/cors", ORIGIN, "POST")

    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert "POST" in methods
    assert "x-api-key" in response.headers["access-control-allow-headers"].lower()
    assert response.headers["access-control-max-age"] == "321"
    assert "origin" in response.headers.get("vary", "").lower()
    assert response.content == b""
    assert stack.echo.hits() == hits


@pytest.mark.parametrize(
    ("origin", "method"), [("https://evil.test", "GET"), (ORIGIN, "PUT")], ids=["origin", "method"]
)
def test_disallowed_preflight_gets_no_allow_headers(
    stack: Stack, client: httpx.Client, origin: str, method: str
) -> None:
    hits = stack.echo.hits()

    response = preflight(client, "/echo/cors", origin, method)

    assert response.status_code == 204
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-methods" not in response.headers
    assert stack.echo.hits() == hits


def test_preflight_of_an_authenticated_route_needs_no_token(
    stack: Stack, client: httpx.Client
) -> None:
    hits = stack.echo.hits()

    response = preflight(client, "/secure/me", ORIGIN, "GET")

    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert stack.echo.hits() == hits


def test_actual_cors_request_gets_allow_origin(client: httpx.Client) -> None:
    allowed = client.get("/echo/cors", headers={"Origin": ORIGIN})
    refused = client.get("/echo/cors", headers={"Origin": "https://evil.test"})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert refused.status_code == 200
    assert "access-control-allow-origin" not in refused.headers


# --- transformations ----------------------------------------------------------------------------


def test_request_transformation_is_visible_at_the_upstream(client: httpx.Client) -> None:
    response = client.get(
        "/tx/a/b?mode=slow&api_key=s3cret&keep=1&api%5Fkey=x&mode=again",
        headers=[
            ("X-Present", "client"),
            ("X-Set", "a"),
            ("X-Set", "b"),
            ("X-Secret", "hide-me"),
            ("X-Version", "api-v2"),
        ],
    )

    echoed = response.json()
    assert echoed["path"] == "/new/a/b"
    assert echoed["query"] == "mode=fast&keep=1&added=a%20b"
    assert header_values(echoed, "x-added") == ["added"]
    assert header_values(echoed, "x-present") == ["client"]
    assert header_values(echoed, "x-set") == ["one"]
    assert header_values(echoed, "x-secret") == []
    assert header_values(echoed, "x-version") == ["api-version-2"]


def test_response_transformation_is_visible_at_the_client(client: httpx.Client) -> None:
    response = client.get("/mapped/404")

    assert response.status_code == 200  # mapped from the upstream's 404
    assert response.json()["status"] == 404
    assert response.headers["x-gateway"] == "kairos"
    assert response.headers.get_list("x-upstream") == ["masked"]
    assert "server" not in response.headers
    assert response.headers["content-type"] == "application/json; charset=UTF-8"


def test_unmapped_status_passes_through(client: httpx.Client) -> None:
    response = client.get("/mapped/500")

    assert response.status_code == 500
    assert response.json()["status"] == 500


def test_route_without_transformation_is_untouched(client: httpx.Client) -> None:
    response = client.get("/echo/plain?api_key=k", headers={"X-Secret": "s"})

    echoed = response.json()
    assert echoed["query"] == "api_key=k"
    assert header_values(echoed, "x-secret") == ["s"]
    assert "x-gateway" not in response.headers


# --- hostile clients: duplicate singletons, spoofed addressing, underscores ---------------------


@pytest.mark.parametrize(
    "duplicate",
    [
        b"Authorization: Bearer a\r\nAuthorization: Bearer b",
        b"Host: other.example",
        b"Content-Length: 0\r\nContent-Length: 0",
    ],
    ids=["authorization", "host", "content-length"],
)
def test_a_repeated_singleton_header_is_400_and_never_forwarded(
    stack: Stack, duplicate: bytes
) -> None:
    hits = stack.echo.hits()
    request = (
        b"GET /echo/dup HTTP/1.1\r\nHost: gw\r\n" + duplicate + b"\r\nConnection: close\r\n\r\n"
    )

    response = raw_exchange(stack.gateway.port, request)

    assert_gateway_error(response, 400, "bad_request")
    assert stack.echo.hits() == hits


@pytest.mark.parametrize(
    "length", [b"+5", b"0x5", b"\xef\xbc\x95", b"5, 5"], ids=["sign", "hex", "fullwidth", "list"]
)
def test_a_content_length_that_is_not_ascii_digits_is_400(stack: Stack, length: bytes) -> None:
    hits = stack.echo.hits()
    request = (
        b"POST /echo/cl HTTP/1.1\r\nHost: gw\r\nContent-Length: " + length
        + b"\r\nConnection: close\r\n\r\nhello"
    )  # fmt: skip

    response = raw_exchange(stack.gateway.port, request)

    assert_gateway_error(response, 400, "bad_request")
    assert stack.echo.hits() == hits


def test_forwarded_and_x_real_ip_from_an_untrusted_client_are_replaced(
    stack: Stack, client: httpx.Client
) -> None:
    spoofed = {"Forwarded": "for=203.0.113.7;proto=https", "X-Real-IP": "203.0.113.7"}

    echoed = client.get("/echo/forwarded", headers=spoofed).json()

    assert header_values(echoed, "x-real-ip") == ["127.0.0.1"]
    assert header_values(echoed, "forwarded") == [
        f'for=127.0.0.1;proto=http;host="127.0.0.1:{stack.gateway.port}"'
    ]


def test_forwarded_is_extended_behind_a_trusted_proxy(stack: Stack) -> None:
    transport = httpx.HTTPTransport(local_address=TRUSTED_PROXY)
    with httpx.Client(base_url=stack.gateway.url, transport=transport, trust_env=False) as c:
        echoed = c.get(
            "/echo/forwarded",
            headers={"Forwarded": "for=203.0.113.7", "X-Forwarded-For": "203.0.113.7"},
        ).json()

    assert header_values(echoed, "x-real-ip") == ["203.0.113.7"]
    (forwarded,) = header_values(echoed, "forwarded")
    assert forwarded.startswith(f"for=203.0.113.7, for={TRUSTED_PROXY};proto=http")


def test_forwarded_for_hops_that_are_not_addresses_are_skipped(stack: Stack) -> None:
    transport = httpx.HTTPTransport(local_address=TRUSTED_PROXY)
    with httpx.Client(base_url=stack.gateway.url, transport=transport, trust_env=False) as c:
        echoed = c.get(
            "/echo/xff-garbage", headers={"X-Forwarded-For": "203.0.113.9, unknown, <script>"}
        ).json()

    assert header_values(echoed, "x-real-ip") == ["203.0.113.9"]


def test_x_forwarded_for_over_two_lines_is_read_as_one_list(stack: Stack) -> None:
    # a proxy such as HAProxy adds its own line: the client's line must not win
    transport = httpx.HTTPTransport(local_address=TRUSTED_PROXY)
    with httpx.Client(base_url=stack.gateway.url, transport=transport, trust_env=False) as c:
        echoed = c.get(
            "/echo/xff-lines",
            headers=[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.5")],
        ).json()

    assert header_values(echoed, "x-real-ip") == ["203.0.113.5"]
    assert header_values(echoed, "x-forwarded-for") == [f"6.6.6.6, 203.0.113.5, {TRUSTED_PROXY}"]


@pytest.mark.parametrize(
    "host", [b'gw";for=6.6.6.6;x="', b"gw/evil", b"user@gw", b"gw example"],
    ids=["quote", "slash", "userinfo", "space"],
)  # fmt: skip
def test_a_host_that_is_not_host_and_port_is_400_and_never_forwarded(
    stack: Stack, host: bytes
) -> None:
    hits = stack.echo.hits()
    request = b"GET /echo/host HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"

    response = raw_exchange(stack.gateway.port, request)

    assert_gateway_error(response, 400, "bad_request")
    assert stack.echo.hits() == hits


def test_header_names_with_underscores_are_dropped(client: httpx.Client) -> None:
    echoed = client.get(
        "/echo/underscores", headers={"X_Forwarded_For": "203.0.113.7", "X-Kept": "yes"}
    ).json()

    assert header_values(echoed, "x_forwarded_for") == []
    assert header_values(echoed, "x-kept") == ["yes"]


def test_an_upstream_head_over_max_upstream_header_bytes_is_502(client: httpx.Client) -> None:
    response = client.get("/big-head")

    body = assert_gateway_error(response, 502, "upstream")
    assert "head over" in body["error"]
    assert not any(name.lower().startswith("x-pad") for name in response.headers)


def test_the_aiohttp_client_caps_the_upstream_head_too(tmp_path: Path) -> None:
    # 80 lines of 1 KB: each under aiohttp's own line bound, the whole over 60 KiB
    head = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(80))
    with contextlib.ExitStack() as exit_stack:
        big = _canned(exit_stack, b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\nok")
        config = {"routers": [route("/big-head", "/x", [big])]}
        gateway = exit_stack.enter_context(
            Gateway(config, tmp_path, args=("--upstream-client", "aiohttp"))
        )
        with gateway.client() as c:
            response = c.get("/big-head")

    body = assert_gateway_error(response, 502, "upstream")
    assert "head over" in body["error"]


# --- server.security_headers --------------------------------------------------------------------

SECURITY_HEADER_NAMES = ("x-content-type-options", "x-frame-options", "referrer-policy")


def test_security_headers_false_turns_them_off(
    gateway_factory: Callable[..., Gateway], upstream: Upstream
) -> None:
    gateway = gateway_factory(
        {
            "server": {"security_headers": False},
            "routers": [route("/echo", "/echo", [upstream.url])],
        }
    )
    with gateway.client() as client:
        proxied = client.get("/echo")
        not_found = client.get("/nowhere")
    refused = raw_exchange(
        gateway.port, b"TRACE /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    )

    assert proxied.status_code == 200
    assert_gateway_error(not_found, 404, "route_not_found")
    assert_gateway_error(refused, 405, "method_not_allowed")
    for response in (proxied, not_found, refused):
        assert response.headers.get("x-request-id")  # the gateway's own stamp is still there
        for name in SECURITY_HEADER_NAMES:
            assert name not in response.headers, (name, response.headers)


def test_a_security_header_the_upstream_sent_is_kept_not_replaced(
    gateway_factory: Callable[..., Gateway],
) -> None:
    upstream = CannedUpstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Frame-Options: SAMEORIGIN\r\n"
        b"referrer-policy: strict-origin-when-cross-origin\r\nContent-Length: 2\r\n\r\nok"
    )
    try:
        gateway = gateway_factory({"routers": [route("/framed", "/x", [upstream.url])]})
        with gateway.client() as client:
            response = client.get("/framed")
    finally:
        upstream.close()

    assert response.status_code == 200 and response.text == "ok"
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers.get_list("referrer-policy") == ["strict-origin-when-cross-origin"]
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]  # the one missing


# --- https backends -----------------------------------------------------------------------------


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command for a certificate")
@pytest.mark.parametrize("upstream_client", ["h1", "aiohttp"])
def test_an_https_backend_must_present_a_trusted_certificate_for_its_name(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, upstream_client: str
) -> None:
    with tls_backends(tmp_path) as tls:
        routes = {
            "/trusted": ("https://localhost", tls.trusted),
            "/untrusted": ("https://localhost", tls.untrusted),  # self-signed, trusted by no one
            "/wrong-name": ("https://127.0.0.1", tls.trusted),  # its certificate names localhost
        }
        gateway = gateway_factory(
            {
                "routers": [
                    {
                        "external_path": path,
                        "internal_path": "/echo",
                        "methods": ["GET"],
                        "backends": [{"host": host, "port": upstream.port}],
                    }
                    for path, (host, upstream) in routes.items()
                ]
            },
            env={"SSL_CERT_FILE": str(tls.ca_file)},  # the gateway's CA store: one certificate
            args=("--upstream-client", upstream_client),
        )
        with gateway.client() as client:
            answers = {path: client.get(path) for path in routes}

        assert answers["/trusted"].status_code == 200, answers["/trusted"].text
        assert answers["/trusted"].json()["server"] == "trusted"
        for refused in ("/untrusted", "/wrong-name"):
            body = assert_gateway_error(answers[refused], 502, "upstream")
            assert "certificate" in body["error"].lower(), body
        assert tls.trusted.hits() == 1 and tls.untrusted.hits() == 0
