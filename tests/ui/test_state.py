"""kairos_ui.state: the decisions list, the AI route comparison rows and the routes' badges."""

from __future__ import annotations

from typing import Any

from kairos_client import AiDecision, MetricsSnapshot, RouteInfo
from kairos_client.models import RouteMetrics
from kairos_ui.state import DECISIONS_KEPT, AiRouteRow, DashboardState, RouteRow


def decision(number: int, **fields: Any) -> AiDecision:
    return AiDecision(
        id=number, time=1_700_000_000 + number, route="chat", source="heuristic", **fields
    )


def kept_ids(state: DashboardState) -> list[int]:
    return [d.id for d in state.decisions]


def test_decisions_are_kept_newest_first_once_each() -> None:
    state = DashboardState()

    added = [state.add_decision(decision(n)) for n in (2, 5, 3, 5, 1)]

    assert added == [True, True, True, False, True]
    assert kept_ids(state) == [5, 3, 2, 1]


def test_the_list_is_bounded_and_a_replay_older_than_it_is_left_out() -> None:
    state = DashboardState()
    for number in range(1, DECISIONS_KEPT + 11):
        state.add_decision(decision(number))

    assert len(state.decisions) == DECISIONS_KEPT
    assert kept_ids(state)[0] == DECISIONS_KEPT + 10
    assert kept_ids(state)[-1] == 11
    assert state.add_decision(decision(3)) is False
    assert kept_ids(state)[-1] == 11


def test_ai_routes_follow_the_config_order_then_routes_that_decided_before() -> None:
    state = DashboardState()
    assert state.ai_routes() == []
    state.snapshot = MetricsSnapshot.model_validate(
        {
            "routes": [
                {"route": "plain"},
                {"route": "quiet", "has_ai": True, "ai_mode": "background"},
                {"route": "chat", "has_ai": True, "ai_mode": "shadow"},
            ],
            "ai": {
                "routes": [
                    {"route": "chat", "decisions": 4, "shadow_decisions": 4},
                    {"route": "retired", "decisions": 1},
                ]
            },
        }
    )

    rows = state.ai_routes()

    assert [(r.route, r.mode) for r in rows] == [
        ("quiet", "background"),
        ("chat", "shadow"),
        ("retired", None),
    ]
    assert rows[0].stats is None
    assert rows[1].stats is not None and rows[1].stats.shadow_decisions == 4
    assert isinstance(rows[2], AiRouteRow) and rows[2].stats is not None


def info(route_id: str = "chat", **fields: Any) -> RouteInfo:
    return RouteInfo.model_validate({"id": route_id, "index": 0, "config": {}, **fields})


def test_badges_are_the_policies_the_gateway_resolved_not_the_config_as_written() -> None:
    resolved = info(
        config={"auth_required": False},  # as written; the policies say what is in force
        policies={
            "auth_required": True,
            "retry": True,
            "ai_mode": "background",
            "rate_limit": "100 requests / 60 s, PerIP",
            "rate_limit_scope": "global",
        },
    )

    badges = RouteRow(resolved, RouteMetrics(route="chat")).badges

    assert [b.text for b in badges] == ["auth", "retry", "AI background", "rate limit"]
    assert badges[-1].detail == "100 requests / 60 s, PerIP (global policy)"
    assert RouteRow(info(config={"retry": {"max_retries": 2}}), None).badges == []


def test_backend_users_are_the_keys_the_gateway_gives_primary_and_fallback() -> None:
    state = DashboardState()
    state.routes = [
        info("legacy", config={"host": "http://a/", "port": 1}, backends=["http://a:1"]),
        info("pooled", backends=["http://a:1", "http://b:2"], fallback=["http://c:3"]),
    ]

    assert state.backend_users() == {
        "http://a:1": ["legacy", "pooled"],
        "http://b:2": ["pooled"],
        "http://c:3": ["pooled"],
    }
