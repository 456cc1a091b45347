"""Active health checks: each sentence of the kairos_core.health docstring, pinned (DESIGN.md §5).

The checker probes a real test upstream process (``tests/support/upstreams.py``) through each
real upstream client (:class:`AiohttpUpstream`, :class:`H1Upstream`); intervals are a tenth of a
second, so a flip takes well under one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from kairos_core.config.models import HealthCheckConfig
from kairos_core.h1client import H1Upstream
from kairos_core.health import HealthChecker
from kairos_core.upstream import AiohttpUpstream, UpstreamClient
from tests.support.procs import Upstream, free_port
from tests.support.waiting import await_until

INTERVAL_S = 0.1
TOLERANCE_S = 0.5
FAST = HealthCheckConfig(
    interval_s=INTERVAL_S, timeout_ms=200, healthy_threshold=2, unhealthy_threshold=3
)


class Flips:
    """The checker's ``on_change`` sink: every flip, with the counters seen at that moment."""

    def __init__(self) -> None:
        self.checker: HealthChecker | None = None
        self.calls: list[tuple[str, bool]] = []
        self.counters: list[tuple[int, int]] = []
        self.times: list[float] = []

    def __call__(self, backend: str, healthy: bool) -> None:
        self.calls.append((backend, healthy))
        self.times.append(time.monotonic())
        assert self.checker is not None
        status = self.checker.detail()[backend]
        self.counters.append((status.consecutive_passes, status.consecutive_failures))


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[Upstream]:
    upstream = Upstream.start("health")
    yield upstream
    upstream.stop()


@pytest.fixture
def upstream(shared_upstream: Upstream) -> Upstream:
    shared_upstream.reset()
    return shared_upstream


@pytest.fixture
def flips() -> Flips:
    return Flips()


@pytest.fixture(params=[AiohttpUpstream, H1Upstream], ids=["aiohttp", "h1"])
async def checker(flips: Flips, request: pytest.FixtureRequest) -> AsyncIterator[HealthChecker]:
    """A checker on each real upstream client the gateway can run with."""
    client: UpstreamClient = request.param()
    health = HealthChecker(client, flips)
    flips.checker = health
    yield health
    await health.stop()
    await client.close()


async def control(upstream: Upstream, **fields: object) -> None:
    await asyncio.to_thread(upstream.control, **fields)  # type: ignore[arg-type]


async def probe_hits(upstream: Upstream, path: str = "/health") -> int:
    log = await asyncio.to_thread(upstream.hit_log)
    return sum(1 for entry in log if entry["path"] == path)


async def wait_for_probes(checker: HealthChecker, key: str, count: int) -> None:
    """Until ``count`` consecutive probes of ``key`` have been recorded (passes or failures)."""

    def done() -> bool:
        status = checker.detail()[key]
        return max(status.consecutive_passes, status.consecutive_failures) >= count

    await await_until(done, count * INTERVAL_S + TOLERANCE_S)


def test_a_backend_without_a_probe_is_always_healthy() -> None:
    checker = HealthChecker(AiohttpUpstream())
    assert checker.is_healthy("http://127.0.0.1:1")
    assert checker.detail() == {}


async def test_backends_start_healthy_and_the_first_probe_runs_at_once(
    checker: HealthChecker, upstream: Upstream
) -> None:
    slow = HealthCheckConfig(interval_s=30, timeout_ms=500, unhealthy_threshold=1)
    checker.configure({upstream.url: f"{upstream.url}/health"}, slow)
    assert checker.is_healthy(upstream.url), "healthy before any probe has answered"
    await await_until(lambda: checker.detail()[upstream.url].consecutive_passes == 1, 1.0)
    assert await probe_hits(upstream) == 1
    status = checker.detail()[upstream.url]
    assert (status.url, status.healthy, status.last_error) == (
        f"{upstream.url}/health",
        True,
        None,
    )
    hit = (await asyncio.to_thread(upstream.hit_log))[0]
    assert hit["method"] == "GET"


async def test_a_failing_backend_goes_unhealthy_within_threshold_intervals_and_comes_back(
    checker: HealthChecker, upstream: Upstream, flips: Flips
) -> None:
    key = upstream.url
    checker.configure({key: f"{upstream.url}/health"}, FAST)
    await wait_for_probes(checker, key, 1)

    await control(upstream, health="fail")
    failing_since = time.monotonic()
    await await_until(lambda: not checker.is_healthy(key), 3 * INTERVAL_S + TOLERANCE_S)
    assert flips.calls == [(key, False)]
    assert flips.counters == [(0, 3)], "flipped at exactly unhealthy_threshold failures"
    assert flips.times[0] - failing_since >= 2 * INTERVAL_S - 0.05
    assert checker.detail()[key].last_error == "status 503"

    await control(upstream, health="ok")
    recovering_since = time.monotonic()
    await await_until(lambda: checker.is_healthy(key), 2 * INTERVAL_S + TOLERANCE_S)
    assert flips.calls == [(key, False), (key, True)]
    assert flips.counters[1] == (2, 0), "flipped at exactly healthy_threshold passes"
    assert flips.times[1] - recovering_since >= INTERVAL_S - 0.05
    assert checker.detail()[key].last_error is None


async def test_on_change_is_called_once_per_flip(
    checker: HealthChecker, upstream: Upstream, flips: Flips
) -> None:
    key = upstream.url
    checker.configure({key: f"{upstream.url}/health"}, FAST)
    await wait_for_probes(checker, key, 3)
    assert flips.calls == [], "passes on a healthy backend flip nothing"
    await control(upstream, health="fail")
    await await_until(lambda: not checker.is_healthy(key), 1.0)
    await wait_for_probes(checker, key, 8)
    assert flips.calls == [(key, False)]
    await control(upstream, health="ok")
    await await_until(lambda: checker.is_healthy(key), 1.0)
    await wait_for_probes(checker, key, 6)
    assert flips.calls == [(key, False), (key, True)]


async def test_fewer_failures_than_the_threshold_change_nothing(
    checker: HealthChecker, upstream: Upstream, flips: Flips
) -> None:
    key = upstream.url
    config = HealthCheckConfig(
        interval_s=INTERVAL_S, timeout_ms=200, healthy_threshold=2, unhealthy_threshold=30
    )
    checker.configure({key: f"{upstream.url}/health"}, config)
    await control(upstream, health="fail")
    await wait_for_probes(checker, key, 4)
    await control(upstream, health="ok")
    await await_until(lambda: checker.detail()[key].consecutive_passes >= 1, 1.0)
    assert checker.detail()[key].consecutive_failures == 0, "a pass resets the failures"
    assert checker.is_healthy(key)
    assert flips.calls == []


async def test_connection_refused_counts_as_a_failure(checker: HealthChecker, flips: Flips) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    checker.configure({dead: f"{dead}/health"}, FAST)
    await await_until(lambda: not checker.is_healthy(dead), 3 * INTERVAL_S + TOLERANCE_S)
    assert flips.calls == [(dead, False)]
    assert checker.detail()[dead].last_error


async def test_a_probe_over_timeout_ms_counts_as_a_failure(
    checker: HealthChecker, upstream: Upstream, flips: Flips
) -> None:
    key = upstream.url
    config = HealthCheckConfig(
        interval_s=INTERVAL_S, timeout_ms=100, healthy_threshold=1, unhealthy_threshold=2
    )
    checker.configure({key: f"{upstream.url}/_slow?ms=2000"}, config)
    elapsed = await await_until(lambda: not checker.is_healthy(key), 2 * (0.1 + INTERVAL_S) + 0.5)
    assert elapsed < 1.0, "the probe is cut at timeout_ms, not left to run for 2 s"
    assert flips.calls == [(key, False)]
    assert "100 ms" in (checker.detail()[key].last_error or "")


@pytest.mark.parametrize("status", [200, 204, 301, 302, 304])
async def test_a_2xx_or_3xx_answer_is_a_pass(
    checker: HealthChecker, upstream: Upstream, flips: Flips, status: int
) -> None:
    key = upstream.url
    config = HealthCheckConfig(interval_s=INTERVAL_S, timeout_ms=200, unhealthy_threshold=1)
    checker.configure({key: f"{upstream.url}/_status/{status}"}, config)
    await wait_for_probes(checker, key, 2)
    status_now = checker.detail()[key]
    assert status_now.healthy and status_now.consecutive_failures == 0
    assert status_now.last_error is None
    assert flips.calls == []


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
async def test_any_other_status_is_a_failure(
    checker: HealthChecker, upstream: Upstream, flips: Flips, status: int
) -> None:
    key = upstream.url
    config = HealthCheckConfig(interval_s=INTERVAL_S, timeout_ms=200, unhealthy_threshold=1)
    checker.configure({key: f"{upstream.url}/_status/{status}"}, config)
    await await_until(lambda: not checker.is_healthy(key), INTERVAL_S + TOLERANCE_S)
    assert flips.calls == [(key, False)]
    assert checker.detail()[key].last_error == f"status {status}"


async def test_configure_without_a_target_drops_it_and_stops_probing_it(
    checker: HealthChecker, upstream: Upstream, flips: Flips
) -> None:
    key = upstream.url
    dead = f"http://127.0.0.1:{free_port()}"
    checker.configure({key: f"{upstream.url}/health", dead: f"{dead}/health"}, FAST)
    await await_until(lambda: not checker.is_healthy(dead), 1.0)
    checker.configure({dead: f"{dead}/health"}, FAST)
    assert key not in checker.detail()
    assert checker.is_healthy(key), "a backend with no probe is healthy"
    await asyncio.sleep(INTERVAL_S / 2)
    probes = await probe_hits(upstream)
    await asyncio.sleep(4 * INTERVAL_S)
    assert await probe_hits(upstream) == probes, "the removed target is no longer probed"
    assert not checker.is_healthy(dead), "the target that stays keeps its state"


async def test_state_survives_a_reconfigure_for_targets_that_keep_their_probe(
    checker: HealthChecker, upstream: Upstream, flips: Flips
) -> None:
    key = upstream.url
    checker.configure({key: f"{upstream.url}/health"}, FAST)
    await control(upstream, health="fail")
    await await_until(lambda: not checker.is_healthy(key), 1.0)
    checker.configure({key: f"{upstream.url}/health"}, FAST)
    assert not checker.is_healthy(key)
    slower = HealthCheckConfig(
        interval_s=INTERVAL_S * 2, timeout_ms=200, healthy_threshold=2, unhealthy_threshold=3
    )
    checker.configure({key: f"{upstream.url}/health"}, slower)
    assert not checker.is_healthy(key), "a new config keeps the state too"
    await asyncio.sleep(3 * INTERVAL_S)
    assert not checker.is_healthy(key)
    assert flips.calls == [(key, False)]


async def test_a_target_whose_probe_url_changes_starts_afresh(
    checker: HealthChecker, upstream: Upstream
) -> None:
    key = upstream.url
    checker.configure({key: f"{upstream.url}/_status/500"}, FAST)
    await await_until(lambda: not checker.is_healthy(key), 1.0)
    checker.configure({key: f"{upstream.url}/health"}, FAST)
    assert checker.is_healthy(key)
    assert checker.detail()[key].url == f"{upstream.url}/health"
    await wait_for_probes(checker, key, 2)
    assert checker.is_healthy(key)


async def test_stop_ends_every_probe(checker: HealthChecker, upstream: Upstream) -> None:
    checker.configure({upstream.url: f"{upstream.url}/health"}, FAST)
    await wait_for_probes(checker, upstream.url, 2)
    await checker.stop()
    probes = await probe_hits(upstream)
    await asyncio.sleep(4 * INTERVAL_S)
    assert await probe_hits(upstream) == probes
