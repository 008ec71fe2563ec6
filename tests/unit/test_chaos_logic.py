"""Pure chaos decisions: phase table, caps, health guard, instance selection."""

from __future__ import annotations

import itertools

import pytest

from antifragile._fsm import IllegalTransitionError
from antifragile.chaos.logic import (
    LEGAL_TRANSITIONS,
    cap_duration,
    check_phase_transition,
    health_check_interval_s,
    health_is_back,
    health_trips_guard,
    instance_selected,
    lease_renewal_interval_s,
    policy_refusal,
    select_instances,
    targets_refused,
)
from antifragile.models.chaos import ChaosPhase
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
    with pytest.raises(IllegalTransitionError, match="VALIDATING -> INJECTING"):
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
