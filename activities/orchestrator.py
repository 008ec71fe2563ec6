"""Activities of RecoveryOrchestratorWorkflow: the worker's limits, and watching a recovery end."""

from __future__ import annotations

import asyncio
import contextlib

from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from antifragile.models.orchestrator import (
    AwaitRecoveryInput,
    LoadLimitsInput,
    OrchestratorLimits,
    RecoveryFinished,
    RecoveryOutcome,
)
from antifragile.orchestrator_logic import outcome_of_failure
from antifragile.policy import WorkerPolicy
from antifragile.settings import Settings

HEARTBEAT_EVERY_S = 10.0
"""How often ``await_recovery_end`` heartbeats while it waits (its timeout is 3× this)."""


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

    @activity.defn(name="load_orchestrator_limits")
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

    @activity.defn(name="await_recovery_end")
    async def await_recovery_end(self, data: AwaitRecoveryInput) -> RecoveryFinished:
        """Wait until a recovery (and any run it continued as) closes; say how it ended.

        Used for recoveries the current orchestrator run cannot await as children (those
        it carried across continue-as-new, or adopted): termination included, since it
        reads the server's record of the close rather than anything the recovery ran.
        Heartbeats while waiting, so a lost worker is noticed and the wait resumes.
        """
        client = activity.client()
        handle = client.get_workflow_handle(data.workflow_id, run_id=data.run_id)
        beat = asyncio.create_task(_heartbeat())
        try:
            await handle.result(follow_runs=True)
            outcome, detail = RecoveryOutcome.SUCCEEDED, ""
        except WorkflowFailureError as err:
            outcome, detail = outcome_of_failure(err.cause)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            outcome, detail = RecoveryOutcome.GONE, "the recovery workflow no longer exists"
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        return RecoveryFinished(service=data.service, outcome=outcome, detail=detail)


async def _heartbeat() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_EVERY_S)
