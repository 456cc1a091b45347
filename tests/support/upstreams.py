"""Real upstream HTTP servers for integration tests, steered at run time.

One aiohttp app serves every behaviour a gateway test needs, so a test starts one process per
backend (``python -m tests.support.upstreams --port P --name NAME``, or ``procs.start_upstream``)
and switches it between behaviours through its control plane instead of starting new servers.

Endpoints:

- ``ANY /{tail}``: echo. JSON ``{"server", "method", "path", "query", "headers", "body_len",
  "body_sha256"}``; ``path`` and ``query`` are the raw request target as received (percent-encoding
  kept), ``headers`` is a list of ``[name, value]`` pairs in received order (repeats kept). The body
  is hashed as it streams in, never held in memory.
- ``GET /_sse?count=N&interval_ms=M``: N events ``data: {"i": i, "t": <unix time>}``, the first at
  once, then one every M ms, each flushed as it is written.
- ``GET /_download?bytes=N``: N bytes in 64 KiB chunks with ``Content-Length``; byte ``k`` is
  ``k % 251`` (see ``expected_download``), so a dropped or reordered chunk changes the content.
- ``GET /_cookies``: two ``Set-Cookie`` headers, ``a=1`` and ``b=2``.
- ``GET /_status/{code}[?retry_after=S]``: that status (200-599) with a JSON body, and
  ``Retry-After: S`` when asked.
- ``GET /_slow?ms=N``: sleeps N ms, then echoes.
- ``GET /_ws``: WebSocket echo of text and binary messages; pings are answered, and a close frame
  is answered with the same code and reason.
- ``GET /health``: 200 ``{"status": "ok"}``, or 503 while the health flag is ``fail``.

Control plane (never counted as hits, never subject to modes):

- ``POST /_control`` sets the whole control state; omitted fields take their defaults, so an empty
  object restores normal behaviour. Fields: ``mode`` (``ok``, ``fail``: answer ``status``;
  ``hang``: never answer, until the client goes away; ``reset``: abort the TCP connection with an
  RST and no response; ``flap``: ``flap_every`` requests ok, then ``flap_every`` failing with
  ``status``, and so on, counted from this POST), ``status`` (503), ``flap_every`` (2), ``health``
  (``ok`` | ``fail``) and ``delay_ms`` (0, latency added before every non-control request except
  ``/health``). Answers the new state; an invalid body gets 400 naming the field. ``GET
  /_control`` answers the current state, with the server's name and pid.
- ``GET /_hits``: ``{"hits": N, "log": [{"t", "method", "path", "query", "headers"}, ...]}``; every
  request other than the control plane counts, ``/health`` and those a mode fails, hangs or resets
  included. ``t`` is wall-clock ``time.time()``; ``headers`` is a dict of lower-case names, last
  value wins; the log keeps the last 10,000 requests. ``POST /_hits/reset`` clears both.

Every response carries ``X-Upstream: NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NoReturn, TypedDict, get_args

from aiohttp import WSCloseCode, WSMsgType, web

Mode = Literal["ok", "fail", "hang", "reset", "flap"]
HealthMode = Literal["ok", "fail"]

CHUNK_BYTES = 64 * 1024
HIT_LOG_MAX_ENTRIES = 10_000
SHUTDOWN_TIMEOUT_S = 0.5
WS_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_PATTERN_PERIOD = 251
_PATTERN = bytes(range(_PATTERN_PERIOD)) * (CHUNK_BYTES // _PATTERN_PERIOD + 2)
_CONTROL_ROUTES = frozenset({"control", "control_state", "hits", "hits_reset"})
_NO_BODY_STATUSES = frozenset({204, 304})
# Close codes a peer may send back (RFC 6455 §7.4); anything else is answered with 1000.
_SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ControlFields(TypedDict, total=False):
    """The body of ``POST /_control``; every field is optional."""

    mode: Mode
    status: int
    flap_every: int
    health: HealthMode
    delay_ms: float


class HitRecord(TypedDict):
    """One entry of the ``GET /_hits`` log."""

    t: float
    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass(frozen=True)
class ControlState:
    """How the server behaves; replaced as a whole by every ``POST /_control``."""

    mode: Mode = "ok"
    status: int = 503
    flap_every: int = 2
    health: HealthMode = "ok"
    delay_ms: float = 0

    @classmethod
    def from_json(cls, data: object) -> ControlState:
        """Validate a control body; raises ``ValueError`` naming the offending field."""
        if not isinstance(data, dict):
            raise ValueError("the control body must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown control field(s) {unknown}; allowed: {sorted(known)}")
        state = cls(**data)
        if state.mode not in get_args(Mode):
            raise ValueError(f"mode={state.mode!r}; allowed: {list(get_args(Mode))}")
        if state.health not in get_args(HealthMode):
            raise ValueError(f"health={state.health!r}; allowed: {list(get_args(HealthMode))}")
        if not _is_int(state.status) or not 200 <= state.status <= 599:
            raise ValueError(f"status={state.status!r}; must be an integer in 200..599")
        if not _is_int(state.flap_every) or state.flap_every < 1:
            raise ValueError(f"flap_every={state.flap_every!r}; must be an integer >= 1")
        if not _is_number(state.delay_ms) or state.delay_ms < 0:
            raise ValueError(f"delay_ms={state.delay_ms!r}; must be a number >= 0")
        return state


class UpstreamState:
    """The mutable state of one server: its control state, its flap counter and its hit log."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.control = ControlState()
        self.hits = 0
        self.log: deque[HitRecord] = deque(maxlen=HIT_LOG_MAX_ENTRIES)
        self._flap_seen = 0

    def set_control(self, control: ControlState) -> None:
        self.control = control
        self._flap_seen = 0

    def record(self, request: web.Request) -> None:
        path, _, query = request.raw_path.partition("?")
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.hits += 1
        record: HitRecord = {
            "t": time.time(),
            "method": request.method,
            "path": path,
            "query": query,
            "headers": headers,
        }
        self.log.append(record)

    def reset_hits(self) -> None:
        self.hits = 0
        self.log.clear()

    def next_mode(self) -> Mode:
        """The mode for the next request, resolving ``flap`` into ``ok`` or ``fail``."""
        control = self.control
        if control.mode != "flap":
            return control.mode
        phase = self._flap_seen // control.flap_every
        self._flap_seen += 1
        return "ok" if phase % 2 == 0 else "fail"

    def describe(self) -> dict[str, Any]:
        return {"server": self.name, "pid": os.getpid(), **asdict(self.control)}


STATE = web.AppKey("state", UpstreamState)


def expected_download(size_bytes: int) -> bytes:
    """The exact body ``GET /_download?bytes=size_bytes`` sends."""
    return b"".join(_download_chunks(size_bytes))


def create_app(name: str) -> web.Application:
    """The upstream app, for ``serve`` or an in-process runner.

    Run it with ``handler_cancellation=True`` (as ``serve`` does) so that ``hang`` and ``reset``
    handlers end when their client goes away.
    """
    app = web.Application(middlewares=[_behaviour_middleware], client_max_size=0)
    app[STATE] = UpstreamState(name)
    app.on_response_prepare.append(_stamp_upstream_header)
    router = app.router
    router.add_post("/_control", _set_control, name="control")
    router.add_get("/_control", _get_control, name="control_state")
    router.add_get("/_hits", _get_hits, name="hits")
    router.add_post("/_hits/reset", _reset_hits, name="hits_reset")
    router.add_get("/health", _health, name="health")
    router.add_get("/_sse", _sse)
    router.add_get("/_download", _download)
    router.add_get("/_cookies", _cookies)
    router.add_get(r"/_status/{code:\d+}", _status)
    router.add_get("/_slow", _slow)
    router.add_get("/_ws", _websocket)
    router.add_route("*", "/{tail:.*}", _echo)
    return app


async def serve(host: str, port: int, name: str) -> None:
    """Serve ``create_app(name)`` on host:port until SIGINT or SIGTERM."""
    runner = web.AppRunner(
        create_app(name), handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        bound_port = runner.addresses[0][1]
        print(f"upstream {name} listening on http://{host}:{bound_port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Kairos test upstream server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--name", default="upstream", help="reported as server / X-Upstream")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.host, args.port, args.name))


@web.middleware
async def _behaviour_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route_name = request.match_info.route.name
    if route_name in _CONTROL_ROUTES:
        return await handler(request)
    state = request.app[STATE]
    state.record(request)
    if route_name == "health":
        return await handler(request)
    control = state.control
    if control.delay_ms > 0:
        await asyncio.sleep(control.delay_ms / 1000)
    mode = state.next_mode()
    if mode == "fail":
        body = {"server": state.name, "error": "injected failure", "mode": control.mode}
        return _json_response(body, status=control.status)
    if mode == "hang":
        await _wait_forever()
    if mode == "reset":
        _abort_connection(request)
        await _wait_forever()
    return await handler(request)


async def _wait_forever() -> NoReturn:
    # The server runs with handler_cancellation, so this ends when the client disconnects.
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


def _abort_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns the close into an RST: the client sees a reset, not a clean EOF.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _stamp_upstream_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Upstream"] = request.app[STATE].name


async def _echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    body_len = 0
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        digest.update(chunk)
        body_len += len(chunk)
    path, _, query = request.raw_path.partition("?")
    headers = [[_decode(name), _decode(value)] for name, value in request.raw_headers]
    return _json_response(
        {
            "server": request.app[STATE].name,
            "method": request.method,
            "path": path,
            "query": query,
            "headers": headers,
            "body_len": body_len,
            "body_sha256": digest.hexdigest(),
        }
    )


async def _sse(request: web.Request) -> web.StreamResponse:
    count = int(_query_number(request, "count", default=5, integer=True))
    interval_s = _query_number(request, "interval_ms", default=100) / 1000
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    for i in range(count):
        if i:
            await asyncio.sleep(interval_s)
        await response.write(f"data: {json.dumps({'i': i, 't': time.time()})}\n\n".encode())
    await response.write_eof()
    return response


async def _download(request: web.Request) -> web.StreamResponse:
    size_bytes = int(_query_number(request, "bytes", default=CHUNK_BYTES, integer=True))
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    response.content_length = size_bytes
    await response.prepare(request)
    for chunk in _download_chunks(size_bytes):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _cookies(request: web.Request) -> web.Response:
    response = _json_response({"server": request.app[STATE].name, "cookies": ["a=1", "b=2"]})
    response.headers.add("Set-Cookie", "a=1")
    response.headers.add("Set-Cookie", "b=2")
    return response


async def _status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if not 200 <= code <= 599:
        _bad_request(f"status {code} is outside 200..599")
    headers: dict[str, str] = {}
    retry_after = request.query.get("retry_after")
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = {"server": request.app[STATE].name, "status": code}
    return _json_response(body, status=code, headers=headers)


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(_query_number(request, "ms", default=1000) / 1000)
    return await _echo(request)


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoclose=False, max_msg_size=WS_MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    while True:
        message = await ws.receive()
        if message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
        elif message.type is WSMsgType.CLOSE:
            code = message.data if _is_sendable_close_code(message.data) else WSCloseCode.OK
            await ws.close(code=code, message=(message.extra or "").encode())
            return ws
        else:
            return ws


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.control.health == "fail":
        return _json_response({"status": "fail", "server": state.name}, status=503)
    return _json_response({"status": "ok", "server": state.name})


async def _set_control(request: web.Request) -> web.Response:
    try:
        control = ControlState.from_json(await request.json())
    except (ValueError, TypeError) as exc:
        _bad_request(str(exc))
    state = request.app[STATE]
    state.set_control(control)
    return _json_response(state.describe())


async def _get_control(request: web.Request) -> web.Response:
    return _json_response(request.app[STATE].describe())


async def _get_hits(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json_response({"hits": state.hits, "log": list(state.log)})


async def _reset_hits(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset_hits()
    return _json_response({"hits": state.hits})


def _download_chunks(size_bytes: int) -> Iterator[bytes]:
    for offset in range(0, size_bytes, CHUNK_BYTES):
        start = offset % _PATTERN_PERIOD
        yield _PATTERN[start : start + min(CHUNK_BYTES, size_bytes - offset)]


def _json_response(
    body: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    if status in _NO_BODY_STATUSES:
        return web.Response(status=status, headers=headers)
    return web.json_response(body, status=status, headers=headers)


def _query_number(
    request: web.Request, key: str, *, default: float, integer: bool = False
) -> float:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        _bad_request(f"{key}={raw!r} is not {'an integer' if integer else 'a number'}")
    if value < 0:
        _bad_request(f"{key}={raw!r} must be >= 0")
    return value


def _bad_request(message: str) -> NoReturn:
    raise web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_sendable_close_code(code: object) -> bool:
    if not isinstance(code, int) or isinstance(code, bool):
        return False
    return code in _SENDABLE_CLOSE_CODES or 3000 <= code <= 4999


if __name__ == "__main__":
    main()
