"""Behaviour cases ported from pybreaker's test suite (``tests/pybreaker_test.py``).

pybreaker's ``fail_max`` is our ``failure_threshold``, ``reset_timeout`` our
``open_duration_s``, ``fail_counter`` our ``consecutive_failures``, ``exclude`` (which
counts as a success) our "not in ``failure_exceptions``", ``close()`` our ``reset()``
and ``CircuitBreakerError`` our ``CircuitOpenError``. The fake clock replaces pybreaker's
``sleep``; tasks replace its threads. Where we differ on purpose the test asserts our
behaviour and says "DIFFERENCE"; the README lists each difference with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState, StateChange
from tests.unit.conftest import FakeClock

OPEN, CLOSED, HALF_OPEN = CircuitState.OPEN, CircuitState.CLOSED, CircuitState.HALF_OPEN


def pyb(
    clock: FakeClock, fail_max: int = 5, reset_timeout: float = 60, **kw: object
) -> CircuitBreaker:
    """A breaker configured like pybreaker's: only consecutive failures trip it."""
    cfg = CircuitBreakerConfig(
        failure_threshold=fail_max,
        open_duration_s=reset_timeout,
        failure_rate_threshold=1,
        window_size=1000,
        minimum_calls=1000,
        **kw,  # type: ignore[arg-type]
    )
    return CircuitBreaker("pybreaker", cfg, clock=clock)


def suc() -> bool:
    return True


def err() -> None:
    raise NotImplementedError


def fail(b: CircuitBreaker) -> None:
    with pytest.raises(NotImplementedError):
        b.call_sync(err)


def open_with_three(b: CircuitBreaker) -> None:
    for _ in range(3):
        fail(b)
    assert b.state is OPEN


def test_successful_call(clock: FakeClock) -> None:
    """Ports pybreaker test_successful_call."""
    b = pyb(clock)
    assert b.call_sync(suc)
    assert b.consecutive_failures == 0 and b.state is CLOSED


def test_one_failed_call(clock: FakeClock) -> None:
    """Ports pybreaker test_one_failed_call."""
    b = pyb(clock)
    fail(b)
    assert b.consecutive_failures == 1 and b.state is CLOSED


def test_one_successful_call_after_failed_call(clock: FakeClock) -> None:
    """Ports pybreaker test_one_successful_call_after_failed_call."""
    b = pyb(clock)
    fail(b)
    assert b.call_sync(suc)
    assert b.consecutive_failures == 0 and b.state is CLOSED


def test_several_failed_calls_open_the_circuit(clock: FakeClock) -> None:
    """Ports pybreaker test_several_failed_calls_setting_absent.

    DIFFERENCE: the call that trips the breaker raises its own error (pybreaker's
    default raises CircuitBreakerError instead); the next call is refused.
    """
    b = pyb(clock, fail_max=3)
    fail(b)
    fail(b)
    fail(b)  # the tripping call: NotImplementedError, not CircuitOpenError
    assert b.consecutive_failures == 3 and b.state is OPEN
    with pytest.raises(CircuitOpenError):
        b.call_sync(err)


def test_throw_original_error_on_trip(clock: FakeClock) -> None:
    """Ports pybreaker test_throw_new_error_on_trip_false (our only behaviour)."""
    b = pyb(clock, fail_max=3)
    open_with_three(b)
    with pytest.raises(CircuitOpenError):
        b.call_sync(err)
    assert b.consecutive_failures == 3 and b.state is OPEN


def test_traceback_names_the_failure_behind_the_open_circuit(clock: FakeClock) -> None:
    """Ports pybreaker test_traceback_in_circuitbreaker_error.

    DIFFERENCE: the tripping call's own traceback carries NotImplementedError (it is
    raised as is); later refusals do not chain it.
    """
    b = pyb(clock, fail_max=3)
    fail(b)
    fail(b)
    with pytest.raises(NotImplementedError) as info:
        b.call_sync(err)
    assert "NotImplementedError" in info.exconly()
    assert b.state is OPEN


def test_failed_call_after_timeout(clock: FakeClock) -> None:
    """Ports pybreaker test_failed_call_after_timeout: a failed trial reopens, counter 4."""
    b = pyb(clock, fail_max=3, reset_timeout=0.5)
    open_with_three(b)
    clock.advance(0.6)
    fail(b)  # the trial
    assert b.consecutive_failures == 4 and b.state is OPEN


def test_successful_after_timeout(clock: FakeClock) -> None:
    """Ports pybreaker test_successful_after_timeout: the function runs once, as the trial."""
    b = pyb(clock, fail_max=3, reset_timeout=1)
    calls: list[int] = []

    def counted() -> bool:
        calls.append(1)
        return True

    open_with_three(b)
    with pytest.raises(CircuitOpenError):
        b.call_sync(counted)
    clock.advance(2)
    assert b.call_sync(counted)
    assert b.consecutive_failures == 0 and b.state is CLOSED
    assert len(calls) == 1


def test_failed_call_when_half_open(clock: FakeClock) -> None:
    """Ports pybreaker test_failed_call_when_halfopen: the trial's failure is counted."""
    b = pyb(clock, fail_max=1, reset_timeout=1)
    fail(b)
    clock.advance(1)
    fail(b)
    assert b.consecutive_failures == 2 and b.state is OPEN


def test_successful_call_when_half_open(clock: FakeClock) -> None:
    """Ports pybreaker test_successful_call_when_halfopen."""
    b = pyb(clock, fail_max=1, reset_timeout=1)
    fail(b)
    clock.advance(1)
    assert b.call_sync(suc)
    assert b.consecutive_failures == 0 and b.state is CLOSED


def test_close(clock: FakeClock) -> None:
    """Ports pybreaker test_close: closing by hand clears the counter."""
    b = pyb(clock, fail_max=3)
    open_with_three(b)
    with pytest.raises(CircuitOpenError):
        b.call_sync(err)
    b.reset()
    assert b.consecutive_failures == 0 and b.state is CLOSED


def test_transition_events(clock: FakeClock) -> None:
    """Ports pybreaker test_transition_events: closed->open, open->half-open, half-open->closed."""
    b = pyb(clock, fail_max=1, reset_timeout=1)
    out: list[str] = []
    b.on_state_change(lambda c: out.append(f"{c.old.value}->{c.new.value}"))
    fail(b)
    clock.advance(1)
    b.call_sync(suc)
    assert out == ["CLOSED->OPEN", "OPEN->HALF_OPEN", "HALF_OPEN->CLOSED"]


def test_call_events_only_on_transitions(clock: FakeClock) -> None:
    """Ports pybreaker test_call_events.

    DIFFERENCE: we have no per-call listener (before_call/success/failure); listeners
    hear transitions only, so a success and a failure that trip nothing are silent.
    """
    b = pyb(clock)
    seen: list[StateChange] = []
    b.on_state_change(seen.append)
    assert b.call_sync(suc)
    fail(b)
    assert seen == []


def test_generator(clock: FakeClock) -> None:
    """Ports pybreaker test_generator: errors while iterating count, exhaustion succeeds."""
    b = pyb(clock)

    @b
    def good(value: bool) -> Iterator[bool]:
        "Docstring"
        yield value

    @b
    def bad(value: bool) -> Iterator[bool]:
        "Docstring"
        x = yield value
        raise NotImplementedError(x)

    s = good(True)
    e = bad(True)
    next(e)
    with pytest.raises(NotImplementedError):
        e.send(True)
    assert b.consecutive_failures == 1
    assert next(s)
    with pytest.raises(StopIteration):
        next(s)
    assert b.consecutive_failures == 0
    assert good.__doc__ == "Docstring"


def test_contextmanager(clock: FakeClock) -> None:
    """Ports pybreaker test_contextmanager: a protected generator under @contextmanager."""
    b = pyb(clock)

    class Foo:
        @contextmanager
        @b
        def wrapper(self) -> Iterator[None]:
            try:
                yield
            except NotImplementedError:
                raise ValueError from None

        def foo(self) -> None:
            with self.wrapper():
                raise NotImplementedError

    with pytest.raises(ValueError):
        Foo().foo()
    assert b.consecutive_failures == 1  # what came out of the generator is a failure


def test_default_params() -> None:
    """Ports pybreaker test_default_params.

    DIFFERENCE: our defaults are 5 failures (same) but 30 s open (pybreaker 60 s),
    plus a failure-rate window (100 calls, at least 20, 50 %).
    """
    b = CircuitBreaker("d")
    assert b.consecutive_failures == 0 and b.state is CLOSED
    cfg = b.config
    assert (cfg.failure_threshold, cfg.open_duration_s, cfg.ignored_exceptions) == (5, 30.0, ())


def test_new_with_custom_reset_timeout_and_fail_max(clock: FakeClock) -> None:
    """Ports pybreaker test_new_with_custom_reset_timeout and test_new_with_custom_fail_max."""
    b = pyb(clock, fail_max=10, reset_timeout=30)
    assert (b.config.failure_threshold, b.config.open_duration_s) == (10, 30)


def test_fail_max_setter(clock: FakeClock) -> None:
    """Ports pybreaker test_fail_max_setter: the whole configuration is replaced."""
    b = pyb(clock)
    b.config = dataclasses.replace(b.config, failure_threshold=10)
    assert b.config.failure_threshold == 10
    for _ in range(9):
        fail(b)
    assert b.state is CLOSED
    fail(b)
    assert b.state is OPEN


def test_reset_timeout_setter(clock: FakeClock) -> None:
    """Ports pybreaker test_reset_timeout_setter."""
    b = pyb(clock, fail_max=1)
    b.reconfigure(dataclasses.replace(b.config, open_duration_s=30))
    assert b.config.open_duration_s == 30
    fail(b)
    assert b.retry_after() == pytest.approx(30)


def test_call_with_no_args_args_and_kwargs(clock: FakeClock) -> None:
    """Ports pybreaker test_call_with_no_args, test_call_with_args, test_call_with_kwargs."""
    b = pyb(clock)
    assert b.call_sync(suc)
    assert b.call_sync(lambda a, c: [a, c], 42, "abc") == [42, "abc"]
    assert b.call_sync(lambda **kw: kw, a=1, b=2) == {"a": 1, "b": 2}


async def test_call_async_with_args_and_kwargs(clock: FakeClock) -> None:
    """Ports pybreaker test_call_async_with_no_args / _with_args / _with_kwargs."""
    b = pyb(clock)

    async def func(*args: object, **kwargs: object) -> object:
        return [*args] if args else kwargs

    assert await b.call(func, 42, "abc") == [42, "abc"]
    assert await b.call(func, a=1, b=2) == {"a": 1, "b": 2}


def test_add_and_remove_listeners(clock: FakeClock) -> None:
    """Ports pybreaker test_add_listener, test_add_listeners and test_remove_listener."""
    b = pyb(clock, fail_max=1)
    first: list[CircuitState] = []
    second: list[CircuitState] = []

    def one(c: StateChange) -> None:
        first.append(c.new)

    def two(c: StateChange) -> None:
        second.append(c.new)

    b.on_state_change(one)
    b.on_state_change(two)
    b.remove_listener(one)
    fail(b)
    assert (first, second) == ([], [OPEN])


def test_excluded_exceptions_count_as_successes(clock: FakeClock) -> None:
    """Ports pybreaker test_excluded_exceptions (subclasses included).

    pybreaker's ``exclude`` resets the counter: the dependency answered. Ours: leave
    the type out of ``failure_exceptions`` (``ignored_exceptions`` counts as nothing).
    """
    b = pyb(clock, failure_exceptions=(NotImplementedError,))

    def lookup() -> None:
        raise LookupError

    def key() -> None:
        raise KeyError

    fail(b)
    assert b.consecutive_failures == 1
    with pytest.raises(LookupError):
        b.call_sync(lookup)
    assert b.consecutive_failures == 0
    fail(b)
    with pytest.raises(KeyError):
        b.call_sync(key)
    assert b.consecutive_failures == 0


def test_ignored_exceptions_are_not_excluded_ones(clock: FakeClock) -> None:
    """Ports pybreaker test_excluded_exceptions, against ``ignored_exceptions``.

    DIFFERENCE: an ignored exception counts as nothing: the counter stays where it was.
    """
    b = pyb(clock, ignored_exceptions=(LookupError,))

    def lookup() -> None:
        raise KeyError

    fail(b)
    with pytest.raises(KeyError):
        b.call_sync(lookup)
    assert b.consecutive_failures == 1


def test_decorator(clock: FakeClock) -> None:
    """Ports pybreaker test_decorator: name and docstring kept, outcomes counted."""
    b = pyb(clock)

    @b
    def good(value: object) -> object:
        "Docstring"
        return value

    @b
    def bad(value: object) -> object:
        "Docstring"
        raise NotImplementedError

    assert (good.__doc__, bad.__doc__, good.__name__, bad.__name__) == (
        "Docstring",
        "Docstring",
        "good",
        "bad",
    )
    with pytest.raises(NotImplementedError):
        bad(True)
    assert b.consecutive_failures == 1
    assert good(True)
    assert b.consecutive_failures == 0


async def test_decorator_call_future(clock: FakeClock) -> None:
    """Ports pybreaker test_decorator_call_future: decorated coroutines are protected."""
    b = pyb(clock)

    @b
    async def good(value: object) -> object:
        "Docstring"
        return value

    @b
    async def bad(value: object) -> object:
        "Docstring"
        raise NotImplementedError

    assert good.__name__ == "good" and bad.__doc__ == "Docstring"
    with pytest.raises(NotImplementedError):
        await bad(True)
    assert b.consecutive_failures == 1
    assert await good(True)
    assert b.consecutive_failures == 0


def test_name(clock: FakeClock) -> None:
    """Ports pybreaker test_name."""
    b = CircuitBreaker("test_breaker", clock=clock)
    assert b.name == "test_breaker"
    b.name = "breaker_test"
    assert b.name == "breaker_test"


def test_success_threshold_default_behavior(clock: FakeClock) -> None:
    """Ports pybreaker test_success_threshold_default_behavior: one success closes."""
    b = pyb(clock, fail_max=3, reset_timeout=0.1)
    open_with_three(b)
    clock.advance(0.2)
    assert b.call_sync(suc)
    assert b.state is CLOSED


async def test_half_open_admits_one_trial_among_concurrent_callers(clock: FakeClock) -> None:
    """Ports pybreaker test_half_open_thread_safety: one trial passes, the rest are refused."""
    b = pyb(clock, fail_max=1, reset_timeout=1)
    fail(b)
    clock.advance(1)
    gate = asyncio.Event()
    passed: list[int] = []

    async def trial(i: int) -> None:
        await gate.wait()
        passed.append(i)

    tasks = [asyncio.create_task(b.call(trial, i)) for i in range(20)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert len(passed) == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 19
    assert b.state is CLOSED


async def test_concurrent_failures_are_all_counted(clock: FakeClock) -> None:
    """Ports pybreaker test_fail_thread_safety and test_fail_max_thread_safety."""
    b = pyb(clock, fail_max=1000)

    async def bad() -> None:
        await asyncio.sleep(0)
        raise NotImplementedError

    async def one() -> None:
        with contextlib.suppress(NotImplementedError):
            await b.call(bad)

    await asyncio.gather(*(one() for _ in range(300)))
    assert b.consecutive_failures == 300 and b.state is CLOSED


async def test_concurrent_successes_reset_the_counter(clock: FakeClock) -> None:
    """Ports pybreaker test_success_thread_safety."""
    b = pyb(clock, fail_max=1000)
    fail(b)

    async def good() -> bool:
        await asyncio.sleep(0)
        return True

    assert all(await asyncio.gather(*(b.call(good) for _ in range(300))))
    assert b.consecutive_failures == 0 and b.state is CLOSED
