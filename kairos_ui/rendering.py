"""Jinja2 rendering of pages and of the live parts that SSE pushes into them.

A *live part* is one template under ``templates/parts/`` rendered from the
:class:`~kairos_ui.state.DashboardState` alone. A page includes it inside an element with
``sse-swap="<part>"``, and the relay broadcasts the same template, re-rendered, as the SSE event
``<part>``: the first paint and every update come from one template, so they cannot differ.

Autoescaping is on for every template; only SVG built by :mod:`kairos_ui.charts` is marked safe.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined

from .broadcast import Fragment
from .formatting import FILTERS
from .state import DashboardState

LIVE_PARTS: Final = (
    "banner",
    "overview",
    "routes",
    "backends",
    "transitions",
    "decisions",
    "ai",
    "reloads",
    "config",
)
# What a gateway ``snapshot`` event changes; the other parts follow their own events.
SNAPSHOT_PARTS: Final = ("overview", "routes", "backends", "ai")


class Renderer:
    """Renders pages and live parts; one instance per app (the Jinja2 environment is shared)."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("kairos_ui", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(FILTERS)

    def render(self, template: str, **context: Any) -> str:
        context.setdefault("now", time.time())
        return self.env.get_template(template).render(**context)

    def part(self, name: str, state: DashboardState) -> Fragment:
        """The live part ``name`` as the SSE event of the same name."""
        if name not in LIVE_PARTS:
            raise ValueError(f"unknown live part {name!r}; known: {', '.join(LIVE_PARTS)}")
        html = self.render(f"parts/{name}.html", state=state, link=state.link)
        return Fragment(name, html)

    def parts(self, state: DashboardState, names: Iterable[str] = LIVE_PARTS) -> list[Fragment]:
        return [self.part(name, state) for name in names]
