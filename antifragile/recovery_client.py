"""Client-side operations on recoveries, shared by the CLI, the runtime bridge and tests."""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from antifragile.constants import SIGNAL_JOIN, recovery_workflow_id
from antifragile.models.recovery import JoinSignal, RecoveryRequest, RecoveryResult


def recovery_summary(request: RecoveryRequest) -> str:
    """The one-line summary the Temporal UI shows for a recovery."""
    return (
        f"Recover {request.service} ({request.strategy.value}, priority {request.priority}) "
        f"— probe {request.probe}"
    )


def recovery_details(request: RecoveryRequest) -> str:
    """The static details (Markdown) the Temporal UI shows for a recovery."""
    p = request.policy
    who = request.requested_by or "-"
    why = request.reason or "no reason given"
    lines = [
        f"**Service:** {request.service}",
        f"**Strategy:** {request.strategy.value}; up to {p.max_retry_attempts} attempts "
        f"per round, delays {p.initial_delay_ms} ms x {p.backoff_multiplier} "
        f"up to {p.max_delay_ms} ms",
        f"**Probe:** {request.probe}",
        f"**Action:** {request.action}",
        f"**Requested by:** {who} — {why}",
    ]
    return "\n\n".join(lines)


async def start_recovery(
    client: Client, request: RecoveryRequest, *, task_queue: str
) -> WorkflowHandle[object, RecoveryResult]:
    """Start ``recovery-{service}``, or join the one already running (never a duplicate).

    Joining sends ``join`` with the request's priority, so a more urgent request raises
    the running recovery's priority.
    """
    return await client.start_workflow(
        "RecoveryWorkflow",
        request,
        id=recovery_workflow_id(request.service),
        task_queue=task_queue,
        result_type=RecoveryResult,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal=SIGNAL_JOIN,
        start_signal_args=[
            JoinSignal(
                priority=request.priority, reason=request.reason, requested_by=request.requested_by
            )
        ],
        static_summary=recovery_summary(request),
        static_details=recovery_details(request),
    )
