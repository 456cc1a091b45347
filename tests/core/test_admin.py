"""The admin service (``kairos_core.admin``) without a web framework: each rule of its
docstring, on a compiled state and an in-memory control (no file, no listener). The admin
listener's own tests (``tests/gateway/test_admin_*``) check the same answers over HTTP.

The service's results mirror the wire models field for field; a test keeps them from drifting.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel

from kairos_client import models
from kairos_core import admin
from kairos_core.admin import AdminProblem, AdminService, VersionConflict, if_match_allows
from kairos_core.config import LoadedConfig, parse_config, validate_document
from kairos_core.metrics import Metrics
from kairos_core.state import RuntimeState, SharedState, compile_state

A, B = "http://10.0.0.1:8001", "http://10.0.0.2:8002"
LIMIT = {"strategy": "PerIP", "requests_per_window": 5, "window_duration": 60}


def _route(name: str, *backends: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "external_path": f"/{name}",
        "internal_path": f"/{name}",
        "methods": ["GET"],
        "backends": [
            {"host": b.rsplit(":", 1)[0], "port": int(b.rsplit(":", 1)[1])} for b in backends
        ],
        **extra,
    }


DOCUMENT = {
    "rate_limit": LIMIT,
    "routers": [
        _route("first", A, circuit_breaker={"failure_threshold": 3}),
        _route("second", A, B, rate_limit={**LIMIT, "requests_per_window": 9}),
        _route(
            "shaped",
            B,
            request_transformation={
                "headers": [{"action": "set", "name": "Authorization", "value": "Bearer s3cret"}]
            },
        ),
    ],
}


class Control:
    """A running gateway reduced to what the service needs; edits swap in memory."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.shared = SharedState()
        self.metrics = Metrics("test")
        self.uptime_s = 12.0
        self._state = compile_state(parse_config(json.dumps(document), environ={}), self.shared)
        self.edits = 0

    @property
    def state(self) -> RuntimeState:
        return self._state

    def not_ready_reasons(self) -> list[str]:
        return []

    def restart_required(self, loaded: LoadedConfig) -> list[str]:
        return []

    async def reload(self, reason: str) -> LoadedConfig:
        return self._state.loaded

    async def apply_edit(
        self, edit: Any, reason: str, *, if_match: str | None = None
    ) -> tuple[LoadedConfig, LoadedConfig]:
        before = self._state.loaded
        if if_match is not None and not if_match_allows(if_match, before.version):
            raise VersionConflict(before.version)
        loaded = validate_document(dict(edit(before)), source="<memory>")
        self._state = compile_state(loaded, self.shared)
        self.edits += 1
        return before, loaded


@pytest.fixture
def control() -> Control:
    return Control(DOCUMENT)


@pytest.fixture
def service(control: Control) -> AdminService:
    return AdminService(control)


# --- results mirror the wire -------------------------------------------------------------------


MIRRORS: list[tuple[type[Any], type[BaseModel]]] = [
    (admin.Health, models.Health),
    (admin.Ready, models.Ready),
    (admin.HealthCheck, models.HealthCheck),
    (admin.CircuitInfo, models.CircuitInfo),
    (admin.RouteMetrics, models.RouteMetrics),
    (admin.BackendMetrics, models.BackendMetrics),
    (admin.AiMetrics, models.AiMetrics),
    (admin.MetricsSnapshot, models.MetricsSnapshot),
    (admin.RoutePolicies, models.RoutePolicies),
    (admin.RouteInfo, models.RouteInfo),
    (admin.RouteChange, models.RouteChange),
    (admin.ConfigDocument, models.ConfigDocument),
    (admin.ValidationResult, models.ValidationResult),
    (admin.ReloadResult, models.ReloadResult),
    (admin.RouteTestRequest, models.RouteTestRequest),
]


@pytest.mark.parametrize(("core", "wire"), MIRRORS, ids=[c.__name__ for c, _ in MIRRORS])
def test_each_result_has_exactly_the_wire_models_fields(
    core: type[Any], wire: type[BaseModel]
) -> None:
    assert {f.name for f in dataclasses.fields(core)} == set(wire.model_fields)


# --- readiness, snapshot, events ------------------------------------------------------------


def test_routes_without_a_candidate_are_listed_but_never_a_reason(
    service: AdminService, control: Control
) -> None:
    for key in (A, B):
        breaker = control.shared.breakers.get(key)
        assert breaker is not None
        breaker.force_open()
    ready = service.ready()
    assert (ready.status, ready.reasons) == ("ready", ())
    assert set(ready.unroutable) == {"first", "second", "shaped"}


def test_the_snapshot_joins_figures_flags_and_breakers(
    service: AdminService, control: Control
) -> None:
    snapshot = service.snapshot()
    assert [r.route for r in snapshot.routes] == ["first", "second", "shaped"]
    assert [r.has_rate_limit for r in snapshot.routes] == [True, True, True]  # global included
    assert {b.backend: b.circuit.state for b in snapshot.backends} == {A: "closed", B: "closed"}
    assert (snapshot.uptime_seconds, snapshot.config_version) == (12.0, control.state.version)


async def test_snapshot_events_are_built_only_while_a_stream_is_open(
    service: AdminService, control: Control
) -> None:
    await service.publish_snapshot()
    assert control.shared.events.last_id == 0
    with service.stream():
        await service.publish_snapshot()
    (event,) = control.shared.events.since(0)
    assert event.type == "snapshot"
    assert models.MetricsSnapshot.model_validate(event.data).config_version == control.state.version


def test_replay_after_last_event_id(service: AdminService, control: Control) -> None:
    bus = control.shared.events
    for n in range(3):
        bus.publish("route", {"n": n})
    assert [e.data["n"] for e in service.replay("1")] == [1, 2]
    assert [e.data["n"] for e in service.replay("99")] == [0, 1, 2]  # from before a restart
    assert service.replay(None) == [] and service.replay("abc") == []


# --- circuits and routes --------------------------------------------------------------------


def test_circuits_say_whether_the_breaker_admits_now(service: AdminService) -> None:
    opened = service.force_circuit(A, close=False)
    assert (opened.state, opened.admitting, opened.half_open_in_s > 0) == ("open", False, True)
    assert opened.health_check == admin.HealthCheck(probed=False)
    closed = service.force_circuit(A, close=True)
    assert (closed.state, closed.admitting) == ("closed", True)
    with pytest.raises(AdminProblem) as raised:
        service.force_circuit("http://nowhere:1", close=True)
    assert raised.value.kind == "not_found"


def test_routes_carry_their_backends_and_the_policies_in_force(service: AdminService) -> None:
    _, routes = service.routes()
    first, second, shaped = routes
    assert (first.backends, second.backends) == ((A,), (A, B))
    assert (first.policies.rate_limit_scope, second.policies.rate_limit_scope) == (
        "global",
        "route",
    )
    assert first.policies.rate_limit is not None and "5 requests" in first.policies.rate_limit
    assert second.policies.circuit_breaker_from == "first"  # A is named by "first" first
    headers = shaped.config["request_transformation"]["headers"]
    assert headers[0]["value"] == "***"


async def test_a_duplicate_route_is_a_conflict_and_a_bad_one_a_validation_error(
    service: AdminService, control: Control
) -> None:
    with pytest.raises(AdminProblem) as duplicate:
        await service.create_route(_route("first", B), None)
    assert duplicate.value.kind == "conflict"
    same_path = {**_route("other", B), "external_path": "/first"}
    with pytest.raises(AdminProblem) as same:
        await service.create_route(same_path, None)
    assert same.value.kind == "conflict"
    assert any(i.code == "duplicate_route" for i in same.value.details)
    with pytest.raises(AdminProblem) as invalid:
        await service.create_route({**_route("bad", B), "methods": ["FETCH"]}, None)
    assert invalid.value.kind == "validation_error"
    assert control.edits == 0


async def test_a_stale_if_match_is_a_failed_precondition(
    service: AdminService, control: Control
) -> None:
    created = await service.create_route(_route("new", B), control.state.version)
    assert created.route is not None and created.route.id == "new"
    with pytest.raises(AdminProblem) as stale:
        await service.delete_route("new", "not-the-version")
    assert stale.value.kind == "precondition_failed"
    await service.delete_route("new", "*")
    assert [r.id for r in service.routes()[1]] == ["first", "second", "shaped"]


async def test_a_redacted_secret_sent_back_keeps_the_running_one(
    service: AdminService, control: Control
) -> None:
    _, shaped = service.route("shaped")
    await service.update_route("shaped", dict(shaped.config), None)
    running = control.state.loaded.document["routers"][2]
    assert running["request_transformation"]["headers"][0]["value"] == "Bearer s3cret"


async def test_the_dry_run_redacts_what_a_transformation_sets(service: AdminService) -> None:
    plan = await service.route_test(admin.RouteTestRequest(method="GET", path="/shaped"))
    assert plan.request_transform is not None
    assert dict(plan.request_transform.after.headers)["Authorization"] == "***"


def test_validation_reports_every_issue_with_its_code(service: AdminService) -> None:
    result = service.validate_config(
        {"routers": [_route("x", "http://10.0.0.9:0"), {**_route("y", A), "retyr": {}}]}
    )
    assert result.valid is False
    assert {i.code for i in result.errors} == {"bad_port", "unknown_key"}
    assert service.validate_config(DOCUMENT).valid


# --- access --------------------------------------------------------------------------------------


def _access(
    headers: Mapping[str, str],
    *,
    token: str | None = None,
    method: str = "GET",
    path: str = "/api/config",
    has_body: bool = False,
) -> str | None:
    lowered = {k.lower(): v for k, v in {"Host": "127.0.0.1:5901", **headers}.items()}
    problem = admin.access_problem(method, path, lowered.get, token=token, has_body=has_body)
    return None if problem is None else problem.kind


def test_a_request_from_another_origin_is_forbidden_token_or_not() -> None:
    for token in (None, "t0ken"):
        auth = {"Authorization": "Bearer t0ken"}
        assert _access({"Origin": "https://evil.example", **auth}, token=token) == "forbidden"
        assert _access({"Origin": "null", **auth}, token=token) == "forbidden"
        assert _access({"Sec-Fetch-Site": "cross-site", **auth}, token=token) == "forbidden"
        assert _access({"Sec-Fetch-Site": "same-site", **auth}, token=token) == "forbidden"
        assert _access({"Origin": "http://127.0.0.1:5901", **auth}, token=token) is None
        assert _access({"Sec-Fetch-Site": "same-origin", **auth}, token=token) is None


def test_without_a_token_the_host_must_be_this_machine() -> None:
    for host in ("127.0.0.1:5901", "localhost:5901", "localhost", "[::1]:5901", "127.0.0.2"):
        assert _access({"Host": host}) is None, host
    for host in ("evil.example", "evil.example:5901", "10.0.0.1:5901", ""):
        assert _access({"Host": host}) == "forbidden", host
    assert _access({"Host": "evil.example"}, path="/health") == "forbidden"
    assert _access({"Host": "gw.example:5901", "Authorization": "Bearer t"}, token="t") is None


def test_with_a_token_every_path_but_the_probes_needs_it() -> None:
    assert _access({}, token="t0ken") == "unauthorized"
    assert _access({"Authorization": "Bearer wrong"}, token="t0ken") == "unauthorized"
    assert _access({"Authorization": "Basic t0ken"}, token="t0ken") == "unauthorized"
    assert _access({"Authorization": "Bearer t0ken"}, token="t0ken") is None
    assert _access({"Authorization": "bearer t0ken"}, token="t0ken") is None
    for path in sorted(admin.PUBLIC_PATHS):
        assert _access({}, token="t0ken", path=path) is None


def test_a_write_with_a_body_must_be_json() -> None:
    for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""):
        sent = {"Content-Type": media} if media else {}
        assert _access(sent, method="POST", has_body=True) == "unsupported_media_type"
    json_type = {"Content-Type": "application/json; charset=utf-8"}
    assert _access(json_type, method="PUT", has_body=True) is None
    assert _access({}, method="POST", path="/api/config/reload") is None  # no body


def test_the_workers_rule_answers_as_kairos_validate_does(service: AdminService) -> None:
    without = service.validate_config({**DOCUMENT, "server": {"workers": 2}})
    assert without.valid is False
    (issue,) = without.errors
    assert (issue.path, issue.code) == ("server.workers", "workers_need_redis")
    assert issue.message == (
        "workers = 2 needs 'cluster.redis_url': in-memory rate limits and breakers would be "
        "per worker"
    )
    clustered = {"server": {"workers": 2}, "cluster": {"redis_url": "redis://10.0.0.5:6379/0"}}
    assert service.validate_config({**DOCUMENT, **clustered}).valid
