"""The recovery queue's waiting line: admission order and aging, as a sorted list.

:class:`AdmissionQueue` holds the requests that wait for a slot, in the order the
orchestrator admits them; :class:`~antifragile.orchestrator.logic.OrchestratorCore` owns
one. Pure (time is passed in), so replays and unit tests give the same answers.

Admission order
    Lower priority number first, then first come, first served (arrival sequence).

Aging (documented rule)
    With ``aging_interval_s = A > 0``, every ``A`` seconds a request waits is worth one
    priority level: its effective priority at time ``t`` is
    ``priority - (t - enqueued_at) / A`` (continuous, may go below 0). Two requests that
    both wait age at the same speed, so their order never changes with time; it is the
    order of ``rank = priority × A + enqueued_at`` (milliseconds), ties by arrival. A
    priority-5 request that has waited 4 × A therefore goes before a priority-1 request
    that just arrived, so nothing starves; requests that arrive within ``A`` of each other
    keep strict priority order. ``A = 0`` turns aging off: ``rank = priority``.
    Because ranks are fixed at arrival, the queue is a sorted list: enqueue, merge,
    reprioritise and remove cost O(log n) comparisons (plus a C-speed memmove), admission
    pops the front, and a position is a bisection.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from datetime import UTC, datetime

from antifragile.models.orchestrator import WaitingRecovery


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """The aware UTC datetime of milliseconds since the epoch."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def queue_rank(priority: int, enqueued_at_ms: int, aging_interval_s: float) -> int:
    """Sort rank of a waiting request: lower goes first (see the module docstring)."""
    if aging_interval_s <= 0:
        return priority
    return priority * int(aging_interval_s * 1000) + enqueued_at_ms


def effective_priority(
    priority: int, enqueued_at_ms: int, now_ms: int, aging_interval_s: float
) -> float:
    """Priority after aging at ``now_ms`` (equal to ``priority`` without aging)."""
    if aging_interval_s <= 0:
        return float(priority)
    return priority - max(0, now_ms - enqueued_at_ms) / (aging_interval_s * 1000)


class QueueError(ValueError):
    """A queue operation that cannot apply (unknown service, already running, full)."""


class AdmissionQueue:
    """Waiting requests in admission order: a sorted list of keys plus a dict by service."""

    def __init__(self, aging_interval_s: float = 0.0) -> None:
        self._aging = aging_interval_s
        self._keys: list[tuple[int, int, str]] = []
        self._entries: dict[str, WaitingRecovery] = {}
        self._resumed: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, service: object) -> bool:
        return service in self._entries

    @property
    def aging_interval_s(self) -> float:
        """The aging interval the ranks are computed with."""
        return self._aging

    def key(self, entry: WaitingRecovery) -> tuple[int, int, str]:
        """The sort key of ``entry``: (rank, arrival, service)."""
        rank = queue_rank(entry.priority, to_ms(entry.enqueued_at), self._aging)
        return (rank, entry.seq, entry.service)

    def get(self, service: str) -> WaitingRecovery | None:
        """The waiting request of ``service``, if any."""
        return self._entries.get(service)

    def push(self, entry: WaitingRecovery) -> int:
        """Insert ``entry`` (its service must not be waiting); return its 1-based position."""
        if entry.service in self._entries:
            raise QueueError(f"{entry.service} is already waiting")
        key = self.key(entry)
        index = bisect.bisect_left(self._keys, key)
        self._keys.insert(index, key)
        self._entries[entry.service] = entry
        if entry.resumed:
            self._resumed.add(entry.service)
        return index + 1

    def remove(self, service: str) -> WaitingRecovery:
        """Take ``service``'s request out of the queue."""
        entry = self._entries.pop(service, None)
        if entry is None:
            raise QueueError(f"{service} is not waiting")
        key = self.key(entry)
        index = bisect.bisect_left(self._keys, key)
        if index >= len(self._keys) or self._keys[index] != key:  # pragma: no cover - bug guard
            raise AssertionError(f"queue index lost {service}")
        del self._keys[index]
        self._resumed.discard(service)
        return entry

    def position(self, service: str) -> int:
        """1-based position of ``service`` (0 when it is not waiting)."""
        entry = self._entries.get(service)
        if entry is None:
            return 0
        return bisect.bisect_left(self._keys, self.key(entry)) + 1

    def peek(self) -> WaitingRecovery | None:
        """The request admitted next, if any."""
        return self._entries[self._keys[0][2]] if self._keys else None

    def pop(self) -> WaitingRecovery:
        """Take the request admitted next."""
        if not self._keys:
            raise QueueError("the queue is empty")
        _, _, service = self._keys.pop(0)
        self._resumed.discard(service)
        return self._entries.pop(service)

    def resumed(self) -> list[WaitingRecovery]:
        """Waiting recoveries resumed after approval, in admission order (few, usually)."""
        if not self._resumed:
            return []
        return sorted((self._entries[s] for s in self._resumed), key=self.key)

    def ordered(self, limit: int | None = None) -> Iterator[WaitingRecovery]:
        """Waiting requests in admission order (the first ``limit`` only, if given)."""
        keys = self._keys if limit is None else self._keys[:limit]
        for _, _, service in keys:
            yield self._entries[service]

    def rerank(self, aging_interval_s: float) -> None:
        """Recompute every rank for a new aging interval (O(n log n), rare)."""
        if aging_interval_s == self._aging:
            return
        self._aging = aging_interval_s
        self._keys = sorted(self.key(e) for e in self._entries.values())
