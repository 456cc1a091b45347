"""An in-memory upstream behind the ``UpstreamClient`` interface (httpx's ``MockTransport``
pattern): every line of the pipeline above the transport runs, no socket is opened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from kairos_core.upstream import ErrorKind, UpstreamError, UpstreamRequest
from kairos_core.websocket import UpstreamWebSocket


@dataclass
class Reply:
    """What a backend answers: a response, or an ``UpstreamError`` of ``error`` kind; with
    ``cut``, the body fails with a ``reset`` after its first byte."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"ok"
    error: ErrorKind | None = None
    sent: bool = True
    delay_s: float = 0.0
    cut: bool = False


@dataclass
class Call:
    """One request the upstream received, body read in full."""

    method: str
    origin: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class MemoryResponse:
    def __init__(self, reply: Reply) -> None:
        self.status = reply.status
        self.headers = [*reply.headers, ("Content-Length", str(len(reply.body)))]
        self._body = reply.body
        self._cut = reply.cut
        self.closed = False

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self._cut:
            yield self._body[:1]
            raise UpstreamError("reset", "scripted reset mid-body", sent=True)
        if self._body:
            yield self._body

    async def read(self) -> bytes:
        if self._cut:
            raise UpstreamError("reset", "scripted reset mid-body", sent=True)
        return self._body

    async def close(self) -> None:
        self.closed = True


Script = Callable[[Call], Reply]


class MemoryUpstream:
    """Answers every request with ``script(call)``; records every call."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda call: Reply())
        self.calls: list[Call] = []

    async def send(self, request: UpstreamRequest) -> MemoryResponse:
        body = await _read(request.body)
        call = Call(request.method, request.origin, request.target, list(request.headers), body)
        self.calls.append(call)
        reply = self.script(call)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.error is not None:
            raise UpstreamError(reply.error, f"scripted {reply.error}", sent=reply.sent)
        return MemoryResponse(reply)

    async def connect_websocket(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        protocols: Sequence[str],
        timeout_s: float,
    ) -> UpstreamWebSocket:
        raise UpstreamError("connect", "the memory upstream has no WebSocket", sent=False)

    async def close(self) -> None:
        return None

    def origins(self) -> list[str]:
        return [call.origin for call in self.calls]


async def _read(body: bytes | AsyncIterable[bytes] | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    return b"".join([chunk async for chunk in body])
