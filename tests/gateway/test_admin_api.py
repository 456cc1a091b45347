"""The admin listener of a real ``kairos-gateway`` process (DESIGN.md §7), spoken to in plain httpx.

Every endpoint answers with its wire model's shape; the Prometheus text and the JSON snapshot
count exactly the traffic sent; the config endpoints redact secrets, keep them on a round trip
and never replace a running config with a broken one; with ``admin.token`` every endpoint but
``/health``, ``/live`` and ``/ready`` wants the bearer token, and the token never leaks.

Read-only checks share one gateway per test worker (``stack``); checks that need exact counts or
change the config start their own.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kairos_core import __version__
from tests.support.gateway import REPO_ROOT, Gateway, route
from tests.support.procs import Upstream, free_port

GatewayFactory = Callable[..., Gateway]
JWT_SECRET = "admin-api-tests-jwt-secret-4b9e2c7a1d3f5068"
ADMIN_TOKEN = "adm1n-t0ken-0123456789abcdefABCD"  # 32 characters
CONFIG_CAP_OVERFLOW_BYTES = 11 * 1024 * 1024
DESIGN_METRICS = (
    "kairos_requests_total",
    "kairos_request_duration_seconds",
    "kairos_gateway_overhead_seconds",
    "kairos_upstream_requests_total",
    "kairos_upstream_duration_seconds",
    "kairos_retries_total",
    "kairos_retry_budget_exhausted_total",
    "kairos_circuit_state",
    "kairos_circuit_transitions_total",
    "kairos_rate_limited_total",
    "kairos_backend_healthy",
    "kairos_in_flight_requests",
    "kairos_ai_decisions_total",
    "kairos_ai_decision_duration_seconds",
    "kairos_config_reloads_total",
    "kairos_build_info",
)
PERCENTILES = {"p50", "p90", "p99"}
RATES = {"per_1s", "per_10s", "per_60s"}
CIRCUIT_FIELDS = {"backend", "state", "failures", "opened_at", "next_half_open_at", "healthy"}


@dataclass
class Upstreams:
    ok: Upstream
    failing: Upstream
    lonely: Upstream


@dataclass
class Stack:
    gateway: Gateway
    upstreams: Upstreams
    spawned_at: float


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    with contextlib.ExitStack() as stack:
        ok = stack.enter_context(Upstream.start("ok"))
        failing = stack.enter_context(Upstream.start("failing"))
        failing.control(mode="fail", status=503)
        lonely = stack.enter_context(Upstream.start("lonely"))
        yield Upstreams(ok, failing, lonely)


def stack_config(up: Upstreams) -> dict[str, Any]:
    no_wait = {"initial_backoff_ms": 0, "jitter": False}
    return {
        "jwt": {"secret": JWT_SECRET},
        # failures are provoked on purpose here; keep breakers out of the way
        "circuit_breaker": {"failure_threshold": 1000},
        "routers": [
            route("/echo", "/echo", [up.ok.url], name="echo"),
            route("/items/{id}", "/items/{id}", [up.ok.url], name="items"),
            route("/secure", "/secure", [up.ok.url], name="secure", auth_required=True),
            route("/failing", "/failing", [up.failing.url], name="failing"),
            route(
                "/limited",
                "/limited",
                [up.ok.url],
                name="limited",
                rate_limit={"strategy": "PerIP", "requests_per_window": 2, "window_duration": 60},
            ),
            route(
                "/retry",
                "/retry",
                [up.failing.url],
                name="retry",
                retry={"max_retries": 2, **no_wait},
            ),
            route(
                "/budget",
                "/budget",
                [up.failing.url],
                name="budget",
                retry={
                    "max_retries": 2,
                    "budget_percent": 0,
                    "min_retries_per_second": 0,
                    **no_wait,
                },
            ),
            route("/lonely", "/lonely", [up.lonely.url], name="lonely"),
        ],
    }


@pytest.fixture(scope="module")
def stack(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("admin-api")
    spawned_at = time.monotonic()
    with Gateway(stack_config(upstreams), directory) as gateway:
        yield Stack(gateway, upstreams, spawned_at)


@pytest.fixture
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with admin_client(stack.gateway) as client:
        yield client


# --- helpers ------------------------------------------------------------------------------------


def admin_client(gateway: Gateway, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=gateway.admin_url, trust_env=False, timeout=10, headers=headers)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(admin: httpx.Client) -> tuple[dict[str, Any], Samples]:
    """``GET /metrics`` parsed: families by exposed name, and ``(name, labels) → value``."""
    response = admin.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families: dict[str, Any] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        # the parser strips a counter's ``_total``; DESIGN.md names carry it
        families[family.name + ("_total" if family.type == "counter" else "")] = family
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def requests_counted(samples: Samples, route_id: str, code: str, method: str = "GET") -> float:
    found = sample(samples, "kairos_requests_total", route=route_id, method=method, code=code)
    return found or 0


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for n, labels in samples if n == name and label in dict(labels)}


def get_many(gateway: Gateway, path: str, count: int, **kwargs: Any) -> list[int]:
    with gateway.client() as client:
        return [client.get(path, **kwargs).status_code for _ in range(count)]


def key_of(upstream: Upstream) -> str:
    """The breaker key of an upstream (``scheme://host:port``)."""
    return upstream.url


def circuit_url(key: str, action: str) -> str:
    return f"/api/circuits/{quote(key, safe='')}/{action}"


def config_ids(gateway: Gateway) -> list[str]:
    return [r["name"] for r in gateway.document["routers"]]


def bearer(secret: str = JWT_SECRET) -> dict[str, str]:
    claims = {"sub": "alice", "exp": int(time.time()) + 300}
    return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}


def assert_admin_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["type"] == error_type, body
    assert isinstance(body["error"], str) and body["error"]
    assert body.get("timestamp") and body.get("request_id")
    return body


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` over ``path`` atomically, as an editor would."""
    temp = path.with_suffix(".edit")
    temp.write_text(text)
    os.replace(temp, path)


# --- health and readiness -----------------------------------------------------------------------


def test_health_and_live_report_status_version_and_real_uptime(
    admin: httpx.Client, stack: Stack
) -> None:
    first = {path: admin.get(path) for path in ("/health", "/live")}
    time.sleep(1.0)
    second = {path: admin.get(path) for path in ("/health", "/live")}

    for path in ("/health", "/live"):
        before, after = first[path], second[path]
        assert before.status_code == after.status_code == 200, after.text
        body = after.json()
        assert set(body) == {"status", "version", "uptime_seconds"}
        assert body["status"] == "ok"
        assert body["version"] == __version__
        grown = body["uptime_seconds"] - before.json()["uptime_seconds"]
        assert 0.8 <= grown <= 1.6, (path, grown)
        assert 0 < body["uptime_seconds"] <= time.monotonic() - stack.spawned_at + 0.5


def test_ready_when_every_route_has_a_candidate_backend(admin: httpx.Client, stack: Stack) -> None:
    response = admin.get("/ready")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "reasons": [],
        "unroutable": [],
        "config_version": stack.gateway.config_version(),
    }


def test_ready_stays_200_and_lists_a_route_whose_only_backend_is_forced_open(
    admin: httpx.Client, stack: Stack
) -> None:
    key = key_of(stack.upstreams.lonely)
    opened = admin.post(circuit_url(key, "open"))
    assert opened.status_code == 200, opened.text
    try:
        response = admin.get("/ready")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["reasons"], body["unroutable"]) == ("ready", [], ["lonely"])
    finally:
        assert admin.post(circuit_url(key, "reset")).status_code == 200

    assert admin.get("/ready").json()["unroutable"] == []


# --- Prometheus ---------------------------------------------------------------------------------


def test_prometheus_text_has_every_design_metric(admin: httpx.Client, stack: Stack) -> None:
    gateway = stack.gateway
    key = key_of(stack.upstreams.lonely)
    _, before = scrape(admin)
    assert get_many(gateway, "/echo", 2) == [200, 200]
    assert get_many(gateway, "/retry", 1) == [503]
    assert get_many(gateway, "/budget", 1) == [503]
    assert get_many(gateway, "/limited", 3) == [200, 200, 429]
    assert admin.post(circuit_url(key, "open")).status_code == 200
    assert admin.post(circuit_url(key, "reset")).status_code == 200
    current = admin.get("/api/config").json()["config"]
    replaced = admin.put("/api/config", json={**current, "_comment": "touched by a test"})
    assert replaced.status_code == 200, replaced.text

    families, after = scrape(admin)

    missing = [name for name in DESIGN_METRICS if name not in families]
    assert not missing, f"absent from /metrics: {missing}"
    triggered = (
        "kairos_requests_total",
        "kairos_request_duration_seconds_count",
        "kairos_gateway_overhead_seconds_count",
        "kairos_upstream_requests_total",
        "kairos_upstream_duration_seconds_count",
        "kairos_retries_total",
        "kairos_retry_budget_exhausted_total",
        "kairos_circuit_state",
        "kairos_circuit_transitions_total",
        "kairos_rate_limited_total",
        "kairos_backend_healthy",
        "kairos_in_flight_requests",
        "kairos_ai_decision_duration_seconds_count",
        "kairos_config_reloads_total",
        "kairos_build_info",
    )
    names = {name for name, _ in after}
    assert not [n for n in triggered if n not in names], sorted(names)

    def grew(name: str, **labels: str) -> float:
        return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert grew("kairos_retries_total", route="retry", reason="status_503") == 2
    assert label_values(after, "kairos_retries_total", "route") == {"retry"}
    assert grew("kairos_retry_budget_exhausted_total", route="budget") == 1
    assert grew("kairos_rate_limited_total", route="limited") == 1
    transitions = "kairos_circuit_transitions_total"
    assert grew(transitions, backend=key, from_state="closed", to_state="open") == 1
    assert grew(transitions, backend=key, from_state="open", to_state="closed") == 1
    assert grew("kairos_config_reloads_total", result="success") == 1
    assert sample(after, "kairos_circuit_state", backend=key) == 0
    assert sample(after, "kairos_build_info", version=__version__) == 1
    assert sample(after, "kairos_in_flight_requests") == 0


def test_the_event_loop_task_gauge_counts_live_tasks(admin: httpx.Client) -> None:
    """``kairos_event_loop_tasks`` is set by the 1-second tick: the gateway always runs some
    (the tick itself, the config watcher), so a live process never reports zero."""
    deadline = time.monotonic() + 3
    tasks = None
    while time.monotonic() < deadline:
        tasks = sample(scrape(admin)[1], "kairos_event_loop_tasks")
        if tasks:
            break
        time.sleep(0.2)
    assert tasks is not None and 2 <= tasks < 1000, tasks


def test_route_label_is_the_route_id_never_a_raw_path(admin: httpx.Client, stack: Stack) -> None:
    assert get_many(stack.gateway, "/items/1", 1) == [200]
    assert get_many(stack.gateway, "/items/2", 2) == [200, 200]
    assert get_many(stack.gateway, "/no/such/route", 1) == [404]

    _, samples = scrape(admin)

    assert requests_counted(samples, "items", "200") >= 3
    assert requests_counted(samples, "none", "404") >= 1
    allowed = {*config_ids(stack.gateway), "none"}
    for name in ("kairos_requests_total", "kairos_request_duration_seconds_count"):
        routes = label_values(samples, name, "route")
        assert routes <= allowed, routes
        assert not [r for r in routes if "/" in r]


def test_metric_values_match_the_traffic(
    gateway_factory: GatewayFactory, upstreams: Upstreams
) -> None:
    gateway = gateway_factory(
        {
            "circuit_breaker": {"failure_threshold": 1000},
            "routers": [
                route("/echo", "/echo", [upstreams.ok.url], name="echo"),
                route("/failing", "/failing", [upstreams.failing.url], name="failing"),
                route(
                    "/limited",
                    "/limited",
                    [upstreams.lonely.url],
                    name="limited",
                    rate_limit={
                        "strategy": "PerIP",
                        "requests_per_window": 2,
                        "window_duration": 60,
                    },
                ),
            ],
        }
    )
    with admin_client(gateway) as admin:
        assert get_many(gateway, "/echo", 7) == [200] * 7
        _, samples = scrape(admin)
        assert requests_counted(samples, "echo", "200") == 7
        assert admin.get("/api/metrics").json()["requests_total"] == 7

        assert get_many(gateway, "/failing", 3) == [503] * 3
        assert get_many(gateway, "/limited", 4) == [200, 200, 429, 429]
        time.sleep(1.1)  # every request now lies in a closed second

        _, samples = scrape(admin)
        assert requests_counted(samples, "failing", "503") == 3
        assert requests_counted(samples, "limited", "429") == 2
        assert requests_counted(samples, "limited", "200") == 2
        assert sample(samples, "kairos_rate_limited_total", route="limited") == 2
        failing_key, ok_key = key_of(upstreams.failing), key_of(upstreams.ok)
        upstream_total = "kairos_upstream_requests_total"
        assert sample(samples, upstream_total, backend=failing_key, outcome="failure_status") == 3
        assert sample(samples, upstream_total, backend=ok_key, outcome="success") == 7

        snapshot = admin.get("/api/metrics").json()
        assert snapshot["requests_total"] == 14
        assert snapshot["errors_total"] == 3
        assert snapshot["rate_limited_total"] == 2
        assert snapshot["status_classes"] == {"2xx": 9, "5xx": 3, "4xx": 2}
        assert snapshot["error_rate"] == pytest.approx(3 / 14, abs=1e-3)
        assert snapshot["requests_per_second"]["per_10s"] == pytest.approx(1.4, abs=1e-3)
        assert snapshot["requests_per_second"]["per_60s"] == pytest.approx(14 / 60, abs=1e-3)
        latency = snapshot["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        routes = {r["route"]: r for r in snapshot["routes"]}
        assert routes["echo"]["requests_total"] == 7
        assert routes["failing"]["errors_total"] == 3
        assert routes["limited"]["rate_limited_total"] == 2
        assert routes["limited"]["has_rate_limit"] is True
        backends = {b["backend"]: b for b in snapshot["backends"]}
        assert backends[ok_key]["requests_total"] == 7
        assert backends[failing_key]["requests_total"] == 3
        assert backends[failing_key]["failures_total"] == 3
        assert backends[failing_key]["circuit"]["state"] == "closed"


def test_a_breaker_opening_shows_in_every_view(
    gateway_factory: GatewayFactory, upstreams: Upstreams
) -> None:
    gateway = gateway_factory(
        {
            "routers": [
                route(
                    "/breaker",
                    "/breaker",
                    [upstreams.failing.url],
                    name="breaker",
                    circuit_breaker={"failure_threshold": 3, "reset_timeout_s": 60},
                )
            ]
        }
    )
    with admin_client(gateway) as admin:
        key = key_of(upstreams.failing)

        assert get_many(gateway, "/breaker", 3) == [503] * 3
        with gateway.client() as client:
            rejected = client.get("/breaker")
        assert rejected.status_code == 503
        assert rejected.json()["type"] == "circuit_open"

        _, samples = scrape(admin)
        transitions = "kairos_circuit_transitions_total"
        assert sample(samples, transitions, backend=key, from_state="closed", to_state="open") == 1
        assert sample(samples, "kairos_circuit_state", backend=key) == 1
        circuit = next(
            c for c in admin.get("/api/circuits").json()["circuits"] if c["backend"] == key
        )
        assert circuit["state"] == "open"
        assert circuit["opened_at"] == pytest.approx(time.time(), abs=30)
        assert circuit["next_half_open_at"] == pytest.approx(circuit["opened_at"] + 60, abs=0.01)
        backends = {b["backend"]: b for b in admin.get("/api/metrics").json()["backends"]}
        assert backends[key]["circuit"]["state"] == "open"
        ready = admin.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["unroutable"] == ["breaker"]


# --- JSON metrics -------------------------------------------------------------------------------


def test_api_metrics_snapshot_shape(admin: httpx.Client, stack: Stack) -> None:
    assert get_many(stack.gateway, "/echo", 3) == [200] * 3

    snapshot = admin.get("/api/metrics")

    assert snapshot.status_code == 200, snapshot.text
    body = snapshot.json()
    assert body["requests_total"] >= 3
    assert set(body["requests_per_second"]) == RATES
    assert set(body["latency_ms"]) == PERCENTILES
    assert set(body["overhead_ms"]) == PERCENTILES
    assert body["status_classes"].get("2xx", 0) >= 3
    for name in ("errors_total", "in_flight", "rate_limited_total", "error_rate"):
        assert isinstance(body[name], int | float), name
    assert body["uptime_seconds"] > 0
    assert body["config_version"] == stack.gateway.config_version()

    routes = {r["route"]: r for r in body["routes"]}
    assert list(routes) == config_ids(stack.gateway)
    assert routes["echo"]["requests_total"] >= 3
    for item in routes.values():
        assert set(item["requests_per_second"]) == RATES
        assert set(item["latency_ms"]) == PERCENTILES
        assert {"errors_total", "error_rate", "status_classes"} <= set(item)
    assert routes["secure"]["auth_required"] is True
    assert routes["retry"]["has_retry"] is True
    assert routes["limited"]["has_rate_limit"] is True
    assert routes["echo"]["auth_required"] is routes["echo"]["has_retry"] is False
    assert (routes["echo"]["has_ai"], routes["echo"]["ai_mode"]) == (False, None)

    up = stack.upstreams
    backends = {b["backend"]: b for b in body["backends"]}
    assert set(backends) == {key_of(up.ok), key_of(up.failing), key_of(up.lonely)}
    for item in backends.values():
        assert item["circuit"]["state"] in ("closed", "open", "half_open")
        assert set(item["circuit"]) >= CIRCUIT_FIELDS
        assert item["healthy"] is True
        assert set(item["latency_ms"]) == PERCENTILES
        assert {"requests_total", "failures_total", "in_flight"} <= set(item)
    assert backends[key_of(up.ok)]["requests_total"] >= 3


def test_history_grows_by_about_one_point_per_second(admin: httpx.Client, stack: Stack) -> None:
    assert get_many(stack.gateway, "/echo", 2) == [200, 200]
    asked = {"seconds": 3600}  # more than kept: the count grows, never slides
    sent_first = time.time()
    first = admin.get("/api/metrics/history", params=asked)
    answered_first = time.time()
    assert first.status_code == 200, first.text
    time.sleep(3.0)

    sent_second = time.time()
    second = admin.get("/api/metrics/history", params=asked).json()
    answered_second = time.time()

    # one point per closed wall-clock second between the two answers; the bounds come from when
    # each answer could have been computed (a loaded machine may stretch the 3 s wait), less one
    # for a tick a starved event loop may miss
    grown = len(second["points"]) - len(first.json()["points"])
    fewest = int(sent_second) - int(answered_first)
    most = int(answered_second) - int(sent_first)
    stamps = [p["t"] for p in second["points"]]
    assert fewest - 1 <= grown <= most, (grown, fewest, most, stamps[-8:])
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert all(gap in (1, 2) for gap in gaps), stamps
    assert stamps[-1] <= answered_second
    for point in second["points"]:
        assert {"t", "requests", "errors", "p50_ms", "p99_ms", "in_flight"} <= set(point)
    assert sum(p["requests"] for p in second["points"]) >= 2

    few = admin.get("/api/metrics/history", params={"seconds": 2}).json()
    assert few["seconds"] == 2
    assert len(few["points"]) <= 2
    not_a_number = admin.get("/api/metrics/history", params={"seconds": "abc"})
    assert_admin_error(not_a_number, 400, "bad_request")


# --- config -------------------------------------------------------------------------------------


def test_config_is_served_with_the_jwt_secret_redacted(admin: httpx.Client, stack: Stack) -> None:
    response = admin.get("/api/config")

    assert response.status_code == 200, response.text
    assert JWT_SECRET not in response.text
    body = response.json()
    assert body["config"]["jwt"]["secret"] == "***"
    assert [r["name"] for r in body["config"]["routers"]] == config_ids(stack.gateway)
    assert body["config_version"] == stack.gateway.config_version()
    assert body["source"].endswith("config.json")


def test_validate_reports_errors_with_path_and_message(admin: httpx.Client, stack: Stack) -> None:
    broken = json.loads(json.dumps(stack.gateway.document))
    broken["routers"][0]["backends"][0]["port"] = 0
    broken["routers"][1]["methods"] = ["FETCH"]

    response = admin.post("/api/config/validate", json=broken)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is False
    paths = {e["path"] for e in body["errors"]}
    assert "routers[0].backends[0].port" in paths
    assert any(p.startswith("routers[1].methods") for p in paths)
    for error in body["errors"]:
        assert error["message"] and error["severity"] == "error"

    valid = admin.post("/api/config/validate", json=stack.gateway.document).json()
    assert valid["valid"] is True
    assert valid["errors"] == []


def test_a_broken_config_is_refused_and_the_running_one_kept(
    admin: httpx.Client, stack: Stack
) -> None:
    gateway = stack.gateway
    before = gateway.config_path.read_bytes()
    version = gateway.config_version()
    broken = json.loads(json.dumps(gateway.document))
    broken["routers"][0]["backends"][0]["port"] = 0

    response = admin.put("/api/config", json=broken)

    body = assert_admin_error(response, 400, "validation_error")
    assert any(d["path"] == "routers[0].backends[0].port" for d in body["details"])
    assert gateway.config_path.read_bytes() == before
    assert gateway.config_version() == version
    assert get_many(gateway, "/echo", 1) == [200]


def test_a_body_over_the_config_cap_is_413(admin: httpx.Client, stack: Stack) -> None:
    before = stack.gateway.config_path.read_bytes()
    body = b'{"pad": "' + b"x" * CONFIG_CAP_OVERFLOW_BYTES + b'"}'

    response = admin.put("/api/config", content=body, headers={"Content-Type": "application/json"})

    assert_admin_error(response, 413, "payload_too_large")
    assert stack.gateway.config_path.read_bytes() == before


def test_put_of_the_redacted_config_keeps_the_real_secret(
    gateway_factory: GatewayFactory, upstreams: Upstreams
) -> None:
    gateway = gateway_factory(
        {
            "jwt": {"secret": JWT_SECRET},
            "routers": [
                route("/secure", "/secure", [upstreams.ok.url], name="secure", auth_required=True)
            ],
        }
    )
    with admin_client(gateway) as admin:
        version = gateway.config_version()
        served = admin.get("/api/config").json()["config"]
        assert served["jwt"]["secret"] == "***"

        response = admin.put("/api/config", json={**served, "_comment": "edited through the API"})

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["reloaded"] is True
        assert body["config_version"] != version
        assert gateway.config_version() == body["config_version"]
        on_disk = json.loads(gateway.config_path.read_text())
        assert on_disk["jwt"]["secret"] == JWT_SECRET
        assert on_disk["_comment"] == "edited through the API"
        with gateway.client() as client:
            assert client.get("/secure", headers=bearer()).status_code == 200
            forged = client.get("/secure", headers=bearer("***-not-the-secret-but-32-chars-long"))
            assert forged.status_code == 401
        assert JWT_SECRET not in admin.get("/api/config").text


def test_put_of_the_redacted_config_keeps_fallback_provider_keys(
    gateway_factory: GatewayFactory, upstreams: Upstreams
) -> None:
    fallback_key = "sk-admin-api-tests-fallback-0123456789"
    gateway = gateway_factory(
        {
            "ai": {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "fallback_providers": [
                    {"provider": "groq", "model": "llama-3.1-8b", "api_key": fallback_key}
                ],
            },
            "routers": [route("/echo", "/echo", [upstreams.ok.url], name="echo")],
        }
    )
    with admin_client(gateway) as admin:
        served = admin.get("/api/config")
        assert fallback_key not in served.text

        response = admin.put("/api/config", json={**served.json()["config"], "_comment": "edit"})

        assert response.status_code == 200, response.text
        on_disk = json.loads(gateway.config_path.read_text())
        assert on_disk["ai"]["fallback_providers"][0]["api_key"] == fallback_key


def test_reload_from_file_applies_a_good_edit_and_refuses_a_broken_one(
    gateway_factory: GatewayFactory, upstreams: Upstreams
) -> None:
    gateway = gateway_factory({"routers": [route("/echo", "/echo", [upstreams.ok.url])]})
    with admin_client(gateway) as admin:
        version = gateway.config_version()
        edited = {
            **gateway.document,
            "routers": [
                *gateway.document["routers"],
                route("/added", "/added", [upstreams.lonely.url], name="added"),
            ],
        }
        gateway.write_config(edited)

        response = admin.post("/api/config/reload")

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["reloaded"] is True
        assert body["config_version"] != version
        assert body["config_version"] == gateway.config_version()
        with gateway.client() as client:
            added = client.get("/added")
        assert added.status_code == 200
        assert added.headers["x-upstream"] == "lonely"

        version = body["config_version"]
        replace_file(gateway.config_path, '{"routers": [ this is not JSON')
        response = admin.post("/api/config/reload")

        assert response.status_code == 400, response.text
        body = response.json()
        assert body["reloaded"] is False
        assert body["config_version"] == version
        assert body["errors"] and all(e["message"] for e in body["errors"])
        assert gateway.config_version() == version
        assert get_many(gateway, "/echo", 1) == [200]
        assert get_many(gateway, "/added", 1) == [200]
        _, samples = scrape(admin)
        assert (sample(samples, "kairos_config_reloads_total", result="success") or 0) >= 1
        assert (sample(samples, "kairos_config_reloads_total", result="failure") or 0) >= 1


# --- circuits and AI ------------------------------------------------------------------------------


def test_circuits_list_every_backend_and_obey_reset_and_open(
    admin: httpx.Client, stack: Stack
) -> None:
    up = stack.upstreams
    listed = admin.get("/api/circuits")
    assert listed.status_code == 200, listed.text
    circuits = {c["backend"]: c for c in listed.json()["circuits"]}
    assert set(circuits) == {key_of(up.ok), key_of(up.failing), key_of(up.lonely)}
    for circuit in circuits.values():
        assert set(circuit) >= CIRCUIT_FIELDS

    key = key_of(up.lonely)
    opened = admin.post(circuit_url(key, "open"))
    try:
        assert opened.status_code == 200, opened.text
        assert opened.json()["backend"] == key
        assert opened.json()["state"] == "open"
        assert opened.json()["next_half_open_at"] > opened.json()["opened_at"]
        with stack.gateway.client() as client:
            assert client.get("/lonely").json()["type"] == "circuit_open"
    finally:
        reset = admin.post(circuit_url(key, "reset"))
    assert reset.status_code == 200, reset.text
    assert reset.json()["state"] == "closed"
    assert reset.json()["opened_at"] is None
    assert get_many(stack.gateway, "/lonely", 1) == [200]


@pytest.mark.parametrize("action", ["open", "reset"])
def test_an_unknown_backend_is_404(admin: httpx.Client, action: str) -> None:
    response = admin.post(circuit_url("http://127.0.0.1:1", action))

    assert_admin_error(response, 404, "not_found")


def test_ai_decisions_is_an_empty_list(admin: httpx.Client) -> None:
    for params in ({}, {"limit": 5}):
        response = admin.get("/api/ai/decisions", params=params)
        assert response.status_code == 200, response.text
        assert response.json() == {"decisions": [], "routes": []}


# --- admin token ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "admin": {"token": ADMIN_TOKEN},
        "rate_limit": {"strategy": "PerIP", "requests_per_window": 2, "window_duration": 60},
        "routers": [route("/echo", "/echo", [upstreams.ok.url], name="echo")],
    }
    with Gateway(config, tmp_path_factory.mktemp("admin-token")) as gateway:
        yield gateway


def protected_requests(gateway: Gateway) -> list[tuple[str, str, Any]]:
    """(method, path, JSON body) for every endpoint of §7 that needs the token."""
    first = gateway.document["routers"][0]["backends"][0]
    circuit = quote(f"{first['host']}:{first['port']}", safe="")
    new_route = route("/new", "/new", ["http://127.0.0.1:9"], name="new")
    return [
        ("GET", "/metrics", None),
        ("GET", "/api/metrics", None),
        ("GET", "/api/metrics/history?seconds=5", None),
        ("GET", "/api/events", None),
        ("GET", "/api/routes", None),
        ("POST", "/api/routes", new_route),
        ("GET", "/api/routes/echo", None),
        ("PUT", "/api/routes/echo", gateway.document["routers"][0]),
        ("DELETE", "/api/routes/echo", None),
        ("GET", "/api/config", None),
        ("PUT", "/api/config", gateway.document),
        ("POST", "/api/config/validate", gateway.document),
        ("POST", "/api/config/reload", None),
        ("GET", "/api/circuits", None),
        ("POST", f"/api/circuits/{circuit}/reset", None),
        ("POST", f"/api/circuits/{circuit}/open", None),
        ("GET", "/api/ai/decisions", None),
    ]


@pytest.mark.parametrize(
    "authorization",
    [None, f"Bearer {ADMIN_TOKEN[:-1]}X", f"Basic {ADMIN_TOKEN}", "Bearer", ADMIN_TOKEN],
    ids=["missing", "wrong", "basic", "empty", "no-scheme"],
)
def test_every_protected_endpoint_refuses_a_missing_or_wrong_token(
    secured: Gateway, authorization: str | None
) -> None:
    before = secured.config_path.read_bytes()
    headers = {"Authorization": authorization} if authorization else {}
    with admin_client(secured) as client:
        for method, path, body in protected_requests(secured):
            response = client.request(method, path, json=body, headers=headers)
            assert_admin_error(response, 401, "unauthorized")
            assert response.headers.get("www-authenticate", "").lower().startswith("bearer"), path
            assert ADMIN_TOKEN not in response.text
    assert secured.config_path.read_bytes() == before


def test_the_right_token_opens_every_endpoint(secured: Gateway) -> None:
    with admin_client(secured, token=ADMIN_TOKEN) as client:
        for method, path, _ in protected_requests(secured):
            if method != "GET" or path == "/api/events":
                continue
            assert client.get(path).status_code == 200, path
        with client.stream("GET", "/api/events") as events:
            assert events.status_code == 200
            assert events.headers["content-type"].startswith("text/event-stream")
        valid = client.post("/api/config/validate", json=secured.document)
        assert valid.status_code == 200, valid.text
        reload = client.post("/api/config/reload")
        assert reload.status_code == 200, reload.text
        circuit = client.get("/api/circuits").json()["circuits"][0]["backend"]
        assert client.post(circuit_url(circuit, "reset")).status_code == 200
    lower = {"Authorization": f"bearer {ADMIN_TOKEN}"}
    with admin_client(secured) as client:
        assert client.get("/api/metrics", headers=lower).status_code == 200


@pytest.mark.parametrize("path", ["/health", "/live", "/ready"])
def test_probes_need_no_token(secured: Gateway, path: str) -> None:
    with admin_client(secured) as client:
        response = client.get(path)
        assert response.status_code == 200, response.text
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 200


def test_the_admin_token_never_leaks(secured: Gateway) -> None:
    with admin_client(secured, token=ADMIN_TOKEN) as client:
        config = client.get("/api/config")
        assert config.status_code == 200, config.text
        assert ADMIN_TOKEN not in config.text
        assert config.json()["config"]["admin"]["token"] == "***"
        assert ADMIN_TOKEN not in client.get("/api/routes").text
        assert ADMIN_TOKEN not in client.get("/api/metrics").text
        assert client.post("/api/config/reload").status_code == 200
    with admin_client(secured, token="not-the-token") as client:
        assert client.get("/api/config").status_code == 401
    time.sleep(0.2)

    assert ADMIN_TOKEN not in secured.process.log_text()


def test_put_of_the_redacted_config_keeps_the_admin_token(secured: Gateway) -> None:
    with admin_client(secured, token=ADMIN_TOKEN) as client:
        served = client.get("/api/config").json()["config"]
        assert served["admin"]["token"] == "***"
        response = client.put("/api/config", json={**served, "_comment": "token kept"})
        assert response.status_code == 200, response.text
        assert client.get("/api/metrics").status_code == 200

    assert json.loads(secured.config_path.read_text())["admin"]["token"] == ADMIN_TOKEN
    with admin_client(secured, token="***") as client:
        assert_admin_error(client.get("/api/metrics"), 401, "unauthorized")


def test_the_admin_listener_is_not_rate_limited(secured: Gateway) -> None:
    with secured.client() as proxy:
        statuses = [proxy.get("/echo").status_code for _ in range(3)]
    assert statuses[-1] == 429  # the global limit is live on the proxy listener

    with admin_client(secured, token=ADMIN_TOKEN) as client:
        answers = [client.get("/api/metrics").status_code for _ in range(30)]
        answers += [client.get("/health").status_code for _ in range(10)]

    assert answers == [200] * 40


def start_without_token(
    tmp_path: Path, admin_host: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """The gateway started with no admin token (config admin host ``admin_host``, extra command
    line ``args``); it must exit having bound neither port."""
    proxy_port, admin_port = free_port(), free_port()
    config = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": proxy_port},
        "admin": {"host": admin_host, "port": admin_port},
        "routers": [route("/x", "/x", ["http://127.0.0.1:9"])],
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "KAIROS_ADMIN_TOKEN"}

    result = subprocess.run(
        [sys.executable, "-m", "kairos_gateway", str(path), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    for port in (proxy_port, admin_port):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    return result


def test_a_public_admin_listener_without_token_refuses_to_start(tmp_path: Path) -> None:
    result = start_without_token(tmp_path, "0.0.0.0")

    assert result.returncode != 0, result.stderr
    assert "admin.host" in result.stderr
    assert "token" in result.stderr


def test_admin_host_flag_off_loopback_without_token_refuses_to_start(tmp_path: Path) -> None:
    # The config alone is safe (loopback admin): only the flag moves the admin API off it.
    result = start_without_token(tmp_path, "127.0.0.1", "--admin-host", "0.0.0.0")

    assert result.returncode == 1, result.stderr
    assert "'0.0.0.0'" in result.stderr and "token" in result.stderr, result.stderr


def test_route_test_and_the_config_schema_need_the_token(secured: Gateway) -> None:
    dry_run = {"method": "GET", "path": "/echo"}
    wrong = [None, f"Bearer {ADMIN_TOKEN[:-1]}X", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN]
    with admin_client(secured) as client:
        for authorization in wrong:
            headers = {"Authorization": authorization} if authorization else {}
            for response in (
                client.post("/api/route-test", json=dry_run, headers=headers),
                client.get("/api/config/schema", headers=headers),
            ):
                assert_admin_error(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].lower().startswith("bearer")
                assert "/echo" not in response.text and "properties" not in response.text

    with admin_client(secured, token=ADMIN_TOKEN) as client:
        planned = client.post("/api/route-test", json=dry_run)
        schema = client.get("/api/config/schema")
    assert planned.status_code == 200, planned.text
    assert planned.json()["route_id"] == "echo"
    assert schema.status_code == 200, schema.text
    assert "routers" in schema.json()["properties"]
