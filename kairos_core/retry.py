"""Retries: the schedule, the budget, and the loop that runs them.

Rule (kairos-rs compatible): retry ``n`` (0-based) waits ``min(initial_backoff_ms *
backoff_multiplier ** n, max_backoff_ms)``; with the defaults 100, 200, 400, 800, ... capped at
5000 ms. There are at most ``max_retries`` retries, so ``max_retries + 1`` attempts. With ``jitter``
(the default) the real wait is drawn uniformly from ``[0, that value]`` ("full jitter"), which
spreads synchronized clients apart; the schedule printed by ``kairos route-test`` shows the upper
bound. An upstream ``Retry-After`` replaces the computed wait when it is at most ``max_backoff_ms``;
a longer one ends the retries and its answer goes back to the client as it came (a request is
never held for as long as an upstream asks). The deadline caps every wait too.
Zero ``initial_backoff_ms`` means immediate retries.

What is retried, and when (DESIGN.md §5), is decided here for the pipeline and the dry run alike:

- :func:`replayable`: only a request whose body can be sent again is retried at all: no body, or
  a declared ``Content-Length`` within ``max_replay_bytes`` (read once and kept). A chunked body
  or a larger one streams to the first attempt only.
- :func:`may_resend`: a request that reached the upstream may be sent again when its method is
  idempotent (not POST or PATCH), when it carries ``Idempotency-Key``, or when the route sets
  ``retry_non_idempotent``.
- :func:`classify`: a ``retry_on_status_codes`` answer is retried when the request may be resent
  (its ``Retry-After`` is kept); a connection error is retried when ``retry_on_connection_error``
  is on and either the request never left (connect failed) or it may be resent. Nothing else.

The first attempt never enters tenacity, so a route whose first attempt succeeds pays nothing
for having a retry policy. Retries never exceed the :class:`RetryBudget`.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_result

from kairos_core.config.models import RetryConfig
from kairos_core.http import NON_IDEMPOTENT_METHODS
from kairos_core.upstream import UpstreamError

T = TypeVar("T")


def backoff_ms(policy: RetryConfig, retry_index: int) -> float:
    """Upper bound of the wait before retry ``retry_index`` (0 = the first retry)."""
    if retry_index < 0:
        raise ValueError("retry_index must be >= 0")
    if policy.initial_backoff_ms == 0:
        return 0.0
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


class RetryBudget:
    """Caps retries at ``budget_percent`` of a route's recent requests, with a floor.

    Rule: over the last ``window_s`` seconds (10), retries may number at most
    ``budget_percent / 100 × requests + min_retries_per_second × window_s``. Every request that
    reaches the forward step counts once (``record_request``); every retry must win
    ``try_acquire`` first, and a refused retry ends the attempts (the last upstream answer is
    returned). With the defaults (20 %, 3/s) a dead upstream sees at most 1.2× the request rate
    plus 3 retries a second, never ``max_retries + 1`` times the load.
    """

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, requests, retries]

    def record_request(self) -> None:
        self._bucket()[1] += 1

    def try_acquire(self, budget_percent: float, min_retries_per_second: float) -> bool:
        bucket = self._bucket()
        requests = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        allowed = budget_percent / 100 * requests + min_retries_per_second * self._window_s
        if retries + 1 > allowed:
            return False
        bucket[2] += 1
        return True

    def _bucket(self) -> list[int]:
        second = int(self._clock())
        horizon = second - int(self._window_s) + 1
        while self._buckets and self._buckets[0][0] < horizon:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Whether an outcome may be retried, why (for metrics), and an upstream ``Retry-After``."""

    retry: bool
    reason: str = ""
    retry_after_s: float | None = None


NO_RETRY = RetryDecision(False)


def replayable(*, chunked: bool, length: int | None, policy: RetryConfig) -> bool:
    """Whether the body can be sent again; ``length`` None with no chunking means no body."""
    return not chunked and (length is None or length <= policy.max_replay_bytes)


def may_resend(method: str, *, idempotency_key: bool, policy: RetryConfig) -> bool:
    """Whether a request that reached the upstream may be sent to it (or another) again."""
    return method not in NON_IDEMPOTENT_METHODS or idempotency_key or policy.retry_non_idempotent


def classify(
    policy: RetryConfig,
    *,
    resend: bool,
    status: int | None = None,
    retry_after: str | None = None,
    error: UpstreamError | None = None,
) -> RetryDecision:
    """Whether one attempt's outcome (an upstream ``status``, or an ``error``) is retried."""
    if status is not None:
        if status in policy.retry_on_status_codes and resend:
            return RetryDecision(True, f"status_{status}", parse_retry_after(retry_after))
        return NO_RETRY
    if error is None or not policy.retry_on_connection_error:
        return NO_RETRY
    if not error.sent or resend:
        return RetryDecision(True, error.kind)
    return NO_RETRY


async def retry_after_first(
    first: T,
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryConfig,
    classify: Callable[[T], RetryDecision],
    budget: RetryBudget,
    deadline: float | None,
    discard: Callable[[T], Awaitable[None]],
    rng: random.Random,
    on_retry: Callable[[str, float], None] = lambda reason, wait_s: None,
    on_budget_exhausted: Callable[[], None] = lambda: None,
) -> T:
    """Retry after a first attempt made outside tenacity; return the last outcome.

    ``first`` is the outcome of attempt 1. If ``classify`` calls it retryable, tenacity runs the
    schedule: it waits ``jittered_backoff_ms`` (or the upstream's ``Retry-After``), then calls
    ``attempt`` again, until an outcome is not retryable, ``max_retries`` retries were made, the
    next wait would pass ``deadline`` (``time.monotonic()`` seconds), or ``budget`` refuses.
    Whatever stops it, the last outcome is returned as it came; every outcome that is retried
    over is ``discard``-ed first (its body is released). ``on_retry`` hears each retry's reason
    and the seconds it waits first.
    """
    if not classify(first).retry:
        return first
    pending = [first]

    async def next_outcome() -> T:
        return pending.pop() if pending else await attempt()

    def wait(state: RetryCallState) -> float:
        decision = classify(state.outcome.result())  # type: ignore[union-attr]
        if decision.retry_after_s is not None:
            return decision.retry_after_s
        return jittered_backoff_ms(policy, state.attempt_number - 1, rng) / 1000

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number > policy.max_retries:
            return True
        asked = classify(state.outcome.result()).retry_after_s  # type: ignore[union-attr]
        if asked is not None and asked * 1000 > policy.max_backoff_ms:
            return True  # "come back in an hour": the client gets that answer, not a held socket
        if deadline is not None and time.monotonic() + (state.upcoming_sleep or 0) >= deadline:
            return True
        if not budget.try_acquire(policy.budget_percent, policy.min_retries_per_second):
            on_budget_exhausted()
            return True
        return False

    async def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome.result()  # type: ignore[union-attr]
        on_retry(classify(outcome).reason, state.upcoming_sleep or 0.0)
        await discard(outcome)

    retrying = AsyncRetrying(
        stop=stop,
        wait=wait,
        retry=retry_if_result(lambda outcome: classify(outcome).retry),
        before_sleep=before_sleep,
        retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
        reraise=True,
    )
    result: T = await retrying(next_outcome)
    return result


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
