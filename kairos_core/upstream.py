"""The upstream client: send a request to a backend, get status, headers and a streaming body.

The pipeline only sees :class:`UpstreamClient`, :class:`UpstreamResponse` and
:class:`UpstreamError`; aiohttp stays inside :class:`AiohttpUpstream`, so a faster client can
replace it without touching anything above.

Rules of :class:`AiohttpUpstream`:

- one pooled ``ClientSession`` per worker: keep-alive connections are reused, no cookie jar, no
  automatic decompression (bytes pass through untouched), no redirects followed, no default
  ``User-Agent`` / ``Accept-Encoding`` added;
- the URL is sent exactly as given (already percent-encoded by the router); a response head
  larger than the request's ``max_head_bytes`` is ``invalid`` (aiohttp bounds each line while
  parsing; the whole head is measured once parsed, and the connection is dropped);
- ``connect_timeout_s`` bounds the TCP (and TLS) connect; ``read_timeout_s`` bounds the wait for
  the response head and every later gap between body chunks (so a long SSE stream lives as long
  as it keeps talking);
- failures become :class:`UpstreamError` with a ``kind``: ``connect`` (nothing was sent, always
  safe to retry), ``timeout``, ``reset`` (connection dropped) or ``invalid`` (not HTTP);
- a response must be closed (``close()``) once its body is consumed or abandoned; closing an
  unfinished body drops that connection instead of returning it to the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Literal, NamedTuple, Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from kairos_core.http import HeaderPairs
from kairos_core.websocket import WS_MAX_MESSAGE_BYTES, UpstreamWebSocket, WsMessage

ErrorKind = Literal["connect", "timeout", "reset", "invalid"]
CHUNK_BYTES = 64 * 1024


class UpstreamError(Exception):
    """The backend could not be reached or did not answer properly."""

    def __init__(self, kind: ErrorKind, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.sent = sent


MAX_HEAD_BYTES = 60 * 1024


class UpstreamRequest(NamedTuple):
    """What to send: method, where (``origin`` ``scheme://host:port`` and the encoded request
    ``target`` ``/path?query``, kept apart so no URL is built and parsed again), headers, the
    body (bytes or a stream), the timeouts, and the largest response head accepted. (One per
    attempt: a named tuple, immutable and built in a third of a frozen dataclass's time.)"""

    method: str
    origin: str
    target: str
    headers: HeaderPairs
    body: bytes | AsyncIterable[bytes] | None
    connect_timeout_s: float
    read_timeout_s: float
    max_head_bytes: int = MAX_HEAD_BYTES

    @property
    def url(self) -> str:
        return self.origin + self.target

    @classmethod
    def for_url(
        cls,
        method: str,
        url: str,
        headers: HeaderPairs,
        body: bytes | AsyncIterable[bytes] | None,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> UpstreamRequest:
        """A request to a whole URL (``scheme://host:port/path?query``)."""
        scheme, _, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        origin = f"{scheme}://{authority}"
        return cls(method, origin, slash + path or "/", headers, body, connect_timeout_s,
                   read_timeout_s)  # fmt: skip


class UpstreamResponse(Protocol):
    """A response whose head has arrived; the body is read with :meth:`iter_chunks`, or whole
    with :meth:`read` (for bodies known to be small)."""

    status: int
    headers: list[tuple[str, str]]

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    async def close(self) -> None: ...


class UpstreamClient(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def connect_websocket(
        self, url: str, headers: HeaderPairs, protocols: Sequence[str], connect_timeout_s: float
    ) -> UpstreamWebSocket: ...

    async def close(self) -> None: ...


class _AiohttpWebSocket:
    """:class:`~kairos_core.websocket.UpstreamWebSocket` over aiohttp (pings answered here)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.protocol = ws.protocol

    async def receive(self) -> WsMessage:
        message = await self._ws.receive()
        if message.type is aiohttp.WSMsgType.TEXT:
            return WsMessage("text", message.data)
        if message.type is aiohttp.WSMsgType.BINARY:
            return WsMessage("binary", message.data)
        code = self._ws.close_code or 1000
        reason = message.extra if isinstance(message.extra, str) else ""
        return WsMessage("close", "", code=code, reason=reason)

    async def send(self, message: WsMessage) -> None:
        if isinstance(message.data, bytes):
            await self._ws.send_bytes(message.data)
        else:
            await self._ws.send_str(message.data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code=code, message=reason.encode())


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError("timeout", "upstream stopped sending the body", sent=True) from exc
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamError("reset", f"upstream body broken: {exc}", sent=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("reset", f"upstream connection lost: {exc}", sent=True) from exc

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    async def close(self) -> None:
        if not self._response.content.at_eof():
            self._response.close()  # unfinished body: drop the connection, never reuse it
        else:
            self._response.release()


class AiohttpUpstream:
    """:class:`UpstreamClient` on one pooled aiohttp ``ClientSession``."""

    def __init__(self, *, max_connections: int = 0) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ttl_dns_cache=30, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                max_line_size=MAX_HEAD_BYTES,
                max_field_size=MAX_HEAD_BYTES,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
            )
            # aiohttp silently sends idempotent requests again when a pooled connection drops;
            # only the route's retry policy may retry (README: the client never resends)
            self._session._retry_connection = False
        return self._session

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=request.connect_timeout_s,
            sock_connect=request.connect_timeout_s,
            sock_read=request.read_timeout_s,
        )
        try:
            response = await session.request(
                request.method,
                URL(request.url, encoded=True),
                headers=CIMultiDict(request.headers),
                data=request.body,
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                compress=None,
            )
        except (aiohttp.ClientConnectorError, aiohttp.ClientProxyConnectionError) as exc:
            raise UpstreamError(
                "connect", f"cannot connect to upstream: {exc}", sent=False
            ) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamError("connect", "upstream connect timed out", sent=False) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError("timeout", "upstream did not answer in time", sent=True) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise UpstreamError("reset", "upstream closed the connection", sent=True) from exc
        except aiohttp.ClientResponseError as exc:
            raise UpstreamError("invalid", f"invalid upstream response: {exc}", sent=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("reset", f"upstream connection failed: {exc}", sent=True) from exc
        head_bytes = sum(len(k) + len(v) + 4 for k, v in response.raw_headers)
        if head_bytes > request.max_head_bytes:
            response.close()
            message = f"upstream response head over {request.max_head_bytes} bytes"
            raise UpstreamError("invalid", message, sent=True)
        return _AiohttpResponse(response)

    async def connect_websocket(
        self, url: str, headers: HeaderPairs, protocols: Sequence[str], connect_timeout_s: float
    ) -> UpstreamWebSocket:
        session = self._get_session()
        timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)
        try:
            async with asyncio.timeout(connect_timeout_s):
                ws = await session.ws_connect(
                    URL(url, encoded=True),
                    headers=CIMultiDict(headers),
                    protocols=tuple(protocols),
                    autoping=True,
                    heartbeat=30.0,
                    timeout=timeout,
                    max_msg_size=WS_MAX_MESSAGE_BYTES + 1,  # aiohttp refuses this size itself
                )
        except aiohttp.WSServerHandshakeError as exc:
            message = f"upstream refused the WebSocket upgrade ({exc.status})"
            raise UpstreamError("invalid", message, sent=True) from exc
        except (aiohttp.ClientConnectorError, TimeoutError) as exc:
            message = f"cannot connect to upstream WebSocket: {exc or 'timed out'}"
            raise UpstreamError("connect", message, sent=False) from exc
        except aiohttp.ClientError as exc:
            message = f"upstream WebSocket failed: {exc}"
            raise UpstreamError("reset", message, sent=True) from exc
        return _AiohttpWebSocket(ws)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)  # let the connector close its transports
