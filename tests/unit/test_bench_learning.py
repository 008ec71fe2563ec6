"""The pure parts of bench/learning.py (the bench itself prints figures, never asserts)."""

from __future__ import annotations

from pathlib import Path

from bench.learning import DEFAULT_T, QUICK_T, outage_times, reduction, within


def test_outage_times_are_seeded_and_within_the_spread() -> None:
    for mean, spread in (DEFAULT_T, QUICK_T):
        times = outage_times(6, mean, spread)
        assert times == outage_times(6, mean, spread)
        assert all(mean - spread <= t <= mean + spread for t in times)
    assert outage_times(6, 3, 0.5, seed=1) != outage_times(6, 3, 0.5, seed=2)


def test_within_and_reduction() -> None:
    assert within(3.6, 3.0) and within(2.4, 3.0) and not within(3.61, 3.0)
    assert reduction(10, 4) == 0.6
    assert reduction(0, 1) is None


def test_the_bench_worker_policy_names_the_approver(tmp_path: Path) -> None:
    from antifragile.policy import WorkerPolicy
    from bench.learning import APPROVER, allow_approver

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("chaos:\n  allowed_targets: [bench-dep-x]\n  max_duration_s: 300\n")
    allow_approver(policy_file)
    policy = WorkerPolicy.load(policy_file)
    assert list(policy.recovery.approvers) == [APPROVER]
    assert policy.chaos.allowed_targets == ["bench-dep-x"]


def test_p75_is_type_7_like_the_advice() -> None:
    from fractions import Fraction

    from antifragile.learning.measurements import type7_quantile
    from bench.learning import p75

    values = [2.607, 3.203, 3.152, 3.44, 2.771]
    for n in range(1, 6):
        expected = type7_quantile([round(v * 1000) for v in sorted(values[:n])], Fraction(3, 4))
        assert abs(p75(values[:n]) - float(expected) / 1000) < 1e-9
