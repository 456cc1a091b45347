"""``RuntimeState`` (compiled from one config, never mutated) and ``SharedState`` (what
outlives configs).

A reload builds a new ``RuntimeState`` and swaps the reference; requests in flight finish on the
state they started with. Building (:func:`build_state`) reads nothing that requests change, so
the gateway runs it off the event loop; only :meth:`RuntimeState.configure_breakers` touches the
shared breakers, and it runs on the loop just before the swap (:func:`compile_state` does both).
``SharedState`` holds what must survive reloads, keyed by backend or route identity: in-flight
counts, breakers, rate-limit counters, retry budgets, health, events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kairos_core.ai.decisions import Decision, DecisionLog
from kairos_core.ai.selector import AiRoute, AiSelector, compile_ai
from kairos_core.auth import JwtVerifier
from kairos_core.balancing import BackendRef, Balancer, InFlight, RoundRobin, make_balancer
from kairos_core.breaker import BreakerRegistry, State
from kairos_core.config import LoadedConfig, route_ids
from kairos_core.config.models import (
    Backend,
    CircuitBreakerConfig,
    GatewayConfig,
    RateLimitConfig,
    RetryConfig,
    Router,
)
from kairos_core.config.rules import breaker_owners, route_spec
from kairos_core.cors import CorsPolicy
from kairos_core.errors import GatewayError
from kairos_core.events import EventBus
from kairos_core.forwarding import Networks, parse_networks
from kairos_core.health import HealthChecker
from kairos_core.ratelimit import RateLimiter, SharedCounters
from kairos_core.retry import RetryBudget
from kairos_core.routing import RouteSpec, RouteTable
from kairos_core.selection import (
    BackendObservations,
    BackendStats,
    CircuitState,
    Pool,
    find_candidates,
)
from kairos_core.transform import CompiledRequestTransform, CompiledResponseTransform
from kairos_core.upstream import UpstreamClient


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """One route with its policies resolved (route block, else global block, else default)."""

    route_id: str
    index: int
    router: Router
    backends: tuple[Backend, ...]
    fallback: tuple[Backend, ...]
    balancer: Balancer
    fallback_balancer: Balancer
    retry: RetryConfig | None
    rate_limit: RateLimitConfig | None
    rate_limit_route_scoped: bool
    breaker: CircuitBreakerConfig
    timeout_ms: int
    deadline_ms: int | None
    request_transform: CompiledRequestTransform | None
    response_transform: CompiledResponseTransform | None
    ai: AiRoute | None = None

    @property
    def protocol(self) -> str:
        return self.router.protocol

    @property
    def keys_on_user(self) -> bool:
        """Whether the route's rate limit counts per JWT ``sub`` (an optional token is read)."""
        return self.rate_limit is not None and any(
            "User" in strategy for strategy in self.rate_limit.strategies
        )

    def balancer_for(self, pool: Pool) -> Balancer:
        return self.balancer if pool == "backends" else self.fallback_balancer

    @property
    def auth_required(self) -> bool:
        return self.router.auth_required


class SharedState:
    """State that outlives any one config; the pipeline, the admin API and the CLI read it.

    It is the live :class:`~kairos_core.selection.BackendStates`: selection reads health,
    breakers, in-flight counts and recent upstream behaviour through it.
    """

    def __init__(
        self, *, upstream: UpstreamClient | None = None, counters: SharedCounters | None = None
    ) -> None:
        self.events = EventBus()
        self.in_flight = InFlight()
        self.breakers = BreakerRegistry(
            on_transition=self._circuit_event, on_remote_transition=self._shared_circuit_event
        )
        self.limiter = RateLimiter(counters)
        self.health = (
            HealthChecker(upstream, self._health_event, on_remote_change=self._shared_health_event)
            if upstream
            else None
        )
        self.observations = BackendObservations()
        self.ai = AiSelector(DecisionLog(self._ai_event))
        self._budgets: dict[str, RetryBudget] = {}

    def budget(self, route_id: str) -> RetryBudget:
        budget = self._budgets.get(route_id)
        if budget is None:
            budget = self._budgets[route_id] = RetryBudget()
        return budget

    # --- BackendStates ----------------------------------------------------------------------------

    def healthy(self, key: str) -> bool:
        return self.health is None or self.health.is_healthy(key)

    def admits(self, key: str) -> bool:
        breaker = self.breakers.get(key)
        return breaker is None or breaker.admits()

    def circuit(self, key: str) -> CircuitState:
        breaker = self.breakers.get(key)
        return "closed" if breaker is None else breaker.state

    def seconds_until_half_open(self, key: str) -> float:
        breaker = self.breakers.get(key)
        return 0.0 if breaker is None else breaker.seconds_until_half_open()

    def in_flight_count(self, key: str) -> int:
        return self.in_flight.get(key)

    def stats(self, key: str) -> BackendStats:
        return self.observations.stats(key)

    # --- events -----------------------------------------------------------------------------------

    def _ai_event(self, decision: Decision) -> None:
        self.events.publish("ai_decision", decision_data(decision))

    def _health_event(self, backend: str, healthy: bool) -> None:
        self.events.publish("health", {"backend": backend, "healthy": healthy, "origin": "local"})

    def _shared_health_event(self, backend: str, healthy: bool) -> None:
        """A flip another process's probe found (cluster mode)."""
        self.events.publish("health", {"backend": backend, "healthy": healthy, "origin": "cluster"})

    def _circuit_event(self, backend: str, old: State, new: State) -> None:
        self.events.publish(
            "circuit", {"backend": backend, "from": old, "to": new, "origin": "local"}
        )

    def _shared_circuit_event(self, backend: str, old: State, new: State) -> None:
        """A transition another worker or instance published, applied here (cluster mode)."""
        self.events.publish(
            "circuit", {"backend": backend, "from": old, "to": new, "origin": "cluster"}
        )


@dataclass(frozen=True, slots=True)
class RuntimeState:
    """The compiled config: route table, resolved route policies, JWT verifier, CORS."""

    loaded: LoadedConfig
    table: RouteTable[CompiledRoute]
    routes: Mapping[str, CompiledRoute]
    jwt: JwtVerifier | None
    cors: CorsPolicy | None
    trusted_proxies: Networks
    breaker_owners: Mapping[str, str]
    shared: SharedState = field(repr=False)
    breaker_policies: Mapping[str, CircuitBreakerConfig] = field(default_factory=dict, repr=False)

    @property
    def config(self) -> GatewayConfig:
        return self.loaded.config

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def in_flight(self) -> InFlight:
        return self.shared.in_flight

    def configure_breakers(self) -> None:
        """Point the shared breakers at this config's policies (one per backend; on the loop)."""
        self.shared.breakers.configure(self.breaker_policies.items())

    def unroutable(self) -> list[str]:
        """Ids of routes with no candidate backend (primary or fallback) right now."""
        return [
            route_id
            for route_id, route in self.routes.items()
            if isinstance(
                find_candidates(route.backends, route.fallback, self.shared), GatewayError
            )
        ]

    def health_targets(self) -> dict[str, str]:
        """Backend key → probe URL for every backend with a ``health_check_path``."""
        targets: dict[str, str] = {}
        for route in self.routes.values():
            for backend in (*route.backends, *route.fallback):
                if backend.health_check_path:
                    url = f"{backend.key}{backend.health_check_path}"
                    if backend.scheme in ("ws", "wss"):
                        url = "http" + url[2:]
                    targets.setdefault(backend.key, url)
        return targets


def compile_state(
    loaded: LoadedConfig,
    shared: SharedState | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> RuntimeState:
    """Build the runtime state of a validated config and point the shared breakers at it.

    ``environ`` (default: the process environment) is where LLM API keys are looked up.
    """
    state = build_state(loaded, shared if shared is not None else SharedState(), environ=environ)
    state.configure_breakers()
    return state


def build_state(
    loaded: LoadedConfig, shared: SharedState, *, environ: Mapping[str, str] | None = None
) -> RuntimeState:
    """Compile a validated config without changing ``shared`` (safe in a worker thread)."""
    config = loaded.config
    specs: list[RouteSpec[CompiledRoute]] = []
    routes: dict[str, CompiledRoute] = {}
    ids = route_ids(config.routers)
    for index, (route_id, router) in enumerate(zip(ids, config.routers, strict=True)):
        route = _compile_route(config, router, route_id, index, shared.in_flight, environ)
        routes[route_id] = route
        specs.append(route_spec(router, route_id, index, route))
    owners = breaker_owners(enumerate(config.routers), config.circuit_breaker)
    jwt = JwtVerifier(config.jwt) if config.jwt is not None else None
    cors = CorsPolicy(config.cors) if config.cors is not None else None
    trusted = parse_networks(config.server.trusted_proxies)
    return RuntimeState(
        loaded,
        RouteTable(specs),
        routes,
        jwt,
        cors,
        trusted,
        {backend: ids[owner.index] for backend, owner in owners.items()},
        shared,
        {backend: owner.policy for backend, owner in owners.items()},
    )


def _compile_route(
    config: GatewayConfig,
    router: Router,
    route_id: str,
    index: int,
    in_flight: InFlight,
    environ: Mapping[str, str] | None,
) -> CompiledRoute:
    backends = router.effective_backends
    refs = [BackendRef(key=b.key, weight=max(b.weight, 1)) for b in backends]
    balancer = make_balancer(router.load_balancing_strategy, refs, in_flight=in_flight)
    rate_limit = router.rate_limit or config.rate_limit
    request_t = router.request_transformation
    response_t = router.response_transformation
    return CompiledRoute(
        route_id=route_id,
        index=index,
        router=router,
        backends=backends,
        fallback=router.fallback,
        balancer=balancer,
        fallback_balancer=RoundRobin(),
        retry=router.retry,
        rate_limit=rate_limit,
        rate_limit_route_scoped=router.rate_limit is not None,
        breaker=router.circuit_breaker or config.circuit_breaker,
        timeout_ms=router.timeout_ms or config.server.upstream_timeout_ms,
        deadline_ms=router.deadline_ms,
        request_transform=CompiledRequestTransform(request_t) if request_t else None,
        response_transform=CompiledResponseTransform(response_t) if response_t else None,
        ai=compile_ai(route_id, router, config, environ),
    )


def decision_data(decision: Decision) -> dict[str, object]:
    """An AI decision as event data (the wire names of ``kairos_client.models.AiDecision``)."""
    return {
        "id": decision.id,
        "time": decision.time,
        "route": decision.route,
        "request_id": decision.request_id,
        "strategy": decision.strategy,
        "mode": decision.mode,
        "source": decision.source,
        "reason": decision.reason,
        "latency_ms": decision.latency_ms,
        "index": decision.index,
        "backend": decision.backend,
        "shadow": decision.shadow,
        "routed_backend": decision.routed_backend,
        "agrees": decision.agrees,
        "status": decision.status,
        "upstream_ms": decision.upstream_ms,
    }
