"""Rate-limit keys: which counter a request is charged to.

Rule: a request is charged once per key strategy of its policy (``Composite`` lists several; the
request must pass all of them). Keys are ``<prefix>:<scope>:<parts>``; the scope is ``global`` for
the top-level ``rate_limit`` block and ``route=<id>`` for a route's own block, so a route override
never shares counters with the global policy.

- ``PerIP``: the client IP (the peer, or ``X-Forwarded-For`` from a trusted proxy);
- ``PerUser``: the JWT ``sub``; a request without a verified user is keyed by IP instead
  (``user`` is never taken from an unverified header);
- ``PerRoute``: the route id (never the raw path, so ``/users/1`` and ``/users/2`` share it);
- ``PerIPAndRoute`` / ``PerUserAndRoute``: both parts.

Limits: ``requests_per_window + burst_allowance`` requests per ``window_duration`` seconds for
FixedWindow and SlidingWindow; TokenBucket refills ``requests_per_window / window_duration`` tokens
per second up to that same capacity.
"""

from __future__ import annotations

from dataclasses import dataclass

from kairos_core.config.models import RateLimitConfig


@dataclass(frozen=True, slots=True)
class LimitKey:
    """One counter a request is charged to, with the strategy that produced it."""

    strategy: str
    key: str


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
    return tuple(
        LimitKey(strategy, f"{policy.redis_key_prefix}:{scope}:{parts[strategy]}")
        for strategy in policy.strategies
    )


def describe(policy: RateLimitConfig) -> str:
    """One line for humans: ``100 requests / 60 s (+20 burst), SlidingWindow, PerIP``."""
    burst = f" (+{policy.burst_allowance} burst)" if policy.burst_allowance else ""
    strategies = " + ".join(policy.strategies)
    return (
        f"{policy.requests_per_window} requests / {policy.window_duration} s{burst}, "
        f"{policy.window_type}, {strategies}"
    )
