"""HealthAggregator: score, thresholds, weights, anti-flapping, callbacks and history."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from fractions import Fraction

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from antifragile.chaos.logic import health_trips_guard
from antifragile.chaos.plane import FaultPlane
from antifragile.errors import ConfigError
from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import LEGAL_TRANSITIONS, CircuitState
from antifragile.inprocess.bridge import Bridge, health_key
from antifragile.inprocess.health import (
    HealthAggregator,
    HealthAggregatorConfig,
    SystemHealthReport,
)
from antifragile.inprocess.health_score import (
    SystemHealthStatus,
    exact_score,
    health_score,
    status_for_score,
)
from antifragile.models.chaos_scenario import ChaosScenario
from antifragile.settings import Settings
from antifragile.testing import FakeClock, eventually
from tests.unit.conftest import RestartableRedis

H, D, C = SystemHealthStatus.HEALTHY, SystemHealthStatus.DEGRADED, SystemHealthStatus.CRITICAL


def breakers(n: int, clock: FakeClock) -> list[CircuitBreaker]:
    cfg = CircuitBreakerConfig(open_duration_s=10)
    return [CircuitBreaker(f"b{i}", cfg, clock=clock) for i in range(n)]


def agg(clock: FakeClock, window: float = 2.0) -> HealthAggregator:
    return HealthAggregator(HealthAggregatorConfig(stabilization_window_s=window), clock=clock)


def test_no_breakers_scores_one_and_is_healthy(clock: FakeClock) -> None:
    report = agg(clock).get_system_health()
    assert report.health_score == 1.0
    assert report.status is H
    assert report.total_breakers == 0


def test_score_counts_closed_one_half_open_half_open_zero(clock: FakeClock) -> None:
    h = agg(clock, window=0)
    bs = breakers(4, clock)
    for b in bs:
        h.register_circuit_breaker(b.name, b)
    bs[0].force_open()
    bs[1]._transition(bs[1]._state.OPEN, "t")
    bs[1]._transition(bs[1]._state.HALF_OPEN, "t")
    report = h.get_system_health()
    assert report.health_score == pytest.approx((2 + 0.5) / 4)
    assert (report.closed_breakers, report.half_open_breakers) == (2, 1)
    assert (report.open_breakers, report.forced_open_breakers) == (0, 1)
    assert report.circuit_details["b0"].state == "FORCED_OPEN"


def test_weights_change_the_score(clock: FakeClock) -> None:
    h = agg(clock, window=0)
    a, b = breakers(2, clock)
    h.register_circuit_breaker("a", a, weight=3.0)
    h.register_circuit_breaker("b", b, weight=1.0)
    b.force_open()
    assert h.health_score == pytest.approx(0.75)
    a.force_open()
    b.reset()
    assert h.health_score == pytest.approx(0.25)


def test_unregister_removes_contribution(clock: FakeClock) -> None:
    h = agg(clock, window=0)
    a, b = breakers(2, clock)
    h.register_circuit_breaker("a", a)
    h.register_circuit_breaker("b", b)
    a.force_open()
    h.unregister_circuit_breaker("a")
    a.reset()  # no longer tracked: no effect
    assert h.health_score == 1.0
    assert h.get_system_health().total_breakers == 1


@pytest.mark.parametrize(
    ("score", "status"), [(1.0, H), (0.7, H), (0.69, D), (0.5, D), (0.49, C), (0.0, C)]
)
def test_status_thresholds(score: float, status: SystemHealthStatus) -> None:
    assert status_for_score(score) is status


def test_custom_thresholds_and_pure_score() -> None:
    assert status_for_score(0.85, 0.9, 0.8) is D
    assert health_score(0, 0, 0) == 1.0
    assert health_score(1, 2, 4) == 0.5


def test_state_changes_are_applied_without_rescanning(clock: FakeClock) -> None:
    h = agg(clock, window=0)
    bs = breakers(3, clock)
    for b in bs:
        h.register_circuit_breaker(b.name, b)
    # Swap in a registry that counts scans: an update that rescanned would show here.
    scans = 0

    class CountingDict(dict):  # type: ignore[type-arg]
        def items(self):  # type: ignore[no-untyped-def]
            nonlocal scans
            scans += 1
            return super().items()

        def values(self):  # type: ignore[no-untyped-def]
            nonlocal scans
            scans += 1
            return super().values()

        def __iter__(self):  # type: ignore[no-untyped-def]
            nonlocal scans
            scans += 1
            return super().__iter__()

    h._entries = CountingDict(h._entries)
    bs[0].force_open()
    assert scans == 0
    assert h.health_score == pytest.approx(2 / 3)


def test_first_report_is_the_computed_status(clock: FakeClock) -> None:
    h = agg(clock)
    bs = breakers(2, clock)
    bs[0].force_open()
    bs[1].force_open()
    h.register_circuit_breaker("a", bs[0])
    h2 = agg(clock)
    h2.register_circuit_breaker("a", bs[0])
    assert h2.get_system_health().status is C


def test_move_to_critical_is_reported_at_once(clock: FakeClock) -> None:
    h = agg(clock)
    (b,) = breakers(1, clock)
    h.register_circuit_breaker("b", b)
    b.force_open()
    assert h.get_system_health().status is C


def test_recovery_is_reported_only_after_the_window(clock: FakeClock) -> None:
    h = agg(clock, window=2.0)
    (b,) = breakers(1, clock)
    h.register_circuit_breaker("b", b)
    b.force_open()
    b.reset()
    report = h.get_system_health()
    assert report.status is C
    assert report.computed_status is H
    assert report.pending_status is H
    assert report.health_score == 1.0  # score is always current
    clock.advance(1.99)
    assert h.get_system_health().status is C
    clock.advance(0.01)
    assert h.get_system_health().status is H


def test_degradation_waits_for_the_window_too(clock: FakeClock) -> None:
    h = agg(clock, window=2.0)
    bs = breakers(4, clock)
    for b in bs:
        h.register_circuit_breaker(b.name, b)
    bs[0].force_open()
    bs[1].force_open()  # 0.5 -> DEGRADED
    assert h.get_system_health().status is H
    clock.advance(2)
    assert h.get_system_health().status is D


def test_flapping_restarts_the_window_and_return_cancels_it(clock: FakeClock) -> None:
    h = agg(clock, window=2.0)
    bs = breakers(4, clock)
    for b in bs:
        h.register_circuit_breaker(b.name, b)
    for _ in range(5):  # DEGRADED <-> HEALTHY every second: never reported
        bs[0].force_open()
        bs[1].force_open()
        clock.advance(1)
        assert h.get_system_health().status is H
        bs[0].reset()
        bs[1].reset()
        clock.advance(1)
        report = h.get_system_health()
        assert report.status is H
        assert report.pending_status is None


async def test_pending_status_is_reported_by_timer_without_further_changes() -> None:
    h = HealthAggregator(HealthAggregatorConfig(stabilization_window_s=0.03))
    (b,) = [CircuitBreaker("b")]
    h.register_circuit_breaker("b", b)
    seen: list[SystemHealthStatus] = []
    h.on_health_change(lambda r: seen.append(r.status))
    b.force_open()
    b.reset()
    await eventually(lambda: seen and seen[-1] is H, timeout=5)
    assert C in seen


async def test_callbacks_coalesce_a_burst_to_the_latest(clock: FakeClock) -> None:
    h = agg(clock, window=0)
    bs = breakers(10, clock)
    for b in bs:
        h.register_circuit_breaker(b.name, b)
    reports: list[SystemHealthReport] = []

    async def cb(report: SystemHealthReport) -> None:
        reports.append(report)

    h.on_health_change(cb)
    for b in bs:
        b.force_open()
    await asyncio.sleep(0.01)
    assert len(reports) == 1
    assert reports[0].health_score == 0.0
    assert reports[0].status is C


async def test_raising_callback_is_logged_and_others_still_run(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    h = agg(clock, window=0)
    (b,) = breakers(1, clock)
    h.register_circuit_breaker("b", b)
    got: list[float] = []

    def bad(report: SystemHealthReport) -> None:
        raise RuntimeError("callback bug")

    h.on_health_change(bad)
    h.on_health_change(lambda r: got.append(r.health_score))
    with caplog.at_level(logging.ERROR):
        b.force_open()
        assert h._notify_task is not None  # referenced until done
        await h._notify_task
    assert got == [0.0]
    assert "callback bug" in caplog.text


def test_sync_callbacks_run_inline_without_a_loop(clock: FakeClock) -> None:
    h = agg(clock, window=0)
    (b,) = breakers(1, clock)
    h.register_circuit_breaker("b", b)
    got: list[SystemHealthStatus] = []
    h.on_health_change(lambda r: got.append(r.status))
    b.force_open()
    assert got == [C]


def test_history_is_bounded_and_queryable_by_window(clock: FakeClock) -> None:
    h = HealthAggregator(HealthAggregatorConfig(history_size=5), clock=clock)
    (b,) = breakers(1, clock)
    h.register_circuit_breaker("b", b)
    for i in range(8):
        if i == 6:
            b.force_open()
        h.record_snapshot()
        clock.advance(1)
    hist = h.get_history()
    assert len(hist) == 5
    assert [s.health_score for s in hist] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert len(h.get_history(window_s=2.5)) == 2


async def test_sampler_records_snapshots_while_started() -> None:
    h = HealthAggregator(HealthAggregatorConfig(history_interval_s=0.01))
    await h.start()
    await eventually(lambda: len(h.get_history()) >= 2, timeout=5)
    await h.stop()
    n = len(h.get_history())
    assert n >= 2
    await asyncio.sleep(0.03)
    assert len(h.get_history()) == n


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"critical_threshold": 1.5}, "critical_threshold"),
        ({"degraded_threshold": 0.4}, "degraded_threshold"),
        ({"stabilization_window_s": -1}, "stabilization_window_s"),
        ({"history_size": 0}, "history_size"),
        # NaN passes every comparison: a NaN window never let DEGRADED -> HEALTHY through
        # (and armed a timer for NaN seconds); history_size 2.5 failed later in deque().
        ({"stabilization_window_s": float("nan")}, "stabilization_window_s"),
        ({"stabilization_window_s": float("inf")}, "stabilization_window_s"),
        ({"history_interval_s": float("nan")}, "history_interval_s"),
        ({"history_interval_s": float("inf")}, "history_interval_s"),
        ({"history_interval_s": 0}, "history_interval_s"),
        ({"history_size": 2.5}, "history_size"),
        ({"critical_threshold": float("nan")}, "critical_threshold"),
        ({"degraded_threshold": float("nan")}, "degraded_threshold"),
    ],
)
def test_config_errors_name_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as err:
        HealthAggregatorConfig(**kwargs)  # type: ignore[arg-type]
    assert repr(next(iter(kwargs.values()))) in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf")])
def test_non_positive_or_non_finite_weight_is_refused(clock: FakeClock, weight: float) -> None:
    with pytest.raises(ConfigError, match="weight"):
        agg(clock).register_circuit_breaker("b", breakers(1, clock)[0], weight=weight)


# --------------------------------------------------------------- item 2: exact thresholds


def weighted(h: HealthAggregator, clock: FakeClock, weights: list[float]) -> list[CircuitBreaker]:
    bs = breakers(len(weights), clock)
    for b, w in zip(bs, weights, strict=True):
        h.register_circuit_breaker(b.name, b, weight=w)
    return bs


def test_four_breakers_of_weight_point_three_two_open_score_exactly_half_degraded(
    clock: FakeClock,
) -> None:
    # The float running sums gave 0.4999999999999999 -> CRITICAL, reported at once.
    h = agg(clock, window=2.0)
    bs = weighted(h, clock, [0.3] * 4)
    bs[0].force_open()
    bs[1].force_open()
    report = h.get_system_health()
    assert report.health_score == 0.5
    assert report.computed_status is D
    assert report.status is H  # HEALTHY -> DEGRADED waits out the window: not CRITICAL
    assert report.pending_status is D
    clock.advance(2.0)
    assert h.get_system_health().status is D


@pytest.mark.parametrize(
    ("weights", "open_count", "thresholds", "status", "score"),
    [
        ([0.1] * 10, 3, (0.7, 0.5), H, 0.7),  # 7/10 exactly at the HEALTHY threshold
        ([0.1] * 10, 5, (0.7, 0.5), D, 0.5),
        ([0.05] * 20, 9, (0.55, 0.5), H, 0.55),  # 11/20 at a custom 0.55
        ([0.05] * 20, 10, (0.55, 0.5), D, 0.5),
        ([0.07] * 100, 45, (0.55, 0.5), H, 0.55),
        ([0.07] * 100, 46, (0.55, 0.5), D, 0.54),
        ([0.3] * 4, 3, (0.7, 0.25), D, 0.25),
        ([0.3] * 4, 4, (0.7, 0.25), C, 0.0),
    ],
)
def test_weighted_scores_compare_exactly_with_thresholds(
    clock: FakeClock,
    weights: list[float],
    open_count: int,
    thresholds: tuple[float, float],
    status: SystemHealthStatus,
    score: float,
) -> None:
    cfg = HealthAggregatorConfig(
        degraded_threshold=thresholds[0], critical_threshold=thresholds[1], stabilization_window_s=0
    )
    h = HealthAggregator(cfg, clock=clock)
    bs = weighted(h, clock, weights)
    for b in bs[:open_count]:
        b.force_open()
    report = h.get_system_health()
    assert report.health_score == score  # the exact score, rounded once
    assert report.status is status
    assert status_for_score(report.health_score, *thresholds) is status


def test_pure_score_functions_are_exact() -> None:
    assert health_score(0.6, 0, 1.2) == 0.5
    assert health_score(0.1, 0.4, 0.6) == 0.5
    assert exact_score(1, 1, 3) == Fraction(1, 2)
    assert status_for_score(Fraction(1, 2)) is D
    assert status_for_score(Fraction(1, 2) - Fraction(1, 10**30)) is C


async def test_snapshot_in_redis_agrees_with_the_chaos_health_guard(
    clock: FakeClock, own_redis: RestartableRedis
) -> None:
    h = agg(clock, window=0)
    bs = weighted(h, clock, [0.3] * 4)
    bs[0].force_open()
    bs[1].force_open()
    client = aioredis.Redis.from_url(own_redis.url)
    bridge = Bridge(Settings(), "svc-1", h, lambda name: None, redis_client=client)
    try:
        await bridge.publish_once()
        doc = json.loads(await client.get(health_key("svc-1")))
        assert doc["health_score"] == 0.5
        assert doc["status"] == "DEGRADED"
        fleet = await FaultPlane(client).fleet_health(["b2"])
        abort_below = ChaosScenario.model_fields["abort_below_health"].default
        assert abort_below == 0.5
        assert fleet.score == 0.5
        assert not health_trips_guard(fleet.score, True, abort_below)
        bs[2].force_open()  # 0.25: now the guard must trip
        await bridge.publish_once()
        fleet = await FaultPlane(client).fleet_health(["b2"])
        assert fleet.score == 0.25
        assert health_trips_guard(fleet.score, True, abort_below)
    finally:
        await client.aclose()


# --------------------------------------------------------------- item 14: registration


@pytest.mark.parametrize(("total", "expected"), [(2, D), (4, H), (10, H)])
def test_registering_one_by_one_first_open_reports_the_computed_status_at_once(
    clock: FakeClock, total: int, expected: SystemHealthStatus
) -> None:
    h = agg(clock, window=2.0)
    bs = breakers(total, clock)
    bs[0].force_open()
    seen = []
    for b in bs:
        h.register_circuit_breaker(b.name, b)
        report = h.get_system_health()
        assert report.status is report.computed_status  # no anti-flapping on registration
        assert report.pending_status is None
        seen.append(report.status)
    assert seen[0] is C  # one open breaker alone: CRITICAL is its computed status
    assert seen[-1] is expected


def test_unregistering_is_configuration_too(clock: FakeClock) -> None:
    h = agg(clock, window=2.0)
    a, b = breakers(2, clock)
    h.register_circuit_breaker("a", a)
    h.register_circuit_breaker("b", b)
    a.force_open()
    report = h.get_system_health()
    assert (report.status, report.pending_status) == (H, D)  # a real change: waits
    h.unregister_circuit_breaker("a")
    report = h.get_system_health()
    assert (report.status, report.pending_status) == (H, None)


def test_real_changes_after_registration_still_wait_the_window(clock: FakeClock) -> None:
    h = agg(clock, window=2.0)
    bs = weighted(h, clock, [1.0] * 4)
    bs[0].force_open()
    bs[1].force_open()
    assert h.get_system_health().status is H
    clock.advance(2.0)
    assert h.get_system_health().status is D


# --------------------------------------------------------------- reads never change state


def test_reads_are_pure_and_fire_no_callbacks_even_from_another_thread(clock: FakeClock) -> None:
    h = agg(clock, window=2.0)
    (b,) = breakers(1, clock)
    h.register_circuit_breaker("b", b)
    fired: list[SystemHealthStatus] = []
    h.on_health_change(lambda r: fired.append(r.status))
    b.force_open()
    b.reset()  # CRITICAL reported, HEALTHY pending
    assert fired == [C, C]
    before = h._st
    clock.advance(5.0)
    reports: list[SystemHealthReport] = []
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            for _ in range(100):
                reports.append(h.get_system_health())
                h.record_snapshot()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=scrape)
    t.start()
    t.join(10)
    assert not errors
    assert {r.status for r in reports} == {H}  # the window has passed: reported as held
    assert h._st is before  # nothing was committed by reading
    assert fired == [C, C]  # and no callback ran on the reading thread


@settings(max_examples=300, deadline=None)
@given(
    weights=st.lists(st.integers(1, 999), min_size=1, max_size=12),
    states=st.data(),
    thresholds=st.tuples(st.integers(0, 100), st.integers(0, 100)).map(sorted),
)
def test_property_status_is_the_exact_comparison_of_decimal_weights(
    weights: list[int], states: st.DataObject, thresholds: list[int]
) -> None:
    # Weights with up to three decimals (0.001-0.999), thresholds in hundredths.
    critical, degraded = (Fraction(t, 100) for t in thresholds)
    cfg = HealthAggregatorConfig(
        degraded_threshold=float(degraded),
        critical_threshold=float(critical),
        stabilization_window_s=0,
    )
    clock = FakeClock()
    h = HealthAggregator(cfg, clock=clock)
    kinds = states.draw(
        st.lists(st.sampled_from("CHOF"), min_size=len(weights), max_size=len(weights))
    )
    closed = half = Fraction(0)
    for i, (w, kind) in enumerate(zip(weights, kinds, strict=True)):
        b = CircuitBreaker(f"b{i}", clock=clock)
        h.register_circuit_breaker(b.name, b, weight=w / 1000)
        if kind == "H":
            b._transition(b._state.OPEN, "t")
            b._transition(b._state.HALF_OPEN, "t")
            half += Fraction(w, 1000)
        elif kind == "O":
            b._transition(b._state.OPEN, "t")
        elif kind == "F":
            b.force_open()
        else:
            closed += Fraction(w, 1000)
    exact = (closed + half / 2) / Fraction(sum(weights), 1000)
    want = H if exact >= degraded else D if exact >= critical else C
    report = h.get_system_health()
    assert report.status is want
    assert report.health_score == float(exact)


# --------------------------------------------------------------- review: anti-flapping model


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 1.999, 2.0, 2.001, 5.0])),
            st.tuples(st.just("set"), st.integers(0, 3), st.sampled_from("CHOF")),
            st.tuples(st.just("unregister"), st.integers(0, 3)),
            st.tuples(st.just("register"), st.integers(0, 3)),
        ),
        max_size=40,
    ),
    weights=st.lists(st.sampled_from([0.1, 0.3, 1 / 3, 0.7, 1.0]), min_size=4, max_size=4),
)
def test_property_reported_status_obeys_the_anti_flapping_rules(
    ops: list[tuple], weights: list[float]
) -> None:
    # The documented rules, checked against the observed history of the computed status:
    # CRITICAL is reported at once; any other reported change (other than by
    # registration) needs the computed status to have held for the whole window; and a
    # computed status that held for the whole window is the reported one.
    window = 2.0
    clock = FakeClock()
    h = HealthAggregator(HealthAggregatorConfig(stabilization_window_s=window), clock=clock)
    bs = [
        CircuitBreaker(f"b{i}", CircuitBreakerConfig(open_duration_s=10**6), clock=clock)
        for i in range(4)
    ]
    for b, w in zip(bs, weights, strict=True):
        h.register_circuit_breaker(b.name, b, weight=w)
    computed_since = clock.now()  # when the computed status last changed
    last = h.get_system_health()
    for op in ops:
        # Unregistering an unknown name changes nothing; registering replaces (a change).
        configuration = op[0] == "register" or (
            op[0] == "unregister" and bs[op[1]].name in h.breakers
        )
        if op[0] == "advance":
            clock.advance(op[1])
        elif op[0] == "set":  # one legal transition per step (or none)
            b = bs[op[1]]
            new = {"C": CircuitState.CLOSED, "H": CircuitState.HALF_OPEN}.get(op[2])
            new = new or {"O": CircuitState.OPEN, "F": CircuitState.FORCED_OPEN}[op[2]]
            if new in LEGAL_TRANSITIONS[b._state]:
                b._transition(new, "t")
        elif op[0] == "unregister":
            h.unregister_circuit_breaker(bs[op[1]].name)
        else:
            h.register_circuit_breaker(bs[op[1]].name, bs[op[1]], weight=weights[op[1]])
        report = h.get_system_health()
        assert report.status is h.status
        if report.computed_status is not last.computed_status:
            computed_since = clock.now()
        held = clock.now() - computed_since
        if report.computed_status is C:
            assert report.status is C
        elif held >= window:
            assert report.status is report.computed_status
        if report.status is not last.status and not configuration:
            assert report.status is C or (
                report.status is report.computed_status and held >= window
            ), (op, last, report)
        if configuration:
            assert report.status is report.computed_status
            computed_since = clock.now() - window  # registration reports at once
        last = report


@settings(max_examples=300, deadline=None)
@given(
    weights=st.lists(st.integers(1, 999), min_size=1, max_size=12),
    kinds=st.data(),
    abort_below=st.integers(0, 100),
)
def test_property_the_chaos_guard_trips_exactly_below_its_threshold(
    weights: list[int], kinds: st.DataObject, abort_below: int
) -> None:
    # The published float score against the guard's float threshold: a score exactly
    # equal to abort_below never trips it (both are the same decimal rounded once), and
    # any score below it does. Checked for weights with up to three decimals.
    threshold = Fraction(abort_below, 100)
    clock = FakeClock()
    h = HealthAggregator(HealthAggregatorConfig(stabilization_window_s=0), clock=clock)
    states = kinds.draw(
        st.lists(st.sampled_from("CHO"), min_size=len(weights), max_size=len(weights))
    )
    for i, (w, kind) in enumerate(zip(weights, states, strict=True)):
        b = CircuitBreaker(f"b{i}", clock=clock)
        h.register_circuit_breaker(b.name, b, weight=w / 1000)
        if kind in "HO":
            b._transition(CircuitState.OPEN, "t")
        if kind == "H":
            b._transition(CircuitState.HALF_OPEN, "t")
    published = h.get_system_health().health_score
    trips = health_trips_guard(published, True, float(threshold))
    assert trips == (h.exact_health_score < threshold) or threshold == 0
