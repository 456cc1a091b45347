"""``GET /api/events`` of a real gateway (DESIGN.md §7), read as raw server-sent events.

The stream carries a ``snapshot`` every second and ``circuit``, ``route`` and ``reload`` events as
they happen; every event has the next integer ``id``, so a client that reconnects with
``Last-Event-ID`` gets everything it missed, once. The SSE wire format is parsed here by hand
(``id:``, ``event:``, ``data:`` lines, a blank line ends an event, ``:`` starts a comment).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, route
from tests.support.procs import Upstream, free_port

FAILURE_THRESHOLD = 3


@dataclass(frozen=True)
class SseEvent:
    id: int
    type: str
    data: dict[str, Any]  # the wire model: {"id", "type", "time", "data"}
    received: float  # time.monotonic() when its blank line arrived


class EventStream:
    """One SSE connection read by a background thread into a queue."""

    def __init__(self, url: str, last_event_id: int | None = None) -> None:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self._client = httpx.Client(trust_env=False, timeout=httpx.Timeout(5.0, read=30.0))
        self._context = self._client.stream("GET", url, headers=headers)
        self.response = self._context.__enter__()
        assert self.response.status_code == 200
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self._events: queue.Queue[SseEvent] = queue.Queue()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Read events until told to stop (checked at every line: the gateway sends a snapshot
        each second), then close the response from this thread, the one reading it."""
        fields: dict[str, str] = {}
        with contextlib.suppress(httpx.HTTPError, RuntimeError, OSError, ValueError):
            for line in self.response.iter_lines():
                if self._stop.is_set():
                    break
                if line == "":
                    if "data" in fields:
                        self._events.put(
                            SseEvent(
                                id=int(fields["id"]),
                                type=fields.get("event", "message"),
                                data=json.loads(fields["data"]),
                                received=time.monotonic(),
                            )
                        )
                    fields = {}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data" and "data" in fields:
                    value = f"{fields['data']}\n{value}"
                fields[name] = value

    def next(
        self, predicate: Callable[[SseEvent], bool] = lambda e: True, timeout_s: float = 5.0
    ) -> SseEvent:
        """The next event matching ``predicate`` (earlier ones are consumed)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                break
            if predicate(event):
                return event
        raise AssertionError(f"no matching event within {timeout_s} s")

    def collect(self, seconds: float) -> list[SseEvent]:
        """Every event arriving during the next ``seconds``."""
        deadline = time.monotonic() + seconds
        events = []
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                events.append(self._events.get(timeout=left))
        return events

    def close(self) -> list[SseEvent]:
        """Disconnect; the events received but not yet consumed. Fails the test, rather than
        hanging it, when the reader does not stop."""
        self._stop.set()
        self._reader.join(timeout=5)
        assert not self._reader.is_alive(), "the event stream reader did not stop within 5 s"
        self.response.close()
        self._client.close()
        left = []
        while not self._events.empty():
            left.append(self._events.get_nowait())
        return left

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Stack:
    gateway: Gateway
    failing: Upstream

    @property
    def events_url(self) -> str:
        return f"{self.gateway.admin_url}/api/events"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway.admin_url, trust_env=False, timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with contextlib.ExitStack() as exit_stack:
        ok = exit_stack.enter_context(Upstream.start("ok"))
        failing = exit_stack.enter_context(Upstream.start("failing"))
        failing.control(mode="fail", status=503)
        config = {
            "routers": [
                route("/echo", "/echo", [ok.url], name="echo"),
                route(
                    "/breaker",
                    "/breaker",
                    [failing.url],
                    name="breaker",
                    circuit_breaker={
                        "failure_threshold": FAILURE_THRESHOLD,
                        "reset_timeout_s": 60,
                    },
                ),
            ]
        }
        gateway = exit_stack.enter_context(Gateway(config, tmp_path_factory.mktemp("events")))
        yield Stack(gateway, failing)


def of_type(kind: str) -> Callable[[SseEvent], bool]:
    return lambda event: event.type == kind


def test_a_snapshot_arrives_about_once_a_second(stack: Stack) -> None:
    with EventStream(stack.events_url) as stream:
        stream.next(of_type("snapshot"), timeout_s=2.5)  # align on the tick
        snapshots = [e for e in stream.collect(3.3) if e.type == "snapshot"]

    published = [e.data["time"] for e in snapshots]
    assert 2 <= len(snapshots) <= 5, published  # read on a loaded machine: a little slack
    gaps = [later - earlier for earlier, later in itertools.pairwise(published)]
    assert all(0.5 <= gap <= 1.5 for gap in gaps), gaps
    assert [e.id for e in snapshots] == sorted({e.id for e in snapshots})
    for event in snapshots:
        assert event.data["id"] == event.id
        assert event.data["type"] == "snapshot"
        assert abs(event.data["time"] - time.time()) < 30
        body = event.data["data"]
        assert {"requests_total", "requests_per_second", "latency_ms", "routes", "backends"} <= set(
            body
        )
        assert [r["route"] for r in body["routes"]][:2] == ["echo", "breaker"]


def test_a_circuit_event_arrives_within_a_second_of_the_breaker_opening(stack: Stack) -> None:
    key = stack.failing.url
    with EventStream(stack.events_url) as stream, stack.gateway.client() as client:
        for _ in range(FAILURE_THRESHOLD):
            assert client.get("/breaker").status_code == 503
        opened_at = time.monotonic()

        event = stream.next(
            lambda e: e.type == "circuit" and e.data["data"].get("to") == "open", timeout_s=3
        )

    assert event.received - opened_at < 1.0
    assert event.data["data"]["backend"] == key
    assert event.data["data"]["from"] == "closed"
    with stack.admin() as admin:
        circuits = {c["backend"]: c for c in admin.get("/api/circuits").json()["circuits"]}
    assert circuits[key]["state"] == "open"


def test_route_events_on_create_and_delete(stack: Stack) -> None:
    new_route = route("/sse-new", "/echo", [stack.failing.url], name="sse-new")
    with EventStream(stack.events_url) as stream, stack.admin() as admin:
        assert admin.post("/api/routes", json=new_route).status_code == 201
        created = stream.next(of_type("route"), timeout_s=2)
        assert admin.delete("/api/routes/sse-new").status_code == 200
        deleted = stream.next(of_type("route"), timeout_s=2)

    assert created.data["data"] == {"action": "created", "route": "sse-new"}
    assert deleted.data["data"] == {"action": "deleted", "route": "sse-new"}
    assert deleted.id > created.id


def test_a_reload_event_on_a_config_reload(stack: Stack) -> None:
    gateway = stack.gateway
    document = json.loads(gateway.config_path.read_text())
    with EventStream(stack.events_url) as stream, stack.admin() as admin:
        gateway.write_config({**document, "_comment": f"reloaded at {time.time()}"})
        response = admin.post("/api/config/reload")
        assert response.status_code == 200, response.text
        version = response.json()["config_version"]

        event = stream.next(of_type("reload"), timeout_s=3)

    assert event.data["data"]["result"] == "success"
    assert event.data["data"]["version"] == version


def test_resuming_with_last_event_id_replays_everything_missed_exactly_once(
    stack: Stack,
) -> None:
    first = EventStream(stack.events_url)
    seen = [first.next(), first.next()]
    seen += first.close()
    last_id = seen[-1].id

    with stack.admin() as admin:  # events published while nobody listens
        missed_route = route("/sse-missed", "/echo", [stack.failing.url], name="sse-missed")
        assert admin.post("/api/routes", json=missed_route).status_code == 201
        assert admin.delete("/api/routes/sse-missed").status_code == 200
    time.sleep(1.2)

    with EventStream(stack.events_url, last_event_id=last_id) as second:
        resumed = second.collect(1.5)

    first_ids = [e.id for e in seen]
    resumed_ids = [e.id for e in resumed]
    assert resumed_ids, "nothing replayed"
    assert resumed_ids[0] == last_id + 1, (first_ids, resumed_ids)
    every = first_ids + resumed_ids
    assert every == list(range(every[0], every[0] + len(every))), every
    route_actions = [e.data["data"] for e in resumed if e.type == "route"]
    assert route_actions == [
        {"action": "created", "route": "sse-missed"},
        {"action": "deleted", "route": "sse-missed"},
    ]
    assert any(e.type == "snapshot" for e in resumed)


def test_a_reload_of_listener_settings_says_restart_required_everywhere(
    gateway_factory: Callable[..., Gateway], upstream: Upstream
) -> None:
    gateway = gateway_factory({"routers": [route("/echo", "/echo", [upstream.url])]})
    moved = json.loads(gateway.config_path.read_text())
    moved["server"]["port"] = free_port()
    moved["admin"]["port"] = free_port()
    admin = httpx.Client(base_url=gateway.admin_url, trust_env=False, timeout=10)
    with EventStream(f"{gateway.admin_url}/api/events") as stream, admin:
        gateway.write_config(moved)
        response = admin.post("/api/config/reload")
        event = stream.next(of_type("reload"), timeout_s=5)
        again = admin.post("/api/config/reload")  # still pending: nothing was restarted

    assert response.status_code == 200, response.text
    assert response.json()["restart_required"] == ["server.port", "admin.port"]
    assert again.json()["restart_required"] == ["server.port", "admin.port"]
    assert event.data["data"]["restart_required"] == ["server.port", "admin.port"]
    assert "WARNING kairos.gateway: config applied" in gateway.process.log_text()
    assert "restart required for server.port, admin.port" in gateway.process.log_text()
    with gateway.client() as client:
        assert client.get("/echo").status_code == 200  # still on the port it started with


def test_a_reload_that_leaves_listener_settings_alone_requires_no_restart(stack: Stack) -> None:
    gateway = stack.gateway
    document = json.loads(gateway.config_path.read_text())
    with stack.admin() as admin:
        gateway.write_config({**document, "_comment": f"touched at {time.time()}"})
        response = admin.post("/api/config/reload")
        replaced = admin.put("/api/config", json=admin.get("/api/config").json()["config"])
    assert response.json()["restart_required"] == []
    assert replaced.json()["restart_required"] == []
