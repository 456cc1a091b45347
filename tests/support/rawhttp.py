"""A raw HTTP/1.1 client on one socket: exact bytes out, responses read one by one.

For tests of the wire itself (keep-alive, pipelining, interim responses, framing, closes), where
an HTTP library would hide what happened: ``RawConnection.send`` writes bytes as given, and
``read_response`` reads exactly one response (1xx included), framed as RFC 9112 says.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

DEFAULT_TIMEOUT_S = 5.0


class ConnectionClosed(AssertionError):
    """The server closed the connection where a response was expected."""


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    head: bytes = field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """One TCP connection to ``port`` on loopback."""

    def __init__(self, port: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self, *, head_request: bool = False) -> RawResponse:
        """The next response; its body framed by Content-Length, chunked coding or the close."""
        head = self._read_until(b"\r\n\r\n")
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = [
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in lines)
        ]
        response = RawResponse(status, headers, head=head)
        if head_request or status < 200 or status in (204, 304):
            return response
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            response.body = self._read_chunked()
        elif (length := response.header("content-length")) is not None:
            response.body = self._read_exactly(int(length))
        else:
            response.body = self._read_to_eof()
        return response

    def closed_by_server(self, within_s: float) -> bool:
        """True once the server closes (EOF or reset) within ``within_s`` with nothing more sent."""
        if self._buffer:
            return False
        deadline = time.monotonic() + within_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            if not data:
                return True
            self._buffer += data
            return False
        return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------------

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionClosed(f"the server closed the connection; unread: {self._buffer!r}")
        self._buffer += data

    def _read_until(self, marker: bytes) -> bytes:
        while (end := self._buffer.find(marker)) < 0:
            self._fill()
        data, self._buffer = self._buffer[: end + len(marker)], self._buffer[end + len(marker) :]
        return data

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self._read_until(b"\r\n")[:-2].split(b";")[0], 16)
            if size == 0:
                while self._read_until(b"\r\n") != b"\r\n":
                    pass
                return body
            body += self._read_exactly(size)
            assert self._read_exactly(2) == b"\r\n", "chunk not followed by CRLF"

    def _read_to_eof(self) -> bytes:
        while True:
            try:
                self._fill()
            except ConnectionClosed:
                data, self._buffer = self._buffer, b""
                return data
