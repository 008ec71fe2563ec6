"""Pure decisions of the recovery orchestrator: queue order, aging, rate limit, retry budget.

RecoveryOrchestratorWorkflow keeps one :class:`OrchestratorCore` and calls it on every
event; nothing here touches Temporal or the clock (time is passed in), so the same calls
give the same answers on replay, and the unit tests run without a server.

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

Rate limit
    At most ``max_admissions_per_minute`` admissions in any sliding 60 s window; when the
    window is full the next admission is due when its oldest admission leaves it.

Retry budget
    Among recoveries that finished in the last ``budget_window_s`` (and since the last
    pause began), if at least ``budget_min_samples`` counted and the failed share is above
    ``retry_budget``, admissions pause for ``budget_cooldown_s``. Samples from before the
    pause are then forgotten, so after the cool-down admissions resume and only fresh
    outcomes can pause them again. Failures are FAILED and TIMED_OUT; successes count as
    samples; cancellation and termination (a person's decision) are not samples.
"""

from __future__ import annotations

import base64
import bisect
import heapq
import json
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError, TimeoutError

from antifragile.constants import recovery_workflow_id
from antifragile.models.orchestrator import (
    AdmissionRecord,
    BudgetSample,
    EnqueueResult,
    OrchestratorCarry,
    OrchestratorInput,
    OrchestratorLimits,
    QueueChangeResult,
    RecoveryOutcome,
    RequestState,
    RunningRecovery,
    WaitingRecovery,
)
from antifragile.models.recovery import RecoveryRequest

RATE_WINDOW_MS = 60_000
RECENT_ADMISSIONS = 200
"""Admission records kept (and carried across continue-as-new) for the query and audits."""
PACK_THRESHOLD = 200
"""Queues longer than this travel compressed across continue-as-new."""


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
        return self._entries.pop(service)

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


@dataclass(frozen=True, slots=True)
class Admissions:
    """What :meth:`OrchestratorCore.next_admissions` decided.

    Attributes:
        admit: Requests to start now, in order (already moved to running).
        records: The admission record of each, in the same order.
        paused: True while the retry budget holds admissions.
        reason: Why nothing (more) can be admitted now while requests wait ("" if none).
        wake_at_ms: When to decide again even if nothing happens (None: on events only).
    """

    admit: list[WaitingRecovery] = field(default_factory=list)
    records: list[AdmissionRecord] = field(default_factory=list)
    paused: bool = False
    reason: str = ""
    wake_at_ms: int | None = None


@dataclass
class OrchestratorCore:
    """The orchestrator's whole state and every decision on it."""

    limits: OrchestratorLimits = field(default_factory=OrchestratorLimits)
    queue: AdmissionQueue = field(default_factory=AdmissionQueue)
    running: dict[str, RunningRecovery] = field(default_factory=dict)
    admission_times_ms: deque[int] = field(default_factory=deque)
    budget_samples: deque[BudgetSample] = field(default_factory=deque)
    budget_failed: int = 0
    budget_reset_ms: int = 0
    paused_until_ms: int | None = None
    pause_reason: str = ""
    throttle_reason: str = ""
    next_seq: int = 1
    admitted_total: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    recent_admissions: deque[AdmissionRecord] = field(
        default_factory=lambda: deque(maxlen=RECENT_ADMISSIONS)
    )
    runs: int = 1

    def __post_init__(self) -> None:
        self.queue.rerank(self.limits.aging_interval_s)

    # --- limits --------------------------------------------------------------------

    def set_limits(self, limits: OrchestratorLimits) -> None:
        """Apply new limits (e.g. the worker policy after a restart)."""
        self.limits = limits
        self.queue.rerank(limits.aging_interval_s)

    # --- requests ------------------------------------------------------------------

    def check_enqueue(self, request: RecoveryRequest) -> None:
        """Raise QueueError when ``request`` cannot be accepted (queue full)."""
        service = request.service
        if service in self.running or service in self.queue:
            return
        if len(self.queue) >= self.limits.max_waiting:
            raise QueueError(
                f"the recovery queue is full ({len(self.queue)} waiting, "
                f"limit {self.limits.max_waiting})"
            )

    def enqueue(self, request: RecoveryRequest, now: datetime) -> EnqueueResult:
        """Add a request, or merge it into the same service's waiting or running one.

        A merge keeps the earlier arrival (its place among equals) and the more urgent
        priority; a request for a running service changes nothing here (the workflow
        forwards its priority to the running recovery).
        """
        service = request.service
        running = self.running.get(service)
        if running is not None:
            return self._result(
                service, RequestState.RUNNING, min(running.priority, request.priority)
            )
        existing = self.queue.get(service)
        if existing is not None:
            self.queue.remove(service)
            existing.merges += 1
            existing.priority = min(existing.priority, request.priority)
            self.queue.push(existing)
            return self._result(service, RequestState.MERGED, existing.priority)
        self.check_enqueue(request)
        entry = WaitingRecovery(
            request=request, priority=request.priority, seq=self.next_seq, enqueued_at=now
        )
        self.next_seq += 1
        self.queue.push(entry)
        return self._result(service, RequestState.QUEUED, entry.priority)

    def check_waiting(self, service: str) -> None:
        """Raise QueueError unless ``service`` is waiting (validators call this)."""
        if service in self.queue:
            return
        if service in self.running:
            raise QueueError(
                f"{service} is already running; cancel it with `antifragile recovery cancel`"
            )
        raise QueueError(f"{service} is not in the recovery queue")

    def reprioritise(self, service: str, priority: int) -> QueueChangeResult:
        """Give a waiting request a new priority (either direction); keeps its arrival."""
        self.check_waiting(service)
        entry = self.queue.remove(service)
        entry.priority = priority
        position = self.queue.push(entry)
        return QueueChangeResult(
            service=service, priority=priority, position=position, waiting=len(self.queue)
        )

    def remove(self, service: str) -> QueueChangeResult:
        """Drop a waiting request."""
        self.check_waiting(service)
        entry = self.queue.remove(service)
        return QueueChangeResult(service=service, priority=entry.priority, waiting=len(self.queue))

    def _result(self, service: str, state: RequestState, priority: int) -> EnqueueResult:
        return EnqueueResult(
            service=service,
            state=state,
            priority=priority,
            position=self.queue.position(service),
            waiting=len(self.queue),
            running=len(self.running),
            max_concurrent=self.limits.max_concurrent,
            paused_reason=self.pause_reason or self.throttle_reason,
        )

    # --- slots ---------------------------------------------------------------------

    def started(self, service: str, run_id: str | None) -> None:
        """Record the run id of an admitted recovery once its start is confirmed."""
        running = self.running.get(service)
        if running is not None:
            running.run_id = run_id

    def finish(self, service: str, outcome: RecoveryOutcome, now: datetime, index: int = 0) -> bool:
        """Return ``service``'s slot; False when the report is stale or a duplicate.

        ``index`` names the admission the report is about (0: the current holder): a
        late report about an earlier holder must not free the slot of a newer one.
        """
        holder = self.running.get(service)
        if holder is None or (index and holder.index != index):
            return False
        del self.running[service]
        self.finished[outcome.value] = self.finished.get(outcome.value, 0) + 1
        if outcome.counts_for_budget:
            sample = BudgetSample(at_ms=to_ms(now), failed=outcome.counts_as_failure)
            self.budget_samples.append(sample)
            self.budget_failed += sample.failed
        return True

    # --- admission -----------------------------------------------------------------

    def next_admissions(self, now: datetime) -> Admissions:
        """Decide who gets a slot now; admitted requests move from waiting to running.

        Order of checks: retry-budget pause, then free slots, then the rate limit.
        """
        now_ms = to_ms(now)
        self._trim(now_ms)
        self.throttle_reason = ""
        pause = self._budget_pause(now_ms)
        if pause is not None:
            return pause
        decided = Admissions()
        limits = self.limits
        while self.queue and len(self.running) < limits.max_concurrent:
            if len(self.admission_times_ms) >= limits.max_admissions_per_minute:
                wake = self.admission_times_ms[0] + RATE_WINDOW_MS
                self.throttle_reason = (
                    f"admission rate limit: {len(self.admission_times_ms)} admissions in the "
                    f"last minute (limit {limits.max_admissions_per_minute}/min); next at "
                    f"{from_ms(wake):%H:%M:%S} UTC"
                )
                return Admissions(
                    decided.admit, decided.records, reason=self.throttle_reason, wake_at_ms=wake
                )
            entry = self.queue.pop()
            decided.admit.append(entry)
            decided.records.append(self._admit(entry, now, now_ms))
        return decided

    def _admit(self, entry: WaitingRecovery, now: datetime, now_ms: int) -> AdmissionRecord:
        self.admission_times_ms.append(now_ms)
        self.admitted_total += 1
        self.running[entry.service] = RunningRecovery(
            service=entry.service,
            workflow_id=recovery_workflow_id(entry.service),
            index=self.admitted_total,
            priority=entry.priority,
            seq=entry.seq,
            enqueued_at=entry.enqueued_at,
            admitted_at=now,
        )
        record = AdmissionRecord(
            index=self.admitted_total,
            service=entry.service,
            priority=entry.priority,
            rank=self.queue.key(entry)[0],
            seq=entry.seq,
            seen_seq=self.next_seq - 1,
            enqueued_at=entry.enqueued_at,
            admitted_at=now,
            running=len(self.running),
        )
        self.recent_admissions.append(record)
        return record

    def _trim(self, now_ms: int) -> None:
        rate_cutoff = now_ms - RATE_WINDOW_MS
        while self.admission_times_ms and self.admission_times_ms[0] <= rate_cutoff:
            self.admission_times_ms.popleft()
        budget_cutoff = max(now_ms - int(self.limits.budget_window_s * 1000), self.budget_reset_ms)
        while self.budget_samples and self.budget_samples[0].at_ms < budget_cutoff:
            self.budget_failed -= self.budget_samples.popleft().failed

    def _budget_pause(self, now_ms: int) -> Admissions | None:
        if self.paused_until_ms is not None:
            if now_ms < self.paused_until_ms:
                return Admissions(
                    paused=True, reason=self.pause_reason, wake_at_ms=self.paused_until_ms
                )
            self.paused_until_ms = None
            self.pause_reason = ""
        limits = self.limits
        total = len(self.budget_samples)
        if total < limits.budget_min_samples or self.budget_failed / total <= limits.retry_budget:
            return None
        until = now_ms + int(limits.budget_cooldown_s * 1000)
        self.pause_reason = (
            f"retry budget exceeded: {self.budget_failed} of {total} recoveries failed in the "
            f"last {limits.budget_window_s:g}s (budget {limits.retry_budget:.0%}); admissions "
            f"paused until {from_ms(until):%H:%M:%S} UTC"
        )
        self.paused_until_ms = until
        # Forget the evidence that caused the pause: after the cool-down, only outcomes
        # from now on can pause again (otherwise the old failures would re-trigger it).
        self.budget_reset_ms = now_ms
        self.budget_samples.clear()
        self.budget_failed = 0
        return Admissions(paused=True, reason=self.pause_reason, wake_at_ms=until)

    @property
    def paused(self) -> bool:
        """True while a retry-budget pause is in force (as of the last decision)."""
        return self.paused_until_ms is not None

    # --- continue-as-new -----------------------------------------------------------

    def carry(self) -> OrchestratorCarry:
        """The state to hand to the next run."""
        return OrchestratorCarry(
            waiting=list(self.queue.ordered()),
            running=list(self.running.values()),
            admission_times_ms=list(self.admission_times_ms),
            budget_samples=list(self.budget_samples),
            budget_reset_ms=self.budget_reset_ms,
            paused_until_ms=self.paused_until_ms,
            pause_reason=self.pause_reason,
            next_seq=self.next_seq,
            admitted_total=self.admitted_total,
            finished=dict(self.finished),
            recent_admissions=list(self.recent_admissions),
            runs=self.runs,
        )

    @classmethod
    def restore(
        cls, carry: OrchestratorCarry | None, limits: OrchestratorLimits | None = None
    ) -> OrchestratorCore:
        """Rebuild the state from a carry (None: a fresh orchestrator)."""
        limits = limits or OrchestratorLimits()
        core = cls(limits=limits, queue=AdmissionQueue(limits.aging_interval_s))
        if carry is None:
            return core
        for entry in carry.waiting:
            core.queue.push(entry)
        core.running = {r.service: r for r in carry.running}
        core.admission_times_ms = deque(carry.admission_times_ms)
        core.budget_samples = deque(carry.budget_samples)
        core.budget_failed = sum(s.failed for s in carry.budget_samples)
        core.budget_reset_ms = carry.budget_reset_ms
        core.paused_until_ms = carry.paused_until_ms
        core.pause_reason = carry.pause_reason
        core.next_seq = carry.next_seq
        core.admitted_total = carry.admitted_total
        core.finished = dict(carry.finished)
        core.recent_admissions = deque(carry.recent_admissions, maxlen=RECENT_ADMISSIONS)
        core.runs = carry.runs
        return core


def pack_input(carry: OrchestratorCarry, limits: OrchestratorLimits) -> OrchestratorInput:
    """The next run's input: the carry as-is when small, compressed when the queue is long."""
    if len(carry.waiting) <= PACK_THRESHOLD:
        return OrchestratorInput(carry=carry, limits=limits)
    raw = carry.model_dump_json().encode()
    packed = base64.b64encode(zlib.compress(raw, 6)).decode("ascii")
    return OrchestratorInput(packed_carry=packed, limits=limits)


def unpack_input(data: OrchestratorInput) -> OrchestratorCarry | None:
    """The carry of an input, whichever way it travelled."""
    if data.packed_carry:
        raw = zlib.decompress(base64.b64decode(data.packed_carry))
        return OrchestratorCarry.model_validate(json.loads(raw))
    return data.carry


def admission_order_violations(records: list[AdmissionRecord]) -> int:
    """Admissions that skipped a better-ranked request that was already waiting.

    ``records`` must be every admission in order (e.g. an audit of a whole run of the
    benchmark). Replays the queue: before admission ``i``, every request with
    ``seq <= seen_seq`` that is not yet admitted was waiting, so none may rank below it.
    Ranks are taken from the records (valid when no request was reprioritised or removed
    while waiting). O(n log n).
    """
    by_seq = sorted(records, key=lambda r: r.seq)
    waiting: list[tuple[int, int]] = []
    admitted: set[int] = set()
    pushed = 0
    violations = 0
    for record in records:
        while pushed < len(by_seq) and by_seq[pushed].seq <= record.seen_seq:
            heapq.heappush(waiting, (by_seq[pushed].rank, by_seq[pushed].seq))
            pushed += 1
        while waiting and waiting[0][1] in admitted:
            heapq.heappop(waiting)
        if waiting and waiting[0][0] < record.rank:
            violations += 1
        admitted.add(record.seq)
    return violations


def wake_delay(wake_at_ms: int | None, now: datetime) -> timedelta | None:
    """How long to sleep until ``wake_at_ms`` (at least 1 ms), None when no wake-up is due."""
    if wake_at_ms is None:
        return None
    return timedelta(milliseconds=max(1, wake_at_ms - to_ms(now)))


def outcome_of_failure(cause: BaseException | None) -> tuple[RecoveryOutcome, str]:
    """How a recovery ended, from the cause of its workflow (or child workflow) failure."""
    if isinstance(cause, TerminatedError):
        return RecoveryOutcome.TERMINATED, cause.message
    if isinstance(cause, CancelledError):
        return RecoveryOutcome.CANCELLED, cause.message
    if isinstance(cause, TimeoutError):
        return RecoveryOutcome.TIMED_OUT, cause.message
    if isinstance(cause, ApplicationError):
        return RecoveryOutcome.FAILED, cause.message
    return RecoveryOutcome.FAILED, str(cause or "failed")
