"""Breaker and health-check state shared by every worker and instance through Redis (DESIGN.md §8).

The request path never waits on Redis for any of this: each process keeps its own breakers and
health status (:mod:`kairos_core.breaker`, :mod:`kairos_core.health`), reads only them, and this
module keeps them in step off the request path.

Rules:

- **Breakers.** A local change (a transition to open or closed, a forced open or close) is
  written to the hash ``<prefix>:circuits`` (field: the backend) and published on the channel of
  the same name, in one round trip, in the order the changes happened. Half-open is not shared
  (the others stay open: trials are the lease holder's). Every other process applies the change
  (:meth:`~kairos_core.breaker.BackendBreaker.apply_remote`): a breaker opened on one instance is
  open on all of them one pub/sub delivery later, and counts as a transition only where it
  happened.
- **Trials.** A breaker due for a trial (open past its timeout, or half-open) admits trials only
  in the process holding the lease ``<prefix>:trial:<backend>`` (``LEASE_TTL_S``), taken and
  renewed every ``LEASE_CHECK_S`` off the request path: the whole cluster sends at most
  ``half_open_max_calls`` trials at once. The holder keeps renewing it while its trials run or
  since it started one less than ``LEASE_IDLE_S`` ago, and gives it up once the breaker is no
  longer due, or when it has started no trial for ``LEASE_IDLE_S`` (then it waits a moment before
  asking again, so that a process that receives traffic can take it); a holder that dies lets it
  expire.
- **Health checks.** One prober per backend across the cluster: the holder of
  ``<prefix>:probe:<backend>`` (two probe intervals plus the probe timeout, renewed at each
  probe). The prober's status after each probe (healthy, consecutive passes and failures, last
  error) goes to the hash and channel ``<prefix>:health``, and every other process takes it as
  its own.
- **Joining and rejoining.** When a process starts, when its link comes back up (each time after
  its subscription is in place, so nothing published in between is missed) and after a reload,
  it reads both hashes: an entry newer than the last change this process has seen for a backend
  wins; a local breaker change newer than the entry (made while Redis was away) is published.
- **Redis away** (the link is down): every process decides alone, as without a cluster: trials
  without a lease, probes for every backend; nothing is queued for later, the rejoin reconciles.

Messages carry their publisher's id (host, process id and a random part); a process ignores its
own. A process that serves no requests (the admin process of a multi-worker instance) joins with
``trials=False``: it mirrors the state and never takes a trial lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from kairos_core.breaker import BackendBreaker, State
from kairos_core.health import BackendHealth
from kairos_core.redislink import BACKGROUND_TIMEOUT_S, RedisLink, RedisUnavailable
from kairos_core.state import SharedState

log = logging.getLogger("kairos.cluster")

LEASE_TTL_S = 3.0
LEASE_CHECK_S = 0.1
LEASE_IDLE_S = 1.0
OUTBOX_SIZE = 10_000
RESUBSCRIBE_PAUSE_S = 0.1

ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
"""Take the lease ``KEYS[1]`` for ``ARGV[1]`` (or renew it if ``ARGV[1]`` holds it): 1 if held."""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class ClusterMetrics:
    """``kairos_cluster_redis_up`` (1 while the links are up) and
    ``kairos_cluster_redis_transitions_total{state}`` (``up``, ``down``), on the gateway's
    registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._links: dict[int | None, bool] = {}
        self.up = Gauge(
            "kairos_cluster_redis_up", "1 while the cluster Redis answers", registry=registry
        )
        self.transitions = Counter(
            "kairos_cluster_redis_transitions_total",
            "Cluster Redis link transitions",
            ["state"],
            registry=registry,
        )

    def link_changed(self, up: bool, worker: int | None = None) -> None:
        """This process's link (or, in a multi-worker instance's admin process, the link of the
        worker with this pid) went up or down: the gauge is 1 only while every link is up."""
        self._links[worker] = up
        self.up.set(1 if all(self._links.values()) else 0)
        self.transitions.labels("up" if up else "down").inc()

    def forget(self, worker: int) -> None:
        """The worker with this pid has stopped."""
        self._links.pop(worker, None)
        self.up.set(1 if all(self._links.values()) else 0)


@dataclass(slots=True)
class _Lease:
    trials_seen: int
    used_at: float


class Cluster:
    """This process's membership: publishes its changes, applies the others', holds leases."""

    def __init__(
        self, link: RedisLink, shared: SharedState, key_prefix: str, *, trials: bool = True
    ) -> None:
        self.link = link
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._shared = shared
        self._prefix = key_prefix
        self._circuits = f"{key_prefix}:circuits"
        self._health = f"{key_prefix}:health"
        self._acquire = link.client.register_script(ACQUIRE)
        self._release = link.client.register_script(RELEASE)
        self._trials = trials
        self._outbox: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(OUTBOX_SIZE)
        self._leases: dict[str, _Lease] = {}
        self._asked_after: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pubsub: PubSub | None = None

    async def start(self) -> None:
        """Join: hook into the breakers and the health checker, subscribe, read the hashes."""
        shared = self._shared
        shared.breakers.on_change = self._breaker_changed
        shared.breakers.lease_trials(self.link.up)
        if shared.health is not None:
            shared.health.gate = self._may_probe
            shared.health.on_status = self._health_status
        self.link.listen(self._link_changed)
        if self.link.up:  # serve on the shared state from the first request
            self._pubsub = await self._subscribe()
        self._spawn(self._subscribe_forever(), "kairos-cluster-subscribe")
        self._spawn(self._publish_forever(), "kairos-cluster-publish")
        if self._trials:
            self._spawn(self._tend_leases_forever(), "kairos-cluster-leases")

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pubsub is not None:
            await _close(self._pubsub)
            self._pubsub = None
        for backend in list(self._leases):
            with contextlib.suppress(RedisUnavailable):
                await self._give_up(backend)

    def rejoin_soon(self) -> None:
        """Read the shared state again (after a reload: new backends learn theirs)."""
        if self.link.up:
            self._spawn(self._rejoin_quietly(), "kairos-cluster-rejoin")

    # --- breakers ---------------------------------------------------------------------------

    def _breaker_changed(self, breaker: BackendBreaker, state: State) -> None:
        if state == "half_open" or not self.link.up:
            return
        self._post(self._circuits, breaker.backend, self._circuit_message(breaker, state))

    def _circuit_message(self, breaker: BackendBreaker, state: State) -> dict[str, Any]:
        shared_state = "closed" if state == "closed" else "open"
        return {
            "o": self.owner,
            "b": breaker.backend,
            "s": shared_state,
            "t": breaker.opened_at if shared_state == "open" else None,
            "at": breaker.changed_at,
        }

    def _apply_circuit(self, message: dict[str, Any]) -> None:
        breaker = self._shared.breakers.get(message["b"])
        if breaker is not None and message["s"] in ("open", "closed"):
            breaker.apply_remote(message["s"], message.get("t"), message.get("at"))

    # --- trial leases -------------------------------------------------------------------------

    async def _tend_leases_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE_CHECK_S)
            if not self.link.up:
                self._leases.clear()
                continue
            with contextlib.suppress(RedisUnavailable):
                for breaker in list(self._shared.breakers):
                    await self._tend_lease(breaker, time.monotonic())
                for backend in [b for b in self._leases if self._shared.breakers.get(b) is None]:
                    await self._give_up(backend)

    async def _tend_lease(self, breaker: BackendBreaker, now: float) -> None:
        backend = breaker.backend
        state = breaker.state
        due = state == "half_open" or (state == "open" and breaker.seconds_until_half_open() <= 0)
        lease = self._leases.get(backend)
        if not due:
            if lease is not None:
                breaker.may_trial = False
                await self._give_up(backend)
            return
        if lease is not None:
            if breaker.trials_in_flight or breaker.trials_started != lease.trials_seen:
                lease.trials_seen = breaker.trials_started
                lease.used_at = now
            if now - lease.used_at < LEASE_IDLE_S or breaker.trials_in_flight:
                if not await self._take(f"{self._prefix}:trial:{backend}", LEASE_TTL_S):
                    breaker.may_trial = False
                    del self._leases[backend]
                return
            breaker.may_trial = False
            await self._give_up(backend)
            self._asked_after[backend] = now + random.uniform(0.2, 0.6)
            return
        if now < self._asked_after.get(backend, 0.0):
            return
        if await self._take(f"{self._prefix}:trial:{backend}", LEASE_TTL_S):
            self._leases[backend] = _Lease(breaker.trials_started, now)
            breaker.may_trial = True

    async def _take(self, key: str, ttl_s: float) -> bool:
        async def run(client: Redis) -> Any:
            return await self._acquire(
                keys=[key], args=[self.owner, int(ttl_s * 1000)], client=client
            )

        return bool(await self.link.call(run))

    async def _give_up(self, backend: str) -> None:
        self._leases.pop(backend, None)
        key = f"{self._prefix}:trial:{backend}"

        async def run(client: Redis) -> Any:
            return await self._release(keys=[key], args=[self.owner], client=client)

        await self.link.call(run)

    # --- health checks ------------------------------------------------------------------------

    async def _may_probe(self, backend: str) -> bool:
        health = self._shared.health
        if not self.link.up or health is None:
            return True
        config = health.config
        ttl_s = 2 * config.interval_s + config.timeout_ms / 1000
        try:
            return await self._take(f"{self._prefix}:probe:{backend}", ttl_s)
        except RedisUnavailable:
            return True

    def _health_status(self, backend: str, status: BackendHealth) -> None:
        if not self.link.up:
            return
        message = {
            "o": self.owner,
            "b": backend,
            "h": status.healthy,
            "p": status.consecutive_passes,
            "f": status.consecutive_failures,
            "e": status.last_error,
            "at": time.time(),
        }
        self._post(self._health, backend, message)

    def _apply_health(self, message: dict[str, Any]) -> None:
        health = self._shared.health
        if health is not None:
            passes, failures, error = message["p"], message["f"], message["e"]
            health.apply_remote(message["b"], message["h"], passes, failures, error)

    # --- the channel --------------------------------------------------------------------------

    def _post(self, name: str, field: str, message: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a Redis this slow gets the rejoin instead
            self._outbox.put_nowait((name, field, json.dumps(message)))

    async def _publish_forever(self) -> None:
        while True:
            name, field, payload = await self._outbox.get()

            async def run(
                client: Redis, name: str = name, field: str = field, payload: str = payload
            ) -> Any:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.hset(name, field, payload)
                    pipe.publish(name, payload)
                    return await pipe.execute()

            with contextlib.suppress(RedisUnavailable):
                await self.link.call(run)

    async def _subscribe(self) -> PubSub | None:
        """Subscribe, then read the hashes (so nothing published in between is missed); None
        when Redis does not answer."""
        pubsub = self.link.client.pubsub()
        try:
            async with asyncio.timeout(BACKGROUND_TIMEOUT_S):
                await pubsub.subscribe(self._circuits, self._health)
            await self._rejoin()
        except (RedisError, OSError, TimeoutError, RedisUnavailable) as exc:
            self.link.failed(f"subscription failed: {type(exc).__name__}: {exc}")
            await _close(pubsub)
            return None
        return pubsub

    async def _subscribe_forever(self) -> None:
        while True:
            if self._pubsub is None:
                await self.link.wait_up()
                self._pubsub = await self._subscribe()
                if self._pubsub is None:
                    await asyncio.sleep(RESUBSCRIBE_PAUSE_S)
                    continue
            try:
                while True:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=1.0
                    )
                    if message is not None:
                        self._received(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                self.link.failed(f"subscription lost: {type(exc).__name__}: {exc}")
                await _close(self._pubsub)
                self._pubsub = None
                await asyncio.sleep(RESUBSCRIBE_PAUSE_S)

    def _received(self, channel: bytes, data: bytes) -> None:
        try:
            message = json.loads(data)
            if message.get("o") == self.owner:
                return
            if channel.decode() == self._circuits:
                self._apply_circuit(message)
            else:
                self._apply_health(message)
        except (ValueError, KeyError, TypeError):
            shown = channel.decode(errors="replace")
            log.warning("ignored a malformed cluster message on %s", shown)

    async def _rejoin(self) -> None:
        async def run(client: Redis) -> Any:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._circuits)
                pipe.hgetall(self._health)
                return await pipe.execute()

        circuits, health = await self.link.call(run)
        entries = {k.decode(): json.loads(v) for k, v in circuits.items()}
        for breaker in list(self._shared.breakers):
            entry = entries.get(breaker.backend)
            seen_at = entry.get("at", 0.0) if entry is not None else 0.0
            if entry is not None and entry.get("o") != self.owner and seen_at > breaker.changed_at:
                self._apply_circuit(entry)
            elif breaker.changed_at > seen_at and breaker.changed_at > 0:
                local = self._circuit_message(breaker, breaker.state)
                self._post(self._circuits, breaker.backend, local)
        checker = self._shared.health
        if checker is None:
            return
        fresh_s = 2 * checker.config.interval_s + checker.config.timeout_ms / 1000
        for value in health.values():
            message = json.loads(value)
            if message.get("o") != self.owner and time.time() - message["at"] <= fresh_s:
                self._apply_health(message)  # an older one: its prober is gone, ours decides

    async def _rejoin_quietly(self) -> None:
        with contextlib.suppress(RedisUnavailable, ValueError):
            await self._rejoin()

    # --- the link -----------------------------------------------------------------------------

    def _link_changed(self, up: bool) -> None:
        """Down: every process decides alone. Up: trials need a lease again (the subscriber
        rejoins once it is subscribed)."""
        if not up:
            self._leases.clear()
        self._shared.breakers.lease_trials(up)

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()  # type: ignore[no-untyped-call]
