"""A realistic chaos report for the HTML report's tests: every series the report can hold.

Shaped like a LATENCY experiment's result on one instance: steady state, injection, a
breaker that opened twice, health dipping and coming back after removal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from antifragile.models.chaos import (
    ChaosEvent,
    ChaosOutcome,
    ChaosPhase,
    ChaosReport,
    ChaosType,
    CleanupRecord,
    HealthSample,
    PhaseRecord,
)
from antifragile.models.chaos_calls import CallSample

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """``seconds`` after the sample experiment started."""
    return T0 + timedelta(seconds=seconds)


def sample_report(name: str = "latency-demo-db") -> ChaosReport:
    """A COMPLETED experiment of 10 s with health samples every half second."""
    phases = [
        (ChaosPhase.VALIDATING, 0.0, 0.2),
        (ChaosPhase.STEADY_STATE_BEFORE, 0.2, 2.0),
        (ChaosPhase.INJECTING, 2.0, 2.1),
        (ChaosPhase.RUNNING, 2.1, 12.1),
        (ChaosPhase.CLEANING_UP, 12.1, 12.3),
        (ChaosPhase.VERIFYING_RECOVERY, 12.3, 15.5),
        (ChaosPhase.COMPLETED, 15.5, None),
    ]
    health = []
    for i in range(32):
        t = i * 0.5
        score = 1.0 if t < 3 or t > 14.5 else (0.35 if 5 <= t <= 12 else 0.7)
        health.append(
            HealthSample(
                at=at(t),
                score=score,
                targets_score=min(1.0, score + 0.1),
                healthy=score >= 0.5,
                source="fleet",
                detail="demo-1 lowest",
            )
        )
    calls = []
    ok = failed = refused = 0
    for i in range(32):  # the target's calls at each health check: ~200/s
        t = i * 0.5
        faulty = 2 <= t <= 12
        ok += 40 if faulty else 100
        failed += 40 if 5 <= t <= 12 else 0
        refused += 20 if 6 <= t <= 11 else 0
        p50 = 240.0 if faulty else 2.0
        calls.append(
            CallSample(
                at=at(t),
                ok=ok,
                failed=failed,
                refused=refused,
                p50_ms=p50,
                p99_ms=p50 * 3,
                instances=1,
            )
        )
    events = [
        ChaosEvent(at=at(0.1), phase=ChaosPhase.VALIDATING, message=f"experiment {name}"),
        ChaosEvent(at=at(2.05), phase=ChaosPhase.INJECTING, message="injected on demo-db"),
        ChaosEvent(at=at(12.1), phase=ChaosPhase.RUNNING, message="duration elapsed"),
        ChaosEvent(at=at(15.0), phase=ChaosPhase.VERIFYING_RECOVERY, message="health back"),
    ]
    return ChaosReport(
        experiment_id=f"chaos-{name}-1a2b3c",
        name=name,
        chaos_type=ChaosType.LATENCY,
        target="demo-db",
        blast_radius=["demo-db"],
        outcome=ChaosOutcome.COMPLETED,
        reason="duration elapsed; health back",
        requested_duration_s=10,
        effective_duration_s=10,
        started_at=T0,
        injected_at=at(2.05),
        removed_at=at(12.2),
        ended_at=at(15.5),
        phases=[
            PhaseRecord(phase=p, entered_at=at(a), left_at=at(b) if b else None)
            for p, a, b in phases
        ],
        health_lowest=0.35,
        health_timeline=health,
        call_samples=calls,
        calls_affected={"demo-1": 4_312},
        calls_seen={"demo-1": 9_876},
        calls_refused={"demo-1": 517},
        breakers_opened=["demo-1/demo-db: OPEN"],
        breaker_openings={"demo-1/demo-db: OPEN": 2},
        time_to_recover_s=2.8,
        recovered=True,
        health_dropped=True,
        cleanup=CleanupRecord(
            attempted=True,
            lease_removed=True,
            method="removed",
            at=at(12.2),
            confirmed=True,
            fault_ended_at=at(12.2),
        ),
        events=events,
        fault_active_s=10.15,
        instances_guarding=1,
        instances_saw_fault=1,
    )
