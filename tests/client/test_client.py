"""The SDK (DESIGN.md §10) against a real ``kairos-gateway`` process and real upstreams.

Most tests run once per client: ``client`` is a :class:`KairosClient`, or an
:class:`AsyncKairosClient` whose coroutines run to completion on one event loop, so the same test
body checks both. The event stream is tested natively in each flavour, and its reconnection logic
against a small real SSE server in this file that drops connections on purpose (a gateway cannot be
made to drop one on cue).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from typer.testing import CliRunner

from kairos_cli.main import app as cli
from kairos_client import (
    AsyncKairosClient,
    CircuitInfo,
    Event,
    KairosAPIError,
    KairosAuthError,
    KairosClient,
    KairosConnectionError,
    KairosError,
    MetricsSnapshot,
    RouteInfo,
)
from kairos_client._events import ServerSentEvent, SSEDecoder
from tests.support.gateway import Gateway, route
from tests.support.procs import LOOPBACK, Upstream, free_port

ADMIN_TOKEN = "admin-token-for-sdk-tests-0123456789"
JWT_SECRET = "sdk-tests-secret-7f3a9c2e5b8d1046-hs256-xyz"
EVENT_WAIT_S = 10.0


class _Blocking:
    """An :class:`AsyncKairosClient` whose coroutine methods are run to completion on one loop."""

    def __init__(self, client: AsyncKairosClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(attribute(*args, **kwargs))

        return call


ClientFactory = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    """Builds clients of one flavour (the test id says which); all are closed afterwards."""
    loop = asyncio.new_event_loop()
    closers: list[Callable[[], None]] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        if request.param == "sync":
            sync_client = KairosClient(*args, **kwargs)
            closers.append(sync_client.close)
            return sync_client
        async_client = AsyncKairosClient(*args, **kwargs)
        closers.append(lambda: loop.run_until_complete(async_client.close()))
        return _Blocking(async_client, loop)

    yield make
    for close in closers:
        close()
    loop.close()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstream, Upstream, Upstream]]:
    """Shared by the module: each gateway keeps its own breakers, so tests cannot see each other."""
    started = [Upstream.start(name) for name in ("a", "b", "broken")]
    yield started[0], started[1], started[2]
    for upstream in started:
        upstream.stop()


def _config(upstreams: tuple[Upstream, Upstream, Upstream], **extra: Any) -> dict[str, Any]:
    a, b, broken = upstreams
    broken.control(mode="fail", status=500)
    return {
        "jwt": {"secret": JWT_SECRET},
        "routers": [
            route("/echo/{*rest}", "/{rest}", [a.url, b.url], name="echo"),
            route("/broken", "/broken", [broken.url], name="broken"),
            route("/solo", "/solo", [b.url], name="solo"),
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def shared_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstreams: tuple[Upstream, Upstream, Upstream]
) -> Iterator[Gateway]:
    """One gateway for the tests that change nothing in it."""
    with Gateway(_config(upstreams), tmp_path_factory.mktemp("shared-gateway")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def token_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstreams: tuple[Upstream, Upstream, Upstream]
) -> Iterator[Gateway]:
    """A gateway whose admin API wants ``ADMIN_TOKEN``."""
    config = _config(upstreams, admin={"token": ADMIN_TOKEN})
    with Gateway(config, tmp_path_factory.mktemp("token-gateway")) as gateway:
        yield gateway


@pytest.fixture
def gateway(
    gateway_factory: Callable[..., Gateway], upstreams: tuple[Upstream, Upstream, Upstream]
) -> Gateway:
    """A fresh gateway, for tests that change it or count from zero."""
    return gateway_factory(_config(upstreams))


@pytest.fixture
def client(make_client: ClientFactory, gateway: Gateway) -> Any:
    return make_client(gateway.admin_url)


@pytest.fixture
def shared_client(make_client: ClientFactory, shared_gateway: Gateway) -> Any:
    return make_client(shared_gateway.admin_url)


def _extra_route(upstream: Upstream, name: str = "extra", internal: str = "/v1") -> dict[str, Any]:
    return route(f"/{name}", internal, [upstream.url], name=name)


def _wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# --- health, readiness --------------------------------------------------------------------------


def test_health_reports_status_version_and_a_growing_uptime(shared_client: Any) -> None:
    first = shared_client.health()
    time.sleep(0.2)
    second = shared_client.health()
    assert first.status == "ok"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", first.version)
    assert second.uptime_seconds >= first.uptime_seconds + 0.15


def test_ready_lists_unroutable_routes_without_being_not_ready(
    client: Any, gateway: Gateway, upstreams: tuple[Upstream, ...]
) -> None:
    ready = client.ready()
    assert (ready.status, ready.reasons, ready.unroutable) == ("ready", [], [])
    assert ready.config_version == gateway.config_version()

    client.open_circuit(upstreams[1].url)  # the only backend of route "solo"
    try:
        still = client.ready()
    finally:
        client.reset_circuit(upstreams[1].url)
    assert (still.status, still.reasons, still.unroutable) == ("ready", [], ["solo"])


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_count_exactly_the_proxied_requests(client: Any, gateway: Gateway) -> None:
    assert client.metrics().requests_total == 0
    with gateway.client() as proxy:
        for index in range(7):
            assert proxy.get(f"/echo/item/{index}").status_code == 200
        for _ in range(3):
            assert proxy.get("/broken").status_code == 500

    snapshot: MetricsSnapshot = client.metrics()
    assert snapshot.requests_total == 10
    assert snapshot.errors_total == 3
    assert snapshot.status_classes == {"2xx": 7, "5xx": 3}
    assert snapshot.error_rate == pytest.approx(0.3)
    assert 0 < snapshot.latency_ms.p50 <= snapshot.latency_ms.p90 <= snapshot.latency_ms.p99
    assert 0 < snapshot.overhead_ms.p50 <= snapshot.overhead_ms.p99
    assert snapshot.config_version == gateway.config_version()
    assert snapshot.uptime_seconds > 0
    by_route = {item.route: item for item in snapshot.routes}
    assert (by_route["echo"].requests_total, by_route["echo"].errors_total) == (7, 0)
    assert (by_route["broken"].requests_total, by_route["broken"].errors_total) == (3, 3)
    assert by_route["solo"].requests_total == 0
    assert sum(item.requests_total for item in snapshot.backends) == 10
    assert {item.circuit.state for item in snapshot.backends} == {"closed"}

    def history_has_every_request() -> bool:
        history = client.metrics_history(seconds=60)
        return history.seconds == 60 and sum(p.requests for p in history.points) == 10

    _wait_until(history_has_every_request)  # both count whole seconds only
    _wait_until(lambda: client.metrics().requests_per_second.per_60s > 0)

    text = client.prometheus()
    assert re.search(r'kairos_requests_total\{[^}]*route="echo"[^}]*\} 7\.0', text)
    assert re.search(r'kairos_requests_total\{[^}]*code="500"[^}]*route="broken"[^}]*\} 3\.0', text)


# --- routes -------------------------------------------------------------------------------------


def test_routes_and_one_route(shared_client: Any, upstreams: tuple[Upstream, ...]) -> None:
    routes: list[RouteInfo] = shared_client.routes()
    assert [(r.id, r.index) for r in routes] == [("echo", 0), ("broken", 1), ("solo", 2)]
    echo = shared_client.route("echo")
    assert echo == routes[0]
    assert echo.config["external_path"] == "/echo/{*rest}"
    assert [b["port"] for b in echo.config["backends"]] == [upstreams[0].port, upstreams[1].port]


def test_unknown_route_is_a_404_not_found_api_error(shared_client: Any) -> None:
    with pytest.raises(KairosAPIError) as caught:
        shared_client.route("no-such-route")
    error = caught.value
    assert (error.status, error.type) == (404, "not_found")
    assert "no-such-route" in error.message
    assert not isinstance(error, KairosAuthError)


def test_route_create_update_delete_apply_live_and_persist(
    client: Any, gateway: Gateway, upstreams: tuple[Upstream, ...]
) -> None:
    a = upstreams[0]
    version = client.config().config_version

    created = client.create_route(_extra_route(a), if_match=version)
    assert created.route is not None
    assert (created.route.id, created.route.index) == ("extra", 3)
    assert created.config_version != version
    with gateway.client() as proxy:
        assert proxy.get("/extra").json()["path"] == "/v1"
    assert "extra" in [r["name"] for r in json.loads(gateway.config_path.read_text())["routers"]]

    updated = client.update_route("extra", _extra_route(a, internal="/v2"))
    assert updated.route is not None
    assert updated.route.config["internal_path"] == "/v2"
    assert client.route("extra").config["internal_path"] == "/v2"
    with gateway.client() as proxy:
        assert proxy.get("/extra").json()["path"] == "/v2"

    deleted = client.delete_route("extra", if_match=updated.config_version)
    assert deleted.route is None
    assert [r.id for r in client.routes()] == ["echo", "broken", "solo"]
    with gateway.client() as proxy:
        assert proxy.get("/extra").status_code == 404


def test_a_stale_if_match_is_a_412_and_changes_nothing(
    client: Any, upstreams: tuple[Upstream, ...]
) -> None:
    stale = client.config().config_version
    client.create_route(_extra_route(upstreams[0], "first"))
    for attempt in (
        lambda: client.create_route(_extra_route(upstreams[0], "second"), if_match=stale),
        lambda: client.update_route("first", _extra_route(upstreams[0], "first"), if_match=stale),
        lambda: client.delete_route("first", if_match=stale),
        lambda: client.put_config(client.config().config, if_match=stale),
    ):
        with pytest.raises(KairosAPIError) as caught:
            attempt()
        assert (caught.value.status, caught.value.type) == (412, "precondition_failed")
    assert [r.id for r in client.routes()] == ["echo", "broken", "solo", "first"]


def test_an_invalid_route_is_a_400_validation_error_with_details(shared_client: Any) -> None:
    with pytest.raises(KairosAPIError) as caught:
        shared_client.create_route({"name": "bad", "external_path": "/bad", "methods": ["GET"]})
    error = caught.value
    assert (error.status, error.type) == (400, "validation_error")
    assert error.details, error
    assert all(issue.severity == "error" for issue in error.details)
    assert any(issue.path.startswith("routers[3]") for issue in error.details)
    assert "routers[3]" in str(error)
    assert [r.id for r in shared_client.routes()] == ["echo", "broken", "solo"]


def test_a_duplicate_route_is_a_409_conflict(
    shared_client: Any, upstreams: tuple[Upstream, ...]
) -> None:
    with pytest.raises(KairosAPIError) as caught:
        shared_client.create_route(_extra_route(upstreams[0], "echo"))
    assert (caught.value.status, caught.value.type) == (409, "conflict")


# --- config -------------------------------------------------------------------------------------


def test_config_is_redacted_and_validate_config_reports_issues(
    shared_client: Any, shared_gateway: Gateway
) -> None:
    document = shared_client.config()
    assert document.source == str(shared_gateway.config_path)
    assert document.config_version == shared_gateway.config_version()
    assert [r["name"] for r in document.config["routers"]] == ["echo", "broken", "solo"]
    assert JWT_SECRET not in json.dumps(document.config)

    assert shared_client.validate_config(document.config).valid
    bad = {**document.config, "routers": [{"external_path": "/x", "methods": ["GET"]}]}
    result = shared_client.validate_config(bad)
    assert not result.valid
    assert "routers[0].internal_path" in [issue.path for issue in result.errors]


def test_config_schema_is_the_schema_kairos_config_schema_prints(shared_client: Any) -> None:
    printed = CliRunner().invoke(cli, ["config", "schema"])
    assert printed.exit_code == 0, printed.output

    schema = shared_client.config_schema()

    assert schema == json.loads(printed.output)
    router = schema["$defs"]["Router"]["properties"]
    assert router["protocol"]["enum"] == ["http", "websocket"]
    assert "round_robin" in router["load_balancing_strategy"]["enum"]
    assert schema["required"] == ["routers"]


def test_put_config_replaces_the_config_and_rejects_an_invalid_one(
    client: Any, gateway: Gateway, upstreams: tuple[Upstream, ...]
) -> None:
    document = client.config()
    replaced = {**document.config, "routers": [_extra_route(upstreams[0], "only")]}
    result = client.put_config(replaced, if_match=document.config_version)
    assert result.reloaded
    assert result.config_version not in ("", document.config_version)
    assert [r.id for r in client.routes()] == ["only"]
    assert json.loads(gateway.config_path.read_text())["jwt"]["secret"] == JWT_SECRET

    with pytest.raises(KairosAPIError) as caught:
        client.put_config({**replaced, "routers": [{"external_path": "/x"}]})
    assert (caught.value.status, caught.value.type) == (400, "validation_error")
    assert caught.value.details
    assert [r.id for r in client.routes()] == ["only"]


def test_reload_reports_a_rejected_file_without_raising(
    client: Any, gateway: Gateway, upstreams: tuple[Upstream, ...]
) -> None:
    first = client.reload()
    assert first.reloaded
    assert first.errors == []

    running = client.config().config_version
    broken = {**gateway.document, "routers": [{"external_path": "/x", "methods": ["GET"]}]}
    gateway.write_config(broken)
    rejected = client.reload()
    assert not rejected.reloaded
    assert rejected.config_version == running
    assert "routers[0].internal_path" in [issue.path for issue in rejected.errors]

    fixed = {**gateway.document, "routers": [_extra_route(upstreams[0], "fixed")]}
    gateway.write_config(fixed)
    assert client.reload().reloaded
    assert [r.id for r in client.routes()] == ["fixed"]


# --- circuits and AI ----------------------------------------------------------------------------


def test_circuits_can_be_forced_open_and_reset(
    client: Any, gateway: Gateway, upstreams: tuple[Upstream, ...]
) -> None:
    a, b, broken = upstreams
    circuits: list[CircuitInfo] = client.circuits()
    assert sorted(c.backend for c in circuits) == sorted([a.url, b.url, broken.url])
    assert {(c.state, c.failures, c.healthy, c.opened_at) for c in circuits} == {
        ("closed", 0, True, None)
    }

    before = time.time()
    opened = client.open_circuit(a.url)
    assert (opened.backend, opened.state) == (a.url, "open")
    assert opened.opened_at is not None and opened.opened_at >= before - 1
    assert opened.next_half_open_at is not None and opened.next_half_open_at > opened.opened_at
    assert {c.backend: c.state for c in client.circuits()}[a.url] == "open"
    with gateway.client() as proxy:
        servers = {proxy.get(f"/echo/{i}").json()["server"] for i in range(4)}
    assert servers == {"b"}

    reset = client.reset_circuit(a.url)
    assert (reset.state, reset.opened_at) == ("closed", None)
    assert {c.backend: c.state for c in client.circuits()}[a.url] == "closed"


def test_an_unknown_backend_is_a_404(shared_client: Any) -> None:
    for action in (shared_client.reset_circuit, shared_client.open_circuit):
        with pytest.raises(KairosAPIError) as caught:
            action("http://127.0.0.1:1")
        assert (caught.value.status, caught.value.type) == (404, "not_found")


def test_ai_decisions_is_a_list_of_at_most_limit(shared_client: Any) -> None:
    decisions = shared_client.ai_decisions(limit=5)
    assert isinstance(decisions, list)
    assert len(decisions) <= 5


# --- auth, connection and answer errors ---------------------------------------------------------


def test_a_missing_or_wrong_token_is_an_auth_error(
    make_client: ClientFactory,
    token_gateway: Gateway,
    upstreams: tuple[Upstream, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = token_gateway
    monkeypatch.delenv("KAIROS_ADMIN_TOKEN", raising=False)
    for token in (None, "", "wrong-token"):
        client = make_client(gateway.admin_url, token=token)
        assert client.health().status == "ok"  # public
        assert client.ready().status == "ready"  # public
        with pytest.raises(KairosAuthError) as caught:
            client.metrics()
        assert (caught.value.status, caught.value.type) == (401, "unauthorized")
        with pytest.raises(KairosAuthError):
            client.open_circuit(upstreams[0].url)
    assert make_client(gateway.admin_url, token=ADMIN_TOKEN).metrics().config_version

    monkeypatch.setenv("KAIROS_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("KAIROS_ADMIN_URL", gateway.admin_url)
    from_env = make_client()
    assert from_env.base_url == gateway.admin_url
    assert len(from_env.circuits()) == 3
    with pytest.raises(KairosAuthError):
        make_client(token="").metrics()  # an explicit empty token sends none


def test_an_unreachable_gateway_is_a_connection_error(make_client: ClientFactory) -> None:
    url = f"http://{LOOPBACK}:{free_port()}"
    client = make_client(url)
    with pytest.raises(KairosConnectionError) as caught:
        client.health()
    assert f"cannot reach the admin API at {url}" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.TransportError)
    with pytest.raises(KairosConnectionError):
        client.reload()


def test_a_server_that_never_answers_is_a_connection_error(
    make_client: ClientFactory, upstream: Upstream
) -> None:
    upstream.control(mode="hang")
    started = time.monotonic()
    with pytest.raises(KairosConnectionError) as caught:
        make_client(upstream.url, timeout=0.3).metrics()
    assert time.monotonic() - started < 3
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)


def test_answers_outside_the_contract_are_api_errors(
    make_client: ClientFactory, upstream: Upstream
) -> None:
    client = make_client(upstream.url)
    with pytest.raises(KairosAPIError) as caught:
        client.routes()  # the echo server's JSON is not a RouteList
    assert (caught.value.status, caught.value.type) == (200, "invalid_response")
    assert "RouteList" in caught.value.message

    upstream.control(mode="fail", status=502)
    with pytest.raises(KairosAPIError) as caught:
        client.metrics()  # a JSON error body that is not the admin API's shape
    assert (caught.value.status, caught.value.type) == (502, "http_error")
    assert "injected failure" in caught.value.message


def test_base_url_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAIROS_ADMIN_URL", raising=False)
    with KairosClient() as client:
        assert client.base_url == "http://127.0.0.1:5901"
    monkeypatch.setenv("KAIROS_ADMIN_URL", "http://127.0.0.1:7000/")
    with KairosClient() as client:
        assert client.base_url == "http://127.0.0.1:7000"
    with KairosClient("https://admin.example:8443") as client:
        assert client.base_url == "https://admin.example:8443"
    with pytest.raises(ValueError, match="http:// or https://"):
        KairosClient("127.0.0.1:5901")
    assert issubclass(KairosAuthError, KairosAPIError)
    assert issubclass(KairosConnectionError, KairosError)


async def test_the_async_client_is_an_async_context_manager_and_runs_calls_concurrently(
    shared_gateway: Gateway,
) -> None:
    async with AsyncKairosClient(shared_gateway.admin_url) as client:
        health, ready, circuits, routes = await asyncio.gather(
            client.health(), client.ready(), client.circuits(), client.routes()
        )
    assert (health.status, ready.status, len(circuits), len(routes)) == ("ok", "ready", 3, 3)
    with pytest.raises(RuntimeError):
        await client.health()  # closed


# --- events from the gateway --------------------------------------------------------------------


def _first(events: Iterator[Event], type_: str) -> Event:
    deadline = time.monotonic() + EVENT_WAIT_S
    for event in events:
        if event.type == type_:
            return event
        assert time.monotonic() < deadline, f"no {type_} event in {EVENT_WAIT_S} s"
    raise AssertionError("the event stream ended")


def test_events_bring_snapshots_and_circuit_transitions(
    gateway: Gateway, upstreams: tuple[Upstream, ...]
) -> None:
    a = upstreams[0]
    with KairosClient(gateway.admin_url) as client:
        events = client.events()
        snapshot = _first(events, "snapshot")
        assert MetricsSnapshot.model_validate(snapshot.data).config_version
        client.open_circuit(a.url)
        circuit = _first(events, "circuit")
        assert circuit.id > snapshot.id
        assert (circuit.data["backend"], circuit.data["to"]) == (a.url, "open")
        events.close()


async def test_async_events_bring_snapshots_and_circuit_transitions(
    gateway: Gateway, upstreams: tuple[Upstream, ...]
) -> None:
    a = upstreams[0]
    async with AsyncKairosClient(gateway.admin_url) as client:
        seen: list[Event] = []

        async def watch() -> None:
            async for event in client.events():
                seen.append(event)
                if event.type == "snapshot" and not any(e.type == "circuit" for e in seen):
                    await client.open_circuit(a.url)
                if event.type == "circuit":
                    return

        await asyncio.wait_for(watch(), EVENT_WAIT_S)
    assert seen[0].type == "snapshot"
    assert (seen[-1].data["backend"], seen[-1].data["to"]) == (a.url, "open")


def test_events_resume_after_last_event_id_without_gaps_or_duplicates(
    gateway: Gateway, upstreams: tuple[Upstream, ...]
) -> None:
    a, b, _ = upstreams
    with KairosClient(gateway.admin_url) as client:
        first = client.events()
        _first(first, "snapshot")  # connected: a generator only connects when iterated
        client.open_circuit(a.url)
        resume_after = _first(first, "circuit").id
        first.close()

        client.reset_circuit(a.url)
        client.open_circuit(b.url)
        resumed = client.events(last_event_id=resume_after)
        received = list(itertools.islice(resumed, 6))
        resumed.close()

        filtered = client.events(last_event_id=resume_after, types=["circuit"])
        circuits = list(itertools.islice(filtered, 2))
        filtered.close()

    ids = [event.id for event in received]
    assert ids == list(range(resume_after + 1, resume_after + 7))
    transitions = [(e.data["backend"], e.data["to"]) for e in received if e.type == "circuit"]
    assert transitions[:2] == [(a.url, "closed"), (b.url, "open")]
    assert [(e.data["backend"], e.data["to"]) for e in circuits] == transitions[:2]


def test_events_with_a_refused_token_raise_at_once(
    token_gateway: Gateway,
) -> None:
    gateway = token_gateway
    with KairosClient(gateway.admin_url, token="wrong") as client, pytest.raises(KairosAuthError):
        next(client.events())
    with KairosClient(gateway.admin_url, token=ADMIN_TOKEN) as client:
        assert next(client.events(types=["snapshot"])).type == "snapshot"


async def test_async_events_from_an_unreachable_gateway_raise() -> None:
    async with AsyncKairosClient(f"http://{LOOPBACK}:{free_port()}") as client:
        with pytest.raises(KairosConnectionError):
            await anext(client.events())


# --- reconnection, against a server that drops the stream ---------------------------------------


class _DroppingSSE(BaseHTTPRequestHandler):
    """Serves three events per connection, then closes it; the third connection is refused 401.

    Lines end with CRLF and every event is written in small pieces, so line ends and events fall
    across chunk boundaries.
    """

    protocol_version = "HTTP/1.1"
    connections: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.connections.append(self.headers.get("Last-Event-ID"))
        if len(self.connections) > 2:
            body = json.dumps({"error": "token revoked", "type": "unauthorized"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        start = int(self.connections[-1] or 0) + 1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b": hello\r\nretry: 20\r\n\r\n")
        for event_id in range(start, start + 3):
            data = json.dumps({"id": event_id, "type": "circuit", "time": 1.0, "data": {}})
            wire = f"id: {event_id}\r\nevent: circuit\r\ndata: {data}\r\n\r\n".encode()
            for offset in range(0, len(wire), 7):
                self.wfile.write(wire[offset : offset + 7])
                self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def dropping_sse() -> Iterator[str]:
    _DroppingSSE.connections = []
    server = ThreadingHTTPServer((LOOPBACK, 0), _DroppingSSE)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_events_reconnect_with_last_event_id_and_stop_on_an_auth_error(dropping_sse: str) -> None:
    received: list[int] = []
    with KairosClient(dropping_sse) as client, pytest.raises(KairosAuthError):
        for event in client.events(max_reconnect_delay_s=0.05):
            received.append(event.id)
    assert received == [1, 2, 3, 4, 5, 6]
    assert _DroppingSSE.connections == [None, "3", "6"]


async def test_async_events_reconnect_with_last_event_id(dropping_sse: str) -> None:
    received: list[int] = []
    async with AsyncKairosClient(dropping_sse) as client:
        with pytest.raises(KairosAuthError):
            async for event in client.events(last_event_id=10, max_reconnect_delay_s=0.05):
                received.append(event.id)
    assert received == [11, 12, 13, 14, 15, 16]
    assert _DroppingSSE.connections == ["10", "13", "16"]


def test_events_without_reconnect_end_with_the_stream(dropping_sse: str) -> None:
    with KairosClient(dropping_sse) as client:
        assert [e.id for e in client.events(reconnect=False)] == [1, 2, 3]
    assert _DroppingSSE.connections == [None]


def test_the_sse_parser_follows_the_event_stream_rules() -> None:
    stream = (
        "\ufeff: comment\r"  # BOM, CR line ends
        "retry: 250\r\r"
        "event: one\ndata: a\ndata:b\nid: 7\n\n"  # data lines joined, no space after the colon
        "data: kept id\n\n"  # the last id persists
        "event: empty\nid: 8\n\n"  # no data: not dispatched, the id still counts
        "id: bad\0id\ndata: x\r\n\r\n"  # an id with NUL is ignored
        "data: unfinished"  # dropped at the end of the stream
    ).encode()
    for size in (1, 2, 3, len(stream)):
        decoder = SSEDecoder()
        events = [
            event
            for offset in range(0, len(stream), size)
            for event in decoder.feed(stream[offset : offset + size])
        ]
        assert events == [
            ServerSentEvent("one", "a\nb", "7"),
            ServerSentEvent("message", "kept id", "7"),
            ServerSentEvent("message", "x", "8"),
        ], size
        assert decoder.retry_ms == 250
