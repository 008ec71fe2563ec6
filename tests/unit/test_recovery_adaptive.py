"""The ADAPTIVE recovery strategy's pure plan: learned attempt times, fallback, delays."""

from __future__ import annotations

import itertools

import pytest

from antifragile.models.recovery import RecoveryPolicy, RecoveryStrategy
from antifragile.recovery.logic import (
    ADAPTIVE_MAX_OBSERVATIONS,
    ADAPTIVE_PROBE_COST_US,
    AdaptiveSchedule,
    NextStep,
    adaptive_delay_ms,
    adaptive_schedule,
    after_failed_attempt,
)

S = 1_000_000


def brute_force(values: list[int], elapsed: int, max_attempts: int) -> int:
    """Lowest Σ (lag + λ·j) over every subset of observed values ending at the maximum."""
    usable = sorted(v for v in values if v > elapsed)
    distinct = sorted(set(usable))
    best = None
    for k in range(1, min(max_attempts - 1, len(distinct)) + 1):
        for times in itertools.combinations(distinct[:-1], k - 1):
            plan = (*times, distinct[-1])
            cost = 0
            for x in usable:
                j = next(i for i, t in enumerate(plan) if t >= x)
                cost += plan[j] - x + ADAPTIVE_PROBE_COST_US * (j + 1)
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def plan_cost(offsets_ms: tuple[int, ...], values: list[int], elapsed: int) -> int:
    plan = [o * 1000 for o in offsets_ms]
    cost = 0
    for x in (v for v in values if v > elapsed):
        j = next(i for i, t in enumerate(plan) if t >= x)
        cost += plan[j] - x + ADAPTIVE_PROBE_COST_US * (j + 1)
    return cost


@pytest.mark.parametrize(
    ("recoveries_s", "elapsed_s", "max_attempts", "expected_ms"),
    [
        # all alike: one attempt at that time
        ([6, 6, 6, 6, 6], 0, 5, (6000,)),
        # a tight cluster: the last two values (a third attempt costs more than it saves)
        ([3.0, 3.5, 2.6, 3.2, 2.9], 0, 5, (3200, 3500)),
        # a long outlier gets its own attempt; the short ones share one
        ([1, 2, 30], 0, 5, (2000, 30000)),
        # conditioned on what is still possible: 1 s has passed
        ([1, 2, 3, 4], 1.5, 5, (3000, 4000)),
        # a round of two attempts: one more, at the longest
        ([1, 5, 9, 13], 0, 2, (13000,)),
    ],
)
def test_learned_plan(
    recoveries_s: list[float], elapsed_s: float, max_attempts: int, expected_ms: tuple[int, ...]
) -> None:
    values = [int(v * S) for v in recoveries_s]
    plan = adaptive_schedule(values, elapsed_us=int(elapsed_s * S), max_attempts=max_attempts)
    assert plan.learned
    assert plan.offsets_ms == expected_ms
    assert plan_cost(plan.offsets_ms, values, int(elapsed_s * S)) == brute_force(
        values, int(elapsed_s * S), max_attempts
    )
    assert "learned" in plan.reason


@pytest.mark.parametrize(
    ("recoveries_s", "elapsed_s", "max_attempts", "why"),
    [
        ([], 0, 5, "0 verified recoveries"),
        ([1, 2], 0, 5, "2 verified recoveries"),
        ([1, 2, 3, 4], 2, 5, "2 verified recoveries longer than the 2000 ms"),
        ([1, 2, 3], 0, 1, "one attempt per round"),
    ],
)
def test_fallback(recoveries_s: list[int], elapsed_s: int, max_attempts: int, why: str) -> None:
    plan = adaptive_schedule(
        [v * S for v in recoveries_s], elapsed_us=elapsed_s * S, max_attempts=max_attempts
    )
    assert not plan.learned
    assert plan.offsets_ms == ()
    assert plan.reason.startswith("adaptive fell back to exponential backoff")
    assert why in plan.reason


def test_plan_is_optimal_on_random_samples() -> None:
    import random

    rng = random.Random(7)
    for _ in range(60):
        values = [rng.randrange(1, 20) * 250_000 for _ in range(rng.randrange(3, 9))]
        attempts = rng.randrange(2, 7)
        plan = adaptive_schedule(values, elapsed_us=0, max_attempts=attempts)
        assert plan.learned
        assert len(plan.offsets_ms) <= attempts - 1
        assert plan.offsets_ms[-1] * 1000 >= max(values)
        assert plan_cost(plan.offsets_ms, values, 0) == brute_force(values, 0, attempts)


def test_only_recent_observations_count() -> None:
    old = [100 * S] * 10
    recent = [2 * S] * ADAPTIVE_MAX_OBSERVATIONS
    plan = adaptive_schedule(old + recent, elapsed_us=0, max_attempts=5)
    assert plan.offsets_ms == (2000,)


@pytest.mark.parametrize(
    ("elapsed_ms", "expected"),
    [(0, 3200), (1000, 2200), (3199, 1), (3200, 300), (3499, 1), (3500, 777), (9000, 777)],
)
def test_delay_waits_for_the_next_planned_time(elapsed_ms: int, expected: int) -> None:
    plan = AdaptiveSchedule(True, (3200, 3500))
    assert adaptive_delay_ms(plan, elapsed_ms, fallback_ms=777) == expected


def test_after_failed_attempt_uses_the_plan_only_for_adaptive() -> None:
    policy = RecoveryPolicy()
    plan = AdaptiveSchedule(True, (3200, 3500))
    step = after_failed_attempt(
        RecoveryStrategy.ADAPTIVE, policy, 1, jitter_key="s", learned=plan, elapsed_ms=100
    )
    assert (step.step, step.delay_ms) == (NextStep.BACKOFF, 3100)
    # a fallback plan backs off exponentially
    fallback = AdaptiveSchedule(False, reason="x")
    step = after_failed_attempt(
        RecoveryStrategy.ADAPTIVE, policy, 3, jitter_key="s", learned=fallback, elapsed_ms=100
    )
    assert step.delay_ms == 4000
    # other strategies ignore a plan
    step = after_failed_attempt(
        RecoveryStrategy.LINEAR_BACKOFF, policy, 2, jitter_key="s", learned=plan, elapsed_ms=0
    )
    assert step.delay_ms == 2000
    # the round still escalates
    step = after_failed_attempt(
        RecoveryStrategy.ADAPTIVE, policy, 5, jitter_key="s", learned=plan, elapsed_ms=0
    )
    assert step.step is NextStep.ESCALATE
