"""WebSocket routes through the real gateway: relay both ways, auth before upgrade, clear errors,
and a shutdown that tells clients the gateway is going away (1001) instead of cutting them."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.gateway import Gateway, backend
from tests.support.procs import Upstream, free_port
from tests.support.tls import OPENSSL, tls_backends

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


def test_a_message_of_exactly_16_mib_is_relayed_both_ways(gateway: Gateway) -> None:
    payload = bytes(WS_MAX_MESSAGE_BYTES)  # the limit is "over 16 MiB", on either side
    with connect(ws_url(gateway, "/ws/chat"), max_size=None) as ws:
        ws.send(payload)
        assert ws.recv(timeout=30) == payload


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


# --- message rules of the client side (kairos_gateway/websocket.py) -----------------------------

WS_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
ZERO_MASK = b"\x00\x00\x00\x00"  # a client frame must be masked; XOR with zeros keeps the bytes


class RawWebSocket:
    """A socket past the opening handshake, for frames a WebSocket library would not send."""

    def __init__(self, gateway: Gateway, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self._buffer = b""
        head = self._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head

    def send(self, opcode: int, payload: bytes, *, fin: bool = True, declared: int = -1) -> None:
        """One masked frame; ``declared`` announces a payload length other than the one sent."""
        length = len(payload) if declared < 0 else declared
        if length < 126:
            size = bytes([0x80 | length])
        elif length < 1 << 16:
            size = bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            size = bytes([0x80 | 127]) + struct.pack("!Q", length)
        self.sock.sendall(bytes([(0x80 if fin else 0) | opcode]) + size + ZERO_MASK + payload)

    def receive(self) -> tuple[int, bytes]:
        """The next frame from the gateway (unmasked, as a server sends): opcode and payload."""
        first, second = self._read_exactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read_exactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read_exactly(8))[0]
        return first & 0x0F, self._read_exactly(length)

    def close_received(self) -> int:
        """The code of the close frame that comes next."""
        opcode, payload = self.receive()
        assert opcode == 0x8, (opcode, payload[:100])
        code: int = struct.unpack("!H", payload[:2])[0]
        return code

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        data, _, self._buffer = self._buffer.partition(marker)
        return data + marker

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"the gateway closed the connection; unread: {self._buffer[:100]!r}"
        self._buffer += chunk


@pytest.mark.parametrize("framing", ["one-frame", "fragments"])
def test_a_message_over_16_mib_closes_the_client_with_1009(gateway: Gateway, framing: str) -> None:
    ws = RawWebSocket(gateway, "/ws/chat")
    try:
        ws.send(0x1, b"fits")
        assert ws.receive() == (0x1, b"fits")
        if framing == "one-frame":
            # refused on its header: the gateway never waits for (or buffers) the 16 MiB
            ws.send(0x2, b"", declared=WS_MAX_MESSAGE_BYTES + 1)
        else:
            half = bytes(WS_MAX_MESSAGE_BYTES // 2)
            ws.send(0x2, half, fin=False)
            ws.send(0x0, half, fin=False)
            ws.send(0x0, b"", declared=1)  # the byte that takes the message over
        assert ws.close_received() == 1009
        assert ws.closed_by_server()
    finally:
        ws.close()


def test_invalid_utf8_in_a_text_message_closes_the_client_with_1007(gateway: Gateway) -> None:
    with connect(ws_url(gateway, "/ws/chat")) as ws:
        ws.send("valid")
        assert ws.recv(timeout=5) == "valid"
        ws.send(b"caf\xc3", text=True)  # a UTF-8 sequence cut short, sent as text
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert ws.close_code == 1007
    assert ws.close_reason is not None and "UTF-8" in ws.close_reason


# --- wss backends -------------------------------------------------------------------------------


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command for a certificate")
def test_a_wss_backend_must_present_a_trusted_certificate_for_its_name(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    with tls_backends(tmp_path) as tls:
        routes = {  # ws_route turns https:// into a wss:// backend
            "/ws/trusted": f"https://localhost:{tls.trusted.port}",
            "/ws/untrusted": f"https://localhost:{tls.untrusted.port}",  # trusted by no one
            "/ws/wrong-name": f"https://127.0.0.1:{tls.trusted.port}",  # a cert for localhost
        }
        gateway = gateway_factory(
            {"routers": [ws_route(path, url) for path, url in routes.items()]},
            env={"SSL_CERT_FILE": str(tls.ca_file)},  # the gateway's CA store: one certificate
        )

        with connect(ws_url(gateway, "/ws/trusted")) as ws:
            ws.send("over tls")
            assert ws.recv(timeout=5) == "over tls"
        for refused in ("/ws/untrusted", "/ws/wrong-name"):
            with pytest.raises(InvalidStatus) as upgrade:
                connect(ws_url(gateway, refused))
            response = upgrade.value.response
            assert response.status_code == 502, refused
            body = json.loads(response.body or b"{}")
            assert body["type"] == "upstream", body
            assert "certificate" in body["error"].lower(), body
        assert tls.trusted.hits() == 1 and tls.untrusted.hits() == 0
