"""The config page: the redacted running config, validation with paths, reload and its history."""

from __future__ import annotations

import json

from playwright.sync_api import Page, expect

from tests.ui.dashboard import JWT_SECRET, Stack, open_page


def test_the_config_is_shown_redacted_and_a_broken_document_fails_validation(
    stack: Stack, page: Page
) -> None:
    open_page(page, stack.ui, "/config")

    shown = page.locator("#config-json")
    expect(shown).to_contain_text('"secret": "***"')
    expect(shown).to_contain_text('"/api/users/{id}"')
    assert JWT_SECRET not in page.content()

    document = page.locator("#validate-form textarea[name='document']")
    validate = page.locator("#validate-form").get_by_role("button", name="Validate")

    broken = {"version": 1, "routers": [{"external_path": 3, "internal_path": "/"}]}
    document.fill(json.dumps(broken))
    validate.click()
    errors = page.locator("#validation-errors")
    expect(errors).to_contain_text("routers[0].external_path")
    expect(errors).to_contain_text("routers[0].methods")

    document.fill('{"version": 1,')
    validate.click()
    expect(page.locator("#validation-errors")).to_contain_text("not valid JSON")


def test_reload_reports_success_records_it_and_shows_the_new_config_escaped(
    stack: Stack, page: Page
) -> None:
    open_page(page, stack.ui, "/config")
    expect(page.locator("#reloads")).to_contain_text("No reloads")
    gateway = stack.gateway
    routers = gateway.document["routers"]
    routers[0]["backends"][0]["description"] = "<img src=x onerror=alert(1)> echo"
    gateway.write_config({**gateway.document, "routers": routers})

    page.locator("#reload-button").click()

    expect(page.locator("#reload-result")).to_contain_text("Reloaded: config version")
    version = gateway.config_version()
    latest = page.locator("#reloads li").first
    expect(latest.locator(".badge")).to_have_text("success")
    expect(latest).to_contain_text(version)
    expect(page.locator("#config-version")).to_have_text(version)
    expect(page.locator("#config-json")).to_contain_text('"<img src=x onerror=alert(1)> echo"')
    expect(page.locator("#config-json img")).to_have_count(0)
