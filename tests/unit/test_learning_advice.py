"""advise(): settings from evidence, gaps instead of silence (tables)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from antifragile.learning import advise
from antifragile.learning.advice import MIN_BASELINE_CALLS, MIN_LATENCY_CALLS
from antifragile.learning.histogram import record
from antifragile.models.chaos_scenario import ChaosType
from antifragile.models.learning import (
    Advice,
    CurrentSettings,
    ExperimentObservation,
    LatencyHistogram,
    Observation,
    OutageObservation,
    TrafficObservation,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=30)
UNTRIED = [f"gap.untried.{t.value}" for t in ChaosType]
RECOVERY = [
    "recovery.initial_delay_ms",
    "recovery.backoff_multiplier",
    "recovery.max_delay_ms",
    "recovery.max_retry_attempts",
]
NOTHING = ["gap.thin.recovery", "gap.thin.baseline", "gap.thin.latency"]
THRESHOLDS = [
    "breaker.failure_rate_threshold",
    "breaker.minimum_calls",
    "breaker.failure_threshold",
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def outage(i: int, ttr_s: float | None, dependency: str = "db") -> OutageObservation:
    start = at(i * 3600)
    return OutageObservation(
        dependency=dependency,
        source_id=f"recovery-{i}/run",
        started_at=start,
        recovered_at=None if ttr_s is None else start + timedelta(seconds=ttr_s),
        outcome="SUCCEEDED" if ttr_s is not None else "FAILED",
    )


def experiment(
    i: int, chaos_type: ChaosType = ChaosType.ERROR, *, held: bool = True, injected: bool = True
) -> ExperimentObservation:
    start = at(100_000 + i * 3600)
    return ExperimentObservation(
        dependency="db",
        source_id=f"chaos-{i}",
        chaos_type=chaos_type.value,
        fault_start=start,
        fault_end=start + timedelta(seconds=30) if injected else None,
        detected_at=start + timedelta(seconds=2) if injected else None,
        recovered_at=start + timedelta(seconds=36) if injected else None,
        steady_state_held=held,
        outcome="COMPLETED" if held else "ABORTED",
    )


def traffic(calls: int, failures: int = 0, latencies: int = 0, i: int = 0) -> TrafficObservation:
    return TrafficObservation(
        dependency="db",
        source_id=f"i/{i}",
        window_start=at(500_000 + i * 60),
        window_s=60,
        calls=calls,
        failures=failures,
        latency=record(LatencyHistogram(), 20.0, count=latencies),
    )


def settings(advice: list[Advice]) -> list[str]:
    return [a.setting for a in advice]


def one(advice: list[Advice], setting: str) -> Advice:
    (found,) = [a for a in advice if a.setting == setting]
    return found


CASES: list[tuple[str, list[Observation], list[str]]] = [
    (
        "empty history: every gap, no value",
        [],
        [*NOTHING, "gap.never_exercised", *UNTRIED],
    ),
    (
        "a single outage: too thin for an open time, but exercised",
        [outage(0, 6)],
        ["gap.thin.recovery", "gap.thin.baseline", "gap.thin.latency", *UNTRIED],
    ),
    (
        "three verified outages: open time and schedule",
        [outage(0, 6), outage(1, 6), outage(2, 6)],
        ["breaker.open_duration_s", *RECOVERY, "gap.thin.baseline", "gap.thin.latency", *UNTRIED],
    ),
    (
        "two verified and one unverified: still thin, and said so",
        [outage(0, 6), outage(1, 6), outage(2, None)],
        [*NOTHING, *UNTRIED, "gap.unverified_recovery"],
    ),
    (
        f"exactly {MIN_BASELINE_CALLS} baseline calls and latencies: thresholds and timeout",
        [traffic(MIN_BASELINE_CALLS, 0, MIN_LATENCY_CALLS)],
        ["gap.thin.recovery", *THRESHOLDS, "guard.timeout_s", "gap.never_exercised", *UNTRIED],
    ),
    (
        "one call short of the minimum: thin",
        [traffic(MIN_BASELINE_CALLS - 1, 0, MIN_LATENCY_CALLS - 1)],
        [*NOTHING, "gap.never_exercised", *UNTRIED],
    ),
    (
        "experiments: tried types drop out; a broken steady state is a gap",
        [experiment(0), experiment(1, ChaosType.LATENCY, held=False)],
        ["gap.thin.recovery", "gap.thin.baseline", "gap.thin.latency"]
        + [u for u in UNTRIED if not u.endswith(("ERROR", "LATENCY"))]
        + ["gap.steady_state_failed"],
    ),
    (
        "an experiment never injected tries nothing",
        [experiment(0, ChaosType.TIMEOUT, injected=False)],
        ["gap.thin.recovery", "gap.thin.baseline", "gap.thin.latency", *UNTRIED],
    ),
    (
        "another dependency's observations are ignored",
        [outage(0, 6, "cache"), outage(1, 6, "cache"), outage(2, 6, "cache")],
        [*NOTHING, "gap.never_exercised", *UNTRIED],
    ),
]


@pytest.mark.parametrize(("name", "observations", "expected"), CASES, ids=[c[0] for c in CASES])
def test_which_advice(name: str, observations: list[Observation], expected: list[str]) -> None:
    assert settings(advise("db", observations, CurrentSettings(), NOW)) == expected


def test_gaps_have_no_value_and_say_why() -> None:
    for a in advise("db", [outage(0, 6)], CurrentSettings(), NOW):
        assert a.setting.startswith("gap.")
        assert a.recommended is None and a.current is None and a.reason
    thin = one(advise("db", [outage(0, 6)], CurrentSettings(), NOW), "gap.thin.recovery")
    assert thin.reason.startswith("1 verified recoveries, 3 needed")
    assert thin.evidence.observations == 1


def test_open_time_from_three_outages() -> None:
    obs = [outage(0, 5), outage(1, 6), outage(2, 7)]
    advice = advise("db", obs, CurrentSettings(), NOW)
    a = one(advice, "breaker.open_duration_s")
    assert (a.current, a.recommended) == (30.0, 6.5)
    assert a.evidence.observations == 3
    assert (a.evidence.window_start, a.evidence.window_end) == (at(0), at(7200))
    assert "p75" in a.reason and "2/3" in a.expected_effect
    attempts = one(advice, "recovery.max_retry_attempts")
    assert attempts.current == 5.0 and attempts.recommended is not None


def test_thresholds_and_timeout_values() -> None:
    advice = advise("db", [traffic(5000, 10, 2000)], CurrentSettings(timeout_s=5.0), NOW)
    got = {a.setting: (a.current, a.recommended) for a in advice}
    assert got["breaker.failure_rate_threshold"] == (0.5, 0.25)
    assert got["breaker.minimum_calls"] == (20.0, 13.0)
    assert got["breaker.failure_threshold"] == (5.0, 3.0)
    # 20 ms lands in the bucket bounded by 0.1 × 2^(31/4) ≈ 21.53 ms; × 1.5 = 32.3 → 33 ms.
    assert got["guard.timeout_s"] == (5.0, 0.033)


def test_observations_after_now_are_ignored() -> None:
    obs = [outage(0, 6), outage(1, 6), outage(2, 6)]
    before = advise("db", obs, CurrentSettings(), at(2 * 3600 - 1))
    assert "gap.thin.recovery" in settings(before)
    assert advise("db", obs, CurrentSettings(), at(2 * 3600))[0].setting == (
        "breaker.open_duration_s"
    )


def test_traffic_during_an_outage_is_not_baseline() -> None:
    window = traffic(5000, 4000, 2000)
    during = window.model_copy(update={"window_start": at(1)})  # outage 0 runs 0 .. 6 s
    advice = advise("db", [outage(0, 6), during], CurrentSettings(), NOW)
    assert "gap.thin.baseline" in settings(advice)
