"""The AI pages: decisions appear live with source, backend and outcome, the per-route comparison
follows the gateway's figures, the Routes table badges the selector's mode, and the route-test
form shows the prompt, the offline pick and the LLM's live answer.

No ``ai`` block in the config: the offline heuristic decides (``instant`` / ``thinking`` tags), so
no LLM is involved except in the last test, which asks the OpenAI-compatible stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from tests.support.gateway import Gateway
from tests.support.llm import LlmStandIn
from tests.support.procs import Upstream
from tests.ui.conftest import StartUi
from tests.ui.dashboard import UiServer, ai_config, chat_body, open_page

QUICK = "What's the capital of France? Quick answer."
DEEP = "Explain step by step why the proof by induction works, and compare approaches. " * 30
NO_KEYS = {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}


@dataclass
class AiStack:
    instant: Upstream
    thinking: Upstream
    gateway: Gateway
    ui: UiServer

    def ask(self, text: str) -> str:
        """Send a chat request through the gateway; the name of the upstream that served it."""
        with self.gateway.client() as client:
            response = client.post("/chat", json=chat_body(text))
        assert response.status_code == 200, response.text
        return str(response.json()["server"])


@pytest.fixture
def start_ai_stack(
    upstream_factory: Callable[[str], Upstream],
    gateway_factory: Callable[..., Gateway],
    ui_factory: StartUi,
) -> Callable[..., AiStack]:
    def start(*, llm: LlmStandIn | None = None, **policy: object) -> AiStack:
        """The stack; ``llm``: the route's content analysis asks this stand-in."""
        instant, thinking = upstream_factory("instant"), upstream_factory("thinking")
        config = ai_config(instant, thinking, **policy)
        if llm is not None:
            config["ai"] = {"provider": "openai", "model": "m", "base_url": f"{llm.url}/v1"}
        gateway = gateway_factory(config, env=NO_KEYS)
        ui = ui_factory(gateway)
        ui.wait_for_gateway("connected")
        return AiStack(instant, thinking, gateway, ui)

    return start


@pytest.fixture(scope="module")
def llm() -> Iterator[LlmStandIn]:
    stand_in = LlmStandIn().start()
    yield stand_in
    stand_in.stop()


def test_decisions_appear_live_with_source_backend_and_outcome(
    start_ai_stack: Callable[..., AiStack], page: Page
) -> None:
    stack = start_ai_stack()
    open_page(page, stack.ui, "/decisions")
    expect(page.locator("#decisions-body")).to_contain_text("No AI routing decisions yet")
    chat = page.locator("#ai-routes-body tr[data-route='chat']")
    expect(chat).to_contain_text("inline")
    expect(chat).to_contain_text("no decisions yet")
    page.evaluate("window.kairosTestMarker = 'same document'")

    assert stack.ask(QUICK) == "instant"

    rows = page.locator("#decisions-body tr[data-decision]")
    expect(rows).to_have_count(1)
    newest = rows.first
    expect(newest.locator("[data-field='source']")).to_have_text("heuristic")
    expect(newest.locator("[data-field='source'] .badge")).to_have_class(
        "badge source source-selector"
    )
    expect(newest.locator("[data-field='backend']")).to_have_text(f"{stack.instant.url} #0")
    expect(newest).to_contain_text("chat")
    expect(newest).to_contain_text("content_analysis · inline")
    expect(newest.locator(".reason")).to_contain_text("instant")
    expect(newest.locator("[data-field='outcome']")).to_contain_text("200")

    assert stack.ask(DEEP) == "thinking"

    expect(rows).to_have_count(2)
    expect(rows.first.locator("[data-field='backend']")).to_have_text(f"{stack.thinking.url} #1")
    expect(rows.first.locator(".reason")).to_contain_text("thinking")
    expect(rows.nth(1).locator("[data-field='backend']")).to_have_text(f"{stack.instant.url} #0")

    expect(chat.locator("[data-metric='decisions']")).to_have_text("2")
    expect(chat.locator("[data-metric='selector-requests']")).to_have_text("2")
    expect(chat.locator("[data-metric='selector-success']")).to_have_text("100%")
    expect(chat.locator("[data-metric='selector-p50']")).not_to_have_text("—")
    expect(chat.locator("[data-metric='fallback-requests']")).to_have_text("0")
    expect(page.locator("#ai-by-source")).to_have_text("heuristic: 2")
    assert page.evaluate("window.kairosTestMarker") == "same document"  # never reloaded


def test_the_routes_table_badges_the_mode_and_the_route_test_shows_the_prompt(
    start_ai_stack: Callable[..., AiStack], page: Page
) -> None:
    stack = start_ai_stack()
    open_page(page, stack.ui, "/routes")
    expect(page.locator("tr[data-route='chat'] .badge")).to_have_text(["AI inline"])

    form = page.locator("#route-test-form")
    form.locator("input[name='method']").fill("POST")
    form.locator("input[name='path']").fill("/chat")
    form.locator("textarea[name='body']").fill(f'{{"prompt": "{QUICK}"}}')
    form.locator("input[name='ai']").check()
    form.get_by_role("button", name="Test").click()

    pick = page.locator("#route-test-ai-pick")
    expect(pick).to_contain_text(f"backend #0 {stack.instant.url}")
    expect(pick).to_contain_text("heuristic")
    expect(pick).to_contain_text("instant")
    expect(page.locator("#route-test-prompt-system")).to_contain_text("You are the routing brain")
    user = page.locator("#route-test-prompt-user")
    expect(user).to_contain_text(QUICK)
    expect(user).to_contain_text("Candidates:")
    expect(user).to_contain_text("tags: [thinking]")
    expect(page.locator("#route-test-ai-live")).to_contain_text("no LLM asked")

    form.locator("input[name='ai']").uncheck()
    form.get_by_role("button", name="Test").click()
    expect(page.locator("#route-test-ai-pick")).to_contain_text("heuristic")
    expect(page.locator("#route-test-ai-prompt")).to_have_count(0)  # only asked for with AI


def test_shadow_decisions_show_agreement_and_the_route_test_asks_the_llm(
    start_ai_stack: Callable[..., AiStack], llm: LlmStandIn, page: Page
) -> None:
    llm.control(index=1, reason="the thinking tier")
    stack = start_ai_stack(mode="shadow", llm=llm)
    open_page(page, stack.ui, "/routes")
    expect(page.locator("tr[data-route='chat'] .badge")).to_have_text(["AI shadow"])

    form = page.locator("#route-test-form")
    form.locator("input[name='method']").fill("POST")
    form.locator("input[name='path']").fill("/chat")
    form.locator("input[name='ai']").check()
    form.get_by_role("button", name="Test").click()
    live = page.locator("#route-test-ai-live")
    expect(live).to_contain_text(f"backend #1 {stack.thinking.url}")
    expect(live).to_contain_text("the thinking tier")
    expect(live).to_contain_text(" ms")

    open_page(page, stack.ui, "/decisions")
    assert [stack.ask(f"question {i}") for i in range(2)] == ["instant", "thinking"]

    rows = page.locator("#decisions-body tr[data-decision]")
    expect(rows).to_have_count(2)
    expect(rows.first.locator("[data-field='outcome']")).to_contain_text(
        f"balancer sent it to {stack.thinking.url} agrees"
    )
    expect(rows.nth(1).locator("[data-field='outcome']")).to_contain_text(
        f"balancer sent it to {stack.instant.url} disagrees"
    )
    expect(rows.first.locator("[data-field='source']")).to_have_text("llm")
    chat = page.locator("#ai-routes-body tr[data-route='chat']")
    expect(chat.locator("[data-metric='shadow-decisions']")).to_have_text("2")
    expect(chat.locator("[data-metric='shadow-agreement']")).to_have_text("50%")
    expect(page.locator("#ai-shadow-agreement")).to_have_text("50%")
