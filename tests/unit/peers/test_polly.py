"""Behaviour cases ported from Polly v8's circuit breaker tests (Polly.Core.Tests/CircuitBreaker).

Sources: ``Controller/CircuitStateControllerTests``, ``Controller/AdvancedCircuitBehaviorTests``,
``CircuitBreakerResilienceStrategyTests`` and ``CircuitBreakerManualControlTests``.
Polly's Isolate is our ``force_open`` (FORCED_OPEN), Close our ``reset``,
``BreakDuration`` our ``open_duration_s``, ``FailureRatio`` / ``MinimumThroughput`` our
``failure_rate_threshold`` / ``minimum_calls``, ``ShouldHandle`` our
``failure_exceptions``, ``BrokenCircuitException.RetryAfter`` our
``CircuitOpenError.retry_after_s``. Where we differ on purpose the test asserts our
behaviour and says "DIFFERENCE"; the README lists each difference with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState, StateChange
from tests.unit.conftest import FakeClock

OPEN, CLOSED, HALF_OPEN = CircuitState.OPEN, CircuitState.CLOSED, CircuitState.HALF_OPEN
ISOLATED = CircuitState.FORCED_OPEN
BREAK_S = 5.0  # Polly's default BreakDuration


def polly(clock: FakeClock, **kw: object) -> CircuitBreaker:
    cfg: dict[str, object] = {"failure_threshold": 1, "open_duration_s": BREAK_S}
    cfg.update(kw)
    return CircuitBreaker("polly", CircuitBreakerConfig(**cfg), clock=clock)  # type: ignore[arg-type]


def open_circuit(b: CircuitBreaker) -> None:
    while b.state is not OPEN:
        b.on_error(b.acquire_permission(), 0.0, InvalidOperation())


def to_state(b: CircuitBreaker, clock: FakeClock, state: CircuitState) -> int | None:
    """TransitionToState of CircuitStateControllerTests; returns a held trial token."""
    if state is OPEN:
        open_circuit(b)
    elif state is HALF_OPEN:
        open_circuit(b)
        clock.advance(BREAK_S)
        token = b.acquire_permission()
        assert b.state is HALF_OPEN
        return token
    elif state is ISOLATED:
        b.force_open()
    assert b.state is state
    return None


class InvalidOperation(Exception):
    pass


class Argument(Exception):
    pass


def test_ctor_ensure_defaults(clock: FakeClock) -> None:
    """Ports CircuitStateControllerTests.Ctor_EnsureDefaults."""
    b = polly(clock)
    assert b.state is CLOSED and b.consecutive_failures == 0


def test_isolate_ok(clock: FakeClock) -> None:
    """Ports CircuitStateControllerTests.IsolateAsync_Ok: isolated refuses, Close closes."""
    b = polly(clock)
    opened: list[StateChange] = []
    b.on_state_change(opened.append)
    b.force_open("manual")
    assert b.state is ISOLATED and opened[0].reason == "manual"
    with pytest.raises(CircuitOpenError) as info:
        b.acquire_permission()
    assert info.value.state is ISOLATED and info.value.retry_after_s is None
    b.reset()
    b.on_success(b.acquire_permission(), 0.0)
    assert b.state is CLOSED


def test_break_ok(clock: FakeClock) -> None:
    """Ports CircuitStateControllerTests.BreakAsync_Ok: closing an isolated circuit notifies."""
    b = polly(clock)
    b.force_open()
    closed: list[StateChange] = []
    b.on_state_change(closed.append)
    b.reset("manual close")
    assert [(c.old, c.new, c.reason) for c in closed] == [(ISOLATED, CLOSED, "manual close")]


def test_pre_execute_when_opened_reports_the_break_duration(clock: FakeClock) -> None:
    """Ports CircuitStateControllerTests.OnActionPreExecute_CircuitOpenedByValue (blocked till)."""
    b = polly(clock)
    open_circuit(b)
    with pytest.raises(CircuitOpenError) as info:
        b.acquire_permission()
    assert info.value.retry_after_s == pytest.approx(BREAK_S)


def test_refusals_do_not_grow(clock: FakeClock) -> None:
    """Ports:

    CircuitStateControllerTests.OnActionPreExecute_CircuitOpened_EnsureExceptionStackTraceDoesNotGrow.
    """
    b = polly(clock)
    open_circuit(b)
    sizes = set()
    for _ in range(100):
        try:
            b.acquire_permission()
        except CircuitOpenError as exc:
            sizes.add((len(exc.args), exc.__cause__, exc.__context__))
    assert sizes == {(3, None, None)}


@pytest.mark.parametrize("success", [True, False])
def test_half_open_ensure_correct_state_transition_after_execution(
    clock: FakeClock, success: bool
) -> None:
    """Ports CircuitStateControllerTests.HalfOpen_EnsureCorrectStateTransitionAfterExecution."""
    b = polly(clock)
    token = to_state(b, clock, HALF_OPEN)
    assert token is not None
    if success:
        b.on_success(token, 0.0)
        assert b.state is CLOSED
    else:
        b.on_error(token, 0.0, InvalidOperation())
        assert b.state is OPEN


def test_pre_execute_half_open_admits_one_probe(clock: FakeClock) -> None:
    """Ports CircuitStateControllerTests.OnActionPreExecute_HalfOpen (OnHalfOpened called)."""
    b = polly(clock)
    half_opened: list[StateChange] = []
    b.on_state_change(lambda c: half_opened.append(c) if c.new is HALF_OPEN else None)
    open_circuit(b)
    clock.advance(BREAK_S)
    b.acquire_permission()
    with pytest.raises(CircuitOpenError):
        b.acquire_permission()
    assert b.state is HALF_OPEN and len(half_opened) == 1


@pytest.mark.parametrize(
    ("state", "expected"),
    [(HALF_OPEN, CLOSED), (ISOLATED, ISOLATED), (CLOSED, CLOSED)],
)
def test_on_action_success_ensure_correct_behavior(
    clock: FakeClock, state: CircuitState, expected: CircuitState
) -> None:
    """Ports CircuitStateControllerTests.OnActionSuccess_EnsureCorrectBehavior.

    A success arriving while ISOLATED is from a call admitted before the isolation
    (stale): it changes nothing.
    """
    b = polly(clock)
    early = b.acquire_permission()  # admitted while CLOSED
    token = to_state(b, clock, state)
    b.on_success(token if token is not None else early, 0.0)
    assert b.state is expected


@pytest.mark.parametrize(
    ("state", "expected", "should_break"),
    [
        (HALF_OPEN, OPEN, True),
        (CLOSED, OPEN, True),
        (CLOSED, CLOSED, False),
        (OPEN, OPEN, False),
        (ISOLATED, ISOLATED, False),
    ],
)
def test_on_action_failure_ensure_correct_behavior(
    clock: FakeClock, state: CircuitState, expected: CircuitState, should_break: bool
) -> None:
    """Ports CircuitStateControllerTests.OnActionFailureAsync_EnsureCorrectBehavior.

    A failure arriving while OPEN or ISOLATED is stale: it stays where it is, and an
    OPEN breaker's wait is not extended.
    """
    b = polly(clock, failure_threshold=1 if should_break else 3)
    early = b.acquire_permission()
    token = to_state(b, clock, state)
    retry_before = b.retry_after()
    clock.advance(1)
    b.on_error(token if token is not None else early, 0.0, InvalidOperation())
    assert b.state is expected
    if state is OPEN:
        assert b.retry_after() == pytest.approx(retry_before - 1)  # type: ignore[operator]


def test_flow_closed_half_open_closed(clock: FakeClock) -> None:
    """Ports CircuitStateControllerTests.Flow_Closed_HalfOpen_Closed."""
    b = polly(clock)
    token = to_state(b, clock, HALF_OPEN)
    b.on_success(token, 0.0)  # type: ignore[arg-type]
    assert b.state is CLOSED


def test_flow_closed_half_open_open_half_open_closed(clock: FakeClock) -> None:
    """Ports CircuitStateControllerTests.Flow_Closed_HalfOpen_Open_HalfOpen_Closed."""
    b = polly(clock)
    token = to_state(b, clock, HALF_OPEN)
    b.on_error(token, 0.0, InvalidOperation())  # type: ignore[arg-type]
    assert b.state is OPEN
    clock.advance(0.001)
    with pytest.raises(CircuitOpenError):
        b.acquire_permission()
    clock.advance(2 * BREAK_S)
    token = b.acquire_permission()
    assert b.state is HALF_OPEN
    b.on_success(token, 0.0)
    assert b.state is CLOSED


def test_half_open_probe_that_never_returns(clock: FakeClock) -> None:
    """Ports CircuitStateControllerTests.HalfOpen_EnsureBreakDuration.

    DIFFERENCE: Polly blocks a half-open circuit for another BreakDuration and then
    lets a second probe through while the first may still run; we reopen the breaker
    when a probe holds its permit past ``half_open_max_wait_s`` and a new round starts
    after ``open_duration_s`` - at most one round of probes is ever in flight.
    """
    b = polly(clock, half_open_max_wait_s=BREAK_S)
    hung = to_state(b, clock, HALF_OPEN)
    clock.advance(BREAK_S)
    with pytest.raises(CircuitOpenError):
        b.acquire_permission()
    assert b.state is OPEN
    clock.advance(BREAK_S)
    probe = b.acquire_permission()
    b.on_success(hung, 0.0)  # type: ignore[arg-type]
    assert b.state is HALF_OPEN  # the old probe decides nothing
    b.on_success(probe, 0.0)
    assert b.state is CLOSED


@pytest.mark.parametrize(
    ("throughput", "minimum", "failures", "ratio", "should_break"),
    [
        (10, 10, 0, "0.1", False),
        (10, 10, 1, "0.1", True),
        (10, 10, 2, "0.1", True),
        (11, 10, 2, "0.1", True),
        (9, 10, 1, "0.1", False),
    ],
)
def test_advanced_behavior_on_failure_when_closed(
    clock: FakeClock, throughput: int, minimum: int, failures: int, ratio: str, should_break: bool
) -> None:
    """Ports AdvancedCircuitBehaviorTests.OnActionFailure_WhenClosed_EnsureCorrectBehavior."""
    b = polly(
        clock,
        failure_threshold=1000,
        failure_rate_threshold=ratio,
        window_size=max(throughput, minimum),
        minimum_calls=minimum,
    )
    for _ in range(throughput - failures):
        b.on_success(b.acquire_permission(), 0.0)
    for _ in range(failures):
        if b.state is OPEN:
            break  # opened on an earlier failure: 1/10 already reaches 0.1
        b.on_error(b.acquire_permission(), 0.0, InvalidOperation())
    assert (b.state is OPEN) is should_break


def test_advanced_behavior_on_circuit_closed_resets_metrics(clock: FakeClock) -> None:
    """Ports AdvancedCircuitBehaviorTests.OnCircuitClosed_Ok (metrics Reset on closing)."""
    b = polly(clock)
    token = to_state(b, clock, HALF_OPEN)
    assert b.calls_in_window == 1
    b.on_success(token, 0.0)  # type: ignore[arg-type]
    assert (b.calls_in_window, b.failures_in_window) == (0, 0)


async def test_execute_handled_exception_is_a_failure(clock: FakeClock) -> None:
    """Ports CircuitBreakerResilienceStrategyTests.Execute_HandledException_OnFailureCalled."""
    b = polly(clock, failure_threshold=2, failure_exceptions=(InvalidOperation,))

    async def raise_invalid() -> int:
        raise InvalidOperation

    with pytest.raises(InvalidOperation):
        await b.call(raise_invalid)
    assert b.consecutive_failures == 1


async def test_execute_unhandled_exception_is_a_success(clock: FakeClock) -> None:
    """Ports CircuitBreakerResilienceStrategyTests.Execute_UnhandledException_OnActionSuccess."""
    b = polly(clock, failure_threshold=2, failure_exceptions=(InvalidOperation,))

    async def raise_argument() -> int:
        raise Argument

    with contextlib.suppress(InvalidOperation):
        b.on_error(b.acquire_permission(), 0.0, InvalidOperation())
    with pytest.raises(Argument):
        await b.call(raise_argument)
    assert b.consecutive_failures == 0 and b.calls_in_window == 2


async def test_execute_unhandled_result_is_a_success(clock: FakeClock) -> None:
    """Ports:

    CircuitBreakerResilienceStrategyTests.Execute_UnhandledResult_OnActionSuccess and Execute_Ok.
    """

    async def zero() -> int:
        return 0

    b = polly(clock)
    assert await b.call(zero) == 0
    assert (b.calls_in_window, b.failures_in_window) == (1, 0)


async def test_manual_control_isolate_then_close(clock: FakeClock) -> None:
    """Ports CircuitBreakerResilienceStrategyTests.Ctor_ManualControl_EnsureAttached."""

    async def zero() -> int:
        return 0

    b = polly(clock)
    b.force_open()
    with pytest.raises(CircuitOpenError) as info:
        await b.call(zero)
    assert info.value.retry_after_s is None
    b.reset()
    assert await b.call(zero) == 0


async def test_manual_isolate_while_calls_are_in_flight(clock: FakeClock) -> None:
    """Ports CircuitBreakerManualControlTests (IsolateAsync while executing).

    Calls in flight when the circuit is isolated finish normally; their outcomes are
    stale and leave it isolated.
    """
    b = polly(clock)
    gate = asyncio.Event()

    async def slow() -> int:
        await gate.wait()
        return 1

    task = asyncio.create_task(b.call(slow))
    await asyncio.sleep(0)
    b.force_open()
    gate.set()
    assert await task == 1
    assert b.state is ISOLATED


async def test_on_opened_callback_runs_off_the_call_path(clock: FakeClock) -> None:
    """Ports ScheduledTaskExecutorTests / OnOpened telemetry: callbacks never block the call."""
    b = polly(clock)
    release = asyncio.Event()
    seen: list[CircuitState] = []

    async def on_opened(change: StateChange) -> None:
        await release.wait()
        seen.append(change.new)

    b.on_state_change(on_opened)

    async def broken() -> None:
        raise InvalidOperation

    with pytest.raises(InvalidOperation):
        await asyncio.wait_for(b.call(broken), 1)
    assert seen == []
    release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == [OPEN]


def test_state_provider_reads_without_side_effects(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateProviderTests (the provider reports the circuit state)."""
    b = polly(clock)
    open_circuit(b)
    clock.advance(2 * BREAK_S)
    first = b.snapshot()
    second = b.snapshot()
    assert first == second and first.state is OPEN and first.retry_after_s == 0.0
