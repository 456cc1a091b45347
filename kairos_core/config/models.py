"""The config.json schema: pydantic models, the single source of truth for the config language.

Field names, defaults and accepted spellings follow kairos-rs (PascalCase rate-limit enums,
snake_case balancing strategies, externally tagged ``ai_policy.strategy``, legacy ``host`` +
``port`` routes). Kairos additions are optional and carry a unit in every duration or size name.
These models check shape, types and enums; the cross-field rules live in
:mod:`kairos_core.config.rules` so that every problem is reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from kairos_core.balancing import BalancingStrategy
from kairos_core.config.errors import unknown_key_message

Protocol = Literal["http", "websocket"]
WindowType = Literal["FixedWindow", "SlidingWindow", "TokenBucket"]
SimpleLimitStrategy = Literal["PerIP", "PerUser", "PerRoute", "PerIPAndRoute", "PerUserAndRoute"]
SIMPLE_LIMIT_STRATEGIES: tuple[str, ...] = get_args(SimpleLimitStrategy)
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
AiStrategyName = Literal["content_analysis", "latency_prediction", "anomaly_detection"]
AiMode = Literal["inline", "background", "shadow"]
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE")
MiB = 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


# --- kairos-rs blocks ---------------------------------------------------------------------------


class JwtConfig(_Model):
    """``jwt``: HS256 verification for routes with ``auth_required``."""

    secret: str
    issuer: str | None = None
    audience: str | None = None
    required_claims: tuple[str, ...] = ()
    leeway_s: int = Field(default=30, ge=0, le=3600)


def _parse_limit_strategy(value: Any) -> Any:
    """Accept ``"PerIP"``, ``{"PerIP": null}`` and ``{"Composite": [...]}`` (serde's tagging)."""
    if isinstance(value, str):
        if value in SIMPLE_LIMIT_STRATEGIES:
            return value
        raise ValueError(_unknown_strategy(value))
    if isinstance(value, dict) and len(value) == 1:
        ((tag, inner),) = value.items()
        if tag in SIMPLE_LIMIT_STRATEGIES and inner is None:
            return tag
        if tag == "Composite":
            if not isinstance(inner, list) or not inner:
                raise ValueError("Composite takes a non-empty list of strategies")
            return CompositeStrategy(parts=tuple(_parse_part(p, i) for i, p in enumerate(inner)))
        raise ValueError(_unknown_strategy(str(tag)))
    raise ValueError(_unknown_strategy(str(value)))


LIMIT_PART_NUMBERS: dict[str, int] = {
    "requests_per_window": 1,
    "window_duration": 1,
    "burst_allowance": 0,
}  # each number a Composite part may set, with its minimum


def _parse_part(value: Any, index: int) -> str | CompositeStrategy | LimitPart:
    """One ``Composite`` part: a strategy (any spelling above) or an object with ``strategy``
    and, optionally, its own numbers (``requests_per_window``, ``window_duration``,
    ``burst_allowance``, ``window_type``)."""
    if not isinstance(value, dict) or "strategy" not in value:
        return _parse_limit_strategy(value)  # type: ignore[no-any-return]
    where = f"Composite part {index}"
    known = ("strategy", *LIMIT_PART_NUMBERS, "window_type")
    for key in value:
        if key not in known:
            raise ValueError(f"{where}: {unknown_key_message(str(key), known)}")
    numbers: dict[str, Any] = {}
    for name, minimum in LIMIT_PART_NUMBERS.items():
        number = value.get(name)
        if number is None:
            continue
        if not isinstance(number, int) or isinstance(number, bool) or number < minimum:
            raise ValueError(
                f"{where}: {name} must be an integer of at least {minimum}, got {number!r}"
            )
        numbers[name] = number
    window_type = value.get("window_type")
    if window_type is not None:
        allowed = get_args(WindowType)
        if window_type not in allowed:
            choices = ", ".join(allowed)
            raise ValueError(
                f"{where}: window type {window_type!r} is not supported; allowed: {choices}"
            )
        numbers["window_type"] = window_type
    return LimitPart(strategy=_parse_limit_strategy(value["strategy"]), **numbers)


def _unknown_strategy(value: str) -> str:
    allowed = ", ".join((*SIMPLE_LIMIT_STRATEGIES, '{"Composite": [...]}'))
    message = f"rate-limit strategy {value!r} is not supported; allowed: {allowed}"
    if value.replace("_", "").lower() in {w.lower() for w in get_args(WindowType)}:
        message += " (window algorithms go in 'window_type')"
    return message


class LimitPart(_Model):
    """A ``Composite`` part with its own numbers; the ones it leaves out (None) are inherited
    from the enclosing block."""

    open_keys: ClassVar[bool] = True  # checked by the strategy parser, which builds it

    strategy: str | CompositeStrategy
    requests_per_window: int | None = None
    window_duration: int | None = None
    burst_allowance: int | None = None
    window_type: WindowType | None = None

    def numbers(self) -> dict[str, Any]:
        """The numbers this part sets."""
        return self.model_dump(exclude={"strategy"}, exclude_none=True)


class CompositeStrategy(_Model):
    """Several key strategies at once; a request must pass every one."""

    open_keys: ClassVar[bool] = True  # parsed from serde's tagged form, not from its own keys

    parts: tuple[str | CompositeStrategy | LimitPart, ...]

    def flatten(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.resolve({}))

    def resolve(self, numbers: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Each simple strategy with the numbers it enforces: ``numbers`` (the enclosing
        block's), overridden by those of every part on the way to it."""
        out: list[tuple[str, dict[str, Any]]] = []
        for part in self.parts:
            strategy: str | CompositeStrategy
            if isinstance(part, LimitPart):
                own, strategy = {**numbers, **part.numbers()}, part.strategy
            else:
                own, strategy = numbers, part
            if isinstance(strategy, CompositeStrategy):
                out.extend(strategy.resolve(own))
            else:
                out.append((strategy, own))
        return out


LimitStrategy = Annotated[str | CompositeStrategy, BeforeValidator(_parse_limit_strategy)]


class RateLimitConfig(_Model):
    """``rate_limit`` (global) and ``routers[].rate_limit`` (per route override).

    ``Composite`` parts may carry their own ``requests_per_window``, ``window_duration``,
    ``burst_allowance`` and ``window_type`` (:meth:`parts`); what a part leaves out it inherits
    from this block.
    """

    strategy: LimitStrategy = "PerIP"
    requests_per_window: int = Field(ge=1)
    window_duration: int = Field(ge=1, description="window length in seconds")
    burst_allowance: int = Field(default=0, ge=0)
    window_type: WindowType = "FixedWindow"
    enable_redis: bool = False
    redis_key_prefix: str = "kairos_rl"

    @property
    def strategies(self) -> tuple[str, ...]:
        """The key strategies that must all pass (one unless Composite)."""
        if isinstance(self.strategy, CompositeStrategy):
            return self.strategy.flatten()
        return (self.strategy,)

    @cached_property
    def parts(self) -> tuple[RateLimitConfig, ...]:
        """Each key strategy as a policy of its own, with the numbers it enforces: a simple
        policy is its own only part; a Composite part inherits what it does not set."""
        if not isinstance(self.strategy, CompositeStrategy):
            return (self,)
        return tuple(
            self.model_copy(update={"strategy": name, **numbers})
            for name, numbers in self.strategy.resolve({})
        )

    @property
    def numbers(self) -> tuple[int, int, int, str]:
        """What a counter of this policy enforces: requests, window, burst, window type."""
        return (
            self.requests_per_window,
            self.window_duration,
            self.burst_allowance,
            self.window_type,
        )


class AiProviderConfig(_Model):
    provider: str
    model: str
    api_key: str | None = None


class AiConfig(_Model):
    """``ai``: the LLM used by AI routing."""

    provider: str
    model: str
    api_key: str | None = None
    fallback_providers: tuple[AiProviderConfig, ...] = ()
    base_url: str | None = None
    timeout_ms: int = Field(default=1500, ge=1)


class Backend(_Model):
    """One upstream: ``host`` carries the scheme (``http://api``), ``port`` is separate."""

    host: str
    port: int
    weight: int = 1
    health_check_path: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()

    @cached_property
    def key(self) -> str:
        """Stable identity ``scheme://host:port``, shared by every route using this backend."""
        return f"{self.host.rstrip('/')}:{self.port}"

    @property
    def scheme(self) -> str:
        return self.host.split("://", 1)[0].lower() if "://" in self.host else ""


class RetryConfig(_Model):
    """``routers[].retry``: kairos-rs fields plus the budget and safety knobs."""

    max_retries: int = Field(default=3, ge=0)
    initial_backoff_ms: int = Field(default=100, ge=0)
    max_backoff_ms: int = Field(default=5000, ge=0)
    backoff_multiplier: float = 2.0
    retry_on_status_codes: tuple[int, ...] = (502, 503, 504)
    retry_on_connection_error: bool = True
    budget_percent: float = Field(default=20.0, ge=0, le=100)
    min_retries_per_second: float = Field(default=3.0, ge=0)
    max_replay_bytes: int = Field(default=MiB, ge=0)
    retry_non_idempotent: bool = False
    jitter: bool = True


TransformAction = Literal["add", "set", "remove", "replace"]


class HeaderTransformation(_Model):
    action: TransformAction
    name: str
    value: str | None = None
    pattern: str | None = None
    replacement: str | None = None


class PathTransformation(_Model):
    pattern: str
    replacement: str


class QueryTransformation(_Model):
    action: TransformAction
    name: str
    value: str | None = None


class StatusCodeMapping(_Model):
    from_: int = Field(alias="from", ge=100, le=999)
    to: int = Field(ge=100, le=999)
    condition: str | None = None


class RequestTransformation(_Model):
    headers: tuple[HeaderTransformation, ...] = ()
    path: PathTransformation | None = None
    query_params: tuple[QueryTransformation, ...] = ()


class ResponseTransformation(_Model):
    headers: tuple[HeaderTransformation, ...] = ()
    status_code_mappings: tuple[StatusCodeMapping, ...] = ()


def _parse_ai_strategy(value: Any) -> Any:
    """kairos-rs's externally tagged enum → :class:`AiStrategy`."""
    if isinstance(value, AiStrategy):
        return value
    unit = ("latency_prediction", "anomaly_detection")
    if isinstance(value, str) and value in unit:
        return AiStrategy(kind=value)
    if isinstance(value, dict) and len(value) == 1:
        ((tag, inner),) = value.items()
        if tag in unit and inner in (None, {}):
            return AiStrategy(kind=tag)
        if tag == "content_analysis" and (inner is None or isinstance(inner, dict)):
            model = (inner or {}).get("model")
            if model is not None and not isinstance(model, str):
                raise ValueError("content_analysis.model must be a string")
            return AiStrategy(kind="content_analysis", model=model)
    raise ValueError(
        f"AI strategy {value!r} is not supported; allowed: "
        '{"content_analysis": {"model": ...}}, "latency_prediction", "anomaly_detection"'
    )


class AiStrategy(_Model):
    open_keys: ClassVar[bool] = True  # parsed from serde's tagged form, not from its own keys

    kind: AiStrategyName
    model: str | None = None


class AiPolicy(_Model):
    """``routers[].ai_policy``: let a selector choose the backend (DESIGN.md §6)."""

    enabled: bool = True
    strategy: Annotated[AiStrategy, BeforeValidator(_parse_ai_strategy)] = AiStrategy(
        kind="content_analysis"
    )
    provider: str | None = None
    fallback_backend_index: int | None = Field(default=None, ge=0)
    fallback_providers: tuple[AiProviderConfig, ...] = ()
    streaming: bool | None = None
    mode: AiMode = "inline"
    timeout_ms: int = Field(default=1500, ge=1)
    cache_ttl_s: float = Field(default=60, ge=0)
    max_concurrent_calls: int = Field(default=8, ge=1)


class CircuitBreakerConfig(_Model):
    """``circuit_breaker`` (global defaults) and ``routers[].circuit_breaker``."""

    failure_threshold: int = Field(default=5, ge=1)
    success_threshold: int = Field(default=2, ge=1)
    reset_timeout_s: float = Field(default=30.0, gt=0)
    half_open_max_calls: int = Field(default=1, ge=1)
    failure_status_codes: tuple[int, ...] = (500, 502, 503, 504)


class Router(_Model):
    """One route: where it listens (``external_path``), where it goes, and its policies."""

    name: str | None = None
    host: str | None = None
    port: int | None = None
    backends: tuple[Backend, ...] | None = None
    fallback: tuple[Backend, ...] = ()
    protocol: Protocol = "http"
    load_balancing_strategy: BalancingStrategy = "round_robin"
    external_path: str
    internal_path: str
    # Checked by the rules (with a hint for lower case); the schema lists the choices.
    methods: tuple[str, ...] = Field(
        json_schema_extra={"items": {"type": "string", "enum": list(HTTP_METHODS)}}
    )
    hosts: tuple[str, ...] = ()
    auth_required: bool = False
    retry: RetryConfig | None = None
    rate_limit: RateLimitConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    timeout_ms: int | None = Field(default=None, ge=1)
    deadline_ms: int | None = Field(default=None, ge=1)
    request_transformation: RequestTransformation | None = None
    response_transformation: ResponseTransformation | None = None
    ai_policy: AiPolicy | None = None

    @property
    def effective_backends(self) -> tuple[Backend, ...]:
        """``backends`` when given (it wins, as in kairos-rs), else the legacy host + port."""
        if self.backends is not None:
            return self.backends
        if self.host is not None and self.port is not None:
            return (Backend(host=self.host, port=self.port),)
        return ()


# --- Kairos additions ---------------------------------------------------------------------------


class ServerConfig(_Model):
    host: str = "0.0.0.0"
    port: int = 5900
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=10 * MiB, ge=0)
    connect_timeout_ms: int = Field(default=2000, ge=1)
    upstream_timeout_ms: int = Field(default=30000, ge=1)
    graceful_shutdown_s: float = Field(default=15.0, ge=0)
    shutdown_delay_s: float = Field(default=0.0, ge=0, le=3600)
    trusted_proxies: tuple[str, ...] = ()
    security_headers: bool = True
    client_header_timeout_ms: int = Field(default=10_000, ge=1)
    client_body_timeout_ms: int = Field(default=30_000, ge=1)
    keepalive_timeout_ms: int = Field(default=75_000, ge=0)
    max_request_headers: int = Field(default=100, ge=1)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    max_url_bytes: int = Field(default=8 * 1024, ge=256)
    max_upstream_header_bytes: int = Field(default=60 * 1024, ge=1024)
    underscores_in_headers: bool = False


class AdminConfig(_Model):
    """Admin listener; ``token`` defaults to ``$KAIROS_ADMIN_TOKEN`` (filled in by the loader)."""

    host: str = "127.0.0.1"
    port: int = 5901
    token: str | None = None


class CorsConfig(_Model):
    allowed_origins: tuple[str, ...] = ("*",)
    allowed_methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    allowed_headers: tuple[str, ...] = ("*",)
    allow_credentials: bool = False
    max_age: int = Field(default=600, ge=0)


class HealthCheckConfig(_Model):
    interval_s: float = Field(default=10.0, gt=0)
    timeout_ms: int = Field(default=1000, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)
    unhealthy_threshold: int = Field(default=3, ge=1)


class ClusterConfig(_Model):
    """``cluster``: state shared through Redis by every worker and instance (rate-limit counters,
    breaker and health-check results). ``redis_timeout_ms`` bounds each Redis call a request
    waits for; ``on_redis_error`` says what a request that needs Redis gets while it is
    unreachable: ``allow`` (served with this process's own state) or ``deny`` (503)."""

    redis_url: str | None = None
    key_prefix: str = "kairos"
    on_redis_error: Literal["allow", "deny"] = "allow"
    redis_timeout_ms: int = Field(default=20, ge=1, le=10_000)


class GatewayConfig(_Model):
    """The whole config.json."""

    version: int = Field(default=1, ge=0, le=255)
    jwt: JwtConfig | None = None
    rate_limit: RateLimitConfig | None = None
    ai: AiConfig | None = None
    routers: tuple[Router, ...]
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    cors: CorsConfig | None = None
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    health_check: HealthCheckConfig = HealthCheckConfig()
    cluster: ClusterConfig = ClusterConfig()


def config_schema() -> dict[str, Any]:
    """The JSON Schema of config.json (``kairos config schema``, ``GET /api/config/schema``)."""
    return GatewayConfig.model_json_schema(by_alias=True)


def route_ids(routers: Sequence[Router]) -> list[str]:
    """The id of each route: its ``name``, else a slug of its external path (``api-users-id``).

    Derived ids that collide get ``-2``, ``-3``... in config order, so ids are stable as long as
    the order of same-path routes is.
    """
    ids: list[str] = []
    taken = {r.name for r in routers if r.name}
    seen: dict[str, int] = {}
    for router in routers:
        if router.name:
            ids.append(router.name)
            continue
        base = re.sub(r"[^A-Za-z0-9_]+", "-", router.external_path).strip("-").lower() or "root"
        count = seen.get(base, 0) + 1
        candidate = base if count == 1 else f"{base}-{count}"
        while candidate in taken:
            count += 1
            candidate = f"{base}-{count}"
        seen[base] = count
        taken.add(candidate)
        ids.append(candidate)
    return ids
