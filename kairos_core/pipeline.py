"""The request pipeline of DESIGN.md §2, one step per method, read top to bottom in ``handle``.

1. accept: request id, client IP (:mod:`~kairos_core.forwarding`); the head's header rules
   (:func:`~kairos_core.http.request_head_problem`, 400) and a declared body over the cap (413)
2. route: method + path (+ host) → route, params, upstream path (404 / 405 / 400)
3. CORS: answer preflight
4. authenticate: JWT when the route requires it (401); an optional token when the route's rate
   limit counts per user (:func:`~kairos_core.auth.identify`)
5. rate limit: the route's policy, or the global one (429)
6. select backend: the candidates and the pick of :mod:`~kairos_core.selection`, with the AI
   selector first on routes with an ``ai_policy`` (:mod:`~kairos_core.ai.selector`)
7. transform request: headers (:func:`~kairos_core.http.forwardable_headers`, then the route's
   transformation, then the addressing headers), path, query
8. forward: an attempt through the chosen backend's breaker, bounded by the per-try timeout and
   the request deadline; on a retryable outcome (:func:`~kairos_core.retry.classify`) retries
   go back to step 6, preferring backends not tried yet, within attempts, budget and deadline.
   The body is read once or streamed (:mod:`~kairos_core.body`)
9. transform response, add security headers, stream the body back
10. record: metrics and the access log once the body is done; the AI decision joined to its
    outcome

Whose fault an attempt's end is decides what its breaker hears: an upstream error, a per-try
timeout or a deadline reached while waiting on the backend is the backend's (failure); the
client going away, a body over the cap, or a deadline or body gap reached while waiting for the
client's body is the client's (nothing reported; 408 ``client_timeout``, 413 or 499). A small
response body is read inside its attempt, so a backend that resets in the middle of one has
failed that attempt; a streamed body that breaks later is logged (``upstream_body``) after the
head was already counted a success.

The pipeline is pinned to the :class:`RuntimeState` current when the request arrived; a reload
swaps the state for later requests only. Nothing here knows the web framework.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from kairos_core.ai.decisions import Decision
from kairos_core.ai.request import RequestSummary, summarize
from kairos_core.auth import AuthError, Identity, identify
from kairos_core.body import RequestBody
from kairos_core.breaker import Trial
from kairos_core.config.models import Backend, RetryConfig
from kairos_core.errors import ClientBodyError, ErrorType, GatewayError
from kairos_core.forwarding import client_ip, forwarded_headers
from kairos_core.http import (
    SECURITY_HEADERS,
    HeaderPairs,
    Headers,
    ProxyRequest,
    ProxyResponse,
    accepted_request_id,
    forwardable_headers,
    header,
    request_head_problem,
    strip_hop_by_hop,
)
from kairos_core.metrics import AttemptOutcome, AttemptSample, RequestSample
from kairos_core.ratelimit import limit_keys
from kairos_core.retry import (
    NO_RETRY,
    RetryDecision,
    classify,
    may_resend,
    replayable,
    retry_after_first,
)
from kairos_core.routing import BadPath, MethodNotAllowed, NotFound, RouteMatch
from kairos_core.selection import AiChoice, Candidates, find_candidates, no_candidate_error, pick
from kairos_core.state import CompiledRoute, RuntimeState
from kairos_core.transform import RequestParts, ResponseParts
from kairos_core.upstream import UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse

log = logging.getLogger("kairos.pipeline")
_E = TypeVar("_E", bound=BaseException)
_ID_PREFIX = os.urandom(11).hex()
_ID_COUNTER = itertools.count(1)
"""Generated request ids: a random per-process prefix and a counter (32 hex characters, the
length of a UUID's hex form; no syscall per request)."""


def _new_id_prefix() -> None:
    """A forked worker (``server.workers > 1``) draws its own prefix: the parent's would repeat
    ids."""
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = os.urandom(11).hex()
    _ID_COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_new_id_prefix)
BUFFER_BODY_BYTES = 64 * 1024
AI_BODY_BYTES = 1024 * 1024
"""An AI route reads a declared body up to this size before choosing (to show it to the LLM)."""


@dataclass(slots=True)
class RequestRecord:
    """What the access log and metrics learn about one request."""

    request_id: str
    client_ip: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    route_id: str | None = None
    backend: str | None = None
    status: int = 0
    error_type: str | None = None
    retries: list[str] = field(default_factory=list)
    retry_budget_exhausted: bool = False
    rate_limited: bool = False
    attempt_log: list[AttemptSample] = field(default_factory=list)
    waited_s: float = 0.0
    head_s: float = 0.0
    bytes_sent: int = 0
    duration_s: float = 0.0

    @property
    def attempts(self) -> int:
        return len(self.attempt_log)

    @property
    def upstream_s(self) -> float | None:
        """Time spent in attempts (to each response head), or None without one."""
        if not self.attempt_log:
            return None
        return sum(attempt.seconds for attempt in self.attempt_log)

    def note_attempt(self, backend: str, outcome: AttemptOutcome, started: float) -> float:
        elapsed = time.perf_counter() - started
        self.attempt_log.append(AttemptSample(backend, outcome, elapsed))
        return elapsed

    def sample(self) -> RequestSample:
        """The request as metrics see it; overhead excludes upstream, backoff and client time."""
        return RequestSample(
            route=self.route_id,
            method=self.method,
            status=self.status,
            duration_s=self.duration_s,
            overhead_s=self.head_s - (self.upstream_s or 0.0) - self.waited_s,
            attempts=tuple(self.attempt_log),
            retries=tuple(self.retries),
            retry_budget_exhausted=self.retry_budget_exhausted,
            rate_limited=self.rate_limited,
        )


@dataclass(slots=True)
class _Context:
    request: ProxyRequest
    state: RuntimeState
    record: RequestRecord
    host: str | None
    deadline: float | None = None
    identity: Identity | None = None
    cors_headers: Headers = field(default_factory=list)
    limit_headers: Headers = field(default_factory=list)
    decision: Decision | None = None
    summary: RequestSummary | None = None


RecordSink = Callable[[RequestRecord], None]


class Pipeline:
    """Runs every proxied request through the steps above."""

    def __init__(
        self, state: RuntimeState, upstream: UpstreamClient, on_record: RecordSink | None = None
    ) -> None:
        self._state = state
        self._upstream = upstream
        self._on_record = on_record
        self._rng = random.Random()

    @property
    def state(self) -> RuntimeState:
        return self._state

    def swap(self, state: RuntimeState) -> None:
        """Atomically make ``state`` current for requests that arrive from now on."""
        self._state = state

    async def handle(self, request: ProxyRequest) -> ProxyResponse:
        ctx = self._accept(request)
        try:
            self._check_head(ctx)
            match = self._route(ctx)
            preflight = self._cors(ctx)
            if preflight is not None:
                return self._finish(ctx, preflight)
            route = match.spec.payload
            self._authenticate(ctx, route)
            if route.rate_limit is not None:
                await self._rate_limit(ctx, route)
            if route.protocol == "websocket":
                _require_upgrade(ctx)
                return self._finish(ctx, await self._open_websocket(ctx, route, match))
            response = await self._forward(ctx, route, match)
            return self._finish(ctx, self._transform_response(ctx, route, response))
        except GatewayError as error:
            return self._finish(ctx, self._error_response(ctx, error))
        except asyncio.CancelledError:
            self._record_abandoned(ctx)
            raise

    def reject(self, request: ProxyRequest, error_type: ErrorType, message: str) -> ProxyResponse:
        """Answer a request the server refused before the pipeline could run (bad method, bad
        framing) with the pipeline's error shape; a 405 lists what the path allows."""
        ctx = self._accept(request)
        headers: tuple[tuple[str, str], ...] = ()
        if error_type == "method_not_allowed":
            result = ctx.state.table.lookup(request.method, request.raw_path, ctx.host)
            if isinstance(result, MethodNotAllowed):
                headers = (("Allow", ", ".join(result.allowed)),)
                message = f"method {request.method} not allowed; allowed: {headers[0][1]}"
            elif isinstance(result, NotFound):
                error_type, message = "route_not_found", f"no route for {request.raw_path}"
        return self._finish(
            ctx, self._error_response(ctx, GatewayError(error_type, message, headers))
        )

    # --- steps ----------------------------------------------------------------------------------

    def _accept(self, request: ProxyRequest) -> _Context:
        state = self._state
        record = RequestRecord(
            request_id=accepted_request_id(request.header("x-request-id"))
            or f"{_ID_PREFIX}{next(_ID_COUNTER):010x}",
            client_ip=client_ip(
                request.peer_ip, request.header("x-forwarded-for"), state.trusted_proxies
            ),
            method=request.method,
            path=request.raw_path,
        )
        return _Context(request, state, record, request.header("host"))

    def _check_head(self, ctx: _Context) -> None:
        """The header rules of :mod:`kairos_core.http`, then a declared body over the cap."""
        problem = request_head_problem(ctx.request.headers, ctx.request.http_version)
        if problem is not None:
            raise GatewayError("bad_request", problem)
        length = ctx.request.header("content-length")
        limit = ctx.state.config.server.max_body_bytes
        if length is not None and int(length) > limit:
            raise GatewayError(
                "payload_too_large", f"request body of {length} bytes exceeds {limit} bytes"
            )

    def _route(self, ctx: _Context) -> RouteMatch[CompiledRoute]:
        method = ctx.request.method
        if _is_preflight(ctx):
            method = ctx.request.header("access-control-request-method") or method
        result = ctx.state.table.lookup(method, ctx.request.raw_path, ctx.host)
        if isinstance(result, RouteMatch):
            ctx.record.route_id = result.spec.route_id
            ctx.deadline = _deadline(result.spec.payload)
            return result
        if isinstance(result, MethodNotAllowed):
            raise GatewayError(
                "method_not_allowed",
                f"method {ctx.request.method} not allowed; allowed: {', '.join(result.allowed)}",
                (("Allow", ", ".join(result.allowed)),),
            )
        if isinstance(result, BadPath):
            raise GatewayError("bad_request", f"malformed request path: {result.reason}")
        assert isinstance(result, NotFound)
        raise GatewayError("route_not_found", f"no route for {ctx.request.raw_path}")

    def _cors(self, ctx: _Context) -> ProxyResponse | None:
        cors = ctx.state.cors
        origin = ctx.request.header("origin")
        if cors is None or origin is None:
            return None
        if _is_preflight(ctx):
            requested = ctx.request.header("access-control-request-method") or ""
            asked = ctx.request.header("access-control-request-headers")
            return ProxyResponse(204, cors.preflight(origin, requested, asked))
        ctx.cors_headers = cors.actual(origin)
        return None

    def _authenticate(self, ctx: _Context, route: CompiledRoute) -> None:
        try:
            ctx.identity = identify(
                ctx.state.jwt,
                ctx.request.header("authorization"),
                required=route.auth_required,
                wanted=route.keys_on_user,
            )
        except AuthError as exc:
            raise GatewayError(
                "authentication_error",
                exc.reason,
                (("WWW-Authenticate", 'Bearer error="invalid_token"'),),
            ) from exc

    async def _rate_limit(self, ctx: _Context, route: CompiledRoute) -> None:
        policy = route.rate_limit
        if policy is None:
            return
        keys = limit_keys(
            policy,
            route_id=route.route_id,
            client_ip=ctx.record.client_ip,
            user=ctx.identity.subject if ctx.identity else None,
            route_scoped=route.rate_limit_route_scoped,
        )
        decision = await ctx.state.shared.limiter.check(policy, keys)
        ctx.limit_headers = decision.headers()
        if not decision.allowed:
            ctx.record.rate_limited = True
            raise GatewayError("rate_limit_error", "rate limit exceeded; retry later")

    async def _forward(
        self, ctx: _Context, route: CompiledRoute, match: RouteMatch[CompiledRoute]
    ) -> UpstreamResponse:
        """Attempt 1 outside any retry machinery; retries only after a retryable outcome."""
        body = (
            RequestBody.empty() if ctx.request.body is None else await self._read_body(ctx, route)
        )
        choice = None
        if route.ai is not None:
            ctx.summary = _summary(ctx, route, body)
            choice = await self._ai_choice(ctx, route)
        tried: set[str] = set()
        outcome = await self._attempt(ctx, route, match, body, tried, choice)
        policy = route.retry
        if policy is None:
            return outcome.result()
        budget = ctx.state.shared.budget(route.route_id)
        budget.record_request()
        if not body.replayable:
            return outcome.result()
        resend = may_resend(
            ctx.request.method,
            idempotency_key=ctx.request.header("idempotency-key") is not None,
            policy=policy,
        )

        async def attempt() -> _Outcome:
            return await self._attempt(ctx, route, match, body, tried)

        def note_retry(reason: str, wait_s: float) -> None:
            ctx.record.retries.append(reason)
            ctx.record.waited_s += wait_s

        def note_budget_exhausted() -> None:
            ctx.record.retry_budget_exhausted = True

        outcome = await retry_after_first(
            outcome,
            attempt,
            policy=policy,
            classify=lambda o: o.classify(policy, resend),
            budget=budget,
            deadline=ctx.deadline,
            discard=_Outcome.discard,
            rng=self._rng,
            on_retry=note_retry,
            on_budget_exhausted=note_budget_exhausted,
        )
        return outcome.result()

    async def _read_body(self, ctx: _Context, route: CompiledRoute) -> RequestBody:
        """Read once, or stream to one attempt (rules in :mod:`kairos_core.body`)."""
        request = ctx.request
        source = request.body
        length_header = request.header("content-length")
        chunked = "chunked" in (request.header("transfer-encoding") or "").lower()
        length = int(length_header) if length_header is not None else None
        if source is None or (not chunked and not length):
            return RequestBody.empty()
        limit = ctx.state.config.server.max_body_bytes
        policy = route.retry
        resendable = policy is not None and replayable(
            chunked=chunked, length=length, policy=policy
        )
        previewed = route.ai is not None and route.ai.reads_body
        if resendable or (previewed and length is not None and length <= AI_BODY_BYTES):
            body = await RequestBody.read(
                source, limit_bytes=limit, deadline=ctx.deadline, replayable=resendable
            )
            ctx.record.waited_s += body.client_wait_s
            return body
        return RequestBody.stream(source, limit_bytes=limit)

    async def _ai_choice(self, ctx: _Context, route: CompiledRoute) -> AiChoice | None:
        """Step 6's first half on AI routes: the selector's choice among the candidates."""
        ai = route.ai
        if ai is None or ai.mode == "shadow" or ctx.summary is None:
            return None
        shared = ctx.state.shared
        found = find_candidates(route.backends, route.fallback, shared)
        if isinstance(found, GatewayError) or found.pool != "backends":
            return None
        choice, ctx.decision = await shared.ai.choose(
            ai, ctx.summary, found, shared, ctx.record.request_id
        )
        return choice

    def _select(
        self,
        ctx: _Context,
        route: CompiledRoute,
        tried: set[str],
        choice: AiChoice | None,
    ) -> tuple[Backend, Trial]:
        """Step 6: the backend of this attempt and its breaker's admission."""
        shared = ctx.state.shared
        found = find_candidates(route.backends, route.fallback, shared)
        if isinstance(found, GatewayError):
            raise found
        index = pick(
            found,
            route.balancer_for(found.pool),
            tried=tried,
            client_key=ctx.record.client_ip,
            choice=choice,
        )
        backend = found.backends[index]
        breaker = shared.breakers.get(backend.key)
        trial = breaker.admit() if breaker is not None else None
        if trial is None:  # admits() said yes in this same tick; kept as a guard
            raise no_candidate_error((*route.backends, *route.fallback), shared)
        self._note_selection(ctx, route, found, index, tried)
        return backend, trial

    def _note_selection(
        self,
        ctx: _Context,
        route: CompiledRoute,
        found: Candidates,
        index: int,
        tried: set[str],
    ) -> None:
        """The first attempt's pick completes its AI decision (or feeds a shadow one)."""
        if tried or route.ai is None:
            return
        if ctx.decision is not None:
            ctx.decision.index = index
            ctx.decision.backend = found.backends[index].key
            return
        if route.ai.mode == "shadow" and found.pool == "backends" and ctx.summary is not None:
            shared = ctx.state.shared
            shared.ai.shadow(route.ai, ctx.summary, found, shared, ctx.record.request_id, index)

    def _upstream_request(
        self,
        ctx: _Context,
        route: CompiledRoute,
        match: RouteMatch[CompiledRoute],
        backend: Backend,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamRequest:
        """Step 7: what this attempt sends."""
        request, server = ctx.request, ctx.state.config.server
        headers = forwardable_headers(
            request.headers, keep_underscores=server.underscores_in_headers
        )
        path, query = match.upstream_path, request.query
        if route.request_transform is not None:
            parts = route.request_transform.apply(RequestParts(path, query, tuple(headers)))
            path, query, headers = parts.path, parts.query, list(parts.headers)
        headers.extend(
            forwarded_headers(
                request.header,
                peer_ip=request.peer_ip,
                client=ctx.record.client_ip,
                scheme=request.scheme,
                host=ctx.host,
                trusted=ctx.state.trusted_proxies,
            )
        )
        headers.append(("X-Request-ID", ctx.record.request_id))
        return UpstreamRequest(
            method=request.method,
            origin=backend.key,
            target=f"{path}?{query}" if query else path,
            headers=headers,
            body=body,
            connect_timeout_s=server.connect_timeout_ms / 1000,
            read_timeout_s=route.timeout_ms / 1000,
            max_head_bytes=server.max_upstream_header_bytes,
        )

    async def _attempt(
        self,
        ctx: _Context,
        route: CompiledRoute,
        match: RouteMatch[CompiledRoute],
        body: RequestBody,
        tried: set[str],
        choice: AiChoice | None = None,
    ) -> _Outcome:
        """Step 8: one try against one backend, reported to its breaker."""
        try:
            backend, trial = self._select(ctx, route, tried, choice)
        except GatewayError as error:
            return _Outcome(error=error)
        tried.add(backend.key)
        ctx.record.backend = backend.key
        upstream_request = self._upstream_request(ctx, route, match, backend, body.take())
        in_flight = ctx.state.in_flight
        in_flight.acquire(backend.key)
        started = time.perf_counter()
        try:
            if ctx.deadline is None:
                response = await self._exchange(upstream_request)
            else:
                async with asyncio.timeout_at(_loop_deadline(ctx.deadline)):
                    response = await self._exchange(upstream_request)
        except BaseException as exc:
            in_flight.release(backend.key)
            return self._failed_attempt(ctx, backend, trial, started, exc, body)
        breaker = ctx.state.shared.breakers.get(backend.key)
        failed = breaker is not None and breaker.is_failure_status(response.status)
        self._reported(ctx, backend, trial, started, "failure_status" if failed else "success")
        if isinstance(response, _Buffered):
            in_flight.release(backend.key)
            return _Outcome(response=response)
        return _Outcome(response=_Released(response, lambda: in_flight.release(backend.key)))

    async def _exchange(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send, and read a small body whole (:func:`_buffers`) as part of the attempt.

        A backend that resets or stalls in the middle of such a body has failed this attempt:
        its breaker hears it, and the retry policy may try again before the client saw a byte.
        """
        response = await self._upstream.send(request)
        if not _buffers(request.method, response.headers):
            return response
        try:
            body = await response.read()
        finally:
            await response.close()
        return _Buffered(response.status, response.headers, body)

    def _reported(
        self,
        ctx: _Context,
        backend: Backend,
        trial: Trial,
        started: float,
        outcome: AttemptOutcome,
    ) -> None:
        """Tell the breaker, the metrics and the AI strategies how an attempt ended."""
        if outcome == "cancelled":
            trial.cancel()
            ctx.record.note_attempt(backend.key, outcome, started)
            return
        failed = outcome != "success"
        if failed:
            trial.failure()
        else:
            trial.success()
        seconds = ctx.record.note_attempt(backend.key, outcome, started)
        ctx.state.shared.observations.observe(backend.key, seconds, failed=failed)

    def _failed_attempt(
        self,
        ctx: _Context,
        backend: Backend,
        trial: Trial,
        started: float,
        exc: BaseException,
        body: RequestBody | None,
    ) -> _Outcome:
        """An attempt that raised: whose fault, what the breaker hears, what the client gets."""
        client_fault = _find_cause(exc, ClientBodyError)
        waited_on_client = (
            isinstance(exc, TimeoutError) and body is not None and (body.waiting_for_client)
        )
        if client_fault is not None or waited_on_client:
            trial.cancel()
            return _Outcome(
                error=client_fault
                or ClientBodyError(
                    "client_timeout", "the request body did not arrive before the deadline"
                )
            )
        if isinstance(exc, UpstreamError):
            self._reported(ctx, backend, trial, started, exc.kind)
            error_type: ErrorType = "timeout" if exc.kind == "timeout" else "upstream"
            return _Outcome(error=GatewayError(error_type, exc.message), upstream_error=exc)
        if isinstance(exc, TimeoutError):
            self._reported(ctx, backend, trial, started, "timeout")
            return _Outcome(error=GatewayError("timeout", "request deadline exceeded"))
        self._reported(ctx, backend, trial, started, "cancelled")
        raise exc

    async def _open_websocket(
        self, ctx: _Context, route: CompiledRoute, match: RouteMatch[CompiledRoute]
    ) -> ProxyResponse:
        """Connect the upstream WebSocket first; the adapter then accepts the client and relays.

        The handshake is an attempt like any other: selected, counted in flight, reported to
        the backend's breaker and recorded.
        """
        backend, trial = self._select(ctx, route, set(), None)
        ctx.record.backend = backend.key
        upstream_request = self._upstream_request(ctx, route, match, backend, None)
        protocols = [
            p.strip()
            for p in (ctx.request.header("sec-websocket-protocol") or "").split(",")
            if p.strip()
        ]
        headers = [
            (k, v)
            for k, v in upstream_request.headers
            if not k.lower().startswith("sec-websocket-")
        ]
        in_flight = ctx.state.in_flight
        in_flight.acquire(backend.key)
        started = time.perf_counter()
        try:
            ws = await self._upstream.connect_websocket(
                _websocket_url(upstream_request.url),
                headers,
                protocols,
                upstream_request.connect_timeout_s,
            )
        except BaseException as exc:
            in_flight.release(backend.key)
            self._failed_attempt(ctx, backend, trial, started, exc, None).result()
            raise
        self._reported(ctx, backend, trial, started, "success")

        async def close() -> None:
            try:
                await ws.close()
            finally:
                in_flight.release(backend.key)

        return ProxyResponse(101, [], websocket=ws, on_close=close)

    def _transform_response(
        self, ctx: _Context, route: CompiledRoute, response: UpstreamResponse
    ) -> ProxyResponse:
        """Response transformation, then the body: whole when the attempt read it
        (:func:`_buffers`), else streamed chunk by chunk with backpressure."""
        status, headers = response.status, strip_hop_by_hop(response.headers)
        if route.response_transform is not None:
            parts = route.response_transform.apply(ResponseParts(status, tuple(headers)))
            status, headers = parts.status, list(parts.headers)
        headers.extend(ctx.cors_headers)
        if isinstance(response, _Buffered):
            ctx.record.bytes_sent = len(response.body)
            kept = [(k, v) for k, v in headers if k.lower() != "content-length"]
            return ProxyResponse(status, kept, response.body)
        return ProxyResponse(status, headers, _relay(response, ctx.record), on_close=response.close)

    def _error_response(self, ctx: _Context, error: GatewayError) -> ProxyResponse:
        ctx.record.error_type = error.error_type
        headers = [("Content-Type", "application/json"), *error.headers, *ctx.cors_headers]
        if error.retry_after_s is not None:
            headers.append(("Retry-After", str(max(math.ceil(error.retry_after_s), 1))))
        if isinstance(error, ClientBodyError):
            headers.append(("Connection", "close"))  # the rest of the body is not read
        return ProxyResponse(error.status, headers, error.body(ctx.record.request_id))

    def _finish(self, ctx: _Context, response: ProxyResponse) -> ProxyResponse:
        """Security headers and request id on every response; the record once the body is done."""
        headers = response.headers
        names = {k.lower() for k, _ in headers}
        if "x-request-id" in names:
            headers = [(k, v) for k, v in headers if k.lower() != "x-request-id"]
        if ctx.state.config.server.security_headers:
            headers.extend(pair for pair in SECURITY_HEADERS if pair[0].lower() not in names)
        headers.extend(ctx.limit_headers)
        headers.append(("X-Request-ID", ctx.record.request_id))
        response.headers = headers
        ctx.record.status = response.status
        ctx.record.head_s = time.perf_counter() - ctx.record.started
        inner = response.on_close

        async def finish() -> None:
            try:
                if inner is not None:
                    await inner()
            finally:
                self._record(ctx, response)

        response.on_close = finish
        return response

    def _record(self, ctx: _Context, response: ProxyResponse) -> None:
        record = ctx.record
        record.duration_s = time.perf_counter() - record.started
        if isinstance(response.body, bytes):
            record.bytes_sent = len(response.body)
        if response.abandoned and record.error_type is None:
            record.error_type = "client_closed"
        if ctx.decision is not None:
            ctx.state.shared.ai.finish(ctx.decision, record.status, record.upstream_s)
        if self._on_record is not None:
            self._on_record(record)

    def _record_abandoned(self, ctx: _Context) -> None:
        """The client went away before a response: logged and counted as 499 (nginx's code)."""
        record = ctx.record
        record.status = 499
        record.error_type = "client_closed"
        record.duration_s = time.perf_counter() - record.started
        record.head_s = record.duration_s
        if ctx.decision is not None:
            ctx.state.shared.ai.finish(ctx.decision, 499, record.upstream_s)
        if self._on_record is not None:
            self._on_record(record)


# --- helpers --------------------------------------------------------------------------------------


def _buffers(method: str, headers: HeaderPairs) -> bool:
    """Whether a response body is read whole inside its attempt: one the upstream declared at
    most ``BUFFER_BODY_BYTES`` long (not to HEAD). One write to the client instead of a chunked
    stream, the upstream connection back in the pool before the client reads anything, and a
    body cut short is the attempt's failure. Everything else (SSE, chunked, large) streams."""
    if method == "HEAD":
        return False
    length = header(headers, "content-length")
    return length is not None and length.isdigit() and int(length) <= BUFFER_BODY_BYTES


@dataclass(slots=True)
class _Buffered:
    """An upstream response whose body its attempt has already read (:func:`_buffers`)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    async def read(self) -> bytes:
        return self.body

    async def close(self) -> None:
        return None


class _Released:
    """An upstream response that releases its in-flight slot exactly once when closed."""

    def __init__(self, response: UpstreamResponse, release: Callable[[], None]) -> None:
        self._response = response
        self._release: Callable[[], None] | None = release
        self.status = response.status
        self.headers = response.headers

    def iter_chunks(self) -> AsyncIterator[bytes]:
        return self._response.iter_chunks()

    async def read(self) -> bytes:
        return await self._response.read()

    async def close(self) -> None:
        try:
            await self._response.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


async def _relay(response: UpstreamResponse, record: RequestRecord) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.iter_chunks():
            record.bytes_sent += len(chunk)
            yield chunk
    except UpstreamError as exc:
        record.error_type = "upstream_body"
        log.warning("request %s: upstream body failed: %s", record.request_id, exc.message)
        raise


@dataclass(slots=True)
class _Outcome:
    """What one attempt produced: an upstream response, or the error the client would get."""

    response: UpstreamResponse | None = None
    error: GatewayError | None = None
    upstream_error: UpstreamError | None = None

    def result(self) -> UpstreamResponse:
        if self.response is not None:
            return self.response
        assert self.error is not None
        raise self.error

    def classify(self, policy: RetryConfig, resend: bool) -> RetryDecision:
        """This outcome under :func:`kairos_core.retry.classify`."""
        if self.response is not None:
            return classify(
                policy,
                resend=resend,
                status=self.response.status,
                retry_after=header(self.response.headers, "retry-after"),
            )
        if self.upstream_error is not None:
            return classify(policy, resend=resend, error=self.upstream_error)
        return NO_RETRY

    async def discard(self) -> None:
        if self.response is not None:
            await self.response.close()


def _find_cause(exc: BaseException, kind: type[_E]) -> _E | None:
    """``exc`` or the first exception of type ``kind`` in its cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _summary(ctx: _Context, route: CompiledRoute, body: RequestBody) -> RequestSummary:
    request = ctx.request
    return summarize(
        route.route_id,
        request.method,
        request.raw_path,
        request.query,
        request.headers,
        body.preview,
        declared_bytes=int(request.header("content-length") or 0),
    )


def _require_upgrade(ctx: _Context) -> None:
    if (ctx.request.header("upgrade") or "").lower() != "websocket":
        raise GatewayError("bad_request", "this route expects a WebSocket upgrade request")


def _websocket_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return ("wss" if scheme in ("https", "wss") else "ws") + "://" + rest


def _deadline(route: CompiledRoute) -> float | None:
    return time.monotonic() + route.deadline_ms / 1000 if route.deadline_ms else None


def _loop_deadline(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())


def _is_preflight(ctx: _Context) -> bool:
    request = ctx.request
    return (
        ctx.state.cors is not None
        and request.method == "OPTIONS"
        and request.header("origin") is not None
        and request.header("access-control-request-method") is not None
    )
