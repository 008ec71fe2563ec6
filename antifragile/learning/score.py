"""The resilience score of a dependency: measured outcomes only, weighted by recency (pure).

**Outcomes.** Every injected experiment and every outage is an outcome. It *held* when
the steady state held (experiments; an outage has no health guard, only its recovery)
and a recovery was verified within the dependency's target
(:meth:`ScoreTargets.target_s`; compared exactly in microseconds). An outcome with no
verified recovery counts as failed once the target has passed (or at once for a
recovery that ended FAILED or CANCELLED); before that it is pending and left out.
Traffic windows are not outcomes.

**Score** = ``100 × Σ w_i held_i / Σ w_i`` with ``w_i = 2^(-age_i / half_life)``
(exponential decay; ``age_i = now - time_i``, at least 0; half-life
``ScoreTargets.half_life_s``, 14 days by default: an outcome a fortnight old counts half
as much as today's). None when no outcome counts.

**Trend** = score now minus the score without the newest outcome (both at ``now``);
None with fewer than two outcomes.

**Bit for bit.** Outcomes are sorted by (time, kind, source_id) before summing, and
the sums use :mod:`decimal` at 28 digits, whose ``exp`` and ``ln`` are correctly
rounded: the same inputs give the same score on every platform (no libm in the way),
whatever order the observations came in. Scores are rounded to 0.01 (half even).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction

from antifragile.learning.measurements import (
    micros,
    observed_at,
    ordered,
    recover_us,
)
from antifragile.models.learning import (
    Evidence,
    ExperimentObservation,
    Observation,
    OutageObservation,
    ResilienceScore,
    ScoreTargets,
)

_CTX = Context(prec=28, rounding=ROUND_HALF_EVEN)
_CENT = Decimal("0.01")
_FINAL_OUTAGE = frozenset({"FAILED", "CANCELLED"})

Event = ExperimentObservation | OutageObservation


def _exact(value: float) -> Fraction:
    return Fraction(format(value, ".15g"))


def outcome(event: Event, now: datetime, target_us: Fraction) -> bool | None:
    """True: held; False: failed; None: pending or not an outcome (never injected).

    Args:
        event: An experiment or outage.
        now: The scoring time.
        target_us: The recovery target, µs.
    """
    start = event.fault_end if isinstance(event, ExperimentObservation) else event.started_at
    if start is None:
        return None
    took = recover_us(event)
    if took is None:
        final = isinstance(event, OutageObservation) and event.outcome in _FINAL_OUTAGE
        if final or micros(now - start) > target_us:
            return False
        return None
    steady = event.steady_state_held if isinstance(event, ExperimentObservation) else True
    return steady and took <= target_us


def _weighted(
    scored: Sequence[tuple[Event, bool]], now: datetime, half_life_us: Decimal
) -> Decimal | None:
    if not scored:
        return None
    ln2 = _CTX.ln(Decimal(2))
    held = Decimal(0)
    weights = Decimal(0)
    for event, ok in scored:
        age = max(0, micros(now - observed_at(event)))
        w = _CTX.exp(_CTX.divide(_CTX.multiply(-ln2, Decimal(age)), half_life_us))
        weights = _CTX.add(weights, w)
        if ok:
            held = _CTX.add(held, w)
    share = _CTX.divide(_CTX.multiply(Decimal(100), held), weights)
    return share.quantize(_CENT, context=_CTX)


def resilience_score(
    dependency: str,
    observations: Iterable[Observation],
    now: datetime,
    targets: ScoreTargets | None = None,
) -> ResilienceScore:
    """Score ``dependency`` 0-100 from its measured outcomes (see the module doc).

    Args:
        dependency: The dependency; others' observations are ignored.
        observations: Its ledger, in any order.
        now: The scoring time; observations after it are ignored.
        targets: Recovery targets and half-life (default :class:`ScoreTargets`).

    Returns:
        The score (None: no outcome yet), its trend and the evidence.
    """
    targets = targets or ScoreTargets()
    target_us = _exact(targets.target_s(dependency)) * 1_000_000
    half = _exact(targets.half_life_s) * 1_000_000
    half_life_us = _CTX.divide(Decimal(half.numerator), Decimal(half.denominator))
    scored: list[tuple[Event, bool]] = []
    for o in ordered(dependency, observations):
        if isinstance(o, ExperimentObservation | OutageObservation) and observed_at(o) <= now:
            ok = outcome(o, now, target_us)
            if ok is not None:
                scored.append((o, ok))
    score = _weighted(scored, now, half_life_us)
    before = _weighted(scored[:-1], now, half_life_us)
    trend = None if score is None or before is None else float(score - before)
    held = sum(1 for _, ok in scored if ok)
    events = [e for e, _ in scored]
    return ResilienceScore(
        dependency=dependency,
        score=None if score is None else float(score),
        trend=trend,
        evidence=Evidence(
            observations=len(events),
            window_start=observed_at(events[0]) if events else None,
            window_end=observed_at(events[-1]) if events else None,
            detail=f"{held} of {len(events)} experiments/outages held and recovered within "
            f"{targets.target_s(dependency):g} s; recency half-life "
            f"{targets.half_life_s / 86400:g} d",
        ),
    )
