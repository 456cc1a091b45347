"""Active health checks seen from outside: a real ``kairos-gateway`` probing real upstreams.

DESIGN.md §5: a backend failing ``unhealthy_threshold`` probes in a row leaves the candidate set,
``healthy_threshold`` passes bring it back; no candidate left → 503 ``no_healthy_backend`` (§4)
unless the route has ``fallback`` backends; meanwhile ``GET /ready`` lists the route in
``unroutable`` and stays 200 (§7: one dead upstream must not take the gateway out of rotation).
Probes run every 0.3 s, so each flip must show within ``threshold × interval`` plus one second.
Each test starts its own gateway on the module's shared upstreams and ends by checking that the
gateway's open file descriptors are back to where they were after a warm-up request.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, backend, route
from tests.support.pool import UpstreamPool
from tests.support.procs import Upstream
from tests.support.waiting import assert_fds_settle, wait_until

INTERVAL_S = 0.3
UNHEALTHY_THRESHOLD = 2
HEALTHY_THRESHOLD = 2
TOLERANCE_S = 1.0
OUT_WITHIN_S = UNHEALTHY_THRESHOLD * INTERVAL_S + TOLERANCE_S
BACK_WITHIN_S = HEALTHY_THRESHOLD * INTERVAL_S + TOLERANCE_S
HEALTH_CHECK = {
    "interval_s": INTERVAL_S,
    "timeout_ms": 200,
    "unhealthy_threshold": UNHEALTHY_THRESHOLD,
    "healthy_threshold": HEALTHY_THRESHOLD,
}
FD_TOLERANCE = 4
CLIENT_TIMEOUT_S = 5.0

StartGateway = Callable[..., Gateway]


@dataclass
class Watched:
    """A started gateway, a client on it, and its open file descriptors after a warm-up."""

    gateway: Gateway
    client: httpx.Client
    baseline_fds: int

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def ready(self) -> httpx.Response:
        with client(self.gateway.admin_url) as one_off:
            return one_off.get("/ready")

    def assert_fds_back_to_baseline(self) -> None:
        assert_fds_settle(self.gateway, self.baseline_fds, FD_TOLERANCE)


@pytest.fixture
def start(gateway_factory: StartGateway) -> Iterator[Callable[[dict[str, Any], str], Watched]]:
    sessions: list[httpx.Client] = []

    def start(config: dict[str, Any], warm_path: str) -> Watched:
        """Start the gateway, send one warm-up request, measure the baseline."""
        document = {"server": {"graceful_shutdown_s": 0}, "health_check": HEALTH_CHECK, **config}
        gateway = gateway_factory(document)
        session = client(gateway.url)
        sessions.append(session)
        response = session.get(warm_path)
        assert response.status_code == 200, response.text
        time.sleep(0.1)
        return Watched(gateway, session, gateway.open_fds())

    yield start
    for session in sessions:
        session.close()


def client(base_url: str) -> httpx.Client:
    """A plain-HTTP client (no CA bundle to load: creating one costs microseconds, not 50 ms)."""
    return httpx.Client(base_url=base_url, timeout=CLIENT_TIMEOUT_S, trust_env=False, verify=False)


def probed(url: str) -> dict[str, Any]:
    return backend(url, health_check_path="/health")


def served_by(response: httpx.Response) -> str | None:
    name: str | None = response.headers.get("x-upstream")
    return name


def traffic_hits(upstream: Upstream) -> int:
    """Requests the upstream received, health probes excluded."""
    return sum(1 for entry in upstream.hit_log() if entry["path"] != "/health")


def assert_no_healthy_backend(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert served_by(response) is None, "the gateway answered, not a backend"
    body = response.json()
    assert body["type"] == "no_healthy_backend", body
    assert set(body) == {"error", "type", "timestamp", "request_id"}


def test_a_backend_failing_its_probe_leaves_the_rotation_and_comes_back(
    start: Callable[[dict[str, Any], str], Watched], ups: UpstreamPool
) -> None:
    a, b = ups["a"], ups["b"]
    config = {"routers": [route("/r", "/r", [], backends=[probed(a.url), probed(b.url)])]}
    watched = start(config, "/r")
    assert {served_by(watched.get("/r")) for _ in range(4)} == {"a", "b"}

    a.control(health="fail")
    wait_until(lambda: served_by(watched.get("/r")) == "b", OUT_WITHIN_S, "a left", streak=6)
    a.reset_hits()
    responses = [watched.get("/r") for _ in range(10)]
    assert [served_by(r) for r in responses] == ["b"] * 10
    assert all(r.status_code == 200 for r in responses)
    assert traffic_hits(a) == 0, "an unhealthy backend gets no traffic"
    assert watched.ready().json()["unroutable"] == [], "b still serves the route"

    a.control(health="ok")
    wait_until(lambda: served_by(watched.get("/r")) == "a", BACK_WITHIN_S, "a came back")
    assert {served_by(watched.get("/r")) for _ in range(6)} == {"a", "b"}
    watched.assert_fds_back_to_baseline()


def test_probes_run_every_interval(
    start: Callable[[dict[str, Any], str], Watched], ups: UpstreamPool
) -> None:
    a = ups["a"]
    watched = start({"routers": [route("/r", "/r", [], backends=[probed(a.url)])]}, "/r")
    a.reset_hits()
    time.sleep(6 * INTERVAL_S)
    probes = [entry for entry in a.hit_log() if entry["path"] == "/health"]
    assert 4 <= len(probes) <= 8, len(probes)
    gaps = [later["t"] - earlier["t"] for earlier, later in itertools.pairwise(probes)]
    assert all(gap >= INTERVAL_S * 0.8 for gap in gaps), gaps
    assert all(entry["method"] == "GET" for entry in probes)
    watched.assert_fds_back_to_baseline()


def test_every_backend_unhealthy_gives_503_no_healthy_backend_and_an_unroutable_route(
    start: Callable[[dict[str, Any], str], Watched], ups: UpstreamPool
) -> None:
    a, b = ups["a"], ups["b"]
    config = {
        "routers": [route("/r", "/r", [], name="pair", backends=[probed(a.url), probed(b.url)])]
    }
    watched = start(config, "/r")
    ready = watched.ready()
    assert ready.status_code == 200, ready.text

    a.control(health="fail")
    b.control(health="fail")
    wait_until(
        lambda: watched.get("/r").status_code == 503, OUT_WITHIN_S, "no backend left", streak=3
    )
    a.reset_hits()
    b.reset_hits()
    for _ in range(5):
        assert_no_healthy_backend(watched.get("/r"))
    assert traffic_hits(a) == traffic_hits(b) == 0
    still_ready = watched.ready()  # one dead route must not take the gateway out of rotation
    assert still_ready.status_code == 200, still_ready.text
    assert (still_ready.json()["reasons"], still_ready.json()["unroutable"]) == ([], ["pair"])

    b.control(health="ok")
    wait_until(lambda: watched.get("/r").status_code == 200, BACK_WITHIN_S, "b came back")
    assert watched.ready().json()["unroutable"] == []
    assert [served_by(watched.get("/r")) for _ in range(4)] == ["b"] * 4
    watched.assert_fds_back_to_baseline()


def test_fallback_backends_serve_while_every_primary_is_unhealthy(
    start: Callable[[dict[str, Any], str], Watched], ups: UpstreamPool
) -> None:
    a, b, spare = ups["a"], ups["b"], ups["c"]
    config = {
        "routers": [
            route(
                "/r",
                "/r",
                [],
                backends=[probed(a.url), probed(b.url)],
                fallback=[backend(spare.url)],
            )
        ]
    }
    watched = start(config, "/r")
    assert {served_by(watched.get("/r")) for _ in range(6)} == {"a", "b"}
    assert traffic_hits(spare) == 0, "the fallback is idle while a primary is healthy"

    a.control(health="fail")
    b.control(health="fail")
    wait_until(lambda: served_by(watched.get("/r")) == "c", OUT_WITHIN_S, "fallback serving")
    a.reset_hits()
    b.reset_hits()
    responses = [watched.get("/r") for _ in range(6)]
    assert [(r.status_code, served_by(r)) for r in responses] == [(200, "c")] * 6
    assert traffic_hits(a) == traffic_hits(b) == 0
    assert watched.ready().json()["unroutable"] == [], "the fallback is a candidate backend"

    a.control(health="ok")
    wait_until(lambda: served_by(watched.get("/r")) == "a", BACK_WITHIN_S, "a came back")
    spare.reset_hits()
    assert [served_by(watched.get("/r")) for _ in range(4)] == ["a"] * 4
    assert traffic_hits(spare) == 0, "the fallback is idle again"
    watched.assert_fds_back_to_baseline()


def test_health_state_survives_a_config_reload(
    start: Callable[[dict[str, Any], str], Watched], ups: UpstreamPool
) -> None:
    a, b, other = ups["a"], ups["b"], ups["c"]
    config = {"routers": [route("/r", "/r", [], backends=[probed(a.url), probed(b.url)])]}
    watched = start(config, "/r")
    a.control(health="fail")
    wait_until(lambda: served_by(watched.get("/r")) == "b", OUT_WITHIN_S, "a left", streak=6)

    gateway = watched.gateway
    version = gateway.config_version()
    document = dict(gateway.document)
    document["routers"] = [*document["routers"], route("/other", "/other", [other.url])]
    gateway.write_config(document)
    gateway.wait_for_version_change(version)
    a.reset_hits()
    assert [served_by(watched.get("/r")) for _ in range(6)] == ["b"] * 6
    assert traffic_hits(a) == 0, "a is still out after the reload"
    assert served_by(watched.get("/other")) == "c"
    watched.assert_fds_back_to_baseline()
