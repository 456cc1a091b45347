"""Every selector decision, kept and joined to what happened (DESIGN.md §6 "accountable").

Rules:

- A decision records when, which route and request, the strategy and mode, the chosen backend,
  why, its ``source`` and how long deciding took. Sources: ``llm`` (the LLM answered),
  ``cache`` (an earlier answer for an equal request, within ``cache_ttl_s``), ``heuristic``
  (the offline scorer is the route's selector), ``latency_prediction`` and
  ``anomaly_detection`` (those strategies decided), and the fallbacks ``fallback:timeout``,
  ``fallback:invalid``, ``fallback:busy`` (``max_concurrent_calls`` reached), ``fallback:error``
  and ``fallback:pending`` (``background`` mode, no answer cached yet). A fallback's ``reason``
  says which step of heuristic → ``fallback_backend_index`` → balancer picked.
- A decision that routed a request is joined to its outcome (status, upstream time) when the
  request ends, and only then published (``ai_decision`` event, metrics). A ``shadow``
  decision routes nothing: it records the backend the balancer used and whether they agree.
- The last ``CAPACITY`` (1,000) decisions are kept. Per route, the last ``WINDOW`` (500) routed
  outcomes of each group are kept: **selector** (every source but ``fallback:*``) and
  **fallback**; each group's success rate (status < 500) and p50 latency are served next to each
  other, with the shadow agreement rate, so an operator sees whether the LLM helps.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

Source = Literal[
    "llm",
    "cache",
    "heuristic",
    "latency_prediction",
    "anomaly_detection",
    "fallback:timeout",
    "fallback:invalid",
    "fallback:busy",
    "fallback:error",
    "fallback:pending",
]
CAPACITY = 1000
WINDOW = 500


@dataclass(slots=True)
class Decision:
    """One decision; ``status`` and ``upstream_ms`` are filled when its request ends."""

    route: str
    request_id: str | None
    strategy: str
    mode: str
    source: Source
    reason: str
    latency_ms: float
    index: int | None = None
    backend: str | None = None
    shadow: bool = False
    routed_backend: str | None = None
    agrees: bool | None = None
    status: int | None = None
    upstream_ms: float | None = None
    time: float = field(default_factory=time.time)
    id: int = 0

    @property
    def group(self) -> Literal["selector", "fallback"]:
        return "fallback" if self.source.startswith("fallback:") else "selector"


@dataclass(frozen=True, slots=True)
class GroupStats:
    """Routed requests of one group over its window."""

    requests: int
    success_rate: float | None
    p50_ms: float | None


@dataclass(frozen=True, slots=True)
class RouteStats:
    """One AI route: selector-routed next to fallback-routed, and shadow agreement."""

    route: str
    decisions: int
    selector: GroupStats
    fallback: GroupStats
    shadow_decisions: int
    shadow_agreement_rate: float | None


@dataclass(slots=True)
class _RouteWindow:
    decisions: int = 0
    selector: deque[tuple[bool, float]] = field(default_factory=lambda: deque(maxlen=WINDOW))
    fallback: deque[tuple[bool, float]] = field(default_factory=lambda: deque(maxlen=WINDOW))
    shadow: int = 0
    agreed: int = 0


Sink = Callable[[Decision], None]


class DecisionLog:
    """The ring buffer and per-route comparison behind ``/api/ai/decisions``."""

    def __init__(self, on_decision: Sink | None = None, capacity: int = CAPACITY) -> None:
        self._ids = itertools.count(1)
        self._recent: deque[Decision] = deque(maxlen=capacity)
        self._routes: dict[str, _RouteWindow] = {}
        self._on_decision = on_decision or (lambda decision: None)
        self.by_source: dict[str, int] = {}

    def finish(self, decision: Decision, status: int | None, upstream_s: float | None) -> None:
        """The decision's request ended (or, for a shadow decision, the decision is made)."""
        decision.id = next(self._ids)
        decision.status = status
        decision.upstream_ms = None if upstream_s is None else round(upstream_s * 1000, 3)
        self._recent.append(decision)
        self.by_source[decision.source] = self.by_source.get(decision.source, 0) + 1
        window = self._routes.setdefault(decision.route, _RouteWindow())
        window.decisions += 1
        if decision.shadow:
            if decision.agrees is not None:
                window.shadow += 1
                window.agreed += decision.agrees
        elif status is not None:
            sample = (status < 500, decision.upstream_ms or 0.0)
            (window.fallback if decision.group == "fallback" else window.selector).append(sample)
        self._on_decision(decision)

    def recent(self, limit: int) -> list[Decision]:
        """The newest ``limit`` decisions, newest first."""
        return list(itertools.islice(reversed(self._recent), max(limit, 0)))

    def routes(self) -> Iterator[RouteStats]:
        for route, window in self._routes.items():
            yield RouteStats(
                route=route,
                decisions=window.decisions,
                selector=_group(window.selector),
                fallback=_group(window.fallback),
                shadow_decisions=window.shadow,
                shadow_agreement_rate=(
                    round(window.agreed / window.shadow, 4) if window.shadow else None
                ),
            )

    @property
    def total(self) -> int:
        return sum(self.by_source.values())

    def shadow_agreement_rate(self) -> float | None:
        shadow = sum(w.shadow for w in self._routes.values())
        agreed = sum(w.agreed for w in self._routes.values())
        return round(agreed / shadow, 4) if shadow else None


def _group(samples: deque[tuple[bool, float]]) -> GroupStats:
    if not samples:
        return GroupStats(0, None, None)
    ok = sum(1 for success, _ in samples if success)
    latencies = sorted(ms for _, ms in samples)
    return GroupStats(len(samples), round(ok / len(samples), 4), latencies[len(latencies) // 2])
