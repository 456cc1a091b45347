"""A keep-alive HTTP/1.1 upstream client on asyncio protocols and httptools' parser.

It implements :class:`~kairos_core.upstream.UpstreamClient` for plain requests (WebSocket
upgrades are delegated to the aiohttp client) and exists for speed: the pass-through path does
one write per request and parses the answer in C, without aiohttp's per-request machinery.

Rules (the same contract as :class:`~kairos_core.upstream.AiohttpUpstream`):

- one pool of idle keep-alive connections per origin, used last-in first-out; a connection goes
  back to the pool only after its response was read to the end and both sides agreed to keep it
  alive; idle connections older than ``IDLE_TIMEOUT_S`` (4 s, below the usual 5 s server
  keep-alive) are closed from the old end at every take and return (the oldest is checked, no
  scan) and by a sweep every ``IDLE_TIMEOUT_S`` while any connection is idle (so a pool that
  traffic has left does not hold sockets), and at most ``MAX_IDLE_PER_ORIGIN`` (256) stay open
  per origin;
- the request target is sent exactly as given (already percent-encoded); ``Host`` is the
  backend's unless the caller set one; a bytes body gets ``Content-Length``, a stream is sent
  with the caller's ``Content-Length`` or chunked;
- ``connect_timeout_s`` bounds the TCP (and TLS) connect, ``read_timeout_s`` the wait for the
  response head, every gap between body chunks, and every stall while writing the request body
  to a backend that does not read it;
- a response head (status line and headers) larger than the request's ``max_head_bytes`` is
  ``invalid`` and the connection is dropped: a backend cannot make the gateway buffer and relay
  an unbounded head;
- a response without Content-Length or chunked encoding ends when the server closes;
- the response body streams with backpressure: the socket stops being read while more than
  ``HIGH_WATER_BYTES`` wait to be consumed; a body that has fully arrived is handed over whole
  by :meth:`read` without waiting;
- a pooled connection the server has closed is noticed (its close was read) and dropped before
  reuse; a request is never sent twice by the client itself: a connection that dies under a
  request is ``reset``, and only the route's retry policy may try again;
- failures are :class:`~kairos_core.upstream.UpstreamError` with the same kinds.

Each connection keeps one parser for all its responses (a HEAD request gets a fresh one: its
answer announces a body that never comes), and each origin is parsed once.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast

import httptools

from kairos_core.http import HeaderPairs
from kairos_core.upstream import (
    AiohttpUpstream,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
)
from kairos_core.websocket import UpstreamWebSocket

IDLE_TIMEOUT_S = 4.0
MAX_IDLE_PER_ORIGIN = 256
HIGH_WATER_BYTES = 256 * 1024
LOW_WATER_BYTES = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
_MAX_ORIGINS = 10_000


@dataclass(frozen=True, slots=True)
class _Origin:
    host: str
    port: int
    tls: bool
    netloc: str


class _Connection(asyncio.Protocol):
    """One TCP connection; parses one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._parser: httptools.HttpResponseParser | None = None
        self._parsing = False
        self._method = "GET"
        self._head: asyncio.Future[None] | None = None
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._max_head_bytes = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: BaseException | None = None
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self.status = 0
        self.keep_alive = False
        self._close_delimited = False

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self._parsing or self._parser is None:  # bytes nobody asked for: unusable
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("invalid", "unexpected protocol upgrade", sent=True))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("invalid", f"invalid upstream response: {exc}", sent=True))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        head = self._head
        head_done = (
            head is not None and head.done() and not head.cancelled() and head.exception() is None
        )
        if self._parsing and not self._complete:
            if head_done and self._close_delimited and exc is None:
                self._complete = True
                self._wake()
            else:
                self._fail(UpstreamError("reset", "upstream closed the connection", sent=True))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("connection lost while writing"))
        # the parser refers back to this protocol: dropping it breaks the cycle, so a connection
        # given up mid-body frees its buffered chunks now, not at the next full collection
        self._parser = None

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # --- httptools callbacks ------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status) + 15)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # interim answer (100 Continue): wait for the real one
            self._headers = []
            self._head_bytes = 0
            return
        self.keep_alive = self._parser.should_keep_alive()
        framed = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in self._headers)
        self._close_delimited = not framed  # RFC 9112 §6.3: the body ends when the server closes
        self._cancel_head_timer()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        self._wake()
        if self._buffered > HIGH_WATER_BYTES and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            return
        self._complete = True
        self._parsing = False
        self._wake()

    # --- use ----------------------------------------------------------------------------------

    def begin(self, method: str, max_head_bytes: int) -> asyncio.Future[None]:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        if self._parser is None or method == "HEAD" or self._method == "HEAD":
            self._parser = httptools.HttpResponseParser(self)
            if method == "HEAD":
                self._parser.set_dangerous_leniencies(lenient_keep_alive=True)
        self._method = method
        self._parsing = True
        self._max_head_bytes = max_head_bytes
        self._head_bytes = 0
        self._head = self._loop.create_future()
        self._headers = []
        self._chunks.clear()
        self._buffered = 0
        self._complete = False
        self._error = None
        return self._head

    def time_head(self, timeout_s: float) -> None:
        """Fail the response head with a ``timeout`` unless it arrives within ``timeout_s``
        (one timer on the loop, cancelled by the head: no timeout context per request)."""
        if self._head is not None and not self._head.done():
            self._head_timer = self._loop.call_at(
                self._loop.time() + timeout_s, self._head_timed_out
            )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._fail(UpstreamError("timeout", "upstream did not answer in time", sent=True))

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    @property
    def head_headers(self) -> list[tuple[str, str]]:
        return self._headers

    def head_complete_without_body(self) -> bool:
        """HEAD answers and 204/304 carry no body whatever their headers say."""
        return self._method == "HEAD" or self.status in _NO_BODY_STATUSES

    async def write(self, data: bytes, stall_timeout_s: float) -> None:
        """Write, waiting while the socket buffer is full, at most ``stall_timeout_s`` a time."""
        if self.transport is None or self.closed:
            raise ConnectionResetError("connection closed")
        self.transport.write(data)
        if self._drain is not None:
            async with asyncio.timeout(stall_timeout_s):
                await asyncio.shield(self._drain)

    async def next_chunk(self, timeout_s: float) -> bytes | None:
        """The next body chunk, or None at the end of the body."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            self._waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._waiter
            except TimeoutError as exc:
                raise UpstreamError(
                    "timeout", "upstream stopped sending the body", sent=True
                ) from exc
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < LOW_WATER_BYTES and self.transport:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def take_complete_body(self) -> bytes | None:
        """The whole body if it has arrived (no wait), else None."""
        if not self._complete or self._error is not None:
            return None
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    @property
    def finished(self) -> bool:
        return self._complete and not self._chunks

    def abort(self) -> None:
        self.closed = True
        self._cancel_head_timer()
        if self.transport is not None:
            self.transport.abort()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._max_head_bytes:
            limit = self._max_head_bytes
            self._fail(UpstreamError("invalid", f"upstream head over {limit} bytes", sent=True))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is not None:
            return
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved here: a cancelled sender never awaits it
        self._wake()
        self.abort()


class _H1Response:
    __slots__ = ("_client", "_conn", "_done", "_origin", "_timeout_s", "headers", "status")

    def __init__(self, client: H1Upstream, origin: str, conn: _Connection, timeout_s: float):
        self._client = client
        self._origin = origin
        self._conn = conn
        self._timeout_s = timeout_s
        self._done = False
        self.status = conn.status
        self.headers = list(conn.head_headers)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self._conn.head_complete_without_body():
            return
        while True:
            chunk = await self._conn.next_chunk(self._timeout_s)
            if chunk is None:
                return
            yield chunk

    async def read(self) -> bytes:
        if self._conn.head_complete_without_body():
            return b""
        whole = self._conn.take_complete_body()
        if whole is not None:
            return whole
        parts = []
        while (chunk := await self._conn.next_chunk(self._timeout_s)) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def close(self) -> None:
        if self._done:
            return
        self._done = True
        conn = self._conn
        reusable = (
            conn.keep_alive
            and not conn.closed
            and (conn.finished or conn.head_complete_without_body())
        )
        if reusable:
            self._client._release(self._origin, conn)
        else:
            conn.abort()


class H1Upstream:
    """:class:`~kairos_core.upstream.UpstreamClient` on pooled keep-alive HTTP/1.1 connections."""

    def __init__(self) -> None:
        self._idle: dict[str, deque[_Connection]] = {}
        self._origins: dict[str, _Origin] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._websockets = AiohttpUpstream()
        self._tls = ssl.create_default_context()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        origin = self._origin(request.origin)
        head, body = _serialize(request, origin.netloc)
        conn = await self._acquire(request.origin, origin, request.connect_timeout_s)
        head_ready = conn.begin(request.method, request.max_head_bytes)
        try:
            await self._write(conn, head, body, request.read_timeout_s)
            conn.time_head(request.read_timeout_s)
            await head_ready
        except TimeoutError as exc:  # a write that stalled past its bound
            conn.abort()
            message = "upstream did not take the request in time"
            raise UpstreamError("timeout", message, sent=True) from exc
        except (ConnectionError, OSError) as exc:
            conn.abort()
            message = f"upstream connection failed: {exc}"
            raise UpstreamError("reset", message, sent=True) from exc
        except BaseException:
            conn.abort()
            raise
        return _H1Response(self, request.origin, conn, request.read_timeout_s)

    async def connect_websocket(
        self, url: str, headers: HeaderPairs, protocols: Sequence[str], connect_timeout_s: float
    ) -> UpstreamWebSocket:
        return await self._websockets.connect_websocket(url, headers, protocols, connect_timeout_s)

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for pool in self._idle.values():
            for conn in pool:
                conn.abort()
        self._idle.clear()
        await self._websockets.close()

    # --- pool -------------------------------------------------------------------------------------

    def _origin(self, origin: str) -> _Origin:
        parsed = self._origins.get(origin)
        if parsed is None:
            if len(self._origins) >= _MAX_ORIGINS:
                self._origins.clear()
            parsed = self._origins[origin] = _parse_origin(origin)
        return parsed

    async def _acquire(self, key: str, origin: _Origin, connect_timeout_s: float) -> _Connection:
        pool = self._idle.get(key)
        if pool:
            now = time.monotonic()
            _evict_stale(pool, now)
            while pool:
                conn = pool.pop()
                transport = conn.transport
                if not conn.closed and transport is not None and not transport.is_closing():
                    return conn
                conn.abort()
        return await self._connect(origin, connect_timeout_s)

    def _release(self, key: str, conn: _Connection) -> None:
        conn.idle_since = now = time.monotonic()
        pool = self._idle.get(key)
        if pool is None:
            pool = self._idle[key] = deque()
        pool.append(conn)
        _evict_stale(pool, now)
        if len(pool) > MAX_IDLE_PER_ORIGIN:
            pool.popleft().abort()
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, self._sweep_idle)

    def _sweep_idle(self) -> None:
        self._sweep = None
        now = time.monotonic()
        for key, pool in list(self._idle.items()):
            _evict_stale(pool, now)
            if not pool:
                del self._idle[key]
        if self._idle:
            self._sweep = asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, self._sweep_idle)

    async def _connect(self, origin: _Origin, timeout_s: float) -> _Connection:
        tls = self._tls if origin.tls else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    _Connection,
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError as exc:
            raise UpstreamError("connect", "upstream connect timed out", sent=False) from exc
        except OSError as exc:
            message = f"cannot connect to upstream {origin.netloc}: {exc.strerror or exc}"
            raise UpstreamError("connect", message, sent=False) from exc
        return conn

    @staticmethod
    async def _write(
        conn: _Connection, head: bytes, body: bytes | AsyncIterable[bytes] | None, stall_s: float
    ) -> None:
        if not _is_stream(body):
            await conn.write(head + body if isinstance(body, bytes) else head, stall_s)
            return
        await conn.write(head, stall_s)
        chunked = b"transfer-encoding: chunked" in head.lower()
        assert body is not None and not isinstance(body, bytes)
        async for chunk in body:
            if not chunk:
                continue
            if chunked:
                await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk), stall_s)
            else:
                await conn.write(chunk, stall_s)
        if chunked:
            await conn.write(b"0\r\n\r\n", stall_s)


def _parse_origin(origin: str) -> _Origin:
    scheme, _, netloc = origin.partition("://")
    tls = scheme.lower() in ("https", "wss")
    host, port = netloc, 443 if tls else 80
    if netloc.startswith("["):  # [IPv6]:port
        end = netloc.index("]")
        host, rest = netloc[1:end], netloc[end + 1 :]
        if rest.startswith(":"):
            port = int(rest[1:])
    elif ":" in netloc:
        host, _, raw_port = netloc.rpartition(":")
        port = int(raw_port)
    return _Origin(host, port, tls, netloc)


def _evict_stale(pool: deque[_Connection], now: float) -> None:
    """Close idle connections from the oldest end (the pool is used last-in, first-out)."""
    while pool and (pool[0].closed or now - pool[0].idle_since >= IDLE_TIMEOUT_S):
        pool.popleft().abort()


def _is_stream(body: object) -> bool:
    return body is not None and not isinstance(body, bytes | bytearray)


def _serialize(
    request: UpstreamRequest, netloc: str
) -> tuple[bytes, bytes | AsyncIterable[bytes] | None]:
    lines = [f"{request.method} {request.target} HTTP/1.1"]
    has_host = has_length = False
    stream = _is_stream(request.body)
    for name, value in request.headers:
        lower = name.lower()
        if lower == "host":
            has_host = True
        elif lower == "content-length":
            has_length = True
            if not stream:
                continue  # recomputed below from the bytes actually sent
        elif lower == "transfer-encoding":
            continue
        lines.append(f"{name}: {value}")
    if not has_host:
        lines.insert(1, f"Host: {netloc}")
    body = request.body
    if isinstance(body, bytes | bytearray):
        lines.append(f"Content-Length: {len(body)}")
    elif body is not None and not has_length:
        lines.append("Transfer-Encoding: chunked")
    elif body is None and request.method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head, (bytes(body) if isinstance(body, bytearray) else body)
