"""The proxy listener's HTTP/1.1 rules (``kairos_gateway.proxy_protocol``), on the wire.

Every test talks to a real ``kairos-gateway`` over raw sockets (``tests.support.rawhttp``) so the
exact bytes are visible: keep-alive and pipelining, HTTP/1.0, ``Connection: close``, request
bodies by length and chunked, HEAD / 204 / 304, ``Expect: 100-continue``, and the client-side
bounds (head and body timeouts, keep-alive idle, URL and header limits, an early answer to a
request whose body is still coming). Every refusal is the documented JSON error, counted as a
4xx in ``/metrics``, followed by a close; no traceback ever reaches the gateway's log.

Most tests share one gateway per module (small limits and timeouts in its config); those that
need another config start their own.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.canned import CannedUpstream
from tests.support.gateway import Gateway, route
from tests.support.procs import Upstream
from tests.support.rawhttp import RawConnection, RawResponse

GatewayFactory = Callable[..., Gateway]

MiB = 1024 * 1024
JWT_SECRET = "conformance-secret-0123456789abcdef"
HEAD_TIMEOUT_MS = 1000
BODY_TIMEOUT_MS = 500
KEEPALIVE_MS = 1000
MAX_URL_BYTES = 512
MAX_HEADER_BYTES = 2048
MAX_HEADERS = 20
MAX_BODY_BYTES = 1 * MiB
SERVER = {
    "client_header_timeout_ms": HEAD_TIMEOUT_MS,
    "client_body_timeout_ms": BODY_TIMEOUT_MS,
    "keepalive_timeout_ms": KEEPALIVE_MS,
    "max_url_bytes": MAX_URL_BYTES,
    "max_header_bytes": MAX_HEADER_BYTES,
    "max_request_headers": MAX_HEADERS,
    "max_body_bytes": MAX_BODY_BYTES,
}
METHODS = ["GET", "POST", "PUT", "HEAD"]
ERROR_KEYS = {"error", "type", "timestamp", "request_id"}


class Stack:
    def __init__(self, gateway: Gateway, echo: Upstream, fragile: Upstream) -> None:
        self.gateway = gateway
        self.echo = echo
        self.fragile = fragile

    def connect(self, timeout_s: float = 5.0) -> RawConnection:
        return RawConnection(self.gateway.port, timeout_s)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    echo, fragile = Upstream.start("echo"), Upstream.start("fragile")
    config = {
        "server": SERVER,
        "jwt": {"secret": JWT_SECRET},
        "routers": [
            route("/echo", "/echo", [echo.url], methods=METHODS),
            route("/slow", "/_slow", [echo.url]),
            route("/status/{code}", "/_status/{code}", [echo.url], methods=["GET", "HEAD"]),
            route("/events", "/_sse", [echo.url]),
            route("/private", "/echo", [echo.url], methods=METHODS, auth_required=True),
            route(
                "/fragile",
                "/echo",
                [fragile.url],
                methods=["POST"],
                circuit_breaker={"failure_threshold": 1},
            ),
        ],
    }
    gateway = Gateway(config, tmp_path_factory.mktemp("conformance")).start()
    try:
        yield Stack(gateway, echo, fragile)
    finally:
        gateway.stop()
        echo.stop()
        fragile.stop()


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    """The shared stack, its upstreams' hit counters reset."""
    stack.echo.reset_hits()
    return stack


def request(
    method: str, target: str, *headers: str, body: bytes = b"", version: str = "1.1"
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: gw.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def status_counts(gateway: Gateway) -> Counter[int]:
    """``kairos_requests_total`` summed by status code."""
    text = httpx.get(f"{gateway.admin_url}/metrics", trust_env=False).text
    counts: Counter[int] = Counter()
    for line in text.splitlines():
        if line.startswith("kairos_requests_total{"):
            code = re.search(r'code="(\d+)"', line)
            assert code is not None, line
            counts[int(code.group(1))] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def wait_for_count(gateway: Gateway, status: int, at_least: int, timeout_s: float = 3.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (count := status_counts(gateway)[status]) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def assert_error(response: RawResponse, status: int, error_type: str) -> dict[str, Any]:
    assert response.status == status, response
    assert response.header("content-type") == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["type"] == error_type, body
    assert body["request_id"] == response.header("x-request-id")
    assert response.header("x-content-type-options") == "nosniff"
    return body


def assert_no_traceback(gateway: Gateway) -> None:
    assert "Traceback" not in gateway.process.log_text(), gateway.process.log_text()[-4000:]


def echoed(response: RawResponse) -> dict[str, Any]:
    assert response.status == 200, response
    body: dict[str, Any] = response.json()
    return body


# --- keep-alive, pipelining, HTTP/1.0, Connection: close ---------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(fresh: Stack) -> None:
    with fresh.connect() as conn:
        for n in range(3):
            conn.send(request("GET", f"/echo?n={n}"))
            response = conn.read_response()
            assert echoed(response)["query"] == f"n={n}"
            assert response.header("connection") is None
    assert fresh.echo.hits() == 3


def test_pipelined_requests_are_answered_in_order(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(
            request("GET", "/slow?ms=300", "X-Request-ID: first")
            + request("GET", "/echo?n=2", "X-Request-ID: second")
            + request("GET", "/missing", "X-Request-ID: third")
        )
        answers = [conn.read_response() for _ in range(3)]
    assert [a.header("x-request-id") for a in answers] == ["first", "second", "third"]
    assert [a.status for a in answers] == [200, 200, 404]
    assert echoed(answers[1])["query"] == "n=2"


def test_a_hundred_requests_pipelined_in_one_write_are_all_answered_in_order(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(
            b"".join(request("GET", f"/missing/{n}", f"X-Request-ID: r{n}") for n in range(100))
        )
        answers = [conn.read_response() for _ in range(100)]
    assert [a.header("x-request-id") for a in answers] == [f"r{n}" for n in range(100)]
    assert {a.status for a in answers} == {404}


def test_http10_closes_after_the_response_unless_keep_alive_is_asked(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(request("GET", "/echo", version="1.0"))
        response = conn.read_response()
        assert response.status == 200
        assert response.header("connection") == "close"
        assert conn.closed_by_server(within_s=2)

    with fresh.connect() as conn:
        for _ in range(2):
            conn.send(request("GET", "/echo", "Connection: keep-alive", version="1.0"))
            response = conn.read_response()
            assert response.status == 200
            assert response.header("connection") == "keep-alive"


def test_http10_streamed_body_is_delimited_by_the_close(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(request("GET", "/events?count=3&interval_ms=10", version="1.0"))
        response = conn.read_response()
    assert response.status == 200
    assert response.header("transfer-encoding") is None
    assert response.header("connection") == "close"
    assert response.body.count(b"data:") == 3


def test_connection_close_from_the_client_is_honoured(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(request("GET", "/echo", "Connection: close"))
        response = conn.read_response()
        assert response.status == 200
        assert response.header("connection") == "close"
        assert conn.closed_by_server(within_s=2)


def test_an_upstream_connection_close_leaves_the_client_connection_open(
    gateway_factory: GatewayFactory,
) -> None:
    upstream = CannedUpstream(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    )
    try:
        gateway = gateway_factory({"routers": [route("/canned", "/canned", [upstream.url])]})
        with RawConnection(gateway.port) as conn:
            for _ in range(2):
                conn.send(request("GET", "/canned"))
                response = conn.read_response()
                assert (response.status, response.body) == (200, b"ok")
                assert response.header("connection") is None
    finally:
        upstream.close()
    assert upstream.hits == 2


def test_an_idle_keep_alive_connection_is_closed_silently(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(request("GET", "/echo"))
        assert conn.read_response().status == 200
        answered = time.monotonic()
        assert conn.closed_by_server(within_s=KEEPALIVE_MS / 1000 + 1.5)
        idle_s = time.monotonic() - answered
    assert idle_s >= KEEPALIVE_MS / 1000 * 0.8


def test_keepalive_timeout_zero_turns_keep_alive_off(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gateway = gateway_factory(
        {
            "server": {"keepalive_timeout_ms": 0},
            "routers": [route("/echo", "/echo", [upstream.url])],
        }
    )
    with RawConnection(gateway.port) as conn:
        conn.send(request("GET", "/echo"))
        response = conn.read_response()
        assert response.status == 200
        assert response.header("connection") == "close"
        assert conn.closed_by_server(within_s=2)


# --- request bodies ------------------------------------------------------------------------------


def test_a_content_length_body_reaches_the_upstream_byte_exact(fresh: Stack) -> None:
    body = bytes(range(256)) * 1200  # 300 KiB, more than the listener buffers at once
    with fresh.connect() as conn:
        conn.send(request("POST", "/echo", f"Content-Length: {len(body)}", body=body))
        first = echoed(conn.read_response())
        conn.send(request("GET", "/echo?after=1"))
        assert echoed(conn.read_response())["query"] == "after=1"
    assert first["body_len"] == len(body)
    assert first["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_chunked_body_reaches_the_upstream_byte_exact(fresh: Stack) -> None:
    pieces = [b"a" * 1, b"b" * 4095, bytes(range(256)) * 40, b"\r\n0\r\n\r\n"]
    wire = b"".join(b"%x;ext=1\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\nX-T: 1\r\n\r\n"
    with fresh.connect() as conn:
        conn.send(request("POST", "/echo", "Transfer-Encoding: chunked"))
        for offset in range(0, len(wire), 997):  # splits sizes, data and CRLFs across reads
            conn.send(wire[offset : offset + 997])
            time.sleep(0.002)
        answer = echoed(conn.read_response())
    data = b"".join(pieces)
    assert answer["body_len"] == len(data)
    assert answer["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_a_request_pipelined_after_a_chunked_body_is_served_next(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(
            request("POST", "/echo", "Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n")
            + request("GET", "/echo?second=1")
        )
        first, second = echoed(conn.read_response()), echoed(conn.read_response())
    assert first["body_len"] == 5
    assert second["query"] == "second=1"


def test_a_malformed_chunked_body_is_400(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(
            request("POST", "/echo", "Transfer-Encoding: chunked", body=b"5\r\nhello\r\nzz\r\n")
        )
        response = conn.read_response()
        assert_error(response, 400, "bad_request")
        assert "chunked" in response.json()["error"]
        assert conn.closed_by_server(within_s=2)
    assert_no_traceback(fresh.gateway)


# --- responses without a body --------------------------------------------------------------------


def test_head_gets_the_headers_and_never_a_body(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(request("HEAD", "/echo"))
        head = conn.read_response(head_request=True)
        conn.send(request("GET", "/echo?next=1"))
        following = conn.read_response()
    assert head.status == 200
    assert int(head.header("content-length") or 0) > 0
    # had a body been written after the HEAD answer, it would have been read as this response
    assert echoed(following)["query"] == "next=1"


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_carry_no_body(fresh: Stack, status: int) -> None:
    with fresh.connect() as conn:
        conn.send(request("GET", f"/status/{status}"))
        response = conn.read_response()
        conn.send(request("GET", "/echo?next=1"))
        following = conn.read_response()
    assert response.status == status
    assert response.header("transfer-encoding") is None
    if status == 204:
        assert response.header("content-length") is None
    assert echoed(following)["query"] == "next=1"


def test_a_body_longer_than_its_declared_length_is_cut_never_overrun(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    lying = {"headers": [{"action": "set", "name": "Content-Length", "value": "70000"}]}
    gateway = gateway_factory(
        {"routers": [route("/lying", "/_download", [upstream.url], response_transformation=lying)]}
    )
    with (
        httpx.Client(base_url=gateway.url, trust_env=False, timeout=5) as client,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        client.get("/lying", params={"bytes": 200_000})


# --- Expect: 100-continue ------------------------------------------------------------------------


def test_100_continue_is_sent_when_the_body_is_wanted(fresh: Stack) -> None:
    body = b"x" * 1000
    with fresh.connect() as conn:
        conn.send(request("POST", "/echo", "Expect: 100-continue", f"Content-Length: {len(body)}"))
        interim = conn.read_response()
        assert interim.status == 100
        conn.send(body)
        assert echoed(conn.read_response())["body_len"] == len(body)


@pytest.mark.parametrize(
    ("target", "extra", "status", "error_type"),
    [
        ("/private", (), 401, "authentication_error"),
        ("/missing", (), 404, "route_not_found"),
        ("/echo", (f"Content-Length: {100 * MiB}",), 413, "payload_too_large"),
    ],
    ids=["401", "404", "413"],
)
def test_no_100_continue_when_the_pipeline_answers_first(
    fresh: Stack, target: str, extra: tuple[str, ...], status: int, error_type: str
) -> None:
    headers = extra or ("Content-Length: 1000",)
    with fresh.connect() as conn:
        conn.send(request("POST", target, "Expect: 100-continue", *headers))
        response = conn.read_response()
        assert_error(response, status, error_type)
        assert response.header("connection") == "close"
        assert conn.closed_by_server(within_s=2)
    assert fresh.echo.hits() == 0


def test_an_unknown_expectation_is_417(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(request("POST", "/echo", "Expect: 200-ok", "Content-Length: 3", body=b"abc"))
        assert_error(conn.read_response(), 417, "expectation_failed")
    assert fresh.echo.hits() == 0


# --- client-side bounds --------------------------------------------------------------------------


def test_the_head_timeout_bounds_the_whole_head_however_it_trickles(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(b"GET /echo HTTP/1.1\r\n")
        started = time.monotonic()
        response = None
        for n in range(20):  # a header line every 0.3 s: bytes keep coming, the head never ends
            readable, _, _ = select.select([conn.sock], [], [], 0.3)
            if readable:
                response = conn.read_response()
                break
            conn.send(f"X-Drip-{n}: {n}\r\n".encode())
        elapsed_s = time.monotonic() - started
        assert response is not None, "no answer while the head trickled in"
        assert_error(response, 408, "client_timeout")
        assert conn.closed_by_server(within_s=2)
    assert HEAD_TIMEOUT_MS / 1000 * 0.9 <= elapsed_s < HEAD_TIMEOUT_MS / 1000 + 0.8


def test_a_head_cut_short_by_the_client_is_408(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(b"GET /echo HTTP/1.1\r\nHost: gw.test\r\n")
        conn.sock.shutdown(socket.SHUT_WR)
        assert_error(conn.read_response(), 408, "client_timeout")


def test_a_connection_that_never_sends_is_closed_after_the_head_timeout(fresh: Stack) -> None:
    with fresh.connect() as conn:
        assert conn.closed_by_server(within_s=HEAD_TIMEOUT_MS / 1000 + 1.5)


def test_a_body_that_stops_is_408_and_never_blames_the_backend(fresh: Stack) -> None:
    gateway, backend = fresh.gateway, fresh.fragile.url
    with fresh.connect() as conn:
        conn.send(request("POST", "/fragile", "Content-Length: 100", body=b"0123456789"))
        started = time.monotonic()
        response = conn.read_response()
        waited_s = time.monotonic() - started
        assert_error(response, 408, "client_timeout")
        assert response.header("connection") == "close"
        assert conn.closed_by_server(within_s=2)
    assert BODY_TIMEOUT_MS / 1000 * 0.9 <= waited_s < BODY_TIMEOUT_MS / 1000 + 1.5

    circuits = httpx.get(f"{gateway.admin_url}/api/circuits", trust_env=False).json()["circuits"]
    [breaker] = [c for c in circuits if c["backend"] == backend]
    assert (breaker["state"], breaker["failures"]) == ("closed", 0)
    metrics = httpx.get(f"{gateway.admin_url}/metrics", trust_env=False).text
    outcomes = re.findall(
        rf'kairos_upstream_requests_total{{backend="{re.escape(backend)}",outcome="(\w+)"}} (\S+)',
        metrics,
    )
    assert not [outcome for outcome, count in outcomes if float(count) > 0]  # not the backend's
    with fresh.connect() as conn:  # the backend still takes traffic: its breaker is closed
        conn.send(request("POST", "/fragile", "Content-Length: 2", body=b"ok"))
        assert echoed(conn.read_response())["body_len"] == 2


def test_an_early_answer_stops_reading_the_body(fresh: Stack) -> None:
    declared = 100 * 1000 * 1000
    sent = 0
    stopped = threading.Event()
    with fresh.connect() as conn:
        conn.send(request("POST", "/echo", f"Content-Length: {declared}"))

        def upload() -> None:
            nonlocal sent
            block = b"u" * 65536
            try:
                while sent < declared:
                    conn.sock.sendall(block)
                    sent += len(block)
            except OSError:
                pass
            stopped.set()

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        response = conn.read_response()
        answered = time.monotonic()
        assert_error(response, 413, "payload_too_large")
        assert response.header("connection") == "close"
        assert stopped.wait(timeout=5), "the gateway kept reading the body"
        closed_after_s = time.monotonic() - answered
        uploader.join()
    assert closed_after_s < 2.0
    assert sent < 25 * MiB, f"{sent / MiB:.0f} MiB accepted for a refused body"


def test_a_target_over_max_url_bytes_is_414(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(request("GET", "/echo?q=" + "a" * MAX_URL_BYTES))
        assert_error(conn.read_response(), 414, "uri_too_long")
        assert conn.closed_by_server(within_s=2)


def test_headers_over_max_header_bytes_are_431(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(request("GET", "/echo", "X-Big: " + "b" * MAX_HEADER_BYTES))
        assert_error(conn.read_response(), 431, "header_too_large")


def test_a_head_still_growing_past_max_header_bytes_is_431_at_once(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(b"GET /echo HTTP/1.1\r\nX-Big: " + b"b" * (MAX_HEADER_BYTES + 100))
        assert_error(conn.read_response(), 431, "header_too_large")


def test_more_than_max_request_headers_lines_is_431(fresh: Stack) -> None:
    lines = [f"X-H{n}: {n}" for n in range(MAX_HEADERS)]
    with fresh.connect() as conn:
        conn.send(request("GET", "/echo", *lines))  # with Host: one line too many
        assert_error(conn.read_response(), 431, "header_too_large")
    with fresh.connect() as conn:
        conn.send(request("GET", "/echo", *lines[:-1]))
        assert conn.read_response().status == 200


def test_a_header_name_with_an_underscore_is_dropped(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(request("GET", "/echo", "X_Spoofed: 1", "X-Kept: 1"))
        names = [name.lower() for name, _ in echoed(conn.read_response())["headers"]]
    assert "x-kept" in names
    assert "x_spoofed" not in names


def test_underscores_in_headers_keeps_them(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    gateway = gateway_factory(
        {
            "server": {"underscores_in_headers": True},
            "routers": [route("/echo", "/echo", [upstream.url])],
        }
    )
    with RawConnection(gateway.port) as conn:
        conn.send(request("GET", "/echo", "X_Kept: 1"))
        names = [name.lower() for name, _ in echoed(conn.read_response())["headers"]]
    assert "x_kept" in names


# --- refusals -----------------------------------------------------------------------------------

REFUSALS = {
    "content-length-and-chunked": (
        request("POST", "/echo", "Content-Length: 5", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
        400,
        "bad_request",
    ),
    "content-length-plus": (
        request("POST", "/echo", "Content-Length: +5", body=b"hello"),
        400,
        "bad_request",
    ),
    "content-length-leading-space": (
        request("POST", "/echo", "Content-Length:  5", body=b"hello"),
        400,
        "bad_request",
    ),
    "content-length-trailing-space": (
        request("POST", "/echo", "Content-Length: 5 ", body=b"hello"),
        400,
        "bad_request",
    ),
    "content-length-hex": (
        request("POST", "/echo", "Content-Length: 0x5", body=b"hello"),
        400,
        "bad_request",
    ),
    "content-length-fullwidth-digit": (
        b"POST /echo HTTP/1.1\r\nHost: gw.test\r\nContent-Length: "
        + "５".encode()
        + b"\r\n\r\nhello",
        400,
        "bad_request",
    ),
    "unknown-transfer-coding": (
        request("POST", "/echo", "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
        400,
        "bad_request",
    ),
    "transfer-coding-over-two-lines": (
        request(
            "POST",
            "/echo",
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: chunked",
            body=b"5\r\nhello\r\n0\r\n\r\n",
        ),
        400,
        "bad_request",
    ),
    "connect": (request("CONNECT", "example.com:443"), 400, "bad_request"),
    "control-byte-in-target": (request("GET", "/echo\x01x"), 400, "bad_request"),
    "non-ascii-target": (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400, "bad_request"),
    "malformed-request-line": (b"GET /echo\r\nHost: gw.test\r\n\r\n", 400, "bad_request"),
    "unknown-method": (request("BREW", "/echo"), 400, "bad_request"),
    "http-2-request-line": (request("GET", "/echo", version="2.0"), 400, "bad_request"),
    "trace": (request("TRACE", "/echo"), 405, "method_not_allowed"),
    "obsolete-line-folding": (request("GET", "/echo", "X-A: 1", " folded"), 400, "bad_request"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_request_gets_a_json_4xx_is_counted_and_closes(fresh: Stack, case: str) -> None:
    wire, status, error_type = REFUSALS[case]
    before = status_counts(fresh.gateway)
    with fresh.connect() as conn:
        conn.send(wire)
        response = conn.read_response()
        assert_error(response, status, error_type)
        assert response.header("connection") == "close"
        assert conn.closed_by_server(within_s=2)
    assert wait_for_count(fresh.gateway, status, before[status] + 1) == before[status] + 1
    after = status_counts(fresh.gateway)
    assert sum(after[code] for code in after if code >= 500) == sum(
        before[code] for code in before if code >= 500
    )
    assert fresh.echo.hits() == 0
    assert_no_traceback(fresh.gateway)


def test_the_log_of_a_hostile_client_session_has_no_traceback(fresh: Stack) -> None:
    for wire, _, _ in REFUSALS.values():
        with fresh.connect() as conn:
            conn.send(wire[: len(wire) // 2])
            conn.sock.shutdown(socket.SHUT_WR)  # half a request, then gone
    assert_no_traceback(fresh.gateway)


# --- WebSocket handshake -------------------------------------------------------------------------


def test_an_upgrade_to_websocket_with_a_broken_handshake_is_400(fresh: Stack) -> None:
    with fresh.connect() as conn:
        conn.send(request("GET", "/echo", "Upgrade: websocket", "Connection: Upgrade"))
        body = assert_error(conn.read_response(), 400, "bad_request")
    assert "WebSocket" in body["error"]
    assert fresh.echo.hits() == 0


def test_transfer_encoding_in_an_http10_request_is_400_and_never_forwarded(fresh: Stack) -> None:
    # HTTP/1.0 has no chunked coding (RFC 9112 §6.1): a 1.0 peer in front would frame this body
    # by the close, the gateway by the chunks, and the bytes after the last chunk would be
    # smuggled in as a second request.
    smuggled = request("GET", "/echo?smuggled=1")
    chunked = b"5\r\nhello\r\n0\r\n\r\n"
    before = status_counts(fresh.gateway)
    with fresh.connect() as conn:
        conn.send(
            request("POST", "/echo", "Transfer-Encoding: chunked", body=chunked, version="1.0")
            + smuggled
        )
        response = conn.read_response()
        body = assert_error(response, 400, "bad_request")
        assert "HTTP/1.0" in body["error"], body
        assert response.header("connection") == "close"
        assert conn.closed_by_server(within_s=2)
    assert wait_for_count(fresh.gateway, 400, before[400] + 1) == before[400] + 1
    assert fresh.echo.hits() == 0
    assert_no_traceback(fresh.gateway)
