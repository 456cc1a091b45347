"""Rate-limit keys: which counter a request is charged to.

Rule: a request is charged once per key strategy of its policy (``Composite`` lists several; the
request must pass all of them). Keys are ``<prefix>:<scope>:<parts>``; the scope is ``global`` for
the top-level ``rate_limit`` block and ``route=<id>`` for a route's own block, so a route override
never shares counters with the global policy.

- ``PerIP``: the client IP (the peer, or ``X-Forwarded-For`` from a trusted proxy);
- ``PerUser``: the JWT ``sub``; a request without a verified user is keyed by IP instead
  (``user`` is never taken from an unverified header); when two strategies of a Composite
  produce the same key (PerIP and PerUser for an anonymous request) it is charged once;
- ``PerRoute``: the route id (never the raw path, so ``/users/1`` and ``/users/2`` share it);
- ``PerIPAndRoute`` / ``PerUserAndRoute``: both parts.

Limits: ``requests_per_window + burst_allowance`` requests per ``window_duration`` seconds for
FixedWindow (a key's window opens at its first request and the count resets when it ends, as
``limits``' fixed window) and SlidingWindow (exactly N requests in any window-long span, as
``limits``' moving window);
TokenBucket refills ``requests_per_window / window_duration`` tokens per second up to that same
capacity and starts full. Composite policies charge every key and refuse if any refuses (earlier
keys stay charged, as with Envoy's descriptors). Each Composite part enforces its own numbers
(``{"strategy": "PerIP", "requests_per_window": 10, "window_duration": 1}``; the numbers a part
leaves out are the block's): its key carries that sub-policy (``LimitKey.policy``), and two parts
with the same key but different numbers are two counters (a per-second burst limit and a
per-minute one on the same client IP). Responses of a limited route carry
``RateLimit-Limit``, ``RateLimit-Remaining`` (of the tightest key) and ``RateLimit-Reset``
(seconds until the window resets, or until the bucket is full); a 429 adds ``Retry-After``.

Where the counters live is no policy's business (:class:`RateLimiter`): this process's memory by
default (:class:`MemoryLimits`), Redis in cluster mode (:mod:`kairos_core.redislimits`: the same
windows and bucket, shared by every worker and instance).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass
from typing import Protocol

from kairos_core.config.models import RateLimitConfig


@dataclass(frozen=True)
class LimitKey:
    """One counter a request is charged to, with the strategy that produced it.

    ``policy`` is the Composite part whose numbers this counter enforces when they differ from
    the policy's own (None: the policy given to :meth:`RateLimiter.check`). It travels with the
    key but is not one of its fields: a key's documented shape (the dry run's
    ``{"strategy", "key"}``) and its equality stay those of the counter's name.
    """

    strategy: str
    key: str
    sub_policy: InitVar[RateLimitConfig | None] = None

    def __post_init__(self, sub_policy: RateLimitConfig | None) -> None:
        object.__setattr__(self, "_policy", sub_policy)

    @property
    def policy(self) -> RateLimitConfig | None:
        policy: RateLimitConfig | None = self.__dict__["_policy"]
        return policy


def capacity(policy: RateLimitConfig) -> int:
    """Requests allowed per window (or token-bucket capacity)."""
    return policy.requests_per_window + policy.burst_allowance


def refill_per_second(policy: RateLimitConfig) -> float:
    """Token-bucket refill rate."""
    return policy.requests_per_window / policy.window_duration


def limit_keys(
    policy: RateLimitConfig,
    *,
    route_id: str,
    client_ip: str,
    user: str | None,
    route_scoped: bool,
) -> tuple[LimitKey, ...]:
    """The keys of every strategy of ``policy`` for one request."""
    scope = f"route={route_id}" if route_scoped else "global"
    who_user = f"user={user}" if user else f"ip={client_ip}"
    parts = {
        "PerIP": f"ip={client_ip}",
        "PerUser": who_user,
        "PerRoute": f"route={route_id}",
        "PerIPAndRoute": f"route={route_id}:ip={client_ip}",
        "PerUserAndRoute": f"route={route_id}:{who_user}",
    }
    keys: dict[tuple[str, tuple[int, int, int, str]], LimitKey] = {}
    for part in policy.parts:
        strategy = str(part.strategy)  # a part's strategy is always a simple one
        key = f"{policy.redis_key_prefix}:{scope}:{parts[strategy]}"
        own = part if part.numbers != policy.numbers else None
        # one counter (same key, same numbers) is charged once
        keys.setdefault((key, part.numbers), LimitKey(strategy, key, own))
    return tuple(keys.values())


def describe(policy: RateLimitConfig) -> str:
    """One line for humans: ``100 requests / 60 s (+20 burst), SlidingWindow, PerIP``; a
    Composite whose parts set their own numbers shows each part:
    ``PerIP: 10 requests / 1 s, FixedWindow; PerUser: 100 requests / 60 s, SlidingWindow``."""
    if all(part.numbers == policy.numbers for part in policy.parts):
        return f"{_numbers(policy)}, {' + '.join(policy.strategies)}"
    return "; ".join(f"{part.strategy}: {_numbers(part)}" for part in policy.parts)


def _numbers(policy: RateLimitConfig) -> str:
    burst = f" (+{policy.burst_allowance} burst)" if policy.burst_allowance else ""
    return (
        f"{policy.requests_per_window} requests / {policy.window_duration} s{burst}, "
        f"{policy.window_type}"
    )


# --- the limiter ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """The verdict for one request and the ``RateLimit-*`` headers that describe it."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float = 0.0

    def headers(self) -> list[tuple[str, str]]:
        out = [
            ("RateLimit-Limit", str(self.limit)),
            ("RateLimit-Remaining", str(max(self.remaining, 0))),
            ("RateLimit-Reset", str(max(math.ceil(self.reset_s), 0))),
        ]
        if not self.allowed:
            out.append(("Retry-After", str(max(math.ceil(self.retry_after_s), 1))))
        return out


class TokenBuckets:
    """Token buckets in memory (``limits`` has none): refill continuously, take one per request.

    A bucket starts full. Buckets that have refilled completely carry no information and are
    dropped by a periodic sweep, so memory stays bounded by the number of recently active keys.
    """

    _SWEEP_EVERY = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (key, capacity, rate) -> tokens, updated, full at
        self._buckets: dict[tuple[str, int, float], tuple[float, float, float]] = {}
        self._operations = 0

    def take(self, key: str, capacity: int, rate_per_s: float) -> LimitDecision:
        """Take a token from the bucket of ``key`` with this capacity and rate (the same key
        with other numbers is another bucket)."""
        now = self._clock()
        bucket = (key, capacity, rate_per_s)
        tokens, updated, _ = self._buckets.get(bucket, (float(capacity), now, now))
        tokens = min(float(capacity), tokens + (now - updated) * rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        until_full = (capacity - tokens) / rate_per_s
        self._buckets[bucket] = (tokens, now, now + until_full)
        self._operations += 1
        if self._operations % self._SWEEP_EVERY == 0:
            self._sweep(now)
        until_one = 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate_per_s
        return LimitDecision(allowed, capacity, int(tokens), until_full, until_one)

    def _sweep(self, now: float) -> None:
        """Forget buckets that have refilled completely: they would start full anyway."""
        self._buckets = {k: v for k, v in self._buckets.items() if v[2] > now}


class Windows:
    """Fixed and moving windows in memory, for one process (the rules in the module docstring).

    ``limits`` counts the same way, but its memory storage starts a timer thread every 10 ms that
    walks every key under the GIL: with 100,000 client keys alive it took 90 % of a core and
    tripled the cost of a check (README, *Dependencies*). Here nothing runs between requests: a
    key keeps its window's end and count (fixed) or the times of its admitted requests (moving,
    at most ``limit`` of them), and keys whose window has passed are forgotten by a sweep that a
    check runs at most every ``SWEEP_EVERY_S`` seconds.
    """

    SWEEP_EVERY_S = 5.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (key, limit, window) -> [window end, count]
        self._fixed: dict[tuple[str, int, float], list[float]] = {}
        # (key, limit, window) -> times of the admitted requests, oldest first
        self._moving: dict[tuple[str, int, float], deque[float]] = {}
        self._next_sweep = clock() + self.SWEEP_EVERY_S

    def fixed(self, key: str, limit: int, window_s: float) -> LimitDecision:
        now = self._clock()
        self._maybe_sweep(now)
        counter = (key, limit, window_s)
        entry = self._fixed.get(counter)
        if entry is None or entry[0] <= now:
            entry = self._fixed[counter] = [now + window_s, 0]
        allowed = entry[1] < limit
        if allowed:
            entry[1] += 1
        reset_s = entry[0] - now
        return LimitDecision(allowed, limit, limit - int(entry[1]), reset_s, reset_s)

    def moving(self, key: str, limit: int, window_s: float) -> LimitDecision:
        now = self._clock()
        self._maybe_sweep(now)
        counter = (key, limit, window_s)
        times = self._moving.get(counter)
        if times is None:
            times = self._moving[counter] = deque(maxlen=limit)
        horizon = now - window_s
        while times and times[0] <= horizon:
            times.popleft()
        allowed = len(times) < limit
        if allowed:
            times.append(now)
        reset_s = times[0] + window_s - now if times else window_s
        return LimitDecision(allowed, limit, limit - len(times), reset_s, reset_s)

    def _maybe_sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_EVERY_S
        self._fixed = {k: v for k, v in self._fixed.items() if v[0] > now}
        self._moving = {k: v for k, v in self._moving.items() if v and v[-1] > now - k[2]}


Charge = tuple[RateLimitConfig, str]
"""One counter to charge: the numbers it enforces and its key."""


class SharedCounters(Protocol):
    """Counters every worker and instance share (:class:`~kairos_core.redislimits.RedisLimits`):
    the decision of each charge, in order; ``local`` decides when the shared store cannot and
    its ``on_redis_error`` policy says so."""

    async def charge(
        self, charges: Sequence[Charge], local: MemoryLimits
    ) -> Sequence[LimitDecision]: ...


class MemoryLimits:
    """Counters in this process: :class:`Windows` and :class:`TokenBuckets` (nothing there ever
    waits, so coroutines would only add overhead)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._windows = Windows(clock)
        self._buckets = TokenBuckets(clock)

    def charge(self, charges: Sequence[Charge]) -> list[LimitDecision]:
        return [self._charge_one(policy, key) for policy, key in charges]

    def _charge_one(self, policy: RateLimitConfig, key: str) -> LimitDecision:
        limit = capacity(policy)
        if policy.window_type == "TokenBucket":
            return self._buckets.take(key, limit, refill_per_second(policy))
        if policy.window_type == "FixedWindow":
            return self._windows.fixed(key, limit, policy.window_duration)
        return self._windows.moving(key, limit, policy.window_duration)


class RateLimiter:
    """Checks a request against its policy's keys; the policies never know where the counters
    live. Without ``shared`` they are this process's (:class:`MemoryLimits`); with it (cluster
    mode) every worker and instance charges the same counters, and this process's own decide
    only when the shared store cannot answer and ``cluster.on_redis_error`` is ``allow``.
    """

    def __init__(self, shared: SharedCounters | None = None) -> None:
        self.local = MemoryLimits()
        self.shared = shared

    async def check(self, policy: RateLimitConfig, keys: Sequence[LimitKey]) -> LimitDecision:
        """Charge every key against its own numbers (its Composite part's, else ``policy``'s);
        the request passes only if all of them allow it."""
        charges = [(key.policy or policy, key.key) for key in keys]
        if self.shared is None:
            decisions: Sequence[LimitDecision] = self.local.charge(charges)
        else:
            decisions = await self.shared.charge(charges, self.local)
        refused = [d for d in decisions if not d.allowed]
        if refused:
            return max(refused, key=lambda d: d.retry_after_s)
        return min(decisions, key=lambda d: d.remaining)
