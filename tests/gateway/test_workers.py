"""``server.workers: 2`` (DESIGN.md §8, ``kairos_gateway.workers``): one real instance, two worker
processes on the proxy port, the admin listener answering for both; a real redis-server.

Each request opens its own connection, so the kernel spreads them over the workers; each worker
draws its own request-id prefix, which is how a test knows that both served.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from kairos_cli.main import app as cli_app
from tests.support.gateway import Gateway, backend, route
from tests.support.procs import Upstream
from tests.support.redisserver import RedisServer
from tests.support.waiting import wait_until

WINDOW_TYPES = ("FixedWindow", "SlidingWindow", "TokenBucket")
StartGateway = Callable[..., Gateway]
PREFIX_CHARS = 22  # a worker's request-id prefix (then a 10-hex-digit counter)


def workers_config(redis: RedisServer, upstreams: list[Upstream], **extra: Any) -> dict[str, Any]:
    first = upstreams[0]
    limited = [
        route(
            f"/limited/{window}",
            "/echo",
            [first.url],
            rate_limit={"requests_per_window": 6, "window_duration": 60, "window_type": window},
        )
        for window in WINDOW_TYPES
    ]
    chosen = {
        "name": "chosen",
        "external_path": "/chosen",
        "internal_path": "/chosen",
        "methods": ["GET"],
        "backends": [backend(u.url) for u in upstreams],
        "ai_policy": {"strategy": "latency_prediction"},
    }
    return {
        "server": {"workers": 2, "trusted_proxies": ["127.0.0.1/32"], "graceful_shutdown_s": 1},
        "cluster": {"redis_url": redis.url, "key_prefix": "mw", "redis_timeout_ms": 200},
        "circuit_breaker": {"failure_threshold": 2, "reset_timeout_s": 30},
        "routers": [*limited, route("/plain", "/plain", [first.url]), chosen],
        **extra,
    }


def ready(gateway: Gateway) -> bool:
    return httpx.get(f"{gateway.admin_url}/ready", trust_env=False).status_code == 200


@pytest.fixture
def upstreams(upstream_factory: Callable[[str], Upstream]) -> list[Upstream]:
    return [upstream_factory("a"), upstream_factory("b")]


@pytest.fixture
def instance(
    redis_server: RedisServer, upstreams: list[Upstream], gateway_factory: StartGateway
) -> Gateway:
    gateway = gateway_factory(workers_config(redis_server, upstreams))
    wait_until(lambda: ready(gateway), 10, "both workers started")
    return gateway


def get(gateway: Gateway, path: str, ip: str = "203.0.113.50") -> httpx.Response:
    return httpx.get(
        f"{gateway.url}{path}", headers={"X-Forwarded-For": ip}, trust_env=False, timeout=10
    )


def workers_seen(responses: list[httpx.Response]) -> set[str]:
    return {r.headers["x-request-id"][:PREFIX_CHARS] for r in responses}


def until_both_workers(gateway: Gateway, path: str, ip: str = "203.0.113.51") -> None:
    """Send requests until both workers have answered one (the kernel's choice is not ours)."""
    seen: list[httpx.Response] = []
    for _ in range(200):
        seen.append(get(gateway, path, ip))
        if len(workers_seen(seen)) == 2:
            return
    pytest.fail("one worker served 200 requests in a row")


def admin_json(gateway: Gateway, path: str) -> Any:
    return httpx.get(f"{gateway.admin_url}{path}", trust_env=False, timeout=10).json()


def prometheus_sum(gateway: Gateway, prefix: str) -> float:
    text = httpx.get(f"{gateway.admin_url}/metrics", trust_env=False, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and not line.startswith("#")
    )


def test_the_gateway_runs_two_workers_and_an_admin_process(instance: Gateway) -> None:
    until_both_workers(instance, "/plain")
    assert "(2 workers)" in instance.process.log_text()


@pytest.mark.parametrize("window", WINDOW_TYPES)
def test_two_workers_admit_n_in_total(instance: Gateway, window: str) -> None:
    responses = [get(instance, f"/limited/{window}", "198.51.100.20") for _ in range(30)]
    statuses = [r.status_code for r in responses]

    assert statuses == [200] * 6 + [429] * 24
    assert len(workers_seen(responses)) == 2, "one worker answered every request"
    assert [r.headers["ratelimit-remaining"] for r in responses[:6]] == [
        "5",
        "4",
        "3",
        "2",
        "1",
        "0",
    ]


def test_metrics_and_events_count_the_requests_of_every_worker(
    instance: Gateway, upstreams: list[Upstream]
) -> None:
    responses = [get(instance, "/chosen") for _ in range(40)]
    assert {r.status_code for r in responses} == {200}
    assert len(workers_seen(responses)) == 2

    wait_until(lambda: admin_json(instance, "/api/metrics")["requests_total"] == 40, 5, "JSON")
    snapshot = admin_json(instance, "/api/metrics")
    (chosen,) = [r for r in snapshot["routes"] if r["route"] == "chosen"]
    assert chosen["requests_total"] == 40
    assert sum(b["requests_total"] for b in snapshot["backends"]) == 40
    assert snapshot["ai"]["decisions_total"] == 40
    assert (
        prometheus_sum(instance, 'kairos_requests_total{code="200",method="GET",route="chosen"}')
        == 40
    )
    assert prometheus_sum(instance, "kairos_ai_decisions_total") == 40
    decided = admin_json(instance, "/api/ai/decisions?limit=100")["decisions"]
    assert len(decided) == 40
    assert {d["request_id"][:PREFIX_CHARS] for d in decided} == workers_seen(responses)

    def in_history() -> int:
        points = admin_json(instance, "/api/metrics/history?seconds=60")["points"]
        return sum(int(point["requests"]) for point in points)

    wait_until(lambda: in_history() == 40, 3, "every request in the per-second history")
    replayed: set[str] = set()
    with httpx.stream(
        "GET",
        f"{instance.admin_url}/api/events",
        headers={"Last-Event-ID": "0"},
        trust_env=False,
        timeout=5,
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and '"request_id"' in line:
                replayed.add(json.loads(line.removeprefix("data: "))["data"]["request_id"])
            if len(replayed) == 40:
                break
    assert {request_id[:PREFIX_CHARS] for request_id in replayed} == workers_seen(responses)


def test_a_breaker_opened_by_one_worker_is_open_in_all_and_in_the_admin_api(
    instance: Gateway, upstreams: list[Upstream]
) -> None:
    failing = upstreams[0]
    failing.control(mode="fail", status=500)
    statuses: list[int] = []
    while 503 not in statuses:  # each worker counts its own consecutive failures
        statuses.append(get(instance, "/plain").status_code)
        assert len(statuses) <= 10, statuses

    def state() -> str:
        (circuit,) = [
            c
            for c in admin_json(instance, "/api/circuits")["circuits"]
            if c["backend"] == failing.url
        ]
        return str(circuit["state"])

    wait_until(lambda: state() == "open", 1.0, "the admin process sees it open")
    hits = failing.hits()
    refused = [get(instance, "/plain") for _ in range(20)]
    assert {r.status_code for r in refused} == {503}
    assert len(workers_seen(refused)) == 2
    assert failing.hits() == hits
    wait_until(
        lambda: prometheus_sum(instance, "kairos_circuit_transitions_total") == 1, 3, "counted once"
    )


def test_a_forced_open_through_the_admin_api_reaches_every_worker(
    instance: Gateway, upstreams: list[Upstream]
) -> None:
    target = upstreams[0]
    opened = httpx.post(f"{instance.admin_url}/api/circuits/{target.url}/open", trust_env=False)
    assert opened.status_code == 200
    time.sleep(0.3)
    hits = target.hits()
    refused = [get(instance, "/plain") for _ in range(20)]
    assert {r.status_code for r in refused} == {503}
    assert len(workers_seen(refused)) == 2
    assert target.hits() == hits


def test_a_route_created_through_the_admin_api_is_served_by_every_worker_at_once(
    instance: Gateway, upstreams: list[Upstream]
) -> None:
    created = httpx.post(
        f"{instance.admin_url}/api/routes",
        json=route("/fresh", "/fresh", [upstreams[1].url], name="fresh"),
        trust_env=False,
        timeout=10,
    )
    assert created.status_code == 201, created.text

    responses = [get(instance, "/fresh") for _ in range(20)]

    assert {r.status_code for r in responses} == {200}
    assert len(workers_seen(responses)) == 2
    assert json.loads(instance.config_path.read_text())["routers"][-1]["name"] == "fresh"


def test_sigterm_stops_every_process(instance: Gateway) -> None:
    until_both_workers(instance, "/plain")
    code = instance.process.stop(signal.SIGTERM, timeout_s=10)
    assert code == 0, instance.process.log_text()[-2000:]
    assert "Traceback" not in instance.process.log_text()


def test_a_worker_that_dies_is_logged_and_counted_and_the_other_keeps_serving(
    instance: Gateway,
) -> None:
    until_both_workers(instance, "/plain")
    assert prometheus_sum(instance, "kairos_workers ") == 2
    pids = [
        int(p)
        for p in re.findall(r"worker (\d+) serves the proxy port", instance.process.log_text())
    ]
    assert len(pids) == 2, instance.process.log_text()[-2000:]

    os.kill(pids[0], signal.SIGKILL)

    wait_until(
        lambda: f"worker {pids[0]} exited without stopping" in instance.process.log_text(),
        5,
        "the ERROR line about the lost worker",
    )
    assert prometheus_sum(instance, "kairos_workers ") == 1
    assert [get(instance, "/plain").status_code for _ in range(20)] == [200] * 20


def test_kairos_validate_accepts_the_config_the_gateway_runs_with_two_workers(
    instance: Gateway,
) -> None:
    validated = CliRunner().invoke(cli_app, ["validate", str(instance.config_path), "--json"])
    assert validated.exit_code == 0, validated.stdout
    assert json.loads(validated.stdout)["errors"] == []


def test_under_deny_ready_follows_every_workers_redis_link(
    redis_server: RedisServer, upstreams: list[Upstream], gateway_factory: StartGateway
) -> None:
    config = workers_config(redis_server, upstreams)
    config["cluster"]["on_redis_error"] = "deny"
    gateway = gateway_factory(config)
    wait_until(lambda: ready(gateway), 10, "both workers started")
    redis_server.stop()

    wait_until(lambda: not ready(gateway), 3, "/ready 503 once Redis is gone")
    assert prometheus_sum(gateway, "kairos_cluster_redis_up") == 0
    refused = [get(gateway, "/limited/FixedWindow") for _ in range(20)]
    assert {r.status_code for r in refused} == {503}
    assert {r.json()["type"] for r in refused} == {"cluster_unavailable"}
    assert len(workers_seen(refused)) == 2
    assert get(gateway, "/plain").status_code == 200

    redis_server.start()
    wait_until(lambda: ready(gateway), 5, "ready again")
    assert get(gateway, "/limited/FixedWindow").status_code == 200
    assert prometheus_sum(gateway, "kairos_cluster_redis_up") == 1
    # the admin process's link and each worker's went down once
    assert prometheus_sum(gateway, 'kairos_cluster_redis_transitions_total{state="down"}') == 3
