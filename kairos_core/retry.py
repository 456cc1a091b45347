"""Retry schedule: how long to wait before each retry.

Rule (kairos-rs compatible): retry ``n`` (0-based) waits ``min(initial_backoff_ms *
backoff_multiplier ** n, max_backoff_ms)``; with the defaults 100, 200, 400, 800, ... capped at
5000 ms. There are at most ``max_retries`` retries, so ``max_retries + 1`` attempts. With ``jitter``
(the default) the real wait is drawn uniformly from ``[0, that value]`` ("full jitter"), which
spreads synchronized clients apart; the schedule printed by ``kairos route-test`` shows the upper
bound. An upstream ``Retry-After`` replaces the computed wait (the deadline still caps it).
Zero ``initial_backoff_ms`` means immediate retries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kairos_core.config.models import RetryConfig


def backoff_ms(policy: RetryConfig, retry_index: int) -> float:
    """Upper bound of the wait before retry ``retry_index`` (0 = the first retry)."""
    if retry_index < 0:
        raise ValueError("retry_index must be >= 0")
    # exponent grows without bound; cap before the power overflows a float
    exponent = min(retry_index, 1024)
    try:
        raw = policy.initial_backoff_ms * policy.backoff_multiplier**exponent
    except OverflowError:
        raw = float(policy.max_backoff_ms)
    return float(min(raw, policy.max_backoff_ms))


def jittered_backoff_ms(policy: RetryConfig, retry_index: int, rng: random.Random) -> float:
    """The wait actually used: full jitter in ``[0, backoff_ms]`` unless jitter is off."""
    ceiling = backoff_ms(policy, retry_index)
    return rng.uniform(0.0, ceiling) if policy.jitter else ceiling


@dataclass(frozen=True, slots=True)
class RetryStep:
    """One planned retry, for display: attempt number (2 = first retry) and its wait."""

    attempt: int
    wait_ms: float
    jitter: bool


def retry_schedule(policy: RetryConfig) -> list[RetryStep]:
    """Every retry the policy allows, in order."""
    return [
        RetryStep(attempt=n + 2, wait_ms=backoff_ms(policy, n), jitter=policy.jitter)
        for n in range(policy.max_retries)
    ]
