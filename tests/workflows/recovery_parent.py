"""A stand-in orchestrator for the workflow tests: the child side of the slot contract.

It starts one RecoveryWorkflow as its child (as RecoveryOrchestratorWorkflow does), logs
every signal the child sends it, and grants a slot to a resumed child only when the test
says so (signal ``grant``), so a test can see the child wait for its slot.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from antifragile.constants import (
        SIGNAL_ATTEMPT_FINISHED,
        SIGNAL_RECOVERY_RESUMING,
        SIGNAL_RECOVERY_WAITING,
        SIGNAL_SLOT_GRANTED,
    )
    from antifragile.models.recovery import RecoveryRequest
    from antifragile.models.slots import (
        AttemptFinished,
        RecoveryResuming,
        RecoveryWaiting,
        SlotGranted,
    )
    from workflows.recovery import RecoveryWorkflow


@workflow.defn
class RecoveryParent:
    """Parent of one recovery; its log is a list of one-line entries."""

    def __init__(self) -> None:
        self._log: list[str] = []
        self._resuming = 0
        self._grants = 0
        self._granted = 0
        self._child_done = False

    @workflow.run
    async def run(self, request: RecoveryRequest) -> list[str]:
        """Run the child to its end; returns the log, ending with the child's outcome."""
        child = await workflow.start_child_workflow(
            RecoveryWorkflow.run,
            request,
            id=f"recovery-{request.service}",
            # As the orchestrator: its recoveries outlive it.
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        )
        outcome: list[str] = []

        async def _wait_child() -> None:
            try:
                result = await child
                outcome.append(f"child {result.state.value}")
            except ChildWorkflowError as err:
                outcome.append(f"child failed: {err.cause}")
            self._child_done = True

        task = asyncio.create_task(_wait_child())
        while True:
            await workflow.wait_condition(
                lambda: (
                    self._child_done
                    or (self._grants > self._granted and self._resuming > self._granted)
                )
            )
            if self._child_done:
                break
            self._granted += 1
            self._log.append("granted")
            await child.signal(SIGNAL_SLOT_GRANTED, SlotGranted(admitted_at=workflow.now()))
        await task
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._log + outcome

    @workflow.signal(name=SIGNAL_RECOVERY_WAITING)
    def recovery_waiting(self, data: RecoveryWaiting) -> None:
        self._log.append(f"waiting {data.workflow_id}: {data.reason}")

    @workflow.signal(name=SIGNAL_RECOVERY_RESUMING)
    def recovery_resuming(self, data: RecoveryResuming) -> None:
        self._resuming += 1
        self._log.append(f"resuming {data.workflow_id} at priority {data.priority}")

    @workflow.signal(name=SIGNAL_ATTEMPT_FINISHED)
    def attempt_finished(self, data: AttemptFinished) -> None:
        self._log.append(f"attempt {data.attempt} {'ok' if data.succeeded else 'failed'}")

    @workflow.signal
    def grant(self) -> None:
        """The test lets the next resumed recovery have its slot."""
        self._grants += 1

    @workflow.query
    def log(self) -> list[str]:
        """What the child told this parent so far."""
        return list(self._log)
