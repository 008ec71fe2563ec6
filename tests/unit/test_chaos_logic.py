"""Pure chaos decisions: phase table, caps, health guard, instance selection, and the
status and report projections of the experiment's journal."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from antifragile._fsm import IllegalTransitionError
from antifragile.chaos.journal import (
    MAX_HEALTH_SAMPLES,
    add_sample,
    chaos_report,
    chaos_status,
    fault_active_s,
)
from antifragile.chaos.logic import (
    LEGAL_TRANSITIONS,
    accepts_decisions,
    cap_duration,
    check_phase_transition,
    check_recovery,
    cleanup_record,
    guardian_give_up_after_s,
    health_check_interval_s,
    health_is_back,
    health_trips_guard,
    instance_selected,
    lease_renewal_interval_s,
    measured_sample,
    missing_lease_reason,
    policy_refusal,
    select_instances,
    targets_refused,
)
from antifragile.models.chaos import (
    ChaosJournal,
    ChaosOutcome,
    ChaosPhase,
    CleanupRecord,
    ExperimentImpact,
    FaultPlacement,
    HealthMeasurement,
    HealthSample,
    PhaseRecord,
)
from antifragile.models.chaos_scenario import ChaosScenario, ChaosType

P = ChaosPhase


def test_happy_path_is_legal() -> None:
    path = [
        P.VALIDATING,
        P.AWAITING_APPROVAL,
        P.STEADY_STATE_BEFORE,
        P.INJECTING,
        P.RUNNING,
        P.CLEANING_UP,
        P.VERIFYING_RECOVERY,
        P.COMPLETED,
    ]
    for a, b in itertools.pairwise(path):
        assert check_phase_transition(a, b) is b


def test_running_can_only_leave_through_cleanup() -> None:
    assert LEGAL_TRANSITIONS[P.RUNNING] == frozenset({P.CLEANING_UP})
    for end in (P.COMPLETED, P.ABORTED, P.STOPPED, P.FAILED):
        with pytest.raises(IllegalTransitionError):
            check_phase_transition(P.RUNNING, end)


def test_terminal_phases_are_final_and_every_phase_is_in_the_table() -> None:
    assert set(LEGAL_TRANSITIONS) == set(ChaosPhase)
    for end in (P.COMPLETED, P.ABORTED, P.STOPPED, P.FAILED):
        assert end.terminal and LEGAL_TRANSITIONS[end] == frozenset()


def test_cannot_skip_straight_to_injection() -> None:
    with pytest.raises(IllegalTransitionError, match="VALIDATING to INJECTING"):
        check_phase_transition(P.VALIDATING, P.INJECTING)


def test_duration_cap_names_what_capped_it() -> None:
    assert cap_duration(30, 300, 300).warning is None
    cap = cap_duration(400, 300, 300)
    assert cap.effective_s == 300
    assert cap.warning is not None and "400s capped to 300s" in cap.warning
    assert "hard limit" in cap.warning
    policy = cap_duration(100, 300, 60)
    assert policy.effective_s == 60 and "worker policy" in (policy.warning or "")
    own = cap_duration(100, 50, 300)
    assert own.effective_s == 50 and "scenario's max_duration_s" in (own.warning or "")
    assert cap_duration(10_000, 10_000, 10_000).effective_s == 300


def test_policy_targets() -> None:
    assert targets_refused(["a", "b"], []) == []
    assert targets_refused(["a", "b"], ["a"]) == ["b"]
    s = ChaosScenario(name="n", chaos_type=ChaosType.ERROR, target="a", blast_radius=["b"])
    assert policy_refusal(s, ["a", "b"]) is None
    assert "b not in the worker policy" in (policy_refusal(s, ["a"]) or "")


@pytest.mark.parametrize(
    ("score", "healthy", "threshold", "trips"),
    [
        (0.49, True, 0.5, True),
        (0.5, False, 0.5, False),  # a score wins over the verdict
        (None, False, 0.5, True),
        (None, True, 0.5, False),
        (0.0, False, 0.0, False),  # threshold 0 disables the guard
    ],
)
def test_health_guard(score: float | None, healthy: bool, threshold: float, trips: bool) -> None:
    assert health_trips_guard(score, healthy, threshold) is trips
    assert health_is_back(score, healthy, threshold) is (not trips)


def test_intervals() -> None:
    assert lease_renewal_interval_s(15) == 5
    assert health_check_interval_s(2) == 1.0
    assert health_check_interval_s(300) == 5.0


def test_instance_selection_by_fraction_is_stable_and_close_to_the_fraction() -> None:
    names = [f"i{n}" for n in range(2000)]
    chosen = [n for n in names if instance_selected(n, "exp-1", None, 0.3)]
    assert 0.26 < len(chosen) / len(names) < 0.34
    assert chosen == [n for n in names if instance_selected(n, "exp-1", None, 0.3)]
    assert all(instance_selected(n, "e", None, None) for n in names[:10])
    assert instance_selected("a", "e", ["a"], 0.0) and not instance_selected("b", "e", ["a"], 1.0)


def test_select_instances_by_count_is_stable() -> None:
    known = ["a", "b", "c", "d", "e"]
    first = select_instances(known, 2, "exp-1")
    assert len(first) == 2 and set(first) <= set(known)
    assert select_instances(reversed(known), 2, "exp-1") == first
    assert select_instances(known, 10, "exp-1") == known


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _journal(**fields: object) -> ChaosJournal:
    scenario = ChaosScenario(
        name="n", chaos_type=ChaosType.ERROR, target="a", blast_radius=["a"], duration_s=30
    )
    base: dict[str, object] = {
        "experiment_id": "chaos-n-1",
        "scenario": scenario,
        "started_at": T0,
        "phases": [PhaseRecord(phase=P.VALIDATING, entered_at=T0)],
        "duration_s": 30.0,
    }
    return ChaosJournal.model_validate(base | fields)


def test_samples_track_lowest_latest_and_a_drop_only_after_injection() -> None:
    j = _journal(baseline=0.9)
    add_sample(j, HealthSample(at=T0, score=0.2, healthy=False))
    assert (j.lowest_health, j.last_health, j.health_dropped) == (0.2, 0.2, None)
    j.injected_at = T0
    add_sample(j, HealthSample(at=T0, score=0.95))
    assert (j.lowest_health, j.last_health, j.health_dropped) == (0.2, 0.95, False)
    add_sample(j, HealthSample(at=T0, score=0.5, targets_score=0.3))
    assert j.health_dropped is True
    add_sample(j, HealthSample(at=T0, score=None))
    assert j.last_health == 0.5 and j.health_dropped is True
    for _ in range(MAX_HEALTH_SAMPLES + 5):
        add_sample(j, HealthSample(at=T0, score=1.0))
    assert len(j.health) == MAX_HEALTH_SAMPLES


def test_fault_active_runs_until_the_fault_ended() -> None:
    j = _journal()
    assert fault_active_s(j, T0) is None
    j.injected_at = T0
    assert fault_active_s(j, T0 + timedelta(seconds=2.5)) == 2.5  # still running: so far
    j.removed_at = T0 + timedelta(seconds=10)
    assert fault_active_s(j, T0 + timedelta(seconds=99)) == 10.0
    j.cleanup = CleanupRecord(fault_ended_at=T0 + timedelta(seconds=7))
    assert fault_active_s(j, T0 + timedelta(seconds=99)) == 7.0
    assert (
        fault_active_s(
            _journal(injected_at=T0, scenario=j.scenario.model_copy(update={"dry_run": True})), T0
        )
        is None
    )


def test_status_projects_the_journal() -> None:
    placement = FaultPlacement(targets=["a"])
    j = _journal(
        phase=P.RUNNING,
        injected_at=T0,
        ends_at=T0 + timedelta(seconds=30),
        placement=placement,
        lowest_health=0.4,
        last_health=0.8,
        warnings=["w"],
        instances_guarding=2,
    )
    status = chaos_status(j, T0 + timedelta(seconds=20))
    assert status.time_left_s == 10.0
    assert status.faults_active == [placement]
    assert (status.lowest_health, status.last_health, status.warnings) == (0.4, 0.8, ["w"])
    assert status.experiment_id == "chaos-n-1" and status.duration_s == 30.0
    assert status.approval_needed is False and status.instances_guarding == 2
    assert chaos_status(j, T0 + timedelta(seconds=40)).time_left_s == 0.0
    j.phase = P.CLEANING_UP
    assert chaos_status(j, T0).time_left_s is None
    j.phase = P.AWAITING_APPROVAL
    assert chaos_status(j, T0).approval_needed is True
    # The status is a copy: later changes to the journal do not show in it.
    j.warnings.append("later")
    assert status.warnings == ["w"]


def test_report_projects_the_journal() -> None:
    j = _journal()
    running = chaos_report(j, T0 + timedelta(seconds=1))
    assert running.outcome is None and running.ended_at == T0 + timedelta(seconds=1)
    assert running.instances_saw_fault is None and running.effective_duration_s == 30.0
    j.outcome, j.reason = ChaosOutcome.COMPLETED, "ran for the full duration"
    j.impact = ExperimentImpact(
        calls_seen={"i1": 3}, calls_affected={"i2": 1}, breakers_opened=["i3/a: OPEN"]
    )
    j.impact_collected = True
    report = chaos_report(j, T0 + timedelta(seconds=40))
    assert report.outcome is ChaosOutcome.COMPLETED and report.reason == j.reason
    assert report.instances_saw_fault == 3
    assert report.calls_seen == {"i1": 3} and report.breakers_opened == ["i3/a: OPEN"]
    assert report.phases == j.phases and report.phases[0] is not j.phases[0]


def test_guardian_outlives_every_legitimate_run() -> None:
    assert guardian_give_up_after_s(30.0, 60.0, 15.0) == 30 + 60 + 4 * 15 + 60


def test_a_missing_lease_is_late_or_removed_from_outside() -> None:
    earliest = T0 + timedelta(seconds=15)
    assert "removed from outside" in missing_lease_reason(T0, earliest)
    assert "removed from outside" in missing_lease_reason(T0, None)
    late = missing_lease_reason(earliest + timedelta(seconds=2.5), earliest)
    assert late.startswith("fault lease expired before it was renewed (2.5s late")


def test_cleanup_record_ends_the_fault_no_later_than_its_lease() -> None:
    now, until = T0 + timedelta(seconds=30), T0 + timedelta(seconds=20)
    j = _journal(injected_at=T0, lease_until=until)
    rec = cleanup_record(j, removed=False, method="expired", detail="d", confirmed=None, now=now)
    assert (rec.method, rec.fault_ended_at, rec.at, rec.attempted) == ("expired", until, now, True)
    rec = cleanup_record(j, removed=True, method="removed", detail="", confirmed=True, now=now)
    assert rec.fault_ended_at == now and rec.lease_removed and rec.confirmed
    assert (
        cleanup_record(
            _journal(lease_until=until),
            removed=True,
            method="removed",
            detail="",
            confirmed=None,
            now=now,
        ).fault_ended_at
        is None
    )  # never injected


def test_cleanup_after_a_failed_injection_removed_nothing() -> None:
    now = T0 + timedelta(seconds=3)
    j = _journal(lease_until=T0, injection_failed="refused", shielded_ending=True)
    rec = cleanup_record(
        j, removed=False, method="already_gone", detail="", confirmed=True, now=now
    )
    assert rec.method == "injection_failed"
    assert rec.detail == "nothing to remove: the injection wrote no lease"
    j.shielded_ending = False  # older runs keep their method
    rec = cleanup_record(
        j, removed=False, method="already_gone", detail="", confirmed=None, now=now
    )
    assert rec.method == "already_gone"


def test_measured_sample_joins_fleet_health_and_the_probe() -> None:
    fleet = HealthMeasurement(score=0.8, targets_score=0.6, detail="fleet 0.80")
    none = HealthMeasurement(score=None, detail="no snapshots")
    sample = measured_sample(fleet, None, None, T0)
    assert sample is not None and (sample.source, sample.detail) == ("fleet", "fleet 0.80")
    assert measured_sample(none, None, None, T0) is None
    probed = measured_sample(none, (False, "refused"), "tcp://a:1", T0)
    assert probed is not None and not probed.healthy
    assert (probed.source, probed.detail) == ("fleet+probe", "probe tcp://a:1: refused")


def test_recovery_check_after_removal() -> None:
    removed = T0 + timedelta(seconds=10)
    j = _journal(removed_at=removed, health_dropped=True)
    back = HealthSample(at=T0, score=0.2, targets_score=0.9)
    check = check_recovery(j, back, removed + timedelta(seconds=1.5))
    assert (check.recovered, check.time_to_recover_s) == (True, 1.5)
    assert check.note == "health back after 1.5s"
    j.health_dropped = False
    check = check_recovery(j, back, removed)
    assert check.recovered is True and check.time_to_recover_s is None
    down = HealthSample(at=T0, score=0.1, healthy=False)
    assert check_recovery(j, down, removed).recovered is None
    late = removed + timedelta(seconds=j.scenario.recovery_timeout_s)
    check = check_recovery(j, down, late)
    assert check.recovered is False and "recovery_timeout_s" in check.warning


def test_decisions_are_kept_while_validating_and_awaiting_approval() -> None:
    j = _journal()
    assert accepts_decisions(j)  # validation may still require approval
    j.validated = True
    assert not accepts_decisions(j)
    j.scenario = j.scenario.model_copy(update={"require_approval": True})
    assert accepts_decisions(j)
    j.phase = P.AWAITING_APPROVAL
    assert accepts_decisions(j)
    j.phase = P.RUNNING
    assert not accepts_decisions(j)
