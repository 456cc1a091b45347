"""Route table behaviour: each test pins a sentence of the kairos_core.routing docstring."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kairos_core.routing import (
    BadPath,
    CatchAllSegment,
    LiteralSegment,
    MethodNotAllowed,
    NotFound,
    ParamSegment,
    PathPattern,
    PatternError,
    RouteMatch,
    RouteSpec,
    RouteTable,
    find_conflicts,
    render_internal_path,
)


def spec(
    external: str,
    internal: str | None = None,
    methods: str = "GET",
    *,
    hosts: tuple[str, ...] = (),
    order: int = 0,
    route_id: str | None = None,
) -> RouteSpec[str]:
    rid = route_id or f"{methods} {external} {hosts}"
    return RouteSpec(
        route_id=rid,
        external=PathPattern.parse(external),
        internal=PathPattern.parse(internal or external),
        methods=frozenset(methods.split(",")),
        hosts=hosts,
        order=order,
        payload=rid,
    )


def match(
    table: RouteTable[str], path: str, method: str = "GET", host: str | None = None
) -> RouteMatch[str]:
    result = table.lookup(method, path, host)
    assert isinstance(result, RouteMatch), result
    return result


def matched_id(
    table: RouteTable[str], path: str, method: str = "GET", host: str | None = None
) -> str:
    return match(table, path, method, host).spec.route_id


# --- patterns ---------------------------------------------------------------------------------


def test_parse_builds_typed_segments() -> None:
    pattern = PathPattern.parse("/api/{org}/files/{*rest}")
    assert pattern.segments == (
        LiteralSegment("api"),
        ParamSegment("org"),
        LiteralSegment("files"),
        CatchAllSegment("rest"),
    )
    assert pattern.param_names == ("org", "rest")
    assert PathPattern.parse("/").segments == ()
    assert PathPattern.parse("/users/").segments == (LiteralSegment("users"), LiteralSegment(""))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("/api/{id", "unclosed '{'"),
        ("/api/{}", "empty parameter name"),
        ("/api/{*}", "empty parameter name"),
        ("/api/{a-b}", "parameter name 'a-b' must be an identifier"),
        ("/api/{1a}", "must be an identifier"),
        ("/{*rest}/x", "catch-all '{*rest}' must be the last segment"),
        ("/a/{id}/{id}", "duplicate parameter 'id'"),
        ("/a/{id}/{*id}", "duplicate parameter 'id'"),
        ("api/no-slash", "must start with '/'"),
        ("", "must start with '/'"),
        ("/a/../b", "path traversal"),
        ("/a/./b", "path traversal"),
        ("/a/%2e%2E/b", "path traversal"),
        ("/a//b", "empty segment"),
        ("/a{b}", "must fill a whole segment"),
        ("/a/x}", "must fill a whole segment"),
        ("/a/%zz", "malformed percent-encoding"),
    ],
)
def test_invalid_patterns_are_rejected_with_a_reason(raw: str, message: str) -> None:
    with pytest.raises(PatternError, match=re.escape(message)) as info:
        PathPattern.parse(raw)
    assert repr(raw) in str(info.value)


def test_internal_path_may_only_use_external_params() -> None:
    with pytest.raises(PatternError, match="parameter 'id' that external path"):
        spec("/users", "/u/{id}")


def test_route_spec_fields_are_keyword_only() -> None:
    positional: Any = RouteSpec
    root = PathPattern.parse("/")
    with pytest.raises(TypeError):
        positional("r", root, root, frozenset({"GET"}), (), 0, "payload")


# --- specificity ------------------------------------------------------------------------------


def test_static_beats_parameter_regardless_of_config_order() -> None:
    for order in ((0, 1), (1, 0)):
        table = RouteTable(
            [
                spec("/users/{id}", route_id="param", order=order[0]),
                spec("/users/me", route_id="static", order=order[1]),
            ]
        )
        assert matched_id(table, "/users/me") == "static"
        assert matched_id(table, "/users/42") == "param"


def test_parameter_beats_catch_all() -> None:
    table = RouteTable([spec("/f/{*rest}", route_id="all"), spec("/f/{name}", route_id="one")])
    assert matched_id(table, "/f/a") == "one"
    assert matched_id(table, "/f/a/b") == "all"


def test_specificity_is_decided_segment_by_segment() -> None:
    table = RouteTable([spec("/a/{*rest}", route_id="all"), spec("/a/{x}/{y}", route_id="two")])
    assert matched_id(table, "/a/b/c") == "two"
    assert matched_id(table, "/a/b/c/d") == "all"


def test_equal_specificity_keeps_config_order() -> None:
    table = RouteTable(
        [
            spec("/items/{b}", route_id="second", order=2),
            spec("/items/{a}", route_id="first", order=1),
        ]
    )
    assert matched_id(table, "/items/1") == "first"
    same_order = RouteTable([spec("/x", route_id="a"), spec("/x", route_id="b")])
    assert matched_id(same_order, "/x") == "a"


def test_backtracks_when_literal_branch_fails_deeper() -> None:
    table = RouteTable([spec("/a/{x}/c", route_id="param"), spec("/a/b/d", route_id="literal")])
    assert matched_id(table, "/a/b/c") == "param"
    assert match(table, "/a/b/c").params == {"x": "b"}
    assert matched_id(table, "/a/b/d") == "literal"


def test_most_specific_route_allowing_the_method_wins() -> None:
    table = RouteTable([spec("/users/{id}", route_id="get"), spec("/users/me", methods="DELETE")])
    assert matched_id(table, "/users/me", "GET") == "get"
    assert match(table, "/users/me", "DELETE").spec.external.raw == "/users/me"


def test_parameter_matches_exactly_one_segment() -> None:
    table = RouteTable([spec("/api/users/{id}")])
    assert match(table, "/api/users/123").params == {"id": "123"}
    assert table.lookup("GET", "/api/users/123/extra") == NotFound()
    assert table.lookup("GET", "/api/users") == NotFound()
    assert table.lookup("GET", "/api/users/") == NotFound()


def test_trailing_slash_is_strict() -> None:
    table = RouteTable([spec("/api/users", route_id="bare"), spec("/api/items/", route_id="slash")])
    assert matched_id(table, "/api/users") == "bare"
    assert table.lookup("GET", "/api/users/") == NotFound()
    assert matched_id(table, "/api/items/") == "slash"
    assert table.lookup("GET", "/api/items") == NotFound()


def test_root_route() -> None:
    table = RouteTable([spec("/", "/index")])
    assert match(table, "/").upstream_path == "/index"
    assert table.lookup("GET", "/x") == NotFound()


# --- parameters and upstream path -------------------------------------------------------------


def test_multiple_parameters_are_substituted() -> None:
    table = RouteTable([spec("/api/{org}/users/{id}", "/v1/{org}/u/{id}")])
    result = match(table, "/api/acme/users/7")
    assert result.params == {"org": "acme", "id": "7"}
    assert result.upstream_path == "/v1/acme/u/7"


def test_internal_template_may_reorder_and_drop_params() -> None:
    table = RouteTable([spec("/a/{x}/{y}", "/b/{y}/{x}"), spec("/c/{x}", "/fixed")])
    assert match(table, "/a/1/2").upstream_path == "/b/2/1"
    assert match(table, "/c/1").upstream_path == "/fixed"


def test_percent_encoded_params_are_decoded_and_kept_encoded_upstream() -> None:
    table = RouteTable([spec("/files/{name}", "/x/{name}")])
    result = match(table, "/files/a%20b")
    assert result.params == {"name": "a b"}
    assert result.upstream_path == "/x/a%20b"


def test_encoded_slash_in_param_cannot_add_a_segment() -> None:
    table = RouteTable([spec("/files/{name}", "/x/{name}/meta")])
    result = match(table, "/files/a%2Fb")
    assert result.params == {"name": "a/b"}
    assert result.upstream_path == "/x/a%2Fb/meta"


def test_literals_match_after_percent_decoding() -> None:
    table = RouteTable([spec("/café"), spec("/a b")])
    assert match(table, "/caf%C3%A9").spec.external.raw == "/café"
    assert match(table, "/a%20b").spec.external.raw == "/a b"
    assert table.lookup("GET", "/CAF%C3%A9") == NotFound()


def test_catch_all_captures_several_segments_and_renders_them() -> None:
    table = RouteTable([spec("/static/{*path}", "/assets/{*path}")])
    result = match(table, "/static/css/site%20main.css")
    assert result.params == {"path": "css/site main.css"}
    assert result.upstream_path == "/assets/css/site%20main.css"
    assert match(table, "/static/dir/").upstream_path == "/assets/dir/"


def test_catch_all_keeps_encoded_slash_inside_a_segment() -> None:
    table = RouteTable([spec("/p/{*rest}", "/q/{*rest}")])
    assert match(table, "/p/a%2Fb/c").upstream_path == "/q/a%2Fb/c"


def test_catch_all_requires_at_least_one_segment() -> None:
    table = RouteTable([spec("/files/{*rest}")])
    assert table.lookup("GET", "/files/") == NotFound()
    assert table.lookup("GET", "/files") == NotFound()


def test_catch_all_into_single_parameter_is_encoded_as_one_segment() -> None:
    table = RouteTable([spec("/p/{*rest}", "/q/{rest}")])
    assert match(table, "/p/a/b").upstream_path == "/q/a%2Fb"


def test_render_internal_path() -> None:
    template = PathPattern.parse("/v1/{id}/files/{*rest}")
    params = {"id": "a/b c", "rest": "x y/z"}
    assert render_internal_path(template, params) == "/v1/a%2Fb%20c/files/x%20y/z"
    with pytest.raises(KeyError):
        render_internal_path(template, {"id": "1"})


# --- methods ----------------------------------------------------------------------------------


def test_method_not_allowed_lists_sorted_methods_with_implicit_head() -> None:
    table = RouteTable([spec("/r", methods="POST,GET"), spec("/{x}", methods="DELETE")])
    assert table.lookup("PUT", "/r") == MethodNotAllowed(("DELETE", "GET", "HEAD", "POST"))
    assert table.lookup("PUT", "/other") == MethodNotAllowed(("DELETE",))


def test_head_is_implicit_for_get_but_options_is_not() -> None:
    table = RouteTable([spec("/r")])
    assert isinstance(table.lookup("HEAD", "/r"), RouteMatch)
    assert table.lookup("OPTIONS", "/r") == MethodNotAllowed(("GET", "HEAD"))


def test_explicit_head_beats_implicit_head() -> None:
    table = RouteTable([spec("/r", route_id="get"), spec("/r", methods="HEAD", route_id="head")])
    assert matched_id(table, "/r", "HEAD") == "head"
    assert matched_id(table, "/r", "GET") == "get"


# --- bad paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/a/../b",
        "/a/./b",
        "/a/%2e%2e/b",
        "/a/%2E%2e/b",
        "/a/%2e/b",
        "/a/..%2Fetc",
        "/a/..%5Cetc",
        "//x",
        "/a//b",
        "x/y",
        "",
        "*",
        "/a/%00",
        "/a/%zz",
        "/a/%ff",
    ],
)
def test_malformed_or_traversal_paths_are_bad(path: str) -> None:
    table = RouteTable([spec("/{*rest}")])
    assert isinstance(table.lookup("GET", path), BadPath)


# --- hosts ------------------------------------------------------------------------------------


def test_host_routes_match_only_their_hosts() -> None:
    table = RouteTable([spec("/r", hosts=("api.example.com",), route_id="api")])
    assert matched_id(table, "/r", host="api.example.com") == "api"
    assert matched_id(table, "/r", host="API.Example.com:8443") == "api"
    assert matched_id(table, "/r", host="api.example.com.") == "api"
    assert table.lookup("GET", "/r", "other.example.com") == NotFound()
    assert table.lookup("GET", "/r") == NotFound()


def test_wildcard_host_matches_one_or_more_labels_but_not_the_apex() -> None:
    table = RouteTable([spec("/r", hosts=("*.example.com",))])
    assert isinstance(table.lookup("GET", "/r", "a.example.com"), RouteMatch)
    assert isinstance(table.lookup("GET", "/r", "a.b.example.com:80"), RouteMatch)
    assert table.lookup("GET", "/r", "example.com") == NotFound()
    assert table.lookup("GET", "/r", "badexample.com") == NotFound()


def test_host_specific_routes_beat_hostless_at_equal_specificity() -> None:
    table = RouteTable(
        [
            spec("/r", route_id="any"),
            spec("/r", hosts=("*.example.com",), route_id="wild", order=1),
            spec("/r", hosts=("api.example.com",), route_id="exact", order=2),
        ]
    )
    assert matched_id(table, "/r", host="api.example.com") == "exact"
    assert matched_id(table, "/r", host="www.example.com") == "wild"
    assert matched_id(table, "/r", host="other.org") == "any"
    assert matched_id(table, "/r") == "any"


def test_path_specificity_beats_host_specificity() -> None:
    table = RouteTable(
        [spec("/u/{id}", hosts=("a.com",), route_id="host"), spec("/u/me", route_id="path")]
    )
    assert matched_id(table, "/u/me", host="a.com") == "path"


def test_ipv6_host_port_is_stripped() -> None:
    table = RouteTable([spec("/r", hosts=("[::1]",))])
    assert isinstance(table.lookup("GET", "/r", "[::1]:8080"), RouteMatch)


def test_routes_for_other_hosts_do_not_count_towards_allow() -> None:
    table = RouteTable([spec("/r", methods="POST", hosts=("a.com",)), spec("/r")])
    assert table.lookup("PUT", "/r", "b.com") == MethodNotAllowed(("GET", "HEAD"))


# --- table ------------------------------------------------------------------------------------


def test_table_exposes_specs_and_length() -> None:
    specs = [spec("/a"), spec("/b")]
    table = RouteTable(specs)
    assert len(table) == 2
    assert len(table) == len(specs)
    assert len(RouteTable[str]([])) == 0
    assert RouteTable[str]([]).lookup("GET", "/") == NotFound()


def test_large_table_still_routes_correctly() -> None:
    specs = [spec(f"/svc{i}/items/{{id}}", f"/v{i}/{{id}}", route_id=str(i)) for i in range(5000)]
    specs.append(spec("/svc4999/items/special", route_id="special"))
    table = RouteTable(specs)
    assert len(table) == 5001
    for i in (0, 1234, 4999):
        result = match(table, f"/svc{i}/items/x")
        assert (result.spec.route_id, result.upstream_path) == (str(i), f"/v{i}/x")
    assert matched_id(table, "/svc4999/items/special") == "special"
    assert table.lookup("GET", "/svc5000/items/x") == NotFound()


_literal_segment = st.text(alphabet="abcxyz019-_.~é ", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)
_literal_path = st.lists(_literal_segment, min_size=0, max_size=4).map(lambda p: "/" + "/".join(p))


@given(st.lists(_literal_path, min_size=1, max_size=30, unique=True))
def test_every_literal_route_looks_up_to_itself(paths: list[str]) -> None:
    table = RouteTable([spec(p, route_id=p) for p in paths])
    for p in paths:
        encoded = "/".join(quote(s) for s in p.split("/"))
        assert matched_id(table, p) == p
        assert matched_id(table, encoded) == p


# --- conflicts --------------------------------------------------------------------------------


def test_find_conflicts_reports_same_shape_same_method_same_host() -> None:
    a = spec("/u/{id}", route_id="a")
    b = spec("/u/{name}", methods="GET,POST", route_id="b", order=1)
    assert find_conflicts([b, a]) == [(a, b)]


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (spec("/u/{id}"), spec("/u/me")),
        (spec("/u/{id}"), spec("/u/{id}", methods="POST")),
        (spec("/u/{id}"), spec("/u/{*id}")),
        (spec("/u/{id}", hosts=("a.com",)), spec("/u/{id}")),
        (spec("/u/{id}", hosts=("a.com",)), spec("/u/{id}", hosts=("b.com",))),
        (spec("/u/{id}", hosts=("a.example.com",)), spec("/u/{id}", hosts=("*.example.com",))),
    ],
)
def test_find_conflicts_ignores_routes_that_specificity_separates(
    left: RouteSpec[str], right: RouteSpec[str]
) -> None:
    assert find_conflicts([left, right]) == []


@pytest.mark.parametrize(
    ("left_hosts", "right_hosts"),
    [
        (("a.com",), ("A.com", "b.com")),
        (("*.example.com",), ("*.api.example.com",)),
        (("*.example.com",), ("*.example.com",)),
    ],
)
def test_find_conflicts_reports_overlapping_hosts(
    left_hosts: tuple[str, ...], right_hosts: tuple[str, ...]
) -> None:
    left, right = spec("/x", hosts=left_hosts), spec("/x", hosts=right_hosts, order=1)
    assert find_conflicts([left, right]) == [(left, right)]


def test_find_conflicts_compares_literals_decoded() -> None:
    left, right = spec("/caf%C3%A9"), spec("/café", order=1)
    assert find_conflicts([left, right]) == [(left, right)]
