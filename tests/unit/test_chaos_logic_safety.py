"""Pure rules added for issue 12: policy-required safety, preflight, health drops."""

from __future__ import annotations

from antifragile.chaos.logic import (
    Preflight,
    approval_refusal,
    below_steady_state,
    instances_that_saw,
    policy_refusal,
    preflight_guards,
    unguarded_refusal,
)
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.policy import ChaosPolicyConfig, WorkerPolicy


def sc(**kw: object) -> ChaosScenario:
    return ChaosScenario.model_validate(
        {"name": "n", "chaos_type": "LATENCY", "target": "db", **kw}
    )


def test_min_abort_below_is_compared_exactly_and_names_the_policy_field() -> None:
    assert policy_refusal(sc(abort_below_health=0.3), [], 0.3) is None
    refusal = policy_refusal(sc(abort_below_health=0.29), [], 0.3)
    assert refusal is not None and "chaos.min_abort_below (0.3)" in refusal
    off = policy_refusal(sc(abort_below_health=0.0), [], 0.1)
    assert off is not None and "switches the health guard off" in off
    assert policy_refusal(sc(abort_below_health=0.0), [], 0.0) is None


def test_policy_defaults_are_the_documented_ones() -> None:
    chaos = WorkerPolicy().chaos
    assert (chaos.require_approval, chaos.require_hash_validation, chaos.min_abort_below) == (
        False,
        False,
        0.0,
    )
    loaded = ChaosPolicyConfig.model_validate(
        {"require_approval": True, "require_hash_validation": True, "min_abort_below": 0.5}
    )
    assert loaded.require_approval and loaded.require_hash_validation
    assert loaded.min_abort_below == 0.5


def test_approval_refusal() -> None:
    assert approval_refusal([], False, []) is None
    refusal = approval_refusal([], True, [])
    assert refusal is not None and "chaos.require_approval" in refusal
    assert approval_refusal(["alice"], True, []) is None
    assert approval_refusal(["mallory"], True, ["alice"]) is not None
    assert approval_refusal(["alice"], True, ["alice"]) is None
    assert approval_refusal(["  "], True, []) is not None


def test_preflight_counts_guards_and_processes_without_breaker_lists() -> None:
    snaps: dict[str, dict[str, object] | None] = {
        "a": {"circuit_details": {"db": {"state": "CLOSED"}}},
        "b": {"breakers": {"cache": "CLOSED"}},
        "c": None,  # no snapshot: may guard it
        "d": {"health_score": 1.0},  # no per-breaker list: may guard it
    }
    pre = preflight_guards(["a", "b", "c", "d"], snaps, ["db"])
    assert pre.guarding == ("a",) and pre.unknown == ("c", "d") and pre.count == 3
    assert unguarded_refusal(pre, ["db"]) is None
    only_b = preflight_guards(["b"], snaps, ["db"])
    refusal = unguarded_refusal(only_b, ["db"])
    assert refusal is not None and "1 live process(es), none guarding it" in refusal
    assert "--allow-unguarded" in refusal and "\n" not in refusal
    assert "no live process" in (unguarded_refusal(Preflight((), (), 0), ["db"]) or "")
    # Instance selection: only the selected instances enforce the fault.
    assert preflight_guards(["a", "c"], snaps, ["db"], selected={"c"}).guarding == ()
    none_selected = preflight_guards(["a", "b"], snaps, ["db"], selected={"b"})
    assert "2 live process(es), 1 selected, none of them guarding it" in (
        unguarded_refusal(none_selected, ["db"]) or ""
    )


def test_below_steady_state() -> None:
    assert below_steady_state(None, 0.99, True)
    assert not below_steady_state(None, 1.0, True)
    assert not below_steady_state(0.8, 0.8, True)
    assert below_steady_state(0.8, 0.79, True)
    assert below_steady_state(1.0, None, False)
    assert not below_steady_state(1.0, None, True)


def test_instances_that_saw_the_fault_include_forced_open_breakers() -> None:
    assert instances_that_saw({"a": 3}, {"a": 1}, []) == 1
    assert instances_that_saw({}, {}, ["b/db: FORCED_OPEN", "c/db: OPEN"]) == 2
    assert instances_that_saw({"b": 1}, {}, ["b/db: FORCED_OPEN"]) == 1
