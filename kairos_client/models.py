"""Wire models of the Kairos admin API: the one schema both the gateway and the SDK use.

The gateway builds every admin response from these models, and the SDK parses every response
into them, so the two cannot drift. All models are frozen; unknown fields sent by a newer gateway
are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CircuitStateName = Literal["closed", "open", "half_open"]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Health(_Wire):
    """``GET /health`` and ``/live``."""

    status: str
    version: str
    uptime_seconds: float


class Ready(_Wire):
    """``GET /ready``: ``ready`` with no reasons, or ``not_ready`` (503) with why.

    Ready means the config is loaded, the listeners are bound and the gateway is not draining
    (and, in cluster mode with ``on_redis_error: deny``, Redis is reachable). ``unroutable``
    lists the routes that have no candidate backend right now; they never make the gateway
    not ready, so one dead upstream does not take every replica out of a load balancer.
    """

    status: Literal["ready", "not_ready"]
    reasons: list[str] = Field(default_factory=list)
    unroutable: list[str] = Field(default_factory=list)
    config_version: str


class Rates(_Wire):
    """Requests per second over the last 1, 10 and 60 seconds."""

    per_1s: float = 0.0
    per_10s: float = 0.0
    per_60s: float = 0.0


class Percentiles(_Wire):
    """Milliseconds; computed over the last 60 seconds."""

    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0


class CircuitInfo(_Wire):
    """One backend's breaker (``GET /api/circuits``).

    ``admitting``: whether the breaker lets a request through now (closed; open past its reset
    timeout; half-open with a free trial slot); ``half_open_in_s``: seconds until an open
    breaker admits a trial. A backend is a candidate when it is ``healthy`` and ``admitting``.
    """

    backend: str
    state: CircuitStateName
    failures: int = 0
    opened_at: float | None = None
    next_half_open_at: float | None = None
    healthy: bool = True
    in_flight: int = 0
    admitting: bool = True
    half_open_in_s: float = 0.0


class RouteMetrics(_Wire):
    route: str
    requests_total: int = 0
    errors_total: int = 0
    requests_per_second: Rates = Rates()
    error_rate: float = 0.0
    latency_ms: Percentiles = Percentiles()
    status_classes: dict[str, int] = Field(default_factory=dict)
    rate_limited_total: int = 0
    retries_total: int = 0
    auth_required: bool = False
    has_retry: bool = False
    has_rate_limit: bool = False
    has_ai: bool = False
    ai_mode: str | None = None
    """The AI selector's mode (``inline``, ``background``, ``shadow``) when ``has_ai``."""


class BackendMetrics(_Wire):
    backend: str
    requests_total: int = 0
    failures_total: int = 0
    in_flight: int = 0
    healthy: bool = True
    latency_ms: Percentiles = Percentiles()
    circuit: CircuitInfo


class AiGroup(_Wire):
    """Requests routed by one group of decisions, over the route's recent window."""

    requests: int = 0
    success_rate: float | None = None
    p50_ms: float | None = None


class AiRouteStats(_Wire):
    """One AI route: requests the selector routed next to those a fallback routed, and, in
    ``shadow`` mode, how often the selector agreed with the balancer."""

    route: str
    decisions: int = 0
    selector: AiGroup = AiGroup()
    fallback: AiGroup = AiGroup()
    shadow_decisions: int = 0
    shadow_agreement_rate: float | None = None


class AiMetrics(_Wire):
    decisions_total: int = 0
    by_source: dict[str, int] = Field(default_factory=dict)
    shadow_agreement_rate: float | None = None
    routes: list[AiRouteStats] = Field(default_factory=list)


class MetricsSnapshot(_Wire):
    """``GET /api/metrics``: the whole gateway at a glance."""

    requests_total: int = 0
    errors_total: int = 0
    requests_per_second: Rates = Rates()
    error_rate: float = 0.0
    latency_ms: Percentiles = Percentiles()
    overhead_ms: Percentiles = Percentiles()
    status_classes: dict[str, int] = Field(default_factory=dict)
    in_flight: int = 0
    rate_limited_total: int = 0
    retries_total: int = 0
    retry_budget_exhausted_total: int = 0
    uptime_seconds: float = 0.0
    config_version: str = ""
    routes: list[RouteMetrics] = Field(default_factory=list)
    backends: list[BackendMetrics] = Field(default_factory=list)
    ai: AiMetrics = AiMetrics()


class MetricsPoint(_Wire):
    """One second of history."""

    t: float
    requests: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    overhead_p50_ms: float = 0.0
    in_flight: int = 0


class MetricsHistory(_Wire):
    """``GET /api/metrics/history?seconds=N``."""

    seconds: int
    points: list[MetricsPoint] = Field(default_factory=list)


class RouteInfo(_Wire):
    """A route as configured: its id, its position and its JSON as written in config.json."""

    id: str
    index: int
    config: dict[str, Any]


class RouteList(_Wire):
    routes: list[RouteInfo] = Field(default_factory=list)
    config_version: str


class RouteChange(_Wire):
    """Answer to a route create / update / delete."""

    route: RouteInfo | None = None
    config_version: str


class ValidationIssue(_Wire):
    """One config problem; ``code`` names the rule (stable), ``message`` explains it."""

    severity: Literal["error", "warning", "recommendation"]
    code: str = "invalid"
    path: str
    line: int | None = None
    message: str
    allowed: list[str] = Field(default_factory=list)


class ValidationResult(_Wire):
    """``POST /api/config/validate``."""

    valid: bool
    errors: list[ValidationIssue] = Field(default_factory=list)
    warnings: list[ValidationIssue] = Field(default_factory=list)


class ConfigDocument(_Wire):
    """``GET /api/config``: the config as written, secrets redacted."""

    config: dict[str, Any]
    config_version: str
    source: str


class ReloadResult(_Wire):
    """``POST /api/config/reload`` and ``PUT /api/config``.

    ``restart_required`` names the listener settings (``server.host``, ``server.port``,
    ``server.workers``, ``admin.host``, ``admin.port``) in which the running config differs from
    the one the gateway started with: they take effect only at the next restart.
    """

    reloaded: bool
    config_version: str
    errors: list[ValidationIssue] = Field(default_factory=list)
    restart_required: list[str] = Field(default_factory=list)


class CircuitList(_Wire):
    circuits: list[CircuitInfo] = Field(default_factory=list)


class AiDecision(_Wire):
    """One selector decision (``GET /api/ai/decisions``, ``ai_decision`` events).

    ``source``: ``llm``, ``cache``, ``heuristic``, ``latency_prediction``, ``anomaly_detection``
    or ``fallback:timeout|invalid|busy|error|pending``. ``status`` and ``upstream_ms`` are the
    outcome of the request it routed; a ``shadow`` decision routed nothing and says which
    backend the balancer used (``routed_backend``) and whether they ``agrees``.
    """

    id: int = 0
    time: float
    route: str
    request_id: str | None = None
    strategy: str = ""
    mode: str = ""
    backend: str | None = None
    index: int | None = None
    reason: str = ""
    source: str
    latency_ms: float = 0.0
    shadow: bool = False
    routed_backend: str | None = None
    agrees: bool | None = None
    status: int | None = None
    upstream_ms: float | None = None


class AiDecisionList(_Wire):
    decisions: list[AiDecision] = Field(default_factory=list)
    routes: list[AiRouteStats] = Field(default_factory=list)


class Event(_Wire):
    """One server-sent event from ``GET /api/events``."""

    id: int
    type: str
    time: float
    data: dict[str, Any] = Field(default_factory=dict)


class RouteTestRequest(_Wire):
    """``POST /api/route-test``: a request to dry-run against the running config."""

    method: str = "GET"
    path: str
    headers: list[tuple[str, str]] = Field(default_factory=list)
    client_ip: str = "127.0.0.1"
    token: str | None = None
    body: str | None = None
    ai: bool = False
    """Also show the AI prompt and, when the route has an LLM, ask it (as ``route-test --ai``)."""


class RouteTest(_Wire):
    """The dry run of one request on the running gateway (live breaker and health states).

    ``report`` is the whole plan, in the documented shape of ``kairos route-test --json``.
    """

    outcome: str
    status: int | None = None
    message: str = ""
    route_id: str | None = None
    upstream_url: str | None = None
    report: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(_Wire):
    """The body of every admin API error (the proxy's shape)."""

    error: str
    type: str
    timestamp: str | None = None
    request_id: str | None = None
    details: list[ValidationIssue] = Field(default_factory=list)
