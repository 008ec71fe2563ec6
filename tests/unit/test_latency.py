"""Latency histograms of the guard: exact buckets, windows, fault separation, document."""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from collections.abc import Awaitable, Callable
from fractions import Fraction

import pytest

from antifragile.fleet_health import finished_traffic
from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitOpenError
from antifragile.inprocess.guard import Guard
from antifragile.inprocess.latency import (
    BOUNDS_NS,
    SLOTS,
    WindowCounts,
    bucket_of_ms,
    bucket_of_ns,
    fold,
    window_start_of,
)
from antifragile.inprocess.traffic import TrafficWindows
from antifragile.models.learning import (
    LATENCY_BUCKETS,
    LatencyHistogram,
    TrafficObservation,
    latency_bounds_ms,
)

BOUNDS = latency_bounds_ms()


class NsClock:
    """A nanosecond clock that advances only when told."""

    def __init__(self) -> None:
        self.now = 10**15

    def __call__(self) -> int:
        return self.now


# ------------------------------------------------------------------ buckets


def test_bounds_ns_are_the_exact_floors_of_the_float_bounds() -> None:
    for b, n in zip(BOUNDS, BOUNDS_NS, strict=True):
        assert n == math.floor(Fraction(b) * 10**6)
        assert Fraction(n, 10**6) <= Fraction(b) < Fraction(n + 1, 10**6)


@pytest.mark.parametrize(
    ("ns", "bucket"),
    [
        (0, 0),
        (1, 0),
        (100_000, 0),  # 0.1 ms: exactly the first bound (the float 0.1 is a bit above)
        (100_001, 1),
        (BOUNDS_NS[1], 1),
        (BOUNDS_NS[1] + 1, 2),
        (BOUNDS_NS[40], 40),
        (BOUNDS_NS[40] + 1, 41),
        ((1 << 30) - 1, bisect.bisect_left(BOUNDS_NS, (1 << 30) - 1)),  # table's last cell
        (1 << 30, bisect.bisect_left(BOUNDS_NS, 1 << 30)),  # first value past the table
        (BOUNDS_NS[-1], LATENCY_BUCKETS - 1),
        (BOUNDS_NS[-1] + 1, LATENCY_BUCKETS),  # overflow slot, folded into the last
        (10**15, LATENCY_BUCKETS),
    ],
)
def test_bucket_of_ns_table(ns: int, bucket: int) -> None:
    assert bucket_of_ns(ns) == bucket


def test_bucket_of_ns_equals_bisect_at_every_bound_and_at_random() -> None:
    rng = random.Random(14)
    values = [n + d for n in BOUNDS_NS for d in (-1, 0, 1)]
    values += [c << 14 for c in range(0, 1 << 16, 97)] + [(c << 14) - 1 for c in range(1, 999)]
    values += [rng.randrange(0, 1 << 37) for _ in range(50_000)]
    for ns in values:
        assert bucket_of_ns(ns) == bisect.bisect_left(BOUNDS_NS, ns), ns


def test_bucket_of_ms_at_bounds() -> None:
    for i, b in enumerate(BOUNDS):
        assert bucket_of_ms(b) == i
        assert bucket_of_ms(math.nextafter(b, math.inf)) == min(i + 1, LATENCY_BUCKETS - 1)
    assert bucket_of_ms(0.0) == 0
    assert bucket_of_ms(1e12) == LATENCY_BUCKETS - 1


@pytest.mark.parametrize(
    ("counts", "folded"),
    [
        ([0] * SLOTS, []),
        ([1] + [0] * (SLOTS - 1), [1]),
        ([0, 2, 0, 3] + [0] * (SLOTS - 4), [0, 2, 0, 3]),
        ([0] * (SLOTS - 1) + [5], [0] * (LATENCY_BUCKETS - 1) + [5]),
        ([0] * (SLOTS - 2) + [1, 5], [0] * (LATENCY_BUCKETS - 1) + [6]),
    ],
)
def test_fold(counts: list[int], folded: list[int]) -> None:
    assert fold(counts) == folded
    LatencyHistogram(counts=folded)  # a valid contract value


@pytest.mark.parametrize(
    ("now", "window_s", "start"),
    [(0.0, 60.0, 0.0), (59.999, 60.0, 0.0), (60.0, 60.0, 60.0), (125.0, 60.0, 120.0)],
)
def test_window_start_is_aligned(now: float, window_s: float, start: float) -> None:
    assert window_start_of(now, window_s) == start


# ------------------------------------------------------------------ recording by the guard


def _guard(clock: NsClock, **kw: object) -> Guard:
    return Guard("dep", CircuitBreaker("dep", CircuitBreakerConfig(**kw)), ns_clock=clock)  # type: ignore[arg-type]


def _taking(clock: NsClock, ns: int, fail: bool = False) -> Callable[[], Awaitable[int]]:
    async def call() -> int:
        clock.now += ns
        if fail:
            raise ValueError("dependency failed")
        return 1

    return call


def _only(counts: WindowCounts) -> dict[int, int]:
    return {i: c for i, c in enumerate(counts.latency) if c}


async def test_guard_call_counts_each_duration_in_its_exact_bucket() -> None:
    clock = NsClock()
    guard = _guard(clock)
    for ns in (100_000, 100_001, BOUNDS_NS[10], BOUNDS_NS[10] + 1, 2 * 10**9):
        await guard.call(_taking(clock, ns))
    with pytest.raises(ValueError):
        await guard.call(_taking(clock, BOUNDS_NS[20], fail=True))
    assert _only(guard.traffic) == {
        0: 1,
        1: 1,
        10: 1,
        11: 1,
        bisect.bisect_left(BOUNDS_NS, 2 * 10**9): 1,
        20: 1,
    }
    assert (guard.traffic.calls, guard.traffic.failures) == (6, 1)
    assert guard.under_fault.calls == 0


async def test_async_with_plain_and_slow_paths_and_overlapping_tasks() -> None:
    clock = NsClock()
    guard = _guard(clock)
    async with guard:
        clock.now += BOUNDS_NS[5]
    with pytest.raises(KeyError):
        async with guard:
            clock.now += BOUNDS_NS[6]
            raise KeyError("x")
    # Overlapping entries in two tasks, leaving in the other order than they entered.
    go_a, go_b = asyncio.Event(), asyncio.Event()

    async def task(event: asyncio.Event, other: asyncio.Event | None) -> None:
        async with guard:
            if other is not None:
                other.set()
            await event.wait()

    a = asyncio.create_task(task(go_a, None))
    await asyncio.sleep(0)  # a entered at t
    clock.now += BOUNDS_NS[30]
    b = asyncio.create_task(task(go_b, None))
    await asyncio.sleep(0)  # b entered at t + bound30
    clock.now += BOUNDS_NS[2]
    go_b.set()
    await b  # b: bound2
    clock.now += BOUNDS_NS[3]
    go_a.set()
    await a  # a: bound30 + bound2 + bound3
    long = bucket_of_ns(BOUNDS_NS[30] + BOUNDS_NS[2] + BOUNDS_NS[3])
    assert _only(guard.traffic) == {5: 1, 6: 1, 2: 1, long: 1}
    assert guard.traffic.failures == 1
    # Slow path (a timeout configured): same counts.
    guard.timeout_s = 5.0
    async with guard:
        clock.now += BOUNDS_NS[7]
    await guard.call(_taking(clock, BOUNDS_NS[8]))
    assert guard.traffic.latency[7] == 1 and guard.traffic.latency[8] == 1
    assert guard.traffic.calls == 6


async def test_refused_calls_are_not_counted_and_openings_are() -> None:
    clock = NsClock()
    guard = _guard(clock, failure_threshold=2, minimum_calls=2, window_size=2)
    for _ in range(2):
        with pytest.raises(ValueError):
            await guard.call(_taking(clock, 10, fail=True))
    with pytest.raises(CircuitOpenError):
        await guard.call(_taking(clock, 10))
    assert (guard.traffic.calls, guard.traffic.failures, guard.traffic.breaker_openings) == (
        2,
        2,
        1,
    )


class _Fault:
    def __init__(self) -> None:
        self.spec = type("Spec", (), {"experiment_id": "chaos-1"})()

    async def apply(self, guard: Guard) -> None:
        return None

    def on_install(self, guard: Guard) -> None:
        return None

    def on_remove(self, guard: Guard) -> None:
        return None


async def test_calls_under_a_fault_are_kept_apart() -> None:
    clock = NsClock()
    guard = _guard(clock)
    await guard.call(_taking(clock, BOUNDS_NS[3]))
    guard.install_fault(_Fault())
    await guard.call(_taking(clock, BOUNDS_NS[9]))
    async with guard:
        clock.now += BOUNDS_NS[9]
    guard.install_fault(None)
    await guard.call(_taking(clock, BOUNDS_NS[4]))
    assert _only(guard.traffic) == {3: 1, 4: 1}
    assert _only(guard.under_fault) == {9: 2}
    assert guard.under_fault.experiments == {"chaos-1"}


async def test_memory_is_bounded() -> None:
    clock = NsClock()
    guard = _guard(clock)
    rng = random.Random(1)
    for _ in range(20_000):
        await guard.call(_taking(clock, rng.randrange(0, 1 << 40)))
        async with guard:
            clock.now += rng.randrange(0, 1 << 20)
    assert len(guard.traffic.latency) == SLOTS
    assert guard.traffic.calls == 40_000
    assert guard._lat_anon == -1 and not guard._lat_tasks


# ------------------------------------------------------------------ windows and document


async def test_windows_rotate_and_the_document_is_a_traffic_observation() -> None:
    clock = NsClock()
    guard = _guard(clock)
    wall = [1_000_000_030.0]
    windows = TrafficWindows(lambda: {"dep": guard}, "inst-1", window_s=60.0, wall=lambda: wall[0])
    assert windows.window_start == 1_000_000_020.0
    await guard.call(_taking(clock, BOUNDS_NS[12]))
    doc = windows.document()
    current = TrafficObservation.model_validate(doc["dependencies"]["dep"]["current"])
    assert (current.calls, current.window_s, current.latency.counts[-1]) == (1, 60.0, 1)
    assert current.source_id.startswith("inst-1/")
    assert doc["dependencies"]["dep"]["previous"] is None
    assert doc["dependencies"]["dep"]["under_fault"] is None
    guard.install_fault(_Fault())
    await guard.call(_taking(clock, BOUNDS_NS[1]))
    wall[0] += 60.0
    windows.rotate()
    doc = windows.document()
    entry = doc["dependencies"]["dep"]
    assert entry["current"]["calls"] == 0
    assert entry["under_fault"]["experiments"] == ["chaos-1"]  # still installed
    assert entry["previous"]["calls"] == 1
    assert entry["previous_under_fault"]["calls"] == 1
    assert entry["previous_under_fault"]["kind"] == "under_fault"
    observations = finished_traffic({"traffic": doc})
    assert [o.calls for o in observations] == [1]
    assert observations[0].window_start.timestamp() == 1_000_000_020.0
    assert finished_traffic({}) == []
