"""Cross-site request protection: a state-changing POST needs the session's token and this host."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from kairos_client import KairosClient
from tests.ui.dashboard import Stack, open_page


@pytest.fixture
def session(stack: Stack) -> Iterator[httpx.Client]:
    """A client that loaded a page, so it holds the CSRF cookie like a browser would."""
    with httpx.Client(base_url=stack.ui.url, trust_env=False, timeout=10) as client:
        assert client.get("/backends").status_code == 200
        yield client


def breaker_state(stack: Stack) -> str:
    with KairosClient(stack.gateway.admin_url, token="") as admin:
        return {c.backend: c.state for c in admin.circuits()}[stack.upstream.url]


def test_a_post_needs_the_session_token_and_this_origin(
    stack: Stack, session: httpx.Client
) -> None:
    set_cookie = httpx.get(stack.ui.url, trust_env=False).headers["set-cookie"]
    assert set_cookie.startswith("kairos_csrf=")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    token = session.cookies["kairos_csrf"]
    open_breaker = {"backend": stack.upstream.url}

    refused = [
        session.post("/ui/circuits/open", data=open_breaker),
        session.post("/ui/circuits/open", data=open_breaker, headers={"X-CSRF-Token": "A" * 43}),
        session.post(
            "/ui/circuits/open",
            data={**open_breaker, "csrf_token": token},
            headers={"Origin": "https://evil.example"},
        ),
        session.post(
            "/ui/circuits/open",
            data=open_breaker,
            headers={"X-CSRF-Token": token, "Referer": "https://evil.example/page"},
        ),
    ]
    assert [response.status_code for response in refused] == [403, 403, 403, 403]
    assert breaker_state(stack) == "closed"

    accepted = session.post(
        "/ui/circuits/open",
        data={**open_breaker, "csrf_token": token},
        headers={"Origin": stack.ui.url},
    )
    assert accepted.status_code == 200
    assert breaker_state(stack) == "open"


def test_a_page_on_another_origin_cannot_drive_the_dashboard(stack: Stack, page: Page) -> None:
    open_page(page, stack.ui, "/backends")  # the victim holds a session
    attacker = page.context.new_page()
    attacker.set_content(
        f"""<form id="f" method="post" action="{stack.ui.url}/ui/circuits/open">
        <input name="backend" value="{stack.upstream.url}"></form>"""
    )

    with attacker.expect_navigation():
        attacker.evaluate("document.getElementById('f').submit()")

    assert "Forbidden" in attacker.content()
    assert breaker_state(stack) == "closed"
    expect(page.locator(f"tr[data-backend='{stack.upstream.url}'] [data-state]")).to_have_text(
        "closed"
    )


def test_a_rebound_host_name_is_refused_before_any_page_or_token(
    stack: Stack, session: httpx.Client
) -> None:
    port = httpx.URL(stack.ui.url).port
    rebound = {"Host": f"evil.example:{port}"}

    page = httpx.get(f"{stack.ui.url}/backends", headers=rebound, trust_env=False)
    token = session.cookies["kairos_csrf"]
    post = session.post(
        "/ui/circuits/open",
        data={"backend": stack.upstream.url, "csrf_token": token},
        headers={**rebound, "Origin": f"http://evil.example:{port}"},
    )

    assert page.status_code == 400
    assert "set-cookie" not in page.headers
    assert post.status_code == 400
    assert breaker_state(stack) == "closed"


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


def test_every_answer_carries_the_content_security_policy_and_frame_headers(
    stack: Stack,
) -> None:
    with httpx.Client(base_url=stack.ui.url, trust_env=False, timeout=10) as client:
        answers = {
            "page": client.get("/backends"),
            "fragment": client.get("/ui/health"),
            "script": client.get("/static/vendor/htmx.min.js"),
            "not found": client.get("/no/such/page"),
            "csrf refusal": client.post("/ui/circuits/open", data={"backend": stack.upstream.url}),
            "host refusal": client.get("/backends", headers={"Host": "evil.example"}),
        }
        with client.stream("GET", "/ui/events") as events:
            answers["event stream"] = events
    statuses = {kind: answer.status_code for kind, answer in answers.items()}
    assert statuses == {
        "page": 200,
        "fragment": 200,
        "script": 200,
        "not found": 404,
        "csrf refusal": 403,
        "host refusal": 400,
        "event stream": 200,
    }
    for kind, answer in answers.items():
        headers = answer.headers
        assert headers.get_list("content-security-policy") == [CONTENT_SECURITY_POLICY], kind
        assert headers.get_list("x-frame-options") == ["DENY"], kind
        assert headers.get_list("x-content-type-options") == ["nosniff"], kind
        assert headers.get_list("referrer-policy") == ["same-origin"], kind


def test_another_site_cannot_frame_the_dashboard_and_inline_script_never_runs(
    stack: Stack, page: Page
) -> None:
    attacker = page.context.new_page()
    attacker.set_content(f'<iframe src="{stack.ui.url}/backends"></iframe>')  # waits for load
    (framed,) = attacker.main_frame.child_frames
    assert not framed.url.startswith(stack.ui.url), framed.url  # Chromium shows its error page
    assert framed.locator("[data-backend]").count() == 0

    open_page(page, stack.ui, "/backends")  # htmx, a script of the dashboard's own, still runs
    page.evaluate(
        """() => { const script = document.createElement('script');
                   script.textContent = 'window.injected = true';
                   document.body.appendChild(script); }"""
    )
    assert page.evaluate("() => window.injected === undefined")
