"""The backends & circuits page: breaker badges driven by the buttons, live, and transitions."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.support.gateway import Gateway, backend, route
from tests.support.procs import Upstream
from tests.ui.conftest import StartUi
from tests.ui.dashboard import Stack, open_page, resolved_config


def test_force_open_and_reset_turn_the_badge_live_and_list_the_transitions(
    stack: Stack, page: Page
) -> None:
    open_page(page, stack.ui, "/backends")
    row = page.locator(f"tr[data-backend='{stack.upstream.url}']")
    badge = row.locator("[data-state]")
    expect(badge).to_have_text("closed")
    expect(row).to_contain_text("echo, users, limited")
    expect(page.locator("#transitions")).to_contain_text("No breaker has changed state yet")

    row.get_by_role("button", name="Force open").click()

    expect(badge).to_have_text("open")
    expect(badge).to_have_class("badge state-open")
    expect(row.locator("td").nth(3)).to_contain_text("in ")  # time to half-open
    first = page.locator("#transitions li").first
    expect(first).to_contain_text(stack.upstream.url)
    expect(first.locator(".badge")).to_have_text(["closed", "open"])
    with stack.gateway.client() as client:
        assert client.get("/echo").status_code == 503

    row.get_by_role("button", name="Reset").click()

    expect(badge).to_have_text("closed")
    expect(page.locator("#transitions li")).to_have_count(2)
    expect(page.locator("#transitions li").first.locator(".badge")).to_have_text(["open", "closed"])
    with stack.gateway.client() as client:
        assert client.get("/echo").status_code == 200


def test_used_by_lists_routes_by_the_backend_keys_the_gateway_gives(
    upstream_factory: Callable[[str], Upstream],
    gateway_factory: Callable[..., Gateway],
    ui_factory: StartUi,
    page: Page,
) -> None:
    upstream, fallback = upstream_factory("a"), upstream_factory("b")
    ui = ui_factory(gateway_factory(resolved_config(upstream, fallback)))
    ui.wait_for_gateway("connected")

    open_page(page, ui, "/backends")

    # a legacy host + port and a host with a trailing slash are the same key as the upstream's
    expect(page.locator("#backends-body tr")).to_have_count(2)
    expect(page.locator(f"tr[data-backend='{upstream.url}'] [data-field='used-by']")).to_have_text(
        "legacy, slashed"
    )
    expect(page.locator(f"tr[data-backend='{fallback.url}'] [data-field='used-by']")).to_have_text(
        "slashed, own-limit"
    )


def test_a_failing_health_check_shows_its_failures_and_last_error(
    upstream_factory: Callable[[str], Upstream],
    gateway_factory: Callable[..., Gateway],
    ui_factory: StartUi,
    page: Page,
) -> None:
    checked, unchecked = upstream_factory("checked"), upstream_factory("unchecked")
    checked.control(health="fail")
    config = {
        "health_check": {"interval_s": 0.2, "timeout_ms": 500, "unhealthy_threshold": 2},
        "routers": [
            route("/checked", "/", [], name="checked")
            | {"backends": [backend(checked.url, health_check_path="/health")]},
            route("/unchecked", "/", [unchecked.url], name="unchecked"),
        ],
    }
    ui = ui_factory(gateway_factory(config))
    ui.wait_for_gateway("connected")

    open_page(page, ui, "/backends")

    health = page.locator(f"tr[data-backend='{checked.url}'] [data-field='health']")
    expect(health.locator(".badge")).to_have_text("unhealthy")
    expect(health.locator("[data-health-check]")).to_contain_text(
        re.compile(r"check failed \d+× in a row")
    )
    expect(health.locator("[data-field='last-error']")).to_have_text("status 503")
    unchecked_health = page.locator(f"tr[data-backend='{unchecked.url}'] [data-field='health']")
    expect(unchecked_health).to_have_text("healthy")
    expect(unchecked_health.locator("[data-health-check]")).to_have_count(0)

    checked.control(health="ok")
    expect(health.locator("[data-health-check]")).to_contain_text(
        re.compile(r"check passed \d+× in a row")
    )
    expect(health.locator(".badge")).to_have_text("healthy")
