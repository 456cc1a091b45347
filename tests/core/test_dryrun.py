"""The dry run (kairos_core.dryrun): each test pins a sentence of its docstring or DESIGN.md §9."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from kairos_core.config import parse_config
from kairos_core.dryrun import plan_request
from kairos_core.selection import BackendSnapshot, SnapshotStates
from kairos_core.state import RuntimeState, compile_state

SECRET = "k3Jq9vXw2LmN8pRt5YzA7bCd4EfGh6Ui-dryrun"
B1, B2, B3 = "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"


def backend(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "http://127.0.0.1", "port": port, **extra}


def route(
    name: str, external: str, internal: str, methods: list[str], **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "backends": extra.pop("backends", [backend(9001)]),
        "external_path": external,
        "internal_path": internal,
        "methods": methods,
        **extra,
    }


def states(**by_state: str) -> SnapshotStates:
    """``states(open=[B1], unhealthy=[B2])`` as the gateway would report them."""
    snapshots: dict[str, BackendSnapshot] = {}
    for name, keys in by_state.items():
        for key in keys:
            if name == "unhealthy":
                snapshots[key] = BackendSnapshot(healthy=False)
            else:
                snapshots[key] = BackendSnapshot(circuit=name, admits=name != "open")  # type: ignore[arg-type]
    return SnapshotStates(snapshots)


def state_of(*routers: dict[str, Any], **top: Any) -> RuntimeState:
    document = {"jwt": {"secret": SECRET}, "routers": list(routers), **top}
    return compile_state(parse_config(json.dumps(document), environ={}))


@pytest.fixture(scope="module")
def state() -> RuntimeState:
    return state_of(
        route(
            "users",
            "/api/users/{id}",
            "/users/{id}",
            ["GET", "POST"],
            backends=[backend(9001), backend(9002)],
            retry={"max_retries": 3},
            rate_limit={
                "strategy": "PerUserAndRoute",
                "requests_per_window": 10,
                "window_duration": 1,
            },
        ),
        route("me", "/api/me", "/me", ["GET"], auth_required=True),
        route(
            "sticky",
            "/sticky",
            "/s",
            ["GET"],
            backends=[backend(9001), backend(9002), backend(9003)],
            load_balancing_strategy="ip_hash",
        ),
        route(
            "safe",
            "/safe",
            "/safe",
            ["GET"],
            backends=[backend(9001), backend(9002)],
            fallback=[backend(9003)],
        ),
        route(
            "shaped",
            "/shaped/{id}",
            "/v1/{id}",
            ["GET"],
            request_transformation={
                "headers": [
                    {"action": "set", "name": "X-Env", "value": "prod"},
                    {"action": "remove", "name": "Cookie"},
                ],
                "path": {"pattern": "^/v1/", "replacement": "/v2/"},
                "query_params": [{"action": "add", "name": "src", "value": "gw"}],
            },
            response_transformation={
                "status_code_mappings": [{"from": 404, "to": 200}],
                "headers": [{"action": "remove", "name": "Server"}],
            },
            timeout_ms=1500,
            deadline_ms=4000,
        ),
        rate_limit={"strategy": "PerIP", "requests_per_window": 100, "window_duration": 60},
        server={"max_body_bytes": 64, "connect_timeout_ms": 700},
        cors={"allowed_origins": ["https://app.example"]},
    )


def token(**claims: Any) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


# --- outcome --------------------------------------------------------------------------------------


def test_routable_request_substitutes_params_and_keeps_the_query(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/api/users/a%2Fb?x=1&y=%20")
    assert (plan.outcome, plan.status, plan.routable) == ("routable", None, True)
    assert plan.route_id == "users"
    assert plan.params == {"id": "a/b"}
    assert plan.upstream_path == "/users/a%2Fb"
    assert plan.upstream_url == f"{B1}/users/a%2Fb?x=1&y=%20"
    assert (plan.external_path, plan.internal_path) == ("/api/users/{id}", "/users/{id}")


def test_no_route_is_route_not_found(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/nowhere")
    assert (plan.outcome, plan.status, plan.route_id, plan.routable) == (
        "route_not_found",
        404,
        None,
        False,
    )


def test_wrong_method_is_method_not_allowed_with_the_allow_list(state: RuntimeState) -> None:
    plan = plan_request(state, "DELETE", "/api/users/1")
    assert (plan.outcome, plan.status) == ("method_not_allowed", 405)
    assert plan.allowed_methods == ("GET", "HEAD", "POST")


@pytest.mark.parametrize("path", ["/api/users/../me", "/api/users/%2e%2e", "/api/users/..%2Fx"])
def test_traversal_is_bad_request_and_never_routed(state: RuntimeState, path: str) -> None:
    plan = plan_request(state, "GET", path)
    assert (plan.outcome, plan.status, plan.upstream_url) == ("bad_request", 400, None)


def test_bad_header_is_bad_request(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/api/users/1", headers=[("X-Bad", "a\r\nInjected: 1")])
    assert (plan.outcome, plan.status) == ("bad_request", 400)


def test_body_over_max_body_bytes_is_payload_too_large(state: RuntimeState) -> None:
    assert plan_request(state, "POST", "/api/users/1", body=b"x" * 64).routable
    plan = plan_request(state, "POST", "/api/users/1", body=b"x" * 65)
    assert (plan.outcome, plan.status) == ("payload_too_large", 413)
    declared = plan_request(state, "POST", "/api/users/1", headers=[("Content-Length", "65")])
    assert declared.outcome == "payload_too_large"


def test_cors_preflight_is_answered_by_the_gateway(state: RuntimeState) -> None:
    preflight = [("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")]
    plan = plan_request(state, "OPTIONS", "/api/users/1", headers=preflight)
    assert (plan.outcome, plan.status, plan.routable, plan.route_id) == (
        "preflight",
        204,
        True,
        "users",
    )


# --- auth -----------------------------------------------------------------------------------------


def test_auth_route_without_token_is_authentication_error(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/api/me")
    assert (plan.outcome, plan.status) == ("authentication_error", 401)
    assert (plan.auth.required, plan.auth.outcome) == (True, "missing bearer token")
    assert plan.route_id == "me"  # the route's policies are still reported


def test_auth_route_with_valid_token_shows_the_subject(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/api/me", token=token(sub="alice"))
    assert plan.outcome == "routable"
    assert (plan.auth.outcome, plan.auth.subject) == ("ok (sub=alice)", "alice")


def test_authorization_header_is_verified_when_no_token_is_given(state: RuntimeState) -> None:
    headers = [("Authorization", f"Bearer {token(sub='bob')}")]
    assert plan_request(state, "GET", "/api/me", headers=headers).auth.subject == "bob"


def test_rejected_token_reports_the_verifier_reason(state: RuntimeState) -> None:
    expired = token(sub="alice", exp=int(time.time()) - 3600)
    plan = plan_request(state, "GET", "/api/me", token=expired)
    assert (plan.outcome, plan.auth.outcome) == ("authentication_error", "token expired")


def test_auth_not_required(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/api/users/1")
    assert (plan.auth.required, plan.auth.outcome) == (False, "not required")


# --- backends -------------------------------------------------------------------------------------


def test_candidates_list_every_backend_with_state(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/api/users/1", states=states(open=[B2]))
    assert [(c.index, c.key, c.weight, c.state, c.eligible) for c in plan.candidates] == [
        (0, B1, 1, "closed", True),
        (1, B2, 1, "open", False),
    ]


def test_ineligible_backends_are_skipped_by_the_pick(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/api/users/1", states=states(unhealthy=[B1]))
    assert plan.pick is not None
    assert (plan.pick.pool, plan.pick.index, plan.pick.key) == ("backends", 1, B2)
    assert plan.upstream_url == f"{B2}/users/1"


def test_dry_run_does_not_advance_the_route_balancer(state: RuntimeState) -> None:
    picks = {plan_request(state, "GET", "/api/users/1").pick for _ in range(3)}
    assert len(picks) == 1
    assert state.routes["users"].balancer.pick([0, 1]) == 0  # still the first of its rotation


def test_ip_hash_pick_is_the_one_the_gateway_makes(state: RuntimeState) -> None:
    route = state.routes["sticky"]
    for ip in ("10.0.0.1", "10.0.0.2", "192.168.1.7"):
        plan = plan_request(state, "GET", "/sticky", client_ip=ip)
        assert plan.pick is not None
        assert plan.pick.index == route.balancer.pick([0, 1, 2], client_key=ip)


def test_fallback_is_used_only_when_no_primary_is_eligible(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/safe")
    assert plan.pick is not None and plan.pick.pool == "backends"
    assert [c.key for c in plan.fallback] == [B3]
    plan = plan_request(state, "GET", "/safe", states=states(open=[B1], unhealthy=[B2]))
    assert plan.pick is not None
    assert (plan.pick.pool, plan.pick.key, plan.outcome) == ("fallback", B3, "routable")
    assert plan.upstream_url == f"{B3}/safe"


def test_no_eligible_backend_is_circuit_open_or_no_healthy_backend(state: RuntimeState) -> None:
    all_open = plan_request(state, "GET", "/api/users/1", states=states(open=[B1, B2]))
    assert (all_open.outcome, all_open.status, all_open.pick) == ("circuit_open", 503, None)
    # A will be back on its own: as in the gateway, that is circuit_open, not no_healthy_backend
    mixed = states(open=[B1], unhealthy=[B2])
    plan = plan_request(state, "GET", "/api/users/1", states=mixed)
    assert (plan.outcome, plan.status, plan.upstream_url) == ("circuit_open", 503, None)
    sick = plan_request(state, "GET", "/api/users/1", states=states(unhealthy=[B1, B2]))
    assert (sick.outcome, sick.status) == ("no_healthy_backend", 503)


# --- policies -------------------------------------------------------------------------------------


def test_global_rate_limit_key_is_per_client_ip(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/sticky", client_ip="10.1.2.3")
    assert plan.rate_limit is not None
    assert plan.rate_limit.scope == "global"
    assert [(k.strategy, k.key) for k in plan.rate_limit.keys] == [
        ("PerIP", "kairos_rl:global:ip=10.1.2.3")
    ]
    assert (plan.rate_limit.capacity, plan.rate_limit.window_type) == (100, "FixedWindow")


def test_route_rate_limit_keys_on_the_verified_user(state: RuntimeState) -> None:
    anonymous = plan_request(state, "GET", "/api/users/1", client_ip="10.1.2.3")
    assert anonymous.rate_limit is not None
    assert anonymous.rate_limit.scope == "route=users"
    assert anonymous.rate_limit.keys[0].key == "kairos_rl:route=users:route=users:ip=10.1.2.3"


def test_retry_schedule_doubles_from_the_initial_backoff(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/api/users/1")
    assert plan.retry is not None
    assert plan.retry.attempts == 4
    assert [(s.attempt, s.wait_ms) for s in plan.retry.schedule] == [
        (2, 100.0),
        (3, 200.0),
        (4, 400.0),
    ]
    assert plan.retry.retry_on_status_codes == (502, 503, 504)
    assert plan.retry.retry_on_connection_error
    assert plan.retry.applies


def test_post_is_retried_only_with_an_idempotency_key(state: RuntimeState) -> None:
    plain = plan_request(state, "POST", "/api/users/1")
    assert plain.retry is not None and not plain.retry.applies
    assert "Idempotency-Key" in plain.retry.note
    keyed = plan_request(state, "POST", "/api/users/1", headers=[("Idempotency-Key", "k1")])
    assert keyed.retry is not None and keyed.retry.applies


def test_retry_non_idempotent_retries_post() -> None:
    state = state_of(route("r", "/r", "/r", ["POST"], retry={"retry_non_idempotent": True}))
    plan = plan_request(state, "POST", "/r")
    assert plan.retry is not None and plan.retry.applies


def test_route_without_retry_policy_has_none(state: RuntimeState) -> None:
    assert plan_request(state, "GET", "/sticky").retry is None


def test_breaker_and_timeouts_are_the_resolved_policies(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/shaped/7")
    assert plan.circuit_breaker is not None and plan.timeouts is not None
    assert (plan.circuit_breaker.failure_threshold, plan.circuit_breaker.reset_timeout_s) == (5, 30)
    assert (plan.timeouts.timeout_ms, plan.timeouts.deadline_ms) == (1500, 4000)
    assert plan.timeouts.connect_timeout_ms == 700
    default = plan_request(state, "GET", "/sticky")
    assert default.timeouts is not None
    assert (default.timeouts.timeout_ms, default.timeouts.deadline_ms) == (30000, None)


def test_request_transform_before_and_after(state: RuntimeState) -> None:
    headers = [("Cookie", "c=1"), ("Connection", "close"), ("Host", "gw"), ("Accept", "*/*")]
    plan = plan_request(state, "GET", "/shaped/7?q=1", headers=headers)
    transform = plan.request_transform
    assert transform is not None
    assert (transform.before.path, transform.before.query) == ("/v1/7", "q=1")
    assert transform.before.headers == (("Cookie", "c=1"), ("Accept", "*/*"))
    assert (transform.after.path, transform.after.query) == ("/v2/7", "q=1&src=gw")
    assert transform.after.headers == (("Accept", "*/*"), ("X-Env", "prod"))
    assert plan.upstream_url == f"{B1}/v2/7?q=1&src=gw"
    assert plan.upstream_path == "/v1/7"  # before the transformation


def test_response_transform_summary(state: RuntimeState) -> None:
    response = plan_request(state, "GET", "/shaped/7").response_transform
    assert response is not None
    assert [(m.from_, m.to) for m in response.status_code_mappings] == [(404, 200)]
    assert [(op.action, op.name) for op in response.headers] == [("remove", "Server")]


def test_ai_policy_summary_resolves_provider_and_model() -> None:
    backends = [backend(9001, description="fast", tags=["fast"]), backend(9002)]
    state = state_of(
        route("chat", "/chat", "/chat", ["POST"], backends=backends, ai_policy={"mode": "shadow"}),
        ai={"provider": "openai", "model": "gpt-4o-mini", "base_url": "http://127.0.0.1:1/v1"},
    )
    plan = plan_request(state, "POST", "/chat")
    assert plan.ai_policy is not None
    assert (plan.ai_policy.provider, plan.ai_policy.model, plan.ai_policy.mode) == (
        "openai",
        "gpt-4o-mini",
        "shadow",
    )
    assert (plan.candidates[0].description, plan.candidates[0].tags) == ("fast", ("fast",))


def test_host_comes_from_the_host_header_when_not_given() -> None:
    state = state_of(route("api", "/x", "/x", ["GET"], hosts=["api.example.com"]))
    assert plan_request(state, "GET", "/x").outcome == "route_not_found"
    assert plan_request(state, "GET", "/x", headers=[("Host", "api.example.com")]).routable
    assert plan_request(state, "GET", "/x", host="api.example.com:8080").routable


# --- to_dict --------------------------------------------------------------------------------------

DOCUMENTED_KEYS = {
    "method", "path", "query", "host", "client_ip", "outcome", "status", "message",
    "route_id", "external_path", "internal_path", "protocol", "methods", "params",
    "upstream_path", "upstream_url", "allowed_methods", "load_balancing_strategy",
    "candidates", "fallback", "pick", "auth", "rate_limit", "retry", "circuit_breaker",
    "timeouts", "request_transform", "response_transform", "ai_policy",
}  # fmt: skip


def test_to_dict_is_json_with_the_documented_keys(state: RuntimeState) -> None:
    plan = plan_request(state, "GET", "/shaped/7?q=1", token="ignored")
    document = json.loads(json.dumps(plan.to_dict()))
    assert set(document) == DOCUMENTED_KEYS
    assert document["candidates"][0] == {
        "index": 0,
        "key": B1,
        "weight": 1,
        "state": "closed",
        "eligible": True,
        "description": None,
        "tags": [],
    }
    assert plan.pick is not None
    assert document["pick"] == {"pool": "backends", "index": 0, "key": B1, "note": plan.pick.note}
    assert document["rate_limit"]["keys"] == [
        {"strategy": "PerIP", "key": "kairos_rl:global:ip=127.0.0.1"}
    ]
    assert document["response_transform"]["status_code_mappings"] == [
        {"from": 404, "to": 200, "condition": None}
    ]
    assert document["request_transform"]["after"] == {
        "path": "/v2/7",
        "query": "q=1&src=gw",
        "headers": [["X-Env", "prod"]],
    }
    assert set(document["auth"]) == {"required", "outcome", "subject", "accepted"}
    assert set(document["timeouts"]) == {"timeout_ms", "deadline_ms", "connect_timeout_ms"}


def test_to_dict_of_a_rejection_keeps_every_key(state: RuntimeState) -> None:
    document = plan_request(state, "GET", "/nowhere").to_dict()
    assert set(document) == DOCUMENTED_KEYS
    assert (document["outcome"], document["status"], document["route_id"]) == (
        "route_not_found",
        404,
        None,
    )
    retry = plan_request(state, "GET", "/api/users/1").to_dict()["retry"]
    assert [s["wait_ms"] for s in retry["schedule"]] == [100, 200, 400]
