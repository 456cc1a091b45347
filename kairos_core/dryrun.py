"""Dry run: what the gateway would do with one request, without sending any traffic.

:func:`plan_request` walks the steps of the request pipeline (DESIGN.md §2) over a compiled
:class:`~kairos_core.state.RuntimeState`, calling the functions the pipeline calls, and records
each decision. It holds no rule of its own; it only reads state and never changes it: the
backend pick uses a fresh balancer, so a dry run does not advance any route's rotation.
``kairos route-test`` prints the result; its ``--json`` output is :meth:`DryRun.to_dict`.

The steps and whose rule decides each (the first that rejects decides the outcome):

1. head: :func:`kairos_core.http.request_head_problem` (``bad_request``) on the headers as an
   HTTP/1.1 client sends them (a ``Host`` is added from ``host=`` when absent), then a declared
   ``Content-Length`` or the ``body=`` over ``server.max_body_bytes`` (``payload_too_large``);
2. route: the route table (``route_not_found``, ``method_not_allowed``, ``bad_request``); a CORS
   preflight is answered by the gateway (``preflight``, 204);
3. auth: :func:`kairos_core.auth.identify` (``authentication_error``); ``token=`` stands for
   ``Authorization: Bearer <token>``;
4. rate limit: the policy and the keys the request would be charged to
   (:func:`kairos_core.ratelimit.limit_keys`); no counter is read, so a dry run is never 429;
5. backend: :func:`kairos_core.selection.find_candidates` and :func:`~kairos_core.selection.pick`
   over ``states`` (default: every backend healthy and closed; ``kairos route-test --live`` and
   the admin API pass the gateway's live state), with the AI selector's offline pick first on AI
   routes (``circuit_open``, ``no_healthy_backend``);
6. retry: whether a retryable answer would be retried, by :func:`kairos_core.retry.replayable`
   and :func:`~kairos_core.retry.may_resend`.

Once a route matched, every section is filled even when the request is rejected, so the report
shows the route's policies. ``to_dict()`` (the ``route-test --json`` document) holds every field
of :class:`DryRun`, nested dataclasses as objects, tuples as lists, a trailing ``_`` dropped from
field names (``from_`` is ``from``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kairos_core.ai.prompt import InvalidAnswer
from kairos_core.ai.providers import LlmError
from kairos_core.ai.request import RequestSummary, summarize
from kairos_core.ai.selector import AiRoute
from kairos_core.auth import AuthError, Identity, identify
from kairos_core.balancing import BackendRef, make_balancer
from kairos_core.config.models import Backend, RetryConfig
from kairos_core.errors import STATUS, GatewayError
from kairos_core.http import (
    NON_IDEMPOTENT_METHODS,
    forwardable_headers,
    header,
    request_head_problem,
)
from kairos_core.ratelimit import LimitKey, capacity, describe, limit_keys, refill_per_second
from kairos_core.retry import RetryStep, may_resend, replayable, retry_schedule
from kairos_core.routing import BadPath, MethodNotAllowed, NotFound, RouteMatch
from kairos_core.selection import (
    AiChoice,
    BackendStates,
    Candidates,
    SnapshotStates,
    find_candidates,
    is_candidate,
    pick,
)
from kairos_core.serial import plain
from kairos_core.state import CompiledRoute, RuntimeState
from kairos_core.transform import RequestParts

__all__ = [
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
    "ask_live",
    "plan_request",
]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One backend of the route as selection sees it (``state``: ``unhealthy`` or the breaker's)."""

    index: int
    key: str
    weight: int
    state: str
    eligible: bool
    description: str | None
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Pick:
    """The backend the gateway would choose: its pool, index in that pool and key."""

    pool: str
    index: int
    key: str
    note: str


@dataclass(frozen=True, slots=True)
class AuthPlan:
    """Whether the route needs a JWT, whether the request passes, and what the verifier says."""

    required: bool
    outcome: str
    subject: str | None = None
    accepted: bool = True


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
    """The breaker policy in force for the route's backends (see ``note`` when it is another
    route's: one breaker per backend, with the policy of the first route naming it)."""

    failure_threshold: int
    success_threshold: int
    reset_timeout_s: float
    half_open_max_calls: int
    failure_status_codes: tuple[int, ...]
    from_route: str
    note: str


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
    """The route's selector: strategy, mode, the LLM it resolves to, and its offline pick.

    ``provider`` is ``heuristic`` when no LLM serves (``note`` says why). ``source`` and
    ``reason`` are the offline decision (the heuristic, or the local strategy); ``prompt_*`` is
    the exact prompt an LLM would get (``content_analysis`` only, when asked for); ``live_*`` is
    the LLM's answer to it and how long it took, or why there is none (:func:`ask_live`).
    """

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
    source: str | None = None
    reason: str | None = None
    pick_index: int | None = None
    prompt_system: str | None = None
    prompt_user: str | None = None
    live_index: int | None = None
    live_reason: str | None = None
    live_latency_ms: float | None = None
    live_error: str | None = None


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
        """The JSON document of ``kairos route-test --json``."""
        document: dict[str, Any] = plain(self)
        return document


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    host: str | None
    client_ip: str
    token: str | None
    body: bytes | None

    @property
    def authorization(self) -> str | None:
        if self.token is not None:
            return f"Bearer {self.token}"
        return header(self.headers, "authorization")


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
    states: BackendStates | None = None,
    prompt: bool = False,
) -> DryRun:
    """Plan ``method path_with_query`` against ``state`` without sending anything.

    ``states`` is the backend state to plan with (default: all healthy and closed); ``prompt``
    adds the exact LLM prompt of an AI route to the report.
    """
    path, _, query = path_with_query.partition("?")
    request_host = host if host is not None else header(headers, "host")
    request = _Request(method, path, query, headers, request_host, client_ip, token, body)
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
    sent = list(headers)
    if header(headers, "host") is None:
        sent.insert(0, ("Host", request_host or "localhost"))
    problem = request_head_problem(sent, "1.1")
    if problem is not None:
        return _reject(base, "bad_request", problem)
    max_body = state.config.server.max_body_bytes
    declared = _declared_bytes(request)
    if declared is not None and declared > max_body:
        return _reject(
            base, "payload_too_large", f"request body of {declared} bytes exceeds {max_body} bytes"
        )

    lookup_method = method
    preflight = _is_preflight(state, request)
    if preflight:
        lookup_method = header(headers, "access-control-request-method") or method
    result = state.table.lookup(lookup_method, path, request_host)
    if isinstance(result, NotFound):
        return _reject(base, "route_not_found", f"no route for {path}")
    if isinstance(result, BadPath):
        return _reject(base, "bad_request", f"malformed request path: {result.reason}")
    if isinstance(result, MethodNotAllowed):
        rejected = _reject(
            base,
            "method_not_allowed",
            f"method {lookup_method} not allowed; allowed: {', '.join(result.allowed)}",
        )
        return replace(rejected, allowed_methods=result.allowed)

    plan = _plan_route(state, base, result, request, states or SnapshotStates(), prompt)
    if preflight:
        return replace(
            plan,
            outcome="preflight",
            status=204,
            message=f"CORS preflight for {lookup_method} {path}: answered by the gateway",
        )
    return plan


async def ask_live(
    state: RuntimeState,
    plan: DryRun,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    states: BackendStates | None = None,
) -> DryRun:
    """``plan`` with its AI route's LLM asked, live, the prompt it shows (``route-test --ai``)."""
    route = state.routes.get(plan.route_id or "")
    ai = route.ai if route is not None else None
    if plan.ai_policy is None or route is None or ai is None or not ai.uses_llm:
        return plan
    states = states or SnapshotStates()
    found = find_candidates(route.backends, route.fallback, states)
    if isinstance(found, GatewayError) or found.pool != "backends":
        return replace(plan, ai_policy=replace(plan.ai_policy, live_error=_found_error(found)))
    request = _Request(
        plan.method, plan.path, plan.query, headers, plan.host, plan.client_ip, None, body
    )
    summary = _ai_summary(route.route_id, ai, request)
    started = time.perf_counter()
    try:
        answer = await state.shared.ai.ask(ai, summary, found, states)
    except (LlmError, InvalidAnswer) as exc:
        live = replace(plan.ai_policy, live_error=str(exc))
    else:
        live = replace(plan.ai_policy, live_index=answer.index, live_reason=answer.reason)
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    return replace(plan, ai_policy=replace(live, live_latency_ms=elapsed_ms))


def _found_error(found: Candidates | GatewayError) -> str:
    if isinstance(found, GatewayError):
        return f"no candidate to ask about: {found.error_type}"
    return "the fallback pool serves: the selector is not asked"


def _plan_route(
    state: RuntimeState,
    base: DryRun,
    match: RouteMatch[CompiledRoute],
    request: _Request,
    states: BackendStates,
    prompt: bool,
) -> DryRun:
    route = match.spec.payload
    strategy = route.router.load_balancing_strategy
    auth, identity, auth_error = _authenticate(state, route, request)
    forwarded = forwardable_headers(
        request.headers, keep_underscores=state.config.server.underscores_in_headers
    )
    before = RequestParts(match.upstream_path, base.query, tuple(forwarded))
    after = route.request_transform.apply(before) if route.request_transform else before
    found = find_candidates(route.backends, route.fallback, states)
    ai_plan, choice = _ai(state, route, request, found, states, prompt)
    chosen = None if isinstance(found, GatewayError) else _pick(route, found, request, choice)
    upstream_url = None
    if chosen is not None:
        upstream_url = chosen.key + after.path + (f"?{after.query}" if after.query else "")

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
        candidates=_candidates(route.backends, states),
        fallback=_candidates(route.fallback, states),
        pick=chosen,
        auth=auth,
        rate_limit=_rate_limit(route, base.client_ip, identity),
        retry=_retry(route.retry, request),
        circuit_breaker=_breaker(state, route),
        timeouts=TimeoutPlan(
            timeout_ms=route.timeout_ms,
            deadline_ms=route.deadline_ms,
            connect_timeout_ms=state.config.server.connect_timeout_ms,
        ),
        request_transform=(
            RequestTransformPlan(before, after) if route.request_transform else None
        ),
        response_transform=_response_transform(route),
        ai_policy=ai_plan,
    )
    if auth_error is not None:
        return _reject(plan, "authentication_error", auth_error)
    if isinstance(found, GatewayError):
        return _reject(plan, found.error_type, found.message)
    return replace(
        plan,
        message=f"{base.method} {base.path} → route {route.route_id!r} → {upstream_url}",
    )


def _reject(plan: DryRun, outcome: str, message: str) -> DryRun:
    return replace(plan, outcome=outcome, status=STATUS[outcome], message=message)


def _declared_bytes(request: _Request) -> int | None:
    if request.body is not None:
        return len(request.body)
    length = header(request.headers, "content-length")
    return int(length) if length is not None else None


def _is_preflight(state: RuntimeState, request: _Request) -> bool:
    return (
        state.cors is not None
        and request.method == "OPTIONS"
        and header(request.headers, "origin") is not None
        and header(request.headers, "access-control-request-method") is not None
    )


def _candidates(backends: Sequence[Backend], states: BackendStates) -> tuple[Candidate, ...]:
    return tuple(
        Candidate(
            index=index,
            key=backend.key,
            weight=backend.weight,
            state="unhealthy" if not states.healthy(backend.key) else states.circuit(backend.key),
            eligible=is_candidate(states, backend.key),
            description=backend.description,
            tags=backend.tags,
        )
        for index, backend in enumerate(backends)
    )


def _pick(
    route: CompiledRoute, found: Candidates, request: _Request, choice: AiChoice | None
) -> Pick:
    strategy = route.router.load_balancing_strategy if found.pool == "backends" else "round_robin"
    refs = [BackendRef(key=b.key, weight=max(b.weight, 1)) for b in found.backends]
    # A fresh balancer: the dry run must not advance the route's shared rotation.
    balancer = make_balancer(strategy, refs, seed=0)
    index = pick(found, balancer, client_key=request.client_ip, choice=choice)
    note = balancer.preview_note
    if choice is not None and (choice.index == index or choice.among is not None):
        note = "the AI selector's offline pick (see ai_policy)"
    return Pick(pool=found.pool, index=index, key=found.backends[index].key, note=note)


def _authenticate(
    state: RuntimeState, route: CompiledRoute, request: _Request
) -> tuple[AuthPlan, Identity | None, str | None]:
    """The plan, the identity, and the 401 message when the gateway would refuse."""
    required = route.auth_required
    authorization = request.authorization
    try:
        identity = identify(state.jwt, authorization, required=required, wanted=route.keys_on_user)
    except AuthError as exc:
        reason = exc.reason
        if authorization is None:
            reason = f"{reason} (send Authorization: Bearer <JWT>)"
        plan = AuthPlan(True, exc.reason, accepted=False)
        return plan, None, f"authentication required: {reason}"
    if identity is None:  # identify() returns an identity or raises when the route requires one
        outcome = "not required"
        if authorization is not None and route.keys_on_user:
            outcome = "optional token not valid: counted by IP"
        return AuthPlan(False, outcome), None, None
    who = f"sub={identity.subject}" if identity.subject is not None else "no sub claim"
    return AuthPlan(required, f"ok ({who})", identity.subject), identity, None


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


def _retry(policy: RetryConfig | None, request: _Request) -> RetryPlan | None:
    if policy is None:
        return None
    chunked = "chunked" in (header(request.headers, "transfer-encoding") or "").lower()
    length = _declared_bytes(request)
    method = request.method
    idempotency_key = header(request.headers, "idempotency-key") is not None
    applies = False
    if policy.max_retries == 0:
        note = "max_retries is 0: one attempt"
    elif not replayable(chunked=chunked, length=length, policy=policy):
        what = "a chunked body" if chunked else f"a body of {length} bytes"
        note = (
            f"{what} cannot be replayed (max_replay_bytes {policy.max_replay_bytes}): "
            "sent once, not retried"
        )
    elif may_resend(method, idempotency_key=idempotency_key, policy=policy):
        applies = True
        if method not in NON_IDEMPOTENT_METHODS:
            note = f"{method} is idempotent: retried on the listed outcomes"
        elif idempotency_key:
            note = f"{method} carries Idempotency-Key: retried on the listed outcomes"
        else:
            note = f"{method} is retried because the route sets retry_non_idempotent"
    else:
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


def _breaker(state: RuntimeState, route: CompiledRoute) -> BreakerPlan:
    """The policy in force: the first route naming the route's first backend decides it."""
    first = (*route.backends, *route.fallback)[0].key
    owner = state.breaker_owners.get(first, route.route_id)
    policy = state.routes[owner].breaker if owner in state.routes else route.breaker
    note = "this route's policy"
    if owner != route.route_id:
        note = (
            f"backend {first} is guarded by the policy of route {owner!r} (the first route "
            "naming it); this route's circuit_breaker does not apply to it"
        )
        if route.router.circuit_breaker is None:
            note = f"backend {first} is guarded by the policy of route {owner!r}"
    return BreakerPlan(
        failure_threshold=policy.failure_threshold,
        success_threshold=policy.success_threshold,
        reset_timeout_s=policy.reset_timeout_s,
        half_open_max_calls=policy.half_open_max_calls,
        failure_status_codes=policy.failure_status_codes,
        from_route=owner,
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


def _ai(
    state: RuntimeState,
    route: CompiledRoute,
    request: _Request,
    found: Candidates | GatewayError,
    states: BackendStates,
    prompt: bool,
) -> tuple[AiPlan | None, AiChoice | None]:
    """The AI plan, and the offline choice the pick starts from (None: the balancer picks)."""
    policy = route.router.ai_policy
    if policy is None:
        return None, None
    ai: AiRoute | None = route.ai
    plan = AiPlan(
        enabled=policy.enabled,
        strategy=policy.strategy.kind,
        model=ai.resolved.model if ai is not None else None,
        provider=ai.resolved.provider if ai is not None else "heuristic",
        mode=policy.mode,
        timeout_ms=policy.timeout_ms,
        cache_ttl_s=policy.cache_ttl_s,
        max_concurrent_calls=policy.max_concurrent_calls,
        fallback_backend_index=policy.fallback_backend_index,
        note=_ai_note(ai),
    )
    if ai is None or isinstance(found, GatewayError) or found.pool != "backends":
        return plan, None
    summary = _ai_summary(route.route_id, ai, request)
    preview = state.shared.ai.preview(ai, summary, found, states)
    plan = replace(
        plan,
        source=preview.source,
        reason=preview.reason,
        pick_index=preview.choice.index if preview.choice is not None else None,
        prompt_system=preview.prompt.system if prompt and preview.prompt else None,
        prompt_user=preview.prompt.user if prompt and preview.prompt else None,
    )
    return plan, None if ai.mode == "shadow" else preview.choice


def _ai_summary(route_id: str, ai: AiRoute, request: _Request) -> RequestSummary:
    return summarize(
        route_id,
        request.method,
        request.path,
        request.query,
        request.headers,
        request.body if ai.reads_body else None,
        declared_bytes=_declared_bytes(request) or 0,
    )


def _ai_note(ai: AiRoute | None) -> str:
    if ai is None:
        return "disabled: the balancing strategy picks"
    if ai.strategy != "content_analysis":
        note = f"{ai.strategy} decides locally from recent latency and errors"
    elif ai.uses_llm:
        note = (
            f"asks {ai.resolved.note}; the pick shown is the offline heuristic's, "
            "its first fallback (route-test --ai asks the LLM)"
        )
    else:
        note = f"no LLM: the offline heuristic selects ({ai.resolved.note})"
    if ai.mode == "shadow":
        note += "; shadow mode: decisions are recorded, the balancing strategy routes"
    elif ai.mode == "background":
        note += "; background mode: cached LLM answers route, else the fallback order"
    return note
