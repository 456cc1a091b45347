"""WebSocket routes through the real gateway: relay both ways, auth before upgrade, clear errors,
and a shutdown that tells clients the gateway is going away (1001) instead of cutting them."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.gateway import Gateway, backend
from tests.support.procs import Upstream, free_port

SECRET = "websocket-test-secret-0123456789abcdef"


def ws_route(external: str, upstream_url: str, **extra: Any) -> dict[str, Any]:
    scheme_host, port = upstream_url.rsplit(":", 1)
    return {
        "protocol": "websocket",
        "backends": [{"host": scheme_host.replace("http", "ws", 1), "port": int(port)}],
        "external_path": external,
        "internal_path": "/_ws",
        "methods": ["GET"],
        **extra,
    }


@pytest.fixture
def gateway(
    gateway_factory: Callable[..., Gateway], upstream_factory: Callable[[str], Upstream]
) -> Gateway:
    echo = upstream_factory("ws")
    dead = f"http://127.0.0.1:{free_port()}"
    return gateway_factory(
        {
            "jwt": {"secret": SECRET},
            "routers": [
                ws_route("/ws/chat", echo.url),
                ws_route("/ws/private", echo.url, auth_required=True),
                ws_route("/ws/dead", dead),
                {
                    "backends": [backend(echo.url)],
                    "external_path": "/plain",
                    "internal_path": "/",
                    "methods": ["GET"],
                },
            ],
        }
    )


def ws_url(gateway: Gateway, path: str) -> str:
    return gateway.url.replace("http", "ws", 1) + path


def test_text_and_binary_round_trip(gateway: Gateway) -> None:
    with connect(ws_url(gateway, "/ws/chat")) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv(timeout=5) == b"\x00\x01binary\xff"
        for n in range(20):
            ws.send(f"message {n}")
        assert [ws.recv(timeout=5) for _ in range(20)] == [f"message {n}" for n in range(20)]


def test_ping_is_answered_and_close_code_is_relayed(gateway: Gateway) -> None:
    with connect(ws_url(gateway, "/ws/chat")) as ws:
        assert ws.ping().wait(5)
        ws.close(4001, "bye")
    assert (ws.close_code, ws.close_reason) == (4001, "bye")


def test_large_binary_message(gateway: Gateway) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    with connect(ws_url(gateway, "/ws/chat"), max_size=None) as ws:
        ws.send(payload)
        assert ws.recv(timeout=10) == payload


def test_auth_is_checked_before_the_upgrade(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(gateway, "/ws/private"))
    assert refused.value.response.status_code == 401

    token = jwt.encode({"sub": "ada", "exp": time.time() + 60}, SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}
    with connect(ws_url(gateway, "/ws/private"), additional_headers=headers) as ws:
        ws.send("authorised")
        assert ws.recv(timeout=5) == "authorised"


def test_unreachable_backend_is_a_clear_http_error(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(gateway, "/ws/dead"))
    response = refused.value.response
    assert response.status_code == 502
    assert b'"type": "upstream"' in response.body


def test_plain_request_to_a_websocket_route_is_400(gateway: Gateway) -> None:
    answer = httpx.get(f"{gateway.url}/ws/chat", trust_env=False)
    assert answer.status_code == 400
    assert answer.json()["type"] == "bad_request"


def test_sockets_do_not_leak(gateway: Gateway) -> None:
    with connect(ws_url(gateway, "/ws/chat")) as ws:
        ws.send("warm up")
        ws.recv(timeout=5)
    time.sleep(0.5)
    baseline = gateway.open_fds()
    for _ in range(20):
        with connect(ws_url(gateway, "/ws/chat")) as ws:
            ws.send("x")
            ws.recv(timeout=5)
    deadline = time.monotonic() + 5
    while gateway.open_fds() > baseline + 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gateway.open_fds() <= baseline + 4


def test_shutdown_closes_relays_with_going_away(gateway: Gateway) -> None:
    with connect(ws_url(gateway, "/ws/chat")) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        signalled = time.monotonic()
        os.kill(gateway.process.pid, signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert ws.close_code == 1001
    assert time.monotonic() - signalled < 3
    deadline = time.monotonic() + 5
    while gateway.process.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not gateway.process.running, "a relayed WebSocket held the shutdown"
