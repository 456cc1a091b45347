"""The exceptions the SDK raises; every one is a :class:`KairosError`.

- :class:`KairosConnectionError`: no answer at all (refused, reset, DNS, timeout). The
  ``httpx.TransportError`` behind it is the ``__cause__``.
- :class:`KairosAuthError`: the admin API refused the token (401 or 403).
- :class:`KairosAPIError`: any other error answer, with the gateway's error body parsed: ``status``,
  ``type`` (``not_found``, ``validation_error``, ``precondition_failed``...), ``message`` and, for
  validation errors, ``details`` (JSON path and message of each issue). A body that is not the
  admin API's error shape is kept as the message, with ``type`` ``"http_error"``; an answer that
  does not match its documented model has ``type`` ``"invalid_response"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from pydantic import ValidationError

from .models import ErrorBody, ValidationIssue

UNKNOWN_ERROR_TYPE = "http_error"
INVALID_RESPONSE_TYPE = "invalid_response"
_MAX_TEXT_CHARS = 500


class KairosError(Exception):
    """Base class of every error the SDK raises.

    >>> try:
    ...     KairosClient().reload()
    ... except KairosError as exc:
    ...     print(f"reload failed: {exc}")
    """


class KairosConnectionError(KairosError):
    """The admin API could not be reached, or did not answer in time."""


class KairosAPIError(KairosError):
    """The admin API answered with an error status.

    >>> try:
    ...     client.route("nope")
    ... except KairosAPIError as exc:
    ...     exc.status, exc.type
    (404, 'not_found')
    """

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        details: Sequence[ValidationIssue] = (),
        *,
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.type = type
        self.message = message
        self.details: tuple[ValidationIssue, ...] = tuple(details)
        self.request_id = request_id
        super().__init__(self._describe())

    def _describe(self) -> str:
        lines = [f"{self.status} {self.type}: {self.message}"]
        for issue in self.details:
            where = f"{issue.path} (line {issue.line})" if issue.line else issue.path
            lines.append(f"  {where}: {issue.message}" if where else f"  {issue.message}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, type={self.type!r}, "
            f"message={self.message!r}, details={list(self.details)!r})"
        )


class KairosAuthError(KairosAPIError):
    """The admin API refused the token (401 without a valid one, 403 when not allowed).

    A :class:`KairosAPIError` too; catch this one first to tell a bad token apart.
    """


def error_from_response(response: httpx.Response) -> KairosAPIError:
    """The exception for an error answer, from its JSON error body or, failing that, its text."""
    try:
        body = ErrorBody.model_validate_json(response.content)
    except ValidationError:
        text = response.text.strip()[:_MAX_TEXT_CHARS] or response.reason_phrase
        return _error_class(response.status_code)(response.status_code, UNKNOWN_ERROR_TYPE, text)
    return _error_class(response.status_code)(
        response.status_code,
        body.type,
        body.error,
        body.details,
        request_id=body.request_id,
    )


def invalid_response(response: httpx.Response, expected: str, problem: object) -> KairosAPIError:
    """The exception for an answer whose body is not the documented ``expected`` model."""
    message = f"{response.request.method} {response.request.url.path} did not answer a "
    return KairosAPIError(
        response.status_code, INVALID_RESPONSE_TYPE, f"{message}{expected}: {problem}"
    )


def _error_class(status: int) -> type[KairosAPIError]:
    return KairosAuthError if status in (401, 403) else KairosAPIError
