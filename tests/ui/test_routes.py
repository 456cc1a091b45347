"""The routes page: the live table, create / edit / delete through the form, the route test."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.ui.dashboard import Stack, open_page


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
    form.locator("input[name='methods'][value='GET']").uncheck()
    form.locator("textarea[name='backends']").fill(f"{stack.upstream.url} weight=2")

    form.get_by_role("button", name="Create route").click()

    issues = page.locator("#route-form-issues")
    expect(issues).to_contain_text("routers[3].methods")
    expect(issues).to_contain_text("is required")
    expect(page.locator("#route-form input[name='name']")).to_have_value("orders")  # kept
    expect(page.locator("#routes-body tr")).to_have_count(3)

    page.locator("#route-form input[name='methods'][value='GET']").check()
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
