"""Circuit breaker: the per-dependency switch every guarded call goes through.

Resilience4j-style state machine with four states (CLOSED, OPEN, HALF_OPEN and
FORCED_OPEN), one transition method checked against a table of legal moves, an
injectable monotonic clock, and listeners that can never break the call path.

Hot path design (why the code looks the way it does):

* The breaker runs on one event loop, so there are no locks; every field is a slot.
* A CLOSED breaker whose sliding window holds no failure and is full ("steady")
  records a success with one attribute test and no allocation: an all-success ring
  stays all-success whatever its write position, so it needs no update.
* The clock is read only when slow-call detection is on, or while OPEN.
* Listeners run outside the call: sync listeners are called inside ``try`` (a
  raising one is logged), async listeners become tasks the breaker keeps a
  reference to until they finish.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import CoroutineType as _CoroutineType
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from antifragile.errors import AntifragileError, ConfigError

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

Clock = Callable[[], float]
"""A callable returning monotonic seconds (``time.monotonic`` by default)."""


class CircuitState(StrEnum):
    """State of a circuit breaker."""

    CLOSED = "CLOSED"
    """Calls pass; failures are counted."""
    OPEN = "OPEN"
    """Calls are refused until ``open_duration_s`` has passed."""
    HALF_OPEN = "HALF_OPEN"
    """At most ``half_open_max_calls`` trial calls pass; success closes, failure reopens."""
    FORCED_OPEN = "FORCED_OPEN"
    """Opened by an operator or a chaos experiment; only ``reset()`` closes it."""


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN

LEGAL_TRANSITIONS: dict[CircuitState, frozenset[CircuitState]] = {
    _CLOSED: frozenset({_OPEN, _FORCED_OPEN}),
    _OPEN: frozenset({_HALF_OPEN, _FORCED_OPEN, _CLOSED}),
    _HALF_OPEN: frozenset({_CLOSED, _OPEN, _FORCED_OPEN}),
    _FORCED_OPEN: frozenset({_CLOSED}),
}
"""Every move the breaker may make; anything else is refused by ``_transition``."""


class CircuitOpenError(AntifragileError):
    """A call was refused because the breaker is open (or half-open and full).

    Attributes:
        name: The breaker's name.
        state: The state that refused the call.
        retry_after_s: Seconds until the breaker lets a trial call through, if known.
    """

    def __init__(self, name: str, state: CircuitState, retry_after_s: float | None) -> None:
        # A refused call is the hot path of an open breaker (a busy service may be
        # refused thousands of times a second), so the message is only formatted when
        # someone reads it, and BaseException.__new__ has already stored the arguments
        # as ``args`` (which also keeps the error picklable): three attribute stores.
        self.name = name
        self.state = state
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        hint = f", retry in {self.retry_after_s:.3f}s" if self.retry_after_s is not None else ""
        return f"circuit {self.name!r} is {self.state.value}{hint}"


class IllegalTransitionError(AntifragileError):
    """A state change the transition table does not allow was requested."""


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """Thresholds of one circuit breaker. Validated on construction.

    Attributes:
        failure_threshold: Consecutive failures that open the breaker. Default 5.
        failure_rate_threshold: Share of failures in the sliding window that opens the
            breaker (0 < x <= 1). Default 0.5.
        window_size: Number of most recent calls in the sliding window. Default 100.
        minimum_calls: Calls the window must hold before the failure rate counts.
            Default 20.
        slow_call_duration_s: A call slower than this counts as a failure; ``None``
            turns slow-call detection off (and the clock is then never read on the
            success path). Default None.
        open_duration_s: Seconds OPEN before a trial call is allowed. Default 30.
        half_open_max_calls: Concurrent trial calls allowed while HALF_OPEN. Default 1.
        failure_exceptions: Exception types that count as failures. Default
            ``(Exception,)`` - so ``asyncio.CancelledError`` never counts.
        ignored_exceptions: Exception types that never count, even if they match
            ``failure_exceptions`` (e.g. a 404 error class). Default none.
    """

    failure_threshold: int = 5
    failure_rate_threshold: float = 0.5
    window_size: int = 100
    minimum_calls: int = 20
    slow_call_duration_s: float | None = None
    open_duration_s: float = 30.0
    half_open_max_calls: int = 1
    failure_exceptions: tuple[type[BaseException], ...] = field(default=(Exception,))
    ignored_exceptions: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        def bad(name: str, value: object, rule: str) -> ConfigError:
            return ConfigError(f"CircuitBreakerConfig.{name}: {rule} (got {value!r})")

        if self.failure_threshold < 1:
            raise bad("failure_threshold", self.failure_threshold, "must be >= 1")
        if not 0.0 < self.failure_rate_threshold <= 1.0:
            raise bad("failure_rate_threshold", self.failure_rate_threshold, "must be in (0, 1]")
        if self.window_size < 1:
            raise bad("window_size", self.window_size, "must be >= 1")
        if not 1 <= self.minimum_calls <= self.window_size:
            raise bad("minimum_calls", self.minimum_calls, "must be in [1, window_size]")
        if self.slow_call_duration_s is not None and self.slow_call_duration_s <= 0:
            raise bad("slow_call_duration_s", self.slow_call_duration_s, "must be > 0 or None")
        if self.open_duration_s <= 0:
            raise bad("open_duration_s", self.open_duration_s, "must be > 0")
        if self.half_open_max_calls < 1:
            raise bad("half_open_max_calls", self.half_open_max_calls, "must be >= 1")


@dataclass(frozen=True, slots=True)
class StateChange:
    """What a state-change listener receives.

    Attributes:
        name: Breaker name.
        old: State before.
        new: State after.
        reason: Why (``consecutive failures``, ``failure rate``, ``open duration elapsed``,
            ``trial call succeeded``, ``forced``, ``reset`` ...).
        at: Breaker clock reading at the change.
    """

    name: str
    old: CircuitState
    new: CircuitState
    reason: str
    at: float


StateListener = Callable[[StateChange], Any]
"""A sync function or coroutine function receiving a :class:`StateChange`."""


class CircuitBreaker:
    """A circuit breaker for one dependency.

    Example:
        >>> breaker = CircuitBreaker("redis", CircuitBreakerConfig(failure_threshold=3))
        >>> async def get() -> None:
        ...     async with breaker:
        ...         await client.get("k")

    Args:
        name: Dependency name, used in errors, listeners and health reports.
        config: Thresholds; defaults as documented on :class:`CircuitBreakerConfig`.
        clock: Monotonic seconds; inject a fake one in tests.
    """

    __slots__ = (
        "_async_listener_tasks",
        "_calls_in_window",
        "_clock",
        "_consecutive",
        "_failure_exc",
        "_half_open_inflight",
        "_ignored_exc",
        "_internal_hooks",
        "_listeners",
        "_open_timer",
        "_opened_at",
        "_rate_failures",
        "_ring",
        "_ring_pos",
        "_slow_s",
        "_state",
        "_steady",
        "config",
        "name",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.config = config or CircuitBreakerConfig()
        self._clock: Clock = clock or time.monotonic
        self._state: CircuitState = _CLOSED
        self._consecutive = 0
        # Sliding count window: 1 = failure at that position.
        self._ring = bytearray(self.config.window_size)
        self._ring_pos = 0
        self._calls_in_window = 0
        self._rate_failures = 0
        # True when CLOSED with a full, failure-free window and no slow-call detection:
        # then a success changes nothing and costs one attribute test.
        self._steady = False
        self._opened_at = 0.0
        self._half_open_inflight = 0
        self._slow_s = self.config.slow_call_duration_s
        self._failure_exc = self.config.failure_exceptions
        self._ignored_exc = self.config.ignored_exceptions
        self._listeners: list[StateListener] = []
        self._internal_hooks: list[Callable[[CircuitBreaker], None]] = []
        self._async_listener_tasks: set[asyncio.Task[Any]] = set()
        self._open_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ inspection

    @property
    def state(self) -> CircuitState:
        """Current state; an OPEN breaker whose open duration elapsed reads HALF_OPEN."""
        if self._state is _OPEN:
            self._maybe_half_open()
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._consecutive

    @property
    def failure_rate(self) -> float:
        """Failure share of the sliding window (0.0 when it is empty)."""
        return self._rate_failures / self._calls_in_window if self._calls_in_window else 0.0

    @property
    def calls_in_window(self) -> int:
        """Number of calls the sliding window holds (at most ``window_size``)."""
        return self._calls_in_window

    def retry_after(self) -> float | None:
        """Seconds until an OPEN breaker allows a trial call; None unless OPEN."""
        if self._state is not _OPEN:
            return None
        return max(0.0, self._opened_at + self.config.open_duration_s - self._clock())

    # ------------------------------------------------------------------ listeners

    def on_state_change(self, listener: StateListener) -> StateListener:
        """Register a listener (sync or async) called after every transition.

        A raising listener is logged and ignored; an async listener runs as a task
        off the call path. Returns the listener, so this works as a decorator.
        """
        self._listeners.append(listener)
        return listener

    def remove_listener(self, listener: StateListener) -> None:
        """Unregister a listener added with :meth:`on_state_change` (no-op if absent)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _add_internal_hook(self, hook: Callable[[CircuitBreaker], None]) -> None:
        """Sync hooks of this package (guard fast-path flag, health sums): called first."""
        self._internal_hooks.append(hook)

    def _remove_internal_hook(self, hook: Callable[[CircuitBreaker], None]) -> None:
        if hook in self._internal_hooks:
            self._internal_hooks.remove(hook)

    # ------------------------------------------------------------------ operator API

    def force_open(self, reason: str = "forced") -> None:
        """Open the breaker until :meth:`reset` (operators and chaos experiments)."""
        if self._state is not _FORCED_OPEN:
            self._transition(_FORCED_OPEN, reason)

    def reset(self, reason: str = "reset") -> None:
        """Close the breaker and forget all counted failures."""
        self._clear_window()
        if self._state is not _CLOSED:
            self._transition(_CLOSED, reason)
        else:
            self._refresh_steady()

    # ------------------------------------------------------------------ transitions

    def _transition(self, new: CircuitState, reason: str) -> None:
        """The one place the state changes; refuses moves not in LEGAL_TRANSITIONS."""
        old = self._state
        if new not in LEGAL_TRANSITIONS[old]:
            raise IllegalTransitionError(
                f"circuit {self.name!r}: {old.value} -> {new.value} is not allowed"
            )
        self._state = new
        now = self._clock()
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        if new is _OPEN:
            self._opened_at = now
            self._half_open_inflight = 0
            self._schedule_open_timer(self.config.open_duration_s)
        elif new is _HALF_OPEN:
            self._half_open_inflight = 0
        elif new is _CLOSED:
            self._clear_window()
        self._refresh_steady()
        change = StateChange(self.name, old, new, reason, now)
        for hook in self._internal_hooks:
            try:
                hook(self)
            except Exception:
                log.exception("circuit %r: internal hook failed", self.name)
        for listener in self._listeners:
            self._notify(listener, change)

    def _notify(self, listener: StateListener, change: StateChange) -> None:
        try:
            result = listener(change)
        except Exception:
            log.exception("circuit %r: state listener %r raised", self.name, listener)
            return
        if inspect.isawaitable(result):
            try:
                task = asyncio.ensure_future(result)
            except RuntimeError:
                # No running loop: an async listener cannot run; close it cleanly.
                if inspect.iscoroutine(result):
                    result.close()
                log.warning("circuit %r: async listener skipped (no running loop)", self.name)
                return
            self._async_listener_tasks.add(task)
            task.add_done_callback(self._listener_done)

    def _listener_done(self, task: asyncio.Task[Any]) -> None:
        self._async_listener_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "circuit %r: async state listener raised", self.name, exc_info=task.exception()
            )

    def _schedule_open_timer(self, delay: float) -> None:
        # Idle paths must not stay OPEN forever: move to HALF_OPEN by timer too.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._open_timer = loop.call_later(max(delay, 0.0), self._on_open_timer)

    def _on_open_timer(self) -> None:
        self._open_timer = None
        if self._state is not _OPEN:
            return
        remaining = self._opened_at + self.config.open_duration_s - self._clock()
        if remaining <= 0:
            self._transition(_HALF_OPEN, "open duration elapsed")
        else:
            # The injected clock runs slower than the loop's: check again later.
            self._schedule_open_timer(remaining)

    def _maybe_half_open(self) -> None:
        if self._clock() - self._opened_at >= self.config.open_duration_s:
            self._transition(_HALF_OPEN, "open duration elapsed")

    def _clear_window(self) -> None:
        self._consecutive = 0
        ring = self._ring
        ring[:] = bytes(len(ring))
        self._ring_pos = 0
        self._calls_in_window = 0
        self._rate_failures = 0

    def _refresh_steady(self) -> None:
        self._steady = (
            self._state is _CLOSED
            and self._slow_s is None
            and self._rate_failures == 0
            and self._consecutive == 0
            and self._calls_in_window == len(self._ring)
        )

    # ------------------------------------------------------------------ call protocol

    def _admit(self) -> None:
        """Let a call in or raise CircuitOpenError (only called when not CLOSED)."""
        state = self._state
        if state is _CLOSED:
            return
        if state is _OPEN:
            # One clock read decides both: half-open now, or refuse with the time left.
            elapsed = self._clock() - self._opened_at
            duration = self.config.open_duration_s
            if elapsed < duration:
                raise CircuitOpenError(self.name, state, duration - elapsed)
            self._transition(_HALF_OPEN, "open duration elapsed")
            state = self._state
        if state is _HALF_OPEN:
            if self._half_open_inflight < self.config.half_open_max_calls:
                self._half_open_inflight += 1
                return
            raise CircuitOpenError(self.name, state, None)
        raise CircuitOpenError(self.name, state, None)

    def _record(self, failed: bool) -> None:
        """Record one finished call (slow path: anything but a steady success)."""
        state = self._state
        if state is _HALF_OPEN:
            if self._half_open_inflight > 0:
                self._half_open_inflight -= 1
            if failed:
                self._transition(_OPEN, "trial call failed")
            else:
                self._transition(_CLOSED, "trial call succeeded")
            return
        if state is not _CLOSED:
            # A call admitted while CLOSED finished after the breaker opened: its
            # outcome no longer says anything about the state, so it is not counted.
            return
        ring = self._ring
        pos = self._ring_pos
        if ring[pos]:
            self._rate_failures -= 1
        if failed:
            ring[pos] = 1
            self._rate_failures += 1
            self._consecutive += 1
        else:
            ring[pos] = 0
            self._consecutive = 0
        pos += 1
        self._ring_pos = 0 if pos == len(ring) else pos
        if self._calls_in_window < len(ring):
            self._calls_in_window += 1
        if failed:
            cfg = self.config
            if self._consecutive >= cfg.failure_threshold:
                self._transition(_OPEN, f"{self._consecutive} consecutive failures")
                return
            if (
                self._calls_in_window >= cfg.minimum_calls
                and self._rate_failures >= cfg.failure_rate_threshold * self._calls_in_window
            ):
                self._transition(
                    _OPEN,
                    f"failure rate {self._rate_failures}/{self._calls_in_window}",
                )
                return
        self._refresh_steady()

    def _is_failure(self, exc: BaseException) -> bool:
        return isinstance(exc, self._failure_exc) and not isinstance(exc, self._ignored_exc)

    def _on_error(self, exc: BaseException) -> None:
        """Record a call that raised: a failure, or (ignored types) a release."""
        if self._is_failure(exc):
            self._record(True)
        else:
            self._release()

    def _release(self) -> None:
        """A call admitted but ended without a verdict (cancelled, ignored, refused later)."""
        if self._state is _HALF_OPEN and self._half_open_inflight > 0:
            # Free the trial slot and decide nothing.
            self._half_open_inflight -= 1

    def _on_done(self, started: float) -> None:
        """Record a call that returned; slow calls count as failures."""
        if self._slow_s is not None and self._clock() - started > self._slow_s:
            self._record(True)
        elif not self._steady:
            self._record(False)

    async def __aenter__(self) -> CircuitBreaker:
        if self._state is not _CLOSED:
            self._admit()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Without slow-call detection the start time is not needed; with it,
        # `async with` cannot carry a per-call start, so it is measured by call().
        if exc is None:
            if not self._steady:
                self._record(False)
        else:
            self._on_error(exc)

    async def call(
        self, fn: Callable[..., Awaitable[R]] | Callable[..., R], /, *args: Any, **kwargs: Any
    ) -> R:
        """Run ``fn(*args, **kwargs)`` (sync or async) through the breaker.

        Raises:
            CircuitOpenError: the breaker refused the call.
        """
        if self._state is not _CLOSED:
            self._admit()
        if self._slow_s is None:
            # Common case first: no clock read, and a plain coroutine is recognised by
            # its exact type before the (slower) general awaitable check.
            try:
                result = fn(*args, **kwargs)
                if type(result) is _CoroutineType or inspect.isawaitable(result):
                    result = await result
            except BaseException as exc:
                self._on_error(exc)
                raise
            if not self._steady:
                self._record(False)
            return result
        started = self._clock()
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            self._on_error(exc)
            raise
        self._on_done(started)
        return result

    def call_sync(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Run a sync ``fn`` through the breaker without an event loop."""
        if self._state is not _CLOSED:
            self._admit()
        started = self._clock() if self._slow_s is not None else 0.0
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._on_error(exc)
            raise
        self._on_done(started)
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate an async or sync function so every call goes through the breaker."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call_sync(fn, *args, **kwargs)

        return sync_wrapper

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"
