"""Framework-neutral request and response types, and the header rules of DESIGN.md §4.

Hop-by-hop headers (``Connection`` and every name it lists, ``Keep-Alive``, ``Proxy-*``, ``TE``,
``Trailer``, ``Transfer-Encoding``, ``Upgrade``) are dropped in both directions; everything else,
repeated headers such as ``Set-Cookie`` included, passes through in order.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from kairos_core.websocket import UpstreamWebSocket

Headers = list[tuple[str, str]]

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

FORWARDED_HEADERS = (
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
)
"""Client headers the gateway replaces with its own before the request transformation runs."""

NON_IDEMPOTENT_METHODS = frozenset({"POST", "PATCH"})
"""Methods retried only when the request never left (DESIGN.md §5)."""

HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""A valid header name: an RFC 9110 token."""

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


def header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """First value of ``name`` (case-insensitive), or None."""
    lower = name.lower()
    for key, value in headers:
        if key.lower() == lower:
            return value
    return None


def strip_hop_by_hop(headers: Sequence[tuple[str, str]]) -> Headers:
    """Drop hop-by-hop headers, including those named by ``Connection``."""
    named = {
        token.strip().lower()
        for key, value in headers
        if key.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (k, v)
        for k, v in headers
        if (lower := k.lower()) not in HOP_BY_HOP
        and lower not in named
        and not lower.startswith("proxy-")
    ]


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
        """First value of the header ``name`` (lower-case), from a map built on first use."""
        if self._by_name is None:
            by_name: dict[str, str] = {}
            for key, value in self.headers:
                by_name.setdefault(key.lower(), value)
            self._by_name = by_name
        return self._by_name.get(name)


@dataclass(slots=True)
class ProxyResponse:
    """What to send back: status, headers, and the body as bytes or a chunk stream.

    ``on_close`` runs once after the body is sent or abandoned (it releases the upstream
    connection and finishes the request's bookkeeping). ``websocket`` is set for an accepted
    WebSocket route: the adapter completes the client handshake and relays frames to it.
    """

    status: int
    headers: Headers
    body: bytes | AsyncIterator[bytes] = b""
    websocket: UpstreamWebSocket | None = None
    on_close: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    async def close(self) -> None:
        callback, self.on_close = self.on_close, None
        if callback is not None:
            await callback()
