"""The client side of a relayed WebSocket: websockets' sans-I/O protocol on the proxy connection.

Once the proxy listener has answered ``101 Switching Protocols``, every byte the client sends is
fed to :class:`ClientWebSocket`, which turns frames into :class:`~kairos_core.websocket.WsMessage`
values for :func:`kairos_core.websocket.relay` and writes the relay's messages back as frames.

Rules:

- Fragmented messages are reassembled; text must be valid UTF-8 (else the client is closed with
  1007). Messages over ``WS_MAX_MESSAGE_BYTES`` close the client with 1009.
- The client's pings are answered here and never forwarded; its close frame is echoed with the
  same code and reason, the TCP connection is then closed, and ``receive`` reports the close.
- ``close`` sends a close frame and waits up to ``CLOSE_TIMEOUT_S`` for the client's echo before
  closing the TCP connection. ``going_away`` (shutdown) sends 1001 and lets the relay finish.
- Backpressure: reading from the client pauses while more than ``BUFFER_BYTES`` of received
  messages wait for the relay, and every send waits while the client's socket is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Protocol

from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import OPEN, State
from websockets.server import ServerProtocol
from websockets.typing import BytesLike

from kairos_core.websocket import WS_MAX_MESSAGE_BYTES, WsMessage

BUFFER_BYTES = 1024 * 1024
CLOSE_TIMEOUT_S = 2.0

# websockets logs every open and close at INFO; the access log already says it
_quiet = logging.getLogger("kairos.gateway.websocket")
_quiet.setLevel(logging.WARNING)


class WebSocketConnection(Protocol):
    """What the peer needs from the connection it runs on."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def frame_protocol() -> ServerProtocol:
    """A sans-I/O WebSocket server protocol past its handshake (state OPEN)."""
    return ServerProtocol(state=OPEN, max_size=WS_MAX_MESSAGE_BYTES, logger=_quiet)


class ClientWebSocket:
    """Implements :class:`~kairos_core.websocket.WebSocketPeer` for the client of a relay."""

    def __init__(self, connection: WebSocketConnection, protocol: ServerProtocol) -> None:
        self._connection = connection
        self._ws = protocol
        self._messages: deque[WsMessage] = deque()
        self._buffered = 0
        self._paused = False
        self._fragments: list[BytesLike] = []
        self._fragment_kind: Opcode | None = None
        self._ended = False
        self._changed: asyncio.Future[None] | None = None

    # --- fed by the connection ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._ended:
            return
        self._ws.receive_data(data)
        self._after_receive()

    def feed_eof(self) -> None:
        if self._ended:
            return
        self._ws.receive_eof()
        self._after_receive()

    def connection_lost(self) -> None:
        self._ended = True
        self._wake()

    def going_away(self) -> None:
        """The gateway is shutting down: tell the client (1001); the relay then ends."""
        if self._ws.state is OPEN:
            self._ws.send_close(CloseCode.GOING_AWAY, "gateway shutting down")
            self._flush()

    # --- WebSocketPeer -----------------------------------------------------------------------

    async def receive(self) -> WsMessage:
        while not self._messages:
            if self._ended or self._ws.state is State.CLOSED:
                return self._close_message()
            await self._wait()
        message = self._messages.popleft()
        self._buffered -= len(message.data)
        if self._paused and self._buffered <= BUFFER_BYTES // 2:
            self._paused = False
            self._connection.resume_reading()
        return message

    async def send(self, message: WsMessage) -> None:
        if self._ws.state is not OPEN or self._ended:
            return
        data = message.data
        if isinstance(data, str):
            self._ws.send_text(data.encode())
        else:
            self._ws.send_binary(data)
        self._flush()
        await self._connection.drain()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._ws.state is OPEN and not self._ended:
            try:
                self._ws.send_close(code, reason)
            except Exception:  # a code the protocol refuses to send
                self._ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                while not self._ended and self._ws.state is not State.CLOSED:
                    await self._wait()
        self._connection.close()

    # --- internals ---------------------------------------------------------------------------

    def _after_receive(self) -> None:
        self._flush()
        for event in self._ws.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
        if self._ws.state is State.CLOSED:
            self._ended = True
        if not self._paused and self._buffered > BUFFER_BYTES:
            self._paused = True
            self._connection.pause_reading()
        self._wake()

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._fragment_kind = opcode
            self._fragments = [frame.data]
        elif opcode is Opcode.CONT:
            self._fragments.append(frame.data)
        else:
            return  # ping (answered by the protocol), pong, close (seen through the state)
        if frame.fin and self._fragment_kind is not None:
            data = b"".join(self._fragments)
            kind, self._fragment_kind, self._fragments = self._fragment_kind, None, []
            if kind is Opcode.BINARY:
                self._push(WsMessage("binary", data))
                return
            try:
                self._push(WsMessage("text", data.decode()))
            except UnicodeDecodeError:
                self._ws.fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                self._flush()

    def _push(self, message: WsMessage) -> None:
        self._messages.append(message)
        self._buffered += len(message.data)

    def _flush(self) -> None:
        for data in self._ws.data_to_send():
            if data:
                self._connection.write(data)
            else:  # the protocol's signal that the closing handshake is over
                self._ended = True
                self._connection.close()

    def _close_message(self) -> WsMessage:
        received: Close | None = self._ws.close_rcvd
        if received is None:
            return WsMessage("close", "", code=CloseCode.ABNORMAL_CLOSURE)
        return WsMessage("close", "", code=received.code, reason=received.reason)

    async def _wait(self) -> None:
        self._changed = asyncio.get_running_loop().create_future()
        try:
            await self._changed
        finally:
            self._changed = None

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
