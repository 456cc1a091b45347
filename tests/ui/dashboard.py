"""Helpers for the dashboard tests: a ``kairos-ui`` process, the sample stack, page loading."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Locator, Page

from tests.support.gateway import REPO_ROOT, Gateway, backend, route
from tests.support.procs import (
    ManagedProcess,
    ProcessExitedError,
    Upstream,
    free_port,
    wait_for_port,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Enough for a gateway snapshot (1 s), the UI's coalescing (0.2 s) and a slow machine.
LIVE_TIMEOUT_MS = 10_000
JWT_SECRET = "ui-test-secret-4f9c2a7be1d03658a9f4c2e7b1d0a3f6"


@dataclass
class UiServer:
    """A running ``kairos-ui`` process."""

    url: str
    process: ManagedProcess

    @classmethod
    def start(cls, gateway: Gateway, *, token: str | None = None) -> UiServer:
        port = free_port()
        args = [sys.executable, "-m", "kairos_ui", "--gateway", gateway.admin_url]
        if token is not None:
            args += ["--token", token]
        process = ManagedProcess(
            [*args, "--port", str(port)],
            name="kairos-ui",
            cwd=REPO_ROOT,
            env={"KAIROS_ADMIN_TOKEN": "", "KAIROS_ADMIN_URL": ""},
        ).start()
        try:
            wait_for_port("127.0.0.1", port, 15, process=process)
        except (TimeoutError, ProcessExitedError) as exc:
            process.stop()
            raise RuntimeError(f"kairos-ui did not start:\n{process.log_text()}") from exc
        return cls(f"http://127.0.0.1:{port}", process)

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/ui/health", trust_env=False).json()
        return body

    def wait_for_gateway(self, state: str = "connected", timeout_s: float = 10) -> None:
        """Until the UI's link to the gateway is ``state`` (``connected``, ``unauthorised``...)."""
        deadline = time.monotonic() + timeout_s
        while self.health()["gateway"] != state:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the UI never saw the gateway {state}:\n{self.log()}")
            time.sleep(0.05)

    def wait_for_browsers(self, count: int, timeout_s: float = 5) -> None:
        """Until exactly ``count`` browser event streams are open."""
        deadline = time.monotonic() + timeout_s
        while (current := self.health()["browsers"]) != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{current} browser streams open, not {count}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.process.log_text()

    def stop(self) -> None:
        self.process.stop()


@dataclass
class Stack:
    """An upstream, a gateway in front of it (``sample_config``) and a dashboard for it."""

    upstream: Upstream
    gateway: Gateway
    ui: UiServer


def sample_config(upstream: Upstream) -> dict[str, Any]:
    """Three routes carrying every badge but AI, and a JWT secret the dashboard must not show."""
    return {
        "jwt": {"secret": JWT_SECRET},
        "routers": [
            route("/echo", "/", [upstream.url], name="echo"),
            route(
                "/api/users/{id}",
                "/users/{id}",
                [upstream.url],
                name="users",
                auth_required=True,
                retry={"max_retries": 2},
            ),
            route(
                "/limited",
                "/",
                [upstream.url],
                name="limited",
                rate_limit={
                    "strategy": "PerIP",
                    "requests_per_window": 1000,
                    "window_duration": 60,
                },
            ),
        ],
    }


def resolved_config(upstream: Upstream, fallback: Upstream) -> dict[str, Any]:
    """Routes whose facts only the gateway resolves right: ``legacy`` (the kairos-rs ``host`` +
    ``port`` form) and ``slashed`` (a backend host with a trailing slash, and a fallback) both send
    to ``upstream``'s key and inherit the global rate limit; ``own-limit`` has its own."""
    scheme_host = upstream.url.rsplit(":", 1)[0]
    return {
        "rate_limit": {"strategy": "PerIP", "requests_per_window": 500, "window_duration": 60},
        "routers": [
            {
                "name": "legacy",
                "host": f"{scheme_host}/",
                "port": upstream.port,
                "external_path": "/legacy",
                "internal_path": "/",
                "methods": ["GET"],
            },
            {
                "name": "slashed",
                "backends": [backend(upstream.url) | {"host": f"{scheme_host}/"}],
                "fallback": [backend(fallback.url)],
                "external_path": "/slashed",
                "internal_path": "/",
                "methods": ["GET"],
            },
            route(
                "/own",
                "/",
                [fallback.url],
                name="own-limit",
                rate_limit={"strategy": "PerIP", "requests_per_window": 5, "window_duration": 1},
            ),
        ],
    }


def ai_config(instant: Upstream, thinking: Upstream, **policy: Any) -> dict[str, Any]:
    """One AI route, ``chat`` (``POST /chat``), over an ``instant`` and a ``thinking`` tier.

    With no top-level ``ai`` block the offline heuristic decides: short questions go to the
    instant tier, long reasoning-heavy ones to the thinking tier, and no LLM is needed.
    """
    return {
        "routers": [
            {
                "name": "chat",
                "external_path": "/chat",
                "internal_path": "/v1/chat",
                "methods": ["POST"],
                "backends": [
                    backend(instant.url, tags=["instant"], description="small fast model"),
                    backend(thinking.url, tags=["thinking"], description="large reasoning model"),
                ],
                "ai_policy": {
                    "strategy": {"content_analysis": {"model": "stand-in-1"}},
                    "timeout_ms": 2000,
                    **policy,
                },
            }
        ]
    }


def chat_body(text: str) -> dict[str, Any]:
    return {"model": "any", "messages": [{"role": "user", "content": text}]}


def restart(gateway: Gateway) -> None:
    """Start a stopped ``gateway`` again on the same config file, hence on the same ports."""
    gateway.process = ManagedProcess(
        gateway.process.args, name="kairos-gateway", cwd=REPO_ROOT, env=gateway.process.env
    )
    gateway.start()


def set_methods(form: Locator, methods: list[str]) -> None:
    """Ask the route form for exactly ``methods``: its checkboxes when the served config schema
    enumerates methods, else its text field."""
    boxes = form.locator("input[type='checkbox'][name='methods']")
    if not boxes.count():
        form.locator("input[name='methods']").fill(" ".join(methods))
        return
    for box in boxes.all():
        box.set_checked(box.get_attribute("value") in methods)


def open_page(page: Page, ui: UiServer, path: str = "/") -> Page:
    """Load a dashboard page and wait until its one SSE stream is open."""
    page.goto(f"{ui.url}{path}")
    wait_for_stream(page)
    return page


def wait_for_stream(page: Page) -> None:
    """Until the page's ``EventSource`` (opened by htmx's SSE extension on body) is open."""
    page.wait_for_function(
        "() => document.body['htmx-internal-data']?.sseEventSource?.readyState === 1"
    )
