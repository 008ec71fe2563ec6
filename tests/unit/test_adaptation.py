"""The pure decisions of adaptation: which advised values a change applies, and auto's band."""

from __future__ import annotations

import pytest

from antifragile.learning.adaptation import (
    in_force,
    live_advice,
    plan_apply,
    setting_name,
    within_band,
)
from antifragile.models.adaptation import AdaptationBand
from antifragile.models.learning import (
    Advice,
    ConfigVersion,
    CurrentSettings,
    DependencySettings,
    Evidence,
)

EV = Evidence(observations=3)


def advice(setting: str, current: float | None, recommended: float | None) -> Advice:
    return Advice(
        dependency="db",
        setting=setting,
        current=current,
        recommended=recommended,
        reason="r",
        evidence=EV,
    )


ADVICE = [
    advice("breaker.open_duration_s", 30.0, 2.75),
    advice("breaker.failure_threshold", 5.0, 3.4),
    advice("breaker.minimum_calls", 20.0, 40.0),
    advice("recovery.initial_delay_ms", 1000.0, 500.0),
    advice("guard.timeout_s", None, 0.8),
    advice("gap.thin.latency", None, None),
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("breaker.open_duration_s", "breaker.open_duration_s"),
        ("open_duration_s", "breaker.open_duration_s"),
        ("timeout_s", "guard.timeout_s"),
        ("minimum_calls", "breaker.minimum_calls"),
    ],
)
def test_setting_names(name: str, expected: str) -> None:
    assert setting_name(name) == expected


@pytest.mark.parametrize("name", ["", "nope", "breaker.nope", "gap.thin.latency"])
def test_unknown_setting_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        setting_name(name)


def test_plan_applies_every_live_change_and_says_why_not_the_others() -> None:
    plan = plan_apply(ADVICE, DependencySettings(timeout_s=2.0))
    assert plan.applied == {
        "breaker.open_duration_s": (30.0, 2.75),
        "breaker.failure_threshold": (5.0, 3.0),  # an integer: rounded
        "guard.timeout_s": (None, 0.8),
    }
    assert plan.settings == DependencySettings(
        open_duration_s=2.75, failure_threshold=3, timeout_s=0.8
    )
    assert set(plan.not_applied) == {"breaker.minimum_calls", "recovery.initial_delay_ms"}
    assert all(why.startswith("not applied live") for why in plan.not_applied.values())


def test_plan_of_named_settings_only() -> None:
    plan = plan_apply(ADVICE, DependencySettings(), ["open_duration_s", "minimum_calls"])
    assert plan.settings == DependencySettings(open_duration_s=2.75)
    assert list(plan.applied) == ["breaker.open_duration_s"]
    assert list(plan.not_applied) == ["breaker.minimum_calls"]


def test_plan_keeps_what_is_in_force_and_changes_nothing_equal() -> None:
    same = [advice("breaker.open_duration_s", 2.75, 2.75)]
    plan = plan_apply(same, DependencySettings(open_duration_s=2.75, timeout_s=1.0))
    assert not plan.changes
    assert plan.settings == DependencySettings(open_duration_s=2.75, timeout_s=1.0)
    named = plan_apply(same, DependencySettings(), ["breaker.open_duration_s", "timeout_s"])
    assert named.not_applied == {
        "breaker.open_duration_s": "already 2.75",
        "guard.timeout_s": "no advice for it yet (not enough evidence)",
    }


def test_a_gap_named_is_reported() -> None:
    plan = plan_apply([advice("guard.timeout_s", None, None)], DependencySettings(), ["timeout_s"])
    assert not plan.changes and plan.not_applied["guard.timeout_s"].startswith("no recommended")


@pytest.mark.parametrize(
    ("old", "new", "in_band"),
    [
        (4.0, 2.0, True),  # exactly 50 %: kept (compared exactly)
        (4.0, 6.0, True),
        (4.0, 1.999, False),
        (4.0, 6.001, False),
        (0.3, 0.45, True),  # 0.15 / 0.3 = 0.5 on the decimals, not the binary floats
        (None, 0.8, False),  # no value in force to step from
    ],
)
def test_auto_band(old: float | None, new: float, in_band: bool) -> None:
    plan = plan_apply(
        [advice("breaker.open_duration_s", old, new)],
        DependencySettings(open_duration_s=old),
    )
    kept = within_band(plan, AdaptationBand(auto=True, auto_max_step=0.5), observations=3)
    assert kept.changes is in_band
    assert kept.settings.open_duration_s == (new if in_band else old)
    if not in_band:
        assert "left to a person" in kept.not_applied["breaker.open_duration_s"]


def test_auto_needs_enough_observations_and_restores_the_service_own() -> None:
    plan = plan_apply([advice("breaker.open_duration_s", 30.0, 25.0)], DependencySettings())
    kept = within_band(plan, AdaptationBand(auto=True, auto_min_observations=5), observations=4)
    assert not kept.changes
    assert kept.settings == DependencySettings()  # unset stays unset, not the default 30
    assert "4 observation(s), 5 needed" in kept.not_applied["breaker.open_duration_s"]


def test_in_force_and_live_advice() -> None:
    assert in_force(None) == CurrentSettings()
    version = ConfigVersion(
        dependency="db",
        version=1,
        settings=DependencySettings(open_duration_s=5.0),
        by="a",
        at="2026-01-01T00:00:00Z",
    )
    assert in_force(version) == CurrentSettings(open_duration_s=5.0)
    assert live_advice(ADVICE) == {
        "breaker.open_duration_s": 2.75,
        "breaker.failure_threshold": 3.4,
        "guard.timeout_s": 0.8,
    }


def test_auto_min_step_exact_edge_and_none_for_old_results() -> None:
    """A step exactly at ``auto_min_step`` is made; under it, not; None: any step."""
    from antifragile.learning.adaptation import ApplyPlan, within_band
    from antifragile.models.adaptation import AdaptationBand
    from antifragile.models.learning import DependencySettings

    def plan(new: float) -> ApplyPlan:
        return ApplyPlan(
            settings=DependencySettings(open_duration_s=new),
            applied={"breaker.open_duration_s": (3.0, new)},
            base=DependencySettings(open_duration_s=3.0),
        )

    band = AdaptationBand(auto=True, auto_min_step=0.1)
    assert within_band(plan(3.3), band, 5).changes  # 10 % exactly (0.3 = 0.1 x 3.0)
    under = within_band(plan(3.2999), band, 5)
    assert not under.changes and "under the minimum" in under.not_applied["breaker.open_duration_s"]
    assert under.settings.open_duration_s == 3.0
    assert within_band(plan(3.01), AdaptationBand(auto=True), 5).changes


def test_auto_never_steps_from_a_value_it_does_not_know() -> None:
    """No version sets the open duration: the service runs with its own value (120 s,
    say), not the library default the advice compares with; a "33 %" step from the
    default could be a 67 % step of the live breaker. Auto leaves it to a person."""
    from antifragile.learning.adaptation import ApplyPlan, within_band
    from antifragile.policy import AdaptationPolicyConfig

    plan = ApplyPlan(
        settings=DependencySettings(open_duration_s=40.0),
        applied={"breaker.open_duration_s": (30.0, 40.0)},
        base=DependencySettings(),
    )
    band = AdaptationPolicyConfig(auto=True).band()
    decided = within_band(plan, band, 5)
    assert not decided.changes and decided.settings.open_duration_s is None
    assert "not set by any version" in decided.not_applied["breaker.open_duration_s"]
    known = ApplyPlan(
        settings=DependencySettings(open_duration_s=40.0),
        applied={"breaker.open_duration_s": (30.0, 40.0)},
        base=DependencySettings(open_duration_s=30.0),
    )
    assert within_band(known, band, 5).changes


def test_auto_pauses_while_a_persons_revert_is_in_force() -> None:
    from datetime import UTC, datetime

    from antifragile.learning.adaptation import auto_paused
    from antifragile.models.adaptation import AdaptationBand
    from antifragile.models.learning import ConfigVersion
    from antifragile.policy import AdaptationPolicyConfig

    def version(by: str, revert_of: int | None) -> ConfigVersion:
        return ConfigVersion(
            dependency="db",
            version=3,
            settings=DependencySettings(open_duration_s=4.0),
            by=by,
            at=datetime(2026, 1, 1, tzinfo=UTC),
            revert_of=revert_of,
        )

    band = AdaptationPolicyConfig(auto=True).band()
    assert auto_paused(band, version("alice", 2))
    assert not auto_paused(band, version("alice", None))  # a person applied: resumed
    assert not auto_paused(band, None)
    assert not auto_paused(AdaptationBand(auto=True), version("alice", 2))  # old results
