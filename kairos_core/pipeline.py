"""The request pipeline of DESIGN.md §2, one step per method, read top to bottom in ``handle``.

1. accept: request id, client IP, malformed headers (400), declared body over the cap (413)
2. route: method + path (+ host) → route, params, upstream path (404 / 405 / 400)
3. CORS: answer preflight
4. authenticate: JWT when the route requires it (401)
5. select backend: the route's balancer over its backends (WebSocket routes connect the
   upstream here and hand the adapter a socket to relay)
6. transform request: headers, path, query
7. forward: one attempt through the upstream client, with connect / per-try timeouts and the
   request deadline
8. transform response, add security headers, stream the body back
9. record: the access-log line once the body is done

The pipeline is pinned to the :class:`RuntimeState` current when the request arrived; a reload
swaps the state for later requests only. Nothing here knows the web framework.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from kairos_core.auth import AuthError, Identity
from kairos_core.breaker import Trial
from kairos_core.config.models import Backend, RetryConfig
from kairos_core.errors import ErrorType, GatewayError
from kairos_core.http import (
    FORWARDED_HEADERS,
    HEADER_NAME,
    NON_IDEMPOTENT_METHODS,
    SECURITY_HEADERS,
    Headers,
    ProxyRequest,
    ProxyResponse,
    add_missing,
    header,
    strip_hop_by_hop,
    without,
)
from kairos_core.metrics import AttemptSample, RequestSample
from kairos_core.ratelimit import limit_keys
from kairos_core.retry import NO_RETRY, RetryDecision, parse_retry_after, retry_after_first
from kairos_core.routing import BadPath, MethodNotAllowed, NotFound, RouteMatch
from kairos_core.state import CompiledRoute, RuntimeState, SharedState
from kairos_core.transform import RequestParts, ResponseParts
from kairos_core.upstream import UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse

log = logging.getLogger("kairos.pipeline")
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
_E = TypeVar("_E", bound=BaseException)
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


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
    attempts: int = 0
    retries: list[str] = field(default_factory=list)
    retry_budget_exhausted: bool = False
    rate_limited: bool = False
    upstream_s: float | None = None
    attempt_log: list[AttemptSample] = field(default_factory=list)
    head_s: float = 0.0
    bytes_sent: int = 0
    duration_s: float = 0.0

    def note_attempt(self, backend: str, outcome: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.upstream_s = (self.upstream_s or 0.0) + elapsed
        self.attempt_log.append(AttemptSample(backend, outcome, elapsed))

    def sample(self) -> RequestSample:
        """The request as metrics see it."""
        return RequestSample(
            route=self.route_id,
            method=self.method,
            status=self.status,
            duration_s=self.duration_s,
            overhead_s=self.head_s - (self.upstream_s or 0.0),
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
            self._check_headers(ctx)
            self._check_body_size(ctx)
            match = self._route(ctx)
            preflight = self._cors(ctx, match)
            if preflight is not None:
                return self._finish(ctx, preflight)
            route = match.spec.payload
            self._authenticate(ctx, route)
            await self._rate_limit(ctx, route)
            if route.protocol == "websocket":
                _require_upgrade(ctx)
                return self._finish(ctx, await self._open_websocket(ctx, route, match))
            response = await self._forward(ctx, route, match)
            return self._finish(ctx, await self._transform_response(ctx, route, response))
        except GatewayError as error:
            return self._finish(ctx, self._error_response(ctx, error))
        except asyncio.CancelledError:
            self._record_abandoned(ctx)
            raise

    def _record_abandoned(self, ctx: _Context) -> None:
        """The client went away before a response: logged and counted as 499 (nginx's code)."""
        record = ctx.record
        record.status = 499
        record.error_type = "client_closed"
        record.duration_s = time.perf_counter() - record.started
        record.head_s = record.duration_s
        if self._on_record is not None:
            self._on_record(record)

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
        sent_id = request.header("x-request-id")
        request_id = sent_id if sent_id and _SANE_REQUEST_ID.fullmatch(sent_id) else None
        record = RequestRecord(
            request_id=request_id or uuid.uuid4().hex,
            client_ip=_client_ip(request, state.trusted_proxies),
            method=request.method,
            path=request.raw_path,
        )
        return _Context(request, state, record, request.header("host"))

    def _check_headers(self, ctx: _Context) -> None:
        """Header names must be tokens, values free of control characters (RFC 9110), and an
        HTTP/1.1 request must name its Host (RFC 9112 §3.2)."""
        if ctx.host is None and ctx.request.http_version == "1.1":
            raise GatewayError("bad_request", "HTTP/1.1 request without a Host header")
        for name, value in ctx.request.headers:
            if not HEADER_NAME.fullmatch(name):
                raise GatewayError("bad_request", f"malformed header name {name!r}")
            if _CONTROL.search(value):
                raise GatewayError("bad_request", f"control character in header {name!r}")

    def _check_body_size(self, ctx: _Context) -> None:
        """Refuse a declared body over the cap before reading any of it."""
        length = ctx.request.header("content-length")
        limit = ctx.state.config.server.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise GatewayError(
                "payload_too_large", f"request body of {length} bytes exceeds {limit} bytes"
            )

    def _route(self, ctx: _Context) -> RouteMatch[CompiledRoute]:
        method = ctx.request.method
        if _is_preflight(ctx) and ctx.state.cors is not None:
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

    def _cors(self, ctx: _Context, match: RouteMatch[CompiledRoute]) -> ProxyResponse | None:
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
        if not route.auth_required:
            return
        verifier = ctx.state.jwt
        if verifier is None:  # validation forbids this; fail closed all the same
            raise GatewayError("authentication_error", "authentication is not configured")
        try:
            ctx.identity = verifier.verify_header(ctx.request.header("authorization"))
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

    def _select_backend(
        self, ctx: _Context, route: CompiledRoute, tried: set[str]
    ) -> tuple[Backend, Trial]:
        """Pick among backends whose breaker admits and whose health check passes.

        A backend not tried yet by this request is preferred; the fallback backends are used
        only when no primary backend is eligible.
        """
        shared = ctx.state.shared
        for backends, balancer in (
            (route.backends, route.balancer),
            (route.fallback, route.fallback_balancer),
        ):
            eligible = [i for i, b in enumerate(backends) if shared.is_eligible(b.key)]
            if not eligible:
                continue
            fresh = [i for i in eligible if backends[i].key not in tried]
            index = balancer.pick(fresh or eligible, client_key=ctx.record.client_ip)
            backend = backends[index]
            breaker = shared.breakers.get(backend.key)
            trial = breaker.admit() if breaker is not None else None
            if trial is not None:
                return backend, trial
        raise _no_candidate(shared, (*route.backends, *route.fallback))

    def _transform_request(
        self,
        ctx: _Context,
        route: CompiledRoute,
        match: RouteMatch[CompiledRoute],
        backend: Backend,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamRequest:
        request = ctx.request
        headers = without(strip_hop_by_hop(request.headers), *FORWARDED_HEADERS)
        path, query = match.upstream_path, request.query
        if route.request_transform is not None:
            parts = route.request_transform.apply(RequestParts(path, query, tuple(headers)))
            path, query, headers = parts.path, parts.query, list(parts.headers)
        headers.extend(self._forwarded_headers(ctx))
        url = f"{_origin(backend)}{path}" + (f"?{query}" if query else "")
        server = ctx.state.config.server
        return UpstreamRequest(
            method=request.method,
            url=url,
            headers=headers,
            body=body,
            connect_timeout_s=server.connect_timeout_ms / 1000,
            read_timeout_s=route.timeout_ms / 1000,
        )

    def _forwarded_headers(self, ctx: _Context) -> Headers:
        request = ctx.request
        sent_for = request.header("x-forwarded-for")
        trusted = _is_trusted(request.peer_ip, ctx.state.trusted_proxies)
        forwarded_for = (
            f"{sent_for}, {request.peer_ip}" if sent_for and trusted else ctx.record.client_ip
        )
        proto = (request.header("x-forwarded-proto") if trusted else None) or request.scheme
        out = [
            ("X-Forwarded-For", forwarded_for),
            ("X-Forwarded-Proto", proto),
            ("X-Request-ID", ctx.record.request_id),
        ]
        if ctx.host:
            out.append(("X-Forwarded-Host", ctx.host))
        return out

    async def _forward(
        self, ctx: _Context, route: CompiledRoute, match: RouteMatch[CompiledRoute]
    ) -> UpstreamResponse:
        """Attempt 1 outside any retry machinery; retries only after a retryable outcome."""
        shared = ctx.state.shared
        budget = shared.budget(route.route_id)
        budget.record_request()
        body = await _RequestBody.prepare(
            ctx.request, route, ctx.state.config.server.max_body_bytes
        )
        tried: set[str] = set()

        async def attempt() -> _Outcome:
            return await self._attempt(ctx, route, match, body, tried)

        outcome = await attempt()
        policy = route.retry
        if policy is not None and body.replayable:

            def note_retry(reason: str) -> None:
                ctx.record.retries.append(reason)

            def note_budget_exhausted() -> None:
                ctx.record.retry_budget_exhausted = True

            outcome = await retry_after_first(
                outcome,
                attempt,
                policy=policy,
                classify=lambda o: _classify(ctx, policy, o),
                budget=budget,
                deadline=ctx.deadline,
                discard=_Outcome.discard,
                rng=self._rng,
                on_retry=note_retry,
                on_budget_exhausted=note_budget_exhausted,
            )
        return outcome.result()

    async def _attempt(
        self,
        ctx: _Context,
        route: CompiledRoute,
        match: RouteMatch[CompiledRoute],
        body: _RequestBody,
        tried: set[str],
    ) -> _Outcome:
        """One try against one backend, reported to its breaker."""
        try:
            backend, trial = self._select_backend(ctx, route, tried)
        except GatewayError as error:
            return _Outcome(error=error)
        tried.add(backend.key)
        ctx.record.backend = backend.key
        ctx.record.attempts += 1
        upstream_request = self._transform_request(ctx, route, match, backend, body.take())
        in_flight = ctx.state.in_flight
        in_flight.acquire(backend.key)
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(_loop_deadline(ctx.deadline)):
                response = await self._upstream.send(upstream_request)
        except BaseException as exc:
            in_flight.release(backend.key)
            ctx.record.note_attempt(backend.key, _attempt_outcome(exc), started)
            return _failed_attempt(exc, trial)
        breaker = ctx.state.shared.breakers.get(backend.key)
        if breaker is not None and breaker.is_failure_status(response.status):
            trial.failure()
            ctx.record.note_attempt(backend.key, "failure_status", started)
        else:
            trial.success()
            ctx.record.note_attempt(backend.key, "success", started)
        return _Outcome(response=_Released(response, lambda: in_flight.release(backend.key)))

    async def _open_websocket(
        self, ctx: _Context, route: CompiledRoute, match: RouteMatch[CompiledRoute]
    ) -> ProxyResponse:
        """Connect the upstream WebSocket first; the adapter then accepts the client and relays.

        The handshake is reported to the backend's breaker like any attempt.
        """
        request = ctx.request
        backend, trial = self._select_backend(ctx, route, set())
        ctx.record.backend = backend.key
        upstream_request = self._transform_request(ctx, route, match, backend, None)
        protocols = [
            p.strip()
            for p in (request.header("sec-websocket-protocol") or "").split(",")
            if p.strip()
        ]
        headers = [
            (k, v)
            for k, v in upstream_request.headers
            if not k.lower().startswith("sec-websocket-")
        ]
        in_flight = ctx.state.in_flight
        in_flight.acquire(backend.key)
        ctx.record.attempts += 1
        try:
            ws = await self._upstream.connect_websocket(
                _websocket_url(upstream_request.url),
                headers,
                protocols,
                upstream_request.connect_timeout_s,
            )
        except BaseException as exc:
            in_flight.release(backend.key)
            _failed_attempt(exc, trial).result()
            raise
        trial.success()

        async def close() -> None:
            try:
                await ws.close()
            finally:
                in_flight.release(backend.key)

        return ProxyResponse(101, [], websocket=ws, on_close=close)

    async def _transform_response(
        self, ctx: _Context, route: CompiledRoute, response: UpstreamResponse
    ) -> ProxyResponse:
        """Response transformation, then the body: small bodies whole, the rest streamed.

        A body the upstream declared at most ``BUFFER_BODY_BYTES`` long is read at once: one
        write to the client instead of a chunked stream, and the upstream connection goes back
        to the pool before the client has read anything. Everything else (SSE, chunked, large,
        HEAD) streams chunk by chunk with backpressure.
        """
        status, headers = response.status, strip_hop_by_hop(response.headers)
        if route.response_transform is not None:
            parts = route.response_transform.apply(ResponseParts(status, tuple(headers)))
            status, headers = parts.status, list(parts.headers)
        headers.extend(ctx.cors_headers)
        length = header(headers, "content-length")
        small = length is not None and length.isdigit() and int(length) <= BUFFER_BODY_BYTES
        if small and ctx.request.method != "HEAD":
            try:
                body = b"".join([chunk async for chunk in _relay(response, ctx.record)])
            except UpstreamError as exc:
                kind: ErrorType = "timeout" if exc.kind == "timeout" else "upstream"
                raise GatewayError(kind, exc.message) from exc
            finally:
                await response.close()
            return ProxyResponse(status, without(headers, "content-length"), body)
        return ProxyResponse(status, headers, _relay(response, ctx.record), on_close=response.close)

    def _error_response(self, ctx: _Context, error: GatewayError) -> ProxyResponse:
        ctx.record.error_type = error.error_type
        headers = [("Content-Type", "application/json"), *error.headers, *ctx.cors_headers]
        if error.retry_after_s is not None:
            headers.append(("Retry-After", str(max(math.ceil(error.retry_after_s), 1))))
        return ProxyResponse(error.status, headers, error.body(ctx.record.request_id))

    def _finish(self, ctx: _Context, response: ProxyResponse) -> ProxyResponse:
        """Security headers and request id on every response; the record once the body is done."""
        if ctx.state.config.server.security_headers:
            response.headers = add_missing(response.headers, SECURITY_HEADERS)
        response.headers = without(response.headers, "x-request-id")
        response.headers.extend(ctx.limit_headers)
        response.headers.append(("X-Request-ID", ctx.record.request_id))
        ctx.record.status = response.status
        ctx.record.head_s = time.perf_counter() - ctx.record.started
        inner = response.on_close

        async def finish() -> None:
            try:
                if inner is not None:
                    await inner()
            finally:
                ctx.record.duration_s = time.perf_counter() - ctx.record.started
                if isinstance(response.body, bytes):
                    ctx.record.bytes_sent = len(response.body)
                if self._on_record is not None:
                    self._on_record(ctx.record)

        response.on_close = finish
        return response


# --- helpers --------------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class _Released:
    """An upstream response that releases its in-flight slot exactly once when closed."""

    def __init__(self, response: UpstreamResponse, release: Callable[[], None]) -> None:
        self._response = response
        self._release: Callable[[], None] | None = release
        self.status = response.status
        self.headers = response.headers

    def iter_chunks(self) -> AsyncIterator[bytes]:
        return self._response.iter_chunks()

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


BUFFER_BODY_BYTES = 64 * 1024


class _RequestBody:
    """The request body as the attempts see it: bytes (replayable) or a one-shot stream.

    A body with a declared length within ``retry.max_replay_bytes`` is read once, so retries can
    send it again; a larger or chunked body streams to the first attempt only (``replayable`` is
    then False and the request is not retried). Either way it is cut at ``max_body_bytes``.
    """

    def __init__(self, data: bytes | AsyncIterator[bytes] | None, replayable: bool) -> None:
        self._data = data
        self.replayable = replayable

    @classmethod
    async def prepare(cls, request: ProxyRequest, route: CompiledRoute, limit: int) -> _RequestBody:
        body = request.body
        length = request.header("content-length")
        chunked = "chunked" in (request.header("transfer-encoding") or "").lower()
        if body is None or (not chunked and (length is None or length == "0")):
            return cls(None, replayable=True)
        stream = _capped(body, limit)
        policy = route.retry
        if policy is None or chunked or length is None or int(length) > policy.max_replay_bytes:
            return cls(stream, replayable=False)
        return cls(b"".join([chunk async for chunk in stream]), replayable=True)

    def take(self) -> bytes | AsyncIterator[bytes] | None:
        data = self._data
        if not self.replayable:
            self._data = None
        return data


async def _capped(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in body:
        seen += len(chunk)
        if seen > limit:
            raise _BodyTooLarge(
                GatewayError("payload_too_large", f"request body exceeds {limit} bytes")
            )
        yield chunk


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

    async def discard(self) -> None:
        if self.response is not None:
            await self.response.close()


def _attempt_outcome(exc: BaseException) -> str:
    """The ``outcome`` label of an attempt that raised."""
    if isinstance(exc, UpstreamError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "cancelled"


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


def _failed_attempt(exc: BaseException, trial: Trial) -> _Outcome:
    """Report an attempt that raised to its breaker and turn it into an outcome.

    A backend that does not answer before the request deadline has timed out like any other
    (failure). Cancellation (client gone) is reported as nothing, and so is a body over the cap:
    that is the client's fault.
    """
    too_large = _find_cause(exc, _BodyTooLarge)
    if too_large is not None:
        trial.cancel()
        return _Outcome(error=too_large.error)
    if isinstance(exc, UpstreamError):
        trial.failure()
        error_type: ErrorType = "timeout" if exc.kind == "timeout" else "upstream"
        return _Outcome(error=GatewayError(error_type, exc.message), upstream_error=exc)
    if isinstance(exc, TimeoutError):
        trial.failure()
        return _Outcome(error=GatewayError("timeout", "request deadline exceeded"))
    trial.cancel()
    raise exc


def _classify(ctx: _Context, policy: RetryConfig, outcome: _Outcome) -> RetryDecision:
    """DESIGN.md §5: which outcomes are retried for this request."""
    request = ctx.request
    may_resend = (
        request.method not in NON_IDEMPOTENT_METHODS
        or policy.retry_non_idempotent
        or request.header("idempotency-key") is not None
    )
    if outcome.response is not None:
        status = outcome.response.status
        if status in policy.retry_on_status_codes and may_resend:
            retry_after = parse_retry_after(header(outcome.response.headers, "retry-after"))
            return RetryDecision(True, f"status_{status}", retry_after)
        return NO_RETRY
    error = outcome.upstream_error
    if error is None or not policy.retry_on_connection_error:
        return NO_RETRY
    if not error.sent or may_resend:
        return RetryDecision(True, error.kind)
    return NO_RETRY


def _no_candidate(shared: SharedState, backends: tuple[Backend, ...]) -> GatewayError:
    """503: ``circuit_open`` (with time to half-open) unless every backend is unhealthy."""
    waits = [
        breaker.seconds_until_half_open()
        for b in backends
        if shared.is_healthy(b.key) and (breaker := shared.breakers.get(b.key)) is not None
    ]
    if waits:
        return GatewayError(
            "circuit_open",
            "every backend's circuit breaker is open",
            retry_after_s=min(waits),
        )
    return GatewayError("no_healthy_backend", "no backend passes its health check")


def _require_upgrade(ctx: _Context) -> None:
    if (ctx.request.header("upgrade") or "").lower() != "websocket":
        raise GatewayError("bad_request", "this route expects a WebSocket upgrade request")


def _websocket_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return ("wss" if scheme in ("https", "wss") else "ws") + "://" + rest


def _origin(backend: Backend) -> str:
    return f"{backend.host.rstrip('/')}:{backend.port}"


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
        request.method == "OPTIONS"
        and request.header("origin") is not None
        and request.header("access-control-request-method") is not None
    )


def _is_trusted(ip: str, networks: Networks) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _client_ip(request: ProxyRequest, trusted: Networks) -> str:
    """The peer address, or the right-most untrusted ``X-Forwarded-For`` hop behind a proxy."""
    if not _is_trusted(request.peer_ip, trusted):
        return request.peer_ip
    hops = [h.strip() for h in (request.header("x-forwarded-for") or "").split(",")]
    for hop in reversed([h for h in hops if h]):
        if not _is_trusted(hop, trusted):
            return hop
    return request.peer_ip
