"""CircuitBreaker: every transition with a fake clock, thresholds, listeners, call styles."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle

import pytest

from antifragile.breaker import (
    LEGAL_TRANSITIONS,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    IllegalTransitionError,
    StateChange,
)
from antifragile.errors import ConfigError
from tests.unit.conftest import FakeClock


class Boom(Exception):
    pass


async def ok() -> str:
    return "ok"


async def fail() -> None:
    raise Boom("down")


async def run(breaker: CircuitBreaker, succeed: bool) -> None:
    with contextlib.suppress(Boom):
        await breaker.call(ok if succeed else fail)


def make(clock: FakeClock, **kw: object) -> CircuitBreaker:
    return CircuitBreaker("dep", CircuitBreakerConfig(**kw), clock=clock)  # type: ignore[arg-type]


async def test_new_breaker_is_closed_and_passes_calls(clock: FakeClock) -> None:
    b = make(clock)
    assert b.state is CircuitState.CLOSED
    assert await b.call(ok) == "ok"


async def test_opens_after_default_five_consecutive_failures(clock: FakeClock) -> None:
    b = make(clock)
    for _ in range(4):
        await run(b, False)
    assert b.state is CircuitState.CLOSED
    await run(b, False)
    assert b.state is CircuitState.OPEN


async def test_success_resets_consecutive_count(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=3)
    for _ in range(5):
        await run(b, False)
        await run(b, True)
    assert b.state is CircuitState.CLOSED
    assert b.consecutive_failures == 0


async def test_opens_on_failure_rate_once_minimum_calls_reached(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1000, window_size=100, minimum_calls=20)
    # Alternate: 50 % failures but never 2 in a row.
    for i in range(19):
        await run(b, i % 2 == 0)
    assert b.state is CircuitState.CLOSED  # 19 calls < minimum
    await run(b, False)  # 20 calls, 10 failures = 50 %
    assert b.state is CircuitState.OPEN


async def test_failure_rate_below_threshold_stays_closed(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1000)
    for i in range(300):
        await run(b, i % 3 != 0)  # 33 % failures
    assert b.state is CircuitState.CLOSED
    assert 0.3 <= b.failure_rate <= 0.35


async def test_window_forgets_old_failures(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1000, window_size=10, minimum_calls=10)
    for _ in range(4):
        await run(b, False)
        await run(b, True)
    for _ in range(10):
        await run(b, True)
    assert b.failure_rate == 0.0
    assert b.calls_in_window == 10


async def test_open_refuses_calls_with_retry_after(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1, open_duration_s=30)
    await run(b, False)
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        await b.call(ok)
    assert info.value.state is CircuitState.OPEN
    assert info.value.retry_after_s == pytest.approx(20)
    assert "dep" in str(info.value)


async def test_open_moves_to_half_open_on_admission_after_open_duration(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1, open_duration_s=30)
    await run(b, False)
    clock.advance(29.9)
    assert b.state is CircuitState.OPEN
    clock.advance(0.1)
    assert b.state is CircuitState.OPEN  # a read never moves it (item 9)
    assert b.retry_after() == 0.0
    gate = asyncio.Event()
    trial = asyncio.create_task(b.call(gate.wait))
    await asyncio.sleep(0)
    assert b.state is CircuitState.HALF_OPEN
    gate.set()
    await trial
    assert b.state is CircuitState.CLOSED


async def test_half_open_success_closes(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1, open_duration_s=1)
    await run(b, False)
    clock.advance(1)
    assert await b.call(ok) == "ok"
    assert b.state is CircuitState.CLOSED


async def test_half_open_failure_reopens_for_a_full_duration(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1, open_duration_s=5)
    await run(b, False)
    clock.advance(5)
    await run(b, False)
    assert b.state is CircuitState.OPEN
    assert b.retry_after() == pytest.approx(5)


async def test_half_open_admits_at_most_max_concurrent_trial_calls(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1, open_duration_s=1, half_open_max_calls=2)
    await run(b, False)
    clock.advance(1)
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "ok"

    t1 = asyncio.create_task(b.call(slow))
    t2 = asyncio.create_task(b.call(slow))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError) as info:
        await b.call(ok)
    assert info.value.state is CircuitState.HALF_OPEN
    gate.set()
    assert await t1 == "ok"
    assert await t2 == "ok"
    assert b.state is CircuitState.CLOSED


async def test_cancelled_trial_call_frees_its_slot_without_deciding(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1, open_duration_s=1)
    await run(b, False)
    clock.advance(1)
    task = asyncio.create_task(b.call(asyncio.sleep, 10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is CircuitState.HALF_OPEN
    assert await b.call(ok) == "ok"
    assert b.state is CircuitState.CLOSED


async def test_idle_open_breaker_moves_to_half_open_by_timer() -> None:
    b = CircuitBreaker("dep", CircuitBreakerConfig(failure_threshold=1, open_duration_s=0.02))
    seen: list[StateChange] = []
    b.on_state_change(seen.append)
    await run(b, False)
    await asyncio.sleep(0.06)  # no call: only the loop timer can move it
    assert b._state is CircuitState.HALF_OPEN
    assert [c.new for c in seen] == [CircuitState.OPEN, CircuitState.HALF_OPEN]
    assert seen[1].reason == "open duration elapsed"


async def test_timer_waits_for_the_injected_clock(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1, open_duration_s=0.01)
    await run(b, False)
    await asyncio.sleep(0.03)  # loop time passed, fake clock did not
    assert b._state is CircuitState.OPEN
    clock.advance(1)
    await asyncio.sleep(0.03)
    assert b._state is CircuitState.HALF_OPEN


async def test_slow_calls_count_as_failures(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=2, slow_call_duration_s=0.5)

    async def slow() -> None:
        clock.advance(0.6)

    await b.call(slow)
    assert b.consecutive_failures == 1
    await b.call(slow)
    assert b.state is CircuitState.OPEN


async def test_cancellation_and_ignored_exceptions_do_not_count(clock: FakeClock) -> None:
    class NotFound(Exception):
        pass

    b = make(clock, failure_threshold=1, ignored_exceptions=(NotFound,))

    async def missing() -> None:
        raise NotFound

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(NotFound):
        await b.call(missing)
    with pytest.raises(asyncio.CancelledError):
        await b.call(cancelled)
    assert b.state is CircuitState.CLOSED


async def test_force_open_refuses_calls_until_reset_and_never_times_out(clock: FakeClock) -> None:
    b = make(clock, open_duration_s=1)
    b.force_open()
    clock.advance(3600)
    assert b.state is CircuitState.FORCED_OPEN
    with pytest.raises(CircuitOpenError):
        await b.call(ok)
    b.reset()
    assert b.state is CircuitState.CLOSED
    assert await b.call(ok) == "ok"


async def test_reset_from_open_closes_and_clears_counts(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=2)
    await run(b, False)
    await run(b, False)
    b.reset()
    assert b.state is CircuitState.CLOSED
    assert b.consecutive_failures == 0
    await run(b, False)
    assert b.state is CircuitState.CLOSED


def test_illegal_transitions_are_refused(clock: FakeClock) -> None:
    b = make(clock)
    with pytest.raises(IllegalTransitionError):
        b._transition(CircuitState.HALF_OPEN, "test")
    b.force_open()
    for target in (CircuitState.OPEN, CircuitState.HALF_OPEN):
        with pytest.raises(IllegalTransitionError):
            b._transition(target, "test")
    assert CircuitState.CLOSED not in LEGAL_TRANSITIONS[CircuitState.CLOSED]


async def test_async_with_records_success_and_failure(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=2)
    async with b:
        pass
    for _ in range(2):
        with pytest.raises(Boom):
            async with b:
                raise Boom
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        async with b:
            pass


async def test_decorates_async_and_sync_functions(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1)

    @b
    async def a(x: int) -> int:
        return x + 1

    @b
    def s(x: int) -> int:
        if x < 0:
            raise Boom
        return x * 2

    assert await a(1) == 2
    assert s(2) == 4
    assert a.__name__ == "a"
    with pytest.raises(Boom):
        s(-1)
    with pytest.raises(CircuitOpenError):
        s(1)


async def test_call_accepts_sync_functions(clock: FakeClock) -> None:
    b = make(clock)
    assert await b.call(lambda x: x * 3, 2) == 6


async def test_listeners_see_every_transition_with_reason(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1, open_duration_s=1)
    seen: list[tuple[CircuitState, CircuitState, str]] = []
    b.on_state_change(lambda c: seen.append((c.old, c.new, c.reason)))
    await run(b, False)
    clock.advance(1)
    await run(b, True)
    b.force_open()
    b.reset()
    assert [(o, n) for o, n, _ in seen] == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
        (CircuitState.CLOSED, CircuitState.FORCED_OPEN),
        (CircuitState.FORCED_OPEN, CircuitState.CLOSED),
    ]
    assert seen[0][2] == "1 consecutive failures"


async def test_raising_listener_is_logged_and_isolated(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    b = make(clock, failure_threshold=1)
    after: list[CircuitState] = []

    def bad(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    b.on_state_change(bad)
    b.on_state_change(lambda c: after.append(c.new))
    with caplog.at_level(logging.ERROR), pytest.raises(Boom):
        await b.call(fail)
    assert b.state is CircuitState.OPEN
    assert after == [CircuitState.OPEN]
    assert "listener" in caplog.text


async def test_slow_async_listener_runs_off_the_call_path(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    b = make(clock, failure_threshold=1)
    release = asyncio.Event()
    done: list[CircuitState] = []

    async def slow_listener(change: StateChange) -> None:
        await release.wait()
        done.append(change.new)
        raise RuntimeError("late failure")

    b.on_state_change(slow_listener)
    with pytest.raises(Boom):
        await asyncio.wait_for(b.call(fail), 1)  # returns although the listener blocks
    assert done == []
    assert len(b._async_listener_tasks) == 1  # referenced until done, never lost
    release.set()
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            await asyncio.sleep(0)
    assert done == [CircuitState.OPEN]
    assert not b._async_listener_tasks
    assert "async state listener raised" in caplog.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_rate_threshold", 1.5),
        ("window_size", 0),
        ("minimum_calls", 500),
        ("slow_call_duration_s", -1.0),
        ("open_duration_s", 0),
        ("half_open_max_calls", 0),
    ],
)
def test_config_errors_name_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig(**{field: value})  # type: ignore[arg-type]
    assert field in str(info.value)
    assert repr(value) in str(info.value)


def test_config_defaults_match_the_contract() -> None:
    cfg = CircuitBreakerConfig()
    assert (cfg.failure_threshold, cfg.failure_rate_threshold) == (5, 0.5)
    assert (cfg.window_size, cfg.minimum_calls) == (100, 20)
    assert (cfg.open_duration_s, cfg.half_open_max_calls) == (30.0, 1)


def test_refusal_error_is_cheap_to_raise_and_complete_to_read() -> None:
    err = CircuitOpenError("dep", CircuitState.OPEN, 1.5)
    assert err.args == ("dep", CircuitState.OPEN, 1.5)  # set by BaseException, no formatting
    assert str(err) == "circuit 'dep' is OPEN, retry in 1.500s"
    assert str(CircuitOpenError("dep", CircuitState.FORCED_OPEN, None)) == (
        "circuit 'dep' is FORCED_OPEN"
    )
    back = pickle.loads(pickle.dumps(err))
    assert (back.name, back.state, back.retry_after_s) == ("dep", CircuitState.OPEN, 1.5)
