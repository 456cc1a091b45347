"""The upstream client contract, held against both implementations, over real loopback sockets.

Every contract test runs twice, for :class:`~kairos_core.h1client.H1Upstream` and for
:class:`~kairos_core.upstream.AiohttpUpstream`, so the two clients answer to one rulebook (the
``kairos_core.upstream`` and ``kairos_core.h1client`` docstrings, and the README's "the upstream
client never resends a request on its own"). The peer is either the real test upstream process
(``tests/support/upstreams.py``) or a small raw asyncio server written here, when a test needs
exact bytes on the wire or a count of accepted connections. Nothing is mocked; the ``test_h1_*``
tests at the end pin H1Upstream-only rules and read its private state (the idle timeout, the
per-connection buffer reached through the response object).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import socket
import struct
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal

import pytest

from kairos_core import h1client
from kairos_core.h1client import HIGH_WATER_BYTES, H1Upstream
from kairos_core.upstream import (
    AiohttpUpstream,
    UpstreamClient,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
)
from tests.support.procs import LOOPBACK, Upstream, free_port
from tests.support.upstreams import expected_download

ClientKind = Literal["h1", "aiohttp"]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 2.0
SHORT_TIMEOUT_S = 0.3
# One socket read never delivers more than this (asyncio's selector transport max_size), so the
# buffer can overshoot HIGH_WATER_BYTES by one read before reading is paused.
SOCKET_READ_BYTES = 256 * 1024
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- peers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[Upstream]:
    with Upstream.start("h1") as upstream:
        yield upstream


@pytest.fixture
def upstream(shared_upstream: Upstream) -> Upstream:
    shared_upstream.control()
    return shared_upstream


class RawServer:
    """A loopback TCP server running ``handler`` for each connection it accepts.

    ``connections`` counts accepted connections; a handler's connection errors are swallowed and
    its socket closed when it returns. Leaving the ``async with`` block ends every handler.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://{LOOPBACK}:{port}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over: both are this server's normal end
        finally:
            self._tasks.discard(task)
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """(head, body) of the next request, or None at a clean EOF; bodies need Content-Length."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def keep_alive_server(
    response: bytes | Callable[[bytes], bytes] = OK_RESPONSE, *, eof: asyncio.Event | None = None
) -> Handler:
    """A handler answering every request of a connection with ``response`` (or response(head))."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            writer.write(response(request[0]) if callable(response) else response)
            await writer.drain()
        if eof is not None:
            eof.set()

    return handle


def scripted_server(*parts: bytes, pause_s: float = 0.0, then_hang: bool = False) -> Handler:
    """A handler that reads one request, writes ``parts`` ``pause_s`` apart, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for index, part in enumerate(parts):
            if index and pause_s:
                await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()
        if then_hang:
            await asyncio.Event().wait()

    return handle


async def answer_once_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the first request with keep-alive, then close on the next without answering.

    To the client this is the race a pooled connection can lose: the server gave up on the
    connection just as a request was sent on it.
    """
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    await read_request(reader)


# --- clients ----------------------------------------------------------------------------------


@pytest.fixture(params=["h1", "aiohttp"])
def client_kind(request: pytest.FixtureRequest) -> ClientKind:
    kind: ClientKind = request.param
    return kind


@pytest.fixture
async def client(client_kind: ClientKind) -> AsyncIterator[UpstreamClient]:
    upstream_client: UpstreamClient = H1Upstream() if client_kind == "h1" else AiohttpUpstream()
    yield upstream_client
    await upstream_client.close()


@pytest.fixture
async def h1() -> AsyncIterator[H1Upstream]:
    upstream_client = H1Upstream()
    yield upstream_client
    await upstream_client.close()


def upstream_request(
    url: str,
    method: str = "GET",
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | AsyncIterator[bytes] | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
) -> UpstreamRequest:
    return UpstreamRequest.for_url(
        method, url, headers or [], body, connect_timeout_s, read_timeout_s
    )


async def read_body(response: UpstreamResponse) -> bytes:
    """The whole body; the response is closed either way."""
    try:
        return b"".join([chunk async for chunk in response.iter_chunks()])
    finally:
        await response.close()


async def fetch(
    client: UpstreamClient, url: str, method: str = "GET", **kwargs: Any
) -> tuple[UpstreamResponse, bytes]:
    response = await client.send(upstream_request(url, method, **kwargs))
    return response, await read_body(response)


async def echo(client: UpstreamClient, url: str, method: str = "GET", **kwargs: Any) -> Any:
    response, body = await fetch(client, url, method, **kwargs)
    assert response.status == 200, body
    return json.loads(body)


def header_values(headers: list[tuple[str, str]] | list[list[str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


async def stream_of(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)


# --- the request on the wire ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
async def test_method_path_and_query_are_sent_exactly(
    client: UpstreamClient, upstream: Upstream, method: str
) -> None:
    seen = await echo(client, f"{upstream.url}/a%2Fb/c%20d?x=1&x=2&y=%20", method)

    assert seen["method"] == method
    assert seen["path"] == "/a%2Fb/c%20d"
    assert seen["query"] == "x=1&x=2&y=%20"


async def test_host_is_the_backends_unless_the_caller_sets_one(
    client: UpstreamClient, upstream: Upstream
) -> None:
    default = await echo(client, f"{upstream.url}/host")
    given = await echo(client, f"{upstream.url}/host", headers=[("Host", "api.example.test")])

    assert header_values(default["headers"], "host") == [f"{LOOPBACK}:{upstream.port}"]
    assert header_values(given["headers"], "host") == ["api.example.test"]


async def test_request_headers_are_sent_in_order_with_repeats(
    client: UpstreamClient, upstream: Upstream
) -> None:
    headers = [("X-Dup", "one"), ("X-Other", "x"), ("X-Dup", "two")]

    seen = await echo(client, f"{upstream.url}/headers", headers=headers)

    assert header_values(seen["headers"], "x-dup") == ["one", "two"]
    assert header_values(seen["headers"], "x-other") == ["x"]


@pytest.mark.parametrize("callers_length", [False, True])
async def test_bytes_body_gets_content_length_and_arrives_intact(
    client: UpstreamClient, upstream: Upstream, callers_length: bool
) -> None:
    body = bytes(range(256)) * 4000
    headers = [("Content-Length", str(len(body)))] if callers_length else []

    seen = await echo(client, f"{upstream.url}/upload", "POST", body=body, headers=headers)

    assert header_values(seen["headers"], "content-length") == [str(len(body))]
    assert header_values(seen["headers"], "transfer-encoding") == []
    assert seen["body_len"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_bodyless_post_announces_an_empty_body(
    client: UpstreamClient, upstream: Upstream
) -> None:
    seen = await echo(client, f"{upstream.url}/empty", "POST")

    assert header_values(seen["headers"], "content-length") == ["0"]
    assert seen["body_len"] == 0


async def test_stream_body_without_length_is_sent_chunked(
    client: UpstreamClient, upstream: Upstream
) -> None:
    chunks = [bytes([i]) * 100_000 for i in range(10)] + [b"", b"tail"]

    seen = await echo(client, f"{upstream.url}/upload", "PUT", body=stream_of(chunks))

    assert [v.lower() for v in header_values(seen["headers"], "transfer-encoding")] == ["chunked"]
    assert header_values(seen["headers"], "content-length") == []
    assert seen["body_len"] == 1_000_004
    assert seen["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


async def test_stream_body_with_callers_length_is_sent_raw(
    client: UpstreamClient, upstream: Upstream
) -> None:
    chunks = [bytes([i]) * 50_000 for i in range(6)]
    length = [("Content-Length", "300000")]

    seen = await echo(
        client, f"{upstream.url}/upload", "POST", body=stream_of(chunks), headers=length
    )

    assert header_values(seen["headers"], "content-length") == ["300000"]
    assert header_values(seen["headers"], "transfer-encoding") == []
    assert seen["body_len"] == 300_000
    assert seen["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


# --- the response -----------------------------------------------------------------------------


async def test_repeated_response_headers_are_kept(
    client: UpstreamClient, upstream: Upstream
) -> None:
    response, _ = await fetch(client, f"{upstream.url}/_cookies")

    assert response.status == 200
    assert header_values(response.headers, "set-cookie") == ["a=1", "b=2"]
    assert header_values(response.headers, "x-upstream") == ["h1"]


async def test_error_status_is_an_answer_not_a_failure(
    client: UpstreamClient, upstream: Upstream
) -> None:
    response, body = await fetch(client, f"{upstream.url}/_status/503?retry_after=7")

    assert response.status == 503
    assert header_values(response.headers, "retry-after") == ["7"]
    assert b'"status": 503' in body


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_complete_and_keep_the_connection(
    client: UpstreamClient, status: int
) -> None:
    # Content-Length on a 304 describes the representation; no body follows it.
    no_body = f'HTTP/1.1 {status} Nothing\r\nContent-Length: 5\r\nETag: "v1"\r\n\r\n'.encode()

    def answer(head: bytes) -> bytes:
        return no_body if head.startswith(b"GET /first") else OK_RESPONSE

    async with RawServer(keep_alive_server(answer)) as server:
        first, first_body = await fetch(client, f"{server.url}/first")
        second, second_body = await fetch(client, f"{server.url}/second")

    assert (first.status, first_body) == (status, b"")
    assert header_values(first.headers, "etag") == ['"v1"']
    assert (second.status, second_body) == (200, b"ok")
    assert server.connections == 1


async def test_head_with_content_length_but_no_body_keeps_the_connection(
    client: UpstreamClient,
) -> None:
    def answer(head: bytes) -> bytes:
        if head.startswith(b"HEAD "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
        return OK_RESPONSE

    async with RawServer(keep_alive_server(answer)) as server:
        head, head_body = await asyncio.wait_for(fetch(client, server.url, "HEAD"), 2)
        after, after_body = await fetch(client, server.url)

    assert (head.status, head_body) == (200, b"")
    assert header_values(head.headers, "content-length") == ["1234"]
    assert (after.status, after_body) == (200, b"ok")
    assert server.connections == 1


async def test_chunked_response_is_reassembled(client: UpstreamClient) -> None:
    parts = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"6\r\n world\r\n1",
        b"0\r\n" + b"!" * 16 + b"\r\n0\r\n\r\n",
    )

    async with RawServer(scripted_server(*parts, pause_s=0.02)) as server:
        response, body = await fetch(client, server.url)

    assert response.status == 200
    assert body == b"hello world" + b"!" * 16


async def test_body_delimited_by_close_is_read_to_the_end(
    request: pytest.FixtureRequest, client: UpstreamClient, client_kind: ClientKind
) -> None:
    parts = (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello ", b"world")

    async with RawServer(scripted_server(*parts, pause_s=0.02)) as server:
        response, body = await fetch(client, server.url)

    assert response.status == 200
    assert body == b"hello world"


async def test_interim_100_continue_is_skipped(client: UpstreamClient) -> None:
    parts = (
        b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nX-Final: yes\r\nContent-Length: 4\r\n\r\ndone",
    )

    async with RawServer(scripted_server(*parts, pause_s=0.02)) as server:
        response, body = await fetch(client, server.url, "POST", body=b"payload")

    assert response.status == 201
    assert header_values(response.headers, "x-final") == ["yes"]
    assert header_values(response.headers, "x-interim") == []
    assert body == b"done"


async def test_large_download_streams_in_chunks(client: UpstreamClient, upstream: Upstream) -> None:
    size_bytes = 3 * 1024 * 1024 + 17
    response = await client.send(upstream_request(f"{upstream.url}/_download?bytes={size_bytes}"))
    chunks = [chunk async for chunk in response.iter_chunks()]
    await response.close()

    assert header_values(response.headers, "content-length") == [str(size_bytes)]
    assert len(chunks) > 1
    assert b"".join(chunks) == expected_download(size_bytes)


async def test_sse_events_arrive_as_they_are_sent(
    client: UpstreamClient, upstream: Upstream
) -> None:
    count, interval_ms = 4, 150
    started = time.monotonic()
    response = await client.send(
        upstream_request(f"{upstream.url}/_sse?count={count}&interval_ms={interval_ms}")
    )
    arrivals: list[float] = []
    pending = b""
    async for chunk in response.iter_chunks():
        pending += chunk
        while b"\n\n" in pending:
            _, pending = pending.split(b"\n\n", 1)
            arrivals.append(time.monotonic() - started)
    await response.close()

    assert len(arrivals) == count
    assert arrivals[0] < 0.1 + 3 * interval_ms / 1000 / 4
    assert arrivals[-1] - arrivals[0] >= (count - 1) * interval_ms / 1000 * 0.8


async def test_closing_a_response_twice_is_harmless(client: UpstreamClient) -> None:
    async with RawServer(keep_alive_server()) as server:
        response = await client.send(upstream_request(server.url))
        assert [chunk async for chunk in response.iter_chunks()] == [b"ok"]
        await response.close()
        await response.close()
        # Released once: two concurrent requests do not end up sharing one connection.
        answers = await asyncio.gather(fetch(client, server.url), fetch(client, server.url))

    assert [body for _, body in answers] == [b"ok", b"ok"]
    assert server.connections == 2


# --- connection reuse -------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(client: UpstreamClient) -> None:
    async with RawServer(keep_alive_server()) as server:
        bodies = [(await fetch(client, f"{server.url}/{i}"))[1] for i in range(20)]

    assert bodies == [b"ok"] * 20
    assert server.connections == 1


async def test_response_closed_before_its_end_is_not_reused(client: UpstreamClient) -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n" + b"x" * 4_194_304

    def answer(head: bytes) -> bytes:
        return big if head.startswith(b"GET /big") else OK_RESPONSE

    async with RawServer(keep_alive_server(answer)) as server:
        response = await client.send(upstream_request(f"{server.url}/big"))
        first = await anext(response.iter_chunks())
        await response.close()
        _, after = await fetch(client, f"{server.url}/small")

    assert first
    assert after == b"ok"
    assert server.connections == 2


async def test_server_connection_close_is_not_reused(client: UpstreamClient) -> None:
    # The server says close but keeps the socket open: only the client's respect for the header
    # can make the second request open a new connection.
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    async with RawServer(keep_alive_server(closing)) as server:
        bodies = [(await fetch(client, server.url))[1] for _ in range(2)]

    assert bodies == [b"ok", b"ok"]
    assert server.connections == 2


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_connection_closed_while_idle_is_replaced(
    client: UpstreamClient, method: str
) -> None:
    async def close_soon_after_answering(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)

    async with RawServer(close_soon_after_answering) as server:
        await fetch(client, server.url)
        await asyncio.sleep(0.2)
        body_sent = b"x" * 10 if method == "POST" else None
        response, body = await fetch(client, server.url, method, body=body_sent)

    assert (response.status, body) == (200, b"ok")
    assert server.connections == 2


@pytest.mark.parametrize(
    ("method", "body_kind"),
    [("GET", None), ("PUT", "bytes"), ("DELETE", None), ("POST", "bytes"), ("PUT", "stream")],
)
async def test_request_on_a_connection_dropped_under_it_is_reset_never_resent(
    request: pytest.FixtureRequest,
    client: UpstreamClient,
    client_kind: ClientKind,
    method: str,
    body_kind: str | None,
) -> None:
    body = {"bytes": b"payload", "stream": stream_of([b"pay", b"load"]), None: None}[body_kind]

    async with RawServer(answer_once_then_drop) as server:
        await fetch(client, server.url)
        with pytest.raises(UpstreamError) as caught:
            await fetch(client, server.url, method, body=body)

    assert (caught.value.kind, caught.value.sent) == ("reset", True)
    assert server.connections == 1  # only the route's retry policy may send it again


async def test_close_closes_idle_connections(client: UpstreamClient) -> None:
    eof = asyncio.Event()

    async with RawServer(keep_alive_server(eof=eof)) as server:
        await fetch(client, server.url)
        await client.close()
        await asyncio.wait_for(eof.wait(), 2)


# --- failures ---------------------------------------------------------------------------------


async def test_refused_connect_is_connect_and_unsent(client: UpstreamClient) -> None:
    with pytest.raises(UpstreamError) as caught:
        await client.send(upstream_request(f"http://{LOOPBACK}:{free_port()}/"))

    assert (caught.value.kind, caught.value.sent) == ("connect", False)


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A loopback port whose accept queue is full, so a new connect hangs in SYN retries."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(4):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex((LOOPBACK, port))
        probe = stack.enter_context(socket.socket())
        probe.settimeout(0.2)
        try:
            probe.connect((LOOPBACK, port))
        except TimeoutError:
            yield port
            return
        pytest.skip("this kernel completes connects past a full accept queue")


async def test_connect_timeout_is_connect_and_unsent(
    client: UpstreamClient, unaccepting_port: int
) -> None:
    request = upstream_request(
        f"http://{LOOPBACK}:{unaccepting_port}/", connect_timeout_s=SHORT_TIMEOUT_S
    )
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        await client.send(request)

    assert (caught.value.kind, caught.value.sent) == ("connect", False)
    assert time.monotonic() - started < SHORT_TIMEOUT_S + 1.0


async def test_hanging_upstream_times_out_after_read_timeout(
    client: UpstreamClient, upstream: Upstream
) -> None:
    upstream.control(mode="hang")
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        await client.send(upstream_request(upstream.url, read_timeout_s=SHORT_TIMEOUT_S))
    elapsed = time.monotonic() - started

    assert (caught.value.kind, caught.value.sent) == ("timeout", True)
    assert SHORT_TIMEOUT_S * 0.9 <= elapsed < SHORT_TIMEOUT_S + 1.0


async def test_stalled_body_times_out_after_read_timeout(client: UpstreamClient) -> None:
    parts = (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"0123456789")

    async with RawServer(scripted_server(*parts, then_hang=True)) as server:
        response = await client.send(upstream_request(server.url, read_timeout_s=SHORT_TIMEOUT_S))
        received = b""
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            async for chunk in response.iter_chunks():
                received += chunk
        elapsed = time.monotonic() - started
        await response.close()

    assert received == b"0123456789"
    assert caught.value.kind == "timeout"
    assert SHORT_TIMEOUT_S * 0.9 <= elapsed < SHORT_TIMEOUT_S + 1.0


async def test_upstream_reset_is_reset(client: UpstreamClient, upstream: Upstream) -> None:
    upstream.control(mode="reset")
    with pytest.raises(UpstreamError) as caught:
        await client.send(upstream_request(upstream.url))

    assert (caught.value.kind, caught.value.sent) == ("reset", True)


async def test_garbage_response_is_invalid(client: UpstreamClient) -> None:
    async with RawServer(scripted_server(b"HELLO\r\n\r\n")) as server:
        with pytest.raises(UpstreamError) as caught:
            await client.send(upstream_request(server.url))

    assert (caught.value.kind, caught.value.sent) == ("invalid", True)


async def test_body_cut_short_is_a_reset(client: UpstreamClient) -> None:
    parts = (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",)

    async with RawServer(scripted_server(*parts)) as server:
        response = await client.send(upstream_request(server.url))
        received = b""
        with pytest.raises(UpstreamError) as caught:
            async for chunk in response.iter_chunks():
                received += chunk
        await response.close()

    assert received == b"0123456789"
    assert (caught.value.kind, caught.value.sent) == ("reset", True)


# --- H1Upstream internals ---------------------------------------------------------------------


async def test_h1_idle_connection_older_than_idle_timeout_is_closed_not_reused(
    h1: H1Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h1client, "IDLE_TIMEOUT_S", 0.1)
    eof = asyncio.Event()

    async with RawServer(keep_alive_server(eof=eof)) as server:
        await fetch(h1, server.url)
        await fetch(h1, server.url)
        assert server.connections == 1
        await asyncio.sleep(0.15)
        await fetch(h1, server.url)
        await asyncio.wait_for(eof.wait(), 2)  # the expired connection was closed, not leaked

    assert server.connections == 2


async def test_h1_slow_reader_keeps_the_buffer_bounded(h1: H1Upstream, upstream: Upstream) -> None:
    size_bytes = 50 * 1024 * 1024
    bound_bytes = HIGH_WATER_BYTES + SOCKET_READ_BYTES
    pattern = bytes(range(251)) * (2 * SOCKET_READ_BYTES // 251 + 2)
    response = await h1.send(upstream_request(f"{upstream.url}/_download?bytes={size_bytes}"))
    conn = response._conn  # type: ignore[attr-defined]
    offset = peak = chunks = 0
    async for chunk in response.iter_chunks():
        start = offset % 251
        assert chunk == pattern[start : start + len(chunk)], f"wrong bytes at {offset}"
        offset += len(chunk)
        chunks += 1
        if chunks % 40 == 0 and chunks <= 400:
            await asyncio.sleep(0.05)  # a slow consumer: the socket must stop being read
            peak = max(peak, conn._buffered)
        peak = max(peak, conn._buffered)
    await response.close()

    assert offset == size_bytes
    assert peak > HIGH_WATER_BYTES  # the sleeps did let the buffer fill up to the mark
    assert peak <= bound_bytes


async def test_h1_callers_stale_content_length_is_replaced_for_bytes(
    h1: H1Upstream, upstream: Upstream
) -> None:
    body = b"z" * 1000

    seen = await echo(
        h1, f"{upstream.url}/upload", "POST", body=body, headers=[("Content-Length", "3")]
    )

    assert header_values(seen["headers"], "content-length") == ["1000"]
    assert seen["body_len"] == 1000


@pytest.mark.parametrize("ending", ["fin", "rst"])
async def test_h1_close_delimited_body_ends_cleanly_on_fin_and_is_a_reset_on_rst(
    h1: H1Upstream, ending: str
) -> None:
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"world")
        await writer.drain()
        await asyncio.sleep(0.05)
        if ending == "rst":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    error: UpstreamError | None = None
    received = b""
    async with RawServer(answer_then_close) as server:
        response = await h1.send(upstream_request(server.url))
        try:
            async for chunk in response.iter_chunks():
                received += chunk
        except UpstreamError as exc:
            error = exc
        finally:
            await response.close()

    if ending == "fin":
        assert error is None
        assert received == b"hello world"
    else:
        assert error is not None, f"an RST after {received!r} was taken for the end of the body"
        assert (error.kind, error.sent) == ("reset", True)
        assert b"hello world".startswith(received)


class LiveConnections:
    """Wraps a RawServer handler to count the connections open at the server right now."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._changed = asyncio.Condition()
        self.open = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            await self._handler(reader, writer)
        finally:
            self.open -= 1
            async with self._changed:
                self._changed.notify_all()

    async def settle(self, at_most: int, timeout_s: float = 1.0) -> None:
        """Give the server time to see the client's closes; returns once few enough are open."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: self.open <= at_most)


async def test_h1_stale_idle_connections_are_evicted_while_a_hot_one_keeps_being_reused(
    h1: H1Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h1client, "IDLE_TIMEOUT_S", 0.3)
    live = LiveConnections(keep_alive_server())

    async with RawServer(live) as server:
        await asyncio.gather(*(fetch(h1, f"{server.url}/burst/{i}") for i in range(20)))
        assert server.connections == 20
        assert live.open == 20
        for i in range(10):
            await asyncio.sleep(0.1)
            _, body = await fetch(h1, f"{server.url}/steady/{i}")
            assert body == b"ok"
        await live.settle(at_most=2)

        assert live.open <= 2, "idle connections past IDLE_TIMEOUT_S stayed open under LIFO reuse"


async def test_h1_idle_pool_keeps_at_most_max_idle_per_origin(
    h1: H1Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h1client, "MAX_IDLE_PER_ORIGIN", 3)
    live = LiveConnections(keep_alive_server())

    async with RawServer(live) as server:
        answers = await asyncio.gather(*(fetch(h1, f"{server.url}/{i}") for i in range(10)))
        assert [body for _, body in answers] == [b"ok"] * 10
        assert server.connections == 10
        await live.settle(at_most=3)

        assert live.open == 3
        await fetch(h1, server.url)
        assert server.connections == 10, "the connections kept are reused"


async def test_h1_taking_a_connection_evicts_the_stale_ones_behind_it(
    h1: H1Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h1client, "IDLE_TIMEOUT_S", 0.3)
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    def answer(head: bytes) -> bytes:
        return closing if head.startswith(b"GET /last") else OK_RESPONSE

    live = LiveConnections(keep_alive_server(answer))

    async with RawServer(live) as server:
        await asyncio.gather(*(fetch(h1, f"{server.url}/burst/{i}") for i in range(20)))
        await asyncio.sleep(0.2)
        await fetch(h1, f"{server.url}/refresh")  # the newest goes back fresh, the rest age on
        await asyncio.sleep(0.2)
        _, body = await fetch(h1, f"{server.url}/last")  # taken, never returned
        await live.settle(at_most=0)

        assert body == b"ok"
        assert live.open == 0, "the take left stale idle connections open behind the fresh one"


async def test_h1_a_response_head_over_max_head_bytes_is_invalid(h1: H1Upstream) -> None:
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok"

    async with RawServer(keep_alive_server(lambda head: big)) as server:
        with pytest.raises(UpstreamError) as raised:
            await h1.send(upstream_request(server.url))
        fits = UpstreamRequest.for_url("GET", server.url, [], None, 2, 2)
        response = await h1.send(fits._replace(max_head_bytes=128 * 1024))
        assert await read_body(response) == b"ok"

    assert raised.value.kind == "invalid" and "head over 61440 bytes" in raised.value.message


async def test_h1_one_parser_serves_every_response_of_a_connection(h1: H1Upstream) -> None:
    async with RawServer(keep_alive_server(lambda head: OK_RESPONSE)) as server:
        first = await h1.send(upstream_request(server.url))
        parser = first._conn._parser  # type: ignore[attr-defined]
        assert await read_body(first) == b"ok"
        for _ in range(3):
            again = await h1.send(upstream_request(server.url))
            assert again._conn._parser is parser  # type: ignore[attr-defined]
            assert await read_body(again) == b"ok"

    assert server.connections == 1


async def test_h1_a_body_that_has_arrived_is_read_whole_at_once(h1: H1Upstream) -> None:
    async with RawServer(keep_alive_server(lambda head: OK_RESPONSE)) as server:
        response = await h1.send(upstream_request(server.url))
        await asyncio.sleep(0.05)  # the body is in by now
        assert response._conn.take_complete_body() == b"ok"  # type: ignore[attr-defined]
        await response.close()
        response = await h1.send(upstream_request(server.url))
        assert await response.read() == b"ok"
        await response.close()


async def test_h1_a_connection_given_up_mid_body_is_freed_at_once(h1: H1Upstream) -> None:
    """Its buffered chunks go when the connection closes, by reference counting: the parser's
    reference back to the protocol is dropped, so a client that vanishes mid-download leaves no
    cycle holding up to ``HIGH_WATER_BYTES`` until the next full collection (the gateway runs
    the collector rarely)."""
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n" + b"x" * 4_194_304
    async with RawServer(keep_alive_server(lambda head: big)) as server:
        response = await h1.send(upstream_request(server.url))
        assert await anext(response.iter_chunks())
        await asyncio.sleep(0.05)  # the buffer fills to the high-water mark
        conn = weakref.ref(response._conn)  # type: ignore[attr-defined]
        gc.disable()
        try:
            await response.close()
            del response
            for _ in range(20):  # the transport reports the loss on a later loop turn
                await asyncio.sleep(0.01)
                if conn() is None:
                    break
            assert conn() is None, "the connection is kept alive by a reference cycle"
        finally:
            gc.enable()
