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


def info(config: dict[str, Any]) -> RouteInfo:
    return RouteInfo(id="chat", index=0, config=config)


def test_the_ai_badge_names_the_mode_the_gateway_reports() -> None:
    metrics = RouteMetrics(route="chat", has_retry=True, has_ai=True, ai_mode="background")

    assert RouteRow(info({}), metrics).badges == ["retry", "AI background"]
    assert RouteRow(info({}), RouteMetrics(route="chat")).badges == []


def test_a_route_without_figures_yet_is_read_from_its_config_as_written() -> None:
    def badges(config: dict[str, Any]) -> list[str]:
        return RouteRow(info(config), None).badges

    assert badges({"ai_policy": {"mode": "shadow"}, "auth_required": True}) == [
        "auth",
        "AI shadow",
    ]
    assert badges({"ai_policy": {"strategy": "latency_prediction"}}) == ["AI"]
    assert badges({"ai_policy": {"enabled": False, "mode": "shadow"}}) == []
