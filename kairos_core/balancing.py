"""Load balancing: pick one backend of a route among the currently eligible ones.

Every balancer answers ``pick(candidates, client_key)`` where ``candidates`` are indices into the
route's backend list that the breaker admits and health checks pass, in ascending order. Balancers
are pure objects: all state lives on the instance (one per route per config), randomness comes
only from ``random.Random(seed)``, and they run on one asyncio thread, so they take no locks.

Rules, per ``routers[].load_balancing_strategy`` (DESIGN.md §3):

- All strategies: empty ``candidates`` raises ``NoCandidates``; one candidate is always picked.
- ``round_robin``: pick the first candidate whose index is greater than the last pick, wrapping
  to the lowest candidate. An ineligible backend is skipped and rotation resumes after the last
  pick, so ``0, 1, 2, 0`` becomes ``0, 2, 0, 2`` while backend 1 is out. Weights are ignored.
- ``weighted``: nginx smooth weighted round robin. Each pick adds every candidate's weight to its
  ``current``, picks the highest ``current`` (lowest index on a tie) and subtracts the candidates'
  total weight from it. Over ``sum(weights)`` picks each backend is picked exactly ``weight``
  times, interleaved: 2:1 gives ``a, b, a`` and 5:1:1 gives ``a, a, b, a, c, a, a``. Equal
  weights give plain rotation. ``current`` is kept per backend index; an ineligible backend does
  not take part in a pick and keeps its ``current`` until it returns.
- ``least_connections``: pick the candidate with the fewest in-flight requests in the shared
  ``InFlight`` (by backend key); ties rotate round robin among the tied, so equal load spreads.
  Without a shared ``InFlight`` it counts nothing and behaves as ``round_robin``.
- ``random``: weighted random draw over the candidates' weights (uniform when weights are equal),
  reproducible for a given ``seed``.
- ``ip_hash``: weighted rendezvous hashing. Each candidate scores ``-weight / ln(h)`` where ``h``
  in (0, 1) is a blake2b hash of (backend key, client key); the highest score wins (lowest index
  on a tie). The same client key always lands on the same backend; adding a backend moves only
  the keys it now wins (about ``1/(n+1)``), removing one or making it ineligible moves only its
  own keys. ``client_key=None`` picks the lowest candidate index.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

__all__ = [
    "STRATEGIES",
    "BackendRef",
    "Balancer",
    "InFlight",
    "IpHash",
    "LeastConnections",
    "NoCandidates",
    "Random",
    "RoundRobin",
    "SmoothWeighted",
    "make_balancer",
]

BalancingStrategy = Literal["round_robin", "weighted", "least_connections", "random", "ip_hash"]
"""The ``load_balancing_strategy`` names (the config schema takes them from here)."""
STRATEGIES: tuple[str, ...] = get_args(BalancingStrategy)


class NoCandidates(Exception):
    """No backend of the route is eligible (all open, unhealthy or none configured)."""


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A backend as balancers see it: stable identity ``scheme://host:port`` and its weight."""

    key: str
    weight: int = 1

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"backend {self.key!r}: weight must be >= 1, got {self.weight}")


class InFlight:
    """Real in-flight request counts keyed by backend key (str, e.g. 'http://127.0.0.1:8080');
    shared by all routes and carried across config reloads."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def acquire(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    def release(self, key: str) -> None:
        """Decrement the count; an unmatched release is ignored rather than going below zero."""
        count = self._counts.get(key, 0)
        if count <= 1:
            self._counts.pop(key, None)
        else:
            self._counts[key] = count - 1

    def get(self, key: str) -> int:
        return self._counts.get(key, 0)

    def total(self) -> int:
        return sum(self._counts.values())

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)


class Balancer(Protocol):
    """Picks one index out of ``candidates``: eligible backend indices, ascending, non-empty.

    ``preview_note`` says how a dry run's pick (made on a fresh balancer) relates to the running
    gateway's.
    """

    name: str
    preview_note: str

    def pick(self, candidates: Sequence[int], client_key: str | None = None) -> int: ...


def _require(candidates: Sequence[int]) -> None:
    if not candidates:
        raise NoCandidates("no eligible backend to pick from")


class RoundRobin:
    """Strict rotation by backend index over the candidates, resuming after the last pick."""

    name = "round_robin"
    preview_note = "first pick of a fresh rotation; the running gateway rotates"

    def __init__(self) -> None:
        self._last = -1

    def pick(self, candidates: Sequence[int], client_key: str | None = None) -> int:
        _require(candidates)
        chosen = next((index for index in candidates if index > self._last), candidates[0])
        self._last = chosen
        return chosen


class SmoothWeighted:
    """nginx smooth weighted round robin: exact proportions, interleaved."""

    name = "weighted"
    preview_note = "first pick of a fresh smooth weighted rotation; the running gateway rotates"

    def __init__(self, backends: Sequence[BackendRef]) -> None:
        self._weights = [backend.weight for backend in backends]
        self._current = [0] * len(backends)

    def pick(self, candidates: Sequence[int], client_key: str | None = None) -> int:
        _require(candidates)
        total = 0
        best = candidates[0]
        for index in candidates:
            self._current[index] += self._weights[index]
            total += self._weights[index]
            if self._current[index] > self._current[best]:
                best = index
        self._current[best] -= total
        return best


class LeastConnections:
    """Fewest in-flight requests wins; ties rotate round robin among the tied."""

    name = "least_connections"
    preview_note = "fewest in-flight requests now; ties rotate"

    def __init__(self, backends: Sequence[BackendRef], in_flight: InFlight) -> None:
        self._keys = [backend.key for backend in backends]
        self.in_flight = in_flight
        self._tie_breaker = RoundRobin()

    def pick(self, candidates: Sequence[int], client_key: str | None = None) -> int:
        _require(candidates)
        loads = {index: self.in_flight.get(self._keys[index]) for index in candidates}
        fewest = min(loads.values())
        return self._tie_breaker.pick([index for index in candidates if loads[index] == fewest])


class Random:
    """Weighted random draw over the candidates' weights, reproducible under ``seed``."""

    name = "random"
    preview_note = "one weighted random draw; the running gateway draws per request"

    def __init__(self, backends: Sequence[BackendRef], seed: int | None = None) -> None:
        self._weights = [backend.weight for backend in backends]
        self._rng = random.Random(seed)

    def pick(self, candidates: Sequence[int], client_key: str | None = None) -> int:
        _require(candidates)
        weights = [self._weights[index] for index in candidates]
        return self._rng.choices(candidates, weights=weights)[0]


class IpHash:
    """Weighted rendezvous hashing of ``client_key`` against backend keys (blake2b, stable)."""

    name = "ip_hash"
    preview_note = "stable for this client IP"

    def __init__(self, backends: Sequence[BackendRef]) -> None:
        self._backends = tuple(backends)

    def pick(self, candidates: Sequence[int], client_key: str | None = None) -> int:
        _require(candidates)
        if client_key is None:
            return candidates[0]
        # max() keeps the first of equal scores, i.e. the lowest index.
        return max(candidates, key=lambda index: self._score(self._backends[index], client_key))

    @staticmethod
    def _score(backend: BackendRef, client_key: str) -> float:
        digest = hashlib.blake2b(f"{backend.key}\x00{client_key}".encode(), digest_size=8).digest()
        # 52 bits plus one half is exact in a float and strictly inside (0, 1), so ln(h) < 0.
        unit = ((int.from_bytes(digest, "big") >> 12) + 0.5) / (1 << 52)
        return -backend.weight / math.log(unit)


def make_balancer(
    strategy: str,
    backends: Sequence[BackendRef],
    *,
    in_flight: InFlight | None = None,
    seed: int | None = None,
) -> Balancer:
    """Build the balancer for ``routers[].load_balancing_strategy``.

    ``in_flight`` is the gateway-wide ``InFlight`` used by ``least_connections``; ``seed`` makes
    ``random`` reproducible. Raises ``ValueError`` naming the allowed strategies.
    """
    if strategy == "round_robin":
        return RoundRobin()
    if strategy == "weighted":
        return SmoothWeighted(backends)
    if strategy == "least_connections":
        return LeastConnections(backends, in_flight if in_flight is not None else InFlight())
    if strategy == "random":
        return Random(backends, seed)
    if strategy == "ip_hash":
        return IpHash(backends)
    raise ValueError(
        f"unknown load_balancing_strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}"
    )
