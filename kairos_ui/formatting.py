"""Jinja2 filters: how numbers, durations and times read on the dashboard.

Each filter takes the raw wire value (requests per second, milliseconds, a 0–1 fraction, unix
seconds) and returns short text; ``None`` reads as an em dash, never as ``None``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from kairos_client import format_duration

MISSING = "—"


def rate(value: float | None) -> str:
    """Requests per second: ``0``, ``0.25``, ``3.5``, ``12``, ``1,234``."""
    if value is None:
        return MISSING
    if value == 0:
        return "0"
    if value < 10:
        digits = 2 if value < 1 else 1
        return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return f"{value:,.0f}"


def milliseconds(value: float | None) -> str:
    """A latency: ``0.42 ms``, ``12.3 ms``, ``1.25 s``."""
    if value is None:
        return MISSING
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def percent(value: float | None) -> str:
    """A 0–1 fraction as a percentage: ``0%``, ``0.25%``, ``12.5%``."""
    if value is None:
        return MISSING
    scaled = value * 100
    if scaled == 0:
        return "0%"
    if scaled < 1:
        return f"{scaled:.2f}%"
    return f"{scaled:.1f}".rstrip("0").rstrip(".") + "%"


def count(value: int | None) -> str:
    """An integer with thousands separators."""
    return MISSING if value is None else f"{value:,}"


def duration(seconds: float | None) -> str:
    """An uptime or delay, as :func:`kairos_client.format_duration` writes it (the CLI too):
    ``2.5 s``, ``42 s``, ``3 min 07 s``, ``2 h 05 min``, ``3 d 4 h``."""
    return MISSING if seconds is None else format_duration(seconds)


def until(timestamp: float | None, now: float | None = None) -> str:
    """Time left until ``timestamp`` (unix seconds): ``in 12 s``, or ``due`` once passed."""
    if timestamp is None:
        return MISSING
    left = timestamp - (time.time() if now is None else now)
    return f"in {format_duration(left)}" if left > 0 else "due"


def clock(timestamp: float | None) -> str:
    """A wall-clock time of day, local to the dashboard: ``14:03:27``."""
    if timestamp is None:
        return MISSING
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def iso_time(timestamp: float | None) -> str:
    """A full local timestamp for ``title`` attributes: ``2025-01-31 14:03:27``."""
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def pretty_json(value: Any) -> str:
    """Indented JSON, keys in their original order (a wire model as it travels)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    return json.dumps(value, indent=2, ensure_ascii=False)


FILTERS: dict[str, Callable[..., str]] = {
    "rate": rate,
    "ms": milliseconds,
    "percent": percent,
    "count": count,
    "duration": duration,
    "until": until,
    "clock": clock,
    "iso_time": iso_time,
    "pretty_json": pretty_json,
}
