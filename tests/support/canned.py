"""A loopback TCP server that answers every request with fixed bytes: for responses the real
test upstream cannot produce (broken framing, odd header bytes, bodies that stop mid-way)."""

from __future__ import annotations

import socket
import threading

HOLD_OPEN_MAX_S = 30.0


class CannedUpstream:
    """Answers each request head with ``response`` bytes, one thread per connection.

    ``requests`` holds the exact bytes of every request head received (``hits`` counts them).
    After answering, the connection is closed; with ``stall_s`` it first stays open that long
    (a body that stops mid-way), and with ``hold_open`` it stays open and silent until
    :meth:`close`.
    """

    def __init__(self, response: bytes, *, stall_s: float = 0.0, hold_open: bool = False) -> None:
        self._response = response
        self._stall_s = stall_s
        self._hold_open = hold_open
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def hits(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                received += chunk
            self.requests.append(received.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
            conn.sendall(self._response)
            if self._hold_open:
                self._closed.wait(HOLD_OPEN_MAX_S)
            elif self._stall_s:
                self._closed.wait(self._stall_s)
