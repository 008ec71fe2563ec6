"""Guard: the one object a service wraps each dependency call with.

A guard combines the dependency's circuit breaker, the fault (if any) the chaos
engine installed for it, metering of the call, and the optional timeout and
concurrency limit that fault kinds use.

Hot path: while the breaker is CLOSED and nothing else is configured (no fault, no
timeout, no concurrency limit, no slow-call detection) a precomputed ``_plain`` flag
is True, and a call costs the flag test, the breaker's one-attribute success check
and one counter increment (metering counts in place; the metering flusher harvests
the counter). Every configuration change and breaker transition recomputes the flag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from antifragile.breaker import CircuitBreaker, CircuitState
from antifragile.errors import AntifragileError, ConfigError

if TYPE_CHECKING:
    from antifragile.fault_table import Fault
    from antifragile.models.recovery import RecoveryRequest

R = TypeVar("R")

_CLOSED = CircuitState.CLOSED


class ConcurrencyLimitError(AntifragileError):
    """A call was refused because the guard's ``max_concurrency`` calls are in flight."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        super().__init__(f"guard {name!r}: {limit} calls already in flight")


class _Scope:
    """Per-entry state of a slow-path ``async with guard`` (timeout, start, slot)."""

    __slots__ = ("counted", "started", "timeout")

    def __init__(self, counted: bool, started: float, timeout: asyncio.Timeout | None) -> None:
        self.counted = counted
        self.started = started
        self.timeout = timeout


class Guard:
    """Breaker + fault enforcement + metering (+ optional timeout and concurrency limit).

    Create guards with :meth:`antifragile.runtime.Runtime.guard`; use them as
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
    """

    __slots__ = (
        "_fault",
        "_harvested",
        "_inflight",
        "_max_concurrency",
        "_metered",
        "_plain",
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
        self._scopes: dict[asyncio.Task[Any] | None, list[_Scope]] = {}
        self._plain = False
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        breaker._add_internal_hook(self._on_breaker_change)
        self._refresh()

    # ------------------------------------------------------------------ configuration

    @property
    def timeout_s(self) -> float | None:
        """Per-call timeout in seconds (None: none); the TIMEOUT fault sets it."""
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ConfigError(f"Guard.timeout_s: must be > 0 or None (got {value!r})")
        self._timeout_s = value
        self._refresh()

    @property
    def max_concurrency(self) -> int | None:
        """Calls allowed in flight (None: unlimited); RESOURCE_EXHAUSTION lowers it."""
        return self._max_concurrency

    @max_concurrency.setter
    def max_concurrency(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ConfigError(f"Guard.max_concurrency: must be >= 0 or None (got {value!r})")
        self._max_concurrency = value
        self._refresh()

    @property
    def fault(self) -> Fault | None:
        """The active fault (set through the runtime's FaultTable)."""
        return self._fault

    @property
    def in_flight(self) -> int:
        """Calls in flight counted against ``max_concurrency`` (0 when unlimited)."""
        return self._inflight

    @property
    def calls(self) -> int:
        """Calls that reached the dependency since the guard was created."""
        return self._harvested + self._metered

    def _set_fault(self, fault: Fault | None) -> None:
        self._fault = fault
        self._refresh()

    def _hold_slots(self, count: int) -> Callable[[], None]:
        """Occupy ``count`` concurrency slots until the returned function is called.

        Hook for the chaos engine's RESOURCE_EXHAUSTION/CONNECTIONS fault: held slots
        count against ``max_concurrency`` like calls in flight. Releasing twice is a no-op.
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
        self._refresh()

    def _refresh(self) -> None:
        b = self.breaker
        self._plain = (
            b._state is _CLOSED
            and b._slow_s is None
            and self._fault is None
            and self._timeout_s is None
            and self._max_concurrency is None
        )

    def close(self) -> None:
        """Detach from the breaker (the runtime calls this when dropping the guard)."""
        self.breaker._remove_internal_hook(self._on_breaker_change)

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

        Raises:
            CircuitOpenError: the breaker refused the call.
            ConcurrencyLimitError: ``max_concurrency`` calls are already in flight.
            TimeoutError: the call exceeded ``timeout_s``.
        """
        if self._plain:
            try:
                result = await fn(*args)
            except BaseException as exc:
                self.breaker._on_error(exc)
                self._metered += 1
                raise
            b = self.breaker
            if not b._steady:
                b._record(False)
            self._metered += 1
            return result
        b = self.breaker
        if b._state is not _CLOSED:
            # Refused here, before another coroutine or frame exists: an open breaker's
            # refusal is the fast path of a degraded service.
            b._admit()
        return await self._call_full(fn, args)

    async def _call_full(self, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...]) -> R:
        """The configured path; the breaker has already admitted the call."""
        b = self.breaker
        counted = self._take_slot()
        started = b._clock() if b._slow_s is not None else 0.0
        try:
            fault = self._fault
            if fault is not None:
                await fault.apply(self)
            timeout = self._timeout_s
            if timeout is not None:
                async with asyncio.timeout(timeout):
                    result = await fn(*args)
            else:
                result = await fn(*args)
        except BaseException as exc:
            b._on_error(exc)
            self._metered += 1
            raise
        finally:
            if counted:
                self._inflight -= 1
        b._on_done(started)
        self._metered += 1
        return result

    def _take_slot(self) -> bool:
        limit = self._max_concurrency
        if limit is None:
            return False
        if self._inflight >= limit:
            self.breaker._release()
            raise ConcurrencyLimitError(self.name, limit)
        self._inflight += 1
        return True

    # ------------------------------------------------------------------ async with

    async def __aenter__(self) -> Guard:
        if self._plain:
            return self
        b = self.breaker
        if b._state is not _CLOSED:
            b._admit()
        counted = self._take_slot()
        scope = _Scope(counted, b._clock() if b._slow_s is not None else 0.0, None)
        task = asyncio.current_task()
        self._scopes.setdefault(task, []).append(scope)
        try:
            fault = self._fault
            if fault is not None:
                await fault.apply(self)
            if self._timeout_s is not None:
                scope.timeout = asyncio.timeout(self._timeout_s)
                await scope.timeout.__aenter__()
        except BaseException as exc:
            self._pop_scope(task)
            if counted:
                self._inflight -= 1
            b._on_error(exc)
            self._metered += 1
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._pop_scope(asyncio.current_task()) if self._scopes else None
        b = self.breaker
        if scope is None:
            # Entered on the plain path.
            if exc is None:
                if not b._steady:
                    b._record(False)
            else:
                b._on_error(exc)
            self._metered += 1
            return
        if scope.counted:
            self._inflight -= 1
        if scope.timeout is not None:
            try:
                await scope.timeout.__aexit__(exc_type, exc, tb)
            except BaseException as converted:  # CancelledError became TimeoutError
                b._on_error(converted)
                self._metered += 1
                raise
        self._metered += 1
        if exc is None:
            b._on_done(scope.started)
        else:
            b._on_error(exc)

    def _pop_scope(self, task: asyncio.Task[Any] | None) -> _Scope | None:
        stack = self._scopes.get(task)
        if not stack:
            return None
        scope = stack.pop()
        if not stack:
            del self._scopes[task]
        return scope

    def __repr__(self) -> str:
        return f"Guard({self.name!r}, state={self.breaker._state.value}, plain={self._plain})"
