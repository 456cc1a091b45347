"""Circuit breakers: each sentence of the kairos_core.breaker docstring, pinned (DESIGN.md §5).

Unit tests on :class:`BackendBreaker` and :class:`BreakerRegistry`, no network; the reset timeout
is a fraction of a second so the open → half-open move is real time passing.
"""

from __future__ import annotations

import time

import pytest

from kairos_core.breaker import BackendBreaker, BreakerRegistry, State, Trial
from kairos_core.config.models import CircuitBreakerConfig

BACKEND = "http://127.0.0.1:8080"
OTHER = "http://127.0.0.1:8081"
RESET_S = 0.2
Transition = tuple[str, State, State]


def policy(**overrides: object) -> CircuitBreakerConfig:
    values: dict[str, object] = {
        "failure_threshold": 3,
        "success_threshold": 2,
        "reset_timeout_s": RESET_S,
        "half_open_max_calls": 1,
    }
    return CircuitBreakerConfig.model_validate({**values, **overrides})


class Recorder:
    """The registry's ``on_transition`` sink: every transition, in order."""

    def __init__(self) -> None:
        self.transitions: list[Transition] = []

    def __call__(self, backend: str, old: State, new: State) -> None:
        self.transitions.append((backend, old, new))


def breaker_with(
    recorder: Recorder | None = None, **overrides: object
) -> tuple[BreakerRegistry, BackendBreaker]:
    registry = BreakerRegistry(recorder)
    registry.configure([(BACKEND, policy(**overrides))])
    breaker = registry.get(BACKEND)
    assert breaker is not None
    return registry, breaker


def admitted(breaker: BackendBreaker) -> Trial:
    trial = breaker.admit()
    assert trial is not None, f"{breaker.backend} refused while {breaker.state}"
    return trial


def fail(breaker: BackendBreaker, times: int) -> None:
    for _ in range(times):
        admitted(breaker).failure()


def succeed(breaker: BackendBreaker, times: int) -> None:
    for _ in range(times):
        admitted(breaker).success()


def opened(**overrides: object) -> tuple[Recorder, BackendBreaker]:
    recorder = Recorder()
    _, breaker = breaker_with(recorder, **overrides)
    fail(breaker, breaker.policy.failure_threshold)
    assert breaker.state == "open"
    return recorder, breaker


def half_opened(**overrides: object) -> tuple[Recorder, BackendBreaker, Trial]:
    """An open breaker whose timeout has elapsed, moved to half-open by its first trial."""
    recorder, breaker = opened(**overrides)
    wait_for_half_open(breaker)
    trial = admitted(breaker)
    assert breaker.state == "half_open"
    return recorder, breaker, trial


def wait_for_half_open(breaker: BackendBreaker) -> None:
    time.sleep(breaker.seconds_until_half_open() + 0.02)


# --- closed ---------------------------------------------------------------------------------------


def test_a_new_breaker_is_closed_and_admits() -> None:
    _, breaker = breaker_with()
    assert breaker.state == "closed"
    assert breaker.admits()
    snapshot = breaker.snapshot()
    assert (snapshot.backend, snapshot.state, snapshot.failures) == (BACKEND, "closed", 0)
    assert snapshot.opened_at is None and snapshot.next_half_open_at is None


def test_failure_threshold_consecutive_failures_open_it() -> None:
    _, breaker = breaker_with(failure_threshold=3)
    fail(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.snapshot().failures == 2
    assert breaker.admits()
    fail(breaker, 1)
    assert breaker.state == "open"


def test_failure_threshold_of_one_opens_on_the_first_failure() -> None:
    _, breaker = breaker_with(failure_threshold=1)
    fail(breaker, 1)
    assert breaker.state == "open"


def test_a_success_in_between_resets_the_count() -> None:
    _, breaker = breaker_with(failure_threshold=3)
    fail(breaker, 2)
    succeed(breaker, 1)
    assert breaker.snapshot().failures == 0
    fail(breaker, 2)
    assert breaker.state == "closed"
    fail(breaker, 1)
    assert breaker.state == "open"


def test_a_cancelled_attempt_while_closed_reports_nothing() -> None:
    _, breaker = breaker_with(failure_threshold=3)
    fail(breaker, 2)
    admitted(breaker).cancel()
    assert breaker.snapshot().failures == 2, "a cancel is not a success: the count stays"
    fail(breaker, 1)
    assert breaker.state == "open", "a cancel is not a failure either"


def test_closed_admits_any_number_of_concurrent_attempts() -> None:
    _, breaker = breaker_with(half_open_max_calls=1)
    trials = [admitted(breaker) for _ in range(50)]
    assert breaker.admits()
    for trial in trials:
        trial.success()
    assert breaker.state == "closed"


def test_an_outcome_is_reported_once() -> None:
    _, breaker = breaker_with(failure_threshold=3)
    trial = admitted(breaker)
    trial.failure()
    trial.failure()
    trial.failure()
    trial.cancel()
    assert breaker.snapshot().failures == 1
    assert breaker.state == "closed"


def test_failures_of_attempts_admitted_before_it_opened_do_not_extend_the_timeout() -> None:
    _, breaker = breaker_with(failure_threshold=2)
    late = [admitted(breaker) for _ in range(3)]
    fail(breaker, 2)
    opened_at = breaker.snapshot().opened_at
    for trial in late:
        trial.failure()
    assert breaker.state == "open"
    assert breaker.snapshot().opened_at == opened_at


# --- open -----------------------------------------------------------------------------------------


def test_open_refuses_every_attempt() -> None:
    _, breaker = opened()
    assert not breaker.admits()
    assert all(breaker.admit() is None for _ in range(10))
    assert breaker.state == "open"


def test_open_snapshot_shows_when_it_opened_and_when_it_is_due() -> None:
    before = time.time()
    _, breaker = opened(reset_timeout_s=5)
    after = time.time()
    snapshot = breaker.snapshot()
    assert snapshot.state == "open"
    assert snapshot.failures == 3
    assert snapshot.opened_at is not None and before - 0.01 <= snapshot.opened_at <= after + 0.01
    assert snapshot.next_half_open_at == pytest.approx(snapshot.opened_at + 5)
    assert 4.5 < breaker.seconds_until_half_open() <= 5


def test_seconds_until_half_open_counts_down_to_zero() -> None:
    _, breaker = opened()
    first = breaker.seconds_until_half_open()
    assert 0 < first <= RESET_S
    time.sleep(0.05)
    assert breaker.seconds_until_half_open() < first
    wait_for_half_open(breaker)
    assert breaker.seconds_until_half_open() == 0.0


def test_seconds_until_half_open_is_zero_unless_open() -> None:
    _, breaker = breaker_with()
    assert breaker.seconds_until_half_open() == 0.0
    _, breaker, _ = half_opened()
    assert breaker.seconds_until_half_open() == 0.0


def test_after_reset_timeout_it_admits_and_the_first_admit_moves_it_to_half_open() -> None:
    _, breaker = opened()
    wait_for_half_open(breaker)
    assert breaker.admits()
    assert breaker.state == "open", "admits() has no side effects: the move is lazy"
    trial = breaker.admit()
    assert trial is not None
    assert breaker.state == "half_open"


def test_it_stays_open_until_the_reset_timeout_has_elapsed() -> None:
    _, breaker = opened(reset_timeout_s=0.4)
    time.sleep(0.2)
    assert breaker.admit() is None
    assert breaker.state == "open"


# --- half-open ------------------------------------------------------------------------------------


def test_half_open_admits_at_most_half_open_max_calls_concurrent_trials() -> None:
    _, breaker, first = half_opened(half_open_max_calls=1)
    assert not breaker.admits()
    assert breaker.admit() is None
    assert breaker.state == "half_open"
    first.success()
    assert admitted(breaker) is not None, "a finished trial frees its slot"


@pytest.mark.parametrize("max_calls", [2, 3])
def test_half_open_max_calls_above_one(max_calls: int) -> None:
    _, breaker, first = half_opened(half_open_max_calls=max_calls, success_threshold=10)
    others = [admitted(breaker) for _ in range(max_calls - 1)]
    assert breaker.admit() is None
    others[0].success()
    assert breaker.admit() is not None
    first.cancel()
    assert breaker.admit() is not None
    assert breaker.admit() is None


def test_a_cancelled_trial_releases_its_slot_and_reports_nothing() -> None:
    recorder, breaker, trial = half_opened(success_threshold=2)
    transitions = list(recorder.transitions)
    trial.cancel()
    assert breaker.state == "half_open"
    assert recorder.transitions == transitions
    succeed(breaker, 1)
    assert breaker.state == "half_open", "the cancelled trial did not count as a success"
    succeed(breaker, 1)
    assert breaker.state == "closed"


def test_a_cancelled_trial_is_not_a_failure() -> None:
    _, breaker, trial = half_opened()
    trial.cancel()
    assert breaker.state == "half_open"
    assert breaker.admits()


def test_success_threshold_consecutive_successes_close_it() -> None:
    _, breaker, trial = half_opened(success_threshold=3)
    trial.success()
    assert breaker.state == "half_open"
    succeed(breaker, 1)
    assert breaker.state == "half_open"
    succeed(breaker, 1)
    assert breaker.state == "closed"
    snapshot = breaker.snapshot()
    assert snapshot.failures == 0 and snapshot.opened_at is None


def test_after_closing_it_needs_failure_threshold_failures_again() -> None:
    _, breaker, trial = half_opened(success_threshold=1, failure_threshold=3)
    trial.success()
    assert breaker.state == "closed"
    fail(breaker, 2)
    assert breaker.state == "closed"
    fail(breaker, 1)
    assert breaker.state == "open"


def test_a_failed_trial_reopens_it() -> None:
    _, breaker, trial = half_opened()
    trial.failure()
    assert breaker.state == "open"
    assert breaker.admit() is None


def test_any_failure_after_some_successes_reopens_it() -> None:
    _, breaker, trial = half_opened(success_threshold=3)
    trial.success()
    succeed(breaker, 1)
    fail(breaker, 1)
    assert breaker.state == "open"


def test_a_failed_trial_restarts_the_timeout() -> None:
    _, breaker = opened(reset_timeout_s=0.5)
    first_opened_at = breaker.snapshot().opened_at
    assert first_opened_at is not None
    wait_for_half_open(breaker)
    admitted(breaker).failure()
    snapshot = breaker.snapshot()
    assert snapshot.opened_at is not None and snapshot.opened_at >= first_opened_at + 0.5
    assert breaker.seconds_until_half_open() > 0.4
    time.sleep(0.15)
    assert breaker.admit() is None, "the new timeout runs from the failed trial"
    wait_for_half_open(breaker)
    assert breaker.admit() is not None
    assert breaker.state == "half_open"


def test_successes_needed_to_close_restart_after_a_reopen() -> None:
    _, breaker, trial = half_opened(success_threshold=2)
    trial.success()
    fail(breaker, 1)
    wait_for_half_open(breaker)
    succeed(breaker, 1)
    assert breaker.state == "half_open", "the success before the reopen does not count"
    succeed(breaker, 1)
    assert breaker.state == "closed"


# --- transitions ------------------------------------------------------------------------------


def test_transitions_are_reported_to_the_registry_in_order() -> None:
    recorder, breaker, trial = half_opened(success_threshold=1)
    trial.failure()
    wait_for_half_open(breaker)
    succeed(breaker, 1)
    assert recorder.transitions == [
        (BACKEND, "closed", "open"),
        (BACKEND, "open", "half_open"),
        (BACKEND, "half_open", "open"),
        (BACKEND, "open", "half_open"),
        (BACKEND, "half_open", "closed"),
    ]


def test_no_transition_is_reported_while_nothing_changes() -> None:
    recorder = Recorder()
    _, breaker = breaker_with(recorder, failure_threshold=3)
    fail(breaker, 2)
    succeed(breaker, 5)
    admitted(breaker).cancel()
    assert recorder.transitions == []


def test_each_backend_reports_its_own_transitions() -> None:
    recorder = Recorder()
    registry = BreakerRegistry(recorder)
    registry.configure([(BACKEND, policy()), (OTHER, policy(failure_threshold=1))])
    other = registry.get(OTHER)
    assert other is not None
    fail(other, 1)
    assert recorder.transitions == [(OTHER, "closed", "open")]
    backend = registry.get(BACKEND)
    assert backend is not None and backend.state == "closed"


# --- manual control -------------------------------------------------------------------------------


def test_force_open_opens_a_closed_breaker() -> None:
    recorder = Recorder()
    _, breaker = breaker_with(recorder, reset_timeout_s=5)
    breaker.force_open()
    assert breaker.state == "open"
    assert breaker.admit() is None
    assert 4.5 < breaker.seconds_until_half_open() <= 5
    assert recorder.transitions == [(BACKEND, "closed", "open")]


def test_force_open_during_half_open_refuses_trials() -> None:
    _, breaker, trial = half_opened()
    breaker.force_open()
    assert breaker.state == "open"
    assert breaker.seconds_until_half_open() > RESET_S / 2, "forcing it open restarts the timeout"
    assert breaker.admit() is None
    trial.cancel()
    assert breaker.admit() is None


def test_a_late_outcome_after_force_open_neither_closes_nor_retimes_it() -> None:
    _, breaker = breaker_with(reset_timeout_s=5, success_threshold=1)
    in_flight = [admitted(breaker) for _ in range(2)]
    breaker.force_open()
    opened_at = breaker.snapshot().opened_at
    in_flight[0].success()
    in_flight[1].failure()
    assert breaker.state == "open"
    assert breaker.snapshot().opened_at == opened_at


def test_force_close_closes_an_open_breaker_and_clears_its_count() -> None:
    recorder, breaker = opened(reset_timeout_s=5)
    breaker.force_close()
    assert breaker.state == "closed"
    assert breaker.admits()
    assert breaker.snapshot().failures == 0
    fail(breaker, 2)
    assert breaker.state == "closed"
    assert recorder.transitions == [(BACKEND, "closed", "open"), (BACKEND, "open", "closed")]


def test_force_close_during_half_open_frees_the_trial_slots() -> None:
    _, breaker, trial = half_opened()
    breaker.force_close()
    assert breaker.state == "closed"
    trial.failure()
    assert breaker.state == "closed"
    assert breaker.admits()


# --- registry -------------------------------------------------------------------------------------


def test_registry_holds_exactly_the_configured_backends() -> None:
    registry = BreakerRegistry()
    registry.configure([(BACKEND, policy()), (OTHER, policy())])
    assert {b.backend for b in registry} == {BACKEND, OTHER}
    assert registry.get("http://127.0.0.1:9999") is None


def test_registry_uses_the_first_policy_given_for_a_backend() -> None:
    registry = BreakerRegistry()
    registry.configure([(BACKEND, policy(failure_threshold=7)), (BACKEND, policy())])
    breaker = registry.get(BACKEND)
    assert breaker is not None and breaker.policy.failure_threshold == 7


def test_registry_configure_keeps_state_for_backends_that_stay() -> None:
    registry, breaker = breaker_with(failure_threshold=2)
    fail(breaker, 2)
    opened_at = breaker.snapshot().opened_at
    registry.configure([(BACKEND, policy(failure_threshold=2)), (OTHER, policy())])
    assert registry.get(BACKEND) is breaker
    assert breaker.state == "open"
    assert breaker.snapshot().opened_at == opened_at


def test_registry_configure_keeps_the_failure_count_for_backends_that_stay() -> None:
    registry, breaker = breaker_with(failure_threshold=3)
    fail(breaker, 2)
    registry.configure([(BACKEND, policy(failure_threshold=3))])
    fail(breaker, 1)
    assert breaker.state == "open"


def test_registry_configure_drops_removed_backends() -> None:
    registry = BreakerRegistry()
    registry.configure([(BACKEND, policy(failure_threshold=1)), (OTHER, policy())])
    dropped = registry.get(BACKEND)
    assert dropped is not None
    fail(dropped, 1)
    registry.configure([(OTHER, policy())])
    assert registry.get(BACKEND) is None
    assert [b.backend for b in registry] == [OTHER]
    registry.configure([(BACKEND, policy(failure_threshold=1)), (OTHER, policy())])
    back = registry.get(BACKEND)
    assert back is not None and back is not dropped
    assert back.state == "closed", "a backend that comes back starts afresh"


def test_registry_configure_applies_a_new_failure_threshold_without_resetting() -> None:
    registry, breaker = breaker_with(failure_threshold=5)
    fail(breaker, 2)
    registry.configure([(BACKEND, policy(failure_threshold=3))])
    assert registry.get(BACKEND) is breaker
    assert breaker.policy.failure_threshold == 3
    assert breaker.state == "closed"
    fail(breaker, 1)
    assert breaker.state == "open"


def test_registry_configure_applies_a_new_reset_timeout_to_an_open_breaker() -> None:
    registry, breaker = breaker_with(failure_threshold=1, reset_timeout_s=30)
    fail(breaker, 1)
    assert breaker.seconds_until_half_open() > 29
    registry.configure([(BACKEND, policy(failure_threshold=1, reset_timeout_s=RESET_S))])
    assert breaker.state == "open"
    assert breaker.seconds_until_half_open() <= RESET_S
    wait_for_half_open(breaker)
    assert breaker.admit() is not None
    assert breaker.state == "half_open"


def test_registry_configure_applies_new_half_open_and_success_limits() -> None:
    registry, breaker = breaker_with(failure_threshold=1, success_threshold=1)
    fail(breaker, 1)
    registry.configure(
        [
            (
                BACKEND,
                policy(failure_threshold=1, success_threshold=2, half_open_max_calls=2),
            )
        ]
    )
    wait_for_half_open(breaker)
    first, second = admitted(breaker), admitted(breaker)
    assert breaker.admit() is None
    first.success()
    assert breaker.state == "half_open", "the new success_threshold (2) applies"
    second.success()
    assert breaker.state == "closed"


def test_registry_configure_applies_new_failure_status_codes() -> None:
    registry, breaker = breaker_with()
    assert breaker.is_failure_status(500)
    registry.configure([(BACKEND, policy(failure_status_codes=[503]))])
    assert not breaker.is_failure_status(500)
    assert breaker.is_failure_status(503)


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (200, False),
        (302, False),
        (404, False),
        (429, False),
        (500, True),
        (501, False),
        (502, True),
        (503, True),
        (504, True),
        (505, False),
    ],
)
def test_default_failure_status_codes(status: int, failure: bool) -> None:
    _, breaker = breaker_with()
    assert breaker.is_failure_status(status) is failure


def test_forcing_the_state_it_is_already_in_reports_no_transition() -> None:
    recorder = Recorder()
    _, breaker = breaker_with(recorder, reset_timeout_s=5)
    breaker.force_close()
    breaker.force_open()
    breaker.force_open()
    assert recorder.transitions == [(BACKEND, "closed", "open")]


def test_registry_transitions_keep_flowing_after_a_reconfigure() -> None:
    recorder = Recorder()
    registry, breaker = breaker_with(recorder, failure_threshold=2)
    registry.configure([(BACKEND, policy(failure_threshold=1))])
    fail(breaker, 1)
    assert recorder.transitions == [(BACKEND, "closed", "open")]


# --- outcomes count only in the state they were admitted in ---------------------------------------


def test_outcomes_of_attempts_admitted_while_closed_do_not_move_a_half_open_breaker() -> None:
    _, breaker = breaker_with(failure_threshold=3, success_threshold=1)
    stale_success, stale_failure = admitted(breaker), admitted(breaker)
    fail(breaker, 3)
    wait_for_half_open(breaker)
    trial = admitted(breaker)
    assert breaker.state == "half_open"

    stale_success.success()
    assert breaker.state == "half_open", "a success admitted while closed must not close it"
    stale_failure.failure()
    assert breaker.state == "half_open", "a failure admitted while closed must not reopen it"
    trial.success()
    assert breaker.state == "closed"


def test_outcomes_of_an_earlier_half_open_period_do_not_count_in_the_next() -> None:
    _, breaker = breaker_with(success_threshold=1, half_open_max_calls=2)
    fail(breaker, breaker.policy.failure_threshold)
    wait_for_half_open(breaker)
    earlier, failing = admitted(breaker), admitted(breaker)
    failing.failure()
    assert breaker.state == "open"
    wait_for_half_open(breaker)
    trial = admitted(breaker)

    earlier.success()
    assert breaker.state == "half_open", "a trial of the previous half-open period is stale"
    trial.success()
    assert breaker.state == "closed"


# --- sharing (cluster mode) ---------------------------------------------------------------------


class Shared:
    """A registry wired like a cluster member's: local and remote transitions, local changes."""

    def __init__(self, **overrides: object) -> None:
        self.local = Recorder()
        self.remote = Recorder()
        self.changes: list[tuple[State, float | None]] = []
        self.registry = BreakerRegistry(self.local, self.remote)
        self.registry.on_change = lambda b, state: self.changes.append(
            (state, b.opened_at if state == "open" else None)
        )
        self.registry.configure([(BACKEND, policy(**overrides))])
        breaker = self.registry.get(BACKEND)
        assert breaker is not None
        self.breaker = breaker


def test_a_local_transition_is_a_change_to_publish() -> None:
    shared = Shared()
    fail(shared.breaker, 3)
    opened_at = shared.breaker.snapshot().opened_at
    assert shared.changes == [("open", opened_at)]
    assert shared.local.transitions == [(BACKEND, "closed", "open")]
    assert shared.breaker.changed_at == pytest.approx(time.time(), abs=0.5)


def test_forcing_the_state_it_is_already_in_is_still_a_change_to_publish() -> None:
    shared = Shared()
    shared.breaker.force_close()
    shared.breaker.force_open()
    first = shared.breaker.snapshot().opened_at
    time.sleep(0.01)
    shared.breaker.force_open()
    assert [state for state, _ in shared.changes] == ["closed", "open", "open"]
    assert shared.changes[2][1] is not None and first is not None
    assert shared.changes[2][1] > first  # the timeout restarted
    assert shared.local.transitions == [(BACKEND, "closed", "open")]


def test_a_remote_open_takes_the_publishers_opened_at_and_is_no_local_change() -> None:
    shared = Shared()
    published_at = time.time() - RESET_S / 2

    shared.breaker.apply_remote("open", published_at)

    assert shared.breaker.state == "open"
    assert shared.breaker.snapshot().opened_at == pytest.approx(published_at, abs=1e-3)
    assert 0 < shared.breaker.seconds_until_half_open() <= RESET_S / 2
    assert shared.remote.transitions == [(BACKEND, "closed", "open")]
    assert shared.local.transitions == [] and shared.changes == []


def test_a_remote_open_of_an_open_breaker_only_moves_its_timeout() -> None:
    shared = Shared()
    shared.breaker.force_open()
    shared.changes.clear()
    later = time.time() + 5

    shared.breaker.apply_remote("open", later)

    assert shared.breaker.snapshot().next_half_open_at == pytest.approx(later + RESET_S, abs=1e-3)
    assert shared.remote.transitions == [] and shared.changes == []


def test_a_remote_close_closes_and_forgets_failures() -> None:
    shared = Shared()
    fail(shared.breaker, 3)
    shared.breaker.apply_remote("closed", None)
    assert shared.breaker.state == "closed"
    assert shared.remote.transitions == [(BACKEND, "open", "closed")]

    fail(shared.breaker, 2)
    shared.breaker.apply_remote("closed", None)  # a reset elsewhere: the count goes too
    assert shared.breaker.snapshot().failures == 0
    fail(shared.breaker, 2)
    assert shared.breaker.state == "closed"


def test_a_remote_half_open_is_ignored() -> None:
    shared = Shared()
    shared.breaker.force_open()
    shared.breaker.apply_remote("half_open", None)
    assert shared.breaker.state == "open"
    assert shared.remote.transitions == []


def test_a_remote_change_makes_outcomes_admitted_before_it_stale() -> None:
    shared = Shared(success_threshold=1)
    fail(shared.breaker, 3)
    wait_for_half_open(shared.breaker)
    trial = admitted(shared.breaker)
    shared.breaker.apply_remote("open", time.time())
    trial.success()
    assert shared.breaker.state == "open"


def test_without_the_trial_lease_an_open_breaker_admits_nothing_even_when_due() -> None:
    shared = Shared()
    shared.registry.lease_trials(True)
    fail(shared.breaker, 3)
    wait_for_half_open(shared.breaker)
    assert shared.breaker.seconds_until_half_open() == 0
    assert not shared.breaker.admits() and shared.breaker.admit() is None
    assert shared.breaker.state == "open"

    shared.breaker.may_trial = True  # the lease taken
    assert admitted(shared.breaker) is not None
    assert shared.breaker.state == "half_open"
    assert shared.breaker.trials_started == 1


def test_losing_the_trial_lease_while_half_open_stops_further_trials() -> None:
    shared = Shared(half_open_max_calls=2)
    fail(shared.breaker, 3)
    wait_for_half_open(shared.breaker)
    admitted(shared.breaker)
    shared.breaker.may_trial = False
    assert shared.breaker.admit() is None


def test_closed_breakers_admit_without_the_lease() -> None:
    shared = Shared()
    shared.registry.lease_trials(True)
    assert shared.breaker.admits()


def test_backends_added_in_cluster_mode_start_without_the_lease() -> None:
    shared = Shared()
    shared.registry.lease_trials(True)
    shared.registry.configure([(BACKEND, policy()), (OTHER, policy())])
    other = shared.registry.get(OTHER)
    assert other is not None and not other.may_trial
    shared.registry.lease_trials(False)
    assert other.may_trial and shared.breaker.may_trial
