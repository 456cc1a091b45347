"""The banner: a gateway that stops, comes back, or refuses the dashboard's token."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.support.gateway import Gateway
from tests.support.procs import Upstream
from tests.ui.dashboard import Stack, UiServer, open_page, restart, sample_config

StartUi = Callable[..., UiServer]
# The UI retries with a backoff capped at 5 s; the stream's death is seen at once (reset).
RECOVERY_TIMEOUT_MS = 15_000
PAGES = {
    "/": "#overview",
    "/routes": "#routes-body",
    "/backends": "#backends-body",
    "/decisions": "#decisions-body",
    "/config": "#config-view",
}


def test_a_stopped_gateway_shows_the_banner_and_a_restarted_one_clears_it(
    stack: Stack, page: Page
) -> None:
    open_page(page, stack.ui)
    banner = page.locator("#gateway-banner")
    expect(banner).to_have_count(0)

    stack.gateway.stop()

    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Gateway unreachable")
    # Every page still renders, banner included, with the last figures and no stack trace.
    for path in ("/", "/routes", "/backends", "/decisions", "/config"):
        response = page.goto(f"{stack.ui.url}{path}")
        assert response is not None and response.status == 200, path
        expect(page.locator("#gateway-banner")).to_contain_text("Gateway unreachable")
        assert "Traceback" not in page.content()
    expect(
        page.locator("#routes-body, #overview, #backends-body, #decisions-body, #config-view").first
    ).to_be_visible()

    restart(stack.gateway)

    expect(page.locator("#gateway-banner")).to_have_count(0, timeout=RECOVERY_TIMEOUT_MS)
    expect(page.locator("#config-json")).to_contain_text('"/echo"')


def test_a_refused_token_shows_not_authorised(
    upstream_factory: Callable[[str], Upstream],
    gateway_factory: Callable[..., Gateway],
    ui_factory: StartUi,
    page: Page,
) -> None:
    config = {**sample_config(upstream_factory("a")), "admin": {"token": "the-right-admin-token"}}
    gateway = gateway_factory(config)
    ui = ui_factory(gateway, token="a-wrong-token")
    ui.wait_for_gateway("unauthorised")

    page.goto(ui.url)

    expect(page.locator("#gateway-banner")).to_contain_text("Not authorised")
    assert "a-wrong-token" not in page.content()
