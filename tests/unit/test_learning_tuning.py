"""The numbers behind the advice: exact quantiles, binomial tails, schedules (tables)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from antifragile.learning import tuning
from antifragile.learning.tuning import (
    attempt_times_us,
    best_schedule,
    binomial_tail_at_most,
    evaluate,
    failure_threshold,
    minimum_calls,
    open_duration_us,
    open_effect,
    plan_rate,
    rate_threshold,
    timeout_ms,
)

S = 1_000_000


@pytest.mark.parametrize(
    ("recoveries_s", "expected_s"),
    [
        ([6], 6.0),  # a single recovery is its own p75
        ([6, 6, 6], 6.0),
        ([5, 6, 7], 6.5),  # type 7: h = 2 × 3/4 = 1.5, halfway between 6 and 7
        ([5, 6, 7, 100], 30.3),  # h = 2.25: 7 + 0.25 × 93 = 30.25, rounded up to 100 ms
        ([0.1, 0.1, 0.1], 1.0),  # lower bound 1 s
        ([1000, 1000, 1000], 300.0),  # upper bound 300 s
        ([5.000001] * 3, 5.1),  # rounded up to 100 ms
    ],
)
def test_open_duration(recoveries_s: list[float], expected_s: float) -> None:
    assert open_duration_us([round(r * S) for r in recoveries_s]) == round(expected_s * S)


def test_open_duration_of_nothing_raises() -> None:
    with pytest.raises(ValueError, match="no value"):
        open_duration_us([])


@pytest.mark.parametrize(
    ("open_s", "recoveries_s", "first_ok", "refused_s", "trials"),
    [
        (6, [], 0, 0, 0),
        (6, [6], 1, 0, 1),  # a trial exactly at the return succeeds (tie: >=)
        (6, [5, 7], 1, Fraction(1 + 5, 2), Fraction(3, 2)),  # 7 s: trials at 6 (fails), 12
        (30, [6], 1, 24, 1),  # the default 30 s: 24 s refused after the return
        (6, [0], 1, 6, 1),
    ],
)
def test_open_effect(
    open_s: int,
    recoveries_s: list[int],
    first_ok: int,
    refused_s: Fraction | int,
    trials: Fraction | int,
) -> None:
    effect = open_effect(open_s * S, [r * S for r in recoveries_s])
    assert effect.first_trial_ok == first_ok
    assert effect.refused_after_return_us == Fraction(refused_s) * S
    assert effect.trials == trials


@pytest.mark.parametrize(
    ("failures", "calls", "expected"),
    [
        (0, 1000, Fraction(3, 1000)),  # rule of three
        (10, 1000, Fraction(1, 100)),
        (2, 1000, Fraction(3, 1000)),  # 2/1000 < 3/1000
        (0, 1, Fraction(1)),  # capped at 1
        (1, 3, Fraction(1)),  # 3/3
        (1, 7, Fraction(428572, 1_000_000)),  # 3/7 rounded UP to 1e-6
        (5, 3, Fraction(1)),  # more failures than calls: capped
    ],
)
def test_plan_rate(failures: int, calls: int, expected: Fraction) -> None:
    assert plan_rate(failures, calls) == expected


def test_plan_rate_needs_calls() -> None:
    with pytest.raises(ValueError, match="call"):
        plan_rate(0, 0)


@pytest.mark.parametrize(
    ("n", "k", "p", "target", "expected"),
    [
        (1, 1, Fraction(1, 2), Fraction(1, 2), True),  # P = 1/2 exactly at the target
        (1, 1, Fraction(1, 2), Fraction(1, 2) - Fraction(1, 10**30), False),
        (2, 2, Fraction(1, 2), Fraction(1, 4), True),
        (2, 1, Fraction(1, 2), Fraction(3, 4), True),  # 1 - (1/2)^2
        (2, 1, Fraction(1, 2), Fraction(74, 100), False),
        (3, 0, Fraction(1, 10), Fraction(99, 100), False),  # P[X >= 0] = 1
        (3, 0, Fraction(1, 10), Fraction(1), True),
        (3, 4, Fraction(1, 2), Fraction(0), True),  # P[X >= 4] = 0 for n = 3
        (10, 1, Fraction(0), Fraction(0), True),
        (10, 10, Fraction(1), Fraction(99, 100), False),
    ],
)
def test_binomial_tail(n: int, k: int, p: Fraction, target: Fraction, expected: bool) -> None:
    assert binomial_tail_at_most(n, k, p, target) is expected


@pytest.mark.parametrize(
    ("window", "p", "expected"),
    [
        (100, Fraction(1, 100), 4),  # 100 × (1/100)^4 = 1e-6: exactly the target, accepted
        (101, Fraction(1, 100), 5),  # 101 × 1e-8 > 1e-6
        (100, Fraction(3, 1000), 4),  # k = 3: 100 × 2.7e-8 = 2.7e-6 > 1e-6
        (1, Fraction(1, 1000), 2),  # lower bound 2
        (100, Fraction(9, 10), 50),  # upper bound 50 (never enough)
    ],
)
def test_failure_threshold(window: int, p: Fraction, expected: int) -> None:
    got = failure_threshold(window, p)
    if got < tuning.FAILURE_THRESHOLD_BOUNDS[1]:
        assert window * p**got <= tuning.FALSE_TRIP_TARGET
        if got > tuning.FAILURE_THRESHOLD_BOUNDS[0]:
            assert window * p ** (got - 1) > tuning.FALSE_TRIP_TARGET
    assert got == expected


@pytest.mark.parametrize(
    ("window", "p", "expected"),
    [
        (100, Fraction(3, 1000), Fraction(1, 4)),  # healthy: the floor
        (100, Fraction(1, 10), Fraction(28, 100)),
        (100, Fraction(1, 2), Fraction(74, 100)),
        (10, Fraction(9, 10), Fraction(1)),  # nothing is safe: 1
    ],
)
def test_rate_threshold(window: int, p: Fraction, expected: Fraction) -> None:
    rate = rate_threshold(window, p)
    assert rate == expected
    target = tuning.FALSE_TRIP_TARGET
    if rate < 1:
        assert binomial_tail_at_most(window, math.ceil(rate * window), p, target)
    if rate > tuning.RATE_FLOOR:  # minimal: one hundredth less is not safe
        lower = rate - Fraction(1, 100)
        assert not binomial_tail_at_most(window, math.ceil(lower * window), p, target)


@pytest.mark.parametrize(
    ("window", "rate", "p", "expected"),
    [
        (100, Fraction(1, 4), Fraction(2, 1000), 13),
        (100, Fraction(1, 4), Fraction(1, 10**6), 5),  # the floor
        (3, Fraction(1, 4), Fraction(1, 10**6), 3),  # a window smaller than the floor
        (100, Fraction(1, 4), Fraction(1, 2), 100),  # never safe: the whole window
    ],
)
def test_minimum_calls(window: int, rate: Fraction, p: Fraction, expected: int) -> None:
    assert minimum_calls(window, rate, p) == expected


@pytest.mark.parametrize(
    ("p999_ms", "expected_ms"),
    [(10.0, 15), (10.0001, 16), (0.1, 10), (1e6, 120_000), (80_000.0, 120_000)],
)
def test_timeout(p999_ms: float, expected_ms: int) -> None:
    assert timeout_ms(p999_ms) == expected_ms


@pytest.mark.parametrize(
    ("initial", "multiplier", "cap", "cover_s", "expected_s"),
    [
        (1000, 2.0, 60000, 7, [0, 1, 3, 7]),  # reaching the cover exactly stops
        (1000, 2.0, 60000, 0, [0]),
        (1000, 2.0, 2000, 8, [0, 1, 3, 5, 7, 9]),  # capped at 2 s
        (6000, 1.0, 60000, 9, [0, 6, 12]),
        (0, 2.0, 60000, 1, []),  # a zero delay never gets there
        (100, 1.0, 100, 1000, []),  # more than MAX_ATTEMPTS
    ],
)
def test_attempt_times(
    initial: int, multiplier: float, cap: int, cover_s: int, expected_s: list[int]
) -> None:
    assert attempt_times_us(initial, multiplier, cap, cover_s * S) == [t * S for t in expected_s]


def test_evaluate_the_default_schedule_against_a_6_s_outage() -> None:
    s = evaluate(1000, 2.0, 60000, [6 * S])
    assert s is not None
    # attempts at 0, 1, 3, 7, 15 s (a round must reach 1.5 × 6 = 9 s): seen at 7 s.
    assert (s.max_retry_attempts, s.lag_us, s.attempts, s.cost_s) == (5, S, 4, 5)


@pytest.mark.parametrize(
    ("recoveries_s", "expected"),
    [
        ([6], (6000, 1.0, 60000, 3)),
        ([6, 6, 6], (6000, 1.0, 60000, 3)),  # cost 2: the least possible (attempt 1 fails)
        ([0], (5000, 1.0, 60000, 1)),  # back at once: the first attempt sees it (all tie)
        ([600, 600, 600], (600000, 1.0, 600000, 3)),  # beyond every cap: the decile itself
    ],
)
def test_best_schedule(recoveries_s: list[int], expected: tuple[int, float, int, int]) -> None:
    s = best_schedule([r * S for r in recoveries_s])
    assert (s.initial_delay_ms, s.backoff_multiplier, s.max_delay_ms, s.max_retry_attempts) == (
        expected
    )


def test_best_schedule_of_nothing_raises() -> None:
    with pytest.raises(ValueError, match="no recovery"):
        best_schedule([])
