"""``POST /api/route-test`` and ``KairosClient.route_test``: the dry run on the live gateway."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from kairos_client import KairosClient
from tests.support.gateway import Gateway, route
from tests.support.procs import Upstream


@pytest.fixture
def setup(
    gateway_factory: Callable[..., Gateway], upstream_factory: Callable[[str], Upstream]
) -> tuple[Gateway, Upstream, Upstream]:
    a, b = upstream_factory("a"), upstream_factory("b")
    gateway = gateway_factory(
        {"routers": [route("/api/users/{id}", "/users/{id}", [a.url, b.url], name="users")]}
    )
    return gateway, a, b


def test_route_test_plans_without_sending(setup: tuple[Gateway, Upstream, Upstream]) -> None:
    gateway, a, b = setup
    with KairosClient(gateway.admin_url) as client:
        result = client.route_test("GET", "/api/users/7?verbose=1")
    assert result.outcome == "routable"
    assert result.route_id == "users"
    assert result.upstream_url is not None and result.upstream_url.endswith("/users/7?verbose=1")
    assert a.hits() == 0 and b.hits() == 0


def test_route_test_uses_live_breaker_state(setup: tuple[Gateway, Upstream, Upstream]) -> None:
    gateway, a, b = setup
    with KairosClient(gateway.admin_url) as client:
        client.open_circuit(a.url)
        result = client.route_test("GET", "/api/users/7")
        assert result.report is not None
        pick = result.report.pick
        assert pick is not None and pick.key == b.url
        assert [(c.key, c.state, c.eligible) for c in result.report.candidates] == [
            (a.url, "open", False),
            (b.url, "closed", True),
        ]
        client.open_circuit(b.url)
        rejected = client.route_test("GET", "/api/users/7")
    assert (rejected.outcome, rejected.status) == ("circuit_open", 503)


def test_route_test_reports_rejections(setup: tuple[Gateway, Upstream, Upstream]) -> None:
    gateway, _, _ = setup
    with KairosClient(gateway.admin_url) as client:
        assert client.route_test("GET", "/nowhere").status == 404
        assert client.route_test("POST", "/api/users/1").status == 405
        traversal = client.route_test("GET", "/api/users/%2e%2e")
    assert (traversal.outcome, traversal.status) == ("bad_request", 400)


def test_malformed_route_test_request_is_400(setup: tuple[Gateway, Upstream, Upstream]) -> None:
    gateway, _, _ = setup
    answer = httpx.post(f"{gateway.admin_url}/api/route-test", json={"method": "GET"})
    assert answer.status_code == 400
    assert answer.json()["type"] == "bad_request"
