"""Behaviour cases ported from resilience4j's circuit breaker tests (translated, not copied).

Sources: ``CircuitBreakerStateMachineTest``, ``CircuitBreakerExceptionHandlingTest``,
``CircuitBreakerAutoTransitionStateMachineTest``, ``CircuitBreakerConfigTest`` (module
resilience4j-circuitbreaker) and ``FixedSizeSlidingWindowMetricsTest`` (resilience4j-core).
resilience4j's ``tryAcquirePermission`` / ``onSuccess`` / ``onError`` /
``releasePermission`` map to our ``acquire_permission`` / ``on_success`` / ``on_error`` /
``release``. Where we differ on purpose the test asserts our behaviour and says
"DIFFERENCE"; the README lists each difference with its reason.
"""

from __future__ import annotations

import asyncio

import pytest

from antifragile._fsm import IllegalTransitionError
from antifragile.errors import ConfigError
from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import (
    LEGAL_TRANSITIONS,
    CircuitOpenError,
    CircuitState,
    StateChange,
)
from tests.unit.conftest import FakeClock

OPEN, CLOSED, HALF_OPEN = CircuitState.OPEN, CircuitState.CLOSED, CircuitState.HALF_OPEN


def r4j(clock: FakeClock, **kw: object) -> CircuitBreaker:
    """The setUp of CircuitBreakerStateMachineTest: rate 50 %, 4 half-open permits, a
    window of 5 (count-based here), 5 s wait in OPEN, NumberFormatException ignored
    (ValueError here), slow calls above 4 s."""
    cfg: dict[str, object] = {
        "failure_threshold": 1000,  # resilience4j has no consecutive-failure trip
        "failure_rate_threshold": 0.5,
        "window_size": 5,
        "minimum_calls": 5,
        "open_duration_s": 5,
        "half_open_max_calls": 4,
        "slow_call_duration_s": 4,
        "ignored_exceptions": (ValueError,),
    }
    cfg.update(kw)
    return CircuitBreaker("testName", CircuitBreakerConfig(**cfg), clock=clock)  # type: ignore[arg-type]


def try_acquire(b: CircuitBreaker) -> int | None:
    try:
        return b.acquire_permission()
    except CircuitOpenError:
        return None


def fail_once(b: CircuitBreaker, exc: BaseException | None = None, duration: float = 0) -> None:
    b.on_error(b.acquire_permission(), duration, exc or RuntimeError())


def succeed_once(b: CircuitBreaker, duration: float = 0) -> None:
    b.on_success(b.acquire_permission(), duration)


def to_open(b: CircuitBreaker) -> None:
    while b.state is not OPEN:
        fail_once(b)


def to_half_open(b: CircuitBreaker, clock: FakeClock) -> None:
    to_open(b)
    clock.advance(b.config.open_duration_s)
    b.release(b.acquire_permission())  # admission moves it; the permit is handed back
    assert b.state is HALF_OPEN


def counts(b: CircuitBreaker) -> tuple[int, int, int]:
    """(successes, buffered calls, failures) as resilience4j's metrics report them."""
    s = b.snapshot()
    return s.calls_in_window - s.failures_in_window, s.calls_in_window, s.failures_in_window


# ------------------------------------------------------------ CircuitBreakerStateMachineTest


def test_should_return_the_correct_name(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldReturnTheCorrectName."""
    assert r4j(clock).name == "testName"


def test_should_throw_call_not_permitted_when_open(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldThrowCallNotPermittedExceptionWhenStateIsOpen."""
    b = r4j(clock)
    to_open(b)
    with pytest.raises(CircuitOpenError) as info:
        b.acquire_permission()
    assert info.value.state is OPEN


def test_should_throw_call_not_permitted_when_forced_open(clock: FakeClock) -> None:
    """Ports:

    CircuitBreakerStateMachineTest.shouldThrowCallNotPermittedExceptionWhenStateIsForcedOpen.
    """
    b = r4j(clock)
    b.force_open()
    with pytest.raises(CircuitOpenError) as info:
        b.acquire_permission()
    assert info.value.state is CircuitState.FORCED_OPEN


def test_should_increase_counter_on_release_permission(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldIncreaseCounterOnReleasePermission."""
    b = r4j(clock)
    to_half_open(b, clock)
    tokens = [try_acquire(b) for _ in range(4)]
    assert None not in tokens
    assert try_acquire(b) is None and try_acquire(b) is None
    b.release(tokens[0])  # type: ignore[arg-type]
    assert try_acquire(b) is not None


def test_should_refuse_when_no_further_test_calls_are_permitted(clock: FakeClock) -> None:
    """Ports:

    CircuitBreakerStateMachineTest.shouldThrowCallNotPermittedExceptionWhenNotFurtherTestCallsArePermitted.
    """
    b = r4j(clock)
    to_half_open(b, clock)
    for _ in range(4):
        b.acquire_permission()
    with pytest.raises(CircuitOpenError) as info:
        b.acquire_permission()
    assert info.value.state is HALF_OPEN


def test_should_only_permit_four_calls_in_half_open_state_each_round(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldOnlyPermitFourCallsInHalfOpenState."""
    b = r4j(clock)
    to_half_open(b, clock)
    tokens = [try_acquire(b) for _ in range(6)]
    assert [t is not None for t in tokens] == [True] * 4 + [False] * 2
    b.on_error(tokens[0], 0, RuntimeError())  # type: ignore[arg-type]
    assert b.state is OPEN
    clock.advance(5)
    again = [try_acquire(b) for _ in range(6)]  # a new round has four fresh permits
    assert [t is not None for t in again] == [True] * 4 + [False] * 2


def test_should_open_after_failure_rate_threshold_exceeded(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldOpenAfterFailureRateThresholdExceeded.

    Three failures then two successes: the window fills on the fifth call, a success,
    and 3/5 = 60 % >= 50 % opens it (the rate is checked on successes too).
    """
    b = r4j(clock)
    for expected in [(0, 1, 1), (0, 2, 2), (0, 3, 3)]:
        fail_once(b)
        assert b.state is CLOSED and counts(b) == expected
    succeed_once(b)
    assert b.state is CLOSED and counts(b) == (1, 4, 3)
    succeed_once(b)
    assert b.state is OPEN and counts(b) == (2, 5, 3)
    assert b.snapshot().failure_rate * 100 == 60
    assert try_acquire(b) is None


def test_should_open_after_slow_call_rate_threshold_exceeded(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldOpenAfterSlowCallRateThresholdExceeded.

    DIFFERENCE: a slow call counts as a failure (no separate slow-call rate), so the
    window holds 4 failures (3 slow, 1 fast error) and opens as resilience4j does.
    """
    b = r4j(clock)
    fail_once(b, duration=5)  # slow error
    succeed_once(b, duration=5)  # slow success
    fail_once(b, duration=0.1)  # fast error
    succeed_once(b, duration=0.1)  # fast success
    assert b.state is CLOSED
    succeed_once(b, duration=5)
    assert b.state is OPEN and counts(b) == (1, 5, 4)


def test_should_open_after_slow_calls_measured_with_the_clock(clock: FakeClock) -> None:
    """Ports:

    CircuitBreakerStateMachineTest.shouldOpenAfterSlowCallRateThresholdExceededUsingMockClock.
    """
    b = r4j(clock)
    for seconds, expected_failures in [(5, 1), (5, 2), (1, 2), (1, 2)]:
        b.call_sync(clock.advance, seconds)
        assert b.state is CLOSED and b.failures_in_window == expected_failures
    b.call_sync(clock.advance, 5)
    assert b.state is OPEN and b.failures_in_window == 3


def test_should_transition_to_half_open_after_wait_duration(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldTransitionToHalfOpenAfterWaitDuration."""
    b = r4j(clock)
    to_open(b)
    assert try_acquire(b) is None
    clock.advance(3)
    assert b.state is OPEN and try_acquire(b) is None
    clock.advance(3)
    assert try_acquire(b) is not None
    assert b.state is HALF_OPEN


def test_should_transition_back_to_open_when_trials_fail(clock: FakeClock) -> None:
    """Ports:

    CircuitBreakerStateMachineTest.shouldTransitionBackToOpenStateWhenFailureRateIsAboveThreshold.

    DIFFERENCE: the first failed trial reopens the breaker; resilience4j waits for all
    four permitted calls and compares their failure rate.
    """
    b = r4j(clock)
    to_half_open(b, clock)
    first, second = b.acquire_permission(), b.acquire_permission()
    b.on_error(first, 0, RuntimeError())
    assert b.state is OPEN
    b.on_success(second, 0)  # its round is over: stale, decides nothing
    assert b.state is OPEN


def test_should_transition_back_to_open_when_trials_are_slow(clock: FakeClock) -> None:
    """Ports:

    CircuitBreakerStateMachineTest.shouldTransitionBackToOpenStateWhenSlowCallRateIsAboveThreshold.
    """
    b = r4j(clock)
    to_half_open(b, clock)
    succeed_once(b, duration=5)
    assert b.state is OPEN


def test_should_transition_back_to_closed_on_a_successful_trial(clock: FakeClock) -> None:
    """Ports:

    CircuitBreakerStateMachineTest.shouldTransitionBackToClosedStateWhenFailureIsBelowThreshold.

    DIFFERENCE: there, F,S,S,S (25 % < 50 %) closes after the fourth trial; here the
    first trial decides, so S closes at once and a first F would reopen.
    """
    b = r4j(clock)
    to_half_open(b, clock)
    succeed_once(b)
    assert b.state is CLOSED and counts(b) == (0, 0, 0)  # metrics reset on closing
    succeed_once(b)
    assert counts(b) == (1, 1, 0)


def test_should_reset_metrics(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldResetMetrics."""
    b = r4j(clock)
    succeed_once(b)
    fail_once(b)
    assert counts(b) == (1, 2, 1)
    b.reset()
    assert counts(b) == (0, 0, 0)


def test_should_force_open_circuit_breaker(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldForceOpenCircuitBreaker."""
    b = r4j(clock)
    b.force_open()
    assert b.state is CircuitState.FORCED_OPEN and try_acquire(b) is None
    clock.advance(6)
    assert try_acquire(b) is None  # no half-open after the wait duration
    assert b.state is CircuitState.FORCED_OPEN


def test_should_release_permission_when_exception_ignored(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldReleasePermissionWhenExceptionIgnored."""
    b = r4j(clock, half_open_max_calls=1)
    to_half_open(b, clock)
    before = counts(b)
    b.on_error(b.acquire_permission(), 0, ValueError("not a number"))
    assert b.state is HALF_OPEN and counts(b) == before
    token = try_acquire(b)  # the permit came back
    assert token is not None
    b.on_success(token, 0)
    assert b.state is CLOSED


def test_should_ignore_exceptions_and_then_transition_to_closed(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldIgnoreExceptionsAndThenTransitionToClosed."""
    b = r4j(clock)
    to_half_open(b, clock)
    before = counts(b)
    for _ in range(4):
        b.on_error(b.acquire_permission(), 0, ValueError())
        assert b.state is HALF_OPEN
    assert counts(b) == before
    succeed_once(b)
    assert b.state is CLOSED and counts(b) == (0, 0, 0)


def test_should_not_allow_transition_from_closed_to_half_open(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldNotAllowTransitionFromClosedToHalfOpen."""
    b = r4j(clock)
    with pytest.raises(IllegalTransitionError, match="CLOSED -> HALF_OPEN"):
        b._transition(HALF_OPEN, "test")
    assert b.state is CLOSED


def test_should_not_allow_transition_from_closed_to_closed(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldNotAllowTransitionFromClosedToClosed."""
    b = r4j(clock)
    assert CLOSED not in LEGAL_TRANSITIONS[CLOSED]
    with pytest.raises(IllegalTransitionError):
        b._transition(CLOSED, "test")


def test_should_reset_to_closed_state(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldResetToClosedState."""
    b = r4j(clock)
    to_open(b)
    b.reset()
    assert b.state is CLOSED


def test_should_reset_closed_state(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldResetClosedState."""
    b = r4j(clock)
    succeed_once(b)
    succeed_once(b)
    assert counts(b)[0] == 2
    b.reset()
    assert b.state is CLOSED and counts(b)[0] == 0


def test_should_open_on_the_failure_after_a_partial_window(clock: FakeClock) -> None:
    """Ports CircuitBreakerStateMachineTest.shouldOpenAfterFailureRateThresholdExceeded2.

    DIFFERENCE: count-based window (resilience4j's setUp is time-based); S,S,S,F,F
    fills the window at 2/5 (CLOSED), the next F makes it 3/5 (OPEN).
    """
    b = r4j(clock)
    for _ in range(3):
        succeed_once(b)
    fail_once(b)
    fail_once(b)
    assert b.state is CLOSED
    fail_once(b)
    assert b.state is OPEN


def test_max_wait_in_half_open_reopens_a_hung_round(clock: FakeClock) -> None:
    """Ports:

    the maxWaitDurationInHalfOpenState(1 s) behaviour of CircuitBreakerStateMachineTest's setUp.

    A trial that holds its permit past the maximum wait moves HALF_OPEN -> OPEN.
    """
    b = r4j(clock, half_open_max_calls=1, half_open_max_wait_s=1)
    to_half_open(b, clock)
    hung = b.acquire_permission()
    clock.advance(1)
    assert try_acquire(b) is None
    assert b.state is OPEN
    b.on_success(hung, 0)  # finishing late decides nothing
    assert b.state is OPEN


# ------------------------------------------------------------ CircuitBreakerAutoTransitionStateMach


async def test_auto_transition_from_open_to_half_open_without_calls() -> None:
    """Ports:

    CircuitBreakerAutoTransitionStateMachineTest (automaticTransitionFromOpenToHalfOpenEnabled).

    Our breaker always has the timer (with a running loop): an idle OPEN breaker moves
    to HALF_OPEN once the wait has passed, and listeners see the transition.
    """
    b = CircuitBreaker("auto", CircuitBreakerConfig(failure_threshold=1, open_duration_s=0.02))
    seen: list[StateChange] = []
    b.on_state_change(seen.append)
    fail_once(b)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while b.state is not HALF_OPEN:
        assert loop.time() < deadline
        await asyncio.sleep(0.005)
    assert [c.new for c in seen] == [OPEN, HALF_OPEN]


# ------------------------------------------------------------ CircuitBreakerExceptionHandlingTest


class BusinessError(Exception):
    pass


def test_should_record_runtime_exception_as_failure_and_business_exception_as_success(
    clock: FakeClock,
) -> None:
    """Ports:

    CircuitBreakerExceptionHandlingTest.shouldRecordRuntimeExceptionAsFailureAndBusinessExceptionAsSuccess.
    """
    b = r4j(clock, failure_exceptions=(RuntimeError,), slow_call_duration_s=None)
    fail_once(b, RuntimeError())
    fail_once(b, BusinessError("test"))
    assert counts(b) == (1, 2, 1)


def test_should_record_io_exception_as_failure_and_business_exception_as_success(
    clock: FakeClock,
) -> None:
    """Ports:

    CircuitBreakerExceptionHandlingTest.shouldRecordIOExceptionAsFailureAndBusinessExceptionAsSuccess.
    """
    b = r4j(clock, failure_exceptions=(OSError,), slow_call_duration_s=None)
    fail_once(b, OSError())
    fail_once(b, BusinessError("test"))
    assert counts(b) == (1, 2, 1)


def test_should_record_business_exception_as_failure(clock: FakeClock) -> None:
    """Ports CircuitBreakerExceptionHandlingTest.shouldRecordBusinessExceptionAsFailure.

    DIFFERENCE: failures are chosen by exception type, not by a predicate; the
    recorded kind is a subclass here.
    """

    class RecordedBusinessError(BusinessError):
        pass

    b = r4j(clock, failure_exceptions=(RecordedBusinessError,), slow_call_duration_s=None)
    fail_once(b, RecordedBusinessError("record"))
    fail_once(b, BusinessError("bla"))
    assert counts(b) == (1, 2, 1)


def test_should_ignore_number_format_exception(clock: FakeClock) -> None:
    """Ports CircuitBreakerExceptionHandlingTest.shouldIgnoreNumberFormatException."""
    b = r4j(clock)
    fail_once(b, RuntimeError())
    fail_once(b, ValueError("NumberFormatException"))
    assert counts(b) == (0, 1, 1)


# ------------------------------------------------------------ FixedSizeSlidingWindowMetricsTest


def test_check_initial_bucket_creation(clock: FakeClock) -> None:
    """Ports FixedSizeSlidingWindowMetricsTest.checkInitialBucketCreation."""
    s = r4j(clock).snapshot()
    assert (s.calls_in_window, s.failures_in_window, s.failure_rate) == (0, 0, 0)


def test_record_success(clock: FakeClock) -> None:
    """Ports FixedSizeSlidingWindowMetricsTest.testRecordSuccess."""
    b = r4j(clock)
    succeed_once(b, 0.1)
    assert counts(b) == (1, 1, 0) and b.snapshot().failure_rate == 0


def test_record_error(clock: FakeClock) -> None:
    """Ports FixedSizeSlidingWindowMetricsTest.testRecordError."""
    b = r4j(clock)
    fail_once(b, duration=0.1)
    assert counts(b) == (0, 1, 1) and b.snapshot().failure_rate == 1


def test_sliding_window_metrics(clock: FakeClock) -> None:
    """Ports FixedSizeSlidingWindowMetricsTest.testSlidingWindowMetrics (window of 4)."""
    b = r4j(clock, window_size=4, minimum_calls=4, failure_rate_threshold=1)
    fail_once(b)
    assert counts(b) == (0, 1, 1)
    expected = [((1, 2, 1), "1/2"), ((2, 3, 1), "1/3"), ((3, 4, 1), "1/4"), ((4, 4, 0), "0")]
    from fractions import Fraction

    for want, rate in expected:
        succeed_once(b)
        assert counts(b) == want
        assert b.snapshot().failure_rate == Fraction(rate)


def test_sliding_window_metrics_with_slow_calls(clock: FakeClock) -> None:
    """Ports FixedSizeSlidingWindowMetricsTest.testSlidingWindowMetricsWithSlowCalls (window of 2).

    DIFFERENCE: a slow success is a failure here, so the window reads 2 failures after
    SLOW_ERROR, SLOW_SUCCESS; two fast successes then push both out.
    """
    b = r4j(clock, window_size=2, minimum_calls=2, failure_rate_threshold=1, failure_threshold=1000)
    b.on_error(b.acquire_permission(), 5, RuntimeError())
    b.on_success(b.acquire_permission(), 5)
    assert b.state is OPEN and counts(b) == (0, 2, 2)
    b.reset()
    succeed_once(b, 0.1)
    succeed_once(b, 0.1)
    assert counts(b) == (2, 2, 0)


# ------------------------------------------------------------ CircuitBreakerConfigTest


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_rate_threshold", 0),  # zeroFailureRateThresholdShouldFail
        ("failure_rate_threshold", 1.01),  # failureRateThresholdAboveHundredShouldFail
        ("window_size", 0),  # zeroSlidingWindowSizeShouldFail
        ("minimum_calls", 0),  # zeroMinimumNumberOfCallsShouldFail
        ("open_duration_s", 0),  # zeroWaitIntervalShouldFail
        ("half_open_max_calls", 0),  # zeroPermittedNumberOfCallsInHalfOpenStateShouldFail
        ("slow_call_duration_s", 0),  # zeroSlowCallDurationThresholdShouldFail
        ("half_open_max_wait_s", -1),  # negativeMaxWaitDurationInHalfOpenStateShouldFail
    ],
)
def test_config_rejects_invalid_values(field: str, value: object) -> None:
    """Ports CircuitBreakerConfigTest's invalid-value cases (named beside each parameter)."""
    with pytest.raises(ConfigError, match=field):
        CircuitBreakerConfig(**{field: value})  # type: ignore[arg-type]


def test_config_minimum_calls_above_window_size_is_refused() -> None:
    """Ports CircuitBreakerConfigTest.shouldSetMinimumNumberOfCallsToSlidingWindowSize... in spirit.

    DIFFERENCE: resilience4j lowers a minimum above the window size to the window size;
    we refuse it (a minimum the window can never reach is a configuration mistake).
    """
    with pytest.raises(ConfigError, match="minimum_calls"):
        CircuitBreakerConfig(window_size=10, minimum_calls=11)
