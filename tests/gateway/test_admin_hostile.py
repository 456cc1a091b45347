"""The admin API against hostile bodies and operator mistakes (DESIGN.md §3, §7).

A JSON body nested absurdly deep is a 400 ``bad_request``, never a 500; a backend host carrying a
port, credentials, a query string or a line break is refused with the config rule's message (the
password never echoed) and never becomes a circuit; credentials set by a transformation
(``Authorization``, ``X-Api-Key``, a token query parameter...) are redacted in ``/api/config``,
``/api/routes`` and ``/api/route-test``, and a redacted route saved back keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, route
from tests.support.pool import UpstreamPool

GatewayFactory = Callable[..., Gateway]
DEPTH = 100_000
BEARER = "Bearer upstream-s3cr3t-0123456789"
API_KEY = "k3y-for-the-upstream-7777"
PASSWORD = "hunter2-pa55"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def gateway(gateway_factory: GatewayFactory, ups: UpstreamPool) -> Gateway:
    secret_route = route("/t", "/t", [ups["a"].url], name="t")
    secret_route["request_transformation"] = {
        "headers": [
            {"action": "set", "name": "Authorization", "value": BEARER},
            {"action": "set", "name": "X-Api-Key", "value": API_KEY},
        ],
        "query_params": [{"action": "add", "name": "access_token", "value": API_KEY}],
    }
    return gateway_factory({"routers": [route("/a", "/a", [ups["a"].url], name="a"), secret_route]})


@pytest.fixture
def admin(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.admin_url, trust_env=False, timeout=30) as client:
        yield client


def backend_key(gateway: Gateway) -> str:
    only = gateway.document["routers"][0]["backends"][0]
    return f"{only['host']}:{only['port']}"


def nested(depth: int) -> bytes:
    return b'{"routers": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/config"),
        ("POST", "/api/config/validate"),
        ("POST", "/api/routes"),
        ("PUT", "/api/routes/a"),
        ("POST", "/api/route-test"),
    ],
)
def test_a_body_nested_100000_deep_is_a_400(admin: httpx.Client, method: str, path: str) -> None:
    for body in (nested(DEPTH), nested(500)):
        response = admin.request(method, path, content=body, headers=JSON)
        assert response.status_code == 400, response.text
        assert response.json()["type"] == "bad_request"
        assert "nested" in response.json()["error"]
    assert admin.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("http://127.0.0.1:9999", "must not contain a port"),
        (f"http://ops:{PASSWORD}@127.0.0.1", "must not contain credentials"),
        ("http://127.0.0.1?x=1", "must not contain a query string"),
        ("http://127.0.0.1\r\nX-Injected: 1", "must not contain spaces or control characters"),
        ("http://127.0.0.1 ", "must not contain spaces or control characters"),
    ],
    ids=["port", "credentials", "query", "crlf", "space"],
)
def test_a_backend_host_that_is_more_than_a_host_is_refused(
    admin: httpx.Client, gateway: Gateway, host: str, problem: str
) -> None:
    before = gateway.config_path.read_bytes()
    new = route("/new", "/", [], name="new")
    new["backends"] = [{"host": host, "port": 9999}]

    response = admin.post("/api/routes", json=new)

    assert response.status_code == 400, response.text
    (detail,) = response.json()["details"]
    assert detail["path"] == "routers[2].backends[0].host"
    assert f"backend host {problem}" in detail["message"]
    assert PASSWORD not in response.text
    assert gateway.config_path.read_bytes() == before
    circuits = admin.get("/api/circuits").json()["circuits"]
    assert [circuit["backend"] for circuit in circuits] == [backend_key(gateway)]


def test_transformation_credentials_never_leave_the_admin_api(admin: httpx.Client) -> None:
    answers: dict[str, Any] = {
        "config": admin.get("/api/config"),
        "routes": admin.get("/api/routes"),
        "route": admin.get("/api/routes/t"),
        "route-test": admin.post(
            "/api/route-test",
            json={"method": "GET", "path": "/t?x=1", "headers": [["Cookie", "c=1"]]},
        ),
    }
    for name, response in answers.items():
        assert response.status_code == 200, (name, response.text)
        assert BEARER not in response.text and API_KEY not in response.text, name
    served = answers["route"].json()["config"]["request_transformation"]
    assert served["headers"][0] == {"action": "set", "name": "Authorization", "value": "***"}
    assert served["query_params"][0]["value"] == "***"
    plan = answers["route-test"].json()
    assert plan["upstream_url"].endswith("/t?x=1&access_token=***")
    after = plan["report"]["request_transform"]["after"]
    assert ["Authorization", "***"] in after["headers"]
    assert ["Cookie", "***"] in after["headers"]


def test_a_redacted_route_saved_back_keeps_its_credentials(
    admin: httpx.Client, gateway: Gateway, ups: UpstreamPool
) -> None:
    served = admin.get("/api/routes/t").json()["config"]
    served["methods"] = ["GET", "POST"]

    assert admin.put("/api/routes/t", json=served).status_code == 200

    ups["a"].reset_hits()
    assert httpx.post(f"{gateway.url}/t", trust_env=False).status_code == 200
    (hit,) = ups["a"].hit_log()
    headers = {k.lower(): v for k, v in hit["headers"].items()}
    assert (headers["authorization"], headers["x-api-key"]) == (BEARER, API_KEY)
    assert hit["query"] == f"access_token={API_KEY}"


# --- web pages never drive the admin API --------------------------------------------------------


def test_a_cross_site_page_cannot_write_to_a_tokenless_admin_api(
    gateway: Gateway, admin: httpx.Client
) -> None:
    new_route = '{"external_path": "/x", "internal_path": "/x", "methods": ["GET"], ' + (
        '"backends": [{"host": "http://127.0.0.1", "port": 9}]}'
    )
    attempts = [
        # what a form or no-cors fetch on https://evil.example sends
        {"Origin": "https://evil.example", "Content-Type": "text/plain"},
        {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"},
        # a DNS-rebinding page: same origin to the browser, but its own Host
        {"Host": "evil.example:5901", "Content-Type": "application/json"},
    ]
    for headers in attempts:
        response = admin.post("/api/routes", content=new_route, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "forbidden"
    plain = admin.post("/api/routes", content=new_route, headers={"Content-Type": "text/plain"})
    assert (plain.status_code, plain.json()["type"]) == (415, "unsupported_media_type")
    rebound = admin.get("/api/config", headers={"Host": "evil.example"})
    assert (rebound.status_code, rebound.json()["type"]) == (403, "forbidden")
    assert len(admin.get("/api/routes").json()["routes"]) == 2  # nothing was created
    created = admin.post("/api/routes", content=new_route, headers=JSON)
    assert created.status_code == 201, created.text


def test_the_admin_error_never_echoes_an_unsafe_request_id(admin: httpx.Client) -> None:
    response = admin.get("/api/routes/missing", headers={"X-Request-ID": "<script>x</script>"})
    assert response.status_code == 404
    assert "<script>" not in response.text
    assert "<script>" not in response.headers["x-request-id"]
    kept = admin.get("/api/routes/missing", headers={"X-Request-ID": "req-42"})
    assert kept.json()["request_id"] == kept.headers["x-request-id"] == "req-42"
