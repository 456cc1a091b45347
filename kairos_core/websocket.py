"""WebSocket relay: frames copied both ways between the client and the upstream.

Rules: the upstream connection is opened first (with the route's internal path and params), so a
backend that cannot be reached gets a clear HTTP 502 instead of an accepted-then-dropped socket.
Text stays text and binary stays binary. A close from either side is passed to the other with its
code and reason, and the relay ends. Ping/pong is answered hop by hop (the client's pings by the
gateway, the upstream's by the gateway), which keeps both connections alive without forwarding
control frames. Cancellation (client gone, shutdown) closes both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal, Protocol

WsKind = Literal["text", "binary", "close"]


@dataclass(frozen=True, slots=True)
class WsMessage:
    """One data frame, or the close of the connection (``code`` and ``reason``)."""

    kind: WsKind
    data: str | bytes
    code: int = 1000
    reason: str = ""


class WebSocketPeer(Protocol):
    """One side of the relay: receive a message (``close`` once it ends), send, close."""

    async def receive(self) -> WsMessage: ...

    async def send(self, message: WsMessage) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class UpstreamWebSocket(WebSocketPeer, Protocol):
    protocol: str | None


WS_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest WebSocket message relayed, from the client and from the backend alike."""
_RESERVED_CLOSE_CODES = frozenset({1005, 1006, 1015})


async def relay(client: WebSocketPeer, upstream: WebSocketPeer) -> None:
    """Copy frames both ways until one side closes; then close the other with the same code."""

    async def pump(source: WebSocketPeer, sink: WebSocketPeer) -> WsMessage:
        while True:
            message = await source.receive()
            if message.kind == "close":
                return message
            await sink.send(message)

    to_upstream = asyncio.create_task(pump(client, upstream))
    to_client = asyncio.create_task(pump(upstream, client))
    try:
        done, _ = await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_upstream, to_client):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(to_upstream, to_client, return_exceptions=True)
    finished = done.pop()
    other = upstream if finished is to_upstream else client
    code, reason = 1000, ""
    if not finished.cancelled() and finished.exception() is None:
        closing = finished.result()
        code, reason = closing.code, closing.reason
    if code in _RESERVED_CLOSE_CODES:
        code = 1000
    with contextlib.suppress(Exception):
        await other.close(code, reason)
