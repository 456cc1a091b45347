"""The Sanic adapter: two listeners (proxy and admin) around the framework-free core.

The proxy app has one catch-all route that turns a Sanic request into a
:class:`~kairos_core.http.ProxyRequest`, runs the pipeline and streams the
:class:`~kairos_core.http.ProxyResponse` back. Request bodies are streamed (``stream=True``) so
uploads flow to the upstream with backpressure; no routing or policy decision is made here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from sanic import Request, Sanic
from sanic.compat import Header
from sanic.response import HTTPResponse

from kairos_core.errors import ErrorType
from kairos_core.http import ProxyRequest, ProxyResponse
from kairos_core.websocket import relay
from kairos_gateway.runtime import GatewayRuntime
from kairos_gateway.websocket import SanicPeer

log = logging.getLogger("kairos.gateway")
# Sanic's router has no TRACE; such requests get the pipeline's JSON 405 (with Allow) from
# _framework_error: as with most hardened gateways, TRACE is never forwarded.
ALL_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
# the pipeline enforces server.max_body_bytes itself (with a JSON 413); Sanic must not cut first
_UNBOUNDED_BODY = 1 << 62
_STREAM_TIMEOUT_S = 24 * 3600


def build_proxy_app(runtime: GatewayRuntime) -> Sanic[Any, Any]:
    app: Sanic[Any, Any] = Sanic("kairos_proxy", configure_logging=False)
    _configure(app, runtime)

    async def proxy(request: Request, path: str = "") -> HTTPResponse | None:
        result = await runtime.pipeline.handle(_proxy_request(request))
        return await _send(request, result)

    app.add_route(proxy, "/", methods=ALL_METHODS, stream=True, name="root")
    app.add_route(proxy, "/<path:path>", methods=ALL_METHODS, stream=True, unquote=False)

    app.error_handler.add(Exception, _framework_error(runtime))
    app.enable_websocket(True)

    @app.before_server_start
    async def start(app: Sanic[Any, Any]) -> None:
        await runtime.start()

    @app.after_server_stop
    async def stop(app: Sanic[Any, Any]) -> None:
        await runtime.stop()

    return app


def _framework_error(runtime: GatewayRuntime) -> Any:
    """Errors Sanic raises before the pipeline runs (TRACE, malformed requests), answered by the
    pipeline's own error path: same JSON body, ``Allow``, security headers and request-id rules."""

    def handle(request: Request, exception: Exception) -> HTTPResponse:
        status = getattr(exception, "status_code", 500)
        if status >= 500:
            log.exception("unhandled error", exc_info=exception)
        kinds: dict[int, ErrorType] = {
            400: "bad_request",
            404: "route_not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }
        error_type = kinds.get(status, "internal")
        message = str(exception) if status < 500 else "internal gateway error"
        result = runtime.pipeline.reject(_proxy_request(request, body=False), error_type, message)
        assert isinstance(result.body, bytes)
        response = _Response(result.body, status=result.status, headers=Header(result.headers))
        asyncio.get_running_loop().create_task(result.close())
        return response

    return handle


class _Response(HTTPResponse):
    """A response whose headers are sent exactly as given (the pipeline already decided them).

    Sanic's own processing would invent ``content-type: None`` for an upstream answer without a
    Content-Type, and re-sanitize headers the HTTP parser already checked.
    """

    @property
    def processed_headers(self) -> Any:
        return (
            (name.encode("latin-1"), f"{value}".encode("latin-1", errors="replace"))
            for name, value in self.headers.items()
        )


def _wire(value: str) -> str:
    """A header value as its bytes on the wire (latin-1 text), whatever Sanic decoded it as.

    Sanic decodes header bytes as UTF-8 (undecodable bytes as surrogates); the core and the
    upstream client carry header values as latin-1 text, one character per byte, so any byte
    passes through unchanged in both directions.
    """
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


def _proxy_request(request: Request, *, body: bool = True) -> ProxyRequest:
    raw = request.raw_url.decode("latin-1")
    raw_path, _, query = raw.partition("?")
    conn_info = request.conn_info
    return ProxyRequest(
        method=request.method,
        raw_path=raw_path,
        query=query,
        headers=[(name, _wire(value)) for name, value in request.headers.items()],
        peer_ip=conn_info.client_ip if conn_info else "",
        scheme="https" if conn_info and conn_info.ssl else "http",
        body=_request_body(request) if body else None,
        http_version=request.version,
    )


def _configure(app: Sanic[Any, Any], runtime: GatewayRuntime) -> None:
    config = app.config
    config.REQUEST_MAX_SIZE = _UNBOUNDED_BODY
    config.REQUEST_TIMEOUT = 60
    config.RESPONSE_TIMEOUT = _STREAM_TIMEOUT_S
    config.KEEP_ALIVE_TIMEOUT = 75
    config.GRACEFUL_SHUTDOWN_TIMEOUT = runtime.state.config.server.graceful_shutdown_s
    config.NOISY_EXCEPTIONS = False
    config.ACCESS_LOG = False
    config.MOTD = False
    config.FALLBACK_ERROR_FORMAT = "json"


async def _request_body(request: Request) -> AsyncIterator[bytes]:
    stream = request.stream
    if stream is None:
        return
    while True:
        chunk = await stream.read()
        if chunk is None:
            return
        yield chunk


async def _send(request: Request, result: ProxyResponse) -> HTTPResponse | None:
    """Stream the pipeline's answer to the client; always run its ``close`` once."""
    try:
        if result.websocket is not None:
            protocol = request.transport.get_protocol()
            subprotocols = [result.websocket.protocol] if result.websocket.protocol else None
            ws = await protocol.websocket_handshake(request, subprotocols)
            await relay(SanicPeer(ws), result.websocket)
            return None
        headers = Header(result.headers)
        if isinstance(result.body, bytes):
            return _Response(result.body, status=result.status, headers=headers)
        response = await request.respond(_Response(status=result.status, headers=headers))
        try:
            async for chunk in result.body:
                await response.send(chunk)
        except Exception:
            # the head is gone: the only honest signal left is an aborted connection, never a
            # terminating chunk that would make a truncated body look complete
            request.transport.abort()
            return None
        await response.eof()
        return None
    finally:
        await asyncio.shield(result.close())
