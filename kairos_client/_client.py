"""``KairosClient`` and ``AsyncKairosClient``: typed access to the admin API (DESIGN.md §7, §10).

Both clients share everything but the I/O: each public method builds a :class:`_Call` (method,
path, parameters, body and how to read the answer) and the client sends it with ``httpx``.
Answers are parsed into the frozen models of :mod:`kairos_client.models`; error answers become
:class:`~kairos_client.KairosAPIError` (or :class:`~kairos_client.KairosAuthError` for 401/403),
and a gateway that cannot be reached becomes :class:`~kairos_client.KairosConnectionError`.

The ``httpx`` clients never read proxy settings from the environment (``trust_env=False``): an
admin API on loopback must not be reached through ``HTTP_PROXY``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from ._errors import (
    KairosAPIError,
    KairosConnectionError,
    KairosError,
    error_from_response,
    invalid_response,
)
from ._events import Backoff, ServerSentEvent, SSEDecoder
from .models import (
    AiDecision,
    AiDecisionList,
    CircuitInfo,
    CircuitList,
    ConfigDocument,
    Event,
    Health,
    MetricsHistory,
    MetricsSnapshot,
    Ready,
    ReloadResult,
    RouteChange,
    RouteInfo,
    RouteList,
    RouteTest,
    RouteTestRequest,
    ValidationResult,
)

DEFAULT_BASE_URL = "http://127.0.0.1:5901"
BASE_URL_ENV = "KAIROS_ADMIN_URL"
TOKEN_ENV = "KAIROS_ADMIN_TOKEN"
DEFAULT_TIMEOUT_S = 5.0
# Snapshots arrive every second, so this much silence on the event stream means it is dead.
EVENTS_READ_TIMEOUT_S = 5.0
EVENTS_PATH = "/api/events"
_USER_AGENT = "kairos-client"

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One admin API request and how to read its answer."""

    method: str
    path: str
    read: Callable[[bytes], T]
    expects: str
    params: Mapping[str, int] = field(default_factory=dict)
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Error statuses whose body is still the documented result (``/ready`` answers 503 with Ready).
    result_on: frozenset[int] = frozenset()


def _model(model: type[M]) -> Callable[[bytes], M]:
    return model.model_validate_json


def _text(content: bytes) -> str:
    return content.decode("utf-8")


_JSON_OBJECT = TypeAdapter(dict[str, Any])


def _json_document(content: bytes) -> dict[str, Any]:
    return _JSON_OBJECT.validate_json(content)


def _segment(value: str) -> str:
    """``value`` as one path segment: ``/`` and ``:`` in a backend key cannot split the path,
    and ``.`` / ``..`` cannot become path steps."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="")


def _if_match(config_version: str | None) -> dict[str, str]:
    if config_version is None:
        return {}
    if not config_version.isascii() or not config_version.isprintable():
        raise KairosError(f"invalid config version for If-Match: {config_version!r}")
    return {"If-Match": config_version}


def _json_object(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict(config)


class _Api:
    """The admin API's endpoints as :class:`_Call` values; the one place paths are spelled."""

    @staticmethod
    def health() -> _Call[Health]:
        return _Call("GET", "/health", _model(Health), "Health")

    @staticmethod
    def ready() -> _Call[Ready]:
        return _Call("GET", "/ready", _model(Ready), "Ready", result_on=frozenset({503}))

    @staticmethod
    def metrics() -> _Call[MetricsSnapshot]:
        return _Call("GET", "/api/metrics", _model(MetricsSnapshot), "MetricsSnapshot")

    @staticmethod
    def metrics_history(seconds: int) -> _Call[MetricsHistory]:
        return _Call(
            "GET",
            "/api/metrics/history",
            _model(MetricsHistory),
            "MetricsHistory",
            params={"seconds": seconds},
        )

    @staticmethod
    def prometheus() -> _Call[str]:
        return _Call("GET", "/metrics", _text, "Prometheus text")

    @staticmethod
    def routes() -> _Call[list[RouteInfo]]:
        def read(content: bytes) -> list[RouteInfo]:
            return RouteList.model_validate_json(content).routes

        return _Call("GET", "/api/routes", read, "RouteList")

    @staticmethod
    def route(route_id: str) -> _Call[RouteInfo]:
        return _Call("GET", f"/api/routes/{_segment(route_id)}", _model(RouteInfo), "RouteInfo")

    @staticmethod
    def create_route(config: Mapping[str, Any], if_match: str | None) -> _Call[RouteChange]:
        return _Call(
            "POST",
            "/api/routes",
            _model(RouteChange),
            "RouteChange",
            body=_json_object(config),
            headers=_if_match(if_match),
        )

    @staticmethod
    def update_route(
        route_id: str, config: Mapping[str, Any], if_match: str | None
    ) -> _Call[RouteChange]:
        return _Call(
            "PUT",
            f"/api/routes/{_segment(route_id)}",
            _model(RouteChange),
            "RouteChange",
            body=_json_object(config),
            headers=_if_match(if_match),
        )

    @staticmethod
    def delete_route(route_id: str, if_match: str | None) -> _Call[RouteChange]:
        return _Call(
            "DELETE",
            f"/api/routes/{_segment(route_id)}",
            _model(RouteChange),
            "RouteChange",
            headers=_if_match(if_match),
        )

    @staticmethod
    def config() -> _Call[ConfigDocument]:
        return _Call("GET", "/api/config", _model(ConfigDocument), "ConfigDocument")

    @staticmethod
    def config_schema() -> _Call[dict[str, Any]]:
        return _Call("GET", "/api/config/schema", _json_document, "JSON Schema")

    @staticmethod
    def put_config(config: Mapping[str, Any], if_match: str | None) -> _Call[ReloadResult]:
        return _Call(
            "PUT",
            "/api/config",
            _model(ReloadResult),
            "ReloadResult",
            body=_json_object(config),
            headers=_if_match(if_match),
            result_on=frozenset({400}),
        )

    @staticmethod
    def validate_config(config: Mapping[str, Any]) -> _Call[ValidationResult]:
        return _Call(
            "POST",
            "/api/config/validate",
            _model(ValidationResult),
            "ValidationResult",
            body=_json_object(config),
        )

    @staticmethod
    def reload() -> _Call[ReloadResult]:
        return _Call(
            "POST",
            "/api/config/reload",
            _model(ReloadResult),
            "ReloadResult",
            result_on=frozenset({400}),
        )

    @staticmethod
    def circuits() -> _Call[list[CircuitInfo]]:
        def read(content: bytes) -> list[CircuitInfo]:
            return CircuitList.model_validate_json(content).circuits

        return _Call("GET", "/api/circuits", read, "CircuitList")

    @staticmethod
    def circuit_action(backend: str, action: str) -> _Call[CircuitInfo]:
        path = f"/api/circuits/{_segment(backend)}/{action}"
        return _Call("POST", path, _model(CircuitInfo), "CircuitInfo")

    @staticmethod
    def route_test(request: RouteTestRequest) -> _Call[RouteTest]:
        return _Call(
            "POST",
            "/api/route-test",
            _model(RouteTest),
            "RouteTest",
            body=request.model_dump(mode="json"),
        )

    @staticmethod
    def ai_decisions(limit: int) -> _Call[list[AiDecision]]:
        def read(content: bytes) -> list[AiDecision]:
            return AiDecisionList.model_validate_json(content).decisions

        return _Call("GET", "/api/ai/decisions", read, "AiDecisionList", params={"limit": limit})


def _result(call: _Call[T], response: httpx.Response) -> T:
    """The answer read as ``call`` documents it, or the error it stands for."""
    if response.is_success or response.status_code in call.result_on:
        try:
            return call.read(response.content)
        except (ValidationError, UnicodeDecodeError) as exc:
            if response.is_success:
                raise invalid_response(response, call.expects, _first_problem(exc)) from None
    raise error_from_response(response)


def _first_problem(exc: ValueError) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        error = exc.errors()[0]
        location = ".".join(str(part) for part in error["loc"])
        return f"{location}: {error['msg']}" if location else str(error["msg"])
    return str(exc)


class _EventStream:
    """What ``events()`` carries across connections: the last id, the filter and the backoff."""

    def __init__(
        self, last_event_id: int | None, types: Iterable[str] | None, max_delay_s: float
    ) -> None:
        self.last_event_id = None if last_event_id is None else str(last_event_id)
        if isinstance(types, str):  # one type given bare, not its characters
            types = (types,)
        self.types = None if types is None else frozenset(types)
        self.backoff = Backoff(max_delay_s)
        self.decoder = SSEDecoder()

    def request_headers(self) -> dict[str, str]:
        self.decoder = SSEDecoder()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def opened(self, response: httpx.Response) -> None:
        """Check the answer to a (re)connection; raises when it is not an event stream."""
        if not response.is_success:
            raise error_from_response(response)
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("text/event-stream"):
            raise invalid_response(response, "text/event-stream", f"Content-Type {content_type!r}")

    def feed(self, chunk: bytes) -> list[Event]:
        events = []
        for sse in self.decoder.feed(chunk):
            event = self._parse(sse)
            self.last_event_id = sse.id if sse.id is not None else str(event.id)
            self.backoff.reset(self.decoder.retry_ms)
            if self.types is None or event.type in self.types:
                events.append(event)
        return events

    @staticmethod
    def _parse(sse: ServerSentEvent) -> Event:
        try:
            return Event.model_validate_json(sse.data)
        except ValidationError as exc:
            raise KairosAPIError(
                200,
                "invalid_response",
                f"GET {EVENTS_PATH} sent a {sse.event!r} event that is not an Event: "
                f"{_first_problem(exc)}",
            ) from None


def _may_retry_stream(error: KairosAPIError) -> bool:
    """A gateway briefly unable to serve the stream (5xx) is retried; a refusal (4xx) is final."""
    return error.status >= 500 and error.type != "invalid_response"


class _BaseClient:
    """Settings shared by both clients; see :class:`KairosClient`."""

    def __init__(self, base_url: str | None, token: str | None, timeout: float) -> None:
        url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        if httpx.URL(url).scheme not in ("http", "https"):
            raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
        self.base_url = url
        self.timeout = timeout
        token = os.environ.get(TOKEN_ENV) if token is None else token
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http_options: dict[str, Any] = {
            "base_url": url,
            "headers": headers,
            "timeout": httpx.Timeout(timeout),
            "trust_env": False,
        }
        self._events_timeout = httpx.Timeout(timeout, read=max(timeout, EVENTS_READ_TIMEOUT_S))

    def _unreachable(self, exc: httpx.TransportError) -> KairosConnectionError:
        reason = str(exc) or type(exc).__name__
        return KairosConnectionError(f"cannot reach the admin API at {self.base_url}: {reason}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class KairosClient(_BaseClient):
    """Synchronous client for the Kairos admin API.

    ``base_url`` defaults to ``$KAIROS_ADMIN_URL``, else ``http://127.0.0.1:5901``; ``token``
    (sent as ``Authorization: Bearer``) defaults to ``$KAIROS_ADMIN_TOKEN`` (empty means none);
    ``timeout`` is in seconds, per request. Every method raises
    :class:`~kairos_client.KairosError` subclasses only.

    >>> from kairos_client import KairosClient
    >>> with KairosClient("http://127.0.0.1:5901", token="s3cret") as client:
    ...     snapshot = client.metrics()
    ...     print(snapshot.requests_total, snapshot.latency_ms.p99)
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(base_url, token, timeout)
        self._http = httpx.Client(**self._http_options)

    def close(self) -> None:
        """Close the connection pool; the client cannot be used afterwards."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.body, headers=call.headers
            )
        except httpx.LocalProtocolError as exc:  # a request we could not even write
            raise KairosError(f"invalid request: {exc}") from exc
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return _result(call, response)

    # --- liveness and metrics -------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /health``: status, version and uptime (no token needed).

        >>> client.health().uptime_seconds
        12.5
        """
        return self._send(_Api.health())

    def ready(self) -> Ready:
        """``GET /ready``: whether a load balancer should send traffic here; a 503 is not an error.

        Routes without a candidate backend are listed in ``unroutable`` and never make the
        gateway not ready.

        >>> ready = client.ready()
        >>> ready.status, ready.reasons, ready.unroutable
        ('ready', [], ['users'])
        """
        return self._send(_Api.ready())

    def metrics(self) -> MetricsSnapshot:
        """``GET /api/metrics``: totals, rates, percentiles, routes and backends now.

        >>> snapshot = client.metrics()
        >>> snapshot.requests_per_second.per_10s, snapshot.overhead_ms.p99
        (41.2, 0.31)
        """
        return self._send(_Api.metrics())

    def metrics_history(self, seconds: int = 900) -> MetricsHistory:
        """``GET /api/metrics/history``: one point per second over the last ``seconds``.

        >>> [point.requests for point in client.metrics_history(60).points][-3:]
        [40, 42, 39]
        """
        return self._send(_Api.metrics_history(seconds))

    def prometheus(self) -> str:
        """``GET /metrics``: the Prometheus text exposition.

        >>> "kairos_requests_total" in client.prometheus()
        True
        """
        return self._send(_Api.prometheus())

    # --- routes ---------------------------------------------------------------------------------

    def routes(self) -> list[RouteInfo]:
        """``GET /api/routes``: every route with its id, position and config.

        >>> [route.id for route in client.routes()]
        ['users', 'orders']
        """
        return self._send(_Api.routes())

    def route(self, route_id: str) -> RouteInfo:
        """``GET /api/routes/{id}``; an unknown id raises ``KairosAPIError`` (404 ``not_found``).

        >>> client.route("users").config["external_path"]
        '/api/users'
        """
        return self._send(_Api.route(route_id))

    def create_route(
        self, config: Mapping[str, Any], *, if_match: str | None = None
    ) -> RouteChange:
        """``POST /api/routes``: add a route (a router object as in config.json), live at once.

        ``if_match`` is the ``config_version`` the change is based on; a gateway whose config
        changed since answers 412 (``KairosAPIError`` type ``precondition_failed``). An invalid
        route raises 400 ``validation_error`` with ``details``, a duplicate 409 ``conflict``.

        >>> change = client.create_route({
        ...     "name": "echo", "host": "http://127.0.0.1", "port": 9001,
        ...     "external_path": "/echo", "internal_path": "/", "methods": ["GET"],
        ... })
        >>> change.route.id, change.config_version
        ('echo', '5d41402a')
        """
        return self._send(_Api.create_route(config, if_match))

    def update_route(
        self, route_id: str, config: Mapping[str, Any], *, if_match: str | None = None
    ) -> RouteChange:
        """``PUT /api/routes/{id}``: replace a route's config (see :meth:`create_route`).

        >>> version = client.config().config_version
        >>> client.update_route("echo", new_config, if_match=version).route.config == new_config
        True
        """
        return self._send(_Api.update_route(route_id, config, if_match))

    def delete_route(self, route_id: str, *, if_match: str | None = None) -> RouteChange:
        """``DELETE /api/routes/{id}``: the answer's ``route`` is ``None``.

        >>> client.delete_route("echo").config_version
        '7c211433'
        """
        return self._send(_Api.delete_route(route_id, if_match))

    # --- config ---------------------------------------------------------------------------------

    def config(self) -> ConfigDocument:
        """``GET /api/config``: the running config as written, secrets redacted.

        >>> client.config().config["routers"][0]["name"]
        'users'
        """
        return self._send(_Api.config())

    def config_schema(self) -> dict[str, Any]:
        """``GET /api/config/schema``: the JSON Schema of config.json (``kairos config schema``),
        the accepted keys, values and defaults for editors and forms.

        >>> router = client.config_schema()["$defs"]["Router"]["properties"]
        >>> router["load_balancing_strategy"]["enum"]
        ['round_robin', 'weighted', 'least_connections', 'random', 'ip_hash']
        """
        return self._send(_Api.config_schema())

    def put_config(self, config: Mapping[str, Any], *, if_match: str | None = None) -> ReloadResult:
        """``PUT /api/config``: replace the whole config, applied at once and written to its file.

        Redacted secrets (as :meth:`config` shows them) keep their running values. An invalid
        config raises ``KairosAPIError`` (400 ``validation_error``, ``details`` naming each
        problem) and the running config stays; a stale ``if_match`` raises 412.

        >>> current = client.config()
        >>> client.put_config(current.config, if_match=current.config_version).reloaded
        True
        """
        return self._send(_Api.put_config(config, if_match))

    def validate_config(self, config: Mapping[str, Any]) -> ValidationResult:
        """``POST /api/config/validate``: check a config without applying it.

        >>> result = client.validate_config({"version": 1, "routers": []})
        >>> result.valid, [issue.message for issue in result.errors]
        (True, [])
        """
        return self._send(_Api.validate_config(config))

    def reload(self) -> ReloadResult:
        """``POST /api/config/reload``: reload the config file; an invalid file is not an error.

        >>> result = client.reload()
        >>> result.reloaded or [str(issue.message) for issue in result.errors]
        True
        """
        return self._send(_Api.reload())

    # --- circuits and AI ------------------------------------------------------------------------

    def route_test(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        client_ip: str = "127.0.0.1",
        token: str | None = None,
        body: str | None = None,
        ai: bool = False,
    ) -> RouteTest:
        """``POST /api/route-test``: where would this request go now? Nothing is sent upstream
        (with ``ai``, an AI route's LLM is asked and the prompt and answer are in the report).

        >>> client.route_test("GET", "/api/users/7").upstream_url
        'http://127.0.0.1:9001/users/7'
        """
        request = RouteTestRequest(
            method=method,
            path=path,
            headers=list(headers),
            client_ip=client_ip,
            token=token,
            body=body,
            ai=ai,
        )
        return self._send(_Api.route_test(request))

    def circuits(self) -> list[CircuitInfo]:
        """``GET /api/circuits``: every backend's breaker.

        >>> {c.backend: c.state for c in client.circuits()}
        {'http://127.0.0.1:9001': 'closed', 'http://127.0.0.1:9002': 'open'}
        """
        return self._send(_Api.circuits())

    def reset_circuit(self, backend: str) -> CircuitInfo:
        """Close a backend's breaker (``backend`` is its key, ``scheme://host:port``).

        >>> client.reset_circuit("http://127.0.0.1:9002").state
        'closed'
        """
        return self._send(_Api.circuit_action(backend, "reset"))

    def open_circuit(self, backend: str) -> CircuitInfo:
        """Force a backend's breaker open; it half-opens after its ``reset_timeout_s``.

        >>> client.open_circuit("http://127.0.0.1:9002").state
        'open'
        """
        return self._send(_Api.circuit_action(backend, "open"))

    def ai_decisions(self, limit: int = 50) -> list[AiDecision]:
        """``GET /api/ai/decisions``: the most recent AI routing decisions.

        >>> [(d.route, d.backend, d.source) for d in client.ai_decisions(limit=1)]
        [('chat', 'http://127.0.0.1:9003', 'heuristic')]
        """
        return self._send(_Api.ai_decisions(limit))

    # --- events ---------------------------------------------------------------------------------

    def events(
        self,
        *,
        last_event_id: int | None = None,
        types: Iterable[str] | None = None,
        reconnect: bool = True,
        max_reconnect_delay_s: float = 5.0,
    ) -> Iterator[Event]:
        """``GET /api/events``: the live event stream, as typed events.

        ``last_event_id`` resumes after that event; ``types`` keeps only those event types
        (``snapshot``, ``circuit``, ``health``, ``reload``, ``route``, ``ai_decision``). Once
        connected, a dropped stream is resumed with ``Last-Event-ID`` after a backoff (up to
        ``max_reconnect_delay_s``), unless ``reconnect`` is false; failing to connect the first
        time, a refused token (``KairosAuthError``) or another 4xx answer raise. Leaving the loop
        closes the stream.

        >>> for event in client.events(types=["circuit"]):
        ...     print(event.id, event.data["backend"], event.data["to"])
        """
        stream = _EventStream(last_event_id, types, max_reconnect_delay_s)
        connected = False
        while True:
            try:
                with self._http.stream(
                    "GET",
                    EVENTS_PATH,
                    headers=stream.request_headers(),
                    timeout=self._events_timeout,
                ) as response:
                    if not response.is_success:
                        response.read()
                    stream.opened(response)
                    connected = True
                    for chunk in response.iter_bytes():
                        yield from stream.feed(chunk)
            except httpx.TransportError as exc:
                if not (reconnect and connected):
                    raise self._unreachable(exc) from exc
            except KairosAPIError as exc:
                if not (reconnect and connected and _may_retry_stream(exc)):
                    raise
            else:
                if not reconnect:
                    return
            time.sleep(stream.backoff.next_delay_s())


class AsyncKairosClient(_BaseClient):
    """Asynchronous client for the Kairos admin API: :class:`KairosClient`'s methods, awaited.

    >>> from kairos_client import AsyncKairosClient
    >>> async with AsyncKairosClient("http://127.0.0.1:5901") as client:
    ...     health = await client.health()
    ...     async for event in client.events(types=["circuit"]):
    ...         print(event.data)
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(base_url, token, timeout)
        self._http = httpx.AsyncClient(**self._http_options)

    async def close(self) -> None:
        """Close the connection pool; the client cannot be used afterwards."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.body, headers=call.headers
            )
        except httpx.LocalProtocolError as exc:  # a request we could not even write
            raise KairosError(f"invalid request: {exc}") from exc
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return _result(call, response)

    async def health(self) -> Health:
        """See :meth:`KairosClient.health`. ``await client.health()``."""
        return await self._send(_Api.health())

    async def ready(self) -> Ready:
        """See :meth:`KairosClient.ready`; a 503 answer is returned, not raised."""
        return await self._send(_Api.ready())

    async def metrics(self) -> MetricsSnapshot:
        """See :meth:`KairosClient.metrics`. ``(await client.metrics()).requests_total``."""
        return await self._send(_Api.metrics())

    async def metrics_history(self, seconds: int = 900) -> MetricsHistory:
        """See :meth:`KairosClient.metrics_history`."""
        return await self._send(_Api.metrics_history(seconds))

    async def prometheus(self) -> str:
        """See :meth:`KairosClient.prometheus`."""
        return await self._send(_Api.prometheus())

    async def routes(self) -> list[RouteInfo]:
        """See :meth:`KairosClient.routes`. ``[r.id for r in await client.routes()]``."""
        return await self._send(_Api.routes())

    async def route(self, route_id: str) -> RouteInfo:
        """See :meth:`KairosClient.route`."""
        return await self._send(_Api.route(route_id))

    async def create_route(
        self, config: Mapping[str, Any], *, if_match: str | None = None
    ) -> RouteChange:
        """See :meth:`KairosClient.create_route`."""
        return await self._send(_Api.create_route(config, if_match))

    async def update_route(
        self, route_id: str, config: Mapping[str, Any], *, if_match: str | None = None
    ) -> RouteChange:
        """See :meth:`KairosClient.update_route`."""
        return await self._send(_Api.update_route(route_id, config, if_match))

    async def delete_route(self, route_id: str, *, if_match: str | None = None) -> RouteChange:
        """See :meth:`KairosClient.delete_route`."""
        return await self._send(_Api.delete_route(route_id, if_match))

    async def config(self) -> ConfigDocument:
        """See :meth:`KairosClient.config`."""
        return await self._send(_Api.config())

    async def config_schema(self) -> dict[str, Any]:
        """See :meth:`KairosClient.config_schema`."""
        return await self._send(_Api.config_schema())

    async def put_config(
        self, config: Mapping[str, Any], *, if_match: str | None = None
    ) -> ReloadResult:
        """See :meth:`KairosClient.put_config`."""
        return await self._send(_Api.put_config(config, if_match))

    async def validate_config(self, config: Mapping[str, Any]) -> ValidationResult:
        """See :meth:`KairosClient.validate_config`."""
        return await self._send(_Api.validate_config(config))

    async def reload(self) -> ReloadResult:
        """See :meth:`KairosClient.reload`."""
        return await self._send(_Api.reload())

    async def route_test(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        client_ip: str = "127.0.0.1",
        token: str | None = None,
        body: str | None = None,
        ai: bool = False,
    ) -> RouteTest:
        """See :meth:`KairosClient.route_test`."""
        request = RouteTestRequest(
            method=method,
            path=path,
            headers=list(headers),
            client_ip=client_ip,
            token=token,
            body=body,
            ai=ai,
        )
        return await self._send(_Api.route_test(request))

    async def circuits(self) -> list[CircuitInfo]:
        """See :meth:`KairosClient.circuits`."""
        return await self._send(_Api.circuits())

    async def reset_circuit(self, backend: str) -> CircuitInfo:
        """See :meth:`KairosClient.reset_circuit`."""
        return await self._send(_Api.circuit_action(backend, "reset"))

    async def open_circuit(self, backend: str) -> CircuitInfo:
        """See :meth:`KairosClient.open_circuit`."""
        return await self._send(_Api.circuit_action(backend, "open"))

    async def ai_decisions(self, limit: int = 50) -> list[AiDecision]:
        """See :meth:`KairosClient.ai_decisions`."""
        return await self._send(_Api.ai_decisions(limit))

    async def events(
        self,
        *,
        last_event_id: int | None = None,
        types: Iterable[str] | None = None,
        reconnect: bool = True,
        max_reconnect_delay_s: float = 5.0,
    ) -> AsyncIterator[Event]:
        """See :meth:`KairosClient.events`. Leaving the loop early leaves the stream open until
        the generator is collected; ``contextlib.aclosing`` closes it at once.

        >>> async with contextlib.aclosing(client.events(last_event_id=41)) as events:
        ...     async for event in events:
        ...         print(event.id, event.type)
        """
        stream = _EventStream(last_event_id, types, max_reconnect_delay_s)
        connected = False
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    EVENTS_PATH,
                    headers=stream.request_headers(),
                    timeout=self._events_timeout,
                ) as response:
                    if not response.is_success:
                        await response.aread()
                    stream.opened(response)
                    connected = True
                    async for chunk in response.aiter_bytes():
                        for event in stream.feed(chunk):
                            yield event
            except httpx.TransportError as exc:
                if not (reconnect and connected):
                    raise self._unreachable(exc) from exc
            except KairosAPIError as exc:
                if not (reconnect and connected and _may_retry_stream(exc)):
                    raise
            else:
                if not reconnect:
                    return
            await asyncio.sleep(stream.backoff.next_delay_s())
