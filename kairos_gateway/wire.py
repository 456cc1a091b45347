"""Core results as :mod:`kairos_client.models`: the one place the admin API maps, never decides.

The core's result dataclasses (``kairos_core.admin``, ``kairos_core.metrics``,
``kairos_core.dryrun``, ``kairos_core.ai.decisions``) mirror the wire models field for field, so
the mapping is structural: a result becomes plain data (:func:`kairos_core.serial.plain`) and
the model validates it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel

from kairos_client import models
from kairos_core import admin
from kairos_core.ai.decisions import Decision, RouteStats
from kairos_core.config import ConfigIssue
from kairos_core.dryrun import DryRun
from kairos_core.metrics import HistoryPoint
from kairos_core.serial import plain
from kairos_core.state import decision_data

M = TypeVar("M", bound=BaseModel)


def to_model(model: type[M], value: Any) -> M:
    return model.model_validate(plain(value))


def snapshot(value: admin.MetricsSnapshot) -> models.MetricsSnapshot:
    return to_model(models.MetricsSnapshot, value)


def history(seconds: int, points: Iterable[HistoryPoint]) -> models.MetricsHistory:
    return models.MetricsHistory(seconds=seconds, points=[plain(p) for p in points])


def issues(values: Iterable[ConfigIssue]) -> list[models.ValidationIssue]:
    return [models.ValidationIssue.model_validate(issue.to_dict()) for issue in values]


def route_test(plan: DryRun) -> models.RouteTest:
    return models.RouteTest(
        outcome=plan.outcome,
        status=plan.status,
        message=plan.message,
        route_id=plan.route_id,
        upstream_url=plan.upstream_url,
        report=to_model(models.RouteTestReport, plan),
    )


def ai_decision(decision: Decision) -> models.AiDecision:
    return models.AiDecision.model_validate(decision_data(decision))


def ai_decisions(
    decisions: Iterable[Decision], routes: Iterable[RouteStats]
) -> models.AiDecisionList:
    return models.AiDecisionList(
        decisions=[ai_decision(d) for d in decisions],
        routes=[to_model(models.AiRouteStats, r) for r in routes],
    )
