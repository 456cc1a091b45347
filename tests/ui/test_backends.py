"""The backends & circuits page: breaker badges driven by the buttons, live, and transitions."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.ui.dashboard import Stack, open_page


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
