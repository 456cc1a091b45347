"""Errors the gateway itself produces, with kairos-rs's body shape (DESIGN.md §4).

``{"error": "<message>", "type": "<type>", "timestamp": "<RFC 3339>", "request_id": "<id>"}``.
Each type has one status; :class:`GatewayError` carries extra headers (``Allow``, ``Retry-After``,
``WWW-Authenticate``, ``RateLimit-*``) that must go out with it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

ErrorType = Literal[
    "route_not_found",
    "method_not_allowed",
    "bad_request",
    "authentication_error",
    "rate_limit_error",
    "payload_too_large",
    "circuit_open",
    "no_healthy_backend",
    "upstream",
    "timeout",
    "client_timeout",
    "uri_too_long",
    "header_too_large",
    "expectation_failed",
    "cluster_unavailable",
    "internal",
]

STATUS: dict[str, int] = {
    "route_not_found": 404,
    "method_not_allowed": 405,
    "bad_request": 400,
    "authentication_error": 401,
    "rate_limit_error": 429,
    "payload_too_large": 413,
    "circuit_open": 503,
    "no_healthy_backend": 503,
    "upstream": 502,
    "timeout": 504,
    "client_timeout": 408,
    "uri_too_long": 414,
    "header_too_large": 431,
    "expectation_failed": 417,
    "cluster_unavailable": 503,
    "internal": 500,
}


class GatewayError(Exception):
    """A request the gateway answers itself, with the documented status and body."""

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.headers = headers
        self.retry_after_s = retry_after_s

    @property
    def status(self) -> int:
        return STATUS[self.error_type]

    def body(self, request_id: str) -> bytes:
        return error_body(self.error_type, self.message, request_id)


class ClientBodyError(GatewayError):
    """The client, not the backend, broke the request while its body was being read: a body
    over the cap (413), a gap between body reads over ``client_body_timeout_ms`` (408
    ``client_timeout``), or malformed chunked framing (400). Raised from a request body stream;
    an attempt that ends with it is never reported to a breaker."""


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    """The JSON error document, as bytes."""
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    document = {
        "error": message,
        "type": error_type,
        "timestamp": timestamp,
        "request_id": request_id,
    }
    return json.dumps(document).encode()
