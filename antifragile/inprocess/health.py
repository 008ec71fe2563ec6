"""System health from the circuit breakers of one process, with anti-flapping.

Score = (weight of CLOSED breakers x 1 + weight of HALF_OPEN breakers x 1/2) / total
weight; OPEN and FORCED_OPEN count 0. No breakers: score 1. The computed status is
HEALTHY when score >= ``degraded_threshold`` (0.7), DEGRADED when score >=
``critical_threshold`` (0.5), CRITICAL below.

Exactness: weights and thresholds are read as the decimals they were written as (0.3 is
3/10) and the score is an exact fraction, so it is compared with the thresholds exactly:
four breakers of weight 0.3, two of them open, score exactly 1/2 -> DEGRADED. The float
``health_score`` in every report (and in the Redis snapshot the chaos health guard reads)
is that fraction rounded once to the nearest double, so 1/2 is published as 0.5 and the
guard's ``score < abort_below`` (default 0.5) does not trip.

Anti-flapping rule (what ``get_system_health().status`` reports):

1. Registering or unregistering a breaker is configuration, not a change of health: the
   reported status becomes the computed one at once (and a pending change is dropped).
2. A move to CRITICAL is reported at once.
3. Any other change (CRITICAL -> DEGRADED, DEGRADED -> HEALTHY, HEALTHY -> DEGRADED,
   ...) is reported only after the new computed status has held without interruption
   for ``stabilization_window_s`` (default 2 s). If the computed status changes again
   inside the window, the window restarts for the newest status; if it returns to
   the reported status, the pending change is dropped.

The score in every report is always the current one; only the status is smoothed.
Updates are O(1) per breaker state change: the aggregator keeps running exact weighted
sums, updated from each breaker's state-change hook, and never rescans. Reads never
change state and are safe from another thread (e.g. the Prometheus scrape thread).

UNKNOWN is what ``antifragile health`` shows for a fleet member whose snapshot expired
(see :data:`HEALTH_MEMBERS_KEY` and :mod:`antifragile.cli.health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, Field

from antifragile.errors import ConfigError
from antifragile.inprocess._aio import cancel_and_wait
from antifragile.inprocess.breaker import CircuitBreaker
from antifragile.inprocess.breaker_state import CircuitState, Clock
from antifragile.inprocess.health_score import (
    SystemHealthStatus,
    exact,
    exact_score,
    status_for_score,
)

log = logging.getLogger(__name__)


_ONE = Fraction(1)
_ZERO = Fraction(0)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class HealthAggregatorConfig:
    """Thresholds, anti-flapping and history of a :class:`HealthAggregator`.

    Attributes:
        degraded_threshold: Score at or above which the status is HEALTHY. Default 0.7.
        critical_threshold: Score at or above which the status is DEGRADED (below it:
            CRITICAL). Default 0.5.
        stabilization_window_s: How long a new non-CRITICAL status must hold before it
            is reported. 0 disables anti-flapping. Default 2.0.
        history_size: Snapshots kept in the history ring. Default 300 (5 min at 1/s).
        history_interval_s: Seconds between snapshots while started. Default 1.0.
    """

    degraded_threshold: float = 0.7
    critical_threshold: float = 0.5
    stabilization_window_s: float = 2.0
    history_size: int = 300
    history_interval_s: float = 1.0

    def __post_init__(self) -> None:
        def bad(name: str, value: object, rule: str) -> ConfigError:
            return ConfigError(f"HealthAggregatorConfig.{name}: {rule} (got {value!r})")

        if not 0.0 <= self.critical_threshold <= 1.0:
            raise bad("critical_threshold", self.critical_threshold, "must be in [0, 1]")
        if not self.critical_threshold <= self.degraded_threshold <= 1.0:
            raise bad(
                "degraded_threshold",
                self.degraded_threshold,
                f"must be in [critical_threshold={self.critical_threshold}, 1]",
            )
        # NaN passes every comparison: a NaN window would never let a status through.
        window = self.stabilization_window_s
        if not (_is_number(window) and math.isfinite(window) and window >= 0):
            raise bad("stabilization_window_s", window, "must be a finite number >= 0")
        size = self.history_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise bad("history_size", size, "must be an integer >= 1")
        interval = self.history_interval_s
        if not (_is_number(interval) and math.isfinite(interval) and interval > 0):
            raise bad("history_interval_s", interval, "must be a finite number > 0")


class BreakerHealth(BaseModel):
    """One breaker as seen in a health report."""

    name: str
    state: CircuitState
    weight: float
    consecutive_failures: int = 0
    failure_rate: float = 0.0


class SystemHealthReport(BaseModel):
    """Health of one process at one moment.

    Attributes:
        status: Reported status (anti-flapping applied; see module docstring).
        computed_status: Status the current score maps to, before anti-flapping.
        pending_status: A status waiting out the stabilization window, if any.
        health_score: Current weighted score in [0, 1].
        total_breakers / closed_breakers / half_open_breakers / open_breakers /
            forced_open_breakers: Counts by state (``open_breakers`` excludes forced).
        circuit_details: Per-breaker state, keyed by name.
        timestamp: Wall-clock time of the report (UTC).
    """

    status: SystemHealthStatus
    computed_status: SystemHealthStatus
    pending_status: SystemHealthStatus | None = None
    health_score: float = Field(ge=0.0, le=1.0)
    total_breakers: int = 0
    closed_breakers: int = 0
    half_open_breakers: int = 0
    open_breakers: int = 0
    forced_open_breakers: int = 0
    circuit_details: dict[str, BreakerHealth] = Field(default_factory=dict)
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """One entry of the history ring."""

    at: float
    """Aggregator clock reading (monotonic seconds)."""
    wall: float
    """Unix time."""
    health_score: float
    status: SystemHealthStatus


HealthCallback = Callable[[SystemHealthReport], Any]
"""Sync function or coroutine function receiving a :class:`SystemHealthReport`."""


class _Entry:
    __slots__ = ("breaker", "exact_weight", "hook", "state", "weight")

    def __init__(
        self,
        breaker: CircuitBreaker,
        weight: float,
        state: CircuitState,
        hook: Callable[[CircuitBreaker], None],
    ) -> None:
        self.breaker = breaker
        self.weight = weight
        self.exact_weight = exact(weight)
        self.state = state
        self.hook = hook


_COUNT_INDEX = {
    CircuitState.CLOSED: 0,
    CircuitState.HALF_OPEN: 1,
    CircuitState.OPEN: 2,
    CircuitState.FORCED_OPEN: 3,
}


@dataclass(frozen=True, slots=True)
class _Status:
    """Everything a read needs, replaced whole on every change (one attribute swap).

    A reader on another thread (the Prometheus scrape thread) thus never sees half an update.
    """

    total: Fraction
    closed: Fraction
    half_open: Fraction
    counts: tuple[int, int, int, int]  # closed, half-open, open, forced open
    score: Fraction
    computed: SystemHealthStatus
    reported: SystemHealthStatus
    pending: SystemHealthStatus | None
    pending_since: float

    def at(
        self, now: float, window_s: float
    ) -> tuple[SystemHealthStatus, SystemHealthStatus | None]:
        """The (reported, pending) statuses at ``now``.

        A pending status that held for the whole window is the reported one, whether or not
        a timer has committed it yet.
        """
        if self.pending is not None and now - self.pending_since >= window_s:
            return self.pending, None
        return self.reported, self.pending


class HealthAggregator:
    """Aggregates breaker states into a smoothed system health status.

    Reads (:meth:`get_system_health`, :attr:`health_score`, :meth:`record_snapshot`)
    never change anything and are safe from another thread: they read one immutable
    status record that the event loop's thread replaces on every breaker change. Only
    breaker changes, registration and the window timer update it and fire callbacks.

    Args:
        config: Thresholds and windows; defaults documented on the config class.
        clock: Monotonic seconds for anti-flapping and history; inject in tests.
    """

    def __init__(self, config: HealthAggregatorConfig | None = None, *, clock: Clock | None = None):
        self.config = config or HealthAggregatorConfig()
        self._clock: Clock = clock or time.monotonic
        self._entries: dict[str, _Entry] = {}
        cfg = self.config
        self._st = _Status(
            total=_ZERO,
            closed=_ZERO,
            half_open=_ZERO,
            counts=(0, 0, 0, 0),
            score=_ONE,
            computed=status_for_score(_ONE, cfg.degraded_threshold, cfg.critical_threshold),
            reported=status_for_score(_ONE, cfg.degraded_threshold, cfg.critical_threshold),
            pending=None,
            pending_since=0.0,
        )
        self._callbacks: list[HealthCallback] = []
        self._notify_pending = False
        self._notify_task: asyncio.Task[None] | None = None
        self._window_timer: asyncio.TimerHandle | None = None
        self._history: deque[HealthSnapshot] = deque(maxlen=self.config.history_size)
        self._sampler: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ registry

    def register_circuit_breaker(
        self, name: str, breaker: CircuitBreaker, weight: float = 1.0
    ) -> None:
        """Track ``breaker`` under ``name`` with a weight (> 0); replaces an existing one.

        Registration is configuration, not a change of health: the reported status is
        set to the computed one at once (no anti-flapping window), so registering
        breakers one by one - the first one already open - never reports a transient
        CRITICAL. Callbacks are told when the status or score changed.

        Raises:
            ConfigError: ``weight`` is not a finite number > 0.
        """
        if not (weight > 0 and math.isfinite(weight)):
            raise ConfigError(
                f"weight of breaker {name!r}: must be a finite number > 0 (got {weight!r})"
            )
        if name in self._entries:
            self.unregister_circuit_breaker(name)

        def hook(b: CircuitBreaker) -> None:
            self._on_breaker_state(name, b.state)

        entry = _Entry(breaker, float(weight), breaker.state, hook)
        self._entries[name] = entry
        breaker.add_change_hook(hook)
        self._commit(self._moved(entry.exact_weight, None, entry.state), configuration=True)

    def unregister_circuit_breaker(self, name: str) -> None:
        """Stop tracking a breaker (no-op if unknown); like registration, configuration."""
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        entry.breaker.remove_change_hook(entry.hook)
        self._commit(self._moved(entry.exact_weight, entry.state, None), configuration=True)

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Registered breakers by name (a copy)."""
        return {name: e.breaker for name, e in self._entries.copy().items()}

    def _moved(
        self, weight: Fraction, old: CircuitState | None, new: CircuitState | None
    ) -> tuple[Fraction, Fraction, Fraction, tuple[int, int, int, int]]:
        """Sums and counts after a breaker of ``weight`` moved from ``old`` to ``new``.

        None (as ``old`` or ``new``): not registered. O(1), exact.
        """
        st = self._st
        total, closed, half = st.total, st.closed, st.half_open
        counts = list(st.counts)
        for state, sign in ((old, -1), (new, 1)):
            if state is None:
                continue
            total += sign * weight
            if state is CircuitState.CLOSED:
                closed += sign * weight
            elif state is CircuitState.HALF_OPEN:
                half += sign * weight
            counts[_COUNT_INDEX[state]] += sign
        return total, closed, half, (counts[0], counts[1], counts[2], counts[3])

    def _on_breaker_state(self, name: str, state: CircuitState) -> None:
        entry = self._entries.get(name)
        if entry is None or entry.state is state:
            return
        sums = self._moved(entry.exact_weight, entry.state, state)
        entry.state = state
        self._commit(sums, configuration=False)

    # ------------------------------------------------------------------ status

    @property
    def health_score(self) -> float:
        """Current weighted score (no anti-flapping): the exact score, rounded once."""
        return float(self._st.score)

    @property
    def exact_health_score(self) -> Fraction:
        """Current weighted score as an exact fraction."""
        return self._st.score

    def _commit(
        self,
        sums: tuple[Fraction, Fraction, Fraction, tuple[int, int, int, int]] | None,
        *,
        configuration: bool,
    ) -> None:
        """Apply new sums (None: same sums, a timer re-check) and the anti-flapping rule."""
        cfg = self.config
        old = self._st
        total, closed, half, counts = (
            sums if sums is not None else (old.total, old.closed, old.half_open, old.counts)
        )
        score = exact_score(closed, half, total)
        computed = status_for_score(score, cfg.degraded_threshold, cfg.critical_threshold)
        now = self._clock()
        window = cfg.stabilization_window_s
        before, pending = old.at(now, window)
        since = old.pending_since
        if (
            configuration
            or computed is before
            or computed is SystemHealthStatus.CRITICAL
            or window == 0
        ):
            reported, pending, since = computed, None, now
        else:
            reported = before
            if pending is not computed:
                pending, since = computed, now
            if now - since >= window:
                reported, pending = computed, None
            else:
                self._arm_window_timer(since + window - now)
        self._st = _Status(total, closed, half, counts, score, computed, reported, pending, since)
        if reported is not old.reported or score != old.score:
            self._schedule_notify()

    def _arm_window_timer(self, delay: float) -> None:
        # Without further breaker changes a pending status must still be committed (and
        # callbacks fired) when its window ends; reads already report it by then.
        if self._window_timer is not None:
            self._window_timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._window_timer = None
            return
        self._window_timer = loop.call_later(max(delay, 0.0) + 0.001, self._on_window_timer)

    def _on_window_timer(self) -> None:
        self._window_timer = None
        self._commit(None, configuration=False)

    @property
    def status(self) -> SystemHealthStatus:
        """The reported status now (anti-flapping applied); a pure read."""
        return self._st.at(self._clock(), self.config.stabilization_window_s)[0]

    def breaker_states(self) -> dict[str, CircuitState]:
        """Each registered breaker's state as its last transition reported it.

        A pure read of the aggregator's own record (kept current by the breakers' hooks
        on the event loop's thread): it touches no breaker, so it is safe from any thread.
        """
        return {name: entry.state for name, entry in self._entries.copy().items()}

    def get_system_health(self) -> SystemHealthReport:
        """The current report: current score, status after the anti-flapping rule.

        A pure read: it changes no state and fires no callback (safe from any thread).
        """
        st = self._st
        reported, pending = st.at(self._clock(), self.config.stabilization_window_s)
        details: dict[str, BreakerHealth] = {}
        for name, entry in self._entries.copy().items():
            b = entry.breaker
            details[name] = BreakerHealth(
                name=name,
                state=entry.state,
                weight=entry.weight,
                consecutive_failures=b.consecutive_failures,
                failure_rate=round(b.failure_rate, 4),
            )
        closed, half_open, open_, forced = st.counts
        return SystemHealthReport(
            status=reported,
            computed_status=st.computed,
            pending_status=pending,
            health_score=float(st.score),
            total_breakers=closed + half_open + open_ + forced,
            closed_breakers=closed,
            half_open_breakers=half_open,
            open_breakers=open_,
            forced_open_breakers=forced,
            circuit_details=details,
            timestamp=datetime.now(UTC),
        )

    # ------------------------------------------------------------------ callbacks

    def on_health_change(self, callback: HealthCallback) -> HealthCallback:
        """Call ``callback(report)`` (sync or async) when the status or score changes.

        Callbacks run in one background task that the aggregator references until it
        finishes; exceptions are logged; changes arriving while callbacks run are
        coalesced into one delivery of the latest report. Without a running event loop,
        sync callbacks run inline and async ones are skipped with a warning.
        """
        self._callbacks.append(callback)
        return callback

    def _schedule_notify(self) -> None:
        if not self._callbacks:
            return
        self._notify_pending = True
        if self._notify_task is not None and not self._notify_task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._deliver_without_loop()
            return
        self._notify_task = loop.create_task(self._dispatch())

    def _deliver_without_loop(self) -> None:
        self._notify_pending = False
        report = self.get_system_health()
        for cb in list(self._callbacks):
            try:
                result = cb(report)
            except Exception:
                log.exception("health callback %r raised", cb)
                continue
            if inspect.iscoroutine(result):
                result.close()
                log.warning("async health callback %r skipped: no running loop", cb)

    async def _dispatch(self) -> None:
        # Yield first so a burst of changes in the same loop iteration becomes one report.
        await asyncio.sleep(0)
        while self._notify_pending:
            self._notify_pending = False
            report = self.get_system_health()
            for cb in list(self._callbacks):
                try:
                    result = cb(report)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("health callback %r raised", cb)

    # ------------------------------------------------------------------ history

    def record_snapshot(self) -> HealthSnapshot:
        """Append the current score and reported status to the history ring."""
        st = self._st
        now = self._clock()
        reported, _ = st.at(now, self.config.stabilization_window_s)
        snap = HealthSnapshot(now, time.time(), float(st.score), reported)
        self._history.append(snap)
        return snap

    def get_history(self, window_s: float | None = None) -> list[HealthSnapshot]:
        """Snapshots of the last ``window_s`` seconds (all kept ones if None), oldest first."""
        if window_s is None:
            return list(self._history)
        since = self._clock() - window_s
        return [s for s in self._history if s.at >= since]

    async def start(self) -> None:
        """Start recording a snapshot every ``history_interval_s``."""
        if self._sampler is None or self._sampler.done():
            self._sampler = asyncio.create_task(self._sample_forever())

    async def stop(self) -> None:
        """Stop the sampler and any pending timer; waits for running callbacks."""
        if self._sampler is not None:
            await cancel_and_wait([self._sampler])
            self._sampler = None
        if self._window_timer is not None:
            self._window_timer.cancel()
            self._window_timer = None
        if self._notify_task is not None and not self._notify_task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._notify_task), 5)

    async def _sample_forever(self) -> None:
        while True:
            try:
                self.record_snapshot()
            except Exception:
                log.exception("health snapshot failed")
            await asyncio.sleep(self.config.history_interval_s)
