"""Pure decisions of the recovery orchestrator: requests, admissions, continue-as-new.

RecoveryOrchestratorWorkflow keeps one :class:`OrchestratorCore` and calls it on every
event; nothing here touches Temporal or the clock (time is passed in), so the same calls
give the same answers on replay, and the unit tests run without a server.

The rules live beside the code that keeps them: admission order and aging in
:mod:`antifragile.orchestrator.queue`; the admission rate limit and the retry budget (with
its probe admissions) in :mod:`antifragile.orchestrator.admission_control`; slots follow
work, not waiting, in :mod:`antifragile.orchestrator.slots`; what the queue tells people
in :mod:`antifragile.orchestrator.explain`.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError, TimeoutError

from antifragile.constants import recovery_workflow_id
from antifragile.models.orchestrator import (
    AdmissionRecord,
    EnqueueResult,
    IgnoredSetting,
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
from antifragile.orchestrator.explain import ignored_settings
from antifragile.orchestrator.queue import AdmissionQueue, QueueError, from_ms, to_ms
from antifragile.orchestrator.slots import SlotLedger

RECENT_ADMISSIONS = 200
"""Admission records kept (and carried across continue-as-new) for the query and audits."""
PACK_THRESHOLD = 200
"""Queues longer than this travel compressed across continue-as-new."""


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
class OrchestratorCore(SlotLedger):
    """The orchestrator's whole state and every decision on it.

    Its state and rules are layered: :class:`~antifragile.orchestrator.admission_control.
    AdmissionControl` (admission rate, retry budget) under :class:`~antifragile.
    orchestrator.slots.SlotLedger` (queue, slot holders, recoveries awaiting a person);
    this class adds requests, admissions and the carry across continue-as-new.
    """

    admitted_total: int = 0
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
            _keep_earliest_detection(existing, request)
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

    # --- admission -----------------------------------------------------------------

    def next_admissions(self, now: datetime) -> Admissions:
        """Decide who gets a slot now; admitted requests move from waiting to running.

        Order of checks: retry-budget pause, then free slots, then the rate limit. A
        recovery resumed after approval waits for a free slot only (see
        :mod:`antifragile.orchestrator.slots`).
        """
        now_ms = to_ms(now)
        self._trim(now_ms)
        self.throttle_reason = ""
        decided = Admissions()
        if self._budget_pause(now_ms):
            self._admit_resumed(decided, now, now_ms)
            wake_at_ms = self.paused_until_ms
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
            if head is not None and not head.resumed and self.rate_limited():
                wake = self.throttle()
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
        if self.rate_limited():
            wake = self.rate_opens_at_ms()
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
            self.record_admission(now_ms)
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


def _keep_earliest_detection(kept: WaitingRecovery, new: RecoveryRequest) -> None:
    """A merged request's ``detected_at`` replaces the kept one's when earlier (or unset).

    The outage began when the first instance's breaker opened, whichever request arrived
    first; a naive time is UTC (as the ledger reads it).
    """
    if new.detected_at is None:
        return
    noticed = new.detected_at
    noticed = noticed if noticed.tzinfo else noticed.replace(tzinfo=UTC)
    current = kept.request.detected_at
    if current is not None and current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    if current is None or noticed < current:
        kept.request = kept.request.model_copy(update={"detected_at": noticed})
