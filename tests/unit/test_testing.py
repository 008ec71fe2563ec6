"""antifragile.testing: the fake clock drives the in-process parts, eventually() polls to a
deadline and reports the last failure, and breaker changes are captured in order."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time

import pytest

from antifragile.inprocess.breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
)
from antifragile.inprocess.health import HealthAggregator, HealthAggregatorConfig
from antifragile.inprocess.runtime import Runtime
from antifragile.testing import (
    BreakerChanges,
    FakeClock,
    capture_breaker_changes,
    eventually,
    eventually_sync,
)

# ---------------------------------------------------------------------------- FakeClock


def test_fake_clock_moves_only_when_advanced() -> None:
    clock = FakeClock()
    assert clock.now() == clock() == 1000.0
    assert clock.advance(2.5) == 1002.5
    assert clock() == clock.now() == 1002.5
    assert clock.advance(0) == 1002.5
    assert FakeClock(start=0.0)() == 0.0


@pytest.mark.parametrize("seconds", [-0.001, math.nan, math.inf])
def test_fake_clock_never_goes_back_nor_jumps_to_infinity(seconds: float) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(seconds)
    assert clock() == 1000.0


def test_fake_clock_refuses_a_non_finite_start() -> None:
    with pytest.raises(ValueError, match="finite"):
        FakeClock(math.nan)


def test_fake_clock_can_be_set_back_on_purpose() -> None:
    clock = FakeClock()
    clock.set(990.5)
    assert clock() == 990.5
    with pytest.raises(ValueError, match="finite"):
        clock.set(math.inf)
    assert repr(clock) == "FakeClock(990.5)"


async def test_fake_clock_sleep_advances_instead_of_waiting() -> None:
    clock = FakeClock()
    started = time.monotonic()
    await clock.sleep(3600)
    await clock.sleep(-1)  # counts as 0, like asyncio.sleep
    assert clock() == 4600.0
    assert time.monotonic() - started < 1.0


async def test_fake_clock_drives_a_breakers_open_duration() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "db", CircuitBreakerConfig(failure_threshold=1, open_duration_s=30), clock=clock
    )
    breaker.on_error(breaker.acquire_permission(), 0.0, RuntimeError("down"))
    assert breaker.state is CircuitState.OPEN
    assert breaker.retry_after() == 30.0
    clock.advance(29.9)
    with pytest.raises(CircuitOpenError):
        breaker.acquire_permission()
    clock.advance(0.1)
    breaker.acquire_permission()  # the trial call
    assert breaker.state is CircuitState.HALF_OPEN


def test_fake_clock_drives_the_health_window() -> None:
    clock = FakeClock()
    health = HealthAggregator(HealthAggregatorConfig(stabilization_window_s=10), clock=clock)
    breaker = CircuitBreaker("db", clock=clock)
    health.register_circuit_breaker("db", breaker)
    breaker.force_open("test")
    critical = health.status
    breaker.reset("test")
    clock.advance(9.0)
    assert health.status == critical  # a recovery waits out the window
    clock.advance(1.0)
    assert health.status != critical


def test_fake_clock_fits_the_runtime() -> None:
    clock = FakeClock()
    runtime = Runtime(clock=clock, bridge=False, metering=False, fault_plane=False)
    breaker = runtime.guard("db").breaker
    breaker.force_open("test")
    clock.advance(7)
    assert breaker.retry_after() is None  # FORCED_OPEN waits for a reset, not for the clock
    assert runtime.health.record_snapshot().at == clock() == 1007.0


# ---------------------------------------------------------------------------- eventually


async def test_eventually_returns_the_first_truthy_result() -> None:
    calls: list[int] = []

    def check() -> list[int]:
        calls.append(1)
        return calls if len(calls) >= 3 else []

    assert await eventually(check, timeout=5, interval=0.001) == [1, 1, 1]


async def test_eventually_awaits_async_checks_and_assertions() -> None:
    box = {"n": 0}

    async def check() -> bool:
        box["n"] += 1
        assert box["n"] >= 2, "not yet"
        return True

    assert await eventually(check, timeout=5, interval=0.001) is True
    assert box["n"] == 2


async def test_eventually_fails_at_the_deadline_with_the_last_failure() -> None:
    box = {"n": 0}

    def check() -> bool:
        box["n"] += 1
        assert box["n"] < 0, f"attempt {box['n']}"
        return True

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"not reached within 0.2 s: .*attempt") as info:
        await eventually(check, timeout=0.2, interval=0.01)
    assert 0.2 <= time.monotonic() - started < 2.0
    assert isinstance(info.value.__cause__, AssertionError)
    assert f"attempt {box['n']}" in str(info.value)  # the last one, not the first
    assert box["n"] > 2


async def test_eventually_says_what_a_falsy_check_returned() -> None:
    with pytest.raises(AssertionError, match=r"^fault gone not reached .* returned None"):
        await eventually(lambda: None, timeout=0.05, interval=0.01, what="fault gone")
    with pytest.raises(AssertionError, match="returned 0"):
        await eventually(lambda: 0, timeout=0.05, interval=0.01)


async def test_eventually_checks_at_least_once_even_with_no_time() -> None:
    assert await eventually(lambda: "ok", timeout=0) == "ok"


async def test_eventually_lets_other_errors_through_unless_told_to_retry() -> None:
    def down() -> bool:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        await eventually(down, timeout=5)
    box = {"n": 0}

    def flaky() -> bool:
        box["n"] += 1
        if box["n"] < 3:
            raise ConnectionError("refused")
        return True

    assert await eventually(flaky, timeout=5, interval=0.001, retry_on=(ConnectionError,))
    with pytest.raises(AssertionError, match="ConnectionError"):
        await eventually(down, timeout=0.05, interval=0.01, retry_on=(ConnectionError,))


async def test_eventually_cancels_a_check_still_running_at_the_deadline() -> None:
    cancelled = asyncio.Event()

    async def hangs() -> bool:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return True

    with pytest.raises(AssertionError, match="still running at the deadline"):
        await eventually(hangs, timeout=0.1)
    assert cancelled.is_set()


async def test_a_checks_own_timeout_is_not_taken_for_the_deadline() -> None:
    async def times_out() -> bool:
        async with asyncio.timeout(0.001):
            await asyncio.sleep(1)
        return True

    with pytest.raises(TimeoutError):
        await eventually(times_out, timeout=5)


@pytest.mark.parametrize("bad", [{"timeout": -1}, {"interval": math.nan}, {"timeout": math.inf}])
async def test_eventually_refuses_bad_bounds(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        await eventually(lambda: True, **bad)
    with pytest.raises(ValueError, match="finite number of seconds"):
        eventually_sync(lambda: True, **bad)


def test_eventually_sync_polls_without_a_loop() -> None:
    started = time.monotonic()
    assert eventually_sync(lambda: time.monotonic() - started > 0.05, interval=0.01)
    with pytest.raises(AssertionError, match=r"not reached within 0\.05 s: the check returned"):
        eventually_sync(lambda: False, timeout=0.05, interval=0.01)
    box = {"n": 0}

    def flaky() -> str:
        box["n"] += 1
        if box["n"] == 1:
            raise OSError("not yet")
        assert box["n"] >= 3
        return "done"

    assert eventually_sync(flaky, timeout=5, interval=0.001, retry_on=(OSError,)) == "done"
    with pytest.raises(OSError):
        eventually_sync(lambda: (_ for _ in ()).throw(OSError("x")), timeout=5)
    with pytest.raises(AssertionError, match=r"^ready not reached"):
        eventually_sync(lambda: 0, timeout=0, what="ready")


# ---------------------------------------------------------------------------- breaker capture


def test_breaker_changes_are_captured_in_order_with_reasons() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "db", CircuitBreakerConfig(failure_threshold=1, open_duration_s=5), clock=clock
    )
    with capture_breaker_changes(breaker) as seen:
        assert isinstance(seen, BreakerChanges)
        breaker.on_error(breaker.acquire_permission(), 0.0, RuntimeError("down"))
        clock.advance(5)
        breaker.on_success(breaker.acquire_permission())
    assert seen.transitions == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]
    assert seen.states == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]
    assert len(seen) == 3 and [c.new for c in seen] == seen.states
    assert seen.reasons[0] == "1 consecutive failures"
    assert [c.at for c in seen] == [1000.0, 1005.0, 1005.0]
    assert {c.name for c in seen} == {"db"}


def test_capture_stops_at_the_end_of_the_block_and_keeps_what_it_saw() -> None:
    breaker = CircuitBreaker("db")
    with capture_breaker_changes(breaker) as seen:
        breaker.force_open("incident")
    breaker.reset("over")
    assert seen.transitions == [(CircuitState.CLOSED, CircuitState.FORCED_OPEN)]
    assert seen.reasons == ["incident"]
    seen.clear()
    assert len(seen) == 0


def test_capture_leaves_other_listeners_alone() -> None:
    breaker = CircuitBreaker("db")
    others: list[CircuitState] = []
    breaker.on_state_change(lambda c: others.append(c.new))
    seen = BreakerChanges(breaker)
    seen.attach()
    seen.attach()  # idempotent: one listener, one record per change
    breaker.force_open("x")
    seen.detach()
    seen.detach()
    breaker.reset("y")
    assert seen.states == [CircuitState.FORCED_OPEN]
    assert others == [CircuitState.FORCED_OPEN, CircuitState.CLOSED]


# ---------------------------------------------------------------------------- import cost


def test_importing_the_helpers_loads_neither_redis_nor_the_temporal_client() -> None:
    code = (
        "import sys, antifragile.testing\n"
        "bad = [m for m in sys.modules if m == 'redis' or m.startswith(('redis.',"
        " 'temporalio.client'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_eventually_sync_refuses_an_async_check() -> None:
    """A coroutine object is truthy: an async check must not pass without ever running."""
    ran = []

    async def breaker_open() -> bool:
        ran.append(True)
        return False

    with pytest.raises(TypeError, match="async check"):
        eventually_sync(breaker_open, timeout=0.05, retry_on=(Exception,))
    assert ran == []
