"""System health from the circuit breakers of one process, with anti-flapping.

Score = (weight of CLOSED breakers x 1.0 + weight of HALF_OPEN breakers x 0.5) / total
weight; OPEN and FORCED_OPEN count 0. No breakers: score 1.0. The computed status is
HEALTHY when score >= ``degraded_threshold`` (0.7), DEGRADED when score >=
``critical_threshold`` (0.5), CRITICAL below.

Anti-flapping rule (what ``get_system_health().status`` reports):

1. A new aggregator's first report is simply the computed status.
2. A move to CRITICAL is reported at once.
3. Any other change (CRITICAL -> DEGRADED, DEGRADED -> HEALTHY, HEALTHY -> DEGRADED,
   ...) is reported only after the new computed status has held without interruption
   for ``stabilization_window_s`` (default 2 s). If the computed status changes again
   inside the window, the window restarts for the newest status; if it returns to
   the reported status, the pending change is dropped.

The score in every report is always the current one; only the status is smoothed.
Updates are O(1) per breaker state change: the aggregator keeps running weighted
sums, updated from each breaker's state-change hook, and never rescans.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from antifragile.aio import cancel_and_wait
from antifragile.breaker import CircuitBreaker, CircuitState, Clock
from antifragile.errors import ConfigError

log = logging.getLogger(__name__)


class SystemHealthStatus(StrEnum):
    """Overall health of a process (or fleet)."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    CRITICAL = "CRITICAL"
    UNKNOWN = "UNKNOWN"
    """No report available (e.g. an instance whose snapshot expired)."""


_STATE_SCORE: dict[CircuitState, float] = {
    CircuitState.CLOSED: 1.0,
    CircuitState.HALF_OPEN: 0.5,
    CircuitState.OPEN: 0.0,
    CircuitState.FORCED_OPEN: 0.0,
}


def health_score(closed_weight: float, half_open_weight: float, total_weight: float) -> float:
    """Weighted health score in [0, 1]; 1.0 when there is nothing to weigh."""
    if total_weight <= 0:
        return 1.0
    return max(0.0, min(1.0, (closed_weight + 0.5 * half_open_weight) / total_weight))


def status_for_score(
    score: float, degraded_threshold: float = 0.7, critical_threshold: float = 0.5
) -> SystemHealthStatus:
    """HEALTHY at or above ``degraded_threshold``, DEGRADED at or above ``critical_threshold``."""
    if score >= degraded_threshold:
        return SystemHealthStatus.HEALTHY
    if score >= critical_threshold:
        return SystemHealthStatus.DEGRADED
    return SystemHealthStatus.CRITICAL


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
        if self.stabilization_window_s < 0:
            raise bad("stabilization_window_s", self.stabilization_window_s, "must be >= 0")
        if self.history_size < 1:
            raise bad("history_size", self.history_size, "must be >= 1")
        if self.history_interval_s <= 0:
            raise bad("history_interval_s", self.history_interval_s, "must be > 0")


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
    __slots__ = ("breaker", "hook", "state", "weight")

    def __init__(
        self,
        breaker: CircuitBreaker,
        weight: float,
        state: CircuitState,
        hook: Callable[[CircuitBreaker], None],
    ) -> None:
        self.breaker = breaker
        self.weight = weight
        self.state = state
        self.hook = hook


class HealthAggregator:
    """Aggregates breaker states into a smoothed system health status.

    Args:
        config: Thresholds and windows; defaults documented on the config class.
        clock: Monotonic seconds for anti-flapping and history; inject in tests.
    """

    def __init__(self, config: HealthAggregatorConfig | None = None, *, clock: Clock | None = None):
        self.config = config or HealthAggregatorConfig()
        self._clock: Clock = clock or time.monotonic
        self._entries: dict[str, _Entry] = {}
        # Running weighted sums: O(1) per state change.
        self._w_total = 0.0
        self._w_closed = 0.0
        self._w_half = 0.0
        self._reported: SystemHealthStatus | None = None
        self._pending: SystemHealthStatus | None = None
        self._pending_since = 0.0
        self._last_score: float | None = None
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
        """Track ``breaker`` under ``name`` with a weight (> 0); replaces an existing one."""
        if weight <= 0:
            raise ConfigError(f"weight of breaker {name!r}: must be > 0 (got {weight!r})")
        if name in self._entries:
            self.unregister_circuit_breaker(name)

        def hook(b: CircuitBreaker) -> None:
            self._on_breaker_state(name, b._state)

        entry = _Entry(breaker, float(weight), breaker._state, hook)
        self._entries[name] = entry
        self._add(entry.state, entry.weight, 1.0)
        breaker._add_internal_hook(hook)
        self._evaluate()

    def unregister_circuit_breaker(self, name: str) -> None:
        """Stop tracking a breaker (no-op if unknown)."""
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        entry.breaker._remove_internal_hook(entry.hook)
        self._add(entry.state, entry.weight, -1.0)
        if not self._entries:
            # Exact zero, so float residue never leaks into an empty aggregator.
            self._w_total = self._w_closed = self._w_half = 0.0
        self._evaluate()

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Registered breakers by name (a copy)."""
        return {name: e.breaker for name, e in self._entries.items()}

    def _add(self, state: CircuitState, weight: float, sign: float) -> None:
        self._w_total += sign * weight
        if state is CircuitState.CLOSED:
            self._w_closed += sign * weight
        elif state is CircuitState.HALF_OPEN:
            self._w_half += sign * weight

    def _on_breaker_state(self, name: str, state: CircuitState) -> None:
        entry = self._entries.get(name)
        if entry is None or entry.state is state:
            return
        self._add(entry.state, entry.weight, -1.0)
        entry.state = state
        self._add(state, entry.weight, 1.0)
        self._evaluate()

    # ------------------------------------------------------------------ status

    @property
    def health_score(self) -> float:
        """Current weighted score (no anti-flapping)."""
        return health_score(self._w_closed, self._w_half, self._w_total)

    def _evaluate(self) -> None:
        """Recompute the computed status and apply the anti-flapping rule."""
        cfg = self.config
        score = self.health_score
        computed = status_for_score(score, cfg.degraded_threshold, cfg.critical_threshold)
        now = self._clock()
        before = self._reported
        if (
            before is None
            or computed is before
            or computed is SystemHealthStatus.CRITICAL
            or cfg.stabilization_window_s == 0
        ):
            self._reported = computed
            self._pending = None
        else:
            if self._pending is not computed:
                self._pending = computed
                self._pending_since = now
            if now - self._pending_since >= cfg.stabilization_window_s:
                self._reported = computed
                self._pending = None
            else:
                self._arm_window_timer(self._pending_since + cfg.stabilization_window_s - now)
        if self._reported is not before or score != self._last_score:
            self._last_score = score
            if before is not None:
                self._schedule_notify()

    def _arm_window_timer(self, delay: float) -> None:
        # Without further breaker changes a pending status must still be reported
        # (and callbacks fired) when its window ends.
        if self._window_timer is not None:
            self._window_timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._window_timer = None
            return
        self._window_timer = loop.call_later(max(delay, 0.0) + 0.001, self._evaluate)

    def get_system_health(self) -> SystemHealthReport:
        """The current report: current score, status after the anti-flapping rule."""
        self._evaluate()
        cfg = self.config
        counts = dict.fromkeys(CircuitState, 0)
        details: dict[str, BreakerHealth] = {}
        for name, entry in self._entries.items():
            b = entry.breaker
            counts[entry.state] += 1
            details[name] = BreakerHealth(
                name=name,
                state=entry.state,
                weight=entry.weight,
                consecutive_failures=b.consecutive_failures,
                failure_rate=round(b.failure_rate, 4),
            )
        score = self.health_score
        assert self._reported is not None
        return SystemHealthReport(
            status=self._reported,
            computed_status=status_for_score(score, cfg.degraded_threshold, cfg.critical_threshold),
            pending_status=self._pending,
            health_score=score,
            total_breakers=len(self._entries),
            closed_breakers=counts[CircuitState.CLOSED],
            half_open_breakers=counts[CircuitState.HALF_OPEN],
            open_breakers=counts[CircuitState.OPEN],
            forced_open_breakers=counts[CircuitState.FORCED_OPEN],
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
        self._evaluate()
        assert self._reported is not None
        snap = HealthSnapshot(self._clock(), time.time(), self.health_score, self._reported)
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
