"""The ``adaptive`` strategy on degenerate learned histories (pure decisions).

Whatever the ledger learned, no wait between two attempts is longer than the policy's
``max_delay_ms``, the ceiling every strategy keeps.
"""

from __future__ import annotations

import pytest

from antifragile.models.recovery import RecoveryPolicy, RecoveryStrategy
from antifragile.recovery.logic import NextStep, adaptive_schedule, after_failed_attempt

S = 1_000_000  # µs


@pytest.mark.parametrize(
    ("recoveries_us", "elapsed_ms"),
    [
        ([5 * S] * 4 + [6 * 3600 * S], 5_100),  # one huge outlier: 5 s, then 6 h
        ([10**17] * 4, 10),  # absurd times (a ledger fed by a broken clock)
        ([7 * S] * 10, 0),  # all equal
        ([2 * S, 3 * S, 4 * S, 900 * S], 4_500),  # every short one already passed
    ],
)
def test_no_wait_is_longer_than_max_delay(recoveries_us: list[int], elapsed_ms: int) -> None:
    policy = RecoveryPolicy(max_retry_attempts=5, max_delay_ms=30_000)
    plan = adaptive_schedule(recoveries_us, elapsed_us=0, max_attempts=5)
    assert plan.learned
    for failures in range(1, 5):
        decision = after_failed_attempt(
            RecoveryStrategy.ADAPTIVE,
            policy,
            failures,
            jitter_key="k",
            learned=plan,
            elapsed_ms=elapsed_ms,
        )
        assert decision.step is NextStep.BACKOFF
        assert 0 <= decision.delay_ms <= policy.max_delay_ms, decision
        elapsed_ms += decision.delay_ms


def test_times_shorter_than_the_time_spent_fall_back() -> None:
    plan = adaptive_schedule([2 * S] * 5, elapsed_us=3 * S, max_attempts=5)
    assert not plan.learned and "longer than the 3000 ms" in plan.reason


def test_a_planned_time_within_max_delay_is_kept() -> None:
    policy = RecoveryPolicy(max_retry_attempts=5, max_delay_ms=30_000)
    plan = adaptive_schedule([5 * S] * 4, elapsed_us=0, max_attempts=5)
    decision = after_failed_attempt(
        RecoveryStrategy.ADAPTIVE, policy, 1, jitter_key="k", learned=plan, elapsed_ms=100
    )
    assert decision.delay_ms == 4_900
