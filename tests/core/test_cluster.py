"""Breaker and health-check sharing (``kairos_core.cluster``): each rule of its docstring, with
several members (each its own shared state, link and cluster sync, as separate processes would
have) on one real redis-server. Upstreams are in memory: what is shared is the point here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from kairos_core.breaker import BackendBreaker
from kairos_core.cluster import LEASE_CHECK_S, LEASE_IDLE_S, LEASE_TTL_S, Cluster
from kairos_core.config import validate_document
from kairos_core.events import Event
from kairos_core.redislink import FAILURES_TO_DOWN, PROBE_INTERVAL_S, RedisLink
from kairos_core.state import RuntimeState, SharedState, compile_state
from tests.support.memory import Call, MemoryUpstream, Reply
from tests.support.redisserver import RedisServer
from tests.support.waiting import await_until

BACKEND = "http://10.0.0.1:80"
RESET_S = 0.4
INTERVAL_S = 0.15


def document(**breaker: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "routers": [
            {
                "external_path": "/a",
                "internal_path": "/a",
                "methods": ["GET"],
                "backends": [{"host": "http://10.0.0.1", "port": 80, "health_check_path": "/hc"}],
                "circuit_breaker": {
                    "failure_threshold": 2,
                    "reset_timeout_s": RESET_S,
                    "success_threshold": 1,
                    **breaker,
                },
            }
        ],
        "health_check": {
            "interval_s": INTERVAL_S,
            "timeout_ms": 100,
            "healthy_threshold": 1,
            "unhealthy_threshold": 2,
        },
    }


@dataclass
class Member:
    shared: SharedState
    state: RuntimeState
    link: RedisLink
    cluster: Cluster
    upstream: MemoryUpstream
    events: list[Event]

    @property
    def breaker(self) -> BackendBreaker:
        breaker = self.shared.breakers.get(BACKEND)
        assert breaker is not None
        return breaker

    def circuit_events(self) -> list[tuple[str, str, str]]:
        return [
            (e.data["from"], e.data["to"], e.data["origin"])
            for e in self.events
            if e.type == "circuit"
        ]

    def fail(self, times: int) -> None:
        for _ in range(times):
            trial = self.breaker.admit()
            assert trial is not None
            trial.failure()


Join = Callable[..., Any]


@pytest.fixture
async def join(redis_server: RedisServer) -> AsyncIterator[Join]:
    members: list[Member] = []

    async def make(
        *, health: bool = False, trials: bool = True, script: Any = None, **breaker: Any
    ) -> Member:
        upstream = MemoryUpstream(script)
        shared = SharedState(upstream=upstream)
        events: list[Event] = []
        shared.events.subscribe(events.append)
        state = compile_state(validate_document(document(**breaker)), shared)
        link = RedisLink(redis_server.url, timeout_ms=500)
        await link.start()
        cluster = Cluster(link, shared, "test", trials=trials)
        await cluster.start()
        member = Member(shared, state, link, cluster, upstream, events)
        members.append(member)
        if health:
            assert shared.health is not None
            shared.health.configure(state.health_targets(), state.config.health_check)
        await asyncio.sleep(0.05)  # subscribed
        return member

    yield make
    for member in members:
        if member.shared.health is not None:
            await member.shared.health.stop()
        await member.cluster.stop()
        await member.link.stop()


async def leave_abruptly(member: Member) -> None:
    """What a crash looks like to the others: no goodbye, leases left to expire."""
    member.cluster._leases.clear()
    await member.cluster.stop()
    await member.link.stop()


# --- breakers ---------------------------------------------------------------------------------


async def test_a_breaker_opened_on_one_member_is_open_on_the_others_within_a_second(
    join: Join,
) -> None:
    a, b = await join(), await join()
    a.fail(2)
    assert a.breaker.state == "open"

    took = await await_until(lambda: b.breaker.state == "open", 1.0, "B open")

    assert took < 1.0
    assert b.breaker.opened_at == pytest.approx(a.breaker.opened_at, abs=1e-3)
    assert not b.breaker.admits()
    assert a.circuit_events() == [("closed", "open", "local")]
    assert b.circuit_events() == [("closed", "open", "cluster")]


async def test_forced_opens_and_closes_reach_every_member(join: Join) -> None:
    a, b, c = await join(), await join(), await join()
    a.breaker.force_open()
    await await_until(lambda: b.breaker.state == c.breaker.state == "open", 1.0, "open")
    b.breaker.force_close()
    await await_until(lambda: a.breaker.state == c.breaker.state == "closed", 1.0, "closed")
    assert c.circuit_events() == [("closed", "open", "cluster"), ("open", "closed", "cluster")]


async def test_a_forced_open_of_an_open_breaker_restarts_the_timeout_everywhere(
    join: Join,
) -> None:
    a, b = await join(), await join()
    a.breaker.force_open()
    await await_until(lambda: b.breaker.state == "open", 1.0, "B open")
    await asyncio.sleep(0.1)
    a.breaker.force_open()
    await await_until(
        lambda: b.breaker.opened_at == pytest.approx(a.breaker.opened_at, abs=1e-3),
        1.0,
        "B's timeout restarted",
    )


async def test_a_member_that_joins_later_loads_the_open_breakers(join: Join) -> None:
    a = await join(reset_timeout_s=30)
    a.fail(2)
    await asyncio.sleep(0.1)  # published

    late = await join(reset_timeout_s=30)

    assert late.breaker.state == "open"
    assert late.breaker.opened_at == pytest.approx(a.breaker.opened_at, abs=1e-3)
    assert 29 < late.breaker.seconds_until_half_open() <= 30


async def test_half_open_is_not_shared(join: Join) -> None:
    a, b = await join(), await join()
    a.fail(2)
    await await_until(lambda: b.breaker.state == "open", 1.0, "B open")
    await await_until(lambda: a.breaker.may_trial or b.breaker.may_trial, 2.0, "a lease")
    holder, other = (a, b) if a.breaker.may_trial else (b, a)
    trial = holder.breaker.admit()
    assert trial is not None and holder.breaker.state == "half_open"
    await asyncio.sleep(0.2)
    assert other.breaker.state == "open"
    trial.success()  # success_threshold 1: closed, and shared
    await await_until(lambda: other.breaker.state == "closed", 1.0, "closed everywhere")


# --- trial leases -----------------------------------------------------------------------------


async def test_the_cluster_sends_at_most_half_open_max_calls_trials_at_once(join: Join) -> None:
    members = [await join(half_open_max_calls=2) for _ in range(3)]
    members[0].fail(2)
    await await_until(lambda: all(m.breaker.state == "open" for m in members), 1.0, "open")
    await asyncio.sleep(RESET_S + 2 * LEASE_CHECK_S)

    trials = []
    for _ in range(10):  # every member tries to start trials, several times over
        for member in members:
            trial = member.breaker.admit()
            if trial is not None:
                trials.append((member, trial))
        await asyncio.sleep(LEASE_CHECK_S)

    assert len(trials) == 2
    assert len({id(member) for member, _ in trials}) == 1


async def test_an_unused_lease_is_given_up_for_a_member_with_traffic(join: Join) -> None:
    a, b = await join(), await join()
    a.fail(2)
    await await_until(lambda: b.breaker.state == "open", 1.0, "B open")
    await await_until(lambda: a.breaker.may_trial or b.breaker.may_trial, 2.0, "a lease")
    idle, busy = (a, b) if a.breaker.may_trial else (b, a)

    took = await await_until(
        lambda: busy.breaker.admit() is not None, LEASE_IDLE_S + 2.0, "the busy member's trial"
    )

    assert took >= LEASE_IDLE_S - 2 * LEASE_CHECK_S
    assert not idle.breaker.may_trial


async def test_a_lease_whose_holder_died_expires_and_another_member_trials(
    join: Join,
) -> None:
    a, b = await join(), await join()
    a.fail(2)
    await await_until(lambda: b.breaker.state == "open", 1.0, "B open")
    await await_until(lambda: a.breaker.may_trial or b.breaker.may_trial, 2.0, "a lease")
    holder, other = (a, b) if a.breaker.may_trial else (b, a)
    assert holder.breaker.admit() is not None  # a trial in flight, then the holder dies
    await leave_abruptly(holder)
    started = time.monotonic()

    await await_until(lambda: other.breaker.may_trial, LEASE_TTL_S + 1.0, "the lease moves")

    assert time.monotonic() - started > LEASE_TTL_S - 1.0


async def test_a_passive_member_never_takes_a_trial_lease(join: Join) -> None:
    passive = await join(trials=False)
    active = await join()
    passive.breaker.force_open()
    await await_until(lambda: active.breaker.state == "open", 1.0, "open")
    await await_until(lambda: active.breaker.may_trial, RESET_S + 1.0, "the active member trials")
    assert not passive.breaker.may_trial


# --- Redis away -------------------------------------------------------------------------------


async def test_while_redis_is_away_each_member_decides_alone_and_the_rejoin_reconciles(
    join: Join, redis_server: RedisServer
) -> None:
    a, b = await join(reset_timeout_s=30), await join(reset_timeout_s=30)
    redis_server.stop()
    for member in (a, b):
        for _ in range(FAILURES_TO_DOWN):
            with pytest.raises(Exception):  # noqa: B017 - any RedisUnavailable
                await member.link.request(lambda pipe: pipe.call("PING"))
    assert not a.link.up and not b.link.up
    assert a.breaker.may_trial and b.breaker.may_trial  # alone: no lease needed

    a.fail(2)  # not shared: Redis is away
    await asyncio.sleep(0.2)
    assert b.breaker.state == "closed"

    redis_server.start()
    await await_until(lambda: b.breaker.state == "open", PROBE_INTERVAL_S * 4 + 1, "rejoined")
    assert b.breaker.opened_at == pytest.approx(a.breaker.opened_at, abs=1e-3)
    assert not b.breaker.may_trial


# --- health checks ----------------------------------------------------------------------------


async def test_one_member_probes_each_backend_and_every_member_takes_its_status(
    join: Join,
) -> None:
    failing = {"now": False}

    def script(call: Call) -> Reply:
        return Reply(status=503 if failing["now"] else 200)

    members = [await join(health=True, script=script) for _ in range(3)]
    await asyncio.sleep(INTERVAL_S * 6)

    probers = [m for m in members if m.upstream.calls]
    assert len(probers) == 1
    probes = len(probers[0].upstream.calls)
    assert 3 <= probes <= 8

    failing["now"] = True
    for member in members:
        await await_until(
            lambda m=member: not m.shared.healthy(BACKEND), INTERVAL_S * 6, "unhealthy"
        )
    checks = [m.shared.health.detail()[BACKEND] for m in members if m.shared.health]
    assert {(c.healthy, c.last_error) for c in checks} == {(False, "status 503")}
    origins = {e.data["origin"] for m in members for e in m.events if e.type == "health"}
    assert origins == {"local", "cluster"}


async def test_a_dead_prober_is_replaced(join: Join) -> None:
    a = await join(health=True)
    await asyncio.sleep(INTERVAL_S * 2)
    b = await join(health=True)
    await asyncio.sleep(INTERVAL_S * 2)
    assert a.upstream.calls and not b.upstream.calls
    if a.shared.health is not None:
        await a.shared.health.stop()
    await leave_abruptly(a)

    await await_until(lambda: bool(b.upstream.calls), INTERVAL_S * 5, "B probes")
