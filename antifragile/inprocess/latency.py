"""Per-dependency call latencies and counts, by window, for learning from stress.

Every guarded call that reaches the dependency (success or failure; refused calls are
not) is timed with ``time.perf_counter_ns`` and counted in a log-bucketed histogram
with the bounds of :func:`~antifragile.models.learning.latency_bounds_ms`. A guard keeps
two sets of counts: calls made while a chaos fault was installed on it (an experiment)
and the others (traffic); see :class:`WindowCounts`.

**Bucket of a duration** (exact, integers only). Bucket ``i`` holds the durations ``d``
with ``bound[i-1] < d <= bound[i]`` (ms; bucket 0 everything up to ``bound[0]``; the last
bucket everything above ``bound[78]``), where ``bound[i]`` is the float
``latency_bounds_ms()[i]`` taken exactly as the rational it is. A duration of ``ns``
nanoseconds is ``ns / 10**6`` ms, so ``d <= bound[i]`` is ``ns <= floor(bound[i] * 10**6)``:
:data:`BOUNDS_NS` holds those integers and the comparison is exact.

**Cost.** A bisect over 80 bounds costs ~90 ns in CPython 3.11; instead
:data:`_TABLE` (64 KiB, one byte per 16.384 µs cell up to 1.07 s) gives the bucket of
the cell's lower end, and one integer comparison moves to the next bucket when the
cell straddles a bound (a cell is narrower than every bucket but the first, so it holds
at most one bound). Slower calls (> 1.07 s) take the bisect.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from antifragile.models.learning import LATENCY_BUCKETS, latency_bounds_ms

BOUNDS_NS: list[int] = [math.floor(Fraction(b) * 10**6) for b in latency_bounds_ms()]
"""``floor(bound_ms * 10**6)`` for each bucket bound, exact (see the module doc)."""

_CELL_SHIFT = 14
"""A table cell spans ``2**14`` ns = 16.384 µs (narrower than bucket 1, 18.9 µs)."""
_CELLS = 1 << 16
"""Table cells: durations up to ``2**30`` ns (1.07 s) are looked up, slower bisected."""

_NS: list[int] = [*BOUNDS_NS, 1 << 62]
"""Bounds with a sentinel: ``ns > _NS[LATENCY_BUCKETS]`` is never true."""

_TABLE = bytes(bisect.bisect_left(BOUNDS_NS, c << _CELL_SHIFT) for c in range(_CELLS))
"""Bucket (0..80) of each cell's lower end; index 80 means beyond the last bound."""

SLOTS = LATENCY_BUCKETS + 1
"""Length of a counts list: the buckets plus one overflow slot (folded into the last)."""


def bucket_of_ns(ns: int) -> int:
    """Bucket of a duration of ``ns`` nanoseconds, 0 .. ``SLOTS - 1``.

    The last slot is beyond the last bound and is reported in the last bucket. Same
    result as ``bisect_left(BOUNDS_NS, ns)`` (the reference; see the module doc),
    at the cost of a table lookup and one comparison. This is what the guard inlines.
    """
    try:
        i = _TABLE[ns >> _CELL_SHIFT]
    except IndexError:
        i = far_bucket(ns)
    if ns > _NS[i]:
        i += 1
    return i


def far_bucket(ns: int) -> int:
    """Bucket of a duration beyond the table (> 1.07 s): ``bisect_left(BOUNDS_NS, ns)``."""
    return bisect.bisect_left(BOUNDS_NS, ns)


def bucket_of_ms(value_ms: float) -> int:
    """Bucket of a duration in ms: first bound ``>= value_ms``, capped at the last bucket.

    A float comparison, for callers holding ms; the guard records nanoseconds.
    """
    return min(bisect.bisect_left(latency_bounds_ms(), value_ms), LATENCY_BUCKETS - 1)


def fold(counts: list[int]) -> list[int]:
    """``counts`` (``SLOTS`` long) as a ``LatencyHistogram.counts`` list.

    The overflow slot is folded into the last bucket, trailing empty buckets left out.
    """
    out = list(counts[:LATENCY_BUCKETS])
    if len(counts) > LATENCY_BUCKETS:
        out[-1] += sum(counts[LATENCY_BUCKETS:])
    while out and not out[-1]:
        out.pop()
    return out


@dataclass
class WindowCounts:
    """One window's counts of one dependency, for calls with or without a fault.

    Attributes:
        latency: Calls per bucket (``SLOTS`` entries; see :func:`fold`).
        failures: Calls that raised an ``Exception`` (not ``CancelledError``).
        breaker_openings: Transitions to OPEN of the dependency's breaker.
        refused: Calls the guard refused (breaker open, concurrency limit) through
            ``Guard.call``; never timed, not in ``latency`` nor ``calls``.
        experiments: Ids of the experiments whose fault was installed in the window
            (fault counts only).
    """

    latency: list[int] = field(default_factory=lambda: [0] * SLOTS)
    failures: int = 0
    breaker_openings: int = 0
    refused: int = 0
    experiments: set[str] = field(default_factory=set)

    @property
    def calls(self) -> int:
        """Calls counted (the sum of the histogram: every timed call is in it)."""
        return sum(self.latency)

    def document(
        self, dependency: str, instance: str, window_start: float, window_s: float
    ) -> dict[str, Any]:
        """A ``TrafficObservation``-shaped JSON document (see ``fleet_health``).

        Args:
            dependency: The guard name.
            instance: The publishing process (``source_id`` is ``{instance}/{start ISO}``).
            window_start: Start of the window, Unix seconds.
            window_s: Length of the window, seconds.
        """
        start = datetime.fromtimestamp(window_start, UTC)
        return {
            "kind": "traffic",
            "dependency": dependency,
            "source_id": f"{instance}/{start.isoformat()}",
            "window_start": start.isoformat(),
            "window_s": window_s,
            "calls": self.calls,
            "failures": self.failures,
            "breaker_openings": self.breaker_openings,
            "latency": {"counts": fold(self.latency)},
        }


def window_start_of(now: float, window_s: float) -> float:
    """Start of the window holding Unix time ``now``.

    Windows are aligned on multiples of ``window_s`` since the epoch, so every
    instance's windows coincide.
    """
    return math.floor(now / window_s) * window_s
