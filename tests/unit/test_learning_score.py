"""resilience_score(): measured outcomes, recency weights, trend, exact targets (tables)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from antifragile.learning import resilience_score
from antifragile.models.learning import (
    ExperimentObservation,
    Observation,
    OutageObservation,
    ScoreTargets,
    TrafficObservation,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = 86400.0
TARGETS = ScoreTargets(recovery_target_s={"db": 10.0}, half_life_s=14 * DAY)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def outage(
    start: float, ttr: float | None, outcome: str = "SUCCEEDED", source: str = ""
) -> OutageObservation:
    return OutageObservation(
        dependency="db",
        source_id=source or f"r@{start}",
        started_at=at(start),
        recovered_at=None if ttr is None else at(start + ttr),
        outcome=outcome,
    )


def experiment(
    start: float, ttr: float | None, *, held: bool = True, injected: bool = True
) -> ExperimentObservation:
    end = start + 30
    return ExperimentObservation(
        dependency="db",
        source_id=f"x@{start}",
        chaos_type="ERROR",
        fault_start=at(start),
        fault_end=at(end) if injected else None,
        recovered_at=None if ttr is None else at(end + ttr),
        steady_state_held=held,
        outcome="COMPLETED",
    )


NOW = 28 * DAY

CASES: list[tuple[str, list[Observation], float, float | None, float | None, int]] = [
    # name, observations, now (s after T0), score, trend, outcomes counted
    ("empty", [], NOW, None, None, 0),
    ("one outage within target", [outage(NOW, 5)], NOW + 5, 100.0, None, 1),
    ("recovery exactly at the target holds", [outage(NOW, 10)], NOW + 10, 100.0, None, 1),
    ("one microsecond over fails", [outage(NOW, 10.000001)], NOW + 11, 0.0, None, 1),
    ("steady state broken fails", [experiment(NOW, 1, held=False)], NOW + 40, 0.0, None, 1),
    ("never injected is no outcome", [experiment(NOW, None, injected=False)], NOW, None, None, 0),
    (
        "unverified, target not yet passed: pending",
        [outage(NOW, None, "IN_PROGRESS")],
        NOW + 10,
        None,
        None,
        0,
    ),
    (
        "unverified, target passed: failed",
        [outage(NOW, None, "IN_PROGRESS")],
        NOW + 10.000001,
        0.0,
        None,
        1,
    ),
    ("unverified and FAILED: failed at once", [outage(NOW, None, "FAILED")], NOW, 0.0, None, 1),
    (
        # weights 1/2 (failed, 14 days old) and 1 (held, now): 100 × 1 / 1.5
        "a fortnight-old failure counts half",
        [outage(14 * DAY, None, "FAILED"), outage(NOW, 1)],
        NOW + 1,
        66.67,
        66.67,
        2,
    ),
    (
        "the newest failure pulls the trend down",
        [outage(14 * DAY, 1), outage(NOW, None, "FAILED")],
        NOW,
        33.33,
        -66.67,
        2,
    ),
    (
        "future observations are ignored",
        [outage(NOW, 1), outage(NOW + 100, 1)],
        NOW + 1,
        100.0,
        None,
        1,
    ),
    (
        "traffic windows are not outcomes",
        [
            TrafficObservation(
                dependency="db",
                source_id="i/w",
                window_start=at(NOW),
                window_s=1,
                calls=9,
                failures=9,
            )
        ],
        NOW,
        None,
        None,
        0,
    ),
]


@pytest.mark.parametrize(
    ("name", "observations", "now", "score", "trend", "counted"), CASES, ids=[c[0] for c in CASES]
)
def test_score(
    name: str,
    observations: list[Observation],
    now: float,
    score: float | None,
    trend: float | None,
    counted: int,
) -> None:
    result = resilience_score("db", observations, at(now), TARGETS)
    assert (result.score, result.trend, result.evidence.observations) == (score, trend, counted)


def test_default_targets_and_other_dependencies() -> None:
    obs = [outage(0, 20)]
    assert resilience_score("db", obs, at(30)).score == 100.0  # default target 30 s
    assert resilience_score("db", obs, at(30), TARGETS).score == 0.0  # db's target: 10 s
    assert resilience_score("cache", obs, at(30)).score is None


def test_evidence_window_and_detail() -> None:
    result = resilience_score("db", [outage(0, 1), outage(DAY, 20)], at(2 * DAY), TARGETS)
    assert (result.evidence.window_start, result.evidence.window_end) == (at(0), at(DAY))
    assert result.evidence.detail == (
        "1 of 2 experiments/outages held and recovered within 10 s; recency half-life 14 d"
    )


def test_same_inputs_same_bits() -> None:
    obs: list[Observation] = [outage(i * 3600.0, 1 + i % 13) for i in range(200)]
    first = resilience_score("db", obs, at(300 * 3600), TARGETS)
    again = resilience_score("db", list(reversed(obs)), at(300 * 3600), TARGETS)
    assert first.model_dump_json() == again.model_dump_json()
    assert first.score is not None and 0 < first.score < 100
