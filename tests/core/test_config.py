"""config.json (DESIGN.md §3): one small failing config per rule, and the loader's behaviours.

Each rule test names what a user sees: the JSON path, the file line and a phrase of the message.
Configs are written with ``json.dumps(indent=2)`` (or as literal text) so that lines are
predictable; ``line_of`` finds the line a value sits on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kairos_core.config import (
    MAX_CONFIG_BYTES,
    CircuitBreakerConfig,
    ConfigError,
    ConfigIssue,
    GatewayConfig,
    LoadedConfig,
    RetryConfig,
    Severity,
    load_config,
    parse_config,
    route_ids,
    validate_document,
)
from kairos_core.config.loader import decode_json
from kairos_core.config.rules import restart_required
from kairos_core.state import compile_state

SECRET = "k3Jq9vXw2LmN8pRt5YzA7bCd4EfGh6Ui"  # 32 characters, no placeholder marker
ADMIN_TOKEN = "t0k3n-Vq8zR2mW5xL9pN4s"
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _no_admin_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``admin.token`` defaults to $KAIROS_ADMIN_TOKEN; keep the developer's shell out of it."""
    monkeypatch.delenv("KAIROS_ADMIN_TOKEN", raising=False)


# --- helpers ------------------------------------------------------------------------------------


def backend(host: str = "https://users.internal", port: Any = 443, **fields: Any) -> dict[str, Any]:
    return {"host": host, "port": port, **fields}


def route(external: str = "/api/users", **fields: Any) -> dict[str, Any]:
    """A valid route (https backend, one method) with ``fields`` overriding its keys."""
    base: dict[str, Any] = {
        "external_path": external,
        "internal_path": "/users",
        "methods": ["GET"],
        "backends": [backend()],
    }
    base.update(fields)
    return base


def config(*routers: dict[str, Any], **blocks: Any) -> dict[str, Any]:
    """A valid config holding ``routers`` (one default route when none) and top-level ``blocks``."""
    return {"version": 1, **blocks, "routers": list(routers) or [route()]}


def text_of(document: Any) -> str:
    return document if isinstance(document, str) else json.dumps(document, indent=2)


def load(document: Any, *, environ: dict[str, str] | None = None, **kw: Any) -> LoadedConfig:
    return parse_config(text_of(document), environ={} if environ is None else environ, **kw)


def config_error(document: Any, **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(document, **kw)
    return info.value


def only_error(document: Any, **kw: Any) -> ConfigIssue:
    """The single error ``document`` produces (failing if it produces more or none)."""
    errors = config_error(document, **kw).errors
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def issue_at(issues: Any, path: str, severity: Severity = Severity.ERROR) -> ConfigIssue:
    found = [i for i in issues if i.path == path and i.severity is severity]
    assert len(found) == 1, [str(i) for i in issues]
    return found[0]


def line_of(text: str, needle: str, after: str | None = None) -> int:
    """1-based line of the first line containing ``needle`` (after the line holding ``after``)."""
    lines = text.splitlines()
    start = 0 if after is None else next(i for i, ln in enumerate(lines) if after in ln) + 1
    return next(i for i in range(start, len(lines)) if needle in lines[i]) + 1


def test_the_base_config_of_these_tests_loads_without_any_issue() -> None:
    loaded = load(config())
    assert loaded.issues == ()
    assert loaded.config.routers[0].external_path == "/api/users"


# --- one failing config per rule ----------------------------------------------------------------

RULES = [
    pytest.param(
        config(jwt={"secret": "short-but-random-Zq8"}),
        "jwt.secret",
        "JWT secret must be at least 32 characters, got 20",
        '"secret"',
        id="jwt-secret-too-short",
    ),
    pytest.param(
        config(jwt={"secret": "please-change-this-secret"}),
        "jwt.secret",
        "JWT secret must be changed from its placeholder value",
        '"secret"',
        id="jwt-secret-known-placeholder",
    ),
    pytest.param(
        config(jwt={"secret": ""}),
        "jwt.secret",
        "JWT secret cannot be empty",
        '"secret"',
        id="jwt-secret-empty",
    ),
    pytest.param(
        config(route("api/users")),
        "routers[0].external_path",
        "External path must start with '/', got 'api/users'",
        '"external_path"',
        id="external-path-without-slash",
    ),
    pytest.param(
        config(route(internal_path="users")),
        "routers[0].internal_path",
        "Internal path must start with '/', got 'users'",
        '"internal_path"',
        id="internal-path-without-slash",
    ),
    pytest.param(
        config(route(methods=["GET", "FETCH"])),
        "routers[0].methods[1]",
        "invalid HTTP method 'FETCH'; allowed: GET, POST, PUT, DELETE",
        '"FETCH"',
        id="unknown-method",
    ),
    pytest.param(
        config(route(methods=["get"])),
        "routers[0].methods[0]",
        "invalid HTTP method 'get' (methods are upper-case)",
        '"get"',
        id="lower-case-method",
    ),
    pytest.param(
        config(route(methods=[])),
        "routers[0].methods",
        "at least one HTTP method must be specified",
        '"methods"',
        id="no-methods",
    ),
    pytest.param(
        config(route(backends=[backend("ftp://files.internal", 21)])),
        "routers[0].backends[0].host",
        "backend host must start with http://, https:// followed by a host name, "
        "got 'ftp://files.internal'",
        '"host"',
        id="backend-ftp-scheme",
    ),
    pytest.param(
        config(route(backends=[backend("users.internal")])),
        "routers[0].backends[0].host",
        "backend host must start with http://, https://",
        '"host"',
        id="backend-without-scheme",
    ),
    pytest.param(
        config(route(backends=[backend("https://")])),
        "routers[0].backends[0].host",
        "followed by a host name, got 'https://'",
        '"host"',
        id="backend-scheme-without-host",
    ),
    pytest.param(
        config(route(backends=[backend(port=0)])),
        "routers[0].backends[0].port",
        "must be between 1 and 65535, got 0",
        '"port": 0',
        id="port-zero",
    ),
    pytest.param(
        config(route(backends=[backend(port=70000)])),
        "routers[0].backends[0].port",
        "must be between 1 and 65535, got 70000",
        '"port": 70000',
        id="port-too-big",
    ),
    pytest.param(
        config(route(backends=[backend(weight=0)])),
        "routers[0].backends[0].weight",
        "must be greater than 0, got 0",
        '"weight": 0',
        id="weight-zero",
    ),
    pytest.param(
        config(route(backends=[backend(health_check_path="health")])),
        "routers[0].backends[0].health_check_path",
        "must start with '/', got 'health'",
        '"health_check_path"',
        id="health-check-path-without-slash",
    ),
    pytest.param(
        config(route(retry={"max_retries": 11})),
        "routers[0].retry.max_retries",
        "must be at most 10 to prevent excessive delays, got 11",
        '"max_retries"',
        id="retry-too-many",
    ),
    pytest.param(
        config(route(retry={"initial_backoff_ms": 6000, "max_backoff_ms": 5000})),
        "routers[0].retry.initial_backoff_ms",
        "cannot be greater than max_backoff_ms (6000 > 5000)",
        '"initial_backoff_ms"',
        id="retry-initial-above-max-backoff",
    ),
    pytest.param(
        config(route(retry={"backoff_multiplier": 0.5})),
        "routers[0].retry.backoff_multiplier",
        "must be >= 1.0, got 0.5",
        '"backoff_multiplier"',
        id="retry-multiplier-below-one",
    ),
    pytest.param(
        config(route(retry={"retry_on_status_codes": [502, 700]})),
        "routers[0].retry.retry_on_status_codes[1]",
        "must be an HTTP status between 100 and 599, got 700",
        "700",
        id="retry-status-code-700",
    ),
    pytest.param(
        config(route(circuit_breaker={"failure_status_codes": [99]})),
        "routers[0].circuit_breaker.failure_status_codes[0]",
        "must be an HTTP status between 100 and 599, got 99",
        "99",
        id="breaker-status-code-99",
    ),
    pytest.param(
        config(route(), route(internal_path="/v2/users")),
        "routers[1].external_path",
        "duplicate route path '/api/users' (same methods and hosts as routers[0])",
        ('"backends"', '"external_path"'),
        id="duplicate-external-path",
    ),
    pytest.param(
        config(route("/api/../admin")),
        "routers[0].external_path",
        "path traversal ('..') is not allowed, got '/api/../admin'",
        '"external_path"',
        id="dot-dot-in-path",
    ),
    pytest.param(
        config(route(auth_required=True)),
        "routers[0].auth_required",
        "route requires authentication but no 'jwt' block is configured",
        '"auth_required"',
        id="auth-without-jwt",
    ),
    pytest.param(
        config(route("/a/{id", internal_path="/a")),
        "routers[0].external_path",
        "invalid route pattern '/a/{id': unclosed '{'",
        '"external_path"',
        id="param-unclosed",
    ),
    pytest.param(
        config(route("/a/{}", internal_path="/a")),
        "routers[0].external_path",
        "invalid route pattern '/a/{}': empty parameter name",
        '"external_path"',
        id="param-empty-name",
    ),
    pytest.param(
        config(route("/api/users/{id}", internal_path="/users/{user_id}")),
        "routers[0].internal_path",
        "uses {user_id} but external_path '/api/users/{id}' has no such parameter (it has: id)",
        '"internal_path"',
        id="internal-param-missing-from-external",
    ),
    pytest.param(
        config(route(protocol="ftp")),
        "routers[0].protocol",
        'protocol "ftp" is not supported; allowed: http, websocket',
        '"protocol"',
        id="protocol-ftp",
    ),
    pytest.param(
        config(route(protocol="dns")),
        "routers[0].protocol",
        'protocol "dns" is not supported; allowed: http, websocket',
        '"protocol"',
        id="protocol-dns",
    ),
    pytest.param(
        config(route(load_balancing_strategy="fastest")),
        "routers[0].load_balancing_strategy",
        'load-balancing strategy "fastest" is not supported; allowed: round_robin, weighted',
        '"load_balancing_strategy"',
        id="unknown-balancing-strategy",
    ),
    pytest.param(
        config(server={"workers": 2}),
        "server.workers",
        "workers = 2 needs 'cluster.redis_url': in-memory rate limits and breakers would be "
        "per worker",
        '"workers"',
        id="workers-without-redis",
    ),
    pytest.param(
        config(route(ai_policy={"strategy": "latency_prediction"})),
        "routers[0].ai_policy",
        "AI routing needs at least two backends to choose from; this route has 1",
        '"ai_policy"',
        id="ai-policy-with-one-backend",
    ),
    pytest.param(
        config(
            route(
                backends=[backend(), backend("https://users-b.internal")],
                ai_policy={"fallback_backend_index": 5},
            )
        ),
        "routers[0].ai_policy.fallback_backend_index",
        "must be between 0 and 1 (the route has 2 backends), got 5",
        '"fallback_backend_index"',
        id="ai-fallback-index-out-of-range",
    ),
    pytest.param(
        config(admin={"host": "0.0.0.0"}),
        "admin.host",
        "admin listener on non-loopback host '0.0.0.0' needs 'admin.token'",
        '"host": "0.0.0.0"',
        id="public-admin-without-token",
    ),
    pytest.param(
        config(cors={"allow_credentials": True}),
        "cors.allowed_origins",
        "allow_credentials with '*' would let every web site make requests with your users'",
        None,
        id="credentialed-cors-for-any-origin",
    ),
    pytest.param(
        config(server={"host": "127.0.0.1", "port": 5901}),
        "admin.port",
        "the admin and proxy listeners cannot share an address",
        None,
        id="admin-and-proxy-on-one-address",
    ),
    pytest.param(
        config(rate_limit={"requests_per_window": 10, "window_duration": 1, "enable_redis": True}),
        "rate_limit.enable_redis",
        "shared counters need 'cluster.redis_url' to be set",
        '"enable_redis"',
        id="redis-counters-without-redis-url",
    ),
    pytest.param(
        config(
            route(
                rate_limit={
                    "requests_per_window": 10,
                    "window_duration": 1,
                    "enable_redis": True,
                }
            )
        ),
        "routers[0].rate_limit.enable_redis",
        "shared counters need 'cluster.redis_url' to be set",
        '"enable_redis"',
        id="route-redis-counters-without-redis-url",
    ),
    pytest.param(
        config(route(request_transformation={"path": {"pattern": "^/api/(", "replacement": "/"}})),
        "routers[0].request_transformation.path.pattern",
        "invalid regular expression '^/api/(':",
        '"pattern"',
        id="invalid-path-regex",
    ),
    pytest.param(
        config(
            route(
                response_transformation={
                    "headers": [
                        {"action": "replace", "name": "X-A", "pattern": "(", "replacement": ""}
                    ]
                }
            )
        ),
        "routers[0].response_transformation.headers[0].pattern",
        "invalid regular expression '(':",
        '"pattern"',
        id="invalid-header-regex",
    ),
    pytest.param(
        config(
            route(
                request_transformation={
                    "headers": [{"action": "set", "name": "Bad Header", "value": "x"}]
                }
            )
        ),
        "routers[0].request_transformation.headers[0].name",
        "invalid header name 'Bad Header'",
        '"name"',
        id="invalid-header-name",
    ),
    pytest.param(
        config(
            route(
                request_transformation={
                    "query_params": [{"action": "add", "name": "lang"}],
                }
            )
        ),
        "routers[0].request_transformation.query_params[0].value",
        "action 'add' needs a 'value'",
        None,  # a missing key: the line is its object's, pinned for headers below
        id="query-add-without-value",
    ),
    pytest.param(
        config(route(timeout_ms=0)),
        "routers[0].timeout_ms",
        "must be at least 1, got 0",
        '"timeout_ms"',
        id="timeout-zero",
    ),
    pytest.param(
        config(route(hosts=["api example.com"])),
        "routers[0].hosts[0]",
        "must be a host name like 'api.example.com', got 'api example.com'",
        '"api example.com"',
        id="bad-host-name",
    ),
    pytest.param(
        config(route(name="users"), route("/api/orders", name="users")),
        "routers[1].name",
        "duplicate route name 'users' (also routers[0])",
        ('"/api/orders"', '"name": "users"'),
        id="duplicate-route-name",
    ),
    pytest.param(
        config(route(backends=[backend(port="abc")])),
        "routers[0].backends[0].port",
        'must be an integer, got "abc"',
        '"port"',
        id="port-not-an-integer",
    ),
    pytest.param(
        config(route(auth_required="yes please")),
        "routers[0].auth_required",
        'must be true or false, got "yes please"',
        '"auth_required"',
        id="bool-not-a-bool",
    ),
    pytest.param(
        config(route(methods="GET")),
        "routers[0].methods",
        'must be a list, got "GET"',
        '"methods"',
        id="methods-not-a-list",
    ),
    pytest.param(
        {"version": 1, "routers": []},
        "routers",
        "no routers configured",
        '"routers"',
        id="no-routers",
    ),
]


@pytest.mark.parametrize(("document", "path", "phrase", "line_needle"), RULES)
def test_each_rule_reports_one_error_at_its_path_and_line(
    document: dict[str, Any], path: str, phrase: str, line_needle: str | tuple[str, str] | None
) -> None:
    """``line_needle``: text on the offending line, or (text on an earlier line, that text)."""
    issue = only_error(document)
    assert issue.path == path
    assert issue.severity is Severity.ERROR
    assert phrase in issue.message
    if line_needle is not None:
        after, needle = line_needle if isinstance(line_needle, tuple) else (None, line_needle)
        if after is None and path.startswith("routers["):
            after = '"routers"'
        assert issue.line == line_of(text_of(document), needle, after=after)
    assert str(issue) == f"{path} (line {issue.line}): {issue.message}"


def test_the_design_example_error_reads_exactly_as_documented() -> None:
    document = config(route(), route("/b"), route("/c", backends=[backend(port=0)]))
    text = text_of(document)
    issue = only_error(document)
    line = line_of(text, '"port": 0')
    assert (
        str(issue)
        == f"routers[2].backends[0].port (line {line}): must be between 1 and 65535, got 0"
    )
    assert issue.to_dict() == {
        "severity": "error",
        "code": "bad_port",
        "path": "routers[2].backends[0].port",
        "line": line,
        "message": "must be between 1 and 65535, got 0",
        "allowed": [],
    }


def test_backend_scheme_error_lists_the_allowed_schemes() -> None:
    issue = only_error(config(route(backends=[backend("ftp://files.internal")])))
    assert issue.allowed == ("http://", "https://")


def test_websocket_routes_also_allow_ws_schemes() -> None:
    secure = route("/ws", protocol="websocket", backends=[backend("wss://chat")])
    assert load(config(secure)).issues == ()
    issue = only_error(config(secure | {"backends": [backend("ftp://chat")]}))
    assert issue.allowed == ("http://", "https://", "ws://", "wss://")


def test_method_error_lists_the_allowed_methods() -> None:
    issue = only_error(config(route(methods=["get"])))
    assert "GET" in issue.allowed and "PATCH" in issue.allowed
    assert "upper-case" not in only_error(config(route(methods=["FETCH"]))).message


def test_unsupported_protocol_lists_the_allowed_protocols() -> None:
    assert only_error(config(route(protocol="ftp"))).allowed == ("http", "websocket")


def test_query_replace_is_refused_with_the_allowed_actions() -> None:
    document = config(
        route(request_transformation={"query_params": [{"action": "replace", "name": "q"}]})
    )
    issue = only_error(document)
    assert issue.path == "routers[0].request_transformation.query_params[0].action"
    assert "query action 'replace' is not supported" in issue.message
    assert issue.allowed == ("add", "set", "remove")
    assert issue.line == line_of(text_of(document), '"action": "replace"')


def test_unknown_window_type_names_the_allowed_values() -> None:
    document = config(
        rate_limit={"requests_per_window": 10, "window_duration": 1, "window_type": "LeakyBucket"}
    )
    issue = only_error(document)
    assert issue.path == "rate_limit.window_type"
    assert issue.message.startswith('window type "LeakyBucket" is not supported')
    assert issue.allowed == ("FixedWindow", "SlidingWindow", "TokenBucket")
    assert issue.line == line_of(text_of(document), '"window_type"')


def test_window_algorithm_given_as_strategy_points_at_window_type() -> None:
    document = config(
        rate_limit={"strategy": "TokenBucket", "requests_per_window": 10, "window_duration": 1}
    )
    issue = only_error(document)
    assert issue.path == "rate_limit.strategy"
    assert "rate-limit strategy 'TokenBucket' is not supported" in issue.message
    assert "window algorithms go in 'window_type'" in issue.message


# --- errors whose line falls back to the enclosing object -----------------------------------


LEGACY_WITHOUT_PORT = """\
{
  "routers": [
    {
      "host": "https://users.internal",
      "external_path": "/api/users",
      "internal_path": "/users",
      "methods": ["GET"]
    }
  ]
}
"""

NO_BACKENDS = """\
{
  "routers": [
    {
      "external_path": "/api/users",
      "internal_path": "/users",
      "methods": ["GET"]
    }
  ]
}
"""

MISSING_EXTERNAL_PATH = """\
{
  "routers": [
    {
      "internal_path": "/users",
      "methods": ["GET"],
      "backends": [{"host": "https://users.internal", "port": 443}]
    }
  ]
}
"""

HEADER_ADD_WITHOUT_VALUE = """\
{
  "routers": [
    {
      "external_path": "/api/users",
      "internal_path": "/users",
      "methods": ["GET"],
      "backends": [{"host": "https://users.internal", "port": 443}],
      "request_transformation": {
        "headers": [
          {"action": "add", "name": "X-Trace"}
        ]
      }
    }
  ]
}
"""


@pytest.mark.parametrize(
    ("text", "path", "message", "line"),
    [
        pytest.param(
            LEGACY_WITHOUT_PORT,
            "routers[0].port",
            "legacy routes need both 'host' and 'port'",
            3,
            id="legacy-route-without-port",
        ),
        pytest.param(
            NO_BACKENDS,
            "routers[0]",
            "needs 'backends' or the legacy 'host' + 'port'",
            3,
            id="neither-backends-nor-host",
        ),
        pytest.param(
            MISSING_EXTERNAL_PATH,
            "routers[0].external_path",
            "is required",
            3,
            id="missing-external-path",
        ),
        pytest.param(
            HEADER_ADD_WITHOUT_VALUE,
            "routers[0].request_transformation.headers[0].value",
            "action 'add' needs a 'value'",
            10,
            id="header-add-without-value",
        ),
    ],
)
def test_missing_values_are_located_at_their_enclosing_object(
    text: str, path: str, message: str, line: int
) -> None:
    issue = only_error(text)
    assert (issue.path, issue.message, issue.line) == (path, message, line)


def test_backends_win_over_the_legacy_host_and_port() -> None:
    legacy = route(host="https://old.internal", port=8080)
    assert load(config(legacy)).config.routers[0].effective_backends == (
        load(config(route())).config.routers[0].backends
    )


def test_legacy_route_becomes_one_backend_with_weight_one() -> None:
    legacy = route(host="https://old.internal", port=8080)
    del legacy["backends"]
    (only,) = load(config(legacy)).config.routers[0].effective_backends
    assert (only.host, only.port, only.weight) == ("https://old.internal", 8080, 1)


def test_legacy_route_with_port_zero_is_located_at_the_route_port() -> None:
    legacy = route(host="https://old.internal", port=0)
    del legacy["backends"]
    issue = only_error(config(legacy))
    assert (issue.path, issue.message) == ("routers[0].port", "must be between 1 and 65535, got 0")


# --- warnings and what stays valid --------------------------------------------------------------


def test_long_secret_that_looks_like_a_placeholder_is_only_a_warning() -> None:
    document = config(jwt={"secret": "this-is-an-example-secret-for-the-docs-only-1234"})
    loaded = load(document)
    warning = issue_at(loaded.issues, "jwt.secret", Severity.WARNING)
    assert "JWT secret looks like a placeholder" in warning.message
    assert warning.line == line_of(text_of(document), '"secret"')
    strict = issue_at(config_error(document, strict=True).errors, "jwt.secret")
    assert "looks like a placeholder" in strict.message


def test_random_secret_of_32_characters_is_accepted() -> None:
    assert load(config(route(auth_required=True), jwt={"secret": SECRET})).issues == ()


def test_same_shape_with_other_parameter_names_is_a_warning_not_an_error() -> None:
    document = config(
        route("/api/users/{id}", internal_path="/users/{id}"),
        route("/api/users/{user_id}", internal_path="/people/{user_id}"),
        route("/health"),
    )
    warning = issue_at(load(document).issues, "routers[1].external_path", Severity.WARNING)
    assert "'/api/users/{user_id}' conflicts with '/api/users/{id}' (routers[0])" in warning.message


def test_same_path_with_other_methods_is_no_conflict() -> None:
    assert load(config(route(), route(methods=["POST"]))).issues == ()


def test_same_path_on_other_hosts_is_no_conflict() -> None:
    document = config(route(hosts=["a.example.com"]), route(hosts=["b.example.com"]))
    assert load(document).issues == ()


def test_workers_above_one_are_accepted_with_redis() -> None:
    document = config(server={"workers": 2}, cluster={"redis_url": "redis://127.0.0.1:6379/0"})
    assert load(document).issues == ()


@pytest.mark.parametrize("url", ["localhost:6379", "http://127.0.0.1:6379", "redis:/x"])
def test_a_redis_url_needs_a_redis_scheme_and_the_message_never_repeats_it(url: str) -> None:
    issue = only_error(config(cluster={"redis_url": url}))
    assert issue.path == "cluster.redis_url"
    assert issue.message.startswith("must be a Redis URL")
    assert url not in issue.message


def test_a_route_breaker_ignored_for_a_backend_an_earlier_route_names_is_a_warning() -> None:
    document = config(
        route("/a", name="first"),
        route("/b", name="second", circuit_breaker={"failure_threshold": 2}),
    )
    warning = issue_at(load(document).issues, "routers[1].circuit_breaker", Severity.WARNING)
    assert warning.message.startswith(
        "is ignored for backend https://users.internal:443: routers[0] ('first') names that "
        "backend first"
    )
    assert "routers[1] ('second') gets that breaker too" in warning.message
    assert warning.line == line_of(text_of(document), '"circuit_breaker"')


def test_the_shared_breaker_warning_says_what_the_gateway_does() -> None:
    first, shadowed = CircuitBreakerConfig(), CircuitBreakerConfig(failure_threshold=2)
    document = config(
        route("/a"),
        route(
            "/b",
            circuit_breaker=shadowed.model_dump(),
            fallback=[backend("https://spare.internal")],
        ),
    )
    breakers = compile_state(load(document)).shared.breakers
    policies = {breaker.backend: breaker.policy for breaker in breakers}
    assert policies == {
        "https://users.internal:443": first,
        "https://spare.internal:443": shadowed,
    }


def test_a_route_breaker_on_its_own_backend_or_equal_to_the_deciding_one_is_silent() -> None:
    document = config(
        route("/a", circuit_breaker={"failure_threshold": 2}),
        route("/b", circuit_breaker={"failure_threshold": 2}),
        route(
            "/c",
            backends=[backend("https://other.internal")],
            circuit_breaker={"failure_threshold": 9},
        ),
    )
    assert load(document).issues == ()


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("https://users.internal:8443", "must not contain a port (put it in 'port')"),
        ("https://[::1]:8443", "must not contain a port (put it in 'port')"),
        ("https://users.internal/v1", "must not contain a path (put it in internal_path)"),
        ("https://users.internal?debug=1", "must not contain a query string or fragment"),
        ("https://users.internal#top", "must not contain a query string or fragment"),
        ("https://users.internal\r\nX-Injected: 1", "must not contain spaces or control"),
        ("https://users internal", "must not contain spaces or control"),
        ("https://ops:hunter2@users.internal", "must not contain credentials ('user:password@')"),
        ("https://::1", "must put an IPv6 address in brackets (http://[::1])"),
        ("https://[not-an-address]", "must be a host name, an IPv4 address or an IPv6 address"),
        ("https://300.1.2.3", "must be a host name, an IPv4 address or an IPv6 address"),
        ("https://-users.internal", "must be a host name, an IPv4 address or an IPv6 address"),
    ],
    ids=[
        "port",
        "ipv6-port",
        "path",
        "query",
        "fragment",
        "crlf",
        "space",
        "credentials",
        "bare-ipv6",
        "bad-ipv6",
        "bad-ipv4",
        "bad-name",
    ],
)
def test_a_backend_host_is_a_scheme_and_a_host_name_or_address_only(
    host: str, problem: str
) -> None:
    document = config(route(backends=[backend(host)]))
    issue = only_error(document)
    assert issue.path == "routers[0].backends[0].host"
    assert issue.message.startswith(f"backend host {problem}")
    assert issue.line == line_of(text_of(document), '"host"')
    assert "hunter2" not in issue.message


def test_a_legacy_route_host_and_a_fallback_host_follow_the_same_rule() -> None:
    legacy = {k: v for k, v in route().items() if k != "backends"}
    document = config(
        {**legacy, "host": "https://users.internal:443", "port": 443},
        route("/b", fallback=[backend("https://spare.internal/x")]),
    )
    errors = {e.path: e.message for e in config_error(document).errors}
    assert "must not contain a port" in errors["routers[0].host"]
    assert "must not contain a path" in errors["routers[1].fallback[0].host"]


@pytest.mark.parametrize(
    "host",
    [
        "https://users.internal",
        "https://users.internal/",
        "https://USERS.internal.",
        "http://app_http",
        "https://10.0.0.7",
        "https://[2001:db8::1]",
    ],
)
def test_backend_hosts_that_are_a_scheme_and_a_name_or_address_load(host: str) -> None:
    loaded = load(config(route(backends=[backend(host)])))
    assert loaded.config.routers[0].effective_backends[0].host == host


def test_restart_required_names_the_listener_settings_a_new_config_changes() -> None:
    started = load(config()).config
    moved = load(
        config(
            route(timeout_ms=100),
            server={"host": "127.0.0.2", "port": 6000, "max_body_bytes": 1},
            admin={"port": 6001},
            circuit_breaker={"failure_threshold": 9},
        )
    ).config
    assert restart_required(started, moved) == ["server.host", "server.port", "admin.port"]
    assert restart_required(started, load(config(route(timeout_ms=100))).config) == []


def test_public_admin_listener_loads_with_a_token() -> None:
    document = config(admin={"host": "0.0.0.0", "token": ADMIN_TOKEN})
    assert load(document).config.admin.token == ADMIN_TOKEN


def test_admin_token_defaults_to_the_given_environment() -> None:
    loaded = load(config(admin={"host": "0.0.0.0"}), environ={"KAIROS_ADMIN_TOKEN": ADMIN_TOKEN})
    assert loaded.config.admin.token == ADMIN_TOKEN


def test_admin_token_in_the_config_wins_over_the_environment() -> None:
    document = config(admin={"host": "0.0.0.0", "token": "from-the-config-file-123"})
    loaded = load(document, environ={"KAIROS_ADMIN_TOKEN": ADMIN_TOKEN})
    assert loaded.config.admin.token == "from-the-config-file-123"


def test_admin_token_comes_from_the_process_environment_without_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAIROS_ADMIN_TOKEN", ADMIN_TOKEN)
    text = text_of(config(admin={"host": "0.0.0.0"}))
    assert parse_config(text).config.admin.token == ADMIN_TOKEN
    issue = only_error(text, environ={})  # environ= is the whole environment
    assert issue.path == "admin.host"


def test_credentialed_cors_with_listed_origins_is_valid() -> None:
    cors = {"allow_credentials": True, "allowed_origins": ["https://app.example"]}
    assert load(config(cors=cors)).config.cors is not None


def test_loopback_admin_listener_needs_no_token() -> None:
    assert load(config(admin={"host": "::1"})).config.admin.token is None


def test_short_admin_token_is_a_warning() -> None:
    loaded = load(config(admin={"token": "short"}))
    assert (
        "admin token is short" in issue_at(loaded.issues, "admin.token", Severity.WARNING).message
    )


def test_plain_http_backends_are_warnings_and_loopback_is_a_recommendation() -> None:
    document = config(
        route(backends=[backend("http://users.internal", 80)]),
        route("/local", backends=[backend("http://localhost", 3000)]),
    )
    issues = load(document).issues
    plain = issue_at(issues, "routers[0].backends[0].host", Severity.WARNING)
    assert "plain-HTTP backend http://users.internal: consider https://" in plain.message
    local = issue_at(issues, "routers[1].backends[0].host", Severity.RECOMMENDATION)
    assert "fine locally" in local.message
    everything = issue_at(issues, "routers", Severity.RECOMMENDATION)
    assert "every backend uses plain HTTP" in everything.message


def test_per_user_limit_without_jwt_is_a_warning() -> None:
    limit = {"strategy": "PerUser", "requests_per_window": 10, "window_duration": 1}
    warning = issue_at(
        load(config(rate_limit=limit)).issues, "rate_limit.strategy", Severity.WARNING
    )
    assert "no 'jwt' block is configured" in warning.message


def test_timeout_longer_than_deadline_is_a_warning() -> None:
    loaded = load(config(route(timeout_ms=5000, deadline_ms=1000)))
    warning = issue_at(loaded.issues, "routers[0].timeout_ms", Severity.WARNING)
    assert "exceeds deadline_ms 1000" in warning.message


def test_many_methods_is_a_warning() -> None:
    loaded = load(config(route(methods=["GET", "POST", "PUT", "PATCH", "DELETE"])))
    assert (
        "many HTTP methods (5)"
        in issue_at(loaded.issues, "routers[0].methods", Severity.WARNING).message
    )


def test_only_parameterised_routes_is_a_recommendation() -> None:
    loaded = load(config(route("/api/users/{id}", internal_path="/users/{id}")))
    assert (
        "every route is parameterised"
        in issue_at(loaded.issues, "routers", Severity.RECOMMENDATION).message
    )


# --- several problems at once -------------------------------------------------------------------


def test_every_problem_in_a_file_is_reported() -> None:
    document = config(
        route("/a", backends=[backend(port=0)]),
        route("/b", backends=[backend(weight=0)]),
        route("/c", methods=["get"]),
    )
    errors = config_error(document).errors
    assert [e.path for e in errors] == [
        "routers[0].backends[0].port",
        "routers[1].backends[0].weight",
        "routers[2].methods[0]",
    ]
    text = text_of(document)
    assert [e.line for e in errors] == [
        line_of(text, '"port": 0'),
        line_of(text, '"weight": 0'),
        line_of(text, '"get"'),
    ]


def test_a_structurally_broken_router_does_not_hide_the_rules_of_the_others() -> None:
    document = config(
        route("/ftp", protocol="ftp"),
        route("/b", backends=[backend(port=0)]),
        route("/c", internal_path="/c/{id}"),
    )
    error = config_error(document)
    assert {e.path for e in error.errors} == {
        "routers[0].protocol",
        "routers[1].backends[0].port",
        "routers[2].internal_path",
    }
    assert error.summary().splitlines()[0] == "<config>: 3 error(s)"


def test_cross_field_problems_are_reported_together_with_field_errors() -> None:
    document = config(
        route("/a", backends=[backend(port="abc")]),
        route("/b", auth_required=True),
        route("/b"),
        server={"port": "x", "trusted_proxies": ["not-an-ip"]},
        rate_limit={"strategy": "PerIP", "requests_per_window": 0, "window_duration": 1},
    )
    errors = {e.path: e for e in config_error(document).errors}
    assert set(errors) == {
        "routers[0].backends[0].port",
        "server.port",
        "rate_limit.requests_per_window",
        "routers[1].auth_required",
        "routers[2].external_path",
    }
    assert "no 'jwt' block is configured" in errors["routers[1].auth_required"].message
    assert "duplicate route path '/b'" in errors["routers[2].external_path"].message
    assert "routers[1]" in errors["routers[2].external_path"].message
    text = text_of(document)
    assert errors["routers[1].auth_required"].line == line_of(text, '"auth_required"')


def test_a_broken_block_is_not_reported_as_a_missing_one() -> None:
    document = config(
        route(
            auth_required=True,
            rate_limit={
                "strategy": "PerUser",
                "requests_per_window": 1,
                "window_duration": 1,
                "enable_redis": True,
            },
        ),
        jwt={"secret": 5},
        cluster={"redis_url": 6379},
    )
    issues = config_error(document).issues
    assert {i.path for i in issues} == {"jwt.secret", "cluster.redis_url"}


def test_routers_that_all_fail_are_not_reported_as_no_routers() -> None:
    issue = only_error(config(route(backends=[backend(port="abc")])))
    assert issue.path == "routers[0].backends[0].port"


def test_errors_are_listed_before_warnings_and_in_file_order() -> None:
    document = config(
        route("/a", backends=[backend(port=0)], extra_key=1),
        route("/b", methods=["get"]),
        route("/c", timeout_ms=5000, deadline_ms=1000),
        jwt={"secret": "short"},
    )
    issues = config_error(document).issues
    severities = [i.severity for i in issues]
    assert severities == sorted(severities, key=lambda s: s is not Severity.ERROR)
    error_lines = [i.line or 0 for i in issues if i.severity is Severity.ERROR]
    assert error_lines == sorted(error_lines)
    assert issue_at(issues, "routers[0].extra_key")
    assert issue_at(issues, "routers[2].timeout_ms", Severity.WARNING)


def test_config_error_summary_names_the_source_and_every_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text_of(config(route(methods=[]))), source="gateway.json", environ={})
    assert info.value.source == "gateway.json"
    assert str(info.value) == (
        "gateway.json: 1 error(s)\n"
        f"  routers[0].methods (line {info.value.errors[0].line}): "
        "at least one HTTP method must be specified"
    )


# --- the loader ---------------------------------------------------------------------------------


def test_environment_variables_are_expanded_with_defaults() -> None:
    document = config(
        route(backends=[backend("${USERS_HOST:-https://users.internal}", "${USERS_PORT:-8443}")]),
        jwt={"secret": "${JWT_SECRET}", "issuer": "https://${ISSUER_HOST}/auth"},
    )
    loaded = load(document, environ={"JWT_SECRET": SECRET, "ISSUER_HOST": "id.example.com"})
    assert loaded.config.jwt is not None
    assert loaded.config.jwt.secret == SECRET
    assert loaded.config.jwt.issuer == "https://id.example.com/auth"
    (only,) = loaded.config.routers[0].effective_backends
    assert (only.host, only.port) == ("https://users.internal", 8443)


def test_a_set_variable_wins_over_its_default() -> None:
    document = config(route(backends=[backend("${USERS_HOST:-https://users.internal}")]))
    loaded = load(document, environ={"USERS_HOST": "https://users-v2.internal"})
    assert loaded.config.routers[0].effective_backends[0].host == "https://users-v2.internal"


def test_unset_variable_without_default_is_an_error_naming_it_and_its_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)  # environ= is the whole environment, not a layer
    document = config(jwt={"secret": "${JWT_SECRET}"})
    errors = config_error(document, environ={}).errors
    (issue,) = [e for e in errors if "environment variable" in e.message]
    assert issue.path == "jwt.secret"
    assert "environment variable JWT_SECRET is not set" in issue.message
    assert "${JWT_SECRET:-default}" in issue.message
    assert issue.line == line_of(text_of(document), '"secret"')


def test_without_environ_the_process_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_TEST_JWT_SECRET", SECRET)
    text = text_of(config(jwt={"secret": "${KAIROS_TEST_JWT_SECRET}"}))
    loaded = parse_config(text)
    assert loaded.config.jwt is not None and loaded.config.jwt.secret == SECRET


def test_document_keeps_variables_unexpanded_and_private_keys() -> None:
    document = config(jwt={"secret": "${JWT_SECRET}"}, _comment="kept for the admin API")
    loaded = load(document, environ={"JWT_SECRET": SECRET})
    assert loaded.document["jwt"]["secret"] == "${JWT_SECRET}"
    assert loaded.document["_comment"] == "kept for the admin API"
    assert loaded.config.jwt is not None and loaded.config.jwt.secret == SECRET


def test_underscore_keys_are_ignored_at_every_depth() -> None:
    document = config(
        route(
            _comment="legacy route",
            backends=[backend(_note={"anything": [1, 2]}, _port="abc")],
            retry={"_why": "flaky upstream", "max_retries": 2},
        ),
        _comment="top level",
        _disabled_router={"external_path": 5},
        server={"_workers": 99},
    )
    loaded = load(document)
    assert loaded.issues == ()
    assert loaded.config.routers[0].retry is not None
    assert loaded.config.routers[0].retry.max_retries == 2


def test_unknown_key_is_an_error_with_a_suggestion() -> None:
    document = config(route(auth_requried=True), jwt={"secret": SECRET})
    issue = only_error(document)
    assert issue.path == "routers[0].auth_requried"
    assert issue.message == "unknown key 'auth_requried'; did you mean 'auth_required'?"
    assert issue.line == line_of(text_of(document), '"auth_requried"')


@pytest.mark.parametrize(
    ("block", "key", "suggestion"),
    [
        ({"jwt": {"secret": SECRET, "isuer": "kairos"}}, "jwt.isuer", "issuer"),
        ({"server": {"max_body_byte": 10}}, "server.max_body_byte", "max_body_bytes"),
        ({"admin": {"tokn": ADMIN_TOKEN}}, "admin.tokn", "token"),
        ({"circuit_breaker": {"reset_timeout": 5}}, "circuit_breaker.reset_timeout", None),
    ],
    ids=["jwt", "server", "admin", "breaker-unit-missing"],
)
def test_unknown_keys_are_errors_in_every_block(
    block: dict[str, Any], key: str, suggestion: str | None
) -> None:
    issue = only_error(config(**block))
    assert issue.path == key
    if suggestion is not None:
        assert issue.message.endswith(f"did you mean {suggestion!r}?")


def test_underscore_keys_next_to_a_typo_stay_comments() -> None:
    document = config(route(_auth_requried=True, auth_requried=True), jwt={"secret": SECRET})
    assert only_error(document).path == "routers[0].auth_requried"


def test_misspelt_required_key_is_reported_with_its_suggestion() -> None:
    typo = route()
    typo["extrnal_path"] = typo.pop("external_path")
    issues = config_error(config(typo)).issues
    assert issue_at(issues, "routers[0].external_path").message == "is required"
    assert "did you mean 'external_path'?" in issue_at(issues, "routers[0].extrnal_path").message


def test_unknown_key_far_from_any_known_key_gets_no_suggestion() -> None:
    assert only_error(config(server={"zzzz": 1})).message == "unknown key 'zzzz'"


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": [1, {"b": 2}], "routers": [{"x": 1, "x": 2}, []], "c": {}}',
        ' \n{ "routers" : [ ] , "n" : NaN }\n',
        "[1, 2]",
        '"text"',
    ],
)
def test_decode_json_gives_what_json_loads_gives(text: str) -> None:
    assert repr(decode_json(text)) == repr(json.loads(text))


def test_invalid_json_is_reported_with_its_line() -> None:
    text = '{\n  "routers": [\n    {"external_path": "/a" "internal_path": "/a"}\n  ]\n}\n'
    issue = only_error(text)
    assert (issue.path, issue.line) == ("", 3)
    assert issue.message.startswith("invalid JSON: Expecting ',' delimiter")
    assert str(issue).startswith("$ (line 3): invalid JSON")


def test_top_level_must_be_an_object() -> None:
    issue = only_error("[1, 2, 3]")
    assert issue.message == "the config must be a JSON object"
    assert issue.to_dict()["path"] == "$"
    with pytest.raises(ConfigError):
        validate_document([config()])


def test_oversized_config_is_refused_before_parsing() -> None:
    # Neither UTF-8 nor JSON: only the size may be reported.
    with pytest.raises(ConfigError) as info:
        parse_config(b"\xff" * (MAX_CONFIG_BYTES + 1))
    (issue,) = info.value.issues
    assert issue.message == f"config is {MAX_CONFIG_BYTES + 1} bytes; the limit is 10485760 bytes"
    assert 10 * MiB == MAX_CONFIG_BYTES


def test_config_of_exactly_the_limit_is_parsed() -> None:
    text = text_of(config()).encode()
    padded = text + b" " * (MAX_CONFIG_BYTES - len(text))
    assert len(padded) == MAX_CONFIG_BYTES
    assert load(padded.decode()).issues == ()


def test_oversized_text_is_measured_in_utf8_bytes() -> None:
    padding = "é" * (MAX_CONFIG_BYTES // 2 + 1)  # fewer characters than the limit, more bytes
    text = json.dumps(config(_comment=padding), ensure_ascii=False)
    assert len(text) <= MAX_CONFIG_BYTES < len(text.encode())
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ={})
    (issue,) = info.value.issues
    size = len(text.encode())
    assert issue.message == f"config is {size} bytes; the limit is 10485760 bytes"


def test_load_config_refuses_an_oversized_file_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as file:
        file.truncate(MAX_CONFIG_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ConfigError) as info:
        load_config(big)
    (issue,) = info.value.issues
    assert "the limit is 10485760 bytes" in issue.message
    assert info.value.source == str(big)


def test_non_utf8_bytes_are_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(b'{"routers": [], "x": "\xff"}')
    (issue,) = info.value.issues
    assert issue.message == "config is not UTF-8 text (byte 22)"


def test_utf8_byte_order_mark_is_accepted() -> None:
    loaded = parse_config(b"\xef\xbb\xbf" + text_of(config()).encode(), environ={})
    assert loaded.issues == ()


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(text_of(config()))
    loaded = load_config(path, environ={})
    assert loaded.source == str(path)
    assert loaded.config.routers[0].external_path == "/api/users"


def test_load_config_reports_errors_with_the_file_as_source(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(text_of(config(route(methods=[]))))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: 1 error(s)")


def test_load_config_on_a_missing_file_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    (issue,) = info.value.issues
    assert issue.message.startswith("cannot read config file")
    assert info.value.source == str(missing)
    assert issue.to_dict()["path"] == "$"


def test_version_is_stable_for_the_same_content_and_changes_with_it() -> None:
    first = load(config())
    again = load(config())
    assert first.version == again.version
    assert len(first.version) == 16
    changed = load(config(route(methods=["POST"])))
    assert changed.version != first.version
    commented = load(config(_comment="a note"))
    assert commented.version != first.version


def test_validate_document_checks_a_parsed_document() -> None:
    loaded = validate_document(config(), environ={})
    assert loaded.config.routers[0].external_path == "/api/users"
    assert loaded.version == load(config()).version
    with pytest.raises(ConfigError) as info:
        validate_document(config(route(backends=[backend(port=0)])), environ={})
    assert info.value.errors[0].path == "routers[0].backends[0].port"
    assert info.value.errors[0].line is not None


# --- route ids ----------------------------------------------------------------------------------


def test_route_ids_prefer_names_then_slug_the_path_and_number_collisions() -> None:
    document = config(
        route("/api/users/{id}", internal_path="/users/{id}"),
        route("/orders", name="orders-main"),
        route("/api/users"),
        route("/api/users", methods=["POST"]),
        route("/"),
        route("/accounts", name="api-users"),
        route("/V1/Items_List"),
    )
    ids = route_ids(load(document).config.routers)
    assert ids == [
        "api-users-id",
        "orders-main",
        "api-users-2",
        "api-users-3",
        "root",
        "api-users",
        "v1-items_list",
    ]
    assert len(set(ids)) == len(ids)


# --- defaults (DESIGN.md §3) --------------------------------------------------------------------


def test_gateway_defaults_match_the_design() -> None:
    loaded = load({"routers": [route()]})
    cfg: GatewayConfig = loaded.config
    assert cfg.version == 1
    assert (cfg.server.host, cfg.server.port, cfg.server.workers) == ("0.0.0.0", 5900, 1)
    assert cfg.server.max_body_bytes == 10 * MiB
    assert (cfg.server.connect_timeout_ms, cfg.server.upstream_timeout_ms) == (2000, 30000)
    assert cfg.server.graceful_shutdown_s == 15
    assert cfg.server.trusted_proxies == ()
    assert cfg.server.security_headers is True
    assert (cfg.admin.host, cfg.admin.port, cfg.admin.token) == ("127.0.0.1", 5901, None)
    assert cfg.circuit_breaker == CircuitBreakerConfig()
    breaker = cfg.circuit_breaker
    assert (
        breaker.failure_threshold,
        breaker.success_threshold,
        breaker.reset_timeout_s,
        breaker.half_open_max_calls,
        breaker.failure_status_codes,
    ) == (5, 2, 30, 1, (500, 502, 503, 504))
    health = cfg.health_check
    assert (
        health.interval_s,
        health.timeout_ms,
        health.healthy_threshold,
        health.unhealthy_threshold,
    ) == (10, 1000, 2, 3)
    assert (cfg.cluster.redis_url, cfg.cluster.key_prefix, cfg.cluster.on_redis_error) == (
        None,
        "kairos",
        "allow",
    )
    assert cfg.jwt is None and cfg.rate_limit is None and cfg.ai is None and cfg.cors is None


def test_route_defaults_match_the_design() -> None:
    router = load(config(route(retry={}))).config.routers[0]
    assert (router.protocol, router.load_balancing_strategy) == ("http", "round_robin")
    assert router.auth_required is False
    retry = router.retry
    assert retry == RetryConfig()
    assert retry is not None
    assert (
        retry.max_retries,
        retry.initial_backoff_ms,
        retry.max_backoff_ms,
        retry.backoff_multiplier,
        retry.retry_on_status_codes,
        retry.retry_on_connection_error,
    ) == (3, 100, 5000, 2.0, (502, 503, 504), True)
    assert (retry.budget_percent, retry.min_retries_per_second, retry.max_replay_bytes) == (
        20,
        3,
        MiB,
    )
    assert (retry.retry_non_idempotent, retry.jitter) == (False, True)


def test_rate_limit_defaults() -> None:
    limit = load(
        config(rate_limit={"requests_per_window": 100, "window_duration": 60})
    ).config.rate_limit
    assert limit is not None
    assert (limit.strategies, limit.window_type, limit.burst_allowance) == (
        ("PerIP",),
        "FixedWindow",
        0,
    )
    assert (limit.enable_redis, limit.redis_key_prefix) == (False, "kairos_rl")


# --- accepted spellings (kairos-rs's serde forms) -----------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("PerIP", ("PerIP",)),
        ({"PerIP": None}, ("PerIP",)),
        ({"PerUserAndRoute": None}, ("PerUserAndRoute",)),
        ({"Composite": ["PerIP", "PerUser"]}, ("PerIP", "PerUser")),
        (
            {
                "Composite": [
                    {"strategy": "PerIP", "requests_per_window": 10, "window_duration": 1},
                    {"strategy": "PerRoute"},
                ]
            },
            ("PerIP", "PerRoute"),
        ),
        (
            {"Composite": ["PerIP", {"strategy": {"Composite": ["PerUser", "PerRoute"]}}]},
            ("PerIP", "PerUser", "PerRoute"),
        ),
    ],
)
def test_rate_limit_strategy_spellings(strategy: Any, expected: tuple[str, ...]) -> None:
    limit = {"strategy": strategy, "requests_per_window": 10, "window_duration": 1}
    loaded = load(config(rate_limit=limit, jwt={"secret": SECRET}))
    assert loaded.issues == ()
    assert loaded.config.rate_limit is not None
    assert loaded.config.rate_limit.strategies == expected


@pytest.mark.parametrize(
    "strategy",
    [{"Composite": []}, {"Composite": "PerIP"}, {"Composite": ["PerIP", "Nope"]}, {"PerIP": 1}, 5],
)
def test_bad_rate_limit_strategy_is_one_error_at_strategy(strategy: Any) -> None:
    limit = {"strategy": strategy, "requests_per_window": 10, "window_duration": 1}
    issue = only_error(config(rate_limit=limit))
    assert issue.path == "rate_limit.strategy"
    assert "not supported" in issue.message or "non-empty list" in issue.message


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (
            {"strategy": "PerIP", "requests_per_windw": 5},
            "Composite part 1: unknown key 'requests_per_windw'; "
            "did you mean 'requests_per_window'?",
        ),
        (
            {"strategy": "PerIP", "requests_per_window": 0},
            "Composite part 1: requests_per_window must be an integer of at least 1, got 0",
        ),
        (
            {"strategy": "PerIP", "window_duration": "60"},
            "Composite part 1: window_duration must be an integer of at least 1, got '60'",
        ),
        (
            {"strategy": "PerIP", "window_type": "Sliding"},
            "Composite part 1: window type 'Sliding' is not supported; allowed: FixedWindow, "
            "SlidingWindow, TokenBucket",
        ),
    ],
    ids=["unknown-key", "zero", "string", "window-type"],
)
def test_a_bad_composite_part_is_one_error_naming_the_part(part: Any, message: str) -> None:
    limit = {
        "strategy": {"Composite": ["PerRoute", part]},
        "requests_per_window": 10,
        "window_duration": 1,
    }
    document = config(rate_limit=limit)
    issue = only_error(document)
    assert (issue.path, issue.message) == ("rate_limit.strategy", message)
    assert issue.line == line_of(text_of(document), '"strategy"')


@pytest.mark.parametrize(
    ("strategy", "kind", "model"),
    [
        ("latency_prediction", "latency_prediction", None),
        ("anomaly_detection", "anomaly_detection", None),
        ({"anomaly_detection": None}, "anomaly_detection", None),
        ({"latency_prediction": {}}, "latency_prediction", None),
        ({"content_analysis": {"model": "gpt-4o-mini"}}, "content_analysis", "gpt-4o-mini"),
        ({"content_analysis": None}, "content_analysis", None),
    ],
)
def test_ai_strategy_spellings(strategy: Any, kind: str, model: str | None) -> None:
    two = [backend(), backend("https://users-b.internal")]
    loaded = load(config(route(backends=two, ai_policy={"strategy": strategy})))
    policy = loaded.config.routers[0].ai_policy
    assert policy is not None
    assert (policy.strategy.kind, policy.strategy.model) == (kind, model)


def test_ai_policy_defaults() -> None:
    two = [backend(), backend("https://users-b.internal")]
    policy = load(config(route(backends=two, ai_policy={}))).config.routers[0].ai_policy
    assert policy is not None
    assert (policy.enabled, policy.strategy.kind, policy.mode) == (
        True,
        "content_analysis",
        "inline",
    )
    assert (policy.timeout_ms, policy.cache_ttl_s, policy.max_concurrent_calls) == (1500, 60, 8)


def test_disabled_ai_policy_needs_no_second_backend() -> None:
    assert load(config(route(ai_policy={"enabled": False}))).issues == ()


@pytest.mark.parametrize(
    "strategy", ["content_analysis_v2", {"content_analysis": {"model": 5}}, {"a": 1, "b": 2}]
)
def test_bad_ai_strategy_is_one_error_at_strategy(strategy: Any) -> None:
    two = [backend(), backend("https://users-b.internal")]
    issue = only_error(config(route(backends=two, ai_policy={"strategy": strategy})))
    assert issue.path == "routers[0].ai_policy.strategy"


# --- inputs the loader must turn into ConfigError, never a crash --------------------------------


def test_integer_with_too_many_digits_is_a_config_error() -> None:
    text = '{"version": 1' + "0" * 5000 + ', "routers": []}'
    issue = only_error(text)
    assert issue.path == ""
    assert issue.message.startswith("invalid JSON:")


def test_validate_document_with_an_integer_of_too_many_digits_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        validate_document({"version": 10**5000, "routers": []}, environ={})


def nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [600, 5000])
def test_deeply_nested_text_is_a_config_error(depth: int) -> None:
    text = '{"routers": [], "deep": ' + "[" * depth + "]" * depth + "}"
    issue = only_error(text)
    assert (issue.path, issue.message) == ("", "the config is nested too deeply")


@pytest.mark.parametrize("depth", [600, 5000])
def test_deeply_nested_document_is_a_config_error(depth: int) -> None:
    with pytest.raises(ConfigError) as info:
        validate_document({"routers": [], "deep": nested_lists(depth)}, environ={})
    (issue,) = info.value.issues
    assert issue.message == "the config is nested too deeply"


def test_jwt_secret_with_a_lone_surrogate_is_measured_not_crashed_on() -> None:
    route_text = json.dumps(route())
    long_secret = '"\\ud800' + "a" * 40 + '"'
    loaded = load(f'{{"jwt": {{"secret": {long_secret}}}, "routers": [{route_text}]}}')
    assert loaded.config.jwt is not None
    issue = only_error('{"jwt": {"secret": "\\ud800"}, "routers": [' + route_text + "]}")
    assert issue.path == "jwt.secret"
    assert "at least 32 characters" in issue.message


def test_issues_deep_in_a_long_router_list_are_located_on_their_own_lines() -> None:
    routers = [route(f"/r{i}") for i in range(300)]
    routers[298]["backends"] = [backend(), backend(port=0)]
    routers[299]["methods"] = []
    text = text_of(config(*routers))
    issues = {issue.path: issue for issue in config_error(text).errors}
    assert issues["routers[298].backends[1].port"].line == line_of(text, '"port": 0')
    assert issues["routers[299].methods"].line == line_of(text, '"methods": []')


def test_issues_of_a_document_are_located_in_its_two_space_rendering() -> None:
    document = config(route("/a"), route("/b", methods=[]))
    with pytest.raises(ConfigError) as info:
        validate_document(document, environ={})
    (issue,) = info.value.errors
    assert issue.line == line_of(json.dumps(document, indent=2), '"methods": []')


@pytest.mark.parametrize("key", ["old/routes", "\\u00e9t\\u00e9"], ids=["slash", "escaped"])
def test_unknown_key_is_located_on_its_own_line_whatever_its_spelling(key: str) -> None:
    text = '{\n  "routers": [\n    ' + json.dumps(route()) + '\n  ],\n  "' + key + '": 1\n}\n'
    issue = only_error(text)
    assert issue.message.startswith("unknown key")
    assert issue.line == 5


def test_every_issue_names_its_rule_with_a_stable_code() -> None:
    """Programs act on ``code``, never on ``message`` text."""
    document = {
        "routers": [
            {"name": "a", "external_path": "/x", "internal_path": "/x", "methods": ["GET"],
             "backends": [{"host": "http://b", "port": 1}], "auth_requried": True},
            {"name": "a", "external_path": "/x", "internal_path": "/x", "methods": ["GET"],
             "backends": [{"host": "http://b", "port": 0}]},
        ]
    }  # fmt: skip
    with pytest.raises(ConfigError) as raised:
        parse_config(json.dumps(document), environ={})
    codes = {issue.code for issue in raised.value.errors}
    assert {"unknown_key", "duplicate_route_name", "duplicate_route", "bad_port"} <= codes
    assert all(issue.code != "invalid" for issue in raised.value.issues)


@pytest.mark.parametrize("block", ["server", "admin"])
@pytest.mark.parametrize("port", [0, 65536])
def test_listener_ports_must_be_in_range(block: str, port: int) -> None:
    document = {
        block: {"port": port},
        "routers": [
            {"external_path": "/x", "internal_path": "/x", "methods": ["GET"],
             "backends": [{"host": "http://b", "port": 1}]}
        ],
    }  # fmt: skip
    with pytest.raises(ConfigError) as raised:
        parse_config(json.dumps(document), environ={})
    (error,) = raised.value.errors
    assert (error.path, error.code) == (f"{block}.port", "bad_port")
    assert error.message == f"must be between 1 and 65535, got {port}"
