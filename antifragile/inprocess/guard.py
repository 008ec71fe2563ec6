"""Guard: the one object a service wraps each dependency call with.

A guard combines the dependency's circuit breaker, the :class:`Fault` (if any) the
chaos engine installed for it, metering of the call, and the optional timeout and
concurrency limit that fault kinds use.

Hot path: while the breaker is CLOSED and nothing else is configured (no fault,
timeout, concurrency limit or slow-call detection) the ``_plain`` flag is True, and a
call costs the flag test, the ``breaker.steady`` test, one counter increment (harvested
by the metering flusher) and its latency: two ``perf_counter_ns`` reads, a table lookup
and one increment of :attr:`traffic` (see :mod:`~antifragile.inprocess.latency`; ~0.2 µs
of the call's cost, mostly the two clock reads). The guard follows its breaker's transitions and
reconfigurations (``add_change_hook``) to keep the flag and ``_plain_gen`` (the
breaker's generation: the token of a call admitted while CLOSED) current.

Breaker protocol: ``acquire_permission()`` gives a token, then one of ``on_success``,
``on_error`` or ``release``. ``async with guard`` has nowhere to keep a token per call
on the plain path, so it counts plain entries: at each transition the open ones become
stale, and no plain entry is made until every stale one has left - so a plain exit
knows its generation.

Faults run inside the guard's timeout: a LATENCY fault of 1 s under a 0.2 s timeout
makes the call raise TimeoutError at 0.2 s, as the real slow dependency would.
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from antifragile.errors import ConfigError
from antifragile.inprocess._aio import resolved_future
from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_state import CircuitOpenError, CircuitState
from antifragile.inprocess.guard_support import (
    ConcurrencyLimitError,
    Fault,
    Scope,
    TrafficCounting,
    sync_result,
    verdict,
)
from antifragile.inprocess.latency import _NS, _TABLE, WindowCounts, far_bucket

if TYPE_CHECKING:
    from antifragile.models.recovery import RecoveryRequest

R = TypeVar("R")

log = logging.getLogger(__name__)

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN

__all__ = ["ConcurrencyLimitError", "Fault", "Guard"]


class Guard(TrafficCounting):
    """Breaker + fault enforcement + metering (+ optional timeout and concurrency limit).

    Create guards with :meth:`antifragile.inprocess.runtime.Runtime.guard`; use them as
    ``async with guard:`` or ``await guard.call(coroutine_function, *args)``.

    Args:
        name: Dependency name (breaker name, fault target, recovery service).
        breaker: The dependency's breaker.
        probe: URL that proves the dependency is healthy (used by recovery).
        recovery: Recovery request started when the breaker opens (None: no recovery).
        timeout_s: Per-call timeout; None = none. Default None.
        max_concurrency: Calls allowed in flight at once; None = unlimited. Default None.
        tenant_id: Tenant metered calls are billed to. Default ``"default"``.
        operation: Operation name of metered calls. Default ``"guarded_call:{name}"``.
        ns_clock: Nanosecond clock timing calls for :attr:`traffic`. Default
            ``time.perf_counter_ns``.

    Attributes:
        traffic: This window's counts of calls made without a fault (see
            :mod:`~antifragile.inprocess.latency`; :meth:`rotate_window` starts the next).
        under_fault: This window's counts of calls made while a fault was installed.

    Raises:
        ConfigError: ``timeout_s`` is not a finite number > 0, or ``max_concurrency`` not
            an integer >= 0 (setting either attribute later checks the same).
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_entered",
        "_exited",
        "_fault",
        "_harvested",
        "_inflight",
        "_last_state",
        "_max_concurrency",
        "_metered",
        "_ns",
        "_plain",
        "_plain_gen",
        "_plain_open",
        "_plain_stale",
        "_scopes",
        "_timeout_s",
        "breaker",
        "name",
        "operation",
        "probe",
        "recovery",
        "tenant_id",
    )

    def __init__(
        self,
        name: str,
        breaker: CircuitBreaker,
        *,
        probe: str | None = None,
        recovery: RecoveryRequest | None = None,
        timeout_s: float | None = None,
        max_concurrency: int | None = None,
        tenant_id: str = "default",
        operation: str | None = None,
        ns_clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.name = name
        self.breaker = breaker
        self.probe = probe
        self.recovery = recovery
        self.tenant_id = tenant_id
        self.operation = operation or f"guarded_call:{name}"
        self._fault: Fault | None = None
        self._timeout_s: float | None = None
        self._max_concurrency: int | None = None
        self._inflight = 0
        self._metered = 0
        self._harvested = 0
        self._scopes: dict[asyncio.Task[Any] | None, list[Scope]] = {}
        self._plain = False
        self._closed = False
        self._entered: asyncio.Future[Guard] | None = None
        self._exited: asyncio.Future[None] | None = None
        # Open plain `async with` entries of generation _plain_gen, and of older ones.
        self._plain_gen = breaker.generation
        self._plain_open = 0
        self._plain_stale = 0
        self._clock = breaker.clock
        self._ns = ns_clock
        self.traffic = WindowCounts()
        self.under_fault = WindowCounts()
        self._lat = self.traffic.latency
        # Start of the open plain `async with` entry not filed by task (-1: none), and
        # of the plain entries made while another was open, by task (see __aenter__).
        self._lat_anon = -1
        self._lat_tasks: dict[asyncio.Task[Any] | None, list[int]] = {}
        self._last_state = breaker.state
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        breaker.add_change_hook(self._on_breaker_change)
        self._refresh()

    # ------------------------------------------------------------------ configuration

    @property
    def timeout_s(self) -> float | None:
        """Per-call timeout in seconds (None: none); the TIMEOUT fault sets it."""
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float | None) -> None:
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or not value > 0
        ):
            # nan passes `value <= 0` and would put a nan deadline in the loop's timers.
            raise ConfigError(
                f"Guard.timeout_s: must be a finite number of seconds > 0 or None (got {value!r})"
            )
        self._timeout_s = value
        self._refresh()

    @property
    def max_concurrency(self) -> int | None:
        """Calls allowed in flight (None: unlimited); RESOURCE_EXHAUSTION lowers it."""
        return self._max_concurrency

    @max_concurrency.setter
    def max_concurrency(self, value: int | None) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0
        ):
            raise ConfigError(
                f"Guard.max_concurrency: must be an integer >= 0 or None (got {value!r})"
            )
        self._max_concurrency = value
        self._refresh()

    @property
    def fault(self) -> Fault | None:
        """The active fault (see :meth:`install_fault`)."""
        return self._fault

    @property
    def in_flight(self) -> int:
        """Calls in flight counted against ``max_concurrency`` (0 when unlimited)."""
        return self._inflight

    @property
    def calls(self) -> int:
        """Calls that reached the dependency since the guard was created."""
        return self._harvested + self._metered

    def install_fault(self, fault: Fault | None) -> None:
        """Enforce ``fault`` on every call from now on (None: no fault).

        Called by :class:`~antifragile.inprocess.fault_table.FaultTable`, which also
        tells the fault (``on_install``/``on_remove``); the guard only stores it.
        """
        self._fault = fault
        self._note_experiment()
        self._refresh()

    def hold_slots(self, count: int) -> Callable[[], None]:
        """Occupy ``count`` concurrency slots until the returned function is called.

        For the RESOURCE_EXHAUSTION/CONNECTIONS fault: held slots count against
        ``max_concurrency`` like calls in flight. Releasing twice is a no-op.
        """
        self._inflight += count
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._inflight -= count

        return release

    def _on_breaker_change(self, breaker: CircuitBreaker) -> None:
        state = breaker.state
        if state is _OPEN and self._last_state is not _OPEN:
            (self.under_fault if self._fault is not None else self.traffic).breaker_openings += 1
        self._last_state = state
        generation = breaker.generation
        if generation != self._plain_gen:
            # A new round: plain `async with` entries still open belong to the old one.
            self._plain_gen = generation
            self._plain_stale += self._plain_open
            self._plain_open = 0
        self._refresh()

    def _refresh(self) -> None:
        b = self.breaker
        self._plain = (
            b.state is _CLOSED
            and b.config.slow_call_duration_s is None
            and self._fault is None
            and self._timeout_s is None
            and self._max_concurrency is None
            and not self._plain_stale
            and not self._scopes  # plain entries never nest inside tracked ones
            and not self._closed  # no hook tells a closed guard of transitions
        )

    def close(self) -> None:
        """Detach from the breaker (the runtime calls this when dropping the guard).

        A closed guard still works and still enforces its breaker, on the slower
        admission path: without the breaker's hook it cannot keep a fast-path flag
        current.
        """
        self.breaker.remove_change_hook(self._on_breaker_change)
        self._closed = True
        # Plain entries still open can no longer learn of a transition: count them as
        # stale now (window only), never as deciding outcomes of a later round.
        self._plain_stale += self._plain_open
        self._plain_open = 0
        self._refresh()

    # ------------------------------------------------------------------ metering source

    def harvest_usage(self) -> tuple[str, str, int, int]:
        """Counted calls since the last harvest, as ``(tenant, operation, units, count)``."""
        n = self._metered
        self._metered = 0
        self._harvested += n
        return self.tenant_id, self.operation, n, n

    def pending_usage(self) -> int:
        """Calls counted but not yet harvested by the metering flusher."""
        return self._metered

    # ------------------------------------------------------------------ call

    async def call(self, fn: Callable[..., Awaitable[R]], /, *args: Any) -> R:
        """Await ``fn(*args)`` through the guard (use functools.partial for kwargs).

        A sync ``fn`` works too, as with ``breaker.call``: its return value is the result
        (it is not an error of the dependency).

        Raises:
            CircuitOpenError: the breaker refused the call.
            ConcurrencyLimitError: ``max_concurrency`` calls are already in flight.
            TimeoutError: the call (fault effects included) exceeded ``timeout_s``.
        """
        if self._plain:
            b = self.breaker
            token = self._plain_gen  # the breaker's generation: CLOSED admits at once
            now = self._ns
            t0 = now()
            try:
                # Two statements: `result` holds what fn returned if the await refuses it.
                result: Any = fn(*args)
                result = await result
            except BaseException as exc:
                # Only on errors: the hot path is as is. (A refused generator: nothing
                # recorded, and a CLOSED call holds no permit to free.)
                if not sync_result(exc, locals()):
                    b.on_error(token, 0.0, exc)
                    self._metered += 1
                    self._record(now() - t0, exc, False)
                    raise
            # latency.bucket_of_ns, inlined (a call costs ~50 ns): a table, one compare.
            ns = now() - t0
            try:
                i = _TABLE[ns >> 14]
            except IndexError:
                i = far_bucket(ns)
            if ns > _NS[i]:
                i += 1
            self._lat[i] += 1
            if not b.steady:
                b.on_success(token)
            self._metered += 1
            return result  # type: ignore[no-any-return]
        # Refused here, before another coroutine or frame exists. The try costs nothing
        # until it catches (CPython >= 3.11); counting a refusal costs it ~150 ns.
        if self._fault is None:
            try:
                token = self.breaker.acquire_permission()
            except CircuitOpenError:
                self.traffic.refused += 1
                raise
            return await self._call_full(token, fn, args)
        return await self._call_full(self._admit_under_fault(), fn, args)

    def _admit_under_fault(self) -> int:
        """``breaker.acquire_permission()``, telling the fault of a refusal."""
        try:
            return self.breaker.acquire_permission()
        except CircuitOpenError as exc:
            self.under_fault.refused += 1
            self._tell_refused(exc)
            raise

    async def _call_full(
        self, token: int, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...]
    ) -> R:
        """The configured path; the breaker has already admitted the call."""
        b = self.breaker
        counted = self._take_slot(token)
        clock = self._clock
        under_fault = self._fault is not None
        t0 = self._ns()
        timed = b.config.slow_call_duration_s is not None
        started = clock() if timed else 0.0
        result: Any
        deadline: asyncio.Timeout | None = None
        try:
            timeout = self._timeout_s
            if timeout is not None:
                # The fault runs inside the timeout: injected latency is latency.
                deadline = asyncio.timeout(timeout)
                async with deadline:
                    fault = self._fault
                    if fault is not None:
                        await fault.apply(self)
                    result = fn(*args)
                    result = await result
            else:
                fault = self._fault
                if fault is not None:
                    await fault.apply(self)
                result = fn(*args)
                result = await result
        except BaseException as exc:
            try:
                returned = sync_result(exc, locals())
            except TypeError:
                b.release(token)  # a refused generator: nothing recorded
                raise
            if not returned:
                outcome = verdict(deadline, exc)
                b.on_error(token, clock() - started if timed else 0.0, outcome)
                self._metered += 1
                self._record(self._ns() - t0, outcome, under_fault)
                raise
        finally:
            if counted:
                self._inflight -= 1
        b.on_success(token, clock() - started if timed else 0.0)
        self._metered += 1
        self._record(self._ns() - t0, None, under_fault)
        return result  # type: ignore[no-any-return]

    def _take_slot(self, token: int) -> bool:
        limit = self._max_concurrency
        if limit is None:
            return False
        if self._inflight >= limit:
            self.breaker.release(token)
            exc = ConcurrencyLimitError(self.name, limit)
            (self.traffic if self._fault is None else self.under_fault).refused += 1
            if self._fault is not None:
                self._tell_refused(exc)
            raise exc
        self._inflight += 1
        return True

    def _tell_refused(self, exc: BaseException) -> None:
        """Tell the fault (its optional ``on_refused``) of a call it never got to see.

        A CIRCUIT_BREAKER drill affects calls only by refusing them. What the hook
        raises is logged: the call's outcome stays the refusal.
        """
        hook = getattr(self._fault, "on_refused", None)
        if hook is None:
            return
        try:
            hook(self, exc)
        except Exception:
            log.exception("guard %r: fault %r: on_refused raised", self.name, self._fault)

    # ------------------------------------------------------------------ async with

    def __aenter__(self) -> Awaitable[Guard]:
        if self._plain:
            self._plain_open += 1
            if self._lat_anon < 0:
                self._lat_anon = self._ns()
            else:  # overlapping entries: each start is filed under its task
                self._lat_tasks.setdefault(asyncio.current_task(), []).append(self._ns())
            # An already-resolved future instead of a coroutine: awaiting it runs no
            # Python frame (the plain `async with` costs two awaits of these).
            entered = self._entered
            if entered is None:
                entered = self._entered = resolved_future(self)
                self._exited = resolved_future(None)
            return entered
        return self._enter()

    async def _enter(self) -> Guard:
        b = self.breaker
        token = b.acquire_permission() if self._fault is None else self._admit_under_fault()
        counted = self._take_slot(token)
        timed = b.config.slow_call_duration_s is not None
        scope = Scope(
            token, counted, self._clock() if timed else None, self._ns(), self._fault is not None
        )
        task = asyncio.current_task()
        self._scopes.setdefault(task, []).append(scope)
        self._plain = False
        try:
            if self._timeout_s is not None:
                scope.timeout = asyncio.timeout(self._timeout_s)
                await scope.timeout.__aenter__()
            fault = self._fault
            if fault is not None:
                await fault.apply(self)
        except BaseException as exc:
            self._pop_scope(task)
            if counted:
                self._inflight -= 1
            outcome: BaseException = exc
            if scope.timeout is not None:
                # The guard's timeout fired during the fault: it becomes TimeoutError.
                try:
                    await scope.timeout.__aexit__(type(exc), exc, exc.__traceback__)
                except BaseException as converted:
                    outcome = converted
            b.on_error(scope.token, self._duration(scope), verdict(scope.timeout, outcome))
            self._metered += 1
            self._record(self._ns() - scope.started_ns, outcome, scope.under_fault)
            if outcome is exc:
                raise
            raise outcome from exc
        return self

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        if self._scopes:
            scope = self._pop_scope(asyncio.current_task())
            if scope is None and not self._plain_open and not self._plain_stale:
                scope = self._pop_foreign_scope()
            if scope is not None:
                return self._exit(scope, exc_type, exc, tb)
        # Entered on the plain path (CLOSED): its token is the current generation,
        # unless the breaker moved on since (then it is one of the stale entries).
        self._metered += 1
        if self._lat_tasks:
            t0 = self._plain_task_start()
        else:
            t0 = self._lat_anon
            self._lat_anon = -1
        if exc is None:
            ns = self._ns() - t0
            try:
                i = _TABLE[ns >> 14]
            except IndexError:
                i = far_bucket(ns)
            if ns > _NS[i]:
                i += 1
            self._lat[i] += 1
        else:
            self._record(self._ns() - t0, exc, False)
        if self._plain_stale:
            self._plain_exit_stale(exc)
        else:
            self._plain_open -= 1
            b = self.breaker
            if exc is None:
                if not b.steady:
                    b.on_success(self._plain_gen)
            else:
                b.on_error(self._plain_gen, 0.0, exc)
        return self._exited  # type: ignore[return-value]  # set with _entered

    def _plain_exit_stale(self, exc: BaseException | None) -> None:
        self._plain_stale -= 1
        if not self._plain_stale:
            self._refresh()
        # -1 is older than any generation: recorded as stale (window only).
        if exc is None:
            self.breaker.on_success(-1)
        else:
            self.breaker.on_error(-1, 0.0, exc)

    async def _exit(
        self,
        scope: Scope,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        b = self.breaker
        if scope.counted:
            self._inflight -= 1
        if scope.timeout is not None:
            try:
                await scope.timeout.__aexit__(exc_type, exc, tb)
            except BaseException as converted:  # CancelledError became TimeoutError
                outcome = verdict(scope.timeout, converted)
                b.on_error(scope.token, self._duration(scope), outcome)
                self._metered += 1
                self._record(self._ns() - scope.started_ns, outcome, scope.under_fault)
                raise
        self._metered += 1
        self._record(self._ns() - scope.started_ns, exc, scope.under_fault)
        if exc is None:
            b.on_success(scope.token, self._duration(scope))
        else:
            b.on_error(scope.token, self._duration(scope), exc)

    def _duration(self, scope: Scope) -> float:
        started = scope.started  # None: slow-call detection was off when it began
        return self._clock() - started if started is not None else 0.0

    def _pop_foreign_scope(self) -> Scope | None:
        # No plain entry is open and this task entered nothing: a tracked entry of
        # another task is leaving from this one (an AsyncExitStack closed elsewhere, an
        # async fixture torn down in another task). Take a finished task's entry first.
        scopes = self._scopes
        task = next((t for t in scopes if t is not None and t.done()), next(iter(scopes)))
        return self._pop_scope(task)

    def _pop_scope(self, task: asyncio.Task[Any] | None) -> Scope | None:
        stack = self._scopes.get(task)
        if not stack:
            return None
        scope = stack.pop()
        if not stack:
            del self._scopes[task]
            if not self._scopes:
                self._refresh()
        return scope

    def __repr__(self) -> str:
        return f"Guard({self.name!r}, state={self.breaker.state.value}, plain={self._plain})"
