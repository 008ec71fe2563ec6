"""Activities of the recovery queue: orchestrator limits, recovery watching, intake forwarding.

They read the orchestrator's limits, watch recoveries end, and forward the intakes' requests
to the orchestrator.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from antifragile.constants import (
    ACTIVITY_FORWARD_RECOVERY_REQUESTS,
    ACTIVITY_LOAD_ORCHESTRATOR_LIMITS,
    ACTIVITY_WATCH_RECOVERIES,
)
from antifragile.models.orchestrator import LoadLimitsInput, OrchestratorLimits, RecoveryOutcome
from antifragile.models.recovery_intake import ForwardRequestsInput, ForwardRequestsResult
from antifragile.models.slots import (
    RecoveryFinished,
    WatchedRecovery,
    WatchRecoveriesInput,
    WatchRecoveriesResult,
)
from antifragile.orchestrator.client import signal_orchestrator
from antifragile.orchestrator.logic import outcome_of_failure
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings

HEARTBEAT_EVERY_S = 10.0
"""How often ``watch_recoveries`` heartbeats while it waits (its timeout is 3× this)."""
BATCH_GRACE_S = 0.2
"""After the first close, how long a watch waits for more before it reports."""


class OrchestratorActivities:
    """The orchestrator's side effects: reading the operator's limits, watching recoveries.

    Args:
        settings: Worker settings.
        policy: Worker policy; its ``recovery`` section gives the slots, the admission
            rate and the retry budget.
        tuning: Everything else of :class:`OrchestratorLimits` (aging, windows, event
            budget); the three policy values above always win over it.
    """

    def __init__(
        self, settings: Settings, policy: WorkerPolicy, tuning: OrchestratorLimits | None = None
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._tuning = tuning or OrchestratorLimits()

    @activity.defn(name=ACTIVITY_LOAD_ORCHESTRATOR_LIMITS)
    async def load_orchestrator_limits(self, data: LoadLimitsInput) -> OrchestratorLimits:
        """The limits in force on this worker: policy values over the tuning defaults."""
        rec = self._policy.recovery
        return self._tuning.model_copy(
            update={
                "max_concurrent": rec.max_concurrent,
                "max_admissions_per_minute": rec.max_admissions_per_minute,
                "retry_budget": rec.retry_budget,
            }
        )

    @activity.defn(name=ACTIVITY_FORWARD_RECOVERY_REQUESTS)
    async def forward_recovery_requests(self, data: ForwardRequestsInput) -> ForwardRequestsResult:
        """Hand an intake's batch to the orchestrator (signal-with-start), in order.

        A retry after a lost answer may hand some requests over twice; the orchestrator
        merges a request for a service already waiting or running, so only a recovery
        that ended in between would run once more.
        """
        await signal_orchestrator(
            activity.client(),
            data.requests,
            orchestrator_id=data.orchestrator_id,
            task_queue=data.task_queue,
        )
        return ForwardRequestsResult(forwarded=len(data.requests))

    @activity.defn(name=ACTIVITY_WATCH_RECOVERIES)
    async def watch_recoveries(self, data: WatchRecoveriesInput) -> WatchRecoveriesResult:
        """Report which of the given recoveries have closed, and how.

        ``wait`` (the watcher of recoveries carried across continue-as-new, which the new
        run cannot await as children): long-poll every recovery (following its
        continue-as-new chain) and return once at least one has closed, plus any that
        close within a short grace period, so a burst costs one activity. Heartbeats
        meanwhile, so a lost worker is noticed and the watch resumes elsewhere.

        Without ``wait`` (the periodic reconcile): describe each and report those already
        closed. Both read the server's record of the close, so termination — which runs
        no code in the recovery — is seen like any other end.
        """
        client = activity.client()
        if not data.wait:
            found = await asyncio.gather(*(_closed(client, w) for w in data.recoveries))
            return WatchRecoveriesResult(finished=[f for f in found if f is not None])
        beat = asyncio.create_task(_heartbeat())
        tasks = [asyncio.create_task(_await_end(client, w)) for w in data.recoveries]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if len(done) < len(tasks):
                done, _ = await asyncio.wait(tasks, timeout=BATCH_GRACE_S)
            return WatchRecoveriesResult(finished=[t.result() for t in done])
        finally:
            for task in [*tasks, beat]:
                task.cancel()
            await asyncio.gather(*tasks, beat, return_exceptions=True)


_STATUS_OUTCOME = {
    WorkflowExecutionStatus.COMPLETED: RecoveryOutcome.SUCCEEDED,
    WorkflowExecutionStatus.FAILED: RecoveryOutcome.FAILED,
    WorkflowExecutionStatus.CANCELED: RecoveryOutcome.CANCELLED,
    WorkflowExecutionStatus.TERMINATED: RecoveryOutcome.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT: RecoveryOutcome.TIMED_OUT,
}


async def _closed(client: Client, watched: WatchedRecovery) -> RecoveryFinished | None:
    """How ``watched`` ended if its latest run has closed; None while it runs."""
    handle = client.get_workflow_handle(watched.workflow_id)
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return _finished(watched, RecoveryOutcome.GONE, "the recovery workflow no longer exists")
    outcome = _STATUS_OUTCOME.get(desc.status) if desc.status else None
    if outcome is None:  # running, or continued as new (its next run is the latest)
        return None
    return _finished(
        watched, outcome, f"workflow {desc.status.name.lower()}" if desc.status else ""
    )


async def _await_end(client: Client, watched: WatchedRecovery) -> RecoveryFinished:
    handle = client.get_workflow_handle(watched.workflow_id, run_id=watched.run_id)
    try:
        await handle.result(follow_runs=True)
    except WorkflowFailureError as err:
        return _finished(watched, *outcome_of_failure(err.cause))
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return _finished(watched, RecoveryOutcome.GONE, "the recovery workflow no longer exists")
    return _finished(watched, RecoveryOutcome.SUCCEEDED, "")


def _finished(watched: WatchedRecovery, outcome: RecoveryOutcome, detail: str) -> RecoveryFinished:
    return RecoveryFinished(
        service=watched.service, outcome=outcome, detail=detail, index=watched.index
    )


async def _heartbeat() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_EVERY_S)
