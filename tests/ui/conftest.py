"""Dashboard fixtures: ``kairos-ui`` processes and headless Chromium driven by Playwright.

The browser is the Debian ``/usr/bin/chromium``, launched once per module and never downloaded;
each test gets a fresh context, so cookies (the CSRF token) never leak from one test to the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.support.gateway import Gateway
from tests.support.procs import Upstream
from tests.ui.dashboard import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LIVE_TIMEOUT_MS,
    Stack,
    UiServer,
    sample_config,
)

expect.set_options(timeout=LIVE_TIMEOUT_MS)
NO_CHROMIUM = (
    f"the dashboard tests drive the Debian Chromium at {CHROMIUM}, which is not installed "
    "(apt-get install chromium); no browser is ever downloaded"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason=NO_CHROMIUM))


StartUi = Callable[..., UiServer]


@pytest.fixture
def ui_factory() -> Iterator[StartUi]:
    started: list[UiServer] = []

    def start(gateway: Gateway, *, token: str | None = None) -> UiServer:
        ui = UiServer.start(gateway, token=token)
        started.append(ui)
        return ui

    yield start
    for ui in started:
        ui.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Per module, not per session: a live sync Playwright owns the thread's event loop, which
    # would keep pytest-asyncio from running the async tests of the other modules.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(LIVE_TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def stack(
    upstream_factory: Callable[[str], Upstream],
    gateway_factory: Callable[..., Gateway],
    ui_factory: StartUi,
) -> Stack:
    upstream = upstream_factory("a")
    gateway = gateway_factory(sample_config(upstream))
    ui = ui_factory(gateway)
    ui.wait_for_gateway("connected")
    return Stack(upstream, gateway, ui)
