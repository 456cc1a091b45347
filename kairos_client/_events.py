"""Server-sent events: an incremental ``text/event-stream`` parser and the reconnection policy.

:class:`SSEDecoder` follows the WHATWG rules (HTML §9.2.6): lines end with CRLF, LF or CR (a CRLF
split across two chunks counts once); ``:`` starts a comment; ``data`` lines are joined with
``\\n``; ``id`` sets the last event id, which persists across events (a value containing NUL is
ignored); ``retry`` sets the reconnection delay; a blank line dispatches the event, unless no
``data`` was given; an unfinished event at the end of the stream is dropped.

:class:`Backoff` is the reconnection delay of ``events()``: the server's ``retry`` (or
``INITIAL_DELAY_S``) after a drop, doubled after each attempt that brings no event, capped at the
caller's maximum, and back to the start once an event arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INITIAL_DELAY_S = 0.5
_END_OF_LINE = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` unless named), data and the last event id."""

    event: str
    data: str
    id: str | None


class SSEDecoder:
    """Feed it the bytes of a stream as they arrive; it returns each event once complete."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self._pending = b""
        self._after_cr = False
        self._at_start = True
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        *lines, self._pending = _END_OF_LINE.split(self._pending + chunk)
        events = []
        for raw in lines:
            event = self._line(raw.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if self._at_start:
            self._at_start = False
            line = line.removeprefix(_BOM)
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(event, "\n".join(data), self.last_event_id)


class Backoff:
    """Delays between reconnection attempts; see the module docstring."""

    def __init__(self, max_delay_s: float) -> None:
        self._max_delay_s = max_delay_s
        self._initial_s = min(INITIAL_DELAY_S, max_delay_s)
        self._next_s = self._initial_s

    def reset(self, retry_ms: int | None = None) -> None:
        """An event arrived: the next drop waits the initial delay (the server's, when given)."""
        if retry_ms is not None:
            self._initial_s = min(retry_ms / 1000, self._max_delay_s)
        self._next_s = self._initial_s

    def next_delay_s(self) -> float:
        delay = self._next_s
        self._next_s = min(max(delay * 2, INITIAL_DELAY_S), self._max_delay_s)
        return delay
