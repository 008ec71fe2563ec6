"""Windows of per-dependency traffic: rotation on aligned boundaries and the document.

Every guard counts its calls in :class:`~antifragile.inprocess.latency.WindowCounts`
(see :mod:`~antifragile.inprocess.latency`); :class:`TrafficWindows` starts new counts at
each multiple of ``window_s`` since the epoch (every instance's windows coincide, so a
ledger can coalesce them) and keeps the finished window of each dependency for the
health snapshot. A call is counted in the window in which it ends. It also keeps, per
dependency, monotonic counters since it started (:class:`Cumulative`: the finished
windows, with and without a fault, added at each rotation; the current one added when the
document is built), from which an experiment draws its target's calls per second.

The document it publishes (key ``traffic`` of the health snapshot) is described in
:mod:`antifragile.fleet_health`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from antifragile.inprocess._aio import cancel_and_wait
from antifragile.inprocess.latency import SLOTS, WindowCounts, fold, window_start_of


class Counted(Protocol):
    """What a guard offers: its current counts and a way to start new ones."""

    @property
    def traffic(self) -> WindowCounts:
        """Counts of calls made without a fault."""
        ...

    @property
    def under_fault(self) -> WindowCounts:
        """Counts of calls made under a fault."""
        ...

    def rotate_window(self) -> tuple[WindowCounts, WindowCounts]:
        """Start new counts; return the finished ``(traffic, under_fault)``."""
        ...


@dataclass
class _Finished:
    start: float
    traffic: WindowCounts
    under_fault: WindowCounts


class Cumulative:
    """Monotonic counts of one dependency since this process started counting it.

    The finished windows (with and without a fault) are added at each rotation; the
    document adds the current window's counts, so ``Guard.call`` pays nothing for it.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.refused = 0
        self.latency = [0] * SLOTS

    def add(self, *counts: WindowCounts) -> None:
        """Add finished windows' counts."""
        for c in counts:
            self.failures += c.failures
            self.refused += c.refused
            for i, n in enumerate(c.latency):
                if n:
                    self.latency[i] += n
            self.calls += c.calls

    def document(self, since: float, *current: WindowCounts) -> dict[str, Any]:
        """The ``cumulative`` entry of a dependency (format: :mod:`fleet_health`)."""
        total = Cumulative()
        total.add(*current)
        latency = [a + b for a, b in zip(self.latency, total.latency, strict=True)]
        return {
            "since": since,
            "calls": self.calls + total.calls,
            "failures": self.failures + total.failures,
            "refused": self.refused + total.refused,
            "latency": {"counts": fold(latency)},
        }


def _fault_document(
    counts: WindowCounts, dependency: str, instance: str, start: float, window_s: float
) -> dict[str, Any] | None:
    if not (counts.calls or counts.breaker_openings or counts.experiments):
        return None
    doc = counts.document(dependency, instance, start, window_s)
    doc["kind"] = "under_fault"
    doc["experiments"] = sorted(counts.experiments)
    return doc


class TrafficWindows:
    """Rotates every guard's counts at window boundaries; builds the snapshot document.

    Args:
        guards: Returns the guards by dependency name (read at each rotation).
        instance_id: This process (in each window's ``source_id``).
        window_s: Window length, seconds (> 0). Default 60.
        wall: Unix-time clock (window starts).
    """

    def __init__(
        self,
        guards: Callable[[], Mapping[str, Counted]],
        instance_id: str,
        *,
        window_s: float = 60.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0 (got {window_s!r})")
        self._guards = guards
        self.instance_id = instance_id
        self.window_s = window_s
        self._wall = wall
        self.window_start = window_start_of(wall(), window_s)
        self.finished: dict[str, _Finished] = {}
        self.since = wall()
        """When cumulative counting started (Unix s): a restart shows as a new value."""
        self.cumulative: dict[str, Cumulative] = {}
        self._task: asyncio.Task[None] | None = None

    def rotate(self) -> None:
        """Close the current window of every guard now (the loop calls this on time)."""
        start = self.window_start
        self.window_start = window_start_of(self._wall(), self.window_s)
        for name, guard in self._guards().items():
            traffic, under_fault = guard.rotate_window()
            self.finished[name] = _Finished(start, traffic, under_fault)
            self.cumulative.setdefault(name, Cumulative()).add(traffic, under_fault)

    def document(self) -> dict[str, Any]:
        """The ``traffic`` key of the health snapshot (format: :mod:`fleet_health`)."""
        deps: dict[str, Any] = {}
        inst, w = self.instance_id, self.window_s
        for name, guard in self._guards().items():
            entry: dict[str, Any] = {
                "current": guard.traffic.document(name, inst, self.window_start, w),
                "under_fault": _fault_document(guard.under_fault, name, inst, self.window_start, w),
                "previous": None,
                "previous_under_fault": None,
                "cumulative": self.cumulative.get(name, Cumulative()).document(
                    self.since, guard.traffic, guard.under_fault
                ),
            }
            done = self.finished.get(name)
            if done is not None:
                entry["previous"] = done.traffic.document(name, inst, done.start, w)
                entry["previous_under_fault"] = _fault_document(
                    done.under_fault, name, inst, done.start, w
                )
            deps[name] = entry
        return {"window_s": w, "dependencies": deps}

    async def start(self) -> None:
        """Rotate at every boundary in a background task."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="af-traffic-windows")

    async def stop(self) -> None:
        """Stop rotating."""
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.0, self.window_start + self.window_s - self._wall()))
            if self._wall() >= self.window_start + self.window_s:
                self.rotate()
