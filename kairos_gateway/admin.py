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
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, ValidationError
from sanic import Request, Sanic
from sanic.response import HTTPResponse

from kairos_client import models
from kairos_core import __version__
from kairos_core.config import (
    MAX_CONFIG_BYTES,
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    route_ids,
    validate_document,
)
from kairos_core.config.loader import decode_json
from kairos_core.config.store import (
    REDACTED,
    is_secret_header,
    redact,
    redact_query,
    restore_secrets,
    with_route_added,
    with_route_removed,
    with_route_replaced,
)
from kairos_core.dryrun import ask_live, plan_request
from kairos_core.errors import error_body
from kairos_core.events import Event
from kairos_core.metrics import HISTORY_SECONDS
from kairos_gateway import wire
from kairos_gateway.runtime import GatewayRuntime, VersionConflict

log = logging.getLogger("kairos.admin")
PUBLIC_PATHS = frozenset({"/health", "/live", "/ready"})
DUPLICATE_ROUTE_CODES = frozenset({"duplicate_route", "duplicate_route_name"})
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
    runtime.snapshot_source = api.snapshot_event

    @app.on_request
    async def authenticate(request: Request) -> HTTPResponse | None:
        token = runtime.state.config.admin.token
        if not token or request.path in PUBLIC_PATHS:
            return None
        sent = request.headers.get("authorization", "")
        scheme, _, credentials = sent.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), token.encode()
        ):
            return None
        return error_response(
            AdminError(401, "unauthorized", "missing or invalid admin token"), _request_id(request)
        )

    async def on_error(request: Request, exception: Exception) -> HTTPResponse:
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
    """The handlers; each returns a model (as JSON) or raises :class:`AdminError`."""

    def __init__(self, runtime: GatewayRuntime) -> None:
        self.runtime = runtime

    # --- health -------------------------------------------------------------------------------

    async def health(self, request: Request) -> HTTPResponse:
        return reply(
            models.Health(status="ok", version=__version__, uptime_seconds=self.runtime.uptime_s)
        )

    async def ready(self, request: Request) -> HTTPResponse:
        reasons = self.runtime.not_ready_reasons()
        body = models.Ready(
            status="not_ready" if reasons else "ready",
            reasons=reasons,
            unroutable=self.runtime.unroutable(),
            config_version=self.runtime.state.version,
        )
        return reply(body, 503 if reasons else 200)

    # --- metrics and events -------------------------------------------------------------------

    async def prometheus(self, request: Request) -> HTTPResponse:
        self.runtime.refresh_gauges()
        return HTTPResponse(
            self.runtime.metrics.prometheus(),
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )

    async def metrics(self, request: Request) -> HTTPResponse:
        data = self._snapshot_data()
        return await asyncio.to_thread(lambda: reply(models.MetricsSnapshot.model_validate(data)))

    async def snapshot_event(self) -> dict[str, Any]:
        """The data of a ``snapshot`` event: figures read on the loop, the model built off it
        (with thousands of routes, validating and dumping it is the long part)."""
        data = self._snapshot_data()
        return await asyncio.to_thread(
            lambda: models.MetricsSnapshot.model_validate(data).model_dump(mode="json")
        )

    def _snapshot_data(self) -> dict[str, Any]:
        """The figures of a :class:`models.MetricsSnapshot`, read now (on the event loop)."""
        runtime, shared = self.runtime, self.runtime.shared
        metrics, state = runtime.metrics, runtime.state
        data: dict[str, Any] = asdict(metrics.summary())
        data["in_flight"] = shared.in_flight.total()
        data["uptime_seconds"] = round(runtime.uptime_s, 3)
        data["config_version"] = state.version
        data["routes"] = [
            {
                **asdict(metrics.route_summary(route_id)),
                "auth_required": route.auth_required,
                "has_retry": route.retry is not None,
                "has_rate_limit": route.rate_limit is not None,
                "has_ai": route.router.ai_policy is not None and route.router.ai_policy.enabled,
                "ai_mode": route.ai.mode if route.ai is not None else None,
            }
            for route_id, route in state.routes.items()
        ]
        data["backends"] = [
            {
                **asdict(metrics.backend_summary(circuit.backend)),
                "in_flight": circuit.in_flight,
                "healthy": circuit.healthy,
                "circuit": circuit,
            }
            for circuit in self.circuit_infos()
        ]
        data["ai"] = wire.ai_metrics(shared.ai.log)
        return data

    async def history(self, request: Request) -> HTTPResponse:
        seconds = _int_arg(request, "seconds", 900, 1, HISTORY_SECONDS)
        points = [asdict(point) for point in self.runtime.metrics.history(seconds)]
        return reply(models.MetricsHistory.model_validate({"seconds": seconds, "points": points}))

    async def events(self, request: Request) -> None:
        """SSE: replay after ``Last-Event-ID``, then live events; a comment keeps it alive."""
        bus = self.runtime.shared.events
        queue: asyncio.Queue[Event | None] = asyncio.Queue(EVENT_QUEUE_SIZE)

        def deliver(event: Event) -> None:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a reader this slow is dropped, never waited on
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

        last = request.headers.get("last-event-id", "")
        unsubscribe = bus.subscribe(deliver)
        self.runtime.event_streams += 1
        try:
            response = await request.respond(
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                content_type="text/event-stream",
            )
            await response.send(": kairos events\nretry: 1000\n\n")
            replay = bus.since(int(last)) if last.isdigit() else []
            if last.isdigit() and int(last) > bus.last_id:
                replay = bus.since(0)  # an id from before a restart: everything we still have
            sent = replay[-1].id if replay else 0
            for event in replay:
                await response.send(_sse(event))
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    await response.send(": keep-alive\n\n")
                    continue
                if event is None:
                    break
                if event.id > sent:
                    await response.send(_sse(event))
            await response.eof()
        finally:
            self.runtime.event_streams -= 1
            unsubscribe()
        return None

    # --- routes -------------------------------------------------------------------------------

    async def list_routes(self, request: Request) -> HTTPResponse:
        loaded = self.runtime.state.loaded

        def answer() -> HTTPResponse:
            routes = self._route_infos(loaded, range(len(loaded.config.routers)))
            body = models.RouteList(routes=routes, config_version=loaded.version)
            return reply(body, etag=loaded.version)

        return await asyncio.to_thread(answer)

    async def get_route(self, request: Request, route_id: str) -> HTTPResponse:
        loaded = self.runtime.state.loaded
        (info,) = self._route_infos(loaded, [self._route_index(loaded, unquote(route_id))])
        return reply(info, etag=loaded.version)

    async def create_route(self, request: Request) -> HTTPResponse:
        body = await _json_object(request)

        def add(current: LoadedConfig) -> dict[str, Any]:
            name = body.get("name")
            if isinstance(name, str) and name in route_ids(current.config.routers):
                raise AdminError(409, "conflict", f"a route named {name!r} already exists")
            return with_route_added(current.document, body)

        before, after = await self._apply(request, add, "route created", duplicate_is_conflict=True)
        (created,) = self._route_infos(after, [len(before.config.routers)])
        self._publish_route("created", created.id)
        return reply(
            models.RouteChange(route=created, config_version=after.version), 201, after.version
        )

    async def update_route(self, request: Request, route_id: str) -> HTTPResponse:
        body = await _json_object(request)
        wanted = unquote(route_id)
        index = -1

        def replace(current: LoadedConfig) -> dict[str, Any]:
            nonlocal index
            index = self._route_index(current, wanted)
            running = current.document.get("routers", [])[index]
            return with_route_replaced(current.document, index, restore_secrets(body, running))

        _, after = await self._apply(request, replace, "route updated", duplicate_is_conflict=True)
        (updated,) = self._route_infos(after, [index])
        self._publish_route("updated", updated.id)
        return reply(
            models.RouteChange(route=updated, config_version=after.version), etag=after.version
        )

    async def delete_route(self, request: Request, route_id: str) -> HTTPResponse:
        wanted = unquote(route_id)

        def remove(current: LoadedConfig) -> dict[str, Any]:
            return with_route_removed(current.document, self._route_index(current, wanted))

        _, after = await self._apply(request, remove, "route deleted")
        self._publish_route("deleted", wanted)
        return reply(models.RouteChange(config_version=after.version), etag=after.version)

    @staticmethod
    def _route_index(loaded: LoadedConfig, route_id: str) -> int:
        for index, candidate in enumerate(route_ids(loaded.config.routers)):
            if candidate == route_id:
                return index
        raise AdminError(404, "not_found", f"no route with id {route_id!r}")

    @staticmethod
    def _route_infos(loaded: LoadedConfig, indexes: Iterable[int]) -> list[models.RouteInfo]:
        """The routes at ``indexes``, as written (secrets redacted)."""
        ids = route_ids(loaded.config.routers)
        documents = loaded.document.get("routers", [])
        return [
            models.RouteInfo(id=ids[index], index=index, config=redact(documents[index]))
            for index in indexes
        ]

    def _publish_route(self, action: str, route_id: str) -> None:
        self.runtime.shared.events.publish("route", {"action": action, "route": route_id})

    # --- config -------------------------------------------------------------------------------

    async def get_config(self, request: Request) -> HTTPResponse:
        loaded = self.runtime.state.loaded

        def answer() -> HTTPResponse:
            body = models.ConfigDocument(
                config=redact(loaded.document), config_version=loaded.version, source=loaded.source
            )
            return reply(body, etag=loaded.version)

        return await asyncio.to_thread(answer)

    async def put_config(self, request: Request) -> HTTPResponse:
        body = await _json_object(request)

        def replace_all(current: LoadedConfig) -> dict[str, Any]:
            return restore_secrets(body, current.document)

        _, after = await self._apply(request, replace_all, "config replaced")
        body = models.ReloadResult(
            reloaded=True,
            config_version=after.version,
            restart_required=self.runtime.restart_required(after),
        )
        return reply(body, etag=after.version)

    async def validate_config(self, request: Request) -> HTTPResponse:
        sent = await _json_object(request)
        running = self.runtime.state.loaded.document

        def answer() -> HTTPResponse:
            try:
                loaded = validate_document(restore_secrets(sent, running), source="<request>")
            except ConfigError as exc:
                return reply(
                    models.ValidationResult(
                        valid=False,
                        errors=_issues(exc.errors),
                        warnings=_issues([i for i in exc.issues if i not in exc.errors]),
                    )
                )
            return reply(models.ValidationResult(valid=True, warnings=_issues(loaded.issues)))

        return await asyncio.to_thread(answer)

    async def reload_config(self, request: Request) -> HTTPResponse:
        try:
            loaded = await self.runtime.reload("admin API")
        except ConfigError as exc:
            body = models.ReloadResult(
                reloaded=False,
                config_version=self.runtime.state.version,
                errors=_issues(exc.errors),
            )
            return reply(body, 400)
        body = models.ReloadResult(
            reloaded=True,
            config_version=loaded.version,
            restart_required=self.runtime.restart_required(loaded),
        )
        return reply(body)

    async def _apply(
        self,
        request: Request,
        edit: Callable[[LoadedConfig], dict[str, Any]],
        reason: str,
        duplicate_is_conflict: bool = False,
    ) -> tuple[LoadedConfig, LoadedConfig]:
        try:
            return await self.runtime.apply_edit(
                edit, reason, if_match=request.headers.get("if-match")
            )
        except VersionConflict as exc:
            raise AdminError(412, "precondition_failed", str(exc)) from exc
        except ConfigError as exc:
            duplicate = [i for i in exc.errors if i.code in DUPLICATE_ROUTE_CODES]
            if duplicate_is_conflict and duplicate:
                raise AdminError(409, "conflict", duplicate[0].message, exc.errors) from exc
            raise AdminError(
                400, "validation_error", "the config would be invalid", exc.errors
            ) from exc

    # --- circuits and AI --------------------------------------------------------------------

    def circuit_infos(self) -> list[models.CircuitInfo]:
        shared = self.runtime.shared
        infos = []
        for breaker in shared.breakers:
            snap = breaker.snapshot()
            infos.append(
                models.CircuitInfo(
                    backend=snap.backend,
                    state=snap.state,
                    failures=snap.failures,
                    opened_at=snap.opened_at,
                    next_half_open_at=snap.next_half_open_at,
                    healthy=shared.healthy(snap.backend),
                    in_flight=shared.in_flight.get(snap.backend),
                    admitting=shared.admits(snap.backend),
                    half_open_in_s=round(shared.seconds_until_half_open(snap.backend), 3),
                )
            )
        return infos

    async def circuits(self, request: Request) -> HTTPResponse:
        return reply(models.CircuitList(circuits=self.circuit_infos()))

    async def reset_circuit(self, request: Request, backend: str) -> HTTPResponse:
        return self._circuit_action(backend, close=True)

    async def open_circuit(self, request: Request, backend: str) -> HTTPResponse:
        return self._circuit_action(backend, close=False)

    def _circuit_action(self, backend: str, *, close: bool) -> HTTPResponse:
        key = unquote(backend)
        breaker = self.runtime.shared.breakers.get(key)
        if breaker is None:
            raise AdminError(404, "not_found", f"no backend {key!r}")
        if close:
            breaker.force_close()
        else:
            breaker.force_open()
        info = next(i for i in self.circuit_infos() if i.backend == key)
        return reply(info)

    async def route_test(self, request: Request) -> HTTPResponse:
        """The dry run of ``kairos route-test`` on the running config and live backend states."""
        try:
            asked = models.RouteTestRequest.model_validate(await _json_object(request))
        except ValidationError as exc:
            raise AdminError(400, "bad_request", f"invalid route-test request: {exc}") from exc
        plan = plan_request(
            self.runtime.state,
            asked.method.upper(),
            asked.path,
            headers=asked.headers,
            client_ip=asked.client_ip,
            token=asked.token,
            body=asked.body.encode() if asked.body is not None else None,
            states=self.runtime.shared,
            prompt=asked.ai,
        )
        if asked.ai:
            plan = await ask_live(
                self.runtime.state,
                plan,
                headers=asked.headers,
                body=asked.body.encode() if asked.body is not None else None,
                states=self.runtime.shared,
            )
        report = _without_secrets(plan.to_dict())
        return reply(
            models.RouteTest(
                outcome=report["outcome"],
                status=report["status"],
                message=report["message"],
                route_id=report["route_id"],
                upstream_url=report["upstream_url"],
                report=report,
            )
        )

    async def ai_decisions(self, request: Request) -> HTTPResponse:
        limit = _int_arg(request, "limit", 100, 1, 1000)
        log = self.runtime.shared.ai.log
        return reply(
            models.AiDecisionList(
                decisions=[wire.ai_decision(d) for d in log.recent(limit)],
                routes=wire.ai_routes(log),
            )
        )


def _without_secrets(report: dict[str, Any]) -> dict[str, Any]:
    """A dry-run report with credential-named header and query values redacted, as in
    ``GET /api/config``: the plan shows what a transformation sets, never the secret it sets."""
    url = report.get("upstream_url")
    if isinstance(url, str) and "?" in url:
        base, _, query = url.partition("?")
        report["upstream_url"] = f"{base}?{redact_query(query)}"
        report["message"] = str(report.get("message", "")).replace(url, report["upstream_url"])
    request_transform = report.get("request_transform")
    if isinstance(request_transform, dict):
        for parts in request_transform.values():
            if isinstance(parts, dict):
                parts["query"] = redact_query(parts.get("query") or "")
                parts["headers"] = [
                    [name, REDACTED if is_secret_header(name) else value]
                    for name, value in parts.get("headers") or []
                ]
    response_transform = report.get("response_transform")
    if isinstance(response_transform, dict):
        response_transform["headers"] = redact(
            {"headers": response_transform.get("headers") or []}
        )["headers"]
    return report


def _sse(event: Event) -> str:
    wire = models.Event(id=event.id, type=event.type, time=event.time, data=dict(event.data))
    return f"id: {event.id}\nevent: {event.type}\ndata: {wire.model_dump_json()}\n\n"


def _issues(issues: Any) -> list[models.ValidationIssue]:
    return [models.ValidationIssue.model_validate(issue.to_dict()) for issue in issues]


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


def _request_id(request: Request) -> str:
    return request.headers.get("x-request-id") or uuid.uuid4().hex
