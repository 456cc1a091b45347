"""Framework-neutral request and response types, and the header rules of DESIGN.md §4.

Which request heads are refused (:func:`request_head_problem`, 400 ``bad_request``), in order:

- an HTTP/1.1 request without ``Host`` (RFC 9112 §3.2);
- a header name that is not an RFC 9110 token, or a value with a control character other than
  horizontal tab (CR, LF and NUL included);
- a second ``Host``, ``Authorization`` or ``Content-Length``: singletons the gateway reads or
  vouches for must appear once, so the value it checked is the value the upstream gets;
- a ``Host`` that is not ``host[:port]`` (RFC 3986 reg-name or bracketed IP literal; no quote,
  space, slash or ``@``), as nginx refuses it: the value is echoed to the upstream in
  ``X-Forwarded-Host`` and ``Forwarded``;
- a ``Content-Length`` that is not plain ASCII digits ``0-9`` (no sign, space or other digit);
- ``Content-Length`` together with ``Transfer-Encoding`` (request smuggling, RFC 9112 §6.1).

What the upstream sees of the client's headers (:func:`forwardable_headers`): hop-by-hop headers
(``Connection`` and every name it lists, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade``) are dropped, and so are the headers the gateway sets itself
(``Host``, ``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``, ``X-Request-ID``) and, unless
``server.underscores_in_headers`` is set, names containing ``_`` (some frameworks read ``_`` as
``-``, which would let ``X_Forwarded_For`` pass as ``X-Forwarded-For``; nginx drops them too).
Everything else, repeated headers such as ``Set-Cookie`` included, passes through in order.
Responses lose their hop-by-hop headers the same way (:func:`strip_hop_by_hop`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from kairos_core.websocket import UpstreamWebSocket

Headers = list[tuple[str, str]]
"""Ordered header pairs; names may repeat (two ``Set-Cookie``) and compare case-insensitively."""
HeaderPairs = Sequence[tuple[str, str]]
"""Header pairs as read, never changed."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

FORWARDED_HEADERS = frozenset(
    {
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
        "x-request-id",
    }
)
"""Client headers the gateway replaces with its own before the request transformation runs."""

SINGLETON_REQUEST_HEADERS = frozenset({"host", "authorization", "content-length"})
"""Request headers that must appear at most once."""

NON_IDEMPOTENT_METHODS = frozenset({"POST", "PATCH"})
"""Methods retried only when the request never left (DESIGN.md §5)."""

HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""A valid header name: an RFC 9110 token."""

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NAMES = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:\t[!#$%&'*+.^_`|~0-9A-Za-z-]+)*|")
"""Header names joined by tabs, every one a token (the empty string: no header at all)."""

_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(?::[0-9]*)?")
"""RFC 9112 §3.2 ``Host``: ``uri-host [":" port]``, empty allowed."""
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


def header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The value of ``name`` (case-insensitive), or None. Repeated lines are one list joined with
    ``", "`` (RFC 9110 §5.3), so a second ``X-Forwarded-For`` or ``Transfer-Encoding`` line is
    never overlooked; the singletons are refused when repeated (:func:`request_head_problem`)."""
    lower = name.lower()
    found = [value for key, value in headers if key.lower() == lower]
    return ", ".join(found) if found else None


def accepted_request_id(sent: str | None) -> str | None:
    """A client's ``X-Request-ID`` when it may become the request's id (1 to 128 letters,
    digits and ``._:-``), else None: markup, spaces or two values joined never echo back."""
    return sent if sent is not None and _SANE_REQUEST_ID.fullmatch(sent) else None


def strip_hop_by_hop(
    headers: Sequence[tuple[str, str]], also: frozenset[str] = frozenset()
) -> Headers:
    """Drop hop-by-hop headers, including those named by ``Connection`` (and ``also``)."""
    drop = HOP_BY_HOP | also if also else HOP_BY_HOP
    for key, value in headers:
        if key.lower() == "connection":
            drop = drop | {token.strip().lower() for token in value.split(",")}
    return [
        (k, v)
        for k, v in headers
        if (lower := k.lower()) not in drop and not lower.startswith("proxy-")
    ]


def request_head_problem(headers: Sequence[tuple[str, str]], http_version: str) -> str | None:
    """Why the request head must be refused with 400 (rules in the module docstring), or None."""
    seen: set[str] = set()
    names_ok = _NAMES.fullmatch("\t".join([name for name, _ in headers]))
    values_ok = not _CONTROL.search("\t".join([value for _, value in headers]))
    for name, value in headers:
        if not names_ok and not HEADER_NAME.fullmatch(name):
            return f"malformed header name {name!r}"
        if not values_ok and _CONTROL.search(value):
            return f"control character in header {name!r}"
        lower = name.lower()
        if lower in SINGLETON_REQUEST_HEADERS:
            if lower in seen:
                return f"header {name!r} appears more than once"
            seen.add(lower)
            if lower == "content-length" and not (value.isascii() and value.isdigit()):
                return f"Content-Length must be ASCII digits, got {value!r}"
            if lower == "host" and not _HOST.fullmatch(value):
                return f"malformed Host header {value!r}"
        elif lower == "transfer-encoding":
            seen.add(lower)
    if "content-length" in seen and "transfer-encoding" in seen:
        return "Content-Length together with Transfer-Encoding"
    if "host" not in seen and http_version == "1.1":
        return "HTTP/1.1 request without a Host header"
    return None


def forwardable_headers(
    headers: Sequence[tuple[str, str]], *, keep_underscores: bool = False
) -> Headers:
    """The client's headers the upstream may see, before the request transformation runs."""
    kept = strip_hop_by_hop(headers, FORWARDED_HEADERS)
    if keep_underscores:
        return kept
    return [(k, v) for k, v in kept if "_" not in k]


def without(headers: Sequence[tuple[str, str]], *names: str) -> Headers:
    drop = {n.lower() for n in names}
    return [(k, v) for k, v in headers if k.lower() not in drop]


def add_missing(headers: Headers, extra: Sequence[tuple[str, str]]) -> Headers:
    """Append each of ``extra`` whose name is not already present."""
    present = {k.lower() for k, _ in headers}
    return headers + [(k, v) for k, v in extra if k.lower() not in present]


@dataclass(slots=True)
class ProxyRequest:
    """A request as it arrived on the proxy listener, body not yet read."""

    method: str
    raw_path: str
    query: str
    headers: Headers
    peer_ip: str
    scheme: str = "http"
    body: AsyncIterator[bytes] | None = None
    http_version: str = "1.1"
    _by_name: dict[str, str] | None = field(default=None, repr=False)

    def header(self, name: str) -> str | None:
        """:func:`header` for a lower-case ``name``, from a map built on first use."""
        if self._by_name is None:
            by_name: dict[str, str] = {}
            for key, value in self.headers:
                lower = key.lower()
                if lower in by_name:
                    by_name[lower] += ", " + value
                else:
                    by_name[lower] = value
            self._by_name = by_name
        return self._by_name.get(name)


@dataclass(slots=True)
class ProxyResponse:
    """What to send back: status, headers, and the body as bytes or a chunk stream.

    ``on_close`` runs once after the body is sent or abandoned (it releases the upstream
    connection and finishes the request's bookkeeping). ``websocket`` is set for an accepted
    WebSocket route: the adapter completes the client handshake and relays frames to it. The
    adapter sets ``abandoned`` when the client went away before the whole body was sent: the
    request keeps the status it was answered with and is recorded as ``client_closed``.
    """

    status: int
    headers: Headers
    body: bytes | AsyncIterator[bytes] = b""
    websocket: UpstreamWebSocket | None = None
    on_close: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    abandoned: bool = False

    async def close(self) -> None:
        callback, self.on_close = self.on_close, None
        if callback is not None:
            await callback()
