"""Test helpers for services that embed antifragile: a fake clock, polling, breaker capture.

Everything here is meant for *your* tests of a service that embeds
:class:`antifragile.Runtime`, :class:`antifragile.CircuitBreaker` or a guard:

* :class:`FakeClock`: a monotonic clock moved by hand. Every ``clock=`` parameter of the
  in-process parts (breaker, health aggregator, runtime, fault subscriber) takes it, so
  time-based behaviour (open duration, anti-flapping window, lease expiry) is tested by
  advancing the clock instead of sleeping.
* :func:`eventually` / :func:`eventually_sync`: poll a check until it passes or a deadline
  (monotonic seconds) passes, for what a fake clock cannot drive (a real Redis, a real
  Temporal server, a background task).
* :func:`capture_breaker_changes`: record a breaker's state changes through its public
  listener API.

The module is import-light: it imports only the breaker module, never Redis or the
Temporal client, so importing it costs nothing in a service's test run.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_state import CircuitState, StateChange

__all__ = [
    "BreakerChanges",
    "FakeClock",
    "capture_breaker_changes",
    "eventually",
    "eventually_sync",
]

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0
"""Default deadline of :func:`eventually` and :func:`eventually_sync` (seconds)."""

DEFAULT_INTERVAL_S = 0.05
"""Default pause between two checks (seconds)."""


class FakeClock:
    """A monotonic clock that only moves when the test advances it.

    Pass the instance itself wherever a clock (a ``Callable[[], float]`` of monotonic
    seconds) is expected, e.g. ``CircuitBreaker("db", clock=clock)``,
    ``HealthAggregator(clock=clock)``, ``Runtime(clock=clock)``.

    Example:
        >>> clock = FakeClock()
        >>> clock.advance(2.5)
        1002.5
        >>> clock()
        1002.5

    Args:
        start: The first reading, in seconds (default 1000.0: far enough from 0 that
            "since time 0" arithmetic in the code under test cannot hide a bug).

    Raises:
        ValueError: If ``start`` is not finite.
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 1000.0) -> None:
        """Start the clock at ``start`` seconds (see the class for the arguments)."""
        if not math.isfinite(start):
            raise ValueError(f"start must be finite, got {start!r}")
        self._now = float(start)

    def now(self) -> float:
        """Return the current reading in seconds."""
        return self._now

    def __call__(self) -> float:
        """Return the current reading in seconds (the clock protocol)."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward.

        Args:
            seconds: How far, in seconds; 0 is allowed.

        Returns:
            The new reading in seconds.

        Raises:
            ValueError: If ``seconds`` is negative or not finite (a monotonic clock never
                goes back).
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a monotonic clock only moves forward, got {seconds!r} s")
        self._now += seconds
        return self._now

    def set(self, seconds: float) -> None:
        """Jump to an absolute reading, backwards too.

        A real monotonic clock never goes back; this is for tests that show a reading
        depends only on the clock (e.g. that ``retry_after()`` follows it both ways).

        Args:
            seconds: The new reading, in seconds.

        Raises:
            ValueError: If ``seconds`` is not finite.
        """
        if not math.isfinite(seconds):
            raise ValueError(f"a clock reading must be finite, got {seconds!r}")
        self._now = float(seconds)

    async def sleep(self, seconds: float) -> None:
        """An injectable ``sleep`` that advances the clock instead of waiting.

        It still yields to the event loop once, so other tasks run as they would
        around a real sleep. Negative delays count as 0, like :func:`asyncio.sleep`.

        Args:
            seconds: How long the caller means to sleep, in seconds.
        """
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        """Show the reading, e.g. ``FakeClock(1002.5)``."""
        return f"FakeClock({self._now!r})"


def _verdict(result: object) -> tuple[bool, str]:
    """Whether a check's result passes, and what to say about it if not."""
    if result:
        return True, ""
    if result is None:
        return False, (
            "the check returned None (a predicate must return something truthy; "
            "an assertion-style check must end with `return True`)"
        )
    return False, f"the check returned {result!r}"


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = DEFAULT_INTERVAL_S,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
    what: str = "",
) -> T:
    """Call ``check`` until it passes; fail with its last failure once the deadline passes.

    ``check`` is a sync or async callable. It passes when it returns a truthy value
    without raising. A falsy result, an :class:`AssertionError` or one of ``retry_on``
    means "not yet". Any other exception propagates at once. The check runs at least once,
    and a running async check is cancelled when the deadline passes.

    Example:
        >>> await eventually(lambda: breaker.state is CircuitState.OPEN, timeout=2)

    Args:
        check: The predicate or assertion (end an assertion-style check with
            ``return True``).
        timeout: Deadline in seconds from the call (monotonic; default 5.0).
        interval: Pause between checks in seconds (default 0.05).
        retry_on: More exception types that mean "not yet" (e.g. a connection error
            while a server starts).
        what: What is awaited, to open the failure message (default: nothing).

    Returns:
        The check's first truthy result.

    Raises:
        AssertionError: If the check has not passed by the deadline; its message says
            what the last check returned or raised (the last exception is chained).
        ValueError: If ``timeout`` or ``interval`` is negative or not finite.
    """
    _check_bounds(timeout, interval)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: BaseException | None = None
    why = "the check never ran"
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                async with asyncio.timeout_at(deadline):
                    result = await result
        except TimeoutError as exc:
            if loop.time() < deadline:
                raise  # the check's own timeout, not ours
            last_error, why = exc, "the check was still running at the deadline"
        except AssertionError as exc:
            last_error, why = exc, f"the check failed: {exc}" if str(exc) else "the check failed"
        except retry_on as exc:
            last_error, why = exc, f"the check raised {exc!r}"
        else:
            passed, why = _verdict(result)
            if passed:
                return result
            last_error = None
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(_failure(what, timeout, why)) from last_error
        await asyncio.sleep(min(interval, remaining))


def eventually_sync(
    check: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = DEFAULT_INTERVAL_S,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
    what: str = "",
) -> T:
    """The blocking twin of :func:`eventually`, for tests without an event loop.

    It blocks the thread between checks (``time.sleep``): never call it from a
    coroutine, use :func:`eventually` there.

    Args:
        check: A sync predicate or assertion (end an assertion-style check with
            ``return True``).
        timeout: Deadline in seconds from the call (``time.monotonic``; default 5.0).
        interval: Pause between checks in seconds (default 0.05).
        retry_on: More exception types that mean "not yet".
        what: What is awaited, to open the failure message (default: nothing).

    Returns:
        The check's first truthy result.

    Raises:
        AssertionError: If the check has not passed by the deadline (the last exception
            is chained).
        ValueError: If ``timeout`` or ``interval`` is negative or not finite.
        TypeError: If ``check`` returns an awaitable (an async check needs
            :func:`eventually`).
    """
    _check_bounds(timeout, interval)
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
        except AssertionError as exc:
            last_error, why = exc, f"the check failed: {exc}" if str(exc) else "the check failed"
        except retry_on as exc:
            last_error, why = exc, f"the check raised {exc!r}"
        else:
            if inspect.isawaitable(result):
                # A coroutine is truthy: without this an async check "passed" unrun.
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError(
                    f"eventually_sync got an async check ({check!r}): it cannot await it; "
                    "use `await eventually(...)`"
                )
            passed, why = _verdict(result)
            if passed:
                return result
            last_error = None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(_failure(what, timeout, why)) from last_error
        time.sleep(min(interval, remaining))


def _failure(what: str, timeout: float, why: str) -> str:
    return f"{what + ' ' if what else ''}not reached within {timeout:g} s: {why}"


def _check_bounds(timeout: float, interval: float) -> None:
    for name, value in (("timeout", timeout), ("interval", interval)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


class BreakerChanges:
    """The state changes one breaker made while attached, oldest first.

    Build it with :func:`capture_breaker_changes`. The recording listener is sync, so a
    change is recorded before the call that caused it returns.

    Attributes:
        breaker: The breaker listened to.
        changes: Every change recorded, as the breaker's public :class:`StateChange`.
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        """Prepare a recorder for ``breaker`` (not attached yet).

        Args:
            breaker: The breaker to listen to.
        """
        self.breaker = breaker
        self.changes: list[StateChange] = []
        self._detach: Callable[[], None] | None = None

    @property
    def transitions(self) -> list[tuple[CircuitState, CircuitState]]:
        """The recorded changes as ``(old, new)`` pairs."""
        return [(c.old, c.new) for c in self.changes]

    @property
    def states(self) -> list[CircuitState]:
        """The states entered, in order."""
        return [c.new for c in self.changes]

    @property
    def reasons(self) -> list[str]:
        """Why each change happened (the breaker's reason text), in order."""
        return [c.reason for c in self.changes]

    def clear(self) -> None:
        """Forget what was recorded so far (stay attached)."""
        self.changes.clear()

    def __len__(self) -> int:
        """Return how many changes were recorded."""
        return len(self.changes)

    def __iter__(self) -> Iterator[StateChange]:
        """Iterate over a copy of the recorded changes, oldest first."""
        return iter(list(self.changes))

    def attach(self) -> None:
        """Start recording (idempotent)."""
        if self._detach is not None:
            return
        breaker, listener = self.breaker, self.changes.append
        breaker.on_state_change(listener)
        self._detach = lambda: breaker.remove_listener(listener)

    def detach(self) -> None:
        """Stop recording (idempotent); what was recorded stays."""
        if self._detach is not None:
            self._detach()
            self._detach = None


@contextmanager
def capture_breaker_changes(breaker: CircuitBreaker) -> Iterator[BreakerChanges]:
    """Record every state change of ``breaker`` inside the ``with`` block.

    Example:
        >>> with capture_breaker_changes(breaker) as seen:
        ...     breaker.force_open("test")
        >>> seen.transitions
        [(<CircuitState.CLOSED: 'CLOSED'>, <CircuitState.FORCED_OPEN: 'FORCED_OPEN'>)]

    Args:
        breaker: The breaker to listen to (through its public listener API).

    Yields:
        The recorder; it stops recording when the block ends and keeps what it saw.
    """
    recorder = BreakerChanges(breaker)
    recorder.attach()
    try:
        yield recorder
    finally:
        recorder.detach()
