"""Pure recovery decisions: delays per strategy, escalation, legal state moves, wake-ups,
watch probes while awaiting approval, idempotency keys; the UI text the workflow shows."""

from __future__ import annotations

import pytest

from antifragile._fsm import IllegalTransitionError
from antifragile.models.recovery import (
    RecoveryPolicy,
    RecoveryRequest,
    RecoveryState,
    RecoveryStrategy,
)
from antifragile.recovery.logic import (
    LEGAL_TRANSITIONS,
    MIN_WATCH_INTERVAL_MS,
    AwaitingStep,
    NextStep,
    WaitStep,
    WakeTracker,
    after_failed_attempt,
    backoff_delay_ms,
    check_transition,
    idempotency_key,
    next_step_awaiting_approval,
    watch_interval_ms,
)
from antifragile.recovery.ui import awaiting_approval_text, recovery_current_details

S = RecoveryStrategy
POLICY = RecoveryPolicy(initial_delay_ms=1000, backoff_multiplier=2.0, max_delay_ms=60_000)


@pytest.mark.parametrize(
    ("strategy", "delays"),
    [
        (S.EXPONENTIAL_BACKOFF, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]),
        (S.LINEAR_BACKOFF, [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]),
        (S.IMMEDIATE, [0] * 8),
        (S.MANUAL, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]),
    ],
)
def test_each_strategy_yields_its_documented_delays_capped_at_max(
    strategy: RecoveryStrategy, delays: list[int]
) -> None:
    assert [backoff_delay_ms(strategy, POLICY, n) for n in range(1, 9)] == delays


def test_linear_backoff_is_capped_at_max_delay() -> None:
    policy = RecoveryPolicy(initial_delay_ms=1000, max_delay_ms=2500)
    assert [backoff_delay_ms(S.LINEAR_BACKOFF, policy, n) for n in (1, 2, 3, 50)] == [
        1000,
        2000,
        2500,
        2500,
    ]


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = RecoveryPolicy(backoff_multiplier=100.0, max_delay_ms=5000)
    assert backoff_delay_ms(S.EXPONENTIAL_BACKOFF, policy, 10_000) == 5000


def test_jitter_is_deterministic_and_only_shortens_within_the_ratio() -> None:
    policy = RecoveryPolicy(
        jitter=True, jitter_ratio=0.5, initial_delay_ms=10_000, max_delay_ms=10_000
    )
    first = [backoff_delay_ms(S.LINEAR_BACKOFF, policy, n, jitter_key="svc") for n in range(1, 50)]
    again = [backoff_delay_ms(S.LINEAR_BACKOFF, policy, n, jitter_key="svc") for n in range(1, 50)]
    other = [backoff_delay_ms(S.LINEAR_BACKOFF, policy, n, jitter_key="x") for n in range(1, 50)]
    assert first == again
    assert first != other
    assert all(5000 <= d <= 10_000 for d in first)
    assert len(set(first)) > 10, "jitter should spread delays"


def test_jitter_off_gives_exact_nominal_delays() -> None:
    assert backoff_delay_ms(S.EXPONENTIAL_BACKOFF, POLICY, 3, jitter_key="a") == 4000


def test_failures_below_one_are_rejected() -> None:
    with pytest.raises(ValueError, match="failures must be >= 1"):
        backoff_delay_ms(S.LINEAR_BACKOFF, POLICY, 0)


def test_a_round_escalates_after_max_retry_attempts_failures() -> None:
    policy = RecoveryPolicy(max_retry_attempts=3)
    steps = [after_failed_attempt(S.LINEAR_BACKOFF, policy, n, jitter_key="") for n in (1, 2, 3)]
    assert [s.step for s in steps] == [NextStep.BACKOFF, NextStep.BACKOFF, NextStep.ESCALATE]
    assert [s.delay_ms for s in steps[:2]] == [1000, 2000]


def test_terminal_states_have_no_way_out() -> None:
    for state in RecoveryState:
        assert (not LEGAL_TRANSITIONS[state]) == state.terminal


def test_illegal_transitions_are_refused() -> None:
    assert check_transition(RecoveryState.SCHEDULED, RecoveryState.IN_PROGRESS)
    with pytest.raises(IllegalTransitionError, match="SUCCEEDED to IN_PROGRESS"):
        check_transition(RecoveryState.SUCCEEDED, RecoveryState.IN_PROGRESS)
    with pytest.raises(IllegalTransitionError):
        check_transition(RecoveryState.WAITING_BACKOFF, RecoveryState.SUCCEEDED)


# --- wake-ups: remembered until a probe that began after them has run ---------------------


def test_a_wake_up_before_a_probe_begins_is_spent_by_that_probe() -> None:
    wakes = WakeTracker()
    wakes.wake()  # during hash validation or the action
    assert wakes.pending
    token = wakes.probe_started()
    wakes.probe_finished(token)
    assert not wakes.pending


def test_a_wake_up_during_a_probe_survives_it_and_the_next_probe_spends_it() -> None:
    wakes = WakeTracker()
    token = wakes.probe_started()
    wakes.wake()  # the probe may already have looked
    wakes.probe_finished(token)
    assert wakes.pending
    token = wakes.probe_started()
    wakes.probe_finished(token)
    assert not wakes.pending


def test_many_wake_ups_are_one_pending_wake_up_and_forget_drops_them() -> None:
    wakes = WakeTracker()
    for _ in range(3):
        wakes.wake()
    wakes.probe_finished(wakes.probe_started())
    assert not wakes.pending
    wakes.wake()
    wakes.forget()
    assert not wakes.pending


def test_an_old_probe_token_never_revives_spent_wake_ups() -> None:
    wakes = WakeTracker()
    old = wakes.probe_started()
    wakes.wake()
    wakes.probe_finished(wakes.probe_started())
    wakes.probe_finished(old)
    assert not wakes.pending and wakes.spent == 1


def test_a_pending_wake_up_cuts_the_backoff_to_zero_but_never_skips_an_escalation() -> None:
    policy = RecoveryPolicy(max_retry_attempts=3, initial_delay_ms=1000)
    cut = after_failed_attempt(S.LINEAR_BACKOFF, policy, 2, jitter_key="", wake_pending=True)
    assert (cut.step, cut.delay_ms, cut.nominal_ms, cut.cut_short) == (
        NextStep.BACKOFF,
        0,
        2000,
        True,
    )
    plain = after_failed_attempt(S.LINEAR_BACKOFF, policy, 2, jitter_key="")
    assert (plain.delay_ms, plain.cut_short) == (2000, False)
    immediate = after_failed_attempt(S.IMMEDIATE, policy, 1, jitter_key="", wake_pending=True)
    assert (immediate.delay_ms, immediate.cut_short) == (0, False), "nothing to cut"
    last = after_failed_attempt(S.LINEAR_BACKOFF, policy, 3, jitter_key="", wake_pending=True)
    assert last.step is NextStep.ESCALATE


# --- awaiting approval: decisions first, then wake-ups and the slow watch probe -----------


@pytest.mark.parametrize(
    ("decisions", "wake", "now", "expected"),
    [
        (True, True, 10_000, AwaitingStep(WaitStep.DECIDE)),
        (False, True, 0, AwaitingStep(WaitStep.PROBE)),
        (False, False, 9_999, AwaitingStep(WaitStep.SLEEP, 1)),
        (False, False, 10_000, AwaitingStep(WaitStep.PROBE)),  # due exactly now: probe
        (False, False, 0, AwaitingStep(WaitStep.SLEEP, 10_000)),
    ],
)
def test_next_step_awaiting_approval(
    decisions: bool, wake: bool, now: int, expected: AwaitingStep
) -> None:
    step = next_step_awaiting_approval(
        decisions_waiting=decisions, wake_pending=wake, now_ms=now, next_watch_ms=10_000
    )
    assert step == expected


def test_watch_probes_follow_max_delay_but_never_busy_loop() -> None:
    assert watch_interval_ms(RecoveryPolicy(max_delay_ms=60_000)) == 60_000
    assert watch_interval_ms(RecoveryPolicy(initial_delay_ms=0, max_delay_ms=0)) == (
        MIN_WATCH_INTERVAL_MS
    )


def test_awaiting_approval_may_end_succeeded_or_wait_for_a_slot_again() -> None:
    assert check_transition(RecoveryState.AWAITING_APPROVAL, RecoveryState.SUCCEEDED)
    assert check_transition(RecoveryState.AWAITING_APPROVAL, RecoveryState.SCHEDULED)
    assert check_transition(RecoveryState.SCHEDULED, RecoveryState.IN_PROGRESS)


def test_idempotency_keys_repeat_within_an_attempt_and_differ_between_attempts_and_runs() -> None:
    first = idempotency_key("recovery-db", "run-a", 1)
    assert first == idempotency_key("recovery-db", "run-a", 1) == "recovery-db/run-a/1"
    assert first != idempotency_key("recovery-db", "run-a", 2)
    assert first != idempotency_key("recovery-db", "run-b", 1), "a later recovery of db"


def test_awaiting_approval_says_why_and_what_for() -> None:
    request = RecoveryRequest(service="redis", probe="tcp://h:1", policy=POLICY)
    assert awaiting_approval_text(request, 0, 0, "") == (
        "manual strategy",
        "approval before the first attempt (manual strategy)",
    )
    reason, waiting_for = awaiting_approval_text(request, 5, 1, "")
    assert reason == "1 attempt failed"
    assert waiting_for == (
        "approval: 1 attempts failed (last: unhealthy); approve for 5 more, or reject"
    )
    reason, waiting_for = awaiting_approval_text(request, 5, 3, "refused")
    assert reason == "3 attempts failed" and "(last: refused)" in waiting_for


def test_current_details_leave_out_empty_lines() -> None:
    request = RecoveryRequest(service="redis", probe="tcp://h:1", policy=POLICY)
    details = dict(
        state=RecoveryState.WAITING_BACKOFF,
        priority=2,
        attempts=3,
        attempts_in_round=2,
        waiting_for="",
        watch_probes=0,
        last_error="",
    )
    text = recovery_current_details(request, **details)  # type: ignore[arg-type]
    assert text.split("\n\n") == [
        "**WAITING_BACKOFF** — redis (exponential_backoff, priority 2)",
        "Attempts: 3 (this round 2 of 5)",
        "Waiting for: -",
    ]
    details |= {"watch_probes": 4, "last_error": "timeout"}
    text = recovery_current_details(request, **details)  # type: ignore[arg-type]
    assert text.endswith("Watch probes while awaiting approval: 4\n\nLast error: timeout")
