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

Slots follow work, not waiting (documented rule)
    A slot is held by a recovery that works (attempts, backs off between them), never by
    one that waits for a person. When an admitted recovery begins waiting for approval
    (escalated after a round of failed attempts, or MANUAL before its first), it signals
    ``recovery_waiting``: its slot is free at once and it is listed as awaiting approval.
    When it is approved it signals ``recovery_resuming`` and is queued again at its
    priority with its *original* arrival (sequence number and arrival time), so it ranks
    exactly where it ranked when it first arrived: ahead of every request of the same
    priority that arrived after it (with aging, it also keeps the age of its first
    arrival). When it reaches the head and a slot is free the orchestrator signals it
    ``slot_granted`` instead of starting a new recovery. A person's approval is not an
    automatic retry: a resumed recovery waits for a free slot only, neither for the
    admission rate nor for a retry-budget pause. A recovery that closes while awaiting
    approval (it recovered by itself, was rejected or cancelled) just leaves the list; its
    close never frees a slot twice.

Retry budget (Google SRE book, ch. 22)
    Every attempt of an orchestrated recovery is reported (``attempt_finished``). Among
    the attempts of the last ``budget_window_s`` (sliding), if at least
    ``budget_min_samples`` were made and the failed share is above ``retry_budget``
    (compared exactly, as fractions), *new* admissions pause; running recoveries go on.
    The pause lasts while the ratio stays above the budget: it ends as soon as fresh
    successes bring it down, or when enough failed attempts leave the window. Its "until"
    is when the ratio would drop if no further attempt were reported (old attempts
    leaving the window); every new attempt recomputes it.

    A pause bounds retries, it never stalls the queue (the SRE book's budget throttles
    retries, never to zero). While it holds, the orchestrator makes *probe admissions*:
    the highest-ranked waiting request is admitted when no probe admission made during
    this pause still holds a slot (and a slot is free, and the admission rate allows it),
    so at most one new recovery at a time runs under a pause. Its attempts count like any
    others: if they succeed they bring the ratio down and end the pause; if it escalates
    (its slot is freed) or closes, the next probe admission follows; in an outage where
    every probe fails, the queue moves one recovery at a time. When the pause ends, the
    recoveries admitted as probes become ordinary running ones (a later pause makes its
    own probe admission).

    Orchestrator runs recorded before this rule (without the ``attempt-retry-budget``
    patch) counted finished recoveries instead (FAILED and TIMED_OUT failed, SUCCEEDED
    succeeded) and paused for ``budget_cooldown_s``, then forgot the samples; replaying
    such a run keeps that rule (``count_attempts`` False).
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
from fractions import Fraction

from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError, TimeoutError

from antifragile.constants import recovery_workflow_id
from antifragile.models.orchestrator import (
    AdmissionRecord,
    AwaitingRecovery,
    BudgetSample,
    BudgetView,
    EnqueueResult,
    IgnoredSetting,
    OrchestratorCarry,
    OrchestratorInput,
    OrchestratorLimits,
    QueueChangeResult,
    QueueView,
    RecoveryOutcome,
    RequestState,
    RunningRecovery,
    ServiceInQueue,
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


@dataclass(frozen=True, slots=True)
class Admissions:
    """What :meth:`OrchestratorCore.next_admissions` decided.

    Attributes:
        admit: Requests to start now, in order (already moved to running).
        records: The admission record of each, in the same order.
        paused: True while the retry budget holds admissions (probe admissions, one at a
            time, may still be in ``admit``).
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
    awaiting: dict[str, AwaitingRecovery] = field(default_factory=dict)
    count_attempts: bool = False
    """True: the retry budget counts attempts (``attempt_finished``); False: finished
    recoveries, as runs recorded before the attempt budget did (see the module docstring)."""
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
        if service in self.running or service in self.queue or service in self.awaiting:
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
        forwards its priority to the running recovery), nor does one for a service whose
        recovery waits for a person (it keeps the more urgent priority for its return to
        the queue). Joins and merges report the request's settings that were not applied.
        """
        service = request.service
        running = self.running.get(service)
        if running is not None:
            return self._result(
                service,
                RequestState.RUNNING,
                min(running.priority, request.priority),
                previous=running.priority,
                ignored=ignored_settings(running.request, request),
            )
        awaiting = self.awaiting.get(service)
        if awaiting is not None:
            previous = awaiting.priority
            awaiting.priority = min(previous, request.priority)
            return self._result(
                service,
                RequestState.AWAITING_APPROVAL,
                awaiting.priority,
                previous=previous,
                ignored=ignored_settings(awaiting.request, request),
            )
        existing = self.queue.get(service)
        if existing is not None:
            previous = existing.priority
            self.queue.remove(service)
            existing.merges += 1
            existing.priority = min(existing.priority, request.priority)
            self.queue.push(existing)
            return self._result(
                service,
                RequestState.MERGED,
                existing.priority,
                previous=previous,
                ignored=ignored_settings(existing.request, request),
            )
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

    def check_removable(self, service: str) -> None:
        """Raise QueueError unless ``service`` waits and can be dropped from the queue.

        A recovery resumed after approval runs already (it waits for its slot back):
        dropping it would leave it waiting for ever, so it is cancelled instead.
        """
        self.check_waiting(service)
        entry = self.queue.get(service)
        if entry is not None and entry.resumed:
            raise QueueError(
                f"the recovery of {service} is running and waits for a slot after approval; "
                "cancel it with `antifragile recovery cancel`"
            )

    def remove(self, service: str) -> QueueChangeResult:
        """Drop a waiting request."""
        self.check_removable(service)
        entry = self.queue.remove(service)
        return QueueChangeResult(service=service, priority=entry.priority, waiting=len(self.queue))

    def _result(
        self,
        service: str,
        state: RequestState,
        priority: int,
        previous: int | None = None,
        ignored: list[IgnoredSetting] | None = None,
    ) -> EnqueueResult:
        return EnqueueResult(
            service=service,
            state=state,
            priority=priority,
            position=self.queue.position(service),
            waiting=len(self.queue),
            running=len(self.running),
            max_concurrent=self.limits.max_concurrent,
            paused_reason=self.pause_reason or self.throttle_reason,
            previous_priority=previous,
            ignored=ignored or [],
        )

    # --- slots ---------------------------------------------------------------------

    def started(self, service: str, run_id: str | None) -> None:
        """Record the run id of an admitted recovery once its start is confirmed."""
        running = self.running.get(service)
        if running is not None:
            running.run_id = run_id

    def finish(self, service: str, outcome: RecoveryOutcome, now: datetime, index: int = 0) -> bool:
        """Record that ``service``'s recovery closed; False when the report is stale.

        ``index`` names the admission the report is about (0: the current holder): a
        late report about an earlier holder must not free the slot of a newer one. A
        recovery holding a slot returns it; one awaiting approval, or queued again after
        approval, just leaves the list or the queue (it holds no slot to return).
        """
        holder = self.running.get(service)
        if holder is not None:
            if index and holder.index != index:
                return False
            del self.running[service]
            self._count(outcome, now)
            return True
        awaiting = self.awaiting.get(service)
        if awaiting is not None and _same_holder(awaiting.index, index):
            del self.awaiting[service]
            self._count(outcome, now)
            return True
        entry = self.queue.get(service)
        if entry is not None and entry.resumed and _same_holder(entry.resume_index, index):
            self.queue.remove(service)
            self._count(outcome, now)
            return True
        return False

    def _count(self, outcome: RecoveryOutcome, now: datetime) -> None:
        self.finished[outcome.value] = self.finished.get(outcome.value, 0) + 1
        if not self.count_attempts and outcome.counts_for_budget:
            sample = BudgetSample(at_ms=to_ms(now), failed=outcome.counts_as_failure)
            self.budget_samples.append(sample)
            self.budget_failed += sample.failed

    # --- waiting for a person ------------------------------------------------------

    def recovery_waiting(self, service: str, workflow_id: str, reason: str, now: datetime) -> bool:
        """A recovery began waiting for a person: free its slot, list it as awaiting.

        Returns True when a slot was freed. A recovery this orchestrator did not know
        (or whose request was still queued) is listed too, so a person sees it.
        """
        holder = self.running.pop(service, None)
        if holder is not None:
            self.awaiting[service] = AwaitingRecovery(
                service=service,
                workflow_id=holder.workflow_id,
                run_id=holder.run_id,
                index=holder.index,
                priority=holder.priority,
                seq=holder.seq,
                enqueued_at=holder.enqueued_at,
                admitted_at=holder.admitted_at,
                since=now,
                reason=reason,
                request=holder.request,
            )
            return True
        known = self.awaiting.get(service)
        if known is not None:
            known.reason = reason or known.reason
            return False
        queued = self.queue.remove(service) if service in self.queue else None
        if queued is None:
            seq, enqueued_at, priority, request = self.next_seq, now, 1, None
            self.next_seq += 1
        else:
            seq, enqueued_at, priority = queued.seq, queued.enqueued_at, queued.priority
            request = None if queued.resumed else queued.request
        self.awaiting[service] = AwaitingRecovery(
            service=service,
            workflow_id=workflow_id,
            index=queued.resume_index if queued is not None else 0,
            priority=priority,
            seq=seq,
            enqueued_at=enqueued_at,
            since=now,
            reason=reason,
            request=request,
        )
        return False

    def recovery_resuming(
        self, service: str, workflow_id: str, priority: int, now: datetime
    ) -> bool:
        """An approved recovery needs a slot again: queue it with its original arrival.

        Returns True when it still holds a slot (its ``recovery_waiting`` never arrived):
        the caller grants it again at once. Otherwise it is queued (see the module
        docstring) and granted on admission.
        """
        if service in self.running:
            return True
        awaiting = self.awaiting.pop(service, None)
        queued = self.queue.remove(service) if service in self.queue else None
        # Its place: the earliest arrival known for the service (its first request).
        seq, enqueued_at, request, index = self.next_seq, now, None, 0
        if queued is not None:
            seq, enqueued_at, request = queued.seq, queued.enqueued_at, queued.request
            index = queued.resume_index
            priority = min(priority, queued.priority)
        if awaiting is not None:
            if awaiting.seq < seq:
                seq, enqueued_at = awaiting.seq, awaiting.enqueued_at
            request = awaiting.request or request
            index = awaiting.index or index
            if awaiting.index or awaiting.request is not None:  # else its priority is a guess
                priority = min(priority, awaiting.priority)
        if seq == self.next_seq:
            self.next_seq += 1
        self.queue.push(
            WaitingRecovery(
                request=request or _unknown_request(service, priority),
                priority=priority,
                seq=seq,
                enqueued_at=enqueued_at,
                merges=queued.merges if queued is not None else 0,
                resumed=True,
                resume_index=index,
            )
        )
        return False

    def attempt_finished(self, succeeded: bool, now: datetime) -> None:
        """Count one attempt of a recovery for the retry budget (attempt budget only)."""
        if not self.count_attempts:
            return
        sample = BudgetSample(at_ms=to_ms(now), failed=not succeeded)
        self.budget_samples.append(sample)
        self.budget_failed += sample.failed

    def tracked(self) -> list[tuple[str, str, str | None, int]]:
        """Recoveries whose close must be noticed: (service, workflow id, run id, index).

        Those holding a slot, those awaiting approval and those queued again after
        approval (they run, without a slot).
        """
        rows = [(r.service, r.workflow_id, r.run_id, r.index) for r in self.running.values()]
        rows += [(a.service, a.workflow_id, a.run_id, a.index) for a in self.awaiting.values()]
        rows += [
            (e.service, recovery_workflow_id(e.service), None, e.resume_index)
            for e in self.queue.resumed()
        ]
        return rows

    def where(self, service: str) -> ServiceInQueue:
        """Where ``service`` stands: waiting (with its position), running, awaiting a
        person, or unknown to the orchestrator."""
        entry = self.queue.get(service)
        if entry is not None:
            return ServiceInQueue(
                service=service,
                state="waiting",
                position=self.queue.position(service),
                priority=entry.priority,
                since=entry.enqueued_at,
                resumed=entry.resumed,
            )
        running = self.running.get(service)
        if running is not None:
            return ServiceInQueue(
                service=service,
                state="running",
                priority=running.priority,
                since=running.admitted_at,
                resumed=running.resumed,
            )
        awaiting = self.awaiting.get(service)
        if awaiting is not None:
            return ServiceInQueue(
                service=service,
                state="awaiting_approval",
                priority=awaiting.priority,
                since=awaiting.since,
            )
        return ServiceInQueue(service=service, state="unknown")

    def budget_view(self) -> BudgetView:
        """The retry budget's window as of the last decision."""
        limits = self.limits
        return BudgetView(
            failed=self.budget_failed,
            attempts=len(self.budget_samples),
            window_s=limits.budget_window_s,
            retry_budget=limits.retry_budget,
            min_samples=limits.budget_min_samples,
        )

    def tracks(self, service: str) -> bool:
        """True while ``service``'s recovery runs under this orchestrator (slot or not)."""
        if service in self.running or service in self.awaiting:
            return True
        entry = self.queue.get(service)
        return entry is not None and entry.resumed

    # --- admission -----------------------------------------------------------------

    def next_admissions(self, now: datetime) -> Admissions:
        """Decide who gets a slot now; admitted requests move from waiting to running.

        Order of checks: retry-budget pause, then free slots, then the rate limit. A
        recovery resumed after approval waits for a free slot only (see the module
        docstring).
        """
        now_ms = to_ms(now)
        self._trim(now_ms)
        self.throttle_reason = ""
        decided = Admissions()
        pause = self._budget_pause(now_ms)
        if pause is not None:
            self._admit_resumed(decided, now, now_ms)
            wake_at_ms = pause.wake_at_ms
            if self.count_attempts:
                rate_wake = self._admit_probe(decided, now, now_ms)
                if rate_wake is not None and (wake_at_ms is None or rate_wake < wake_at_ms):
                    wake_at_ms = rate_wake
            return Admissions(
                decided.admit,
                decided.records,
                paused=True,
                reason=self.pause_reason,
                wake_at_ms=wake_at_ms,
            )
        for running in self.running.values():
            # The pause is over: its probe admissions are ordinary recoveries now.
            running.probe = False
        limits = self.limits
        while self.queue and len(self.running) < limits.max_concurrent:
            head = self.queue.peek()
            if (
                head is not None
                and not head.resumed
                and len(self.admission_times_ms) >= limits.max_admissions_per_minute
            ):
                wake = self.admission_times_ms[0] + RATE_WINDOW_MS
                self.throttle_reason = (
                    f"admission rate limit: {len(self.admission_times_ms)} admissions in the "
                    f"last minute (limit {limits.max_admissions_per_minute}/min); next at "
                    f"{from_ms(wake):%H:%M:%S} UTC"
                )
                self._admit_resumed(decided, now, now_ms)
                return Admissions(
                    decided.admit, decided.records, reason=self.throttle_reason, wake_at_ms=wake
                )
            entry = self.queue.pop()
            decided.admit.append(entry)
            decided.records.append(self._admit(entry, now, now_ms))
        return decided

    def probe_holder(self) -> RunningRecovery | None:
        """The probe admission of the current pause that still holds a slot, if any."""
        for running in self.running.values():
            if running.probe:
                return running
        return None

    def _admit_probe(self, decided: Admissions, now: datetime, now_ms: int) -> int | None:
        """Under a pause, admit the head of the queue as the pause's probe admission.

        Only when no probe admission of this pause holds a slot, a slot is free and the
        admission rate allows it. Sets :attr:`pause_reason` to say what the pause does
        now. Returns when the rate limit lets the next admission in, if it is what holds
        the probe admission back (None otherwise).
        """
        base = self.pause_reason
        until = f"{from_ms(self.paused_until_ms or 0):%H:%M:%S} UTC"
        self.pause_reason = (
            f"{base}; admitting one recovery at a time until {until}, sooner if attempts succeed"
        )
        holder = self.probe_holder()
        if holder is not None:
            self.pause_reason += f" (probe admission running: {holder.service})"
            return None
        head = self.queue.peek()
        if head is None or head.resumed or len(self.running) >= self.limits.max_concurrent:
            return None
        if len(self.admission_times_ms) >= self.limits.max_admissions_per_minute:
            wake = self.admission_times_ms[0] + RATE_WINDOW_MS
            self.pause_reason += (
                f" (admission rate limit: next probe admission at {from_ms(wake):%H:%M:%S} UTC)"
            )
            return wake
        entry = self.queue.pop()
        decided.admit.append(entry)
        decided.records.append(self._admit(entry, now, now_ms, probe=True))
        self.pause_reason += f" (probe admission running: {entry.service})"
        return None

    def _admit_resumed(self, decided: Admissions, now: datetime, now_ms: int) -> None:
        """Admit recoveries resumed after approval while slots are free (in queue order)."""
        for entry in self.queue.resumed():
            if len(self.running) >= self.limits.max_concurrent:
                return
            self.queue.remove(entry.service)
            decided.admit.append(entry)
            decided.records.append(self._admit(entry, now, now_ms))

    def _admit(
        self, entry: WaitingRecovery, now: datetime, now_ms: int, probe: bool = False
    ) -> AdmissionRecord:
        if not entry.resumed:
            # The rate limit protects the server from a storm of starts; a resumed
            # recovery starts nothing (it gets a signal).
            self.admission_times_ms.append(now_ms)
        self.admitted_total += 1
        index = entry.resume_index if entry.resumed and entry.resume_index else self.admitted_total
        self.running[entry.service] = RunningRecovery(
            service=entry.service,
            workflow_id=recovery_workflow_id(entry.service),
            index=index,
            priority=entry.priority,
            seq=entry.seq,
            enqueued_at=entry.enqueued_at,
            admitted_at=now,
            request=entry.request,
            resumed=entry.resumed,
            probe=probe,
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
        budget_cutoff = now_ms - int(self.limits.budget_window_s * 1000)
        if not self.count_attempts:
            budget_cutoff = max(budget_cutoff, self.budget_reset_ms)
        while self.budget_samples and self.budget_samples[0].at_ms < budget_cutoff:
            self.budget_failed -= self.budget_samples.popleft().failed

    def _budget_pause(self, now_ms: int) -> Admissions | None:
        if self.count_attempts:
            return self._attempt_budget_pause(now_ms)
        return self._legacy_budget_pause(now_ms)

    def over_budget(self, failed: int, total: int) -> bool:
        """True when ``failed`` of ``total`` attempts exceed the retry budget (exactly)."""
        if total < self.limits.budget_min_samples:
            return False
        budget = Fraction(repr(self.limits.retry_budget))
        return Fraction(failed, total) > budget

    def budget_clears_at_ms(self) -> int:
        """When the budget stops being exceeded if no attempt is reported meanwhile.

        Samples leave the window oldest first (a sample at ``t`` counts up to
        ``t + window`` inclusive); the first instant the remaining ones are within budget.
        """
        window_ms = int(self.limits.budget_window_s * 1000)
        failed, total = self.budget_failed, len(self.budget_samples)
        for sample in self.budget_samples:
            failed -= sample.failed
            total -= 1
            if not self.over_budget(failed, total):
                return sample.at_ms + window_ms + 1
        return 0  # pragma: no cover - an empty window is never over budget

    def _attempt_budget_pause(self, now_ms: int) -> Admissions | None:
        failed, total = self.budget_failed, len(self.budget_samples)
        if not self.over_budget(failed, total):
            self.paused_until_ms = None
            self.pause_reason = ""
            return None
        until = self.budget_clears_at_ms()
        limits = self.limits
        self.paused_until_ms = until
        self.pause_reason = (
            f"retry budget exceeded: {failed} of {total} attempts failed in the last "
            f"{limits.budget_window_s:g}s (budget {limits.retry_budget:.0%})"
        )
        return Admissions(paused=True, reason=self.pause_reason, wake_at_ms=until)

    def _legacy_budget_pause(self, now_ms: int) -> Admissions | None:
        """The budget of runs recorded before the attempt budget (finished recoveries)."""
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
            awaiting=list(self.awaiting.values()),
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
        core.awaiting = {a.service: a for a in carry.awaiting}
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
    if len(carry.waiting) + len(carry.running) + len(carry.awaiting) <= PACK_THRESHOLD:
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


def _same_holder(known_index: int, reported_index: int) -> bool:
    """A close report (``reported_index``, 0: whoever) is about the recovery known under
    ``known_index`` (0: admitted elsewhere, so any report about the service is)."""
    return not reported_index or not known_index or known_index == reported_index


def _unknown_request(service: str, priority: int) -> RecoveryRequest:
    """Stand-in for the request of a recovery this orchestrator never admitted (it
    resumed after approval): only its service and priority matter in the queue."""
    return RecoveryRequest(
        service=service,
        priority=priority,
        probe="tcp://unknown:1",
        reason="resumed after approval (not admitted by this orchestrator)",
    )


_POLICY_SETTINGS = {
    "max_retry_attempts": "max_attempts",
    "initial_delay_ms": "initial_delay_ms",
    "max_delay_ms": "max_delay_ms",
    "backoff_multiplier": "multiplier",
    "jitter": "jitter",
    "jitter_ratio": "jitter_ratio",
}


def ignored_settings(kept: RecoveryRequest | None, new: RecoveryRequest) -> list[IgnoredSetting]:
    """Settings of ``new`` that differ from the recovery ``kept`` (which keeps its own).

    One recovery runs per service, so a later request joins it or merges into it: its
    priority counts (the more urgent is kept), its reason and requester are recorded, and
    every other setting that differs is reported here, so the requester knows. The
    constitutional hash is never shown. ``kept`` None (unknown): nothing is reported.
    """
    if kept is None:
        return []
    ignored: list[IgnoredSetting] = []

    def differ(setting: str, requested: object, keeps: object) -> None:
        if requested != keeps:
            ignored.append(
                IgnoredSetting(setting=setting, requested=str(requested), kept=str(keeps))
            )

    differ("strategy", new.strategy.value, kept.strategy.value)
    differ("probe", new.probe, kept.probe)
    differ("probe_timeout_s", f"{new.probe_timeout_s:g}", f"{kept.probe_timeout_s:g}")
    differ("action", new.action, kept.action)
    for name, setting in _POLICY_SETTINGS.items():
        differ(setting, getattr(new.policy, name), getattr(kept.policy, name))
    if new.constitutional_hash != kept.constitutional_hash:
        ignored.append(
            IgnoredSetting(setting="constitutional_hash", requested="(differs)", kept="(its own)")
        )
    return ignored


def format_duration(seconds: float) -> str:
    """``42s``, ``7m``, ``3.5h`` (never negative)."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def why_waiting(view: QueueView, now: datetime) -> str:
    """Why requests wait, from a queue view read at ``now`` ("" when nothing waits).

    Names the cause: a retry-budget pause (with its end), the admission rate limit, or
    every slot busy and by whom (with how long each has run, computed at ``now``, not at
    the orchestrator's last update).
    """
    if not view.waiting_total:
        return ""
    if view.paused:
        return view.pause_reason or "admissions paused"
    throttle = view.throttle_reason or view.pause_reason
    if throttle:
        return throttle
    if len(view.running) >= view.max_concurrent:
        shown = [
            f"{r.service} ({format_duration((now - r.admitted_at).total_seconds())})"
            for r in view.running[:5]
        ]
        more = f" and {len(view.running) - 5} more" if len(view.running) > 5 else ""
        return f"all {view.max_concurrent} slots busy: " + ", ".join(shown) + more
    return "a slot is free: being admitted"


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
