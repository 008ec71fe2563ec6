"""Who holds a slot, who waits for a person, who is queued again after approval.

:class:`SlotLedger` keeps the orchestrator's waiting line, the recoveries holding a slot
and those awaiting approval, and applies the slot protocol: a recovery's close report
(``finish``), ``recovery_waiting`` and ``recovery_resuming``.
:class:`~antifragile.orchestrator.logic.OrchestratorCore` builds on it. Pure (time is
passed in), so replays and unit tests give the same answers.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from antifragile.constants import recovery_workflow_id
from antifragile.models.orchestrator import (
    AwaitingRecovery,
    RecoveryOutcome,
    RunningRecovery,
    ServiceInQueue,
    WaitingRecovery,
)
from antifragile.models.recovery import RecoveryRequest
from antifragile.orchestrator.admission_control import AdmissionControl
from antifragile.orchestrator.queue import AdmissionQueue


@dataclass
class SlotLedger(AdmissionControl):
    """The queue, the slot holders and the recoveries awaiting a person.

    Extends :class:`~antifragile.orchestrator.admission_control.AdmissionControl`: a
    recovery's close counts for the retry budget of runs recorded before the attempt
    budget.

    Attributes:
        queue: Requests waiting for a slot, in admission order (recoveries resumed after
            approval among them).
        running: Recoveries holding a slot, by service.
        awaiting: Recoveries waiting for a person (holding no slot), by service.
        next_seq: Arrival number of the next new request.
        finished: Closed recoveries counted by outcome.
    """

    queue: AdmissionQueue = field(default_factory=AdmissionQueue)
    running: dict[str, RunningRecovery] = field(default_factory=dict)
    awaiting: dict[str, AwaitingRecovery] = field(default_factory=dict)
    next_seq: int = 1
    finished: dict[str, int] = field(default_factory=dict)

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
        self.recovery_closed(outcome, now)

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
        """Where ``service`` stands: waiting, running, awaiting a person, or unknown.

        Waiting comes with its position; unknown means unknown to the orchestrator.
        """
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

    def tracks(self, service: str) -> bool:
        """True while ``service``'s recovery runs under this orchestrator (slot or not)."""
        if service in self.running or service in self.awaiting:
            return True
        entry = self.queue.get(service)
        return entry is not None and entry.resumed


def _same_holder(known_index: int, reported_index: int) -> bool:
    """A close report (``reported_index``) is about the recovery known under ``known_index``.

    ``reported_index`` 0: whoever. ``known_index`` 0: admitted elsewhere, so any report
    about the service is.
    """
    return not reported_index or not known_index or known_index == reported_index


def _unknown_request(service: str, priority: int) -> RecoveryRequest:
    """Stand-in for the request of a recovery this orchestrator never admitted.

    It resumed after approval: only its service and priority matter in the queue.
    """
    return RecoveryRequest(
        service=service,
        priority=priority,
        probe="tcp://unknown:1",
        reason="resumed after approval (not admitted by this orchestrator)",
    )
