"""Self-test of the test upstream server and the process helpers, against a real process."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from .procs import ManagedProcess, Upstream, free_port, start_upstream, wait_for_port
from .upstreams import expected_download


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream.start("selftest") as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: Upstream) -> None:
    upstream.reset()


@pytest.fixture
def client(upstream: Upstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.url, timeout=5.0, trust_env=False) as http:
        yield http


def test_echo_keeps_raw_path_query_and_repeated_headers(client: httpx.Client) -> None:
    response = client.get(
        "/a%2Fb/c%20d?x=1&x=2&y=%20", headers=[("X-Dup", "one"), ("X-Dup", "two")]
    )

    assert response.status_code == 200
    assert response.headers["X-Upstream"] == "selftest"
    echo = response.json()
    assert echo["server"] == "selftest"
    assert echo["method"] == "GET"
    assert echo["path"] == "/a%2Fb/c%20d"
    assert echo["query"] == "x=1&x=2&y=%20"
    assert [value for name, value in echo["headers"] if name.lower() == "x-dup"] == ["one", "two"]
    assert echo["body_len"] == 0


def test_echo_hashes_a_streamed_body(client: httpx.Client) -> None:
    chunks = [bytes([i]) * 100_000 for i in range(10)]

    echo = client.post("/upload", content=iter(chunks)).json()

    assert echo["method"] == "POST"
    assert echo["body_len"] == 1_000_000
    assert echo["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_download_streams_the_announced_bytes(client: httpx.Client) -> None:
    size_bytes = 3 * 64 * 1024 + 7

    with client.stream("GET", "/_download", params={"bytes": size_bytes}) as response:
        assert response.headers["Content-Length"] == str(size_bytes)
        body = b"".join(response.iter_bytes())

    assert body == expected_download(size_bytes)


def test_sse_events_arrive_spaced_over_time(client: httpx.Client) -> None:
    count, interval_ms = 5, 100
    arrivals: list[float] = []
    events: list[str] = []

    params = {"count": count, "interval_ms": interval_ms}
    with client.stream("GET", "/_sse", params=params) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
                events.append(line)

    assert [json.loads(event.removeprefix("data: "))["i"] for event in events] == list(range(count))
    assert arrivals[-1] - arrivals[0] >= 0.6 * (count - 1) * interval_ms / 1000


def test_cookies_come_as_two_set_cookie_headers(client: httpx.Client) -> None:
    response = client.get("/_cookies")

    assert response.headers.get_list("Set-Cookie") == ["a=1", "b=2"]


def test_status_endpoint_answers_the_code_and_retry_after(client: httpx.Client) -> None:
    response = client.get("/_status/429", params={"retry_after": "3"})

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json()["status"] == 429


def test_fail_mode_answers_the_status_and_counts_hits(
    upstream: Upstream, client: httpx.Client
) -> None:
    upstream.control(mode="fail", status=502)

    statuses = [client.get(path).status_code for path in ("/a", "/_status/200", "/_slow?ms=0")]

    assert statuses == [502, 502, 502]
    assert client.get("/health").status_code == 200
    assert upstream.hits() == 4
    assert [hit["path"] for hit in upstream.hit_log()] == [
        "/a",
        "/_status/200",
        "/_slow",
        "/health",
    ]


def test_hit_log_records_headers_and_resets(upstream: Upstream, client: httpx.Client) -> None:
    client.get("/logged?q=1", headers={"X-Trace": "abc"})

    [hit] = upstream.hit_log()
    assert (hit["method"], hit["path"], hit["query"]) == ("GET", "/logged", "q=1")
    assert hit["headers"]["x-trace"] == "abc"
    assert abs(hit["t"] - time.time()) < 60
    upstream.reset_hits()
    assert upstream.hits() == 0


def test_hang_mode_never_answers(upstream: Upstream, client: httpx.Client) -> None:
    upstream.control(mode="hang")

    with pytest.raises(httpx.ReadTimeout):
        client.get("/stuck", timeout=0.3)

    upstream.control()
    assert client.get("/after").status_code == 200


def test_reset_mode_breaks_the_connection(upstream: Upstream, client: httpx.Client) -> None:
    upstream.control(mode="reset")

    with pytest.raises(httpx.TransportError) as caught:
        client.get("/reset")

    assert not isinstance(caught.value, httpx.TimeoutException)
    assert upstream.hits() == 1


def test_flap_mode_alternates_ok_and_fail(upstream: Upstream, client: httpx.Client) -> None:
    upstream.control(mode="flap", flap_every=2, status=503)

    statuses = [client.get("/flap").status_code for _ in range(6)]

    assert statuses == [200, 200, 503, 503, 200, 200]


def test_delay_and_slow_add_latency(upstream: Upstream, client: httpx.Client) -> None:
    started = time.monotonic()
    assert client.get("/_slow", params={"ms": 150}).json()["path"] == "/_slow"
    assert time.monotonic() - started >= 0.14

    upstream.control(delay_ms=150)
    started = time.monotonic()
    assert client.get("/delayed").status_code == 200
    assert time.monotonic() - started >= 0.14


def test_health_flag_fails_only_health(upstream: Upstream, client: httpx.Client) -> None:
    upstream.control(health="fail")

    assert client.get("/health").status_code == 503
    assert client.get("/other").status_code == 200
    upstream.control()
    assert client.get("/health").json()["status"] == "ok"


def test_control_rejects_an_invalid_body(upstream: Upstream) -> None:
    with pytest.raises(httpx.HTTPStatusError, match="mode='sideways'"):
        upstream.control(mode="sideways")  # type: ignore[arg-type]


def test_websocket_echoes_text_binary_ping_and_close(upstream: Upstream) -> None:
    with connect(f"{upstream.ws_url}/_ws", proxy=None, open_timeout=5) as ws:
        assert ws.response is not None
        assert ws.response.headers["X-Upstream"] == "selftest"
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xff"
        assert ws.ping().wait(5)
        ws.close(code=4001, reason="bye")

    assert ws.protocol.close_rcvd is not None
    assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (4001, "bye")


def test_upstream_process_stops_cleanly_and_keeps_its_log() -> None:
    process, url = start_upstream("short-lived")

    assert process.running
    assert url.startswith("http://127.0.0.1:")
    assert process.stop() == 0
    assert f"upstream short-lived listening on {url}" in process.log_text()


def test_stop_kills_a_group_that_ignores_sigterm() -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    with ManagedProcess([sys.executable, "-c", script], name="stubborn") as process:
        deadline = time.monotonic() + 5
        while "ready" not in process.log_text() and time.monotonic() < deadline:
            time.sleep(0.02)

        assert process.stop(timeout_s=0.3) == -9


def test_wait_for_port_times_out_on_a_closed_port() -> None:
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", free_port(), timeout_s=0.2)
