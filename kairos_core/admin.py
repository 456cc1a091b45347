"""What the admin API answers (DESIGN.md §7), without a web framework.

:class:`AdminService` holds every decision the admin listener makes; ``kairos_gateway.admin``
only maps HTTP requests to its calls and its results to :mod:`kairos_client.models` (through
``kairos_gateway.wire``), and :class:`AdminProblem` kinds to statuses. Results are frozen
dataclasses whose fields mirror the wire models one for one. Rules that live here:

- **Access** (:func:`access_problem`, before anything else): a request a browser sent from
  another origin (``Origin`` not this listener's ``Host``, or ``Sec-Fetch-Site`` other than
  ``same-origin`` / ``none``) is ``forbidden``, token or not: no web page may drive the admin
  API. Without ``admin.token`` (a loopback listener, by the start-up rule) the ``Host`` must be a
  loopback name or address, so a DNS-rebinding page, whose requests say ``Host: evil.example``,
  is ``forbidden`` too. With a token every path but ``/health``, ``/live`` and ``/ready`` needs
  ``Authorization: Bearer <token>`` (``unauthorized``). A write with a body must be
  ``Content-Type: application/json`` (``unsupported_media_type``): a form or ``text/plain`` post,
  which browsers send across sites without asking, is never read as a config.
- **Readiness**: ready unless the gateway says why not (:meth:`Control.not_ready_reasons`);
  routes without a candidate backend are listed, never a reason.
- **Snapshot**: the metrics summaries, in-flight count, uptime and config version; per route its
  figures and policy flags; per backend its attempts, latency, health and breaker; the AI
  decision log's figures. Built once a second as a ``snapshot`` event while an event stream is
  open, and never otherwise.
- **Circuits**: each breaker joined with its backend's health (and the active check's detail:
  consecutive passes and failures, last error), in-flight count, and whether it admits a
  request now.
- **Routes**: each route as written (secrets redacted), with what it resolves to: its backend
  keys, and its policies as the gateway applies them (the global rate limit when the route has
  none, the breaker policy of the route that owns each backend).
- **Writes** (route create, update, delete; whole config) go through :meth:`Control.apply_edit`:
  validated, written atomically and swapped. A stale ``If-Match`` is ``precondition_failed``;
  a route whose name or path duplicates another (issue codes ``duplicate_route_name``,
  ``duplicate_route``) is ``conflict``; any other invalid result is ``validation_error`` with
  every issue. Redacted secrets sent back are restored from the running config.
- **Events**: a client resuming after ``Last-Event-ID`` gets every kept event after it; an id
  newer than the newest kept (from before a restart) gets everything kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Protocol

from kairos_core import __version__
from kairos_core.ai.decisions import Decision, RouteStats
from kairos_core.config import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    route_ids,
    validate_document,
)
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
from kairos_core.dryrun import DryRun, ask_live, plan_request
from kairos_core.events import Event
from kairos_core.forwarding import is_loopback
from kairos_core.metrics import BackendSummary, Metrics, RouteSummary, Summary
from kairos_core.ratelimit import describe
from kairos_core.selection import CircuitState
from kairos_core.serial import plain
from kairos_core.state import CompiledRoute, RuntimeState, SharedState
from kairos_core.transform import RequestParts

ProblemKind = Literal[
    "not_found",
    "bad_request",
    "validation_error",
    "conflict",
    "precondition_failed",
    "unauthorized",
    "forbidden",
    "unsupported_media_type",
]
PUBLIC_PATHS = frozenset({"/health", "/live", "/ready"})
"""Admin paths a load balancer or orchestrator probes: answered without the token."""
_SAME_SITE_FETCHES = frozenset({"same-origin", "none"})
DUPLICATE_ROUTE_CODES = frozenset({"duplicate_route", "duplicate_route_name"})
Edit = Callable[[LoadedConfig], Mapping[str, Any]]


class AdminProblem(Exception):
    """A request the admin API refuses: its kind, a message, and the config issues behind it."""

    def __init__(
        self, kind: ProblemKind, message: str, details: Sequence[ConfigIssue] = ()
    ) -> None:
        super().__init__(message)
        self.kind: ProblemKind = kind
        self.message = message
        self.details = tuple(details)


def access_problem(
    method: str,
    path: str,
    header: Callable[[str], str | None],
    *,
    token: str | None,
    has_body: bool,
) -> AdminProblem | None:
    """Why the admin listener refuses this request before reading it (the **Access** rule in
    the module docstring), or None; ``header`` looks a request header up by lower-case name."""
    host = (header("host") or "").strip().lower()
    origin = header("origin")
    if origin is not None and _origin_authority(origin) != host:
        return AdminProblem("forbidden", f"requests from {origin} are not accepted")
    fetch_site = header("sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() not in _SAME_SITE_FETCHES:
        return AdminProblem("forbidden", f"{fetch_site} browser requests are not accepted")
    if not token:
        if not is_loopback(_host_name(host)):
            return AdminProblem(
                "forbidden", f"Host {host!r} is not this machine; set admin.token to serve it"
            )
    elif path not in PUBLIC_PATHS:
        scheme, _, credentials = (header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), token.encode()
        ):
            return AdminProblem("unauthorized", "missing or invalid admin token")
    if has_body and method in ("POST", "PUT", "PATCH", "DELETE"):
        media = (header("content-type") or "").partition(";")[0].strip().lower()
        if media != "application/json":
            return AdminProblem(
                "unsupported_media_type", "a request body must be Content-Type: application/json"
            )
    return None


def _origin_authority(origin: str) -> str:
    """``host[:port]`` of an ``Origin`` value (``null`` and garbage give ``""``)."""
    return origin.strip().lower().partition("://")[2].rstrip("/")


def _host_name(authority: str) -> str:
    """The host of ``host[:port]`` or ``[v6]:port``."""
    if authority.startswith("["):
        return authority.partition("]")[0] + "]"
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


class VersionConflict(Exception):
    """``If-Match`` named a config version that is no longer current."""

    def __init__(self, current: str) -> None:
        super().__init__(f"config changed; current version is {current}")
        self.current = current


def if_match_allows(if_match: str, version: str) -> bool:
    """``If-Match`` against the current version: ``*``, quoted or bare, weak (``W/``) or not."""
    for candidate in if_match.split(","):
        tag = candidate.strip().removeprefix("W/").strip('"')
        if tag in ("*", version):
            return True
    return False


class Control(Protocol):
    """What the service needs from the running gateway (``kairos_gateway.runtime``)."""

    shared: SharedState
    metrics: Metrics

    @property
    def state(self) -> RuntimeState: ...

    @property
    def uptime_s(self) -> float: ...

    def not_ready_reasons(self) -> list[str]: ...

    def restart_required(self, loaded: LoadedConfig) -> list[str]: ...

    def reload(self, reason: str) -> Awaitable[LoadedConfig]: ...

    def apply_edit(
        self, edit: Edit, reason: str, *, if_match: str | None = None
    ) -> Awaitable[tuple[LoadedConfig, LoadedConfig]]: ...


# --- results (each mirrors the kairos_client.models class of the same name) ----------------------


@dataclass(frozen=True, slots=True)
class Health:
    status: str
    version: str
    uptime_seconds: float


@dataclass(frozen=True, slots=True)
class Ready:
    status: Literal["ready", "not_ready"]
    reasons: tuple[str, ...]
    unroutable: tuple[str, ...]
    config_version: str


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """The active health check of one backend (``probed`` False: it has no check)."""

    probed: bool = False
    consecutive_passes: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class CircuitInfo:
    backend: str
    state: CircuitState
    failures: int
    opened_at: float | None
    next_half_open_at: float | None
    healthy: bool
    in_flight: int
    admitting: bool
    half_open_in_s: float
    health_check: HealthCheck


@dataclass(frozen=True, slots=True)
class RouteMetrics(RouteSummary):
    """A route's figures and its policy flags."""

    auth_required: bool
    has_retry: bool
    has_rate_limit: bool
    has_ai: bool
    ai_mode: str | None


@dataclass(frozen=True, slots=True)
class BackendMetrics(BackendSummary):
    """A backend's attempts and latency, with its in-flight count, health and breaker."""

    in_flight: int
    healthy: bool
    circuit: CircuitInfo


@dataclass(frozen=True, slots=True)
class AiMetrics:
    decisions_total: int
    by_source: Mapping[str, int]
    shadow_agreement_rate: float | None
    routes: tuple[RouteStats, ...]  # mirrors models.AiRouteStats


@dataclass(frozen=True, slots=True)
class MetricsSnapshot(Summary):
    """The whole gateway at a glance: the summary, then the rest."""

    in_flight: int
    uptime_seconds: float
    config_version: str
    routes: tuple[RouteMetrics, ...]
    backends: tuple[BackendMetrics, ...]
    ai: AiMetrics


@dataclass(frozen=True, slots=True)
class RoutePolicies:
    """What a route resolves to, as the gateway applies it."""

    protocol: str
    methods: tuple[str, ...]
    load_balancing_strategy: str
    auth_required: bool
    retry: bool
    rate_limit: str | None  # describe() of the policy in force, the global one included
    rate_limit_scope: Literal["route", "global"] | None
    circuit_breaker_from: str  # the route whose breaker policy guards the first backend
    ai_mode: str | None


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """A route: its id and position, its JSON as written (secrets redacted), its backend keys
    (primary and fallback) and its policies."""

    id: str
    index: int
    config: Mapping[str, Any]
    backends: tuple[str, ...]
    fallback: tuple[str, ...]
    policies: RoutePolicies


@dataclass(frozen=True, slots=True)
class RouteChange:
    route: RouteInfo | None
    config_version: str


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    config: Mapping[str, Any]
    config_version: str
    source: str


@dataclass(frozen=True, slots=True)
class ValidationResult:
    valid: bool
    errors: tuple[ConfigIssue, ...]
    warnings: tuple[ConfigIssue, ...]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    reloaded: bool
    config_version: str
    errors: tuple[ConfigIssue, ...] = ()
    restart_required: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteTestRequest:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    client_ip: str = "127.0.0.1"
    token: str | None = None
    body: str | None = None
    ai: bool = False


class AdminService:
    """Every admin answer; see the module docstring for the rules."""

    def __init__(self, control: Control) -> None:
        self._control = control
        self.streams = 0  # open event streams: snapshot events are built only while > 0

    # --- health -------------------------------------------------------------------------------

    def health(self) -> Health:
        return Health("ok", __version__, self._control.uptime_s)

    def ready(self) -> Ready:
        reasons = self._control.not_ready_reasons()
        return Ready(
            status="not_ready" if reasons else "ready",
            reasons=tuple(reasons),
            unroutable=tuple(self._control.state.unroutable()),
            config_version=self._control.state.version,
        )

    # --- metrics and events -------------------------------------------------------------------

    def snapshot(self) -> MetricsSnapshot:
        control = self._control
        shared, metrics, state = control.shared, control.metrics, control.state
        circuits = self.circuits()
        return MetricsSnapshot(
            **_shallow(metrics.summary()),
            in_flight=shared.in_flight.total(),
            uptime_seconds=round(control.uptime_s, 3),
            config_version=state.version,
            routes=tuple(
                RouteMetrics(
                    **_shallow(metrics.route_summary(route_id)),
                    auth_required=route.auth_required,
                    has_retry=route.retry is not None,
                    has_rate_limit=route.rate_limit is not None,
                    has_ai=route.ai is not None,
                    ai_mode=route.ai.mode if route.ai is not None else None,
                )
                for route_id, route in state.routes.items()
            ),
            backends=tuple(
                BackendMetrics(
                    **_shallow(metrics.backend_summary(circuit.backend)),
                    in_flight=circuit.in_flight,
                    healthy=circuit.healthy,
                    circuit=circuit,
                )
                for circuit in circuits
            ),
            ai=self.ai_metrics(),
        )

    async def publish_snapshot(self) -> None:
        """Once a second, from the gateway's tick: a ``snapshot`` event, if anyone listens."""
        if self.streams <= 0:
            return
        snapshot = self.snapshot()
        data = await asyncio.to_thread(plain, snapshot)  # thousands of routes: off the loop
        self._control.shared.events.publish("snapshot", data)

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """Count one open event stream for as long as the block runs."""
        self.streams += 1
        try:
            yield
        finally:
            self.streams -= 1

    def replay(self, last_event_id: str | None) -> list[Event]:
        """The kept events a client resuming after ``last_event_id`` has not seen."""
        bus = self._control.shared.events
        if last_event_id is None or not last_event_id.isdigit():
            return []
        last = int(last_event_id)
        return bus.since(0 if last > bus.last_id else last)

    # --- circuits -----------------------------------------------------------------------------

    def circuits(self) -> list[CircuitInfo]:
        shared = self._control.shared
        checks = shared.health.detail() if shared.health is not None else {}
        infos = []
        for breaker in shared.breakers:
            snap = breaker.snapshot()
            key = snap.backend
            check = checks.get(key)
            infos.append(
                CircuitInfo(
                    backend=key,
                    state=snap.state,
                    failures=snap.failures,
                    opened_at=snap.opened_at,
                    next_half_open_at=snap.next_half_open_at,
                    healthy=shared.healthy(key),
                    in_flight=shared.in_flight.get(key),
                    admitting=shared.admits(key),
                    half_open_in_s=round(shared.seconds_until_half_open(key), 3),
                    health_check=HealthCheck(
                        probed=True,
                        consecutive_passes=check.consecutive_passes,
                        consecutive_failures=check.consecutive_failures,
                        last_error=check.last_error,
                    )
                    if check is not None
                    else HealthCheck(),
                )
            )
        return infos

    def force_circuit(self, backend: str, *, close: bool) -> CircuitInfo:
        """Close (``reset``) or open a backend's breaker by hand."""
        breaker = self._control.shared.breakers.get(backend)
        if breaker is None:
            raise AdminProblem("not_found", f"no backend {backend!r}")
        if close:
            breaker.force_close()
        else:
            breaker.force_open()
        return next(info for info in self.circuits() if info.backend == backend)

    # --- routes -------------------------------------------------------------------------------

    def routes(self) -> tuple[str, list[RouteInfo]]:
        """The config version and every route."""
        state = self._control.state
        return state.version, [self._route_info(state, i) for i in range(len(state.routes))]

    def route(self, route_id: str) -> tuple[str, RouteInfo]:
        state = self._control.state
        return state.version, self._route_info(state, _index_of(state.loaded, route_id))

    async def create_route(self, body: Mapping[str, Any], if_match: str | None) -> RouteChange:
        def add(current: LoadedConfig) -> Mapping[str, Any]:
            name = body.get("name")
            if isinstance(name, str) and name in route_ids(current.config.routers):
                raise AdminProblem("conflict", f"a route named {name!r} already exists")
            return with_route_added(current.document, body)

        before, _ = await self._apply(add, "route created", if_match, conflicts=True)
        created = self._route_info(self._control.state, len(before.config.routers))
        self._publish_route("created", created.id)
        return RouteChange(created, self._control.state.version)

    async def update_route(
        self, route_id: str, body: Mapping[str, Any], if_match: str | None
    ) -> RouteChange:
        index = -1

        def update(current: LoadedConfig) -> Mapping[str, Any]:
            nonlocal index
            index = _index_of(current, route_id)
            running = current.document.get("routers", [])[index]
            return with_route_replaced(current.document, index, restore_secrets(body, running))

        await self._apply(update, "route updated", if_match, conflicts=True)
        updated = self._route_info(self._control.state, index)
        self._publish_route("updated", updated.id)
        return RouteChange(updated, self._control.state.version)

    async def delete_route(self, route_id: str, if_match: str | None) -> RouteChange:
        def remove(current: LoadedConfig) -> Mapping[str, Any]:
            return with_route_removed(current.document, _index_of(current, route_id))

        await self._apply(remove, "route deleted", if_match)
        self._publish_route("deleted", route_id)
        return RouteChange(None, self._control.state.version)

    # --- config -------------------------------------------------------------------------------

    def config_document(self) -> ConfigDocument:
        loaded = self._control.state.loaded
        return ConfigDocument(redact(loaded.document), loaded.version, loaded.source)

    async def put_config(self, body: Mapping[str, Any], if_match: str | None) -> ReloadResult:
        def replace_all(current: LoadedConfig) -> Mapping[str, Any]:
            return restore_secrets(body, current.document)

        _, after = await self._apply(replace_all, "config replaced", if_match)
        pending = self._control.restart_required(after)
        return ReloadResult(True, after.version, restart_required=tuple(pending))

    def validate_config(self, body: Mapping[str, Any]) -> ValidationResult:
        """Validate a config sent by a client (redacted secrets taken from the running one)."""
        running = self._control.state.loaded.document
        try:
            loaded = validate_document(restore_secrets(body, running), source="<request>")
        except ConfigError as exc:
            errors = tuple(exc.errors)
            return ValidationResult(False, errors, tuple(i for i in exc.issues if i not in errors))
        return ValidationResult(True, (), tuple(loaded.issues))

    async def reload(self) -> ReloadResult:
        try:
            loaded = await self._control.reload("admin API")
        except ConfigError as exc:
            return ReloadResult(False, self._control.state.version, tuple(exc.errors))
        pending = self._control.restart_required(loaded)
        return ReloadResult(True, loaded.version, restart_required=tuple(pending))

    # --- dry run and AI -----------------------------------------------------------------------

    async def route_test(self, asked: RouteTestRequest) -> DryRun:
        """``kairos route-test`` on the running config with the live backend state; secrets a
        transformation sets are redacted as in :meth:`config_document`."""
        state, shared = self._control.state, self._control.shared
        body = asked.body.encode() if asked.body is not None else None
        plan = plan_request(
            state,
            asked.method.upper(),
            asked.path,
            headers=asked.headers,
            client_ip=asked.client_ip,
            token=asked.token,
            body=body,
            states=shared,
            prompt=asked.ai,
        )
        if asked.ai:
            plan = await ask_live(state, plan, headers=asked.headers, body=body, states=shared)
        return without_secrets(plan)

    def ai_decisions(self, limit: int) -> tuple[list[Decision], tuple[RouteStats, ...]]:
        log = self._control.shared.ai.log
        return log.recent(limit), self.ai_metrics().routes

    def ai_metrics(self) -> AiMetrics:
        log = self._control.shared.ai.log
        return AiMetrics(
            decisions_total=log.total,
            by_source=dict(log.by_source),
            shadow_agreement_rate=log.shadow_agreement_rate(),
            routes=tuple(log.routes()),
        )

    # --- internals ----------------------------------------------------------------------------

    async def _apply(
        self, edit: Edit, reason: str, if_match: str | None, *, conflicts: bool = False
    ) -> tuple[LoadedConfig, LoadedConfig]:
        try:
            return await self._control.apply_edit(edit, reason, if_match=if_match)
        except VersionConflict as exc:
            raise AdminProblem("precondition_failed", str(exc)) from exc
        except ConfigError as exc:
            duplicate = [i for i in exc.errors if i.code in DUPLICATE_ROUTE_CODES]
            if conflicts and duplicate:
                raise AdminProblem("conflict", duplicate[0].message, exc.errors) from exc
            raise AdminProblem(
                "validation_error", "the config would be invalid", exc.errors
            ) from exc

    def _publish_route(self, action: str, route_id: str) -> None:
        self._control.shared.events.publish("route", {"action": action, "route": route_id})

    @staticmethod
    def _route_info(state: RuntimeState, index: int) -> RouteInfo:
        loaded = state.loaded
        route_id = route_ids(loaded.config.routers)[index]
        route = state.routes[route_id]
        first = (*route.backends, *route.fallback)[0].key
        limit = route.rate_limit
        return RouteInfo(
            id=route_id,
            index=index,
            config=redact(loaded.document.get("routers", [])[index]),
            backends=tuple(b.key for b in route.backends),
            fallback=tuple(b.key for b in route.fallback),
            policies=RoutePolicies(
                protocol=route.protocol,
                methods=route.router.methods,
                load_balancing_strategy=route.router.load_balancing_strategy,
                auth_required=route.auth_required,
                retry=route.retry is not None,
                rate_limit=describe(limit) if limit is not None else None,
                rate_limit_scope=(
                    None
                    if limit is None
                    else "route"
                    if route.rate_limit_route_scoped
                    else "global"
                ),
                circuit_breaker_from=state.breaker_owners.get(first, route_id),
                ai_mode=route.ai.mode if route.ai is not None else None,
            ),
        )


def _shallow(value: Any) -> dict[str, Any]:
    """A dataclass's fields, values as they are (to extend it into a subclass)."""
    return {f.name: getattr(value, f.name) for f in fields(value)}


def _scope(route: CompiledRoute) -> Literal["route", "global"]:
    return "route" if route.rate_limit_route_scoped else "global"


def _index_of(loaded: LoadedConfig, route_id: str) -> int:
    for index, candidate in enumerate(route_ids(loaded.config.routers)):
        if candidate == route_id:
            return index
    raise AdminProblem("not_found", f"no route with id {route_id!r}")


def without_secrets(plan: DryRun) -> DryRun:
    """A plan with credential-named header and query values redacted: it shows what a
    transformation sets, never the secret it sets."""
    url = plan.upstream_url
    if url is not None and "?" in url:
        base, _, query = url.partition("?")
        redacted_url = f"{base}?{redact_query(query)}"
        plan = replace(
            plan, upstream_url=redacted_url, message=plan.message.replace(url, redacted_url)
        )
    if plan.request_transform is not None:
        parts = plan.request_transform
        plan = replace(
            plan,
            request_transform=replace(
                parts, before=_redacted_parts(parts.before), after=_redacted_parts(parts.after)
            ),
        )
    if plan.response_transform is not None:
        headers = tuple(
            replace(op, value=REDACTED) if is_secret_header(op.name) and op.value else op
            for op in plan.response_transform.headers
        )
        plan = replace(plan, response_transform=replace(plan.response_transform, headers=headers))
    return plan


def _redacted_parts(parts: RequestParts) -> RequestParts:
    return replace(
        parts,
        query=redact_query(parts.query or ""),
        headers=tuple((n, REDACTED if is_secret_header(n) else v) for n, v in parts.headers),
    )
