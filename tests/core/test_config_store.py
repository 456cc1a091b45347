"""Editing and persisting config.json: the rules of the kairos_core.config.store docstring.

Writes are atomic (temp file in the same directory, then rename) and leave nothing behind; route
edits keep every key they do not touch (``_comment`` and ``${VAR}`` included) and never mutate
their input; secrets never leave through ``redact`` and come back through ``restore_secrets``.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from kairos_core.config import load_config, validate_document
from kairos_core.config.store import (
    REDACTED,
    is_secret_header,
    redact,
    redact_query,
    restore_secrets,
    with_route_added,
    with_route_removed,
    with_route_replaced,
    write_atomically,
)

JWT_SECRET = "store-tests-jwt-secret-0c8e5d2a9b7f4163"
ADMIN_TOKEN = "store-tests-admin-token-5e1f7a3c"
AI_KEY = "sk-store-tests-primary-0123456789"
FALLBACK_KEY = "sk-store-tests-fallback-9876543210"
ROUTE_FALLBACK_KEY = "sk-store-tests-route-fallback-5555"
REDIS_PASSWORD = "r3dis-pa55word"


def route(path: str, port: int = 8080, **extra: Any) -> dict[str, Any]:
    return {
        "external_path": path,
        "internal_path": path,
        "methods": ["GET"],
        "backends": [{"host": "http://127.0.0.1", "port": port}],
        **extra,
    }


def document() -> dict[str, Any]:
    """A config as an operator writes it: comments, env references, secrets, several routes."""
    return {
        "_comment": "top-level comment",
        "version": 1,
        "jwt": {"secret": JWT_SECRET, "issuer": "kairos"},
        "admin": {"host": "127.0.0.1", "port": 5901, "token": ADMIN_TOKEN},
        "ai": {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "api_key": AI_KEY,
            "fallback_providers": [
                {"provider": "groq", "model": "llama", "api_key": FALLBACK_KEY},
                {"provider": "ollama", "model": "qwen"},
            ],
        },
        "cluster": {"redis_url": f"redis://default:{REDIS_PASSWORD}@redis.internal:6379/0"},
        "server": {"port": "${PORT:-5900}"},
        "routers": [
            route("/a", _comment="route a", name="a"),
            route("/b", name="b"),
            {
                **route("/ai", name="ai"),
                "backends": [
                    {"host": "http://127.0.0.1", "port": 8081},
                    {"host": "http://127.0.0.1", "port": 8082},
                ],
                "ai_policy": {
                    "enabled": True,
                    "fallback_providers": [
                        {"provider": "groq", "model": "llama", "api_key": ROUTE_FALLBACK_KEY}
                    ],
                },
            },
        ],
    }


def secrets() -> list[str]:
    return [JWT_SECRET, ADMIN_TOKEN, AI_KEY, FALLBACK_KEY, ROUTE_FALLBACK_KEY, REDIS_PASSWORD]


# --- write_atomically -------------------------------------------------------------------------


def test_write_atomically_writes_two_space_json_with_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    doc = document()

    write_atomically(path, doc)

    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    assert json.loads(text) == doc


def test_write_atomically_replaces_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"old": true}')

    for n in range(5):
        write_atomically(path, {"generation": n, "name": "Zoë ✓"})

    assert json.loads(path.read_text(encoding="utf-8")) == {"generation": 4, "name": "Zoë ✓"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_document_that_cannot_be_serialized_leaves_the_original_untouched(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.json"
    original = b'{\n  "kept": "byte for byte"\n}\n'
    path.write_bytes(original)

    with pytest.raises((TypeError, ValueError)):
        write_atomically(path, {"routers": [object()]})

    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_failed_rename_leaves_the_original_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.json"
    original = b'{"kept": 1}'
    path.write_bytes(original)

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, {"new": 2})
    monkeypatch.undo()

    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_written_config_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    doc = {"_comment": "x", "routers": [route("/a", name="a")]}

    write_atomically(path, doc)

    loaded = load_config(path, environ={})
    assert loaded.document == doc
    assert [r.name for r in loaded.config.routers] == ["a"]


# --- route edits ----------------------------------------------------------------------------


def without_routers(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "routers"}


def test_with_route_added_appends_and_keeps_every_other_key() -> None:
    doc = document()
    pristine = copy.deepcopy(doc)
    new = route("/c", name="c")

    edited = with_route_added(doc, new)

    assert edited["routers"] == [*pristine["routers"], new]
    assert without_routers(edited) == without_routers(pristine)
    assert edited["routers"][0]["_comment"] == "route a"
    assert edited["server"]["port"] == "${PORT:-5900}"
    assert doc == pristine  # the input is never mutated


def test_with_route_added_to_a_document_without_routers() -> None:
    edited = with_route_added({"_comment": "empty"}, route("/x"))

    assert edited == {"_comment": "empty", "routers": [route("/x")]}


def test_with_route_replaced_changes_only_that_route() -> None:
    doc = document()
    pristine = copy.deepcopy(doc)
    replacement = route("/b2", port=9090, name="b")

    edited = with_route_replaced(doc, 1, replacement)

    assert edited["routers"] == [pristine["routers"][0], replacement, pristine["routers"][2]]
    assert without_routers(edited) == without_routers(pristine)
    assert doc == pristine


def test_with_route_removed_drops_only_that_route() -> None:
    doc = document()
    pristine = copy.deepcopy(doc)

    edited = with_route_removed(doc, 0)

    assert edited["routers"] == pristine["routers"][1:]
    assert without_routers(edited) == without_routers(pristine)
    assert doc == pristine


def test_route_edits_do_not_share_nested_objects_with_their_input() -> None:
    doc = document()
    edited = with_route_added(doc, route("/c"))

    edited["jwt"]["secret"] = "changed"
    edited["routers"][0]["backends"][0]["port"] = 1

    assert doc["jwt"]["secret"] == JWT_SECRET
    assert doc["routers"][0]["backends"][0]["port"] == 8080


# --- redact -------------------------------------------------------------------------------


def test_redact_hides_every_secret() -> None:
    doc = document()

    redacted = redact(doc)

    text = json.dumps(redacted)
    for secret in secrets():
        assert secret not in text
    assert redacted["jwt"]["secret"] == REDACTED
    assert redacted["admin"]["token"] == REDACTED
    assert redacted["ai"]["api_key"] == REDACTED
    assert redacted["ai"]["fallback_providers"][0]["api_key"] == REDACTED
    assert "api_key" not in redacted["ai"]["fallback_providers"][1]
    assert redacted["routers"][2]["ai_policy"]["fallback_providers"][0]["api_key"] == REDACTED
    assert redacted["cluster"]["redis_url"] == f"redis://default:{REDACTED}@redis.internal:6379/0"


def test_redact_keeps_everything_that_is_not_a_secret() -> None:
    doc = document()
    pristine = copy.deepcopy(doc)

    redacted = redact(doc)

    assert doc == pristine  # the input is never mutated
    assert redacted["_comment"] == doc["_comment"]
    assert redacted["jwt"]["issuer"] == "kairos"
    assert redacted["admin"]["port"] == 5901
    assert redacted["ai"]["model"] == "gpt-4o-mini"
    assert redacted["server"] == doc["server"]
    assert redacted["routers"][:2] == doc["routers"][:2]


@pytest.mark.parametrize(
    "url",
    ["redis://redis.internal:6379/0", "redis://user@redis.internal:6379", "rediss://h:6380"],
)
def test_redact_leaves_a_redis_url_without_password_alone(url: str) -> None:
    assert redact({"cluster": {"redis_url": url}})["cluster"]["redis_url"] == url


def test_redact_leaves_absent_and_empty_secrets_alone() -> None:
    doc = {"jwt": {"secret": ""}, "admin": {"token": None}, "routers": []}

    assert redact(doc) == doc


def test_redact_hides_secrets_given_as_environment_references() -> None:
    doc = {"jwt": {"secret": "${JWT_SECRET}"}, "admin": {"token": "${KAIROS_ADMIN_TOKEN}"}}

    assert redact(doc) == {"jwt": {"secret": REDACTED}, "admin": {"token": REDACTED}}


# --- restore_secrets ----------------------------------------------------------------------


def test_restore_secrets_undoes_redact_for_jwt_admin_ai_and_redis() -> None:
    running = document()
    incoming = redact(running)

    restored = restore_secrets(incoming, running)

    assert restored["jwt"]["secret"] == JWT_SECRET
    assert restored["admin"]["token"] == ADMIN_TOKEN
    assert restored["ai"]["api_key"] == AI_KEY
    assert restored["cluster"]["redis_url"] == running["cluster"]["redis_url"]


def test_restore_secrets_restores_global_fallback_provider_keys() -> None:
    running = document()

    restored = restore_secrets(redact(running), running)

    assert restored["ai"]["fallback_providers"][0]["api_key"] == FALLBACK_KEY


def test_restore_secrets_restores_route_fallback_provider_keys() -> None:
    running = document()

    restored = restore_secrets(redact(running), running)

    policy = restored["routers"][2]["ai_policy"]
    assert policy["fallback_providers"][0]["api_key"] == ROUTE_FALLBACK_KEY


def test_restore_secrets_round_trip_of_jwt_admin_ai_and_redis_is_exact() -> None:
    running = document()
    for providers in (
        running["ai"]["fallback_providers"],
        running["routers"][2]["ai_policy"]["fallback_providers"],
    ):
        for provider in providers:
            provider.pop("api_key", None)

    assert restore_secrets(redact(running), running) == running


def test_restore_secrets_keeps_a_new_secret_sent_in_clear() -> None:
    running = document()
    incoming = redact(running)
    incoming["jwt"]["secret"] = "a-brand-new-jwt-secret-of-enough-length-42"
    incoming["cluster"]["redis_url"] = "redis://:new-password@redis.other:6379/1"

    restored = restore_secrets(incoming, running)

    assert restored["jwt"]["secret"] == "a-brand-new-jwt-secret-of-enough-length-42"
    assert restored["cluster"]["redis_url"] == "redis://:new-password@redis.other:6379/1"
    assert restored["admin"]["token"] == ADMIN_TOKEN


def test_restore_secrets_does_not_mutate_its_inputs() -> None:
    running = document()
    incoming = redact(running)
    pristine_running, pristine_incoming = copy.deepcopy(running), copy.deepcopy(incoming)

    restore_secrets(incoming, running)

    assert running == pristine_running
    assert incoming == pristine_incoming


def test_a_restored_document_validates_with_the_running_secret() -> None:
    running = {"jwt": {"secret": JWT_SECRET}, "routers": [route("/a", auth_required=True)]}

    loaded = validate_document(restore_secrets(redact(running), running), environ={})

    assert loaded.config.jwt is not None
    assert loaded.config.jwt.secret == JWT_SECRET


# --- secrets inside transformations -------------------------------------------------------------

BEARER = "Bearer upstream-s3cr3t-0123456789"
COOKIE = "session=c00kie-value-42"
API_KEY = "k3y-for-the-upstream-7777"


def transformed_route() -> dict[str, Any]:
    return route(
        "/t",
        request_transformation={
            "headers": [
                {"action": "set", "name": "Authorization", "value": BEARER},
                {"action": "add", "name": "X-Tenant", "value": "acme"},
                {"action": "set", "name": "X-Api-Key", "value": API_KEY},
                {"action": "remove", "name": "Cookie"},
            ],
            "query_params": [{"action": "add", "name": "access_token", "value": API_KEY}],
        },
        response_transformation={
            "headers": [
                {
                    "action": "replace",
                    "name": "Set-Cookie",
                    "pattern": "session=.*",
                    "replacement": COOKIE,
                }
            ]
        },
    )


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "Set-Cookie",
        "X-Api-Key",
        "X-Auth-Token",
        "X-Client-Secret",
        "DB-Password",
        "api_key",
        "X-Session-Id",
    ],
)
def test_credential_names_are_secret_headers(name: str) -> None:
    assert is_secret_header(name)


@pytest.mark.parametrize("name", ["X-Tenant", "Accept", "X-Request-ID", "User-Agent"])
def test_other_names_are_not_secret_headers(name: str) -> None:
    assert not is_secret_header(name)


def test_redact_hides_credential_values_of_transformations_and_keeps_the_rest() -> None:
    redacted = redact(transformed_route())

    text = json.dumps(redacted)
    for secret in (BEARER, COOKIE, API_KEY):
        assert secret not in text
    headers = redacted["request_transformation"]["headers"]
    assert headers[0] == {"action": "set", "name": "Authorization", "value": REDACTED}
    assert headers[1]["value"] == "acme"
    assert headers[3] == {"action": "remove", "name": "Cookie"}
    assert redacted["request_transformation"]["query_params"][0]["value"] == REDACTED
    response = redacted["response_transformation"]["headers"][0]
    assert (response["pattern"], response["replacement"]) == ("session=.*", REDACTED)


def test_restore_secrets_restores_transformation_values_by_position_or_by_name() -> None:
    running = transformed_route()
    sent = redact(running)
    headers = sent["request_transformation"]["headers"]
    headers.insert(0, {"action": "add", "name": "X-New", "value": "1"})  # positions shift

    restored = restore_secrets(sent, running)

    restored_headers = restored["request_transformation"]["headers"]
    assert restored_headers[1]["value"] == BEARER
    assert restored_headers[3]["value"] == API_KEY
    assert restored["request_transformation"]["query_params"][0]["value"] == API_KEY
    assert restored["response_transformation"]["headers"][0]["replacement"] == COOKIE
    assert restore_secrets(redact(running), running) == running


def test_restore_secrets_never_gives_a_header_the_secret_of_another_name() -> None:
    running = transformed_route()
    sent = redact(running)
    sent["request_transformation"]["headers"][0]["name"] = "X-Other-Token"

    restored = restore_secrets(sent, running)

    assert restored["request_transformation"]["headers"][0]["value"] == REDACTED


def test_redact_query_hides_credential_parameters_only() -> None:
    assert redact_query("x=1&api_key=abc&access%5Ftoken=def&flag") == (
        f"x=1&api_key={REDACTED}&access%5Ftoken={REDACTED}&flag"
    )


def test_write_atomically_syncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both fsyncs, in order: the new content is on disk before it replaces the old file, and
    the rename itself is on disk before the write is reported done."""
    path = tmp_path / "config.json"
    path.write_text("{}")
    happened: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        happened.append(f"fsync {kind}")
        real_fsync(fd)

    def replace(source: Any, target: Any) -> None:
        happened.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    write_atomically(path, document())

    assert happened == ["fsync file", "rename", "fsync directory"]
