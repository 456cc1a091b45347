"""Metrics: each counting rule of the kairos_core.metrics docstring, pinned (DESIGN.md §7).

Unit tests on :class:`Metrics` with a fake wall clock, so "the last second", "the last 10 s" and
"the history" are exact. The Prometheus side is read back through prometheus-client's own parser.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kairos_core.metrics import (
    HISTORY_SECONDS,
    MAX_SAMPLES_PER_SECOND,
    WINDOW_SECONDS,
    AttemptSample,
    Metrics,
    Percentiles,
    Rates,
    RequestSample,
)

START = 1_700_000_000.25  # a quarter into a wall-clock second
BACKEND = "http://127.0.0.1:8080"
OTHER = "http://127.0.0.1:8081"


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> Metrics:
    return Metrics("9.9.9", clock=clock)


def sample(
    status: int = 200,
    *,
    route: str | None = "users",
    method: str = "GET",
    duration_s: float = 0.010,
    overhead_s: float = 0.001,
    attempts: tuple[AttemptSample, ...] = (),
    retries: tuple[str, ...] = (),
    retry_budget_exhausted: bool = False,
    rate_limited: bool = False,
) -> RequestSample:
    return RequestSample(
        route=route,
        method=method,
        status=status,
        duration_s=duration_s,
        overhead_s=overhead_s,
        attempts=attempts,
        retries=retries,
        retry_budget_exhausted=retry_budget_exhausted,
        rate_limited=rate_limited,
    )


def observe_many(metrics: Metrics, samples: Iterable[RequestSample]) -> None:
    for one in samples:
        metrics.observe(one)


def prometheus_samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``(sample name, labels) → value`` for every sample of the exposition."""
    text = metrics.prometheus().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return prometheus_samples(metrics).get((name, frozenset(labels.items())))


# --- counts ----------------------------------------------------------------------------------


def test_every_request_is_counted_once_by_route_method_and_code(metrics: Metrics) -> None:
    observe_many(metrics, [sample(200)] * 4 + [sample(201, method="POST"), sample(503)])

    assert value(metrics, "kairos_requests_total", route="users", method="GET", code="200") == 4
    assert value(metrics, "kairos_requests_total", route="users", method="POST", code="201") == 1
    assert value(metrics, "kairos_requests_total", route="users", method="GET", code="503") == 1
    assert value(metrics, "kairos_request_duration_seconds_count", route="users") == 6
    assert value(metrics, "kairos_gateway_overhead_seconds_count") == 6
    assert metrics.summary().requests_total == 6


def test_a_request_that_matched_no_route_is_labelled_none(metrics: Metrics) -> None:
    metrics.observe(sample(404, route=None))

    assert value(metrics, "kairos_requests_total", route="none", method="GET", code="404") == 1


def test_an_error_is_a_status_of_500_or_more_and_4xx_are_the_clients(metrics: Metrics) -> None:
    statuses = [200, 204, 301, 400, 404, 429, 499, 500, 502, 503, 504, 599]
    observe_many(metrics, [sample(s) for s in statuses])

    summary = metrics.summary()
    assert summary.errors_total == 5
    assert summary.error_rate == pytest.approx(5 / len(statuses), abs=1e-4)
    assert metrics.route_summary("users").errors_total == 5


def test_status_classes_count_each_class(metrics: Metrics) -> None:
    observe_many(metrics, [sample(s) for s in (200, 201, 302, 404, 429, 429, 500, 503)])

    assert metrics.summary().status_classes == {"2xx": 2, "3xx": 1, "4xx": 3, "5xx": 2}


def test_retries_budget_and_rate_limits_are_counted(metrics: Metrics) -> None:
    metrics.observe(sample(503, retries=("status_503", "status_503")))
    metrics.observe(sample(503, retries=("connect",), retry_budget_exhausted=True))
    metrics.observe(sample(429, rate_limited=True))

    assert value(metrics, "kairos_retries_total", route="users", reason="status_503") == 2
    assert value(metrics, "kairos_retries_total", route="users", reason="connect") == 1
    assert value(metrics, "kairos_retry_budget_exhausted_total", route="users") == 1
    assert value(metrics, "kairos_rate_limited_total", route="users") == 1
    summary = metrics.summary()
    assert summary.retries_total == 3
    assert summary.retry_budget_exhausted_total == 1
    assert summary.rate_limited_total == 1


def test_upstream_attempts_are_counted_per_backend_and_outcome(metrics: Metrics) -> None:
    metrics.observe(
        sample(
            200,
            attempts=(
                AttemptSample(BACKEND, "failure_status", 0.02),
                AttemptSample(OTHER, "success", 0.01),
            ),
            retries=("status_503",),
        )
    )

    assert (
        value(metrics, "kairos_upstream_requests_total", backend=BACKEND, outcome="failure_status")
        == 1
    )
    assert value(metrics, "kairos_upstream_requests_total", backend=OTHER, outcome="success") == 1
    assert value(metrics, "kairos_upstream_duration_seconds_count", backend=BACKEND) == 1
    assert value(metrics, "kairos_upstream_duration_seconds_count", backend=OTHER) == 1


# --- rolling windows ------------------------------------------------------------------------


def test_rates_cover_the_last_complete_1_10_and_60_seconds(
    metrics: Metrics, clock: FakeClock
) -> None:
    # 61 complete seconds: second k (0 = oldest) gets k + 1 requests
    for k in range(61):
        observe_many(metrics, [sample()] * (k + 1))
        clock.advance(1)
    observe_many(metrics, [sample()] * 1000)  # the second still filling counts in none of them

    rates = metrics.rates()
    assert rates.per_1s == 61
    assert rates.per_10s == pytest.approx(sum(range(52, 62)) / 10, abs=1e-3)
    assert rates.per_60s == pytest.approx(sum(range(2, 62)) / 60, abs=1e-3)
    assert metrics.summary().requests_per_second == rates


def test_rates_fall_to_zero_once_traffic_stops(metrics: Metrics, clock: FakeClock) -> None:
    observe_many(metrics, [sample()] * 30)
    clock.advance(1)
    assert metrics.rates().per_1s == 30

    clock.advance(WINDOW_SECONDS + 1)

    assert metrics.rates() == Rates(0.0, 0.0, 0.0)
    assert metrics.summary().requests_total == 30  # totals never roll


def test_percentiles_of_latency_and_overhead(metrics: Metrics) -> None:
    observe_many(
        metrics,
        [sample(duration_s=ms / 1000, overhead_s=ms / 10_000) for ms in range(1, 1001)],
    )

    summary = metrics.summary()
    for name, scale in (("latency_ms", 1.0), ("overhead_ms", 0.1)):
        got = getattr(summary, name)
        assert got.p50 == pytest.approx(500 * scale, abs=1.01 * scale), name
        assert got.p90 == pytest.approx(900 * scale, abs=1.01 * scale), name
        assert got.p99 == pytest.approx(990 * scale, abs=1.01 * scale), name


def test_percentiles_and_error_rate_forget_samples_older_than_60_seconds(
    metrics: Metrics, clock: FakeClock
) -> None:
    observe_many(metrics, [sample(503, duration_s=5.0)] * 50)
    clock.advance(WINDOW_SECONDS + 1)
    observe_many(metrics, [sample(200, duration_s=0.002)] * 50)

    summary = metrics.summary()
    assert summary.latency_ms == Percentiles(2.0, 2.0, 2.0)
    assert summary.error_rate == 0.0
    assert summary.errors_total == 50


def test_no_traffic_gives_zero_percentiles_and_error_rate(metrics: Metrics) -> None:
    summary = metrics.summary()

    assert summary.latency_ms == Percentiles()
    assert summary.error_rate == 0.0
    assert summary.status_classes == {}


# --- history --------------------------------------------------------------------------------


def test_history_has_one_point_per_closed_second(metrics: Metrics, clock: FakeClock) -> None:
    first = int(clock.now)
    for requests in (3, 0, 5):
        metrics.tick(in_flight=requests)
        observe_many(metrics, [sample(503)] + [sample()] * (requests - 1) if requests else [])
        clock.advance(1)
    metrics.observe(sample())  # the current second is not in the history yet

    points = metrics.history(60)
    assert [p.t for p in points] == [first, first + 1, first + 2]
    assert [p.requests for p in points] == [3, 0, 5]
    assert [p.errors for p in points] == [1, 0, 1]
    assert [p.in_flight for p in points] == [3, 0, 5]

    clock.advance(1)
    assert len(metrics.history(60)) == 4


def test_history_returns_only_the_seconds_asked_for(metrics: Metrics, clock: FakeClock) -> None:
    for _ in range(30):
        metrics.tick(0)
        clock.advance(1)

    points = metrics.history(10)

    assert len(points) == 10
    assert points[-1].t == int(clock.now) - 1


def test_history_is_capped_at_history_seconds(metrics: Metrics, clock: FakeClock) -> None:
    last_second = int(clock.now) + HISTORY_SECONDS + 99
    for _ in range(HISTORY_SECONDS + 100):
        metrics.tick(0)
        metrics.observe(sample())
        clock.advance(1)

    points = metrics.history(HISTORY_SECONDS * 10)

    assert len(points) == HISTORY_SECONDS
    assert points[-1].t == last_second
    assert [p.t for p in points] == list(range(last_second - HISTORY_SECONDS + 1, last_second + 1))
    assert len(metrics._window._seconds) <= HISTORY_SECONDS + 2  # memory bounded too


def test_a_second_past_the_window_keeps_its_point_and_drops_its_samples(
    metrics: Metrics, clock: FakeClock
) -> None:
    first = int(clock.now)
    metrics.tick(0)
    observe_many(
        metrics,
        [sample(duration_s=ms / 1000, overhead_s=ms / 10_000) for ms in range(1, 101)],
    )
    clock.advance(1)
    before = metrics.history(60)[0]

    for _ in range(WINDOW_SECONDS + 5):
        metrics.tick(0)
        clock.advance(1)

    oldest = metrics._window._seconds[0]
    assert oldest.t == first
    assert oldest.latencies_ms == [] and oldest.overheads_ms == []
    assert metrics.history(HISTORY_SECONDS)[0] == before
    assert (before.p50_ms, before.p99_ms, before.overhead_p50_ms) == (51.0, 100.0, 5.1)
    recent = metrics._window._seconds[-3]
    assert recent.point is None  # still inside the window: samples kept


# --- bounded memory -------------------------------------------------------------------------


def test_latency_samples_per_second_are_capped_by_an_unbiased_reservoir(metrics: Metrics) -> None:
    count = MAX_SAMPLES_PER_SECOND * 5
    # latencies rise through the second: keeping only the first samples would show a low p50
    observe_many(metrics, [sample(duration_s=(i + 1) / 1000) for i in range(count)])

    summary = metrics.summary()
    assert summary.requests_total == count
    assert summary.latency_ms.p50 == pytest.approx(count / 2, rel=0.15)
    assert summary.latency_ms.p99 == pytest.approx(count * 0.99, rel=0.05)
    second = metrics._window.current(metrics._clock())
    assert len(second.latencies_ms) == MAX_SAMPLES_PER_SECOND
    assert len(second.overheads_ms) == MAX_SAMPLES_PER_SECOND


def test_memory_does_not_grow_with_the_number_of_requests_in_a_second(metrics: Metrics) -> None:
    observe_many(metrics, [sample()] * MAX_SAMPLES_PER_SECOND)  # reservoir full
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        observe_many(metrics, [sample(duration_s=0.001 * (i % 97)) for i in range(20_000)])
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert after - before < 200_000, f"{after - before} bytes kept for 20,000 more requests"


# --- per route and per backend --------------------------------------------------------------


def test_route_summary_counts_only_its_route(metrics: Metrics, clock: FakeClock) -> None:
    observe_many(metrics, [sample(200, route="users")] * 3)
    metrics.observe(sample(503, route="users", retries=("status_503",)))
    metrics.observe(sample(429, route="users", rate_limited=True))
    observe_many(metrics, [sample(200, route="orders")] * 7)
    clock.advance(1)

    users = metrics.route_summary("users")
    assert users.route == "users"
    assert users.requests_total == 5
    assert users.errors_total == 1
    assert users.error_rate == pytest.approx(0.2)
    assert users.status_classes == {"2xx": 3, "5xx": 1, "4xx": 1}
    assert users.rate_limited_total == 1
    assert users.retries_total == 1
    assert users.requests_per_second.per_1s == 5
    assert users.latency_ms.p50 == pytest.approx(10.0)
    assert metrics.route_summary("orders").requests_total == 7


def test_route_summary_of_a_route_without_traffic_is_zero(metrics: Metrics) -> None:
    quiet = metrics.route_summary("quiet")

    assert quiet.requests_total == 0
    assert quiet.errors_total == 0
    assert quiet.latency_ms == Percentiles()


def test_backend_summary_counts_attempts_and_failures(metrics: Metrics) -> None:
    outcomes = ["success", "success", "failure_status", "connect", "timeout", "cancelled"]
    for outcome in outcomes:
        metrics.observe(sample(attempts=(AttemptSample(BACKEND, outcome, 0.008),)))
    metrics.observe(sample(attempts=(AttemptSample(OTHER, "success", 0.002),)))

    summary = metrics.backend_summary(BACKEND)
    assert summary.backend == BACKEND
    assert summary.requests_total == len(outcomes)
    assert summary.failures_total == 3  # failure_status, connect, timeout; never cancelled
    assert summary.latency_ms.p50 == pytest.approx(8.0)
    assert metrics.backend_summary(OTHER).requests_total == 1
    assert metrics.backend_summary("http://unknown:1").requests_total == 0


# --- gauges, transitions and reloads ----------------------------------------------------------


def test_transitions_and_reloads_appear_in_the_prometheus_output(metrics: Metrics) -> None:
    metrics.transition(BACKEND, "closed", "open")
    metrics.transition(BACKEND, "open", "half_open")
    metrics.transition(BACKEND, "half_open", "open")
    metrics.transition(BACKEND, "closed", "open")
    metrics.reload("success")
    metrics.reload("success")
    metrics.reload("failure")

    transitions = "kairos_circuit_transitions_total"
    assert value(metrics, transitions, backend=BACKEND, from_state="closed", to_state="open") == 2
    assert (
        value(metrics, transitions, backend=BACKEND, from_state="open", to_state="half_open") == 1
    )
    assert (
        value(metrics, transitions, backend=BACKEND, from_state="half_open", to_state="open") == 1
    )
    assert value(metrics, "kairos_config_reloads_total", result="success") == 2
    assert value(metrics, "kairos_config_reloads_total", result="failure") == 1


def test_gauges_for_breakers_health_in_flight_and_build(metrics: Metrics) -> None:
    metrics.set_backend_gauges([(BACKEND, 1, False), (OTHER, 2, True)])
    metrics.tick(in_flight=7, tasks=12)

    assert value(metrics, "kairos_circuit_state", backend=BACKEND) == 1
    assert value(metrics, "kairos_circuit_state", backend=OTHER) == 2
    assert value(metrics, "kairos_backend_healthy", backend=BACKEND) == 0
    assert value(metrics, "kairos_backend_healthy", backend=OTHER) == 1
    assert value(metrics, "kairos_in_flight_requests") == 7
    assert value(metrics, "kairos_event_loop_tasks") == 12
    assert value(metrics, "kairos_build_info", version="9.9.9") == 1


def test_two_instances_never_share_series() -> None:
    first, second = Metrics("1"), Metrics("1")
    first.observe(sample())

    assert value(first, "kairos_requests_total", route="users", method="GET", code="200") == 1
    assert value(second, "kairos_requests_total", route="users", method="GET", code="200") is None
