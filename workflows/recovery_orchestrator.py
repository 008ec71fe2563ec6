"""RecoveryOrchestratorWorkflow: the fleet-wide, durable priority queue in front of recoveries.

Singleton (workflow id ``recovery-orchestrator``). Every decision is made by
:class:`antifragile.orchestrator.logic.OrchestratorCore`; this class only feeds it events
(requests, recoveries ending, timers) and carries out what it decides.

Slots. An admitted request becomes a child RecoveryWorkflow ``recovery-{service}`` with
``ParentClosePolicy.ABANDON`` (a recovery outlives an orchestrator run). Its slot comes
back when the recovery closes in any way:

- in the run that started it, by awaiting the child handle: the server reports the child's
  close (completed, failed, cancelled, timed out, *terminated*) to the parent, so
  termination — which runs no code in the child — still frees the slot;
- after continue-as-new (the new run cannot await the old run's children), and for a
  recovery someone started outside the queue, by the ``await_recovery_end`` activity,
  which long-polls the server for the workflow's close and heartbeats meanwhile.

Waiting for a person holds no slot. An admitted recovery that begins waiting for approval
signals ``recovery_waiting``: its slot is freed at once and it is listed as awaiting
approval (it still runs, and its close is still watched: it then just leaves the list).
Approved, it signals ``recovery_resuming`` and is queued again with its original arrival;
on admission it gets ``slot_granted`` instead of a new child (the rule is documented in
:mod:`antifragile.orchestrator.logic`).

Retry budget. Recoveries report every attempt (``attempt_finished``); above the budget,
new admissions pause while running recoveries go on, except one probe admission at a time
(the queue keeps moving, slowly, and the probe's attempts can end the pause). Runs
recorded before this rule (no ``attempt-retry-budget`` patch marker) keep counting
finished recoveries on replay.

Continue-as-new. When the server suggests it or the run's history reaches
``max_history_events``, the run waits for in-flight child starts and handlers, then
continues as new carrying the queue, the running set, the rate window and the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError, FailureError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import (
        KIND_ORCHESTRATOR,
        ORCHESTRATOR_WORKFLOW_TYPE,
        QUERY_QUEUE,
        SA_KIND,
        SA_STATE,
        SIGNAL_ATTEMPT_FINISHED,
        SIGNAL_JOIN,
        SIGNAL_RECOVERY_RESUMING,
        SIGNAL_RECOVERY_WAITING,
        SIGNAL_REQUEST_RECOVERIES,
        SIGNAL_REQUEST_RECOVERY,
        SIGNAL_SLOT_GRANTED,
        STATE_ACTIVE,
        STATE_PAUSED,
        STATE_THROTTLED,
        UPDATE_ENQUEUE,
        UPDATE_REMOVE,
        UPDATE_REPRIORITISE,
        recovery_workflow_id,
    )
    from antifragile.models.orchestrator import (
        AdmissionRecord,
        AwaitingView,
        EnqueueBatch,
        EnqueueRecovery,
        EnqueueResult,
        OrchestratorInput,
        QueueChangeResult,
        QueueQuery,
        QueueView,
        RecoveryOutcome,
        RemoveRecovery,
        Reprioritise,
        RequestState,
        RunningRecovery,
        RunningView,
        WaitingRecovery,
        WaitingView,
    )
    from antifragile.models.recovery import JoinSignal, RecoveryRequest
    from antifragile.models.slots import (
        AttemptFinished,
        RecoveryFinished,
        RecoveryResuming,
        RecoveryWaiting,
        SlotGranted,
        WatchedRecovery,
    )
    from antifragile.orchestrator.logic import (
        Admissions,
        OrchestratorCore,
        outcome_of_failure,
        pack_input,
        unpack_input,
        wake_delay,
    )
    from antifragile.orchestrator.queue import QueueError, effective_priority, from_ms, to_ms
    from antifragile.recovery.ui import recovery_details, recovery_summary
    from workflows.recovery import RecoveryWorkflow

from workflows import _orchestrator_commands as commands

ATTEMPT_BUDGET_PATCH = "attempt-retry-budget"
"""Runs with this patch marker count attempts for the retry budget (older: recoveries)."""
MAX_WAITING_VIEW = 200
"""Waiting requests the ``queue`` query lists (the total is always given)."""


@workflow.defn(name=ORCHESTRATOR_WORKFLOW_TYPE)
class RecoveryOrchestratorWorkflow:
    """Admits recoveries fleet-wide by priority, within slots, rate and retry budget."""

    @workflow.init
    def __init__(self, data: OrchestratorInput) -> None:
        # Handlers can run before `run` loads the worker's limits: until then the
        # previous run's limits (or the defaults) order the queue; nothing is admitted.
        self._core = OrchestratorCore.restore(unpack_input(data), data.limits)
        self._dirty = True
        self._starting_services: set[str] = set()
        self._carried: dict[str, WatchedRecovery] = {}
        self._forwarding = 0
        self._published_state = ""
        self._last = Admissions()
        self._tasks: set[asyncio.Task[None]] = set()
        # Recoveries this run started and awaits as children: service -> admission index.
        self._children: dict[str, int] = {}

    # --- run -------------------------------------------------------------------------

    @workflow.run
    async def run(self, data: OrchestratorInput) -> None:
        """Admit requests forever; continues as new before the history grows large."""
        self._use_attempt_budget()
        limits = await commands.load_limits()
        self._core.set_limits(limits)
        for watched in self._tracked():
            self._carry_watch(watched)
        self._spawn(self._reconcile())
        while True:
            self._dirty = False
            now = workflow.now()
            decided = self._core.next_admissions(now)
            for entry, record in zip(decided.admit, decided.records, strict=True):
                if entry.resumed:
                    self._grant(entry.service)
                    continue
                self._starting_services.add(entry.service)
                self._spawn(self._run_child(entry, record))
            self._last = decided
            self._publish()
            if self._should_continue_as_new():
                await self._continue_as_new()
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._dirty,
                    timeout=wake_delay(decided.wake_at_ms, now),
                    timeout_summary="next admission due",
                )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_child(self, entry: WaitingRecovery, record: AdmissionRecord) -> None:
        """Start an admitted recovery and hold its slot until it closes."""
        service = entry.service
        request = entry.request.model_copy(update={"priority": entry.priority})
        try:
            handle = await workflow.start_child_workflow(
                RecoveryWorkflow.run,
                request,
                id=self._core.running[service].workflow_id,
                task_queue=workflow.info().task_queue,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                memo={"af_admission": record.model_dump(mode="json")},
                static_summary=recovery_summary(request),
                static_details=recovery_details(request),
            )
        except WorkflowAlreadyStartedError:
            # Started outside the queue (e.g. directly): it holds this slot until it
            # ends, and learns of the request's priority like any duplicate would.
            self._starting_services.discard(service)
            self._forward_join(request)
            self._carry_watch(_watched(self._core.running[service]))
            return
        self._core.started(service, handle.first_execution_run_id)
        self._starting_services.discard(service)
        self._children[service] = record.index
        try:
            await handle
            outcome, detail = RecoveryOutcome.SUCCEEDED, ""
        except ChildWorkflowError as err:
            outcome, detail = outcome_of_failure(err.cause)
        if self._children.get(service) == record.index:
            del self._children[service]
        self._finish(
            RecoveryFinished(service=service, outcome=outcome, detail=detail, index=record.index)
        )

    async def _watch_carried(self) -> None:
        """Hold the slots of recoveries this run did not start until they close.

        They were carried across continue-as-new (or adopted): this run cannot await
        them as children, so one activity long-polls them all and reports closes.
        """
        while True:
            watched = [w for w in self._carried.values() if self._core.tracks(w.service)]
            self._carried = {w.service: w for w in watched}
            if not watched:
                return
            result = await commands.watch_until_closed(watched)
            for finished in result.finished:
                self._carried.pop(finished.service, None)
                self._finish(finished)

    def _carry_watch(self, watched: WatchedRecovery) -> None:
        start = not self._carried
        self._carried[watched.service] = watched
        if start:
            self._spawn(self._watch_carried())

    def _tracked(self) -> list[WatchedRecovery]:
        """Every recovery whose close this orchestrator must notice (slot or not)."""
        return [
            WatchedRecovery(service=service, workflow_id=wid, run_id=run_id, index=index)
            for service, wid, run_id, index in self._core.tracked()
        ]

    def _ensure_watched(self, service: str) -> None:
        """Watch ``service``'s recovery unless this run awaits it as a child already."""
        if service in self._children or service in self._carried:
            return
        for watched in self._tracked():
            if watched.service == service:
                self._carry_watch(watched)
                return

    async def _reconcile(self) -> None:
        """Safety net: every ``reconcile_interval_s`` ask the server which have closed.

        Child close reports are the fast path; this catches any that never arrive (the
        time-skipping test server, for one, does not report a terminated child).
        """
        while True:
            await workflow.sleep(
                timedelta(seconds=self._core.limits.reconcile_interval_s),
                summary="reconcile running recoveries",
            )
            watched = [w for w in self._tracked() if w.service not in self._starting_services]
            if not watched:
                continue
            result = await commands.closed_now(watched)
            for finished in result.finished:
                self._finish(finished)

    def _finish(self, finished: RecoveryFinished) -> None:
        if self._core.finish(finished.service, finished.outcome, workflow.now(), finished.index):
            workflow.logger.info(
                "recovery of %s ended %s %s",
                finished.service,
                finished.outcome.value,
                finished.detail,
            )
            self._dirty = True

    def _forward_join(self, request: RecoveryRequest) -> None:
        """Tell a running recovery about another request (it keeps the more urgent priority)."""
        self._forwarding += 1
        self._spawn(self._send_join(request))

    async def _send_join(self, request: RecoveryRequest) -> None:
        try:
            await workflow.get_external_workflow_handle(
                recovery_workflow_id(request.service)
            ).signal(
                SIGNAL_JOIN,
                JoinSignal(
                    priority=request.priority,
                    reason=request.reason,
                    requested_by=request.requested_by,
                ),
            )
        except FailureError as err:
            # It ended meanwhile: its slot comes back through its own close.
            workflow.logger.info("join for %s not delivered: %s", request.service, err)
        finally:
            self._forwarding -= 1

    def _grant(self, service: str) -> None:
        """Give a resumed recovery its slot back (a signal; nothing new starts)."""
        self._forwarding += 1
        self._spawn(self._send_grant(service))
        self._ensure_watched(service)

    async def _send_grant(self, service: str) -> None:
        running = self._core.running.get(service)
        try:
            if running is None:
                return
            await workflow.get_external_workflow_handle(running.workflow_id).signal(
                SIGNAL_SLOT_GRANTED,
                SlotGranted(admitted_at=running.admitted_at, running=len(self._core.running)),
            )
        except FailureError as err:
            # It closed meanwhile: its close report (child or watch) returns the slot.
            workflow.logger.info("slot_granted for %s not delivered: %s", service, err)
        finally:
            self._forwarding -= 1

    def _use_attempt_budget(self) -> bool:
        """True in runs that count attempts for the retry budget (see the module doc)."""
        self._core.count_attempts = workflow.patched(ATTEMPT_BUDGET_PATCH)
        return self._core.count_attempts

    # --- continue-as-new -------------------------------------------------------------

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._core.limits.max_history_events
        )

    async def _continue_as_new(self) -> None:
        # A child whose start is in flight must be recorded with its run id, and a join
        # being sent must not be lost, before the state is handed over.
        await workflow.wait_condition(
            lambda: (
                not self._starting_services
                and self._forwarding == 0
                and workflow.all_handlers_finished()
            )
        )
        carry = self._core.carry()
        carry.runs += 1
        workflow.logger.info(
            "continuing as new: %d waiting, %d running", len(carry.waiting), len(carry.running)
        )
        workflow.continue_as_new(pack_input(carry, self._core.limits))

    # --- UI --------------------------------------------------------------------------

    def _publish(self) -> None:
        """Keep AfState and the current details in step with the queue."""
        core = self._core
        if core.paused:
            state = STATE_PAUSED
        elif self._last.reason:
            state = STATE_THROTTLED
        else:
            state = STATE_ACTIVE
        if state != self._published_state:
            # Only on change: every upsert is a history event.
            workflow.upsert_search_attributes(
                [SA_KIND.value_set(KIND_ORCHESTRATOR), SA_STATE.value_set(state)]
            )
            self._published_state = state
        lines = [
            f"**{state}** — running {len(core.running)}/{core.limits.max_concurrent}, "
            f"waiting {len(core.queue)}",
            f"Admitted {core.admitted_total}; finished "
            + (", ".join(f"{k} {v}" for k, v in sorted(core.finished.items())) or "none"),
        ]
        nxt = core.queue.peek()
        if nxt is not None:
            lines.append(f"Next: {nxt.service} (priority {nxt.priority})")
        if self._last.reason:
            lines.append(f"Why waiting: {self._last.reason}")
        elif core.paused:
            lines.append(f"Retry budget pause: {core.pause_reason}")
        elif core.queue and len(core.running) >= core.limits.max_concurrent:
            lines.append("Why waiting: all slots busy: " + ", ".join(sorted(core.running)[:10]))
        if core.awaiting:
            names = ", ".join(sorted(core.awaiting)[:10])
            more = f" and {len(core.awaiting) - 10} more" if len(core.awaiting) > 10 else ""
            lines.append(f"Awaiting approval (no slot held): {names}{more}")
        if core.count_attempts and core.budget_samples:
            lines.append(
                f"Retry budget: {core.budget_failed} of {len(core.budget_samples)} attempts "
                f"failed in the last {core.limits.budget_window_s:g}s "
                f"(limit {core.limits.retry_budget:.0%})"
            )
        workflow.set_current_details("\n\n".join(lines))

    # --- messages --------------------------------------------------------------------

    @workflow.update(name=UPDATE_ENQUEUE)
    def enqueue(self, data: EnqueueRecovery) -> EnqueueResult:
        """Queue a recovery request (merged with one for the same service); say where."""
        return self._accept(data.request)

    @enqueue.validator
    def _validate_enqueue(self, data: EnqueueRecovery) -> None:
        self._core.check_enqueue(data.request)

    @workflow.signal(name=SIGNAL_REQUEST_RECOVERY)
    def request_recovery(self, data: EnqueueRecovery) -> None:
        """Fire-and-forget enqueue (signal-with-start); a full queue drops it with a log."""
        try:
            self._accept(data.request)
        except QueueError as err:
            workflow.logger.warning("request for %s dropped: %s", data.request.service, err)

    @workflow.signal(name=SIGNAL_REQUEST_RECOVERIES)
    def request_recoveries(self, data: EnqueueBatch) -> None:
        """Fire-and-forget enqueue of several requests, in order (one signal in a storm)."""
        for request in data.requests:
            try:
                self._accept(request)
            except QueueError as err:
                workflow.logger.warning("request for %s dropped: %s", request.service, err)

    def _accept(self, request: RecoveryRequest) -> EnqueueResult:
        result = self._core.enqueue(request, workflow.now())
        if result.state is RequestState.RUNNING:
            running = self._core.running[request.service]
            if request.priority < running.priority:
                running.priority = request.priority
                self._forward_join(request)
        elif (
            result.state is RequestState.AWAITING_APPROVAL
            or (result.state is RequestState.MERGED and self._core.tracks(request.service))
        ) and request.priority < (result.previous_priority or 0):
            # Its recovery runs (without a slot): it learns of the more urgent priority.
            self._forward_join(request)
        self._dirty = True
        return result

    @workflow.signal(name=SIGNAL_RECOVERY_WAITING)
    def recovery_waiting(self, data: RecoveryWaiting) -> None:
        """A recovery waits for a person: its slot is free at once; it is listed as such."""
        freed = self._core.recovery_waiting(
            data.service, data.workflow_id, data.reason, workflow.now()
        )
        workflow.logger.info(
            "%s awaits approval (%s)%s", data.service, data.reason or "-", ": slot freed" * freed
        )
        self._ensure_watched(data.service)
        self._dirty = True

    @workflow.signal(name=SIGNAL_RECOVERY_RESUMING)
    def recovery_resuming(self, data: RecoveryResuming) -> None:
        """An approved recovery needs a slot again: queued with its original arrival."""
        if self._core.recovery_resuming(
            data.service, data.workflow_id, data.priority, workflow.now()
        ):
            self._grant(data.service)  # it still held its slot
        else:
            self._ensure_watched(data.service)
        self._dirty = True

    @workflow.signal(name=SIGNAL_ATTEMPT_FINISHED)
    def attempt_finished(self, data: AttemptFinished) -> None:
        """One attempt of a recovery ended: a sample of the fleet-wide retry budget."""
        if self._use_attempt_budget():
            self._core.attempt_finished(data.succeeded, workflow.now())
            self._dirty = True

    @workflow.update(name=UPDATE_REPRIORITISE)
    def reprioritise(self, data: Reprioritise) -> QueueChangeResult:
        """Change a waiting request's priority (it keeps its arrival among equals)."""
        result = self._core.reprioritise(data.service, data.priority)
        self._dirty = True
        return result

    @reprioritise.validator
    def _validate_reprioritise(self, data: Reprioritise) -> None:
        self._core.check_waiting(data.service)

    @workflow.update(name=UPDATE_REMOVE)
    def remove(self, data: RemoveRecovery) -> QueueChangeResult:
        """Drop a waiting request (a running recovery is cancelled on its own workflow)."""
        result = self._core.remove(data.service)
        workflow.logger.info("removed %s from the queue: %s", data.service, data.reason or "-")
        self._dirty = True
        return result

    @remove.validator
    def _validate_remove(self, data: RemoveRecovery) -> None:
        self._core.check_removable(data.service)

    @workflow.query(name=QUERY_QUEUE)
    def queue(self, data: QueueQuery | None = None) -> QueueView:
        """Running, waiting and awaiting-approval recoveries, and why admissions wait."""
        core = self._core
        now = workflow.now()
        now_ms = to_ms(now)
        aging = core.queue.aging_interval_s
        running = [
            RunningView(
                service=r.service,
                workflow_id=r.workflow_id,
                run_id=r.run_id,
                priority=r.priority,
                enqueued_at=r.enqueued_at,
                admitted_at=r.admitted_at,
                running_s=(now - r.admitted_at).total_seconds(),
                waited_s=(r.admitted_at - r.enqueued_at).total_seconds(),
                resumed=r.resumed,
                probe=r.probe,
            )
            for r in sorted(core.running.values(), key=lambda r: r.admitted_at)
        ]
        waiting = [
            WaitingView(
                position=i,
                service=e.service,
                priority=e.priority,
                effective_priority=round(
                    effective_priority(e.priority, to_ms(e.enqueued_at), now_ms, aging), 3
                ),
                enqueued_at=e.enqueued_at,
                waited_s=(now - e.enqueued_at).total_seconds(),
                merges=e.merges,
                requested_by=e.request.requested_by,
                reason=e.request.reason,
                resumed=e.resumed,
            )
            for i, e in enumerate(core.queue.ordered(MAX_WAITING_VIEW), start=1)
        ]
        awaiting = [
            AwaitingView(
                service=a.service,
                workflow_id=a.workflow_id,
                priority=a.priority,
                since=a.since,
                reason=a.reason,
            )
            for a in sorted(core.awaiting.values(), key=lambda a: a.since)
        ]
        return QueueView(
            running=running,
            waiting=waiting,
            waiting_total=len(core.queue),
            max_concurrent=core.limits.max_concurrent,
            paused=core.paused,
            paused_until=from_ms(core.paused_until_ms) if core.paused_until_ms else None,
            pause_reason=core.pause_reason or core.throttle_reason,
            limits=core.limits,
            admitted_total=core.admitted_total,
            finished=dict(core.finished),
            recent_admissions=list(core.recent_admissions),
            runs=core.runs,
            history_length=workflow.info().get_current_history_length(),
            awaiting_approval=awaiting,
            as_of=now,
            throttle_reason=core.throttle_reason,
            budget=core.budget_view() if core.count_attempts else None,
            lookup=core.where(data.service) if data is not None and data.service else None,
        )


def _watched(running: RunningRecovery) -> WatchedRecovery:
    return WatchedRecovery(
        service=running.service,
        workflow_id=running.workflow_id,
        run_id=running.run_id,
        index=running.index,
    )
