"""The overview page: live figures pushed over SSE, 15-minute charts, a screenshot, the nav."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.ui.dashboard import Stack, open_page, wait_for_stream

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_figures_change_live_charts_are_drawn_and_the_nav_leads_on(
    stack: Stack, page: Page, tmp_path: Path
) -> None:
    open_page(page, stack.ui)
    expect(page.locator("#metric-requests-total")).to_have_text("0")
    page.evaluate("window.kairosTestMarker = 'same document'")

    with stack.gateway.client() as client:
        for _ in range(7):
            assert client.get("/echo").status_code == 200

    expect(page.locator("#metric-requests-total")).to_have_text("7")
    expect(page.locator("#metric-rps-60s")).not_to_have_text("0")
    expect(page.locator("#metric-p99")).not_to_have_text("0.00 ms")
    expect(page.locator("#status-classes")).to_contain_text("2xx 7")
    assert page.evaluate("window.kairosTestMarker") == "same document"

    charts = page.locator("#charts svg.chart")
    expect(charts).to_have_count(2)
    expect(charts.first).to_have_attribute(
        "aria-label", "Requests per second: requests/s, errors/s"
    )
    shot = tmp_path / "overview.png"
    page.screenshot(path=str(shot), full_page=True)
    content = shot.read_bytes()
    assert content.startswith(PNG_SIGNATURE)
    assert len(content) > 1000

    stack.ui.wait_for_browsers(1)  # one stream per page, whatever the number of live parts
    page.get_by_role("navigation").get_by_role("link", name="AI decisions").click()
    expect(page).to_have_url(f"{stack.ui.url}/decisions")
    wait_for_stream(page)
    stack.ui.wait_for_browsers(1)  # the previous page's stream was closed
    expect(page.locator("nav a[aria-current='page']")).to_have_text("AI decisions")
    expect(page.locator("#decisions-body")).to_contain_text("No AI routing decisions yet")
    expect(page.locator("#ai-shadow-agreement")).to_have_text("—")
