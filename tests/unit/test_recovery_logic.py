"""Pure recovery decisions: delays per strategy, escalation, legal state moves."""

from __future__ import annotations

import pytest

from antifragile.models.recovery import RecoveryPolicy, RecoveryState, RecoveryStrategy
from antifragile.recovery_logic import (
    LEGAL_TRANSITIONS,
    IllegalTransitionError,
    NextStep,
    after_failed_attempt,
    backoff_delay_ms,
    check_transition,
)

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
