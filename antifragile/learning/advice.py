"""Advice: recommended settings of one dependency from its observations (pure).

:func:`advise` returns, in a fixed order, one :class:`Advice` per setting it has enough
evidence for, and a ``gap.*`` entry (no value) for everything it cannot advise on or that
was never tested - thin evidence is said, never silent. The numbers come from
:mod:`antifragile.learning.tuning` (formulas and sources there); the minimum evidence:

- open time and recovery schedule: :data:`MIN_RECOVERIES` verified recoveries;
- breaker thresholds: :data:`MIN_BASELINE_CALLS` calls outside experiments and outages;
- guard timeout: :data:`MIN_LATENCY_CALLS` latencies outside experiments and outages.

Observations after ``now`` are ignored (not yet happened for this decision), so a replay
at an earlier ``now`` concludes what was concluded then.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from fractions import Fraction

from antifragile.learning import tuning
from antifragile.learning.histogram import total
from antifragile.learning.measurements import (
    baseline,
    injected,
    measure,
    observed_at,
    ordered,
    recover_us,
)
from antifragile.models.chaos_scenario import ChaosType
from antifragile.models.learning import (
    Advice,
    CurrentSettings,
    DependencyMeasurements,
    Evidence,
    ExperimentObservation,
    Observation,
    OutageObservation,
    TrafficObservation,
)

MIN_RECOVERIES = 3
"""Verified recoveries needed before open time and recovery schedule are advised."""

MIN_BASELINE_CALLS = 1000
"""Baseline calls needed before breaker thresholds are advised (the rule of three then
plans for a rate of at most 0.3 %)."""

MIN_LATENCY_CALLS = 1000
"""Baseline latencies needed before a timeout is advised (a p99.9 needs 1000 values to
be more than the maximum)."""


def _evidence(observations: Sequence[Observation], detail: str) -> Evidence:
    times = [observed_at(o) for o in observations]
    return Evidence(
        observations=len(observations),
        window_start=min(times) if times else None,
        window_end=max(times) if times else None,
        detail=detail,
    )


def _s(us: Fraction | int) -> str:
    return f"{float(Fraction(us) / 1_000_000):.1f} s"


def _gap(dependency: str, what: str, reason: str, evidence: Evidence) -> Advice:
    return Advice(dependency=dependency, setting=f"gap.{what}", reason=reason, evidence=evidence)


def _recovered(observations: Sequence[Observation]) -> list[Observation]:
    return [
        o
        for o in observations
        if not isinstance(o, TrafficObservation) and recover_us(o) is not None
    ]


def _open_and_schedule(
    dependency: str, used: list[Observation], current: CurrentSettings
) -> list[Advice]:
    recoveries = sorted(
        v
        for o in used
        if not isinstance(o, TrafficObservation) and (v := recover_us(o)) is not None
    )
    n = len(recoveries)
    out: list[Advice] = []
    if n < MIN_RECOVERIES:
        out.append(
            _gap(
                dependency,
                "thin.recovery",
                f"{n} verified recoveries, {MIN_RECOVERIES} needed before advising the "
                "breaker's open time and the recovery schedule",
                _evidence(used, "verified times to recover"),
            )
        )
        return out
    open_us = tuning.open_duration_us(recoveries)
    now_us = max(1, round(Fraction(format(current.open_duration_s, ".15g")) * 1_000_000))
    new, old = tuning.open_effect(open_us, recoveries), tuning.open_effect(now_us, recoveries)
    out.append(
        Advice(
            dependency=dependency,
            setting="breaker.open_duration_s",
            current=current.open_duration_s,
            recommended=open_us / 1_000_000,
            reason=f"p75 of {n} verified times to recover (first half-open trial when the "
            "dependency is likely back)",
            evidence=_evidence(used, f"p75 (type 7) of {n} verified times to recover"),
            expected_effect=(
                f"first trial succeeds in {new.first_trial_ok}/{n} observed outages "
                f"(now {old.first_trial_ok}/{n}); refused after the return "
                f"{_s(new.refused_after_return_us)} on average (now "
                f"{_s(old.refused_after_return_us)}); trials {float(new.trials):.2f} "
                f"(now {float(old.trials):.2f})"
            ),
        )
    )
    best = tuning.best_schedule(recoveries)
    mine = tuning.evaluate(
        current.initial_delay_ms,
        current.backoff_multiplier,
        current.max_delay_ms,
        recoveries,
    )
    if mine is not None:
        effect = (
            f"E[lag] {_s(best.lag_us)}, E[attempts] {float(best.attempts):.2f} "
            f"(now {_s(mine.lag_us)}, {float(mine.attempts):.2f}); "
            f"cost {float(best.cost_s):.2f} (now {float(mine.cost_s):.2f})"
        )
    else:
        effect = (
            f"E[lag] {_s(best.lag_us)}, E[attempts] {float(best.attempts):.2f} "
            "(now: a round cannot outlast the longest recovery)"
        )
    detail = f"E[lag] + {tuning.PROBE_COST_S} s × E[attempts] over {n} verified times to recover"
    reason = "minimises expected detection lag + attempt cost against the observed recoveries"
    for setting, now_value, value in (
        ("recovery.initial_delay_ms", current.initial_delay_ms, best.initial_delay_ms),
        ("recovery.backoff_multiplier", current.backoff_multiplier, best.backoff_multiplier),
        ("recovery.max_delay_ms", current.max_delay_ms, best.max_delay_ms),
    ):
        out.append(
            Advice(
                dependency=dependency,
                setting=setting,
                current=float(now_value),
                recommended=float(value),
                reason=reason,
                evidence=_evidence(used, detail),
                expected_effect=effect,
            )
        )
    out.append(
        Advice(
            dependency=dependency,
            setting="recovery.max_retry_attempts",
            current=float(current.max_retry_attempts),
            recommended=float(best.max_retry_attempts),
            reason=f"a round outlasts {tuning.ROUND_COVER} × the longest verified recovery "
            f"({_s(recoveries[-1])}) before a person is asked",
            evidence=_evidence(used, f"longest of {n} verified times to recover"),
            expected_effect=effect,
        )
    )
    return out


def _thresholds(
    dependency: str, windows: list[TrafficObservation], current: CurrentSettings
) -> list[Advice]:
    calls = sum(w.calls for w in windows)
    failures = sum(min(w.failures, w.calls) for w in windows)
    used: list[Observation] = list(windows)
    if calls < MIN_BASELINE_CALLS:
        return [
            _gap(
                dependency,
                "thin.baseline",
                f"{calls} calls outside experiments and outages, {MIN_BASELINE_CALLS} "
                "needed before advising the breaker's thresholds",
                _evidence(used, "baseline calls"),
            )
        ]
    p = tuning.plan_rate(failures, calls)
    w = current.window_size
    rate = tuning.rate_threshold(w, p)
    minimum = tuning.minimum_calls(w, rate, p)
    consecutive = tuning.failure_threshold(w, p)
    target = tuning.FALSE_TRIP_TARGET
    detail = (
        f"baseline error rate {failures}/{calls}, planned as {float(p):.6f} "
        f"(max(rate, 3/calls), rule of three)"
    )
    effect = f"a healthy {w}-call window trips the breaker with P <= {float(target):g}"
    return [
        Advice(
            dependency=dependency,
            setting="breaker.failure_rate_threshold",
            current=current.failure_rate_threshold,
            recommended=float(rate),
            reason=f"lowest rate (>= {float(tuning.RATE_FLOOR)}) with "
            f"P[Binomial({w}, p) >= ceil(rate × {w})] <= {float(target):g}",
            evidence=_evidence(used, detail),
            expected_effect=effect,
        ),
        Advice(
            dependency=dependency,
            setting="breaker.minimum_calls",
            current=float(current.minimum_calls),
            recommended=float(minimum),
            reason=f"fewest calls for which every evaluation up to {w} calls keeps "
            f"P[false trip] <= {float(target):g}",
            evidence=_evidence(used, detail),
            expected_effect=effect,
        ),
        Advice(
            dependency=dependency,
            setting="breaker.failure_threshold",
            current=float(current.failure_threshold),
            recommended=float(consecutive),
            reason=f"smallest k with {w} × p^k <= {float(target):g} (union bound)",
            evidence=_evidence(used, detail),
            expected_effect=effect,
        ),
    ]


def _timeout(
    dependency: str,
    windows: list[TrafficObservation],
    m: DependencyMeasurements,
    current: CurrentSettings,
) -> Advice:
    n = total(m.latency)
    used: list[Observation] = [w for w in windows if w.latency.counts]
    if n < MIN_LATENCY_CALLS or m.latency_p999_ms is None:
        return _gap(
            dependency,
            "thin.latency",
            f"{n} latencies outside experiments and outages, {MIN_LATENCY_CALLS} needed "
            "before advising the guard's timeout",
            _evidence(used, "baseline latencies"),
        )
    ms = tuning.timeout_ms(m.latency_p999_ms)
    return Advice(
        dependency=dependency,
        setting="guard.timeout_s",
        current=current.timeout_s,
        recommended=ms / 1000,
        reason=f"{float(tuning.TIMEOUT_MARGIN)} × p99.9 of {n} baseline latencies "
        f"({m.latency_p999_ms:.1f} ms, bucket upper bound)",
        evidence=_evidence(used, f"p99.9 of {n} baseline latencies"),
        expected_effect="a hung call fails after "
        f"{ms / 1000:g} s instead of "
        + ("never" if current.timeout_s is None else f"{current.timeout_s:g} s")
        + f"; at most 1 in 1000 baseline calls took over {m.latency_p999_ms:.1f} ms",
    )


def _gaps(dependency: str, mine: list[Observation]) -> list[Advice]:
    out: list[Advice] = []
    experiments = [o for o in mine if isinstance(o, ExperimentObservation)]
    events = [o for o in mine if isinstance(o, ExperimentObservation | OutageObservation)]
    if not events:
        out.append(
            _gap(
                dependency,
                "never_exercised",
                "no experiment and no outage: nothing shows how this dependency fails or recovers",
                _evidence(mine, "experiments and outages"),
            )
        )
    tried = {o.chaos_type for o in experiments if injected(o)}
    for chaos_type in ChaosType:
        if chaos_type.value not in tried:
            out.append(
                _gap(
                    dependency,
                    f"untried.{chaos_type.value}",
                    f"no {chaos_type.value} experiment was ever injected on this dependency",
                    _evidence(experiments, "injected experiments"),
                )
            )
    failed = [o for o in experiments if not o.steady_state_held]
    if failed:
        newest = ", ".join(o.source_id for o in failed[-3:])
        out.append(
            _gap(
                dependency,
                "steady_state_failed",
                f"{len(failed)} experiment(s) broke the steady state (newest: {newest}): "
                "the blast radius was not contained",
                _evidence(failed, "experiments whose steady state failed"),
            )
        )
    unverified = [o for o in events if injected(o) and recover_us(o) is None]
    if unverified:
        out.append(
            _gap(
                dependency,
                "unverified_recovery",
                f"{len(unverified)} experiment(s)/outage(s) never verified a recovery",
                _evidence(unverified, "experiments and outages without a verified recovery"),
            )
        )
    return out


def advise(
    dependency: str,
    observations: Iterable[Observation],
    current: CurrentSettings,
    now: datetime,
) -> list[Advice]:
    """Recommended settings and gaps for ``dependency``.

    Args:
        dependency: The dependency (guard name); others' observations are ignored.
        observations: Its ledger, in any order (the result does not depend on it).
        current: The settings in force.
        now: The decision time; observations after it are ignored.

    Returns:
        In this order: ``breaker.open_duration_s``, ``recovery.*`` (initial delay,
        multiplier, cap, attempts), ``breaker.failure_rate_threshold``,
        ``breaker.minimum_calls``, ``breaker.failure_threshold``, ``guard.timeout_s``,
        each replaced by a ``gap.thin.*`` entry when its evidence is too thin; then the
        gaps: ``gap.never_exercised``, ``gap.untried.<ChaosType>``,
        ``gap.steady_state_failed``, ``gap.unverified_recovery``. An advice whose
        recommended value equals the current one is kept (it says "keep").
    """
    mine = [o for o in ordered(dependency, observations) if observed_at(o) <= now]
    windows = baseline(mine)
    m = measure(dependency, mine)
    events = [o for o in mine if not isinstance(o, TrafficObservation)]
    out = _open_and_schedule(dependency, _recovered(events), current)
    out += _thresholds(dependency, windows, current)
    out.append(_timeout(dependency, windows, m, current))
    out += _gaps(dependency, mine)
    return out
