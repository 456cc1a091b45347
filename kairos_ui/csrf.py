"""Cross-site request protection for every state-changing request to the dashboard.

Rule: each browser gets a random token (32 bytes, URL-safe) in the ``kairos_csrf`` cookie
(``HttpOnly``, ``SameSite=Strict``, path ``/``), set on its first answer; pages read it from
``request.state.csrf_token`` and echo it (htmx sends it as ``X-CSRF-Token`` on every request it
makes, forms also carry it as the ``csrf_token`` field). A request with any method other than GET,
HEAD or OPTIONS is answered 403, before the app sees it, when

- its ``Origin`` (or, without one, its ``Referer``) names another host than its ``Host``, or
- it has no ``kairos_csrf`` cookie, or neither the header nor the form field equals the cookie
  (compared in constant time).

To read the form field the body is buffered (at most ``max_body_bytes``, 413 beyond) and replayed
to the app unchanged. A cookie that is not a token this middleware could have made is replaced.
"""

from __future__ import annotations

import hmac
import re
import secrets
from html import escape
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE_NAME = "kairos_csrf"
HEADER_NAME = "x-csrf-token"
FIELD_NAME = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


def new_token() -> str:
    return secrets.token_urlsafe(32)


class CSRFMiddleware:
    """ASGI middleware enforcing the rule of the module docstring."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cookie = _cookie_token(headers)
        token = cookie or new_token()
        scope.setdefault("state", {})["csrf_token"] = token
        send = send if cookie else _setting_cookie(send, token)

        if scope["method"] not in SAFE_METHODS:
            refusal = _foreign_origin(headers)
            body = b""
            if refusal is None:
                body, too_large = await _read_body(receive, self.max_body_bytes)
                if too_large:
                    response = PlainTextResponse("Request body too large", status_code=413)
                    await response(scope, receive, send)
                    return
                if cookie is None or not _echoed(cookie, headers, body):
                    refusal = "missing or wrong CSRF token; reload the page and try again"
            if refusal is not None:
                # Escaped: htmx swaps error answers into the page, and this one quotes headers.
                response = PlainTextResponse(f"Forbidden: {escape(refusal)}", status_code=403)
                await response(scope, receive, send)
                return
            receive = _replaying(body, receive)
        await self.app(scope, receive, send)


def _cookie_token(headers: Headers) -> str | None:
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(headers.get("cookie", ""))
    except CookieError:  # a malformed Cookie header: issue a new token
        return None
    morsel = cookies.get(COOKIE_NAME)
    if morsel is None or not _TOKEN_SHAPE.fullmatch(morsel.value):
        return None
    return morsel.value


def _setting_cookie(send: Send, token: str) -> Send:
    async def send_with_cookie(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers.append(
                "set-cookie", f"{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict"
            )
        await send(message)

    return send_with_cookie


def _foreign_origin(headers: Headers) -> str | None:
    """Why the request comes from another site, or None when it does not."""
    host = headers.get("host", "").lower()
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value is None:
            continue
        if value == "null":
            return f"{name} is null"
        if urlsplit(value).netloc.lower() != host:
            return f"{name} {value!r} is not this dashboard ({host})"
        return None
    return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


def _echoed(cookie: str, headers: Headers, body: bytes) -> bool:
    sent = headers.get(HEADER_NAME)
    if sent is None and headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get(FIELD_NAME)
        sent = values[0] if values else None
    return sent is not None and hmac.compare_digest(sent.encode(), cookie.encode())


def _replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
