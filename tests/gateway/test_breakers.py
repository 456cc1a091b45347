"""Circuit breakers seen from outside: a real ``kairos-gateway`` and real upstreams (DESIGN.md §5).

Each test starts its own gateway (breaker state lives in the gateway, so tests must not share one)
with small thresholds and a reset timeout of a second; the upstream processes are shared by the
module and reset before each test. Upstream hit counts prove which requests reached a backend; the
gateway's own 503s prove which did not. Every test ends by checking that the gateway's open file
descriptors are back to where they were after a warm-up request.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.gateway import Gateway, backend, route
from tests.support.pool import UpstreamPool
from tests.support.procs import free_port
from tests.support.waiting import assert_fds_settle

RESET_S = 1.0
FD_TOLERANCE = 4
CLIENT_TIMEOUT_S = 5.0


StartGateway = Callable[..., Gateway]


@dataclass
class Watched:
    """A started gateway and its open file descriptors after a warm-up request."""

    gateway: Gateway
    baseline_fds: int

    @property
    def url(self) -> str:
        return self.gateway.url

    def assert_fds_back_to_baseline(self) -> None:
        assert_fds_settle(self.gateway, self.baseline_fds, FD_TOLERANCE)


def start(
    gateway_factory: StartGateway,
    config: dict[str, Any],
    warm_path: str,
    args: tuple[str, ...] = (),
) -> Watched:
    """Start the gateway, send one warm-up request to ``warm_path`` and measure the baseline."""
    gateway = gateway_factory({"server": {"graceful_shutdown_s": 0}, **config}, args=args)
    response = get(gateway.url, warm_path)
    assert response.status_code == 200, response.text
    time.sleep(0.1)
    return Watched(gateway, gateway.open_fds())


def breaker(**values: Any) -> dict[str, Any]:
    return {"reset_timeout_s": RESET_S, "success_threshold": 2, "half_open_max_calls": 1, **values}


def client(base_url: str, timeout_s: float = CLIENT_TIMEOUT_S) -> httpx.Client:
    """A plain-HTTP client (no CA bundle to load: creating one costs microseconds, not 50 ms)."""
    return httpx.Client(base_url=base_url, timeout=timeout_s, trust_env=False, verify=False)


def get(base_url: str, path: str, timeout_s: float = CLIENT_TIMEOUT_S) -> httpx.Response:
    """One request on a connection of its own."""
    with client(base_url, timeout_s) as one_off:
        return one_off.get(path)


def get_many(base_url: str, path: str, count: int) -> list[httpx.Response]:
    with client(base_url) as session:
        return [session.get(path) for _ in range(count)]


def get_concurrently(base_url: str, path: str, count: int) -> list[httpx.Response]:
    """``count`` requests on ``count`` connections, released at the same instant."""
    barrier = threading.Barrier(count)

    def one(_: int) -> httpx.Response:
        with client(base_url) as session:
            barrier.wait()
            return session.get(path)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def assert_from_upstream(response: httpx.Response, status: int, name: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers.get("x-upstream") == name, response.text


def assert_circuit_open(response: httpx.Response, *, max_retry_after_s: float = RESET_S) -> int:
    """The gateway's own 503 ``circuit_open`` with a sane ``Retry-After``; returns that value."""
    assert response.status_code == 503, response.text
    assert "x-upstream" not in response.headers, "the gateway answered, not a backend"
    body = response.json()
    assert body["type"] == "circuit_open", body
    assert set(body) == {"error", "type", "timestamp", "request_id"}
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= math.ceil(max_retry_after_s), retry_after
    return retry_after


def wait_for_half_open(response: httpx.Response) -> None:
    """Sleep past the time to half-open that a ``circuit_open`` answer announced."""
    time.sleep(min(int(response.headers["retry-after"]), RESET_S) + 0.15)


# --- opening --------------------------------------------------------------------------------------


def test_failure_threshold_consecutive_failures_open_it_for_every_route_using_it(
    gateway_factory: StartGateway, ups: UpstreamPool
) -> None:
    up = ups["a"]
    config = {
        "circuit_breaker": breaker(failure_threshold=3, reset_timeout_s=30),
        "routers": [route("/one", "/one", [up.url]), route("/two", "/two", [up.url])],
    }
    watched = start(gateway_factory, config, "/one")
    up.control(mode="fail", status=503)
    up.reset_hits()

    for response in get_many(watched.url, "/one", 3):
        assert_from_upstream(response, 503, "a")
    assert up.hits() == 3

    refused = get_many(watched.url, "/one", 5) + get_many(watched.url, "/two", 2)
    retry_afters = [assert_circuit_open(r, max_retry_after_s=30) for r in refused]
    assert up.hits() == 3, "an open breaker keeps every route's requests off the backend"
    assert all(25 <= value <= 30 for value in retry_afters), "time left until half-open"
    ready = get(watched.gateway.admin_url, "/ready")
    assert ready.status_code == 200, "an open breaker takes routes out, not the gateway"
    assert ready.json()["unroutable"] == ["one", "two"]
    watched.assert_fds_back_to_baseline()


def test_an_open_backend_leaves_the_rotation_for_its_sibling_then_for_the_fallback(
    gateway_factory: StartGateway, ups: UpstreamPool
) -> None:
    first, second, spare = ups["a"], ups["b"], ups["c"]
    policy = breaker(failure_threshold=2, reset_timeout_s=30)
    config = {
        "routers": [
            route(
                "/pair",
                "/pair",
                [first.url, second.url],
                fallback=[backend(spare.url)],
                circuit_breaker=policy,
            )
        ]
    }
    watched = start(gateway_factory, config, "/pair")
    with client(watched.url) as session:
        session.get("/pair")
        assert (first.hits(), second.hits(), spare.hits()) == (1, 1, 0), "no fallback yet"
        first.control(mode="fail", status=503)
        for up in (first, second):
            up.reset_hits()
        for _ in range(10):
            if first.hits() >= 2:
                break
            session.get("/pair")
        assert first.hits() == 2
        second.reset_hits()
        for response in [session.get("/pair") for _ in range(6)]:
            assert_from_upstream(response, 200, "b")
        assert first.hits() == 2, "the open backend got nothing more"
        assert spare.hits() == 0, "the fallback waits while a primary admits"

        second.control(mode="fail", status=503)
        for response in [session.get("/pair") for _ in range(2)]:
            assert_from_upstream(response, 503, "b")
        for response in [session.get("/pair") for _ in range(6)]:
            assert_from_upstream(response, 200, "c")
    assert (first.hits(), second.hits()) == (2, 6 + 2)
    watched.assert_fds_back_to_baseline()


# --- what counts as a failure ---------------------------------------------------------------------


def test_connection_errors_and_per_try_timeouts_count_as_failures(
    gateway_factory: StartGateway, ups: UpstreamPool
) -> None:
    warm, hanging, resetting = ups["a"], ups["b"], ups["c"]
    dead = f"http://127.0.0.1:{free_port()}"
    policy = breaker(failure_threshold=2)
    config = {
        "routers": [
            route("/warm", "/warm", [warm.url]),
            route("/dead", "/dead", [dead], circuit_breaker=policy),
            route("/reset", "/reset", [resetting.url], circuit_breaker=policy),
            route("/hang", "/hang", [hanging.url], timeout_ms=200, circuit_breaker=policy),
        ]
    }
    watched = start(gateway_factory, config, "/warm")
    hanging.control(mode="hang")
    resetting.control(mode="reset")

    for path, status, error_type in (
        ("/dead", 502, "upstream"),
        ("/reset", 502, "upstream"),
        ("/hang", 504, "timeout"),
    ):
        for response in get_many(watched.url, path, 2):
            assert response.status_code == status, response.text
            assert response.json()["type"] == error_type
        assert_circuit_open(get(watched.url, path))
    assert hanging.hits() == 2
    assert resetting.hits() == 2
    watched.assert_fds_back_to_baseline()


def test_only_failure_status_codes_count_and_a_route_block_overrides_the_global_one(
    gateway_factory: StartGateway, ups: UpstreamPool
) -> None:
    only_503 = {"failure_status_codes": [503]}
    cases = [  # route, upstream, status it answers, route's own block, failures that open it
        ("/global-500", "a", 500, None, None),
        ("/global-503", "b", 503, None, 2),
        ("/route-500", "c", 500, breaker(failure_threshold=2), 2),
        ("/route-404", "d", 404, breaker(failure_threshold=2), None),
        ("/route-503", "e", 503, breaker(failure_threshold=4, **only_503), 4),
    ]
    config = {
        "circuit_breaker": breaker(failure_threshold=2, **only_503),
        "routers": [
            route(path, path, [ups[name].url])
            | ({"circuit_breaker": policy} if policy is not None else {})
            for path, name, _, policy, _ in cases
        ],
    }
    watched = start(gateway_factory, config, "/global-500")
    for _, name, status, _, _ in cases:
        ups[name].control(mode="fail", status=status)
        ups[name].reset_hits()

    for path, name, status, _, opens_after in cases:
        responses = get_many(watched.url, path, 6)
        reached = 6 if opens_after is None else opens_after
        for response in responses[:reached]:
            assert_from_upstream(response, status, name)
        for response in responses[reached:]:
            assert_circuit_open(response)
        assert ups[name].hits() == reached, path
    watched.assert_fds_back_to_baseline()


def test_failures_must_be_consecutive(gateway_factory: StartGateway, ups: UpstreamPool) -> None:
    up = ups["a"]
    policy = breaker(failure_threshold=3)
    config = {"routers": [route("/a", "/a", [up.url], circuit_breaker=policy)]}
    watched = start(gateway_factory, config, "/a")
    up.control(mode="flap", flap_every=2, status=503)
    up.reset_hits()

    responses = get_many(watched.url, "/a", 16)
    assert [r.status_code for r in responses] == [200, 200, 503, 503] * 4
    assert all(r.headers.get("x-upstream") == "a" for r in responses)
    assert up.hits() == 16
    watched.assert_fds_back_to_baseline()


def test_cancelled_client_requests_never_open_it(
    gateway_factory: StartGateway, ups: UpstreamPool
) -> None:
    up = ups["a"]
    threshold = 2
    policy = breaker(failure_threshold=threshold)
    config = {"routers": [route("/a", "/a", [up.url], timeout_ms=10_000, circuit_breaker=policy)]}
    watched = start(gateway_factory, config, "/a")
    up.control(mode="hang")
    up.reset_hits()

    for _ in range(threshold + 3):
        with pytest.raises(httpx.TimeoutException):
            get(watched.url, "/a", timeout_s=0.2)
    assert up.hits() == threshold + 3, "each abandoned request did reach the backend"
    time.sleep(0.3)  # let the gateway notice the clients are gone

    up.control(mode="ok")
    up.reset_hits()
    assert_from_upstream(get(watched.url, "/a"), 200, "a")
    assert up.hits() == 1
    for response in get_many(watched.url, "/a", 3):
        assert_from_upstream(response, 200, "a")
    watched.assert_fds_back_to_baseline()


def test_a_request_deadline_that_runs_out_on_a_silent_backend_counts_as_a_failure(
    gateway_factory: StartGateway, ups: UpstreamPool
) -> None:
    up = ups["a"]
    policy = breaker(failure_threshold=2)
    config = {"routers": [route("/a", "/a", [up.url], deadline_ms=200, circuit_breaker=policy)]}
    watched = start(gateway_factory, config, "/a")
    up.control(mode="hang")
    up.reset_hits()

    for response in get_many(watched.url, "/a", 2):
        assert response.status_code == 504, response.text
        assert response.json()["type"] == "timeout"
    assert_circuit_open(get(watched.url, "/a"))
    assert up.hits() == 2
    watched.assert_fds_back_to_baseline()


@pytest.mark.parametrize("upstream_client", ["h1", "aiohttp"])
def test_a_request_body_over_the_cap_is_the_clients_fault_not_the_backends(
    gateway_factory: StartGateway, ups: UpstreamPool, upstream_client: str
) -> None:
    up = ups["a"]
    config = {
        "server": {"graceful_shutdown_s": 0, "max_body_bytes": 1024},
        "routers": [
            route(
                "/a",
                "/a",
                [up.url],
                methods=["GET", "POST"],
                circuit_breaker=breaker(failure_threshold=1),
            )
        ],
    }
    watched = start(gateway_factory, config, "/a", args=("--upstream-client", upstream_client))

    def chunks() -> Iterator[bytes]:
        for _ in range(16):
            yield b"x" * 512

    with client(watched.url) as session:
        too_large = session.post("/a", content=chunks())
    after = get(watched.url, "/a")
    assert_from_upstream(after, 200, "a")
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["type"] == "payload_too_large"
    watched.assert_fds_back_to_baseline()


# --- half-open ------------------------------------------------------------------------------------


def test_half_open_lets_exactly_one_trial_through_and_successes_close_it(
    gateway_factory: StartGateway, ups: UpstreamPool
) -> None:
    up = ups["a"]
    policy = breaker(failure_threshold=2, success_threshold=2, half_open_max_calls=1)
    config = {"routers": [route("/a", "/a", [up.url], circuit_breaker=policy)]}
    watched = start(gateway_factory, config, "/a")
    up.control(mode="fail", status=503)
    get_many(watched.url, "/a", 2)
    refused = get(watched.url, "/a")
    assert_circuit_open(refused)

    up.control(mode="ok", delay_ms=500)  # the trial stays in flight while the others arrive
    up.reset_hits()
    wait_for_half_open(refused)
    burst = get_concurrently(watched.url, "/a", 20)
    assert up.hits() == 1, "exactly half_open_max_calls trial request reached the backend"
    served = [r for r in burst if r.status_code == 200]
    assert len(served) == 1
    assert_from_upstream(served[0], 200, "a")
    for response in burst:
        if response.status_code != 200:
            assert_circuit_open(response)

    # one success of success_threshold (2): still half-open, still one trial at a time
    up.reset_hits()
    pair = get_concurrently(watched.url, "/a", 2)
    assert sorted(r.status_code for r in pair) == [200, 503]
    assert up.hits() == 1

    # the second success closed it: traffic flows again, with no gate
    up.control(mode="ok")
    up.reset_hits()
    for response in get_many(watched.url, "/a", 5):
        assert_from_upstream(response, 200, "a")
    assert up.hits() == 5
    up.control(mode="ok", delay_ms=300)
    closed_pair = get_concurrently(watched.url, "/a", 2)
    assert [r.status_code for r in closed_pair] == [200, 200]
    watched.assert_fds_back_to_baseline()


def test_a_failed_trial_reopens_it_and_restarts_the_timeout(
    gateway_factory: StartGateway, ups: UpstreamPool
) -> None:
    up = ups["a"]
    policy = breaker(failure_threshold=2)
    config = {"routers": [route("/a", "/a", [up.url], circuit_breaker=policy)]}
    watched = start(gateway_factory, config, "/a")
    up.control(mode="fail", status=503)
    get_many(watched.url, "/a", 2)
    refused = get(watched.url, "/a")
    assert_circuit_open(refused)
    up.reset_hits()

    wait_for_half_open(refused)
    assert_from_upstream(get(watched.url, "/a"), 503, "a")
    reopened_at = time.monotonic()
    assert up.hits() == 1
    for response in get_many(watched.url, "/a", 3):
        assert_circuit_open(response)
    assert up.hits() == 1, "the failed trial reopened it"

    time.sleep(max(0.0, reopened_at + RESET_S / 2 - time.monotonic()))
    assert_circuit_open(get(watched.url, "/a"))
    assert up.hits() == 1, "the timeout restarted at the failed trial"

    time.sleep(max(0.0, reopened_at + RESET_S + 0.15 - time.monotonic()))
    up.control(mode="ok")
    assert_from_upstream(get(watched.url, "/a"), 200, "a")
    assert up.hits() == 2, "after the new timeout, another trial goes through"
    watched.assert_fds_back_to_baseline()


def test_a_trial_abandoned_by_its_client_frees_the_half_open_slot(
    gateway_factory: StartGateway, ups: UpstreamPool
) -> None:
    up = ups["a"]
    policy = breaker(failure_threshold=2, success_threshold=1)
    config = {"routers": [route("/a", "/a", [up.url], timeout_ms=10_000, circuit_breaker=policy)]}
    watched = start(gateway_factory, config, "/a")
    up.control(mode="fail", status=503)
    get_many(watched.url, "/a", 2)
    refused = get(watched.url, "/a")
    assert_circuit_open(refused)

    up.control(mode="hang")
    up.reset_hits()
    wait_for_half_open(refused)
    with pytest.raises(httpx.TimeoutException):
        get(watched.url, "/a", timeout_s=0.3)
    assert up.hits() == 1, "the abandoned request was the trial"
    time.sleep(0.3)  # let the gateway notice the client is gone

    up.control(mode="ok")
    assert_from_upstream(get(watched.url, "/a"), 200, "a")
    assert up.hits() == 2, "the slot was free and the abandoned trial did not reopen it"
    for response in get_many(watched.url, "/a", 3):
        assert_from_upstream(response, 200, "a")
    watched.assert_fds_back_to_baseline()


# --- reload ---------------------------------------------------------------------------------------


def test_breaker_state_survives_a_config_reload(
    gateway_factory: StartGateway, ups: UpstreamPool
) -> None:
    up, other = ups["a"], ups["b"]
    policy = breaker(failure_threshold=2, reset_timeout_s=30)
    config: dict[str, Any] = {"routers": [route("/a", "/a", [up.url], circuit_breaker=policy)]}
    watched = start(gateway_factory, config, "/a")
    up.control(mode="fail", status=503)
    get_many(watched.url, "/a", 2)
    assert_circuit_open(get(watched.url, "/a"), max_retry_after_s=30)
    up.reset_hits()

    gateway = watched.gateway
    version = gateway.config_version()
    document = dict(gateway.document)
    document["routers"] = [*document["routers"], route("/other", "/other", [other.url])]
    gateway.write_config(document)
    gateway.wait_for_version_change(version)

    assert_from_upstream(get(watched.url, "/other"), 200, "b")
    assert_circuit_open(get(watched.url, "/a"), max_retry_after_s=30)
    assert up.hits() == 0, "the breaker of a backend that stays is carried over, still open"
    watched.assert_fds_back_to_baseline()
