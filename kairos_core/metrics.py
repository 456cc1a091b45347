"""Metrics: Prometheus series (DESIGN.md §7 names) and bounded rolling windows for the JSON API.

Counting rules:

- one ``kairos_requests_total{route,method,code}`` per proxied request, after its response
  (``route`` is the route id, ``none`` when nothing matched); gateway-made answers count with
  their own status (404, 429, 503...);
- an **error** is a response with status ≥ 500 (gateway-made or upstream); 4xx are the client's;
- ``kairos_upstream_requests_total{backend,outcome}`` counts attempts (a retried request has
  several): outcome ``success``, ``failure_status`` (a ``failure_status_codes`` answer),
  ``connect``, ``timeout``, ``reset``, ``invalid`` or ``cancelled``;
- latency is the whole request (body included); gateway overhead is the time to the response
  head minus the time spent waiting on upstreams, i.e. what Kairos itself added;
- rates are over the last 1, 10 and 60 seconds; percentiles and error rates over the last 60 s;
  history keeps one point per second for ``HISTORY_SECONDS`` (20 minutes). Per-second latency
  samples are capped (``MAX_SAMPLES_PER_SECOND``, reservoir sampling), so memory is bounded
  whatever the traffic.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series double the output and no dashboard reads them

HISTORY_SECONDS = 1200
WINDOW_SECONDS = 60
MAX_SAMPLES_PER_SECOND = 1000
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


AttemptOutcome = Literal[
    "success", "failure_status", "connect", "timeout", "reset", "invalid", "cancelled"
]
"""How an attempt ended (the ``outcome`` label); every one but ``success`` and ``cancelled`` is a
failure of the backend."""


@dataclass(frozen=True, slots=True)
class AttemptSample:
    backend: str
    outcome: AttemptOutcome
    seconds: float


@dataclass(frozen=True, slots=True)
class RequestSample:
    """What metrics need from one finished request."""

    route: str | None
    method: str
    status: int
    duration_s: float
    overhead_s: float
    attempts: tuple[AttemptSample, ...] = ()
    retries: tuple[str, ...] = ()
    retry_budget_exhausted: bool = False
    rate_limited: bool = False


@dataclass(slots=True)
class _Second:
    """Counts and capped latency samples of one wall-clock second."""

    t: int
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    overheads_ms: list[float] = field(default_factory=list)
    seen: int = 0
    in_flight: int = 0

    def add(self, latency_ms: float, overhead_ms: float, error: bool, rng: random.Random) -> None:
        self.requests += 1
        self.errors += error
        self.seen += 1
        if len(self.latencies_ms) < MAX_SAMPLES_PER_SECOND:
            self.latencies_ms.append(latency_ms)
            self.overheads_ms.append(overhead_ms)
            return
        slot = rng.randrange(self.seen)  # reservoir: every request equally likely to be kept
        if slot < MAX_SAMPLES_PER_SECOND:
            self.latencies_ms[slot] = latency_ms
            self.overheads_ms[slot] = overhead_ms


class _Window:
    """Per-second buckets for the last ``size`` seconds."""

    def __init__(self, size: int) -> None:
        self._seconds: deque[_Second] = deque(maxlen=size)

    def current(self, now: float) -> _Second:
        second = int(now)
        if not self._seconds or self._seconds[-1].t != second:
            self._seconds.append(_Second(second))
        return self._seconds[-1]

    def last(self, now: float, seconds: int) -> list[_Second]:
        horizon = int(now) - seconds
        return [s for s in self._seconds if s.t > horizon]

    def closed(self, now: float, seconds: int) -> list[_Second]:
        """Complete seconds only (the current one is still filling)."""
        current = int(now)
        return [s for s in self.last(now, seconds + 1) if s.t < current]


def percentiles(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99)}


@dataclass(slots=True)
class _Totals:
    requests: int = 0
    errors: int = 0
    rate_limited: int = 0
    retries: int = 0
    budget_exhausted: int = 0
    status_classes: dict[str, int] = field(default_factory=dict)


class Metrics:
    """Prometheus series on a private registry, plus the rolling windows behind the JSON API."""

    def __init__(self, version: str, clock: Any = time.time) -> None:
        self._clock = clock
        self._rng = random.Random(0)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kairos_requests_total", "Proxied requests", ["route", "method", "code"], registry=r
        )
        self.duration = Histogram(
            "kairos_request_duration_seconds",
            "Request duration, body included",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "kairos_gateway_overhead_seconds",
            "Time Kairos added before the response head",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream = Counter(
            "kairos_upstream_requests_total",
            "Upstream attempts",
            ["backend", "outcome"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "kairos_upstream_duration_seconds",
            "Upstream time to response head",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter("kairos_retries_total", "Retries", ["route", "reason"], registry=r)
        self.budget_exhausted = Counter(
            "kairos_retry_budget_exhausted_total",
            "Retries refused by the retry budget",
            ["route"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "kairos_circuit_state",
            "Breaker state: 0 closed, 1 open, 2 half-open",
            ["backend"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "kairos_circuit_transitions_total",
            "Breaker transitions",
            ["backend", "from_state", "to_state"],
            registry=r,
        )
        self.rate_limited = Counter(
            "kairos_rate_limited_total", "Requests refused by a rate limit", ["route"], registry=r
        )
        self.backend_healthy = Gauge(
            "kairos_backend_healthy",
            "1 when the backend passes its health check",
            ["backend"],
            registry=r,
        )
        self.in_flight = Gauge("kairos_in_flight_requests", "Requests in flight", registry=r)
        self.ai_decisions = Counter(
            "kairos_ai_decisions_total", "AI routing decisions", ["route", "source"], registry=r
        )
        self.ai_duration = Histogram(
            "kairos_ai_decision_duration_seconds", "AI decision latency", registry=r
        )
        self.reloads = Counter(
            "kairos_config_reloads_total", "Config reloads", ["result"], registry=r
        )
        Gauge("kairos_build_info", "Kairos version", ["version"], registry=r).labels(version).set(1)

        self.totals = _Totals()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._window = _Window(HISTORY_SECONDS + 2)
        self._routes: dict[str, _Totals] = {}
        self._route_windows: dict[str, _Window] = {}
        self._backends: dict[str, list[int]] = {}  # backend → [attempts, failures]
        self._backend_windows: dict[str, _Window] = {}

    # --- recording --------------------------------------------------------------------------

    def observe(self, sample: RequestSample) -> None:
        now = self._clock()
        route = sample.route or "none"
        error = sample.status >= 500
        status_class = f"{sample.status // 100}xx"
        latency_ms = sample.duration_s * 1000
        overhead_ms = max(sample.overhead_s, 0.0) * 1000

        key = (route, sample.method, sample.status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, sample.method, str(sample.status)),
                self.duration.labels(route),
            )
        children[0].inc()
        children[1].observe(sample.duration_s)
        self.overhead.observe(max(sample.overhead_s, 0.0))
        for totals in (self.totals, self._routes.setdefault(route, _Totals())):
            totals.requests += 1
            totals.errors += error
            totals.status_classes[status_class] = totals.status_classes.get(status_class, 0) + 1
            totals.retries += len(sample.retries)
            totals.rate_limited += sample.rate_limited
            totals.budget_exhausted += sample.retry_budget_exhausted
        self._window.current(now).add(latency_ms, overhead_ms, error, self._rng)
        route_window = self._route_windows.setdefault(route, _Window(WINDOW_SECONDS + 2))
        route_window.current(now).add(latency_ms, overhead_ms, error, self._rng)

        for reason in sample.retries:
            self.retries.labels(route, reason).inc()
        if sample.retry_budget_exhausted:
            self.budget_exhausted.labels(route).inc()
        if sample.rate_limited:
            self.rate_limited.labels(route).inc()
        for attempt in sample.attempts:
            self.upstream.labels(attempt.backend, attempt.outcome).inc()
            self.upstream_duration.labels(attempt.backend).observe(attempt.seconds)
            counts = self._backends.setdefault(attempt.backend, [0, 0])
            counts[0] += 1
            counts[1] += attempt.outcome not in ("success", "cancelled")
            window = self._backend_windows.setdefault(attempt.backend, _Window(WINDOW_SECONDS + 2))
            window.current(now).add(attempt.seconds * 1000, 0.0, False, self._rng)

    def ai_decision(self, route: str, source: str, seconds: float) -> None:
        self.ai_decisions.labels(route, source).inc()
        self.ai_duration.observe(seconds)

    def transition(self, backend: str, old: str, new: str) -> None:
        self.circuit_transitions.labels(backend, old, new).inc()

    def reload(self, result: str) -> None:
        self.reloads.labels(result).inc()

    def tick(self, in_flight: int) -> None:
        """Once a second: note in-flight for the history point of the second now filling."""
        self._window.current(self._clock()).in_flight = in_flight
        self.in_flight.set(in_flight)

    def set_backend_gauges(self, states: Iterable[tuple[str, int, bool]]) -> None:
        """Per backend: breaker state code (0 closed, 1 open, 2 half-open) and health."""
        for backend, state, healthy in states:
            self.circuit_state.labels(backend).set(state)
            self.backend_healthy.labels(backend).set(1 if healthy else 0)

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)

    # --- reading ----------------------------------------------------------------------------

    def rates(self, window: _Window | None = None) -> dict[str, float]:
        now = self._clock()
        source = window or self._window
        out = {}
        for name, seconds in (("per_1s", 1), ("per_10s", 10), ("per_60s", 60)):
            total = sum(s.requests for s in source.closed(now, seconds))
            out[name] = round(total / seconds, 3)
        return out

    def summary(self) -> dict[str, Any]:
        """The gateway-wide part of the JSON snapshot (wire names of MetricsSnapshot)."""
        now = self._clock()
        recent = self._window.last(now, WINDOW_SECONDS)
        requests = sum(s.requests for s in recent)
        totals = self.totals
        return {
            "requests_total": totals.requests,
            "errors_total": totals.errors,
            "requests_per_second": self.rates(),
            "error_rate": round(sum(s.errors for s in recent) / requests, 4) if requests else 0.0,
            "latency_ms": percentiles(v for s in recent for v in s.latencies_ms),
            "overhead_ms": percentiles(v for s in recent for v in s.overheads_ms),
            "status_classes": dict(totals.status_classes),
            "rate_limited_total": totals.rate_limited,
            "retries_total": totals.retries,
            "retry_budget_exhausted_total": totals.budget_exhausted,
        }

    def route_summary(self, route: str) -> dict[str, Any]:
        totals = self._routes.get(route, _Totals())
        window = self._route_windows.get(route)
        recent = window.last(self._clock(), WINDOW_SECONDS) if window else []
        requests = sum(s.requests for s in recent)
        return {
            "route": route,
            "requests_total": totals.requests,
            "errors_total": totals.errors,
            "requests_per_second": self.rates(window) if window else {},
            "error_rate": round(sum(s.errors for s in recent) / requests, 4) if requests else 0.0,
            "latency_ms": percentiles(v for s in recent for v in s.latencies_ms),
            "status_classes": dict(totals.status_classes),
            "rate_limited_total": totals.rate_limited,
            "retries_total": totals.retries,
        }

    def backend_summary(self, backend: str) -> dict[str, Any]:
        attempts, failures = self._backends.get(backend, [0, 0])
        window = self._backend_windows.get(backend)
        recent = window.last(self._clock(), WINDOW_SECONDS) if window else []
        return {
            "backend": backend,
            "requests_total": attempts,
            "failures_total": failures,
            "latency_ms": percentiles(v for s in recent for v in s.latencies_ms),
        }

    def history(self, seconds: int) -> list[dict[str, Any]]:
        """One point per complete second, oldest first, for up to ``HISTORY_SECONDS``."""
        seconds = max(1, min(seconds, HISTORY_SECONDS))
        points = []
        for s in self._window.closed(self._clock(), seconds):
            ordered = percentiles(s.latencies_ms)
            points.append(
                {
                    "t": float(s.t),
                    "requests": s.requests,
                    "errors": s.errors,
                    "p50_ms": ordered["p50"],
                    "p99_ms": ordered["p99"],
                    "overhead_p50_ms": percentiles(s.overheads_ms)["p50"],
                    "in_flight": s.in_flight,
                }
            )
        return points
