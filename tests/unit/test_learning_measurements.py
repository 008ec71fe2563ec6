"""Measurements of a dependency from its observations: tables, empty and single histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from antifragile.learning.histogram import record
from antifragile.learning.measurements import measure, type7_quantile
from antifragile.models.learning import (
    ExperimentObservation,
    LatencyHistogram,
    Observation,
    OutageObservation,
    TrafficObservation,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def experiment(
    source: str = "x1",
    *,
    start: float = 0,
    end: float | None = 10,
    detected: float | None = 1.5,
    recovered: float | None = 14,
    held: bool = True,
    failed: int = 0,
    refused: int = 0,
    dependency: str = "db",
    chaos_type: str = "ERROR",
) -> ExperimentObservation:
    return ExperimentObservation(
        dependency=dependency,
        source_id=source,
        chaos_type=chaos_type,
        fault_start=at(start),
        fault_end=None if end is None else at(end),
        detected_at=None if detected is None else at(detected),
        recovered_at=None if recovered is None else at(recovered),
        steady_state_held=held,
        calls_failed=failed,
        calls_refused=refused,
        outcome="COMPLETED",
    )


def outage(
    source: str = "r1", *, start: float = 100, recovered: float | None = 106, outcome: str = ""
) -> OutageObservation:
    return OutageObservation(
        dependency="db",
        source_id=source,
        started_at=at(start),
        recovered_at=None if recovered is None else at(recovered),
        outcome=outcome or ("SUCCEEDED" if recovered is not None else "FAILED"),
    )


def traffic(
    source: str = "i/w1", *, start: float = 1000, calls: int = 100, failures: int = 1, ms: float = 5
) -> TrafficObservation:
    return TrafficObservation(
        dependency="db",
        source_id=source,
        window_start=at(start),
        window_s=10,
        calls=calls,
        failures=failures,
        latency=record(LatencyHistogram(), ms, count=calls),
    )


CASES: list[tuple[str, list[Observation], dict[str, object]]] = [
    ("empty", [], {"experiments": 0, "recover_s": [], "baseline_calls": 0, "latency_p50_ms": None}),
    (
        "one experiment",
        [experiment(failed=7, refused=30)],
        {"detect_s": [1.5], "recover_s": [4.0], "calls_failed": 7, "calls_refused": 30},
    ),
    ("one outage", [outage()], {"outages": 1, "recover_s": [6.0], "unverified": 0}),
    ("unverified outage", [outage(recovered=None)], {"recover_s": [], "unverified": 1}),
    (
        "experiment never injected: neither a recovery nor unverified",
        [experiment(end=None, detected=None, recovered=None)],
        {"recover_s": [], "unverified": 0, "detect_s": []},
    ),
    (
        "recovery verified before the fault ended (clock skew) took 0 s",
        [experiment(end=10, recovered=9)],
        {"recover_s": [0.0], "unverified": 0},
    ),
    (
        "a detection before the fault started was not this fault's",
        [experiment(start=5, detected=4)],
        {"detect_s": []},
    ),
    (
        "microseconds are exact",
        [outage(start=0, recovered=0.000001)],
        {"recover_s": [0.000001]},
    ),
    (
        "traffic during an experiment is not baseline",
        [experiment(start=0, end=10, recovered=14), traffic(start=5), traffic("i/w2", start=20)],
        {"traffic_windows": 1, "baseline_calls": 100},
    ),
    (
        "a window touching an outage is not baseline",
        [outage(start=100, recovered=106), traffic(start=90)],
        {"traffic_windows": 0, "baseline_calls": 0},
    ),
    (
        "another dependency is ignored",
        [experiment(dependency="cache"), traffic()],
        {"experiments": 0, "traffic_windows": 1},
    ),
]


@pytest.mark.parametrize(("name", "observations", "expected"), CASES, ids=[c[0] for c in CASES])
def test_measure(name: str, observations: list[Observation], expected: dict[str, object]) -> None:
    m = measure("db", observations)
    for field, value in expected.items():
        assert getattr(m, field) == value, (name, field)


def test_baseline_error_rate_and_latency() -> None:
    m = measure(
        "db", [traffic(calls=300, failures=1, ms=5), traffic("i/w2", calls=700, failures=2, ms=50)]
    )
    assert m.baseline_error_rate == Fraction(3, 1000)
    assert m.latency_p50_ms is not None and 50 <= m.latency_p50_ms < 60
    assert m.latency_p999_ms is not None and m.latency_p999_ms >= 50
    assert measure("db", []).baseline_error_rate is None
    assert m.window_start == at(1000) and m.window_end == at(1000)


def test_measure_is_order_independent() -> None:
    obs: list[Observation] = [experiment(), outage(), traffic(), outage("r2", start=200)]
    assert measure("db", obs) == measure("db", list(reversed(obs)))


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([7], Fraction(3, 4), Fraction(7)),
        ([1, 2, 3, 4, 5], Fraction(3, 4), Fraction(4)),  # h = 4 × 3/4 = 3: x[3]
        ([1, 2, 3, 4], Fraction(3, 4), Fraction(13, 4)),  # h = 2.25: 3 + 0.25 × 1
        ([1, 2], Fraction(0), Fraction(1)),
        ([1, 2], Fraction(1), Fraction(2)),
    ],
)
def test_type7_quantile(values: list[int], q: Fraction, expected: Fraction) -> None:
    assert type7_quantile(values, q) == expected


def test_type7_quantile_refuses_nothing_and_bad_q() -> None:
    with pytest.raises(ValueError, match="no value"):
        type7_quantile([], Fraction(1, 2))
    with pytest.raises(ValueError, match="quantile"):
        type7_quantile([1], Fraction(2))


def _bracketed(start: float, failed: float | None, recovered: float | None) -> OutageObservation:
    return OutageObservation(
        dependency="db",
        source_id="r1",
        started_at=at(start),
        recovered_at=None if recovered is None else at(recovered),
        last_failed_probe_at=None if failed is None else at(failed),
        outcome="SUCCEEDED",
    )


@pytest.mark.parametrize(
    ("failed", "recovered", "recover_s"),
    [
        (None, 7, 7.0),  # the first passing probe
        (3, 7, 7.0),  # still down at +3, back at +7: verified at 7, not assumed at 5
        (0.000001, 0.000002, 0.000002),
        (3, None, None),  # never verified: no duration, whatever failed
    ],
)
def test_an_outage_s_time_to_recover_is_its_first_passing_probe_whatever_failed_before(
    failed: float | None, recovered: float | None, recover_s: float | None
) -> None:
    seen = measure("db", [_bracketed(0, failed, recovered)])
    assert seen.recover_s == ([] if recover_s is None else [recover_s])
    assert seen.unverified == (1 if recovered is None else 0)


@pytest.mark.parametrize(
    ("run_started", "carried", "detected", "expected"),
    [
        (10, None, None, 10),  # nothing known but the recovery's start
        (10, None, 9.2, 9.2),  # the breaker opened 0.8 s before the recovery started
        (10, None, 10, 10),
        (10, None, 10.5, 10),  # another host's clock ahead: not believed
        (10, 4, None, 4),  # continued as new: the oldest carried attempt
        (10, 4, 3, 3),
        (10, 4, 6, 4),  # noticed after the first attempt: impossible, the attempt wins
    ],
)
def test_an_outage_starts_when_its_breaker_opened_if_known(
    run_started: float, carried: float | None, detected: float | None, expected: float
) -> None:
    from antifragile.models.recovery import AttemptRecord
    from workflows._learning_feed import outage_started_at

    records = (
        []
        if carried is None
        else [AttemptRecord(number=1, started_at=at(carried), duration_ms=1, outcome="unhealthy")]
    )
    got = outage_started_at(at(run_started), records, None if detected is None else at(detected))
    assert got == at(expected)


def test_a_naive_detected_at_is_read_as_utc() -> None:
    from workflows._learning_feed import outage_started_at

    naive = at(9).replace(tzinfo=None)
    assert outage_started_at(at(10), [], naive) == at(9)


def test_latency_inside_experiments_is_measured_apart_from_the_baseline() -> None:
    slow = record(record(LatencyHistogram(), 900.0), 40.0)
    inside = experiment("x1").model_copy(update={"latency": slow})
    untouched = experiment("x2", start=200, end=210, recovered=214)
    seen = measure("db", [inside, untouched])
    assert seen.fault_latency == slow
    assert seen.fault_latency_p50_ms is not None and seen.fault_latency_p50_ms >= 40
    assert seen.fault_latency_p999_ms is not None and seen.fault_latency_p999_ms >= 900
    assert seen.latency_p50_ms is None  # no traffic window: no baseline latency
    assert measure("db", []).fault_latency_p99_ms is None
