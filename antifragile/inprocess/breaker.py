"""Circuit breaker: the per-dependency switch every guarded call goes through.

Resilience4j-style state machine with four states (CLOSED, OPEN, HALF_OPEN and
FORCED_OPEN), one transition method checked against a table of legal moves, an
injectable monotonic clock, and listeners that can never break the call path.

Semantics (kept by every call path: ``call``, ``call_sync``, ``async with``, the
decorator and :class:`~antifragile.inprocess.guard.Guard`):

* **Generations.** Every transition starts a new generation (a round). An admitted
  call carries the generation it was admitted in (its *token*). Only an outcome of the
  current generation decides anything: a current CLOSED outcome is counted and checked
  against the thresholds, a current HALF_OPEN (trial) outcome closes or reopens the
  breaker. An outcome of an older generation (a call admitted before the breaker
  tripped, or a trial that outlived its round) is *stale*: it updates the sliding window
  and nothing else, and never frees a trial permit - only the calls that hold permits
  of the current round free them.
* **Exact thresholds.** ``failure_rate_threshold`` is held as a fraction: the decimal
  a float stands for, to 15 significant digits (``0.55`` is 11/20, never
  0.55000000000000004441; ``0.1 + 0.2`` is 3/10; see :func:`exact_rate`), and the window
  opens the breaker when ``failures * den >= num * calls`` (integers). Both thresholds
  (consecutive failures and rate) are checked on every recorded outcome, successes too.
* **Outcomes**, in this order: an exception of ``ignored_exceptions`` counts as nothing
  (a trial permit is freed, nothing is decided), and so does a refusal by this same
  breaker of a call nested inside one of its own (another breaker's refusal is a
  failure). An exception of ``failure_exceptions`` is a failure, and so is an error a
  chaos fault injected (:class:`~antifragile.inprocess.faults.InjectedFault`, whatever its
  type) or the ``TimeoutError`` of a :class:`~antifragile.inprocess.guard.Guard`'s own timeout.
  Any other ``Exception`` means the dependency answered: a success. A ``BaseException``
  that is not an ``Exception`` (cancellation, ``GeneratorExit``, ``KeyboardInterrupt``)
  counts as nothing. A call slower than ``slow_call_duration_s`` is a failure whatever
  it returned - and so is a call *cancelled* after it had already run longer than that
  (the caller's own timeout gave up on a slow dependency).
* **Reads are pure.** ``state``, ``retry_after()``, ``snapshot()`` never change
  anything. OPEN becomes HALF_OPEN on the next admission or by a loop timer; a round
  that still has a trial in flight ``half_open_max_wait_s`` after its first trial was
  admitted reopens the breaker (on the next admission or by the timer). Listeners fire
  on real transitions only.
* **One thread.** A breaker (and a guard) is not thread-safe: admission and recording
  are unlocked read-modify-writes. Use it from one thread at a time - the event loop's;
  ``call_sync`` is for code without a loop, not for sharing one breaker between threads
  (give each thread its own, or serialise the calls). ``snapshot()`` and the other reads
  are safe from any thread.
* **Configuration** is an immutable :class:`CircuitBreakerConfig`, replaced whole by
  :meth:`CircuitBreaker.reconfigure` (assigning ``breaker.config`` does the same).

Call protocol (what :class:`~antifragile.inprocess.guard.Guard` uses):
``token = breaker.acquire_permission()`` (raises :class:`CircuitOpenError`), then
exactly one of ``breaker.on_success(token, duration_s)``,
``breaker.on_error(token, duration_s, exc)`` or ``breaker.release(token)``. For a
hot path, ``breaker.steady`` (True when a success of any generation would change
nothing, so it need not be recorded) is a plain attribute, and
:meth:`~CircuitBreaker.add_change_hook` tells a caller of every transition (a new
``generation``: the token of calls admitted while CLOSED) and reconfiguration.

Hot path design (why the code looks the way it does):

* The breaker runs on one event loop, so there are no locks; every field is a slot.
* A CLOSED breaker whose sliding window holds no failure and is full ("steady")
  records a success with one attribute test and no allocation: an all-success ring
  stays all-success whatever its write position, so it needs no update.
* The clock is read only when slow-call detection is on, or while not CLOSED.
* Listeners run outside the call: sync listeners are called inside ``try`` (a
  raising one is logged), async listeners become tasks the breaker keeps a
  reference to until they finish.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import numbers
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from types import AsyncGeneratorType, GeneratorType, TracebackType
from types import CoroutineType as _CoroutineType
from typing import Any, ParamSpec, TypeVar, overload

from antifragile._fsm import IllegalTransitionError, TransitionTable
from antifragile.errors import AntifragileError, ConfigError
from antifragile.inprocess._aio import resolved_future

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

LEGAL_TRANSITIONS: TransitionTable[CircuitState] = TransitionTable(
    "circuit",
    {
        _CLOSED: frozenset({_OPEN, _FORCED_OPEN}),
        _OPEN: frozenset({_HALF_OPEN, _FORCED_OPEN, _CLOSED}),
        _HALF_OPEN: frozenset({_CLOSED, _OPEN, _FORCED_OPEN}),
        _FORCED_OPEN: frozenset({_CLOSED}),
    },
)
"""Every move the breaker may make; anything else is refused by ``_transition``."""

# What an exception means for the breaker (see _classify).
_FAILURE = 0
_SUCCESS = 1
_NOTHING = 2
_CANCELLED = 3  # nothing, unless the call was already slow when it was cancelled

_GENERATOR_TYPES = (GeneratorType, AsyncGeneratorType)
_COLD_TYPES = (_CoroutineType, GeneratorType, AsyncGeneratorType)


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


def count_as_failure(exc: BaseException) -> BaseException:
    """Mark ``exc`` so every breaker counts it as a failure of the dependency.

    Whatever a breaker's ``failure_exceptions`` say (only ``ignored_exceptions`` still
    exclude it): for a guard's own timeout. An exception class can carry the same mark
    as a class attribute ``_breaker_failure = True`` (an injected chaos fault does).

    Returns:
        ``exc`` itself.
    """
    setattr(exc, "_breaker_failure", True)  # noqa: B010 - a mark on the instance
    return exc


def exact_rate(value: float | int | str | Decimal | Fraction) -> Fraction:
    """The exact fraction a threshold means: ``0.55`` -> 11/20, ``"7/25"`` -> 7/25.

    A float is read as the decimal it stands for, rounded to 15 significant digits - the
    precision every float keeps (any decimal of up to 15 significant digits converts to
    a float and back unchanged) - never as its binary approximation. So ``0.55`` is
    11/20, and a threshold computed in floats means the decimal it approximates:
    ``0.1 + 0.2`` (0.30000000000000004) is 3/10, ``0.7 * 0.8`` (0.5599999999999999) is
    14/25. For more digits than that, pass a string, ``Decimal`` or ``Fraction``.

    Raises:
        ValueError: not a finite number.
        TypeError: not a number or a string.
    """
    if isinstance(value, bool):
        raise TypeError("a threshold is a number, not a bool")
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        return Fraction(format(value, ".15g"))
    if isinstance(value, int | Decimal | str):
        return Fraction(value)
    raise TypeError(f"a threshold is a number or a decimal string, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """Thresholds of one circuit breaker. Immutable; validated on construction.

    Replace a breaker's configuration whole with :meth:`CircuitBreaker.reconfigure`
    (``dataclasses.replace(breaker.config, field=value)`` builds the new one).

    Attributes:
        failure_threshold: Consecutive failures that open the breaker. Default 5.
        failure_rate_threshold: Share of failures in the sliding window that opens the
            breaker (0 < x <= 1), compared exactly: a float is read as the decimal it
            stands for, to 15 significant digits (``0.1 + 0.2`` is 3/10); a decimal
            string (``"0.55"``), ``Decimal`` or ``Fraction`` is accepted too (and kept to
            every digit). Default 0.5.
        window_size: Number of most recent calls in the sliding window. Default 100.
        minimum_calls: Calls the window must hold before the failure rate counts.
            Default 20.
        slow_call_duration_s: A call slower than this counts as a failure; ``None``
            turns slow-call detection off (and the clock is then never read on the
            success path). Default None.
        open_duration_s: Seconds OPEN before a trial call is allowed. Default 30.
        half_open_max_calls: Concurrent trial calls allowed while HALF_OPEN. Default 1.
        half_open_max_wait_s: Seconds a HALF_OPEN round may keep trial calls in flight,
            measured from its first trial's admission (with one trial, the time it holds
            its permit); a trial still running after this reopens the breaker
            (resilience4j's ``maxWaitDurationInHalfOpenState``). The clock restarts when
            no trial is in flight. ``None`` waits for ever. Default 60.
        failure_exceptions: Exception types that count as failures. Default
            ``(Exception,)``; an error injected by a chaos fault counts as a failure
            whatever its type. Other exceptions count as successes (the dependency
            answered), except non-``Exception`` ones such as
            ``asyncio.CancelledError``, which count as nothing (a call cancelled after
            running longer than ``slow_call_duration_s`` is a slow call: a failure).
        ignored_exceptions: Exception types that count as nothing, even if they match
            ``failure_exceptions`` (e.g. a 404 error class). Default none.
        failure_rate_fraction: The exact fraction of ``failure_rate_threshold`` (derived).

    Raises:
        ConfigError: a field has the wrong type (a count that is not an integer, a
            duration that is not a finite number) or is out of range; the one-line
            message names the field and the value.
    """

    failure_threshold: int = 5
    failure_rate_threshold: float | str | Decimal | Fraction = 0.5
    window_size: int = 100
    minimum_calls: int = 20
    slow_call_duration_s: float | None = None
    open_duration_s: float = 30.0
    half_open_max_calls: int = 1
    half_open_max_wait_s: float | None = 60.0
    failure_exceptions: tuple[type[BaseException], ...] = field(default=(Exception,))
    ignored_exceptions: tuple[type[BaseException], ...] = field(default=())
    failure_rate_fraction: Fraction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def bad(name: str, value: object, rule: str) -> ConfigError:
            return ConfigError(f"CircuitBreakerConfig.{name}: {rule} (got {value!r})")

        def whole(name: str, rule: str, minimum: int) -> None:
            value = getattr(self, name)
            # bool is an int subclass, but True is no count; a float count is a mistake.
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise bad(name, value, f"must be an integer {rule}")
            if value < minimum:
                raise bad(name, value, rule)

        def seconds(name: str, optional: bool) -> None:
            value = getattr(self, name)
            if value is None and optional:
                return
            rule = "must be a finite number of seconds > 0" + (" or None" if optional else "")
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(value)
                or not float(value) > 0
            ):
                raise bad(name, value, rule)

        whole("failure_threshold", ">= 1", 1)
        try:
            rate = exact_rate(self.failure_rate_threshold)
        except (ValueError, TypeError, ArithmeticError):
            raise bad(
                "failure_rate_threshold", self.failure_rate_threshold, "must be a number"
            ) from None
        if not 0 < rate <= 1:
            raise bad("failure_rate_threshold", self.failure_rate_threshold, "must be in (0, 1]")
        object.__setattr__(self, "failure_rate_fraction", rate)
        whole("window_size", ">= 1", 1)
        whole("minimum_calls", "in [1, window_size]", 1)
        if self.minimum_calls > self.window_size:
            rule = f"must be in [1, window_size] = [1, {self.window_size}]"
            raise bad("minimum_calls", self.minimum_calls, rule)
        seconds("slow_call_duration_s", optional=True)
        seconds("open_duration_s", optional=False)
        whole("half_open_max_calls", ">= 1", 1)
        seconds("half_open_max_wait_s", optional=True)
        for name in ("failure_exceptions", "ignored_exceptions"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in value
            ):
                raise bad(name, value, "must be a tuple of exception types")


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


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A side-effect-free reading of one breaker (safe for metrics and health).

    Attributes:
        name: Breaker name.
        state: Current state (as stored: never advanced by the read).
        generation: Transitions so far; the token of calls admitted now while CLOSED.
        consecutive_failures: Failures since the last success.
        calls_in_window: Outcomes the sliding window holds.
        failures_in_window: Failures among them.
        retry_after_s: Seconds until an OPEN breaker admits a trial (0.0 when due);
            None unless OPEN.
        half_open_in_flight: Trial permits held in the current HALF_OPEN round.
    """

    name: str
    state: CircuitState
    generation: int
    consecutive_failures: int
    calls_in_window: int
    failures_in_window: int
    retry_after_s: float | None
    half_open_in_flight: int

    @property
    def failure_rate(self) -> Fraction:
        """Exact failure share of the window (0 when empty)."""
        if not self.calls_in_window:
            return Fraction(0)
        return Fraction(self.failures_in_window, self.calls_in_window)


StateListener = Callable[[StateChange], Any]
"""A sync function or coroutine function receiving a :class:`StateChange`."""


def _is_async_callable(fn: object) -> bool:
    """True for coroutine functions, partials of them and objects with async __call__."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - the method itself is inspected
    return call is not None and inspect.iscoroutinefunction(call)


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

    Attributes:
        steady: True while a success of any generation would change nothing (CLOSED,
            full window without failures, no slow-call detection): a hot path may then
            skip :meth:`on_success`. Read-only: a plain attribute for speed, kept by the
            breaker.

    Raises:
        TypeError: ``config`` is not a :class:`CircuitBreakerConfig`.
    """

    __slots__ = (
        "_async_listener_tasks",
        "_calls_in_window",
        "_change_hooks",
        "_clock",
        "_config",
        "_consecutive",
        "_ctx_fast",
        "_ctx_open",
        "_ctx_stale",
        "_entered",
        "_exited",
        "_failure_exc",
        "_gen",
        "_half_open_inflight",
        "_ignored_exc",
        "_listeners",
        "_opened_at",
        "_rate_den",
        "_rate_failures",
        "_rate_num",
        "_ring",
        "_ring_pos",
        "_scopes",
        "_slow_s",
        "_state",
        "_timer",
        "_trial_since",
        "name",
        "steady",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self._clock: Clock = clock or time.monotonic
        self._state: CircuitState = _CLOSED
        self._gen = 0
        self._consecutive = 0
        self._ring = bytearray(1)
        self._ring_pos = 0
        self._calls_in_window = 0
        self._rate_failures = 0
        # True when CLOSED with a full, failure-free window and no slow-call detection:
        # then a success changes nothing and costs one attribute test.
        self.steady = False
        self._opened_at = 0.0
        self._trial_since = 0.0
        self._half_open_inflight = 0
        self._listeners: list[StateListener] = []
        self._change_hooks: list[Callable[[CircuitBreaker], None]] = []
        self._async_listener_tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        # `async with breaker:` has nowhere to keep a token per entry. While CLOSED
        # without slow-call detection, entries are counted (_ctx_open); a transition
        # makes the open ones stale (_ctx_stale), and until they have all left, entries
        # keep (token, started) in per-task stacks (_scopes) instead - so every exit
        # knows its generation exactly.
        self._scopes: dict[asyncio.Task[Any] | None, list[tuple[int, float | None]]] = {}
        self._ctx_open = 0
        self._ctx_stale = 0
        self._ctx_fast = False
        self._entered: asyncio.Future[CircuitBreaker] | None = None
        self._exited: asyncio.Future[None] | None = None
        self._apply_config(config if config is not None else CircuitBreakerConfig())
        self._ring = bytearray(self._config.window_size)
        self._refresh_ctx_fast()

    # ------------------------------------------------------------------ configuration

    @property
    def config(self) -> CircuitBreakerConfig:
        """The current (immutable) configuration; assigning one calls :meth:`reconfigure`."""
        return self._config

    @config.setter
    def config(self, config: CircuitBreakerConfig) -> None:
        self.reconfigure(config)

    def reconfigure(self, config: CircuitBreakerConfig) -> None:
        """Replace the whole configuration at once (every field takes effect now).

        State, generation and counts are kept; the window keeps its most recent
        outcomes (up to the new ``window_size``). No threshold is evaluated here: the
        next recorded outcome is checked against the new thresholds. An OPEN breaker's
        wait and a running trial's maximum wait are measured with the new durations.

        Raises:
            TypeError: ``config`` is not a :class:`CircuitBreakerConfig`.
        """
        old = self._config
        self._apply_config(config)
        if config.window_size != old.window_size:
            self._resize_window(config.window_size)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._state is _OPEN:
            self._schedule(self._opened_at + config.open_duration_s - self._clock())
        elif self._state is _HALF_OPEN and self._half_open_inflight:
            self._arm_trial_timer()
        self._refresh_steady()
        self._refresh_ctx_fast()
        self._run_change_hooks()

    def _apply_config(self, config: CircuitBreakerConfig) -> None:
        if not isinstance(config, CircuitBreakerConfig):
            raise TypeError(
                f"circuit {self.name!r}: config must be a CircuitBreakerConfig, "
                f"not {type(config).__name__}"
            )
        self._config = config
        self._rate_num = config.failure_rate_fraction.numerator
        self._rate_den = config.failure_rate_fraction.denominator
        self._slow_s = config.slow_call_duration_s
        self._failure_exc = config.failure_exceptions
        self._ignored_exc = config.ignored_exceptions

    def _resize_window(self, size: int) -> None:
        ring, calls, pos = self._ring, self._calls_in_window, self._ring_pos
        ordered = ring[:calls] if calls < len(ring) else ring[pos:] + ring[:pos]
        kept = ordered[-size:] if len(ordered) > size else ordered
        new = bytearray(size)
        new[: len(kept)] = kept
        self._ring = new
        self._calls_in_window = len(kept)
        self._ring_pos = len(kept) % size
        self._rate_failures = sum(kept)

    # ------------------------------------------------------------------ inspection

    @property
    def state(self) -> CircuitState:
        """Current state. A pure read: OPEN moves to HALF_OPEN on admission or by timer."""
        return self._state

    @property
    def generation(self) -> int:
        """Number of transitions so far (the round calls are admitted in)."""
        return self._gen

    @property
    def clock(self) -> Clock:
        """The monotonic clock the breaker reads (durations given to it come from it)."""
        return self._clock

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success (a failed trial call included)."""
        return self._consecutive

    @property
    def failure_rate(self) -> float:
        """Failure share of the sliding window (0.0 when empty); see ``snapshot()``."""
        return self._rate_failures / self._calls_in_window if self._calls_in_window else 0.0

    @property
    def calls_in_window(self) -> int:
        """Number of calls the sliding window holds (at most ``window_size``)."""
        return self._calls_in_window

    @property
    def failures_in_window(self) -> int:
        """Number of failures the sliding window holds."""
        return self._rate_failures

    def retry_after(self) -> float | None:
        """Seconds until an OPEN breaker admits a trial call (0.0 if due); None unless OPEN."""
        if self._state is not _OPEN:
            return None
        return max(0.0, self._opened_at + self._config.open_duration_s - self._clock())

    def snapshot(self) -> BreakerSnapshot:
        """Everything a reader needs, read without side effects (no transition, no hook)."""
        return BreakerSnapshot(
            name=self.name,
            state=self._state,
            generation=self._gen,
            consecutive_failures=self._consecutive,
            calls_in_window=self._calls_in_window,
            failures_in_window=self._rate_failures,
            retry_after_s=self.retry_after(),
            half_open_in_flight=self._half_open_inflight if self._state is _HALF_OPEN else 0,
        )

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

    def add_change_hook(self, hook: Callable[[CircuitBreaker], None]) -> None:
        """Call ``hook(breaker)`` first, synchronously, after every transition and reconfigure.

        For objects that mirror the breaker and must be current before any listener
        runs (a guard's fast-path flag, the health aggregator's sums). A hook must be
        cheap and must not call through the breaker; what it raises is logged.
        """
        self._change_hooks.append(hook)

    def remove_change_hook(self, hook: Callable[[CircuitBreaker], None]) -> None:
        """Stop calling a hook added with :meth:`add_change_hook` (no-op if absent)."""
        if hook in self._change_hooks:
            self._change_hooks.remove(hook)

    def _run_change_hooks(self) -> None:
        # A copy: a hook may detach itself (Guard.close) while they run.
        for hook in tuple(self._change_hooks):
            try:
                hook(self)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                log.exception("circuit %r: change hook failed", self.name)

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
            )  # the table's own check() without the name; kept inline on the hot path
        self._state = new
        self._gen += 1  # every call admitted before this is stale from now on
        self._half_open_inflight = 0
        self._ctx_stale += self._ctx_open
        self._ctx_open = 0
        now = self._clock()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if new is _OPEN:
            self._opened_at = now
            self._schedule(self._config.open_duration_s)
        elif new is _CLOSED:
            self._clear_window()
        self._refresh_steady()
        self._refresh_ctx_fast()
        change = StateChange(self.name, old, new, reason, now)
        self._run_change_hooks()
        # A copy: a listener may remove itself (or add one) while they run; iterating
        # the live list would skip the next listener.
        for listener in tuple(self._listeners):
            self._notify(listener, change)

    def _notify(self, listener: StateListener, change: StateChange) -> None:
        try:
            result = listener(change)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            # Cancellation too: a listener's error must never replace the call's own
            # outcome nor keep the next listeners from hearing the change.
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

    def _schedule(self, delay: float) -> None:
        # Idle paths must not stay OPEN (or stuck HALF_OPEN) forever: a loop timer
        # makes the move when no call comes; without a running loop, admission does.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(max(delay, 0.0), self._on_timer)

    def _arm_trial_timer(self) -> None:
        wait = self._config.half_open_max_wait_s
        if wait is not None and self._timer is None:
            self._schedule(self._trial_since + wait - self._clock())

    def _on_timer(self) -> None:
        self._timer = None
        state = self._state
        now = self._clock()
        if state is _OPEN:
            remaining = self._opened_at + self._config.open_duration_s - now
            if remaining <= 0:
                self._transition(_HALF_OPEN, "open duration elapsed")
            else:
                # The injected clock runs slower than the loop's: check again later.
                self._schedule(remaining)
        elif state is _HALF_OPEN and self._half_open_inflight:
            wait = self._config.half_open_max_wait_s
            if wait is None:
                return
            remaining = self._trial_since + wait - now
            if remaining <= 0:
                self._transition(_OPEN, f"trial call still running after {wait:g}s")
            else:
                self._schedule(remaining)

    def _clear_window(self) -> None:
        self._consecutive = 0
        ring = self._ring
        ring[:] = bytes(len(ring))
        self._ring_pos = 0
        self._calls_in_window = 0
        self._rate_failures = 0

    def _refresh_steady(self) -> None:
        self.steady = (
            self._state is _CLOSED
            and self._slow_s is None
            and self._rate_failures == 0
            and self._consecutive == 0
            and self._calls_in_window == len(self._ring)
        )

    # ------------------------------------------------------------------ call protocol

    def acquire_permission(self) -> int:
        """Admit one call or refuse it; returns the call's token (its generation).

        Moves OPEN -> HALF_OPEN when the open duration has passed, and HALF_OPEN ->
        OPEN when a trial has held its permit past ``half_open_max_wait_s``. Every
        admitted call must end with exactly one of :meth:`on_success`,
        :meth:`on_error` or :meth:`release`.

        Raises:
            CircuitOpenError: the breaker refused the call.
        """
        state = self._state
        if state is _CLOSED:
            return self._gen
        cfg = self._config
        if state is _OPEN:
            # One clock read decides both: half-open now, or refuse with the time left.
            elapsed = self._clock() - self._opened_at
            if elapsed < cfg.open_duration_s:
                raise CircuitOpenError(self.name, state, cfg.open_duration_s - elapsed)
            self._transition(_HALF_OPEN, "open duration elapsed")
            state = self._state  # a listener may have moved it again
            if state is _CLOSED:
                return self._gen
        if state is _HALF_OPEN:
            if self._half_open_inflight < cfg.half_open_max_calls:
                if not self._half_open_inflight:
                    self._trial_since = self._clock()
                    self._half_open_inflight = 1
                    self._arm_trial_timer()
                else:
                    self._half_open_inflight += 1
                return self._gen
            wait = cfg.half_open_max_wait_s
            if wait is not None and self._clock() - self._trial_since >= wait:
                self._transition(_OPEN, f"trial call still running after {wait:g}s")
                raise CircuitOpenError(self.name, _OPEN, cfg.open_duration_s)
        raise CircuitOpenError(self.name, state, None)

    def on_success(self, token: int, duration_s: float = 0.0) -> None:
        """Record a call that returned (a slow one counts as a failure).

        Args:
            token: What :meth:`acquire_permission` returned for the call.
            duration_s: How long the call took (only read with slow-call detection).
        """
        slow = self._slow_s
        if slow is not None and duration_s > slow:
            self._record(token, True)
        elif not self.steady:
            self._record(token, False)

    def on_error(self, token: int, duration_s: float, exc: BaseException) -> None:
        """Record a call that raised ``exc`` (failure, success or nothing; see module doc).

        Args:
            token: What :meth:`acquire_permission` returned for the call.
            duration_s: How long the call took (only read with slow-call detection).
            exc: The exception the call raised.
        """
        kind = self._classify(exc)
        if kind == _FAILURE:
            self._record(token, True)
        elif kind == _SUCCESS:
            self.on_success(token, duration_s)
        elif kind == _CANCELLED and self._slow_s is not None and duration_s > self._slow_s:
            # The caller gave up on a call that was already slow (an outer
            # asyncio.timeout / wait_for): it is a slow call. Counting it as nothing
            # would keep the breaker closed against a dependency that hangs.
            self._record(token, True)
        else:
            self.release(token)

    def release(self, token: int) -> None:
        """End an admitted call without a verdict (cancelled, ignored, refused later).

        Frees the call's trial permit if it holds one of the current round; a stale
        token frees nothing.
        """
        if token == self._gen and self._state is _HALF_OPEN and self._half_open_inflight:
            self._half_open_inflight -= 1

    def _classify(self, exc: BaseException) -> int:
        if isinstance(exc, self._ignored_exc):
            return _NOTHING
        if type(exc) is CircuitOpenError and self._refused_it(exc):
            # This breaker refused a call nested inside one of its own (the outer call
            # holds the trial permit): no call was made, nothing about the dependency.
            return _NOTHING
        if isinstance(exc, self._failure_exc) or getattr(exc, "_breaker_failure", False):
            # _breaker_failure: an error a chaos fault injected (InjectedFault), or a
            # guard's own timeout - a failure of the dependency by definition,
            # whatever its type.
            return _FAILURE
        if isinstance(exc, Exception):
            return _SUCCESS  # the dependency answered
        if isinstance(exc, asyncio.CancelledError):
            return _CANCELLED
        return _NOTHING  # interpreter exit, generator closed early by its consumer

    def _refused_it(self, exc: CircuitOpenError) -> bool:
        # Found from the traceback (error path only) rather than stored on the error:
        # a refusal stays three attribute stores, and the error stays picklable.
        tb = exc.__traceback__
        if tb is None:
            return False
        while tb.tb_next is not None:
            tb = tb.tb_next
        return tb.tb_frame.f_locals.get("self") is self

    def _add_to_window(self, failed: bool) -> None:
        ring = self._ring
        pos = self._ring_pos
        if ring[pos]:
            self._rate_failures -= 1
        if failed:
            ring[pos] = 1
            self._rate_failures += 1
        else:
            ring[pos] = 0
        pos += 1
        self._ring_pos = 0 if pos == len(ring) else pos
        if self._calls_in_window < len(ring):
            self._calls_in_window += 1

    def _record(self, token: int, failed: bool) -> None:
        """Record one outcome (slow path: anything but a steady success)."""
        self._add_to_window(failed)
        if token != self._gen:
            # Stale: admitted in an earlier round. It says something about the
            # dependency (the window) but decides nothing and holds no permit.
            self._refresh_steady()
            return
        state = self._state
        if state is _HALF_OPEN:
            self._half_open_inflight -= 1
            if failed:
                self._consecutive += 1
                self._transition(_OPEN, "trial call failed")
            else:
                self._consecutive = 0
                self._transition(_CLOSED, "trial call succeeded")
            return
        if state is not _CLOSED:  # pragma: no cover - no admission outside these two
            return
        cfg = self._config
        if failed:
            self._consecutive += 1
            if self._consecutive >= cfg.failure_threshold:
                self._transition(_OPEN, f"{self._consecutive} consecutive failures")
                return
        else:
            self._consecutive = 0
        calls = self._calls_in_window
        failures = self._rate_failures
        if calls >= cfg.minimum_calls and failures * self._rate_den >= self._rate_num * calls:
            self._transition(_OPEN, f"failure rate {failures}/{calls}")
            return
        self._refresh_steady()

    # ------------------------------------------------------------------ async with

    def __aenter__(self) -> Awaitable[CircuitBreaker]:
        # Nothing here waits, so both halves of `async with` are plain methods
        # returning an already-resolved future (no coroutine frame per entry).
        if self._ctx_fast:
            # CLOSED, no slow-call detection, nothing stale or tracked open: count
            # the entry instead of storing a token (see _ctx_open in __init__).
            self._ctx_open += 1
        else:
            self._enter_tracked()
        entered = self._entered
        if entered is None:
            entered = self._entered = resolved_future(self)
            self._exited = resolved_future(None)
        return entered

    def _enter_tracked(self) -> None:
        token = self._gen if self._state is _CLOSED else self.acquire_permission()
        # None: not timed (slow-call detection was off when the call began).
        started = self._clock() if self._slow_s is not None else None
        task = asyncio.current_task()
        stack = self._scopes.get(task)
        if stack is None:
            self._scopes[task] = [(token, started)]
        else:
            stack.append((token, started))
        self._ctx_fast = False  # counted entries never nest inside tracked ones

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        if self._scopes:
            self._exit_tracked(exc)
        elif self._ctx_stale:
            self._exit_stale(exc)
        else:
            # A counted entry of the current generation (no stale one is open: then
            # entries are not counted).
            self._ctx_open -= 1
            if exc is None:
                if not self.steady:
                    self._record(self._gen, False)
            else:
                self.on_error(self._gen, 0.0, exc)
        return self._exited  # type: ignore[return-value]  # set with _entered

    def _exit_stale(self, exc: BaseException | None) -> None:
        self._ctx_stale -= 1
        if not self._ctx_stale:
            self._refresh_ctx_fast()
        # -1 is older than any generation: recorded as stale (window only).
        if exc is None:
            self.on_success(-1)
        else:
            self.on_error(-1, 0.0, exc)

    def _exit_tracked(self, exc: BaseException | None) -> None:
        scopes = self._scopes
        task = asyncio.current_task()
        stack = scopes.get(task)
        if stack is None:
            if self._ctx_stale:  # a counted entry of an older generation
                self._exit_stale(exc)
                return
            if self._ctx_open:  # a counted entry of the current generation
                self._ctx_open -= 1
                if exc is None:
                    self.on_success(self._gen)
                else:
                    self.on_error(self._gen, 0.0, exc)
                return
            # No counted entry is open: a tracked entry of another task is leaving from
            # this one (an AsyncExitStack closed elsewhere, an async fixture torn down in
            # another task). Take the entry of a finished task first, else the oldest.
            task = next((t for t in scopes if t is not None and t.done()), next(iter(scopes)))
            stack = scopes[task]
        token, started = stack.pop()
        if not stack:
            del scopes[task]
            if not scopes:
                self._refresh_ctx_fast()
        duration = self._clock() - started if started is not None else 0.0
        if exc is None:
            self.on_success(token, duration)
        else:
            self.on_error(token, duration, exc)

    def _refresh_ctx_fast(self) -> None:
        self._ctx_fast = (
            self._state is _CLOSED
            and self._slow_s is None
            and not self._ctx_stale
            and not self._scopes
        )

    # ------------------------------------------------------------------ call styles

    async def call(
        self, fn: Callable[..., Awaitable[R]] | Callable[..., R], /, *args: Any, **kwargs: Any
    ) -> R:
        """Run ``fn(*args, **kwargs)`` through the breaker; its result is awaited if awaitable.

        Raises:
            CircuitOpenError: the breaker refused the call.
            TypeError: ``fn`` returned a generator (decorate the generator function
                instead: the decorator protects its iteration).
        """
        token = self._gen if self._state is _CLOSED else self.acquire_permission()
        if self._slow_s is None:
            # Common case first: no clock read, and a plain coroutine is recognised by
            # its exact type before the (slower) general awaitable check.
            try:
                result = fn(*args, **kwargs)
                if type(result) is _CoroutineType or inspect.isawaitable(result):
                    result = await result
                elif isinstance(result, _GENERATOR_TYPES):
                    self._refuse_generator(token, result)
            except BaseException as exc:
                if not isinstance(exc, _RefusedGenerator):
                    self.on_error(token, 0.0, exc)
                raise
            if not self.steady:
                self._record(token, False)
            return result
        clock = self._clock
        started = clock()
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            elif isinstance(result, _GENERATOR_TYPES):
                self._refuse_generator(token, result)
        except BaseException as exc:
            if not isinstance(exc, _RefusedGenerator):
                self.on_error(token, clock() - started, exc)
            raise
        self.on_success(token, clock() - started)
        return result

    def call_sync(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Run a sync ``fn`` through the breaker without an event loop.

        Not thread-safe (see the module docstring): calls from several threads at once
        can lose counts or admit extra trial calls; give each thread its own breaker or
        serialise the calls with a lock.

        Raises:
            CircuitOpenError: the breaker refused the call.
            TypeError: ``fn`` returned an awaitable (use :meth:`call`) or a generator
                (decorate the generator function); nothing is recorded and the call's
                trial permit, if any, is freed.
        """
        token = self._gen if self._state is _CLOSED else self.acquire_permission()
        clock = self._clock
        timed = self._slow_s is not None
        started = clock() if timed else 0.0
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.on_error(token, clock() - started if timed else 0.0, exc)
            raise
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never run: no "never awaited" warning, no side effect
            self.release(token)
            raise TypeError(
                f"circuit {self.name!r}: call_sync() got an awaitable from {fn!r}; "
                "use `await breaker.call(...)` for async callables"
            )
        if isinstance(result, _GENERATOR_TYPES):
            self._refuse_generator(token, result)
        self.on_success(token, clock() - started if timed else 0.0)
        return result

    def _refuse_generator(self, token: int, gen: Any) -> None:
        if isinstance(gen, GeneratorType):
            gen.close()
        self.release(token)
        raise _RefusedGenerator(
            f"circuit {self.name!r}: the call returned a generator; decorate the "
            "generator function with the breaker so its iteration is protected"
        )

    # ------------------------------------------------------------------ decorator

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a callable so every call (or iteration) goes through the breaker.

        * coroutine functions, partials of them and objects with ``async __call__``:
          an async wrapper;
        * generator and async generator functions: the iteration is the call - it is
          admitted on the first ``next()``/``anext()``, an exception raised while
          iterating is recorded, exhaustion is a success, closing early records
          nothing (slow-call detection measures first item to exhaustion);
        * anything else: a sync wrapper, admitted when called, that still protects
          what the callable returns: a coroutine or generator (nothing of it has run
          yet) is handed back wrapped, its admission moved to the await or the first
          ``next()`` - one never run holds no trial permit; an ``asyncio.Future``
          is returned as is, its outcome recorded when it completes (awaited or not);
          any other awaitable is handed back wrapped;
        * a ``staticmethod`` or ``classmethod`` object (``@breaker`` written above
          ``@staticmethod``): its function is decorated and re-wrapped the same way,
          so the method binds as before.
        """
        if isinstance(fn, staticmethod | classmethod):
            # The descriptor itself is not the callable (a classmethod is not callable
            # at all): wrapping it in a plain function would bind `self` to it.
            return type(fn)(self(fn.__func__))
        if inspect.isasyncgenfunction(fn):
            return self._wrap_async_gen(fn)
        if inspect.isgeneratorfunction(fn):
            return self._wrap_gen(fn)
        if _is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            token = self._gen if self._state is _CLOSED else self.acquire_permission()
            clock = self._clock
            started = clock()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self.on_error(token, clock() - started, exc)
                raise
            if isinstance(result, _COLD_TYPES):
                # Nothing of it has run yet (a coroutine, a generator): it is admitted
                # when awaited or first iterated, as a coroutine or generator function
                # is. One never run (closed, or its task cancelled before its first
                # step) then holds no trial permit.
                self.release(token)
                return self._cold(result)
            if isinstance(result, asyncio.Future):
                # Already running, and observable: its outcome is recorded when it
                # completes, awaited or not; the caller gets the future itself.
                result.add_done_callback(functools.partial(self._future_done, token, started))
                return result
            if inspect.isawaitable(result):
                # An async function behind a sync facade: the outcome is the await.
                return self._finish_awaitable(token, started, result)
            self.on_success(token, clock() - started)
            return result

        return sync_wrapper

    def _cold(self, result: Any) -> Any:
        if isinstance(result, GeneratorType):
            return self._drive_gen_cold(result)
        if isinstance(result, AsyncGeneratorType):
            return self._drive_async_gen(None, 0.0, lambda: result)
        return self._finish_awaitable(None, 0.0, result)

    def _drive_gen_cold(self, gen: Generator[Any, Any, R]) -> Generator[Any, Any, R]:
        try:
            token = self.acquire_permission()  # on the first next()
        except BaseException:
            gen.close()
            raise
        return (yield from self._drive_gen(token, self._clock(), gen))

    def _future_done(self, token: int, started: float, future: asyncio.Future[Any]) -> None:
        duration = self._clock() - started
        if future.cancelled():
            self.on_error(token, duration, asyncio.CancelledError())
        elif (exc := future.exception()) is not None:
            self.on_error(token, duration, exc)
        else:
            self.on_success(token, duration)

    async def _finish_awaitable(
        self, token: int | None, started: float, awaitable: Awaitable[R]
    ) -> R:
        if token is None:  # a coroutine not started yet: admitted now, when awaited
            try:
                token = self.acquire_permission()
            except BaseException:
                if inspect.iscoroutine(awaitable):
                    awaitable.close()  # refused: it never runs (no "never awaited")
                raise
            started = self._clock()
        try:
            result = await awaitable
        except BaseException as exc:
            self.on_error(token, self._clock() - started, exc)
            raise
        self.on_success(token, self._clock() - started)
        return result

    def _wrap_gen(self, fn: Callable[P, Generator[Any, Any, Any]]) -> Callable[P, Any]:
        @functools.wraps(fn)
        def gen_wrapper(*args: P.args, **kwargs: P.kwargs) -> Generator[Any, Any, Any]:
            token = self.acquire_permission()  # on the first next(): iteration is the call
            started = self._clock()
            return (yield from self._drive_gen(token, started, fn(*args, **kwargs)))

        return gen_wrapper

    def _drive_gen(
        self, token: int, started: float, gen: Generator[Any, Any, R]
    ) -> Generator[Any, Any, R]:
        try:
            result = yield from gen
        except BaseException as exc:  # GeneratorExit (closed early) counts as nothing
            self.on_error(token, self._clock() - started, exc)
            raise
        self.on_success(token, self._clock() - started)
        return result

    def _wrap_async_gen(self, fn: Callable[P, AsyncGenerator[Any, Any]]) -> Callable[P, Any]:
        drive = self._drive_async_gen

        @functools.wraps(fn)
        async def agen_wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Any, Any]:
            # An async generator function itself (inspect.isasyncgenfunction holds), so
            # admission happens on the first anext(), as the wrapped body runs only then.
            # Its own loop forwards values, sends and throws to the protected iterator.
            inner = drive(None, 0.0, functools.partial(fn, *args, **kwargs))
            sent: Any = None
            thrown: BaseException | None = None
            try:
                while True:
                    try:
                        if thrown is not None:
                            value = await inner.athrow(thrown)
                        else:
                            value = await inner.asend(sent)
                    except StopAsyncIteration:
                        return
                    thrown = sent = None
                    try:
                        sent = yield value
                    except GeneratorExit:
                        raise
                    except BaseException as exc:
                        thrown = exc
            finally:
                await inner.aclose()

        return agen_wrapper

    async def _drive_async_gen(
        self,
        token: int | None,
        started: float,
        make: Callable[[], AsyncGenerator[Any, Any]],
    ) -> AsyncGenerator[Any, Any]:
        if token is None:
            token = self.acquire_permission()
            started = self._clock()
        agen = make()
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                try:
                    if thrown is not None:
                        value = await agen.athrow(thrown)
                    else:
                        value = await agen.asend(sent)
                except StopAsyncIteration:
                    break
                thrown = sent = None
                try:
                    sent = yield value
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as exc:  # thrown in by the consumer: forward it
                    thrown = exc
        except BaseException as exc:  # GeneratorExit (closed early) counts as nothing
            self.on_error(token, self._clock() - started, exc)
            raise
        self.on_success(token, self._clock() - started)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"


class _RefusedGenerator(TypeError):
    """A call returned a generator outside the decorator: refused, nothing recorded."""
