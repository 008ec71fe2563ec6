"""ChaosGuardianWorkflow: removes an experiment's fault lease if the experiment dies.

Terminating a workflow (or a workflow timeout) runs none of its code, so the experiment
cannot clean up after itself. Before injecting, an experiment starts this child with
``ParentClosePolicy.ABANDON``, which survives the parent's termination. It checks every
``check_every_s`` whether the experiment still runs; once it does not (completed,
terminated, timed out, whatever), it removes the lease — idempotently: after a normal
run there is nothing left to remove. The lease TTL still bounds everything when even
the workers are gone; the guardian only makes the removal faster than the TTL.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import (
        ACTIVITY_CHECK_EXPERIMENT_RUNNING,
        ACTIVITY_REMOVE_FAULT,
        GUARDIAN_WORKFLOW_TYPE,
        SIGNAL_STAND_DOWN,
    )
    from antifragile.models.chaos import (
        CheckExperimentInput,
        ExperimentRunState,
        GuardianInput,
        GuardianResult,
        RemoveFaultInput,
        RemoveFaultResult,
    )

_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=2)
)


@workflow.defn(name=GUARDIAN_WORKFLOW_TYPE)
class ChaosGuardianWorkflow:
    """Watches one experiment; removes its lease when it is no longer running."""

    def __init__(self) -> None:
        self._stand_down = False

    @workflow.signal(name=SIGNAL_STAND_DOWN)
    def stand_down(self) -> None:
        """The experiment cleaned up by itself: nothing left to guard."""
        self._stand_down = True

    @workflow.run
    async def run(self, data: GuardianInput) -> GuardianResult:
        """Poll the experiment; remove its lease once it stops running or time is up."""
        deadline = workflow.now() + timedelta(seconds=data.give_up_after_s)
        reason = ""
        while not reason:
            try:
                await workflow.wait_condition(
                    lambda: self._stand_down,
                    timeout=timedelta(seconds=data.check_every_s),
                    timeout_summary="wait before the next check",
                )
                return GuardianResult(removed=False, reason="the experiment cleaned up itself")
            except TimeoutError:
                pass
            state = await workflow.execute_activity(
                ACTIVITY_CHECK_EXPERIMENT_RUNNING,
                CheckExperimentInput(experiment_id=data.experiment_id),
                result_type=ExperimentRunState,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=_RETRY,
                summary=f"is {data.experiment_id} running?",
            )
            if not state.running:
                reason = f"experiment {state.status.lower()}"
            elif workflow.now() >= deadline:
                reason = "experiment outlived its longest possible run"
        removed = await workflow.execute_activity(
            ACTIVITY_REMOVE_FAULT,
            RemoveFaultInput(experiment_id=data.experiment_id),
            result_type=RemoveFaultResult,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=_RETRY,
            summary="remove fault lease",
        )
        if removed.removed:
            workflow.logger.warning(
                "guardian removed the lease of %s: %s", data.experiment_id, reason
            )
        return GuardianResult(removed=removed.removed, reason=reason)
