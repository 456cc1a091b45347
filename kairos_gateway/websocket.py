"""Sanic's server-side WebSocket as a :class:`~kairos_core.websocket.WebSocketPeer`."""

from __future__ import annotations

import asyncio
from typing import Any

from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.exceptions import ConnectionClosed

from kairos_core.websocket import WsMessage


class SanicPeer:
    """Adapts Sanic's websocket (``recv``/``send``/``close``) to the relay's interface."""

    def __init__(self, ws: WebsocketImplProtocol) -> None:
        self._ws = ws

    async def receive(self) -> WsMessage:
        try:
            data: Any = await self._ws.recv()
        except ConnectionClosed:
            return self._closed()
        except asyncio.CancelledError:
            if self._ws.ws_proto.close_rcvd is not None or self._ws.ws_proto.state.name in (
                "CLOSING",
                "CLOSED",
            ):
                return self._closed()
            raise
        if data is None:
            return self._closed()
        return WsMessage("binary" if isinstance(data, bytes) else "text", data)

    async def send(self, message: WsMessage) -> None:
        await self._ws.send(message.data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)

    def _closed(self) -> WsMessage:
        received = self._ws.ws_proto.close_rcvd
        if received is None:
            return WsMessage("close", "", code=1000)
        return WsMessage("close", "", code=received.code, reason=received.reason)
