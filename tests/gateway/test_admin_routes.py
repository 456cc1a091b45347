"""Live route CRUD on a real gateway (DESIGN.md §7): applied at once, persisted atomically.

A route created, replaced or deleted through ``/api/routes`` serves (or stops serving) traffic on
the next request and is in config.json, written so that every other key (``_comment`` included)
survives; a bad or duplicate route changes nothing, not even a byte of the file; ``If-Match``
gives optimistic concurrency; a gateway killed in the middle of a burst of writes leaves a file
that still loads.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kairos_core.config import load_config
from tests.support.gateway import Gateway, backend, route
from tests.support.procs import Upstream

GatewayFactory = Callable[..., Gateway]
KILL_AFTER_S = 1.0
KILL_ROUNDS = 3
FALLBACK_KEY = "sk-route-fallback-key-0123456789"


@dataclass
class Upstreams:
    a: Upstream
    b: Upstream


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    with Upstream.start("a") as a, Upstream.start("b") as b:
        yield Upstreams(a, b)


def base_config(up: Upstreams) -> dict[str, Any]:
    """``base`` and ``other`` are never changed; each test that edits a route has its own."""
    ai_route = route("/ai", "/ai", [up.a.url, up.b.url], name="ai")
    ai_route["ai_policy"] = {
        "enabled": True,
        "strategy": "latency_prediction",
        "fallback_providers": [{"provider": "groq", "model": "llama", "api_key": FALLBACK_KEY}],
    }
    return {
        "_comment": "top-level comment the admin API must keep",
        "circuit_breaker": {"failure_threshold": 7, "_comment": "nested comment"},
        "health_check": {"interval_s": 30},
        "routers": [
            {**route("/base", "/base", [up.a.url], name="base"), "_comment": "the base route"},
            route("/other/{id}", "/other/{id}", [up.a.url], name="other"),
            route("/to-update", "/to-update", [up.a.url], name="to-update"),
            route("/to-delete/{id}", "/to-delete/{id}", [up.a.url], name="to-delete"),
            route("/contested", "/contested", [up.a.url], name="contested"),
            ai_route,
        ],
    }


@pytest.fixture(scope="module")
def gateway(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway per worker; every test edits only routes of its own."""
    with Gateway(base_config(upstreams), tmp_path_factory.mktemp("routes")) as started:
        yield started


@contextlib.contextmanager
def admin_of(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.admin_url, trust_env=False, timeout=10) as client:
        yield client


def on_disk(gateway: Gateway) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(gateway.config_path.read_text())
    return document


def route_names(document: dict[str, Any]) -> list[str | None]:
    return [r.get("name") for r in document["routers"]]


def proxy_get(gateway: Gateway, path: str) -> httpx.Response:
    with gateway.client() as client:
        return client.get(path)


def assert_admin_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == error_type, body
    assert body["error"]
    return body


def assert_kept_other_keys(document: dict[str, Any], original: dict[str, Any]) -> None:
    for key, value in original.items():
        if key != "routers":
            assert document[key] == value, key
    assert document["routers"][0] == original["routers"][0]
    assert document["routers"][0]["_comment"] == "the base route"


# --- create, read, update, delete -------------------------------------------------------------


def test_a_created_route_serves_at_once_and_is_persisted(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    original = on_disk(gateway)
    new_route = route("/fresh/{*rest}", "/fresh/{*rest}", [upstreams.b.url], name="fresh")

    with admin_of(gateway) as admin:
        response = admin.post("/api/routes", json=new_route)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["route"]["id"] == "fresh"
    assert body["route"]["index"] == len(original["routers"])
    assert body["route"]["config"] == new_route
    assert body["config_version"] == gateway.config_version()
    assert response.headers["etag"].strip('"') == body["config_version"]
    served = proxy_get(gateway, "/fresh/x?y=1")
    assert served.status_code == 200, served.text
    assert served.headers["x-upstream"] == "b"
    assert served.json()["path"] == "/fresh/x"
    document = on_disk(gateway)
    assert document["routers"] == [*original["routers"], new_route]
    assert_kept_other_keys(document, original)


def backend_key(entry: dict[str, Any]) -> str:
    return f"{entry['host'].rstrip('/')}:{entry['port']}"


def test_list_and_get_show_routes_as_written(gateway: Gateway) -> None:
    with admin_of(gateway) as admin:
        listed = admin.get("/api/routes")
        one = admin.get("/api/routes/base")

    assert listed.status_code == 200, listed.text
    body = listed.json()
    document = on_disk(gateway)
    assert [r["id"] for r in body["routes"]] == route_names(document)
    assert [r["index"] for r in body["routes"]] == list(range(len(document["routers"])))
    assert body["config_version"] == gateway.config_version()
    assert one.status_code == 200, one.text
    route = one.json()
    assert (route["id"], route["index"], route["config"]) == ("base", 0, document["routers"][0])
    assert route["backends"] == [backend_key(document["routers"][0]["backends"][0])]
    assert route["policies"]["circuit_breaker_from"] == "base"
    assert one.json()["config"]["_comment"] == "the base route"
    assert one.headers["etag"].strip('"') == body["config_version"]


def test_an_updated_route_switches_traffic_at_once(gateway: Gateway, upstreams: Upstreams) -> None:
    original = on_disk(gateway)
    index = route_names(original).index("to-update")
    assert proxy_get(gateway, "/to-update").headers["x-upstream"] == "a"
    replacement = {**original["routers"][index], "backends": [backend(upstreams.b.url)]}

    with admin_of(gateway) as admin:
        response = admin.put("/api/routes/to-update", json=replacement)

    assert response.status_code == 200, response.text
    route = response.json()["route"]
    assert (route["id"], route["index"], route["config"]) == ("to-update", index, replacement)
    assert route["backends"] == [upstreams.b.url]
    assert proxy_get(gateway, "/to-update").headers["x-upstream"] == "b"
    document = on_disk(gateway)
    expected = copy.deepcopy(original["routers"])
    expected[index] = replacement
    assert document["routers"] == expected
    assert_kept_other_keys(document, original)


def test_a_deleted_route_stops_routing(gateway: Gateway) -> None:
    original = on_disk(gateway)
    assert proxy_get(gateway, "/to-delete/1").status_code == 200

    with admin_of(gateway) as admin:
        response = admin.delete("/api/routes/to-delete")
        assert response.status_code == 200, response.text
        assert response.json()["config_version"] == gateway.config_version()
        assert_admin_error(admin.get("/api/routes/to-delete"), 404, "not_found")

    gone = proxy_get(gateway, "/to-delete/1")
    assert gone.status_code == 404
    assert gone.json()["type"] == "route_not_found"
    document = on_disk(gateway)
    assert document["routers"] == [r for r in original["routers"] if r["name"] != "to-delete"]
    assert_kept_other_keys(document, original)


# --- refusals change nothing ---------------------------------------------------------------------


def test_an_invalid_route_is_400_with_details_and_changes_nothing(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    before = gateway.config_path.read_bytes()
    version = gateway.config_version()
    count = len(on_disk(gateway)["routers"])
    bad = route("/bad", "/bad", [upstreams.b.url], name="bad")
    bad["backends"][0]["port"] = 0

    with admin_of(gateway) as admin:
        created = admin.post("/api/routes", json=bad)
        replaced = admin.put("/api/routes/other", json=bad)

    for response, index in ((created, count), (replaced, 1)):
        body = assert_admin_error(response, 400, "validation_error")
        paths = [d["path"] for d in body["details"]]
        assert f"routers[{index}].backends[0].port" in paths, body
        assert all(d["message"] for d in body["details"])
    assert gateway.config_path.read_bytes() == before
    assert gateway.config_version() == version
    assert proxy_get(gateway, "/bad").status_code == 404
    assert proxy_get(gateway, "/other/1").headers["x-upstream"] == "a"


@pytest.mark.parametrize(
    "clash",
    [
        {"name": "base", "external_path": "/unique-path"},
        {"name": "unique-name", "external_path": "/base"},
    ],
    ids=["duplicate-name", "duplicate-path"],
)
def test_a_duplicate_route_is_409_and_changes_nothing(
    gateway: Gateway, upstreams: Upstreams, clash: dict[str, str]
) -> None:
    before = gateway.config_path.read_bytes()
    duplicate = {**route("/x", "/x", [upstreams.b.url]), **clash}

    with admin_of(gateway) as admin:
        response = admin.post("/api/routes", json=duplicate)

    assert_admin_error(response, 409, "conflict")
    assert gateway.config_path.read_bytes() == before
    assert proxy_get(gateway, "/base").headers["x-upstream"] == "a"
    assert proxy_get(gateway, "/unique-path").status_code == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_an_unknown_route_id_is_404(gateway: Gateway, upstreams: Upstreams, method: str) -> None:
    before = gateway.config_path.read_bytes()
    body = route("/nope", "/nope", [upstreams.b.url], name="nope") if method == "PUT" else None

    with admin_of(gateway) as admin:
        response = admin.request(method, "/api/routes/nope", json=body)

    assert_admin_error(response, 404, "not_found")
    assert gateway.config_path.read_bytes() == before


# --- optimistic concurrency ----------------------------------------------------------------------


def test_two_writers_with_the_same_if_match_one_wins_one_gets_412(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    with admin_of(gateway) as admin:
        version = admin.get("/api/routes").json()["config_version"]
    contested = next(r for r in on_disk(gateway)["routers"] if r["name"] == "contested")
    # both bodies differ from the running route: a no-op write keeps the (content) version
    bodies = [
        {**contested, "backends": [backend(upstream.url)], "timeout_ms": timeout_ms}
        for upstream, timeout_ms in ((upstreams.a, 1111), (upstreams.b, 2222))
    ]
    barrier = threading.Barrier(len(bodies))
    answers: list[httpx.Response] = []

    def write(body: dict[str, Any]) -> None:
        with admin_of(gateway) as client:
            barrier.wait()
            answer = client.put("/api/routes/contested", json=body, headers={"If-Match": version})
            answers.append(answer)

    threads = [threading.Thread(target=write, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)

    assert sorted(r.status_code for r in answers) == [200, 412], [r.text for r in answers]
    loser = next(r for r in answers if r.status_code == 412)
    assert loser.json()["type"] == "precondition_failed"
    winner = next(r for r in answers if r.status_code == 200).json()["route"]["config"]
    assert next(r for r in on_disk(gateway)["routers"] if r["name"] == "contested") == winner
    served_by = proxy_get(gateway, "/contested").headers["x-upstream"]
    assert backend({"a": upstreams.a, "b": upstreams.b}[served_by].url) == winner["backends"][0]


def test_a_stale_if_match_is_412_and_a_current_one_is_accepted(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    new_route = route("/guarded", "/guarded", [upstreams.b.url], name="guarded")
    with admin_of(gateway) as admin:
        before = gateway.config_path.read_bytes()
        stale = admin.post(
            "/api/routes", json=new_route, headers={"If-Match": '"0123456789abcdef"'}
        )
        assert_admin_error(stale, 412, "precondition_failed")
        assert gateway.config_path.read_bytes() == before

        etag = admin.get("/api/routes").headers["etag"]
        accepted = admin.post("/api/routes", json=new_route, headers={"If-Match": etag})
        assert accepted.status_code == 201, accepted.text

    assert proxy_get(gateway, "/guarded").headers["x-upstream"] == "b"


def test_concurrent_creates_without_if_match_all_persist(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    names = [f"burst-{i}" for i in range(12)]
    barrier = threading.Barrier(len(names))
    statuses: dict[str, int] = {}

    def create(name: str) -> None:
        with admin_of(gateway) as client:
            barrier.wait()
            body = route(f"/{name}", "/echo", [upstreams.b.url], name=name)
            statuses[name] = client.post("/api/routes", json=body).status_code

    threads = [threading.Thread(target=create, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)

    assert statuses == dict.fromkeys(names, 201)
    with admin_of(gateway) as admin:
        listed = [r["id"] for r in admin.get("/api/routes").json()["routes"]]
    assert sorted(n for n in listed if n.startswith("burst-")) == sorted(names)
    persisted = [n for n in route_names(on_disk(gateway)) if n and n.startswith("burst-")]
    assert sorted(persisted) == sorted(names)


# --- secrets -------------------------------------------------------------------------------------


def test_route_answers_never_show_a_fallback_provider_key(gateway: Gateway) -> None:
    with admin_of(gateway) as admin:
        assert FALLBACK_KEY not in admin.get("/api/config").text
        for path in ("/api/routes", "/api/routes/ai"):
            response = admin.get(path)
            assert response.status_code == 200
            assert FALLBACK_KEY not in response.text, path


# --- crash safety ------------------------------------------------------------------------------


def write_burst(gateway: Gateway, upstream: Upstream, stop: threading.Event) -> list[int]:
    """POST and DELETE a route as fast as possible until the gateway dies; the statuses."""
    statuses: list[int] = []
    body = route("/churn", "/echo", [upstream.url], name="churn")
    with admin_of(gateway) as admin:
        while not stop.is_set():
            try:
                statuses.append(admin.post("/api/routes", json=body).status_code)
                statuses.append(admin.delete("/api/routes/churn").status_code)
            except httpx.HTTPError:
                break
    return statuses


def test_sigkill_during_a_burst_of_writes_never_leaves_a_broken_file(
    gateway_factory: GatewayFactory, upstreams: Upstreams
) -> None:
    for _ in range(KILL_ROUNDS):
        gateway = gateway_factory(base_config(upstreams))
        stop = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            burst = pool.submit(write_burst, gateway, upstreams.b, stop)
            time.sleep(KILL_AFTER_S)
            gateway.process.stop(signal.SIGKILL)
            stop.set()
            statuses = burst.result(timeout=10)

        assert len(statuses) >= 10, f"the burst barely wrote anything: {statuses}"
        assert set(statuses) <= {200, 201}, statuses
        assert_loads(gateway.config_path)


def assert_loads(path: Path) -> None:
    text = path.read_text()
    try:
        document = json.loads(text)
    except ValueError as exc:
        message = f"config.json is not JSON after SIGKILL: {exc}\n{text[-500:]}"
        raise AssertionError(message) from exc
    loaded = load_config(path, environ={})
    assert [r.name for r in loaded.config.routers] == route_names(document)
    assert route_names(document)[:2] == ["base", "other"]
