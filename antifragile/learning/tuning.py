"""The numbers behind the advice: each setting from its measured distribution (pure).

All arithmetic that decides a value is exact (integers and fractions), so a value sitting
exactly at a threshold is decided the same way everywhere. Sources of every formula are
in each function's docstring; the constants below are the stated targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from antifragile.learning.measurements import type7_quantile

# --- breaker open time ---------------------------------------------------------------------

OPEN_QUANTILE = Fraction(3, 4)
"""The breaker's open time is the p75 of the verified times to recover (see
:func:`open_duration_us`)."""

OPEN_BOUNDS_US = (1_000_000, 300_000_000)
"""Recommended open time stays within [1 s, 300 s]."""

# --- breaker thresholds --------------------------------------------------------------------

FALSE_TRIP_TARGET = Fraction(1, 1_000_000)
"""Largest probability that a healthy window of ``window_size`` calls trips the breaker
(per evaluated window: with 100 calls/s and a 100-call window, about one false trip in
11.6 days). A design target: the same order as a 99.99 %-available dependency's own
failure budget would spend on a one-second outage a day, never a measured quantity."""

RATE_FLOOR = Fraction(1, 4)
"""Lowest failure-rate threshold recommended: below a quarter of calls failing, opening
the breaker refuses far more calls than it saves (a policy bound)."""

FAILURE_THRESHOLD_BOUNDS = (2, 50)
"""Consecutive-failure threshold stays within [2, 50]."""

MINIMUM_CALLS_FLOOR = 5
"""Lowest ``minimum_calls`` recommended."""

PLAN_RATE_DENOMINATOR = 1_000_000
"""The planning error rate is rounded up to a multiple of 1/10^6 (keeps the exact
binomial sums small; rounding up only makes the thresholds safer)."""

# --- guard timeout -------------------------------------------------------------------------

TIMEOUT_MARGIN = Fraction(3, 2)
"""Timeout = 1.5 × the baseline p99.9 (itself a bucket upper bound, up to 19 % high)."""

TIMEOUT_BOUNDS_MS = (10, 120_000)
"""Recommended timeout stays within [10 ms, 120 s]."""

# --- recovery schedule ---------------------------------------------------------------------

PROBE_COST_S = Fraction(1)
"""λ: one attempt (action + probe) is worth one second of detection lag."""

ROUND_COVER = Fraction(3, 2)
"""A round of attempts must last 1.5 × the longest verified recovery, so that no outage
seen so far would have paged a person."""

INITIAL_DELAYS_MS = (100, 250, 500, 1000, 2000, 5000)
MULTIPLIERS = (1.0, 1.5, 2.0, 3.0)
MAX_DELAYS_MS = (5000, 10000, 30000, 60000)
MAX_ATTEMPTS = 1000


def bound(value: int, low: int, high: int) -> int:
    """``value`` clamped to [low, high]."""
    return max(low, min(high, value))


def open_duration_us(recoveries_us: Sequence[int]) -> int:
    """Breaker open time, µs: p75 (type 7) of the verified times to recover, bounded.

    Why p75: the first half-open trial should land when the dependency is likely back.
    A trial that lands early fails and costs a whole extra open period of refused calls;
    one that lands late refuses calls for ``open - TTR``. Above the median, three
    outages in four see their first trial succeed; below the maximum, one long outlier
    among a handful of observations does not set the value (with 3-5 observations a
    p90 is the maximum in all but name). Type 7 interpolation (Hyndman & Fan 1996) uses
    two neighbouring order statistics, so a small sample moves the value smoothly.
    Rounded up to 100 ms, bounded by :data:`OPEN_BOUNDS_US`.

    Raises:
        ValueError: no recovery.
    """
    p = type7_quantile(sorted(recoveries_us), OPEN_QUANTILE)
    rounded = math.ceil(p / 100_000) * 100_000
    return bound(rounded, *OPEN_BOUNDS_US)


@dataclass(frozen=True, slots=True)
class OpenEffect:
    """What an open time does against the observed recoveries (µs; trials per outage)."""

    first_trial_ok: int
    refused_after_return_us: Fraction
    trials: Fraction


def open_effect(open_us: int, recoveries_us: Sequence[int]) -> OpenEffect:
    """Replay an open time against the observed recoveries.

    A breaker opened at 0 tries at ``open, 2·open, ...`` (a failed trial reopens it for
    another ``open``): for a recovery at ``x`` the successful trial is at
    ``ceil(x / open) · open``, calls are refused ``ceil(x/open)·open - x`` after the
    dependency is back, and ``ceil(x / open)`` trials are spent. Averages are exact.
    """
    n = len(recoveries_us)
    if n == 0:
        return OpenEffect(0, Fraction(0), Fraction(0))
    rounds = [max(1, -(-x // open_us)) for x in recoveries_us]
    refused = sum(r * open_us - x for r, x in zip(rounds, recoveries_us, strict=True))
    return OpenEffect(
        sum(1 for r in rounds if r == 1), Fraction(refused, n), Fraction(sum(rounds), n)
    )


def plan_rate(failures: int, calls: int) -> Fraction:
    """The error rate thresholds are planned for: ``max(failures/calls, 3/calls)``.

    The rule of three (Hanley & Lippman-Hand 1983): with no failure in ``n`` calls, the
    95 % upper confidence bound of the rate is about ``3/n`` - a dependency that has not
    failed yet is not assumed never to fail. Rounded up to a multiple of
    1/:data:`PLAN_RATE_DENOMINATOR`, capped at 1.

    Raises:
        ValueError: ``calls`` < 1.
    """
    if calls < 1:
        raise ValueError("a rate needs at least one call")
    rate = max(Fraction(min(failures, calls), calls), Fraction(3, calls))
    rounded = Fraction(math.ceil(rate * PLAN_RATE_DENOMINATOR), PLAN_RATE_DENOMINATOR)
    return min(rounded, Fraction(1))


def binomial_tail_at_most(n: int, k: int, p: Fraction, target: Fraction) -> bool:
    """``P[X >= k] <= target`` for ``X ~ Binomial(n, p)``, decided exactly.

    ``P[X >= k] = Σ_{i=k..n} C(n, i) p^i (1-p)^(n-i)`` (the binomial tail; Feller,
    *An Introduction to Probability Theory*, vol. 1, ch. VI), with ``p = a/D``
    multiplied through by ``D^n`` so the sum and the comparison are integers.
    """
    if k <= 0:
        return target >= 1
    if k > n:
        return True
    a, d = p.numerator, p.denominator
    b = d - a
    tail: int = sum(math.comb(n, i) * a**i * b ** (n - i) for i in range(k, n + 1))
    return bool(tail * target.denominator <= target.numerator * d**n)


def rate_threshold(window: int, p: Fraction) -> Fraction:
    """Lowest failure-rate threshold keeping false trips of a full window under target.

    A multiple of 1/100, at least :data:`RATE_FLOOR`, such that a full window of
    ``window`` calls trips a healthy dependency with probability at most
    :data:`FALSE_TRIP_TARGET`: the breaker trips at ``failures >= ceil(rate × window)``
    (it compares ``failures × den >= num × calls``), so the rate is acceptable when
    ``P[Binomial(window, p) >= ceil(rate × window)] <= target``. 1 when none is.
    """
    for hundredths in range(math.ceil(RATE_FLOOR * 100), 101):
        rate = Fraction(hundredths, 100)
        if binomial_tail_at_most(window, math.ceil(rate * window), p, FALSE_TRIP_TARGET):
            return rate
    return Fraction(1)


def minimum_calls(window: int, rate: Fraction, p: Fraction) -> int:
    """Smallest ``minimum_calls`` keeping every evaluation's false trips under target.

    Every evaluation with ``m`` calls in the window, ``minimum_calls <= m <= window``,
    trips a healthy dependency with probability at most :data:`FALSE_TRIP_TARGET`:
    ``P[Binomial(m, p) >= ceil(rate × m)] <= target`` for each such ``m``
    (each evaluation held to the per-window target). At least
    :data:`MINIMUM_CALLS_FLOOR` (or ``window`` if smaller).
    """
    floor = min(MINIMUM_CALLS_FLOOR, window)
    best = window
    for m in range(window, floor - 1, -1):
        if not binomial_tail_at_most(m, math.ceil(rate * m), p, FALSE_TRIP_TARGET):
            break
        best = m
    return best


def failure_threshold(window: int, p: Fraction) -> int:
    """Smallest consecutive-failure threshold ``k`` with ``window × p^k <= target``.

    A run of ``k`` failures starting at a given call has probability ``p^k``; by the
    union bound over the ``window`` calls a run may start at, a window trips with
    probability at most ``window × p^k`` (Boole's inequality). Decided in integers,
    bounded by :data:`FAILURE_THRESHOLD_BOUNDS`.
    """
    low, high = FAILURE_THRESHOLD_BOUNDS
    a, d = p.numerator, p.denominator
    t = FALSE_TRIP_TARGET
    for k in range(low, high + 1):
        if window * a**k * t.denominator <= t.numerator * d**k:
            return k
    return high


def timeout_ms(p999_ms: float) -> int:
    """Guard timeout, ms: ``ceil(1.5 × p99.9)`` bounded by :data:`TIMEOUT_BOUNDS_MS`.

    The p99.9 is the conservative bucket bound of the baseline histogram
    (:func:`antifragile.learning.histogram.quantile_ms`); the margin leaves room for the
    slow tail beyond it, so a healthy call times out well under 1 in 1000.
    """
    return bound(math.ceil(Fraction(p999_ms) * TIMEOUT_MARGIN), *TIMEOUT_BOUNDS_MS)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recovery schedule and its cost against the observed recoveries.

    Attributes:
        initial_delay_ms: Delay after the first failed attempt.
        backoff_multiplier: Growth of the delays.
        max_delay_ms: Cap of a delay.
        max_retry_attempts: Attempts in a round.
        lag_us: Mean time from the dependency's return to the attempt that sees it, µs.
        attempts: Mean attempts until then.
        cost_s: ``lag + λ × attempts``, seconds.
    """

    initial_delay_ms: int
    backoff_multiplier: float
    max_delay_ms: int
    max_retry_attempts: int
    lag_us: Fraction
    attempts: Fraction
    cost_s: Fraction


def attempt_times_us(initial_ms: int, multiplier: float, max_ms: int, cover_us: int) -> list[int]:
    """Attempt start times, µs, of an exponential schedule, until one reaches ``cover_us``.

    Attempt 1 runs at 0; after failure ``j`` the delay is ``int(min(initial ×
    multiplier^(j-1), max))`` ms - the recovery's EXPONENTIAL_BACKOFF
    (``antifragile.recovery.logic.backoff_delay_ms``, no jitter). Action and probe time
    are left out. Empty when :data:`MAX_ATTEMPTS` do not reach ``cover_us``.
    """
    times = [0]
    while times[-1] < cover_us:
        if len(times) >= MAX_ATTEMPTS:
            return []
        j = len(times)
        delay = int(min(initial_ms * multiplier ** min(j - 1, 1024), float(max_ms)))
        if delay <= 0:
            return []
        times.append(times[-1] + delay * 1000)
    return times


def evaluate(
    initial_ms: int, multiplier: float, max_ms: int, recoveries_us: Sequence[int]
) -> Schedule | None:
    """Cost of a schedule against the observed recoveries (None: cannot cover them).

    For a dependency back at ``x`` (µs after the outage began) the attempt that sees it
    is the first at ``t_j >= x``: ``lag(x) = t_j - x`` and ``j`` attempts are spent.
    ``J = mean(lag) + λ × mean(j)`` over the observed recoveries (λ =
    :data:`PROBE_COST_S`), with ``max_retry_attempts`` the attempts that reach
    :data:`ROUND_COVER` × the longest recovery.
    """
    cover = math.ceil(max(recoveries_us) * ROUND_COVER)
    times = attempt_times_us(initial_ms, multiplier, max_ms, cover)
    if not times:
        return None
    lag = 0
    used = 0
    for x in recoveries_us:
        j = next(i for i, t in enumerate(times) if t >= x)
        lag += times[j] - x
        used += j + 1
    n = len(recoveries_us)
    lag_us = Fraction(lag, n)
    attempts = Fraction(used, n)
    cost = lag_us / 1_000_000 + PROBE_COST_S * attempts
    return Schedule(initial_ms, multiplier, max_ms, len(times), lag_us, attempts, cost)


def best_schedule(recoveries_us: Sequence[int]) -> Schedule:
    """The schedule minimising ``E[lag] + λ E[attempts]`` over a small grid.

    ``E[lag] = (1/n) Σ_x (min{t_j : t_j >= x} - x)`` and ``E[attempts] = (1/n) Σ_x
    j(x)`` over the ``n`` verified recoveries ``x`` - the empirical distribution
    stands in for the unknown one (a plug-in estimate). Candidates: initial delays
    :data:`INITIAL_DELAYS_MS` plus the deciles of the recoveries (rounded up to 100 ms),
    multipliers :data:`MULTIPLIERS`, caps :data:`MAX_DELAYS_MS` not below the initial
    delay (the initial delay itself when all are). Ties go to fewer attempts per round,
    then the larger initial delay, smaller multiplier, larger cap: the choice is
    deterministic.

    Raises:
        ValueError: no recovery, or no candidate covers them.
    """
    if not recoveries_us:
        raise ValueError("no recovery to schedule for")
    ordered = sorted(recoveries_us)
    deciles = {
        max(100, math.ceil(type7_quantile(ordered, Fraction(i, 10)) / 100_000) * 100)
        for i in range(1, 11)
    }
    initials = sorted(set(INITIAL_DELAYS_MS) | deciles)
    best: tuple[tuple[Fraction, int, int, float, int], Schedule] | None = None
    for initial in initials:
        for multiplier in MULTIPLIERS:
            for cap in [c for c in MAX_DELAYS_MS if c >= initial] or [initial]:
                s = evaluate(initial, multiplier, cap, ordered)
                if s is None:
                    continue
                key = (s.cost_s, s.max_retry_attempts, -initial, multiplier, -cap)
                if best is None or key < best[0]:
                    best = (key, s)
    if best is None:
        raise ValueError("no candidate schedule covers the observed recoveries")
    return best[1]
