"""The request pipeline of DESIGN.md §2, one step per method, read top to bottom in ``handle``.

1. accept: request id, client IP, declared body size over the cap (413)
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
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from kairos_core.auth import AuthError, Identity
from kairos_core.config.models import Backend
from kairos_core.errors import GatewayError
from kairos_core.http import (
    SECURITY_HEADERS,
    Headers,
    ProxyRequest,
    ProxyResponse,
    add_missing,
    header,
    strip_hop_by_hop,
    without,
)
from kairos_core.routing import BadPath, MethodNotAllowed, NotFound, RouteMatch
from kairos_core.state import CompiledRoute, RuntimeState
from kairos_core.transform import RequestParts, ResponseParts
from kairos_core.upstream import UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse

log = logging.getLogger("kairos.pipeline")
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_FORWARDED = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "host")


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
    upstream_s: float | None = None
    bytes_sent: int = 0
    duration_s: float = 0.0


@dataclass(slots=True)
class _Context:
    request: ProxyRequest
    state: RuntimeState
    record: RequestRecord
    host: str | None
    deadline: float | None = None
    identity: Identity | None = None
    cors_headers: Headers = field(default_factory=list)


RecordSink = Callable[[RequestRecord], None]


class Pipeline:
    """Runs every proxied request through the steps above."""

    def __init__(
        self, state: RuntimeState, upstream: UpstreamClient, on_record: RecordSink | None = None
    ) -> None:
        self._state = state
        self._upstream = upstream
        self._on_record = on_record

    @property
    def state(self) -> RuntimeState:
        return self._state

    def swap(self, state: RuntimeState) -> None:
        """Atomically make ``state`` current for requests that arrive from now on."""
        self._state = state

    async def handle(self, request: ProxyRequest) -> ProxyResponse:
        ctx = self._accept(request)
        try:
            self._check_body_size(ctx)
            match = self._route(ctx)
            preflight = self._cors(ctx, match)
            if preflight is not None:
                return self._finish(ctx, preflight)
            route = match.spec.payload
            self._authenticate(ctx, route)
            if route.protocol == "websocket":
                _require_upgrade(ctx)
            backend = self._select_backend(ctx, route)
            if route.protocol == "websocket":
                return self._finish(ctx, await self._open_websocket(ctx, route, match, backend))
            upstream_request = self._transform_request(ctx, route, match, backend)
            response = await self._forward(ctx, route, backend, upstream_request)
            return self._finish(ctx, self._transform_response(ctx, route, response))
        except GatewayError as error:
            return self._finish(ctx, self._error_response(ctx, error))

    # --- steps ----------------------------------------------------------------------------------

    def _accept(self, request: ProxyRequest) -> _Context:
        state = self._state
        sent_id = header(request.headers, "x-request-id")
        request_id = sent_id if sent_id and _SANE_REQUEST_ID.fullmatch(sent_id) else None
        record = RequestRecord(
            request_id=request_id or uuid.uuid4().hex,
            client_ip=_client_ip(request, state.trusted_proxies),
            method=request.method,
            path=request.raw_path,
        )
        return _Context(request, state, record, header(request.headers, "host"))

    def _check_body_size(self, ctx: _Context) -> None:
        """Refuse a declared body over the cap before reading any of it."""
        length = header(ctx.request.headers, "content-length")
        limit = ctx.state.config.server.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise GatewayError(
                "payload_too_large", f"request body of {length} bytes exceeds {limit} bytes"
            )

    def _route(self, ctx: _Context) -> RouteMatch[CompiledRoute]:
        method = ctx.request.method
        if _is_preflight(ctx) and ctx.state.cors is not None:
            method = header(ctx.request.headers, "access-control-request-method") or method
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
        origin = header(ctx.request.headers, "origin")
        if cors is None or origin is None:
            return None
        if _is_preflight(ctx):
            requested = header(ctx.request.headers, "access-control-request-method") or ""
            asked = header(ctx.request.headers, "access-control-request-headers")
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
            ctx.identity = verifier.verify_header(header(ctx.request.headers, "authorization"))
        except AuthError as exc:
            raise GatewayError(
                "authentication_error",
                exc.reason,
                (("WWW-Authenticate", 'Bearer error="invalid_token"'),),
            ) from exc

    def _select_backend(self, ctx: _Context, route: CompiledRoute) -> Backend:
        candidates = list(range(len(route.backends)))
        index = route.balancer.pick(candidates, client_key=ctx.record.client_ip)
        backend = route.backends[index]
        ctx.record.backend = backend.key
        return backend

    def _transform_request(
        self,
        ctx: _Context,
        route: CompiledRoute,
        match: RouteMatch[CompiledRoute],
        backend: Backend,
    ) -> UpstreamRequest:
        request = ctx.request
        headers = without(strip_hop_by_hop(request.headers), *_FORWARDED)
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
            body=_capped_body(request, server.max_body_bytes),
            connect_timeout_s=server.connect_timeout_ms / 1000,
            read_timeout_s=route.timeout_ms / 1000,
        )

    def _forwarded_headers(self, ctx: _Context) -> Headers:
        request = ctx.request
        sent_for = header(request.headers, "x-forwarded-for")
        trusted = _is_trusted(request.peer_ip, ctx.state.trusted_proxies)
        forwarded_for = (
            f"{sent_for}, {request.peer_ip}" if sent_for and trusted else ctx.record.client_ip
        )
        proto = (
            header(request.headers, "x-forwarded-proto") if trusted else None
        ) or request.scheme
        out = [
            ("X-Forwarded-For", forwarded_for),
            ("X-Forwarded-Proto", proto),
            ("X-Request-ID", ctx.record.request_id),
        ]
        if ctx.host:
            out.append(("X-Forwarded-Host", ctx.host))
        return out

    async def _forward(
        self,
        ctx: _Context,
        route: CompiledRoute,
        backend: Backend,
        upstream_request: UpstreamRequest,
    ) -> UpstreamResponse:
        in_flight = ctx.state.in_flight
        in_flight.acquire(backend.key)
        ctx.record.attempts += 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(_loop_deadline(ctx.deadline)):
                response = await self._upstream.send(upstream_request)
        except TimeoutError as exc:
            in_flight.release(backend.key)
            raise GatewayError("timeout", "request deadline exceeded") from exc
        except UpstreamError as exc:
            in_flight.release(backend.key)
            if isinstance(exc.__cause__, _BodyTooLarge):
                raise exc.__cause__.error from exc
            if exc.kind == "timeout":
                raise GatewayError("timeout", exc.message) from exc
            raise GatewayError("upstream", exc.message) from exc
        except _BodyTooLarge as exc:
            in_flight.release(backend.key)
            raise exc.error from exc
        ctx.record.upstream_s = time.perf_counter() - started
        return _Released(response, lambda: in_flight.release(backend.key))

    async def _open_websocket(
        self,
        ctx: _Context,
        route: CompiledRoute,
        match: RouteMatch[CompiledRoute],
        backend: Backend,
    ) -> ProxyResponse:
        """Connect the upstream WebSocket first; the adapter then accepts the client and relays."""
        request = ctx.request
        upstream_request = self._transform_request(ctx, route, match, backend)
        protocols = [
            p.strip()
            for p in (header(request.headers, "sec-websocket-protocol") or "").split(",")
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
        except UpstreamError as exc:
            in_flight.release(backend.key)
            raise GatewayError("upstream", exc.message) from exc

        async def close() -> None:
            try:
                await ws.close()
            finally:
                in_flight.release(backend.key)

        return ProxyResponse(101, [], websocket=ws, on_close=close)

    def _transform_response(
        self, ctx: _Context, route: CompiledRoute, response: UpstreamResponse
    ) -> ProxyResponse:
        status, headers = response.status, strip_hop_by_hop(response.headers)
        if route.response_transform is not None:
            parts = route.response_transform.apply(ResponseParts(status, tuple(headers)))
            status, headers = parts.status, list(parts.headers)
        headers.extend(ctx.cors_headers)
        body = _relay(response, ctx.record)
        return ProxyResponse(status, headers, body, on_close=response.close)

    def _error_response(self, ctx: _Context, error: GatewayError) -> ProxyResponse:
        ctx.record.error_type = error.error_type
        headers = [("Content-Type", "application/json"), *error.headers, *ctx.cors_headers]
        return ProxyResponse(error.status, headers, error.body(ctx.record.request_id))

    def _finish(self, ctx: _Context, response: ProxyResponse) -> ProxyResponse:
        """Security headers and request id on every response; the record once the body is done."""
        if ctx.state.config.server.security_headers:
            response.headers = add_missing(response.headers, SECURITY_HEADERS)
        response.headers.append(("X-Request-ID", ctx.record.request_id))
        ctx.record.status = response.status
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


def _capped_body(request: ProxyRequest, limit: int) -> AsyncIterator[bytes] | None:
    """The request body as a stream that fails once it passes ``limit`` bytes."""
    body = request.body
    length = header(request.headers, "content-length")
    chunked = "chunked" in (header(request.headers, "transfer-encoding") or "").lower()
    if body is None or (not chunked and (length is None or length == "0")):
        return None

    async def stream() -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in body:
            seen += len(chunk)
            if seen > limit:
                raise _BodyTooLarge(
                    GatewayError("payload_too_large", f"request body exceeds {limit} bytes")
                )
            yield chunk

    return stream()


def _require_upgrade(ctx: _Context) -> None:
    if (header(ctx.request.headers, "upgrade") or "").lower() != "websocket":
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
    headers = ctx.request.headers
    return (
        ctx.request.method == "OPTIONS"
        and header(headers, "origin") is not None
        and header(headers, "access-control-request-method") is not None
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
    hops = [h.strip() for h in (header(request.headers, "x-forwarded-for") or "").split(",")]
    for hop in reversed([h for h in hops if h]):
        if not _is_trusted(hop, trusted):
            return hop
    return request.peer_ip
