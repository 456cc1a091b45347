"""Backend selection (DESIGN.md §2 step 6): which backend an attempt goes to, or why none can.

The gateway, the dry run (``kairos route-test``, ``POST /api/route-test``) and readiness all
call these functions, so they cannot disagree. Rules, in order:

1. A backend is a **candidate** when its active health check passes and its breaker admits
   traffic now (closed; open with ``reset_timeout_s`` elapsed; half-open with a free trial slot).
2. The route's primary ``backends`` are used when at least one is a candidate; its ``fallback``
   backends only when none is.
3. No candidate in either pool → 503. ``circuit_open`` when some backend that passes its health
   check is held back by its breaker (``Retry-After``: the soonest half-open, at least 1 s);
   otherwise ``no_healthy_backend``. So "A open, B unhealthy" is ``circuit_open``: A will be
   back on its own.
4. A candidate this request has not tried yet is preferred (a retry goes elsewhere when it can).
5. The AI selector (routes with an enabled ``ai_policy``, first attempt, primary pool) may name
   one candidate (``AiChoice.index``) or narrow the set (``AiChoice.among``); a choice that is no
   longer a candidate, or not fresh, is ignored. The route's balancing strategy picks among what
   remains.

Backend state is read through :class:`BackendStates`: the live ``SharedState`` in the gateway,
and :class:`SnapshotStates` in a dry run (offline: every backend healthy and closed; with
``--live``, built from the admin API's circuit data, each field as the gateway computed it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from kairos_core.balancing import Balancer
from kairos_core.config.models import Backend
from kairos_core.errors import GatewayError

Pool = Literal["backends", "fallback"]
CircuitState = Literal["closed", "open", "half_open"]

__all__ = [
    "BackendObservations",
    "BackendSnapshot",
    "BackendStates",
    "BackendStats",
    "Candidates",
    "Pool",
    "SnapshotStates",
    "find_candidates",
    "pick",
]


@dataclass(frozen=True, slots=True)
class BackendStats:
    """Recent upstream behaviour of one backend, as the AI strategies and the prompt read it.

    ``latency_ms`` and ``error_rate`` follow the last few attempts (EWMA, weight 0.3);
    ``baseline_*`` follow the long run (weight 0.02). ``age_s`` is the time since the last
    attempt ended (None before the first).
    """

    samples: int = 0
    latency_ms: float | None = None
    baseline_latency_ms: float | None = None
    error_rate: float = 0.0
    baseline_error_rate: float = 0.0
    age_s: float | None = None


class BackendStates(Protocol):
    """What selection reads about a backend, by key (``scheme://host:port``)."""

    def healthy(self, key: str) -> bool: ...

    def admits(self, key: str) -> bool: ...

    def circuit(self, key: str) -> CircuitState: ...

    def seconds_until_half_open(self, key: str) -> float: ...

    def in_flight_count(self, key: str) -> int: ...

    def stats(self, key: str) -> BackendStats: ...


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    """One backend's state at one moment, for a dry run."""

    healthy: bool = True
    circuit: CircuitState = "closed"
    admits: bool = True
    seconds_until_half_open: float = 0.0
    in_flight: int = 0
    stats: BackendStats = BackendStats()


_ASSUMED = BackendSnapshot()


class SnapshotStates:
    """:class:`BackendStates` from a fixed map; a backend not in it is healthy and closed."""

    def __init__(self, snapshots: Mapping[str, BackendSnapshot] | None = None) -> None:
        self._snapshots = dict(snapshots or {})

    def _get(self, key: str) -> BackendSnapshot:
        return self._snapshots.get(key, _ASSUMED)

    def healthy(self, key: str) -> bool:
        return self._get(key).healthy

    def admits(self, key: str) -> bool:
        return self._get(key).admits

    def circuit(self, key: str) -> CircuitState:
        return self._get(key).circuit

    def seconds_until_half_open(self, key: str) -> float:
        return self._get(key).seconds_until_half_open

    def in_flight_count(self, key: str) -> int:
        return self._get(key).in_flight

    def stats(self, key: str) -> BackendStats:
        return self._get(key).stats


class Candidates(NamedTuple):
    """The pool a request draws from and the indices (into ``backends``) that are candidates
    (found for every attempt: a named tuple, immutable and cheap to build)."""

    pool: Pool
    backends: tuple[Backend, ...]
    indices: tuple[int, ...]

    def keys(self) -> tuple[str, ...]:
        return tuple(self.backends[i].key for i in self.indices)


def is_candidate(states: BackendStates, key: str) -> bool:
    """Rule 1."""
    return states.healthy(key) and states.admits(key)


def find_candidates(
    backends: tuple[Backend, ...], fallback: tuple[Backend, ...], states: BackendStates
) -> Candidates | GatewayError:
    """Rules 1–3: the candidate pool, or the 503 the client gets when there is none."""
    for pool, members in (("backends", backends), ("fallback", fallback)):
        indices = tuple(i for i, b in enumerate(members) if is_candidate(states, b.key))
        if indices:
            return Candidates(pool, members, indices)  # type: ignore[arg-type]
    return no_candidate_error((*backends, *fallback), states)


def no_candidate_error(backends: Sequence[Backend], states: BackendStates) -> GatewayError:
    """Rule 3."""
    waits = [states.seconds_until_half_open(b.key) for b in backends if states.healthy(b.key)]
    if waits:
        return GatewayError(
            "circuit_open", "every backend's circuit breaker is open", retry_after_s=min(waits)
        )
    return GatewayError("no_healthy_backend", "no backend passes its health check")


@dataclass(frozen=True, slots=True)
class AiChoice:
    """What the AI selector wants: one candidate (``index``) or a narrower set (``among``)."""

    index: int | None = None
    among: tuple[int, ...] | None = None


def pick(
    found: Candidates,
    balancer: Balancer,
    *,
    tried: Collection[str] = (),
    client_key: str | None = None,
    choice: AiChoice | None = None,
) -> int:
    """Rules 4–5: the index (into ``found.backends``) of the backend to use."""
    fresh = [i for i in found.indices if found.backends[i].key not in tried] or list(found.indices)
    if choice is not None:
        if choice.index is not None and choice.index in fresh:
            return choice.index
        if choice.among is not None:
            narrowed = [i for i in fresh if i in choice.among]
            if narrowed:
                fresh = narrowed
    return balancer.pick(fresh, client_key=client_key)


# --- what the AI strategies read: recent latency and errors per backend --------------------------

FAST_WEIGHT = 0.3
SLOW_WEIGHT = 0.02


class BackendObservations:
    """EWMAs of upstream time and failures per backend, fed by every finished attempt."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_key: dict[str, list[float]] = {}  # samples, lat, base lat, err, base err, at

    def observe(self, key: str, seconds: float, *, failed: bool) -> None:
        ms = seconds * 1000
        error = 1.0 if failed else 0.0
        now = self._clock()
        row = self._by_key.get(key)
        if row is None:
            self._by_key[key] = [1, ms, ms, error, error, now]
            return
        row[0] += 1
        row[1] += FAST_WEIGHT * (ms - row[1])
        row[2] += SLOW_WEIGHT * (ms - row[2])
        row[3] += FAST_WEIGHT * (error - row[3])
        row[4] += SLOW_WEIGHT * (error - row[4])
        row[5] = now

    def stats(self, key: str) -> BackendStats:
        row = self._by_key.get(key)
        if row is None:
            return BackendStats()
        return BackendStats(
            samples=int(row[0]),
            latency_ms=row[1],
            baseline_latency_ms=row[2],
            error_rate=row[3],
            baseline_error_rate=row[4],
            age_s=max(0.0, self._clock() - row[5]),
        )
