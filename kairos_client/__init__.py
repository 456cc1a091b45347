"""Typed SDK for the Kairos admin API (DESIGN.md §10).

>>> from kairos_client import KairosClient
>>> with KairosClient() as client:  # $KAIROS_ADMIN_URL or http://127.0.0.1:5901
...     print(client.health().status, client.metrics().requests_total)

:class:`KairosClient` is synchronous, :class:`AsyncKairosClient` has the same methods as
coroutines. Answers are the frozen models of :mod:`kairos_client.models`; failures are
:class:`KairosError` subclasses. :data:`DEFAULT_BASE_URL` is the admin API a client reaches
when given no URL and ``$KAIROS_ADMIN_URL`` is unset; :func:`format_duration` is how a duration
reads to a person, in the CLI and the dashboard alike.
"""

from . import models
from ._client import DEFAULT_BASE_URL, AsyncKairosClient, KairosClient
from ._errors import KairosAPIError, KairosAuthError, KairosConnectionError, KairosError
from ._format import format_duration
from .models import (
    AiDecision,
    CircuitInfo,
    ConfigDocument,
    Event,
    Health,
    MetricsHistory,
    MetricsSnapshot,
    Ready,
    ReloadResult,
    RouteChange,
    RouteInfo,
    ValidationIssue,
    ValidationResult,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "AiDecision",
    "AsyncKairosClient",
    "CircuitInfo",
    "ConfigDocument",
    "Event",
    "Health",
    "KairosAPIError",
    "KairosAuthError",
    "KairosClient",
    "KairosConnectionError",
    "KairosError",
    "MetricsHistory",
    "MetricsSnapshot",
    "Ready",
    "ReloadResult",
    "RouteChange",
    "RouteInfo",
    "ValidationIssue",
    "ValidationResult",
    "format_duration",
    "models",
]
