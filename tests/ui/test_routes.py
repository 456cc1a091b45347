"""The routes page: the live table, create / edit / delete through the form, the route test."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Page, expect
from websockets.sync.client import connect

from kairos_client import KairosClient
from tests.support.gateway import Gateway
from tests.support.procs import Upstream
from tests.ui.conftest import StartUi
from tests.ui.dashboard import Stack, open_page, resolved_config, set_methods


def test_the_table_lists_routes_with_badges_and_the_route_test_dry_runs(
    stack: Stack, page: Page
) -> None:
    open_page(page, stack.ui, "/routes")

    rows = page.locator("#routes-body tr")
    expect(rows).to_have_count(3)
    expect(page.locator("tr[data-route='echo'] .badge")).to_have_count(0)
    expect(page.locator("tr[data-route='users'] .badge")).to_have_text(["auth", "retry"])
    expect(page.locator("tr[data-route='limited'] .badge")).to_have_text(["rate limit"])
    expect(page.locator("tr[data-route='users']")).to_contain_text("/api/users/{id}")

    with stack.gateway.client() as client:
        for _ in range(3):
            client.get("/echo")
    expect(page.locator("tr[data-route='echo'] [data-metric='requests']")).to_have_text("3")

    form = page.locator("#route-test-form")
    form.locator("input[name='path']").fill("/echo?full=1")
    form.get_by_role("button", name="Test").click()

    expect(page.locator("#route-test-upstream")).to_have_text(f"{stack.upstream.url}/?full=1")
    expect(page.locator("#route-test-outcome")).to_contain_text("routable")

    form.locator("input[name='path']").fill("/api/users/7")
    form.get_by_role("button", name="Test").click()
    expect(page.locator("#route-test-outcome")).to_contain_text("authentication_error")
    expect(page.locator("#route-test-upstream")).to_have_text(f"{stack.upstream.url}/users/7")


def test_a_route_fixed_after_a_validation_error_serves_traffic_until_deleted(
    stack: Stack, page: Page
) -> None:
    open_page(page, stack.ui, "/routes")
    page.on("dialog", lambda dialog: dialog.accept())
    form = page.locator("#route-form")
    form.locator("input[name='name']").fill("orders")
    form.locator("input[name='external_path']").fill("/orders/{id}")
    form.locator("input[name='internal_path']").fill("/store/orders/{id}")
    set_methods(form, [])
    form.locator("textarea[name='backends']").fill(f"{stack.upstream.url} weight=2")

    form.get_by_role("button", name="Create route").click()

    issues = page.locator("#route-form-issues")
    expect(issues).to_contain_text("routers[3].methods")
    expect(issues).to_contain_text("is required")
    expect(page.locator("#route-form input[name='name']")).to_have_value("orders")  # kept
    expect(page.locator("#routes-body tr")).to_have_count(3)

    set_methods(page.locator("#route-form"), ["GET"])
    page.locator("#route-form").get_by_role("button", name="Create route").click()

    expect(page.locator("#route-form-panel .message-ok")).to_have_text("Route orders created.")
    expect(page.locator("tr[data-route='orders']")).to_contain_text("/orders/{id}")
    stack.upstream.reset_hits()
    with stack.gateway.client() as client:
        assert client.get("/orders/42").status_code == 200
    assert stack.upstream.hit_log()[-1]["path"] == "/store/orders/42"

    page.locator("tr[data-route='orders']").get_by_role("button", name="Delete").click()

    expect(page.locator("#route-flash")).to_have_text("Route orders deleted.")
    expect(page.locator("tr[data-route='orders']")).to_have_count(0)
    with stack.gateway.client() as client:
        assert client.get("/orders/42").status_code == 404


def test_editing_a_route_keeps_its_other_settings(stack: Stack, page: Page) -> None:
    open_page(page, stack.ui, "/routes")

    page.locator("tr[data-route='users']").get_by_role("button", name="Edit").click()
    form = page.locator("#route-form")
    expect(form.locator("input[name='external_path']")).to_have_value("/api/users/{id}")
    form.locator("input[name='external_path']").fill("/v2/users/{id}")
    form.get_by_role("button", name="Save route").click()

    expect(page.locator("#route-form-panel .message-ok")).to_have_text("Route users saved.")
    expect(page.locator("tr[data-route='users']")).to_contain_text("/v2/users/{id}")
    expect(page.locator("tr[data-route='users'] .badge")).to_have_text(["auth", "retry"])


def test_badges_and_backend_counts_are_what_the_gateway_resolved(
    upstream_factory: Callable[[str], Upstream],
    gateway_factory: Callable[..., Gateway],
    ui_factory: StartUi,
    page: Page,
) -> None:
    upstream, fallback = upstream_factory("a"), upstream_factory("b")
    gateway = gateway_factory(resolved_config(upstream, fallback))
    ui = ui_factory(gateway)
    ui.wait_for_gateway("connected")

    open_page(page, ui, "/routes")

    for inheriting in ("legacy", "slashed"):
        badge = page.locator(f"tr[data-route='{inheriting}'] .badge")
        expect(badge).to_have_text(["rate limit"])
        expect(badge).to_have_attribute("title", re.compile(r"500 .*\(global policy\)$"))
    own = page.locator("tr[data-route='own-limit'] .badge")
    expect(own).to_have_attribute("title", re.compile(r"\(route policy\)$"))
    slashed = page.locator("tr[data-route='slashed'] [data-field='backends']")
    expect(slashed).to_contain_text("1 + 1 fallback")
    expect(slashed).to_have_attribute("title", f"{upstream.url} {fallback.url}")


def test_the_form_offers_exactly_the_choices_of_the_served_schema(stack: Stack, page: Page) -> None:
    with KairosClient(stack.gateway.admin_url) as client:
        router = client.config_schema()["$defs"]["Router"]["properties"]
    methods: list[str] = router["methods"]["items"].get("enum", [])

    open_page(page, stack.ui, "/routes")

    form = page.locator("#route-form")
    for name in ("protocol", "load_balancing_strategy"):
        options = form.locator(f"select[name='{name}'] option")
        expect(options).to_have_text(
            [f"default ({router[name]['default']})", *router[name]["enum"]]
        )
    checkboxes = form.locator("input[type='checkbox'][name='methods']")
    expect(checkboxes).to_have_count(len(methods))
    assert [box.get_attribute("value") for box in checkboxes.all()] == methods
    expect(form.locator("input[name='methods']:not([type='checkbox'])")).to_have_count(
        0 if methods else 1
    )


def test_a_websocket_route_with_a_ws_backend_saves_from_the_form_and_relays(
    stack: Stack, page: Page
) -> None:
    open_page(page, stack.ui, "/routes")
    form = page.locator("#route-form")
    form.locator("input[name='name']").fill("chat")
    form.locator("input[name='external_path']").fill("/ws/chat")
    form.locator("input[name='internal_path']").fill("/_ws")
    set_methods(form, ["GET"])
    form.locator("select[name='protocol']").select_option("websocket")
    form.locator("textarea[name='backends']").fill(stack.upstream.ws_url)

    form.get_by_role("button", name="Create route").click()

    expect(page.locator("#route-form-panel .message-ok")).to_have_text("Route chat created.")
    expect(page.locator("tr[data-route='chat'] [data-field='protocol']")).to_have_text("websocket")
    with KairosClient(stack.gateway.admin_url) as client:
        chat = client.route("chat")
    assert chat.policies.protocol == "websocket"
    assert chat.backends == [stack.upstream.ws_url]
    with connect(stack.gateway.url.replace("http", "ws", 1) + "/ws/chat") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
