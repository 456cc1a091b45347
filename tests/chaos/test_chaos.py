"""Chaos: one misbehaving upstream, one healthy sibling, 50 concurrent clients, a few seconds each.

For each failure mode of ``tests/support/chaos.py`` (plus a dead port, slow uploads and stalling
heads), a fresh gateway routes ``/fault`` to the misbehaving backend and ``/healthy`` to a
healthy one. Fifty clients send requests to both for ``RUN_S`` seconds. Then:

- every request was answered within its route's deadline + 1 s, with a status of the mode's
  documented set and, for the gateway's own answers, the documented JSON ``type``;
- the healthy sibling answered every one of its requests 200;
- only the backend at fault has an open breaker (when the mode opens one at all);
- the gateway's file descriptors and RSS are back near where they were before the run.

A row of outcome counts per mode is printed at the end of the test run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.conftest import record_row
from tests.support.gateway import Gateway, backend
from tests.support.procs import REPO_ROOT, ManagedProcess, Upstream, free_port, wait_for_port

CLIENTS = 50
RUN_S = 3.0
DEADLINE_MS = 1500
TIMEOUT_MS = 500
# The gateway answers every request within its deadline + 1 s, by its own clock (the
# ``kairos_request_duration_seconds`` bucket at 2.5 s). The clients, 50 coroutines sharing two
# cores with the gateway, allow scheduling slack on top; a hang would blow far past either.
GATEWAY_BOUND_S = DEADLINE_MS / 1000 + 1.0
ANSWER_BOUND_S = GATEWAY_BOUND_S + 1.5
FD_TOLERANCE = 12
RSS_TOLERANCE_MIB = 40.0
FD_SETTLE_S = 10.0

GatewayFactory = Callable[..., Gateway]


@dataclass(frozen=True)
class Mode:
    """What the clients may see from ``/fault`` in one mode, and whether its breaker opens."""

    name: str
    allowed: frozenset[str]  # "200", "503", "502:upstream", "aborted", ...
    opens_breaker: bool
    client: str = "plain"  # "plain", "slow_upload" or "stalled_head"


MODES = [
    Mode("refuse", frozenset({"502:upstream", "503:circuit_open"}), True),
    Mode("hang", frozenset({"504:timeout", "503:circuit_open"}), True),
    Mode("slow", frozenset({"504:timeout", "503:circuit_open"}), True),
    Mode("reset", frozenset({"502:upstream", "503:circuit_open"}), True),
    Mode("truncated", frozenset({"aborted", "503:circuit_open"}), False),
    Mode("giant_head", frozenset({"502:upstream", "503:circuit_open"}), True),
    Mode("flap", frozenset({"200", "503", "503:circuit_open"}), False),
    Mode("slow_upload", frozenset({"408:client_timeout"}), False, client="slow_upload"),
    Mode("stalled_head", frozenset({"408:client_timeout", "closed"}), False, client="stalled_head"),
]


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    healthy: Counter[str] = field(default_factory=Counter)
    slowest_s: float = 0.0


@pytest.fixture(scope="module")
def chaos() -> Iterator[str]:
    port = free_port()
    process = ManagedProcess(
        [sys.executable, "-m", "tests.support.chaos", "--port", str(port)],
        name="chaos-upstream",
        cwd=REPO_ROOT,
    ).start()
    wait_for_port("127.0.0.1", port, 10, process=process)
    yield f"http://127.0.0.1:{port}"
    process.stop()


@pytest.fixture(scope="module")
def healthy() -> Iterator[Upstream]:
    with Upstream.start("healthy") as upstream:
        yield upstream


def _outcome(response: httpx.Response) -> str:
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            body = response.json()
        except ValueError:
            body = {}
        if isinstance(body, dict) and "type" in body and "request_id" in body:
            return f"{response.status_code}:{body['type']}"
    return str(response.status_code)


async def _plain_client(
    url: str, path: str, tally: Tally, counter: Counter[str], stop: float
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=ANSWER_BOUND_S + 2, trust_env=False) as http:
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                response = await http.get(path)
                outcome = _outcome(response)
            except httpx.RemoteProtocolError:
                outcome = "aborted"
            except httpx.TimeoutException:
                outcome = "client timed out"
            tally.slowest_s = max(tally.slowest_s, time.monotonic() - started)
            counter[outcome] += 1


async def _raw_client(port: int, kind: str, tally: Tally, stop: float) -> None:
    """A client that uploads a body too slowly, or never finishes its head."""
    while time.monotonic() < stop:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if kind == "slow_upload":
                writer.write(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nab")
            else:
                writer.write(b"GET /fault HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(65536), ANSWER_BOUND_S + 2)
            except TimeoutError:
                answer = b"client timed out"
        finally:
            writer.close()
        tally.slowest_s = max(tally.slowest_s, time.monotonic() - started)
        if answer.startswith(b"HTTP/1.1 "):
            status = answer[9:12].decode()
            body = answer.partition(b"\r\n\r\n")[2]
            try:
                tally.outcomes[f"{status}:{json.loads(body)['type']}"] += 1
            except (ValueError, KeyError):
                tally.outcomes[status] += 1
        else:
            tally.outcomes["closed" if not answer else answer[:20].decode("latin-1")] += 1


async def _load(gateway: Gateway, mode: Mode) -> Tally:
    tally = Tally()
    stop = time.monotonic() + RUN_S
    jobs = []
    for index in range(CLIENTS):
        if index % 2:
            jobs.append(_plain_client(gateway.url, "/healthy", tally, tally.healthy, stop))
        elif mode.client == "plain":
            jobs.append(_plain_client(gateway.url, "/fault", tally, tally.outcomes, stop))
        else:
            jobs.append(_raw_client(gateway.port, mode.client, tally, stop))
    await asyncio.gather(*jobs)
    return tally


def _answered_within(gateway: Gateway, bound_s: float) -> tuple[float, float]:
    """Proxied requests the gateway answered within ``bound_s`` (a bucket bound), and all."""
    text = httpx.get(f"{gateway.admin_url}/metrics", trust_env=False).text
    within = total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "kairos_request_duration_seconds_bucket":
                continue
            if float(sample.labels["le"]) == bound_s:
                within += sample.value
            elif sample.labels["le"] == "+Inf":
                total += sample.value
    return within, total


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
def test_chaos_mode(
    mode: Mode, chaos: str, healthy: Upstream, gateway_factory: GatewayFactory
) -> None:
    fault_url = f"http://127.0.0.1:{free_port()}" if mode.name == "refuse" else chaos
    route = {"deadline_ms": DEADLINE_MS, "timeout_ms": TIMEOUT_MS, "methods": ["GET", "POST"]}
    gateway = gateway_factory(
        {
            "server": {
                "client_header_timeout_ms": 800,
                "client_body_timeout_ms": 800,
                "graceful_shutdown_s": 0,
            },
            "circuit_breaker": {"failure_threshold": 5, "reset_timeout_s": 30},
            "routers": [
                {"external_path": path, "internal_path": path, "backends": [backend(url)], **route}
                for path, url in (
                    ("/fault", fault_url),
                    ("/upload", healthy.url),
                    ("/healthy", healthy.url),
                )
            ],
        }
    )  # fmt: skip
    if mode.name != "refuse":
        mode_name = mode.name if mode.client == "plain" else "ok"
        httpx.get(f"{chaos}/_mode/{mode_name}", trust_env=False).raise_for_status()
    with gateway.client() as client:
        assert client.get("/healthy").status_code == 200
    time.sleep(0.3)
    fds, rss = gateway.open_fds(), _rss_mib(gateway.process.pid)

    tally = asyncio.run(_load(gateway, mode))

    deadline = time.monotonic() + FD_SETTLE_S
    while gateway.open_fds() - fds > 2 and time.monotonic() < deadline:
        time.sleep(0.25)  # idle upstream connections are swept after 4 s
    fds_delta = gateway.open_fds() - fds
    rss_delta = _rss_mib(gateway.process.pid) - rss
    record_row(
        {
            "mode": mode.name,
            "requests": sum(tally.outcomes.values()) + sum(tally.healthy.values()),
            "slowest_s": round(tally.slowest_s, 2),
            "fds_delta": fds_delta,
            "rss_delta_mib": round(rss_delta, 1),
            "outcomes": dict(tally.outcomes)
            | {f"healthy {k}": v for k, v in tally.healthy.items()},
        }
    )
    assert tally.outcomes, "no request to the misbehaving backend completed"
    assert set(tally.outcomes) <= mode.allowed, tally.outcomes
    assert set(tally.healthy) == {"200"}, tally.healthy
    assert tally.slowest_s <= ANSWER_BOUND_S, tally.slowest_s
    within, total = _answered_within(gateway, GATEWAY_BOUND_S)
    assert total > 0 and within == total, f"{total - within} of {total} answers took longer"
    circuits = httpx.get(f"{gateway.admin_url}/api/circuits", trust_env=False).json()["circuits"]
    states = {c["backend"]: c["state"] for c in circuits}
    assert states[backend_key(healthy.url)] == "closed"
    if mode.opens_breaker:
        assert states[backend_key(fault_url)] == "open"
    assert fds_delta <= FD_TOLERANCE, f"{fds_delta} more file descriptors"
    assert rss_delta <= RSS_TOLERANCE_MIB, f"RSS grew by {rss_delta:.1f} MiB"
    assert "Traceback" not in gateway.process.log_text()


def backend_key(url: str) -> str:
    return url.rstrip("/")
