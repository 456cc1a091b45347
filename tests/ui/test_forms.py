"""The route form: a router object round-trips through the form's fields without loss."""

from __future__ import annotations

from typing import Any

from kairos_ui.forms import RouteForm


def submit(form: RouteForm) -> RouteForm:
    """What the browser sends back for ``form`` when the user changes nothing."""
    fields = {
        "name": form.name,
        "external_path": form.external_path,
        "internal_path": form.internal_path,
        "protocol": form.protocol,
        "backends": form.backends,
        "load_balancing_strategy": form.load_balancing_strategy,
        "timeout_ms": form.timeout_ms,
        "other": form.other,
    }
    if form.auth_required:
        fields["auth_required"] = "on"
    return RouteForm.from_fields(fields, form.methods)


def test_a_full_router_survives_the_form_unchanged() -> None:
    router: dict[str, Any] = {
        "name": "users",
        "external_path": "/api/users/{id}",
        "internal_path": "/users/{id}",
        "methods": ["GET", "PUT"],
        "backends": [
            {
                "host": "http://127.0.0.1",
                "port": 9001,
                "weight": 2,
                "health_check_path": "/health",
                "description": "users service, it's 'quoted'",
                "tags": ["users", "eu"],
            },
            {"host": "https://users.internal", "port": 443, "description": "42"},
        ],
        "load_balancing_strategy": "weighted",
        "auth_required": True,
        "timeout_ms": 2500,
        "retry": {"max_retries": 2, "retry_on_status_codes": [502, 503]},
        "response_transformation": {"status_code_mappings": [{"from": 502, "to": 503}]},
    }

    config, issues = submit(RouteForm.from_config(router)).to_config()

    assert issues == []
    assert config == router


def test_a_legacy_host_and_port_become_the_first_backend() -> None:
    router = {
        "host": "http://127.0.0.1",
        "port": 9002,
        "external_path": "/orders",
        "internal_path": "/orders",
        "methods": ["GET"],
    }

    config, issues = submit(RouteForm.from_config(router)).to_config()

    assert issues == []
    assert config["backends"] == [{"host": "http://127.0.0.1", "port": 9002}]
    assert "host" not in config and "port" not in config


def test_what_the_form_cannot_build_is_reported_by_field_and_line() -> None:
    form = RouteForm(
        backends="http://127.0.0.1:9001\n127.0.0.1\nhttp://127.0.0.1:9002 weight",
        timeout_ms="soon",
        other='{"name": "x"',
    )

    _, issues = form.to_config()

    assert [(i.path, i.line) for i in issues] == [
        ("other settings", None),
        ("backends", 2),
        ("backends", 3),
        ("timeout_ms", None),
    ]
    assert "not a backend URL" in issues[1].message


def test_missing_fields_are_left_for_the_gateway_to_name() -> None:
    config, issues = RouteForm(methods=[]).to_config()

    assert issues == []
    assert config == {}


def test_a_websocket_route_keeps_its_protocol_and_ws_backends() -> None:
    router: dict[str, Any] = {
        "name": "chat",
        "external_path": "/ws/chat",
        "internal_path": "/chat",
        "methods": ["GET"],
        "protocol": "websocket",
        "backends": [
            {"host": "ws://127.0.0.1", "port": 9001},
            {"host": "wss://chat.internal", "port": 443, "weight": 2},
        ],
    }

    config, issues = submit(RouteForm.from_config(router)).to_config()

    assert issues == []
    assert config == router


def test_a_backend_host_is_kept_as_written_trailing_slash_and_ipv6_included() -> None:
    router: dict[str, Any] = {
        "external_path": "/x",
        "internal_path": "/",
        "methods": ["GET"],
        "backends": [
            {"host": "http://127.0.0.1/", "port": 9001},
            {"host": "http://[::1]", "port": 9002},
        ],
    }

    config, issues = submit(RouteForm.from_config(router)).to_config()

    assert issues == []
    assert config == router


def test_methods_typed_as_text_are_split_and_upper_cased() -> None:
    form = RouteForm.from_fields({}, ["get, post  PUT"])

    assert form.methods == ["GET", "POST", "PUT"]
    assert form.method_choices(["GET", "POST"]) == ["GET", "POST", "PUT"]
