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

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

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
from kairos_core.config.rules import breaker_owners
from kairos_core.cors import CorsPolicy
from kairos_core.events import EventBus
from kairos_core.health import HealthChecker
from kairos_core.ratelimit import RateLimiter
from kairos_core.retry import RetryBudget
from kairos_core.routing import PathPattern, RouteSpec, RouteTable
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

    @property
    def protocol(self) -> str:
        return self.router.protocol

    @property
    def auth_required(self) -> bool:
        return self.router.auth_required


class SharedState:
    """State that outlives any one config; the pipeline, the admin API and the CLI read it."""

    def __init__(
        self, *, upstream: UpstreamClient | None = None, storage_uri: str = "memory://"
    ) -> None:
        self.events = EventBus()
        self.in_flight = InFlight()
        self.breakers = BreakerRegistry(on_transition=self._circuit_event)
        self.limiter = RateLimiter(storage_uri)
        self.health = HealthChecker(upstream, self._health_event) if upstream else None
        self._budgets: dict[str, RetryBudget] = {}

    def budget(self, route_id: str) -> RetryBudget:
        budget = self._budgets.get(route_id)
        if budget is None:
            budget = self._budgets[route_id] = RetryBudget()
        return budget

    def is_healthy(self, backend: str) -> bool:
        return self.health is None or self.health.is_healthy(backend)

    def is_eligible(self, backend: str) -> bool:
        """A candidate now: passing its health check and admitted by its breaker."""
        breaker = self.breakers.get(backend)
        return self.is_healthy(backend) and (breaker is None or breaker.admits())

    def _health_event(self, backend: str, healthy: bool) -> None:
        self.events.publish("health", {"backend": backend, "healthy": healthy})

    def _circuit_event(self, backend: str, old: State, new: State) -> None:
        self.events.publish("circuit", {"backend": backend, "from": old, "to": new})


@dataclass(frozen=True, slots=True)
class RuntimeState:
    """The compiled config: route table, resolved route policies, JWT verifier, CORS."""

    loaded: LoadedConfig
    table: RouteTable[CompiledRoute]
    routes: Mapping[str, CompiledRoute]
    jwt: JwtVerifier | None
    cors: CorsPolicy | None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
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
        """Ids of routes with no eligible backend (primary or fallback) right now."""
        return [
            route_id
            for route_id, route in self.routes.items()
            if not any(self.shared.is_eligible(b.key) for b in (*route.backends, *route.fallback))
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


def compile_state(loaded: LoadedConfig, shared: SharedState | None = None) -> RuntimeState:
    """Build the runtime state of a validated config and point the shared breakers at it."""
    state = build_state(loaded, shared if shared is not None else SharedState())
    state.configure_breakers()
    return state


def build_state(loaded: LoadedConfig, shared: SharedState) -> RuntimeState:
    """Compile a validated config without changing ``shared`` (safe in a worker thread)."""
    config = loaded.config
    specs: list[RouteSpec[CompiledRoute]] = []
    routes: dict[str, CompiledRoute] = {}
    ids = route_ids(config.routers)
    for index, (route_id, router) in enumerate(zip(ids, config.routers, strict=True)):
        route = _compile_route(config, router, route_id, index, shared.in_flight)
        routes[route_id] = route
        specs.append(
            RouteSpec(
                route_id=route_id,
                external=PathPattern.parse(router.external_path),
                internal=PathPattern.parse(router.internal_path),
                methods=frozenset(router.methods),
                hosts=tuple(h.lower() for h in router.hosts),
                order=index,
                payload=route,
            )
        )
    owners = breaker_owners(enumerate(config.routers), config.circuit_breaker)
    jwt = JwtVerifier(config.jwt) if config.jwt is not None else None
    cors = CorsPolicy(config.cors) if config.cors is not None else None
    trusted = tuple(ipaddress.ip_network(p, strict=False) for p in config.server.trusted_proxies)
    return RuntimeState(
        loaded,
        RouteTable(specs),
        routes,
        jwt,
        cors,
        trusted,
        shared,
        {backend: owner.policy for backend, owner in owners.items()},
    )


def _compile_route(
    config: GatewayConfig, router: Router, route_id: str, index: int, in_flight: InFlight
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
    )
