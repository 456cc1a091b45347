"""Bodies stream through the gateway with backpressure, both ways (DESIGN.md §4 "Bodies").

A 50 MiB download and a 50 MiB upload must pass without the gateway holding them: its resident
memory (``VmRSS`` of the real process, sampled while the bytes flow) may not grow by anything
close to the body size. Server-sent events must reach the client one by one, as the upstream
writes them, not batched.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import Gateway, route
from tests.support.procs import Upstream

MiB = 1024 * 1024
BODY_BYTES = 50 * MiB
MAX_RSS_GROWTH_BYTES = 40 * MiB
READ_CHUNK_BYTES = 64 * 1024
PATTERN_PERIOD = 251  # the upstream's /_download byte k is k % 251
PATTERN = bytes(range(PATTERN_PERIOD)) * (READ_CHUNK_BYTES // PATTERN_PERIOD + 2)
VANISHING_CLIENTS = 80
SSE_EVENTS = 10
SSE_INTERVAL_MS = 100


class RssSampler:
    """Samples ``VmRSS`` of a process in a background thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self._pid = pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self._pid))
            self._stop.wait(self._interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self._pid))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
def gateway(upstream: Upstream, gateway_factory: Callable[..., Gateway]) -> Iterator[Gateway]:
    config = {
        "server": {"max_body_bytes": 100 * MiB},
        "routers": [
            route("/download", "/_download", [upstream.url]),
            route("/upload", "/upload", [upstream.url], methods=["POST"]),
            route("/events", "/_sse", [upstream.url], timeout_ms=2000),
        ],
    }
    gateway = gateway_factory(config)
    with gateway.client() as client:  # warm both directions before any baseline is taken
        assert client.get("/download", params={"bytes": 4 * MiB}).status_code == 200
        assert client.post("/upload", content=b"w" * MiB).status_code == 200
    time.sleep(0.2)
    yield gateway


def test_download_of_50_mib_streams_in_flat_memory(gateway: Gateway) -> None:
    received = 0
    with (
        RssSampler(gateway.process.pid) as rss,
        gateway.client() as client,
        client.stream("GET", "/download", params={"bytes": BODY_BYTES}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-length"] == str(BODY_BYTES)
        for chunk in response.iter_bytes(READ_CHUNK_BYTES):
            start = received % PATTERN_PERIOD
            assert chunk == PATTERN[start : start + len(chunk)], f"corrupt at byte {received}"
            received += len(chunk)
            if received == 4 * MiB:
                # a slow reader: the gateway must stop pulling from the upstream, not buffer
                time.sleep(1.0)

    assert received == BODY_BYTES
    assert rss.growth < MAX_RSS_GROWTH_BYTES, f"gateway RSS grew by {rss.growth / MiB:.1f} MiB"


def test_upload_of_50_mib_streams_in_flat_memory(gateway: Gateway) -> None:
    digest = hashlib.sha256()
    block = bytes(range(256)) * 256  # 64 KiB

    def body() -> Iterator[bytes]:
        for _ in range(BODY_BYTES // len(block)):
            digest.update(block)
            yield block

    with RssSampler(gateway.process.pid) as rss, gateway.client() as client:
        response = client.post("/upload", content=body())

    assert response.status_code == 200
    echoed = response.json()
    assert echoed["body_len"] == BODY_BYTES
    assert echoed["body_sha256"] == digest.hexdigest()
    assert rss.growth < MAX_RSS_GROWTH_BYTES, f"gateway RSS grew by {rss.growth / MiB:.1f} MiB"


def test_clients_that_vanish_mid_download_leave_no_memory_behind(gateway: Gateway) -> None:
    """Each client takes 64 KiB of a 16 MiB download and resets the connection. The gateway
    gives up the upstream connection too; what it had buffered (up to the client's high-water
    mark) must be freed then, not kept by a reference cycle until a rare full collection:
    before that was fixed, 80 such clients grew the gateway by about 28 MiB."""
    host, port = gateway.url.removeprefix("http://").split(":")
    baseline = rss_bytes(gateway.process.pid)
    for _ in range(VANISHING_CLIENTS):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /download?bytes=16777216 HTTP/1.1\r\nHost: t\r\n\r\n")
            received = 0
            while received < READ_CHUNK_BYTES:
                data = sock.recv(READ_CHUNK_BYTES)
                assert data, "the gateway closed before sending 64 KiB"
                received += len(data)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.5)
    with gateway.client() as client:  # and it still serves
        assert client.get("/download", params={"bytes": 1024}).status_code == 200

    growth = rss_bytes(gateway.process.pid) - baseline
    assert growth < 12 * MiB, f"gateway RSS grew by {growth / MiB:.1f} MiB"


def test_server_sent_events_arrive_one_by_one(gateway: Gateway) -> None:
    arrivals: list[float] = []
    indexes: list[int] = []
    with (
        httpx.Client(base_url=gateway.url, trust_env=False, timeout=5) as client,
        client.stream(
            "GET", "/events", params={"count": SSE_EVENTS, "interval_ms": SSE_INTERVAL_MS}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
                indexes.append(json.loads(line.removeprefix("data:"))["i"])

    assert indexes == list(range(SSE_EVENTS))
    assert arrivals[-1] - arrivals[0] >= 0.6, "events were batched instead of streamed"
    for i, first in enumerate(arrivals):
        within_50_ms = [t for t in arrivals[i:] if t - first <= 0.05]
        assert len(within_50_ms) <= 3, f"events {i}.. arrived together: {arrivals}"
