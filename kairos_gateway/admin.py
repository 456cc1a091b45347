"""The admin listener (DESIGN.md §7): health, metrics, events, routes, config, circuits, AI.

Every response body is a :mod:`kairos_client.models` model. With ``admin.token`` set, every
route except ``/health``, ``/live`` and ``/ready`` needs ``Authorization: Bearer <token>``
(compared in constant time). Request bodies are capped at the config size limit. Errors use the
proxy's JSON shape with types ``unauthorized``, ``not_found``, ``bad_request``,
``validation_error`` (with ``details``), ``conflict``, ``precondition_failed`` and
``payload_too_large``. The limiter never guards this listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, ValidationError
from sanic import Request, Sanic
from sanic.response import HTTPResponse

from kairos_client import models
from kairos_core.admin import AdminProblem, ProblemKind, RouteTestRequest, access_problem
from kairos_core.config import MAX_CONFIG_BYTES, ConfigIssue, config_schema
from kairos_core.config.loader import decode_json
from kairos_core.errors import error_body
from kairos_core.events import Event
from kairos_core.http import accepted_request_id
from kairos_core.metrics import HISTORY_SECONDS
from kairos_gateway import wire
from kairos_gateway.runtime import GatewayRuntime

log = logging.getLogger("kairos.admin")
PROBLEM_STATUS: dict[ProblemKind, int] = {
    "not_found": 404,
    "bad_request": 400,
    "validation_error": 400,
    "conflict": 409,
    "precondition_failed": 412,
    "unauthorized": 401,
    "forbidden": 403,
    "unsupported_media_type": 415,
}
EVENT_QUEUE_SIZE = 1000
# a config nests a few levels (routers[].request_transformation.headers[]...); the rest is abuse
MAX_BODY_DEPTH = 64
SSE_KEEPALIVE_S = 15.0
Handler = Callable[..., Coroutine[Any, Any, HTTPResponse | None]]


class AdminError(Exception):
    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        details: list[ConfigIssue] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.details = details or []


def reply(model: BaseModel, status: int = 200, etag: str | None = None) -> HTTPResponse:
    headers = {"ETag": f'"{etag}"'} if etag else {}
    return HTTPResponse(
        model.model_dump_json(), status=status, headers=headers, content_type="application/json"
    )


def error_response(error: AdminError, request_id: str) -> HTTPResponse:
    document = json.loads(error_body(error.error_type, error.message, request_id))
    document["details"] = [issue.to_dict() for issue in error.details]
    headers = {"X-Request-ID": request_id}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="kairos-admin"'
    return HTTPResponse(
        json.dumps(document), status=error.status, headers=headers, content_type="application/json"
    )


def build_admin_app(runtime: GatewayRuntime) -> Sanic[Any, Any]:
    app: Sanic[Any, Any] = Sanic("kairos_admin", configure_logging=False)
    app.config.REQUEST_MAX_SIZE = MAX_CONFIG_BYTES + 64 * 1024
    app.config.RESPONSE_TIMEOUT = 24 * 3600
    app.config.MOTD = False
    app.config.ACCESS_LOG = False
    app.config.NOISY_EXCEPTIONS = False
    api = AdminApi(runtime)

    @app.on_request
    async def authenticate(request: Request) -> HTTPResponse | None:
        headers = request.headers
        problem = access_problem(
            request.method,
            request.path,
            headers.get,
            token=runtime.state.config.admin.token,
            has_body=headers.get("content-length", "0") != "0" or "transfer-encoding" in headers,
        )
        if problem is not None:
            raise problem
        return None

    async def on_error(request: Request, exception: Exception) -> HTTPResponse:
        if isinstance(exception, AdminProblem):
            problem = AdminError(
                PROBLEM_STATUS[exception.kind],
                exception.kind,
                exception.message,
                list(exception.details),
            )
            return error_response(problem, _request_id(request))
        if isinstance(exception, AdminError):
            return error_response(exception, _request_id(request))
        status = getattr(exception, "status_code", 500)
        if status >= 500:
            log.error("%s %s failed", request.method, request.path, exc_info=exception)
        kinds = {404: "not_found", 405: "bad_request", 413: "payload_too_large"}
        kind = kinds.get(status, "bad_request" if status < 500 else "internal")
        message = str(exception) if status < 500 else "internal error"
        return error_response(AdminError(status, kind, message), _request_id(request))

    app.error_handler.add(Exception, on_error)

    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/health", api.health),
        ("GET", "/live", api.health),
        ("GET", "/ready", api.ready),
        ("GET", "/metrics", api.prometheus),
        ("GET", "/api/metrics", api.metrics),
        ("GET", "/api/metrics/history", api.history),
        ("GET", "/api/events", api.events),
        ("GET", "/api/routes", api.list_routes),
        ("POST", "/api/routes", api.create_route),
        ("GET", "/api/routes/<route_id:str>", api.get_route),
        ("PUT", "/api/routes/<route_id:str>", api.update_route),
        ("DELETE", "/api/routes/<route_id:str>", api.delete_route),
        ("GET", "/api/config", api.get_config),
        ("PUT", "/api/config", api.put_config),
        ("POST", "/api/config/validate", api.validate_config),
        ("GET", "/api/config/schema", api.config_schema),
        ("POST", "/api/config/reload", api.reload_config),
        ("GET", "/api/circuits", api.circuits),
        ("POST", "/api/circuits/<backend:path>/reset", api.reset_circuit),
        ("POST", "/api/circuits/<backend:path>/open", api.open_circuit),
        ("GET", "/api/ai/decisions", api.ai_decisions),
        ("POST", "/api/route-test", api.route_test),
    ]
    for method, path, handler in routes:
        app.add_route(handler, path, methods=[method], name=f"{method}{path}".replace("/", "_"))
    return app


class AdminApi:
    """The handlers: each reads the request, calls the :class:`AdminService`, and maps the
    result to its wire model (or the service's :class:`AdminProblem` to an error)."""

    def __init__(self, runtime: GatewayRuntime) -> None:
        self.runtime = runtime
        self.service = runtime.admin

    async def health(self, request: Request) -> HTTPResponse:
        return reply(wire.to_model(models.Health, self.service.health()))

    async def ready(self, request: Request) -> HTTPResponse:
        ready = self.service.ready()
        return reply(wire.to_model(models.Ready, ready), 503 if ready.reasons else 200)

    # --- metrics and events -------------------------------------------------------------------

    async def prometheus(self, request: Request) -> HTTPResponse:
        self.runtime.refresh_gauges()
        return HTTPResponse(
            self.runtime.metrics.prometheus(),
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )

    async def metrics(self, request: Request) -> HTTPResponse:
        snapshot = self.service.snapshot()  # read on the loop, mapped off it (it can be large)
        return await asyncio.to_thread(lambda: reply(wire.snapshot(snapshot)))

    async def history(self, request: Request) -> HTTPResponse:
        seconds = _int_arg(request, "seconds", 900, 1, HISTORY_SECONDS)
        return reply(wire.history(seconds, self.runtime.metrics.history(seconds)))

    async def events(self, request: Request) -> None:
        """SSE: the service's replay after ``Last-Event-ID``, then live events; a comment keeps
        the connection alive."""
        bus = self.runtime.shared.events
        queue: asyncio.Queue[Event | None] = asyncio.Queue(EVENT_QUEUE_SIZE)

        def deliver(event: Event) -> None:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a reader this slow is dropped, never waited on
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

        unsubscribe = bus.subscribe(deliver)
        try:
            with self.service.stream():
                response = await request.respond(
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                    content_type="text/event-stream",
                )
                await response.send(": kairos events\nretry: 1000\n\n")
                replay = self.service.replay(request.headers.get("last-event-id"))
                sent = replay[-1].id if replay else 0
                for old in replay:
                    await response.send(_sse(old))
                while True:
                    try:
                        live = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                    except TimeoutError:
                        await response.send(": keep-alive\n\n")
                        continue
                    if live is None:
                        break
                    if live.id > sent:
                        await response.send(_sse(live))
                await response.eof()
        finally:
            unsubscribe()
        return None

    # --- routes -------------------------------------------------------------------------------

    async def list_routes(self, request: Request) -> HTTPResponse:
        def answer() -> HTTPResponse:
            version, routes = self.service.routes()
            body = models.RouteList(
                routes=[wire.to_model(models.RouteInfo, r) for r in routes], config_version=version
            )
            return reply(body, etag=version)

        return await asyncio.to_thread(answer)

    async def get_route(self, request: Request, route_id: str) -> HTTPResponse:
        version, route = self.service.route(unquote(route_id))
        return reply(wire.to_model(models.RouteInfo, route), etag=version)

    async def create_route(self, request: Request) -> HTTPResponse:
        change = await self.service.create_route(await _json_object(request), _if_match(request))
        return reply(wire.to_model(models.RouteChange, change), 201, change.config_version)

    async def update_route(self, request: Request, route_id: str) -> HTTPResponse:
        body = await _json_object(request)
        change = await self.service.update_route(unquote(route_id), body, _if_match(request))
        return reply(wire.to_model(models.RouteChange, change), etag=change.config_version)

    async def delete_route(self, request: Request, route_id: str) -> HTTPResponse:
        change = await self.service.delete_route(unquote(route_id), _if_match(request))
        return reply(wire.to_model(models.RouteChange, change), etag=change.config_version)

    # --- config -------------------------------------------------------------------------------

    async def get_config(self, request: Request) -> HTTPResponse:
        def answer() -> HTTPResponse:
            document = self.service.config_document()
            return reply(
                wire.to_model(models.ConfigDocument, document), etag=document.config_version
            )

        return await asyncio.to_thread(answer)

    async def put_config(self, request: Request) -> HTTPResponse:
        result = await self.service.put_config(await _json_object(request), _if_match(request))
        return reply(wire.to_model(models.ReloadResult, result), etag=result.config_version)

    async def validate_config(self, request: Request) -> HTTPResponse:
        sent = await _json_object(request)
        result = await asyncio.to_thread(self.service.validate_config, sent)
        return reply(wire.to_model(models.ValidationResult, result))

    async def reload_config(self, request: Request) -> HTTPResponse:
        result = await self.service.reload()
        return reply(wire.to_model(models.ReloadResult, result), 200 if result.reloaded else 400)

    async def config_schema(self, request: Request) -> HTTPResponse:
        return HTTPResponse(json.dumps(config_schema()), content_type="application/json")

    # --- circuits, dry run and AI -------------------------------------------------------------

    async def circuits(self, request: Request) -> HTTPResponse:
        circuits = [wire.to_model(models.CircuitInfo, c) for c in self.service.circuits()]
        return reply(models.CircuitList(circuits=circuits))

    async def reset_circuit(self, request: Request, backend: str) -> HTTPResponse:
        info = self.service.force_circuit(unquote(backend), close=True)
        return reply(wire.to_model(models.CircuitInfo, info))

    async def open_circuit(self, request: Request, backend: str) -> HTTPResponse:
        info = self.service.force_circuit(unquote(backend), close=False)
        return reply(wire.to_model(models.CircuitInfo, info))

    async def route_test(self, request: Request) -> HTTPResponse:
        try:
            asked = models.RouteTestRequest.model_validate(await _json_object(request))
        except ValidationError as exc:
            raise AdminError(400, "bad_request", f"invalid route-test request: {exc}") from exc
        plan = await self.service.route_test(
            RouteTestRequest(
                method=asked.method,
                path=asked.path,
                headers=tuple(asked.headers),
                client_ip=asked.client_ip,
                token=asked.token,
                body=asked.body,
                ai=asked.ai,
            )
        )
        return reply(wire.route_test(plan))

    async def ai_decisions(self, request: Request) -> HTTPResponse:
        decisions, routes = self.service.ai_decisions(_int_arg(request, "limit", 100, 1, 1000))
        return reply(wire.ai_decisions(decisions, routes))


def _sse(event: Event) -> str:
    wire = models.Event(id=event.id, type=event.type, time=event.time, data=dict(event.data))
    return f"id: {event.id}\nevent: {event.type}\ndata: {wire.model_dump_json()}\n\n"


async def _json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (parsed off the event loop: it may be a whole config)."""
    return await asyncio.to_thread(_parse_json_object, request.body or b"null")


def _parse_json_object(raw: bytes) -> dict[str, Any]:
    too_deep = AdminError(
        400, "bad_request", f"request body is nested more than {MAX_BODY_DEPTH} levels deep"
    )
    try:
        body = _decode(raw)
    except RecursionError as exc:
        raise too_deep from exc
    except ValueError as exc:
        raise AdminError(400, "bad_request", f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise AdminError(400, "bad_request", "request body must be a JSON object")
    if _depth_exceeds(body, MAX_BODY_DEPTH):
        raise too_deep
    return body


def _decode(raw: bytes) -> Any:
    """JSON in steps (a whole config never holds the interpreter in one call); other
    encodings than UTF-8 as ``json.loads`` detects them."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return json.loads(raw)
    return decode_json(text)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests more than ``limit`` objects and arrays (walked without
    recursion, so no depth can overflow the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise AdminError(400, "bad_request", f"{name} must be an integer") from exc
    return max(low, min(value, high))


def _if_match(request: Request) -> str | None:
    value: str | None = request.headers.get("if-match")
    return value


def _request_id(request: Request) -> str:
    return accepted_request_id(request.headers.get("x-request-id")) or uuid.uuid4().hex
