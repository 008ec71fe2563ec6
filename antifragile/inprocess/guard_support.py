"""Pieces of the guard kept apart from :mod:`~antifragile.inprocess.guard`.

The fault protocol, the sync-callable check, the guard's own timeout verdict, the
concurrency refusal, the per-entry state of a tracked ``async with`` entry and the
guard's traffic counting (:class:`TrafficCounting`).
"""

from __future__ import annotations

import asyncio
import inspect
from types import AsyncGeneratorType, GeneratorType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from antifragile.errors import AntifragileError
from antifragile.inprocess.breaker_outcomes import count_as_failure
from antifragile.inprocess.latency import _NS, _TABLE, WindowCounts, far_bucket

if TYPE_CHECKING:
    from antifragile.inprocess.guard import Guard


def sync_result(exc: BaseException, frame: dict[str, Any]) -> bool:
    """True when ``exc`` is await's TypeError on what a sync callable returned.

    ``frame`` is the caller's ``locals()``: ``result`` is bound there only once the
    callable has returned (so a TypeError the callable raised itself never matches).

    Raises:
        TypeError: the callable returned a generator (refused, as ``breaker.call`` does).
    """
    if type(exc) is not TypeError or "result" not in frame:
        return False
    result = frame["result"]
    if inspect.isawaitable(result):
        return False
    if isinstance(result, GeneratorType | AsyncGeneratorType):
        if isinstance(result, GeneratorType):
            result.close()
        raise TypeError(
            "the call returned a generator; decorate the generator function with the "
            "breaker so its iteration is protected"
        ) from None
    return True


def verdict(timeout: asyncio.Timeout | None, exc: BaseException) -> BaseException:
    """Mark ``exc`` as the guard's own timeout when that is what it is.

    The guard's timeout means the dependency did not answer in time: a failure whatever
    the breaker's ``failure_exceptions`` say (see ``count_as_failure``), unlike a
    ``TimeoutError`` the dependency raised itself.
    """
    if timeout is not None and isinstance(exc, TimeoutError) and timeout.expired():
        count_as_failure(exc)
    return exc


class ConcurrencyLimitError(AntifragileError):
    """A call was refused because the guard's ``max_concurrency`` calls are in flight."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        super().__init__(f"guard {name!r}: {limit} calls already in flight")


class Scope:
    """Per-entry state of a slow-path ``async with guard``.

    Attributes:
        token: The breaker's permission token.
        counted: The entry holds a concurrency slot.
        started: Breaker clock at entry (None: slow-call detection was off).
        started_ns: ``perf_counter_ns`` (the guard's ``ns_clock``) at entry.
        under_fault: A fault was installed at entry (counted with the fault's counts).
        timeout: The guard's timeout context, if any.
    """

    __slots__ = ("counted", "started", "started_ns", "timeout", "token", "under_fault")

    def __init__(
        self, token: int, counted: bool, started: float | None, started_ns: int, under_fault: bool
    ) -> None:
        self.token = token
        self.counted = counted
        self.started = started
        self.started_ns = started_ns
        self.under_fault = under_fault
        self.timeout: asyncio.Timeout | None = None


@runtime_checkable
class Fault(Protocol):
    """A fault a guard enforces while installed (:meth:`Guard.install_fault`).

    Optional: ``on_refused(guard, exc)``, sync, told of each call refused before
    :meth:`apply` could run (``CircuitOpenError`` or ``ConcurrencyLimitError``); it must
    not raise (what it raises is logged; the call still fails with the refusal).
    """

    async def apply(self, guard: Guard) -> None:
        """Run before every guarded call, inside the breaker and the guard's timeout.

        May sleep (``timeout_s`` bounds the whole call; :meth:`on_remove` should end
        the sleep) or raise: an exception raised here is the call's outcome.
        """
        ...

    def on_install(self, guard: Guard) -> None:
        """Called once when the fault reaches the guard (e.g. force the breaker open)."""
        ...

    def on_remove(self, guard: Guard) -> None:
        """Called once when the fault leaves: undo on_install, end waits in apply."""
        ...


class TrafficCounting:
    """The guard's per-window counts (a base of :class:`~antifragile.inprocess.guard.Guard`).

    See :mod:`~antifragile.inprocess.latency`.
    """

    __slots__ = ("_lat", "_lat_anon", "_lat_tasks", "traffic", "under_fault")

    traffic: WindowCounts
    under_fault: WindowCounts
    _lat: list[int]
    _lat_anon: int
    _lat_tasks: dict[asyncio.Task[Any] | None, list[int]]
    _fault: Fault | None

    def _note_experiment(self) -> None:
        spec = getattr(self._fault, "spec", None)
        experiment_id = getattr(spec, "experiment_id", None)
        if experiment_id is not None:
            self.under_fault.experiments.add(str(experiment_id))

    def rotate_window(self) -> tuple[WindowCounts, WindowCounts]:
        """Start new windows of counts; returns the finished ``(traffic, under_fault)``."""
        finished = self.traffic, self.under_fault
        self.traffic, self.under_fault = WindowCounts(), WindowCounts()
        self._lat = self.traffic.latency
        self._note_experiment()
        return finished

    def _record(self, ns: int, exc: BaseException | None, under_fault: bool) -> None:
        """Count a call of ``ns`` nanoseconds (slow paths; the plain ones inline it)."""
        counts = self.under_fault if under_fault else self.traffic
        try:
            i = _TABLE[ns >> 14]
        except IndexError:
            i = far_bucket(ns)
        counts.latency[i + (ns > _NS[i])] += 1
        if isinstance(exc, Exception):
            counts.failures += 1

    def _plain_task_start(self) -> int:
        """Start of the plain entry leaving now while several are open (see __aenter__)."""
        tasks = self._lat_tasks
        task = asyncio.current_task()
        stack = tasks.get(task)
        if not stack:
            if self._lat_anon >= 0:  # this task's entry is the one not filed by task
                t0, self._lat_anon = self._lat_anon, -1
                return t0
            # Entered in another task (an exit stack closed elsewhere): take any start.
            task = next(iter(tasks))
            stack = tasks[task]
        t0 = stack.pop()
        if not stack:
            del tasks[task]
        return t0
