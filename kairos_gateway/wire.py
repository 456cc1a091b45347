"""Core results as :mod:`kairos_client.models`: the one place the admin API maps, never decides."""

from __future__ import annotations

from kairos_client import models
from kairos_core.ai.decisions import Decision, DecisionLog, GroupStats, RouteStats
from kairos_core.state import decision_data


def ai_decision(decision: Decision) -> models.AiDecision:
    return models.AiDecision.model_validate(decision_data(decision))


def ai_routes(log: DecisionLog) -> list[models.AiRouteStats]:
    return [_route_stats(stats) for stats in log.routes()]


def ai_metrics(log: DecisionLog) -> models.AiMetrics:
    return models.AiMetrics(
        decisions_total=log.total,
        by_source=dict(log.by_source),
        shadow_agreement_rate=log.shadow_agreement_rate(),
        routes=ai_routes(log),
    )


def _route_stats(stats: RouteStats) -> models.AiRouteStats:
    return models.AiRouteStats(
        route=stats.route,
        decisions=stats.decisions,
        selector=_group(stats.selector),
        fallback=_group(stats.fallback),
        shadow_decisions=stats.shadow_decisions,
        shadow_agreement_rate=stats.shadow_agreement_rate,
    )


def _group(group: GroupStats) -> models.AiGroup:
    return models.AiGroup(
        requests=group.requests, success_rate=group.success_rate, p50_ms=group.p50_ms
    )
