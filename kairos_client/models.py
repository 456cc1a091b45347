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


class HealthCheck(_Wire):
    """The active health check of a backend (``probed`` False: it has none)."""

    probed: bool = False
    consecutive_passes: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None


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
    health_check: HealthCheck = HealthCheck()


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


class RoutePolicies(_Wire):
    """What a route resolves to, as the gateway applies it: ``rate_limit`` describes the policy
    in force (the global one when the route has none; ``rate_limit_scope`` says which), and
    ``circuit_breaker_from`` names the route whose breaker policy guards its first backend."""

    protocol: str = "http"
    methods: list[str] = Field(default_factory=list)
    load_balancing_strategy: str = "round_robin"
    auth_required: bool = False
    retry: bool = False
    rate_limit: str | None = None
    rate_limit_scope: Literal["route", "global"] | None = None
    circuit_breaker_from: str = ""
    ai_mode: str | None = None


class RouteInfo(_Wire):
    """A route: its id, its position, its JSON as written in config.json (secrets redacted),
    the keys of its backends (``scheme://host:port``, primary and fallback) and its policies."""

    id: str
    index: int
    config: dict[str, Any]
    backends: list[str] = Field(default_factory=list)
    fallback: list[str] = Field(default_factory=list)
    policies: RoutePolicies = RoutePolicies()


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

    ``restart_required`` names the settings read only at start (``server.host``,
    ``server.port``, ``server.workers``, ``admin.host``, ``admin.port``, ``cluster.redis_url``,
    ``cluster.key_prefix``) in which the running config differs from the one the gateway started
    with: they take effect only at the next restart.
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


class PlanCandidate(_Wire):
    """A backend of the route as selection sees it (``state``: ``unhealthy`` or the breaker's)."""

    index: int
    key: str
    weight: int
    state: str
    eligible: bool
    description: str | None = None
    tags: list[str] = Field(default_factory=list)


class PlanPick(_Wire):
    pool: str
    index: int
    key: str
    note: str


class PlanAuth(_Wire):
    required: bool
    outcome: str
    subject: str | None = None
    accepted: bool = True


class PlanLimitKey(_Wire):
    strategy: str
    key: str


class PlanRateLimit(_Wire):
    description: str
    scope: str
    keys: list[PlanLimitKey] = Field(default_factory=list)
    capacity: int
    window_type: str
    window_duration_s: int
    refill_per_second: float | None = None


class PlanRetryStep(_Wire):
    attempt: int
    wait_ms: float
    jitter: bool


class PlanRetry(_Wire):
    attempts: int
    schedule: list[PlanRetryStep] = Field(default_factory=list)
    retry_on_status_codes: list[int] = Field(default_factory=list)
    retry_on_connection_error: bool
    budget_percent: float
    min_retries_per_second: float
    max_replay_bytes: int
    retry_non_idempotent: bool
    applies: bool
    note: str


class PlanBreaker(_Wire):
    failure_threshold: int
    success_threshold: int
    reset_timeout_s: float
    half_open_max_calls: int
    failure_status_codes: list[int] = Field(default_factory=list)
    from_route: str
    note: str


class PlanTimeouts(_Wire):
    timeout_ms: int
    deadline_ms: int | None = None
    connect_timeout_ms: int


class PlanRequestParts(_Wire):
    path: str
    query: str
    headers: list[tuple[str, str]] = Field(default_factory=list)


class PlanRequestTransform(_Wire):
    before: PlanRequestParts
    after: PlanRequestParts


class PlanStatusMapping(_Wire):
    from_: int = Field(alias="from")
    to: int
    condition: str | None = None


class PlanHeaderOp(_Wire):
    action: str
    name: str
    value: str | None = None
    pattern: str | None = None
    replacement: str | None = None


class PlanResponseTransform(_Wire):
    status_code_mappings: list[PlanStatusMapping] = Field(default_factory=list)
    headers: list[PlanHeaderOp] = Field(default_factory=list)


class PlanAi(_Wire):
    """The route's selector, its offline pick, and (asked with ``ai``) the prompt and the LLM's
    live answer."""

    enabled: bool
    strategy: str
    model: str | None = None
    provider: str
    mode: str
    timeout_ms: int
    cache_ttl_s: float
    max_concurrent_calls: int
    fallback_backend_index: int | None = None
    note: str
    source: str | None = None
    reason: str | None = None
    pick_index: int | None = None
    prompt_system: str | None = None
    prompt_user: str | None = None
    live_index: int | None = None
    live_reason: str | None = None
    live_latency_ms: float | None = None
    live_error: str | None = None


class RouteTestReport(_Wire):
    """Everything the gateway would decide about one request (``kairos route-test --json``)."""

    method: str
    path: str
    query: str
    host: str | None = None
    client_ip: str
    outcome: str
    status: int | None = None
    message: str = ""
    route_id: str | None = None
    external_path: str | None = None
    internal_path: str | None = None
    protocol: str | None = None
    methods: list[str] = Field(default_factory=list)
    params: dict[str, str] = Field(default_factory=dict)
    upstream_path: str | None = None
    upstream_url: str | None = None
    allowed_methods: list[str] = Field(default_factory=list)
    load_balancing_strategy: str | None = None
    candidates: list[PlanCandidate] = Field(default_factory=list)
    fallback: list[PlanCandidate] = Field(default_factory=list)
    pick: PlanPick | None = None
    auth: PlanAuth
    rate_limit: PlanRateLimit | None = None
    retry: PlanRetry | None = None
    circuit_breaker: PlanBreaker | None = None
    timeouts: PlanTimeouts | None = None
    request_transform: PlanRequestTransform | None = None
    response_transform: PlanResponseTransform | None = None
    ai_policy: PlanAi | None = None


class RouteTest(_Wire):
    """The dry run of one request on the running gateway (live breaker and health states)."""

    outcome: str
    status: int | None = None
    message: str = ""
    route_id: str | None = None
    upstream_url: str | None = None
    report: RouteTestReport | None = None


class ErrorBody(_Wire):
    """The body of every admin API error (the proxy's shape)."""

    error: str
    type: str
    timestamp: str | None = None
    request_id: str | None = None
    details: list[ValidationIssue] = Field(default_factory=list)
