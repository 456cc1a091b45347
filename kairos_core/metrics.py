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
  samples are capped (``MAX_SAMPLES_PER_SECOND``, reservoir sampling) and kept only while the
  60-second window needs them: an older second keeps its point (p50, p99, overhead p50) and drops
  its samples, so memory is bounded whatever the traffic, and small.

Observation stays off the response path: :meth:`Metrics.observe` only appends the sample (with
its time) to a pending list; :meth:`Metrics.fold` moves pending samples into the Prometheus
series (one increment per label set and fold, not per request) and the rolling windows. The
runtime folds once a second, ``MAX_PENDING`` (512) waiting samples fold at once, and every read
folds first, so what is read is always complete.
Reads return frozen dataclasses; the admin API maps them to its wire models.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

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
MAX_PENDING = 512
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


AttemptOutcome = Literal[
    "success", "failure_status", "connect", "timeout", "reset", "invalid", "cancelled"
]
"""How an attempt ended (the ``outcome`` label); every one but ``success`` and ``cancelled`` is a
failure of the backend."""


class AttemptSample(NamedTuple):
    """One attempt's backend, outcome and time to its response head (a named tuple, like
    :class:`RequestSample`: one or more per request, built fast)."""

    backend: str
    outcome: AttemptOutcome
    seconds: float


class RequestSample(NamedTuple):
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
    point: tuple[float, float, float] | None = None  # (p50, p99, overhead p50) once compacted

    def summary(self) -> tuple[float, float, float]:
        """This second's latency p50 and p99 and overhead p50, in ms."""
        if self.point is not None:
            return self.point
        latency = percentiles(self.latencies_ms)
        return latency.p50, latency.p99, percentiles(self.overheads_ms).p50

    def compact(self) -> None:
        """Keep the point, drop the samples (the second has left the 60-second window)."""
        self.point = self.summary()
        self.latencies_ms = []
        self.overheads_ms = []

    def add(
        self, latencies_ms: list[float], overheads_ms: list[float], errors: int, rng: random.Random
    ) -> None:
        """Count a batch of requests and keep their samples (reservoir sampling past the cap:
        every request of the second equally likely to be kept)."""
        self.requests += len(latencies_ms)
        self.errors += errors
        if self.point is not None:  # a very late sample: counted, its latency no longer kept
            return
        kept, overheads = self.latencies_ms, self.overheads_ms
        room = MAX_SAMPLES_PER_SECOND - len(kept)
        if room >= len(latencies_ms):
            kept.extend(latencies_ms)
            overheads.extend(overheads_ms)
            self.seen += len(latencies_ms)
            return
        kept.extend(latencies_ms[:room])
        overheads.extend(overheads_ms[:room])
        self.seen += max(room, 0)
        random_ = rng.random
        for index in range(max(room, 0), len(latencies_ms)):
            self.seen += 1
            slot = int(random_() * self.seen)  # random() is C; randrange is not
            if slot < MAX_SAMPLES_PER_SECOND:
                kept[slot] = latencies_ms[index]
                overheads[slot] = overheads_ms[index]


class _Window:
    """Per-second buckets for the last ``size`` seconds."""

    def __init__(self, size: int) -> None:
        self._seconds: deque[_Second] = deque(maxlen=size)

    def current(self, now: float) -> _Second:
        return self.at(int(now))

    def at(self, second: int) -> _Second:
        """The bucket of ``second``; a second older than the newest (a late sample from another
        process) joins its own bucket when still kept, else the newest."""
        seconds = self._seconds
        if not seconds or seconds[-1].t < second:
            seconds.append(_Second(second))
            return seconds[-1]
        for bucket in reversed(seconds):
            if bucket.t <= second:
                return bucket if bucket.t == second else seconds[-1]
        return seconds[-1]

    def last(self, now: float, seconds: int) -> list[_Second]:
        horizon = int(now) - seconds
        return [s for s in self._seconds if s.t > horizon]

    def compact(self, now: float, keep_s: int) -> None:
        """Compact every second older than ``keep_s`` (newest first, stopping at the first
        already compacted: each second is compacted once)."""
        horizon = int(now) - keep_s
        for bucket in reversed(self._seconds):
            if bucket.t < horizon:
                if bucket.point is not None:
                    return
                bucket.compact()

    def closed(self, now: float, seconds: int) -> list[_Second]:
        """Complete seconds only (the current one is still filling)."""
        current = int(now)
        return [s for s in self.last(now, seconds + 1) if s.t < current]


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Milliseconds."""

    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0


@dataclass(frozen=True, slots=True)
class Rates:
    """Requests per second over the last complete 1, 10 and 60 seconds."""

    per_1s: float = 0.0
    per_10s: float = 0.0
    per_60s: float = 0.0


@dataclass(frozen=True, slots=True)
class Summary:
    """The gateway as a whole: totals since start, rates, and the last 60 s."""

    requests_total: int
    errors_total: int
    requests_per_second: Rates
    error_rate: float
    latency_ms: Percentiles
    overhead_ms: Percentiles
    status_classes: Mapping[str, int]
    rate_limited_total: int
    retries_total: int
    retry_budget_exhausted_total: int


@dataclass(frozen=True, slots=True)
class RouteSummary:
    route: str
    requests_total: int
    errors_total: int
    requests_per_second: Rates
    error_rate: float
    latency_ms: Percentiles
    status_classes: Mapping[str, int]
    rate_limited_total: int
    retries_total: int


@dataclass(frozen=True, slots=True)
class BackendSummary:
    """Attempts sent to one backend (``failures_total``: every outcome but success/cancelled)."""

    backend: str
    requests_total: int
    failures_total: int
    latency_ms: Percentiles


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One complete second."""

    t: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    overhead_p50_ms: float
    in_flight: int


_STATUS_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


def _observe_all(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, each bucket and the sum incremented once.

    prometheus-client has no bulk observe; this does what its ``Histogram.observe`` does (one
    bucket per value, the first whose upper bound holds it, plus the sum), a batch at a time,
    through the same value objects (so it works in its multiprocess mode too).
    """
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    histogram._sum.inc(sum(values))
    for index, count in enumerate(counts):
        if count:
            histogram._buckets[index].inc(count)


def percentiles(values: Iterable[float]) -> Percentiles:
    ordered = sorted(values)
    if not ordered:
        return Percentiles()

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return Percentiles(at(0.50), at(0.90), at(0.99))


@dataclass(slots=True)
class _Group:
    """The requests of one route in one second, gathered by :meth:`Metrics.fold`."""

    latencies_ms: list[float] = field(default_factory=list)
    overheads_ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    retries: int = 0
    budget_exhausted: int = 0
    rate_limited: int = 0


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
        self.workers = Gauge(
            "kairos_workers",
            "Processes serving the proxy port (server.workers, less any that died)",
            registry=r,
        )
        self.workers.set(1)
        self.tasks = Gauge(
            "kairos_event_loop_tasks", "asyncio tasks alive in the gateway's event loop", registry=r
        )
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
        self._pending: list[tuple[float, RequestSample]] = []
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._window = _Window(HISTORY_SECONDS + 2)
        self._routes: dict[str, _Totals] = {}
        self._route_windows: dict[str, _Window] = {}
        self._backends: dict[str, list[int]] = {}  # backend → [attempts, failures]
        self._backend_windows: dict[str, _Window] = {}

    # --- recording --------------------------------------------------------------------------

    def observe(self, sample: RequestSample) -> None:
        """Note one finished request; counted at the next :meth:`fold` (at once when
        ``MAX_PENDING`` are waiting, so memory stays bounded whatever the traffic)."""
        self._pending.append((self._clock(), sample))
        if len(self._pending) >= MAX_PENDING:
            self.fold()

    def observe_at(self, at: float, sample: RequestSample) -> None:
        """:meth:`observe` for a request that finished at ``at`` (wall-clock seconds) in another
        process: a multi-worker instance's admin process counts its workers' requests."""
        self._pending.append((at, sample))
        if len(self._pending) >= MAX_PENDING:
            self.fold()

    def fold(self) -> None:
        """Move every pending sample into the Prometheus series and the rolling windows.

        Samples are grouped first (by label set, and by route and second for the windows), so
        each series and each window bucket is touched once per group, not once per request.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        durations: dict[tuple[str, str, int], list[float]] = {}
        overheads: list[float] = []
        groups: dict[tuple[str, int], _Group] = {}
        attempts: dict[tuple[str, int], list[AttemptSample]] = {}
        retries: dict[tuple[str, str], int] = {}
        for now, sample in pending:
            route = sample.route or "none"
            status = sample.status
            seconds = sample.duration_s
            key = (route, sample.method, status)
            in_key = durations.get(key)
            if in_key is None:
                durations[key] = [seconds]
            else:
                in_key.append(seconds)
            overhead_s = sample.overhead_s if sample.overhead_s > 0 else 0.0
            overheads.append(overhead_s)
            second = int(now)
            group = groups.get((route, second))
            if group is None:
                group = groups[(route, second)] = _Group()
            group.latencies_ms.append(seconds * 1000)
            group.overheads_ms.append(overhead_s * 1000)
            group.statuses.append(status)
            if sample.retries:
                group.retries += len(sample.retries)
                for reason in sample.retries:
                    retries[(route, reason)] = retries.get((route, reason), 0) + 1
            group.budget_exhausted += sample.retry_budget_exhausted
            group.rate_limited += sample.rate_limited
            for attempt in sample.attempts:
                by_second = attempts.get((attempt.backend, second))
                if by_second is None:
                    attempts[(attempt.backend, second)] = [attempt]
                else:
                    by_second.append(attempt)
        for (route, second), group in groups.items():
            self._fold_group(route, second, group)
        for key, values in durations.items():
            counter, histogram = self._children_for(key)
            counter.inc(len(values))
            _observe_all(histogram, values)
        _observe_all(self.overhead, overheads)
        for (backend, second), tries in attempts.items():
            self._fold_attempts(backend, second, tries)
        for (route, reason), count in retries.items():
            self.retries.labels(route, reason).inc(count)

    def _fold_group(self, route: str, second: int, group: _Group) -> None:
        """One route's requests of one second: totals, windows and the per-route counters."""
        classes: dict[str, int] = {}
        errors = 0
        for status in group.statuses:
            errors += status >= 500
            name = _STATUS_CLASS[status // 100] if status < 600 else f"{status // 100}xx"
            classes[name] = classes.get(name, 0) + 1
        route_totals = self._routes.get(route)
        if route_totals is None:
            route_totals = self._routes[route] = _Totals()
        for kept in (self.totals, route_totals):
            kept.requests += len(group.statuses)
            kept.errors += errors
            kept.retries += group.retries
            kept.budget_exhausted += group.budget_exhausted
            kept.rate_limited += group.rate_limited
            for name, count in classes.items():
                kept.status_classes[name] = kept.status_classes.get(name, 0) + count
        latencies, overheads = group.latencies_ms, group.overheads_ms
        self._window.at(second).add(latencies, overheads, errors, self._rng)
        route_window = self._route_windows.get(route)
        if route_window is None:
            route_window = self._route_windows[route] = _Window(WINDOW_SECONDS + 2)
        route_window.at(second).add(latencies, overheads, errors, self._rng)
        if group.budget_exhausted:
            self.budget_exhausted.labels(route).inc(group.budget_exhausted)
        if group.rate_limited:
            self.rate_limited.labels(route).inc(group.rate_limited)

    def _fold_attempts(self, backend: str, second: int, tries: list[AttemptSample]) -> None:
        """One backend's attempts of one second: counters, histogram and its window."""
        by_outcome: dict[str, list[float]] = {}
        for attempt in tries:
            times = by_outcome.get(attempt.outcome)
            if times is None:
                by_outcome[attempt.outcome] = [attempt.seconds]
            else:
                times.append(attempt.seconds)
        failures = 0
        for outcome, times in by_outcome.items():
            self.upstream.labels(backend, outcome).inc(len(times))
            _observe_all(self.upstream_duration.labels(backend), times)
            if outcome not in ("success", "cancelled"):
                failures += len(times)
        counts = self._backends.get(backend)
        if counts is None:
            counts = self._backends[backend] = [0, 0]
        counts[0] += len(tries)
        counts[1] += failures
        window = self._backend_windows.get(backend)
        if window is None:
            window = self._backend_windows[backend] = _Window(WINDOW_SECONDS + 2)
        latencies = [attempt.seconds * 1000 for attempt in tries]
        window.at(second).add(latencies, [0.0] * len(latencies), 0, self._rng)

    def _children_for(self, key: tuple[str, str, int]) -> tuple[Any, Any]:
        children = self._children.get(key)
        if children is None:
            route, method, status = key
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route),
            )
        return children

    def ai_decision(self, route: str, source: str, seconds: float) -> None:
        self.ai_decisions.labels(route, source).inc()
        self.ai_duration.observe(seconds)

    def transition(self, backend: str, old: str, new: str) -> None:
        self.circuit_transitions.labels(backend, old, new).inc()

    def reload(self, result: str) -> None:
        self.reloads.labels(result).inc()

    def tick(self, in_flight: int, tasks: int = 0) -> None:
        """Once a second: fold, and note in-flight for the history point of the second filling.

        ``tasks`` (the event loop's live asyncio tasks) is served as a gauge only: a task leak
        shows as a count that grows while traffic is steady.
        """
        self.fold()
        now = self._clock()
        self._window.current(now).in_flight = in_flight
        self._window.compact(now, WINDOW_SECONDS + 2)
        self.in_flight.set(in_flight)
        self.tasks.set(tasks)

    def set_backend_gauges(self, states: Iterable[tuple[str, int, bool]]) -> None:
        """Per backend: breaker state code (0 closed, 1 open, 2 half-open) and health."""
        for backend, state, healthy in states:
            self.circuit_state.labels(backend).set(state)
            self.backend_healthy.labels(backend).set(1 if healthy else 0)

    def prometheus(self) -> bytes:
        self.fold()
        return generate_latest(self.registry)

    # --- reading ----------------------------------------------------------------------------

    def rates(self, window: _Window | None = None) -> Rates:
        self.fold()
        now = self._clock()
        source = window or self._window
        per = [
            round(sum(s.requests for s in source.closed(now, seconds)) / seconds, 3)
            for seconds in (1, 10, 60)
        ]
        return Rates(*per)

    def summary(self) -> Summary:
        """The gateway-wide part of the snapshot."""
        self.fold()
        recent = self._window.last(self._clock(), WINDOW_SECONDS)
        requests = sum(s.requests for s in recent)
        totals = self.totals
        return Summary(
            requests_total=totals.requests,
            errors_total=totals.errors,
            requests_per_second=self.rates(),
            error_rate=round(sum(s.errors for s in recent) / requests, 4) if requests else 0.0,
            latency_ms=percentiles(v for s in recent for v in s.latencies_ms),
            overhead_ms=percentiles(v for s in recent for v in s.overheads_ms),
            status_classes=dict(totals.status_classes),
            rate_limited_total=totals.rate_limited,
            retries_total=totals.retries,
            retry_budget_exhausted_total=totals.budget_exhausted,
        )

    def route_summary(self, route: str) -> RouteSummary:
        self.fold()
        totals = self._routes.get(route, _Totals())
        window = self._route_windows.get(route)
        recent = window.last(self._clock(), WINDOW_SECONDS) if window else []
        requests = sum(s.requests for s in recent)
        return RouteSummary(
            route=route,
            requests_total=totals.requests,
            errors_total=totals.errors,
            requests_per_second=self.rates(window) if window else Rates(),
            error_rate=round(sum(s.errors for s in recent) / requests, 4) if requests else 0.0,
            latency_ms=percentiles(v for s in recent for v in s.latencies_ms),
            status_classes=dict(totals.status_classes),
            rate_limited_total=totals.rate_limited,
            retries_total=totals.retries,
        )

    def backend_summary(self, backend: str) -> BackendSummary:
        self.fold()
        attempts, failures = self._backends.get(backend, [0, 0])
        window = self._backend_windows.get(backend)
        recent = window.last(self._clock(), WINDOW_SECONDS) if window else []
        return BackendSummary(
            backend=backend,
            requests_total=attempts,
            failures_total=failures,
            latency_ms=percentiles(v for s in recent for v in s.latencies_ms),
        )

    def history(self, seconds: int) -> list[HistoryPoint]:
        """One point per complete second, oldest first, for up to ``HISTORY_SECONDS``."""
        self.fold()
        seconds = max(1, min(seconds, HISTORY_SECONDS))
        points = []
        for s in self._window.closed(self._clock(), seconds):
            p50, p99, overhead_p50 = s.summary()
            points.append(
                HistoryPoint(
                    t=float(s.t),
                    requests=s.requests,
                    errors=s.errors,
                    p50_ms=p50,
                    p99_ms=p99,
                    overhead_p50_ms=overhead_p50,
                    in_flight=s.in_flight,
                )
            )
        return points
