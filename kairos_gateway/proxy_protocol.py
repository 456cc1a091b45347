"""The proxy listener's HTTP/1.1 server (RFC 9112): an ``asyncio.Protocol`` on httptools' parser.

Sanic binds the socket, accepts connections and drives shutdown; everything between the first
byte of a request and the last byte of its response happens here. Each request becomes a
:class:`~kairos_core.http.ProxyRequest`, runs through ``Pipeline.handle`` and is answered from the
:class:`~kairos_core.http.ProxyResponse`, whose ``close`` runs exactly once, even when the client
goes away. A request refused before the pipeline can run goes through ``Pipeline.reject``: the
documented JSON body, security headers and request id, logged and counted as a 4xx.

Framing

- One request at a time: a pipelined request waits, unparsed, until the response before it is
  complete, so responses leave in request order.
- Keep-alive is the default for HTTP/1.1, and for HTTP/1.0 only with ``Connection: keep-alive``.
  ``Connection: close`` from the client, an unread request body, a shutdown, or a response framed
  by closing the connection ends the connection after the response, which then says
  ``Connection: close``. A connection idle between requests for ``keepalive_timeout_ms`` is
  closed without a word; 0 turns keep-alive off.
- A request body is framed by ``Content-Length`` or by ``Transfer-Encoding: chunked`` and streams
  to the pipeline as ``ProxyRequest.body``; reading from the socket pauses while more than
  ``BODY_BUFFER_BYTES`` wait to be consumed. ``Content-Length`` must be ASCII digits after at
  most one space or tab (no sign, no other whitespace, no list); ``chunked`` is the only
  transfer coding (``Transfer-Encoding`` lines are read as one list, so ``gzip`` then
  ``chunked`` on two lines is refused like ``gzip, chunked``); a request with both is refused.
  Each of these is a 400, then close.
- ``Expect: 100-continue``: ``100 Continue`` is sent when the pipeline first reads the body,
  never when it answers first; any other expectation is 417 ``expectation_failed``.
- Responses to HEAD, 1xx, 204 and 304 carry no body. A streamed body goes out with the
  ``Content-Length`` it has, else chunked (HTTP/1.1) or delimited by the close (HTTP/1.0). A
  stream that breaks, or would run past its ``Content-Length``, after its head was sent aborts
  the connection: a truncated body never looks complete, a long one never spills into the next
  response.

Client-side bounds (``server`` config)

- ``client_header_timeout_ms`` bounds the whole request head, from its first byte (from the
  connection's start for its first request), however the bytes trickle in: 408
  ``client_timeout``, then close. A connection that sent nothing is closed without an answer.
- ``client_body_timeout_ms`` bounds every wait for body bytes: the body then raises
  ``ClientBodyError("client_timeout")``, the pipeline answers 408, and no backend is blamed.
- ``max_url_bytes``: a longer request target is 414 ``uri_too_long``. ``max_header_bytes``: a
  longer header section (request line excluded) is 431 ``header_too_large``, and so are more
  than ``max_request_headers`` header lines.
- A malformed chunked body makes the body raise ``ClientBodyError("bad_request")``.
- ``CONNECT``, ``TRACE`` (405), a malformed request line, a byte outside printable ASCII in the
  target, an HTTP version other than 1.0 and 1.1, and malformed headers are refused, then close.
  A head cut short by the client's close is 408 when an answer can still be written.
- A header whose name contains ``_`` is dropped, unless ``underscores_in_headers`` is true.
- Answered before its body was read (413 on the declared length, 401, 404...), a request's
  connection closes: reading stops, and at most ``LINGER_BYTES`` more are read and discarded for
  at most ``LINGER_S`` so the client sees the answer rather than a reset.

WebSocket: the pipeline connects the upstream first and answers 101 with the upstream socket;
the handshake is completed here and frames are relayed with :func:`kairos_core.websocket.relay`.

Shutdown: Sanic calls ``close_if_idle`` on every connection (idle ones close at once, busy ones
after their response, WebSocket clients get 1001), waits up to ``graceful_shutdown_s``, then
calls ``abort``. Responses sent while the runtime is draining say ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any, Final, cast

import httptools
from sanic import Sanic
from websockets.datastructures import Headers as WsHeaders
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from kairos_core.errors import ClientBodyError, ErrorType
from kairos_core.http import HOP_BY_HOP, ProxyRequest, ProxyResponse
from kairos_core.websocket import relay
from kairos_gateway.chunked import ChunkedDecoder, ChunkedError
from kairos_gateway.runtime import GatewayRuntime
from kairos_gateway.websocket import ClientWebSocket, frame_protocol

log = logging.getLogger("kairos.gateway")

BODY_BUFFER_BYTES: Final = 256 * 1024
"""Request bytes held for the pipeline (body, or pipelined requests) before reading pauses."""
LINGER_S: Final = 1.0
LINGER_BYTES: Final = 64 * 1024
WRITE_BUFFER_HIGH_BYTES: Final = 64 * 1024
WRITE_BUFFER_LOW_BYTES: Final = 16 * 1024
_REQUEST_LINE_SLACK_BYTES: Final = 32  # method, spaces and version around the target

# what the bytes arriving on the connection are
_HEAD, _BODY, _HOLD, _IGNORE, _LINGER, _WEBSOCKET = range(6)

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_WATCHED = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
_CONTENT_LENGTH_LINE = re.compile(rb"\r\ncontent-length:([^\r]*)", re.IGNORECASE)
_CONTENT_LENGTH_VALUE = re.compile(rb"[ \t]?[0-9]+")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
_PRINTABLE_TARGET = re.compile(rb"[\x21-\x7e]{1,256}")


class ProxyListener:
    """What every connection of the proxy listener shares: the runtime and Sanic's connection set,
    plus what the shutdown log reports."""

    def __init__(self, runtime: GatewayRuntime) -> None:
        self.runtime = runtime
        self.connections: set[Any] = set()
        self.drain_started_at: float | None = None
        self.cut_connections = 0
        self.accepting = True  # False once a drain stops accepting: late connections are cut
        self.socket: socket.socket | None = None  # the listening socket (set by main)
        self.drained = asyncio.Event()  # set once, after stop_accepting, the last one is gone

    def forget(self, connection: Any) -> None:
        self.connections.discard(connection)
        if not self.accepting and not self.connections:
            self.drained.set()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, close idle connections, and wait (at most ``timeout_s``) for the
        others to finish their responses."""
        self.stop_accepting()
        for connection in list(self.connections):
            connection.close_if_idle()
        if not self.connections:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained.wait(), timeout_s)

    def stop_accepting(self) -> None:
        """Close the listener to new connections: the socket stops listening (new ones are
        refused by the kernel), and any accepted in the meantime is cut at once."""
        self.accepting = False
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)


class _Refusal(Exception):
    """Raised from a parser callback: refuse the request with this error."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type: ErrorType = error_type
        self.message = message


class RequestBody:
    """A request body as the pipeline reads it: an async iterator of the bytes as they arrive.

    Bytes already received are returned without waiting; a wait for more lasts at most
    ``client_body_timeout_ms``. The first read sends ``100 Continue`` when the client asked for
    it. Framing errors and the client's early close surface as :class:`ClientBodyError`.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_connection",
        "_error",
        "_expect_continue",
        "_timeout_s",
        "_waiter",
        "complete",
    )

    def __init__(self, connection: ProxyProtocol, timeout_s: float, expect_continue: bool) -> None:
        self._connection = connection
        self._timeout_s = timeout_s
        self._expect_continue = expect_continue
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._error: ClientBodyError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                self._connection.body_consumed()
                return data
            if self._error is not None:
                raise self._error
            if self.complete:
                raise StopAsyncIteration
            if self._expect_continue:
                self._expect_continue = False
                self._connection.send_continue()
            await self._wait()

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._timeout_s, self._expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            milliseconds = round(self._timeout_s * 1000)
            self.fail(
                ClientBodyError(
                    "client_timeout", f"no request body bytes from the client for {milliseconds} ms"
                )
            )

    # --- fed by the connection ---------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return self._buffered

    def push(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: ClientBodyError) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Exchange:
    """One request on a connection, from its parsed head to the end of its response."""

    __slots__ = ("body", "head_only", "http_10", "keep_alive", "refusal", "request", "websocket")

    def __init__(
        self,
        request: ProxyRequest,
        body: RequestBody | None,
        *,
        keep_alive: bool,
        refusal: tuple[ErrorType, str] | None = None,
        websocket: WsRequest | None = None,
    ) -> None:
        self.request = request
        self.body = body
        self.keep_alive = keep_alive
        self.refusal = refusal
        self.websocket = websocket
        self.head_only = request.method == "HEAD"
        self.http_10 = request.http_version == "1.0"


class ProxyProtocol(asyncio.Protocol):
    """One client connection of the proxy listener (constructed by Sanic's server)."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        app: Sanic[Any, Any],
        connections: set[Any] | None = None,
        **_: Any,
    ) -> None:
        listener: ProxyListener = app.ctx.proxy_listener
        if connections is not None:
            listener.connections = connections
        self._loop = loop
        self._listener = listener
        self._runtime = listener.runtime
        self._transport: asyncio.Transport | None = None
        self._lost = False
        self._peer_ip = ""
        self._scheme = "http"
        self._mode = _HEAD
        self._buffer = bytearray()
        self._scanned = 0
        self._paused = False
        self._eof = False
        self._closing = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._deadline = 0.0
        self._server = self._runtime.state.config.server
        self._exchange: _Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._cancellable = True
        self._response_started = False
        self._websocket: ClientWebSocket | None = None
        self._body_left = 0
        self._chunked: ChunkedDecoder | None = None
        self._discarded = 0
        # the head being parsed (filled by the parser callbacks)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_lines = 0
        self._watched: dict[bytes, bytes] = {}
        self._max_url_bytes = 0
        self._max_headers = 0
        self._underscores = False
        self._head_complete = False
        self._keep_alive = False
        self._parser: httptools.HttpRequestParser | None = None

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        if not self._listener.accepting:
            transport.abort()
            return
        self._transport = transport
        self._listener.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES, low=WRITE_BUFFER_LOW_BYTES)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer_ip = str(peer[0])
        if transport.get_extra_info("ssl_object") is not None:
            self._scheme = "https"
        self._arm("head", self._server.client_header_timeout_ms / 1000)

    def data_received(self, data: bytes) -> None:
        mode = self._mode
        if mode == _HEAD:
            if self._buffer:
                self._buffer += data
                self._read_head()
            else:
                self._read_head(data)
        elif mode == _BODY:
            self._read_body(data)
        elif mode == _HOLD:
            self._buffer += data
            if len(self._buffer) > BODY_BUFFER_BYTES:
                self.pause_reading()
        elif mode == _WEBSOCKET:
            assert self._websocket is not None
            self._websocket.feed(data)
        elif mode == _LINGER:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.close()
        # _IGNORE: the request was refused or its body broke; nothing more is read from it

    def eof_received(self) -> bool:
        """The client closed its side. A request in progress is abandoned (the pipeline counts a
        499, as nginx does); a half-sent head still gets its 408 when it can be written."""
        self._eof = True
        mode = self._mode
        if mode == _HEAD and self._buffer and self._exchange is None:
            message = "the client closed the connection before the request head was complete"
            self._refuse("client_timeout", message, bytes(self._buffer))
            return True
        if mode == _WEBSOCKET:
            assert self._websocket is not None
            self._websocket.feed_eof()
            return True
        return mode == _IGNORE  # a refusal being written; otherwise close (and cancel)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._parser = None  # it refers back to this protocol: no cycle left for the collector
        self._listener.forget(self)
        self._drop_timer()
        self._wake_drain()
        exchange = self._exchange
        if exchange is not None and exchange.body is not None:
            exchange.body.fail(ClientBodyError("bad_request", "the client went away"))
        if self._websocket is not None:
            self._websocket.connection_lost()
        if self._task is not None and self._cancellable:
            self._task.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # --- what Sanic's server calls at shutdown ----------------------------------------------

    def close_if_idle(self) -> bool:
        """Close now if no request is in progress; otherwise after the current response."""
        self._closing = True
        if self._transport is None or self._lost:
            return True
        if self._websocket is not None:
            self._websocket.going_away()
            return False
        if self._exchange is None and not self._buffer and self._mode == _HEAD:
            self.close()
            return True
        return False

    def abort(self) -> None:
        """Cut the connection: the graceful shutdown's time is up."""
        if self._transport is not None and not self._lost:
            self._listener.cut_connections += 1
            self._transport.abort()

    # --- used by the request body, and by the WebSocket peer (``WebSocketConnection``) -------

    def body_consumed(self) -> None:
        if self._paused and self._mode == _BODY:
            self.resume_reading()

    def send_continue(self) -> None:
        if not self._response_started and not self._lost:
            self.write(_CONTINUE)

    async def drain(self) -> None:
        """Wait while the client's socket is full."""
        while self._write_paused and not self._lost:
            waiter = self._drain_waiter = self._loop.create_future()
            await waiter

    # --- reading a head ----------------------------------------------------------------------

    def _read_head(self, data: bytes | None = None) -> None:
        """Frame the next head: parse it once it is complete, refuse it when it is too big."""
        self._server = self._runtime.state.config.server  # a reload applies from the next head
        if data is not None:
            end = data.find(b"\r\n\r\n")
            if end > 0 and not data.startswith(b"\r\n"):
                if self._head_fits(data, end):
                    self._cancel_timer()
                    head = data if end + 4 == len(data) else data[: end + 4]
                    self._parse_head(head, data[end + 4 :])
                return
            self._buffer += data
        buffer = self._buffer
        while buffer.startswith(b"\r\n"):  # empty lines before a request line (RFC 9112 §2.2)
            del buffer[:2]
            self._scanned = 0
        if not buffer:
            return
        end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if not self._head_fits(buffer, end):
            return
        if end < 0:
            self._scanned = len(buffer)
            if self._timer_kind != "head":
                self._arm("head", self._server.client_header_timeout_ms / 1000)
            return
        head = bytes(buffer[: end + 4])
        del buffer[: end + 4]  # what follows stays buffered: no copy per pipelined request
        self._scanned = 0
        self._cancel_timer()
        self._parse_head(head, b"")

    def _head_fits(self, data: bytes | bytearray, end: int) -> bool:
        """False (and the request refused) when the request line or the header section of a
        head (complete when ``end`` >= 0, else still arriving) is over its limit."""
        server = self._server
        limit = end + 2 if end >= 0 else len(data)
        line_end = data.find(b"\r\n", 0, limit)
        request_line = line_end if line_end >= 0 else len(data)
        if request_line > server.max_url_bytes + _REQUEST_LINE_SLACK_BYTES:
            message = f"the request target exceeds {server.max_url_bytes} bytes"
            self._refuse("uri_too_long", message, bytes(data[:request_line]))
            return False
        if limit - request_line - 2 > server.max_header_bytes:
            message = f"the request headers exceed {server.max_header_bytes} bytes"
            self._refuse("header_too_large", message, bytes(data[:request_line]))
            return False
        return True

    def _parse_head(self, head: bytes, rest: bytes) -> None:
        """Parse a complete head; ``rest`` is what came after it in the same read (bytes that
        were buffered before stay in the buffer)."""
        server = self._server
        self._url = b""
        self._headers = []
        self._header_lines = 0
        self._watched = {}
        self._head_complete = False
        self._max_url_bytes = server.max_url_bytes
        self._max_headers = server.max_request_headers
        self._underscores = server.underscores_in_headers
        parser = self._parser = httptools.HttpRequestParser(self)
        upgrade = False
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            upgrade = True
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refusal):
                self._refuse(cause.error_type, cause.message, head, self._headers)
            else:
                self._refuse("bad_request", f"malformed request: {exc}", head, self._headers)
            return
        except httptools.HttpParserInvalidURLError as exc:
            message = f"malformed request target: {exc}"
            self._refuse("bad_request", message, head, self._headers)
            return
        except httptools.HttpParserError as exc:
            self._refuse("bad_request", f"malformed request: {exc}", head, self._headers)
            return
        if not self._head_complete:
            self._refuse("bad_request", "malformed request head", head, self._headers)
            return
        self._begin(parser, head, rest, upgrade, server.client_body_timeout_ms / 1000)

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_url_bytes:
            raise _Refusal(
                "uri_too_long", f"the request target exceeds {self._max_url_bytes} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        if self._header_lines > self._max_headers:
            raise _Refusal(
                "header_too_large", f"more than {self._max_headers} request header lines"
            )
        lower = name.lower()
        if lower in _WATCHED:
            previous = self._watched.get(lower)
            if previous is not None and lower == b"transfer-encoding":
                value = previous + b", " + value  # one list (RFC 9110 §5.3): chunked must be all
            self._watched[lower] = value
        if b"_" in name and not self._underscores:
            return
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        # read now: once the message is complete the parser resets for the next one
        parser = self._parser
        assert parser is not None
        self._head_complete = True
        self._keep_alive = parser.should_keep_alive()

    # --- starting a request ------------------------------------------------------------------

    def _begin(
        self,
        parser: httptools.HttpRequestParser,
        head: bytes,
        rest: bytes,
        upgrade: bool,
        body_timeout_s: float,
    ) -> None:
        """Check the framing the parser leaves to the server, then hand the request over."""
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        watched = self._watched
        refusal = _framing_refusal(method, version, head, watched)
        websocket: WsRequest | None = None
        if refusal is None and (watched.get(b"upgrade") or b"").strip().lower() == b"websocket":
            websocket, refusal = _websocket_handshake(method, self._url, self._headers)
        if refusal is not None:
            request = self._request(method, version, None)
            self._start(_Exchange(request, None, keep_alive=False, refusal=refusal))
            self._stop_reading()
            return
        body: RequestBody | None = None
        chunked = b"transfer-encoding" in watched
        length = int(watched[b"content-length"]) if b"content-length" in watched else 0
        if chunked or length:
            expect_continue = b"expect" in watched and version == "1.1"
            body = RequestBody(self, body_timeout_s, expect_continue)
        keepalive_ms = self._server.keepalive_timeout_ms
        keep_alive = keepalive_ms > 0 and self._keep_alive and not upgrade
        request = self._request(method, version, body)
        exchange = _Exchange(request, body, keep_alive=keep_alive, websocket=websocket)
        self._start(exchange)
        if rest:
            self._buffer += rest
        if body is None:
            self._mode = _HOLD
            if len(self._buffer) > BODY_BUFFER_BYTES:
                self.pause_reading()
            return
        self._mode = _BODY
        if chunked:
            self._chunked = ChunkedDecoder(self._server.max_header_bytes)
        else:
            self._chunked = None
            self._body_left = length
        if self._buffer:
            early = bytes(self._buffer)
            self._buffer.clear()
            self._read_body(early)

    def _request(self, method: str, version: str, body: RequestBody | None) -> ProxyRequest:
        raw_path, _, query = self._url.decode("latin-1").partition("?")
        return ProxyRequest(
            method=method,
            raw_path=raw_path,
            query=query,
            headers=self._headers,
            peer_ip=self._peer_ip,
            scheme=self._scheme,
            body=body,
            http_version=version,
        )

    def _refuse(
        self,
        error_type: ErrorType,
        message: str,
        head: bytes,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Answer a request that cannot run (bad head, too big, too slow) and close after it;
        ``head`` is what arrived of it, ``headers`` what the parser read before giving up."""
        method, target = _request_line_guess(head)
        raw_path, _, query = target.partition("?")
        request = ProxyRequest(
            method=method,
            raw_path=raw_path,
            query=query,
            headers=headers or [],
            peer_ip=self._peer_ip,
            scheme=self._scheme,
        )
        self._buffer.clear()
        self._cancel_timer()
        self._stop_reading()
        self._start(_Exchange(request, None, keep_alive=False, refusal=(error_type, message)))

    # --- reading a body ----------------------------------------------------------------------

    def _read_body(self, data: bytes) -> None:
        exchange = self._exchange
        assert exchange is not None and exchange.body is not None
        body = exchange.body
        rest = b""
        if self._chunked is None:
            left = self._body_left
            if len(data) > left:
                data, rest = data[:left], data[left:]
            self._body_left = left - len(data)
            body.push(data)
            done = self._body_left == 0
        else:
            try:
                chunks, end = self._chunked.feed(data)
            except ChunkedError as exc:
                body.fail(ClientBodyError("bad_request", f"malformed chunked body: {exc}"))
                self._stop_reading()
                return
            for chunk in chunks:
                if chunk:
                    body.push(chunk)
            done = end >= 0
            if done:
                rest = data[end:]
        if done:
            body.finish()
            self._chunked = None
            self._mode = _HOLD
            if rest:
                self.data_received(rest)
        elif body.buffered > BODY_BUFFER_BYTES:
            self.pause_reading()

    # --- answering ---------------------------------------------------------------------------

    def _start(self, exchange: _Exchange) -> None:
        self._exchange = exchange
        self._response_started = False
        self._cancellable = True
        self._task = self._loop.create_task(self._serve(exchange))

    async def _serve(self, exchange: _Exchange) -> None:
        pipeline = self._runtime.pipeline
        request = exchange.request
        try:
            if exchange.refusal is not None:
                result = pipeline.reject(request, *exchange.refusal)
            else:
                result = await pipeline.handle(request)
        except asyncio.CancelledError:
            return  # the client went away; the pipeline logged and counted it (499)
        except Exception:
            log.exception("request %s %s failed", request.method, request.raw_path)
            result = pipeline.reject(request, "internal", "internal gateway error")
        try:
            await self._respond(exchange, result)
        except asyncio.CancelledError:
            result.abandoned = True  # the client went away mid-response
        except Exception:
            log.exception("answering %s %s failed", request.method, request.raw_path)
            if self._transport is not None and not self._lost:
                self._transport.abort()
        finally:
            self._cancellable = False
            try:
                await result.close()
            except Exception:
                log.exception("finishing request %s %s failed", request.method, request.raw_path)
        self._cancellable = True
        if exchange.keep_alive:
            try:
                await self.drain()  # a client that does not read gets no next response
            except asyncio.CancelledError:
                return
        self._finished(exchange)

    async def _respond(self, exchange: _Exchange, result: ProxyResponse) -> None:
        self._response_started = True
        if result.websocket is not None:
            await self._relay_websocket(exchange, result)
            return
        status = result.status
        exchange.keep_alive = keep_alive = (
            exchange.keep_alive
            and status >= 200
            and self._mode == _HOLD
            and not self._closing
            and not self._eof
            and not self._runtime.draining
        )
        lines, declared = _header_lines(result.headers)
        no_body = exchange.head_only or status < 200 or status in (204, 304)
        body = result.body
        if isinstance(body, bytes):
            if status == 304:
                if declared is not None:
                    lines.append(f"Content-Length: {declared}\r\n")
            elif status >= 200 and status != 204:
                lines.append(f"Content-Length: {len(body)}\r\n")
            head = self._head(status, lines, keep_alive, exchange.http_10)
            self.write(head + body if body and not no_body else head)
            return
        chunked = False
        expected = -1
        if declared is not None and declared.isascii() and declared.isdigit():
            if status >= 200 and status != 204:
                lines.append(f"Content-Length: {declared}\r\n")
                expected = int(declared)
        elif no_body:
            pass
        elif exchange.http_10:
            exchange.keep_alive = keep_alive = False
        else:
            chunked = True
            lines.append("Transfer-Encoding: chunked\r\n")
        self.write(self._head(status, lines, keep_alive, exchange.http_10))
        if no_body:
            return
        await self._stream(body, chunked, expected)

    async def _stream(self, body: AsyncIterator[bytes], chunked: bool, expected: int) -> None:
        transport = self._transport
        assert transport is not None
        sent = 0
        try:
            async for chunk in body:
                if not chunk or self._lost:
                    continue
                if 0 <= expected < sent + len(chunk):
                    raise ValueError("the body is longer than its Content-Length")
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                sent += len(chunk)
                if self._write_paused:
                    await self.drain()
        except Exception:
            # the head is gone: the only honest signal left is an aborted connection, never a
            # terminating chunk that would make a truncated body look complete
            transport.abort()
            return
        if chunked:
            self.write(b"0\r\n\r\n")
        elif expected >= 0 and sent != expected:
            transport.abort()

    def _head(self, status: int, lines: list[str], keep_alive: bool, http_10: bool) -> bytes:
        if not keep_alive:
            lines.append("Connection: close\r\n")
        elif http_10:
            lines.append("Connection: keep-alive\r\n")
        status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"
        return (status_line + "".join(lines) + "\r\n").encode("latin-1", "replace")

    async def _relay_websocket(self, exchange: _Exchange, result: ProxyResponse) -> None:
        """Complete the client's handshake for the upstream socket the pipeline opened; relay."""
        upstream = result.websocket
        assert upstream is not None
        exchange.keep_alive = False
        if exchange.websocket is None:  # a plain request the pipeline upgraded anyway
            self.close()
            return
        subprotocols = [Subprotocol(upstream.protocol)] if upstream.protocol else None
        handshake = ServerProtocol(subprotocols=subprotocols)
        response = handshake.accept(exchange.websocket)
        if response.status_code != 101:
            self.write(response.serialize())
            return
        present = {name.lower() for name, _ in response.headers.raw_items()}
        lines = [f"{name}: {value}\r\n" for name, value in response.headers.raw_items()]
        lines += [
            f"{name}: {value}\r\n"
            for name, value in result.headers
            if (lower := name.lower()) not in HOP_BY_HOP and lower not in present
        ]
        head = "HTTP/1.1 101 Switching Protocols\r\n" + "".join(lines) + "\r\n"
        self.write(head.encode("latin-1", "replace"))
        peer = ClientWebSocket(self, frame_protocol())
        self._websocket = peer
        self._mode = _WEBSOCKET
        if self._buffer:
            early = bytes(self._buffer)
            self._buffer.clear()
            peer.feed(early)
        self.resume_reading()
        if self._closing:
            peer.going_away()
        await relay(peer, upstream)

    def _finished(self, exchange: _Exchange) -> None:
        """After a response: next request, or close (lingering if the request was not read)."""
        self._exchange = None
        self._task = None
        if self._lost or self._transport is None or self._transport.is_closing():
            return
        if not exchange.keep_alive or self._closing or self._eof:
            if self._mode in (_BODY, _IGNORE) or self._paused:
                self._linger()
            else:
                self.close()
            return
        self._mode = _HEAD
        self._arm("idle", self._server.keepalive_timeout_ms / 1000)
        self.resume_reading()
        if self._buffer:
            self._read_head()

    # --- connection plumbing -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes, unless the connection is gone."""
        if self._transport is not None and not self._lost:
            self._transport.write(data)

    def close(self) -> None:
        """Close once what was written has been sent."""
        self._drop_timer()
        if self._transport is not None and not self._lost:
            self._transport.close()

    def _linger(self) -> None:
        """Close after an answer the client may not have finished sending for: half-close, read
        and discard a little, then close, so the answer is not lost to a reset."""
        transport = self._transport
        assert transport is not None
        self._mode = _LINGER
        self._discarded = 0
        self._buffer.clear()
        if self._eof:
            self.close()
            return
        if transport.can_write_eof():
            transport.write_eof()
        self.resume_reading()
        self._arm("linger", LINGER_S)

    def _stop_reading(self) -> None:
        self._mode = _IGNORE
        self.pause_reading()

    def pause_reading(self) -> None:
        if not self._paused and self._transport is not None and not self._lost:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self._transport is not None and not self._lost:
            self._paused = False
            self._transport.resume_reading()

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drain_waiter = None

    def _arm(self, kind: str, delay_s: float) -> None:
        """Set the connection's one deadline (head, idle or linger). Moving it later, as every
        request on a busy keep-alive connection does, leaves the loop's timer where it is: it
        fires early, sees the new deadline and waits again."""
        deadline = self._loop.time() + delay_s
        self._timer_kind = kind
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._timer_fired)

    def _cancel_timer(self) -> None:
        self._timer_kind = ""  # a pending timer fires and finds nothing to do

    def _drop_timer(self) -> None:
        self._timer_kind = ""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if not kind:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._timer_fired)
            return
        self._timer_kind = ""
        if kind == "head" and self._buffer and self._exchange is None:
            timeout_ms = self._server.client_header_timeout_ms
            message = f"the request head took longer than {timeout_ms} ms"
            self._refuse("client_timeout", message, bytes(self._buffer))
        else:  # idle keep-alive, a connection that never sent a byte, or the end of a linger
            self.close()


def _framing_refusal(
    method: str, version: str, head: bytes, watched: dict[bytes, bytes]
) -> tuple[ErrorType, str] | None:
    """What the parser accepts but the proxy listener does not (see the module's rules)."""
    if version not in ("1.1", "1.0"):
        return "bad_request", f"HTTP/{version} is not supported; use HTTP/1.1"
    if method == "CONNECT":
        return "bad_request", "CONNECT is not supported: Kairos is a reverse proxy"
    if method == "TRACE":
        return "method_not_allowed", "TRACE is never forwarded"
    coding = watched.get(b"transfer-encoding")
    if coding is not None:
        if version == "1.0":
            return "bad_request", "Transfer-Encoding in an HTTP/1.0 request"
        if coding.strip().lower() != b"chunked":
            shown = coding.decode("latin-1")
            return "bad_request", f"unsupported transfer coding {shown!r}; only chunked is"
    if b"content-length" in watched:
        for match in _CONTENT_LENGTH_LINE.finditer(head):
            if _CONTENT_LENGTH_VALUE.fullmatch(match.group(1)) is None:
                shown = match.group(1).decode("latin-1")
                return "bad_request", f"invalid Content-Length {shown!r}: ASCII digits only"
    expect = watched.get(b"expect")
    if expect is not None and expect.strip().lower() != b"100-continue":
        shown = expect.decode("latin-1")
        return "expectation_failed", f"unsupported expectation {shown!r}"
    return None


def _websocket_handshake(
    method: str, url: bytes, headers: list[tuple[str, str]]
) -> tuple[WsRequest | None, tuple[ErrorType, str] | None]:
    """A request asking for ``Upgrade: websocket`` must be a valid opening handshake."""
    request = WsRequest(url.decode("latin-1"), WsHeaders(headers), method=method)
    probe = ServerProtocol()
    response = probe.accept(request)
    if response.status_code != 101:
        reason = probe.handshake_exc or "invalid handshake"
        return None, ("bad_request", f"invalid WebSocket handshake: {reason}")
    return request, None


def _header_lines(headers: list[tuple[str, str]]) -> tuple[list[str], str | None]:
    """Header lines of a response, without the framing headers this protocol writes itself;
    and the Content-Length the response declared, if any."""
    lines: list[str] = []
    declared: str | None = None
    for name, value in headers:
        lower = name.lower()
        if lower in _FRAMING_HEADERS:
            if lower == "content-length":
                declared = value.strip()
            continue
        lines.append(f"{name}: {value}\r\n")
    return lines, declared


def _request_line_guess(head: bytes) -> tuple[str, str]:
    """Method and target of a refused request, as far as they can be read, for the access log."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    method = parts[0] if _TOKEN.fullmatch(parts[0]) else b"-"
    target = parts[1] if len(parts) > 1 and _PRINTABLE_TARGET.fullmatch(parts[1]) else b"-"
    return method.decode("ascii"), target.decode("ascii")
