"""The access log: one line per request on the ``kairos.access`` logger, off the response path.

Rules: the request path only queues its record; the lines are formatted and written in batches,
at most ``FLUSH_S`` (0.1 s) after the first queued one and at once when ``MAX_QUEUED`` (1,024)
wait, in one write per batch (``BatchedStreamHandler``). Lines keep the log format of the other
loggers (text or JSON) and the order requests ended in; their timestamp is when the batch was
written, at most 0.1 s later. Nothing is queued when the logger is below INFO, and whatever is
queued is written at shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import IO, Any

from kairos_core.pipeline import RequestRecord

FLUSH_S = 0.1
MAX_QUEUED = 1024
logger = logging.getLogger("kairos.access")


class BatchedStreamHandler(logging.StreamHandler[IO[str]]):
    """A stream handler that keeps formatted lines until :meth:`flush`, then writes them once."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self.acquire()
            try:
                self.stream.write("\n".join(lines) + "\n")
            finally:
                self.release()
        super().flush()


class AccessLog:
    """Queues request records and writes their lines in batches."""

    def __init__(self, log_format: str) -> None:
        self._json = log_format == "json"
        self._queued: list[RequestRecord] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, record: RequestRecord) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        self._queued.append(record)
        if len(self._queued) >= MAX_QUEUED:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queued, self._queued = self._queued, []
        for record in queued:
            logger.info(self.line(record))
        for handler in (*logger.handlers, *logging.getLogger().handlers):
            handler.flush()

    def line(self, record: RequestRecord) -> str:
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "client_ip": record.client_ip,
            "method": record.method,
            "path": record.path,
            "route": record.route_id,
            "backend": record.backend,
            "status": record.status,
            "error": record.error_type,
            "duration_ms": _ms(record.duration_s),
            "upstream_ms": _ms(record.upstream_s),
            "attempts": record.attempts,
            "bytes": record.bytes_sent,
        }
        if self._json:
            return json.dumps(fields)
        return " ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items())


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
