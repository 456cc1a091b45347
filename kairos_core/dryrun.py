"""Dry run: what the gateway would do with one request, without sending any traffic.

:func:`plan_request` walks the steps of the request pipeline (DESIGN.md §2) over a compiled
:class:`~kairos_core.state.RuntimeState` and records each decision. It reads the state and never
changes it: the backend pick uses a fresh balancer (``make_balancer``), so a dry run does not
advance any route's rotation. ``kairos route-test`` prints the result; its ``--json`` output is
:meth:`DryRun.to_dict`.

Order of checks, as in the pipeline; the first that rejects decides the outcome:

1. headers: a name that is not an RFC 9110 token, or a value with CR, LF or NUL → ``bad_request``;
2. body (``body=``, else a declared ``Content-Length``) over ``server.max_body_bytes`` →
   ``payload_too_large``;
3. route (method, path, host; the host comes from ``host=`` or else the ``Host`` header):
   ``route_not_found``, ``method_not_allowed`` (with ``allowed_methods``) or ``bad_request``
   for a malformed or traversal path;
4. CORS: an ``OPTIONS`` carrying ``Origin`` and ``Access-Control-Request-Method`` on a config with
   ``cors`` is a ``preflight`` the gateway answers itself (204), looked up with the requested
   method;
5. auth, only when the route has ``auth_required``: ``token=`` wins over an ``Authorization``
   header; no token, or a token the verifier refuses → ``authentication_error``;
6. backend: every primary backend whose state (``backend_states``, keyed by backend key
   ``scheme://host:port``; ``closed`` when absent) is not ``open``, ``forced_open`` or
   ``unhealthy`` is eligible. None eligible → the route's ``fallback`` backends the same way;
   still none → ``circuit_open`` when every primary backend is open, else
   ``no_healthy_backend``.

Otherwise the outcome is ``routable``. Rate limits cannot reject a dry run (no counters are
read); the policy and the keys the request would be charged to are reported instead. The keys use
``client_ip`` (the address as the gateway resolves it: the peer, or the ``X-Forwarded-For`` hop
behind a trusted proxy; it also keys ``ip_hash``) and, for ``PerUser`` strategies, the ``sub`` of
a token verified on an ``auth_required`` route, never an unverified one. Once a route
matched, every section is filled even when the request is rejected, so the report shows the
route's policies.

``to_dict()`` (the ``kairos route-test --json`` document) has these keys, always present:

- ``method``, ``path`` (without the query), ``query`` (raw, without ``?``), ``host`` (or null),
  ``client_ip``;
- ``outcome``: ``routable``, ``preflight``, or an error type of DESIGN.md §4
  (``route_not_found``, ``method_not_allowed``, ``bad_request``, ``authentication_error``,
  ``payload_too_large``, ``circuit_open``, ``no_healthy_backend``);
- ``status``: the status the gateway answers itself (404, 405, 400, 401, 413, 503, or 204 for a
  preflight), or null when the request is forwarded and the upstream answers;
- ``message``: one line for humans;
- ``route_id``, ``external_path``, ``internal_path``, ``protocol``, ``methods`` (the route's),
  ``params`` (decoded, by name), ``upstream_path`` (internal path with params substituted,
  before the request transformation): null / empty when no route matched;
- ``upstream_url``: picked backend key + path + ``?`` + query, after the request
  transformation (what would be sent; the client's query is kept), or null when nothing was
  picked;
- ``allowed_methods``: for ``method_not_allowed`` the methods of the ``Allow`` header, else [];
- ``load_balancing_strategy``; ``candidates`` and ``fallback``: lists of ``{"index", "key",
  "weight", "state", "eligible", "description", "tags"}``;
- ``pick``: ``{"pool": "backends" | "fallback", "index", "key", "note"}`` or null;
- ``auth``: ``{"required", "outcome", "subject"}``; ``outcome`` is ``"not required"``,
  ``"ok (sub=...)"``, ``"no token"`` or the verifier's reason;
- ``rate_limit``: null or ``{"description", "scope", "keys": [{"strategy", "key"}], "capacity",
  "window_type", "window_duration_s", "refill_per_second"}`` (refill only for TokenBucket);
- ``retry``: null (one attempt) or ``{"attempts", "schedule": [{"attempt", "wait_ms",
  "jitter"}], "retry_on_status_codes", "retry_on_connection_error", "budget_percent",
  "min_retries_per_second", "max_replay_bytes", "retry_non_idempotent", "applies", "note"}``;
  ``wait_ms`` is the upper bound (full jitter draws below it); ``applies`` says whether a
  retryable response to this request would be retried;
- ``circuit_breaker``: null or ``{"failure_threshold", "success_threshold", "reset_timeout_s",
  "half_open_max_calls", "failure_status_codes"}``;
- ``timeouts``: null or ``{"timeout_ms", "deadline_ms", "connect_timeout_ms"}``;
- ``request_transform``: null or ``{"before": parts, "after": parts}`` where parts is
  ``{"path", "query", "headers": [[name, value], ...]}``; the headers are the client's without
  hop-by-hop ones and without those the gateway sets itself (``Host``, ``X-Forwarded-*``,
  ``X-Request-ID``), as the transformation sees them;
- ``response_transform``: null or ``{"status_code_mappings": [{"from", "to", "condition"}],
  "headers": [{"action", "name", "value", "pattern", "replacement"}]}``;
- ``ai_policy``: null or ``{"enabled", "strategy", "model", "provider", "mode", "timeout_ms",
  "cache_ttl_s", "max_concurrent_calls", "fallback_backend_index", "note"}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from kairos_core.auth import AuthError, Identity
from kairos_core.balancing import BackendRef, make_balancer
from kairos_core.config.models import Backend, RetryConfig
from kairos_core.errors import STATUS
from kairos_core.http import (
    FORWARDED_HEADERS,
    HEADER_NAME,
    NON_IDEMPOTENT_METHODS,
    header,
    strip_hop_by_hop,
    without,
)
from kairos_core.ratelimit import LimitKey, capacity, describe, limit_keys, refill_per_second
from kairos_core.retry import RetryStep, retry_schedule
from kairos_core.routing import BadPath, MethodNotAllowed, NotFound, RouteMatch
from kairos_core.state import CompiledRoute, RuntimeState
from kairos_core.transform import RequestParts

__all__ = [
    "INELIGIBLE_STATES",
    "AiPlan",
    "AuthPlan",
    "BreakerPlan",
    "Candidate",
    "DryRun",
    "HeaderOp",
    "Pick",
    "RateLimitPlan",
    "RequestTransformPlan",
    "ResponseTransformPlan",
    "RetryPlan",
    "StatusMapping",
    "TimeoutPlan",
    "plan_request",
]

INELIGIBLE_STATES = frozenset({"open", "forced_open", "unhealthy"})
"""Backend states (normalised: lower case, ``-`` and spaces as ``_``) that take it out of a pick."""

_PICK_NOTES = {
    "round_robin": "first pick of a fresh rotation; the running gateway rotates",
    "weighted": "first pick of a fresh smooth weighted rotation; the running gateway rotates",
    "least_connections": "fewest in-flight requests now; ties rotate",
    "random": "one weighted random draw; the running gateway draws per request",
    "ip_hash": "stable for this client IP",
}


@dataclass(frozen=True, slots=True)
class Candidate:
    """One backend of the route as the selector would see it."""

    index: int
    key: str
    weight: int
    state: str
    eligible: bool
    description: str | None
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Pick:
    """The backend the balancer would choose: its pool, index in that pool and key."""

    pool: str
    index: int
    key: str
    note: str


@dataclass(frozen=True, slots=True)
class AuthPlan:
    """Whether the route needs a JWT and what the verifier says about the one given."""

    required: bool
    outcome: str
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimitPlan:
    """The policy that applies and the counters this request would be charged to."""

    description: str
    scope: str
    keys: tuple[LimitKey, ...]
    capacity: int
    window_type: str
    window_duration_s: int
    refill_per_second: float | None


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """The route's retry policy, its schedule, and whether it applies to this request."""

    attempts: int
    schedule: tuple[RetryStep, ...]
    retry_on_status_codes: tuple[int, ...]
    retry_on_connection_error: bool
    budget_percent: float
    min_retries_per_second: float
    max_replay_bytes: int
    retry_non_idempotent: bool
    applies: bool
    note: str


@dataclass(frozen=True, slots=True)
class BreakerPlan:
    """The breaker thresholds guarding each backend of the route."""

    failure_threshold: int
    success_threshold: int
    reset_timeout_s: float
    half_open_max_calls: int
    failure_status_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TimeoutPlan:
    """Per-try timeout, total deadline (None: no deadline) and connect timeout, in ms."""

    timeout_ms: int
    deadline_ms: int | None
    connect_timeout_ms: int


@dataclass(frozen=True, slots=True)
class RequestTransformPlan:
    """The upstream path, query and headers before and after the request transformation."""

    before: RequestParts
    after: RequestParts


@dataclass(frozen=True, slots=True)
class StatusMapping:
    """One ``status_code_mappings`` entry (``from_`` is ``from`` in the JSON, as in the config)."""

    from_: int
    to: int
    condition: str | None


@dataclass(frozen=True, slots=True)
class HeaderOp:
    """One header operation of a response transformation."""

    action: str
    name: str
    value: str | None
    pattern: str | None
    replacement: str | None


@dataclass(frozen=True, slots=True)
class ResponseTransformPlan:
    """What the response transformation would change."""

    status_code_mappings: tuple[StatusMapping, ...]
    headers: tuple[HeaderOp, ...]


@dataclass(frozen=True, slots=True)
class AiPlan:
    """The route's ``ai_policy``, with the provider and model it resolves to."""

    enabled: bool
    strategy: str
    model: str | None
    provider: str
    mode: str
    timeout_ms: int
    cache_ttl_s: float
    max_concurrent_calls: int
    fallback_backend_index: int | None
    note: str


@dataclass(frozen=True, slots=True)
class DryRun:
    """Everything the gateway would decide about one request; see the module docstring."""

    method: str
    path: str
    query: str
    host: str | None
    client_ip: str
    outcome: str
    status: int | None
    message: str
    route_id: str | None = None
    external_path: str | None = None
    internal_path: str | None = None
    protocol: str | None = None
    methods: tuple[str, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)
    upstream_path: str | None = None
    upstream_url: str | None = None
    allowed_methods: tuple[str, ...] = ()
    load_balancing_strategy: str | None = None
    candidates: tuple[Candidate, ...] = ()
    fallback: tuple[Candidate, ...] = ()
    pick: Pick | None = None
    auth: AuthPlan = AuthPlan(required=False, outcome="not required")
    rate_limit: RateLimitPlan | None = None
    retry: RetryPlan | None = None
    circuit_breaker: BreakerPlan | None = None
    timeouts: TimeoutPlan | None = None
    request_transform: RequestTransformPlan | None = None
    response_transform: ResponseTransformPlan | None = None
    ai_policy: AiPlan | None = None

    @property
    def routable(self) -> bool:
        """Whether the gateway would accept the request (forward it, or answer a preflight)."""
        return self.outcome in ("routable", "preflight")

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON document of ``kairos route-test --json`` (keys in the docstring)."""
        document: dict[str, Any] = _plain(self)
        return document


def plan_request(
    state: RuntimeState,
    method: str,
    path_with_query: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    client_ip: str = "127.0.0.1",
    token: str | None = None,
    body: bytes | None = None,
    host: str | None = None,
    backend_states: Mapping[str, str] | None = None,
) -> DryRun:
    """Plan ``method path_with_query`` against ``state`` without sending anything."""
    path, _, query = path_with_query.partition("?")
    request_host = host if host is not None else header(headers, "host")
    base = DryRun(
        method=method,
        path=path,
        query=query,
        host=request_host,
        client_ip=client_ip,
        outcome="routable",
        status=None,
        message="",
    )

    bad_header = _bad_header(headers)
    if bad_header is not None:
        return _reject(base, "bad_request", bad_header)
    max_body = state.config.server.max_body_bytes
    body_bytes = _declared_body_bytes(body, headers)
    if body_bytes is not None and body_bytes > max_body:
        return _reject(
            base, "payload_too_large", f"body of {body_bytes} bytes exceeds {max_body} bytes"
        )

    lookup_method = method
    preflight = _is_preflight(state, method, headers)
    if preflight:
        lookup_method = header(headers, "access-control-request-method") or method
    result = state.table.lookup(lookup_method, path, request_host)
    if isinstance(result, NotFound):
        return _reject(base, "route_not_found", f"no route matches {path}")
    if isinstance(result, BadPath):
        return _reject(base, "bad_request", f"bad path: {result.reason}")
    if isinstance(result, MethodNotAllowed):
        rejected = _reject(
            base,
            "method_not_allowed",
            f"{lookup_method} is not allowed on {path}; allowed: {', '.join(result.allowed)}",
        )
        return replace(rejected, allowed_methods=result.allowed)

    plan = _plan_route(state, base, result, headers, token, body, backend_states or {})
    if preflight:
        return replace(
            plan,
            outcome="preflight",
            status=204,
            message=f"CORS preflight for {lookup_method} {path}: answered by the gateway",
        )
    return plan


def _plan_route(
    state: RuntimeState,
    base: DryRun,
    match: RouteMatch[CompiledRoute],
    headers: Sequence[tuple[str, str]],
    token: str | None,
    body: bytes | None,
    backend_states: Mapping[str, str],
) -> DryRun:
    route = match.spec.payload
    strategy = route.router.load_balancing_strategy
    candidates = _candidates(route.backends, backend_states)
    fallback = _candidates(route.fallback, backend_states)
    pick = _pick(state, strategy, "backends", route.backends, candidates, base.client_ip)
    if pick is None:
        pick = _pick(state, strategy, "fallback", route.fallback, fallback, base.client_ip)

    auth, identity = _authenticate(state, route, headers, token)
    forwarded = without(strip_hop_by_hop(headers), *FORWARDED_HEADERS)
    before = RequestParts(match.upstream_path, base.query, tuple(forwarded))
    after = route.request_transform.apply(before) if route.request_transform else before
    upstream_url = None
    if pick is not None:
        upstream_url = pick.key + after.path + (f"?{after.query}" if after.query else "")

    plan = replace(
        base,
        route_id=route.route_id,
        external_path=route.router.external_path,
        internal_path=route.router.internal_path,
        protocol=route.protocol,
        methods=route.router.methods,
        params=dict(match.params),
        upstream_path=match.upstream_path,
        upstream_url=upstream_url,
        load_balancing_strategy=strategy,
        candidates=candidates,
        fallback=fallback,
        pick=pick,
        auth=auth,
        rate_limit=_rate_limit(route, base.client_ip, identity),
        retry=_retry(route.retry, base.method, headers, body),
        circuit_breaker=BreakerPlan(
            failure_threshold=route.breaker.failure_threshold,
            success_threshold=route.breaker.success_threshold,
            reset_timeout_s=route.breaker.reset_timeout_s,
            half_open_max_calls=route.breaker.half_open_max_calls,
            failure_status_codes=route.breaker.failure_status_codes,
        ),
        timeouts=TimeoutPlan(
            timeout_ms=route.timeout_ms,
            deadline_ms=route.deadline_ms,
            connect_timeout_ms=state.config.server.connect_timeout_ms,
        ),
        request_transform=(
            RequestTransformPlan(before, after) if route.request_transform else None
        ),
        response_transform=_response_transform(route),
        ai_policy=_ai(state, route),
    )

    if auth.required and identity is None:
        reason = auth.outcome
        if reason == "no token":
            reason = "no token (send Authorization: Bearer <JWT>)"
        return _reject(plan, "authentication_error", f"authentication required: {reason}")
    if pick is None:
        if candidates and all(_normalise(c.state) in ("open", "forced_open") for c in candidates):
            return _reject(plan, "circuit_open", "every backend's circuit breaker is open")
        return _reject(plan, "no_healthy_backend", "no backend of the route is eligible")
    return replace(
        plan,
        message=f"{base.method} {base.path} → route {route.route_id!r} → {upstream_url}",
    )


def _reject(plan: DryRun, outcome: str, message: str) -> DryRun:
    return replace(plan, outcome=outcome, status=STATUS[outcome], message=message)


def _bad_header(headers: Sequence[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if not HEADER_NAME.fullmatch(name):
            return f"invalid header name {name!r}"
        if any(char in value for char in "\r\n\0"):
            return f"header {name!r} value contains CR, LF or NUL"
    return None


def _declared_body_bytes(body: bytes | None, headers: Sequence[tuple[str, str]]) -> int | None:
    if body is not None:
        return len(body)
    length = header(headers, "content-length")
    return int(length) if length is not None and length.isdigit() else None


def _is_preflight(state: RuntimeState, method: str, headers: Sequence[tuple[str, str]]) -> bool:
    return (
        state.cors is not None
        and method == "OPTIONS"
        and header(headers, "origin") is not None
        and header(headers, "access-control-request-method") is not None
    )


def _normalise(backend_state: str) -> str:
    return backend_state.strip().lower().replace("-", "_").replace(" ", "_")


def _candidates(
    backends: Sequence[Backend], backend_states: Mapping[str, str]
) -> tuple[Candidate, ...]:
    out: list[Candidate] = []
    for index, backend in enumerate(backends):
        backend_state = backend_states.get(backend.key, "closed")
        out.append(
            Candidate(
                index=index,
                key=backend.key,
                weight=backend.weight,
                state=backend_state,
                eligible=_normalise(backend_state) not in INELIGIBLE_STATES,
                description=backend.description,
                tags=backend.tags,
            )
        )
    return tuple(out)


def _pick(
    state: RuntimeState,
    strategy: str,
    pool: str,
    backends: Sequence[Backend],
    candidates: Sequence[Candidate],
    client_ip: str,
) -> Pick | None:
    eligible = [c.index for c in candidates if c.eligible]
    if not eligible:
        return None
    refs = [BackendRef(key=b.key, weight=max(b.weight, 1)) for b in backends]
    # A fresh balancer: the dry run must not advance the route's shared rotation.
    balancer = make_balancer(strategy, refs, in_flight=state.in_flight, seed=0)
    index = balancer.pick(eligible, client_key=client_ip)
    return Pick(pool=pool, index=index, key=backends[index].key, note=_PICK_NOTES[strategy])


def _authenticate(
    state: RuntimeState,
    route: CompiledRoute,
    headers: Sequence[tuple[str, str]],
    token: str | None,
) -> tuple[AuthPlan, Identity | None]:
    if not route.auth_required:
        return AuthPlan(required=False, outcome="not required"), None
    if state.jwt is None:  # the config checker refuses this; kept so a bad state cannot pass
        return AuthPlan(required=True, outcome="no 'jwt' block configured"), None
    authorization = header(headers, "authorization")
    try:
        if token is not None:
            identity = state.jwt.verify(token)
        elif authorization is not None:
            identity = state.jwt.verify_header(authorization)
        else:
            return AuthPlan(required=True, outcome="no token"), None
    except AuthError as exc:
        return AuthPlan(required=True, outcome=exc.reason), None
    who = f"sub={identity.subject}" if identity.subject is not None else "no sub claim"
    return AuthPlan(True, f"ok ({who})", identity.subject), identity


def _rate_limit(
    route: CompiledRoute, client_ip: str, identity: Identity | None
) -> RateLimitPlan | None:
    policy = route.rate_limit
    if policy is None:
        return None
    keys = limit_keys(
        policy,
        route_id=route.route_id,
        client_ip=client_ip,
        user=identity.subject if identity is not None else None,
        route_scoped=route.rate_limit_route_scoped,
    )
    return RateLimitPlan(
        description=describe(policy),
        scope=f"route={route.route_id}" if route.rate_limit_route_scoped else "global",
        keys=keys,
        capacity=capacity(policy),
        window_type=policy.window_type,
        window_duration_s=policy.window_duration,
        refill_per_second=(
            refill_per_second(policy) if policy.window_type == "TokenBucket" else None
        ),
    )


def _retry(
    policy: RetryConfig | None,
    method: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | None,
) -> RetryPlan | None:
    if policy is None:
        return None
    applies = policy.max_retries > 0
    if not applies:
        note = "max_retries is 0: one attempt"
    elif body is not None and len(body) > policy.max_replay_bytes:
        applies = False
        note = (
            f"body of {len(body)} bytes exceeds max_replay_bytes ({policy.max_replay_bytes}): "
            "sent once, not retried"
        )
    elif method not in NON_IDEMPOTENT_METHODS:
        note = f"{method} is idempotent: retried on the listed outcomes"
    elif header(headers, "idempotency-key") is not None:
        note = f"{method} carries Idempotency-Key: retried on the listed outcomes"
    elif policy.retry_non_idempotent:
        note = f"{method} is retried because the route sets retry_non_idempotent"
    else:
        applies = False
        note = (
            f"{method} is not idempotent: retried only on connection errors before the request "
            "was sent (send Idempotency-Key, or set retry_non_idempotent)"
        )
    return RetryPlan(
        attempts=policy.max_retries + 1,
        schedule=tuple(retry_schedule(policy)),
        retry_on_status_codes=policy.retry_on_status_codes,
        retry_on_connection_error=policy.retry_on_connection_error,
        budget_percent=policy.budget_percent,
        min_retries_per_second=policy.min_retries_per_second,
        max_replay_bytes=policy.max_replay_bytes,
        retry_non_idempotent=policy.retry_non_idempotent,
        applies=applies,
        note=note,
    )


def _response_transform(route: CompiledRoute) -> ResponseTransformPlan | None:
    config = route.router.response_transformation
    if config is None or route.response_transform is None:
        return None
    return ResponseTransformPlan(
        status_code_mappings=tuple(
            StatusMapping(m.from_, m.to, m.condition) for m in config.status_code_mappings
        ),
        headers=tuple(
            HeaderOp(h.action, h.name, h.value, h.pattern, h.replacement) for h in config.headers
        ),
    )


def _ai(state: RuntimeState, route: CompiledRoute) -> AiPlan | None:
    policy = route.router.ai_policy
    if policy is None:
        return None
    ai = state.config.ai
    provider = policy.provider or (ai.provider if ai is not None else "heuristic")
    model = None
    if policy.strategy.kind == "content_analysis" and provider != "heuristic":
        model = policy.strategy.model or (ai.model if ai is not None else None)
    if not policy.enabled:
        note = "disabled: the balancing strategy picks"
    elif policy.mode == "shadow":
        note = "shadow: the selector decides and records, the balancing strategy routes"
    elif policy.mode == "background":
        note = "background: routed by the fallback, cached decisions serve later requests"
    else:
        note = "the selector decides at request time among eligible candidates (not previewed)"
    return AiPlan(
        enabled=policy.enabled,
        strategy=policy.strategy.kind,
        model=model,
        provider=provider,
        mode=policy.mode,
        timeout_ms=policy.timeout_ms,
        cache_ttl_s=policy.cache_ttl_s,
        max_concurrent_calls=policy.max_concurrent_calls,
        fallback_backend_index=policy.fallback_backend_index,
        note=note,
    )


def _plain(value: Any) -> Any:
    """Dataclasses → dicts (a trailing ``_`` dropped from field names), tuples → lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name.rstrip("_"): _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value
