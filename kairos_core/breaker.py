"""Circuit breakers: one per backend (``scheme://host:port``), shared by every route using it.

Counting rule:

- **failures** are connection errors, timeouts and responses whose status is in
  ``failure_status_codes`` (500, 502, 503, 504 by default); anything else the backend answers is a
  **success**. Gateway-local outcomes (rate limit, retry budget, no candidate) never reach a
  breaker, and a client disconnect or cancellation during the attempt counts as **nothing**;
- **closed**: ``failure_threshold`` (5) consecutive failures open it; a success resets the count
  (an attempt cut by the request deadline is a timeout, hence a failure);
- **open**: the backend leaves the candidate set; after ``reset_timeout_s`` (30) it is due for a
  trial, and the first request admitted moves it to **half-open**;
- **half-open**: at most ``half_open_max_calls`` (1) trial requests at once (others see the
  backend as open); ``success_threshold`` (2) consecutive successes close it, any failure opens it
  again (and restarts the timeout).

pybreaker owns the state machine: each outcome is reported through ``breaker.calling()`` once it
is known, so a cancelled attempt simply never reports. An outcome counts only in the state its
attempt was admitted in: a request admitted before the last transition (a long stream that
started while the breaker was closed, say) can neither close nor reopen a half-open breaker.
The adapter adds what pybreaker lacks for asyncio: the half-open gate (pybreaker lets every
concurrent caller through) and the lazy open → half-open move at admission time. Manual
``force_open`` / ``force_close`` come from the admin API. The policy of a backend is the
``circuit_breaker`` block of the first route (in config order) that uses it, else the global
block.

Sharing (cluster mode, :mod:`kairos_core.cluster`): every process keeps its own breakers and
the request path reads only them. A local change (a transition, a forced open or close) is
told to the registry's ``on_change`` hook, which publishes it; a change another process
published is applied with :meth:`BackendBreaker.apply_remote`: an open takes the publisher's
``opened_at`` (every process's timeout ends together), a close closes and forgets failures, a
half-open is ignored (trials are the lease holder's). An applied change is a transition here
too (stale outcomes are dropped as for any transition), but it goes to the remote sink, never
to the transition sink nor back to ``on_change``. While a breaker's ``may_trial`` is false
(its process does not hold the backend's trial lease), it admits nothing once open, even past
the timeout, nor while half-open: the whole cluster sends at most ``half_open_max_calls``
trials at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pybreaker

from kairos_core.config.models import CircuitBreakerConfig

State = Literal["closed", "open", "half_open"]
_STATE_NAMES: dict[str, State] = {
    pybreaker.STATE_CLOSED: "closed",
    pybreaker.STATE_OPEN: "open",
    pybreaker.STATE_HALF_OPEN: "half_open",
}
TransitionSink = Callable[[str, State, State], None]
ChangeSink = Callable[["BackendBreaker", State], None]
"""Told of a local change: the breaker and the state it is now in."""


class _Failure(Exception):
    """Raised inside ``calling()`` to report a failed attempt to pybreaker."""


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, backend: str, sink: TransitionSink) -> None:
        self._backend = backend
        self._sink = sink

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = _STATE_NAMES.get(old_state.name if old_state else "", "closed")
        self._sink(self._backend, old, _STATE_NAMES[new_state.name])


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    backend: str
    state: State
    failures: int
    opened_at: float | None
    next_half_open_at: float | None


class Trial:
    """One admitted attempt; report it with ``success()`` / ``failure()``, or ``cancel()``."""

    __slots__ = ("_breaker", "_done", "_generation", "_trial")

    def __init__(self, breaker: BackendBreaker, trial: bool, generation: int) -> None:
        self._breaker = breaker
        self._trial = trial
        self._generation = generation
        self._done = False

    def success(self) -> None:
        self._finish(failed=False)

    def failure(self) -> None:
        self._finish(failed=True)

    def cancel(self) -> None:
        """The attempt ended without an outcome (client gone): report nothing."""
        if not self._done:
            self._done = True
            self._breaker._release(self._trial)

    def _finish(self, *, failed: bool) -> None:
        if self._done:
            return
        self._done = True
        self._breaker._release(self._trial)
        self._breaker._report(failed, self._generation)


class _Storage:
    """The one place pybreaker's private state storage is touched, for what its public API
    lacks: reading and restarting ``opened_at`` (needed for time-to-half-open and a forced open
    of an open breaker) and zeroing the failure count without a transition (``close()`` of a
    closed breaker would report one)."""

    def __init__(self, breaker: pybreaker.CircuitBreaker) -> None:
        self._storage = breaker._state_storage

    def opened_at(self) -> float | None:
        opened: datetime | None = self._storage.opened_at
        if opened is None:
            return None
        if opened.tzinfo is None:
            opened = opened.replace(tzinfo=UTC)
        return opened.timestamp()

    def restart_open_timeout(self) -> None:
        self._storage.opened_at = datetime.now(UTC)

    def set_opened_at(self, timestamp: float) -> None:
        """Another process opened the breaker at ``timestamp`` (its timeout is ours)."""
        self._storage.opened_at = datetime.fromtimestamp(timestamp, UTC)

    def forget_failures(self) -> None:
        self._storage.reset_counter()


class BackendBreaker:
    """pybreaker's state machine plus the half-open gate for one backend."""

    def __init__(
        self,
        backend: str,
        policy: CircuitBreakerConfig,
        sink: TransitionSink,
        *,
        remote_sink: TransitionSink | None = None,
        on_change: ChangeSink | None = None,
    ) -> None:
        self.backend = backend
        self.policy = policy
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=policy.failure_threshold,
            reset_timeout=policy.reset_timeout_s,
            success_threshold=policy.success_threshold,
            listeners=[_Listener(backend, self._transitioned)],
            name=backend,
        )
        self._storage = _Storage(self._breaker)
        self._sink = sink
        self._remote_sink = remote_sink or sink
        self._on_change = on_change or (lambda breaker, state: None)
        self._trials = 0
        self._generation = 0  # bumped by every transition; outcomes from older ones are stale
        self._state: State = _STATE_NAMES[self._breaker.current_state]  # kept by _transitioned
        self._applying_remote = False
        self.may_trial = True  # false: another process of the cluster holds the trial lease
        self.trials_started = 0  # trials admitted so far (the lease holder's proof of use)
        self.changed_at = 0.0  # wall-clock time of the last change seen here (local or remote)

    def configure(self, policy: CircuitBreakerConfig) -> None:
        """Apply a new policy (after a reload) without losing the current state."""
        self.policy = policy
        self._breaker.fail_max = policy.failure_threshold
        self._breaker.reset_timeout = policy.reset_timeout_s
        self._breaker.success_threshold = policy.success_threshold

    @property
    def state(self) -> State:
        return self._state

    def is_failure_status(self, status: int) -> bool:
        return status in self.policy.failure_status_codes

    def admits(self) -> bool:
        """Would a request be let through now (no side effects)?"""
        state = self._state
        if state == "closed":
            return True
        if not self.may_trial or (state == "open" and not self._timeout_elapsed()):
            return False
        return self._trials < self.policy.half_open_max_calls

    def admit(self) -> Trial | None:
        """Let one attempt through, or None when the backend must be skipped."""
        if self._state == "closed":
            return Trial(self, False, self._generation)
        if not self.admits():
            return None
        if self.state == "open":
            self._breaker.half_open()  # lazily, at the first trial after the timeout
        trial = self.state == "half_open"
        if trial:
            self._trials += 1
            self.trials_started += 1
        return Trial(self, trial, self._generation)

    @property
    def opened_at(self) -> float | None:
        """When it last opened (wall-clock seconds), whatever its state now."""
        return self._opened_at()

    def seconds_until_half_open(self) -> float:
        if self.state != "open":
            return 0.0
        opened = self._opened_at()
        if opened is None:
            return 0.0
        return max(0.0, opened + self.policy.reset_timeout_s - time.time())

    def force_open(self) -> None:
        """Open now (restarting the timeout); a no-op transition is not reported, but the
        change (a new ``opened_at``) is."""
        if self.state == "open":
            self._storage.restart_open_timeout()
            self._changed("open")
            return
        self._breaker.open()

    def force_close(self) -> None:
        """Close now and forget the failure count; a no-op transition is not reported, but the
        change (a reset) is."""
        self._trials = 0
        if self.state == "closed":
            self._storage.forget_failures()
            self._changed("closed")
            return
        self._breaker.close()

    @property
    def trials_in_flight(self) -> int:
        return self._trials

    def apply_remote(self, state: State, opened_at: float | None, at: float | None = None) -> None:
        """Take a change another worker or instance published at ``at`` (see the module
        docstring)."""
        self._applying_remote = True
        try:
            if state == "open":
                if self.state != "open":
                    self._breaker.open()
                if opened_at is not None:
                    self._storage.set_opened_at(opened_at)
            elif state == "closed":
                self._trials = 0
                if self.state == "closed":
                    self._storage.forget_failures()
                else:
                    self._breaker.close()
        finally:
            self._applying_remote = False
        self.changed_at = at if at is not None else time.time()

    def snapshot(self) -> BreakerSnapshot:
        opened = self._opened_at() if self.state != "closed" else None
        next_half_open = None
        if self.state == "open" and opened is not None:
            next_half_open = opened + self.policy.reset_timeout_s
        return BreakerSnapshot(
            backend=self.backend,
            state=self.state,
            failures=int(self._breaker.fail_counter),
            opened_at=opened,
            next_half_open_at=next_half_open,
        )

    def _release(self, trial: bool) -> None:
        if trial and self._trials > 0:
            self._trials -= 1

    def _transitioned(self, backend: str, old: State, new: State) -> None:
        self._state = new
        self._generation += 1
        if self._applying_remote:
            self._remote_sink(backend, old, new)
            return
        self._sink(backend, old, new)
        self._changed(new)  # pybreaker tells listeners before its own state reads ``new``

    def _changed(self, state: State) -> None:
        self.changed_at = time.time()
        self._on_change(self, state)

    def _report(self, failed: bool, generation: int) -> None:
        if generation != self._generation or self.state == "open":
            # admitted under an earlier state (a long request started before the breaker
            # opened, or before this half-open period): its outcome says nothing about now
            return
        if not failed and self.state == "closed" and self._breaker.fail_counter == 0:
            return  # a success would only reset a count that is already zero
        with contextlib.suppress(_Failure, pybreaker.CircuitBreakerError), self._breaker.calling():
            if failed:
                raise _Failure

    def _timeout_elapsed(self) -> bool:
        return self.seconds_until_half_open() <= 0

    def _opened_at(self) -> float | None:
        return self._storage.opened_at()


class BreakerRegistry:
    """Every backend's breaker, kept across reloads for backends that still exist."""

    def __init__(
        self,
        on_transition: TransitionSink | None = None,
        on_remote_transition: TransitionSink | None = None,
    ) -> None:
        self._breakers: dict[str, BackendBreaker] = {}
        self._on_transition = on_transition or (lambda backend, old, new: None)
        self._on_remote_transition = on_remote_transition or self._on_transition
        self.on_change: ChangeSink | None = None  # set by a cluster sync: publish local changes
        self.leased_trials = False  # cluster mode: trials only with the backend's trial lease

    def configure(self, policies: Iterable[tuple[str, CircuitBreakerConfig]]) -> None:
        """Make the registry hold exactly these backends, each with its policy."""
        wanted: dict[str, CircuitBreakerConfig] = {}
        for backend, policy in policies:
            wanted.setdefault(backend, policy)
        for backend in list(self._breakers):
            if backend not in wanted:
                del self._breakers[backend]
        for backend, policy in wanted.items():
            breaker = self._breakers.get(backend)
            if breaker is None:
                breaker = self._breakers[backend] = BackendBreaker(
                    backend,
                    policy,
                    self._notify,
                    remote_sink=self._notify_remote,
                    on_change=self._changed,
                )
                breaker.may_trial = not self.leased_trials
            elif breaker.policy != policy:
                breaker.configure(policy)

    def get(self, backend: str) -> BackendBreaker | None:
        return self._breakers.get(backend)

    def __iter__(self) -> Any:
        return iter(self._breakers.values())

    def lease_trials(self, leased: bool) -> None:
        """Cluster mode on (trials need the backend's lease: every breaker stops trialling until
        its process takes one) or off (this process decides alone, as without a cluster)."""
        self.leased_trials = leased
        for breaker in self._breakers.values():
            breaker.may_trial = not leased

    def _notify(self, backend: str, old: State, new: State) -> None:
        self._on_transition(backend, old, new)

    def _notify_remote(self, backend: str, old: State, new: State) -> None:
        self._on_remote_transition(backend, old, new)

    def _changed(self, breaker: BackendBreaker, state: State) -> None:
        if self.on_change is not None:
            self.on_change(breaker, state)
