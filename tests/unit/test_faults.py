"""Fault kinds at the call site, through the real Guard and FaultTable: accuracy, blast
radius, and everything held or forced released on removal."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState
from antifragile.inprocess.fault_table import FaultTable
from antifragile.inprocess.faults import ChaosFault, InjectedFault, ResourceFault, build_fault
from antifragile.inprocess.guard import ConcurrencyLimitError, Guard
from antifragile.models.chaos import FaultSpec
from antifragile.models.chaos_scenario import MEMORY_CAP_MB, ChaosType, ResourceType
from antifragile.testing import eventually


def make_guard(name: str, **kw: Any) -> Guard:
    # A breaker that never opens by itself: these tests count what the fault does.
    config = CircuitBreakerConfig(ignored_exceptions=(InjectedFault,))
    return Guard(name, CircuitBreaker(name, config), **kw)


def spec(chaos_type: ChaosType, **kw: Any) -> FaultSpec:
    base: dict[str, Any] = {
        "experiment_id": "chaos-t-1",
        "chaos_type": chaos_type,
        "target": "db",
        "blast_radius": ["db"],
    }
    base.update(kw)
    return FaultSpec.model_validate(base)


def setup(fault: ChaosFault, *guards: Guard) -> FaultTable:
    table = FaultTable()
    for g in guards:
        table.attach(g)
    for t in fault.spec.blast_radius:
        table.install(t, fault)
    return table


async def ok() -> str:
    return "ok"


async def outcome(guard: Guard) -> str:
    try:
        await guard.call(ok)
        return "ok"
    except InjectedFault as exc:
        return type(exc).__mro__[1].__name__
    except CircuitOpenError:
        return "open"


async def test_error_rate_half_lands_within_five_points_over_1000_calls() -> None:
    fault = build_fault(spec(ChaosType.ERROR, error_rate=0.5), rng=random.Random(7))
    db = make_guard("db")
    setup(fault, db)
    results = [await outcome(db) for _ in range(1000)]
    share = results.count("RuntimeError") / 1000
    assert abs(share - 0.5) <= 0.05
    assert fault.stats.seen == 1000 and fault.stats.affected == results.count("RuntimeError")


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_injection_rate_is_the_share_of_calls_affected(seed: int) -> None:
    fault = build_fault(
        spec(ChaosType.NETWORK_PARTITION, injection_rate=0.3), rng=random.Random(seed)
    )
    db = make_guard("db")
    setup(fault, db)
    results = [await outcome(db) for _ in range(1000)]
    assert abs(results.count("ConnectionError") / 1000 - 0.3) <= 0.05


async def test_error_kind_is_the_configured_exception() -> None:
    fault = build_fault(spec(ChaosType.ERROR, error_kind="connection"))
    db = make_guard("db")
    setup(fault, db)
    with pytest.raises(ConnectionError, match="injected error calling db"):
        await db.call(ok)


async def test_latency_100ms_is_within_20ms() -> None:
    fault = build_fault(spec(ChaosType.LATENCY, latency_ms=100))
    db = make_guard("db")
    setup(fault, db)

    async def timed() -> float:
        start = time.perf_counter()
        await db.call(ok)
        return (time.perf_counter() - start) * 1000

    delays = await asyncio.gather(*(timed() for _ in range(50)))
    assert all(80 <= d <= 120 for d in delays), delays


async def test_latency_jitter_spreads_around_the_mean() -> None:
    fault = build_fault(spec(ChaosType.LATENCY, latency_ms=100, jitter_ms=40), rng=random.Random(3))
    db = make_guard("db")
    setup(fault, db)

    async def timed() -> float:
        start = time.perf_counter()
        await db.call(ok)
        return (time.perf_counter() - start) * 1000

    delays = await asyncio.gather(*(timed() for _ in range(200)))
    assert min(delays) >= 59 and max(delays) <= 150
    assert abs(sum(delays) / len(delays) - 100) <= 20
    assert max(delays) - min(delays) > 40  # it really is spread


async def test_targets_outside_the_blast_radius_are_never_touched() -> None:
    fault = build_fault(spec(ChaosType.NETWORK_PARTITION, blast_radius=["db", "cache"]))
    db, cache, other = make_guard("db"), make_guard("cache"), make_guard("payments")
    setup(fault, db, cache, other)
    assert {await outcome(db) for _ in range(50)} == {"ConnectionError"}
    assert {await outcome(cache) for _ in range(50)} == {"ConnectionError"}
    assert {await outcome(other) for _ in range(500)} == {"ok"}
    assert other.fault is None
    await fault.apply(other)  # even handed the wrong guard, it does nothing
    assert fault.stats.seen == 100


async def test_timeout_hangs_until_the_guard_timeout_then_raises() -> None:
    fault = build_fault(spec(ChaosType.TIMEOUT, timeout_ms=5000))
    db = make_guard("db", timeout_s=0.2)
    setup(fault, db)
    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        await db.call(ok)
    assert 0.18 <= time.perf_counter() - start < 0.5


async def test_timeout_without_a_guard_timeout_uses_timeout_ms() -> None:
    fault = build_fault(spec(ChaosType.TIMEOUT, timeout_ms=150))
    db = make_guard("db")
    setup(fault, db)
    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        await db.call(ok)
    assert 0.14 <= time.perf_counter() - start < 0.4


async def test_breaker_is_forced_open_and_restored_on_removal() -> None:
    fault = build_fault(spec(ChaosType.CIRCUIT_BREAKER))
    db = make_guard("db")
    table = setup(fault, db)
    assert db.breaker.state is CircuitState.FORCED_OPEN
    assert await outcome(db) == "open"
    assert fault.stats.breakers == {"db: FORCED_OPEN"}
    table.remove("db")
    assert db.breaker.state is CircuitState.CLOSED
    assert await outcome(db) == "ok"


async def test_a_breaker_forced_open_by_someone_else_stays_open() -> None:
    db = make_guard("db")
    db.breaker.force_open("operator")
    fault = build_fault(spec(ChaosType.CIRCUIT_BREAKER))
    table = setup(fault, db)
    table.remove("db")
    assert db.breaker.state is CircuitState.FORCED_OPEN


async def test_memory_exhaustion_holds_bounded_memory_once_and_releases_it() -> None:
    fault = build_fault(
        spec(
            ChaosType.RESOURCE_EXHAUSTION,
            resource_type=ResourceType.MEMORY,
            resource_level=0.1,
            blast_radius=["db", "cache"],
        )
    )
    assert isinstance(fault, ResourceFault)
    db, cache = make_guard("db"), make_guard("cache")
    table = setup(fault, db, cache)
    size = int(0.1 * MEMORY_CAP_MB * 1024 * 1024)
    # Filled in a background thread, never on the event loop: the loop keeps running.
    # A thread fills it: nothing on this loop to wait on but time.
    await eventually(lambda: fault.memory_held_bytes >= size, timeout=10, interval=0.01)
    assert fault.memory_held_bytes == size
    table.remove("db")
    assert fault.memory_held_bytes > 0  # still held for cache
    table.remove("cache")
    assert fault.memory_held_bytes == 0


async def test_cpu_exhaustion_burns_in_a_thread_until_removed() -> None:
    fault = build_fault(
        spec(ChaosType.RESOURCE_EXHAUSTION, resource_type=ResourceType.CPU, resource_level=0.3)
    )
    assert isinstance(fault, ResourceFault)
    db = make_guard("db")
    table = setup(fault, db)
    assert fault.cpu_burning
    start = time.thread_time()
    await asyncio.sleep(0.3)
    assert time.thread_time() - start < 0.1  # the burn is in another thread
    table.remove("db")
    assert not fault.cpu_burning


async def test_connection_exhaustion_holds_a_share_of_concurrency_slots() -> None:
    fault = build_fault(
        spec(
            ChaosType.RESOURCE_EXHAUSTION,
            resource_type=ResourceType.CONNECTIONS,
            resource_level=0.75,
        )
    )
    db = make_guard("db", max_concurrency=4)
    table = setup(fault, db)
    assert db.in_flight == 3
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    first = asyncio.create_task(db.call(slow))
    await asyncio.sleep(0.01)
    with pytest.raises(ConcurrencyLimitError):
        await db.call(ok)
    gate.set()
    await first
    table.remove("db")
    assert db.in_flight == 0
    results = await asyncio.gather(*(db.call(ok) for _ in range(4)))
    assert results == ["ok"] * 4


async def test_an_expired_fault_affects_nothing_and_reports_itself() -> None:
    now = [100.0]
    expired: list[ChaosFault] = []
    fault = build_fault(
        spec(ChaosType.NETWORK_PARTITION),
        expires_at=101.0,
        on_expired=expired.append,
        clock=lambda: now[0],
    )
    db = make_guard("db")
    setup(fault, db)
    assert await outcome(db) == "ConnectionError"
    now[0] = 101.5
    assert await outcome(db) == "ok"
    assert expired == [fault]


# ---------------------------------------------------------------- issue 11, item 13


async def test_latency_wait_ends_when_the_lease_expires_unrenewed() -> None:
    expired: list[ChaosFault] = []
    fault = build_fault(
        spec(ChaosType.LATENCY, latency_ms=600_000),
        expires_at=time.monotonic() + 0.2,
        on_expired=expired.append,
    )
    db = make_guard("db")
    setup(fault, db)
    start = time.perf_counter()
    assert await asyncio.wait_for(db.call(ok), 5) == "ok"
    assert 0.15 <= time.perf_counter() - start < 4
    assert fault.expired and expired == [fault]


async def test_latency_is_capped_at_the_experiment_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from antifragile.inprocess import faults

    monkeypatch.setattr(faults, "MAX_INJECTED_WAIT_S", 0.1)
    fault = build_fault(spec(ChaosType.LATENCY, latency_ms=600_000))
    db = make_guard("db")
    setup(fault, db)
    start = time.perf_counter()
    assert await asyncio.wait_for(db.call(ok), 5) == "ok"
    assert time.perf_counter() - start < 4


async def test_timeout_hang_ends_when_the_fault_is_removed() -> None:
    fault = build_fault(spec(ChaosType.TIMEOUT, timeout_ms=600_000))
    db = make_guard("db")
    table = setup(fault, db)
    call = asyncio.create_task(db.call(ok))
    await asyncio.sleep(0.05)
    assert not call.done()
    table.remove("db")
    assert await asyncio.wait_for(call, 5) == "ok"


async def test_timeout_fault_under_a_guard_timeout_raises_the_guards_timeout_error() -> None:
    fault = build_fault(spec(ChaosType.TIMEOUT, timeout_ms=600_000))
    db = make_guard("db", timeout_s=0.1)
    setup(fault, db)
    start = time.perf_counter()
    with pytest.raises(TimeoutError) as info:
        await db.call(ok)
    assert not isinstance(info.value, InjectedFault)  # the guard's own timeout fired
    assert time.perf_counter() - start < 3


@pytest.mark.parametrize("style", ["call", "async_with"])
async def test_an_injected_error_is_a_breaker_failure_whatever_failure_exceptions_says(
    style: str,
) -> None:
    # A breaker that counts only network errors saw an injected RuntimeError as "the
    # dependency answered" (a success): the ERROR experiment never opened it, so it
    # showed resilience the service does not have. An injected fault is a failure of
    # the dependency by definition; only ignored_exceptions can exclude it.
    config = CircuitBreakerConfig(failure_threshold=3, failure_exceptions=(ConnectionError,))
    g = Guard("db", CircuitBreaker("db", config))
    setup(build_fault(spec(ChaosType.ERROR, error_kind="runtime", error_rate=1.0)), g)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            if style == "call":
                await g.call(ok)
            else:
                async with g:
                    pass
    assert g.breaker.state is CircuitState.OPEN

    # A real RuntimeError of the dependency still counts as it is configured: a success.
    real = CircuitBreaker("real", config)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await real.call(_raise_runtime)
    assert real.state is CircuitState.CLOSED and real.consecutive_failures == 0

    # ignored_exceptions still excludes injected errors (what make_guard does here).
    ignoring = make_guard("db")
    setup(build_fault(spec(ChaosType.ERROR, error_kind="runtime", error_rate=1.0)), ignoring)
    for _ in range(6):
        assert await outcome(ignoring) == "RuntimeError"
    assert ignoring.breaker.state is CircuitState.CLOSED


async def _raise_runtime() -> None:
    raise RuntimeError("business error")


async def test_a_fault_whose_install_fails_leaves_nothing_behind() -> None:
    # on_install registered its breaker listener and took the guard before the kind's
    # own setup raised; the table then dropped the fault without on_remove, so the
    # listener stayed on the breaker for ever (counting into the dead fault's stats).
    class Broken(ChaosFault):
        def _install(self, guard: Any) -> None:
            raise RuntimeError("cannot start the burner")

    g = make_guard("db")
    listeners_before = list(g.breaker._listeners._listeners)
    fault = Broken(spec(ChaosType.LATENCY, latency_ms=10))
    table = FaultTable()
    table.attach(g)
    with pytest.raises(RuntimeError, match="burner"):
        table.install("db", fault)
    assert g.fault is None and "db" not in table
    assert g.breaker._listeners._listeners == listeners_before
    assert not fault._guards and not fault._listeners and not fault._ended
    g.breaker.force_open()
    assert not fault.stats.breakers


# ---------------------------------------------------------------- issue 12, item 12
# Every refusal and every breaker opening is counted at the call site.


def opening_guard(name: str, clock: Any) -> Guard:
    """A breaker that opens at the first failure and stays OPEN 5 s of ``clock``."""
    config = CircuitBreakerConfig(failure_threshold=1, open_duration_s=5.0)
    return Guard(name, CircuitBreaker(name, config, clock=clock))


async def enter_and_leave(guard: Guard) -> str:
    try:
        async with guard:
            pass
        return "ok"
    except CircuitOpenError:
        return "open"


@pytest.mark.parametrize("style", ["call", "async with", "call with timeout"])
async def test_a_forced_open_breaker_counts_every_refused_call_as_affected(style: str) -> None:
    fault = build_fault(spec(ChaosType.CIRCUIT_BREAKER))
    db = make_guard("db", timeout_s=5.0) if style == "call with timeout" else make_guard("db")
    setup(fault, db)
    run = enter_and_leave if style == "async with" else outcome
    results = [await run(db) for _ in range(185)]
    assert results == ["open"] * 185
    assert fault.stats.affected == 185
    assert fault.stats.seen == 185 and fault.stats.refused == 185
    assert fault.stats.openings == {"db: FORCED_OPEN": 1}


async def test_refusals_after_the_fault_is_removed_count_nothing() -> None:
    fault = build_fault(spec(ChaosType.CIRCUIT_BREAKER))
    db = make_guard("db")
    table = setup(fault, db)
    assert await outcome(db) == "open"
    table.remove("db")
    db.breaker.force_open("operator")  # refusals now are the operator's
    assert [await outcome(db) for _ in range(10)] == ["open"] * 10
    assert (fault.stats.seen, fault.stats.affected, fault.stats.refused) == (1, 1, 1)


async def test_a_breaker_already_forced_open_refuses_calls_the_drill_did_not_affect() -> None:
    db = make_guard("db")
    db.breaker.force_open("operator")
    fault = build_fault(spec(ChaosType.CIRCUIT_BREAKER))
    setup(fault, db)
    assert [await outcome(db) for _ in range(7)] == ["open"] * 7
    # Seen and refused under the fault, but the operator's open breaker refused them.
    assert (fault.stats.seen, fault.stats.refused, fault.stats.affected) == (7, 7, 0)
    assert fault.stats.openings == {}


async def test_a_breaker_opening_k_times_under_an_error_fault_counts_k_openings(
    clock: Any,
) -> None:
    fault = build_fault(spec(ChaosType.ERROR, error_rate=1.0))
    db = opening_guard("db", clock)
    setup(fault, db)
    results: list[str] = []
    for _ in range(6):
        results.append(await outcome(db))  # the injected error opens it (a trial reopens it)
        results += [await outcome(db) for _ in range(3)]  # refused while OPEN
        clock.advance(5.0)  # open duration over: the next call is a trial
    assert results == (["RuntimeError"] + ["open"] * 3) * 6
    stats = fault.stats
    assert stats.openings == {"db: OPEN": 6}
    assert stats.breakers == {"db: OPEN"}  # distinct breakers, as before
    assert stats.refused == 18
    # The refusals are the fault's doing (it opened the breaker): affected too.
    assert stats.affected == 6 + 18 and stats.seen == 24


async def test_openings_take_bounded_memory_however_often_a_breaker_opens(clock: Any) -> None:
    fault = build_fault(spec(ChaosType.ERROR, error_rate=1.0, blast_radius=["db", "cache"]))
    db, cache = opening_guard("db", clock), opening_guard("cache", clock)
    setup(fault, db, cache)
    for _ in range(2000):
        await outcome(db)
        await outcome(cache)
        clock.advance(5.0)
    db.breaker.force_open("operator")
    assert fault.stats.openings == {"db: OPEN": 2000, "cache: OPEN": 2000, "db: FORCED_OPEN": 1}
    assert fault.stats.openings_to_flush() == fault.stats.openings
    fault.stats.flushed_openings = dict(fault.stats.openings)
    await outcome(db)  # refused: FORCED_OPEN
    cache.breaker.force_open("operator")
    assert fault.stats.openings_to_flush() == {"cache: FORCED_OPEN": 1}


async def test_calls_refused_for_the_slots_a_fault_holds_are_affected() -> None:
    fault = build_fault(
        spec(
            ChaosType.RESOURCE_EXHAUSTION,
            resource_type=ResourceType.CONNECTIONS,
            resource_level=1.0,
        )
    )
    db = make_guard("db", max_concurrency=2)
    setup(fault, db)
    for _ in range(5):
        with pytest.raises(ConcurrencyLimitError):
            await db.call(ok)
    assert [await enter_and_leave_limited(db) for _ in range(3)] == ["limit"] * 3
    assert (fault.stats.seen, fault.stats.refused, fault.stats.affected) == (8, 8, 8)


async def enter_and_leave_limited(guard: Guard) -> str:
    try:
        async with guard:
            pass
        return "ok"
    except ConcurrencyLimitError:
        return "limit"


async def test_a_refusal_after_the_lease_expired_drops_the_fault_and_counts_nothing() -> None:
    now = [100.0]
    expired: list[ChaosFault] = []
    fault = build_fault(
        spec(ChaosType.CIRCUIT_BREAKER),
        expires_at=101.0,
        on_expired=expired.append,
        clock=lambda: now[0],
    )
    db = make_guard("db")
    table = setup(fault, db)
    assert await outcome(db) == "open"
    now[0] = 101.5
    assert await outcome(db) == "open"  # refused before the guard could know
    assert expired == [fault] and fault.stats.affected == 1 and fault.stats.seen == 1
    table.remove("db")  # what the plane's on_expired does: the breaker is restored
    assert await outcome(db) == "ok"


async def test_a_fault_whose_refusal_hook_raises_leaves_the_refusal_as_the_outcome() -> None:
    class Noisy:
        async def apply(self, guard: Guard) -> None:
            return None

        def on_install(self, guard: Guard) -> None:
            guard.breaker.force_open("noisy")

        def on_remove(self, guard: Guard) -> None:
            guard.breaker.reset("noisy")

        def on_refused(self, guard: Guard, exc: BaseException) -> None:
            raise ValueError("broken counter")

    db = make_guard("db")
    table = FaultTable()
    table.attach(db)
    table.install("db", Noisy())
    assert await outcome(db) == "open"
    assert await enter_and_leave(db) == "open"


async def test_a_fault_without_a_refusal_hook_still_works() -> None:
    class Plain:
        async def apply(self, guard: Guard) -> None:
            return None

        def on_install(self, guard: Guard) -> None:
            guard.breaker.force_open("plain")

        def on_remove(self, guard: Guard) -> None:
            guard.breaker.reset("plain")

    db = make_guard("db")
    table = FaultTable()
    table.attach(db)
    table.install("db", Plain())
    assert await outcome(db) == "open"
    table.remove("db")
    assert await outcome(db) == "ok"
