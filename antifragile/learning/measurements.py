"""Measurements of one dependency from its observations (pure: no I/O, no clock).

Every duration is taken as integer microseconds of the observations' datetimes, so the
same observations give the same numbers on every machine, and comparisons at a
threshold are exact.

- **Time to detect**: experiment ``fault_start`` → ``detected_at`` (the breaker opened).
- **Time to recover** (verified only): experiment ``fault_end`` → ``recovered_at``;
  outage ``started_at`` (when its breaker opened, if the service said so) →
  ``recovered_at``, the first passing probe: *verified*, not assumed. The probes bracket
  the true return (still down at ``last_failed_probe_at``), so this reads up to one
  probe gap late; it is kept on purpose: the open time is chosen from these values, and
  a half-open trial that lands early costs a whole extra open period while one that lands
  late costs only its lateness (the ``adaptive`` recovery strategy and a fine probe
  schedule keep the gap small). A recovery that
  was never verified counts in ``unverified``, never as a duration. A recovery
  verified before its start (clocks of different hosts) counts as 0; a detection
  before the fault started is left out (it was not this fault's).
- **Baseline**: traffic windows that overlap no experiment (``fault_start`` to its
  ``recovered_at``, else ``fault_end``) and no outage (``started_at`` to
  ``recovered_at``): what the dependency does when healthy. Its error rate is the exact
  fraction ``failures / calls``; its latency the merged histogram.
- **Latency inside experiments**: the experiments' ``latency`` (the target's calls under
  the fault, measured between health checks) merged; the same quantiles as the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from fractions import Fraction

from antifragile.learning.histogram import merge, quantile_ms
from antifragile.models.learning import (
    DependencyMeasurements,
    ExperimentObservation,
    Observation,
    OutageObservation,
    TrafficObservation,
)

_US = timedelta(microseconds=1)

P50 = Fraction(1, 2)
P99 = Fraction(99, 100)
P999 = Fraction(999, 1000)


def micros(delta: timedelta) -> int:
    """``delta`` in whole microseconds (exact: a timedelta is integer microseconds)."""
    return delta // _US


def observed_at(observation: Observation) -> datetime:
    """When an observation happened: fault start, outage start or window start."""
    if isinstance(observation, ExperimentObservation):
        return observation.fault_start
    if isinstance(observation, OutageObservation):
        return observation.started_at
    return observation.window_start


def ordered(dependency: str, observations: Iterable[Observation]) -> list[Observation]:
    """The observations of ``dependency``, sorted by (time, kind, source_id).

    Every conclusion is drawn from this order, so it does not depend on the order the
    observations arrived in. Two records with the same key (a ledger keeps one per
    source, but a caller may pass duplicates) are ordered by their JSON, so even then
    the order is total.
    """
    mine = [o for o in observations if o.dependency == dependency]
    return sorted(mine, key=lambda o: (observed_at(o), o.kind, o.source_id, o.model_dump_json()))


def detect_us(observation: ExperimentObservation) -> int | None:
    """Time to detect in µs (None: the breaker never opened, or the clocks disagree)."""
    if observation.detected_at is None:
        return None
    value = micros(observation.detected_at - observation.fault_start)
    return value if value >= 0 else None


def recover_us(observation: ExperimentObservation | OutageObservation) -> int | None:
    """Verified time to recover in µs, at least 0 (None: not verified, never injected)."""
    if observation.recovered_at is None:
        return None
    if isinstance(observation, ExperimentObservation):
        if observation.fault_end is None:
            return None
        start = observation.fault_end
    else:
        start = observation.started_at
    return max(0, micros(observation.recovered_at - start))


def injected(observation: ExperimentObservation | OutageObservation) -> bool:
    """An outage always happened; an experiment only if its fault was injected."""
    return not isinstance(observation, ExperimentObservation) or observation.fault_end is not None


def _disturbed(observations: Sequence[Observation]) -> list[tuple[datetime, datetime]]:
    spans: list[tuple[datetime, datetime]] = []
    for o in observations:
        if isinstance(o, ExperimentObservation):
            end = o.recovered_at or o.fault_end or o.fault_start
            spans.append((o.fault_start, max(end, o.fault_start)))
        elif isinstance(o, OutageObservation):
            end = o.recovered_at or o.started_at
            spans.append((o.started_at, max(end, o.started_at)))
    return spans


def baseline(observations: Sequence[Observation]) -> list[TrafficObservation]:
    """Traffic windows overlapping no experiment and no outage (see the module doc)."""
    spans = _disturbed(observations)
    windows: list[TrafficObservation] = []
    for o in observations:
        if not isinstance(o, TrafficObservation):
            continue
        start = o.window_start
        end = start + timedelta(seconds=o.window_s)
        if any(s <= end and start <= e for s, e in spans):
            continue
        windows.append(o)
    return windows


def verified_recoveries_us(observations: Sequence[Observation]) -> list[int]:
    """Verified times to recover, µs, ascending."""
    values = [
        v
        for o in observations
        if not isinstance(o, TrafficObservation) and (v := recover_us(o)) is not None
    ]
    return sorted(values)


def type7_quantile(sorted_values: Sequence[int], q: Fraction) -> Fraction:
    """The ``q``-quantile of ascending ``sorted_values`` by linear interpolation, exact.

    Hyndman & Fan (1996) definition 7 (R's and NumPy's default): with ``h = (n-1) q``,
    ``x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h])`` (0-based), in fractions.

    Raises:
        ValueError: no value, or ``q`` outside [0, 1].
    """
    if not sorted_values:
        raise ValueError("a quantile of no value")
    if not 0 <= q <= 1:
        raise ValueError(f"a quantile is in [0, 1], got {q}")
    h = (len(sorted_values) - 1) * q
    low = math.floor(h)
    if low + 1 >= len(sorted_values):
        return Fraction(sorted_values[-1])
    lo, hi = sorted_values[low], sorted_values[low + 1]
    return lo + (h - low) * (hi - lo)


def measure(dependency: str, observations: Iterable[Observation]) -> DependencyMeasurements:
    """Measure ``dependency`` from its observations (others' are ignored).

    Args:
        dependency: The dependency (guard name).
        observations: Any observations, in any order.

    Returns:
        The measurements; an empty history gives zero counts and None quantiles.
    """
    mine = ordered(dependency, observations)
    experiments = [o for o in mine if isinstance(o, ExperimentObservation)]
    outages = [o for o in mine if isinstance(o, OutageObservation)]
    detects = sorted(v for o in experiments if (v := detect_us(o)) is not None)
    recoveries = verified_recoveries_us(mine)
    events: list[ExperimentObservation | OutageObservation] = [*experiments, *outages]
    unverified = sum(1 for o in events if injected(o) and recover_us(o) is None)
    windows = baseline(mine)
    latency = merge(w.latency for w in windows)
    under_fault = merge(o.latency for o in experiments)
    return DependencyMeasurements(
        dependency=dependency,
        experiments=len(experiments),
        outages=len(outages),
        traffic_windows=len(windows),
        detect_s=[v / 1_000_000 for v in detects],
        recover_s=[v / 1_000_000 for v in recoveries],
        unverified=unverified,
        calls_failed=sum(o.calls_failed for o in experiments),
        calls_refused=sum(o.calls_refused for o in experiments),
        baseline_calls=sum(w.calls for w in windows),
        baseline_failures=sum(min(w.failures, w.calls) for w in windows),
        latency=latency,
        latency_p50_ms=quantile_ms(latency, P50),
        latency_p99_ms=quantile_ms(latency, P99),
        latency_p999_ms=quantile_ms(latency, P999),
        fault_latency=under_fault,
        fault_latency_p50_ms=quantile_ms(under_fault, P50),
        fault_latency_p99_ms=quantile_ms(under_fault, P99),
        fault_latency_p999_ms=quantile_ms(under_fault, P999),
        window_start=observed_at(mine[0]) if mine else None,
        window_end=observed_at(mine[-1]) if mine else None,
    )
