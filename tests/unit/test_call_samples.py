"""Call samples of an experiment's target: deltas of cumulative counters, restarts as
Prometheus rate() handles them, interval quantiles, bounded journal; the runtime's
cumulative counters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from antifragile.chaos.journal import MAX_CALL_SAMPLES, add_call_sample
from antifragile.inprocess.latency import WindowCounts
from antifragile.inprocess.traffic import TrafficWindows
from antifragile.models.chaos import ChaosJournal
from antifragile.models.chaos_calls import InstanceCalls
from antifragile.models.chaos_scenario import ChaosScenario, ChaosType
from antifragile.models.learning import latency_bounds_ms

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def journal() -> ChaosJournal:
    scenario = ChaosScenario(name="x", chaos_type=ChaosType.ERROR, target="db", error_rate=1.0)
    return ChaosJournal.model_construct(
        experiment_id="e", scenario=scenario, calls=[], last_calls=[]
    )


def ic(
    instance: str,
    calls: int,
    failures: int,
    refused: int = 0,
    since: float = 0.0,
    latency: list[int] | None = None,
    dependency: str = "db",
) -> InstanceCalls:
    return InstanceCalls(
        instance=instance,
        dependency=dependency,
        since=since,
        calls=calls,
        failures=failures,
        refused=refused,
        latency=latency or [],
    )


def test_first_sample_is_the_base_then_deltas_are_summed_over_instances() -> None:
    j = journal()
    first = add_call_sample(j, [ic("a", 10, 1, latency=[10]), ic("b", 5, 0)], "db", T0)
    assert first is not None and (first.ok, first.failed, first.refused) == (0, 0, 0)
    assert first.p50_ms is None
    s = add_call_sample(
        j,
        [ic("a", 20, 3, 2, latency=[10, 0, 10]), ic("b", 9, 0, latency=[0, 4])],
        "db",
        T0 + timedelta(seconds=1),
    )
    assert s is not None and (s.ok, s.failed, s.refused, s.instances) == (12, 2, 2, 2)
    bounds = latency_bounds_ms()
    assert s.p50_ms == bounds[2] and s.p99_ms == bounds[2]  # 4 in bucket 1, 10 in bucket 2


def test_a_restart_counts_the_new_counters_from_zero() -> None:
    j = journal()
    add_call_sample(j, [ic("a", 100, 0)], "db", T0)
    restarted = T0.timestamp() + 0.5  # counting since after the previous sample
    s = add_call_sample(j, [ic("a", 7, 1, since=restarted)], "db", T0 + timedelta(seconds=1))
    assert s is not None and (s.ok, s.failed) == (6, 1)
    again = T0.timestamp() + 1.5
    s = add_call_sample(j, [ic("a", 3, 0, since=again)], "db", T0 + timedelta(seconds=2))
    assert s is not None and (s.ok, s.failed) == (9, 1)  # restarted again


def test_other_dependencies_are_ignored_and_nobody_publishing_adds_nothing() -> None:
    j = journal()
    assert add_call_sample(j, [ic("a", 1, 0, dependency="other")], "db", T0) is None
    assert j.calls == []


def test_the_journal_is_bounded_and_thinning_keeps_the_counts() -> None:
    j = journal()
    for n in range(MAX_CALL_SAMPLES + 50):
        add_call_sample(j, [ic("a", n, 0)], "db", T0 + timedelta(seconds=n))
    assert len(j.calls) <= MAX_CALL_SAMPLES
    assert j.calls[-1].ok == MAX_CALL_SAMPLES + 49
    assert [s.at for s in j.calls] == sorted(s.at for s in j.calls)


class FakeGuard:
    def __init__(self) -> None:
        self.traffic = WindowCounts()
        self.under_fault = WindowCounts()

    def rotate_window(self) -> tuple[WindowCounts, WindowCounts]:
        done = self.traffic, self.under_fault
        self.traffic, self.under_fault = WindowCounts(), WindowCounts()
        return done


def test_cumulative_counters_add_finished_and_current_windows() -> None:
    g = FakeGuard()
    tw = TrafficWindows(lambda: {"db": g}, "i", window_s=60, wall=lambda: 1000.0)
    g.traffic.latency[0] += 3
    g.traffic.failures += 1
    g.traffic.refused += 2
    g.under_fault.latency[5] += 1
    tw.rotate()
    g.traffic.latency[1] += 4
    doc = tw.document()["dependencies"]["db"]["cumulative"]
    assert doc == {
        "since": 1000.0,
        "calls": 8,
        "failures": 1,
        "refused": 2,
        "latency": {"counts": [3, 4, 0, 0, 0, 1]},
    }


def test_latency_under_the_fault_counts_only_intervals_wholly_under_it() -> None:
    """Checks at 0..5 s; the fault from 1 s to 4 s: the intervals (1,2], (2,3], (3,4] are
    under it; (0,1] straddles nothing but precedes it, (4,5] follows it."""
    j = journal()
    j.injected_at = T0 + timedelta(seconds=1)
    cumulative = [0, 0, 0]
    per_interval = {1: [1, 0, 0], 2: [0, 2, 0], 3: [0, 0, 3], 4: [0, 4, 0], 5: [5, 0, 0]}
    for second in range(6):
        for k, n in enumerate(per_interval.get(second, [0, 0, 0])):
            cumulative[k] += n
        if second == 4:
            j.removed_at = T0 + timedelta(seconds=4)
        calls = sum(cumulative)
        add_call_sample(
            j, [ic("a", calls, 0, latency=list(cumulative))], "db", T0 + timedelta(seconds=second)
        )
    assert j.fault_latency == [0, 6, 3]  # (1,2]: [0,2,0], (2,3]: [0,0,3], (3,4]: [0,4,0]


def test_a_dry_run_or_an_experiment_never_injected_has_no_latency_under_a_fault() -> None:
    j = journal()
    for second in range(3):
        add_call_sample(
            j, [ic("a", second, 0, latency=[second])], "db", T0 + timedelta(seconds=second)
        )
    assert j.fault_latency == []
