"""``RuntimeState``: everything compiled from one config, built once and never mutated.

A reload builds a new state and swaps the reference; requests in flight finish on the state they
started with. State that must survive reloads (in-flight counts, and later breakers, limiter
counters and health) is passed in and keyed by backend or policy identity, never stored here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from kairos_core.auth import JwtVerifier
from kairos_core.balancing import BackendRef, Balancer, InFlight, make_balancer
from kairos_core.config import LoadedConfig, route_ids
from kairos_core.config.models import (
    Backend,
    CircuitBreakerConfig,
    GatewayConfig,
    RateLimitConfig,
    RetryConfig,
    Router,
)
from kairos_core.cors import CorsPolicy
from kairos_core.routing import PathPattern, RouteSpec, RouteTable
from kairos_core.transform import CompiledRequestTransform, CompiledResponseTransform


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """One route with its policies resolved (route block, else global block, else default)."""

    route_id: str
    index: int
    router: Router
    backends: tuple[Backend, ...]
    fallback: tuple[Backend, ...]
    balancer: Balancer
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


@dataclass(frozen=True, slots=True)
class RuntimeState:
    """The compiled config: route table, resolved route policies, JWT verifier."""

    loaded: LoadedConfig
    table: RouteTable[CompiledRoute]
    routes: Mapping[str, CompiledRoute]
    jwt: JwtVerifier | None
    cors: CorsPolicy | None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    in_flight: InFlight = field(repr=False)

    @property
    def config(self) -> GatewayConfig:
        return self.loaded.config

    @property
    def version(self) -> str:
        return self.loaded.version


def compile_state(loaded: LoadedConfig, in_flight: InFlight | None = None) -> RuntimeState:
    """Build the runtime state of a validated config."""
    config = loaded.config
    in_flight = in_flight if in_flight is not None else InFlight()
    specs: list[RouteSpec[CompiledRoute]] = []
    routes: dict[str, CompiledRoute] = {}
    for index, (route_id, router) in enumerate(
        zip(route_ids(config.routers), config.routers, strict=True)
    ):
        route = _compile_route(config, router, route_id, index, in_flight)
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
    jwt = JwtVerifier(config.jwt) if config.jwt is not None else None
    cors = CorsPolicy(config.cors) if config.cors is not None else None
    trusted = tuple(ipaddress.ip_network(p, strict=False) for p in config.server.trusted_proxies)
    return RuntimeState(loaded, RouteTable(specs), routes, jwt, cors, trusted, in_flight)


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
        retry=router.retry,
        rate_limit=rate_limit,
        rate_limit_route_scoped=router.rate_limit is not None,
        breaker=router.circuit_breaker or config.circuit_breaker,
        timeout_ms=router.timeout_ms or config.server.upstream_timeout_ms,
        deadline_ms=router.deadline_ms,
        request_transform=CompiledRequestTransform(request_t) if request_t else None,
        response_transform=CompiledResponseTransform(response_t) if response_t else None,
    )
