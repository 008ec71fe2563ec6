"""Circuit breaker: the per-dependency switch every guarded call goes through.

Resilience4j-style state machine (CLOSED, OPEN, HALF_OPEN, FORCED_OPEN), one
transition method checked against :data:`LEGAL_TRANSITIONS`, an injectable monotonic
clock, and listeners that can never break the call path. Every call path keeps these
semantics (``call``, ``call_sync``, ``async with``, the decorator, the Guard):

* **Generations.** Every transition starts a new generation (a round); an admitted
  call carries the one it was admitted in (its *token*). Only an outcome of the current
  generation decides anything (a CLOSED outcome is checked against the thresholds, a
  HALF_OPEN trial's closes or reopens the breaker). An older one is *stale*: it updates
  the sliding window only, and never frees a trial permit.
* **Thresholds** (consecutive failures, an exact failure rate: ``breaker_config``) are
  checked on every recorded outcome, successes too; what an outcome is:
  ``breaker_outcomes``. A call slower than ``slow_call_duration_s`` is a failure.
* **Reads are pure.** ``state``, ``retry_after()``, ``snapshot()`` change nothing. OPEN
  becomes HALF_OPEN on the next admission or by a loop timer; a round with a trial still
  in flight ``half_open_max_wait_s`` after its first admission reopens (likewise).
  Listeners fire on real transitions only.
* **One thread.** Not thread-safe (unlocked read-modify-writes): use a breaker from one
  thread - the event loop's; ``call_sync`` is for code without a loop. The reads are
  safe from any thread.
* **Configuration** is an immutable :class:`CircuitBreakerConfig`, replaced whole by
  :meth:`CircuitBreaker.reconfigure`.

Call protocol (what the Guard uses): ``token = acquire_permission()`` (raises
:class:`CircuitOpenError`), then exactly one of ``on_success(token, duration_s)``,
``on_error(token, duration_s, exc)`` or ``release(token)``. For hot paths, ``steady``
(a success would change nothing) is a plain attribute, and ``add_change_hook`` tells
of every transition (a new ``generation``) and reconfiguration.

Hot path design: no locks, every field a slot. A steady breaker records a success with
one attribute test (an all-success ring stays so whatever its write position). The
clock is read only with slow-call detection, or while not CLOSED.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from types import CoroutineType as _CoroutineType
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from antifragile.inprocess._aio import resolved_future
from antifragile.inprocess.breaker_config import CircuitBreakerConfig
from antifragile.inprocess.breaker_context import Entries
from antifragile.inprocess.breaker_listeners import Listeners
from antifragile.inprocess.breaker_outcomes import (
    CANCELLED,
    FAILURE,
    SUCCESS,
    SlidingWindow,
    classify,
)
from antifragile.inprocess.breaker_protection import (
    GENERATOR_TYPES,
    RefusedGenerator,
    call_sync,
    call_timed,
    protect,
    refuse_generator,
)
from antifragile.inprocess.breaker_state import (
    LEGAL_TRANSITIONS,
    BreakerSnapshot,
    CircuitOpenError,
    CircuitState,
    Clock,
    StateChange,
    StateListener,
)

log = logging.getLogger(__name__)

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN

P = ParamSpec("P")
R = TypeVar("R")


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
        steady: True while a success would change nothing (CLOSED, full window without
            failures, no slow-call detection): a hot path may skip :meth:`on_success`.
            Read-only (a plain attribute, for speed).

    Raises:
        TypeError: ``config`` is not a :class:`CircuitBreakerConfig`.
    """

    __slots__ = (
        "_clock",
        "_config",
        "_consecutive",
        "_entered",
        "_entries",
        "_exited",
        "_failure_exc",
        "_gen",
        "_half_open_inflight",
        "_ignored_exc",
        "_listeners",
        "_opened_at",
        "_rate_den",
        "_rate_num",
        "_slow_s",
        "_state",
        "_timer",
        "_trial_since",
        "_window",
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
        self.steady = False  # see the class docstring
        self._opened_at = 0.0
        self._trial_since = 0.0
        self._half_open_inflight = 0
        self._listeners: Listeners[CircuitBreaker] = Listeners(name)
        self._timer: asyncio.TimerHandle | None = None
        self._entries = Entries()  # `async with` (see breaker_context)
        self._entered: asyncio.Future[CircuitBreaker] | None = None
        self._exited: asyncio.Future[None] | None = None
        self._apply_config(config if config is not None else CircuitBreakerConfig())
        self._window = SlidingWindow(self._config.window_size)
        self._entries.set_plain(self._slow_s is None)

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
        outcomes (up to the new ``window_size``). The next recorded outcome is checked
        against the new thresholds; waits under way are measured with the new durations.

        Raises:
            TypeError: ``config`` is not a :class:`CircuitBreakerConfig`.
        """
        old = self._config
        self._apply_config(config)
        if config.window_size != old.window_size:
            self._window.resize(config.window_size)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._state is _OPEN:
            self._schedule(self._opened_at + config.open_duration_s - self._clock())
        elif self._state is _HALF_OPEN and self._half_open_inflight:
            self._arm_trial_timer()
        self._refresh_steady()
        self._entries.set_plain(self._state is _CLOSED and self._slow_s is None)
        self._listeners.run_hooks(self)

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
        w = self._window
        return w.failures / w.calls if w.calls else 0.0

    @property
    def calls_in_window(self) -> int:
        """Number of calls the sliding window holds (at most ``window_size``)."""
        return self._window.calls

    @property
    def failures_in_window(self) -> int:
        """Number of failures the sliding window holds."""
        return self._window.failures

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
            calls_in_window=self._window.calls,
            failures_in_window=self._window.failures,
            retry_after_s=self.retry_after(),
            half_open_in_flight=self._half_open_inflight if self._state is _HALF_OPEN else 0,
        )

    # ------------------------------------------------------------------ listeners

    def on_state_change(self, listener: StateListener) -> StateListener:
        """Register a listener (sync or async) called after every transition.

        A raising listener is logged and ignored; an async listener runs as a task
        off the call path. Returns the listener, so this works as a decorator.
        """
        self._listeners.add_listener(listener)
        return listener

    def remove_listener(self, listener: StateListener) -> None:
        """Unregister a listener added with :meth:`on_state_change` (no-op if absent)."""
        self._listeners.remove_listener(listener)

    def add_change_hook(self, hook: Callable[[CircuitBreaker], None]) -> None:
        """Call ``hook(breaker)`` first, synchronously, after every transition and reconfigure.

        For objects mirroring the breaker (a guard's fast-path flag, health sums). A hook
        must be cheap and must not call through the breaker; what it raises is logged.
        """
        self._listeners.add_hook(hook)

    def remove_change_hook(self, hook: Callable[[CircuitBreaker], None]) -> None:
        """Stop calling a hook added with :meth:`add_change_hook` (no-op if absent)."""
        self._listeners.remove_hook(hook)

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
        LEGAL_TRANSITIONS.check(old, new, f"circuit {self.name!r}")
        self._state = new
        self._gen += 1  # every call admitted before this is stale from now on
        self._half_open_inflight = 0
        self._entries.new_round()
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
        self._entries.set_plain(self._state is _CLOSED and self._slow_s is None)
        change = StateChange(self.name, old, new, reason, now)
        self._listeners.run_hooks(self)
        self._listeners.notify(change)

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
        self._window.clear()

    def _refresh_steady(self) -> None:
        self.steady = (
            self._state is _CLOSED
            and self._slow_s is None
            and self._consecutive == 0
            and self._window.failures == 0
            and self._window.full
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
        kind = classify(exc, self._failure_exc, self._ignored_exc, self)
        if kind == FAILURE:
            self._record(token, True)
        elif kind == SUCCESS:
            self.on_success(token, duration_s)
        elif kind == CANCELLED and self._slow_s is not None and duration_s > self._slow_s:
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

    def _record(self, token: int, failed: bool) -> None:
        """Record one outcome (slow path: anything but a steady success)."""
        self._window.add(failed)
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
        calls = self._window.calls
        failures = self._window.failures
        if calls >= cfg.minimum_calls and failures * self._rate_den >= self._rate_num * calls:
            self._transition(_OPEN, f"failure rate {failures}/{calls}")
            return
        self._refresh_steady()

    # ------------------------------------------------------------------ async with

    def __aenter__(self) -> Awaitable[CircuitBreaker]:
        # Nothing waits: both halves return an already-resolved future (no frame).
        entries = self._entries
        if entries.fast:
            entries.open += 1  # counted, not tracked: see breaker_context
        else:
            entries.enter_tracked(self)
        entered = self._entered
        if entered is None:
            entered = self._entered = resolved_future(self)
            self._exited = resolved_future(None)
        return entered

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        entries = self._entries
        if entries.scopes or entries.stale:
            entries.exit_slow(self, exc)
        else:
            # A counted entry of the current generation.
            entries.open -= 1
            if exc is None:
                if not self.steady:
                    self._record(self._gen, False)
            else:
                self.on_error(self._gen, 0.0, exc)
        return self._exited  # type: ignore[return-value]  # set with _entered

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
                elif isinstance(result, GENERATOR_TYPES):
                    refuse_generator(self, token, result)
            except BaseException as exc:
                if not isinstance(exc, RefusedGenerator):
                    self.on_error(token, 0.0, exc)
                raise
            if not self.steady:
                self._record(token, False)
            return result
        timed: R = await call_timed(self, token, fn, *args, **kwargs)
        return timed

    def call_sync(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Run a sync ``fn`` through the breaker without an event loop.

        Not thread-safe (module docstring): give each thread its own breaker, or
        serialise the calls with a lock.

        Raises:
            CircuitOpenError: the breaker refused the call.
            TypeError: ``fn`` returned an awaitable (use :meth:`call`) or a generator
                (decorate the generator function); nothing is recorded and the call's
                trial permit, if any, is freed.
        """
        return call_sync(self, fn, *args, **kwargs)

    # ------------------------------------------------------------------ decorator

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a callable so every call (or iteration) goes through the breaker.

        Coroutine functions, generator functions (the iteration is the call), sync
        functions and what they return (coroutines, generators, futures, awaitables),
        static and class methods: see :mod:`antifragile.inprocess.breaker_protection`.
        """
        return protect(self, fn)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"
