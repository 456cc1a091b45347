"""Whatever JSON it is given, the config loader answers with a config or a located ConfigError.

Random documents (biased towards the schema's own keys and values) and random mutations of a valid
config must never raise anything but :class:`ConfigError`, and every issue must say where and what.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from kairos_core.config import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    Severity,
    parse_config,
    validate_document,
)
from kairos_core.config import models as schema
from kairos_core.config.loader import decode_json, document_version
from kairos_core.state import compile_state

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _no_admin_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAIROS_ADMIN_TOKEN", raising=False)


def _schema_keys() -> list[str]:
    models = [m for m in vars(schema).values() if isinstance(m, type) and issubclass(m, BaseModel)]
    names = {info.alias or name for model in models for name, info in model.model_fields.items()}
    return sorted(names | {"Composite", "PerIP", "content_analysis", "anomaly_detection"})


SCHEMA_KEYS = _schema_keys()
SCHEMA_WORDS = [
    "http",
    "websocket",
    "ftp",
    "GET",
    "get",
    "PerIP",
    "PerUser",
    "SlidingWindow",
    "round_robin",
    "content_analysis",
    "latency_prediction",
    "add",
    "replace",
    "/",
    "/api/{id}",
    "/a/{id",
    "/../x",
    "https://api.internal",
    "ws://chat",
    "0.0.0.0",
    "(",
    "${UNSET_VAR}",
    "${SET_VAR:-x}",
    "please-change-this-secret",
    "\ud800-lone-surrogate-in-a-string-of-32-chars",
]

keys = st.sampled_from(SCHEMA_KEYS) | st.text(max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-2, max_value=70000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(SCHEMA_WORDS)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
router_like = st.dictionaries(keys, json_values, max_size=8)
config_like = st.fixed_dictionaries(
    {"routers": st.lists(router_like, max_size=3)}, optional={"server": json_values}
).flatmap(lambda base: st.dictionaries(keys, json_values, max_size=4).map(lambda d: d | base))
documents = json_values | config_like


def check_outcome(call: Any, *, root_is_object: bool = False) -> LoadedConfig | None:
    """Run ``call``; it must load or raise a ConfigError whose issues all say where and what."""
    try:
        loaded = call()
    except ConfigError as error:
        assert error.errors, "a ConfigError holds at least one error"
        for issue in error.issues:
            check_issue(issue, needs_real_path=root_is_object)
        assert str(error)
        return None
    assert isinstance(loaded, LoadedConfig)
    for issue in loaded.issues:
        assert issue.severity is not Severity.ERROR
        check_issue(issue, needs_real_path=root_is_object)
    return loaded


def check_issue(issue: ConfigIssue, *, needs_real_path: bool) -> None:
    assert issue.message
    assert str(issue).endswith(issue.message)
    shape = issue.to_dict()
    assert shape["path"]
    assert json.dumps(shape)
    if needs_real_path:
        assert issue.path, str(issue)
        assert issue.line is not None and issue.line >= 1, str(issue)


@SETTINGS
@given(documents)
def test_parse_config_of_any_json_loads_or_raises_config_error(document: Any) -> None:
    check_outcome(lambda: parse_config(json.dumps(document), environ={"SET_VAR": "1"}))


@SETTINGS
@given(documents)
def test_validate_document_of_any_json_loads_or_raises_config_error(document: Any) -> None:
    check_outcome(lambda: validate_document(document, environ={"SET_VAR": "1"}))


@SETTINGS
@given(documents, st.sampled_from([None, 2]), st.text(alphabet=" \t\n", max_size=3))
def test_decode_json_in_steps_is_json_loads(
    document: Any, indent: int | None, padding: str
) -> None:
    text = padding + json.dumps(document, indent=indent, ensure_ascii=False) + padding
    assert decode_json(text) == json.loads(text)
    for broken in (text[:-2], text + ",", text.replace(":", "", 1), text.replace("]", ",]", 1)):
        try:
            expected: Any = json.loads(broken)
        except ValueError as exc:
            with pytest.raises(ValueError, match=re.escape(str(exc))):
                decode_json(broken)
        else:
            assert decode_json(broken) == expected


@SETTINGS
@given(config_like)
def test_document_version_is_the_hash_of_the_canonical_json(document: Any) -> None:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert document_version(document) == hashlib.sha256(canonical).hexdigest()[:16]


@SETTINGS
@given(documents)
def test_strict_mode_only_turns_warnings_into_errors(document: Any) -> None:
    text = json.dumps(document, indent=2)
    lenient = check_outcome(lambda: parse_config(text, environ={}))
    strict_result = check_outcome(lambda: parse_config(text, environ={}, strict=True))
    if strict_result is not None:
        assert lenient is not None
        assert all(i.severity is Severity.RECOMMENDATION for i in strict_result.issues)
    if lenient is not None and not any(i.severity is Severity.WARNING for i in lenient.issues):
        assert strict_result is not None


# --- mutations of a valid config ----------------------------------------------------------------

BASE: dict[str, Any] = {
    "version": 1,
    "_comment": "three routes covering the main blocks",
    "jwt": {"secret": "k3Jq9vXw2LmN8pRt5YzA7bCd4EfGh6Ui", "issuer": "kairos"},
    "rate_limit": {
        "strategy": {"Composite": ["PerIP", "PerUser"]},
        "requests_per_window": 100,
        "window_duration": 60,
        "window_type": "TokenBucket",
    },
    "server": {"port": 8080},
    "routers": [
        {
            "name": "users",
            "backends": [
                {"host": "https://users-a.internal", "port": 443, "weight": 2},
                {"host": "https://users-b.internal", "port": 443, "health_check_path": "/h"},
            ],
            "load_balancing_strategy": "weighted",
            "external_path": "/api/users/{id}",
            "internal_path": "/users/{id}",
            "methods": ["GET", "PUT"],
            "auth_required": True,
            "retry": {"max_retries": 2, "retry_on_status_codes": [502, 503]},
            "circuit_breaker": {"failure_threshold": 3},
            "ai_policy": {"strategy": {"content_analysis": {"model": "m"}}},
        },
        {
            "host": "https://legacy.internal",
            "port": 8443,
            "external_path": "/legacy",
            "internal_path": "/",
            "methods": ["GET"],
            "request_transformation": {
                "headers": [{"action": "set", "name": "X-From", "value": "kairos"}],
                "path": {"pattern": "^/legacy", "replacement": ""},
                "query_params": [{"action": "remove", "name": "debug"}],
            },
        },
        {
            "protocol": "websocket",
            "backends": [{"host": "wss://chat.internal", "port": 443}],
            "external_path": "/ws",
            "internal_path": "/ws",
            "methods": ["GET"],
            "rate_limit": {"strategy": "PerRoute", "requests_per_window": 5, "window_duration": 1},
        },
    ],
}

Loc = tuple[str | int, ...]


def locations(node: Any, loc: Loc = ()) -> list[Loc]:
    """Every location below the root (dict keys and list indices), depth first."""
    found: list[Loc] = []
    children: list[tuple[str | int, Any]] = []
    if isinstance(node, dict):
        children = list(node.items())
    elif isinstance(node, list):
        children = list(enumerate(node))
    for key, child in children:
        found.append((*loc, key))
        found.extend(locations(child, (*loc, key)))
    return found


def containers(node: Any, loc: Loc = ()) -> list[Loc]:
    """Every dict location, the root included."""
    found: list[Loc] = [loc] if isinstance(node, dict) else []
    for child in locations(node, loc):
        if isinstance(get(node, child[len(loc) :]), dict):
            found.append(child)
    return found


def get(node: Any, loc: Loc) -> Any:
    for part in loc:
        node = node[part]
    return node


def other_type(value: Any) -> Any:
    """A value of another JSON type that a careless edit might leave."""
    if isinstance(value, bool):
        return "true" if value else 0
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return 0


def delete(document: Any, data: st.DataObject) -> None:
    loc = data.draw(st.sampled_from(locations(document)))
    parent = get(document, loc[:-1])
    del parent[loc[-1]]


def replace(document: Any, data: st.DataObject) -> None:
    loc = data.draw(st.sampled_from(locations(document)))
    get(document, loc[:-1])[loc[-1]] = data.draw(json_values)


def retype(document: Any, data: st.DataObject) -> None:
    loc = data.draw(st.sampled_from(locations(document)))
    parent = get(document, loc[:-1])
    parent[loc[-1]] = other_type(parent[loc[-1]])


def insert_unknown_key(document: Any, data: st.DataObject) -> None:
    loc = data.draw(st.sampled_from(containers(document)))
    key = data.draw(st.text(min_size=1, max_size=12) | st.sampled_from(["extrnal_path", "prot"]))
    get(document, loc)[key] = data.draw(json_values)


MUTATIONS = [delete, replace, retype, insert_unknown_key]


def test_the_mutation_base_is_valid() -> None:
    loaded = parse_config(json.dumps(BASE, indent=2), environ={})
    assert not any(issue.severity is Severity.ERROR for issue in loaded.issues)


@SETTINGS
@given(st.data())
def test_mutated_valid_config_loads_or_reports_located_errors(data: st.DataObject) -> None:
    document = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        if not locations(document):
            break
        data.draw(st.sampled_from(MUTATIONS))(document, data)
    text = json.dumps(document, indent=2)
    loaded = check_outcome(lambda: parse_config(text, environ={}), root_is_object=True)
    check_outcome(lambda: validate_document(document, environ={}), root_is_object=True)
    if loaded is not None:
        # whatever validates must compile: a reload can never crash on a config it accepted
        state = compile_state(loaded)
        assert len(state.routes) == len(loaded.config.routers)
