"""The semantic rules of config.json: everything the models' types alone cannot say.

Each rule yields :class:`ConfigIssue` objects with the JSON path of the offending value; the
loader adds file lines. kairos-rs's rules come first (JWT secret, paths, methods, backend scheme,
port, weight, retry limits, duplicate paths, ``..``, auth needs ``jwt``, parameter syntax), then
Kairos's (unsupported protocols are rejected by the models; ``workers > 1`` needs Redis,
``ai_policy`` needs two backends, ``fallback_backend_index`` in range, a non-loopback admin listener
needs a token, credentialed CORS names its origins, transformation regexes compile, ...).
Warnings and recommendations follow kairos-rs (plain-HTTP backends, many methods, ambiguous
patterns, many dynamic routes).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kairos_core.ai.providers import PROVIDER_NAMES, resolve
from kairos_core.config.errors import ConfigIssue, Severity
from kairos_core.config.models import (
    HTTP_METHODS,
    AiPolicy,
    Backend,
    CircuitBreakerConfig,
    GatewayConfig,
    HeaderTransformation,
    RateLimitConfig,
    RequestTransformation,
    ResponseTransformation,
    RetryConfig,
    Router,
)
from kairos_core.forwarding import LOOPBACK_NAMES, is_loopback
from kairos_core.http import HEADER_NAME
from kairos_core.routing import PathPattern, PatternError, RouteSpec, find_conflicts

MIN_JWT_SECRET_CHARS = 32
MAX_RETRIES = 10
MANY_METHODS = 4
MANY_PARAMS = 3
MANY_DYNAMIC_ROUTES = 50
PLACEHOLDER_SECRETS = frozenset(
    {
        "please-change-this-secret",
        "your-secret-key",
        "changeme",
        "change-me",
        "secret",
        "your-256-bit-secret",
        "jwt-secret",
    }
)
_PLACEHOLDER_MARKERS = ("change-this", "change_this", "changeme", "your-", "example", "placeholder")
BACKEND_SCHEMES = ("http", "https", "ws", "wss")

E, W, R = Severity.ERROR, Severity.WARNING, Severity.RECOMMENDATION
T = TypeVar("T")


def route_spec(router: Router, route_id: str, order: int, payload: T) -> RouteSpec[T]:
    """What the route table knows of a router (raises :class:`PatternError` on a bad path)."""
    return RouteSpec(
        route_id=route_id,
        external=PathPattern.parse(router.external_path),
        internal=PathPattern.parse(router.internal_path),
        methods=frozenset(router.methods),
        hosts=tuple(h.lower() for h in router.hosts),
        order=order,
        payload=payload,
    )


@dataclass(frozen=True, slots=True)
class BreakerOwner:
    """The route whose breaker policy a backend follows, and that policy."""

    index: int
    policy: CircuitBreakerConfig


def breaker_owners(
    routers: Iterable[tuple[int, Router]], default: CircuitBreakerConfig
) -> dict[str, BreakerOwner]:
    """Each backend's breaker policy. There is one breaker per backend (``scheme://host:port``),
    shared by every route that names it; the first route in config order that names the backend
    (primary backends, then fallbacks) decides the policy: its own ``circuit_breaker``, else
    ``default`` (the global block). ``routers`` pairs each router with its index."""
    owners: dict[str, BreakerOwner] = {}
    for index, router in routers:
        for backend in (*router.effective_backends, *router.fallback):
            if backend.key not in owners:
                owners[backend.key] = BreakerOwner(index, router.circuit_breaker or default)
    return owners


@dataclass(frozen=True, slots=True)
class Partial:
    """Which parts of a config validated, when not all of it did.

    ``router_indexes`` gives the document position of each router of the partial config (the
    routers that did not validate are left out, ``routers_dropped`` says some were), and
    ``broken_blocks`` names the top-level blocks that are present but did not validate.
    """

    router_indexes: tuple[int, ...] = ()
    routers_dropped: bool = False
    broken_blocks: frozenset[str] = frozenset()


def check_config(config: GatewayConfig, partial: Partial | None = None) -> Iterator[ConfigIssue]:
    """Every rule, over a config whose shape is valid, or over the parts of one that are.

    With ``partial``, the cross-field rules still run on what validated (an auth route without a
    ``jwt`` block, duplicate paths, shared breakers...), so every problem is reported at once; a
    rule that needs a broken block is skipped rather than run on its defaults (a mistyped
    ``jwt`` block is not a missing one).
    """
    broken = partial.broken_blocks if partial is not None else frozenset()
    indexes = partial.router_indexes if partial is not None else range(len(config.routers))
    routers = list(zip(indexes, config.routers, strict=True))
    dropped = partial is not None and (partial.routers_dropped or "routers" in broken)
    if not config.routers and not dropped:
        yield ConfigIssue(
            "routers",
            "no routers configured: the gateway would not route anything",
            code="no_routes",
        )
    yield from _check_jwt(config, routers, broken)
    yield from _check_server(config, broken)
    if config.rate_limit is not None:
        yield from _check_rate_limit(config.rate_limit, "rate_limit", config, broken)
    yield from _check_breaker(config.circuit_breaker, "circuit_breaker")
    for index, router in routers:
        yield from check_router_alone(router, index)
        if router.rate_limit is not None:
            where = f"routers[{index}].rate_limit"
            yield from _check_rate_limit(router.rate_limit, where, config, broken)
        if router.ai_policy is not None and router.ai_policy.enabled and "ai" not in broken:
            yield from _check_ai_provider(router.ai_policy, f"routers[{index}]", config)
    yield from _check_route_set(routers)
    yield from _check_transport_security(routers)
    if "circuit_breaker" not in broken:
        yield from _check_shared_breakers(routers, config.circuit_breaker)


def _check_ai_provider(policy: AiPolicy, at: str, config: GatewayConfig) -> Iterator[ConfigIssue]:
    """Name the selector that will really serve: an unknown provider, or no LLM (no key, no
    model), leaves the route to the offline heuristic; say so once, here."""
    names = [p for p in (policy.provider, config.ai.provider if config.ai else None) if p]
    for name in names[:1]:
        if name not in PROVIDER_NAMES:
            hint = difflib.get_close_matches(name, PROVIDER_NAMES, n=1)
            yield ConfigIssue(
                f"{at}.ai_policy.provider" if policy.provider else "ai.provider",
                f"unknown AI provider {name!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" (known: {', '.join(PROVIDER_NAMES)})",
                W,
                code="unknown_ai_provider",
            )
            return
    if policy.strategy.kind != "content_analysis":
        return
    resolved = resolve(config.ai, policy, os.environ)
    if not resolved.endpoints:
        yield ConfigIssue(
            f"{at}.ai_policy",
            f"no LLM will serve this route ({resolved.note}): the offline heuristic selects",
            W,
            code="no_llm",
        )


def check_router_alone(router: Router, index: int) -> Iterator[ConfigIssue]:
    """The rules that need only the router itself (also run when other parts are broken)."""
    at = f"routers[{index}]"
    external, problems = _check_pattern(router.external_path, f"{at}.external_path", "External")
    yield from problems
    internal, problems = _check_pattern(router.internal_path, f"{at}.internal_path", "Internal")
    yield from problems
    if external is not None and internal is not None:
        for name in internal.param_names:
            if name not in external.param_names:
                yield ConfigIssue(
                    f"{at}.internal_path",
                    f"uses {{{name}}} but external_path {router.external_path!r} has no such "
                    f"parameter (it has: {', '.join(external.param_names) or 'none'})",
                    code="unknown_param",
                )
        if len(external.param_names) > MANY_PARAMS:
            yield ConfigIssue(
                f"{at}.external_path",
                f"has many parameters ({len(external.param_names)}); consider a shorter pattern",
                W,
                code="many_params",
            )
    yield from _check_methods(router, at)
    yield from _check_backends(router, at)
    if router.retry is not None:
        yield from _check_retry(router.retry, f"{at}.retry")
    if router.circuit_breaker is not None:
        yield from _check_breaker(router.circuit_breaker, f"{at}.circuit_breaker")
    if router.request_transformation is not None:
        yield from _check_request_transform(router.request_transformation, at)
    if router.response_transformation is not None:
        yield from _check_response_transform(router.response_transformation, at)
    if router.ai_policy is not None and router.ai_policy.enabled:
        count = len(router.effective_backends)
        if count < 2:
            yield ConfigIssue(
                f"{at}.ai_policy",
                f"AI routing needs at least two backends to choose from; this route has {count}",
                code="ai_needs_backends",
            )
        fallback = router.ai_policy.fallback_backend_index
        if fallback is not None and count and fallback >= count:
            yield ConfigIssue(
                f"{at}.ai_policy.fallback_backend_index",
                f"must be between 0 and {count - 1} (the route has {count} backends), "
                f"got {fallback}",
                code="ai_fallback_index",
            )
    if router.timeout_ms and router.deadline_ms and router.timeout_ms > router.deadline_ms:
        yield ConfigIssue(
            f"{at}.timeout_ms",
            f"per-try timeout {router.timeout_ms} ms exceeds deadline_ms {router.deadline_ms}",
            W,
            code="timeout_over_deadline",
        )
    for h, host in enumerate(router.hosts):
        if not re.fullmatch(r"(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", host):
            yield ConfigIssue(
                f"{at}.hosts[{h}]",
                f"must be a host name like 'api.example.com', got {host!r}",
                code="bad_host_pattern",
            )


def _check_pattern(
    path: str, where: str, label: str
) -> tuple[PathPattern | None, list[ConfigIssue]]:
    if not path.startswith("/"):
        return None, [
            ConfigIssue(where, f"{label} path must start with '/', got {path!r}", code="bad_path")
        ]
    if ".." in path:
        return None, [
            ConfigIssue(
                where, f"path traversal ('..') is not allowed, got {path!r}", code="path_traversal"
            )
        ]
    try:
        return PathPattern.parse(path), []
    except PatternError as exc:
        return None, [
            ConfigIssue(where, f"invalid route pattern {path!r}: {exc}", code="bad_pattern")
        ]


def _check_methods(router: Router, at: str) -> Iterator[ConfigIssue]:
    if not router.methods:
        yield ConfigIssue(
            f"{at}.methods", "at least one HTTP method must be specified", code="no_methods"
        )
    for m, method in enumerate(router.methods):
        if method not in HTTP_METHODS:
            hint = " (methods are upper-case)" if method.upper() in HTTP_METHODS else ""
            yield ConfigIssue(
                f"{at}.methods[{m}]",
                f"invalid HTTP method {method!r}{hint}; allowed: {', '.join(HTTP_METHODS)}",
                allowed=HTTP_METHODS,
                code="bad_method",
            )
    if len(set(router.methods)) > MANY_METHODS:
        yield ConfigIssue(
            f"{at}.methods",
            f"allows many HTTP methods ({len(set(router.methods))}); consider restricting them",
            W,
            code="many_methods",
        )
    if router.protocol == "websocket" and "GET" not in router.methods:
        yield ConfigIssue(
            f"{at}.methods",
            "a websocket route must allow GET for the upgrade",
            W,
            code="websocket_needs_get",
        )


def _check_backends(router: Router, at: str) -> Iterator[ConfigIssue]:
    if router.backends is None:
        if router.host is None and router.port is None:
            yield ConfigIssue(
                at, "needs 'backends' or the legacy 'host' + 'port'", code="no_backends"
            )
            return
        if router.host is None or router.port is None:
            missing = "host" if router.host is None else "port"
            yield ConfigIssue(
                f"{at}.{missing}",
                "legacy routes need both 'host' and 'port'",
                code="legacy_backend_incomplete",
            )
            return
        yield from _check_backend(router.effective_backends[0], at, router.protocol, legacy=True)
        return
    if not router.backends:
        yield ConfigIssue(
            f"{at}.backends", "at least one backend must be specified", code="no_backends"
        )
    for b, backend in enumerate(router.backends):
        yield from _check_backend(backend, f"{at}.backends[{b}]", router.protocol)
    for f, backend in enumerate(router.fallback):
        yield from _check_backend(backend, f"{at}.fallback[{f}]", router.protocol)


def _check_backend(
    backend: Backend, at: str, protocol: str, legacy: bool = False
) -> Iterator[ConfigIssue]:
    allowed = BACKEND_SCHEMES if protocol == "websocket" else ("http", "https")
    problem = backend_host_problem(backend.host, allowed)
    if problem is not None:
        schemes = tuple(s + "://" for s in allowed)
        shown = _without_password(backend.host)
        yield ConfigIssue(
            f"{at}.host",
            f"backend host {problem}, got {shown!r}",
            allowed=schemes,
            code="bad_backend_host",
        )
    if not 1 <= backend.port <= 65535:
        yield ConfigIssue(
            f"{at}.port", f"must be between 1 and 65535, got {backend.port}", code="bad_port"
        )
    if not legacy and backend.weight < 1:
        yield ConfigIssue(
            f"{at}.weight", f"must be greater than 0, got {backend.weight}", code="bad_weight"
        )
    path = backend.health_check_path
    if path is not None and not path.startswith("/"):
        yield ConfigIssue(
            f"{at}.health_check_path",
            f"must start with '/', got {path!r}",
            code="bad_health_check_path",
        )


def backend_host_problem(host: str, schemes: Sequence[str]) -> str | None:
    """What is wrong with a backend ``host``, or None. A host is a scheme (one of ``schemes``),
    ``://`` and a host name or IP address (IPv6 in brackets), with nothing else: no port (it is
    ``port``), no path (it is ``internal_path``), no ``user:password@`` (it would show up in
    circuit names and metric labels), no query string, no spaces or control characters. One
    trailing ``/`` is tolerated."""
    scheme, separator, rest = host.partition("://")
    rest = rest.removesuffix("/")
    if not separator or scheme.lower() not in schemes or not rest:
        return f"must start with {', '.join(s + '://' for s in schemes)} followed by a host name"
    if any(c.isspace() or not c.isprintable() for c in rest):
        return "must not contain spaces or control characters (CR, LF, tab...)"
    if "@" in rest:
        return (
            "must not contain credentials ('user:password@'); send them with a "
            "request_transformation header"
        )
    if "?" in rest or "#" in rest:
        return "must not contain a query string or fragment"
    if "/" in rest:
        return "must not contain a path (put it in internal_path)"
    if rest.startswith("["):
        address, bracket, after = rest[1:].partition("]")
        if bracket and after.startswith(":"):
            return "must not contain a port (put it in 'port')"
        if not bracket or after or not _is_ip(address, 6):
            return "must be a host name, an IPv4 address or an IPv6 address in brackets"
        return None
    if ":" in rest:
        name, _, port = rest.rpartition(":")
        if port.isdigit() and ":" not in name:
            return "must not contain a port (put it in 'port')"
        if _is_ip(rest, 6):
            return "must put an IPv6 address in brackets (http://[::1])"
        return "must be a host name, an IPv4 address or an IPv6 address in brackets"
    looks_numeric = all(label.isdigit() for label in rest.split("."))
    if (looks_numeric and not _is_ip(rest, 4)) or not _HOST_NAME.fullmatch(rest):
        return "must be a host name, an IPv4 address or an IPv6 address in brackets"
    return None


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"  # underscores: Docker service names
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _without_password(host: str) -> str:
    """``host`` with the password of a ``user:password@`` part masked, fit for a message."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", host)


def _check_retry(retry: RetryConfig, at: str) -> Iterator[ConfigIssue]:
    if retry.max_retries > MAX_RETRIES:
        yield ConfigIssue(
            f"{at}.max_retries",
            f"must be at most {MAX_RETRIES} to prevent excessive delays, got {retry.max_retries}",
            code="too_many_retries",
        )
    if retry.initial_backoff_ms > retry.max_backoff_ms:
        yield ConfigIssue(
            f"{at}.initial_backoff_ms",
            f"cannot be greater than max_backoff_ms ({retry.initial_backoff_ms} > "
            f"{retry.max_backoff_ms})",
            code="backoff_order",
        )
    if retry.backoff_multiplier < 1.0:
        yield ConfigIssue(
            f"{at}.backoff_multiplier",
            f"must be >= 1.0, got {retry.backoff_multiplier}",
            code="backoff_multiplier",
        )
    yield from _check_status_codes(retry.retry_on_status_codes, f"{at}.retry_on_status_codes")


def _check_breaker(breaker: CircuitBreakerConfig, at: str) -> Iterator[ConfigIssue]:
    yield from _check_status_codes(breaker.failure_status_codes, f"{at}.failure_status_codes")


def _check_status_codes(codes: Sequence[int], at: str) -> Iterator[ConfigIssue]:
    for i, code in enumerate(codes):
        if not 100 <= code <= 599:
            yield ConfigIssue(
                f"{at}[{i}]",
                f"must be an HTTP status between 100 and 599, got {code}",
                code="bad_status_code",
            )


def _check_request_transform(t: RequestTransformation, at: str) -> Iterator[ConfigIssue]:
    at = f"{at}.request_transformation"
    yield from _check_header_transforms(t.headers, f"{at}.headers")
    if t.path is not None:
        yield from _check_regex(t.path.pattern, f"{at}.path.pattern")
    for q, query in enumerate(t.query_params):
        where = f"{at}.query_params[{q}]"
        if query.action == "replace":
            yield ConfigIssue(
                f"{where}.action",
                "query action 'replace' is not supported; allowed: add, set, remove",
                allowed=("add", "set", "remove"),
                code="bad_query_action",
            )
        elif not query.name:
            yield ConfigIssue(
                f"{where}.name", "query parameter name cannot be empty", code="empty_query_name"
            )
        elif query.action in ("add", "set") and query.value is None:
            yield ConfigIssue(
                f"{where}.value", f"action {query.action!r} needs a 'value'", code="missing_value"
            )


def _check_response_transform(t: ResponseTransformation, at: str) -> Iterator[ConfigIssue]:
    yield from _check_header_transforms(t.headers, f"{at}.response_transformation.headers")


def _check_header_transforms(
    headers: Sequence[HeaderTransformation], at: str
) -> Iterator[ConfigIssue]:
    for h, header in enumerate(headers):
        where = f"{at}[{h}]"
        if not HEADER_NAME.fullmatch(header.name):
            yield ConfigIssue(
                f"{where}.name", f"invalid header name {header.name!r}", code="bad_header_name"
            )
        for key in ("value", "replacement"):
            text = getattr(header, key)
            if text is not None and any(c in text for c in "\r\n\0"):
                yield ConfigIssue(
                    f"{where}.{key}",
                    "must not contain CR, LF or NUL characters",
                    code="control_character",
                )
        if header.action in ("add", "set") and header.value is None:
            yield ConfigIssue(
                f"{where}.value", f"action {header.action!r} needs a 'value'", code="missing_value"
            )
        if header.action == "replace":
            if header.pattern is None or header.replacement is None:
                yield ConfigIssue(
                    where,
                    "action 'replace' needs 'pattern' and 'replacement'",
                    code="replace_needs_pattern",
                )
            else:
                yield from _check_regex(header.pattern, f"{where}.pattern")


def _check_regex(pattern: str, at: str) -> Iterator[ConfigIssue]:
    try:
        re.compile(pattern)
    except re.error as exc:
        yield ConfigIssue(at, f"invalid regular expression {pattern!r}: {exc}", code="bad_regex")


def _check_rate_limit(
    limit: RateLimitConfig, at: str, config: GatewayConfig, broken: frozenset[str]
) -> Iterator[ConfigIssue]:
    if limit.enable_redis and not config.cluster.redis_url and "cluster" not in broken:
        yield ConfigIssue(
            f"{at}.enable_redis",
            "shared counters need 'cluster.redis_url' to be set",
            code="redis_required",
        )
    user_keyed = any("User" in s for s in limit.strategies)
    if user_keyed and config.jwt is None and "jwt" not in broken:
        yield ConfigIssue(
            f"{at}.strategy",
            "per-user limits key on the JWT 'sub', but no 'jwt' block is configured; "
            "requests will be keyed by client IP",
            W,
            code="per_user_without_jwt",
        )


def _check_jwt(
    config: GatewayConfig, routers: Sequence[tuple[int, Router]], broken: frozenset[str]
) -> Iterator[ConfigIssue]:
    for index, router in routers:
        if router.auth_required and config.jwt is None and "jwt" not in broken:
            yield ConfigIssue(
                f"routers[{index}].auth_required",
                "route requires authentication but no 'jwt' block is configured",
                code="auth_without_jwt",
            )
    if config.jwt is None:
        return
    secret = config.jwt.secret
    if not secret:
        yield ConfigIssue("jwt.secret", "JWT secret cannot be empty", code="weak_jwt_secret")
    elif secret.lower() in PLACEHOLDER_SECRETS:
        yield ConfigIssue(
            "jwt.secret",
            "JWT secret must be changed from its placeholder value",
            code="placeholder_jwt_secret",
        )
    elif (size := len(secret.encode("utf-8", "surrogatepass"))) < MIN_JWT_SECRET_CHARS:
        yield ConfigIssue(
            "jwt.secret",
            f"JWT secret must be at least {MIN_JWT_SECRET_CHARS} characters, got {size}",
            code="weak_jwt_secret",
        )
    elif any(marker in secret.lower() for marker in _PLACEHOLDER_MARKERS):
        yield ConfigIssue(
            "jwt.secret",
            "JWT secret looks like a placeholder; use a random value from the environment "
            '("secret": "${JWT_SECRET}")',
            W,
            code="placeholder_jwt_secret",
        )


def _check_server(config: GatewayConfig, broken: frozenset[str]) -> Iterator[ConfigIssue]:
    server, admin = "server" not in broken, "admin" not in broken
    ports = (("server.port", config.server.port, server), ("admin.port", config.admin.port, admin))
    for at, port, valid in ports:
        if valid and not 1 <= port <= 65535:
            yield ConfigIssue(at, f"must be between 1 and 65535, got {port}", code="bad_port")
    for i, proxy in enumerate(config.server.trusted_proxies if server else ()):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            yield ConfigIssue(
                f"server.trusted_proxies[{i}]",
                f"must be an IP address or CIDR range like '10.0.0.0/8', got {proxy!r}",
                code="bad_trusted_proxy",
            )
    if server and "cluster" not in broken and (workers := check_workers(config)) is not None:
        yield workers
    url = config.cluster.redis_url if "cluster" not in broken else None
    if url is not None and not url.startswith(REDIS_URL_SCHEMES):
        yield ConfigIssue(
            "cluster.redis_url",
            "must be a Redis URL (redis://host:port/db, rediss://... or unix:///path), got "
            + (f"scheme {url.split('://', 1)[0]!r}" if "://" in url else "no scheme"),
            code="bad_redis_url",
        )
    if admin and not is_loopback(config.admin.host) and not config.admin.token:
        yield ConfigIssue(
            "admin.host",
            f"admin listener on non-loopback host {config.admin.host!r} needs 'admin.token' "
            "(or KAIROS_ADMIN_TOKEN)",
            code="admin_needs_token",
        )
    if admin and config.admin.token is not None and len(config.admin.token) < 16:
        yield ConfigIssue(
            "admin.token",
            "admin token is short; use at least 16 random chars",
            W,
            code="short_admin_token",
        )
    cors = config.cors
    if "cors" not in broken and cors and cors.allow_credentials and "*" in cors.allowed_origins:
        yield ConfigIssue(
            "cors.allowed_origins",
            "allow_credentials with '*' would let every web site make requests with your "
            "users' cookies; list the origins that may",
            code="cors_credentials_any_origin",
        )
    same = (config.server.host, config.server.port) == (config.admin.host, config.admin.port)
    if server and admin and same:
        yield ConfigIssue(
            "admin.port",
            "the admin and proxy listeners cannot share an address",
            code="shared_listener_address",
        )


REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")


def check_workers(config: GatewayConfig) -> ConfigIssue | None:
    """``server.workers`` above 1 needs ``cluster.redis_url``: in-memory rate limits and breakers
    would be per worker. ``kairos validate``, the gateway's start and reloads, and the admin API
    all get this answer from here."""
    workers = config.server.workers
    if workers <= 1 or config.cluster.redis_url:
        return None
    return ConfigIssue(
        "server.workers",
        f"workers = {workers} needs 'cluster.redis_url': in-memory rate limits and breakers "
        "would be per worker",
        code="workers_need_redis",
    )


def start_settings(config: GatewayConfig) -> dict[str, str | int | None]:
    """The settings read only when the gateway starts: where its listeners bind, how many
    workers serve, and the Redis that workers and instances share. A reload applies everything
    else; these wait for a restart."""
    return {
        "server.host": config.server.host,
        "server.port": config.server.port,
        "server.workers": config.server.workers,
        "admin.host": config.admin.host,
        "admin.port": config.admin.port,
        "cluster.redis_url": config.cluster.redis_url,
        "cluster.key_prefix": config.cluster.key_prefix,
    }


def restart_required(started: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The listener settings (:func:`listener_settings`) in which ``new`` differs from the config
    the gateway started with: applying ``new`` leaves them as they were until a restart."""
    before = start_settings(started)
    return [key for key, value in start_settings(new).items() if before[key] != value]


def _check_route_set(routers: Sequence[tuple[int, Router]]) -> Iterator[ConfigIssue]:
    seen_names: dict[str, int] = {}
    for index, router in routers:
        if router.name is None:
            continue
        if router.name in seen_names:
            yield ConfigIssue(
                f"routers[{index}].name",
                f"duplicate route name {router.name!r} (also routers[{seen_names[router.name]}])",
                code="duplicate_route_name",
            )
        seen_names.setdefault(router.name, index)

    by_index = dict(routers)
    specs: list[RouteSpec[int]] = []
    for index, router in routers:
        try:
            specs.append(route_spec(router, str(index), index, index))
        except PatternError:
            continue  # reported by check_router_alone
    for first, second in find_conflicts(specs):
        a, b = first.payload, second.payload
        path_a, path_b = by_index[a].external_path, by_index[b].external_path
        if path_a == path_b:
            yield ConfigIssue(
                f"routers[{b}].external_path",
                f"duplicate route path {path_b!r} (same methods and hosts as routers[{a}])",
                code="duplicate_route",
            )
        else:
            yield ConfigIssue(
                f"routers[{b}].external_path",
                f"{path_b!r} conflicts with {path_a!r} "
                f"(routers[{a}]): same shape, so routers[{a}] always wins",
                W,
                code="route_shadowed",
            )
    dynamic = [s for s in specs if s.external.param_names]
    if len(dynamic) > MANY_DYNAMIC_ROUTES:
        yield ConfigIssue(
            "routers",
            f"{len(dynamic)} parameterised routes; matching stays fast, but consider grouping",
            W,
            code="many_dynamic_routes",
        )
    if specs and len(dynamic) == len(specs):
        yield ConfigIssue(
            "routers",
            "every route is parameterised; add static routes for hot endpoints",
            R,
            code="all_dynamic_routes",
        )


def _check_transport_security(routers: Sequence[tuple[int, Router]]) -> Iterator[ConfigIssue]:
    plain: dict[str, str] = {}
    secure = 0
    for index, router in routers:
        for b, backend in enumerate(router.effective_backends):
            where = f"routers[{index}]" + ("" if router.backends is None else f".backends[{b}]")
            if backend.scheme == "http":
                plain.setdefault(backend.host, f"{where}.host")
            elif backend.scheme == "https":
                secure += 1
    for host, where in plain.items():
        name = host.split("://", 1)[-1].split("/", 1)[0]
        if name in LOOPBACK_NAMES:
            yield ConfigIssue(
                where,
                f"plain-HTTP backend on loopback ({host}); fine locally",
                R,
                code="plain_http_loopback",
            )
        else:
            yield ConfigIssue(
                where, f"plain-HTTP backend {host}: consider https://", W, code="plain_http"
            )
    remote_plain = [h for h in plain if h.split("://", 1)[-1] not in LOOPBACK_NAMES]
    if remote_plain and not secure:
        yield ConfigIssue(
            "routers",
            "every backend uses plain HTTP; consider HTTPS in production",
            R,
            code="plain_http",
        )


def _check_shared_breakers(
    routers: Sequence[tuple[int, Router]], default: CircuitBreakerConfig
) -> Iterator[ConfigIssue]:
    """A route's ``circuit_breaker`` does nothing for a backend an earlier route names first
    (:func:`breaker_owners`): say so, naming both routes and the backend."""
    owners = breaker_owners(routers, default)
    by_index = dict(routers)
    for index, router in routers:
        policy = router.circuit_breaker
        if policy is None:
            continue
        keys = dict.fromkeys(b.key for b in (*router.effective_backends, *router.fallback))
        for key in keys:
            owner = owners[key]
            if owner.index == index or owner.policy == policy:
                continue
            yield ConfigIssue(
                f"routers[{index}].circuit_breaker",
                f"is ignored for backend {key}: routers[{owner.index}] "
                f"({_label(by_index[owner.index])}) names that backend first, and the breaker is "
                f"per backend, so its policy decides for every route; routers[{index}] "
                f"({_label(router)}) gets that breaker too. Give both routes the same "
                "circuit_breaker, or set it on the first",
                W,
                code="breaker_ignored",
            )


def _label(router: Router) -> str:
    return repr(router.name) if router.name else repr(router.external_path)
