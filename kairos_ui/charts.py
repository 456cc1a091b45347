"""Server-rendered SVG charts for the dashboard: pure functions from numbers to markup, no JS.

Each function returns one complete, well-formed ``<svg>`` element that a template inserts as is,
so every piece of text in it (title, series names, unit, CSS classes) is escaped here: series
names come from config route ids.

``line_chart`` rules (each pinned by ``tests/ui/test_charts.py``):

- Points are ``(unix time in s, value)`` in any order. A point whose time or value is NaN or
  infinite is dropped, as is one older than ``window_s`` before the newest point of any series.
- The x axis covers ``[newest - window_s, newest]`` and is labelled at thirds: for 900 s,
  ``-15m``, ``-10m``, ``-5m``, ``now``.
- The y axis runs from 0 to the smallest of 1, 2, 3, 4, 5, 6, 8 x 10^k at or above the largest
  value (1 when every value is <= 0), with gridlines at 0, half and the top, labelled with the
  unit (``1.5k req/s``). Negative values are drawn at 0.
- Series ``n`` (from 0, in argument order) is drawn as polylines of class
  ``series series-<n> <css_class>``. A line breaks where consecutive samples are more than 1.5
  sampling intervals apart (the interval is the series' smallest spacing, at least 1 s), so
  missing seconds show as gaps; a lone sample is a zero-length line drawn as a dot by its round cap.
- With no point to draw, the chart says ``no data yet``.

``line_chart`` has a viewBox and no fixed size, so it scales to its container; ``sparkline`` is a
fixed-size decoration (``aria-hidden``) for a number shown next to it, scaled from 0 to its peak.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from itertools import pairwise

_NICE_MANTISSAS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
_GAP_FACTOR = 1.5
_EDGE_PX = 4.0  # between the plot and the left/right/top edges
_TOP_PX = 14.0  # room above the top gridline for its label
_X_AXIS_PX = 14.0  # room under the plot for the x labels
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SVG = 'xmlns="http://www.w3.org/2000/svg"'
_LABEL = 'font-size="10" fill="currentColor"'

Point = tuple[float, float]


@dataclass(frozen=True)
class Series:
    """One line of a chart: ``points`` are ``(unix time s, value)``; ``css_class`` styles it."""

    name: str
    points: Sequence[Point]
    css_class: str = ""


def _text(value: str) -> str:
    """Escape for XML text and attributes, dropping the characters XML cannot carry at all."""
    return escape(_NOT_XML.sub("", value), quote=True)


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def _nice_max(peak: float) -> float:
    if not peak > 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(peak))
    for mantissa in _NICE_MANTISSAS:
        nice = mantissa * magnitude
        if peak <= nice < math.inf:
            return nice
    return peak  # at the edges of float range a rounder top would not be representable


def _compact(value: float) -> str:
    if value >= 1e15:
        return f"{value:.2g}"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _ago(seconds: int) -> str:
    if seconds == 0:
        return "now"
    if seconds % 3600 == 0:
        return f"-{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"-{seconds // 60}m"
    return f"-{seconds}s"


def _runs(points: Sequence[Point]) -> list[list[Point]]:
    """Split time-sorted points into unbroken runs wherever samples are missing."""
    spacings = [b[0] - a[0] for a, b in pairwise(points) if b[0] > a[0]]
    max_spacing = _GAP_FACTOR * max(1.0, min(spacings, default=1.0))
    runs = [[points[0]]] if points else []
    for previous, point in pairwise(points):
        if point[0] - previous[0] > max_spacing:
            runs.append([])
        runs[-1].append(point)
    return runs


def _polyline(classes: str, xy: Sequence[Point], name: str = "") -> str:
    if len(xy) == 1:
        xy = [xy[0], xy[0]]
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    tooltip = f"<title>{_text(name)}</title>" if name else ""
    return (
        f'<polyline class="{_text(classes)}" points="{coords}" fill="none" stroke="currentColor"'
        f' stroke-width="1.5" stroke-linejoin="round" stroke-linecap="round">{tooltip}</polyline>'
    )


def line_chart(
    series: Sequence[Series],
    *,
    width: int = 640,
    height: int = 160,
    title: str = "",
    unit: str = "",
    window_s: int = 900,
) -> str:
    """An SVG chart of the last ``window_s`` seconds of ``series`` (rules: the module doc)."""
    _check_positive(width=width, height=height, window_s=window_s)
    finite = [
        sorted((t, v) for t, v in s.points if math.isfinite(t) and math.isfinite(v)) for s in series
    ]
    newest = max((points[-1][0] for points in finite if points), default=None)
    names = ", ".join(s.name for s in series)
    label = _text(f"{title}: {names}" if title and names else title or names or "chart")
    parts = [f'<svg {_SVG} class="chart" viewBox="0 0 {width} {height}" role="img"']
    parts.append(f' aria-label="{label}"><title>{label}</title>')
    if newest is None:
        parts.append(f'<text class="empty" x="{width / 2:.1f}" y="{height / 2:.1f}"')
        parts.append(f' text-anchor="middle" {_LABEL}>no data yet</text></svg>')
        return "".join(parts)

    start = newest - window_s
    in_window = [[p for p in points if p[0] >= start] for points in finite]
    top_value = _nice_max(max(v for points in in_window for _, v in points))
    left, right = _EDGE_PX, max(width - _EDGE_PX, _EDGE_PX + 1)
    top, bottom = _TOP_PX, max(height - _X_AXIS_PX, _TOP_PX + 1)

    def to_xy(point: Point) -> Point:
        x = left + (point[0] - start) / window_s * (right - left)
        return x, bottom - min(max(point[1], 0.0), top_value) / top_value * (bottom - top)

    suffix = f" {unit}" if unit else ""
    for fraction in (0.0, 0.5, 1.0):
        y = bottom - fraction * (bottom - top)
        parts.append(f'<line class="grid" x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}"')
        parts.append(f' y2="{y:.1f}" stroke="currentColor" stroke-opacity="0.15"/>')
        parts.append(f'<text class="axis-label y-label" x="{left + 2:.1f}" y="{y - 2:.1f}"')
        parts.append(f" {_LABEL}>{_text(_compact(top_value * fraction) + suffix)}</text>")
    for third, anchor in enumerate(("start", "middle", "middle", "end")):
        x = left + third / 3 * (right - left)
        parts.append(f'<text class="axis-label x-label" x="{x:.1f}" y="{height - 3:.1f}"')
        parts.append(f' text-anchor="{anchor}" {_LABEL}>{_ago(round(window_s * (3 - third) / 3))}')
        parts.append("</text>")
    for index, (one, points) in enumerate(zip(series, in_window, strict=True)):
        classes = " ".join(c for c in ("series", f"series-{index}", one.css_class) if c)
        for run in _runs(points):
            parts.append(_polyline(classes, [to_xy(p) for p in run], one.name))
    parts.append("</svg>")
    return "".join(parts)


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 24) -> str:
    """A minimal SVG polyline of evenly spaced ``values``; a NaN or infinite value breaks it."""
    _check_positive(width=width, height=height)
    pad = 1.5
    peak = max((v for v in values if math.isfinite(v)), default=0.0)
    scale = peak if peak > 0 else 1.0
    step = (width - 2 * pad) / (len(values) - 1) if len(values) > 1 else 0.0
    runs: list[list[Point]] = [[]]
    for index, value in enumerate(values):
        if not math.isfinite(value):
            runs.append([])
            continue
        x = pad + index * step if len(values) > 1 else width - pad
        runs[-1].append((x, height - pad - max(value, 0.0) / scale * (height - 2 * pad)))
    lines = "".join(_polyline("series", run) for run in runs if run)
    return (
        f'<svg {_SVG} class="sparkline" viewBox="0 0 {width} {height}" width="{width}"'
        f' height="{height}" aria-hidden="true">{lines}</svg>'
    )
