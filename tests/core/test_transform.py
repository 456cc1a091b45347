"""Transformations: each sentence of the kairos_core.transform docstring, pinned."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kairos_core.config.models import RequestTransformation, ResponseTransformation
from kairos_core.transform import (
    CompiledRequestTransform,
    CompiledResponseTransform,
    RequestParts,
    ResponseParts,
    rust_replacement_to_python,
)

COOKIES = (("Set-Cookie", "a=1"), ("Content-Type", "text/plain"), ("set-cookie", "b=2"))


def request(config: dict[str, Any]) -> CompiledRequestTransform:
    return CompiledRequestTransform(RequestTransformation.model_validate(config))


def response(config: dict[str, Any]) -> CompiledResponseTransform:
    return CompiledResponseTransform(ResponseTransformation.model_validate(config))


def req_headers(
    ops: list[dict[str, Any]], headers: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    return request({"headers": ops}).apply(RequestParts("/", "", headers)).headers


def resp_headers(
    ops: list[dict[str, Any]], headers: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    return response({"headers": ops}).apply(ResponseParts(200, headers)).headers


def rewrite_path(pattern: str, replacement: str, path: str) -> str:
    transform = request({"path": {"pattern": pattern, "replacement": replacement}})
    return transform.apply(RequestParts(path, "", ())).path


def rewrite_query(ops: list[dict[str, Any]], query: str) -> str:
    return request({"query_params": ops}).apply(RequestParts("/", query, ())).query


# --- headers ------------------------------------------------------------------------------------


def test_header_add_appends_when_absent() -> None:
    ops = [{"action": "add", "name": "X-Gateway", "value": "kairos"}]
    assert req_headers(ops, (("Accept", "*/*"),)) == (("Accept", "*/*"), ("X-Gateway", "kairos"))


def test_header_add_keeps_existing_value_whatever_its_case() -> None:
    ops = [{"action": "add", "name": "X-Gateway", "value": "kairos"}]
    assert req_headers(ops, (("x-gateway", "client"),)) == (("x-gateway", "client"),)


def test_header_set_replaces_every_value_with_one_at_the_first_position() -> None:
    ops = [{"action": "set", "name": "SET-COOKIE", "value": "c=3"}]
    assert resp_headers(ops, COOKIES) == (("SET-COOKIE", "c=3"), ("Content-Type", "text/plain"))


def test_header_set_appends_when_absent() -> None:
    ops = [{"action": "set", "name": "X-Env", "value": "prod"}]
    assert req_headers(ops, (("Accept", "*/*"),)) == (("Accept", "*/*"), ("X-Env", "prod"))


def test_header_remove_deletes_every_value_case_insensitively() -> None:
    ops = [{"action": "remove", "name": "Set-Cookie"}]
    assert resp_headers(ops, COOKIES) == (("Content-Type", "text/plain"),)


def test_header_replace_runs_on_every_value_and_every_match() -> None:
    ops = [{"action": "replace", "name": "SET-cookie", "pattern": r"=(\d)", "replacement": "=$1$1"}]
    assert resp_headers(ops, (*COOKIES, ("Set-Cookie", "x=1; y=2"))) == (
        ("Set-Cookie", "a=11"),
        ("Content-Type", "text/plain"),
        ("set-cookie", "b=22"),
        ("Set-Cookie", "x=11; y=22"),
    )


def test_header_replace_with_rust_group_syntax() -> None:
    ops = [
        {
            "action": "replace",
            "name": "User-Agent",
            "pattern": r"(?P<product>\w+)/(\d+\.\d+)",
            "replacement": "${product}-v$2-proxy costs $$5",
        }
    ]
    assert req_headers(ops, (("User-Agent", "curl/8.4"),)) == (
        ("User-Agent", "curl-v8.4-proxy costs $5"),
    )


def test_header_replace_without_that_header_does_nothing() -> None:
    ops = [{"action": "replace", "name": "X-Absent", "pattern": "a", "replacement": "b"}]
    assert req_headers(ops, (("Accept", "a"),)) == (("Accept", "a"),)


def test_repeated_headers_survive_operations_on_other_names() -> None:
    ops = [
        {"action": "add", "name": "X-A", "value": "1"},
        {"action": "set", "name": "Content-Type", "value": "application/json"},
        {"action": "remove", "name": "Server"},
        {"action": "replace", "name": "X-A", "pattern": "1", "replacement": "2"},
    ]
    assert resp_headers(ops, (*COOKIES, ("Server", "nginx"))) == (
        ("Set-Cookie", "a=1"),
        ("Content-Type", "application/json"),
        ("set-cookie", "b=2"),
        ("X-A", "2"),
    )


def test_header_operations_apply_in_config_order() -> None:
    ops = [
        {"action": "remove", "name": "X-Trace"},
        {"action": "add", "name": "x-trace", "value": "gateway"},
    ]
    assert req_headers(ops, (("X-Trace", "client"),)) == (("x-trace", "gateway"),)


def test_apply_does_not_modify_its_input() -> None:
    transform = request({"headers": [{"action": "remove", "name": "Accept"}]})
    parts = RequestParts("/a", "q=1", (("Accept", "*/*"),))
    assert transform.apply(parts) == RequestParts("/a", "q=1", ())
    assert parts == RequestParts("/a", "q=1", (("Accept", "*/*"),))


# --- replacement templates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rust", "python"),
    [
        ("/$1", r"/\g<1>"),
        ("${1}a", r"\g<1>a"),
        ("$0!", r"\g<0>!"),
        ("${name}-$name", r"\g<name>-\g<name>"),
        ("$$1", "$1"),
        ("cost: $", "cost: $"),
        ("$-", "$-"),
        ("${1", "${1"),
        ("$1a", ""),  # the longest name wins: group "1a", which does not exist
        ("$9", ""),  # no such group
        ("${missing}", ""),
        ("a\\b", "a\\\\b"),
    ],
)
def test_rust_replacement_conversion(rust: str, python: str) -> None:
    pattern = re.compile(r"(?P<name>\w+)")
    assert rust_replacement_to_python(rust, pattern) == python


def test_backslashes_in_a_replacement_are_literal() -> None:
    assert rewrite_path(r"^/a$", r"/a\1\n", "/a") == "/a\\1\\n"


def test_group_that_did_not_take_part_is_empty() -> None:
    assert rewrite_path(r"^/(x)?(y)$", "/[$1]$2", "/y") == "/[]y"


# --- path ---------------------------------------------------------------------------------------


def test_path_rewrite_with_rust_group() -> None:
    assert rewrite_path(r"^/api/v1/(.+)$", "/$1", "/api/v1/users/123") == "/users/123"


def test_path_rewrite_replaces_only_the_first_match() -> None:
    assert rewrite_path("v1", "v2", "/v1/items/v1") == "/v2/items/v1"


def test_path_without_match_is_unchanged() -> None:
    assert rewrite_path("^/api", "", "/health") == "/health"


def test_path_result_always_starts_with_a_slash() -> None:
    assert rewrite_path(r"^/api/", "", "/api/users") == "/users"
    assert rewrite_path(r"^/api", "", "/api") == "/"


# --- query --------------------------------------------------------------------------------------


def test_query_add_appends_encoded_when_absent() -> None:
    ops = [{"action": "add", "name": "api key", "value": "a/b&c=d"}]
    assert rewrite_query(ops, "q=caf%C3%A9") == "q=caf%C3%A9&api%20key=a%2Fb%26c%3Dd"


def test_query_add_keeps_an_existing_value() -> None:
    ops = [{"action": "add", "name": "page", "value": "1"}]
    assert rewrite_query(ops, "page=7") == "page=7"


def test_query_add_to_an_empty_query() -> None:
    assert rewrite_query([{"action": "add", "name": "a", "value": "1"}], "") == "a=1"


def test_query_set_replaces_every_value_with_one_at_the_first_position() -> None:
    ops = [{"action": "set", "name": "tag", "value": "x y"}]
    assert rewrite_query(ops, "tag=a&keep=1&tag=b") == "tag=x%20y&keep=1"


def test_query_set_appends_when_absent() -> None:
    assert rewrite_query([{"action": "set", "name": "v", "value": "2"}], "a=1") == "a=1&v=2"


def test_query_remove_deletes_every_pair_including_bare_names() -> None:
    ops = [{"action": "remove", "name": "debug"}]
    assert rewrite_query(ops, "debug=1&a=1&debug&b=%20+") == "a=1&b=%20+"


def test_query_names_compare_after_percent_decoding() -> None:
    ops = [{"action": "remove", "name": "api_key"}, {"action": "remove", "name": "my key"}]
    assert rewrite_query(ops, "api%5Fkey=evil&my+key=1&my%20key=2&ok=1") == "ok=1"


def test_query_names_are_case_sensitive() -> None:
    assert rewrite_query([{"action": "remove", "name": "a"}], "A=1&a=2") == "A=1"


def test_untouched_query_pairs_keep_order_and_exact_encoding() -> None:
    ops = [{"action": "remove", "name": "drop"}]
    query = "z=%2f&a=b+c&drop=1&m=%E2%82%AC&e=&f==g"
    assert rewrite_query(ops, query) == "z=%2f&a=b+c&m=%E2%82%AC&e=&f==g"


def test_empty_query_pieces_are_dropped_when_rewritten() -> None:
    assert rewrite_query([{"action": "remove", "name": "x"}], "a=1&&b=2&") == "a=1&b=2"


def test_query_passes_through_untouched_without_query_transformations() -> None:
    transform = request({"headers": [{"action": "remove", "name": "X"}]})
    assert transform.apply(RequestParts("/", "a=1&&b", ())).query == "a=1&&b"


# --- status -------------------------------------------------------------------------------------


def test_status_first_matching_mapping_wins_and_condition_is_ignored() -> None:
    transform = response(
        {
            "status_code_mappings": [
                {"from": 404, "to": 200, "condition": "path == '/never'"},
                {"from": 404, "to": 410},
                {"from": 500, "to": 503},
            ]
        }
    )
    assert transform.apply(ResponseParts(404, ())).status == 200
    assert transform.apply(ResponseParts(500, ())).status == 503


def test_status_without_a_mapping_is_unchanged() -> None:
    transform = response({"status_code_mappings": [{"from": 404, "to": 200}]})
    assert transform.apply(ResponseParts(502, (("A", "1"),))) == ResponseParts(502, (("A", "1"),))


# --- invalid configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"headers": [{"action": "add", "name": "X"}]}, "needs a 'value'"),
        ({"headers": [{"action": "set", "name": "X"}]}, "needs a 'value'"),
        ({"headers": [{"action": "replace", "name": "X", "pattern": "a"}]}, "needs 'pattern'"),
        ({"headers": [{"action": "add", "name": "X Y", "value": "1"}]}, "invalid header name"),
        ({"headers": [{"action": "add", "name": "X", "value": "a\r\nB: c"}]}, "CR, LF"),
        (
            {"headers": [{"action": "replace", "name": "X", "pattern": "a", "replacement": "\n"}]},
            "CR, LF",
        ),
        ({"query_params": [{"action": "replace", "name": "q"}]}, "not supported"),
        ({"query_params": [{"action": "set", "name": "q"}]}, "needs a 'value'"),
        ({"query_params": [{"action": "remove", "name": ""}]}, "must not be empty"),
    ],
)
def test_invalid_request_config_is_rejected_at_construction(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        request(config)


def test_invalid_regex_is_rejected_at_construction() -> None:
    with pytest.raises(re.error):
        request({"path": {"pattern": "(", "replacement": "/"}})
    with pytest.raises(re.error):
        response(
            {"headers": [{"action": "replace", "name": "X", "pattern": "[", "replacement": ""}]}
        )
