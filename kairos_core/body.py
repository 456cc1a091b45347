"""The request body as the attempts see it: read once and kept, or streamed to one attempt.

Rules:

- No ``Content-Length`` and no chunked ``Transfer-Encoding``, or ``Content-Length: 0``: there
  is no body; nothing is sent and the request stays replayable.
- The body is **read whole before the first attempt** when the route may need it again (it has
  a retry policy and :func:`~kairos_core.retry.replayable` says a retry could resend it) or wants
  to look at it before choosing a backend (``preview_bytes``: an AI route reads a declared
  length up to that many bytes). Reading is bounded by the server's ``client_body_timeout_ms``
  between reads (enforced by the listener, which raises ``ClientBodyError``) and by the request
  deadline: a client too slow for either gets 408 ``client_timeout`` and no backend is touched.
- Otherwise the body **streams** to the first attempt only (``replayable`` is False and no
  retry can follow).
- Either way more than ``max_body_bytes`` is 413 ``payload_too_large`` (a declared length over
  the cap is refused before reading anything, by the pipeline's head checks).
- While an attempt is waiting for the client's next chunk, ``waiting_for_client`` is True: a
  deadline that fires then is the client's fault (408), never the backend's (DESIGN.md §5).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from kairos_core.errors import ClientBodyError


class RequestBody:
    """One request's body: ``take()`` gives each attempt what to send."""

    __slots__ = ("_data", "buffered", "client_wait_s", "replayable", "waiting_for_client")

    def __init__(self, data: bytes | AsyncIterator[bytes] | None, *, replayable: bool) -> None:
        self._data = data
        self.replayable = replayable
        self.buffered = isinstance(data, bytes)
        self.waiting_for_client = False
        self.client_wait_s = 0.0

    @classmethod
    def empty(cls) -> RequestBody:
        return cls(None, replayable=True)

    @classmethod
    async def read(
        cls,
        source: AsyncIterator[bytes],
        *,
        limit_bytes: int,
        deadline: float | None,
        replayable: bool,
    ) -> RequestBody:
        """Read the whole body now (under ``deadline``, ``time.monotonic()`` seconds)."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                chunks = [chunk async for chunk in capped(source, limit_bytes)]
        except TimeoutError as exc:
            raise ClientBodyError(
                "client_timeout", "the request body did not arrive before the deadline"
            ) from exc
        body = cls(b"".join(chunks), replayable=replayable)
        body.client_wait_s = time.perf_counter() - started
        return body

    @classmethod
    def stream(cls, source: AsyncIterator[bytes], *, limit_bytes: int) -> RequestBody:
        body = cls(None, replayable=False)
        body._data = body._watched(capped(source, limit_bytes))
        return body

    @property
    def preview(self) -> bytes | None:
        """The body when it was read whole, else None (a streamed body is never previewed)."""
        return self._data if isinstance(self._data, bytes) else None

    def take(self) -> bytes | AsyncIterator[bytes] | None:
        data = self._data
        if not self.replayable:
            self._data = None
        return data

    async def _watched(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        iterator = source.__aiter__()
        while True:
            self.waiting_for_client = True  # left True if the deadline cancels the wait
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                self.waiting_for_client = False
                return
            self.waiting_for_client = False
            yield chunk


async def capped(source: AsyncIterator[bytes], limit_bytes: int) -> AsyncIterator[bytes]:
    """``source`` until it passes ``limit_bytes``: then 413."""
    seen = 0
    async for chunk in source:
        seen += len(chunk)
        if seen > limit_bytes:
            raise ClientBodyError("payload_too_large", f"request body exceeds {limit_bytes} bytes")
        yield chunk


def _loop_time(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
